//! Train/valid/test split of the training file: by fraction, seeded, optionally stratified.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::DataSpec;
use super::table::RawData;

/// Row indices of the training file per split, each in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
    /// Empty when a separate test file is given.
    pub test: Vec<usize>,
}

/// Splits the rows of `raw.main`. With `stratify`, each label is split on its own so that class
/// proportions match; rounding is per class.
pub fn split(raw: &RawData, spec: &DataSpec) -> Parts {
    let n = raw.main.len();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.split_seed);
    let groups: Vec<Vec<usize>> = if spec.stratify {
        let mut labels: Vec<&String> = raw.main.labels.iter().collect();
        labels.sort();
        labels.dedup();
        labels
            .iter()
            .map(|l| (0..n).filter(|&i| &raw.main.labels[i] == *l).collect())
            .collect()
    } else {
        vec![(0..n).collect()]
    };
    let mut parts = Parts {
        train: Vec::new(),
        valid: Vec::new(),
        test: Vec::new(),
    };
    for mut g in groups {
        g.shuffle(&mut rng);
        let n_test = (g.len() as f64 * spec.test_fraction).round() as usize;
        let n_valid = (g.len() as f64 * spec.valid_fraction).round() as usize;
        let n_valid = n_valid.min(g.len() - n_test.min(g.len()));
        parts.test.extend_from_slice(&g[..n_test.min(g.len())]);
        parts
            .valid
            .extend_from_slice(&g[n_test.min(g.len())..n_test.min(g.len()) + n_valid]);
        parts
            .train
            .extend_from_slice(&g[n_test.min(g.len()) + n_valid..]);
    }
    parts.train.sort_unstable();
    parts.valid.sort_unstable();
    parts.test.sort_unstable();
    parts
}

//! Train/valid/test split of the training file: by fraction, seeded, optionally stratified;
//! or, for k-fold cross-validation, the rows outside the test split dealt into `k` folds, one
//! of which validates.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::table::RawData;
use super::{DataError, DataSpec};

/// Row indices of the training file per split, each in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
    /// Empty when a separate test file is given.
    pub test: Vec<usize>,
}

/// Fold `index` of `k` (k-fold cross-validation): that fold is the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fold {
    pub k: usize,
    pub index: usize,
}

/// Splits the rows of `raw.main`. With `stratify`, each label is split on its own so that class
/// proportions match; rounding is per class.
///
/// With `spec.fold`, the test rows are taken as without it (the same for every fold), and the
/// rest are dealt round-robin into `k` folds in their shuffled order, class after class, the
/// deal going on from where the previous class stopped: folds are disjoint, cover every
/// non-test row, differ in size by at most one and keep class proportions (within one row
/// per class).
///
/// More folds than rows to deal is refused: some folds would validate on nothing.
pub fn split(raw: &RawData, spec: &DataSpec) -> Result<Parts, DataError> {
    let parts = split_labels(&raw.main.labels, spec);
    if let Some(f) = spec.fold {
        let rows = parts.train.len() + parts.valid.len();
        if rows < f.k {
            return Err(DataError::MoreFoldsThanRows { folds: f.k, rows });
        }
    }
    Ok(parts)
}

/// [`split`] of rows with these labels.
fn split_labels(row_labels: &[String], spec: &DataSpec) -> Parts {
    let n = row_labels.len();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.split_seed);
    let groups: Vec<Vec<usize>> = if spec.stratify {
        let mut labels: Vec<&String> = row_labels.iter().collect();
        labels.sort();
        labels.dedup();
        labels
            .iter()
            .map(|l| (0..n).filter(|&i| &row_labels[i] == *l).collect())
            .collect()
    } else {
        vec![(0..n).collect()]
    };
    let mut parts = Parts {
        train: Vec::new(),
        valid: Vec::new(),
        test: Vec::new(),
    };
    let mut dealt = 0;
    for mut g in groups {
        g.shuffle(&mut rng);
        let n_test = (g.len() as f64 * spec.test_fraction).round() as usize;
        if let Some(f) = spec.fold {
            let n_test = n_test.min(g.len());
            parts.test.extend_from_slice(&g[..n_test]);
            for &row in &g[n_test..] {
                if dealt % f.k == f.index {
                    parts.valid.push(row);
                } else {
                    parts.train.push(row);
                }
                dealt += 1;
            }
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stratify: bool, test_fraction: f64, fold: Option<Fold>) -> DataSpec {
        let text = format!(
            "[data]\npath = \"x.csv\"\n[data.split]\nstratify = {stratify}\ntest = {test_fraction}\n"
        );
        let (file, _) = crate::config::parse("test", &text, &[]).expect("a valid config");
        let cfg = crate::config::validate_with(file, "test", "test", false).expect("valid");
        DataSpec { fold, ..cfg.data }
    }

    /// 3 classes of 50, 30 and 17 rows, interleaved.
    fn labels() -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..97 {
            out.push(
                match i % 5 {
                    0 | 2 if out.iter().filter(|l: &&String| *l == "a").count() < 50 => "a",
                    1 | 3 if out.iter().filter(|l: &&String| *l == "b").count() < 30 => "b",
                    _ if out.iter().filter(|l: &&String| *l == "c").count() < 17 => "c",
                    _ if out.iter().filter(|l: &&String| *l == "a").count() < 50 => "a",
                    _ => "b",
                }
                .to_string(),
            );
        }
        out
    }

    #[test]
    fn folds_are_disjoint_cover_the_non_test_rows_and_keep_class_proportions() {
        let labels = labels();
        let count = |rows: &[usize], l: &str| rows.iter().filter(|&&i| labels[i] == l).count();
        for stratify in [true, false] {
            let k = 5;
            let whole = split_labels(&labels, &spec(stratify, 0.2, None));
            let mut seen = vec![0usize; labels.len()];
            for index in 0..k {
                let p = split_labels(&labels, &spec(stratify, 0.2, Some(Fold { k, index })));
                // The test split is the one without folds, for every fold.
                assert_eq!(p.test, whole.test);
                let mut all: Vec<usize> = p
                    .train
                    .iter()
                    .chain(&p.valid)
                    .chain(&p.test)
                    .copied()
                    .collect();
                all.sort_unstable();
                assert_eq!(
                    all,
                    (0..labels.len()).collect::<Vec<_>>(),
                    "fold {index}: a partition"
                );
                for &i in &p.valid {
                    seen[i] += 1;
                }
                // 97 rows, 20% test: 78 dealt into 5 folds of 15 or 16.
                assert!(
                    (15..=16).contains(&p.valid.len()),
                    "fold {index}: {}",
                    p.valid.len()
                );
                if stratify {
                    for (l, n) in [("a", 50.0), ("b", 30.0), ("c", 17.0)] {
                        let expected = n * 0.8 / k as f64;
                        let got = count(&p.valid, l) as f64;
                        assert!(
                            (got - expected).abs() <= 1.0,
                            "fold {index}, class {l}: {got} vs {expected}"
                        );
                    }
                }
            }
            // Every non-test row validates in exactly one fold.
            for (i, n) in seen.iter().enumerate() {
                let expected = usize::from(!whole.test.contains(&i));
                assert_eq!(*n, expected, "row {i}");
            }
        }
    }

    #[test]
    fn another_seed_deals_other_folds() {
        let labels = labels();
        let a = split_labels(&labels, &spec(true, 0.2, Some(Fold { k: 5, index: 0 })));
        let mut other = spec(true, 0.2, Some(Fold { k: 5, index: 0 }));
        other.split_seed += 1;
        assert_ne!(a.valid, split_labels(&labels, &other).valid);
    }
}

//! Permutation importance (Breiman; scikit-learn's `permutation_importance`): how much a
//! metric worsens when one original column's values are shuffled across the rows of a split,
//! breaking its link to the target while keeping its distribution. All the one-hot features of
//! a categorical column (all pixels of a patch) are permuted together, with one permutation.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::Group;
use crate::data::Dataset;
use crate::eval::LoadedRun;

/// One group's importance over the repeats: the score lost when it is permuted (positive: the
/// model relies on it), in the metric's units.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Importance {
    pub name: String,
    pub mean: f64,
    pub std: f64,
    pub repeats: Vec<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportanceReport {
    pub metric: String,
    pub higher_is_better: bool,
    /// The metric on the unpermuted rows.
    pub baseline: f64,
    pub rows: usize,
    pub repeats: usize,
    pub seed: u64,
    /// Most important first.
    pub importances: Vec<Importance>,
}

/// Whether a larger value of metric `name` is better.
pub fn higher_is_better(name: &str) -> bool {
    !matches!(name, "loss" | "mse" | "rmse" | "mae")
}

/// The metric importances are measured in: `requested`, else the run's monitor when it is not
/// the loss, else accuracy (classification) or R² (regression).
pub fn metric_for(run: &LoadedRun, requested: Option<&str>) -> String {
    if let Some(m) = requested {
        return m.to_string();
    }
    if run.monitor.metric != "loss" {
        return run.monitor.metric.clone();
    }
    match run.task.class_names() {
        Some(_) => "accuracy".into(),
        None => "r2".into(),
    }
}

/// The metric `name` of the model on `data` (an error naming the metrics there are).
fn score(run: &LoadedRun, data: &Dataset, name: &str) -> Result<f64, super::ExplainError> {
    let m = crate::eval::evaluate(
        None,
        &run.model,
        data,
        run.mconf.input(),
        run.task.as_ref(),
        &run.device,
    )?;
    m.get(name).ok_or_else(|| {
        let names: Vec<&str> = m.all_scalars().into_iter().map(|(k, _)| k).collect();
        super::ExplainError::Input(format!(
            "--metric {name:?}: not a metric of {} (it has {})",
            run.label,
            names.join(", ")
        ))
    })
}

/// Permutation importance of each group of `data`'s features, `repeats` permutations each,
/// seeded: the same seed gives the same numbers.
pub fn permutation_importance(
    run: &LoadedRun,
    data: &Dataset,
    groups: &[Group],
    metric: &str,
    repeats: usize,
    seed: u64,
) -> Result<ImportanceReport, super::ExplainError> {
    let baseline = score(run, data, metric)?;
    let higher = higher_is_better(metric);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, d) = (data.n, data.d);
    let mut permuted = data.clone();
    let mut importances = Vec::with_capacity(groups.len());
    for g in groups {
        let mut values = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            for (i, &from) in order.iter().enumerate() {
                for &f in &g.features {
                    permuted.x[i * d + f] = data.x[from * d + f];
                }
            }
            let s = score(run, &permuted, metric)?;
            values.push(if higher { baseline - s } else { s - baseline });
        }
        // Back to the original values before the next group.
        for i in 0..n {
            for &f in &g.features {
                permuted.x[i * d + f] = data.x[i * d + f];
            }
        }
        let (mean, std) = mean_std(&values);
        importances.push(Importance {
            name: g.name.clone(),
            mean,
            std,
            repeats: values,
        });
    }
    importances.sort_by(|a, b| b.mean.total_cmp(&a.mean));
    Ok(ImportanceReport {
        metric: metric.to_string(),
        higher_is_better: higher,
        baseline,
        rows: n,
        repeats,
        seed,
        importances,
    })
}

/// Mean and population standard deviation (scikit-learn's `importances_std`).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// At most `max` rows of `data`, drawn without replacement (seeded), in their order.
pub fn subsample(data: &Dataset, max: usize, seed: u64) -> Dataset {
    if data.n <= max {
        return data.clone();
    }
    let mut idx: Vec<usize> = (0..data.n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
    idx.truncate(max);
    idx.sort_unstable();
    let d = data.d;
    Dataset {
        x: idx
            .iter()
            .flat_map(|&i| data.x[i * d..(i + 1) * d].iter().copied())
            .collect(),
        y: data.y.select(&idx),
        n: max,
        d,
    }
}

//! Data drift: what the training data looked like (saved with a model as `drift.json`), and how
//! far new data is from it.
//!
//! Per original column: a numeric column keeps the decile edges of its training values, the
//! share of training values in each bin and a seeded sample of the values (for the
//! Kolmogorov-Smirnov statistic); a categorical column its categories' shares. The model's
//! predictions on the validation split keep their class shares (or, for a regression, bins as
//! a numeric column). New data is read with the model's preprocessing (imputation included)
//! and decoded back, so both sides are compared after the same cleaning.
//!
//! PSI (population stability index): `sum over bins of (a - e) ln(a / e)`, `a` the new share
//! and `e` the training share of a bin, each share floored at [`PSI_FLOOR`]. KS: the largest
//! distance between the two empirical distribution functions (scipy's `ks_2samp` statistic).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::data::preprocess::{Column, Preprocessor};

/// Shares below this count as this in PSI (an empty bin would make it infinite).
pub const PSI_FLOOR: f64 = 1e-4;
/// Bins of a numeric column: deciles.
const BINS: usize = 10;
/// Training values kept per numeric column for the KS statistic.
const SAMPLE: usize = 5000;

/// The training data's profile, saved with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Training rows profiled.
    pub rows: usize,
    pub columns: Vec<Profile>,
    /// The model's predictions on the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Profile>,
}

/// One column's (or the predictions') distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Profile {
    Numeric {
        name: String,
        /// Interior bin edges (increasing); bin `i` holds `edges[i-1] < v <= edges[i]`.
        edges: Vec<f64>,
        /// Training share per bin (`edges.len() + 1` bins).
        shares: Vec<f64>,
        /// A seeded sample of the training values, sorted.
        sample: Vec<f64>,
    },
    Categorical {
        name: String,
        categories: Vec<String>,
        /// Training share per category.
        shares: Vec<f64>,
    },
}

impl Profile {
    pub fn name(&self) -> &str {
        match self {
            Profile::Numeric { name, .. } | Profile::Categorical { name, .. } => name,
        }
    }
}

/// The values of one column (or the predictions) of a batch of rows.
#[derive(Debug, Clone)]
pub enum Values {
    Numeric(Vec<f64>),
    /// Category indices; `None`: a category the training data did not have.
    Categorical(Vec<Option<usize>>),
}

/// Decodes preprocessed rows back to per-column values: numbers in their units (to 6
/// significant digits, see [`significant`]), categories as indices. `None` for data without columns (images, text).
pub fn columns_of(pre: &Preprocessor, data: &Dataset) -> Option<Vec<Values>> {
    if pre.columns.is_empty() || pre.text.is_some() || pre.image.is_some() {
        return None;
    }
    let d = data.d;
    let mut out = Vec::with_capacity(pre.columns.len());
    let mut k = 0;
    for c in &pre.columns {
        match c {
            Column::Numeric { mean, std, .. } => {
                out.push(Values::Numeric(
                    (0..data.n)
                        .map(|i| significant(data.x[i * d + k] as f64 * std + mean))
                        .collect(),
                ));
                k += 1;
            }
            Column::Categorical { categories, .. } => {
                let w = categories.len();
                out.push(Values::Categorical(
                    (0..data.n)
                        .map(|i| {
                            data.x[i * d + k..i * d + k + w]
                                .iter()
                                .position(|&v| v > 0.5)
                        })
                        .collect(),
                ));
                k += w;
            }
        }
    }
    Some(out)
}

/// `v` to 6 significant digits: a value decoded from an f32 feature is its data file's value
/// (which rarely has more digits) plus rounding noise, and the noise must not move it across a
/// bin edge.
fn significant(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let p = 10f64.powi(5 - v.abs().log10().floor() as i32);
    (v * p).round() / p
}

fn shares(counts: &[usize], n: usize) -> Vec<f64> {
    counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect()
}

/// The bin of `v` for interior `edges`.
fn bin(edges: &[f64], v: f64) -> usize {
    edges.partition_point(|&e| e < v)
}

/// A numeric profile of `values`.
pub fn numeric_profile(name: &str, values: &[f64], seed: u64) -> Profile {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mut edges: Vec<f64> = (1..BINS)
        .filter_map(|q| sorted.get((q * n / BINS).min(n.saturating_sub(1))).copied())
        .collect();
    edges.dedup();
    let mut counts = vec![0; edges.len() + 1];
    for &v in &sorted {
        counts[bin(&edges, v)] += 1;
    }
    let mut sample = sorted.clone();
    if sample.len() > SAMPLE {
        sample.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        sample.truncate(SAMPLE);
        sample.sort_by(f64::total_cmp);
    }
    Profile::Numeric {
        name: name.into(),
        edges,
        shares: shares(&counts, n),
        sample,
    }
}

/// A categorical profile of category indices over `categories`.
pub fn categorical_profile(name: &str, categories: &[String], values: &[Option<usize>]) -> Profile {
    let mut counts = vec![0; categories.len()];
    for v in values.iter().flatten() {
        counts[*v] += 1;
    }
    Profile::Categorical {
        name: name.into(),
        categories: categories.to_vec(),
        shares: shares(&counts, values.len()),
    }
}

/// The profile of a model's training rows (and of its validation predictions, when given:
/// class indices, or values in the target's units).
pub fn reference(
    pre: &Preprocessor,
    train: &Dataset,
    predictions: Option<Values>,
) -> Option<Reference> {
    let cols = columns_of(pre, train)?;
    let columns = pre
        .columns
        .iter()
        .zip(&cols)
        .enumerate()
        .map(|(j, (c, v))| match (c, v) {
            (Column::Numeric { name, .. }, Values::Numeric(x)) => {
                numeric_profile(name, x, j as u64)
            }
            (
                Column::Categorical {
                    name, categories, ..
                },
                Values::Categorical(x),
            ) => categorical_profile(name, categories, x),
            _ => unreachable!("columns_of follows the preprocessing's columns"),
        })
        .collect();
    let predictions = predictions.map(|p| match (p, pre.class_names()) {
        (Values::Categorical(x), Some(names)) => categorical_profile("prediction", names, &x),
        (Values::Numeric(x), _) => numeric_profile("prediction", &x, 0),
        (Values::Categorical(x), None) => categorical_profile("prediction", &[], &x),
    });
    Some(Reference {
        rows: train.n,
        columns,
        predictions,
    })
}

/// The model's predictions of `data` as drift compares them: class indices (the last of equal
/// probabilities, as `kiln predict`), or values in the target's units.
pub fn predictions(
    model: &kiln_models::Model,
    data: &crate::data::Dataset,
    input: kiln_models::InputShape,
    task: &dyn crate::task::Task,
    device: &burn::tensor::Device,
) -> Values {
    let classes = task.class_names().is_some();
    let (mut idx, mut values) = (Vec::new(), Vec::new());
    for start in (0..data.n).step_by(crate::eval::EVAL_BATCH) {
        let rows: Vec<usize> = (start..(start + crate::eval::EVAL_BATCH).min(data.n)).collect();
        let batch = data.gather(&rows).upload(input, device);
        let Some(x) = batch.input else { continue };
        let Some(e) = task.explained(model.forward(x)) else {
            continue;
        };
        let k = e.dims()[1];
        let host = e.into_data().try_to_vec::<f32>().expect("outputs are f32");
        for p in host.chunks(k) {
            if classes {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i);
                idx.push(best);
            } else {
                values.push(p[0] as f64);
            }
        }
    }
    if classes {
        Values::Categorical(idx)
    } else {
        Values::Numeric(values)
    }
}

/// PSI of new shares `actual` against `expected` (same bins).
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(PSI_FLOOR), a.max(PSI_FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// The two-sample Kolmogorov-Smirnov statistic of two samples.
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    let mut a: Vec<f64> = a.iter().copied().filter(|v| v.is_finite()).collect();
    let mut b: Vec<f64> = b.iter().copied().filter(|v| v.is_finite()).collect();
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        // Step past every copy of the smaller value in both samples before comparing.
        let v = a[i].min(b[j]);
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// Asymptotic p-value of a KS statistic `d` for samples of `n` and `m` values (Kolmogorov's
/// distribution).
pub fn ks_pvalue(d: f64, n: usize, m: usize) -> f64 {
    let en = ((n * m) as f64 / (n + m).max(1) as f64).sqrt();
    let lambda = (en + 0.12 + 0.11 / en.max(1e-12)) * d;
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let term = (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        sum += if k % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// One column's drift.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub name: String,
    pub kind: &'static str,
    pub psi: f64,
    /// Numeric columns: the KS statistic against the training sample, and its p-value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks_pvalue: Option<f64>,
    /// Training and new shares per bin (or category; new data's unseen categories last).
    pub expected: Vec<f64>,
    pub actual: Vec<f64>,
    /// Bin labels.
    pub bins: Vec<String>,
    /// Share of new values in a category the training data did not have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unseen: Option<f64>,
    pub drifted: bool,
}

/// When a column counts as drifted.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    /// PSI at or above this (0.2 is the usual "significant shift").
    pub psi: f64,
    /// KS statistic at or above this (numeric columns).
    pub ks: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { psi: 0.2, ks: 0.1 }
    }
}

/// Drift of new `values` from `profile`.
pub fn score(profile: &Profile, values: &Values, t: Thresholds) -> Score {
    match (profile, values) {
        (
            Profile::Numeric {
                name,
                edges,
                shares: expected,
                sample,
            },
            Values::Numeric(x),
        ) => {
            let finite: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
            let mut counts = vec![0; edges.len() + 1];
            for &v in &finite {
                counts[bin(edges, v)] += 1;
            }
            let actual = shares(&counts, finite.len());
            let p = psi(expected, &actual);
            let ks = ks_statistic(sample, &finite);
            let mut bins = Vec::with_capacity(edges.len() + 1);
            for i in 0..=edges.len() {
                bins.push(match (i.checked_sub(1).map(|j| edges[j]), edges.get(i)) {
                    (None, Some(hi)) => format!("<= {hi}"),
                    (Some(lo), Some(hi)) => format!("({lo}, {hi}]"),
                    (Some(lo), None) => format!("> {lo}"),
                    (None, None) => "all".into(),
                });
            }
            Score {
                name: name.clone(),
                kind: "numeric",
                psi: p,
                ks: Some(ks),
                ks_pvalue: Some(ks_pvalue(ks, sample.len(), finite.len())),
                expected: expected.clone(),
                actual,
                bins,
                unseen: None,
                drifted: p >= t.psi || ks >= t.ks,
            }
        }
        (
            Profile::Categorical {
                name,
                categories,
                shares: expected,
            },
            Values::Categorical(x),
        ) => {
            let mut counts = vec![0; categories.len() + 1];
            for v in x {
                counts[v.unwrap_or(categories.len())] += 1;
            }
            let actual = shares(&counts, x.len());
            let mut expected = expected.clone();
            expected.push(0.0);
            let p = psi(&expected, &actual);
            let mut bins = categories.clone();
            bins.push("<unseen>".into());
            Score {
                name: name.clone(),
                kind: "categorical",
                psi: p,
                ks: None,
                ks_pvalue: None,
                unseen: Some(actual[categories.len()]),
                expected,
                actual,
                bins,
                drifted: p >= t.psi,
            }
        }
        (p, _) => Score {
            name: p.name().to_string(),
            kind: "mismatch",
            psi: f64::NAN,
            ks: None,
            ks_pvalue: None,
            expected: Vec::new(),
            actual: Vec::new(),
            bins: Vec::new(),
            unseen: None,
            drifted: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_statistic_of_known_samples() {
        assert_eq!(ks_statistic(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(ks_statistic(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        // F_a jumps to 1/2 at 1 and 1 at 3; F_b to 1/4 at 2, ... at 4: D = 1/2 at 1.
        let d = ks_statistic(&[1.0, 3.0], &[2.0, 2.5, 4.0, 5.0]);
        assert!((d - 0.5).abs() < 1e-12, "{d}");
        // Ties across samples: step past all copies first.
        assert_eq!(ks_statistic(&[1.0, 1.0, 2.0], &[1.0, 2.0, 2.0]), 1.0 / 3.0);
    }

    #[test]
    fn psi_is_zero_for_equal_shares_and_grows_with_the_shift() {
        let e = [0.25, 0.25, 0.25, 0.25];
        assert_eq!(psi(&e, &e), 0.0);
        let small = psi(&e, &[0.3, 0.2, 0.25, 0.25]);
        let large = psi(&e, &[0.7, 0.1, 0.1, 0.1]);
        assert!(
            small > 0.0 && small < 0.05 && large > 0.5,
            "{small} {large}"
        );
    }

    #[test]
    fn deciles_bin_the_training_values_evenly() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let Profile::Numeric { edges, shares, .. } = numeric_profile("x", &v, 0) else {
            panic!()
        };
        assert_eq!(edges.len(), 9);
        assert!(shares.iter().all(|s| (s - 0.1).abs() < 0.002), "{shares:?}");
    }
}

/// What `kiln drift` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub input: String,
    pub rows: usize,
    pub thresholds: Thresholds,
    pub columns: Vec<Score>,
    /// The model's predictions on the new rows against its predictions on the validation
    /// split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Score>,
    /// The drifted columns (and `prediction`), by name.
    pub drifted: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(
        "{model} has no drift profile ({file}): it was trained before kiln saved one, or it does not read table rows; train a new version"
    )]
    NoProfile { model: String, file: String },
    #[error("{0}: {1}")]
    Profile(String, String),
    #[error("{input}: no rows to compare")]
    Empty { input: String },
}

/// The saved profile of a loaded model.
pub fn profile_of(run: &crate::eval::LoadedRun) -> Result<Reference, DriftError> {
    let path = run.dir.join(crate::layout::DRIFT);
    if !path.is_file() {
        return Err(DriftError::NoProfile {
            model: run.label.clone(),
            file: crate::shown::path(&path),
        });
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| DriftError::Profile(crate::shown::path(&path), e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| DriftError::Profile(crate::shown::path(&path), e.to_string()))
}

/// Drift of the rows of `input` (read and preprocessed as the model's training data) from the
/// model's training profile.
pub fn check_file(
    run: &crate::eval::LoadedRun,
    input: &std::path::Path,
    t: Thresholds,
) -> Result<Report, DriftError> {
    let reference = profile_of(run)?;
    let (data, lines) = crate::predict::read_input(run, input)?;
    let shown = input.display().to_string();
    let Some(table) = data.table() else {
        return Err(DriftError::NoProfile {
            model: run.label.clone(),
            file: "table rows".into(),
        });
    };
    if lines.is_empty() {
        return Err(DriftError::Empty {
            input: crate::shown::path(input),
        });
    }
    compare(run, &reference, table, &shown, t)
}

/// Drift of preprocessed rows `data` from `reference`.
pub fn compare(
    run: &crate::eval::LoadedRun,
    reference: &Reference,
    data: &Dataset,
    input: &str,
    t: Thresholds,
) -> Result<Report, DriftError> {
    let values = columns_of(&run.pre, data).ok_or_else(|| DriftError::NoProfile {
        model: run.label.clone(),
        file: "table rows".into(),
    })?;
    if values.len() != reference.columns.len() {
        return Err(DriftError::Profile(
            crate::shown::path(&run.dir.join(crate::layout::DRIFT)),
            format!(
                "{} columns profiled, the model reads {}",
                reference.columns.len(),
                values.len()
            ),
        ));
    }
    let columns: Vec<Score> = reference
        .columns
        .iter()
        .zip(&values)
        .map(|(p, v)| score(p, v, t))
        .collect();
    let predictions = reference.predictions.as_ref().map(|p| {
        let v = predictions(
            &run.model,
            data,
            run.mconf.input(),
            run.task.as_ref(),
            &run.device,
        );
        score(p, &v, t)
    });
    let drifted = columns
        .iter()
        .chain(&predictions)
        .filter(|s| s.drifted)
        .map(|s| s.name.clone())
        .collect();
    Ok(Report {
        model: run.label.clone(),
        input: input.to_string(),
        rows: data.n,
        thresholds: t,
        columns,
        predictions,
        drifted,
    })
}

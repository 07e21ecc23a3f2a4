//! Why a trained model decides as it does, and whether it treats groups of people differently,
//! computed from its registry entry alone (weights, preprocessing, data checked against the
//! fingerprint it was trained on): permutation importance per original column or pixel patch
//! ([`importance`]), per-example attributions by Integrated Gradients and KernelSHAP
//! ([`attribution`]), per-group metrics and their gaps ([`fairness`]).
//!
//! Everything works on the preprocessed rows the model reads, and reports per *original*
//! column: the one-hot features of a categorical column move together.

pub mod attribution;
pub mod fairness;
pub mod importance;
pub mod reports;

use burn::module::Module;
use burn::tensor::Device;
use kiln_models::{InputShape, Model};

use crate::data::preprocess::{Column, Preprocessor};
use crate::data::{Batch, Dataset, Features, SplitName, Targets};
use crate::eval::{EvalError, LoadedRun};

/// Features that are explained together: one original column (all its one-hot features), or a
/// patch of pixels (all channels).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub features: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// What was asked cannot be done (a row out of range, a column that is not there, a model
    /// kind without explanations): the user's to fix.
    #[error("{0}")]
    Input(String),
}

impl crate::usage::UserError for ExplainError {
    fn is_usage(&self) -> bool {
        matches!(self, ExplainError::Input(_))
    }
}

/// The groups of a model's inputs: its original columns for rows, `patch` x `patch` squares
/// for images.
/// The shape explanations see: image files are images whatever the model reads them as (an
/// MLP reads their pixels as rows).
pub fn explained_input(run: &LoadedRun) -> InputShape {
    match &run.pre.images {
        Some(p) => {
            let [channels, height, width] = p.shape();
            InputShape::Images {
                channels,
                height,
                width,
            }
        }
        None => run.mconf.input(),
    }
}

pub fn groups(pre: &Preprocessor, input: InputShape, patch: usize) -> Vec<Group> {
    if let InputShape::Images {
        channels,
        height,
        width,
    } = input
    {
        let p = patch.max(1);
        let mut out = Vec::new();
        for r0 in (0..height).step_by(p) {
            for c0 in (0..width).step_by(p) {
                let (r1, c1) = ((r0 + p).min(height), (c0 + p).min(width));
                let features = (0..channels)
                    .flat_map(|c| {
                        (r0..r1)
                            .flat_map(move |r| (c0..c1).map(move |w| (c * height + r) * width + w))
                    })
                    .collect();
                out.push(Group {
                    name: format!("rows {r0}-{} cols {c0}-{}", r1 - 1, c1 - 1),
                    features,
                });
            }
        }
        return out;
    }
    let mut k = 0;
    pre.columns
        .iter()
        .map(|c| {
            let (name, width) = match c {
                Column::Numeric { name, .. } => (name, 1),
                Column::Categorical {
                    name, categories, ..
                } => (name, categories.len()),
            };
            let g = Group {
                name: name.clone(),
                features: (k..k + width).collect(),
            };
            k += width;
            g
        })
        .collect()
}

/// A split of a loaded model's data as rows of preprocessed features; an error for text.
pub fn split_rows(run: &LoadedRun, split: SplitName) -> Result<Dataset, ExplainError> {
    // An empty split is the choice of split at fault (`--split valid` of a run without one).
    let data = run.split(split).map_err(|e| match e {
        EvalError::EmptySplit { .. } => ExplainError::Input(format!("--split: {e}")),
        e => ExplainError::Eval(e),
    })?;
    match data.as_ref() {
        crate::data::Split::Table(d) => Ok(d.clone()),
        // Image files: the split decoded into memory, when it fits a fixed budget.
        crate::data::Split::Images(set) => {
            let bytes = set.files().len() as u64 * run.pre.n_features as u64 * 4;
            if bytes > IMAGE_SPLIT_BYTES {
                return Err(ExplainError::Input(format!(
                    "--split: {} images decode to {} MiB, over the {} MiB explanations hold in memory; explain a smaller split",
                    set.files().len(),
                    bytes >> 20,
                    IMAGE_SPLIT_BYTES >> 20
                )));
            }
            Ok(set.to_dataset()?)
        }
        _ => Err(not_explained(run)),
    }
}

/// The most memory a split of image files may take decoded, for explanations.
const IMAGE_SPLIT_BYTES: u64 = 512 << 20;

fn not_explained(run: &LoadedRun) -> ExplainError {
    ExplainError::Input(format!(
        "{} reads text (a {}): explanations and fairness reports cover table and image models",
        run.label,
        run.mconf.kind().name()
    ))
}

/// The quantities explained (see [`crate::task::Task::explained`]) for examples `x`
/// (`[n, d]` row-major): `[n, k]` row-major, and `k`.
pub fn outputs(run: &LoadedRun, x: &[f32], d: usize) -> (Vec<f32>, usize) {
    let n = x.len() / d.max(1);
    let input = run.mconf.input();
    // Rows are cheap: large batches; images keep a batch's activations small.
    let step = match input {
        InputShape::Images { .. } => 256,
        _ => 8192,
    };
    let mut out = Vec::new();
    let mut k = 0;
    for start in (0..n).step_by(step) {
        let end = (start + step).min(n);
        let batch = Batch {
            x: Features::Dense {
                x: x[start * d..end * d].to_vec(),
                width: d,
            },
            y: Targets::Values(vec![0.0; end - start]),
            len: end - start,
        }
        .upload(input, &run.device);
        let Some(xb) = batch.input else { continue };
        let e = run
            .task
            .explained(run.model.forward(xb))
            .expect("only per-example tasks reach explanations");
        k = e.dims()[1];
        out.extend(e.into_data().try_to_vec::<f32>().expect("outputs are f32"));
    }
    (out, k)
}

/// The model on the CPU with autodiff, frozen (no parameter gradients, dropout off, batch
/// norm on its running statistics): gradients with respect to the inputs only.
pub fn differentiable(run: &LoadedRun) -> Result<(Model, Device), ExplainError> {
    let device = run.device.clone().autodiff();
    let weights = |source| {
        ExplainError::Eval(EvalError::Weights {
            path: run.label.clone(),
            source,
        })
    };
    let bytes = crate::weights::to_bytes(&run.model).map_err(weights)?;
    let model = crate::weights::from_bytes(run.mconf.init(&device), bytes).map_err(weights)?;
    Ok((model.freeze(), device))
}

/// Checks that the model's outputs are one vector per example (not a language model's).
pub fn check_explainable(run: &LoadedRun) -> Result<(), ExplainError> {
    match run.mconf.input() {
        InputShape::Tokens { .. } => Err(not_explained(run)),
        _ => Ok(()),
    }
}

/// The most rows one `kiln explain --rows` explains.
const MAX_ROWS: usize = 10_000;

/// Rows of a split by `--rows`: `0,17,42`, `0:8` (8 excluded), or both (`0:4,10`).
pub fn parse_rows(spec: &str, n: usize, split: &str) -> Result<Vec<usize>, ExplainError> {
    let bad = |m: String| ExplainError::Input(format!("--rows {spec:?}: {m}"));
    let mut rows = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("{s:?} is not a row number (0, 1, ...)")))
        };
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a >= b {
                    return Err(bad(format!("{a}:{b} is empty (the end is excluded)")));
                }
                if b > n {
                    return Err(bad(format!(
                        "rows {a}:{b} run out of range: the {split} split has {n} examples (0..{})",
                        n.saturating_sub(1)
                    )));
                }
                if b - a > MAX_ROWS {
                    return Err(bad(format!(
                        "{} rows: explain at most {MAX_ROWS} at a time",
                        b - a
                    )));
                }
                rows.extend(a..b);
            }
            None => rows.push(num(part)?),
        }
    }
    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
        return Err(bad(format!(
            "row {r} is out of range: the {split} split has {n} examples (0..{})",
            n.saturating_sub(1)
        )));
    }
    if rows.len() > MAX_ROWS {
        return Err(bad(format!(
            "{} rows: explain at most {MAX_ROWS} at a time",
            rows.len()
        )));
    }
    Ok(rows)
}

/// The scale of the explained outputs: 1 for probabilities, the target's standard deviation
/// for a regression (its outputs are in the target's units).
pub fn output_scale(pre: &Preprocessor) -> f64 {
    match pre.target {
        crate::data::preprocess::TargetEncoding::Values { std, .. } => std,
        _ => 1.0,
    }
}

/// The preprocessed encoding of an all-zero raw input (a black image).
pub fn encoded_zeros(pre: &Preprocessor, d: usize) -> Vec<f32> {
    // Image files: black is `-mean / std` of each channel.
    if let Some(p) = &pre.images {
        let plane = p.size[0] * p.size[1];
        return (0..d)
            .map(|j| (-p.mean[j / plane] / p.std[j / plane]) as f32)
            .collect();
    }
    if pre.columns.is_empty() {
        return vec![pre.encode_value(0.0, 0.0, 1.0); d];
    }
    let mut out = Vec::with_capacity(d);
    for c in &pre.columns {
        match c {
            Column::Numeric { mean, std, .. } => out.push(pre.encode_value(0.0, *mean, *std)),
            Column::Categorical { categories, .. } => {
                out.extend(std::iter::repeat_n(0.0, categories.len()))
            }
        }
    }
    out
}

/// The mean of each feature over the rows of `data`.
pub fn feature_means(data: &Dataset) -> Vec<f32> {
    let mut sum = vec![0f64; data.d];
    for row in data.x.chunks(data.d.max(1)) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v as f64;
        }
    }
    sum.iter()
        .map(|s| (s / data.n.max(1) as f64) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_lists_and_ranges_and_refuse_what_is_not_there() {
        assert_eq!(parse_rows("0,17,42", 100, "test").unwrap(), [0, 17, 42]);
        assert_eq!(parse_rows("0:3, 9", 100, "test").unwrap(), [0, 1, 2, 9]);
        let e = parse_rows("5,100", 100, "test").unwrap_err().to_string();
        assert!(e.contains("row 100") && e.contains("100 examples"), "{e}");
        let e = parse_rows("0:18446744073709551615", 100, "test").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        assert!(parse_rows("3:3", 10, "test").is_err());
        use crate::usage::UserError;
        assert!(parse_rows("a", 10, "test").unwrap_err().is_usage());
    }

    #[test]
    fn image_patches_cover_every_pixel_once() {
        let pre = Preprocessor {
            columns: Vec::new(),
            image: None,
            target: crate::data::preprocess::TargetEncoding::NextToken,
            missing_values: Vec::new(),
            n_features: 2 * 5 * 7,
            text: None,
            images: None,
        };
        let shape = InputShape::Images {
            channels: 2,
            height: 5,
            width: 7,
        };
        let g = groups(&pre, shape, 3);
        assert_eq!(g.len(), 2 * 3);
        let mut all: Vec<usize> = g.iter().flat_map(|g| g.features.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..70).collect::<Vec<_>>());
    }
}

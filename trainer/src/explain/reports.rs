//! What `kiln explain`, `kiln fairness` and the HTML report ask of a loaded model, and the
//! serialisable answers they print, write as JSON and draw.

use kiln_models::InputShape;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::attribution::{self, Attribution, IgOptions, ShapOptions};
use super::fairness::{self, Breakdown, GroupMetrics, Limits, Predicted};
use super::importance::{self, ImportanceReport};
use super::{ExplainError, Group, outputs};
use crate::data::preprocess::Column;
use crate::data::{Dataset, SplitName, Targets};
use crate::eval::LoadedRun;

/// The name `--split` takes.
pub fn split_name(split: SplitName) -> &'static str {
    match split {
        SplitName::Train => "train",
        SplitName::Valid => "valid",
        SplitName::Test => "test",
    }
}

/// Global importance: how it is measured.
#[derive(Debug, Clone)]
pub struct ImportanceRequest {
    pub split: SplitName,
    pub metric: Option<String>,
    pub repeats: usize,
    pub seed: u64,
    /// Pixels per side of an image patch.
    pub patch: usize,
    /// At most this many rows (seeded draw); `None`: all rows of a table, 1000 images.
    pub max_samples: Option<usize>,
}

/// Rows scored when permuting images, unless `--max-samples` says otherwise.
pub const IMAGE_SAMPLES: usize = 1000;

/// `--repeats` at most: each repeat is a pass over the rows per column.
pub const MAX_REPEATS: usize = 1000;

pub fn importance(
    run: &LoadedRun,
    req: &ImportanceRequest,
) -> Result<ImportanceReport, ExplainError> {
    super::check_explainable(run)?;
    if !(1..=MAX_REPEATS).contains(&req.repeats) {
        return Err(ExplainError::Input(format!(
            "--repeats {}: 1 to {MAX_REPEATS}",
            req.repeats
        )));
    }
    // Shuffling a column of one row changes nothing: every importance would be 0.
    if let Some(m) = req.max_samples.filter(|m| *m < 2) {
        return Err(ExplainError::Input(format!(
            "--max-samples {m}: at least 2 (shuffling one row changes nothing)"
        )));
    }
    let data = super::split_rows(run, req.split)?;
    if data.n < 2 {
        return Err(ExplainError::Input(format!(
            "--split {}: {} row; permutation importance shuffles at least 2",
            split_name(req.split),
            data.n
        )));
    }
    let input = super::explained_input(run);
    let max = match (req.max_samples, input) {
        (Some(m), _) => m,
        (None, InputShape::Images { .. }) => IMAGE_SAMPLES,
        (None, _) => usize::MAX,
    };
    let data = importance::subsample(&data, max, req.seed);
    let groups = super::groups(&run.pre, input, req.patch);
    let metric = importance::metric_for(run, req.metric.as_deref());
    importance::permutation_importance(run, &data, &groups, &metric, req.repeats, req.seed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Ig,
    Shap,
    Both,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ig" | "integrated-gradients" => Ok(Method::Ig),
            "shap" | "kernel-shap" => Ok(Method::Shap),
            "both" => Ok(Method::Both),
            _ => Err(format!("--method {s:?}: use ig, shap or both")),
        }
    }
}

/// Per-example attributions: of which rows, how.
#[derive(Debug, Clone)]
pub struct RowsRequest {
    pub split: SplitName,
    /// `--rows`: `0,17,42`, `0:8`.
    pub rows: String,
    /// `None`: IG and KernelSHAP for tables, IG for images.
    pub method: Option<Method>,
    /// A class name to explain (classification); `None`: each row's predicted class.
    pub class: Option<String>,
    pub ig: IgOptions,
    /// KernelSHAP's coalitions per row.
    pub budget: usize,
    /// KernelSHAP's background: this many training rows (seeded draw; all when fewer).
    pub background: usize,
    pub seed: u64,
}

/// One row explained.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowExplanation {
    /// The row's index in the split.
    pub row: usize,
    /// The model's prediction: a class name, or a value in the target's units.
    pub prediction: serde_json::Value,
    /// The class whose probability is explained (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The row's values as the data has them (tables; decoded from the preprocessing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrated_gradients: Option<Attribution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_shap: Option<Attribution>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RowsReport {
    pub model: String,
    pub split: String,
    /// What the attributions are in: `probability` or the regression target's name.
    pub output: String,
    /// What each attribution value belongs to: original columns, or pixels (row-major).
    pub groups: Vec<String>,
    /// Images: `[channels, height, width]`, the attributions are per pixel (channels summed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_shape: Option<[usize; 3]>,
    /// The preprocessed rows explained, for images (to draw the attributions over them).
    #[serde(skip)]
    pub pixels: Vec<Vec<f32>>,
    /// IG's completeness tolerance (relative).
    pub tolerance: f64,
    /// The outputs' scale (1 for probabilities, the target's standard deviation).
    pub scale: f64,
    pub rows: Vec<RowExplanation>,
}

/// The raw values of a preprocessed row, per original column (as drift decodes them).
fn decoded(run: &LoadedRun, x: &[f32]) -> Vec<String> {
    let row = Dataset {
        x: x.to_vec(),
        y: Targets::Values(vec![0.0]),
        n: 1,
        d: x.len(),
    };
    let names = |c: &Column| match c {
        Column::Categorical { categories, .. } => categories.clone(),
        Column::Numeric { .. } => Vec::new(),
    };
    crate::drift::columns_of(&run.pre, &row)
        .unwrap_or_default()
        .into_iter()
        .zip(&run.pre.columns)
        .map(|(v, c)| match v {
            crate::drift::Values::Numeric(v) => format!("{}", v[0]),
            crate::drift::Values::Categorical(v) => {
                v[0].map_or("<unseen>".into(), |i| names(c)[i].clone())
            }
        })
        .collect()
}

/// One group per pixel, its channels together.
fn pixel_groups(c: usize, h: usize, w: usize) -> Vec<Group> {
    (0..h * w)
        .map(|p| Group {
            name: format!("({}, {})", p / w, p % w),
            features: (0..c).map(|ch| ch * h * w + p).collect(),
        })
        .collect()
}

pub fn attributions(run: &LoadedRun, req: &RowsRequest) -> Result<RowsReport, ExplainError> {
    super::check_explainable(run)?;
    let split = split_name(req.split);
    let data = super::split_rows(run, req.split)?;
    let rows = super::parse_rows(&req.rows, data.n, split)?;
    let input = run.mconf.input();
    let image = explained_image(run, input);
    let method = req.method.unwrap_or(match image {
        Some(_) => Method::Ig,
        None => Method::Both,
    });
    if image.is_some() && method != Method::Ig {
        return Err(ExplainError::Input(
            "KernelSHAP explains table models (its coalitions of pixels are not informative): use --method ig for images".into(),
        ));
    }
    let groups = match image {
        Some([c, h, w]) => pixel_groups(c, h, w),
        None => super::groups(&run.pre, input, 1),
    };
    let names = run.task.class_names().map(<[String]>::to_vec);
    let class = requested_class(run, req, names.as_deref())?;
    let d = data.d;
    let (baseline, background) = references(run, req, image, d)?;
    // The frozen autodiff model, built once for every row.
    let frozen = matches!(method, Method::Ig | Method::Both)
        .then(|| super::differentiable(run))
        .transpose()?;
    let mut out = Vec::with_capacity(rows.len());
    let mut pixels = Vec::new();
    for &r in &rows {
        let x = &data.x[r * d..(r + 1) * d];
        let (prediction, explained_class, index) =
            row_prediction(run, x, d, names.as_deref(), class);
        let ig = frozen
            .as_ref()
            .map(|f| {
                attribution::integrated_gradients(run, f, x, &baseline, index, &groups, req.ig)
            })
            .transpose()?;
        let shap = matches!(method, Method::Shap | Method::Both).then(|| {
            let opts = ShapOptions {
                budget: req.budget,
                seed: req.seed ^ r as u64,
            };
            attribution::kernel_shap(run, x, &background, &groups, opts).swap_remove(index)
        });
        if image.is_some() {
            pixels.push(x.to_vec());
        }
        out.push(RowExplanation {
            row: r,
            prediction,
            class: explained_class,
            values: if image.is_some() {
                Vec::new()
            } else {
                decoded(run, x)
            },
            integrated_gradients: ig,
            kernel_shap: shap,
        });
    }
    Ok(RowsReport {
        model: run.label.clone(),
        split: split.into(),
        output: match names {
            Some(_) => "probability".into(),
            None => "prediction".into(),
        },
        groups: groups.into_iter().map(|g| g.name).collect(),
        image_shape: image,
        pixels,
        tolerance: req.ig.tolerance,
        scale: super::output_scale(&run.pre),
        rows: out,
    })
}

/// The `[channels, height, width]` of the images explained, or `None` for a table model.
fn explained_image(run: &LoadedRun, input: InputShape) -> Option<[usize; 3]> {
    match (input, &run.pre.images) {
        // Image files are images whatever the model reads them as (an MLP reads rows).
        (_, Some(files)) => Some(files.shape()),
        (
            InputShape::Images {
                channels,
                height,
                width,
            },
            None,
        ) => Some([channels, height, width]),
        _ => None,
    }
}

/// The index of the class `--class` names among `names` (`None`: each row's predicted
/// class); an error for a class the model does not have, or for a regression model.
fn requested_class(
    run: &LoadedRun,
    req: &RowsRequest,
    names: Option<&[String]>,
) -> Result<Option<usize>, ExplainError> {
    let class = match (&req.class, names) {
        (None, _) => None,
        (Some(c), Some(names)) => match names.iter().position(|n| n == c) {
            Some(i) => Some(i),
            None => {
                return Err(ExplainError::Input(format!(
                    "--class {c:?}: no such class (classes: {})",
                    names.join(", ")
                )));
            }
        },
        (Some(_), None) => {
            return Err(ExplainError::Input(format!(
                "--class: {} is a regression model; its prediction is explained",
                run.label
            )));
        }
    };
    Ok(class)
}

/// What the attributions are measured against, from the training split: IG's baseline
/// (images: zeros as the model reads them; tables: the feature means) and KernelSHAP's
/// background rows.
fn references(
    run: &LoadedRun,
    req: &RowsRequest,
    image: Option<[usize; 3]>,
    d: usize,
) -> Result<(Vec<f32>, Vec<f32>), ExplainError> {
    let train = run.split(SplitName::Train)?;
    let train = train
        .as_ref()
        .table()
        .cloned()
        .unwrap_or_else(|| Dataset::empty(d));
    let baseline = match image {
        Some(_) => super::encoded_zeros(&run.pre, d),
        None => super::feature_means(&train),
    };
    let background = background(&train, req.background, req.seed);
    Ok((baseline, background))
}

/// The model's prediction for the row `x` (a class name, or its output), the class explained
/// (`class`, else the predicted one) and the index of the output whose attributions are kept.
fn row_prediction(
    run: &LoadedRun,
    x: &[f32],
    d: usize,
    names: Option<&[String]>,
    class: Option<usize>,
) -> (serde_json::Value, Option<String>, usize) {
    let (probs, _) = outputs(run, x, d);
    let predicted = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    match names {
        Some(names) => {
            let c = class.unwrap_or(predicted);
            (names[predicted].clone().into(), Some(names[c].clone()), c)
        }
        None => (serde_json::json!(probs[0]), None, 0),
    }
}

/// At most `n` rows of `train` (a seeded draw, in order; all when there are fewer).
fn background(train: &Dataset, n: usize, seed: u64) -> Vec<f32> {
    let d = train.d;
    let mut idx: Vec<usize> = (0..train.n).collect();
    if train.n > n {
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xbac6));
        idx.truncate(n.max(1));
        idx.sort_unstable();
    }
    idx.iter()
        .flat_map(|&i| train.x[i * d..(i + 1) * d].iter().copied())
        .collect()
}

/// Fairness: which groups, which outcome, which limits.
#[derive(Debug, Clone)]
pub struct FairnessRequest {
    pub split: SplitName,
    pub columns: Vec<String>,
    /// The favourable class; `None`: the second of two classes.
    pub positive: Option<String>,
    /// Groups with fewer examples are flagged.
    pub min_group: usize,
    pub limits: Limits,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FairnessReport {
    pub model: String,
    pub split: String,
    pub positive: String,
    pub overall: GroupMetrics,
    /// One per column, then their intersection when there are several.
    pub breakdowns: Vec<Breakdown>,
    /// The limits broken, one line each (empty: all held, or none set).
    pub violations: Vec<String>,
}

pub fn fairness(run: &LoadedRun, req: &FairnessRequest) -> Result<FairnessReport, ExplainError> {
    super::check_explainable(run)?;
    if req.columns.is_empty() {
        return Err(ExplainError::Input(
            "name the group columns: --group sex [--group race ...]".into(),
        ));
    }
    let Some(names) = run.task.class_names() else {
        return Err(ExplainError::Input(format!(
            "{} is a regression model: fairness metrics (selection rate, TPR, FPR) need a classifier",
            run.label
        )));
    };
    let positive = match &req.positive {
        Some(p) => names.iter().position(|n| n == p).ok_or_else(|| {
            ExplainError::Input(format!(
                "--positive {p:?}: no such class (classes: {})",
                names.join(", ")
            ))
        })?,
        None if names.len() == 2 => 1,
        None => {
            return Err(ExplainError::Input(format!(
                "{} has {} classes: name the favourable one with --positive (one of {})",
                run.label,
                names.len(),
                names.join(", ")
            )));
        }
    };
    let split = split_name(req.split);
    let data = super::split_rows(run, req.split)?;
    let Targets::Classes(truth) = &data.y else {
        unreachable!("a classifier's targets are classes")
    };
    for c in &req.columns {
        if req.columns.iter().filter(|x| *x == c).count() > 1 {
            return Err(ExplainError::Input(format!(
                "--group {} is named twice",
                crate::shown::name(c)
            )));
        }
    }
    let columns = crate::data::split_columns(&run.data_spec, req.split, &req.columns)
        .map_err(|e| ExplainError::Input(format!("--group: {e}")))?;
    for (c, values) in req.columns.iter().zip(&columns) {
        if values.len() != data.n {
            return Err(ExplainError::Input(format!(
                "--group {c}: {} values for the {} examples of the {split} split",
                values.len(),
                data.n
            )));
        }
        fairness::check_column(c, values).map_err(ExplainError::Input)?;
    }
    let (probs, k) = outputs(run, &data.x, data.d);
    let predicted: Vec<u32> = probs
        .chunks(k)
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        })
        .collect();
    let score: Vec<f64> = probs.chunks(k).map(|p| p[positive] as f64).collect();
    let p = Predicted {
        truth,
        predicted: &predicted,
        score: &score,
        positive: positive as u32,
    };
    let all: Vec<usize> = (0..data.n).collect();
    let overall = fairness::group_metrics(&p, &all, vec!["all".into()], 0);
    let mut breakdowns: Vec<Breakdown> = req
        .columns
        .iter()
        .zip(&columns)
        .map(|(name, values)| {
            fairness::breakdown(&p, std::slice::from_ref(name), &[values], req.min_group)
        })
        .collect();
    if columns.len() > 1 {
        let refs: Vec<&[String]> = columns.iter().map(Vec::as_slice).collect();
        breakdowns.push(fairness::breakdown(&p, &req.columns, &refs, req.min_group));
    }
    let violations = breakdowns
        .iter()
        .flat_map(|b| fairness::violations(b, &req.limits))
        .collect();
    Ok(FairnessReport {
        model: run.label.clone(),
        split: split.into(),
        positive: names[positive].clone(),
        overall,
        breakdowns,
        violations,
    })
}

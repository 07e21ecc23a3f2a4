//! Export to ONNX for serving, with a parity gate.
//!
//! The graph takes the features as the data file holds them (numeric columns in their own
//! units, missing ones as NaN; categorical columns one-hot, by the categories in the metadata
//! and the JSON file beside the model; image pixels as stored) and applies kiln's numeric
//! preprocessing itself: imputation, standardisation, pixel scaling. Then the model, then the
//! outputs: `logits` and `probabilities` for classification, `prediction` (in the target's
//! units) for regression.
//!
//! An export is accepted only when an independent runtime agrees: after writing the graph, kiln
//! runs it with tract (pure Rust) on a validation batch and compares with its own outputs.

pub mod run;

/// The ONNX graph builder and protobuf messages live with the models, which lower themselves.
pub use kiln_models::onnx as graph;
pub use kiln_models::onnx::proto;

use kiln_models::{InputShape, ModelConfig};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::data::preprocess::{Column, Preprocessor, TargetEncoding};
use crate::task::Task;
use graph::{Builder, LowerError};
use proto::*;

/// Tolerances of the parity gate.
pub const MAX_ABS_TOLERANCE: f64 = 1e-4;

/// Opsets kiln writes: 17 brings `LayerNormalization`; 20 `Gelu`.
pub const OPSETS: std::ops::RangeInclusive<i64> = 17..=21;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Dynamic,
    Fixed(usize),
}

/// `--batch N` at most: the parity gate runs a batch of this many rows through both graphs.
pub const MAX_FIXED_BATCH: usize = 65_536;

impl std::str::FromStr for Batch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dynamic" => Ok(Self::Dynamic),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|&n| (1..=MAX_FIXED_BATCH).contains(&n))
                .map(Self::Fixed)
                .ok_or_else(|| {
                    format!("--batch {s:?}: use `dynamic` or a size from 1 to {MAX_FIXED_BATCH}")
                }),
        }
    }
}

/// What the graph's input expects, per feature: `x * scale + shift`, after NaN becomes `fill`.
pub struct FeatureAffine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    /// Per feature; `None` when no column imputes.
    pub fill: Option<Vec<f32>>,
}

/// kiln's numeric preprocessing as one affine map per feature (computed in f64, as kiln does).
pub fn feature_affine(pre: &Preprocessor) -> FeatureAffine {
    let (im, is) = pre.image.as_ref().map_or((0.0, 1.0), |i| (i.mean, i.std));
    let ident = ((1.0 / is) as f32, (-im / is) as f32);
    let mut scale = Vec::with_capacity(pre.n_features);
    let mut shift = Vec::with_capacity(pre.n_features);
    let mut fill = Vec::with_capacity(pre.n_features);
    let mut imputes = false;
    for c in &pre.columns {
        match c {
            Column::Numeric {
                fill: f, mean, std, ..
            } => {
                scale.push((1.0 / (std * is)) as f32);
                shift.push(((-mean / std - im) / is) as f32);
                imputes |= f.is_some();
                fill.push(f.map_or(f32::NAN, |v| v as f32));
            }
            // One-hot features are 0/1 as they are: kiln does not scale them.
            Column::Categorical { categories, .. } => {
                for _ in categories {
                    scale.push(1.0);
                    shift.push(0.0);
                    fill.push(0.0);
                }
            }
        }
    }
    while scale.len() < pre.n_features {
        scale.push(ident.0);
        shift.push(ident.1);
        fill.push(0.0);
    }
    FeatureAffine {
        scale,
        shift,
        fill: imputes.then_some(fill),
    }
}

/// The inverse of [`feature_affine`] for rows kiln has already preprocessed: the raw features
/// a serving system would send (in f64, then f32).
pub fn raw_features(pre: &Preprocessor, x: &[f32]) -> Vec<f32> {
    let (im, is) = pre.image.as_ref().map_or((0.0, 1.0), |i| (i.mean, i.std));
    // Per feature: `raw = (x * a + b) * std + mean`; one-hot features are left as they are.
    let mut per_feature: Vec<(f64, f64, f64, f64)> = Vec::with_capacity(pre.n_features);
    for c in &pre.columns {
        match c {
            Column::Numeric { mean, std, .. } => per_feature.push((is, im, *std, *mean)),
            Column::Categorical { categories, .. } => {
                per_feature.extend(categories.iter().map(|_| (1.0, 0.0, 1.0, 0.0)))
            }
        }
    }
    per_feature.resize(pre.n_features, (is, im, 1.0, 0.0));
    x.chunks(pre.n_features)
        .flat_map(|row| {
            row.iter()
                .zip(&per_feature)
                .map(|(&v, &(a, b, std, mean))| (((v as f64) * a + b) * std + mean) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The JSON beside the model: how to turn a row of the data file into the graph's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub input: String,
    pub input_width: usize,
    pub outputs: Vec<String>,
    /// Per input column, in order: numeric (one feature, raw units, NaN when missing) or
    /// categorical (one feature per category, 1 for the row's category, all 0 for one not
    /// seen in training; a missing value takes `fill`).
    pub columns: Vec<Column>,
    pub missing_values: Vec<String>,
    pub image_shape: Option<[usize; 3]>,
    pub class_names: Option<Vec<String>>,
    pub target: TargetEncoding,
    /// A token model's tokenizer: how text becomes `input_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<crate::data::text::Tokenizer>,
    /// An image model's preprocessing, which the graph applies itself to the `image` input
    /// (pixels 0-255, any height and width): resize, centre crop, per-channel normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<crate::data::images::ImagePrep>,
}

pub fn sidecar(pre: &Preprocessor, outputs: &[&str]) -> Sidecar {
    Sidecar {
        input: match (&pre.text, &pre.images) {
            (Some(_), _) => TOKENS_INPUT.into(),
            (None, Some(_)) => IMAGE_INPUT.into(),
            (None, None) => "features".into(),
        },
        tokenizer: pre.text.clone(),
        images: pre.images.clone(),
        input_width: pre.n_features,
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        columns: pre.columns.clone(),
        missing_values: pre.missing_values.clone(),
        image_shape: pre.image.as_ref().map(|i| i.shape),
        class_names: pre.class_names().map(<[String]>::to_vec),
        target: pre.target.clone(),
    }
}

fn tensor_info(name: &str, batch: Batch, width: usize) -> ValueInfoProto {
    let b = match batch {
        Batch::Dynamic => DimensionValue::DimParam("batch".into()),
        Batch::Fixed(n) => DimensionValue::DimValue(n as i64),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension { value: Some(b) },
                        Dimension {
                            value: Some(DimensionValue::DimValue(width as i64)),
                        },
                    ],
                }),
            }),
        }),
        doc_string: String::new(),
    }
}

/// The input of a token model's graph.
pub const TOKENS_INPUT: &str = "input_ids";

/// `[batch, sequence(, width)]` of `elem_type`, the sequence dynamic.
fn sequence_info(name: &str, batch: Batch, width: Option<usize>, elem_type: i32) -> ValueInfoProto {
    let b = match batch {
        Batch::Dynamic => DimensionValue::DimParam("batch".into()),
        Batch::Fixed(n) => DimensionValue::DimValue(n as i64),
    };
    let mut dim = vec![
        Dimension { value: Some(b) },
        Dimension {
            value: Some(DimensionValue::DimParam("sequence".into())),
        },
    ];
    if let Some(w) = width {
        dim.push(Dimension {
            value: Some(DimensionValue::DimValue(w as i64)),
        });
    }
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: String::new(),
    }
}

/// The input of an image model's graph: `[batch, channels, height, width]` pixels on the
/// 0-255 scale, height and width dynamic.
pub const IMAGE_INPUT: &str = "image";

fn image_info(batch: Batch, channels: usize) -> ValueInfoProto {
    let b = match batch {
        Batch::Dynamic => DimensionValue::DimParam("batch".into()),
        Batch::Fixed(n) => DimensionValue::DimValue(n as i64),
    };
    let dim = [
        b,
        DimensionValue::DimValue(channels as i64),
        DimensionValue::DimParam("height".into()),
        DimensionValue::DimParam("width".into()),
    ]
    .into_iter()
    .map(|v| Dimension { value: Some(v) })
    .collect();
    ValueInfoProto {
        name: IMAGE_INPUT.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: String::new(),
    }
}

/// kiln's image preprocessing as graph nodes, then the model: pixels scaled to [0, 1], resized
/// (bilinear, `half_pixel`) to cover the model's size with the aspect ratio kept, centre
/// cropped, standardised per channel (see [`crate::data::images`]).
fn lower_images(
    g: &mut Builder,
    mconf: &ModelConfig,
    prep: &crate::data::images::ImagePrep,
) -> Result<String, LowerError> {
    use graph::{attr_int, attr_string};
    let [h, w] = prep.size;
    let c = prep.channels;
    let inv = g.constant("inv_255", &[], &[1.0 / 255.0]);
    let x = g.node("Mul", &[IMAGE_INPUT, &inv], vec![], None);
    // The size that covers the target: floor(side * max(h / H, w / W) + 0.5), at least the
    // target; then the centre crop's start, (size - target) / 2.
    let shape = g.node("Shape", &[&x], vec![], None);
    let (two, four, zero) = (
        g.constant_i64("two", &[2]),
        g.constant_i64("four", &[4]),
        g.constant_i64("zero", &[0]),
    );
    let hw = g.node("Slice", &[&shape, &two, &four], vec![], None);
    let nc = g.node("Slice", &[&shape, &zero, &two], vec![], None);
    let hw_f = g.node("Cast", &[&hw], vec![attr_int("to", FLOAT as i64)], None);
    let target_f = g.constant("target", &[2], &[h as f32, w as f32]);
    let ratio = g.node("Div", &[&target_f, &hw_f], vec![], None);
    let (i0, i1) = (
        g.constant_i64_scalar("i0", 0),
        g.constant_i64_scalar("i1", 1),
    );
    let r0 = g.node("Gather", &[&ratio, &i0], vec![], None);
    let r1 = g.node("Gather", &[&ratio, &i1], vec![], None);
    let scale = g.node("Max", &[&r0, &r1], vec![], None);
    let scaled = g.node("Mul", &[&hw_f, &scale], vec![], None);
    let half = g.constant("half", &[], &[0.5]);
    let rounded = g.node("Add", &[&scaled, &half], vec![], None);
    let rounded = g.node("Floor", &[&rounded], vec![], None);
    let covered = g.node("Max", &[&rounded, &target_f], vec![], None);
    let covered = g.node(
        "Cast",
        &[&covered],
        vec![attr_int("to", INT64 as i64)],
        None,
    );
    let sizes = g.node("Concat", &[&nc, &covered], vec![attr_int("axis", 0)], None);
    let resized = g.node(
        "Resize",
        &[&x, "", "", &sizes],
        vec![
            attr_string("mode", "linear"),
            attr_string("coordinate_transformation_mode", "half_pixel"),
        ],
        None,
    );
    let target_i = g.constant_i64("target_i", &[h as i64, w as i64]);
    let extra = g.node("Sub", &[&covered, &target_i], vec![], None);
    let two_s = g.constant_i64_scalar("two_scalar", 2);
    let start = g.node("Div", &[&extra, &two_s], vec![], None);
    let end = g.node("Add", &[&start, &target_i], vec![], None);
    let axes = g.constant_i64("axes_hw", &[2, 3]);
    let cropped = g.node("Slice", &[&resized, &start, &end, &axes], vec![], None);
    let mean: Vec<f32> = prep.mean.iter().map(|&m| m as f32).collect();
    let std: Vec<f32> = prep.std.iter().map(|&s| s as f32).collect();
    let mean = g.constant("channel_mean", &[c, 1, 1], &mean);
    let std = g.constant("channel_std", &[c, 1, 1], &std);
    let centred = g.node("Sub", &[&cropped, &mean], vec![], None);
    let mut x = g.node("Div", &[&centred, &std], vec![], None);
    // A model that reads rows (an MLP) reads the pixels flattened, channel by channel.
    if let InputShape::Rows { .. } = mconf.input() {
        x = g.node("Flatten", &[&x], vec![attr_int("axis", 1)], None);
    }
    mconf.lower(g, &x)
}

/// The numeric preprocessing of raw features, then the model; returns the model's output.
fn lower_features(
    g: &mut Builder,
    mconf: &ModelConfig,
    pre: &Preprocessor,
    shape: InputShape,
) -> Result<String, LowerError> {
    let d = pre.n_features;
    let affine = feature_affine(pre);
    let mut x = "features".to_string();
    if let Some(fill) = &affine.fill {
        let f = g.constant("fill", &[d], fill);
        let nan = g.node("IsNaN", &[&x], vec![], None);
        x = g.node("Where", &[&nan, &f, &x], vec![], None);
    }
    let a = g.constant("scale", &[d], &affine.scale);
    let b = g.constant("shift", &[d], &affine.shift);
    let scaled = g.node("Mul", &[&x, &a], vec![], None);
    let mut x = g.node("Add", &[&scaled, &b], vec![], None);
    // The rows as the model reads its examples.
    if let InputShape::Images {
        channels,
        height,
        width,
    } = shape
    {
        let shape = g.constant_i64(
            "image_shape",
            &[-1, channels as i64, height as i64, width as i64],
        );
        x = g.node("Reshape", &[&x, &shape], vec![], None);
    }
    mconf.lower(g, &x)
}

/// Writes the ONNX model: preprocessing, the model's layers, the task's outputs, and
/// `metadata`.
pub fn build(
    mconf: &ModelConfig,
    weights: &graph::Weights,
    pre: &Preprocessor,
    task: &dyn Task,
    opset: i64,
    batch: Batch,
    metadata: &[(String, String)],
) -> Result<Vec<u8>, LowerError> {
    if !OPSETS.contains(&opset) {
        return Err(LowerError {
            layer: "(model)".into(),
            why: format!(
                "opset {opset} is not one kiln writes ({}..={}; LayerNormalization needs 17)",
                OPSETS.start(),
                OPSETS.end()
            ),
        });
    }
    let mut g = Builder::new(weights, opset);
    let (input, outputs) = match mconf.input() {
        // Token ids in, logits per position out: both axes dynamic (the sequence at most the
        // model's block size).
        InputShape::Tokens { .. } => {
            let out = mconf.lower(&mut g, TOKENS_INPUT)?;
            let per_position = pre.target == TargetEncoding::NextToken;
            let outputs = task
                .lower_outputs(&mut g, &out)
                .into_iter()
                .map(|(name, width)| match per_position {
                    true => sequence_info(name, batch, Some(width), FLOAT),
                    false => tensor_info(name, batch, width),
                })
                .collect();
            (sequence_info(TOKENS_INPUT, batch, None, INT64), outputs)
        }
        _ if pre.images.is_some() => {
            let prep = pre.images.as_ref().expect("checked");
            let channels = prep.channels;
            let out = lower_images(&mut g, mconf, prep)?;
            let outputs = task
                .lower_outputs(&mut g, &out)
                .into_iter()
                .map(|(name, width)| tensor_info(name, batch, width))
                .collect();
            (image_info(batch, channels), outputs)
        }
        shape => {
            let out = lower_features(&mut g, mconf, pre, shape)?;
            let outputs = task
                .lower_outputs(&mut g, &out)
                .into_iter()
                .map(|(name, width)| tensor_info(name, batch, width))
                .collect();
            (tensor_info("features", batch, pre.n_features), outputs)
        }
    };
    let model = ModelProto {
        // The IR version each opset came with.
        ir_version: match opset {
            ..=18 => 8,
            19..=20 => 9,
            _ => 10,
        },
        producer_name: "kiln".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: "Exported by kiln; input: see the metadata (input_layout, preprocessing)"
            .into(),
        graph: Some(GraphProto {
            node: g.nodes,
            name: "kiln".into(),
            initializer: g.initializers,
            doc_string: String::new(),
            input: vec![input],
            output: outputs,
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    };
    Ok(model.encode_to_vec())
}

/// Runs an ONNX model with tract on `x` (`rows` x `width`); returns each output, row-major.
pub fn run_tract(
    model_bytes: &[u8],
    x: &[f32],
    rows: usize,
    width: usize,
) -> Result<Vec<Vec<f32>>, String> {
    run_tract_on(model_bytes, x.to_vec(), &[rows, width])
}

/// Runs a token model with tract on `ids` (`rows` x `len`); returns each output, row-major.
pub fn run_tract_tokens(
    model_bytes: &[u8],
    ids: &[u32],
    rows: usize,
    len: usize,
) -> Result<Vec<Vec<f32>>, String> {
    run_tract_on(
        model_bytes,
        ids.iter().map(|&i| i64::from(i)).collect(),
        &[rows, len],
    )
}

/// Runs an image model with tract on `x`, pixels 0-255 of `[n, channels, height, width]`.
pub fn run_tract_images(
    model_bytes: &[u8],
    x: &[f32],
    shape: [usize; 4],
) -> Result<Vec<Vec<f32>>, String> {
    run_tract_on(model_bytes, x.to_vec(), &shape)
}

/// Runs the graph on one input of `T` of `shape` (row-major `x`).
fn run_tract_on<T: tract_onnx::prelude::Datum>(
    model_bytes: &[u8],
    x: Vec<T>,
    shape: &[usize],
) -> Result<Vec<Vec<f32>>, String> {
    use tract_onnx::prelude::*;
    let model = tract_onnx::onnx()
        .model_for_read(&mut &model_bytes[..])
        .map_err(|e| format!("tract cannot read the model: {e}"))?
        .with_input_fact(0, T::fact(shape).into())
        .map_err(|e| e.to_string())?
        .into_optimized()
        .map_err(|e| format!("tract cannot optimise the model: {e}"))?
        .into_runnable()
        .map_err(|e| e.to_string())?;
    let input = tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(shape), x)
        .map_err(|e| e.to_string())?;
    let out = model
        .run(tvec!(Tensor::from(input).into()))
        .map_err(|e| format!("tract failed to run the model: {e}"))?;
    out.iter()
        .map(|t| {
            t.to_plain_array_view::<f32>()
                .map(|v| v.iter().copied().collect())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The outcome of the parity gate, stored with the export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parity {
    pub runtime: String,
    /// Rows compared: examples, or a language model's positions (blocks x their length).
    pub rows: usize,
    /// Per output: largest absolute difference between tract and kiln.
    pub max_abs: Vec<(String, f64)>,
    pub tolerance: f64,
    /// Rows whose top-1 class differs (classification).
    pub top1_disagreements: usize,
    pub passed: bool,
}

/// Compares tract's outputs with kiln's (`expected`, same order as the graph's outputs).
/// `top1`: the output whose arg-max must agree, and the width of its rows (class
/// probabilities; a language model's logits per position).
pub fn compare(
    names: &[&str],
    tract: &[Vec<f32>],
    expected: &[Vec<f32>],
    rows: usize,
    top1: Option<(usize, usize)>,
) -> Parity {
    let mut max_abs = Vec::new();
    let mut passed = tract.len() == expected.len();
    for ((name, t), e) in names.iter().zip(tract).zip(expected) {
        // A NaN or infinity on either side is a failure, not a difference to skip.
        let m = if t.len() == e.len() {
            t.iter()
                .zip(e)
                .map(|(a, b)| {
                    let d = (*a as f64 - *b as f64).abs();
                    if d.is_finite() { d } else { f64::INFINITY }
                })
                .fold(0.0, f64::max)
        } else {
            f64::INFINITY
        };
        passed &= m <= MAX_ABS_TOLERANCE;
        max_abs.push((name.to_string(), m));
    }
    let mut disagree = 0;
    if let Some((o, w)) = top1
        && o < tract.len().min(expected.len())
        && rows > 0
        && tract[o].len() == expected[o].len()
    {
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        for (a, b) in tract[o].chunks(w).zip(expected[o].chunks(w)) {
            disagree += usize::from(argmax(a) != argmax(b));
        }
        passed &= disagree == 0;
    }
    let top1 = disagree;
    Parity {
        runtime: "tract-onnx 0.23".into(),
        rows,
        max_abs,
        tolerance: MAX_ABS_TOLERANCE,
        top1_disagreements: top1,
        passed: passed && !names.is_empty(),
    }
}

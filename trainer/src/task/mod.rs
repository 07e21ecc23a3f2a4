//! What is learned from the model's outputs: the loss, what evaluation keeps of each example,
//! the metrics, what a user reads as a prediction, and the outputs of an exported graph.
//!
//! **Adding a task** (next-token prediction, say): a file here implementing [`Task`] and a case
//! in [`task_of`]. The loop, evaluation (sharded across ranks or not) and `kiln predict` go
//! through the trait only.

mod classification;
mod language_model;
mod regression;

use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use kiln_models::Output;
use kiln_models::onnx::Builder;

pub use classification::Classification;
pub use language_model::LanguageModel;
pub use regression::Regression;

use crate::config::{LossKind, RunConfig};
use crate::data::Targets;
use crate::data::preprocess::{Preprocessor, TargetEncoding};
use crate::error::SetupError;
use crate::metrics::Metrics;

/// A supervised objective over the model's outputs.
pub trait Task: Send + Sync + std::fmt::Debug {
    /// Outputs the model gives per example.
    fn outputs(&self) -> usize;

    /// Mean loss of a batch's outputs against its targets, differentiable.
    fn loss(&self, out: Output, y: &Targets, device: &Device) -> Tensor<1>;

    /// Numbers evaluation keeps per example (its prediction and its target).
    fn row_width(&self) -> usize;

    /// A batch's evaluation rows, `[batch, row_width]` row-major. Rows of every batch of a
    /// split (and of every rank's share of it) together give [`Task::metrics`].
    fn eval_rows(&self, out: Output, y: &Targets) -> Vec<f32>;

    /// A split's metrics from all its rows and its mean loss.
    fn metrics(&self, rows: &[f32], loss: f64) -> Metrics;

    /// Names of the classes, in index order (classification only).
    fn class_names(&self) -> Option<&[String]>;

    /// What a user reads for each example of a batch.
    fn predictions(&self, out: Output) -> Vec<Prediction>;

    /// What explanations attribute, differentiable: class probabilities `[batch, classes]`, or
    /// the value in the target's units `[batch, 1]`. `None` for a task whose outputs are not
    /// one vector per example (a language model).
    fn explained(&self, out: Output) -> Option<Tensor<2>> {
        let _ = out;
        None
    }

    /// The exported graph's outputs: their names and widths, in order.
    fn output_names(&self) -> Vec<&'static str>;

    /// kiln's own values of those outputs for a batch, row-major each (the parity gate's
    /// reference).
    fn output_values(&self, out: Output) -> Vec<Vec<f32>>;

    /// Appends the graph's outputs, computed from the model's output `out`; returns each
    /// output's name and width per example.
    fn lower_outputs(&self, g: &mut Builder, out: &str) -> Vec<(&'static str, usize)>;

    /// Output values in the units the parity gate compares them in (regression: standardised,
    /// so the tolerance means the same whatever the target's scale).
    fn parity_units(&self, values: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        values
    }
}

/// A `[batch, width]` output read back to the host, row-major.
fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .try_to_vec::<f32>()
        .expect("model outputs are f32")
}

/// One example's prediction, as `kiln predict` writes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The predicted class name, or the predicted value in the target's units.
    pub prediction: serde_json::Value,
    /// Class probabilities in class order (classification only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probabilities: Vec<f32>,
}

/// The task of a run, for its preprocessed data.
pub fn task_of(cfg: &RunConfig, pre: &Preprocessor) -> Result<Arc<dyn Task>, SetupError> {
    let l = &cfg.loss;
    Ok(match (&pre.target, l.kind) {
        (TargetEncoding::Classes { names, .. }, LossKind::CrossEntropy | LossKind::Bce) => {
            if l.kind == LossKind::Bce && names.len() != 2 {
                return Err(SetupError::BceClasses {
                    classes: names.len(),
                });
            }
            Arc::new(Classification {
                binary: l.kind == LossKind::Bce,
                names: names.clone(),
                label_smoothing: l.label_smoothing,
            })
        }
        (TargetEncoding::Values { mean, std }, LossKind::Mse | LossKind::Huber) => {
            Arc::new(Regression {
                huber: (l.kind == LossKind::Huber).then_some(l.huber_delta),
                mean: *mean,
                std: *std,
            })
        }
        (TargetEncoding::NextToken, LossKind::CrossEntropy) => Arc::new(LanguageModel {
            vocab: pre.text.as_ref().map_or(0, |t| t.vocab_size()),
        }),
        // Validation pairs the task with its losses, and the targets follow the task.
        (_, kind) => return Err(SetupError::LossForTargets { loss: kind }),
    })
}

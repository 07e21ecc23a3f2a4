//! What a run is built from: the device and threads, the model a config describes, the loss.

use burn::tensor::Device;
use kiln_models::{CnnConfig, ConvBlockConfig, MlpConfig, ModelConfig};

use crate::config::{ModelKind, RunConfig};
use crate::data::Preprocessor;
use crate::loss::Loss;
use crate::train::TrainError;

/// The model a config describes, for `d_input` features and the data's targets.
pub fn model_config(
    cfg: &RunConfig,
    pre: &Preprocessor,
    d_input: usize,
    outputs: usize,
) -> Result<ModelConfig, TrainError> {
    let m = &cfg.file.model;
    let head = |d_input| MlpConfig {
        d_input,
        hidden: m.hidden.clone(),
        d_output: outputs,
        activation: m.activation,
        dropout: m.dropout,
        norm: m.norm,
    };
    match m.kind {
        ModelKind::Mlp => Ok(ModelConfig::Mlp(head(d_input))),
        ModelKind::Cnn => {
            let Some([c, h, w]) = pre.image.as_ref().map(|i| i.shape) else {
                return Err(TrainError::Setup(
                    "`model.kind` = \"cnn\" needs image data".into(),
                ));
            };
            if c * h * w != d_input {
                return Err(TrainError::Setup(format!(
                    "the CNN reads {c}x{h}x{w} = {} pixels but the data has {d_input} features per row (categorical columns one-hot encode into several)",
                    c * h * w
                )));
            }
            let shrink: usize = m.conv.iter().map(|b| b.pool.max(1)).product();
            if shrink > h.min(w) {
                return Err(TrainError::Setup(format!(
                    "`model.conv`: pooling shrinks the {h}x{w} images by {shrink}x, to nothing; use fewer or smaller pools"
                )));
            }
            let mut cnn = CnnConfig {
                in_channels: c,
                height: h,
                width: w,
                blocks: m
                    .conv
                    .iter()
                    .map(|b| ConvBlockConfig {
                        channels: b.channels,
                        kernel: b.kernel,
                        pool: b.pool,
                        batch_norm: b.batch_norm,
                        dropout: b.dropout,
                    })
                    .collect(),
                activation: m.activation,
                head: head(0),
            };
            cnn.head.d_input = cnn.flat_features();
            Ok(ModelConfig::Cnn(cnn))
        }
    }
}

/// The loss of a run, for its preprocessed data.
pub fn loss_of(cfg: &RunConfig, pre: &Preprocessor) -> Result<Loss, TrainError> {
    let classes = pre.class_names().map_or(1, |c| c.len());
    if cfg.loss == crate::config::LossKind::Bce && classes != 2 {
        return Err(TrainError::Setup(format!(
            "`train.loss` = \"bce\" is for two classes, the labels hold {classes}; use \"cross_entropy\""
        )));
    }
    let t = &cfg.file.train;
    Ok(Loss {
        kind: cfg.loss,
        classes,
        label_smoothing: t.label_smoothing,
        huber_delta: t.huber_delta,
    })
}

/// Sets the CPU backend's thread count once per process (0: one per core).
pub fn init_threads(threads: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut b = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("kiln-compute-{i}"));
        if threads > 0 {
            b = b.num_threads(threads);
        }
        // Fails only when a pool already exists (a library user built one): keep theirs.
        let _ = b.build_global();
    });
}

/// The device kiln trains on. This build is CPU-only: burn's `flex` backend.
pub fn device() -> Device {
    Device::flex()
}

//! The model a config describes for its data: the architecture (the `[model]` table, the
//! shape of the data's examples, the task's outputs) and the check that it fits in memory
//! before anything is allocated.

use kiln_models::{InputShape, ModelConfig};

use crate::config::RunConfig;
use crate::data::{self, Preprocessor};
use crate::error::SetupError;
use crate::task::Task;

/// The architecture the config describes for the data: the shape of its examples (images
/// when the preprocessing holds an image shape that covers the width, else rows) and the
/// task's outputs per example.
pub fn architecture(
    cfg: &RunConfig,
    pre: &Preprocessor,
    task: &dyn Task,
) -> Result<ModelConfig, SetupError> {
    let outputs = task.outputs();
    match data::input_shape(pre) {
        Ok(input) => Ok(ModelConfig::from_section(&cfg.model, input, outputs)?),
        Err((shape, features)) => {
            // Rows of another width than the image shape: fine for a model that reads rows.
            let rows = InputShape::Rows { features };
            ModelConfig::from_section(&cfg.model, rows, outputs).map_err(|_| {
                SetupError::ImageWidth {
                    kind: cfg.model.kind.name().to_uppercase(),
                    shape,
                    features,
                }
            })
        }
    }
}

/// Refuses a model (and batch) that cannot fit in this machine's memory, before anything is
/// allocated: a config error naming the keys that size it. `examples` is the training split's
/// size (a batch is never larger); `backend` the device kind (`cpu`, `wgpu`, `cuda`).
pub fn check_memory(
    cfg: &RunConfig,
    mconf: &ModelConfig,
    backend: &str,
    examples: usize,
) -> Result<(), SetupError> {
    // A GPU keeps the activations in its own memory; the host still holds the weights'
    // snapshots for checkpoints.
    let activations = match backend {
        "cpu" => mconf.activations_per_example(),
        _ => 0,
    };
    crate::memory::check_fits(
        crate::memory::size_keys(&cfg.model),
        mconf.num_params(),
        activations,
        cfg.train.batch_size.min(examples),
        crate::memory::available_bytes(),
    )?;
    Ok(())
}

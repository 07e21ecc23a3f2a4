//! Checkpoints of a training: what the loop saves and how a resumed run loads it back.
//!
//! The folders and pointer files are `run`'s (`commit_checkpoint`, `checkpoint_dir`); this
//! module decides what goes in them.

use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use kiln_models::{Model, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::run;
use crate::train::TrainError;

/// Loop position saved in a checkpoint: enough to continue exactly where it stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub epoch: usize,
    /// Next batch of `epoch` to run.
    pub batch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    pub best: Option<f64>,
    pub best_step: Option<usize>,
    pub validations_without_improvement: usize,
    pub samples_seen: u64,
}

/// Writes a checkpoint (and the best weights, when they changed) as `run::commit_checkpoint`
/// folders named by `LATEST` and `BEST`.
pub fn save(
    run_dir: &Path,
    model: &Model,
    optimizer: &ModuleOptimizer,
    st: &LoopState,
    best: Option<&Model>,
) -> Result<(), TrainError> {
    let root = run_dir.join(run::CHECKPOINTS);
    let fail = |p: &Path, m: String| TrainError::Checkpoint {
        path: p.display().to_string(),
        message: m,
    };
    // The best weights first: a crash between the two never leaves LATEST's state pointing at
    // a best that was not written.
    if let (Some(best), Some(step)) = (best, st.best_step) {
        let saved = run::checkpoint_dir(run_dir, run::BEST)
            .and_then(|d| run::read_json::<LoopState>(&d.join(run::CKPT_STATE)).ok());
        if saved.and_then(|s| s.best_step) != Some(step) {
            run::commit_checkpoint(&root, "best", step, run::BEST, |dir| {
                best.clone()
                    .save_file(dir.join(run::CKPT_WEIGHTS))
                    .map_err(|e| fail(dir, e.to_string()))?;
                Ok::<_, TrainError>(run::write_json(&dir.join(run::CKPT_STATE), st)?)
            })?;
        }
    }
    run::commit_checkpoint(&root, "step", st.step, run::LATEST, |dir| {
        model
            .clone()
            .save_file(dir.join(run::CKPT_WEIGHTS))
            .map_err(|e| fail(dir, e.to_string()))?;
        optimizer
            .save(dir.join(run::CKPT_OPTIM))
            .map_err(|e| fail(dir, e.to_string()))?;
        Ok::<_, TrainError>(run::write_json(&dir.join(run::CKPT_STATE), st)?)
    })?;
    Ok(())
}

/// The model, optimizer, loop position and best weights of a run's `LATEST` checkpoint;
/// `model` and `optimizer` are fresh ones to load into.
pub fn load(
    run_dir: &Path,
    mconf: &ModelConfig,
    device: &Device,
    model: Model,
    optimizer: ModuleOptimizer,
) -> Result<(Model, ModuleOptimizer, LoopState, Option<Model>), TrainError> {
    let ck = run::checkpoint_dir(run_dir, run::LATEST).ok_or_else(|| TrainError::Checkpoint {
        path: run_dir.join(run::CHECKPOINTS).display().to_string(),
        message: "no checkpoint to resume from (the run stopped before its first one)".into(),
    })?;
    let fail = |m: String| TrainError::Checkpoint {
        path: ck.display().to_string(),
        message: m,
    };
    let st: LoopState = run::read_json(&ck.join(run::CKPT_STATE))?;
    let model = model
        .try_load_file(ck.join(run::CKPT_WEIGHTS))
        .map_err(|e| fail(e.to_string()))?;
    let optimizer = optimizer
        .load(ck.join(run::CKPT_OPTIM))
        .map_err(|e| fail(e.to_string()))?;
    let best = match run::checkpoint_dir(run_dir, run::BEST) {
        Some(dir) => Some(
            mconf
                .init(device)
                .try_load_file(dir.join(run::CKPT_WEIGHTS))
                .map_err(|e| fail(e.to_string()))?,
        ),
        None => None,
    };
    Ok((model, optimizer, st, best))
}

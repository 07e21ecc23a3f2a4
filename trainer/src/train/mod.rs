//! Training, in three parts read in order: [`session`] sets a run up (device, ranks and their
//! handshake in [`ranks`], data, task and model, the run folder in [`run_folder`], resume or
//! `--init-from`), [`fit`] is the loop (forward, loss, backward, accumulate, clip, step, log,
//! validate, checkpoint, stop), and [`finish`] evaluates the final model and registers it. The
//! loop's pieces that a reader can take on trust (one micro-batch's backward pass, the gradient
//! all-reduce, the optimizer step with loss scaling and clipping) are in [`step`]; what it
//! records (logs, validations, checkpoints) in [`record`].
//!
//! **Adding a loop feature** (an EMA of the weights, say): its state is a field of
//! [`crate::state::TrainState`] (saved in checkpoints and sent to other ranks with no other
//! change), its work one line in [`fit`] calling a function in [`step`].

mod finish;
mod fit;
mod patience;
mod ranks;
mod record;
mod run_folder;
mod session;
mod step;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::run::RunInfo;

pub use finish::register_run;

/// How a training is launched (what is not in the config).
#[derive(Debug, Clone)]
pub struct Options {
    /// Registry root; runs go to `<registry>/runs/<id>`.
    pub registry: PathBuf,
    /// A few steps on a small slice, validation, checkpoint, evaluation.
    pub smoke: bool,
    pub quiet: bool,
    /// Where the config came from, for the run's record.
    pub config_path: String,
    /// Continue this run (its folder) from its last checkpoint.
    pub resume: Option<PathBuf>,
    /// Set (by Ctrl-C or SIGUSR1) to stop after the current step, save and exit.
    pub stop: Arc<AtomicBool>,
    /// Start from the weights of this registry entry (`name`, `name@alias`, `name/vN`, run id).
    pub init_from: Option<String>,
    /// The other ranks of a data-parallel job (see [`crate::dist`]); `None` trains alone.
    pub group: Option<std::rc::Rc<crate::dist::Group>>,
    /// A fold of a cross-validation or a trial of a sweep; `None` for a run of its own.
    pub member: Option<Member>,
}

/// A run that is one fold of a cross-validation or one trial of a sweep: its id is chosen by
/// the group (so the group's record names it before it starts), it registers no model version
/// (the group decides what to register), and a trial reports every validation to its sweep's
/// pruner.
#[derive(Clone)]
pub struct Member {
    pub run_id: String,
    pub of: crate::run::Membership,
    pub pruner: Option<Arc<dyn Pruning>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("run_id", &self.run_id)
            .field("of", &self.of)
            .field("pruner", &self.pruner.is_some())
            .finish()
    }
}

/// Where a sweep trial's validations go: the extension point between the loop and a pruner.
pub trait Pruning: Send + Sync {
    /// The `resource`-th validation (counted from 1) at optimizer step `step` gave `metrics`;
    /// true stops the run (pruned). A pruner that cannot read its sweep keeps the run going.
    fn report(&self, resource: usize, step: usize, metrics: &crate::metrics::Metrics) -> bool;
}

/// What a training produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub info: RunInfo,
}

/// Trains a model as `cfg` says and records the run. Returns when training ends: finished,
/// stopped early, or interrupted (then `info.status` is `Interrupted` and a checkpoint exists).
pub fn train(cfg: &RunConfig, opts: &Options) -> Result<Outcome, TrainError> {
    let mut session = session::Session::open(cfg, opts)?;
    let ending = fit::fit(&mut session)?;
    finish::finish(session, ending)
}

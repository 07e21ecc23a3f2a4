//! Why a training could not start, go on or finish: one type per kind of cause, each naming the
//! file, key, step or rank it is about and keeping the error that caused it.

use crate::backend::BackendError;
use crate::config::LossKind;
use crate::data::DataError;
use crate::memory::TooLarge;
use crate::registry::RegistryError;
use crate::run::RunError;
use crate::state::StateError;
use crate::weights::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The config does not fit the data (or the machine).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The run cannot be continued as it was started.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// A saved or received training state does not load.
    #[error(transparent)]
    State(#[from] StateError),
    #[error("--init-from {} ({entry}): {source}", crate::shown::name(reference))]
    InitFrom {
        reference: String,
        entry: String,
        source: WeightsError,
    },
    /// The ranks of a data-parallel job disagree, or one could not start; every rank says it.
    #[error("{0}")]
    Distributed(String),
    /// NCCL could not be set up for the gradients (its messages come from the library).
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error(
        "run {id} already completed; train a new run, or evaluate this one with `kiln eval {id}`"
    )]
    AlreadyCompleted { id: String },
    #[error(
        "training diverged at step {step}: the loss is {loss}; lower optim.lr or set train.clip_grad_norm"
    )]
    Diverged { step: usize, loss: f64 },
    #[error(
        "f16 gradients overflowed on {steps} steps in a row, down to loss scale 1 (step {step}); train in bf16 or f32, or lower optim.lr"
    )]
    Overflow { steps: usize, step: usize },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl crate::usage::UserError for TrainError {
    fn is_usage(&self) -> bool {
        match self {
            TrainError::Setup(SetupError::TooLarge(_) | SetupError::EmptyTrainingSplit) => true,
            TrainError::Data(e) => e.is_usage(),
            TrainError::Registry(e) => crate::usage::UserError::is_usage(e),
            _ => false,
        }
    }
}

/// The config and the data (or the machine) do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the training split is empty: lower data.split.valid / data.split.test")]
    EmptyTrainingSplit,
    #[error(
        "`train.loss` = \"bce\" is for two classes, the labels hold {classes}; use \"cross_entropy\""
    )]
    BceClasses { classes: usize },
    #[error("`train.loss` = {loss:?} does not fit the data's targets")]
    LossForTargets { loss: LossKind },
    #[error(transparent)]
    Model(#[from] kiln_models::SectionError),
    #[error(
        "the {kind} reads {}x{}x{} = {} pixels but the data has {features} features per row (categorical columns one-hot encode into several)",
        shape[0], shape[1], shape[2], shape[0] * shape[1] * shape[2]
    )]
    ImageWidth {
        kind: String,
        shape: [usize; 3],
        features: usize,
    },
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error("the loss of the first batch is {loss}")]
    FirstLoss { loss: f64 },
}

/// Why a run cannot continue from its checkpoint as it was started.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(
        "the run's config.toml changed since {label}: {key} was {was}, is {now}; a resume continues the run as it was (train a new run, or undo the change)"
    )]
    ConfigChanged {
        label: String,
        key: String,
        was: String,
        now: String,
    },
    #[error(
        "the run's preprocess.json changed since {label}; a resume needs the statistics the run was trained with"
    )]
    PreprocessChanged { label: String },
    #[error("the run's model changed since {label} (model.json or the data's width)")]
    ModelChanged { label: String },
    #[error(
        "data file {path} changed since {label} (sha256 {was} then, {now} now); a resume would not continue the same run: restore the data, or train a new run"
    )]
    DataChanged {
        path: String,
        label: String,
        was: String,
        now: String,
    },
    #[error("the run's data files changed since its checkpoint")]
    DataFiles,
    #[error(
        "run {id} was trained on {was} rank{} (global batch {}); resume it on {was}{}: another number of ranks changes the global batch, the schedule and the place in the epoch",
        if *was == 1 { "" } else { "s" },
        batch * was,
        if *was == 1 { " process, without a launcher".to_string() } else { format!(" ranks (mpirun -np {was})") }
    )]
    Ranks {
        id: String,
        was: usize,
        batch: usize,
    },
    #[error("checkpoint {path}: {why}")]
    NoCheckpoint { path: String, why: String },
}

//! The typed config a run trains from: what [`super::validate`] makes of the edited file, every
//! default resolved and every value checked. The loop reads this, never the file; the resolved
//! file is serialised here and nowhere else (saved with the run, compared on resume, sent in
//! the ranks' handshake, shown as TensorBoard hyperparameters).

use std::time::Duration;

use kiln_models::ModelSection;

use super::{FileConfig, LossKind, OptimName, RuntimeSection, ScheduleSection, SplitSection, Task};
use crate::amp::Precision;
use crate::backend::DeviceSpec;
use crate::data::DataSpec;

/// A config that passed [`super::validate`]: everything the trainer needs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// The model name: run ids start with it; a completed run registers a version of it.
    pub name: String,
    pub seed: u64,
    pub task: Task,
    pub data: DataSpec,
    pub model: ModelSection,
    pub train: TrainConfig,
    pub loss: LossConfig,
    pub monitor: Monitor,
    pub optim: OptimConfig,
    pub schedule: ScheduleSection,
    pub precision: Precision,
    pub device: DeviceSpec,
    /// How long a rank waits for the others in one collective.
    pub timeout: Duration,
    pub runtime: RuntimeSection,
    /// The edited file with its defaults filled in and overrides applied.
    pub(super) file: FileConfig,
}

/// The loop's settings (`[train]`, less the loss and the monitored metric).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub max_steps: Option<usize>,
    /// Examples per forward pass, per rank.
    pub batch_size: usize,
    /// Forward/backward passes per optimizer step.
    pub grad_accum: usize,
    pub clip_grad_norm: Option<f64>,
    pub valid_every: Option<usize>,
    pub log_every: usize,
    pub checkpoint_every: Option<usize>,
    pub keep_last: usize,
    pub keep_best: usize,
    pub restore_best: bool,
    pub early_stopping: Option<EarlyStopping>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
}

/// The loss and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    pub kind: LossKind,
    pub label_smoothing: f64,
    pub huber_delta: f64,
}

/// The optimizer, with its weight decay resolved (AdamW's default differs).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimConfig {
    pub name: OptimName,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub betas: [f64; 2],
    pub eps: f64,
}

/// The validation metric that decides "best" and early stopping.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    pub metric: String,
    pub higher_is_better: bool,
}

impl Monitor {
    /// Whether `new` improves on `best` by more than `min_delta`.
    pub fn improves(&self, new: f64, best: Option<f64>, min_delta: f64) -> bool {
        match best {
            None => new.is_finite(),
            Some(b) if self.higher_is_better => new > b + min_delta,
            Some(b) => new < b - min_delta,
        }
    }
}

impl RunConfig {
    /// The resolved config as the file format: defaults filled in, overrides applied, the name
    /// set.
    pub fn resolved(&self) -> FileConfig {
        let mut file = self.file.clone();
        file.name = Some(self.name.clone());
        file
    }

    /// [`RunConfig::resolved`] as JSON (manifests, the handshake, hyperparameters).
    pub fn resolved_json(&self) -> serde_json::Value {
        serde_json::to_value(self.resolved()).expect("the config serialises to JSON")
    }

    /// [`RunConfig::resolved`] as the TOML saved with a run, under a header comment.
    pub fn resolved_toml(&self, header: &str) -> String {
        let toml = toml::to_string_pretty(&self.resolved()).expect("the config serialises to TOML");
        format!("{header}{toml}")
    }

    /// The `[data.split]` table as written (for the data fingerprint).
    pub fn split_section(&self) -> &SplitSection {
        &self.file.data.split
    }

    /// Continues on another device (`--device` with `--resume`): the one setting a resumed run
    /// may change.
    pub fn set_device(&mut self, spec: DeviceSpec) {
        self.file.backend.device = spec.to_string();
        self.device = spec;
    }
}

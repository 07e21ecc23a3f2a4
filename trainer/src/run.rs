//! A run's folder: `<registry>/runs/<run id>/`. File names live here and nowhere else.
//!
//! ```text
//! config.toml        the resolved config (defaults filled in, overrides applied), before step 0
//! model.json         the model architecture with every size resolved
//! preprocess.json    preprocessing statistics fitted on the training split
//! run.json           status, timings, final metrics, lineage, registered version
//! metrics.jsonl      one JSON object per logged point
//! events.out.tfevents.*   TensorBoard
//! checkpoints/step-NNNNNNNNN/   a checkpoint (see `checkpoint`), kept by the retention policy
//! final/             the final weights: model.safetensors, manifest.json
//! .lock              held by the process training this run
//! ```
//!
//! Checkpoint and final folders are registry entries: written whole or not at all, with a
//! manifest of hashes (see `registry`).

use crate::layout;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}: {source}", crate::shown::name(path))]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{}: {message}", crate::shown::name(path))]
    Parse { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Completed,
    Interrupted,
    Failed,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub smoke: bool,
    pub started: String,
    pub finished: Option<String>,
    pub config_path: String,
    pub kiln_version: String,
    pub device: String,
    pub steps: usize,
    pub epochs_done: usize,
    pub wall_seconds: f64,
    pub train_samples_per_second: f64,
    /// Seconds the training loop waited for the loader's next batch (data not ready): the
    /// share of `wall_seconds` the data pipeline cost.
    #[serde(default)]
    pub data_wait_seconds: f64,
    /// The validation metric that picks the best model, and its best value.
    #[serde(default)]
    pub monitor: String,
    #[serde(default)]
    pub best_valid: Option<f64>,
    /// Final metrics per split (`train`, `valid`, `test`).
    pub metrics: std::collections::BTreeMap<String, Metrics>,
    /// Checkpoints this run resumed from and the entry it was initialised from.
    #[serde(default)]
    pub lineage: Lineage,
    /// The model version this run registered (`name/vN`); smoke runs register none.
    #[serde(default)]
    pub version: Option<String>,
    /// The cross-validation or sweep this run is one member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Membership>,
    /// The validation (counted from 1) at which a sweep's pruner stopped this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_at: Option<usize>,
    /// Image files left out as unreadable (`data.bad_images` = "skip"): each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<String>,
}

/// What groups runs: a k-fold cross-validation or a hyperparameter sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    Cv,
    Sweep,
}

/// A run's place in its group (`run.json`'s `member`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub kind: GroupKind,
    /// The cross-validation's or the sweep's id.
    pub id: String,
    /// The fold (`repeat * folds + fold`) or the trial number.
    pub index: usize,
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            GroupKind::Cv => write!(f, "cv {} fold {}", self.id, self.index),
            GroupKind::Sweep => write!(f, "sweep {} trial {}", self.id, self.index),
        }
    }
}

pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Replaces `path` with `bytes` whole ([`crate::atomic::write`]), so a reader never sees half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    crate::atomic::write(path, bytes).map_err(io(path))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let text = serde_json::to_string_pretty(value).expect("kiln's records serialise to JSON");
    write_atomic(path, text.as_bytes())
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RunError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| RunError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A name cut to `n` characters, for ids that grow suffixes (`-cv`, `-t12`, `-f3-2`) and must stay
/// within 64 characters.
pub fn id_stem(name: &str, n: usize) -> String {
    name.chars().take(n).collect()
}

/// A new run id: `<name>-<UTC time>-<4 hex>`; unique within a registry.
pub fn new_id(name: &str) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = (nanos ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{name}-{}-{}-{salt:04x}", &stamp[..8], &stamp[8..])
}

/// Run folders whose `run.json` exists but cannot be read, with why.
pub fn unreadable(registry: &Path) -> Vec<(PathBuf, RunError)> {
    let Ok(entries) = std::fs::read_dir(layout::runs_dir(registry)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join(layout::RUN))
        .filter(|p| p.is_file())
        .filter_map(|p| read_json::<RunInfo>(&p).err().map(|e| (p, e)))
        .collect()
}

/// Every run of a registry with its `run.json`; unreadable entries are skipped (see
/// [`unreadable`]).
pub fn list(registry: &Path) -> Result<Vec<(PathBuf, RunInfo)>, RunError> {
    let runs = layout::runs_dir(registry);
    let Ok(entries) = std::fs::read_dir(&runs) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if let Ok(info) = read_json::<RunInfo>(&p.join(layout::RUN)) {
            out.push((p, info));
        }
    }
    Ok(out)
}

/// Where a model came from besides its own training.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// Checkpoints this run was resumed from, oldest first (`<run id>@step-N`).
    #[serde(default)]
    pub resumed_from: Vec<String>,
    /// The registry entry whose weights initialised the model (`--init-from`).
    #[serde(default)]
    pub init_from: Option<InitFrom>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitFrom {
    /// What the user wrote.
    pub reference: String,
    /// What it resolved to (`name/vN`, a run id, or `<run id>@step-N`).
    pub resolved: String,
    pub weights_sha256: String,
}

//! `manifest.json`: what a checkpoint or a model version holds and where it came from. Enough to
//! rebuild the model from the entry alone and to tell whether any byte of it changed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A run's lineage is part of its record (`run.json`) and of every manifest of it.
pub use crate::run::{InitFrom, Lineage};

/// The burn release kiln is built on (the workspace pins it; a unit test checks Cargo.lock).
pub const BURN_VERSION: &str = "0.22.1";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A training checkpoint: model, best model, optimizer, loop state.
    Checkpoint,
    /// The final weights of a run, in its folder.
    Final,
    /// A registered model version.
    Version,
    /// An exported ONNX model with its parity report.
    Export,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// The metric that picks the best model, and its value at this point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    pub metric: String,
    pub higher_is_better: bool,
    pub value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub role: String,
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The data a model was trained on: every file's hash, and the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub files: Vec<DataFile>,
    pub split_seed: u64,
    pub split: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Git {
    pub commit: String,
    pub dirty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub kind: Kind,
    pub created: String,
    /// Every file of the folder but this one.
    pub files: BTreeMap<String, FileEntry>,
    pub model_name: String,
    pub run_id: String,
    #[serde(default)]
    pub version: Option<u32>,
    pub step: usize,
    pub epoch: usize,
    /// Metrics at this point, flattened (`valid_accuracy`, `test_r2`, `train_loss`).
    pub metrics: BTreeMap<String, f64>,
    pub monitor: Monitor,
    /// The resolved run config (defaults filled in, overrides applied).
    pub config: serde_json::Value,
    /// The model architecture with every size resolved.
    pub model_config: serde_json::Value,
    /// Preprocessing statistics fitted on the training split.
    pub preprocess: serde_json::Value,
    pub data: DataFingerprint,
    pub kiln_version: String,
    pub burn_version: String,
    pub git: Option<Git>,
    pub backend: String,
    pub device: String,
    pub lineage: Lineage,
}

/// The git commit of the working tree holding `dir`, and whether it has uncommitted changes to
/// tracked files; `None` outside a git work tree or without git.
pub fn git_of(dir: &Path) -> Option<Git> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(Git { commit, dirty })
}

#[cfg(test)]
mod tests {
    #[test]
    fn burn_version_matches_the_lock_file() {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets it");
        let lock = std::fs::read_to_string(std::path::Path::new(&dir).join("../Cargo.lock"))
            .expect("the workspace has a Cargo.lock");
        let needle = format!("name = \"burn\"\nversion = \"{}\"", super::BURN_VERSION);
        assert!(
            lock.contains(&needle),
            "Cargo.lock does not pin burn {}",
            super::BURN_VERSION
        );
    }
}

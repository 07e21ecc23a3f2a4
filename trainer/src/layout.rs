//! Every file and folder name of the registry and of its runs, and the paths built from them.
//! Nothing else in kiln spells a name of the on-disk layout.
//!
//! ```text
//! <registry>/
//!   kiln-registry.json               format marker
//!   .lock                            held while versions, aliases or deletions change
//!   .tmp/<pid>-<n>-<nanos>-<what>/   writes in progress (a killed writer's are removed by gc)
//!   runs/<run id>/                   a training run
//!     config.toml                    the resolved config, written before step 0
//!     model.json                     the architecture with every size resolved
//!     preprocess.json                preprocessing statistics fitted on the training split
//!     run.json                       status, timings, final metrics, lineage, version
//!     metrics.jsonl                  one JSON object per logged point
//!     events.out.tfevents.*          TensorBoard, one file per training session
//!     checkpoints/step-NNNNNNNNN/    model.safetensors, best.safetensors, optim.bpk,
//!                                    state.json, manifest.json
//!     final/                         model.safetensors, manifest.json
//!     .lock                          held by the process training the run
//!   models/<name>/
//!     aliases.json                   aliases set by `kiln registry tag`
//!     HIGHEST                        the highest version number ever given
//!     vN/                            model.safetensors, config.toml, model.json,
//!                                    preprocess.json, manifest.json
//!   exports/<model>-opsetN-<batch>/  model.onnx, preprocess.json, parity.json, manifest.json
//!   cv/<cv id>/cv.json               a cross-validation: its folds' runs, metrics, summary
//!   sweeps/<sweep id>/
//!     sweep.json                     the sweep file as resolved: base config, space, budget
//!     .lock                          held while a worker claims a trial or records one
//!     best.json                      the best trial and the version it registered
//!     trials/NNNN/                   trial.json (parameters, status, run, value),
//!                                    reports.jsonl (its validations), output.log
//! ```

use std::path::{Path, PathBuf};

// The registry's root.
pub const MARKER: &str = "kiln-registry.json";
pub const LOCK: &str = ".lock";
pub const TMP: &str = ".tmp";
pub const RUNS: &str = "runs";
pub const MODELS: &str = "models";
/// `exports/<model>-opsetN-<batch>/`: ONNX exports that passed the parity gate.
pub const EXPORTS: &str = "exports";

/// `cv/<id>/`: cross-validations.
pub const CV: &str = "cv";
pub const CV_RECORD: &str = "cv.json";
/// `sweeps/<id>/`: hyperparameter sweeps.
pub const SWEEPS: &str = "sweeps";
pub const SWEEP_RECORD: &str = "sweep.json";
pub const SWEEP_BEST: &str = "best.json";
pub const TRIALS: &str = "trials";
pub const TRIAL_RECORD: &str = "trial.json";
pub const TRIAL_REPORTS: &str = "reports.jsonl";
pub const TRIAL_LOG: &str = "output.log";

// A run's folder.
pub const CONFIG: &str = "config.toml";
pub const MODEL_CONFIG: &str = "model.json";
pub const PREPROCESS: &str = "preprocess.json";
/// The training data's profile for drift checks (table models).
pub const DRIFT: &str = "drift.json";
pub const RUN: &str = "run.json";
/// Image files: the index of the training (and test) files, a line per file.
pub const IMAGE_INDEX: &str = "image_index.tsv";
pub const METRICS_LOG: &str = "metrics.jsonl";
pub const CHECKPOINTS: &str = "checkpoints";
pub const FINAL: &str = "final";
/// TensorBoard event files start with this.
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";

// Entries: checkpoints, final models, versions, exports.
pub const MANIFEST: &str = "manifest.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const BEST_WEIGHTS: &str = "best.safetensors";
pub const OPTIM: &str = "optim.bpk";
pub const STATE: &str = "state.json";
pub const CHECKPOINT_PREFIX: &str = "step-";
/// A damaged checkpoint a resume moved aside (`damaged-step-N-<pid>`); `gc` removes them.
pub const DAMAGED_PREFIX: &str = "damaged-";

// A model's folder.
pub const ALIASES: &str = "aliases.json";
/// The highest version number ever given (versions are never reused).
pub const HIGHEST: &str = "HIGHEST";

// An export.
pub const ONNX_FILE: &str = "model.onnx";
pub const SIDECAR_FILE: &str = "preprocess.json";
pub const PARITY_FILE: &str = "parity.json";

/// `<registry>/runs`.
pub fn runs_dir(registry: &Path) -> PathBuf {
    registry.join(RUNS)
}

/// The registry that holds a run folder (`<registry>/runs/<id>`): two levels up.
pub fn registry_of_run(run_dir: &Path) -> PathBuf {
    run_dir
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `step-NNNNNNNNN` folder name of a checkpoint.
pub fn checkpoint_name(step: usize) -> String {
    format!("{CHECKPOINT_PREFIX}{step:09}")
}

/// `<run>/checkpoints/step-NNNNNNNNN`.
pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join(CHECKPOINTS).join(checkpoint_name(step))
}

/// The step of a `step-NNNNNNNNN` folder name.
pub fn checkpoint_step(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?;
    if digits.len() != 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checkpoints of a run folder, newest first.
pub fn checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let root = run_dir.join(CHECKPOINTS);
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((checkpoint_step(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_round_trip_and_reject_lookalikes() {
        assert_eq!(checkpoint_name(42), "step-000000042");
        assert_eq!(checkpoint_step("step-000000042"), Some(42));
        for bad in [
            "step-42",
            "step-00000004x",
            "damaged-step-000000042-7",
            "step-0000000420",
        ] {
            assert_eq!(checkpoint_step(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        for n in [3, 12, 7] {
            std::fs::create_dir_all(checkpoint_dir(dir.path(), n)).unwrap();
        }
        std::fs::create_dir_all(
            dir.path()
                .join(CHECKPOINTS)
                .join("damaged-step-000000099-1"),
        )
        .unwrap();
        let steps: Vec<usize> = checkpoints(dir.path()).into_iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![12, 7, 3]);
    }
}

//! Checkpoints of a training: the background [`Saver`], the manifest every entry of a run
//! shares, the checks that a resume continues the same run, and [`restore`], which finds the
//! newest intact checkpoint and decodes it.
//!
//! A checkpoint is a registry entry `<run>/checkpoints/step-NNNNNNNNN/` holding the files of a
//! [`TrainState`] (see [`crate::state`]) and a `manifest.json` (hashes, config, data
//! fingerprint, lineage). Checkpoints are taken between optimizer steps, so no partly
//! accumulated gradient is ever pending.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use kiln_models::ModelConfig;

use crate::config::RunConfig;
use crate::error::{ResumeError, TrainError};
use crate::layout;
use crate::registry::manifest::{self, DataFile, DataFingerprint, Kind, Lineage, Manifest};
use crate::registry::retention::Policy;
use crate::registry::writer::{Job, Writer};
use crate::registry::{Entry, EntryKind, Registry, RegistryError};
use crate::state::TrainState;

/// The part of every manifest of a run that does not change between checkpoints: config,
/// model, preprocessing, data fingerprint (`files`, from [`data_files`]), versions, git,
/// device, lineage.
#[allow(clippy::too_many_arguments)]
pub fn base_manifest(
    cfg: &RunConfig,
    run_id: &str,
    mconf: &ModelConfig,
    pre: &crate::data::Preprocessor,
    config_path: &str,
    lineage: Lineage,
    chosen: &crate::backend::Chosen,
    files: Vec<DataFile>,
) -> Result<Manifest, TrainError> {
    let split = cfg.split_section();
    let config = cfg.resolved_json();
    let config_dir = Path::new(config_path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(Manifest {
        format: manifest::FORMAT,
        kind: Kind::Checkpoint,
        created: String::new(),
        files: BTreeMap::new(),
        model_name: cfg.name.clone(),
        run_id: run_id.to_string(),
        version: None,
        step: 0,
        epoch: 0,
        metrics: BTreeMap::new(),
        monitor: manifest::Monitor {
            metric: cfg.monitor.metric.clone(),
            higher_is_better: cfg.monitor.higher_is_better,
            value: None,
        },
        config,
        model_config: serde_json::to_value(mconf).expect("model configs are JSON"),
        preprocess: serde_json::to_value(pre).expect("preprocessing is JSON"),
        data: DataFingerprint {
            files,
            split_seed: cfg.data.split_seed,
            split: serde_json::to_value(split).expect("the split is JSON"),
        },
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        burn_version: manifest::BURN_VERSION.into(),
        git: manifest::git_of(config_dir),
        backend: chosen.backend.into(),
        device: format!("{} ({})", chosen.id, chosen.name),
        lineage,
    })
}

/// Finite values only: JSON has no NaN, and an undefined metric is better absent.
pub fn finite(metrics: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    metrics.into_iter().filter(|(_, v)| v.is_finite()).collect()
}

/// A resume continues exactly only with the config, preprocessing and model the checkpoint was
/// written with: any difference is an error naming it.
pub fn check_unchanged(
    cfg: &RunConfig,
    pre: &crate::data::Preprocessor,
    mconf: &ModelConfig,
    m: &Manifest,
    label: &str,
) -> Result<(), ResumeError> {
    let config = cfg.resolved_json();
    // The device may change between sessions (`--device` on resume); nothing else may.
    let diff = crate::report::config_diff(&m.config, &config);
    // Runs from before the `backend` section existed trained with its defaults.
    let changed = |(k, was, now): &&(String, String, String)| {
        k != "backend.device" && !(k == "backend.precision" && was == "(unset)" && now == "f32")
    };
    if let Some((key, was, now)) = diff.iter().find(changed) {
        return Err(ResumeError::ConfigChanged {
            label: label.to_string(),
            key: key.clone(),
            was: was.clone(),
            now: now.clone(),
        });
    }
    let same = |a: &serde_json::Value, b: serde_json::Value| *a == b;
    if !same(&m.preprocess, serde_json::to_value(pre).expect("JSON")) {
        return Err(ResumeError::PreprocessChanged {
            label: label.to_string(),
        });
    }
    if !same(&m.model_config, serde_json::to_value(mconf).expect("JSON")) {
        return Err(ResumeError::ModelChanged {
            label: label.to_string(),
        });
    }
    Ok(())
}

/// The data files must hash as they did when the checkpoint was written.
pub fn check_same_data(
    was: &DataFingerprint,
    now: &DataFingerprint,
    label: Option<&str>,
) -> Result<(), ResumeError> {
    for (a, b) in was.files.iter().zip(&now.files) {
        if a.sha256 != b.sha256 || a.role != b.role {
            return Err(ResumeError::DataChanged {
                path: b.path.clone(),
                label: label.unwrap_or("the checkpoint").to_string(),
                was: a.sha256.get(..12).unwrap_or(&a.sha256).to_string(),
                now: b.sha256.get(..12).unwrap_or(&b.sha256).to_string(),
            });
        }
    }
    if was.files.len() != now.files.len() {
        return Err(ResumeError::DataFiles);
    }
    Ok(())
}

pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Writes a run's checkpoints in the background (see [`registry::writer`]).
pub struct Saver {
    writer: Writer,
    run_dir: PathBuf,
    base: Manifest,
}

impl Saver {
    pub fn new(registry: &Path, run_dir: &Path, base: Manifest, policy: Policy) -> Self {
        Self {
            writer: Writer::start(registry.to_path_buf(), run_dir.to_path_buf(), policy),
            run_dir: run_dir.to_path_buf(),
            base,
        }
    }

    /// Snapshots the state (model, optimizer, best weights, position) and queues it for
    /// writing; `metrics` are the latest logged values, recorded in the manifest.
    pub fn save(
        &self,
        state: &TrainState,
        metrics: BTreeMap<String, f64>,
    ) -> Result<(), TrainError> {
        let dest = layout::checkpoint_dir(&self.run_dir, state.pos.step);
        let files = state.encode(&format!("checkpoint {}", crate::shown::path(&dest)))?;
        let mut manifest = self.base.clone();
        manifest.kind = Kind::Checkpoint;
        manifest.created = now();
        manifest.step = state.pos.step;
        manifest.epoch = state.pos.epoch;
        manifest.metrics = finite(metrics);
        manifest.monitor.value = state.pos.last_valid.filter(|v| v.is_finite());
        self.writer.submit(Job {
            dest,
            files,
            manifest,
        })?;
        Ok(())
    }

    /// Waits until every queued checkpoint is on disk.
    pub fn finish(self) -> Result<(), TrainError> {
        Ok(self.writer.finish()?)
    }
}

/// What a resumed run starts from.
pub struct Restored {
    pub state: TrainState,
    /// `<run id>@step-NNNNNNNNN`.
    pub label: String,
    /// Newer checkpoints that were damaged, with why; each was moved aside to
    /// `checkpoints/damaged-step-N-<pid>` (so retention never mistakes it for the newest;
    /// `kiln registry gc` deletes it).
    pub skipped: Vec<String>,
    pub manifest: Manifest,
}

/// The data files of a config with their sha256, by role (`data`, `labels`, `test`,
/// `test_labels`).
pub fn data_files(cfg: &RunConfig) -> Result<Vec<DataFile>, TrainError> {
    let spec = &cfg.data;
    let mut files = Vec::new();
    // Image files: the index (each file's path, size, label and a hash of its first and last
    // 4 KiB) is hashed, not every image: a changed, added or removed file changes it.
    if matches!(
        spec.format,
        crate::data::DataFormat::ImageFolder | crate::data::DataFormat::ImageCsv
    ) {
        let indexed = crate::data::images::Indexed::read(spec)?;
        let mut add = |role: &str, path: &std::path::Path, index: &crate::data::images::Index| {
            let (sha256, bytes) = index.fingerprint();
            files.push(DataFile {
                role: role.into(),
                path: path.display().to_string(),
                sha256,
                bytes,
            });
        };
        add("images", &spec.path, &indexed.main);
        if let (Some(p), Some(t)) = (&spec.test_path, &indexed.test) {
            add("test_images", p, t);
        }
        return Ok(files);
    }
    // A text corpus: each of its files (a folder or a glob names several).
    let corpus = match spec.format {
        crate::data::DataFormat::Text => crate::data::text::corpus_files(&spec.path)?,
        _ => Vec::new(),
    };
    let roles = [
        ("labels", spec.labels_path.as_ref()),
        ("test", spec.test_path.as_ref()),
        ("test_labels", spec.test_labels_path.as_ref()),
    ];
    let main: Vec<(&str, Option<&std::path::PathBuf>)> = match corpus.is_empty() {
        true => vec![("data", Some(&spec.path))],
        false => corpus.iter().map(|p| ("corpus", Some(p))).collect(),
    };
    for (role, path) in main.into_iter().chain(roles) {
        if let Some(p) = path {
            let (sha256, bytes) =
                crate::registry::store::hash_file(p).map_err(|source| TrainError::Io {
                    path: crate::shown::path(p),
                    source,
                })?;
            files.push(DataFile {
                role: role.into(),
                path: p.display().to_string(),
                sha256,
                bytes,
            });
        }
    }
    Ok(files)
}

/// Loads the newest intact checkpoint of a run; damaged ones (a hash mismatch, a truncated or
/// missing file) are skipped, newest first, moved aside and reported in `skipped`.
pub fn restore(
    reg: &Registry,
    run_dir: &Path,
    run_id: &str,
    mconf: &ModelConfig,
    device: &Device,
    optimizer: ModuleOptimizer,
) -> Result<Restored, TrainError> {
    let mut skipped = Vec::new();
    for (step, dir) in layout::checkpoints(run_dir) {
        let entry = Entry {
            label: format!("{run_id}@{}", layout::checkpoint_name(step)),
            kind: EntryKind::Checkpoint {
                run: run_id.to_string(),
                step,
            },
            dir: dir.clone(),
        };
        let loaded = match reg.load(&entry) {
            Ok(l) => l,
            Err(e @ RegistryError::Damaged { .. }) => {
                let aside = dir.with_file_name(format!(
                    "{}{}-{}",
                    layout::DAMAGED_PREFIX,
                    layout::checkpoint_name(step),
                    std::process::id()
                ));
                let moved = std::fs::rename(&dir, &aside).is_ok();
                skipped.push(format!(
                    "{e}{}",
                    if moved {
                        format!(" (moved aside to {})", crate::shown::path(&aside))
                    } else {
                        String::new()
                    }
                ));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let at = format!("checkpoint {}", crate::shown::path(&dir));
        let state = TrainState::decode(&loaded.files, &at, mconf, device, optimizer)?;
        return Ok(Restored {
            state,
            label: entry.label,
            skipped,
            manifest: loaded.manifest,
        });
    }
    let why = if skipped.is_empty() {
        "no checkpoint to resume from (the run stopped before its first one)".to_string()
    } else {
        format!(
            "no intact checkpoint to resume from: {}",
            skipped.join("; ")
        )
    };
    Err(ResumeError::NoCheckpoint {
        path: crate::shown::path(&run_dir.join(layout::CHECKPOINTS)),
        why,
    }
    .into())
}

//! Checkpoints of a training: what the loop saves, and how a resumed run finds the newest
//! intact one and loads it back.
//!
//! A checkpoint is a registry folder `<run>/checkpoints/step-NNNNNNNNN/`:
//! `model.safetensors` (weights), `best.safetensors` (the best weights so far, when they are not
//! these), `optim.bpk` (optimizer moments, burnpack), `state.json` ([`LoopState`]) and
//! `manifest.json` (hashes, config, data fingerprint, lineage). Checkpoints are taken between
//! optimizer steps, so no partly accumulated gradient is ever pending.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module as _;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use kiln_models::{Model, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::registry::manifest::{self, DataFile, DataFingerprint, Kind, Lineage, Manifest};
use crate::registry::retention::Policy;
use crate::registry::writer::{Job, Writer};
use crate::registry::{self, Entry, EntryKind, Registry, RegistryError};
use crate::train::TrainError;
use crate::weights;

/// Loop position saved in a checkpoint: enough to continue exactly where it stopped.
///
/// Randomness needs no saved generator state: the data order of an epoch is a pure function of
/// (`seed`, epoch) and the dropout masks of a step of (`seed`, step, micro-batch), so the
/// position below fixes every random draw still to come.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub epoch: usize,
    /// Next batch of `epoch` to run: the loader resumes there, no batch is replayed.
    pub batch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Micro-batches accumulated towards the next step; always 0, since checkpoints are taken
    /// between optimizer steps.
    #[serde(default)]
    pub micro_step: usize,
    pub best: Option<f64>,
    pub best_step: Option<usize>,
    /// The monitored metric at the latest validation (what retention ranks checkpoints by).
    #[serde(default)]
    pub last_valid: Option<f64>,
    pub validations_without_improvement: usize,
    pub samples_seen: u64,
    #[serde(default)]
    pub seed: u64,
    /// burn's ids of the model's parameters in visit order; they key the optimizer's state.
    #[serde(default)]
    pub param_ids: Vec<u64>,
    /// Dynamic loss scaling of an f16 run.
    #[serde(default)]
    pub loss_scale: Option<crate::amp::LossScale>,
    /// Ranks of the data-parallel job that saved this state (`None`: a checkpoint older than
    /// this field, taken as one process). A run resumes on as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<usize>,
}

fn fail(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

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
    let split = &cfg.file.data.split;
    let mut config = serde_json::to_value(&cfg.file).expect("the config serialises to JSON");
    config["name"] = cfg.name.clone().into();
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
            split_seed: split.seed.unwrap_or(cfg.file.seed),
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
) -> Result<(), TrainError> {
    let mut config = serde_json::to_value(&cfg.file).expect("the config serialises to JSON");
    config["name"] = cfg.name.clone().into();
    // The device may change between sessions (`--device` on resume); nothing else may.
    let diff = crate::report::config_diff(&m.config, &config);
    // Runs from before the `backend` section existed trained with its defaults.
    let changed = |(k, was, now): &&(String, String, String)| {
        k != "backend.device" && !(k == "backend.precision" && was == "(unset)" && now == "f32")
    };
    if let Some((key, was, now)) = diff.iter().find(changed) {
        return Err(TrainError::Setup(format!(
            "the run's config.toml changed since {label}: {key} was {was}, is {now}; a resume continues the run as it was (train a new run, or undo the change)"
        )));
    }
    let same = |a: &serde_json::Value, b: serde_json::Value| *a == b;
    if !same(&m.preprocess, serde_json::to_value(pre).expect("JSON")) {
        return Err(TrainError::Setup(format!(
            "the run's preprocess.json changed since {label}; a resume needs the statistics the run was trained with"
        )));
    }
    if !same(&m.model_config, serde_json::to_value(mconf).expect("JSON")) {
        return Err(TrainError::Setup(format!(
            "the run's model changed since {label} (model.json or the data's width)"
        )));
    }
    Ok(())
}

/// The data files must hash as they did when the checkpoint was written.
pub fn check_same_data(
    was: &DataFingerprint,
    now: &DataFingerprint,
    label: Option<&str>,
) -> Result<(), TrainError> {
    for (a, b) in was.files.iter().zip(&now.files) {
        if a.sha256 != b.sha256 || a.role != b.role {
            return Err(TrainError::Setup(format!(
                "data file {} changed since {} (sha256 {} then, {} now); a resume would not continue the same run: restore the data, or train a new run",
                b.path,
                label.unwrap_or("the checkpoint"),
                a.sha256.get(..12).unwrap_or(&a.sha256),
                b.sha256.get(..12).unwrap_or(&b.sha256),
            )));
        }
    }
    if was.files.len() != now.files.len() {
        return Err(TrainError::Setup(
            "the run's data files changed since its checkpoint".into(),
        ));
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

    /// Snapshots model, optimizer, loop state and best weights and queues them for writing.
    pub fn save(
        &self,
        model: &Model,
        optimizer: &ModuleOptimizer,
        st: &LoopState,
        best: Option<&Model>,
        metrics: BTreeMap<String, f64>,
    ) -> Result<(), TrainError> {
        let dest = self
            .run_dir
            .join(crate::run::CHECKPOINTS)
            .join(registry::checkpoint_name(st.step));
        let mut st = st.clone();
        st.param_ids = weights::param_ids(model);
        let mut files = vec![(
            registry::WEIGHTS.to_string(),
            weights::to_bytes(model).map_err(|e| fail(&dest, e))?,
        )];
        if let Some(best) = best.filter(|_| st.best_step != Some(st.step)) {
            files.push((
                registry::BEST_WEIGHTS.to_string(),
                weights::to_bytes(best).map_err(|e| fail(&dest, e))?,
            ));
        }
        let optim = optimizer
            .into_bytes()
            .map_err(|e| fail(&dest, e.to_string()))?;
        files.push((registry::OPTIM.to_string(), optim.to_vec()));
        files.push((
            registry::STATE.to_string(),
            serde_json::to_vec_pretty(&st).expect("loop state is JSON"),
        ));
        let mut manifest = self.base.clone();
        manifest.kind = Kind::Checkpoint;
        manifest.created = now();
        manifest.step = st.step;
        manifest.epoch = st.epoch;
        manifest.metrics = finite(metrics);
        manifest.monitor.value = st.last_valid.filter(|v| v.is_finite());
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
    pub model: Model,
    pub optimizer: ModuleOptimizer,
    pub state: LoopState,
    pub best: Option<Model>,
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
    for (role, path) in [
        ("data", Some(&spec.path)),
        ("labels", spec.labels_path.as_ref()),
        ("test", spec.test_path.as_ref()),
        ("test_labels", spec.test_labels_path.as_ref()),
    ] {
        if let Some(p) = path {
            let (sha256, bytes) =
                registry::store::hash_file(p).map_err(|e| fail(p, e.to_string()))?;
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

/// Rank 0's starting point for the other ranks of a data-parallel job: weights and parameter
/// ids, and when resuming the optimizer moments, loop state and best weights. Files in a
/// length-prefixed list, the same encodings as a checkpoint's.
pub fn pack_start(
    model: &Model,
    optimizer: &ModuleOptimizer,
    st: &LoopState,
    best: Option<&Model>,
    resumed: bool,
) -> Result<Vec<u8>, TrainError> {
    let bad = |e: String| TrainError::Setup(format!("packing the starting weights: {e}"));
    let mut st = st.clone();
    st.param_ids = weights::param_ids(model);
    let mut files = vec![
        (registry::WEIGHTS, weights::to_bytes(model).map_err(bad)?),
        (
            registry::STATE,
            serde_json::to_vec(&st).expect("loop state is JSON"),
        ),
    ];
    if resumed {
        let optim = optimizer.into_bytes().map_err(|e| bad(e.to_string()))?;
        files.push((registry::OPTIM, optim.to_vec()));
        if let Some(b) = best {
            files.push((registry::BEST_WEIGHTS, weights::to_bytes(b).map_err(bad)?));
        }
    }
    let mut out = Vec::new();
    for (name, bytes) in files {
        for part in [name.as_bytes(), &bytes] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    Ok(out)
}

/// The other side of [`pack_start`].
pub fn unpack_start(
    packed: &[u8],
    mconf: &ModelConfig,
    device: &Device,
    optimizer: ModuleOptimizer,
) -> Result<(Model, ModuleOptimizer, LoopState, Option<Model>), TrainError> {
    let bad = |e: String| TrainError::Setup(format!("rank 0's starting weights: {e}"));
    let mut files = BTreeMap::new();
    let mut rest = packed;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, TrainError> {
        let short = || bad("truncated".into());
        let n = u64::from_le_bytes(
            rest.get(..8)
                .ok_or_else(short)?
                .try_into()
                .expect("8 bytes"),
        );
        let n = usize::try_from(n).map_err(|_| short())?;
        let part = rest.get(8..8 + n).ok_or_else(short)?.to_vec();
        *rest = &rest[8 + n..];
        Ok(part)
    };
    while !rest.is_empty() {
        let name = String::from_utf8(take(&mut rest)?).map_err(|e| bad(e.to_string()))?;
        let bytes = take(&mut rest)?;
        files.insert(name, bytes);
    }
    let file = |name: &str| {
        files
            .get(name)
            .ok_or_else(|| bad(format!("{name} is missing")))
    };
    let st: LoopState =
        serde_json::from_slice(file(registry::STATE)?).map_err(|e| bad(e.to_string()))?;
    let model = weights::from_bytes(mconf.init(device), file(registry::WEIGHTS)?.clone())
        .and_then(|m| weights::set_param_ids(m, &st.param_ids))
        .map_err(bad)?;
    let optimizer = match files.get(registry::OPTIM) {
        Some(b) => optimizer
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(b.clone()))
            .map_err(|e| bad(e.to_string()))?,
        None => optimizer,
    };
    let best = match (st.best_step, files.get(registry::BEST_WEIGHTS)) {
        (Some(s), _) if s == st.step => Some(model.valid()),
        (Some(_), Some(bytes)) => {
            Some(weights::from_bytes(mconf.init(device), bytes.clone()).map_err(bad)?)
        }
        _ => None,
    };
    Ok((model, optimizer, st, best))
}

/// Loads the newest intact checkpoint of a run; damaged ones (a hash mismatch, a truncated or
/// missing file) are skipped, newest first, and reported in `skipped`.
pub fn load(
    reg: &Registry,
    run_dir: &Path,
    run_id: &str,
    mconf: &ModelConfig,
    device: &Device,
    optimizer: ModuleOptimizer,
) -> Result<Restored, TrainError> {
    let mut skipped = Vec::new();
    for (step, dir) in registry::checkpoints(run_dir) {
        let entry = Entry {
            label: format!("{run_id}@{}", registry::checkpoint_name(step)),
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
                    registry::DAMAGED_PREFIX,
                    registry::checkpoint_name(step),
                    std::process::id()
                ));
                let moved = std::fs::rename(&dir, &aside).is_ok();
                skipped.push(format!(
                    "{e}{}",
                    if moved {
                        format!(" (moved aside to {})", aside.display())
                    } else {
                        String::new()
                    }
                ));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let file = |name: &str| loaded.file(name).map_err(TrainError::from);
        let st: LoopState = serde_json::from_slice(file(registry::STATE)?)
            .map_err(|e| fail(&dir.join(registry::STATE), e.to_string()))?;
        let model = weights::from_bytes(mconf.init(device), file(registry::WEIGHTS)?.to_vec())
            .map_err(|e| fail(&dir.join(registry::WEIGHTS), e))?;
        let model = weights::set_param_ids(model, &st.param_ids)
            .map_err(|e| fail(&dir.join(registry::STATE), e))?;
        let optimizer = optimizer
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(
                file(registry::OPTIM)?.to_vec(),
            ))
            .map_err(|e| fail(&dir.join(registry::OPTIM), e.to_string()))?;
        let best = match (st.best_step, loaded.files.get(registry::BEST_WEIGHTS)) {
            (Some(s), _) if s == st.step => Some(model.valid()),
            (Some(_), Some(bytes)) => Some(
                weights::from_bytes(mconf.init(device), bytes.clone())
                    .map_err(|e| fail(&dir.join(registry::BEST_WEIGHTS), e))?,
            ),
            _ => None,
        };
        return Ok(Restored {
            model,
            optimizer,
            state: st,
            best,
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
    Err(fail(&run_dir.join(crate::run::CHECKPOINTS), why))
}

//! Evaluation: a model over a split, in batches, to metrics (sharded across the ranks of a
//! data-parallel job); and a saved model loaded with what evaluating it needs.

use std::sync::Arc;

use burn::tensor::Device;
use kiln_models::{InputShape, Model};

use crate::data::{Dataset, Preprocessor, Source, Split};
use crate::layout;
use crate::metrics::Metrics;
use crate::task::Task;

/// Examples per forward pass when evaluating.
pub const EVAL_BATCH: usize = 512;

/// Positions per forward pass when evaluating token models (their attention grows with the
/// square of a block).
const EVAL_TOKENS: usize = 16_384;

/// Examples per forward pass when evaluating examples of `input`'s shape.
fn eval_batch(input: InputShape) -> usize {
    match input {
        InputShape::Tokens { len, .. } => (EVAL_TOKENS / len.max(1)).max(1),
        _ => EVAL_BATCH,
    }
}

/// The evaluation rows (see [`Task::eval_rows`]) of examples `rows` of `data`, and the sum of
/// their losses. `model` is in validation mode, on a device without autodiff.
fn eval_rows(
    model: &Model,
    data: &dyn Source,
    input: InputShape,
    task: &dyn Task,
    device: &Device,
    rows: std::ops::Range<usize>,
) -> Result<(Vec<f32>, f64), crate::data::DataError> {
    let mut out = Vec::with_capacity(rows.len() * task.row_width());
    let mut loss_sum = 0.0;
    let step = eval_batch(input);
    for start in rows.clone().step_by(step) {
        let end = (start + step).min(rows.end);
        let idx: Vec<usize> = (start..end).collect();
        let batch = data.fetch(&idx, None)?.upload(input, device);
        let Some(x) = batch.input else { continue };
        let output = model.forward(x);
        let l = task
            .loss(output.clone(), &batch.y, device)
            .into_scalar::<f32>() as f64;
        loss_sum += l * batch.len as f64;
        out.extend(task.eval_rows(output, &batch.y));
    }
    Ok((out, loss_sum))
}

/// Metrics of `model` on `data`, in the target's units. With the ranks of a data-parallel job,
/// each rank evaluates a contiguous slice and one all-reduce of the (zero-padded) rows gives
/// every rank all of them, so every rank computes the same metrics (AUC included) and makes the
/// same decisions.
pub fn evaluate(
    group: Option<&crate::dist::Group>,
    model: &Model,
    data: &dyn Source,
    input: InputShape,
    task: &dyn Task,
    device: &Device,
) -> Result<Metrics, crate::data::DataError> {
    let (n, w) = (data.len(), task.row_width());
    let Some(group) = group else {
        let (rows, loss_sum) = eval_rows(model, data, input, task, device, 0..n)?;
        return Ok(task.metrics(&rows, loss_sum / n.max(1) as f64));
    };
    let per = n.div_ceil(group.world());
    let start = (group.rank() * per).min(n);
    let end = (start + per).min(n);
    let (mine, loss_sum) = eval_rows(model, data, input, task, device, start..end)?;
    let mut all = vec![0.0f32; n * w + 1];
    all[start * w..end * w].copy_from_slice(&mine);
    all[n * w] = loss_sum as f32;
    group.all_reduce_sum(&mut all, &|| "the evaluation all-reduce".into());
    let loss = f64::from(all[n * w]) / n.max(1) as f64;
    all.truncate(n * w);
    Ok(task.metrics(&all, loss))
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Train(#[from] crate::error::TrainError),
    #[error(transparent)]
    Setup(#[from] crate::error::SetupError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{path}: cannot load the weights: {source}")]
    Weights {
        path: String,
        source: crate::weights::WeightsError,
    },
    #[error("run {id} has no final model ({status:?}); resume it with `kiln train --resume {id}`")]
    Unfinished {
        id: String,
        status: crate::run::Status,
    },
    #[error(
        "data file {path} changed since {id} was trained (sha256 {was} then, {now} now): its splits and metrics would describe other data; restore the file, or train a new version"
    )]
    DataChanged {
        id: String,
        path: String,
        was: String,
        now: String,
    },
    #[error(
        "image folder {path} changed since {id} was trained: {what}; its splits and metrics would describe other data; restore the files, or train a new version"
    )]
    ImagesChanged {
        id: String,
        path: String,
        what: String,
    },
    #[error(
        "the data files changed since {id} was trained (then: {was}; now: {now}); restore them, or train a new version"
    )]
    DataFiles {
        id: String,
        was: String,
        now: String,
    },
    #[error("{id} has an empty {split} split")]
    EmptySplit { id: String, split: String },
    #[error(
        "{id} is a language model: `kiln {command}` reads table rows; use `kiln generate {id} --prompt TEXT`"
    )]
    LanguageModel { id: String, command: &'static str },
    #[error("{id} is not a language model (it is a {kind}): `kiln generate` needs a `gpt`")]
    NotLanguageModel { id: String, kind: &'static str },
    #[error("the prompt is empty: give `--prompt` some text to continue")]
    EmptyPrompt,
    #[error("the prompt: {0}")]
    Prompt(#[from] crate::data::text::TokenizeError),
}

impl crate::usage::UserError for EvalError {
    fn is_usage(&self) -> bool {
        match self {
            EvalError::LanguageModel { .. }
            | EvalError::NotLanguageModel { .. }
            | EvalError::EmptyPrompt
            | EvalError::Prompt(_) => true,
            EvalError::Data(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// A trained model, loaded with what evaluating it needs: config, preprocessing, data.
pub struct LoadedRun {
    /// How the registry names it (`name/vN`, a run id, `<run id>@step-N`).
    pub label: String,
    /// The record of the run, when the model is a run's (a version stands alone).
    pub info: Option<crate::run::RunInfo>,
    pub pre: Preprocessor,
    /// How the training data was read (format, delimiter, header, columns, label).
    pub data_spec: crate::data::DataSpec,
    pub mconf: kiln_models::ModelConfig,
    pub model: Model,
    pub data: crate::data::Prepared,
    pub task: Arc<dyn Task>,
    pub device: Device,
    /// The metric that chose the run's best model (`train.monitor`).
    pub monitor: crate::config::Monitor,
    /// The folder holding its config and preprocessing (and `drift.json` when saved).
    pub dir: std::path::PathBuf,
}

impl LoadedRun {
    /// A run folder's final model, with its config and preprocessing.
    pub fn open(run_dir: &std::path::Path) -> Result<Self, EvalError> {
        Self::open_with(run_dir, true)
    }

    fn open_with(run_dir: &std::path::Path, with_data: bool) -> Result<Self, EvalError> {
        use crate::registry::{Entry, EntryKind, Registry};
        use crate::run;
        let info: run::RunInfo = run::read_json(&run_dir.join(layout::RUN))?;
        let fin = run_dir.join(layout::FINAL);
        if !fin.is_dir() {
            return Err(EvalError::Unfinished {
                id: info.id,
                status: info.status,
            });
        }
        let root = layout::registry_of_run(run_dir);
        let entry = Entry {
            label: info.id.clone(),
            kind: EntryKind::Final {
                run: info.id.clone(),
            },
            dir: fin,
        };
        let loaded = Registry::new(&root).load(&entry)?;
        let weights = loaded.file(layout::WEIGHTS)?.to_vec();
        let data = &loaded.manifest.data;
        Self::build(
            entry.label,
            Some(info),
            run_dir,
            weights,
            with_data.then_some(data),
        )
    }

    /// Any registry entry: a version (from its own folder alone), a run's final model, or a
    /// checkpoint (with its run's config). Every file is checked against its manifest.
    pub fn open_entry(
        reg: &crate::registry::Registry,
        entry: &crate::registry::Entry,
    ) -> Result<Self, EvalError> {
        Self::open_entry_with(reg, entry, true)
    }

    /// The model, config and preprocessing only: the training data is not read (its splits
    /// are empty), so this works where the data is not (`kiln predict` on a serving machine).
    pub fn open_model(
        reg: &crate::registry::Registry,
        entry: &crate::registry::Entry,
    ) -> Result<Self, EvalError> {
        Self::open_entry_with(reg, entry, false)
    }

    fn open_entry_with(
        reg: &crate::registry::Registry,
        entry: &crate::registry::Entry,
        with_data: bool,
    ) -> Result<Self, EvalError> {
        use crate::registry::EntryKind;
        // `<run>/final` and `<run>/checkpoints/step-N`: the run folder is the entry's parent.
        let up = |n: usize| {
            entry
                .dir
                .ancestors()
                .nth(n)
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default()
        };
        match &entry.kind {
            EntryKind::Final { .. } => Self::open_with(&up(1), with_data),
            EntryKind::Version { .. } => {
                let loaded = reg.load(entry)?;
                let weights = loaded.file(layout::WEIGHTS)?.to_vec();
                let data = with_data.then_some(&loaded.manifest.data);
                Self::build(entry.label.clone(), None, &entry.dir, weights, data)
            }
            EntryKind::Checkpoint { .. } => {
                let loaded = reg.load(entry)?;
                let weights = loaded.file(layout::WEIGHTS)?.to_vec();
                let dir = up(2);
                let info = crate::run::read_json(&dir.join(layout::RUN)).ok();
                let data = with_data.then_some(&loaded.manifest.data);
                Self::build(entry.label.clone(), info, &dir, weights, data)
            }
        }
    }

    /// From a folder holding `config.toml`, `preprocess.json` and `model.json`, and weights.
    /// With `trained_on` (the data fingerprint of the entry's manifest), the data is read and
    /// must hash as it did in training.
    fn build(
        label: String,
        info: Option<crate::run::RunInfo>,
        dir: &std::path::Path,
        weights: Vec<u8>,
        trained_on: Option<&crate::registry::manifest::DataFingerprint>,
    ) -> Result<Self, EvalError> {
        use crate::run;
        use burn::module::Module;
        let with_data = trained_on.is_some();
        let cfg = crate::config::load_run_with(dir, with_data)?;
        if let Some(was) = trained_on {
            let same = same_data(&label, was, &crate::checkpoint::data_files(&cfg)?);
            // Image files: which files changed, from the index saved with the run.
            if let (Err(EvalError::DataChanged { path, .. }), Ok(saved)) = (
                &same,
                std::fs::read_to_string(dir.join(layout::IMAGE_INDEX)),
            ) && let Some(what) = crate::data::images::Indexed::read(&cfg.data)
                .ok()
                .and_then(|now| now.changes_since(&saved))
            {
                return Err(EvalError::ImagesChanged {
                    id: label.clone(),
                    path: path.clone(),
                    what: crate::shown::name(&what).into_owned(),
                });
            }
            same?;
        }
        let pre: Preprocessor = run::read_json(&dir.join(layout::PREPROCESS))?;
        let mconf: kiln_models::ModelConfig = run::read_json(&dir.join(layout::MODEL_CONFIG))?;
        crate::backend::init_threads(cfg.runtime.threads);
        let device = crate::backend::cpu();
        let model = crate::weights::from_bytes(mconf.init(&device), weights).map_err(|source| {
            EvalError::Weights {
                path: label.clone(),
                source,
            }
        })?;
        let data = if with_data {
            crate::data::prepare(&cfg.data, Some(&pre))?
        } else {
            crate::data::Prepared {
                train: Split::Table(Dataset::empty(pre.n_features)),
                valid: Split::Table(Dataset::empty(pre.n_features)),
                test: Split::Table(Dataset::empty(pre.n_features)),
                preprocessor: pre.clone(),
                skipped: Vec::new(),
                indexed: None,
            }
        };
        let task = crate::task::task_of(&cfg, &pre)?;
        Ok(Self {
            label,
            info,
            pre,
            data_spec: cfg.data.clone(),
            mconf,
            model: model.valid(),
            data,
            task,
            device,
            monitor: cfg.monitor.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// One split of the run's data; an error when it is empty.
    pub fn split(
        &self,
        split: crate::data::SplitName,
    ) -> Result<std::borrow::Cow<'_, Split>, EvalError> {
        let (name, data) = match split {
            crate::data::SplitName::Train => ("train", &self.data.train),
            crate::data::SplitName::Valid => ("valid", &self.data.valid),
            crate::data::SplitName::Test => ("test", &self.data.test),
        };
        let data = data.for_evaluation();
        if data.is_empty() {
            return Err(EvalError::EmptySplit {
                id: self.label.clone(),
                split: name.into(),
            });
        }
        Ok(data)
    }

    pub fn evaluate(&self, split: crate::data::SplitName) -> Result<Metrics, EvalError> {
        Ok(evaluate(
            None,
            &self.model,
            self.split(split)?.as_ref(),
            self.mconf.input(),
            self.task.as_ref(),
            &self.device,
        )?)
    }

    /// Regression: `(predicted, true)` pairs of a split in the target's units (empty for
    /// classification).
    pub fn regression_pairs(
        &self,
        split: crate::data::SplitName,
    ) -> Result<Vec<(f64, f64)>, EvalError> {
        let data = self.split(split)?;
        if self.task.class_names().is_some() {
            return Ok(Vec::new());
        }
        // A regression's evaluation rows are (prediction, target), standardised.
        let (rows, _) = eval_rows(
            &self.model,
            data.as_ref(),
            self.mconf.input(),
            self.task.as_ref(),
            &self.device,
            0..data.len(),
        )?;
        Ok(rows
            .chunks(2)
            .map(|r| (self.pre.decode_value(r[0]), self.pre.decode_value(r[1])))
            .collect())
    }
}

/// The data files must hash as they did in training: metrics, explanations and fairness
/// reports of a model describe the data it was trained and split on.
fn same_data(
    label: &str,
    was: &crate::registry::manifest::DataFingerprint,
    now: &[crate::registry::manifest::DataFile],
) -> Result<(), EvalError> {
    let short = |h: &str| h.get(..12).unwrap_or(h).to_string();
    let names = |files: &[crate::registry::manifest::DataFile]| -> Vec<(String, String)> {
        files
            .iter()
            .map(|f| (f.role.clone(), f.path.clone()))
            .collect()
    };
    if names(&was.files) != names(now) {
        let listed = |files: &[crate::registry::manifest::DataFile]| {
            files
                .iter()
                .map(|f| crate::shown::name(&f.path))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(EvalError::DataFiles {
            id: label.to_string(),
            was: listed(&was.files),
            now: listed(now),
        });
    }
    for (a, b) in was.files.iter().zip(now) {
        if a.sha256 != b.sha256 {
            return Err(EvalError::DataChanged {
                id: label.to_string(),
                path: crate::shown::name(&b.path).into_owned(),
                was: short(&a.sha256),
                now: short(&b.sha256),
            });
        }
    }
    Ok(())
}

/// Evaluates a registry entry on `split` of its data.
pub fn eval_entry(
    reg: &crate::registry::Registry,
    entry: &crate::registry::Entry,
    split: crate::data::SplitName,
) -> Result<(LoadedRun, Metrics), EvalError> {
    let run = LoadedRun::open_entry(reg, entry)?;
    let m = run.evaluate(split)?;
    Ok((run, m))
}

/// `kiln validate --deep`: loads the data, builds the model (checking that it fits in
/// memory), runs one forward pass and the loss on a real batch. Returns a one-line description
/// of what was checked.
pub fn deep_check(cfg: &crate::config::RunConfig) -> Result<String, crate::error::TrainError> {
    use crate::error::{SetupError, TrainError};
    crate::backend::init_threads(cfg.runtime.threads);
    let device = crate::backend::cpu();
    let prepared = crate::data::prepare(&cfg.data, None)?;
    let pre = &prepared.preprocessor;
    let task = crate::task::task_of(cfg, pre)?;
    let mconf = crate::model::architecture(cfg, pre, task.as_ref())?;
    crate::model::check_memory(cfg, &mconf, "cpu", prepared.train.len())?;
    let model = mconf.init(&device);
    let batch = prepared
        .train
        .head(cfg.train.batch_size.min(prepared.train.len()));
    let (_, loss_sum) = eval_rows(
        &model,
        &batch,
        mconf.input(),
        task.as_ref(),
        &device,
        0..batch.len(),
    )?;
    let loss = loss_sum / batch.len().max(1) as f64;
    if !loss.is_finite() {
        return Err(TrainError::Setup(SetupError::FirstLoss { loss }));
    }
    let width = match mconf.input() {
        InputShape::Tokens { vocab, .. } => format!("a vocabulary of {vocab}"),
        shape => format!("{} features", shape.numel()),
    };
    Ok(format!(
        "{} train / {} valid / {} test examples, {width}, {} parameters, first-batch loss {:.4}",
        prepared.train.len(),
        prepared.valid.len(),
        prepared.test.len(),
        burn::module::Module::num_params(&model),
        loss
    ))
}

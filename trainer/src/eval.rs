//! Evaluation: a model over a split, in batches, to metrics.

use burn::tensor::{Device, Tensor, TensorData};
use kiln_models::Model;

use crate::data::{Dataset, Preprocessor, Targets};
use crate::loss::Loss;
use crate::metrics::{self, Metrics};

/// Examples per forward pass when evaluating.
pub const EVAL_BATCH: usize = 512;

/// Model outputs turned into probabilities (`[n, classes]`) or decoded predictions (`[n]`),
/// plus the mean loss.
pub struct Predictions {
    pub values: Vec<f32>,
    pub width: usize,
    pub loss: f64,
}

/// Runs `model` (in validation mode, on a device without autodiff) over `data`.
pub fn predict(model: &Model, data: &Dataset, loss: &Loss, device: &Device) -> Predictions {
    let (values, loss_sum) = predict_rows(model, data, loss, device, 0..data.n);
    Predictions {
        values,
        width: loss.predicted_width(),
        loss: loss_sum / data.n.max(1) as f64,
    }
}

/// Predictions for the rows `rows` of `data`, and the sum of their losses.
fn predict_rows(
    model: &Model,
    data: &Dataset,
    loss: &Loss,
    device: &Device,
    rows: std::ops::Range<usize>,
) -> (Vec<f32>, f64) {
    let mut values = Vec::with_capacity(rows.len() * loss.predicted_width());
    let mut loss_sum = 0.0;
    for start in rows.clone().step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(rows.end);
        let idx: Vec<usize> = (start..end).collect();
        let batch = crate::data::loader::gather(data, &idx);
        let x = Tensor::<2>::from_data(TensorData::new(batch.x, [batch.len, data.d]), device);
        let out = model.forward(x);
        let l = loss
            .forward(out.clone(), &batch.y, device)
            .into_scalar::<f32>() as f64;
        loss_sum += l * batch.len as f64;
        values.extend(
            loss.predict(out)
                .into_data()
                .try_to_vec::<f32>()
                .expect("model outputs are f32"),
        );
    }
    (values, loss_sum)
}

/// Metrics of `model` on `data`, in the target's original units.
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    loss: &Loss,
    pre: &Preprocessor,
    device: &Device,
) -> Metrics {
    metrics_of(predict(model, data, loss, device), data, pre)
}

/// [`evaluate`], shared among the ranks of a data-parallel job when there is one: each rank
/// predicts a contiguous slice of `data`, and one all-reduce of the (zero-padded) predictions
/// gives every rank all of them, so every rank computes the same metrics (AUC included) and
/// makes the same decisions.
pub fn evaluate_in(
    group: Option<&crate::dist::Group>,
    model: &Model,
    data: &Dataset,
    loss: &Loss,
    pre: &Preprocessor,
    device: &Device,
) -> Metrics {
    let Some(group) = group else {
        return evaluate(model, data, loss, pre, device);
    };
    let (n, w) = (data.n, loss.predicted_width());
    let per = n.div_ceil(group.world());
    let start = (group.rank() * per).min(n);
    let end = (start + per).min(n);
    let (mine, loss_sum) = predict_rows(model, data, loss, device, start..end);
    let mut all = vec![0.0f32; n * w + 1];
    all[start * w..end * w].copy_from_slice(&mine);
    all[n * w] = loss_sum as f32;
    group.all_reduce_sum(&mut all, &|| "the evaluation all-reduce".into());
    let loss = f64::from(all[n * w]) / n.max(1) as f64;
    all.truncate(n * w);
    let p = Predictions {
        values: all,
        width: w,
        loss,
    };
    metrics_of(p, data, pre)
}

fn metrics_of(p: Predictions, data: &Dataset, pre: &Preprocessor) -> Metrics {
    match &data.y {
        Targets::Classes(labels) => {
            let names = pre
                .class_names()
                .expect("class targets come with class names");
            Metrics::Classification(metrics::classification(&p.values, labels, names, p.loss))
        }
        Targets::Values(values) => {
            let pred: Vec<f64> = p.values.iter().map(|&v| pre.decode_value(v)).collect();
            let truth: Vec<f64> = values.iter().map(|&v| pre.decode_value(v)).collect();
            Metrics::Regression(metrics::regression(&pred, &truth, p.loss))
        }
    }
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
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{path}: cannot load the weights: {message}")]
    Weights { path: String, message: String },
    #[error("run {id} has no final model ({status:?}); resume it with `kiln train --resume {id}`")]
    Unfinished {
        id: String,
        status: crate::run::Status,
    },
    #[error("{id} has an empty {split} split")]
    EmptySplit { id: String, split: String },
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
    pub loss: Loss,
    pub device: Device,
}

impl LoadedRun {
    /// A run folder's final model, with its config and preprocessing.
    pub fn open(run_dir: &std::path::Path) -> Result<Self, EvalError> {
        Self::open_with(run_dir, true)
    }

    fn open_with(run_dir: &std::path::Path, with_data: bool) -> Result<Self, EvalError> {
        use crate::registry::{self, Entry, EntryKind, Registry};
        use crate::run;
        let info: run::RunInfo = run::read_json(&run_dir.join(run::RUN))?;
        let fin = run_dir.join(registry::FINAL);
        if !fin.is_dir() {
            return Err(EvalError::Unfinished {
                id: info.id,
                status: info.status,
            });
        }
        // `<registry>/runs/<id>`: the registry is two levels up.
        let root = run_dir
            .parent()
            .and_then(|p| p.parent())
            .unwrap_or(std::path::Path::new("."));
        let entry = Entry {
            label: info.id.clone(),
            kind: EntryKind::Final {
                run: info.id.clone(),
            },
            dir: fin,
        };
        let loaded = Registry::new(root).load(&entry)?;
        let weights = loaded.file(registry::WEIGHTS)?.to_vec();
        Self::build(entry.label, Some(info), run_dir, weights, with_data)
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
        use crate::registry::{self, EntryKind};
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
                let weights = loaded.file(registry::WEIGHTS)?.to_vec();
                Self::build(entry.label.clone(), None, &entry.dir, weights, with_data)
            }
            EntryKind::Checkpoint { .. } => {
                let loaded = reg.load(entry)?;
                let weights = loaded.file(registry::WEIGHTS)?.to_vec();
                let dir = up(2);
                let info = crate::run::read_json(&dir.join(crate::run::RUN)).ok();
                Self::build(entry.label.clone(), info, &dir, weights, with_data)
            }
        }
    }

    /// From a folder holding `config.toml`, `preprocess.json` and `model.json`, and weights.
    fn build(
        label: String,
        info: Option<crate::run::RunInfo>,
        dir: &std::path::Path,
        weights: Vec<u8>,
        with_data: bool,
    ) -> Result<Self, EvalError> {
        use crate::run;
        use burn::module::Module;
        let cfg = crate::config::load_run_with(dir, with_data)?;
        let pre: Preprocessor = run::read_json(&dir.join(run::PREPROCESS))?;
        let mconf: kiln_models::ModelConfig = run::read_json(&dir.join(run::MODEL_CONFIG))?;
        crate::train::init_threads(cfg.file.runtime.threads);
        let device = crate::train::device();
        let model = crate::weights::from_bytes(mconf.init(&device), weights).map_err(|e| {
            EvalError::Weights {
                path: label.clone(),
                message: e,
            }
        })?;
        let data = if with_data {
            crate::data::prepare(&cfg.data, Some(&pre))?
        } else {
            let empty = || Dataset {
                x: Vec::new(),
                y: Targets::Values(Vec::new()),
                n: 0,
                d: pre.n_features,
            };
            crate::data::Prepared {
                train: empty(),
                valid: empty(),
                test: empty(),
                preprocessor: pre.clone(),
            }
        };
        let loss = crate::train::loss_of(&cfg, &pre)?;
        Ok(Self {
            label,
            info,
            pre,
            data_spec: cfg.data.clone(),
            mconf,
            model: model.valid(),
            data,
            loss,
            device,
        })
    }

    /// One split of the run's data; an error when it is empty.
    pub fn split(&self, split: crate::data::SplitName) -> Result<&Dataset, EvalError> {
        let (name, data) = match split {
            crate::data::SplitName::Train => ("train", &self.data.train),
            crate::data::SplitName::Valid => ("valid", &self.data.valid),
            crate::data::SplitName::Test => ("test", &self.data.test),
        };
        if data.n == 0 {
            return Err(EvalError::EmptySplit {
                id: self.label.clone(),
                split: name.into(),
            });
        }
        Ok(data)
    }

    pub fn evaluate(&self, split: crate::data::SplitName) -> Result<Metrics, EvalError> {
        Ok(evaluate(
            &self.model,
            self.split(split)?,
            &self.loss,
            &self.pre,
            &self.device,
        ))
    }

    /// Regression: `(predicted, true)` pairs of a split in the target's units.
    pub fn regression_pairs(
        &self,
        split: crate::data::SplitName,
    ) -> Result<Vec<(f64, f64)>, EvalError> {
        let data = self.split(split)?;
        let p = predict(&self.model, data, &self.loss, &self.device);
        let Targets::Values(truth) = &data.y else {
            return Ok(Vec::new());
        };
        Ok(p.values
            .iter()
            .zip(truth)
            .map(|(&a, &b)| (self.pre.decode_value(a), self.pre.decode_value(b)))
            .collect())
    }
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

/// `kiln validate --deep`: loads the data, builds the model, runs one forward pass and the loss
/// on a real batch. Returns a one-line description of what was checked.
pub fn deep_check(cfg: &crate::config::RunConfig) -> Result<String, crate::train::TrainError> {
    crate::train::init_threads(cfg.file.runtime.threads);
    let device = crate::train::device();
    let prepared = crate::data::prepare(&cfg.data, None)?;
    let loss = crate::train::loss_of(cfg, &prepared.preprocessor)?;
    let mconf = crate::train::model_config(
        cfg,
        &prepared.preprocessor,
        prepared.train.d,
        loss.outputs(),
    )?;
    let model = mconf.init(&device);
    let batch = prepared
        .train
        .head(cfg.file.train.batch_size.min(prepared.train.n));
    let p = predict(&model, &batch, &loss, &device);
    if !p.loss.is_finite() {
        return Err(crate::train::TrainError::Setup(format!(
            "the loss of the first batch is {}",
            p.loss
        )));
    }
    Ok(format!(
        "{} train / {} valid / {} test examples, {} features, {} parameters, first-batch loss {:.4}",
        prepared.train.n,
        prepared.valid.n,
        prepared.test.n,
        prepared.train.d,
        burn::module::Module::num_params(&model),
        p.loss
    ))
}

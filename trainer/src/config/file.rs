//! The config file format people edit: plain serde, every field defaulted and documented.
//!
//! Unknown keys are not silently dropped: [`super::load`] deserialises through `serde_ignored`,
//! collects every key no field took, and reports them all at once with a suggestion. `validate`
//! then turns this into the typed [`super::RunConfig`] the trainer runs from.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the data's own enums mean is the data's (`data::spec`).
pub use crate::data::spec::{ColumnRef, DataFormat, Impute, Task};
pub use crate::data::text::TokenizerKind;
/// The `[model]` table is the model zoo's: each kind reads its own keys there.
pub use kiln_models::{ConvSection, ModelKind, ModelSection};

/// A whole kiln config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct FileConfig {
    /// Model name: run ids start with it and a completed run registers a version of it.
    /// Default: the config file's stem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seed for weight init, dropout, data split and shuffling. Default: 42.
    pub seed: u64,
    /// `classification`, `regression` or `language_model` (next-token prediction over a text
    /// corpus: `data.format` = "text", `model.kind` = "gpt"). Default: `classification`.
    pub task: Task,
    pub data: DataSection,
    pub model: ModelSection,
    pub train: TrainSection,
    pub optim: OptimSection,
    pub schedule: ScheduleSection,
    pub backend: BackendSection,
    pub distributed: DistributedSection,
    pub runtime: RuntimeSection,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            name: None,
            seed: 42,
            task: Task::Classification,
            data: DataSection::default(),
            model: ModelSection::default(),
            train: TrainSection::default(),
            optim: OptimSection::default(),
            schedule: ScheduleSection::default(),
            backend: BackendSection::default(),
            distributed: DistributedSection::default(),
            runtime: RuntimeSection::default(),
        }
    }
}

/// Where the examples come from and how they are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct DataSection {
    /// `csv` (CSV/TSV/whitespace-separated text, `.gz` too), `idx` (MNIST's IDX files),
    /// `text` (a corpus for a language model), `image_folder` (PNG/JPEG files in one folder per
    /// class) or `image_csv` (a CSV/TSV of image paths and labels).
    pub format: DataFormat,
    /// The training file (for `idx`: the images; for `text`: a file, a folder, or a glob such
    /// as `data/shakespeare/*.txt`, read in name order). Relative paths are relative to the
    /// working directory. Required.
    pub path: String,
    /// `csv` with a column of text to classify: the column's name. The model (`encoder`) reads
    /// its tokens; other feature columns are not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// How text becomes tokens: `char` (one per character of the corpus), `byte` (256), `bpe`
    /// (a byte-level BPE trained on the training split, `text` only) or `word` (the training
    /// split's most frequent words, lower-cased, and punctuation; `data.text` only). The vocabulary is saved with the run. Default: `char` for `text`, `word`
    /// for `data.text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerKind>,
    /// `word`, `bpe`: the vocabulary's size, special tokens included. Default: 8000 (`word`),
    /// 2048 (`bpe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// `text`: a Hugging Face `tokenizer.json` to read the corpus with, instead of training
    /// one. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer_file: Option<String>,
    /// Tokens per training block of a corpus (the context the model learns from), or the most
    /// tokens of a text the classifier reads (longer ones are cut); at most `model.block_size`.
    /// Default: `model.block_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// A separate file of targets, one per line (for `idx`: the labels). Default: none, the
    /// label is a column of `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels_path: Option<String>,
    /// A file holding the test split (same format as `path`); when set, `split.test` must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_path: Option<String>,
    /// Targets of `test_path`, when `labels_path` is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_labels_path: Option<String>,
    /// The label column, by name or by index (0-based; negative counts from the end).
    /// Default: the last column. Not used with `labels_path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<ColumnRef>,
    /// Whether the first (kept) line holds column names. Default: false.
    pub header: bool,
    /// Column names for a file without a header, in order.
    pub columns: Vec<String>,
    /// Lines to skip before the header or data. Default: 0.
    pub skip_rows: usize,
    /// Field separator: `,`, `;`, `\t`, `|` or `whitespace`. Default: `\t` for `.tsv` files,
    /// `,` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    /// Columns to treat as categories (one-hot encoded). Columns holding any non-numeric value
    /// are categorical without being listed.
    pub categorical: Vec<String>,
    /// Columns to drop, by name.
    pub ignore: Vec<String>,
    /// Strings that mean "missing". Default: `""`, `NA`, `N/A`, `NaN`, `?`.
    pub missing_values: Vec<String>,
    /// How to fill missing values: `mean`, `median`, `most_frequent`, `constant` or `error`
    /// (reject the file, naming row and column). Categorical columns use `most_frequent` for
    /// `mean`/`median`, and a `"<missing>"` category for `constant`. Default: `error`.
    pub impute: Impute,
    /// The fill value for `impute = "constant"` in numeric columns. Default: 0.
    pub impute_value: f64,
    /// Standardise numeric features to zero mean, unit variance (statistics from the training
    /// split only). Default: true.
    pub standardize: bool,
    /// Standardise the regression target too (metrics are reported in its original units).
    /// Default: true.
    pub standardize_target: bool,
    /// Treat each row as an image of this `[channels, height, width]`: features are pixels,
    /// standardised with one mean and deviation over all pixels. Set automatically for `idx`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_shape: Option<[usize; 3]>,
    /// Names of the classes, by class index. Default: the label values as they sort.
    pub class_names: Vec<String>,
    /// Image files: `[height, width]` the model reads; each image is scaled to cover it (aspect
    /// ratio kept) and cropped at the centre. Default: the first training image's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
    /// Image files: 1 (grey) or 3 (RGB); files are converted. Default: the first training
    /// image's (1 for grey, else 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// Image files: random transforms of the training images (`[data.augment]`).
    pub augment: crate::data::images::Augment,
    /// Image files: `error` (stop, naming the file) or `skip` (leave files that are not a
    /// readable PNG/JPEG out, counted in the run record). Default: `error`.
    pub bad_images: crate::data::images::BadImages,
    /// `image_csv`: the column of image paths, relative to the CSV's folder. Default: `path`.
    pub path_column: String,
    pub split: SplitSection,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            format: DataFormat::Csv,
            path: String::new(),
            text: None,
            tokenizer: None,
            vocab_size: None,
            tokenizer_file: None,
            block_size: None,
            labels_path: None,
            test_path: None,
            test_labels_path: None,
            label: None,
            header: false,
            columns: Vec::new(),
            skip_rows: 0,
            delimiter: None,
            categorical: Vec::new(),
            ignore: Vec::new(),
            missing_values: ["", "NA", "N/A", "NaN", "?"].map(String::from).to_vec(),
            impute: Impute::Error,
            impute_value: 0.0,
            standardize: true,
            standardize_target: true,
            image_shape: None,
            class_names: Vec::new(),
            image_size: None,
            channels: None,
            augment: Default::default(),
            bad_images: Default::default(),
            path_column: "path".into(),
            split: SplitSection::default(),
        }
    }
}

/// How the examples are divided into train, validation and test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct SplitSection {
    /// Fraction of the training file held out for validation, in `[0, 1)`. Default: 0.1.
    pub valid: f64,
    /// Fraction held out for test, in `[0, 1)`; must be 0 when `data.test_path` is set.
    /// Default: 0.2 (0 when `data.test_path` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<f64>,
    /// Keep class proportions equal across splits (classification only). Default: true.
    pub stratify: bool,
    /// Seed of the split. Default: the top-level `seed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// k-fold cross-validation (what `kiln cv` sets for each fold): the rows outside the test
    /// split are dealt into `folds` folds (stratified as `stratify` says) and fold `fold`
    /// (0-based) is the validation split; `valid` is then unused. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folds: Option<usize>,
    /// The validating fold, `0..folds`; required with `folds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
}

impl Default for SplitSection {
    fn default() -> Self {
        Self {
            valid: 0.1,
            test: None,
            stratify: true,
            seed: None,
            folds: None,
            fold: None,
        }
    }
}

/// The training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TrainSection {
    /// Passes over the training split. Default: 10.
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever `epochs` says. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// Examples per forward pass. Default: 64.
    pub batch_size: usize,
    /// Forward/backward passes per optimizer step (effective batch = batch_size x this).
    /// Default: 1.
    pub grad_accum: usize,
    /// Clip gradients so that their global L2 norm is at most this. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// `cross_entropy`, `bce` (binary, one output), `mse` or `huber`. Default: `cross_entropy`
    /// for classification, `mse` for regression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossKind>,
    /// Label smoothing of `cross_entropy`, in `[0, 1)`. Default: 0.
    pub label_smoothing: f64,
    /// Threshold between the quadratic and linear parts of `huber` (in standardised target
    /// units). Default: 1.
    pub huber_delta: f64,
    /// Validate every this many optimizer steps. Default: none (once per epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_every: Option<usize>,
    /// Print and record the training loss every this many optimizer steps. Default: 50.
    pub log_every: usize,
    /// Also checkpoint every this many optimizer steps (there is always one at each epoch's
    /// end and on Ctrl-C). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Checkpoints kept: the newest this many (at least 1, which `--resume` continues from).
    /// Default: 2.
    pub keep_last: usize,
    /// Also keep this many checkpoints with the best `monitor` value at their validation.
    /// Default: 1.
    pub keep_best: usize,
    /// The validation metric that picks the best model: `loss`, `accuracy`, `f1`, `auc`,
    /// `mse`, `rmse`, `mae`, `r2`. Default: `loss`.
    pub monitor: String,
    /// At the end, evaluate and keep the weights that scored best on `monitor`, not the last
    /// ones. Default: true.
    pub restore_best: bool,
    /// Stop when `monitor` has not improved for `patience` validations. Default: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingSection>,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: None,
            batch_size: 64,
            grad_accum: 1,
            clip_grad_norm: None,
            loss: None,
            label_smoothing: 0.0,
            huber_delta: 1.0,
            valid_every: None,
            log_every: 50,
            checkpoint_every: None,
            keep_last: 2,
            keep_best: 1,
            monitor: "loss".into(),
            restore_best: true,
            early_stopping: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    CrossEntropy,
    Bce,
    Mse,
    Huber,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct EarlyStoppingSection {
    /// Validations without improvement before stopping. Default: 5.
    pub patience: usize,
    /// Smallest change of `train.monitor` that counts as an improvement. Default: 0.
    pub min_delta: f64,
}

impl Default for EarlyStoppingSection {
    fn default() -> Self {
        Self {
            patience: 5,
            min_delta: 0.0,
        }
    }
}

/// The optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct OptimSection {
    /// `sgd`, `adam` or `adamw`. Default: `adamw`.
    pub name: OptimName,
    /// Peak learning rate. Default: 1e-3.
    pub lr: f64,
    /// L2 penalty (`sgd`, `adam`) or decoupled decay (`adamw`). Default: 0 (`adamw`: 0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// SGD momentum, in `[0, 1)`. Default: 0.9.
    pub momentum: f64,
    /// SGD with Nesterov momentum. Default: false.
    pub nesterov: bool,
    /// Adam's decay rates of the first and second moments. Default: `[0.9, 0.999]`.
    pub betas: [f64; 2],
    /// Adam's epsilon. Default: 1e-8.
    pub eps: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            name: OptimName::Adamw,
            lr: 1e-3,
            weight_decay: None,
            momentum: 0.9,
            nesterov: false,
            betas: [0.9, 0.999],
            eps: 1e-8,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimName {
    Sgd,
    Adam,
    #[default]
    Adamw,
}

/// The learning-rate schedule, in optimizer steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ScheduleSection {
    /// `constant`, `step` or `cosine`. Default: `constant`.
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from 0 to `optim.lr`. Default: 0.
    pub warmup_steps: usize,
    /// `step`: multiply the rate by `gamma` every this many steps. Default: 1000.
    pub step_size: usize,
    /// `step`: the factor. Default: 0.1.
    pub gamma: f64,
    /// `cosine`: the rate at the last step. Default: 0.
    pub min_lr: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
            step_size: 1000,
            gamma: 0.1,
            min_lr: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Step,
    Cosine,
}

/// Where and how the work runs.
/// Data-parallel training, when a launcher (mpirun, srun) starts several ranks (see the book,
/// "Multi-GPU and multi-node"). `train.batch_size` is per rank: the global batch is
/// `batch_size` times the number of ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct DistributedSection {
    /// Seconds a rank waits for the others in one collective (the start-up handshake, a
    /// gradient all-reduce) before it gives up with an error naming what it waited for.
    /// Default: 300.
    pub timeout_s: u64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self { timeout_s: 300 }
    }
}

/// The device a run computes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct BackendSection {
    /// `auto` (a CUDA GPU, else a hardware WGPU adapter, else the CPU), `cpu`, `wgpu`,
    /// `wgpu:N`, `cuda`, `cuda:N`; `--device` overrides it. Default: `auto`.
    pub device: String,
    /// `f32`, or mixed precision with f32 master weights: `f16` (dynamic loss scaling) or
    /// `bf16`. Default: `f32`.
    pub precision: String,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            precision: "f32".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RuntimeSection {
    /// Compute threads of the CPU backend; 0 means one per core. Default: 0.
    pub threads: usize,
    /// Threads that assemble batches ahead of the model. Default: 1.
    pub workers: usize,
    /// Batches each worker may prepare ahead. Default: 4.
    pub prefetch: usize,
    /// Where runs are written (`<dir>/runs/<run id>`). Default: `kiln-registry`; the
    /// `KILN_REGISTRY` environment variable and `--registry` override it.
    pub registry: String,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            threads: 0,
            workers: 1,
            prefetch: 4,
            registry: "kiln-registry".into(),
        }
    }
}

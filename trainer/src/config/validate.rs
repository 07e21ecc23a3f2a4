//! The one check between the edited file and the trainer: ranges, files, shapes, combinations.

use std::path::{Path, PathBuf};

use super::run::{EarlyStopping, LossConfig, Monitor, OptimConfig, RunConfig, TrainConfig};
use super::{ConfigError, DataFormat, FileConfig, LossKind, OptimName, Problem, Task};
use crate::amp::Precision;
use crate::data;
use kiln_models::{InputShape, ModelConfig, ModelKind, TextRole};

/// The largest vocabulary a tokenizer may be asked for: token ids are 32-bit, and the largest
/// vocabularies in use are about 256k (Gemma's); four times that is a mistake, not a model.
pub const MAX_VOCAB: usize = 1 << 20;

const CLASSIFICATION_METRICS: &[&str] = &["loss", "accuracy", "f1", "precision", "recall", "auc"];
const REGRESSION_METRICS: &[&str] = &["loss", "mse", "rmse", "mae", "r2"];
const LANGUAGE_MODEL_METRICS: &[&str] = &["loss", "perplexity", "bits_per_token", "accuracy"];

/// Checks everything that can be checked before training and reports every problem at once.
///
/// `origin` names the config in messages; `default_name` is used when the file sets no `name`.
/// Data files are opened only to peek at their first lines.
pub fn validate(
    file: FileConfig,
    origin: &str,
    default_name: &str,
) -> Result<RunConfig, ConfigError> {
    validate_with(file, origin, default_name, true)
}

/// As [`validate`]; with `data_files` false the data files need not exist (a trained model
/// used where its training data is not, as `kiln predict` on a serving machine).
/// Problems found so far: every one is reported, at once.
struct Checker<'a> {
    origin: &'a str,
    problems: Vec<Problem>,
    /// A run's saved config, not one a person wrote: keys that kiln ignored when the run was
    /// trained are not errors now.
    saved: bool,
}

/// What the `[data]` table resolves to, before the data spec is assembled.
struct DataChecked {
    path: Option<PathBuf>,
    labels_path: Option<PathBuf>,
    test_path: Option<PathBuf>,
    test_labels_path: Option<PathBuf>,
    delimiter: Option<u8>,
    test_frac: f64,
    /// Every data file named exists (so its first lines can be read).
    paths_ok: bool,
}

pub fn validate_with(
    file: FileConfig,
    origin: &str,
    default_name: &str,
    data_files: bool,
) -> Result<RunConfig, ConfigError> {
    check(file, origin, default_name, data_files, false)
}

/// As [`validate_with`], for the config saved in a run's folder: a `[model]` key of another
/// kind, which kiln ignored before it refused it, does not lock the run out.
pub fn validate_saved(
    file: FileConfig,
    origin: &str,
    default_name: &str,
    data_files: bool,
) -> Result<RunConfig, ConfigError> {
    check(file, origin, default_name, data_files, true)
}

fn check(
    file: FileConfig,
    origin: &str,
    default_name: &str,
    data_files: bool,
    saved: bool,
) -> Result<RunConfig, ConfigError> {
    let mut c = Checker {
        origin,
        problems: Vec::new(),
        saved,
    };
    let name = c.name(&file, default_name);
    let checked = c.data(&file, data_files);
    c.model(&file);
    let (loss, monitor) = c.train(&file);
    let weight_decay = c.optim(&file);
    c.schedule(&file);
    let (device, precision) = c.backend(&file);
    c.runtime(&file);
    let spec = data_spec(&file, &checked);
    // Data shape fit: peek at the files' first lines (only when they exist).
    if checked.paths_ok && data_files {
        for msg in data::peek_problems(&spec) {
            c.bad(msg);
        }
    }
    let task = file.task;
    let o = &file.optim;
    let early_stopping = file.train.early_stopping.as_ref().map(|e| EarlyStopping {
        patience: e.patience,
        min_delta: e.min_delta,
    });
    let p = c.problems;
    if p.is_empty() {
        let t = &file.train;
        Ok(RunConfig {
            name,
            seed: file.seed,
            task,
            data: spec,
            model: file.model.clone(),
            train: TrainConfig {
                epochs: t.epochs,
                max_steps: t.max_steps,
                batch_size: t.batch_size,
                grad_accum: t.grad_accum,
                clip_grad_norm: t.clip_grad_norm,
                valid_every: t.valid_every,
                log_every: t.log_every,
                checkpoint_every: t.checkpoint_every,
                keep_last: t.keep_last,
                keep_best: t.keep_best,
                restore_best: t.restore_best,
                early_stopping,
            },
            loss: LossConfig {
                kind: loss,
                label_smoothing: t.label_smoothing,
                huber_delta: t.huber_delta,
            },
            monitor,
            optim: OptimConfig {
                name: o.name,
                lr: o.lr,
                weight_decay,
                momentum: o.momentum,
                nesterov: o.nesterov,
                betas: o.betas,
                eps: o.eps,
            },
            schedule: file.schedule.clone(),
            precision,
            device,
            timeout: std::time::Duration::from_secs(file.distributed.timeout_s),
            runtime: file.runtime.clone(),
            file,
        })
    } else {
        Err(ConfigError { problems: p })
    }
}

impl Checker<'_> {
    fn bad(&mut self, message: String) {
        self.problems.push(Problem::new(self.origin, None, message));
    }

    /// A data file named by `data.<key>`: there, and a file (when `data_files`).
    fn file(&mut self, key: &str, value: &Option<String>, data_files: bool) -> Option<PathBuf> {
        let v = value.as_ref()?;
        let path = PathBuf::from(v);
        if data_files && path.is_dir() {
            self.bad(format!(
                "`data.{key}` = {v:?}: is a directory; give the data file in it"
            ));
        } else if data_files && path.exists() && !path.is_file() {
            self.bad(format!(
                "`data.{key}` = {v:?}: not a regular file (a named pipe, socket or device): kiln reads files"
            ));
        } else if data_files && !path.is_file() {
            self.bad(format!("`data.{key}` = {v:?}: no such file"));
        }
        Some(path)
    }

    /// `name`, or the file's stem: one path component of safe characters.
    fn name(&mut self, file: &FileConfig, default_name: &str) -> String {
        let name = file
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string());
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            self.bad(format!(
            "`name` = {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        ));
        }
        name
    }

    /// `[data]`: the files, how they are read, the split.
    fn data(&mut self, file: &FileConfig, data_files: bool) -> DataChecked {
        let d = &file.data;
        let n_before = self.problems.len();
        let path = self.data_path(d, data_files);
        self.text(file, data_files);
        let labels_path = self.file("labels_path", &d.labels_path, data_files);
        let test_path = self.test_path(d, data_files);
        self.images(file);
        let test_labels_path = self.file("test_labels_path", &d.test_labels_path, data_files);
        let paths_ok = self.problems.len() == n_before;
        self.data_pairings(d);
        let delimiter = self.delimiter(d);
        let test_frac = self.split(d);
        if !d.impute_value.is_finite() {
            self.bad("`data.impute_value` must be a finite number".into());
        }
        if let Some(s) = d.image_shape
            && s.contains(&0)
        {
            self.bad(format!(
                "`data.image_shape` = {s:?}: every size must be at least 1"
            ));
        }
        DataChecked {
            path,
            labels_path,
            test_path,
            test_labels_path,
            delimiter,
            test_frac,
            paths_ok,
        }
    }

    /// `data.path`: a file, an image folder, or a text corpus (a file, folder or glob).
    fn data_path(&mut self, d: &super::DataSection, data_files: bool) -> Option<PathBuf> {
        let text = d.format == DataFormat::Text;
        let folder = d.format == DataFormat::ImageFolder;
        if d.path.is_empty() {
            self.bad("`data.path` is required: the training data file".into());
            None
        } else if folder {
            let path = PathBuf::from(&d.path);
            if data_files && !path.is_dir() {
                self.bad(format!(
                    "`data.path` = {:?}: no such folder (`data.format` = \"image_folder\" reads <path>/<class>/*.png|jpg)",
                    d.path
                ));
            }
            Some(path)
        } else if text {
            // A corpus may be a folder or a glob: the reader lists its files.
            let path = PathBuf::from(&d.path);
            if data_files && let Err(e) = data::text::corpus_files(&path) {
                self.bad(format!("`data.path`: {e}"));
            }
            Some(path)
        } else {
            self.file("path", &Some(d.path.clone()), data_files)
        }
    }

    /// `data.test_path`: a folder of class folders for image folders, else a file.
    fn test_path(&mut self, d: &super::DataSection, data_files: bool) -> Option<PathBuf> {
        let folder = d.format == DataFormat::ImageFolder;
        match folder {
            true => {
                let p = d.test_path.as_ref().map(PathBuf::from);
                if data_files && let Some(p) = p.as_ref().filter(|p| !p.is_dir()) {
                    self.bad(format!(
                        "`data.test_path` = {:?}: no such folder",
                        p.display()
                    ));
                }
                p
            }
            false => self.file("test_path", &d.test_path, data_files),
        }
    }

    /// Keys of `[data]` that go together or exclude each other.
    fn data_pairings(&mut self, d: &super::DataSection) {
        if d.format == DataFormat::Idx && d.labels_path.is_none() {
            self.bad("`data.format` = \"idx\" needs `data.labels_path`, the IDX label file".into());
        }
        if d.labels_path.is_some() && d.label.is_some() {
            self.bad(
                "set either `data.label` (a column) or `data.labels_path` (a file), not both"
                    .into(),
            );
        }
        if d.test_path.is_some() && d.labels_path.is_some() != d.test_labels_path.is_some() {
            self.bad(
                "`data.test_path` with `data.labels_path` needs `data.test_labels_path` too".into(),
            );
        }
        if d.header && !d.columns.is_empty() {
            self.bad(
                "set either `data.header` = true (names from the file) or `data.columns`, not both"
                    .into(),
            );
        }
        if d.label
            .as_ref()
            .is_some_and(|l| matches!(l, super::ColumnRef::Name(n) if d.ignore.contains(n)))
        {
            self.bad("`data.label` is also listed in `data.ignore`".into());
        }
        if d.test_path.is_none() && d.test_labels_path.is_some() {
            self.bad("`data.test_labels_path` is set but `data.test_path` is not".into());
        }
    }

    /// `data.delimiter` as a byte (`None`: runs of whitespace).
    fn delimiter(&mut self, d: &super::DataSection) -> Option<u8> {
        match d.delimiter.as_deref() {
            None => {
                if d.path.ends_with(".tsv") || d.path.ends_with(".tsv.gz") {
                    Some(b'\t')
                } else {
                    Some(b',')
                }
            }
            Some(",") => Some(b','),
            Some(";") => Some(b';'),
            Some("\t") | Some("\\t") | Some("tab") => Some(b'\t'),
            Some("|") => Some(b'|'),
            Some("whitespace") | Some(" ") => None,
            Some(other) => {
                self.bad(format!(
                "`data.delimiter` = {other:?}: use \",\", \";\", \"\\t\", \"|\" or \"whitespace\""
            ));
                Some(b',')
            }
        }
    }

    /// `[data.split]`: the fractions and folds; returns the test fraction.
    fn split(&mut self, d: &super::DataSection) -> f64 {
        let text = d.format == DataFormat::Text;
        // A corpus is split by position: validation follows training, test comes last (none
        // unless asked for).
        let test_frac = d.split.test.unwrap_or(if d.test_path.is_some() || text {
            0.0
        } else {
            0.2
        });
        if !(0.0..1.0).contains(&d.split.valid) {
            self.bad(format!(
                "`data.split.valid` = {}: must be in [0, 1)",
                d.split.valid
            ));
        }
        if !(0.0..1.0).contains(&test_frac) {
            self.bad(format!(
                "`data.split.test` = {test_frac}: must be in [0, 1)"
            ));
        }
        match (d.split.folds, d.split.fold) {
            (None, None) => {}
            (Some(k), _) if k < 2 => self.bad(format!(
                "`data.split.folds` = {k}: cross-validation needs at least 2 folds"
            )),
            (Some(k), Some(i)) if i >= k => self.bad(format!(
                "`data.split.fold` = {i}: must be below `data.split.folds` = {k} (folds count from 0)"
            )),
            (Some(_), None) => {
                self.bad("`data.split.folds` needs `data.split.fold`: which fold validates".into())
            }
            (None, Some(_)) => {
                self.bad("`data.split.fold` needs `data.split.folds`: how many folds".into())
            }
            (Some(_), Some(_)) if text => self.bad(
                "a text corpus is split by position: `data.split.folds` does not apply".into(),
            ),
            (Some(_), Some(_)) => {}
        }
        if d.split.folds.is_none() && d.split.valid + test_frac >= 1.0 {
            self.bad(format!(
                "`data.split.valid` + `data.split.test` = {}: leaves nothing to train on",
                d.split.valid + test_frac
            ));
        }
        if d.test_path.is_some() && test_frac > 0.0 {
            self.bad(
                "`data.split.test` must be 0 when `data.test_path` gives the test split".into(),
            );
        }
        test_frac
    }

    /// The image keys of `[data]`, and the pairing of image files with their task.
    fn images(&mut self, file: &FileConfig) {
        let d = &file.data;
        let images = matches!(d.format, DataFormat::ImageFolder | DataFormat::ImageCsv);
        if images {
            if file.task != Task::Classification {
                self.bad(format!(
                    "`data.format` = {:?} labels images with classes: it needs `task` = \"classification\"",
                    format_name(d.format)
                ));
            }
            if d.image_shape.is_some() {
                self.bad("`data.image_shape` is for rows of pixels; image files take `data.image_size` = [height, width] (and `data.channels`)".into());
            }
            if d.labels_path.is_some() {
                self.bad(
                    "`data.labels_path` does not apply to image files: labels are class folders (`image_folder`) or a column (`image_csv`)"
                        .into(),
                );
            }
            if let Some(s) = d.image_size
                && (s.contains(&0) || s[0].saturating_mul(s[1]) > data::images::MAX_PIXELS)
            {
                self.bad(format!(
                    "`data.image_size` = {s:?}: every size at least 1, at most {} pixels in all",
                    data::images::MAX_PIXELS
                ));
            }
            if let Some(c) = d.channels
                && c != 1
                && c != 3
            {
                self.bad(format!("`data.channels` = {c}: use 1 (grey) or 3 (RGB)"));
            }
            for p in d.augment.problems(d.image_size) {
                self.bad(p);
            }
            if d.channels == Some(1)
                && d.augment
                    .color_jitter
                    .as_ref()
                    .is_some_and(|j| j.saturation != 0.0)
            {
                self.bad("`data.augment.color_jitter.saturation` changes colours: it does nothing to grey images (`data.channels` = 1)".into());
            }
            if d.format == DataFormat::ImageCsv
                && matches!(d.label, Some(super::ColumnRef::Index(_)))
            {
                self.bad("`data.label`: name the label column of an image CSV (it has a header), not its index".into());
            }
            if d.augment.random_crop.is_some() && d.image_size.is_none() {
                self.bad("`data.augment.random_crop` needs `data.image_size`: the size every training image is cropped to".into());
            }
        } else {
            let set = d.image_size.is_some()
                || d.channels.is_some()
                || d.augment != Default::default()
                || d.bad_images != Default::default();
            if set {
                self.bad(format!(
                    "`data.image_size`, `data.channels`, `data.augment` and `data.bad_images` apply to image files (`data.format` = \"image_folder\" or \"image_csv\"), not {:?}",
                    format_name(d.format)
                ));
            }
        }
        if d.format != DataFormat::ImageCsv && d.path_column != "path" {
            self.bad("`data.path_column` applies to `data.format` = \"image_csv\"".into());
        }
    }

    /// The text keys of `[data]`, and the pairing of text with its task and model.
    fn text(&mut self, file: &FileConfig, data_files: bool) {
        let d = &file.data;
        let text = d.format == DataFormat::Text;
        let lm = file.task == Task::LanguageModel;
        if text != lm {
            self.bad(format!(
                "`task` = {:?} with `data.format` = {:?}: a language model reads a text corpus (`task` = \"language_model\", `data.format` = \"text\"), and only it does",
                task_name(file.task),
                format_name(d.format)
            ));
        }
        if lm && file.model.kind.text_role() != Some(TextRole::NextToken) {
            self.bad(format!(
                "`model.kind` = {:?} cannot model language: use {}",
                file.model.kind.name(),
                kinds_named(TextRole::NextToken)
            ));
        }
        let labeled = d.text.is_some();
        if labeled && (d.format != DataFormat::Csv || file.task != Task::Classification) {
            self.bad(
                "`data.text` names the text column of a CSV/TSV file to classify: it needs `data.format` = \"csv\" and `task` = \"classification\""
                    .into(),
            );
        }
        if labeled != (file.model.kind.text_role() == Some(TextRole::Classify)) {
            self.bad(format!(
                "`model.kind` = {:?} with{} `data.text`: a text classifier is `model.kind` = {} reading the column `data.text` names",
                file.model.kind.name(),
                if labeled { "" } else { "out" },
                kinds_named(TextRole::Classify)
            ));
        }
        if !text && !labeled && (d.tokenizer.is_some() || d.block_size.is_some()) {
            self.bad(
                "`data.tokenizer` and `data.block_size` apply to text only (`data.format` = \"text\", or `data.text`)"
                    .into(),
            );
        }
        if text && d.tokenizer == Some(data::text::TokenizerKind::Word) {
            self.bad(
                "`data.tokenizer` = \"word\" is for classifying text: a language model's text must come back from its tokens; use \"char\" or \"byte\""
                    .into(),
            );
        }
        if labeled
            && d.tokenizer.is_some_and(|t| {
                !matches!(
                    t,
                    data::text::TokenizerKind::Word | data::text::TokenizerKind::Bpe
                )
            })
        {
            self.bad(
                "`data.text` reads words (`data.tokenizer` = \"word\"): token 0 is the padding of shorter texts"
                    .into(),
            );
        }
        use data::text::TokenizerKind as K;
        if let Some(v) = d.vocab_size
            && !(3..=MAX_VOCAB).contains(&v)
        {
            self.bad(format!(
                "`data.vocab_size` = {v}: 3 (special tokens and one more) to {MAX_VOCAB}"
            ));
        }
        let sized = labeled || (text && d.tokenizer == Some(K::Bpe) && d.tokenizer_file.is_none());
        if d.vocab_size.is_some() && !sized {
            self.bad("`data.vocab_size` applies to the tokenizers kiln trains: `data.tokenizer` = \"bpe\" or \"word\"".into());
        }
        if let Some(f) = &d.tokenizer_file {
            if !text {
                self.bad("`data.tokenizer_file` applies to `data.format` = \"text\"".into());
            }
            if d.tokenizer.is_some_and(|t| t != K::Bpe) {
                self.bad("`data.tokenizer_file` is a Hugging Face tokenizer: leave `data.tokenizer` out (or \"bpe\")".into());
            }
            if data_files && !Path::new(f).is_file() {
                self.bad(format!("`data.tokenizer_file` = {f:?}: no such file"));
            }
        }
        if labeled && d.tokenizer == Some(K::Bpe) {
            self.bad("`data.text` reads words (`data.tokenizer` = \"word\"): token 0 is the padding of shorter texts".into());
        }
        if d.block_size == Some(0) {
            self.bad("`data.block_size` must be at least 1 (tokens per block)".into());
        }
        if text && (d.test_path.is_some() || d.labels_path.is_some()) {
            self.bad(
                "a text corpus is split by position: `data.test_path` and `data.labels_path` do not apply"
                    .into(),
            );
        }
    }

    /// `[model]`.
    fn model(&mut self, file: &FileConfig) {
        // model: each kind checks its own keys; then, where the data's shape is known before
        // reading it (rows, or `data.image_shape`), the architecture is built as training will.
        let m = &file.model;
        let mut model_problems = m.kind.check_section(m);
        if !self.saved {
            model_problems.extend(m.kind.foreign_keys(m));
        }
        let clean = model_problems.is_empty();
        for e in model_problems {
            self.bad(e.to_string());
        }
        if !clean {
            return;
        }
        let mut sized = None;
        if let Some(input) = provisional_input(file) {
            match ModelConfig::from_section(m, input, 1) {
                Ok(c) => sized = Some((c, input)),
                Err(e) => self.bad(e.to_string()),
            }
        }
        self.memory(file, sized.as_ref());
    }

    /// A size no machine here can hold is refused before any data is read (training checks
    /// again with the data's real sizes): the model's weights and, where the config gives the
    /// input's shape (`sized`), the batches the loader holds (`runtime.workers` x
    /// (`runtime.prefetch` + 1), and the one training) and, on the CPU, their activations.
    fn memory(&mut self, file: &FileConfig, sized: Option<&(ModelConfig, InputShape)>) {
        let (d, m) = (&file.data, &file.model);
        // The model's weights as built for the config's input (a vocabulary it sizes counts).
        let params = sized.map_or_else(|| m.kind.min_params(m), |(c, _)| c.num_params());
        let mut keys = crate::memory::size_keys(m);
        if let Some(s) = d.image_size {
            keys.push_str(&format!(" for `data.image_size` = {s:?}"));
        }
        if let Some(v) = d.vocab_size {
            keys.push_str(&format!(" for `data.vocab_size` = {v}"));
        }
        // Only an image's size is the config's own: rows and token blocks are placeholders
        // here, and a batch larger than the data is clamped to it when training (checked
        // again then, with the data's size).
        let (per_example, batch) = match sized {
            Some((c, input @ InputShape::Images { .. })) => {
                let held = file
                    .runtime
                    .workers
                    .saturating_mul(file.runtime.prefetch.saturating_add(1))
                    .saturating_add(1) as u64;
                // Input floats are held once (4 bytes), activations twice (value and
                // gradient, the 8 bytes `check_fits` counts per activation).
                let inputs = (input.numel() as u64).saturating_mul(held).div_ceil(2);
                let activations = if file.backend.device.starts_with("cpu") {
                    c.activations_per_example()
                } else {
                    0
                };
                (inputs.saturating_add(activations), file.train.batch_size)
            }
            _ => (0, 0),
        };
        if let Err(e) = crate::memory::check_fits(
            keys,
            params,
            per_example,
            batch,
            crate::memory::available_bytes(),
        ) {
            self.bad(e.to_string());
        }
    }

    /// `[train]`: the loop, the loss, the monitored metric.
    fn train(&mut self, file: &FileConfig) -> (LossKind, Monitor) {
        let t = &file.train;
        let task = file.task;
        if t.epochs == 0 {
            self.bad("`train.epochs` must be at least 1".into());
        }
        if t.max_steps == Some(0) {
            self.bad("`train.max_steps` must be at least 1".into());
        }
        if t.batch_size == 0 {
            self.bad("`train.batch_size` must be at least 1".into());
        }
        if t.grad_accum == 0 {
            self.bad("`train.grad_accum` must be at least 1".into());
        }
        if let Some(c) = t.clip_grad_norm
            && !(c > 0.0 && c.is_finite())
        {
            self.bad(format!(
                "`train.clip_grad_norm` = {c}: must be a positive number"
            ));
        }
        let loss = t.loss.unwrap_or(match task {
            Task::Classification | Task::LanguageModel => LossKind::CrossEntropy,
            Task::Regression => LossKind::Mse,
        });
        match (task, loss) {
        (Task::LanguageModel, LossKind::CrossEntropy) => {}
        (Task::LanguageModel, _) => self.bad(format!(
            "`train.loss` = {loss:?}: a language model learns by next-token cross-entropy; use \"cross_entropy\""
        )),
        (Task::Classification, LossKind::Mse | LossKind::Huber) => self.bad(format!(
            "`train.loss` = {loss:?} is a regression loss but `task` = \"classification\"; use \"cross_entropy\" or \"bce\""
        )),
        (Task::Regression, LossKind::CrossEntropy | LossKind::Bce) => self.bad(format!(
            "`train.loss` = {loss:?} is a classification loss but `task` = \"regression\"; use \"mse\" or \"huber\""
        )),
        _ => {}
    }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            self.bad(format!(
                "`train.label_smoothing` = {}: must be in [0, 1)",
                t.label_smoothing
            ));
        }
        if !(t.huber_delta > 0.0 && t.huber_delta.is_finite()) {
            self.bad(format!(
                "`train.huber_delta` = {}: must be positive",
                t.huber_delta
            ));
        }
        if t.valid_every == Some(0) {
            self.bad(
                "`train.valid_every` must be at least 1 (leave it out to validate once per epoch)"
                    .into(),
            );
        }
        if t.keep_last == 0 {
            self.bad("`train.keep_last` must be at least 1: the newest checkpoint is what `--resume` continues from".into());
        }
        if t.checkpoint_every == Some(0) {
            self.bad("`train.checkpoint_every` must be at least 1 (leave it out for epoch-end checkpoints only)".into());
        }
        if t.log_every == 0 {
            self.bad("`train.log_every` must be at least 1".into());
        }
        let monitor = self.monitor(file);
        (loss, monitor)
    }

    /// `train.monitor` for the task, and what needs a validation split to watch it.
    fn monitor(&mut self, file: &FileConfig) -> Monitor {
        let (d, t, task) = (&file.data, &file.train, file.task);
        let allowed = match task {
            Task::Classification => CLASSIFICATION_METRICS,
            Task::Regression => REGRESSION_METRICS,
            Task::LanguageModel => LANGUAGE_MODEL_METRICS,
        };
        if !allowed.contains(&t.monitor.as_str()) {
            let known: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
            let hint = match crate::suggest::suggest(&t.monitor, &known) {
                Some(s) => format!("did you mean {s:?}?"),
                None => format!("use one of: {}", allowed.join(", ")),
            };
            self.bad(
                format!(
                    "`train.monitor` = {:?} is not a {} metric; {hint}",
                    t.monitor,
                    task_name(task).replace('_', " ")
                )
                .to_lowercase(),
            );
        }
        let monitor = Monitor {
            metric: t.monitor.clone(),
            higher_is_better: !matches!(
                t.monitor.as_str(),
                "loss" | "mse" | "rmse" | "mae" | "perplexity" | "bits_per_token"
            ),
        };
        let no_valid = d.split.valid == 0.0 && d.split.folds.is_none();
        if no_valid && t.early_stopping.is_some() {
            self.bad(
                "`train.early_stopping` needs a validation split: `data.split.valid` is 0".into(),
            );
        }
        if no_valid && t.valid_every.is_some() {
            self.bad(
                "`train.valid_every` needs a validation split: `data.split.valid` is 0".into(),
            );
        }
        if let Some(es) = &t.early_stopping {
            if es.patience == 0 {
                self.bad("`train.early_stopping.patience` must be at least 1".into());
            }
            if !(es.min_delta >= 0.0 && es.min_delta.is_finite()) {
                self.bad("`train.early_stopping.min_delta` must be zero or positive".into());
            }
        }
        monitor
    }

    /// `[optim]`; returns the weight decay with its default resolved.
    fn optim(&mut self, file: &FileConfig) -> f64 {
        let o = &file.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            self.bad(format!("`optim.lr` = {}: must be a positive number", o.lr));
        }
        let weight_decay = o.weight_decay.unwrap_or(if o.name == OptimName::Adamw {
            0.01
        } else {
            0.0
        });
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            self.bad(format!(
                "`optim.weight_decay` = {weight_decay}: must be zero or positive"
            ));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            self.bad(format!(
                "`optim.momentum` = {}: must be in [0, 1)",
                o.momentum
            ));
        }
        if o.nesterov && (o.name != OptimName::Sgd || o.momentum == 0.0) {
            self.bad(
                "`optim.nesterov` needs `optim.name` = \"sgd\" and a non-zero `optim.momentum`"
                    .into(),
            );
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            self.bad(format!(
                "`optim.betas` = {:?}: both must be in [0, 1)",
                o.betas
            ));
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            self.bad(format!("`optim.eps` = {}: must be positive", o.eps));
        }
        weight_decay
    }

    /// `[schedule]` and `[distributed]`.
    fn schedule(&mut self, file: &FileConfig) {
        let o = &file.optim;
        let s = &file.schedule;
        if s.step_size == 0 {
            self.bad("`schedule.step_size` must be at least 1".into());
        }
        if !(s.gamma > 0.0 && s.gamma <= 1.0) {
            self.bad(format!("`schedule.gamma` = {}: must be in (0, 1]", s.gamma));
        }
        if o.lr > 0.0 && !(s.min_lr >= 0.0 && s.min_lr <= o.lr) {
            self.bad(format!(
                "`schedule.min_lr` = {}: must be in [0, optim.lr]",
                s.min_lr
            ));
        }
        if !(1..=604_800).contains(&file.distributed.timeout_s) {
            self.bad(format!(
                "`distributed.timeout_s` = {}: 1 to 604800 seconds (a week)",
                file.distributed.timeout_s
            ));
        }
    }

    /// `[backend]`: the device and the precision.
    fn backend(&mut self, file: &FileConfig) -> (crate::backend::DeviceSpec, Precision) {
        let device = match file.backend.device.parse::<crate::backend::DeviceSpec>() {
            Ok(d) => d,
            Err(e) => {
                self.bad(format!("`backend.device`: {e}"));
                crate::backend::DeviceSpec::Cpu
            }
        };
        let precision = match Precision::parse(&file.backend.precision) {
            None => {
                self.bad(format!(
                    "`backend.precision` = {:?}: use f32, f16 or bf16",
                    file.backend.precision
                ));
                Precision::F32
            }
            Some(Precision::F32) => Precision::F32,
            Some(half) => {
                if file.model.uses_batch_norm() {
                    self.bad(format!(
                    "`backend.precision` = {:?} with batch norm: mixed precision does not cover batch norm's running statistics yet; use f32, or layer norm",
                    file.backend.precision
                ));
                }
                half
            }
        };
        (device, precision)
    }

    /// `[runtime]`.
    fn runtime(&mut self, file: &FileConfig) {
        let r = &file.runtime;
        if !(1..=64).contains(&r.workers) {
            self.bad(format!(
                "`runtime.workers` = {}: must be in 1..=64",
                r.workers
            ));
        }
        if !(1..=1024).contains(&r.prefetch) {
            self.bad(format!(
                "`runtime.prefetch` = {}: must be in 1..=1024",
                r.prefetch
            ));
        }
        if r.threads > 1024 {
            self.bad(format!(
                "`runtime.threads` = {}: must be at most 1024 (0 means one per core)",
                r.threads
            ));
        }
    }
}

/// The data spec the readers take, from the `[data]` table as checked.
fn data_spec(file: &FileConfig, c: &DataChecked) -> data::DataSpec {
    let d = &file.data;
    let task = file.task;
    data::DataSpec {
        format: d.format,
        path: c.path.clone().unwrap_or_default(),
        labels_path: c.labels_path.clone(),
        test_path: c.test_path.clone(),
        test_labels_path: c.test_labels_path.clone(),
        label: d.label.clone(),
        header: d.header,
        columns: d.columns.clone(),
        skip_rows: d.skip_rows,
        delimiter: c.delimiter,
        categorical: d.categorical.clone(),
        ignore: d.ignore.clone(),
        missing_values: d.missing_values.clone(),
        impute: d.impute,
        impute_value: d.impute_value,
        standardize: d.standardize,
        standardize_target: d.standardize_target && task == Task::Regression,
        image_shape: d.image_shape,
        class_names: d.class_names.clone(),
        task,
        valid_fraction: d.split.valid,
        test_fraction: c.test_frac,
        stratify: d.split.stratify && task == Task::Classification,
        split_seed: d.split.seed.unwrap_or(file.seed),
        fold: d
            .split
            .folds
            .zip(d.split.fold)
            .map(|(k, index)| data::split::Fold { k, index }),
        tokenizer: d.tokenizer.unwrap_or(if d.text.is_some() {
            data::text::TokenizerKind::Word
        } else {
            data::text::TokenizerKind::Char
        }),
        block_size: text_block(file),
        text_column: d.text.clone(),
        vocab_size: d.vocab_size.unwrap_or(match d.tokenizer {
            Some(data::text::TokenizerKind::Bpe) => 2048,
            _ => 8000,
        }),
        tokenizer_file: d.tokenizer_file.as_ref().map(PathBuf::from),
        image_size: d.image_size,
        channels: d.channels,
        augment: d.augment.clone(),
        bad_images: d.bad_images,
        path_column: d.path_column.clone(),
    }
}

/// The input's shape where the config gives it before any data is read (rows, or
/// `data.image_shape`, `data.image_size`, a text block; a vocabulary the config sizes counts
/// from the start); `None` where only the files tell (IDX headers).
fn provisional_input(file: &FileConfig) -> Option<InputShape> {
    let d = &file.data;
    let input = match (d.image_shape, d.format) {
        (Some([channels, height, width]), _) => Some(InputShape::Images {
            channels,
            height,
            width,
        }),
        (None, DataFormat::Csv) if d.text.is_some() => Some(InputShape::Tokens {
            vocab: 1,
            len: text_block(file),
        }),
        (None, DataFormat::Csv) => Some(InputShape::Rows { features: 1 }),
        // IDX images: their shape is in the file's header, read at training time.
        (None, DataFormat::Idx) => None,
        // A size refused by the data checks is not built on.
        (None, DataFormat::ImageFolder | DataFormat::ImageCsv) => d
            .image_size
            .filter(|s| !s.contains(&0) && s[0].saturating_mul(s[1]) <= data::images::MAX_PIXELS)
            .map(|[height, width]| InputShape::Images {
                channels: d.channels.unwrap_or(1),
                height,
                width,
            }),
        // The vocabulary is read with the corpus; the block must fit the position table.
        (None, DataFormat::Text) => Some(InputShape::Tokens {
            vocab: 1,
            len: text_block(file),
        }),
    };
    input.map(|input| match (input, d.vocab_size) {
        (InputShape::Tokens { len, .. }, Some(vocab)) if (3..=MAX_VOCAB).contains(&vocab) => {
            InputShape::Tokens { vocab, len }
        }
        (input, _) => input,
    })
}

/// Tokens per training block: `data.block_size`, else the model's position table (1 for a
/// kind that reads no text, which the pairing checks refuse on their own).
fn text_block(file: &FileConfig) -> usize {
    file.data
        .block_size
        .unwrap_or_else(|| file.model.kind.context_len(&file.model).unwrap_or(1))
}

/// The kinds that do `role` with text, quoted and joined for a message.
fn kinds_named(role: TextRole) -> String {
    let names: Vec<String> = ModelKind::names_with(role)
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    names.join(" or ")
}

fn task_name(t: Task) -> &'static str {
    match t {
        Task::Classification => "classification",
        Task::Regression => "regression",
        Task::LanguageModel => "language_model",
    }
}

fn format_name(f: DataFormat) -> &'static str {
    match f {
        DataFormat::Csv => "csv",
        DataFormat::Idx => "idx",
        DataFormat::Text => "text",
        DataFormat::ImageFolder => "image_folder",
        DataFormat::ImageCsv => "image_csv",
    }
}

/// The name a config gets when it sets none: its file stem.
pub fn default_name(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .replace('_', "-")
}

#[cfg(test)]
mod tests {
    use crate::config::{FileConfig, validate_saved, validate_with};

    /// A key of another model kind is an error in a config someone writes, and not in a run's
    /// saved config: runs trained while kiln ignored such keys still load.
    #[test]
    fn a_key_of_another_kind_is_refused_when_written_and_kept_when_saved() {
        let file = || {
            let mut f = FileConfig::default();
            f.data.path = "rows.csv".into();
            f.model.n_layer = Some(4);
            f
        };
        let err = validate_with(file(), "test", "test", false).unwrap_err();
        assert!(
            err.to_string()
                .contains("`model.n_layer` is set but `model.kind` = \"mlp\" does not read it"),
            "{err}"
        );
        validate_saved(file(), "test", "test", false).expect("a saved config loads");
    }
}

//! Data: reading files ([`table`], [`idx`]), splitting ([`split`]), preprocessing fitted on the
//! training split only ([`preprocess`]), batches and the [`Source`] seam ([`batch`]), and feeding
//! batches ahead of the model ([`loader`]).
//!
//! **Adding a data format**: a reader beside `table` and `idx` that fills a
//! [`table::RawData`] (then the split and preprocessing apply as they are), or, for data that
//! is not a table of numbers (token streams, folders of image files), a [`Source`] of its own.

pub mod batch;
pub mod idx;
pub mod images;
pub mod loader;
pub mod preprocess;
pub mod spec;
pub mod split;
pub mod table;
pub mod text;

use std::path::PathBuf;

pub use batch::{Batch, Features, Pass, Source, Targets, Uploaded};
use kiln_models::InputShape;
pub use loader::Loader;
pub use preprocess::Preprocessor;

pub use spec::{ColumnRef, DataFormat, Impute, Task};

/// Where the data is and how to read it; resolved from the `[data]` section by validation.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub format: DataFormat,
    pub path: PathBuf,
    pub labels_path: Option<PathBuf>,
    pub test_path: Option<PathBuf>,
    pub test_labels_path: Option<PathBuf>,
    pub label: Option<ColumnRef>,
    pub header: bool,
    pub columns: Vec<String>,
    pub skip_rows: usize,
    /// `None` splits on runs of whitespace.
    pub delimiter: Option<u8>,
    pub categorical: Vec<String>,
    pub ignore: Vec<String>,
    pub missing_values: Vec<String>,
    pub impute: Impute,
    pub impute_value: f64,
    pub standardize: bool,
    pub standardize_target: bool,
    /// `[channels, height, width]`; `[1, 0, 0]` for IDX until the header is read.
    pub image_shape: Option<[usize; 3]>,
    pub class_names: Vec<String>,
    pub task: Task,
    pub valid_fraction: f64,
    pub test_fraction: f64,
    pub stratify: bool,
    pub split_seed: u64,
    /// k-fold cross-validation: this fold validates (`valid_fraction` is then unused).
    pub fold: Option<split::Fold>,
    /// Text: how it becomes tokens, and the tokens per training block (labeled text: the
    /// most tokens of a text the model reads).
    pub tokenizer: text::TokenizerKind,
    pub block_size: usize,
    /// Labeled text: the column holding the text (the other feature columns are not read).
    pub text_column: Option<String>,
    /// A word or BPE vocabulary's size, its special tokens included.
    pub vocab_size: usize,
    /// A Hugging Face `tokenizer.json` to read a corpus with.
    pub tokenizer_file: Option<PathBuf>,
    /// Image files: the `[height, width]` the model reads (`None`: the first file's), the
    /// channels (`None`: the first file's, 1 for grey or 3), the training augmentation, what to
    /// do with unreadable files, and an image CSV's column of paths.
    pub image_size: Option<[usize; 2]>,
    pub channels: Option<usize>,
    pub augment: images::Augment,
    pub bad_images: images::BadImages,
    pub path_column: String,
}

/// What went wrong with a data file, with where.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Row {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "`data.class_names` has {names} names but the labels hold {} classes: {classes:?}",
        classes.len()
    )]
    ClassNames { names: usize, classes: Vec<String> },
    #[error(
        "{folds} folds of {rows} rows (those outside the test split): cross-validation takes at most one fold per row, or some folds validate on nothing"
    )]
    MoreFoldsThanRows { folds: usize, rows: usize },
    /// A file that would not fit in this machine's memory once decoded (a decompression bomb,
    /// an image past the pixel limit): refused before it is decoded, as a config asking for
    /// too much is (exit code 2).
    #[error("{path}: {message}")]
    TooLarge { path: String, message: String },
}

impl crate::usage::UserError for DataError {
    fn is_usage(&self) -> bool {
        matches!(
            self,
            DataError::MoreFoldsThanRows { .. } | DataError::TooLarge { .. }
        )
    }
}

/// One split held in memory, ready for the model: `x` is row-major `[n, d]` (rows, or images
/// flattened in channel-height-width order).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub x: Vec<f32>,
    pub y: Targets,
    pub n: usize,
    pub d: usize,
}

impl Dataset {
    /// An empty split of `d` numbers per example.
    pub fn empty(d: usize) -> Dataset {
        Dataset {
            x: Vec::new(),
            y: Targets::Values(Vec::new()),
            n: 0,
            d,
        }
    }

    /// The first `n` examples (all when there are fewer).
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.n);
        Dataset {
            x: self.x[..n * self.d].to_vec(),
            y: self.y.select(&(0..n).collect::<Vec<_>>()),
            n,
            d: self.d,
        }
    }
}

impl Source for Dataset {
    fn len(&self) -> usize {
        self.n
    }

    fn fetch(&self, idx: &[usize], _: Option<Pass>) -> Result<Batch, DataError> {
        Ok(self.gather(idx))
    }
}

impl Dataset {
    /// Copies the rows `idx` into a batch.
    pub fn gather(&self, idx: &[usize]) -> Batch {
        let d = self.d;
        let mut x = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
        }
        Batch {
            x: Features::Dense { x, width: d },
            y: self.y.select(idx),
            len: idx.len(),
        }
    }
}

/// Tokens of a training corpus scored by a final evaluation (or `kiln eval --split train`).
pub const TRAIN_EVAL_TOKENS: usize = 131_072;

/// One split as the model reads it: rows of a table (or pixels of images), blocks of text,
/// labeled texts, or image files decoded as batches ask for them.
#[derive(Debug, Clone, PartialEq)]
pub enum Split {
    Table(Dataset),
    Text(text::Blocks),
    Labeled(text::Labeled),
    Images(images::ImageSet),
}

impl Split {
    /// The first `n` examples (all when there are fewer).
    pub fn head(&self, n: usize) -> Split {
        match self {
            Split::Table(d) => Split::Table(d.head(n)),
            Split::Text(b) => Split::Text(b.head(n)),
            Split::Labeled(l) => Split::Labeled(l.head(n)),
            Split::Images(i) => Split::Images(i.head(n)),
        }
    }

    /// The rows of a table split (`None` for text).
    pub fn table(&self) -> Option<&Dataset> {
        match self {
            Split::Table(d) => Some(d),
            _ => None,
        }
    }

    /// The examples an evaluation scores: all of them, except for a training corpus, whose
    /// examples are blocks at every position: it is scored on non-overlapping blocks spread
    /// over it, at most [`TRAIN_EVAL_TOKENS`] tokens.
    pub fn for_evaluation(&self) -> std::borrow::Cow<'_, Split> {
        match self {
            Split::Text(b) => std::borrow::Cow::Owned(Split::Text(b.tiled_view(TRAIN_EVAL_TOKENS))),
            other => std::borrow::Cow::Borrowed(other),
        }
    }
}

impl Source for Split {
    fn len(&self) -> usize {
        match self {
            Split::Table(d) => d.n,
            Split::Text(b) => b.len(),
            Split::Labeled(l) => l.len(),
            Split::Images(i) => i.len(),
        }
    }

    fn fetch(&self, idx: &[usize], pass: Option<Pass>) -> Result<Batch, DataError> {
        match self {
            Split::Table(d) => Ok(d.gather(idx)),
            Split::Text(b) => Ok(b.gather(idx)),
            Split::Labeled(l) => Ok(l.gather(idx)),
            Split::Images(i) => i.fetch(idx, pass),
        }
    }
}

/// The shape of one example as the data gives it: token ids for text, images when the
/// preprocessing holds an image shape that covers the encoded width, else rows. `Err` carries
/// the image shape and the width when the two disagree (a model that reads images cannot use
/// this data).
pub fn input_shape(pre: &Preprocessor) -> Result<InputShape, ([usize; 3], usize)> {
    if let Some(t) = &pre.text {
        return Ok(InputShape::Tokens {
            vocab: t.vocab_size(),
            len: pre.n_features,
        });
    }
    let rows = InputShape::Rows {
        features: pre.n_features,
    };
    match pre.image.as_ref().map(|i| i.shape) {
        Some([channels, height, width]) if channels * height * width == pre.n_features => {
            Ok(InputShape::Images {
                channels,
                height,
                width,
            })
        }
        Some(shape) => Err((shape, pre.n_features)),
        None => Ok(rows),
    }
}

/// The three splits and the preprocessing fitted on the first.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub train: Split,
    pub valid: Split,
    pub test: Split,
    pub preprocessor: Preprocessor,
    /// Files left out as unreadable (`data.bad_images` = "skip"), with why.
    pub skipped: Vec<String>,
    /// Image files: the index of the files read (saved with the run).
    pub indexed: Option<images::Indexed>,
}

/// Splits by name, as `kiln eval --split` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitName {
    Train,
    Valid,
    Test,
}

impl std::str::FromStr for SplitName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Self::Train),
            "valid" | "validation" | "val" => Ok(Self::Valid),
            "test" => Ok(Self::Test),
            _ => Err(format!("unknown split {s:?}: use train, valid or test")),
        }
    }
}

/// The values of `columns` (any columns of the file, read or not by the model) for the
/// examples of `split`, in the order [`prepare`] gives them, a vector per column. Tables only;
/// the file is read once.
pub fn split_columns(
    spec: &DataSpec,
    split: SplitName,
    columns: &[String],
) -> Result<Vec<Vec<String>>, DataError> {
    if spec.format != DataFormat::Csv || spec.text_column.is_some() {
        return Err(DataError::Format {
            path: crate::shown::path(&spec.path),
            message: format!(
                "columns {columns:?}: per-column reports read delimited tables, not {} data",
                match (spec.format, &spec.text_column) {
                    (_, Some(_)) => "labeled-text",
                    (DataFormat::Idx, _) => "IDX image",
                    (DataFormat::ImageFolder | DataFormat::ImageCsv, _) => "image-file",
                    _ => "text-corpus",
                }
            ),
        });
    }
    if let (SplitName::Test, Some(test)) = (split, &spec.test_path) {
        return table::read_columns(spec, test, columns);
    }
    let values = table::read_columns(spec, &spec.path, columns)?;
    let parts = split::split(&table::read_all(spec)?, spec)?;
    let rows = match split {
        SplitName::Train => parts.train,
        SplitName::Valid => parts.valid,
        SplitName::Test => parts.test,
    };
    Ok(values
        .into_iter()
        .map(|v| rows.iter().map(|&i| v[i].clone()).collect())
        .collect())
}

/// Reads, splits and preprocesses. With `fitted`, reuses those statistics (evaluation of a
/// finished run) instead of fitting new ones on the training split.
pub fn prepare(spec: &DataSpec, fitted: Option<&Preprocessor>) -> Result<Prepared, DataError> {
    let raw = match spec.format {
        DataFormat::ImageFolder | DataFormat::ImageCsv => return images::prepare(spec, fitted),
        DataFormat::Csv => table::read_all(spec)?,
        DataFormat::Idx => idx::read_all(spec)?,
        DataFormat::Text => {
            let t = text::prepare(spec, fitted.and_then(|p| p.text.as_ref()))?;
            return Ok(Prepared {
                train: Split::Text(t.train),
                valid: Split::Text(t.valid),
                test: Split::Text(t.test),
                preprocessor: Preprocessor::for_text(t.tokenizer, spec.block_size),
                skipped: Vec::new(),
                indexed: None,
            });
        }
    };
    let parts = split::split(&raw, spec)?;
    if let Some(column) = &spec.text_column {
        return labeled_text(spec, &raw, &parts, column, fitted);
    }
    let preprocessor = match fitted {
        Some(p) => p.clone(),
        None => Preprocessor::fit(&raw, &parts.train, spec)?,
    };
    let train = preprocessor.transform(&raw.main, &parts.train)?;
    let valid = preprocessor.transform(&raw.main, &parts.valid)?;
    let test = match &raw.test {
        Some(t) => preprocessor.transform(t, &(0..t.len()).collect::<Vec<_>>())?,
        None => preprocessor.transform(&raw.main, &parts.test)?,
    };
    Ok(Prepared {
        train: Split::Table(train),
        valid: Split::Table(valid),
        test: Split::Table(test),
        preprocessor,
        skipped: Vec::new(),
        indexed: None,
    })
}

/// Labeled text: the text column tokenized (the vocabulary fitted on the training split), the
/// labels encoded as for any table.
fn labeled_text(
    spec: &DataSpec,
    raw: &table::RawData,
    parts: &split::Parts,
    column: &str,
    fitted: Option<&Preprocessor>,
) -> Result<Prepared, DataError> {
    let texts = |t: &table::RawTable| -> Result<Vec<String>, DataError> {
        let j = t.names.iter().position(|n| n == column);
        match (&t.cells, j) {
            (table::Cells::Text(rows), Some(j)) => Ok(rows.iter().map(|r| r[j].clone()).collect()),
            _ => Err(DataError::Format {
                path: t.path.clone(),
                message: format!(
                    "`data.text` = {column:?}: no such column (columns: {:?})",
                    t.names
                ),
            }),
        }
    };
    let main = texts(&raw.main)?;
    let pre = match fitted {
        Some(p) => p.clone(),
        None => {
            let target = preprocess::fit_target(raw, &parts.train, spec)?;
            let train = parts.train.iter().map(|&i| main[i].as_str());
            let tokenizer = match spec.tokenizer {
                text::TokenizerKind::Word => text::Tokenizer::fit_words(train, spec.vocab_size),
                kind => {
                    text::Tokenizer::fit(kind, &train.collect::<Vec<_>>().join(""), spec.vocab_size)
                        .map_err(|e| DataError::Format {
                            path: raw.main.path.clone(),
                            message: e.to_string(),
                        })?
                }
            };
            Preprocessor::for_labeled_text(tokenizer, target, spec.block_size)
        }
    };
    let tokenizer = pre.text.clone().expect("labeled text has a tokenizer");
    let split = |t: &table::RawTable, all: &[String], rows: &[usize]| -> Result<Split, DataError> {
        let y = pre.targets(t, rows)?;
        let chosen: Vec<&str> = rows.iter().map(|&i| all[i].as_str()).collect();
        Ok(Split::Labeled(text::Labeled::new(
            &tokenizer,
            &chosen,
            y,
            spec.block_size,
        )))
    };
    let test = match &raw.test {
        Some(t) => split(t, &texts(t)?, &(0..t.len()).collect::<Vec<_>>())?,
        None => split(&raw.main, &main, &parts.test)?,
    };
    Ok(Prepared {
        train: split(&raw.main, &main, &parts.train)?,
        valid: split(&raw.main, &main, &parts.valid)?,
        test,
        preprocessor: pre,
        skipped: Vec::new(),
        indexed: None,
    })
}

/// Problems visible from the first lines of the files: label column, column count, names.
pub fn peek_problems(spec: &DataSpec) -> Vec<String> {
    match spec.format {
        DataFormat::Csv => table::peek_problems(spec),
        DataFormat::Idx => idx::peek_problems(spec),
        DataFormat::ImageFolder | DataFormat::ImageCsv => Vec::new(),
        DataFormat::Text => match text::corpus_files(&spec.path) {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        },
    }
}

/// Opens a file to read, refusing what is not a regular file: a named pipe, a socket or a
/// device would block a read forever or never end. The open itself does not block (a pipe
/// with no writer would hold a plain open forever).
pub fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        if kind.is_dir() {
            "a folder, not a file"
        } else {
            "not a regular file (a named pipe, socket or device): kiln reads files"
        },
    ))
}

/// Reads a whole file, gunzipping it when it starts with gzip's magic bytes. What it holds
/// must fit in a quarter of the memory available (parsed, it takes more again): a gzip bomb
/// (a few kB that decompress to many GB) is refused once it passes that, not read until the
/// process is killed.
pub fn read_bytes(path: &std::path::Path) -> Result<Vec<u8>, DataError> {
    let limit = crate::memory::available_bytes().map_or(u64::MAX, |have| have / 4);
    let bytes = read_prefix(path, limit.saturating_add(1))?;
    if bytes.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: crate::shown::path(path),
            message: format!(
                "holds more than {} (a quarter of the memory available) once decompressed",
                crate::memory::human(limit)
            ),
        });
    }
    Ok(bytes)
}

/// Reads at most `limit` bytes of a file's (gunzipped) content: enough to check a header
/// without decompressing the whole file.
pub fn read_prefix(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, DataError> {
    use std::io::{BufRead, BufReader, Read};
    let shown = || crate::shown::path(path);
    let file = open_regular(path).map_err(|source| DataError::Io {
        path: shown(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let gzip = reader
        .fill_buf()
        .map_err(|source| DataError::Io {
            path: shown(),
            source,
        })?
        .starts_with(&[0x1f, 0x8b]);
    let mut out = Vec::new();
    let result = if gzip {
        flate2::read::MultiGzDecoder::new(reader)
            .take(limit)
            .read_to_end(&mut out)
    } else {
        reader.take(limit).read_to_end(&mut out)
    };
    result.map_err(|e| match gzip {
        true => DataError::Format {
            path: shown(),
            message: format!("broken gzip data: {e}"),
        },
        false => DataError::Io {
            path: shown(),
            source: e,
        },
    })?;
    Ok(out)
}

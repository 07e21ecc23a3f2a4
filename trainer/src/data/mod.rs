//! Data: reading files ([`table`], [`idx`]), splitting ([`split`]), preprocessing fitted on the
//! training split only ([`preprocess`]), and feeding batches ([`loader`]).

pub mod idx;
pub mod loader;
pub mod preprocess;
pub mod split;
pub mod table;

use std::path::PathBuf;

pub use loader::{Batch, Loader};
pub use preprocess::Preprocessor;

use crate::config::{ColumnRef, DataFormat, Impute, Task};

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
    #[error("{0}")]
    Other(String),
}

/// Targets of a split: class indices or (possibly standardised) values.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Classes(Vec<u32>),
    Values(Vec<f32>),
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(v) => v.len(),
            Targets::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One split, ready for the model: `x` is row-major `[n, d]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub x: Vec<f32>,
    pub y: Targets,
    pub n: usize,
    pub d: usize,
}

impl Dataset {
    /// The first `n` examples (all when there are fewer).
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.n);
        Dataset {
            x: self.x[..n * self.d].to_vec(),
            y: match &self.y {
                Targets::Classes(v) => Targets::Classes(v[..n].to_vec()),
                Targets::Values(v) => Targets::Values(v[..n].to_vec()),
            },
            n,
            d: self.d,
        }
    }
}

/// The three splits and the preprocessing fitted on the first.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub train: Dataset,
    pub valid: Dataset,
    pub test: Dataset,
    pub preprocessor: Preprocessor,
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

/// Reads, splits and preprocesses. With `fitted`, reuses those statistics (evaluation of a
/// finished run) instead of fitting new ones on the training split.
pub fn prepare(spec: &DataSpec, fitted: Option<&Preprocessor>) -> Result<Prepared, DataError> {
    let raw = match spec.format {
        DataFormat::Csv => table::read_all(spec)?,
        DataFormat::Idx => idx::read_all(spec)?,
    };
    let parts = split::split(&raw, spec);
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
        train,
        valid,
        test,
        preprocessor,
    })
}

/// Problems visible from the first lines of the files: label column, column count, names.
pub fn peek_problems(spec: &DataSpec) -> Vec<String> {
    match spec.format {
        DataFormat::Csv => table::peek_problems(spec),
        DataFormat::Idx => idx::peek_problems(spec),
    }
}

/// Reads a whole file, gunzipping it when it starts with gzip's magic bytes.
pub fn read_bytes(path: &std::path::Path) -> Result<Vec<u8>, DataError> {
    read_prefix(path, u64::MAX)
}

/// Reads at most `limit` bytes of a file's (gunzipped) content: enough to check a header
/// without decompressing the whole file.
pub fn read_prefix(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, DataError> {
    use std::io::{BufRead, BufReader, Read};
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
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

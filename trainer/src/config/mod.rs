//! Configuration: the edited file ([`FileConfig`]), how it is read and overridden ([`load`]),
//! and the check that turns it into the typed [`RunConfig`] the trainer runs from ([`validate`]).

mod file;
mod load;
mod run;
mod schema;
mod validate;

pub use file::*;
pub use load::{Override, load, parse};
pub use run::{EarlyStopping, LossConfig, Monitor, OptimConfig, RunConfig, TrainConfig};
pub use schema::{known_keys, schema};
pub use validate::{default_name, validate, validate_saved, validate_with};

use crate::layout;
use std::fmt;

/// One thing wrong with a config, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or `--set ...`) the problem comes from.
    pub origin: String,
    /// 1-based line in `origin`, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(origin: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            origin: origin.to_string(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = crate::shown::name(&self.origin);
        match self.line {
            Some(line) => write!(f, "{origin}:{line}: {}", self.message),
            None => write!(f, "{origin}: {}", self.message),
        }
    }
}

/// Everything wrong with a config, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn single(p: Problem) -> Self {
        Self { problems: vec![p] }
    }
}

impl crate::usage::UserError for ConfigError {
    fn is_usage(&self) -> bool {
        true
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Loads and validates the resolved config saved in a run's folder.
pub fn load_run(run_dir: &std::path::Path) -> Result<RunConfig, ConfigError> {
    load_run_with(run_dir, true)
}

/// As [`load_run`]; with `data_files` false the training data files need not exist.
pub fn load_run_with(
    run_dir: &std::path::Path,
    data_files: bool,
) -> Result<RunConfig, ConfigError> {
    let path = run_dir.join(layout::CONFIG);
    let (file, _) = load(&path, &[])?;
    let name = file.name.clone().unwrap_or_else(|| "model".into());
    validate_saved(file, &crate::shown::path(&path), &name, data_files)
}

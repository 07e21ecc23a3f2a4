//! Model selection: k-fold cross-validation ([`cv`]) and hyperparameter sweeps ([`sweep`]), with
//! the registry as their record. Every fold and every trial is a normal run (`run.json` names
//! its group); the group's own record lives beside the runs (`cv/<id>/`, `sweeps/<id>/`) and is
//! rewritten after each step, so a killed CV or sweep resumes where it stopped.
//!
//! A sweep's pieces, each on its own: the sweep file and its search space ([`space`]), the
//! samplers that propose parameters from the finished trials ([`sampler`]: grid, random; TPE in
//! [`tpe`]), the pruners that stop hopeless trials from their validations ([`pruner`]: median,
//! ASHA), the store that lets workers claim trials under a lock ([`store`]), the worker loop
//! that runs trials as `kiln train` processes ([`worker`]), and what a finished sweep reports
//! ([`summary`]: the table, the importance of each parameter, the plots).

pub mod cv;
pub mod pruner;
pub mod sampler;
pub mod space;
pub mod store;
pub mod summary;
pub mod sweep;
pub mod tpe;
pub mod worker;

use crate::config::ConfigError;
use crate::error::TrainError;
use crate::registry::RegistryError;
use crate::run::RunError;

/// What can go wrong in a CV or a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A bad sweep file, space, flag or reference: the user's to fix (exit code 2).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl crate::usage::UserError for SelectError {
    fn is_usage(&self) -> bool {
        match self {
            SelectError::Input(_) | SelectError::Config(_) => true,
            SelectError::Train(e) => e.is_usage(),
            _ => false,
        }
    }
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SelectError + '_ {
    move |source| SelectError::Io {
        path: crate::shown::path(path),
        source,
    }
}

/// Mean, sample standard deviation (n - 1; 0 for one value), extremes and count.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

impl Stat {
    pub fn of(values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Some(Self {
            mean,
            std: var.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            values,
        })
    }
}

/// Waits (up to two minutes) until no process holds the lock of the run in `dir`: the process of
/// a dead worker or an interrupted CV may still be saving its checkpoint, or finishing.
pub(crate) fn wait_for_run(dir: &std::path::Path) -> Result<(), crate::registry::RegistryError> {
    let id = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    crate::registry::store::Lock::acquire(
        &dir.join(crate::layout::LOCK),
        std::time::Duration::from_secs(120),
        &format!("run {id}"),
    )
    .map(drop)
}

/// Seconds since the Unix epoch (heartbeats, deadlines).
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

//! A sweep's folder, `<registry>/sweeps/<id>/`: the spec, one folder per trial, and the lock
//! under which workers claim trials. Workers on several machines share the registry folder
//! (a shared filesystem with `flock`, as NFSv4 and Lustre give) and nothing else: a trial is
//! claimed by writing its record while the sweep's lock is held, and its worker holds the
//! trial's own lock while it runs, so no two workers run the same trial; the lock of a worker
//! that died is gone with its process, which leaves the trial to the next claim.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Value;

use super::pruner::Report;
use super::sampler::{self, Observation};
use super::space::SweepSpec;
use super::{SelectError, rfc3339_now, unix_now};
use crate::layout;
use crate::registry::store::Lock;
use crate::run;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    Running,
    /// Stopped by Ctrl-C or SIGUSR1 with a checkpoint: the next claim resumes it.
    Interrupted,
    Completed,
    Pruned,
    Failed,
}

impl TrialStatus {
    pub fn finished(self) -> bool {
        matches!(self, Self::Completed | Self::Pruned | Self::Failed)
    }
}

/// The worker running a trial (for people reading the record; the trial's lock is what
/// keeps others off it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
}

impl Owner {
    pub fn me() -> Self {
        Self {
            host: hostname(),
            pid: std::process::id(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// `trial.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub number: usize,
    pub params: BTreeMap<String, Value>,
    pub status: TrialStatus,
    /// The run (or, for a cross-validated sweep, the CV) of the current attempt.
    pub run_id: String,
    /// Runs started for this trial: one more when it died before its first checkpoint.
    pub attempts: usize,
    pub owner: Option<Owner>,
    pub started: String,
    pub finished: Option<String>,
    /// The objective: the run's final validation metric (the CV's mean).
    pub value: Option<f64>,
    /// Optimizer steps trained (over every fold for a CV).
    pub steps: usize,
    pub pruned_at: Option<usize>,
    pub seconds: f64,
    pub error: Option<String>,
}

/// What a worker got from [`Sweep::claim`].
#[derive(Debug)]
pub enum Claim {
    /// A new trial, or one whose worker died or was interrupted, with the trial's lock, held
    /// while it runs.
    Trial(Box<Trial>, Lock),
    /// The budget is spent (or the grid enumerated, or the deadline passed).
    Done,
}

/// A sweep of a registry.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub registry: PathBuf,
    pub id: String,
}

impl Sweep {
    pub fn dir(&self) -> PathBuf {
        self.registry.join(layout::SWEEPS).join(&self.id)
    }

    pub fn trial_dir(&self, number: usize) -> PathBuf {
        self.dir().join(layout::TRIALS).join(format!("{number:04}"))
    }

    pub fn reports_path(&self, number: usize) -> PathBuf {
        self.trial_dir(number).join(layout::TRIAL_REPORTS)
    }

    /// Opens an existing sweep; an unknown id is an input error naming the known ones.
    pub fn open(registry: &Path, id: &str) -> Result<(Self, SweepSpec), SelectError> {
        let s = Self {
            registry: registry.to_path_buf(),
            id: id.to_string(),
        };
        let path = s.dir().join(layout::SWEEP_RECORD);
        if crate::registry::names::check("sweep id", id).is_err() || !path.is_file() {
            let known = list(registry);
            return Err(SelectError::Input(format!(
                "no sweep {id:?} in {}{}",
                crate::shown::path(registry),
                crate::suggest::hint(id, &known)
            )));
        }
        let spec = run::read_json(&path)?;
        Ok((s, spec))
    }

    /// The sweep named `id`: created with `spec` if it does not exist, else joined (every task
    /// of a job array can run the same command). Joining a sweep of another spec is refused.
    /// `id` is checked by `sweep::start`, before anything is written.
    pub fn create_or_join(
        registry: &Path,
        spec: &SweepSpec,
        id: &str,
    ) -> Result<Self, SelectError> {
        let s = Self {
            registry: registry.to_path_buf(),
            id: id.to_string(),
        };
        let (sweeps, dir) = (registry.join(layout::SWEEPS), s.dir());
        std::fs::create_dir_all(&sweeps).map_err(super::io(&sweeps))?;
        // `create_dir` is atomic: one task creates, the others join.
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                run::write_json(&dir.join(layout::SWEEP_RECORD), spec)?;
                let trials = dir.join(layout::TRIALS);
                std::fs::create_dir_all(&trials).map_err(super::io(&trials))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(super::io(&dir)(e)),
        }
        // The creator writes the spec right after the folder.
        let path = dir.join(layout::SWEEP_RECORD);
        let started = std::time::Instant::now();
        while !path.is_file() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let existing: SweepSpec = run::read_json(&path)?;
        if existing != *spec {
            return Err(SelectError::Input(format!(
                "sweep {id} exists in {} with another sweep file or settings; pick another --id, or join it with --worker {id}",
                crate::shown::path(registry)
            )));
        }
        Ok(s)
    }

    /// Creates the folder of a new sweep and writes its spec.
    pub fn create(registry: &Path, spec: &SweepSpec) -> Result<Self, SelectError> {
        let stem = Path::new(&spec.file)
            .file_stem()
            .map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
        let stem: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(32)
            .collect();
        let s = Self {
            registry: registry.to_path_buf(),
            id: run::new_id(&stem),
        };
        let (sweeps, dir) = (registry.join(layout::SWEEPS), s.dir());
        std::fs::create_dir_all(&sweeps).map_err(super::io(&sweeps))?;
        // `create_dir`, not `_all`: an id taken by another sweep is an error, not a merge.
        std::fs::create_dir(&dir).map_err(super::io(&dir))?;
        std::fs::create_dir(dir.join(layout::TRIALS)).map_err(super::io(&dir))?;
        run::write_json(&dir.join(layout::SWEEP_RECORD), spec)?;
        Ok(s)
    }

    /// The lock a trial's worker holds while it runs the trial; `None` when another holds it.
    fn trial_lock(&self, number: usize) -> Result<Option<Lock>, SelectError> {
        let path = self.trial_dir(number).join(layout::LOCK);
        match Lock::acquire(&path, Duration::ZERO, &format!("trial {number}")) {
            Ok(l) => Ok(Some(l)),
            Err(crate::registry::RegistryError::Locked { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn lock(&self) -> Result<Lock, SelectError> {
        Ok(Lock::acquire(
            &self.dir().join(layout::LOCK),
            Duration::from_secs(120),
            &format!("sweep {}", self.id),
        )?)
    }

    /// The numbers of the trial folders, ascending.
    fn folder_numbers(&self) -> Vec<usize> {
        let mut out: Vec<usize> = std::fs::read_dir(self.dir().join(layout::TRIALS))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort_unstable();
        out
    }

    /// Every trial with a readable record, by number.
    pub fn trials(&self) -> Vec<Trial> {
        let Ok(entries) = std::fs::read_dir(self.dir().join(layout::TRIALS)) else {
            return Vec::new();
        };
        let mut out: Vec<Trial> = entries
            .flatten()
            .filter_map(|e| run::read_json(&e.path().join(layout::TRIAL_RECORD)).ok())
            .collect();
        out.sort_by_key(|t| t.number);
        out
    }

    pub fn write_trial(&self, t: &Trial) -> Result<(), SelectError> {
        let dir = self.trial_dir(t.number);
        std::fs::create_dir_all(&dir).map_err(super::io(&dir))?;
        Ok(run::write_json(&dir.join(layout::TRIAL_RECORD), t)?)
    }

    /// A trial's validations, in order.
    pub fn reports(&self, number: usize) -> Vec<Report> {
        std::fs::read_to_string(self.reports_path(number))
            .map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn write_reports(&self, number: usize, reports: &[Report]) -> Result<(), SelectError> {
        let text: String = reports
            .iter()
            .map(|r| serde_json::to_string(r).expect("a report is JSON") + "\n")
            .collect();
        Ok(run::write_atomic(
            &self.reports_path(number),
            text.as_bytes(),
        )?)
    }

    /// The finished trials as the samplers see them.
    pub fn observations(&self, trials: &[Trial]) -> Vec<Observation> {
        trials
            .iter()
            .filter(|t| matches!(t.status, TrialStatus::Completed | TrialStatus::Pruned))
            .map(|t| Observation {
                number: t.number,
                params: t.params.clone(),
                value: (t.status == TrialStatus::Completed)
                    .then_some(t.value)
                    .flatten(),
                pruned: (t.status == TrialStatus::Pruned).then(|| {
                    let last = self.reports(t.number).pop();
                    (t.pruned_at.unwrap_or(0), last.and_then(|r| r.value))
                }),
            })
            .collect()
    }

    /// Under the sweep's lock: the lowest-numbered trial left by a dead or interrupted worker,
    /// else a new trial with the sampler's parameters, else [`Claim::Done`].
    pub fn claim(
        &self,
        spec: &SweepSpec,
        deadline: Option<f64>,
        run_id: impl Fn(usize) -> String,
    ) -> Result<Claim, SelectError> {
        let _lock = self.lock()?;
        let trials = self.trials();
        let me = Owner::me();
        // A trial whose worker died or stopped comes first: the lowest number.
        for t in trials.iter().filter(|t| !t.status.finished()) {
            if let Some(held) = self.trial_lock(t.number)? {
                let mut t = t.clone();
                t.status = TrialStatus::Running;
                t.owner = Some(me);
                self.write_trial(&t)?;
                return Ok(Claim::Trial(Box::new(t), held));
            }
        }
        // The next number follows every trial folder, readable or not (a record being
        // rewritten, a listing not yet refreshed on a network filesystem).
        let number = self
            .folder_numbers()
            .last()
            .map_or(0, |n| n + 1)
            .max(trials.len());
        if number >= spec.trials || deadline.is_some_and(|d| unix_now() >= d) {
            return Ok(Claim::Done);
        }
        let Some(params) = sampler::propose(spec, number, &self.observations(&trials)) else {
            return Ok(Claim::Done);
        };
        let Some(held) = self.trial_lock(number)? else {
            return Err(SelectError::Input(format!(
                "sweep {}: trial {number} is locked by another worker but has no record; is the registry's filesystem sharing locks (flock)?",
                self.id
            )));
        };
        let t = Trial {
            number,
            params,
            status: TrialStatus::Running,
            run_id: run_id(number),
            attempts: 0,
            owner: Some(me),
            started: rfc3339_now(),
            finished: None,
            value: None,
            steps: 0,
            pruned_at: None,
            seconds: 0.0,
            error: None,
        };
        self.write_trial(&t)?;
        Ok(Claim::Trial(Box::new(t), held))
    }

    /// Rewrites a trial's record (its worker holds the trial's lock) under the sweep's lock.
    pub fn update(&self, t: &Trial) -> Result<(), SelectError> {
        let _lock = self.lock()?;
        self.write_trial(t)
    }

    /// The best completed trial (ties: the lowest number).
    pub fn best(spec: &SweepSpec, trials: &[Trial]) -> Option<Trial> {
        trials
            .iter()
            .filter(|t| t.status == TrialStatus::Completed)
            .filter_map(|t| t.value.map(|v| (v, t)))
            .reduce(|a, b| {
                if spec.direction.better(b.0, a.0) {
                    b
                } else {
                    a
                }
            })
            .map(|(_, t)| t.clone())
    }
}

/// The ids of a registry's sweeps.
pub fn list(registry: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(registry.join(layout::SWEEPS)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(layout::SWEEP_RECORD).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// `best.json`: the best trial and the model version it registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub trial: usize,
    pub value: f64,
    pub run_id: String,
    pub params: BTreeMap<String, Value>,
    /// `name/vN`, tagged with the sweep's id; none for a cross-validated sweep (its trials are
    /// CVs: train the best parameters on the whole data with `kiln train`).
    pub version: Option<String>,
}

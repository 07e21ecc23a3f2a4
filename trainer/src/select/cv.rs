//! k-fold cross-validation: one config trained `folds` times (times `repeats`), fold `i`
//! validating and the others training (`data.split.folds`/`fold`, so a fold trains the same
//! by hand: `kiln train CONFIG --set data.split.folds=5 --set data.split.fold=2`); repeat `r`
//! splits with seed `seed + r`, which draws the test rows anew too (within a repeat they are
//! the same for every fold). Preprocessing is fitted on each fold's training
//! part only, as for any run; the test split is the same for every fold.
//!
//! The record, `<registry>/cv/<id>/cv.json`, names every fold's run before the first trains
//! and is rewritten after each, so `kiln cv --resume ID` trains only what is missing: a
//! completed fold is kept, an interrupted one resumes from its checkpoint (exactly, as any
//! run), one with no checkpoint trains again under a new run id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{SelectError, Stat, rfc3339_now};
use crate::config::{self, Override, RunConfig};
use crate::layout;
use crate::run::{self, GroupKind, Membership, RunInfo, Status};
use crate::train::{self, Member};

/// `cv.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvRecord {
    pub id: String,
    /// The model name of the config.
    pub name: String,
    /// The config file (absolute) and the overrides given with it.
    pub config_path: String,
    pub overrides: Vec<String>,
    pub folds: usize,
    pub repeats: usize,
    /// The split seed of repeat 0 (repeat `r` uses `split_seed + r`).
    pub split_seed: u64,
    /// The monitored validation metric of the config.
    pub monitor: String,
    pub status: Status,
    pub started: String,
    pub finished: Option<String>,
    /// The sweep trial this CV is, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Membership>,
    pub runs: Vec<FoldRun>,
    /// `split/metric` (`valid/accuracy`) over the completed folds.
    pub summary: BTreeMap<String, Stat>,
}

/// One fold's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldRun {
    /// `repeat * folds + fold`.
    pub index: usize,
    pub repeat: usize,
    pub fold: usize,
    pub run_id: String,
    /// Runs started for this fold (a fold that died before its first checkpoint starts over).
    pub attempts: usize,
    pub status: Option<Status>,
    /// Final metrics per split, scalars only.
    pub metrics: BTreeMap<String, BTreeMap<String, f64>>,
}

impl CvRecord {
    /// The `--set` overrides that make fold `index` of this CV from its config.
    pub fn fold_overrides(&self, index: usize) -> Vec<String> {
        let (repeat, fold) = (index / self.folds, index % self.folds);
        let mut out = self.overrides.clone();
        out.push(format!("data.split.folds={}", self.folds));
        out.push(format!("data.split.fold={fold}"));
        if repeat > 0 {
            out.push(format!(
                "data.split.seed={}",
                self.split_seed + repeat as u64
            ));
        }
        out
    }

    pub fn dir(registry: &Path, id: &str) -> PathBuf {
        registry.join(layout::CV).join(id)
    }

    pub fn save(&self, registry: &Path) -> Result<(), SelectError> {
        let dir = Self::dir(registry, &self.id);
        std::fs::create_dir_all(&dir).map_err(super::io(&dir))?;
        Ok(run::write_json(&dir.join(layout::CV_RECORD), self)?)
    }

    /// The CV `id` of `registry`; an unknown id is an input error naming the known ones.
    pub fn load(registry: &Path, id: &str) -> Result<Self, SelectError> {
        let path = Self::dir(registry, id).join(layout::CV_RECORD);
        if crate::registry::names::check("cv id", id).is_err() || !path.is_file() {
            let known: Vec<String> = list(registry).into_iter().map(|r| r.id).collect();
            return Err(SelectError::Input(format!(
                "no cross-validation {id:?} in {}{}",
                crate::shown::path(registry),
                crate::suggest::hint(id, &known)
            )));
        }
        Ok(run::read_json(&path)?)
    }

    /// Recomputes the summary from the completed folds.
    fn summarise(&mut self) {
        let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in self
            .runs
            .iter()
            .filter(|r| r.status == Some(Status::Completed))
        {
            for (split, m) in &r.metrics {
                for (k, v) in m.iter().filter(|(_, v)| v.is_finite()) {
                    values.entry(format!("{split}/{k}")).or_default().push(*v);
                }
            }
        }
        self.summary = values
            .into_iter()
            .filter_map(|(k, v)| Stat::of(v).map(|s| (k, s)))
            .collect();
    }
}

/// Every cross-validation of a registry, oldest first.
pub fn list(registry: &Path) -> Vec<CvRecord> {
    let Ok(entries) = std::fs::read_dir(registry.join(layout::CV)) else {
        return Vec::new();
    };
    let mut out: Vec<CvRecord> = entries
        .flatten()
        .filter_map(|e| run::read_json(&e.path().join(layout::CV_RECORD)).ok())
        .collect();
    out.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
    out
}

/// Reads and checks a fold's config: the file with its overrides, then the fold's.
fn fold_config(record: &CvRecord, index: usize) -> Result<RunConfig, SelectError> {
    let path = Path::new(&record.config_path);
    let overrides = record
        .fold_overrides(index)
        .iter()
        .map(|s| Override::parse(s).map_err(SelectError::Input))
        .collect::<Result<Vec<_>, _>>()?;
    let (file, _) = config::load(path, &overrides)?;
    Ok(config::validate(
        file,
        &crate::shown::path(path),
        &config::default_name(path),
    )?)
}

/// A new CV of `config_path`: its config checked for every fold before anything is written.
pub fn plan(
    config_path: &Path,
    overrides: &[String],
    folds: usize,
    repeats: usize,
    member: Option<Membership>,
    id: Option<String>,
) -> Result<CvRecord, SelectError> {
    if folds < 2 {
        return Err(SelectError::Input(format!(
            "--folds {folds}: cross-validation needs at least 2 folds"
        )));
    }
    if folds > 1000 {
        return Err(SelectError::Input(format!("--folds {folds}: at most 1000")));
    }
    if !(1..=100).contains(&repeats) {
        return Err(SelectError::Input("--repeats must be 1 to 100".into()));
    }
    if !config_path.is_file() {
        return Err(SelectError::Input(format!(
            "{}: no such config file",
            crate::shown::path(config_path)
        )));
    }
    let absolute = std::path::absolute(config_path).map_err(super::io(config_path))?;
    let mut record = CvRecord {
        id: String::new(),
        name: String::new(),
        config_path: absolute.display().to_string(),
        overrides: overrides.to_vec(),
        folds,
        repeats,
        split_seed: 0,
        monitor: String::new(),
        status: Status::Running,
        started: rfc3339_now(),
        finished: None,
        member,
        runs: Vec::new(),
        summary: BTreeMap::new(),
    };
    let first = fold_config(&record, 0)?;
    record.name = first.name.clone();
    record.split_seed = first.data.split_seed;
    record.monitor = first.monitor.metric.clone();
    record.id = id.unwrap_or_else(|| run::new_id(&format!("{}-cv", run::id_stem(&first.name, 24))));
    for index in 0..folds * repeats {
        fold_config(&record, index)?;
        record.runs.push(FoldRun {
            index,
            repeat: index / folds,
            fold: index % folds,
            run_id: format!("{}-f{index}", record.id),
            attempts: 0,
            status: None,
            metrics: BTreeMap::new(),
        });
    }
    Ok(record)
}

/// How a CV's work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// Ctrl-C or SIGUSR1: the fold training saved a checkpoint.
    Interrupted,
}

/// Trains the folds the record does not have yet, saving the record after each.
pub fn run(
    record: &mut CvRecord,
    registry: &Path,
    stop: &Arc<AtomicBool>,
    quiet: bool,
    pruner: Option<Arc<dyn train::Pruning>>,
) -> Result<Ending, SelectError> {
    let _held = hold(record, registry)?;
    record.status = Status::Running;
    record.save(registry)?;
    for i in 0..record.runs.len() {
        if record.runs[i].status == Some(Status::Completed) {
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            return interrupted(record, registry);
        }
        let Some((cfg, resume)) = fold_plan(record, registry, i)? else {
            continue;
        };
        start_fold(record, registry, i, quiet)?;
        let opts = fold_options(record, i, registry, stop, quiet, &pruner, resume);
        let outcome = match train::train(&cfg, &opts) {
            Ok(o) => o,
            Err(e) => {
                record.runs[i].status = Some(Status::Failed);
                record.status = Status::Failed;
                record.save(registry)?;
                return Err(e.into());
            }
        };
        if outcome.info.status == Status::Interrupted {
            record.runs[i].status = Some(Status::Interrupted);
            return interrupted(record, registry);
        }
        finished(record, i, &outcome.info);
        record.save(registry)?;
    }
    record.status = Status::Completed;
    record.finished = Some(rfc3339_now());
    record.save(registry)?;
    Ok(Ending::Completed)
}

/// Takes the CV's lock and reads its last record: one process works on a CV at a time; one
/// still stopping (a sweep worker's death) is waited for, and its last record read.
fn hold(
    record: &mut CvRecord,
    registry: &Path,
) -> Result<crate::registry::store::Lock, SelectError> {
    let dir = CvRecord::dir(registry, &record.id);
    std::fs::create_dir_all(&dir).map_err(super::io(&dir))?;
    let held = crate::registry::store::Lock::acquire(
        &dir.join(layout::LOCK),
        std::time::Duration::from_secs(120),
        &format!("cross-validation {}", record.id),
    )?;
    if let Ok(fresh) = CvRecord::load(registry, &record.id) {
        *record = fresh;
    }
    Ok(held)
}

/// What fold `i` trains from: its config, and its run's folder when it resumes from a
/// checkpoint. `None` when its run had completed: then it is recorded and the record saved.
fn fold_plan(
    record: &mut CvRecord,
    registry: &Path,
    i: usize,
) -> Result<Option<(RunConfig, Option<PathBuf>)>, SelectError> {
    let runs_dir = layout::runs_dir(registry);
    let dir = runs_dir.join(&record.runs[i].run_id);
    let existing: Option<RunInfo> = run::read_json(&dir.join(layout::RUN)).ok();
    let plan = match existing {
        Some(info) if info.status == Status::Completed => {
            finished(record, i, &info);
            record.save(registry)?;
            return Ok(None);
        }
        Some(_) if !layout::checkpoints(&dir).is_empty() => {
            super::wait_for_run(&dir)?;
            (config::load_run(&dir)?, Some(dir.clone()))
        }
        _ if dir.exists() => {
            // Killed before its first checkpoint: train the fold again as a new run.
            let f = &mut record.runs[i];
            f.run_id = format!("{}-f{}-{}", record.id, f.index, f.attempts + 1);
            (fold_config(record, i)?, None)
        }
        _ => (fold_config(record, i)?, None),
    };
    Ok(Some(plan))
}

/// Counts an attempt of fold `i`, marks it running, saves the record and says which fold
/// trains (unless `quiet`).
fn start_fold(
    record: &mut CvRecord,
    registry: &Path,
    i: usize,
    quiet: bool,
) -> Result<(), SelectError> {
    let f = &mut record.runs[i];
    f.attempts += 1;
    f.status = Some(Status::Running);
    let (run_id, index) = (f.run_id.clone(), f.index);
    record.save(registry)?;
    if !quiet {
        eprintln!(
            "== fold {} of {}{}: run {run_id}",
            index % record.folds + 1,
            record.folds,
            if record.repeats > 1 {
                format!(", repeat {}", index / record.folds + 1)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The training options of fold `i`: a member of this CV, resuming `resume` when given.
fn fold_options(
    record: &CvRecord,
    i: usize,
    registry: &Path,
    stop: &Arc<AtomicBool>,
    quiet: bool,
    pruner: &Option<Arc<dyn train::Pruning>>,
    resume: Option<PathBuf>,
) -> train::Options {
    let f = &record.runs[i];
    train::Options {
        registry: registry.to_path_buf(),
        smoke: false,
        quiet,
        config_path: record.config_path.clone(),
        resume,
        stop: Arc::clone(stop),
        init_from: None,
        group: None,
        member: Some(Member {
            run_id: f.run_id.clone(),
            of: Membership {
                kind: GroupKind::Cv,
                id: record.id.clone(),
                index: f.index,
            },
            pruner: pruner.clone(),
        }),
    }
}

fn interrupted(record: &mut CvRecord, registry: &Path) -> Result<Ending, SelectError> {
    record.status = Status::Interrupted;
    record.save(registry)?;
    Ok(Ending::Interrupted)
}

/// A fold's run completed: its metrics into the record and the summary.
fn finished(record: &mut CvRecord, i: usize, info: &RunInfo) {
    let f = &mut record.runs[i];
    f.status = Some(Status::Completed);
    f.metrics = info
        .metrics
        .iter()
        .map(|(split, m)| {
            // A diverged fold's NaN is left out (JSON cannot hold it).
            let scalars = m
                .all_scalars()
                .into_iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            (split.clone(), scalars)
        })
        .collect();
    record.summarise();
}

/// The summary as a table: `metric  mean ± std  per-fold values`, validation metrics first.
pub fn summary_table(record: &CvRecord) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{:<18}{:>22}   {}\n", "metric", "mean ± std", "per fold");
    let order = |k: &String| match k.split('/').next() {
        Some("valid") => 0,
        Some("test") => 1,
        _ => 2,
    };
    let mut keys: Vec<&String> = record.summary.keys().collect();
    keys.sort_by_key(|k| (order(k), (*k).clone()));
    for k in keys {
        let s = &record.summary[k];
        let folds: Vec<String> = s.values.iter().map(|v| format!("{v:.4}")).collect();
        let _ = writeln!(
            out,
            "{k:<18}{:>22}   {}",
            format!("{:.4} ± {:.4}", s.mean, s.std),
            folds.join(" ")
        );
    }
    out
}

/// A cross-validation's page (`kiln cv -o`, `kiln report CV_ID`): each metric's per-fold values and mean ± std.
pub fn page(r: &CvRecord) -> String {
    use crate::html::{escape, scatter_svg};
    use std::fmt::Write;
    let mut body = format!(
        "<h1>Cross-validation {}</h1><p>{} folds{} of <code>{}</code>{}</p>",
        escape(&r.id),
        r.folds,
        if r.repeats > 1 {
            format!(" x {} repeats", r.repeats)
        } else {
            String::new()
        },
        escape(&r.config_path),
        if r.overrides.is_empty() {
            String::new()
        } else {
            format!(" with <code>{}</code>", escape(&r.overrides.join(" ")))
        }
    );
    for (key, s) in r.summary.iter().filter(|(k, _)| k.starts_with("valid/")) {
        let points: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, *v))
            .collect();
        let mean = vec![(0.0, s.mean), ((s.values.len().max(2) - 1) as f64, s.mean)];
        body.push_str(&scatter_svg(
            &format!("{key}: {:.4} ± {:.4}", s.mean, s.std),
            ("fold", key),
            &[("fold", points, true)],
            Some(("mean", mean)),
        ));
    }
    let _ = write!(body, "<pre>{}</pre>", escape(&summary_table(r)));
    body.push_str("<table><tr><th>fold</th><th>run</th><th>status</th></tr>");
    for f in &r.runs {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.index,
            escape(&f.run_id),
            f.status
                .map_or("-".into(), |s| format!("{s:?}").to_lowercase())
        );
    }
    body.push_str("</table>");
    crate::html::page(&format!("cv {}", r.id), &body)
}

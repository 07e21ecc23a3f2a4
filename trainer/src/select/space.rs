//! The sweep file and its search space, read and checked before any trial runs: every key of
//! `[space]` is tried on the base config with the values it can take (a choice's every value, a
//! range's ends), so a misspelled key path or a value of the wrong type is one error naming it.
//!
//! ```toml
//! base = "../digits_mlp.toml"      # relative to this file
//! metric = "valid/accuracy"        # a validation metric; with `cv = 5`, its mean over folds
//! direction = "maximize"           # default: minimize for loss, mse, rmse, mae; else maximize
//! sampler = "tpe"                  # "grid", "random", "tpe"
//! pruner = "median"                # "none", "median", "asha"
//! trials = 40
//! set = ["train.epochs=20"]        # fixed overrides of the base config
//! [space]
//! "optim.lr" = { log_uniform = [1e-4, 1e-1] }
//! "model.hidden" = { choice = [[64], [128, 64]] }
//! "train.batch_size" = { int = [16, 128], log = true }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Value;

use super::SelectError;
use crate::config::{self, Override};

/// A parameter's distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dist {
    Uniform {
        low: f64,
        high: f64,
    },
    LogUniform {
        low: f64,
        high: f64,
    },
    /// Integers in `[low, high]`, uniform in the log when `log`.
    Int {
        low: i64,
        high: i64,
        log: bool,
    },
    Choice(Vec<Value>),
}

impl Dist {
    /// The interval numeric samplers draw in (natural log for log scales; integers widened by
    /// a half on each side so that each gets an equal share). `None` for a choice.
    pub fn interval(&self) -> Option<(f64, f64)> {
        match *self {
            Dist::Uniform { low, high } => Some((low, high)),
            Dist::LogUniform { low, high } => Some((low.ln(), high.ln())),
            Dist::Int {
                low,
                high,
                log: false,
            } => Some((low as f64 - 0.5, high as f64 + 0.5)),
            Dist::Int {
                low,
                high,
                log: true,
            } => Some(((low as f64 - 0.5).max(0.5).ln(), (high as f64 + 0.5).ln())),
            Dist::Choice(_) => None,
        }
    }

    /// The value of a point of [`Dist::interval`].
    pub fn value_at(&self, t: f64) -> Value {
        match *self {
            Dist::Uniform { low, high } => Value::Float(t.clamp(low, high)),
            Dist::LogUniform { low, high } => Value::Float(t.exp().clamp(low, high)),
            Dist::Int { low, high, log } => {
                let x = if log { t.exp() } else { t };
                Value::Integer((x.round() as i64).clamp(low, high))
            }
            Dist::Choice(ref v) => v[0].clone(),
        }
    }

    /// Where a value lies in [`Dist::interval`] (a recorded trial's, for the samplers).
    pub fn point_of(&self, v: &Value) -> Option<f64> {
        let x = match v {
            Value::Float(f) => *f,
            Value::Integer(i) => *i as f64,
            _ => return None,
        };
        match self {
            Dist::LogUniform { .. } | Dist::Int { log: true, .. } => Some(x.max(1e-300).ln()),
            Dist::Choice(_) => None,
            _ => Some(x),
        }
    }

    /// A choice's index of a recorded value.
    pub fn index_of(&self, v: &Value) -> Option<usize> {
        match self {
            Dist::Choice(values) => values.iter().position(|c| c == v),
            _ => None,
        }
    }

    /// Whether the value axis of a plot is logarithmic.
    pub fn is_log(&self) -> bool {
        matches!(self, Dist::LogUniform { .. } | Dist::Int { log: true, .. })
    }
}

/// A parameter: the config key it sets and its distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    pub key: String,
    pub dist: Dist,
}

/// Parameters sorted by key (the order samplers draw them in).
pub type Space = Vec<Param>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Maximize,
    Minimize,
}

impl Direction {
    /// `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Direction::Maximize => a > b,
            Direction::Minimize => a < b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    Grid,
    Random,
    Tpe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrunerKind {
    None,
    Median,
    Asha,
}

/// `[pruning]`: the pruners' settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pruning {
    /// Median: completed trials needed before any pruning. Default: 5.
    pub startup_trials: usize,
    /// Median: validations a trial always gets before it can be pruned. Default: 0 (as
    /// Optuna's `n_warmup_steps`).
    pub warmup: usize,
    /// ASHA: the first rung's validation. Default: 1.
    pub min_resource: usize,
    /// ASHA: 1 in `reduction_factor` trials goes on at each rung. Default: 3.
    pub reduction_factor: usize,
}

impl Default for Pruning {
    fn default() -> Self {
        Self {
            startup_trials: 5,
            warmup: 0,
            min_resource: 1,
            reduction_factor: 3,
        }
    }
}

/// `[tpe]`: the TPE sampler's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TpeSettings {
    /// Trials drawn at random before the model takes over. Default: 10.
    pub startup_trials: usize,
    /// Candidates drawn from the good trials' density per proposal. Default: 24.
    pub candidates: usize,
}

impl Default for TpeSettings {
    fn default() -> Self {
        Self {
            startup_trials: 10,
            candidates: 24,
        }
    }
}

/// The sweep file as people write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    base: PathBuf,
    metric: String,
    direction: Option<Direction>,
    #[serde(default = "default_sampler")]
    sampler: SamplerKind,
    #[serde(default = "default_pruner")]
    pruner: PrunerKind,
    trials: Option<usize>,
    /// Wall time after which no new trial starts: `"30m"`, `"2h"`.
    timeout: Option<String>,
    #[serde(default)]
    seed: u64,
    cv: Option<usize>,
    #[serde(default)]
    set: Vec<String>,
    #[serde(default)]
    pruning: Pruning,
    #[serde(default)]
    tpe: TpeSettings,
    space: BTreeMap<String, Value>,
}

fn default_sampler() -> SamplerKind {
    SamplerKind::Tpe
}
fn default_pruner() -> PrunerKind {
    PrunerKind::None
}

/// A checked sweep: what `sweep.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The sweep file (absolute) and the base config it names (absolute).
    pub file: String,
    pub base: String,
    /// The base config's model name (the best trial registers a version of it).
    pub name: String,
    /// The validation metric (`accuracy`), read from `valid` (or the CV's mean of it).
    pub metric: String,
    pub direction: Direction,
    pub sampler: SamplerKind,
    pub pruner: PrunerKind,
    pub trials: usize,
    /// Seconds after a worker starts when it starts no new trial.
    pub timeout_seconds: Option<f64>,
    pub seed: u64,
    pub cv: Option<usize>,
    pub set: Vec<String>,
    pub pruning: Pruning,
    pub tpe: TpeSettings,
    pub space: Space,
}

impl SweepSpec {
    /// The `--set` overrides of a trial: the fixed ones, then its parameters.
    pub fn overrides(&self, params: &BTreeMap<String, Value>) -> Vec<String> {
        let mut out = self.set.clone();
        out.extend(params.iter().map(|(k, v)| format!("{k}={v}")));
        out
    }

    /// The value of `metric` in a run's final metrics (its `valid` split).
    pub fn objective(&self, metrics: &BTreeMap<String, crate::metrics::Metrics>) -> Option<f64> {
        metrics
            .get("valid")
            .and_then(|m| m.get(&self.metric))
            .filter(|v| v.is_finite())
    }
}

fn bad(file: &Path, message: impl std::fmt::Display) -> SelectError {
    SelectError::Input(format!("sweep file {}: {message}", file.display()))
}

/// Reads and checks a sweep file; `trials` and `seed` from the command line win over the file.
pub fn read(
    path: &Path,
    trials: Option<usize>,
    seed: Option<u64>,
    timeout: Option<&str>,
) -> Result<SweepSpec, SelectError> {
    let file = read_sweep_file(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let base = dir.join(&file.base);
    if !base.is_file() {
        return Err(bad(
            path,
            format!(
                "base = {:?}: no such config file ({})",
                file.base.display(),
                base.display()
            ),
        ));
    }
    let metric = validation_metric(path, &file.metric)?;
    let space = parse_space(path, &file.space)?;
    if space.is_empty() {
        return Err(bad(
            path,
            "[space] is empty: name at least one key to search",
        ));
    }
    let trials = trials.or(file.trials).unwrap_or(20);
    if trials == 0 {
        return Err(bad(path, "trials must be at least 1"));
    }
    let timeout_seconds = sweep_timeout(path, timeout, &file)?;
    check_settings(path, &file, &space)?;
    let set = file.set.clone();
    let (name, higher_is_better) =
        check_against_config(path, &base, &set, &space, &metric, file.cv)?;
    // The default direction is the metric's own (as `train.monitor` knows it).
    let direction = file.direction.unwrap_or(if higher_is_better {
        Direction::Maximize
    } else {
        Direction::Minimize
    });
    let absolute = |p: &Path| {
        std::path::absolute(p).map_or_else(|_| p.display().to_string(), |p| p.display().to_string())
    };
    Ok(SweepSpec {
        file: absolute(path),
        base: absolute(&base),
        name,
        metric,
        direction,
        sampler: file.sampler,
        pruner: file.pruner,
        trials,
        timeout_seconds,
        seed: seed.unwrap_or(file.seed),
        cv: file.cv,
        set,
        pruning: file.pruning,
        tpe: file.tpe,
        space,
    })
}

/// The sweep file at `path`, read and parsed (a TOML error names its line).
fn read_sweep_file(path: &Path) -> Result<SweepFile, SelectError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let file: SweepFile = toml::from_str(&text).map_err(|e| {
        let msg = e.message().trim().to_string();
        let line = e
            .span()
            .map(|s| format!(" (line {})", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        bad(path, format!("{msg}{line}"))
    })?;
    Ok(file)
}

/// The metric's name in the validation split: `metric` as written, or without its `valid/`;
/// an error for another split.
fn validation_metric(path: &Path, metric: &str) -> Result<String, SelectError> {
    match metric.split_once('/') {
        None => Ok(metric.to_string()),
        Some(("valid", m)) => Ok(m.to_string()),
        Some((split, _)) => Err(bad(
            path,
            format!(
                "metric = {:?}: a sweep selects on the validation split (`valid/{}`), never {split}",
                metric,
                metric.split_once('/').map_or("", |p| p.1)
            ),
        )),
    }
}

/// The wall time of the sweep in seconds: `timeout` from the command line, else the file's;
/// an error for a duration that does not parse or is not positive.
fn sweep_timeout(
    path: &Path,
    timeout: Option<&str>,
    file: &SweepFile,
) -> Result<Option<f64>, SelectError> {
    let timeout = timeout.map(str::to_string).or(file.timeout.clone());
    let timeout_seconds = match &timeout {
        Some(t) => Some(
            humantime::parse_duration(t)
                .map_err(|e| {
                    bad(
                        path,
                        format!("timeout = {t:?}: {e} (write \"30m\", \"2h\")"),
                    )
                })?
                .as_secs_f64(),
        ),
        None => None,
    };
    if timeout_seconds.is_some_and(|t| t <= 0.0) {
        return Err(bad(
            path,
            "timeout: a sweep needs some time (write \"30m\", \"2h\")",
        ));
    }
    Ok(timeout_seconds)
}

/// Checks the file's cross-validation, pruner and TPE settings, and that a grid sweep's space
/// is finite and small enough.
fn check_settings(path: &Path, file: &SweepFile, space: &Space) -> Result<(), SelectError> {
    if file.cv.is_some() && file.pruner != PrunerKind::None {
        return Err(bad(
            path,
            "a cross-validated trial is not pruned: use pruner = \"none\" with cv",
        ));
    }
    if file.cv.is_some_and(|k| !(2..=1000).contains(&k)) {
        return Err(bad(path, "cv: cross-validation takes 2 to 1000 folds"));
    }
    if !(2..=100).contains(&file.pruning.reduction_factor)
        || !(1..=1 << 20).contains(&file.pruning.min_resource)
    {
        return Err(bad(
            path,
            "[pruning]: reduction_factor 2 to 100 and min_resource 1 to 1048576",
        ));
    }
    if !(1..=10_000).contains(&file.tpe.candidates) {
        return Err(bad(path, "[tpe] candidates: 1 to 10000"));
    }
    if file.sampler == SamplerKind::Grid {
        super::sampler::grid_size(space).map_err(|e| bad(path, e))?;
    }
    Ok(())
}

fn parse_space(path: &Path, table: &BTreeMap<String, Value>) -> Result<Space, SelectError> {
    let mut out = Vec::new();
    for (key, v) in table {
        let at = |m: String| bad(path, format!("[space] {key:?}: {m}"));
        let dist = parse_dist(v, &at)?;
        out.push(Param {
            key: key.clone(),
            dist,
        });
    }
    Ok(out)
}

/// One key's distribution: a table of exactly one kind (`uniform`, `log_uniform`, `int`,
/// `choice`), with `log` for `int` only; `at` makes an error naming the key.
fn parse_dist(v: &Value, at: &dyn Fn(String) -> SelectError) -> Result<Dist, SelectError> {
    let Value::Table(t) = v else {
        return Err(at(
            "write a distribution: { uniform = [a, b] }, { log_uniform = [a, b] }, { int = [a, b] } or { choice = [...] }".into(),
        ));
    };
    let kinds: Vec<&String> = t.keys().filter(|k| k.as_str() != "log").collect();
    let [kind] = kinds.as_slice() else {
        return Err(at(format!(
            "one distribution per key, found {}",
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    };
    let log = match t.get("log") {
        None => false,
        Some(Value::Boolean(b)) if kind.as_str() == "int" => *b,
        Some(_) => {
            return Err(at(
                "`log` goes with `int` only, as true or false (use log_uniform for reals)".into(),
            ));
        }
    };
    let value = &t[kind.as_str()];
    match kind.as_str() {
        "uniform" | "log_uniform" => real_dist(kind.as_str(), value, at),
        "int" => int_dist(kind.as_str(), value, log, at),
        "choice" => choice_dist(value, at),
        other => {
            let known = ["uniform", "log_uniform", "int", "choice"].map(String::from);
            Err(at(format!(
                "unknown distribution `{other}`{}",
                crate::suggest::hint(other, &known)
            )))
        }
    }
}

/// `[low, high]` of a `kind` distribution: two finite numbers.
fn pair(
    kind: &str,
    v: &Value,
    at: &dyn Fn(String) -> SelectError,
) -> Result<(f64, f64), SelectError> {
    match v {
        Value::Array(a) if a.len() == 2 => {
            let num = |x: &Value| match x {
                Value::Float(f) => Some(*f),
                Value::Integer(i) => Some(*i as f64),
                _ => None,
            };
            match (num(&a[0]), num(&a[1])) {
                (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() => Ok((lo, hi)),
                _ => Err(at(format!("{kind} = {v}: two finite numbers, [low, high]"))),
            }
        }
        _ => Err(at(format!("{kind} = {v}: two numbers, [low, high]"))),
    }
}

/// `uniform` or `log_uniform` (`kind`): a non-empty range a number holds; positive for a log.
fn real_dist(
    kind: &str,
    value: &Value,
    at: &dyn Fn(String) -> SelectError,
) -> Result<Dist, SelectError> {
    let (low, high) = pair(kind, value, at)?;
    if low >= high {
        return Err(at(format!(
            "empty range [{low}, {high}]: low must be below high"
        )));
    }
    if !(high - low).is_finite() {
        return Err(at(format!(
            "[{low}, {high}]: the range is wider than a number holds"
        )));
    }
    if kind == "log_uniform" {
        if low <= 0.0 {
            return Err(at(format!(
                "log_uniform = [{low}, {high}]: the log of a number at or below 0 is undefined; both ends must be positive"
            )));
        }
        Ok(Dist::LogUniform { low, high })
    } else {
        Ok(Dist::Uniform { low, high })
    }
}

/// `int` (`kind`): integer ends, low not above high, at least 1 on a log scale.
fn int_dist(
    kind: &str,
    value: &Value,
    log: bool,
    at: &dyn Fn(String) -> SelectError,
) -> Result<Dist, SelectError> {
    let (low, high) = pair(kind, value, at)?;
    if low.fract() != 0.0 || high.fract() != 0.0 {
        return Err(at(format!("int = {value}: both ends must be integers")));
    }
    if low > high {
        return Err(at(format!(
            "empty range [{low}, {high}]: low must not be above high"
        )));
    }
    if log && low < 1.0 {
        return Err(at(format!(
            "int = {value} with log = true: the log of a number below 1 is not a scale; start at 1 or more"
        )));
    }
    Ok(Dist::Int {
        low: low as i64,
        high: high as i64,
        log,
    })
}

/// `choice`: at least one value, none of them nan or infinite.
fn choice_dist(value: &Value, at: &dyn Fn(String) -> SelectError) -> Result<Dist, SelectError> {
    match value {
        Value::Array(a)
            if a.iter()
                .any(|v| v.as_float().is_some_and(|f| !f.is_finite())) =>
        {
            Err(at(
                "choice: nan and inf are not values a trial can record".into()
            ))
        }
        Value::Array(a) if !a.is_empty() => Ok(Dist::Choice(a.clone())),
        _ => Err(at("choice = [...]: give at least one value".into())),
    }
}

/// Every key of the space tried on the base config with each value it can take: a typo in a
/// key path, or a value the config refuses, is an error before any trial runs. Returns the
/// base config's model name and whether the metric is better higher.
fn check_against_config(
    path: &Path,
    base: &Path,
    set: &[String],
    space: &Space,
    metric: &str,
    cv: Option<usize>,
) -> Result<(String, bool), SelectError> {
    let parse = |raw: &[String]| -> Result<Vec<Override>, SelectError> {
        raw.iter()
            .map(|s| Override::parse(s).map_err(|e| bad(path, e)))
            .collect()
    };
    let load = |extra: &[String]| -> Result<config::RunConfig, config::ConfigError> {
        let mut all = set.to_vec();
        all.extend_from_slice(extra);
        if let Some(k) = cv {
            all.push(format!("data.split.folds={k}"));
            all.push("data.split.fold=0".into());
        }
        let overrides = parse(&all).map_err(|e| {
            config::ConfigError::single(config::Problem::new(
                &path.display().to_string(),
                None,
                e.to_string(),
            ))
        })?;
        let (file, _) = config::load(base, &overrides)?;
        config::validate(
            file,
            &base.display().to_string(),
            &config::default_name(base),
        )
    };
    let cfg = load(&[]).map_err(|e| bad(path, format!("base config with `set`: {e}")))?;
    let monitored = load(&[format!("train.monitor={metric:?}")])
        .map_err(|e| bad(path, format!("metric = {metric:?}: {e}")))?;
    if cfg.data.fold.is_none() && cfg.data.valid_fraction == 0.0 {
        return Err(bad(
            path,
            "the base config has no validation split (`data.split.valid` = 0): a sweep selects on it; set one in `set`, or use cv",
        ));
    }
    for p in space {
        let probes: Vec<Value> = match &p.dist {
            Dist::Choice(v) => v.clone(),
            Dist::Uniform { low, high } | Dist::LogUniform { low, high } => {
                vec![Value::Float(*low), Value::Float(*high)]
            }
            Dist::Int { low, high, .. } => vec![Value::Integer(*low), Value::Integer(*high)],
        };
        for v in probes {
            load(&[format!("{}={v}", p.key)])
                .map_err(|e| bad(path, format!("[space] {:?} = {v}: {e}", p.key)))?;
        }
    }
    Ok((cfg.name, monitored.monitor.higher_is_better))
}

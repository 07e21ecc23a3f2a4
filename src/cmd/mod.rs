//! The commands, one file each, and what several of them share: where the registry is, how a
//! config or a model reference is read, and the error that means "usage" (exit code 2).
//!
//! **Adding a command**: a variant in `cli.rs`, a file here with its `run`, one line in
//! [`dispatch`].

mod cv;
mod devices;
mod drift;
mod eval;
mod explain;
mod export;
mod fairness;
mod generate;
mod launch;
mod predict;
mod registry;
mod report;
mod runs;
mod serve;
mod sweep;
mod train;
mod validate;

use std::path::{Path, PathBuf};

use kiln_trainer::config::{self, Override, RunConfig};
use kiln_trainer::layout;
use kiln_trainer::registry::{Entry, Registry};
use kiln_trainer::run;

use crate::cli::Command;

/// A usage or config error the command line reports with exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// `Err(Usage(..))`, for a `?`.
pub fn usage<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(Usage(message.into()).into())
}

/// `Ok` when `value` lies in `lo..=hi`, else the usage error `FLAG VALUE: LO to HI` (a NaN
/// is in no range).
pub fn within<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    value: T,
    lo: T,
    hi: T,
) -> anyhow::Result<()> {
    if lo <= value && value <= hi {
        Ok(())
    } else {
        usage(format!("{flag} {value}: {lo} to {hi}"))
    }
}

/// Runs a command; `Ok` carries the exit code (a run that was interrupted, damage found).
pub fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Train(args) => match args.devices.clone() {
            Some(devices) => launch::run(&devices),
            None => train::run(args),
        },
        Command::Cv(args) => cv::run(args),
        Command::Sweep(args) => sweep::run(args),
        Command::Validate { paths, deep, set } => validate::run(&paths, deep, &set),
        Command::Eval {
            run,
            split,
            json,
            registry,
        } => eval::run(&run, &split, json, registry),
        Command::Export {
            model,
            output,
            opset,
            batch,
            json,
            registry,
        } => export::run(&model, &output, opset, &batch, json, registry),
        Command::Predict {
            model,
            input,
            output,
            registry,
        } => predict::run(&model, &input, output.as_deref(), registry),
        Command::Generate { args, registry } => generate::run(args, registry),
        Command::Explain { args, registry } => explain::run(args, registry),
        Command::Serve(args) => serve::run(args),
        Command::Drift {
            model,
            input,
            psi,
            ks,
            json,
            output,
            registry,
        } => drift::run(
            &model,
            &input,
            json,
            output.as_deref(),
            kiln_trainer::drift::Thresholds { psi, ks },
            registry,
        ),
        Command::Fairness { args, registry } => fairness::run(args, registry),
        Command::Devices { json } => devices::run(json),
        Command::Runs { command, registry } => runs::run(command, registry),
        Command::Registry { command, registry } => registry::run(command, registry),
        Command::Report {
            run,
            output,
            groups,
            registry,
        } => report::run(&run, &output, &groups, registry),
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&config::schema()).expect("schema is JSON");
            println!("{schema}");
            Ok(0)
        }
    }
}

/// The registry: `--registry`, else `$KILN_REGISTRY`, else the config's (or the default).
pub fn registry_for(flag: Option<PathBuf>, from_config: &str) -> PathBuf {
    flag.or_else(|| std::env::var_os("KILN_REGISTRY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(from_config))
}

/// The `--registry` flag a printed command needs: none when the registry is where commands
/// look by default.
pub fn registry_flag(registry: &Path) -> String {
    if registry == default_registry(None) {
        String::new()
    } else {
        format!(" --registry {}", registry.display())
    }
}

/// The registry when no config names one.
pub fn default_registry(flag: Option<PathBuf>) -> PathBuf {
    registry_for(flag, &config::RuntimeSection::default().registry)
}

pub fn parse_overrides(set: &[String]) -> anyhow::Result<Vec<Override>> {
    set.iter()
        .map(|s| Override::parse(s).map_err(|e| Usage(e).into()))
        .collect()
}

/// Reads and validates a config file with its overrides.
pub fn load_config(path: &Path, overrides: &[Override]) -> anyhow::Result<RunConfig> {
    if path.exists() && !path.is_file() && !path.is_dir() {
        return usage(format!(
            "{}: not a regular file (a named pipe, socket or device): a config is a file",
            kiln_trainer::shown::path(path)
        ));
    }
    if !path.is_file() {
        return usage(format!(
            "{}: no such config file",
            kiln_trainer::shown::path(path)
        ));
    }
    let (file, _) = config::load(path, overrides)?;
    Ok(config::validate(
        file,
        &path.display().to_string(),
        &config::default_name(path),
    )?)
}

/// The cross-validation `reference` names, if it names one.
pub fn cv_of(registry: &Path, reference: &str) -> Option<kiln_trainer::select::cv::CvRecord> {
    kiln_trainer::registry::names::check("cv id", reference).ok()?;
    let path = registry
        .join(layout::CV)
        .join(reference)
        .join(layout::CV_RECORD);
    run::read_json(&path).ok()
}

/// A run folder from a run reference (`latest`, a run id, a folder): the registry's
/// [`Registry::find_run`]; a reference that names no run is a usage error.
pub fn resolve_run(registry: &Path, reference: &str) -> anyhow::Result<PathBuf> {
    Ok(Registry::new(registry).find_run(reference)?)
}

/// A model reference, through the registry's one resolver ([`Registry::find_model`]): a run
/// folder or `latest`, or NAME, NAME@ALIAS, NAME/vN, a run id. Returns the registry that holds
/// it.
pub fn resolve_model(reg: &Registry, reference: &str) -> anyhow::Result<(Registry, Entry)> {
    Ok(reg.find_model(reference)?)
}

/// Two runs or models side by side (`runs compare`, `registry diff`): the config keys that
/// differ and the metrics, as text or one JSON object.
pub fn print_comparison(
    a: &str,
    b: &str,
    diff: &[(String, String, String)],
    metrics: &[(String, String, Option<f64>, Option<f64>)],
    json: bool,
) {
    if !json {
        print!(
            "{}",
            kiln_trainer::report::compare_text(a, b, diff, metrics)
        );
        return;
    }
    let diff: Vec<_> = diff
        .iter()
        .map(|(k, x, y)| serde_json::json!({"key": k, "a": x, "b": y}))
        .collect();
    let metrics: Vec<_> = metrics
        .iter()
        .map(|(s, m, x, y)| serde_json::json!({"split": s, "metric": m, "a": x, "b": y}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"a": a, "b": b, "config": diff, "metrics": metrics})
    );
}

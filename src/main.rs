//! The `kiln` command: parses arguments, dispatches to the trainer, maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 a data or runtime failure; 2 a usage or config error;
//! 130 training interrupted (Ctrl-C) after saving a checkpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use kiln_trainer::config::{self, ConfigError, Override};
use kiln_trainer::data::SplitName;
use kiln_trainer::{eval, report, run, train};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train neural models from a config file, on burn."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML config (or continue an interrupted run with --resume).
    Train {
        /// The config file.
        #[arg(required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Override a config value, e.g. `--set optim.lr=3e-4` (repeatable; applied in order).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A few steps on a small slice, a validation pass, a checkpoint and an evaluation.
        #[arg(long)]
        smoke: bool,
        /// Continue a run (a run id, `latest`, or a run folder) from its last checkpoint.
        #[arg(long, value_name = "RUN", conflicts_with_all = ["config", "set"])]
        resume: Option<String>,
        /// Print only the result.
        #[arg(long, short)]
        quiet: bool,
        /// End with one JSON object (run id, folder, metrics per split) on stdout.
        #[arg(long)]
        json: bool,
        /// The registry folder (default: $KILN_REGISTRY, the config's runtime.registry, or ./kiln-registry).
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Check config files (or folders of them, recursively) and report every problem.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also load the data, build the model and run a forward pass on a real batch.
        #[arg(long)]
        deep: bool,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Metrics of a finished run on one split of its data.
    Eval {
        /// A run id, `latest`, or a run folder.
        run: String,
        /// train, valid or test.
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
}

/// An error and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train {
            config,
            set,
            smoke,
            resume,
            quiet,
            json,
            registry,
        } => cmd_train(config, &set, smoke, resume, quiet, json, registry),
        Command::Validate { paths, deep, set } => cmd_validate(&paths, deep, &set),
        Command::Eval {
            run,
            split,
            json,
            registry,
        } => cmd_eval(&run, &split, json, registry),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config::schema()).expect("schema is JSON")
            );
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            for line in f.message.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn parse_overrides(set: &[String]) -> Result<Vec<Override>, Failure> {
    set.iter()
        .map(|s| Override::parse(s).map_err(Failure::usage))
        .collect()
}

fn registry_for(flag: Option<PathBuf>, from_config: &str) -> PathBuf {
    flag.or_else(|| std::env::var_os("KILN_REGISTRY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(from_config))
}

fn load_config(path: &Path, overrides: &[Override]) -> Result<config::RunConfig, Failure> {
    if !path.is_file() {
        return Err(Failure::usage(format!(
            "{}: no such config file",
            path.display()
        )));
    }
    let (file, _) = config::load(path, overrides)?;
    Ok(config::validate(
        file,
        &path.display().to_string(),
        &config::default_name(path),
    )?)
}

fn cmd_train(
    config_path: Option<PathBuf>,
    set: &[String],
    smoke: bool,
    resume: Option<String>,
    quiet: bool,
    json: bool,
    registry: Option<PathBuf>,
) -> Result<u8, Failure> {
    let (cfg, registry, resume_dir, shown) = match (&config_path, &resume) {
        (_, Some(reference)) => {
            let registry = registry_for(registry, "kiln-registry");
            let dir =
                run::resolve(&registry, reference).map_err(|e| Failure::usage(e.to_string()))?;
            let cfg = config::load_run(&dir)?;
            (cfg, registry, Some(dir), reference.clone())
        }
        (Some(path), None) => {
            let cfg = load_config(path, &parse_overrides(set)?)?;
            let registry = registry_for(registry, &cfg.file.runtime.registry);
            (cfg, registry, None, path.display().to_string())
        }
        (None, None) => return Err(Failure::usage("give a config file, or --resume RUN")),
    };
    let stop = interrupt_flag();
    // The flag a resume needs: none when the registry is where `--resume` looks by default.
    let registry_flag = if registry == registry_for(None, "kiln-registry") {
        String::new()
    } else {
        format!(" --registry {}", registry.display())
    };
    let opts = train::Options {
        registry,
        smoke,
        quiet: quiet || json,
        config_path: shown,
        resume: resume_dir,
        stop,
    };
    let outcome = train::train(&cfg, &opts).map_err(|e| Failure::runtime(e.to_string()))?;
    let info = &outcome.info;
    if info.status == run::Status::Interrupted {
        eprintln!(
            "interrupted at step {}; checkpoint saved in {}\nresume with: kiln train --resume {}{registry_flag}",
            info.steps,
            run::checkpoint_dir(&outcome.run_dir, run::LATEST)
                .unwrap_or_else(|| outcome.run_dir.join(run::CHECKPOINTS))
                .display(),
            info.id
        );
    }
    if json {
        let out = serde_json::json!({
            "run_id": info.id,
            "run_dir": outcome.run_dir,
            "status": info.status,
            "steps": info.steps,
            "epochs": info.epochs_done,
            "wall_seconds": info.wall_seconds,
            "train_samples_per_second": info.train_samples_per_second,
            "metrics": info.metrics,
        });
        println!("{out}");
    } else if info.status != run::Status::Interrupted {
        println!("run     {}", info.id);
        println!("folder  {}", outcome.run_dir.display());
        println!(
            "trained {} steps, {} epochs in {:.1} s ({:.0} samples/s)",
            info.steps, info.epochs_done, info.wall_seconds, info.train_samples_per_second
        );
        print!("{}", report::metrics_table(&info.metrics));
    }
    Ok(if info.status == run::Status::Interrupted {
        130
    } else {
        0
    })
}

/// Ctrl-C once: stop after the current step and save. Twice: exit now.
fn interrupt_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let installed = ctrlc_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)"
        );
    });
    if let Err(e) = installed {
        eprintln!("warning: cannot catch Ctrl-C ({e}); an interrupt will not save a checkpoint");
    }
    stop
}

fn ctrlc_handler(f: impl FnMut() + Send + 'static) -> Result<(), String> {
    kiln_trainer::train::set_interrupt_handler(f)
}

fn cmd_validate(paths: &[PathBuf], deep: bool, set: &[String]) -> Result<u8, Failure> {
    let overrides = parse_overrides(set)?;
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            collect_tomls(p, &mut files)
                .map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?;
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(Failure::usage(format!(
                "{}: no such file or folder",
                p.display()
            )));
        }
    }
    if files.is_empty() {
        return Err(Failure::usage("no .toml files found"));
    }
    let mut failed = Vec::new();
    for f in &files {
        match load_config(f, &overrides) {
            Ok(cfg) if deep => match eval::deep_check(&cfg) {
                Ok(summary) => println!("ok    {}  ({summary})", f.display()),
                Err(e) => failed.push(format!("{}: {e}", f.display())),
            },
            Ok(_) => println!("ok    {}", f.display()),
            Err(e) => failed.push(e.message),
        }
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        Err(Failure::usage(failed.join("\n")))
    }
}

fn collect_tomls(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_tomls(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

fn cmd_eval(
    reference: &str,
    split: &str,
    json: bool,
    registry: Option<PathBuf>,
) -> Result<u8, Failure> {
    let split: SplitName = split.parse().map_err(Failure::usage)?;
    let registry = registry_for(registry, "kiln-registry");
    let dir = run::resolve(&registry, reference).map_err(|e| Failure::usage(e.to_string()))?;
    let (info, metrics) =
        eval::eval_run(&dir, split).map_err(|e| Failure::runtime(e.to_string()))?;
    if json {
        let out = serde_json::json!({"run_id": info.id, "run_dir": dir, "split": format!("{split:?}").to_lowercase(), "metrics": metrics});
        println!("{out}");
    } else {
        println!("run {} ({:?} split)", info.id, split);
        let mut m = std::collections::BTreeMap::new();
        m.insert(format!("{split:?}").to_lowercase(), metrics.clone());
        print!("{}", report::metrics_table(&m));
        print!("{}", report::class_table(&metrics));
    }
    Ok(0)
}

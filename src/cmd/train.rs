//! `kiln train`: one run, alone or as one rank of a data-parallel job, and what it prints.

use std::path::{Path, PathBuf};

use kiln_trainer::config::{self, Override};
use kiln_trainer::error::TrainError;
use kiln_trainer::{layout, report, run, train};

use super::{Usage, default_registry, load_config, parse_overrides, registry_for, resolve_run};
use crate::cli::TrainArgs;
use crate::signals::{interrupt_flag, on_launcher_stop};

pub fn run(args: TrainArgs) -> anyhow::Result<u8> {
    // Started by a launcher (mpirun, srun) as one rank of several: join the others first.
    let group = kiln_trainer::dist::Group::join()
        .map_err(Usage)?
        .map(std::rc::Rc::new);
    if let Some(g) = &group {
        on_launcher_stop(g.rank(), g.world());
    }
    let result = train_one(args, group.clone());
    let Some(g) = group.as_deref() else {
        return result.map_err(|r| match r {
            Ranked::Agreed(e) | Ranked::Alone(e) => e,
        });
    };
    let (rank, world) = (g.rank(), g.world());
    match result {
        Ok(code) => Ok(code),
        // Every rank knows (the handshake): each says why, then all end together.
        Err(Ranked::Agreed(e)) => {
            crate::print_error(&format!("rank {rank} of {world}: "), &e.to_string());
            g.barrier();
            Ok(crate::exit_code(&e))
        }
        // This rank failed alone, mid-run: end the whole job rather than leave the others
        // waiting in the next all-reduce.
        Err(Ranked::Alone(e)) => {
            crate::print_error(&format!("rank {rank} of {world}: "), &e.to_string());
            g.abort(i32::from(crate::exit_code(&e)))
        }
    }
}

/// How a rank's failure reaches the others.
enum Ranked {
    /// Said in the start-up handshake: every rank knows.
    Agreed(anyhow::Error),
    /// After it: only this rank knows.
    Alone(anyhow::Error),
}

fn train_one(
    args: TrainArgs,
    group: Option<std::rc::Rc<kiln_trainer::dist::Group>>,
) -> Result<u8, Ranked> {
    let TrainArgs {
        config: config_path,
        set,
        smoke,
        resume,
        init_from,
        device,
        quiet,
        json,
        registry,
        devices: _,
        trial,
    } = args;
    let member = trial_member(trial.as_deref())?;
    let loaded = load_for_training(
        config_path.as_deref(),
        &set,
        resume.as_deref(),
        device.as_deref(),
        registry,
    );
    let (cfg, registry, resume_dir, shown) = match (loaded, &group) {
        (Ok(v), _) => v,
        (Err(e), Some(g)) => {
            // The first collective: the other ranks learn why this one cannot start.
            let _ = g.agree(Err(e.to_string()));
            return Err(Ranked::Agreed(e));
        }
        (Err(e), None) => return Err(Ranked::Agreed(e)),
    };
    let writer = group.as_ref().is_none_or(|g| g.is_writer());
    let stop = interrupt_flag();
    // The flag a resume needs.
    let registry_flag = super::registry_flag(&registry);
    let opts = train::Options {
        registry,
        smoke,
        quiet: quiet || json,
        config_path: shown,
        resume: resume_dir,
        stop,
        init_from,
        group,
        member,
    };
    let outcome = train::train(&cfg, &opts).map_err(|e| match e {
        TrainError::Distributed(_) => Ranked::Agreed(e.into()),
        e => Ranked::Alone(e.into()),
    })?;
    if !writer {
        return Ok(match outcome.info.status {
            run::Status::Interrupted => 130,
            _ => 0,
        });
    }
    Ok(report_outcome(&outcome, json, &registry_flag))
}

/// A sweep's trial (`--trial DIR`): its run id, its place in the sweep and its pruner.
fn trial_member(trial: Option<&Path>) -> Result<Option<train::Member>, Ranked> {
    match trial.map(kiln_trainer::select::sweep::TrialContext::open) {
        Some(Ok(ctx)) => Ok(Some(ctx.member())),
        Some(Err(e)) => Err(Ranked::Agreed(e.into())),
        None => Ok(None),
    }
}

/// What the writing rank prints of a finished run (where to resume an interrupted one; a
/// summary, or one line of JSON) and its exit code: 130 when interrupted, else 0.
fn report_outcome(outcome: &train::Outcome, json: bool, registry_flag: &str) -> u8 {
    let info = &outcome.info;
    if info.status == run::Status::Interrupted {
        eprintln!(
            "interrupted at step {}; checkpoint saved in {}\nresume with: kiln train --resume {}{registry_flag}",
            info.steps,
            layout::checkpoints(&outcome.run_dir)
                .into_iter()
                .next()
                .map_or_else(|| outcome.run_dir.join(layout::CHECKPOINTS), |(_, d)| d)
                .display(),
            info.id
        );
    }
    if json {
        let out = serde_json::json!({
            "run_id": info.id,
            "run_dir": outcome.run_dir,
            "version": info.version,
            "status": info.status,
            "steps": info.steps,
            "epochs": info.epochs_done,
            "wall_seconds": info.wall_seconds,
            "train_samples_per_second": info.train_samples_per_second,
            "data_wait_seconds": info.data_wait_seconds,
            "metrics": info.metrics,
        });
        println!("{out}");
    } else if info.status != run::Status::Interrupted {
        println!("run     {}", info.id);
        println!("folder  {}", outcome.run_dir.display());
        if let Some(v) = &info.version {
            println!("model   {v}");
        }
        println!(
            "trained {} steps, {} epochs in {:.1} s ({:.0} samples/s, {:.1}% of it waiting for data)",
            info.steps,
            info.epochs_done,
            info.wall_seconds,
            info.train_samples_per_second,
            100.0 * info.data_wait_seconds / info.wall_seconds.max(1e-9)
        );
        print!("{}", report::metrics_table(&info.metrics));
    }
    if info.status == run::Status::Interrupted {
        130
    } else {
        0
    }
}

/// The config (from a file with overrides, or from the run being resumed) and the registry.
fn load_for_training(
    config_path: Option<&Path>,
    set: &[String],
    resume: Option<&str>,
    device: Option<&str>,
    registry: Option<PathBuf>,
) -> anyhow::Result<(config::RunConfig, PathBuf, Option<PathBuf>, String)> {
    Ok(match (config_path, resume) {
        (_, Some(reference)) => {
            let registry = default_registry(registry);
            let dir = resolve_run(&registry, reference)?;
            let mut cfg = config::load_run(&dir)?;
            if let Some(d) = &device {
                let spec = d.parse().map_err(|e| Usage(format!("--device: {e}")))?;
                cfg.set_device(spec);
            }
            (cfg, registry, Some(dir), reference.to_string())
        }
        (Some(path), None) => {
            let mut overrides = parse_overrides(set)?;
            if let Some(d) = &device {
                overrides.push(Override::parse(&format!("backend.device={d:?}")).map_err(Usage)?);
            }
            let cfg = load_config(path, &overrides)?;
            let registry = registry_for(registry, &cfg.runtime.registry);
            (cfg, registry, None, path.display().to_string())
        }
        (None, None) => return Err(Usage("give a config file, or --resume RUN".into()).into()),
    })
}

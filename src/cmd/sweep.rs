//! `kiln sweep`: start a sweep, resume one, join one as a worker, or show one.

use kiln_trainer::select::store::Sweep;
use kiln_trainer::select::summary;
use kiln_trainer::select::sweep;
use kiln_trainer::select::worker::{self, WorkerOptions};

use super::{Usage, default_registry, registry_flag, within};
use crate::cli::{SweepArgs, SweepCommand};
use crate::signals::interrupt_flag;

pub fn run(args: SweepArgs) -> anyhow::Result<u8> {
    if let Some(SweepCommand::Show { id, json, output }) = &args.command {
        let registry = default_registry(args.registry.clone());
        let (s, spec) = Sweep::open(&registry, id)?;
        let sum = summary::summarise(&s, &spec);
        if let Some(out) = output {
            kiln_trainer::atomic::write(out, summary::page(&sum).as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: {e}", kiln_trainer::shown::path(out)))?;
        }
        if *json {
            println!(
                "{}",
                serde_json::to_string(&sum).expect("the summary is JSON")
            );
        } else {
            print!("{}", summary::table(&sum));
        }
        return Ok(0);
    }
    within("--parallel", args.parallel, 1, 1024)?;
    within("--threads", args.threads, 0, 1024)?;
    let (s, spec) = match (&args.file, args.resume.as_ref().or(args.worker.as_ref())) {
        (Some(file), None) => {
            let registry = args
                .registry
                .clone()
                .or_else(|| std::env::var_os("KILN_REGISTRY").map(Into::into))
                .or_else(|| sweep::base_registry(file))
                .unwrap_or_else(|| default_registry(None));
            let (s, spec) = sweep::start(
                file,
                &registry,
                args.trials,
                args.seed,
                args.timeout.as_deref(),
                args.id.as_deref(),
            )?;
            if !args.quiet {
                eprintln!(
                    "sweep {}: {} trials of {} ({:?} sampler, {:?} pruner); resume with: kiln sweep --resume {}{}",
                    s.id,
                    spec.trials,
                    spec.base,
                    spec.sampler,
                    spec.pruner,
                    s.id,
                    registry_flag(&registry)
                );
            }
            (s, spec)
        }
        (None, Some(id)) => {
            if args.trials.is_some() || args.seed.is_some() || args.timeout.is_some() {
                return Err(Usage(
                    "--trials, --seed and --timeout belong to the sweep file of a new sweep; --resume and --worker go on with the sweep as it was started".into(),
                )
                .into());
            }
            let registry = default_registry(args.registry.clone());
            Sweep::open(&registry, id)?
        }
        _ => {
            return Err(
                Usage("give a sweep file, --resume SWEEP_ID or --worker SWEEP_ID".into()).into(),
            );
        }
    };
    let opts = WorkerOptions {
        exe: std::env::current_exe()?,
        parallel: args.parallel,
        threads: args.threads,
        stop: interrupt_flag(),
        quiet: args.quiet || args.json,
    };
    let report = worker::work(&s, &spec, &opts)?;
    if report.interrupted {
        eprintln!(
            "interrupted; resume with: kiln sweep --resume {}{}",
            s.id,
            registry_flag(&s.registry)
        );
        return Ok(130);
    }
    let sum = summary::summarise(&s, &spec);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&sum).expect("the summary is JSON")
        );
    } else {
        print!("{}", summary::table(&sum));
        if report.best.is_none() && sum.trials.iter().any(|t| !t.status.finished()) {
            println!("other workers are still running trials of this sweep");
        }
    }
    Ok(0)
}

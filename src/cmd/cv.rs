//! `kiln cv`: k-fold cross-validation of a config, or the rest of one after a crash.

use kiln_trainer::select::cv::{self, CvRecord, Ending};
use kiln_trainer::select::sweep::TrialContext;

use super::{Usage, default_registry, registry_for};
use crate::cli::CvArgs;
use crate::signals::interrupt_flag;

pub fn run(args: CvArgs) -> anyhow::Result<u8> {
    let trial = args.trial.as_deref().map(TrialContext::open).transpose()?;
    let (mut record, registry) = match (&args.resume, &args.config) {
        (Some(id), _) => {
            let registry = default_registry(args.registry.clone());
            (CvRecord::load(&registry, id)?, registry)
        }
        (None, Some(path)) => {
            // The registry the config names, unless --registry or $KILN_REGISTRY.
            let named = kiln_trainer::config::load(path, &[])
                .map(|(f, _)| f.runtime.registry)
                .unwrap_or_else(|_| kiln_trainer::config::RuntimeSection::default().registry);
            let registry = registry_for(args.registry.clone(), &named);
            let id = trial.as_ref().map(|t| t.trial.run_id.clone());
            let member = trial.as_ref().map(TrialContext::membership);
            let record = cv::plan(path, &args.set, args.folds, args.repeats, member, id)?;
            (record, registry)
        }
        (None, None) => return Err(Usage("give a config file, or --resume CV_ID".into()).into()),
    };
    if record.status == kiln_trainer::run::Status::Completed {
        return Err(Usage(format!(
            "cross-validation {} has completed; `kiln runs show {}` shows it",
            record.id, record.id
        ))
        .into());
    }
    kiln_trainer::registry::Registry::new(&registry).ensure()?;
    let stop = interrupt_flag();
    if !args.quiet && !args.json {
        eprintln!(
            "cross-validation {}: {} folds{} of {}",
            record.id,
            record.folds,
            if record.repeats > 1 {
                format!(" x {} repeats", record.repeats)
            } else {
                String::new()
            },
            record.config_path
        );
    }
    // A cross-validated trial is not pruned (its folds' validations are not one curve).
    let ending = cv::run(&mut record, &registry, &stop, args.quiet || args.json, None)?;
    if ending == Ending::Interrupted {
        let flag = super::registry_flag(&registry);
        eprintln!(
            "interrupted; resume with: kiln cv --resume {}{flag}",
            record.id
        );
        return Ok(130);
    }
    if let Some(out) = &args.output {
        kiln_trainer::atomic::write(out, kiln_trainer::select::cv::page(&record).as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", kiln_trainer::shown::path(out)))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&record).expect("the record is JSON")
        );
    } else {
        println!("cv      {}", record.id);
        println!(
            "folds   {}{}",
            record.folds,
            if record.repeats > 1 {
                format!(" x {} repeats", record.repeats)
            } else {
                String::new()
            }
        );
        print!("{}", cv::summary_table(&record));
    }
    Ok(0)
}

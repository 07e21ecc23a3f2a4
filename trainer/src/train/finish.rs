//! Finishing a run: the final checkpoint of an interrupted one, or the final model's
//! evaluation on every split, its weights in the run's `final/` folder and, unless it was a
//! smoke run, a new version of the model in the registry.

use crate::data::Source as _;
use std::collections::BTreeMap;

use burn::module::Module as _;

use super::Outcome;
use super::fit::Ending;
use super::session::Session;
use crate::checkpoint;
use crate::error::TrainError;
use crate::layout;
use crate::metrics::Metrics;
use crate::registry::manifest::Kind;
use crate::registry::{Registry, store};
use crate::run::{self, Status};
use crate::tracking::Point;

pub(super) fn finish(mut s: Session, ending: Ending) -> Result<Outcome, TrainError> {
    let Some(rank0) = s.rank0.take() else {
        // Not rank 0: it helps with the final evaluation (or waits for rank 0's checkpoint);
        // the run's record and model version are rank 0's.
        match ending {
            Ending::Interrupted => {
                if let Some(g) = s.group {
                    g.barrier();
                }
                s.run.info.status = Status::Interrupted;
            }
            Ending::Finished => {
                s.run.info.metrics = final_metrics(&s)?;
                s.run.info.status = Status::Completed;
            }
        }
        return Ok(Outcome {
            run_dir: s.run.dir.clone(),
            info: s.run.info.clone(),
        });
    };
    if let Ending::Interrupted = ending {
        // The checkpoint the run resumes from, on disk before the other ranks go.
        rank0.saver.save(&s.state, s.last_metrics.clone())?;
        rank0.saver.finish()?;
        s.run.info.status = Status::Interrupted;
        run::write_json(&s.run.dir.join(layout::RUN), &s.run.info)?;
        s.run.guard.disarm();
        if let Some(g) = s.group {
            g.barrier();
        }
        return Ok(Outcome {
            run_dir: s.run.dir.clone(),
            info: s.run.info.clone(),
        });
    }

    // The other ranks take part in the final evaluation: it comes before waiting for the
    // checkpoint writer.
    s.run.info.metrics = final_metrics(&s)?;
    rank0.saver.finish()?;
    register(&mut s, rank0.tracker, rank0.manifest)?;
    Ok(Outcome {
        run_dir: s.run.dir.clone(),
        info: s.run.info.clone(),
    })
}

/// The final model's record: its metrics in TensorBoard, its weights in the run's `final/`
/// folder and (unless a smoke run) a new version of the model, then `run.json` completed.
fn register(
    s: &mut Session,
    mut tracker: crate::tracking::Tracker,
    base: crate::registry::manifest::Manifest,
) -> Result<(), TrainError> {
    let cfg = s.cfg;
    let (step, epoch) = (s.state.pos.step, s.state.pos.epoch);
    tracker.record(Point {
        split: "final",
        step: step as u64,
        epoch,
        values: finals_map(&s.run.info.metrics).into_iter().collect(),
    })?;
    // The final weights: the run's `final/` folder, then (unless smoke) a model version.
    let final_model = final_model(s);
    let final_dir = s.run.dir.join(layout::FINAL);
    let weights = crate::weights::to_bytes(&final_model).map_err(|source| {
        crate::state::StateError::Weights {
            at: final_dir.display().to_string(),
            file: layout::WEIGHTS,
            source,
        }
    })?;
    let info = &mut s.run.info;
    let mut manifest = base;
    manifest.created = checkpoint::now();
    manifest.step = step;
    manifest.epoch = epoch;
    manifest.lineage = info.lineage.clone();
    manifest.metrics = checkpoint::finite(finals_map(&info.metrics));
    manifest.monitor.value = s
        .state
        .pos
        .best
        .or_else(|| {
            info.metrics
                .get("valid")
                .or(info.metrics.get("test"))
                .and_then(|m| m.get(&cfg.monitor.metric))
        })
        .filter(|v| v.is_finite());
    manifest.kind = Kind::Final;
    let weights_file = vec![(layout::WEIGHTS.to_string(), weights)];
    let registry = &s.opts.registry;
    store::blocking(store::commit_dir(
        registry,
        &final_dir,
        &weights_file,
        manifest.clone(),
    ))?;
    // What drift checks compare new data with: the training rows' profile and the final
    // model's predictions on the validation split (table models).
    let pre: crate::data::Preprocessor = run::read_json(&s.run.dir.join(layout::PREPROCESS))?;
    let mut with_drift = false;
    if let Some(train) = s.train.table() {
        let valid = s.valid.table().filter(|v| v.n > 0);
        let model = final_model.valid();
        let predicted =
            valid.map(|v| crate::drift::predictions(&model, v, s.input, s.task.as_ref(), &s.base));
        if let Some(r) = crate::drift::reference(&pre, train, predicted) {
            run::write_json(&s.run.dir.join(layout::DRIFT), &r)?;
            with_drift = true;
        }
    }
    // A fold or a trial registers nothing: its group decides (a sweep registers its best).
    if !s.run.smoke && s.opts.member.is_none() {
        let files = version_files(&s.run.dir, weights_file, with_drift)?;
        let (v, _) = Registry::new(registry).register(&cfg.name, &files, manifest)?;
        info.version = Some(format!("{}/v{v}", cfg.name));
    }
    tracker.ended(Status::Completed)?;
    info.status = Status::Completed;
    info.finished =
        Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
    run::write_json(&s.run.dir.join(layout::RUN), info)?;
    s.run.guard.disarm();
    Ok(())
}

/// What a model version holds: the final weights and the run's config, architecture,
/// preprocessing and (table models) drift profile.
fn version_files(
    run_dir: &std::path::Path,
    mut files: Vec<(String, Vec<u8>)>,
    with_drift: bool,
) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
    let drift = with_drift.then_some(layout::DRIFT);
    let index = run_dir
        .join(layout::IMAGE_INDEX)
        .is_file()
        .then_some(layout::IMAGE_INDEX);
    for name in [layout::CONFIG, layout::MODEL_CONFIG, layout::PREPROCESS]
        .into_iter()
        .chain(drift)
        .chain(index)
    {
        let p = run_dir.join(name);
        files.push((name.to_string(), std::fs::read(&p).map_err(run::io(&p))?));
    }
    Ok(files)
}

/// Registers the final model of a completed run that registered none (a sweep's best trial)
/// as a new version of its model; its `run.json` then names the version. Returns `name/vN`.
pub fn register_run(
    registry: &std::path::Path,
    run_dir: &std::path::Path,
) -> Result<String, TrainError> {
    let mut info: run::RunInfo = run::read_json(&run_dir.join(layout::RUN))?;
    if let Some(v) = &info.version {
        return Ok(v.clone());
    }
    let final_dir = run_dir.join(layout::FINAL);
    let manifest = store::check_dir(registry, &final_dir).map_err(|damage| {
        crate::registry::RegistryError::Refused(format!(
            "{} is damaged: {}",
            final_dir.display(),
            damage
                .iter()
                .map(|d| format!("{}: {}", d.path, d.problem))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let weights = final_dir.join(layout::WEIGHTS);
    let files = vec![(
        layout::WEIGHTS.to_string(),
        std::fs::read(&weights).map_err(run::io(&weights))?,
    )];
    let files = version_files(run_dir, files, run_dir.join(layout::DRIFT).is_file())?;
    let (v, _) = Registry::new(registry).register(&info.name, &files, manifest)?;
    let version = format!("{}/v{v}", info.name);
    info.version = Some(version.clone());
    run::write_json(&run_dir.join(layout::RUN), &info)?;
    Ok(version)
}

/// The final model: the best by `train.monitor` when `train.restore_best` and there is one,
/// else the last.
fn final_model(s: &Session) -> kiln_models::Model {
    match (s.cfg.train.restore_best, &s.state.best) {
        (true, Some(best)) => best.clone(),
        _ => s.state.model().clone(),
    }
}

/// The final model's metrics on every non-empty split (sharded across ranks).
fn final_metrics(s: &Session) -> Result<BTreeMap<String, Metrics>, crate::data::DataError> {
    let model = final_model(s).valid();
    let mut out = BTreeMap::new();
    for (name, split) in [("train", &*s.train), ("valid", &s.valid), ("test", &s.test)] {
        let split = split.for_evaluation();
        if !split.is_empty() {
            let m = crate::eval::evaluate(
                s.group,
                &model,
                split.as_ref(),
                s.input,
                s.task.as_ref(),
                &s.base,
            )?;
            out.insert(name.into(), m);
        }
    }
    Ok(out)
}

/// Final metrics flattened to `<split>_<metric>`.
fn finals_map(metrics: &BTreeMap<String, Metrics>) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .flat_map(|(split, m)| {
            m.all_scalars()
                .into_iter()
                .map(move |(k, v)| (format!("{split}_{k}"), v))
        })
        .collect()
}

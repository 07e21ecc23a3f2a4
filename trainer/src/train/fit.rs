//! The training loop, top to bottom.

use std::sync::Arc;
use std::time::Instant;

use super::record::Window;
use super::session::Session;
use super::step::{self, Accumulation};
use crate::data::{DataError, Loader, Pass, Source, Uploaded, loader::epoch_order};
use crate::error::TrainError;

/// How the loop ended.
pub(super) enum Ending {
    /// The last step, or early stopping.
    Finished,
    /// Ctrl-C or SIGUSR1 (on any rank): stop after this step and save.
    Interrupted,
}

pub(super) fn fit(s: &mut Session) -> Result<Ending, TrainError> {
    let (cfg, plan) = (s.cfg, s.plan);
    let t = &cfg.train;
    let started = Instant::now();
    let mut window = Window::new();
    // A resumed run that had run out of patience stops at once.
    // A resumed run that had been pruned (then interrupted before finishing) stops too.
    let mut stop_early = s.out_of_patience() || s.run.info.pruned_at.is_some();
    let mut ending = Ending::Finished;
    let mut waited = std::time::Duration::ZERO;
    'epochs: while s.state.pos.epoch < plan.epochs && s.state.pos.step < plan.total_steps {
        let epoch_started = Instant::now();
        let mut batches = epoch_batches(s).peekable();
        let mut accum = Accumulation::new();
        while let Some((batch, wait)) = batches.next() {
            let batch = batch?;
            waited += wait;
            // One batch ahead: its copy to the device is queued before this step's kernels.
            batches.peek();
            let Some(grads) = step::micro_batch(s, batch, &mut accum, &mut window) else {
                continue; // more micro-batches to accumulate
            };
            let mut grads = grads;
            let stop = step::synchronise(s, &mut grads);
            let applied = step::apply(s, grads)?;
            s.state.pos.step += 1;
            let step = s.state.pos.step;
            s.progress.tick(step);
            let last = step >= plan.total_steps;
            if step.is_multiple_of(t.log_every) || last {
                s.log_train(&mut window, &applied)?;
            }
            if t.valid_every.is_some_and(|n| step.is_multiple_of(n)) && !s.valid.is_empty() {
                stop_early |= s.validate()?;
            }
            if stop {
                ending = Ending::Interrupted;
                break 'epochs;
            }
            if t.checkpoint_every.is_some_and(|n| step.is_multiple_of(n)) && !last {
                s.checkpoint()?;
            }
            if last || stop_early {
                break;
            }
        }
        if s.state.pos.batch >= plan.batches_per_epoch {
            s.end_epoch(epoch_started)?;
        }
        if t.valid_every.is_none() && !s.valid.is_empty() && !stop_early {
            stop_early |= s.validate()?;
        }
        s.checkpoint()?;
        if stop_early && s.run.info.pruned_at.is_some() {
            break;
        }
        if stop_early {
            s.progress.line(&format!(
                "early stopping: valid {} has not improved for {} validations",
                cfg.monitor.metric, s.state.pos.validations_without_improvement
            ));
            break;
        }
    }
    s.progress.finish();
    let info = &mut s.run.info;
    info.steps = s.state.pos.step;
    info.wall_seconds += started.elapsed().as_secs_f64();
    info.data_wait_seconds += waited.as_secs_f64();
    info.train_samples_per_second = s.state.pos.samples_seen as f64 / info.wall_seconds.max(1e-9);
    info.monitor = cfg.monitor.metric.clone();
    info.best_valid = s.state.pos.best;
    Ok(ending)
}

/// This rank's batches of the current epoch from the current position, on the device, each
/// with the time the loop waited for the loader to have it ready: the example order is a pure
/// function of (seed, epoch); with several ranks, each takes its slice of every global batch.
fn epoch_batches(
    s: &Session,
) -> impl Iterator<Item = (Result<Uploaded, DataError>, std::time::Duration)> + use<> {
    let (t, pos) = (&s.cfg.train, &s.state.pos);
    let data: Arc<dyn Source> = s.train.clone();
    let order = epoch_order(data.len(), s.cfg.seed, pos.epoch, true);
    let (workers, prefetch) = (s.cfg.runtime.workers, s.cfg.runtime.prefetch);
    let pass = Some(Pass {
        seed: s.cfg.seed,
        epoch: pos.epoch,
    });
    let loader = match s.world {
        1 => Loader::new(
            data,
            order,
            t.batch_size,
            pos.batch,
            workers,
            prefetch,
            pass,
        ),
        world => Loader::from_batches(
            data,
            crate::dist::shard(&order, t.batch_size, world, s.rank),
            pos.batch,
            workers,
            prefetch,
            pass,
        ),
    };
    let (input, device) = (s.input, s.device.clone());
    let mut loader = loader;
    std::iter::from_fn(move || {
        let asked = Instant::now();
        let batch = loader.next()?;
        Some((batch, asked.elapsed()))
    })
    .map(move |(b, wait)| (b.map(|b| b.upload(input, &device)), wait))
}

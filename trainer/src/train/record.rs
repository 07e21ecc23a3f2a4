//! What the loop records: the training loss and throughput at log points, validations (the
//! best weights, early stopping), epoch ends and checkpoints. Only rank 0 writes; every rank
//! takes part in the collectives (the loss sum, the sharded validation).

use std::time::{Duration, Instant};

use burn::module::Module as _;
use burn::tensor::Tensor;

use super::session::Session;
use super::step::Applied;
use crate::error::TrainError;
use crate::progress::StepReport;
use crate::tracking::Point;

/// The training loss and throughput since the last log point.
pub(super) struct Window {
    pub start: Instant,
    /// Examples over all ranks.
    pub samples: usize,
    /// Micro-batches.
    pub batches: usize,
    /// This rank's summed (weighted) batch losses, kept on the device.
    loss: Option<Tensor<1>>,
}

impl Window {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            samples: 0,
            batches: 0,
            loss: None,
        }
    }

    pub fn add_loss(&mut self, loss: Tensor<1>) {
        self.loss = Some(match self.loss.take() {
            Some(acc) => acc + loss,
            None => loss,
        });
    }
}

impl Session<'_> {
    /// A point for TensorBoard and `metrics.jsonl` (rank 0); a failed write (a full disk)
    /// stops training with the error.
    pub(super) fn record(&mut self, point: Point) -> Result<(), TrainError> {
        if let Some(r) = self.rank0.as_mut() {
            r.tracker.record(point)?;
        }
        Ok(())
    }

    /// The log point of step `pos.step`: the mean training loss over the window (summed over
    /// ranks), throughput, learning rate, gradient norm, loss scale, memory.
    pub(super) fn log_train(
        &mut self,
        window: &mut Window,
        applied: &Applied,
    ) -> Result<(), TrainError> {
        let step = self.state.pos.step;
        let mut mean_loss = window
            .loss
            .take()
            .map_or(0.0, |l| l.into_scalar::<f32>() as f64)
            / window.batches.max(1) as f64;
        if let Some(g) = self.group {
            let mut sum = vec![mean_loss as f32];
            g.all_reduce_sum(&mut sum, &|| format!("the loss sum of step {step}"));
            mean_loss = f64::from(sum[0]);
        }
        if !mean_loss.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: mean_loss,
            });
        }
        let elapsed = window.start.elapsed().as_secs_f64().max(1e-9);
        let sps = window.samples as f64 / elapsed;
        let steps_left = self.plan.total_steps - step;
        let eta = Duration::from_secs_f64(
            steps_left as f64 * elapsed / (window.batches.max(1) as f64 / self.plan.accum as f64),
        );
        self.progress.step(&StepReport {
            epoch: self.state.pos.epoch,
            step,
            loss: mean_loss,
            lr: applied.lr,
            samples_per_second: sps,
            eta,
        });
        let mut values = vec![
            ("loss".to_string(), mean_loss),
            ("lr".to_string(), applied.lr),
            ("samples_per_second".to_string(), sps),
        ];
        values.extend(applied.norm.map(|n| ("grad_norm".to_string(), n)));
        if let Some(s) = &self.state.pos.loss_scale {
            values.push(("loss_scale".into(), s.scale));
            values.push(("skipped_steps".into(), s.skipped as f64));
        }
        self.last_metrics.insert("train_loss".into(), mean_loss);
        values.extend(crate::tracking::resident_mib().map(|m| ("memory_mib".to_string(), m)));
        self.record(Point {
            split: "train",
            step: step as u64,
            epoch: self.state.pos.epoch,
            values,
        })?;
        *window = Window::new();
        Ok(())
    }

    /// Evaluates on the validation split (sharded across ranks), keeps the best weights by
    /// `train.monitor`, and returns whether early stopping has run out of patience.
    pub(super) fn validate(&mut self) -> Result<bool, TrainError> {
        let cfg = self.cfg;
        let m = crate::eval::evaluate(
            self.group,
            &self.state.model().valid(),
            &self.valid,
            self.input,
            self.task.as_ref(),
            &self.base,
        )?;
        let improved = super::patience::record_validation(
            &mut self.state.pos,
            m.get(&cfg.monitor.metric),
            &cfg.monitor,
            cfg.train.early_stopping,
        );
        self.last_metrics.retain(|k, _| !k.starts_with("valid_"));
        self.last_metrics
            .extend(m.scalars().iter().map(|(k, v)| (format!("valid_{k}"), *v)));
        if improved {
            // A snapshot of its own: a clone would share batch norm's running statistics with
            // the model that goes on training.
            self.state.best = Some(self.state.model().valid());
        }
        let pos = &self.state.pos;
        let shown: Vec<String> = m
            .scalars()
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        self.progress.line(&format!(
            "valid epoch {} step {}: {}{}",
            pos.epoch + usize::from(pos.batch > 0),
            pos.step,
            shown.join(" "),
            if improved { " (best)" } else { "" }
        ));
        let (step, epoch) = (pos.step as u64, pos.epoch);
        self.record(Point {
            split: "valid",
            step,
            epoch,
            values: m
                .all_scalars()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })?;
        // A sweep's trial: its pruner sees every validation. The resource is the validation's
        // number (the epoch, without `valid_every`), the same after a resume.
        let resource = match cfg.train.valid_every {
            Some(n) => step as usize / n,
            None => epoch,
        };
        let pruner = self.opts.member.as_ref().and_then(|m| m.pruner.as_ref());
        if let Some(p) = pruner
            && p.report(resource, step as usize, &m)
        {
            self.progress.line(&format!(
                "pruned at validation {resource}: the sweep's pruner stops this trial"
            ));
            self.run.info.pruned_at = Some(resource);
            return Ok(true);
        }
        Ok(self.out_of_patience())
    }

    /// Early stopping has seen `patience` validations without improvement.
    pub(super) fn out_of_patience(&self) -> bool {
        super::patience::out_of_patience(&self.state.pos, self.cfg.train.early_stopping)
    }

    /// Queues a checkpoint of the state for the background writer (rank 0).
    pub(super) fn checkpoint(&self) -> Result<(), TrainError> {
        if let Some(r) = &self.rank0 {
            r.saver.save(&self.state, self.last_metrics.clone())?;
        }
        Ok(())
    }

    /// The epoch's last batch is done: the position moves to the next epoch.
    pub(super) fn end_epoch(&mut self, started: Instant) -> Result<(), TrainError> {
        let pos = &mut self.state.pos;
        pos.epoch += 1;
        pos.batch = 0;
        self.run.info.epochs_done = pos.epoch;
        let (step, epoch) = (pos.step as u64, pos.epoch);
        self.record(Point {
            split: "train",
            step,
            epoch,
            values: vec![("epoch_seconds".into(), started.elapsed().as_secs_f64())],
        })
    }
}

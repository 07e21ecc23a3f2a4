//! The parts of an optimizer step: one micro-batch's forward and backward pass, the
//! accumulation of micro-batches, the data-parallel all-reduce, and the update (loss scaling,
//! clipping, the learning rate, the optimizer).

use std::sync::atomic::Ordering;

use burn::module::Module as _;
use burn::optim::{GradientsAccumulator, GradientsParams};
use kiln_models::Model;

use super::record::Window;
use super::session::{Plan, Session, rank_seed, step_seed};
use crate::data::Uploaded;
use crate::error::TrainError;
use crate::optim;

/// The micro-batches of one optimizer step: their gradients summed, each weighted by its share
/// of the step's examples.
pub(super) struct Accumulation {
    summed: GradientsAccumulator<Model>,
    /// Micro-batches done in this step.
    micro: usize,
    /// Loss weights of this step's micro-batches (all 1 when they are of one size).
    weights: Vec<f64>,
}

impl Accumulation {
    pub fn new() -> Self {
        Self {
            summed: GradientsAccumulator::new(),
            micro: 0,
            weights: Vec::new(),
        }
    }

    /// The loss weight of the micro-batch `batch` (of the epoch). A step's gradient is the mean
    /// of its micro-batches' mean losses, each weighted by `m_i * k / M` (`m_i` its examples,
    /// `k` the step's micro-batches, `M` their examples): 1 when all have one size, and for a
    /// short last micro-batch, the gradient of the mean over every example of the step, as one
    /// larger batch would give.
    fn weight(&mut self, plan: &Plan, batch: usize) -> f64 {
        if self.micro == 0 {
            let k = plan.accum.min(plan.batches_per_epoch - batch);
            let sizes: Vec<usize> = (batch..batch + k).map(|b| plan.batch_examples(b)).collect();
            let total: usize = sizes.iter().sum();
            self.weights = sizes
                .iter()
                .map(|&m| (m * k) as f64 / total as f64)
                .collect();
        }
        self.weights[self.micro]
    }

    /// Adds a micro-batch's gradients. When the step is complete (its last micro-batch, or the
    /// epoch's), returns their mean, unscaled from f16 loss scaling (`scale`).
    fn add(
        &mut self,
        model: &Model,
        grads: GradientsParams,
        plan: &Plan,
        next_batch: usize,
        scale: Option<f64>,
    ) -> Option<GradientsParams> {
        self.micro += 1;
        let mut grads = if plan.accum == 1 {
            grads
        } else {
            self.summed.accumulate(model, grads);
            if self.micro < plan.accum && next_batch < plan.batches_per_epoch {
                return None;
            }
            self.summed.grads()
        };
        let unscale = self.micro as f64 * scale.unwrap_or(1.0);
        if unscale != 1.0 {
            optim::scale_grads(model, &mut grads, 1.0 / unscale);
        }
        self.micro = 0;
        Some(grads)
    }
}

/// One micro-batch: forward, loss, backward. Returns the optimizer step's gradients when this
/// micro-batch completes it.
pub(super) fn micro_batch(
    s: &mut Session,
    b: Uploaded,
    accum: &mut Accumulation,
    window: &mut Window,
) -> Option<GradientsParams> {
    let plan = s.plan;
    let pos = &mut s.state.pos;
    // This batch's examples over all ranks; this rank's loss counts `len / m` of their mean, so
    // the summed gradient is the gradient of the global batch's mean loss.
    let m = plan.batch_examples(pos.batch);
    let share = b.len as f64 / m as f64;
    let weight = accum.weight(&plan, pos.batch);
    window.batches += 1;
    window.samples += m;
    pos.samples_seen += m as u64;
    pos.batch += 1;
    let (step, next_batch) = (pos.step, pos.batch);
    let scale = pos.loss_scale.as_ref().map(|l| l.scale);
    // A rank's share of the last, short batch may be empty: it only joins the all-reduce.
    let grads = match b.input {
        None => GradientsParams::new(),
        Some(x) => {
            let seed = step_seed(s.cfg.seed, step, accum.micro);
            s.device.seed(rank_seed(seed, s.rank));
            let model = s.state.model();
            let out = match s.cfg.precision.compute() {
                Some(half) => crate::amp::forward(model, x, half),
                None => model.forward(x),
            };
            let mut loss = s.task.loss(out, &b.y, &s.device);
            if share != 1.0 {
                loss = loss.mul_scalar(share);
            }
            window.add_loss(loss.clone().detach());
            if weight != 1.0 {
                loss = loss.mul_scalar(weight);
            }
            // f16: the loss is scaled before the backward pass so small gradients survive.
            if let Some(scale) = scale {
                loss = loss.mul_scalar(scale);
            }
            GradientsParams::from_grads(loss.backward(), model)
        }
    };
    accum.add(s.state.model(), grads, &plan, next_batch, scale)
}

/// Data-parallel: one all-reduce of the flat gradient (batch norm's running statistics
/// included), with the stop flag riding along so every rank stops (Ctrl-C, SIGUSR1) after the
/// same step. Returns whether to stop.
pub(super) fn synchronise(s: &mut Session, grads: &mut GradientsParams) -> bool {
    let stop = s.opts.stop.load(Ordering::SeqCst);
    let Some(g) = s.group else {
        return stop;
    };
    let flag = [f32::from(u8::from(stop))];
    if s.has_buffers {
        // burn keeps batch norm's newest running statistics aside, per thread, until the
        // module is synchronised; `valid()` does that (and the copy it returns is not needed),
        // so the statistics read and replaced below are the current ones.
        drop(s.state.model().valid());
    }
    let (mut flat, layout) = crate::dist::grads::flatten(s.state.model(), grads, &flag);
    let step = s.state.pos.step;
    g.all_reduce_sum(&mut flat, &|| {
        format!("the gradient all-reduce of step {}", step + 1)
    });
    *grads = crate::dist::grads::unflatten(s.state.model(), &flat, &layout, &s.base);
    if layout.has_buffers() {
        let world = s.world;
        s.state
            .map_model(|m| crate::dist::grads::average_buffers(m, &flat, &layout, world));
    }
    flat[layout.extra_start()] > 0.0
}

/// What an optimizer step used, for the log.
pub(super) struct Applied {
    pub lr: f64,
    /// The gradients' global norm before clipping, read back at log points only.
    pub norm: Option<f64>,
}

/// The update: skip it if f16 gradients overflowed (and lower the loss scale), clip the
/// gradients' global norm, and step the optimizer at the schedule's learning rate.
pub(super) fn apply(s: &mut Session, mut grads: GradientsParams) -> Result<Applied, TrainError> {
    let cfg = s.cfg;
    let t = &cfg.train;
    let step = s.state.pos.step;
    // f16: one host read per step, whether the gradients overflowed, as PyTorch's GradScaler.
    let finite = match s.state.pos.loss_scale {
        Some(_) => optim::grad_norm(s.state.model(), &grads).is_finite(),
        None => true,
    };
    let apply = match s.state.pos.loss_scale.as_mut() {
        Some(scale) => {
            let apply = scale.update(finite);
            if scale.stalled() {
                return Err(TrainError::Overflow {
                    steps: crate::amp::STALL_STEPS,
                    step,
                });
            }
            apply
        }
        None => true,
    };
    let logging = (step + 1).is_multiple_of(t.log_every) || step + 1 >= s.plan.total_steps;
    // Clipping stays on the device; the norm is read back only at log points.
    let model = s.state.model();
    let norm = match t.clip_grad_norm {
        Some(max) => optim::clip_grad_norm(model, &mut grads, max),
        None if logging => optim::grad_norm_tensor(model, &grads),
        None => None,
    };
    let norm = norm
        .filter(|_| logging)
        .map(|n| n.into_scalar::<f32>() as f64);
    let lr = optim::learning_rate(&cfg.schedule, cfg.optim.lr, step, s.plan.total_steps);
    if apply {
        s.state.step(lr, grads);
    }
    Ok(Applied { lr, norm })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(examples: usize, global_batch: usize, accum: usize) -> Plan {
        Plan {
            epochs: 1,
            total_steps: 100,
            batches_per_epoch: examples.div_ceil(global_batch),
            global_batch,
            accum,
            examples,
        }
    }

    #[test]
    fn micro_batches_of_one_size_weigh_one_and_a_short_one_weighs_its_examples() {
        // 100 examples in micro-batches of 16, 3 per step: steps of (16, 16, 16), (16, 16, 16)
        // and a last one of (4): all of weight 1.
        let p = plan(100, 16, 3);
        let mut a = Accumulation::new();
        for b in 0..6 {
            assert_eq!(a.weight(&p, b), 1.0);
            a.micro = (a.micro + 1) % 3;
        }
        assert_eq!(a.weight(&p, 6), 1.0);
        // 40 examples, batches of 16 accumulated 3 at a time: one step of (16, 16, 8), 40 in
        // all. Each micro-batch's mean loss counts m_i * 3 / 40, so the step's gradient, after
        // the mean over 3 micro-batches, is the mean over the 40 examples.
        let p = plan(40, 16, 3);
        let mut a = Accumulation::new();
        let w: Vec<f64> = (0..3)
            .map(|b| {
                let w = a.weight(&p, b);
                a.micro += 1;
                w
            })
            .collect();
        assert_eq!(w, vec![48.0 / 40.0, 48.0 / 40.0, 24.0 / 40.0]);
        // Every one of the 40 examples counts 1/40 of the step: its micro-batch's weight, over
        // the micro-batch's examples, over the 3 micro-batches averaged.
        for (wi, m) in w.iter().zip([16.0, 16.0, 8.0]) {
            assert!((wi / m / 3.0 - 1.0 / 40.0).abs() < 1e-15);
        }
    }
}

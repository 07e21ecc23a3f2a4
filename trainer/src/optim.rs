//! Optimizer, learning-rate schedule and gradient clipping by global norm.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Tensor;

use crate::config::{OptimName, RunConfig, ScheduleKind, ScheduleSection};

/// Builds the optimizer the config names.
pub fn optimizer(cfg: &RunConfig) -> ModuleOptimizer {
    let o = &cfg.optim;
    let wd = o.weight_decay;
    let decay = (wd > 0.0).then(|| WeightDecayConfig::new(wd as f32));
    match o.name {
        OptimName::Sgd => SgdConfig::new()
            .with_momentum((o.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(o.momentum)
                    .with_dampening(0.0)
                    .with_nesterov(o.nesterov)
            }))
            .with_weight_decay(decay)
            .init(),
        OptimName::Adam => AdamConfig::new()
            .with_beta_1(o.betas[0] as f32)
            .with_beta_2(o.betas[1] as f32)
            .with_epsilon(o.eps as f32)
            .with_weight_decay(decay)
            .init(),
        OptimName::Adamw => {
            let adamw = |wd: f64| {
                AdamWConfig::new()
                    .with_beta_1(o.betas[0] as f32)
                    .with_beta_2(o.betas[1] as f32)
                    .with_epsilon(o.eps as f32)
                    .with_weight_decay(wd as f32)
            };
            // A kind may restrict the decay to some parameters (each kind's file says which).
            match cfg.model.kind.decayed() {
                Some(pattern) if wd > 0.0 => adamw(0.0).init().with_group(
                    ParamGroup::from_regex(pattern).expect("the decay pattern is a valid regex"),
                    adamw(wd).build(),
                    None,
                ),
                _ => adamw(wd).init(),
            }
        }
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up to `lr`, then
/// the schedule. A pure function, so a resumed run gets the same rates.
pub fn learning_rate(s: &ScheduleSection, lr: f64, step: usize, total: usize) -> f64 {
    if step < s.warmup_steps {
        return lr * (step + 1) as f64 / s.warmup_steps as f64;
    }
    let after = step - s.warmup_steps;
    match s.kind {
        ScheduleKind::Constant => lr,
        ScheduleKind::Step => lr * s.gamma.powi((after / s.step_size) as i32),
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(s.warmup_steps).max(1);
            let progress = (after as f64 / span as f64).min(1.0);
            s.min_lr + (lr - s.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads
                .register::<D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Multiplies every gradient by a one-element tensor, on the device.
struct ScaleBy<'a> {
    grads: &'a mut GradientsParams,
    factor: Tensor<1>,
}

impl ModuleVisitor for ScaleBy<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let f = self.factor.clone().reshape([1; D]);
            self.grads.register::<D>(param.id, g * f);
        }
    }
}

/// Global L2 norm of all gradients of `module`, as a one-element tensor on the device (no
/// host sync); `None` when there are no gradients.
pub fn grad_norm_tensor<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut v = SquaredNorm { grads, sum: None };
    module.visit(&mut v);
    v.sum.map(Tensor::sqrt)
}

/// Global L2 norm of all gradients of `module` (one host sync).
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    grad_norm_tensor(module, grads).map_or(0.0, |n| n.into_scalar::<f32>() as f64)
}

/// Scales all gradients so that their global norm is at most `max_norm`, on the device: the
/// factor `min(1, max_norm / (norm + 1e-6))` is never read back, so clipping costs no host
/// sync. Returns the norm before clipping, still on the device.
pub fn clip_grad_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Option<Tensor<1>> {
    let norm = grad_norm_tensor(module, grads)?;
    let factor = norm
        .clone()
        .add_scalar(1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    module.visit(&mut ScaleBy { grads, factor });
    Some(norm)
}

/// Multiplies all gradients by `factor` (averaging accumulated micro-batches).
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    let mut s = Scale { grads, factor };
    module.visit(&mut s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay() {
        let mut s = ScheduleSection {
            warmup_steps: 10,
            ..Default::default()
        };
        assert!((learning_rate(&s, 1.0, 0, 100) - 0.1).abs() < 1e-12);
        assert_eq!(learning_rate(&s, 1.0, 9, 100), 1.0);
        assert_eq!(learning_rate(&s, 1.0, 50, 100), 1.0);
        s.kind = ScheduleKind::Step;
        s.step_size = 20;
        s.gamma = 0.5;
        assert_eq!(learning_rate(&s, 1.0, 29, 100), 1.0);
        assert_eq!(learning_rate(&s, 1.0, 30, 100), 0.5);
        assert_eq!(learning_rate(&s, 1.0, 50, 100), 0.25);
        s.kind = ScheduleKind::Cosine;
        s.min_lr = 0.1;
        assert!((learning_rate(&s, 1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 60, 110) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 110, 110) - 0.1).abs() < 1e-12);
    }
}

#[cfg(test)]
mod clip_tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::Device;

    #[test]
    fn clipping_scales_the_global_norm_down_and_leaves_small_ones() {
        let device = Device::flex().autodiff();
        let layer = LinearConfig::new(8, 4).init(&device);
        let x = Tensor::<2>::ones([16, 8], &device).mul_scalar(10.0);
        let grads = GradientsParams::from_grads(layer.forward(x).sum().backward(), &layer);
        let norm = grad_norm(&layer, &grads);
        assert!(norm > 1.0, "{norm}");
        let mut clipped = GradientsParams::from_grads(
            layer
                .forward(Tensor::<2>::ones([16, 8], &device).mul_scalar(10.0))
                .sum()
                .backward(),
            &layer,
        );
        let scalar = |t: Option<Tensor<1>>| t.unwrap().into_scalar::<f32>() as f64;
        let before = scalar(clip_grad_norm(&layer, &mut clipped, 0.5));
        assert!((before - norm).abs() < 1e-3 * norm);
        let after = grad_norm(&layer, &clipped);
        assert!((after - 0.5).abs() < 1e-4, "clipped to {after}");
        let untouched = scalar(clip_grad_norm(&layer, &mut clipped, 10.0));
        assert!(
            (untouched - after).abs() < 1e-6 && (grad_norm(&layer, &clipped) - after).abs() < 1e-6
        );
    }
}

#[cfg(test)]
mod decay_tests {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Int, Tensor, TensorData};
    use kiln_models::{Architecture, GptConfig, Model};

    use crate::config::{FileConfig, ModelKind, OptimName};

    /// Every float parameter by path, as host values.
    #[derive(Default)]
    struct Values {
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
    }

    impl ModuleVisitor for Values {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let v = p.val().into_data().try_to_vec::<f32>().unwrap();
            self.out.push((self.path.join("."), v));
        }
    }

    fn values(m: &Model) -> Vec<(String, Vec<f32>)> {
        let mut v = Values::default();
        m.visit(&mut v);
        v.out
    }

    /// GPT-2 and nanoGPT decay the weights of linear layers only. With zero gradients Adam's
    /// update is zero, so one step shows the decay alone: `w * (1 - lr * wd)` for those, no
    /// change for embeddings, layer norms and biases.
    #[test]
    fn adamw_decays_a_transformers_linear_weights_only() {
        let mut file = FileConfig::default();
        file.data.path = "corpus.txt".into();
        file.data.format = crate::config::DataFormat::Text;
        file.task = crate::config::Task::LanguageModel;
        file.model.kind = ModelKind::Gpt;
        file.optim.name = OptimName::Adamw;
        file.optim.weight_decay = Some(0.5);
        let cfg = crate::config::validate_with(file, "test", "test", false).unwrap();
        let device = Device::flex().autodiff();
        let gpt = GptConfig {
            vocab_size: 7,
            block_size: 4,
            n_layer: 1,
            n_head: 1,
            n_embd: 4,
            dropout: 0.0,
            bias: true,
            tie_weights: false,
        };
        let model = Model::Gpt(gpt.init(&device));
        let before = values(&model);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i32, 2, 3], [1, 3]), &device);
        let Model::Gpt(g) = &model else {
            unreachable!()
        };
        let loss = g.forward(ids).sum().mul_scalar(0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut optim = super::optimizer(&cfg);
        let after = values(&optim.step(0.1, model, grads));
        let mut decayed = Vec::new();
        for ((path, b), (_, a)) in before.iter().zip(&after) {
            let factor = if b.iter().all(|v| *v == 0.0) {
                continue; // biases start at zero: no change to see
            } else {
                a[0] / b[0]
            };
            if (factor - 0.95).abs() < 1e-6 {
                decayed.push(path.clone());
            } else {
                assert_eq!(a, b, "{path} changed but is not a linear weight");
            }
        }
        decayed.sort();
        let leaf = |p: &String| p.split('.').rev().nth(1).unwrap().to_string();
        let mut kinds: Vec<String> = decayed.iter().map(leaf).collect();
        kinds.sort();
        assert_eq!(kinds, ["fc", "head", "proj", "proj", "qkv"], "{decayed:?}");
    }
}

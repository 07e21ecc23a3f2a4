//! Losses, written with tensor ops so they differentiate: cross-entropy with label smoothing,
//! binary cross-entropy on logits, MSE and Huber.

use burn::tensor::{Device, Tensor, TensorData, activation};

use crate::config::LossKind;
use crate::data::Targets;

/// The loss function of a run, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    pub kind: LossKind,
    pub classes: usize,
    pub label_smoothing: f64,
    pub huber_delta: f64,
}

impl Loss {
    /// Mean loss of `out` (`[batch, outputs]`) against `y`.
    pub fn forward(&self, out: Tensor<2>, y: &Targets, device: &Device) -> Tensor<1> {
        let [batch, width] = out.dims();
        match (self.kind, y) {
            (LossKind::CrossEntropy, Targets::Classes(classes)) => {
                let eps = self.label_smoothing as f32;
                let off = eps / width as f32;
                let mut t = vec![off; batch * width];
                for (i, &c) in classes.iter().enumerate() {
                    t[i * width + c as usize] += 1.0 - eps;
                }
                let target = Tensor::<2>::from_data(TensorData::new(t, [batch, width]), device);
                (target * activation::log_softmax(out, 1))
                    .sum_dim(1)
                    .mean()
                    .neg()
            }
            (LossKind::Bce, Targets::Classes(classes)) => {
                let t: Vec<f32> = classes.iter().map(|&c| c as f32).collect();
                let y = Tensor::<2>::from_data(TensorData::new(t, [batch, 1]), device);
                // max(x, 0) - x*y + log(1 + exp(-|x|)): stable for any logit.
                let x = out;
                (x.clone().clamp_min(0.0) - x.clone() * y + x.abs().neg().exp().log1p()).mean()
            }
            (LossKind::Mse | LossKind::Huber, Targets::Values(values)) => {
                let y = Tensor::<2>::from_data(TensorData::new(values.clone(), [batch, 1]), device);
                let diff = out - y;
                if self.kind == LossKind::Mse {
                    diff.square().mean()
                } else {
                    // 0.5 q^2 + delta (|d| - q) with q = min(|d|, delta): quadratic inside the
                    // threshold, linear outside, no masking needed.
                    let delta = self.huber_delta;
                    let a = diff.abs();
                    let q = a.clone().clamp_max(delta);
                    (q.clone().square().mul_scalar(0.5) + (a - q).mul_scalar(delta)).mean()
                }
            }
            (kind, _) => unreachable!("validation pairs {kind:?} with matching targets"),
        }
    }

    /// Class probabilities (`[batch, classes]`) or predictions (`[batch, 1]`) from model output.
    pub fn predict(&self, out: Tensor<2>) -> Tensor<2> {
        match self.kind {
            LossKind::CrossEntropy => activation::softmax(out, 1),
            LossKind::Bce => {
                let p = activation::sigmoid(out);
                Tensor::cat(vec![p.clone().neg().add_scalar(1.0), p], 1)
            }
            LossKind::Mse | LossKind::Huber => out,
        }
    }

    /// Model outputs for this loss.
    pub fn outputs(&self) -> usize {
        match self.kind {
            LossKind::CrossEntropy => self.classes,
            LossKind::Bce | LossKind::Mse | LossKind::Huber => 1,
        }
    }
}

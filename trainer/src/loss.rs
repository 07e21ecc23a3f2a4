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

    /// Columns of [`Loss::predict`]: class probabilities (two for a binary classifier) or one
    /// value.
    pub fn predicted_width(&self) -> usize {
        match self.kind {
            LossKind::CrossEntropy => self.classes,
            LossKind::Bce => 2,
            LossKind::Mse | LossKind::Huber => 1,
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

#[cfg(test)]
mod tests {
    //! Reference values from PyTorch 2.15 (`torch.nn.functional`):
    //!
    //! ```python
    //! logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 1.5, 0.0], [1.0, 1.0, -2.0]])
    //! target = torch.tensor([0, 2, 1, 1])
    //! F.cross_entropy(logits, target)                       # 0.5428612232208252
    //! F.cross_entropy(logits, target, label_smoothing=0.1)  # 0.6578612327575684
    //! x = torch.tensor([[3.0], [-2.0], [0.5], [-0.1], [40.0], [-40.0]])
    //! y = torch.tensor([[1.0], [0.0], [0.0], [1.0], [1.0], [1.0]])
    //! F.binary_cross_entropy_with_logits(x, y)              # 6.982330799102783
    //! p = torch.tensor([[0.5], [2.0], [-1.0], [3.5]]); t = torch.tensor([[0.0], [0.0], [-1.2], [1.0]])
    //! F.mse_loss(p, t)                                      # 2.634999990463257
    //! F.huber_loss(p, t, delta=1.0)                         # 0.9112499952316284
    //! F.huber_loss(p, t, delta=0.5)                         # 0.5362499952316284
    //! ```
    use super::*;

    fn value(loss: Loss, out: Vec<f32>, width: usize, y: Targets) -> f64 {
        let device = Device::flex();
        let n = out.len() / width;
        let out = Tensor::<2>::from_data(TensorData::new(out, [n, width]), &device);
        loss.forward(out, &y, &device).into_scalar::<f32>() as f64
    }

    fn loss(kind: LossKind) -> Loss {
        Loss {
            kind,
            classes: 3,
            label_smoothing: 0.0,
            huber_delta: 1.0,
        }
    }

    #[test]
    fn cross_entropy_matches_pytorch() {
        let logits = vec![
            2.0, -1.0, 0.5, 0.1, 0.2, 0.3, -3.0, 1.5, 0.0, 1.0, 1.0, -2.0,
        ];
        let y = Targets::Classes(vec![0, 2, 1, 1]);
        let ce = value(loss(LossKind::CrossEntropy), logits.clone(), 3, y.clone());
        assert!((ce - 0.5428612232208252).abs() < 1e-6, "{ce}");
        let smoothed = Loss {
            label_smoothing: 0.1,
            ..loss(LossKind::CrossEntropy)
        };
        let ls = value(smoothed, logits, 3, y);
        assert!((ls - 0.6578612327575684).abs() < 1e-6, "{ls}");
    }

    #[test]
    fn bce_on_logits_matches_pytorch_even_for_large_logits() {
        let x = vec![3.0, -2.0, 0.5, -0.1, 40.0, -40.0];
        let y = Targets::Classes(vec![1, 0, 0, 1, 1, 1]);
        let bce = value(
            Loss {
                classes: 2,
                ..loss(LossKind::Bce)
            },
            x,
            1,
            y,
        );
        assert!((bce - 6.982330799102783).abs() < 1e-5, "{bce}");
    }

    #[test]
    fn mse_and_huber_match_pytorch() {
        let p = vec![0.5, 2.0, -1.0, 3.5];
        let t = Targets::Values(vec![0.0, 0.0, -1.2, 1.0]);
        let mse = value(loss(LossKind::Mse), p.clone(), 1, t.clone());
        assert!((mse - 2.634999990463257).abs() < 1e-6, "{mse}");
        let h1 = value(loss(LossKind::Huber), p.clone(), 1, t.clone());
        assert!((h1 - 0.9112499952316284).abs() < 1e-6, "{h1}");
        let h05 = value(
            Loss {
                huber_delta: 0.5,
                ..loss(LossKind::Huber)
            },
            p,
            1,
            t,
        );
        assert!((h05 - 0.5362499952316284).abs() < 1e-6, "{h05}");
    }
}

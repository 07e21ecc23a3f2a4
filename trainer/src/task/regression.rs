//! Regression: one value per example, learned in standardised units (`(y - mean) / std`) with
//! MSE or Huber; MSE, RMSE, MAE and R² reported in the target's own units.

use burn::tensor::{Device, Tensor, TensorData};
use kiln_models::Output;
use kiln_models::onnx::Builder;

use super::{Prediction, Task, host};
use crate::data::Targets;
use crate::metrics::{self, Metrics};

#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    /// Huber's threshold (standardised units); `None` for MSE.
    pub huber: Option<f64>,
    /// The target's standardisation: the model predicts `(y - mean) / std`.
    pub mean: f64,
    pub std: f64,
}

impl Regression {
    /// A prediction in the target's own units.
    fn decode(&self, v: f32) -> f64 {
        v as f64 * self.std + self.mean
    }

    fn values(y: &Targets) -> &[f32] {
        match y {
            Targets::Values(v) => v,
            Targets::Classes(_) | Targets::Tokens { .. } => {
                unreachable!("value targets come from numeric labels")
            }
        }
    }
}

impl Task for Regression {
    fn outputs(&self) -> usize {
        1
    }

    /// `out`: standardised predictions `[batch, 1]`.
    fn loss(&self, out: Output, y: &Targets, device: &Device) -> Tensor<1> {
        let out = out.per_example();
        let [batch, _] = out.dims();
        let values = Self::values(y).to_vec();
        let y = Tensor::<2>::from_data(TensorData::new(values, [batch, 1]), device);
        let diff = out - y;
        match self.huber {
            None => diff.square().mean(),
            Some(delta) => {
                // 0.5 q^2 + delta (|d| - q) with q = min(|d|, delta): quadratic inside the
                // threshold, linear outside, no masking needed.
                let a = diff.abs();
                let q = a.clone().clamp_max(delta);
                (q.clone().square().mul_scalar(0.5) + (a - q).mul_scalar(delta)).mean()
            }
        }
    }

    /// The prediction and the target, standardised.
    fn row_width(&self) -> usize {
        2
    }

    fn eval_rows(&self, out: Output, y: &Targets) -> Vec<f32> {
        let pred = host(out.per_example());
        pred.iter()
            .zip(Self::values(y))
            .flat_map(|(&p, &t)| [p, t])
            .collect()
    }

    fn metrics(&self, rows: &[f32], loss: f64) -> Metrics {
        let pred: Vec<f64> = rows.chunks(2).map(|r| self.decode(r[0])).collect();
        let truth: Vec<f64> = rows.chunks(2).map(|r| self.decode(r[1])).collect();
        Metrics::Regression(metrics::regression(&pred, &truth, loss))
    }

    fn class_names(&self) -> Option<&[String]> {
        None
    }

    fn predictions(&self, out: Output) -> Vec<Prediction> {
        host(out.per_example())
            .into_iter()
            .map(|v| Prediction {
                prediction: serde_json::json!(self.decode(v)),
                probabilities: Vec::new(),
            })
            .collect()
    }

    /// `out * std + mean`.
    fn explained(&self, out: Output) -> Option<Tensor<2>> {
        Some(
            out.per_example()
                .mul_scalar(self.std as f32)
                .add_scalar(self.mean as f32),
        )
    }

    fn output_names(&self) -> Vec<&'static str> {
        vec!["prediction"]
    }

    fn output_values(&self, out: Output) -> Vec<Vec<f32>> {
        vec![
            host(out.per_example())
                .into_iter()
                .map(|v| self.decode(v) as f32)
                .collect(),
        ]
    }

    /// The prediction in the target's units: `out * std + mean`.
    fn lower_outputs(&self, g: &mut Builder, out: &str) -> Vec<(&'static str, usize)> {
        let s = g.constant("target_std", &[], &[self.std as f32]);
        let m = g.constant("target_mean", &[], &[self.mean as f32]);
        let scaled = g.node("Mul", &[out, &s], vec![], None);
        g.node("Add", &[&scaled, &m], vec![], Some("prediction"));
        vec![("prediction", 1)]
    }

    fn parity_units(&self, values: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        values
            .into_iter()
            .map(|o| {
                o.into_iter()
                    .map(|p| ((p as f64 - self.mean) / self.std) as f32)
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Reference values from PyTorch 2.15 (`torch.nn.functional`):
    //!
    //! ```python
    //! p = torch.tensor([[0.5], [2.0], [-1.0], [3.5]]); t = torch.tensor([[0.0], [0.0], [-1.2], [1.0]])
    //! F.mse_loss(p, t)                                      # 2.634999990463257
    //! F.huber_loss(p, t, delta=1.0)                         # 0.9112499952316284
    //! F.huber_loss(p, t, delta=0.5)                         # 0.5362499952316284
    //! ```
    use super::*;

    fn loss(huber: Option<f64>) -> f64 {
        let device = Device::flex();
        let t = Regression {
            huber,
            mean: 0.0,
            std: 1.0,
        };
        let out = Output::PerExample(Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, 2.0, -1.0, 3.5], [4, 1]),
            &device,
        ));
        let y = Targets::Values(vec![0.0, 0.0, -1.2, 1.0]);
        t.loss(out, &y, &device).into_scalar::<f32>() as f64
    }

    #[test]
    fn mse_and_huber_match_pytorch() {
        let mse = loss(None);
        assert!((mse - 2.634999990463257).abs() < 1e-6, "{mse}");
        let h1 = loss(Some(1.0));
        assert!((h1 - 0.9112499952316284).abs() < 1e-6, "{h1}");
        let h05 = loss(Some(0.5));
        assert!((h05 - 0.5362499952316284).abs() < 1e-6, "{h05}");
    }

    #[test]
    fn metrics_are_in_the_target_units() {
        let t = Regression {
            huber: None,
            mean: 100.0,
            std: 10.0,
        };
        // Predictions 1 and -1 (110, 90) against targets 0 and 0 (100, 100).
        let Metrics::Regression(m) = t.metrics(&[1.0, 0.0, -1.0, 0.0], 1.0) else {
            panic!("regression metrics")
        };
        assert_eq!((m.mae, m.rmse, m.count), (10.0, 10.0, 2));
        let units = t.parity_units(vec![vec![110.0, 90.0]]);
        assert_eq!(units, vec![vec![1.0, -1.0]]);
    }
}

//! Classification: one class per example. Cross-entropy with label smoothing over `classes`
//! logits, or binary cross-entropy over one logit; accuracy, precision, recall, F1, ROC-AUC and
//! the confusion matrix.

use burn::tensor::{Device, Tensor, TensorData, activation};
use kiln_models::Output;
use kiln_models::onnx::{Builder, attr_int};

use super::{Prediction, Task, host};
use crate::data::Targets;
use crate::metrics::{self, Metrics};

#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// One logit and binary cross-entropy (two classes), rather than a logit per class.
    pub binary: bool,
    /// Class names in index order.
    pub names: Vec<String>,
    /// Label smoothing of cross-entropy, in `[0, 1)`.
    pub label_smoothing: f64,
}

impl Classification {
    fn classes(&self) -> usize {
        self.names.len()
    }

    /// Class probabilities `[batch, classes]` (two for a binary classifier).
    fn probabilities(&self, logits: Tensor<2>) -> Tensor<2> {
        if self.binary {
            let p = activation::sigmoid(logits);
            Tensor::cat(vec![p.clone().neg().add_scalar(1.0), p], 1)
        } else {
            activation::softmax(logits, 1)
        }
    }

    fn labels(y: &Targets) -> &[u32] {
        match y {
            Targets::Classes(c) => c,
            Targets::Values(_) | Targets::Tokens { .. } => {
                unreachable!("class targets come from class labels")
            }
        }
    }
}

impl Task for Classification {
    fn outputs(&self) -> usize {
        if self.binary { 1 } else { self.classes() }
    }

    /// `out`: logits `[batch, outputs]`.
    fn loss(&self, out: Output, y: &Targets, device: &Device) -> Tensor<1> {
        let out = out.per_example();
        let [batch, width] = out.dims();
        let classes = Self::labels(y);
        if self.binary {
            let t: Vec<f32> = classes.iter().map(|&c| c as f32).collect();
            let y = Tensor::<2>::from_data(TensorData::new(t, [batch, 1]), device);
            // max(x, 0) - x*y + log(1 + exp(-|x|)): stable for any logit.
            let x = out;
            (x.clone().clamp_min(0.0) - x.clone() * y + x.abs().neg().exp().log1p()).mean()
        } else {
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
    }

    /// Each example's class probabilities, then its class.
    fn row_width(&self) -> usize {
        self.classes() + 1
    }

    fn eval_rows(&self, out: Output, y: &Targets) -> Vec<f32> {
        let probs = host(self.probabilities(out.per_example()));
        let c = self.classes();
        let labels = Self::labels(y);
        let mut rows = Vec::with_capacity(labels.len() * (c + 1));
        for (p, &label) in probs.chunks(c).zip(labels) {
            rows.extend_from_slice(p);
            rows.push(label as f32);
        }
        rows
    }

    fn metrics(&self, rows: &[f32], loss: f64) -> Metrics {
        let w = self.row_width();
        let mut probs = Vec::with_capacity(rows.len() / w * (w - 1));
        let mut labels = Vec::with_capacity(rows.len() / w);
        for row in rows.chunks(w) {
            probs.extend_from_slice(&row[..w - 1]);
            labels.push(row[w - 1] as u32);
        }
        Metrics::Classification(metrics::classification(&probs, &labels, &self.names, loss))
    }

    fn class_names(&self) -> Option<&[String]> {
        Some(&self.names)
    }

    /// The most probable class (the last of equals) and every class's probability.
    fn predictions(&self, out: Output) -> Vec<Prediction> {
        let probs = host(self.probabilities(out.per_example()));
        probs
            .chunks(self.classes())
            .map(|p| {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(k, _)| k);
                Prediction {
                    prediction: self.names[best].clone().into(),
                    probabilities: p.to_vec(),
                }
            })
            .collect()
    }

    fn explained(&self, out: Output) -> Option<Tensor<2>> {
        Some(self.probabilities(out.per_example()))
    }

    fn output_names(&self) -> Vec<&'static str> {
        vec!["logits", "probabilities"]
    }

    fn output_values(&self, out: Output) -> Vec<Vec<f32>> {
        let logits = out.per_example();
        let probs = self.probabilities(logits.clone());
        vec![host(logits), host(probs)]
    }

    fn lower_outputs(&self, g: &mut Builder, out: &str) -> Vec<(&'static str, usize)> {
        let logits = g.node("Identity", &[out], vec![], Some("logits"));
        if self.binary {
            let p = g.node("Sigmoid", &[&logits], vec![], None);
            let one = g.constant("one", &[], &[1.0]);
            let q = g.node("Sub", &[&one, &p], vec![], None);
            g.node(
                "Concat",
                &[&q, &p],
                vec![attr_int("axis", 1)],
                Some("probabilities"),
            );
            vec![("logits", 1), ("probabilities", 2)]
        } else {
            g.softmax(&logits, "probabilities");
            vec![
                ("logits", self.classes()),
                ("probabilities", self.classes()),
            ]
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
    //! ```
    use super::*;

    fn task(binary: bool, label_smoothing: f64) -> Classification {
        let n = if binary { 2 } else { 3 };
        Classification {
            binary,
            names: (0..n).map(|i| format!("c{i}")).collect(),
            label_smoothing,
        }
    }

    fn output(values: Vec<f32>, width: usize, device: &Device) -> Output {
        let n = values.len() / width;
        Output::PerExample(Tensor::<2>::from_data(
            TensorData::new(values, [n, width]),
            device,
        ))
    }

    fn loss(t: &Classification, out: Vec<f32>, width: usize, y: Targets) -> f64 {
        let device = Device::flex();
        t.loss(output(out, width, &device), &y, &device)
            .into_scalar::<f32>() as f64
    }

    const LOGITS: [f32; 12] = [
        2.0, -1.0, 0.5, 0.1, 0.2, 0.3, -3.0, 1.5, 0.0, 1.0, 1.0, -2.0,
    ];

    #[test]
    fn cross_entropy_matches_pytorch() {
        let y = Targets::Classes(vec![0, 2, 1, 1]);
        let ce = loss(&task(false, 0.0), LOGITS.to_vec(), 3, y.clone());
        assert!((ce - 0.5428612232208252).abs() < 1e-6, "{ce}");
        let ls = loss(&task(false, 0.1), LOGITS.to_vec(), 3, y);
        assert!((ls - 0.6578612327575684).abs() < 1e-6, "{ls}");
    }

    #[test]
    fn bce_on_logits_matches_pytorch_even_for_large_logits() {
        let x = vec![3.0, -2.0, 0.5, -0.1, 40.0, -40.0];
        let y = Targets::Classes(vec![1, 0, 0, 1, 1, 1]);
        let bce = loss(&task(true, 0.0), x, 1, y);
        assert!((bce - 6.982330799102783).abs() < 1e-5, "{bce}");
    }

    #[test]
    fn evaluation_rows_carry_probabilities_and_labels_to_the_metrics() {
        let device = Device::flex();
        let t = task(false, 0.0);
        let y = Targets::Classes(vec![0, 2, 1, 1]);
        let rows = t.eval_rows(output(LOGITS.to_vec(), 3, &device), &y);
        assert_eq!(rows.len(), 4 * t.row_width());
        for row in rows.chunks(4) {
            let sum: f32 = row[..3].iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "{row:?}");
        }
        let Metrics::Classification(m) = t.metrics(&rows, 0.5) else {
            panic!("classification metrics")
        };
        // Predicted: 0, 2, 1, 0 (a tie between classes 0 and 1 goes to the first).
        assert_eq!(m.accuracy, 0.75);
        assert_eq!(
            m.confusion_matrix,
            vec![vec![1, 0, 0], vec![1, 1, 0], vec![0, 0, 1]]
        );
        assert_eq!(m.loss, 0.5);
        let p = t.predictions(output(LOGITS.to_vec(), 3, &device));
        assert_eq!(p[1].prediction, serde_json::json!("c2"));
        assert_eq!(p[1].probabilities.len(), 3);
    }

    #[test]
    fn a_binary_classifier_reports_two_probabilities() {
        let device = Device::flex();
        let t = task(true, 0.0);
        assert_eq!(t.outputs(), 1);
        let rows = t.eval_rows(
            output(vec![0.0, 2.0], 1, &device),
            &Targets::Classes(vec![0, 1]),
        );
        assert_eq!(rows.len(), 6);
        assert!((rows[0] - 0.5).abs() < 1e-6 && (rows[1] - 0.5).abs() < 1e-6);
        assert!((rows[3] + rows[4] - 1.0).abs() < 1e-6 && rows[4] > 0.88);
        assert_eq!((rows[2], rows[5]), (0.0, 1.0));
    }
}

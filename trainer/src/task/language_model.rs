//! Language modelling: the next token of every position. Cross-entropy over the vocabulary;
//! the metrics are the mean loss per token (nats), perplexity (`exp(loss)`), bits per token
//! (`loss / ln 2`; bits per character for a character-level model) and next-token accuracy.

use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use kiln_models::Output;
use kiln_models::onnx::Builder;

use super::{Prediction, Task, host};
use crate::data::Targets;
use crate::metrics::{LanguageModelMetrics, Metrics};

#[derive(Debug, Clone, PartialEq)]
pub struct LanguageModel {
    /// Tokens in the vocabulary.
    pub vocab: usize,
}

/// The next-token targets of a batch as `[batch, positions, 1]` ids on `device`.
fn targets(y: &Targets, device: &Device) -> (Tensor<3, Int>, usize) {
    let Targets::Tokens { ids, len } = y else {
        unreachable!("a language model's targets are next tokens")
    };
    let batch = ids.len() / len;
    let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    (
        Tensor::from_data(TensorData::new(ids, [batch, *len, 1]), device),
        *len,
    )
}

impl LanguageModel {
    /// Per position: minus the log-probability of the target, `[batch, positions, 1]`.
    fn nll(logits: Tensor<3>, y: &Targets) -> Tensor<3> {
        let (t, _) = targets(y, &logits.device());
        activation::log_softmax(logits, 2).gather(2, t).neg()
    }
}

impl Task for LanguageModel {
    fn outputs(&self) -> usize {
        self.vocab
    }

    /// `out`: logits `[batch, positions, vocab]`; the mean over every position of every
    /// example.
    fn loss(&self, out: Output, y: &Targets, _device: &Device) -> Tensor<1> {
        Self::nll(out.per_position(), y).mean()
    }

    /// Per example: the summed loss of its positions, its correct next tokens, its positions.
    fn row_width(&self) -> usize {
        3
    }

    fn eval_rows(&self, out: Output, y: &Targets) -> Vec<f32> {
        let logits = out.per_position();
        let device = logits.device();
        let [batch, len, _] = logits.dims();
        let (t, _) = targets(y, &device);
        let nll = Self::nll(logits.clone(), y).sum_dim(1).reshape([batch, 1]);
        let correct = logits
            .argmax(2)
            .equal(t)
            .int()
            .sum_dim(1)
            .float()
            .reshape([batch, 1]);
        let (nll, correct) = (host(nll), host(correct));
        nll.iter()
            .zip(&correct)
            .flat_map(|(&l, &c)| [l, c, len as f32])
            .collect()
    }

    fn metrics(&self, rows: &[f32], _loss: f64) -> Metrics {
        let (mut nll, mut correct, mut tokens) = (0.0f64, 0.0f64, 0.0f64);
        for r in rows.chunks(3) {
            nll += f64::from(r[0]);
            correct += f64::from(r[1]);
            tokens += f64::from(r[2]);
        }
        let loss = nll / tokens.max(1.0);
        Metrics::LanguageModel(LanguageModelMetrics {
            loss,
            perplexity: loss.exp(),
            bits_per_token: loss / std::f64::consts::LN_2,
            accuracy: correct / tokens.max(1.0),
            tokens: tokens as usize,
        })
    }

    fn class_names(&self) -> Option<&[String]> {
        None
    }

    /// `kiln predict` refuses a language model before it gets here (`kiln generate` writes
    /// text); this is each example's most likely next token after its last position.
    fn predictions(&self, out: Output) -> Vec<Prediction> {
        let logits = out.per_position();
        let [batch, len, vocab] = logits.dims();
        let last = host(logits.narrow(1, len - 1, 1).reshape([batch, vocab]));
        last.chunks(vocab)
            .map(|p| {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(k, _)| k);
                Prediction {
                    prediction: best.into(),
                    probabilities: Vec::new(),
                }
            })
            .collect()
    }

    fn output_names(&self) -> Vec<&'static str> {
        vec!["logits"]
    }

    /// Logits `[batch, positions, vocab]`, row-major.
    fn output_values(&self, out: Output) -> Vec<Vec<f32>> {
        let logits = out.per_position();
        let [b, t, v] = logits.dims();
        vec![host(logits.reshape([b * t, v]))]
    }

    fn lower_outputs(&self, g: &mut Builder, out: &str) -> Vec<(&'static str, usize)> {
        g.node("Identity", &[out], vec![], Some("logits"));
        vec![("logits", self.vocab)]
    }
}

#[cfg(test)]
mod tests {
    //! Reference values from PyTorch 2.15:
    //!
    //! ```python
    //! logits = torch.tensor([[[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], [[-3.0, 1.5, 0.0], [1.0, 1.0, -2.0]]])
    //! target = torch.tensor([[0, 2], [1, 1]])
    //! F.cross_entropy(logits.view(-1, 3), target.view(-1))  # 0.5428612232208252
    //! ```
    use super::*;

    #[test]
    fn loss_and_metrics_match_pytorch() {
        let device = Device::flex();
        let logits = Tensor::<3>::from_data(
            TensorData::new(
                vec![
                    2.0f32, -1.0, 0.5, 0.1, 0.2, 0.3, -3.0, 1.5, 0.0, 1.0, 1.0, -2.0,
                ],
                [2, 2, 3],
            ),
            &device,
        );
        let y = Targets::Tokens {
            ids: vec![0, 2, 1, 1],
            len: 2,
        };
        let task = LanguageModel { vocab: 3 };
        let out = Output::PerPosition(logits);
        let loss = task.loss(out.clone(), &y, &device).into_scalar::<f32>() as f64;
        assert!((loss - 0.542_861_223_220_825_2).abs() < 1e-6, "{loss}");
        let rows = task.eval_rows(out, &y);
        let Metrics::LanguageModel(m) = task.metrics(&rows, f64::NAN) else {
            panic!("language model metrics")
        };
        assert!((m.loss - loss).abs() < 1e-6);
        assert!((m.perplexity - loss.exp()).abs() < 1e-6);
        assert!((m.bits_per_token - loss / std::f64::consts::LN_2).abs() < 1e-6);
        // Arg-max per position: 0 (right), 2 (right), 1 (right), 0 (the first of equals: wrong).
        assert_eq!((m.accuracy, m.tokens), (0.75, 4));
    }
}

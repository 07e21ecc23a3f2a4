//! The metrics people report: accuracy, precision, recall, F1, ROC-AUC, confusion matrix for
//! classification; MSE, RMSE, MAE, R² for regression. Plain functions over host vectors.

use serde::{Deserialize, Serialize};

/// Per-class scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub name: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub loss: f64,
    pub accuracy: f64,
    /// Macro averages over classes.
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Binary: ROC-AUC of the positive class (index 1). Multiclass: macro one-vs-rest ROC-AUC.
    /// `None` when a class is absent, which leaves it undefined.
    pub auc: Option<f64>,
    pub per_class: Vec<ClassScores>,
    /// `confusion_matrix[true][predicted]`.
    pub confusion_matrix: Vec<Vec<usize>>,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub loss: f64,
    pub mse: f64,
    pub rmse: f64,
    pub mae: f64,
    pub r2: f64,
    pub count: usize,
}

/// A language model's scores over every position of a split's blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageModelMetrics {
    /// Mean cross-entropy per token, in nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// `loss / ln 2`: bits per character for a character-level model.
    pub bits_per_token: f64,
    /// Positions whose most likely next token is the right one.
    pub accuracy: f64,
    /// Positions scored.
    pub tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Metrics {
    Classification(ClassificationMetrics),
    Regression(RegressionMetrics),
    LanguageModel(LanguageModelMetrics),
}

impl Metrics {
    /// A scalar metric by the name `train.monitor` uses.
    pub fn get(&self, name: &str) -> Option<f64> {
        match self {
            Metrics::Classification(m) => match name {
                "loss" => Some(m.loss),
                "accuracy" => Some(m.accuracy),
                "precision" => Some(m.precision),
                "recall" => Some(m.recall),
                "f1" => Some(m.f1),
                "auc" => m.auc,
                _ => None,
            },
            Metrics::Regression(m) => match name {
                "loss" => Some(m.loss),
                "mse" => Some(m.mse),
                "rmse" => Some(m.rmse),
                "mae" => Some(m.mae),
                "r2" => Some(m.r2),
                _ => None,
            },
            Metrics::LanguageModel(m) => match name {
                "loss" => Some(m.loss),
                "perplexity" => Some(m.perplexity),
                "bits_per_token" => Some(m.bits_per_token),
                "accuracy" => Some(m.accuracy),
                _ => None,
            },
        }
    }

    /// Every scalar metric (for tracking), in display order.
    pub fn all_scalars(&self) -> Vec<(&'static str, f64)> {
        let names: &[&'static str] = match self {
            Metrics::Classification(_) => &["loss", "accuracy", "precision", "recall", "f1", "auc"],
            Metrics::Regression(_) => &["loss", "mse", "rmse", "mae", "r2"],
            Metrics::LanguageModel(_) => &["loss", "perplexity", "bits_per_token", "accuracy"],
        };
        names
            .iter()
            .filter_map(|&n| self.get(n).map(|v| (n, v)))
            .collect()
    }

    /// The headline scalars, in display order.
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        match self {
            Metrics::Classification(m) => {
                let mut v = vec![("loss", m.loss), ("accuracy", m.accuracy), ("f1", m.f1)];
                if let Some(a) = m.auc {
                    v.push(("auc", a));
                }
                v
            }
            Metrics::Regression(m) => {
                vec![
                    ("loss", m.loss),
                    ("rmse", m.rmse),
                    ("mae", m.mae),
                    ("r2", m.r2),
                ]
            }
            Metrics::LanguageModel(m) => vec![
                ("loss", m.loss),
                ("perplexity", m.perplexity),
                ("bits_per_token", m.bits_per_token),
            ],
        }
    }
}

/// Classification metrics from class probabilities `probs` (`[n, classes]`, row-major) and true
/// classes. The prediction is the arg-max (the first on ties).
pub fn classification(
    probs: &[f32],
    labels: &[u32],
    names: &[String],
    loss: f64,
) -> ClassificationMetrics {
    let c = names.len();
    let n = labels.len();
    assert_eq!(probs.len(), n * c, "probabilities are [n, classes]");
    let mut cm = vec![vec![0usize; c]; c];
    for (i, &y) in labels.iter().enumerate() {
        let row = &probs[i * c..(i + 1) * c];
        let pred = row
            .iter()
            .enumerate()
            .fold(0, |best, (j, &p)| if p > row[best] { j } else { best });
        cm[y as usize][pred] += 1;
    }
    let correct: usize = (0..c).map(|k| cm[k][k]).sum();
    let per_class: Vec<ClassScores> = (0..c)
        .map(|k| {
            let tp = cm[k][k] as f64;
            let predicted: usize = (0..c).map(|t| cm[t][k]).sum();
            let support: usize = cm[k].iter().sum();
            let precision = if predicted > 0 {
                tp / predicted as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassScores {
                name: names[k].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let mean = |f: fn(&ClassScores) -> f64| per_class.iter().map(f).sum::<f64>() / c as f64;
    let auc = if c == 2 {
        let scores: Vec<f64> = (0..n).map(|i| probs[i * 2 + 1] as f64).collect();
        let positive: Vec<bool> = labels.iter().map(|&y| y == 1).collect();
        roc_auc(&scores, &positive)
    } else {
        (0..c)
            .map(|k| {
                let scores: Vec<f64> = (0..n).map(|i| probs[i * c + k] as f64).collect();
                let positive: Vec<bool> = labels.iter().map(|&y| y as usize == k).collect();
                roc_auc(&scores, &positive)
            })
            .sum::<Option<f64>>()
            .map(|s| s / c as f64)
    };
    ClassificationMetrics {
        loss,
        accuracy: if n > 0 {
            correct as f64 / n as f64
        } else {
            0.0
        },
        precision: mean(|s| s.precision),
        recall: mean(|s| s.recall),
        f1: mean(|s| s.f1),
        auc,
        per_class,
        confusion_matrix: cm,
        count: n,
    }
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting half (the Mann-Whitney U statistic over average ranks).
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += idx[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * avg_rank;
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Regression metrics in the target's own units.
pub fn regression(pred: &[f64], truth: &[f64], loss: f64) -> RegressionMetrics {
    let n = truth.len().max(1) as f64;
    let mse = pred
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).powi(2))
        .sum::<f64>()
        / n;
    let mae = pred
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / n;
    let mean = truth.iter().sum::<f64>() / n;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - mse * n / ss_tot
    } else {
        0.0
    };
    RegressionMetrics {
        loss,
        mse,
        rmse: mse.sqrt(),
        mae,
        r2,
        count: truth.len(),
    }
}

#[cfg(test)]
mod tests {
    //! Reference values from scikit-learn 1.9 (numpy 2), computed by:
    //!
    //! ```python
    //! from sklearn import metrics as M
    //! yb = [0, 0, 1, 1, 0, 1, 1, 0, 1, 0]
    //! pb = [0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.4, 0.2, 0.65, 0.55]
    //! pred = [int(p > 0.5) for p in pb]
    //! M.accuracy_score(yb, pred)                       # 0.6
    //! M.precision_recall_fscore_support(yb, pred)      # all 0.6, support [5, 5]
    //! M.roc_auc_score(yb, pb)                          # 0.74
    //! M.confusion_matrix(yb, pred)                     # [[3, 2], [2, 3]]
    //! y3, p3 = ...  # as in `multiclass` below
    //! M.accuracy_score(y3, p3.argmax(1))               # 0.7
    //! M.precision_recall_fscore_support(y3, p3.argmax(1))  # p = r = f1 = [2/3, 2/3, 0.75]
    //! M.precision_recall_fscore_support(y3, p3.argmax(1), average='macro')  # 0.6944444444444443
    //! M.roc_auc_score(y3, p3, multi_class='ovr', average='macro')  # 0.9077380952380952
    //! M.confusion_matrix(y3, p3.argmax(1))             # [[2, 0, 1], [1, 2, 0], [0, 1, 3]]
    //! t = [3.0, -0.5, 2.0, 7.0, 4.2]; p = [2.5, 0.0, 2.1, 7.8, 3.9]
    //! M.mean_squared_error(t, p)   # 0.24799999999999994
    //! M.mean_absolute_error(t, p)  # 0.44000000000000006
    //! M.r2_score(t, p)             # 0.9594665271966527
    //! ```
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn binary_matches_scikit_learn() {
        let yb = [0u32, 0, 1, 1, 0, 1, 1, 0, 1, 0];
        let pb = [0.1f32, 0.4, 0.35, 0.8, 0.7, 0.9, 0.4, 0.2, 0.65, 0.55];
        let probs: Vec<f32> = pb.iter().flat_map(|&p| [1.0 - p, p]).collect();
        let names = vec!["neg".to_string(), "pos".to_string()];
        let m = classification(&probs, &yb, &names, 0.0);
        close(m.accuracy, 0.6);
        for s in &m.per_class {
            close(s.precision, 0.6);
            close(s.recall, 0.6);
            close(s.f1, 0.6);
            assert_eq!(s.support, 5);
        }
        close(m.f1, 0.6);
        // f32 probabilities keep the order of the f64 ones here, ties (0.4, 0.4) included.
        close(m.auc.unwrap(), 0.74);
        assert_eq!(m.confusion_matrix, vec![vec![3, 2], vec![2, 3]]);
    }

    #[test]
    fn multiclass_matches_scikit_learn() {
        let y3 = [0u32, 1, 2, 2, 1, 0, 2, 1, 0, 2];
        let p3: [[f32; 3]; 10] = [
            [0.7, 0.2, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.3, 0.6],
            [0.3, 0.4, 0.3],
            [0.6, 0.3, 0.1],
            [0.5, 0.25, 0.25],
            [0.2, 0.2, 0.6],
            [0.1, 0.8, 0.1],
            [0.3, 0.3, 0.4],
            [0.05, 0.15, 0.8],
        ];
        let probs: Vec<f32> = p3.iter().flatten().copied().collect();
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let m = classification(&probs, &y3, &names, 0.0);
        close(m.accuracy, 0.7);
        let expected = [2.0 / 3.0, 2.0 / 3.0, 0.75];
        for (s, e) in m.per_class.iter().zip(expected) {
            close(s.precision, e);
            close(s.recall, e);
            close(s.f1, e);
        }
        assert!((m.f1 - 0.6944444444444443).abs() < 1e-12);
        assert!((m.auc.unwrap() - 0.9077380952380952).abs() < 1e-9);
        assert_eq!(
            m.confusion_matrix,
            vec![vec![2, 0, 1], vec![1, 2, 0], vec![0, 1, 3]]
        );
    }

    #[test]
    fn regression_matches_scikit_learn() {
        let t = [3.0, -0.5, 2.0, 7.0, 4.2];
        let p = [2.5, 0.0, 2.1, 7.8, 3.9];
        let m = regression(&p, &t, 0.0);
        assert!((m.mse - 0.24799999999999994).abs() < 1e-12);
        assert!((m.mae - 0.44000000000000006).abs() < 1e-12);
        assert!((m.r2 - 0.9594665271966527).abs() < 1e-12);
        assert!((m.rmse - 0.49799598391954925).abs() < 1e-12);
    }

    #[test]
    fn auc_is_undefined_without_both_classes() {
        assert_eq!(roc_auc(&[0.1, 0.9], &[true, true]), None);
    }
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Metrics {
    Classification(ClassificationMetrics),
    Regression(RegressionMetrics),
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
        }
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
                vec![("loss", m.loss), ("rmse", m.rmse), ("mae", m.mae), ("r2", m.r2)]
            }
        }
    }
}

/// Classification metrics from class probabilities `probs` (`[n, classes]`, row-major) and true
/// classes. The prediction is the arg-max (the first on ties).
pub fn classification(probs: &[f32], labels: &[u32], names: &[String], loss: f64) -> ClassificationMetrics {
    let c = names.len();
    let n = labels.len();
    assert_eq!(probs.len(), n * c, "probabilities are [n, classes]");
    let mut cm = vec![vec![0usize; c]; c];
    for (i, &y) in labels.iter().enumerate() {
        let row = &probs[i * c..(i + 1) * c];
        let pred = row.iter().enumerate().fold(0, |best, (j, &p)| if p > row[best] { j } else { best });
        cm[y as usize][pred] += 1;
    }
    let correct: usize = (0..c).map(|k| cm[k][k]).sum();
    let per_class: Vec<ClassScores> = (0..c)
        .map(|k| {
            let tp = cm[k][k] as f64;
            let predicted: usize = (0..c).map(|t| cm[t][k]).sum();
            let support: usize = cm[k].iter().sum();
            let precision = if predicted > 0 { tp / predicted as f64 } else { 0.0 };
            let recall = if support > 0 { tp / support as f64 } else { 0.0 };
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassScores { name: names[k].clone(), precision, recall, f1, support }
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
        accuracy: if n > 0 { correct as f64 / n as f64 } else { 0.0 },
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
    let mse = pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum::<f64>() / n;
    let mae = pred.iter().zip(truth).map(|(p, t)| (p - t).abs()).sum::<f64>() / n;
    let mean = truth.iter().sum::<f64>() / n;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let r2 = if ss_tot > 0.0 { 1.0 - mse * n / ss_tot } else { 0.0 };
    RegressionMetrics { loss, mse, rmse: mse.sqrt(), mae, r2, count: truth.len() }
}

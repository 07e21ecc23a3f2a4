//! Per-group metrics of a classifier's predictions and their gaps (fairlearn's `MetricFrame`,
//! `demographic_parity_difference`/`_ratio`, `equalized_odds_difference`): groups are the
//! values of one or more columns of the data file (read or not by the model), intersected when
//! several are named.

use std::collections::BTreeMap;

/// At most this many groups per breakdown: a column with more is not a group label (an id, a
/// measurement) and needs binning first.
pub const MAX_GROUPS: usize = 50;

/// Metrics of one group. Rates that divide by zero (no positives, no predicted positives) are
/// `None`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupMetrics {
    /// The group's value of each column, in the order the columns were named.
    pub group: Vec<String>,
    pub count: usize,
    /// Fewer than the `min_group` examples: its rates are noisy.
    pub small: bool,
    /// Share predicted positive.
    pub selection_rate: f64,
    pub accuracy: f64,
    /// Recall of the positive class.
    pub tpr: Option<f64>,
    pub fpr: Option<f64>,
    pub precision: Option<f64>,
    /// Share truly positive.
    pub base_rate: f64,
    /// Mean predicted probability of the positive class; calibrated groups have it near the
    /// base rate.
    pub mean_score: f64,
    /// `mean_score - base_rate`.
    pub calibration_gap: f64,
    /// Expected calibration error over 10 equal-width probability bins.
    pub ece: f64,
}

/// Differences (largest minus smallest over the groups) and ratios, as fairlearn computes
/// them; one exception: when no group is ever selected the parity ratio is 1 (fairlearn: NaN).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gaps {
    pub demographic_parity_difference: f64,
    /// Smallest selection rate over the largest (1 is parity).
    pub demographic_parity_ratio: f64,
    /// The larger of the TPR and FPR differences.
    pub equalized_odds_difference: f64,
    pub tpr_difference: f64,
    pub fpr_difference: f64,
    pub accuracy_difference: f64,
    pub precision_difference: f64,
}

/// One breakdown: groups by `columns` (one column, or their intersection).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Breakdown {
    pub columns: Vec<String>,
    pub groups: Vec<GroupMetrics>,
    pub gaps: Gaps,
}

/// The inputs of a report: predictions of a split, and the group columns' values.
pub struct Predicted<'a> {
    /// True class index per example.
    pub truth: &'a [u32],
    /// Predicted class index per example.
    pub predicted: &'a [u32],
    /// Probability of the positive class per example.
    pub score: &'a [f64],
    /// The class that counts as the favourable outcome.
    pub positive: u32,
}

fn rate(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Metrics of the examples `rows`.
pub fn group_metrics(
    p: &Predicted,
    rows: &[usize],
    group: Vec<String>,
    min: usize,
) -> GroupMetrics {
    let (mut tp, mut fp, mut tn, mut fn_, mut right) = (0, 0, 0, 0, 0);
    let mut score_sum = 0.0;
    let mut bins = [(0usize, 0f64, 0usize); 10];
    for &i in rows {
        let (t, y) = (p.truth[i] == p.positive, p.predicted[i] == p.positive);
        match (t, y) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (false, false) => tn += 1,
            (true, false) => fn_ += 1,
        }
        right += usize::from(p.truth[i] == p.predicted[i]);
        let s = p.score[i];
        score_sum += s;
        let b = ((s * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += s;
        bins[b].2 += usize::from(t);
    }
    let n = rows.len();
    let nf = n.max(1) as f64;
    let base_rate = (tp + fn_) as f64 / nf;
    let mean_score = score_sum / nf;
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(c, s, pos)| (c as f64 / nf) * (s / c as f64 - pos as f64 / c as f64).abs())
        .sum();
    GroupMetrics {
        group,
        count: n,
        small: n < min,
        selection_rate: (tp + fp) as f64 / nf,
        accuracy: right as f64 / nf,
        tpr: rate(tp, tp + fn_),
        fpr: rate(fp, fp + tn),
        precision: rate(tp, tp + fp),
        base_rate,
        mean_score,
        calibration_gap: mean_score - base_rate,
        ece,
    }
}

/// Largest minus smallest of the defined values (0 with fewer than two).
fn spread(values: impl Iterator<Item = Option<f64>>) -> f64 {
    let v: Vec<f64> = values.flatten().collect();
    if v.len() < 2 {
        return 0.0;
    }
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    hi - lo
}

/// Groups by the values in `columns` (one vector per column, a value per example).
pub fn breakdown(p: &Predicted, names: &[String], columns: &[&[String]], min: usize) -> Breakdown {
    let mut by: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for i in 0..p.truth.len() {
        let key = columns.iter().map(|c| c[i].clone()).collect();
        by.entry(key).or_default().push(i);
    }
    let groups: Vec<GroupMetrics> = by
        .into_iter()
        .map(|(key, rows)| group_metrics(p, &rows, key, min))
        .collect();
    let sel = groups.iter().map(|g| g.selection_rate);
    let hi = sel.clone().fold(f64::NEG_INFINITY, f64::max);
    let lo = sel.fold(f64::INFINITY, f64::min);
    // As fairlearn (scikit-learn's normalised confusion matrix): a group without positives
    // (negatives) counts with a TPR (FPR) of 0 in the gaps; its own row says "undefined".
    let tpr = spread(groups.iter().map(|g| Some(g.tpr.unwrap_or(0.0))));
    let fpr = spread(groups.iter().map(|g| Some(g.fpr.unwrap_or(0.0))));
    let gaps = Gaps {
        demographic_parity_difference: spread(groups.iter().map(|g| Some(g.selection_rate))),
        demographic_parity_ratio: if hi > 0.0 { lo / hi } else { 1.0 },
        equalized_odds_difference: tpr.max(fpr),
        tpr_difference: tpr,
        fpr_difference: fpr,
        accuracy_difference: spread(groups.iter().map(|g| Some(g.accuracy))),
        precision_difference: spread(groups.iter().map(|g| g.precision)),
    };
    Breakdown {
        columns: names.to_vec(),
        groups,
        gaps,
    }
}

/// A limit a pipeline sets on the gaps (`--max-dp-diff 0.1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_dp_difference: Option<f64>,
    pub min_dp_ratio: Option<f64>,
    pub max_eo_difference: Option<f64>,
}

/// What broke a limit, one line each.
pub fn violations(b: &Breakdown, limits: &Limits) -> Vec<String> {
    let who = b.columns.join(" x ");
    let g = &b.gaps;
    let mut out = Vec::new();
    if let Some(m) = limits.max_dp_difference
        && g.demographic_parity_difference > m
    {
        out.push(format!(
            "demographic parity difference by {who} is {:.4} > {m}",
            g.demographic_parity_difference
        ));
    }
    if let Some(m) = limits.min_dp_ratio
        && g.demographic_parity_ratio < m
    {
        out.push(format!(
            "demographic parity ratio by {who} is {:.4} < {m}",
            g.demographic_parity_ratio
        ));
    }
    if let Some(m) = limits.max_eo_difference
        && g.equalized_odds_difference > m
    {
        out.push(format!(
            "equalized odds difference by {who} is {:.4} > {m}",
            g.equalized_odds_difference
        ));
    }
    out
}

/// Checks a group column: at most [`MAX_GROUPS`] distinct values.
pub fn check_column(name: &str, values: &[String]) -> Result<(), String> {
    let mut distinct: Vec<&String> = values.iter().collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > MAX_GROUPS {
        return Err(format!(
            "--group {}: {} distinct values; a group column holds at most {MAX_GROUPS} (a category such as sex or race; bin a numeric column into ranges first)",
            crate::shown::name(name),
            distinct.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_gaps_of_two_groups() {
        // Group a: 4 examples, truth 1 1 0 0, predicted 1 0 1 0; group b: truth 1 0, predicted 1 1.
        let truth = [1, 1, 0, 0, 1, 0];
        let predicted = [1, 0, 1, 0, 1, 1];
        let score = [0.9, 0.4, 0.6, 0.1, 0.8, 0.7];
        let p = Predicted {
            truth: &truth,
            predicted: &predicted,
            score: &score,
            positive: 1,
        };
        let col: Vec<String> = ["a", "a", "a", "a", "b", "b"].map(String::from).to_vec();
        let b = breakdown(&p, &["g".into()], &[&col], 3);
        let (a, bb) = (&b.groups[0], &b.groups[1]);
        assert_eq!((a.count, a.small, bb.small), (4, false, true));
        assert_eq!(a.selection_rate, 0.5);
        assert_eq!(
            (a.tpr, a.fpr, a.precision),
            (Some(0.5), Some(0.5), Some(0.5))
        );
        assert_eq!(
            (bb.tpr, bb.fpr, bb.selection_rate),
            (Some(1.0), Some(1.0), 1.0)
        );
        assert_eq!(b.gaps.demographic_parity_difference, 0.5);
        assert_eq!(b.gaps.demographic_parity_ratio, 0.5);
        assert_eq!(b.gaps.equalized_odds_difference, 0.5);
        let limits = Limits {
            max_dp_difference: Some(0.4),
            ..Limits::default()
        };
        assert_eq!(violations(&b, &limits).len(), 1);
    }
}

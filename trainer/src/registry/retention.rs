//! Which checkpoints to keep: a pure function of their steps and metrics. The store does the
//! deleting.

use std::collections::BTreeSet;

/// Keep the `keep_last` newest checkpoints and the `keep_best` best by the monitored metric.
/// The newest is always kept (it is what `--resume` continues from).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub keep_last: usize,
    pub keep_best: usize,
    pub higher_is_better: bool,
}

/// A checkpoint as the policy sees it: its step and the monitored metric at that point
/// (`None` before the first validation, or when the metric was undefined).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub step: usize,
    pub metric: Option<f64>,
}

/// The steps to keep.
pub fn keep(candidates: &[Candidate], policy: &Policy) -> BTreeSet<usize> {
    let mut by_step: Vec<&Candidate> = candidates.iter().collect();
    by_step.sort_by_key(|c| std::cmp::Reverse(c.step));
    let mut kept: BTreeSet<usize> = by_step
        .iter()
        .take(policy.keep_last.max(1))
        .map(|c| c.step)
        .collect();
    let mut ranked: Vec<(f64, usize)> = candidates
        .iter()
        .filter_map(|c| c.metric.filter(|m| m.is_finite()).map(|m| (m, c.step)))
        .collect();
    // Best first; between equal values the earlier checkpoint, which reached it first.
    ranked.sort_by(|a, b| {
        let by_value = if policy.higher_is_better {
            b.0.total_cmp(&a.0)
        } else {
            a.0.total_cmp(&b.0)
        };
        by_value.then(a.1.cmp(&b.1))
    });
    kept.extend(ranked.iter().take(policy.keep_best).map(|&(_, s)| s));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(step: usize, metric: Option<f64>) -> Candidate {
        Candidate { step, metric }
    }

    fn policy(keep_last: usize, keep_best: usize, higher_is_better: bool) -> Policy {
        Policy {
            keep_last,
            keep_best,
            higher_is_better,
        }
    }

    #[test]
    fn keeps_newest_and_best() {
        let all = [
            c(10, Some(0.5)),
            c(20, Some(0.9)),
            c(30, Some(0.7)),
            c(40, Some(0.6)),
            c(50, None),
        ];
        let kept: Vec<usize> = keep(&all, &policy(2, 1, true)).into_iter().collect();
        assert_eq!(kept, vec![20, 40, 50]);
        // Lower is better (a loss): step 10 is best.
        let kept: Vec<usize> = keep(&all, &policy(1, 2, false)).into_iter().collect();
        assert_eq!(kept, vec![10, 40, 50]);
    }

    #[test]
    fn newest_survives_a_zero_policy_and_order_does_not_matter() {
        let all = [c(3, None), c(1, Some(1.0)), c(2, Some(2.0))];
        let kept: Vec<usize> = keep(&all, &policy(0, 0, true)).into_iter().collect();
        assert_eq!(kept, vec![3]);
        let mut reversed = all;
        reversed.reverse();
        assert_eq!(
            keep(&all, &policy(1, 1, true)),
            keep(&reversed, &policy(1, 1, true))
        );
    }

    #[test]
    fn ties_keep_the_first_and_nan_is_never_best() {
        let all = [
            c(1, Some(0.8)),
            c(2, Some(0.8)),
            c(3, Some(f64::NAN)),
            c(4, Some(0.1)),
        ];
        let kept: Vec<usize> = keep(&all, &policy(1, 1, true)).into_iter().collect();
        assert_eq!(kept, vec![1, 4]);
    }

    #[test]
    fn keeps_everything_when_asked_for_more_than_there_is() {
        let all = [c(1, Some(0.1)), c(2, Some(0.2))];
        assert_eq!(keep(&all, &policy(5, 5, true)).len(), 2);
        assert!(keep(&[], &policy(5, 5, true)).is_empty());
    }
}

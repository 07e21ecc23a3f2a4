//! Which validation is the best, and when early stopping has run out of patience: a pure
//! policy over the loop's position and one validation's value of `train.monitor`, kept apart
//! from the evaluation, logging and weight snapshots that act on it (as retention is).

use crate::config::{EarlyStopping, Monitor};
use crate::state::LoopState;

/// Records one validation's `value` of the monitored metric in `pos`; returns whether it is
/// the new best (the caller keeps these weights). An undefined value (AUC of a split missing
/// a class) says nothing either way: neither best nor a validation without improvement.
pub fn record_validation(
    pos: &mut LoopState,
    value: Option<f64>,
    monitor: &Monitor,
    early: Option<EarlyStopping>,
) -> bool {
    let min_delta = early.map_or(0.0, |e| e.min_delta);
    let improved = value.is_some_and(|v| monitor.improves(v, pos.best, min_delta));
    pos.last_valid = value;
    if improved {
        pos.best = value;
        pos.best_step = Some(pos.step);
        pos.validations_without_improvement = 0;
    } else if value.is_some() {
        pos.validations_without_improvement += 1;
    }
    improved
}

/// Early stopping has seen `patience` validations in a row without improvement.
pub fn out_of_patience(pos: &LoopState, early: Option<EarlyStopping>) -> bool {
    early.is_some_and(|e| pos.validations_without_improvement >= e.patience)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(higher_is_better: bool) -> Monitor {
        Monitor {
            metric: "m".into(),
            higher_is_better,
        }
    }

    /// Feeds `values` one validation each (step 10, 20, ...); returns the bests, the best step
    /// and the validation after which patience ran out.
    fn run(
        values: &[Option<f64>],
        higher: bool,
        early: Option<EarlyStopping>,
    ) -> (Vec<bool>, Option<usize>, Option<usize>) {
        let mut pos = LoopState::default();
        let mut bests = Vec::new();
        let mut stopped = None;
        for (i, v) in values.iter().enumerate() {
            pos.step = 10 * (i + 1);
            bests.push(record_validation(&mut pos, *v, &monitor(higher), early));
            if stopped.is_none() && out_of_patience(&pos, early) {
                stopped = Some(i);
            }
        }
        (bests, pos.best_step, stopped)
    }

    #[test]
    fn the_lowest_loss_is_best_and_patience_counts_validations_in_a_row() {
        let early = Some(EarlyStopping {
            patience: 2,
            min_delta: 0.0,
        });
        let v = [
            Some(1.0),
            Some(0.8),
            Some(0.9),
            Some(0.7),
            Some(0.75),
            Some(0.71),
        ];
        let (bests, best_step, stopped) = run(&v, false, early);
        assert_eq!(bests, [true, true, false, true, false, false]);
        assert_eq!(best_step, Some(40));
        // 0.9 then an improvement reset the count; 0.75 and 0.71 are two in a row.
        assert_eq!(stopped, Some(5));
    }

    #[test]
    fn an_improvement_must_beat_min_delta_and_higher_can_be_better() {
        let early = Some(EarlyStopping {
            patience: 3,
            min_delta: 0.05,
        });
        let v = [Some(0.50), Some(0.54), Some(0.56), Some(0.60), Some(0.62)];
        let (bests, best_step, stopped) = run(&v, true, early);
        // 0.54 is within 0.05 of 0.50; 0.56 beats it by more; so does 0.62 over 0.56.
        assert_eq!(bests, [true, false, true, false, true]);
        assert_eq!(best_step, Some(50));
        assert_eq!(stopped, None);
    }

    #[test]
    fn an_undefined_or_non_finite_first_value_is_not_a_best() {
        let early = Some(EarlyStopping {
            patience: 1,
            min_delta: 0.0,
        });
        let (bests, best_step, stopped) = run(&[None, Some(f64::NAN), Some(2.0)], false, early);
        // None says nothing; NaN counts as a validation without improvement.
        assert_eq!(bests, [false, false, true]);
        assert_eq!(best_step, Some(30));
        assert_eq!(stopped, Some(1));
    }

    #[test]
    fn without_early_stopping_patience_never_runs_out() {
        let v: Vec<Option<f64>> = (0..50).map(|i| Some(f64::from(i))).collect();
        let (bests, best_step, stopped) = run(&v, false, None);
        assert_eq!(bests.iter().filter(|b| **b).count(), 1);
        assert_eq!(best_step, Some(10));
        assert_eq!(stopped, None);
    }
}

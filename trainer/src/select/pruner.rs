//! Stopping hopeless trials from their validations. A trial's run reports each validation to
//! its sweep (`trials/NNNN/reports.jsonl`) and asks whether to go on; the answer is a pure
//! function of its own reports and the other trials' ([`decide`]), read from the registry.
//!
//! - **median** (as Optuna's `MedianPruner`): after `startup_trials` completed trials and
//!   `warmup` validations, a trial stops when its best value so far is worse than the median
//!   of the completed trials' values at the same validation.
//! - **asha** (asynchronous successive halving, Li et al. 2020): rungs at validations
//!   `min_resource * reduction_factor^k`; a trial reaching a rung goes on only if its value
//!   there is in the top `1/reduction_factor` of every trial's value at that rung (the best
//!   goes on while fewer trials than `reduction_factor` have reached it).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::space::{Direction, PrunerKind, SweepSpec};
use super::store::{Sweep, TrialStatus};

/// One validation of a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The validation's number, from 1 (the epoch, without `train.valid_every`).
    pub resource: usize,
    pub step: usize,
    pub value: Option<f64>,
}

/// What the pruner knows of another trial.
#[derive(Debug, Clone)]
pub struct Peer {
    pub completed: bool,
    pub reports: Vec<Report>,
}

/// Whether a trial whose reports are `own` (the newest last) stops, given the other trials.
pub fn decide(spec: &SweepSpec, own: &[Report], peers: &[Peer]) -> bool {
    let Some(last) = own.last() else {
        return false;
    };
    let better = |a: f64, b: f64| spec.direction.better(a, b);
    match spec.pruner {
        PrunerKind::None => false,
        PrunerKind::Median => {
            let p = &spec.pruning;
            let completed: Vec<&Peer> = peers.iter().filter(|p| p.completed).collect();
            if completed.len() < p.startup_trials || last.resource <= p.warmup {
                return false;
            }
            let Some(best) = own
                .iter()
                .filter_map(|r| r.value)
                .reduce(|a, b| if better(b, a) { b } else { a })
            else {
                return false;
            };
            let mut at: Vec<f64> = completed
                .iter()
                .filter_map(|p| p.reports.iter().find(|r| r.resource == last.resource))
                .filter_map(|r| r.value)
                .collect();
            if at.is_empty() {
                return false;
            }
            at.sort_by(f64::total_cmp);
            let n = at.len();
            let median = if n % 2 == 1 {
                at[n / 2]
            } else {
                0.5 * (at[n / 2 - 1] + at[n / 2])
            };
            better(median, best)
        }
        PrunerKind::Asha => {
            let p = &spec.pruning;
            let mut rung = p.min_resource;
            while rung < last.resource {
                rung *= p.reduction_factor;
            }
            if rung != last.resource {
                return false;
            }
            let Some(value) = last.value else {
                return true;
            };
            let mut at: Vec<f64> = peers
                .iter()
                .filter_map(|p| p.reports.iter().find(|r| r.resource == rung))
                .filter_map(|r| r.value)
                .collect();
            at.push(value);
            // Best first.
            at.sort_by(|a, b| match spec.direction {
                Direction::Maximize => b.total_cmp(a),
                Direction::Minimize => a.total_cmp(b),
            });
            let keep = (at.len() / p.reduction_factor).max(1);
            better(at[keep - 1], value)
        }
    }
}

/// The pruner a trial's run consults: it appends the run's validations to the trial's
/// reports and reads the other trials' from the sweep's folder.
pub struct SweepPruner {
    pub sweep: Sweep,
    pub spec: SweepSpec,
    pub number: usize,
}

impl SweepPruner {
    fn reports_path(&self) -> PathBuf {
        self.sweep.reports_path(self.number)
    }
}

impl crate::train::Pruning for SweepPruner {
    fn report(&self, resource: usize, step: usize, metrics: &crate::metrics::Metrics) -> bool {
        let value = metrics.get(&self.spec.metric).filter(|v| v.is_finite());
        let mut own: Vec<Report> = self.sweep.reports(self.number);
        // A resumed run reports its validations again from its checkpoint on.
        own.retain(|r| r.resource < resource);
        own.push(Report {
            resource,
            step,
            value,
        });
        if let Err(e) = self.sweep.write_reports(self.number, &own) {
            eprintln!(
                "warning: cannot record the validation in {}: {e}",
                self.reports_path().display()
            );
        }
        if self.spec.pruner == PrunerKind::None {
            return false;
        }
        let peers: Vec<Peer> = self
            .sweep
            .trials()
            .into_iter()
            .filter(|t| t.number != self.number)
            .map(|t| Peer {
                completed: t.status == TrialStatus::Completed,
                reports: self.sweep.reports(t.number),
            })
            .collect();
        decide(&self.spec, &own, &peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::space::{Pruning, SamplerKind, TpeSettings};

    fn spec(pruner: PrunerKind) -> SweepSpec {
        SweepSpec {
            file: String::new(),
            base: String::new(),
            name: "m".into(),
            metric: "accuracy".into(),
            direction: Direction::Maximize,
            sampler: SamplerKind::Random,
            pruner,
            trials: 10,
            timeout_seconds: None,
            seed: 0,
            cv: None,
            set: Vec::new(),
            pruning: Pruning {
                startup_trials: 2,
                warmup: 1,
                min_resource: 1,
                reduction_factor: 3,
            },
            tpe: TpeSettings::default(),
            space: Vec::new(),
        }
    }

    fn reports(values: &[f64]) -> Vec<Report> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| Report {
                resource: i + 1,
                step: 10 * (i + 1),
                value: Some(v),
            })
            .collect()
    }

    fn peer(values: &[f64]) -> Peer {
        Peer {
            completed: true,
            reports: reports(values),
        }
    }

    #[test]
    fn median_prunes_below_the_median_after_warmup_and_startup() {
        let s = spec(PrunerKind::Median);
        let peers = [
            peer(&[0.5, 0.8, 0.9]),
            peer(&[0.6, 0.7, 0.85]),
            peer(&[0.4, 0.6, 0.7]),
        ];
        // Validation 2: median of 0.8, 0.7, 0.6 is 0.7.
        assert!(decide(&s, &reports(&[0.3, 0.65]), &peers));
        assert!(!decide(&s, &reports(&[0.3, 0.75]), &peers));
        // Its best so far counts, not its latest.
        assert!(!decide(&s, &reports(&[0.9, 0.2]), &peers));
        // Warmup: the first validation never prunes.
        assert!(!decide(&s, &reports(&[0.0]), &peers));
        // Too few completed trials.
        assert!(!decide(&s, &reports(&[0.3, 0.1]), &peers[..1]));
        let running = [
            Peer {
                completed: false,
                ..peer(&[0.9, 0.9])
            },
            peer(&[0.9, 0.9]),
        ];
        assert!(
            !decide(&s, &reports(&[0.3, 0.1]), &running),
            "a running trial is not a completed one"
        );
    }

    #[test]
    fn asha_keeps_the_top_third_at_each_rung() {
        let s = spec(PrunerKind::Asha);
        let peers: Vec<Peer> = [0.1, 0.2, 0.3, 0.4, 0.5]
            .iter()
            .map(|&v| peer(&[v, v, v]))
            .collect();
        // Rung 1 with 6 values: the top 2 (0.5 and this one) go on.
        assert!(!decide(&s, &reports(&[0.45]), &peers));
        assert!(decide(&s, &reports(&[0.35]), &peers));
        // Validation 2 is not a rung (1, 3, 9, ...).
        assert!(!decide(&s, &reports(&[0.45, 0.0]), &peers));
        assert!(decide(&s, &reports(&[0.45, 0.9, 0.2]), &peers));
        // The first trial at a rung goes on; a later worse one alone stops.
        assert!(!decide(&s, &reports(&[0.1]), &[]));
        assert!(decide(&s, &reports(&[0.1]), &peers[4..]));
    }
}

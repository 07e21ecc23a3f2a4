//! The Tree-structured Parzen Estimator (Bergstra et al., 2011, "Algorithms for
//! Hyper-Parameter Optimization"), univariate as in Optuna's default sampler: the finished
//! trials are split into the best `γ(n) = min(⌈n/10⌉, 25)` and the rest; each parameter gets
//! a density `l(x)` of the good trials' values and `g(x)` of the others' (a Gaussian per value,
//! truncated to the range, plus a wide prior component); candidates are drawn from `l` and the
//! one with the highest `l(x)/g(x)` is proposed. Choices get smoothed frequencies. A pruned
//! trial counts below every completed one. The first `startup_trials` are drawn at random.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use toml::Value;

use super::sampler::{Observation, random, rng};
use super::space::{Direction, Dist, SweepSpec};

/// TPE's proposal for trial `number`.
pub fn propose(
    spec: &SweepSpec,
    number: usize,
    history: &[Observation],
) -> BTreeMap<String, Value> {
    let mut r = rng(spec.seed, number, 0);
    let usable: Vec<&Observation> = history
        .iter()
        .filter(|o| o.value.is_some() || o.pruned.is_some())
        .collect();
    if usable.len() < spec.tpe.startup_trials.max(2) {
        return random(&spec.space, &mut r);
    }
    let (good, bad) = split(&usable, spec.direction);
    spec.space
        .iter()
        .map(|p| {
            let v = match &p.dist {
                Dist::Choice(values) => {
                    let count = |set: &[&Observation]| {
                        let mut w = vec![1.0 / values.len() as f64; values.len()];
                        for o in set {
                            if let Some(i) = o.params.get(&p.key).and_then(|v| p.dist.index_of(v)) {
                                w[i] += 1.0;
                            }
                        }
                        let total: f64 = w.iter().sum();
                        w.into_iter().map(|x| x / total).collect::<Vec<f64>>()
                    };
                    let (l, g) = (count(&good), count(&bad));
                    let best = (0..spec.tpe.candidates)
                        .map(|_| pick(&l, &mut r))
                        .max_by(|&a, &b| {
                            let (sa, sb) = (l[a].ln() - g[a].ln(), l[b].ln() - g[b].ln());
                            sa.total_cmp(&sb)
                        })
                        .expect("at least one candidate");
                    values[best].clone()
                }
                d => {
                    let (lo, hi) = d.interval().expect("a numeric distribution");
                    let points = |set: &[&Observation]| -> Vec<f64> {
                        set.iter()
                            .filter_map(|o| o.params.get(&p.key).and_then(|v| d.point_of(v)))
                            .map(|t| t.clamp(lo, hi))
                            .collect()
                    };
                    let l = Parzen::new(&points(&good), lo, hi);
                    let g = Parzen::new(&points(&bad), lo, hi);
                    let best = (0..spec.tpe.candidates)
                        .map(|_| l.sample(&mut r))
                        .max_by(|&a, &b| {
                            let sa = l.log_pdf(a) - g.log_pdf(a);
                            let sb = l.log_pdf(b) - g.log_pdf(b);
                            sa.total_cmp(&sb)
                        })
                        .expect("at least one candidate");
                    d.value_at(best)
                }
            };
            (p.key.clone(), v)
        })
        .collect()
}

/// The good trials (the best `γ(n)` completed ones) and the rest (pruned ones always there).
fn split<'a>(
    usable: &[&'a Observation],
    direction: Direction,
) -> (Vec<&'a Observation>, Vec<&'a Observation>) {
    let mut ranked: Vec<&Observation> = usable.to_vec();
    // Completed trials best first, then pruned ones, the furthest and best first.
    let key = |o: &Observation| -> (u8, f64, f64) {
        let sign = match direction {
            Direction::Maximize => -1.0,
            Direction::Minimize => 1.0,
        };
        match (o.value, o.pruned) {
            (Some(v), _) => (0, 0.0, sign * v),
            (None, Some((at, v))) => (1, -(at as f64), sign * v.unwrap_or(f64::INFINITY * sign)),
            (None, None) => (2, 0.0, 0.0),
        }
    };
    ranked.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(ka.2.total_cmp(&kb.2))
            .then(a.number.cmp(&b.number))
    });
    let completed = ranked.iter().filter(|o| o.value.is_some()).count();
    let n_good = ranked.len().div_ceil(10).clamp(1, 25).min(completed.max(1));
    let bad = ranked.split_off(n_good);
    (ranked, bad)
}

fn pick(weights: &[f64], r: &mut ChaCha8Rng) -> usize {
    let mut u: f64 = r.random_range(0.0..1.0);
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// A mixture of Gaussians truncated to `[lo, hi]`: one per observation and a prior one at the
/// middle as wide as the range, equally weighted. An observation's width is the larger gap to
/// its neighbours (the ends of the range count), clipped to `[range/min(100, n+1), range]`.
struct Parzen {
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    lo: f64,
    hi: f64,
}

impl Parzen {
    fn new(points: &[f64], lo: f64, hi: f64) -> Self {
        let range = hi - lo;
        let mut sorted = points.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let min_sigma = range / (n as f64 + 1.0).min(100.0);
        let mut mus = Vec::with_capacity(n + 1);
        let mut sigmas = Vec::with_capacity(n + 1);
        for (i, &m) in sorted.iter().enumerate() {
            let left = if i == 0 { m - lo } else { m - sorted[i - 1] };
            let right = if i + 1 == n {
                hi - m
            } else {
                sorted[i + 1] - m
            };
            mus.push(m);
            sigmas.push(left.max(right).clamp(min_sigma, range));
        }
        mus.push(0.5 * (lo + hi));
        sigmas.push(range);
        Self {
            mus,
            sigmas,
            lo,
            hi,
        }
    }

    fn sample(&self, r: &mut ChaCha8Rng) -> f64 {
        let k = r.random_range(0..self.mus.len());
        let (mu, sigma) = (self.mus[k], self.sigmas[k]);
        // Inverse CDF of the truncated normal.
        let (a, b) = (
            normal_cdf((self.lo - mu) / sigma),
            normal_cdf((self.hi - mu) / sigma),
        );
        let u = a + (b - a) * r.random_range(0.0..1.0);
        (mu + sigma * normal_quantile(u.clamp(1e-12, 1.0 - 1e-12))).clamp(self.lo, self.hi)
    }

    fn log_pdf(&self, x: f64) -> f64 {
        let w = 1.0 / self.mus.len() as f64;
        let p: f64 = self
            .mus
            .iter()
            .zip(&self.sigmas)
            .map(|(&mu, &sigma)| {
                let mass = normal_cdf((self.hi - mu) / sigma) - normal_cdf((self.lo - mu) / sigma);
                let z = (x - mu) / sigma;
                w * (-0.5 * z * z).exp()
                    / (sigma * (2.0 * std::f64::consts::PI).sqrt() * mass.max(1e-300))
            })
            .sum();
        p.max(1e-300).ln()
    }
}

/// The standard normal CDF, through erfc (W. J. Cody's rational approximations are more
/// exact; this one, Numerical Recipes' `erfcc`, errs below 1.2e-7, plenty for a sampler).
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The standard normal quantile by bisection on [`normal_cdf`] (60 halvings: exact to f64
/// for the sampler's purpose, and cheap next to a training run).
fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0_f64, 40.0_f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::space::{Param, PrunerKind, Pruning, SamplerKind, TpeSettings};

    #[test]
    fn the_normal_cdf_matches_known_values() {
        // scipy.stats.norm.cdf([-1.96, 0, 1, 2.5]) = 0.0249979, 0.5, 0.8413447, 0.9937903
        for (x, p) in [
            (-1.96, 0.024_997_9),
            (0.0, 0.5),
            (1.0, 0.841_344_7),
            (2.5, 0.993_790_3),
        ] {
            assert!((normal_cdf(x) - p).abs() < 2e-7, "{x}: {}", normal_cdf(x));
            assert!((normal_quantile(p) - x).abs() < 1e-5);
        }
    }

    fn spec(seed: u64) -> SweepSpec {
        SweepSpec {
            file: String::new(),
            base: String::new(),
            name: "m".into(),
            metric: "loss".into(),
            direction: Direction::Minimize,
            sampler: SamplerKind::Tpe,
            pruner: PrunerKind::None,
            trials: 60,
            timeout_seconds: None,
            seed,
            cv: None,
            set: Vec::new(),
            pruning: Pruning::default(),
            tpe: TpeSettings::default(),
            space: vec![
                Param {
                    key: "x".into(),
                    dist: Dist::Uniform {
                        low: -5.0,
                        high: 5.0,
                    },
                },
                Param {
                    key: "c".into(),
                    dist: Dist::Choice(
                        vec!["a", "b", "c", "d"]
                            .into_iter()
                            .map(Value::from)
                            .collect(),
                    ),
                },
            ],
        }
    }

    /// f(x, c) = (x - 1.5)² + (c != "c"): TPE, fed its own results, finds the minimum
    /// region far more often than random search does with the same number of trials.
    fn run(seed: u64, tpe: bool) -> f64 {
        let s = spec(seed);
        let mut history = Vec::new();
        for n in 0..40 {
            let p = if tpe {
                propose(&s, n, &history)
            } else {
                random(&s.space, &mut rng(seed, n, 0))
            };
            let x = p["x"].as_float().expect("x");
            let f = (x - 1.5).powi(2)
                + if p["c"].as_str() == Some("c") {
                    0.0
                } else {
                    1.0
                };
            history.push(Observation {
                number: n,
                params: p,
                value: Some(f),
                pruned: None,
            });
        }
        history
            .iter()
            .filter_map(|o| o.value)
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn tpe_beats_random_search_on_a_simple_function() {
        let mut tpe: Vec<f64> = (0..15).map(|s| run(s, true)).collect();
        let mut rand: Vec<f64> = (0..15).map(|s| run(s, false)).collect();
        tpe.sort_by(f64::total_cmp);
        rand.sort_by(f64::total_cmp);
        let (mt, mr) = (tpe[7], rand[7]);
        assert!(mt < mr, "median best: tpe {mt} vs random {mr}");
        assert!(mt < 0.01, "tpe's median best {mt}");
    }

    #[test]
    fn a_proposal_is_a_function_of_seed_number_and_history() {
        let s = spec(5);
        let history: Vec<Observation> = (0..12)
            .map(|n| {
                let p = random(&s.space, &mut rng(5, n, 0));
                Observation {
                    number: n,
                    value: Some(p["x"].as_float().expect("x").abs()),
                    params: p,
                    pruned: None,
                }
            })
            .collect();
        assert_eq!(propose(&s, 12, &history), propose(&s, 12, &history));
        assert_ne!(propose(&s, 12, &history), propose(&s, 13, &history));
    }
}

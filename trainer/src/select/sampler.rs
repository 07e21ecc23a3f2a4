//! Proposing a trial's parameters. A proposal is a pure function of the sweep's seed, the
//! trial's number and the finished trials before it, so a sweep rebuilt from the registry after
//! a crash proposes what it would have proposed uninterrupted (with one worker; with several,
//! which trials have finished when a proposal is made depends on timing).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use toml::Value;

use super::space::{Dist, SamplerKind, Space, SweepSpec};

/// A finished trial as the samplers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub number: usize,
    pub params: BTreeMap<String, Value>,
    /// The objective of a completed trial; `None` for a pruned one.
    pub value: Option<f64>,
    /// A pruned trial: its last validation and what it reported there.
    pub pruned: Option<(usize, Option<f64>)>,
}

/// The random stream of trial `number` of a sweep seeded `seed` (independent of other trials').
pub fn rng(seed: u64, number: usize, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream.wrapping_mul(1 << 32) ^ number as u64);
    r
}

/// The parameters of trial `number`, or `None` when the sampler has nothing left (a grid
/// enumerated whole).
pub fn propose(
    spec: &SweepSpec,
    number: usize,
    history: &[Observation],
) -> Option<BTreeMap<String, Value>> {
    match spec.sampler {
        SamplerKind::Grid => grid_point(&spec.space, spec.seed, number),
        SamplerKind::Random => Some(random(&spec.space, &mut rng(spec.seed, number, 0))),
        SamplerKind::Tpe => Some(super::tpe::propose(spec, number, history)),
    }
}

/// One draw from every parameter's distribution (uniform in [`Dist::interval`]).
pub fn random(space: &Space, rng: &mut ChaCha8Rng) -> BTreeMap<String, Value> {
    space
        .iter()
        .map(|p| {
            let v = match &p.dist {
                Dist::Choice(values) => values[rng.random_range(0..values.len())].clone(),
                d => {
                    let (lo, hi) = d.interval().expect("a numeric distribution");
                    d.value_at(rng.random_range(lo..hi))
                }
            };
            (p.key.clone(), v)
        })
        .collect()
}

/// The values a grid takes of one parameter: a choice's values, an integer range's integers.
fn grid_values(d: &Dist) -> Result<Vec<Value>, String> {
    match d {
        Dist::Choice(v) => Ok(v.clone()),
        Dist::Int { low, high, .. } if i128::from(*high) - i128::from(*low) < 1_000_000 => {
            Ok((*low..=*high).map(Value::Integer).collect())
        }
        Dist::Int { .. } => Err("the integer range has more than a million values: use the random or tpe sampler".into()),
        _ => Err("the grid sampler enumerates choices and integer ranges; give a real-valued parameter as a choice of values".into()),
    }
}

/// How many points the grid has (at most a million).
pub fn grid_size(space: &Space) -> Result<usize, String> {
    let mut n: usize = 1;
    for p in space {
        let k = grid_values(&p.dist)
            .map_err(|e| format!("[space] {:?}: {e}", p.key))?
            .len();
        n = n
            .checked_mul(k)
            .filter(|&n| n <= 1_000_000)
            .ok_or("the grid has more than a million points: use the random or tpe sampler")?;
    }
    Ok(n)
}

/// Trial `number`'s point of the grid: every point once, in an order shuffled by the seed (so
/// a budget smaller than the grid still spreads over it); `None` past the last point.
pub fn grid_point(space: &Space, seed: u64, number: usize) -> Option<BTreeMap<String, Value>> {
    let size = grid_size(space).ok()?;
    if number >= size {
        return None;
    }
    let mut order: Vec<usize> = (0..size).collect();
    order.shuffle(&mut rng(seed, 0, 1));
    let mut rest = order[number];
    let mut out = BTreeMap::new();
    for p in space.iter().rev() {
        let values = grid_values(&p.dist).ok()?;
        out.insert(p.key.clone(), values[rest % values.len()].clone());
        rest /= values.len();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::space::Param;

    fn space() -> Space {
        vec![
            Param {
                key: "model.hidden".into(),
                dist: Dist::Choice(vec![
                    Value::Array(vec![Value::Integer(64)]),
                    Value::Array(vec![Value::Integer(128), Value::Integer(64)]),
                ]),
            },
            Param {
                key: "train.batch_size".into(),
                dist: Dist::Choice(vec![16, 32, 64].into_iter().map(Value::Integer).collect()),
            },
            Param {
                key: "train.epochs".into(),
                dist: Dist::Int {
                    low: 3,
                    high: 5,
                    log: false,
                },
            },
        ]
    }

    #[test]
    fn the_grid_enumerates_every_point_exactly_once() {
        let s = space();
        assert_eq!(grid_size(&s), Ok(18));
        let points: Vec<_> = (0..18)
            .map(|n| grid_point(&s, 7, n).expect("a point"))
            .collect();
        let mut expected = Vec::new();
        for h in [vec![64], vec![128, 64]] {
            for b in [16, 32, 64] {
                for e in 3..=5 {
                    expected.push(format!("{h:?} {b} {e}"));
                }
            }
        }
        let mut got: Vec<String> = points
            .iter()
            .map(|p| {
                format!(
                    "{} {} {}",
                    p["model.hidden"]
                        .to_string()
                        .replace(' ', "")
                        .replace(',', ", "),
                    p["train.batch_size"],
                    p["train.epochs"]
                )
            })
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        assert_eq!(grid_point(&s, 7, 18), None, "past the grid");
        // Another seed: the same points in another order.
        let other: Vec<_> = (0..18)
            .map(|n| grid_point(&s, 8, n).expect("a point"))
            .collect();
        assert_ne!(points, other);
    }

    #[test]
    fn a_real_range_has_no_grid() {
        let s = vec![Param {
            key: "optim.lr".into(),
            dist: Dist::LogUniform {
                low: 1e-4,
                high: 1e-1,
            },
        }];
        assert!(grid_size(&s).unwrap_err().contains("optim.lr"));
    }

    #[test]
    fn random_draws_stay_in_range_and_are_seeded() {
        let s = vec![
            Param {
                key: "a".into(),
                dist: Dist::LogUniform {
                    low: 1e-4,
                    high: 1e-1,
                },
            },
            Param {
                key: "b".into(),
                dist: Dist::Int {
                    low: 16,
                    high: 128,
                    log: true,
                },
            },
        ];
        let mut seen_b = std::collections::BTreeSet::new();
        for n in 0..500 {
            let p = random(&s, &mut rng(3, n, 0));
            let a = p["a"].as_float().expect("a float");
            assert!((1e-4..=1e-1).contains(&a));
            let b = p["b"].as_integer().expect("an integer");
            assert!((16..=128).contains(&b));
            seen_b.insert(b);
            assert_eq!(
                p,
                random(&s, &mut rng(3, n, 0)),
                "a trial's draw is a function of (seed, number)"
            );
        }
        assert!(
            seen_b.contains(&16) && seen_b.contains(&128),
            "both ends are drawn"
        );
    }
}

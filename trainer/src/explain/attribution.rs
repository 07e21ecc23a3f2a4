//! Per-example attributions: how much each input moved one output away from a reference.
//!
//! - **Integrated Gradients** (Sundararajan et al., 2017): `(x - x') * mean over a in (0, 1) of
//!   dF/dx (x' + a (x - x'))`, by the midpoint rule; the steps double until the attributions
//!   sum to `F(x) - F(x')` within the tolerance (completeness), up to a limit.
//! - **KernelSHAP** (Lundberg and Lee, 2017): Shapley values of the groups, with a group that
//!   is "absent" taking the values of background rows (interventional); the weighted least
//!   squares over coalitions, constrained to sum to `F(x) - E[F(background)]`. Every coalition
//!   when there are few enough groups (exact Shapley values), else a seeded paired sample of
//!   `budget` coalitions drawn by the Shapley kernel.
//!
//! `F` is the explained output (see [`crate::task::Task::explained`]): a class's probability,
//! or the prediction in the target's units.

use burn::tensor::{Tensor, TensorData};
use kiln_models::{Input, InputShape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{ExplainError, Group, outputs};
use crate::eval::LoadedRun;

/// One example's attributions to one output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attribution {
    /// Per group (original column, or pixel for images).
    pub values: Vec<f64>,
    /// `F(x)`.
    pub output: f64,
    /// `F` at the reference: the baseline (IG) or the background's mean output (SHAP).
    pub reference: f64,
    /// `|sum(values) - (output - reference)|`.
    pub gap: f64,
    /// Integration steps (IG) or coalitions evaluated (SHAP).
    pub evaluations: usize,
}

/// `--steps` at most: Integrated Gradients' points on the path (refining doubles up to this).
pub const MAX_STEPS: usize = 4096;
/// `--budget` at most: KernelSHAP's coalitions (every coalition of up to 20 features).
pub const MAX_BUDGET: usize = 1 << 20;

/// How Integrated Gradients integrates.
#[derive(Debug, Clone, Copy)]
pub struct IgOptions {
    /// Steps of the first try; doubled while the completeness gap is above `tolerance`.
    pub steps: usize,
    /// At most this many steps.
    pub max_steps: usize,
    /// Relative: `gap <= tolerance * max(|F(x) - F(x')|, floor)`.
    pub tolerance: f64,
}

impl Default for IgOptions {
    fn default() -> Self {
        Self {
            steps: 64,
            max_steps: MAX_STEPS,
            tolerance: 0.01,
        }
    }
}

/// The floor, in units of the output's scale (see [`super::output_scale`]), under which a
/// change of output counts as none.
const GAP_FLOOR: f64 = 1e-3;

/// Whether `a`'s gap is within `tolerance` of its change of output; `scale` is the output's
/// scale (1 for probabilities, the target's standard deviation for a regression).
pub fn complete(a: &Attribution, tolerance: f64, scale: f64) -> bool {
    a.gap <= tolerance * (a.output - a.reference).abs().max(GAP_FLOOR * scale)
}

/// Integrated Gradients of output `class` (its column in the explained outputs) at `x`, from
/// `baseline`, per feature, then summed per group; `model` is [`super::differentiable`]'s.
pub fn integrated_gradients(
    run: &LoadedRun,
    (model, device): &(kiln_models::Model, burn::tensor::Device),
    x: &[f32],
    baseline: &[f32],
    class: usize,
    groups: &[Group],
    opts: IgOptions,
) -> Result<Attribution, ExplainError> {
    let d = x.len();
    let (ends, k) = outputs(run, &[baseline, x].concat(), d);
    let (reference, output) = (ends[class] as f64, ends[k + class] as f64);
    let mut steps = opts.steps.max(1);
    loop {
        let mut grad_sum = vec![0f64; d];
        // Points in chunks: a chunk's activations stay small whatever the steps.
        let chunk = match run.mconf.input() {
            InputShape::Images { .. } => 64,
            _ => 1024,
        };
        for start in (0..steps).step_by(chunk) {
            let m = chunk.min(steps - start);
            let mut pts = Vec::with_capacity(m * d);
            for s in start..start + m {
                let a = (s as f32 + 0.5) / steps as f32;
                pts.extend(baseline.iter().zip(x).map(|(&b, &v)| b + a * (v - b)));
            }
            let xt = Tensor::<2>::from_data(TensorData::new(pts, [m, d]), device).require_grad();
            let input = match run.mconf.input() {
                InputShape::Images {
                    channels,
                    height,
                    width,
                } => Input::Images(xt.clone().reshape([m, channels, height, width])),
                _ => Input::Rows(xt.clone()),
            };
            let e = run
                .task
                .explained(model.forward(input))
                .expect("only per-example tasks reach explanations");
            let grads = e.narrow(1, class, 1).sum().backward();
            let g = xt
                .grad(&grads)
                .expect("the input takes part in the output")
                .into_data()
                .try_to_vec::<f32>()
                .expect("gradients are f32");
            for row in g.chunks(d) {
                for (s, &v) in grad_sum.iter_mut().zip(row) {
                    *s += v as f64;
                }
            }
        }
        let per_feature: Vec<f64> = (0..d)
            .map(|i| (x[i] - baseline[i]) as f64 * grad_sum[i] / steps as f64)
            .collect();
        let values: Vec<f64> = groups
            .iter()
            .map(|g| g.features.iter().map(|&f| per_feature[f]).sum())
            .collect();
        let total: f64 = per_feature.iter().sum();
        let a = Attribution {
            values,
            output,
            reference,
            gap: (total - (output - reference)).abs(),
            evaluations: steps,
        };
        if complete(&a, opts.tolerance, super::output_scale(&run.pre)) || steps * 2 > opts.max_steps
        {
            return Ok(a);
        }
        steps *= 2;
    }
}

/// How KernelSHAP samples.
#[derive(Debug, Clone, Copy)]
pub struct ShapOptions {
    /// Coalitions evaluated (every one when there are no more than this).
    pub budget: usize,
    pub seed: u64,
}

/// KernelSHAP values of every explained output at `x`, per group, with `background` rows
/// (`[b, d]` row-major) standing in for absent groups. Returns one [`Attribution`] per output.
pub fn kernel_shap(
    run: &LoadedRun,
    x: &[f32],
    background: &[f32],
    groups: &[Group],
    opts: ShapOptions,
) -> Vec<Attribution> {
    let d = x.len();
    let b = background.len() / d.max(1);
    let m = groups.len();
    let (fx, k) = outputs(run, x, d);
    let (fb, _) = outputs(run, background, d);
    let base: Vec<f64> = (0..k)
        .map(|o| (0..b).map(|r| fb[r * k + o] as f64).sum::<f64>() / b.max(1) as f64)
        .collect();
    let coalitions = coalitions(m, opts);
    // v(z) for every coalition: the mean output over the background with z's groups from x.
    let mut v = vec![0f64; coalitions.len() * k];
    let per_chunk = (65_536 / (b * d).max(1)).max(1);
    for (ci, chunk) in coalitions.chunks(per_chunk).enumerate() {
        let mut rows = Vec::with_capacity(chunk.len() * b * d);
        for (z, _) in chunk {
            for r in 0..b {
                let start = rows.len();
                rows.extend_from_slice(&background[r * d..(r + 1) * d]);
                for (g, _) in groups.iter().enumerate().filter(|(g, _)| z[*g]) {
                    for &f in &groups[g].features {
                        rows[start + f] = x[f];
                    }
                }
            }
        }
        let (out, _) = outputs(run, &rows, d);
        for (j, _) in chunk.iter().enumerate() {
            let at = (ci * per_chunk + j) * k;
            for o in 0..k {
                v[at + o] = (0..b).map(|r| out[(j * b + r) * k + o] as f64).sum::<f64>() / b as f64;
            }
        }
    }
    (0..k)
        .map(|o| {
            let delta = fx[o] as f64 - base[o];
            let y: Vec<f64> = (0..coalitions.len())
                .map(|c| v[c * k + o] - base[o])
                .collect();
            let values = constrained_least_squares(m, &coalitions, &y, delta);
            let total: f64 = values.iter().sum();
            Attribution {
                values,
                output: fx[o] as f64,
                reference: base[o],
                gap: (total - delta).abs(),
                evaluations: coalitions.len(),
            }
        })
        .collect()
}

/// Coalitions (which groups come from `x`) with their regression weights: all of them with the
/// Shapley kernel's weights when `2^m - 2 <= budget`, else `budget` sampled by the kernel
/// (sizes with probability proportional to `(m - 1) / (s (m - s))`, then uniform subsets,
/// each with its complement), weighted equally.
fn coalitions(m: usize, opts: ShapOptions) -> Vec<(Vec<bool>, f64)> {
    if m <= 1 {
        return Vec::new();
    }
    // Every coalition while there are at most 2^20 of them (a budget can ask for no more).
    if m <= 20 && (1usize << m) - 2 <= opts.budget {
        return (1..(1usize << m) - 1)
            .map(|bits| {
                let z: Vec<bool> = (0..m).map(|g| bits >> g & 1 == 1).collect();
                let s = z.iter().filter(|&&x| x).count();
                let w = (m - 1) as f64 / (binomial(m, s) * (s * (m - s)) as f64);
                (z, w)
            })
            .collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let kernel: Vec<f64> = (1..m).map(|s| 1.0 / (s * (m - s)) as f64).collect();
    let total: f64 = kernel.iter().sum();
    let mut out = Vec::with_capacity(opts.budget + 1);
    while out.len() < opts.budget.max(2) {
        let mut u = rng.random::<f64>() * total;
        let mut s = 1;
        for (i, w) in kernel.iter().enumerate() {
            s = i + 1;
            if u < *w {
                break;
            }
            u -= w;
        }
        let mut idx: Vec<usize> = (0..m).collect();
        for i in 0..s {
            let j = rng.random_range(i..m);
            idx.swap(i, j);
        }
        let mut z = vec![false; m];
        for &g in &idx[..s] {
            z[g] = true;
        }
        let complement = z.iter().map(|&x| !x).collect();
        out.push((z, 1.0));
        out.push((complement, 1.0));
    }
    out
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// `phi` minimising `sum_z w (y_z - z . phi)^2` subject to `sum(phi) = delta`: the last value
/// is eliminated (`phi_m = delta - sum of the others`) and the normal equations of the rest
/// solved.
fn constrained_least_squares(
    m: usize,
    coalitions: &[(Vec<bool>, f64)],
    y: &[f64],
    delta: f64,
) -> Vec<f64> {
    if m == 0 {
        return Vec::new();
    }
    if m == 1 {
        return vec![delta];
    }
    let n = m - 1;
    let mut a = vec![0f64; n * n];
    let mut rhs = vec![0f64; n];
    for ((z, w), &yz) in coalitions.iter().zip(y) {
        let last = f64::from(u8::from(z[n]));
        let row: Vec<f64> = (0..n).map(|j| f64::from(u8::from(z[j])) - last).collect();
        let target = yz - last * delta;
        for i in 0..n {
            rhs[i] += w * row[i] * target;
            for j in 0..n {
                a[i * n + j] += w * row[i] * row[j];
            }
        }
    }
    // A whisker of ridge keeps a rank-deficient sample solvable.
    let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
    for i in 0..n {
        a[i * n + i] += 1e-12 * trace.max(1e-300);
    }
    let mut phi = solve(n, a, rhs);
    let rest: f64 = phi.iter().sum();
    phi.push(delta - rest);
    phi
}

/// Solves `a x = b` (`n x n`, row-major) by Gaussian elimination with partial pivoting.
fn solve(n: usize, mut a: Vec<f64>, mut b: Vec<f64>) -> Vec<f64> {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap_or(col);
        if pivot != col {
            for j in 0..n {
                a.swap(col * n + j, pivot * n + j);
            }
            b.swap(col, pivot);
        }
        let p = a[col * n + col];
        if p.abs() < 1e-300 {
            continue;
        }
        for i in col + 1..n {
            let f = a[i * n + col] / p;
            if f != 0.0 {
                for j in col..n {
                    a[i * n + j] -= f * a[col * n + j];
                }
                b[i] -= f * b[col];
            }
        }
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|j| a[i * n + j] * x[j]).sum();
        let p = a[i * n + i];
        x[i] = if p.abs() < 1e-300 {
            0.0
        } else {
            (b[i] - s) / p
        };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact Shapley values of a small game by the permutation formula, to check the
    /// regression against.
    fn shapley(m: usize, v: &dyn Fn(&[bool]) -> f64) -> Vec<f64> {
        let mut phi = vec![0.0; m];
        for bits in 0..1usize << m {
            let z: Vec<bool> = (0..m).map(|g| bits >> g & 1 == 1).collect();
            let s = z.iter().filter(|&&x| x).count();
            for i in (0..m).filter(|&i| !z[i]) {
                let mut with = z.clone();
                with[i] = true;
                let w = 1.0 / (m as f64 * binomial(m - 1, s));
                phi[i] += w * (v(&with) - v(&z));
            }
        }
        phi
    }

    #[test]
    fn the_kernel_regression_over_every_coalition_gives_exact_shapley_values() {
        // A game with interactions: v(z) = 3 z0 + 2 z1 z2 - z0 z3 + 0.5 z1.
        let v = |z: &[bool]| {
            let f = |i: usize| f64::from(u8::from(z[i]));
            3.0 * f(0) + 2.0 * f(1) * f(2) - f(0) * f(3) + 0.5 * f(1)
        };
        let m = 4;
        let cs = coalitions(
            m,
            ShapOptions {
                budget: 100,
                seed: 1,
            },
        );
        assert_eq!(cs.len(), 14);
        let y: Vec<f64> = cs.iter().map(|(z, _)| v(z)).collect();
        let delta = v(&[true; 4]);
        let phi = constrained_least_squares(m, &cs, &y, delta);
        for (a, b) in phi.iter().zip(shapley(m, &v)) {
            assert!((a - b).abs() < 1e-9, "{phi:?}");
        }
    }

    #[test]
    fn sampled_coalitions_recover_an_additive_game_exactly() {
        let w = [
            0.5, -1.0, 2.0, 0.0, 3.0, 1.5, -0.25, 0.75, 1.0, -2.0, 0.1, 0.2, 0.3, 0.4,
        ];
        let m = w.len();
        let cs = coalitions(
            m,
            ShapOptions {
                budget: 200,
                seed: 7,
            },
        );
        assert_eq!(cs.len(), 200);
        let v = |z: &[bool]| z.iter().zip(&w).filter(|p| *p.0).map(|p| p.1).sum::<f64>();
        let y: Vec<f64> = cs.iter().map(|(z, _)| v(z)).collect();
        let phi = constrained_least_squares(m, &cs, &y, w.iter().sum());
        for (a, b) in phi.iter().zip(w) {
            assert!((a - b).abs() < 1e-6, "{phi:?}");
        }
    }
}

//! Causal multi-head self-attention on host slices, reading the heads straight out of the
//! fused `[batch, t, 3 c]` projection (queries, keys, values side by side) and writing the
//! output `[batch, t, c]` with the heads already merged: no layout copies. Per batch row and
//! head, forward: `S = QKᵀ/√d`, `P = softmax(S)` over the keys at or before each query,
//! `Y = PV`; backward: `dP = dY Vᵀ`, `dV = Pᵀ dY`, `dS = P ⊙ (dP - Σ dP·P) / √d`, `dQ = dS K`,
//! `dK = dSᵀ Q`. Work is split over the batch rows, each row's result computed by one thread,
//! so the values do not depend on the number of threads.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::matmul::{View, matmul};
use crate::vmath::{dot, exp, max, sum, wide};

/// The sizes of one attention: `c = heads * d` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    /// Channels per head.
    pub d: usize,
}

impl Shape {
    fn c(&self) -> usize {
        self.heads * self.d
    }

    /// One batch row's share of the projection, the output and the weights.
    fn row_lens(&self) -> (usize, usize, usize) {
        let (t, c) = (self.t, self.c());
        (t * 3 * c, t * c, self.heads * t * t)
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

wide! {
    /// Softmax of each row `i` of a `t x t` matrix over its first `i + 1` entries; the rest 0.
    fn causal_softmax_rows(s: &mut [f32], t: usize) {
        for (i, row) in s.chunks_exact_mut(t).enumerate() {
            let (seen, hidden) = row.split_at_mut(i + 1);
            let m = max(seen);
            for x in seen.iter_mut() {
                *x = exp(*x - m);
            }
            let inv = 1.0 / sum(seen);
            for x in seen.iter_mut() {
                *x *= inv;
            }
            hidden.fill(0.0);
        }
    }
}

wide! {
    /// `dp <- p ⊙ (dp - Σ dp·p) · scale`, row by row (0 wherever `p` is).
    fn softmax_grad_rows(p: &[f32], dp: &mut [f32], t: usize, scale: f32) {
        for (p, dp) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
            let dot = dot(p, dp);
            for (g, &p) in dp.iter_mut().zip(p) {
                *g = p * (*g - dot) * scale;
            }
        }
    }
}

/// Panics unless the buffers have the sizes `s` says (a caller's bug: the op's function
/// checks shapes before calling).
fn check(s: &Shape, qkv: &[f32], rest: &[(&str, usize, usize)]) {
    let (x_len, ..) = s.row_lens();
    assert_eq!(
        qkv.len(),
        s.batch * x_len,
        "attention: qkv has the wrong size"
    );
    for &(name, len, per_row) in rest {
        assert_eq!(
            len,
            s.batch * per_row,
            "attention: {name} has the wrong size"
        );
    }
}

/// The output `[batch, t, c]` and the attention weights `[batch, heads, t, t]` (kept for the
/// backward pass).
pub fn forward(s: &Shape, qkv: &[f32]) -> (Vec<f32>, Vec<f32>) {
    check(s, qkv, &[]);
    let (t, c, d) = (s.t, s.c(), s.d);
    let (x_len, y_len, p_len) = s.row_lens();
    let mut y = vec![0.0f32; s.batch * y_len];
    let mut p = vec![0.0f32; s.batch * p_len];
    if y.is_empty() {
        return (y, p);
    }
    y.par_chunks_mut(y_len)
        .zip(p.par_chunks_mut(p_len))
        .zip(qkv.par_chunks(x_len))
        .for_each(|((y, p), x)| {
            for (h, p) in p.chunks_exact_mut(t * t).enumerate() {
                let q = View::new(&x[h * d..], 3 * c, 1);
                let k = View::new(&x[c + h * d..], 3 * c, 1);
                let v = View::new(&x[2 * c + h * d..], 3 * c, 1);
                matmul(
                    [t, t, d],
                    p,
                    t,
                    false,
                    q,
                    k.t(),
                    s.scale(),
                    Parallelism::None,
                );
                causal_softmax_rows(p, t);
                let pv = View::new(p, t, 1);
                matmul(
                    [t, d, t],
                    &mut y[h * d..],
                    c,
                    false,
                    pv,
                    v,
                    1.0,
                    Parallelism::None,
                );
            }
        });
    (y, p)
}

/// The gradient of the projection `[batch, t, 3 c]` from the output's `dy`.
pub fn backward(s: &Shape, qkv: &[f32], p: &[f32], dy: &[f32]) -> Vec<f32> {
    let (x_len, y_len, p_len) = s.row_lens();
    check(s, qkv, &[("p", p.len(), p_len), ("dy", dy.len(), y_len)]);
    let (t, c, d) = (s.t, s.c(), s.d);
    let mut dx = vec![0.0f32; qkv.len()];
    if dx.is_empty() {
        return dx;
    }
    let none = Parallelism::None;
    dx.par_chunks_mut(x_len)
        .zip(qkv.par_chunks(x_len))
        .zip(p.par_chunks(p_len).zip(dy.par_chunks(y_len)))
        .for_each_init(
            || vec![0.0f32; t * t],
            |ds, ((dx, x), (p, dy))| {
                for (h, p) in p.chunks_exact(t * t).enumerate() {
                    let q = View::new(&x[h * d..], 3 * c, 1);
                    let k = View::new(&x[c + h * d..], 3 * c, 1);
                    let v = View::new(&x[2 * c + h * d..], 3 * c, 1);
                    let g = View::new(&dy[h * d..], c, 1);
                    let pm = View::new(p, t, 1);
                    matmul([t, t, d], ds, t, false, g, v.t(), 1.0, none);
                    matmul(
                        [t, d, t],
                        &mut dx[2 * c + h * d..],
                        3 * c,
                        false,
                        pm.t(),
                        g,
                        1.0,
                        none,
                    );
                    softmax_grad_rows(p, ds, t, s.scale());
                    let dsm = View::new(ds, t, 1);
                    matmul([t, d, t], &mut dx[h * d..], 3 * c, false, dsm, k, 1.0, none);
                    matmul(
                        [t, d, t],
                        &mut dx[c + h * d..],
                        3 * c,
                        false,
                        dsm.t(),
                        q,
                        1.0,
                        none,
                    );
                }
            },
        );
    dx
}

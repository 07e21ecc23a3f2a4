//! Layer normalisation over the last dimension for the CPU, with one fused backward.
//!
//! Under autodiff, burn 0.22.1 builds layer norm from about eight tracked ops (mean, subtract,
//! square, mean, add, sqrt, divide, scale, shift), each a pass with its own buffers forward and
//! backward. Here the forward is one pass per row (its mean and `rstd` kept for the backward)
//! and the backward one pass per row for the input, rows in groups over the threads, with the
//! scale's and shift's gradients summed per group and the groups added in order (independent
//! of the thread count):
//!
//! `x̂ = (x - mean) · rstd`, `g = dy · γ`, `dx = rstd (g - mean(g) - x̂ · mean(g · x̂))`,
//! `dγ = Σ dy · x̂`, `dβ = Σ dy`.
//!
//! The reference is burn's own `LayerNorm::forward`: the tests compare values and gradients.
//!
//! **Not used by kiln's models**: at the GPT's sizes (`[12, 64, 128]`) it measured 0.65-0.8x
//! burn's composite path (`cargo bench --bench kernels`, `KILN_BENCH_ONLY=layer_norm`), the
//! cost being the op's set-up and thread hand-offs rather than its arithmetic. Kernels are
//! wired in only where they win; this one waits for that.

#[cfg(test)]
mod tests;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::LayerNorm;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::{flex, host};

/// Rows one task takes (and whose scale and shift gradients it sums before the ordered
/// reduction): at least 64, and about 64k elements, so that a small layer is not split into
/// tasks that cost more to wake threads for than to compute. A function of the row length
/// only, so the reduction's order does not depend on the threads.
fn group(n: usize) -> usize {
    (16384 / n.max(1)).max(64)
}

/// `Σ f(i)` for `i < n` in eight lanes (so that the compiler can vectorise it), the lanes then
/// added in order: the same value on every machine and thread count.
#[inline]
fn sum8(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let whole = n / 8 * 8;
    for base in (0..whole).step_by(8) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += f(base + l);
        }
    }
    let mut total = lanes.iter().sum::<f32>();
    for i in whole..n {
        total += f(i);
    }
    total
}

#[backend_extension(Flex, Autodiff)]
pub trait LayerNormBackend: Backend {
    fn kiln_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// `ln.forward(x)` over the last dimension, through kiln's kernel on the CPU (`f32`, kernels
/// on) and burn's `LayerNorm::forward` elsewhere. `epsilon` must be the one `ln` was built with
/// (burn keeps it private).
pub fn layer_norm<const D: usize>(ln: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    let gamma = ln.gamma.val();
    let usable = crate::applies(&x)
        && gamma.dtype() == DType::F32
        && x.dims()[D - 1] == gamma.dims()[0]
        && x.dims()[D - 1] > 0;
    if !usable {
        return ln.forward(x);
    }
    // Without a shift, a constant zero one (not tracked: it gets no gradient).
    let beta = match &ln.beta {
        Some(b) => b.val(),
        None => Tensor::zeros(gamma.dims(), &gamma.device()),
    };
    Tensor::from_dispatch(<Dispatch as LayerNormBackend>::kiln_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

impl LayerNormBackend for Flex {
    fn kiln_layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        forward(&x, &gamma, &beta, epsilon).0
    }
}

/// The forward pass per row of `n`, rows in groups over the threads: `y`, and each row's mean
/// and `1 / sqrt(var + epsilon)` for the backward.
fn forward_values(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = gamma.len();
    let rows = x.len() / n;
    let g = group(n);
    let (mut y, mut mean, mut rstd) = (
        vec![0.0f32; x.len()],
        vec![0.0f32; rows],
        vec![0.0f32; rows],
    );
    y.par_chunks_mut(g * n)
        .zip(mean.par_chunks_mut(g).zip(rstd.par_chunks_mut(g)))
        .zip(x.par_chunks(g * n))
        .for_each(|((y, (mean, rstd)), x)| {
            for (((y, x), m), r) in y
                .chunks_exact_mut(n)
                .zip(x.chunks_exact(n))
                .zip(mean.iter_mut())
                .zip(rstd.iter_mut())
            {
                let mu = sum8(n, |i| x[i]) / n as f32;
                let var = sum8(n, |i| (x[i] - mu) * (x[i] - mu)) / n as f32;
                let rs = (1.0 / (f64::from(var) + epsilon).sqrt()) as f32;
                for i in 0..n {
                    y[i] = (x[i] - mu) * rs * gamma[i] + beta[i];
                }
                (*m, *r) = (mu, rs);
            }
        });
    (y, mean, rstd)
}

/// Per row of `n`: the input's gradient, and the scale's and shift's summed per group of rows
/// (groups added in order).
fn backward_values(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    mean: &[f32],
    rstd: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = gamma.len();
    let g = group(n);
    let mut dx = vec![0.0f32; x.len()];
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(g * n)
        .zip(x.par_chunks(g * n).zip(dy.par_chunks(g * n)))
        .zip(mean.par_chunks(g).zip(rstd.par_chunks(g)))
        .map(|((dx, (x, dy)), (mean, rstd))| {
            let (mut dgamma, mut dbeta) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut xhat = vec![0.0f32; n];
            for ((((dx, x), dy), &mu), &rs) in dx
                .chunks_exact_mut(n)
                .zip(x.chunks_exact(n))
                .zip(dy.chunks_exact(n))
                .zip(mean)
                .zip(rstd)
            {
                for i in 0..n {
                    xhat[i] = (x[i] - mu) * rs;
                    dgamma[i] += dy[i] * xhat[i];
                    dbeta[i] += dy[i];
                }
                let mean_g = sum8(n, |i| dy[i] * gamma[i]) / n as f32;
                let mean_gx = sum8(n, |i| dy[i] * gamma[i] * xhat[i]) / n as f32;
                for i in 0..n {
                    dx[i] = rs * (dy[i] * gamma[i] - mean_g - xhat[i] * mean_gx);
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; n], vec![0.0f32; n]);
    for (pg, pb) in partial {
        dgamma.iter_mut().zip(&pg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    (dx, dgamma, dbeta)
}

/// Runs the forward pass on Flex tensors.
fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> (FlexTensor, Vec<f32>, Vec<f32>) {
    let (y, mean, rstd) = forward_values(&host(x), &host(gamma), &host(beta), epsilon);
    (flex(y, x.shape().to_vec()), mean, rstd)
}

/// What the backward step needs: the input, the scale, each row's mean and `rstd`.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Saved {
            x,
            gamma,
            mean,
            rstd,
        } = ops.state;
        let (dx, dgamma, dbeta) =
            backward_values(&host(&x), &host(&gamma), &host(&dy), &mean, &rstd);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, x.shape().to_vec()));
        }
        let n = dgamma.len();
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(dgamma, vec![n]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(dbeta, vec![n]));
        }
    }
}

impl<C: CheckpointStrategy> LayerNormBackend for Autodiff<Flex, C> {
    fn kiln_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let prep = LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (y, mean, rstd) = forward(x.primitive(), gamma.primitive(), beta.primitive(), epsilon);
        match prep {
            OpsKind::Tracked(prep) => {
                let saved = Saved {
                    x: x.into_primitive(),
                    gamma: gamma.into_primitive(),
                    mean,
                    rstd,
                };
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

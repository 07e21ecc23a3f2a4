//! Layer normalisation over the last dimension for the CPU, with one fused backward.
//!
//! Under autodiff, burn 0.22.1 builds layer norm from about eight tracked ops (mean, subtract,
//! square, mean, add, sqrt, divide, scale, shift), each a pass with its own buffers forward and
//! backward. Here the forward is burn-flex's own fused layer norm (the values are flex's) and
//! the backward one pass per row for the input, with the scale's and shift's gradients summed
//! per fixed group of rows and the groups added in order (independent of the thread count):
//!
//! `x̂ = (x - mean) · rstd`, `g = dy · γ`, `dx = rstd (g - mean(g) - x̂ · mean(g · x̂))`,
//! `dγ = Σ dy · x̂`, `dβ = Σ dy`.
//!
//! The reference is burn's own `LayerNorm::forward`: the tests compare values and gradients.

#[cfg(test)]
mod tests;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::LayerNorm;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::{flex, host};

/// Rows whose scale and shift gradients one task sums before the ordered reduction.
const GROUP: usize = 64;

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
    let usable = crate::enabled()
        && crate::on_cpu(&x)
        && x.dtype() == DType::F32
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
        Flex::layer_norm(x, gamma, Some(beta), epsilon)
    }
}

/// Per row of `n`: the input's gradient, and this row's terms of the scale's and shift's.
fn backward_values(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = gamma.len();
    let rows = x.len() / n;
    let mut dx = vec![0.0f32; x.len()];
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(GROUP * n)
        .zip(x.par_chunks(GROUP * n).zip(dy.par_chunks(GROUP * n)))
        .map(|(dx, (x, dy))| {
            let (mut dgamma, mut dbeta) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut xhat = vec![0.0f32; n];
            for ((dx, x), dy) in dx
                .chunks_exact_mut(n)
                .zip(x.chunks_exact(n))
                .zip(dy.chunks_exact(n))
            {
                let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
                let var = x
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n as f64;
                let rstd = 1.0 / (var + epsilon).sqrt();
                let (mut mean_g, mut mean_gx) = (0.0f64, 0.0f64);
                for i in 0..n {
                    xhat[i] = ((f64::from(x[i]) - mean) * rstd) as f32;
                    let g = f64::from(dy[i] * gamma[i]);
                    mean_g += g;
                    mean_gx += g * f64::from(xhat[i]);
                    dgamma[i] += dy[i] * xhat[i];
                    dbeta[i] += dy[i];
                }
                mean_g /= n as f64;
                mean_gx /= n as f64;
                for i in 0..n {
                    let g = f64::from(dy[i] * gamma[i]);
                    dx[i] = (rstd * (g - mean_g - f64::from(xhat[i]) * mean_gx)) as f32;
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
    debug_assert_eq!(rows * n, x.len());
    (dx, dgamma, dbeta)
}

/// What the backward step needs: the input, the scale, epsilon.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    epsilon: f64,
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Saved { x, gamma, epsilon } = ops.state;
        let (dx, dgamma, dbeta) = backward_values(&host(&x), &host(&gamma), &host(&dy), epsilon);
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
        let y = Flex::layer_norm(
            x.primitive().clone(),
            gamma.primitive().clone(),
            Some(beta.primitive().clone()),
            epsilon,
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let saved = Saved {
                    x: x.into_primitive(),
                    gamma: gamma.into_primitive(),
                    epsilon,
                };
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

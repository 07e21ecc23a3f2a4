//! Softmax over the last dimension for the CPU, with one fused backward.
//!
//! Under autodiff, burn 0.22.1 builds softmax from five tracked ops (max, subtract, exp, sum,
//! divide), each with its own pass and buffers forward and backward, and flex's forward calls
//! libm's scalar `expf`. Here the forward is one vectorised pass per row (kiln's branch-free
//! `exp`, [`crate::vmath`]) and the backward another: `dx = y (dy - Σ dy·y)`, rows over the
//! rayon pool. Sums run in 16 fixed lanes, so the values do not depend on the vector width.
//!
//! On burn's GPU backends (WGPU, CUDA) the same two passes are CubeCL kernels ([`gpu`]): a GPU
//! thread per row up to 128 elements, a work group per longer row.
//!
//! The reference is burn's own `softmax`: the tests compare values and gradients with it, on
//! the CPU and on a WGPU device (Mesa's lavapipe in CI).

#[cfg(feature = "gpu")]
mod gpu;
#[cfg(test)]
mod tests;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::vmath::{dot, exp, max, sum, wide};
use crate::{flex, host};

// With burn's fusion (on in GPU builds) a GPU tensor is a `Fusion<CubeBackend>`: the kernel is
// recorded as one opaque operation of the lazy stream, its output shaped like its input.
#[backend_extension(
    Flex,
    Cube: cfg(feature = "gpu"),
    Fusion: cfg(feature = "gpu"),
    Autodiff
)]
pub trait SoftmaxBackend: Backend {
    #[fusion(dtype = x, shape = x)]
    fn kiln_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The backward step of [`SoftmaxBackend::kiln_softmax_last`] on a backend without autodiff:
/// `dx = y (dy - Σ dy·y)` per row, from the output `y`.
#[backend_extension(Flex, Cube: cfg(feature = "gpu"), Fusion: cfg(feature = "gpu"))]
pub trait SoftmaxGrad: Backend {
    #[fusion(dtype = y, shape = y)]
    fn softmax_last_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Softmax over the last dimension, through kiln's kernels on the CPU and on the GPU backends
/// (`f32`, kernels on) and burn's `softmax` elsewhere.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let usable = crate::applies(&x) || crate::applies_gpu(&x);
    if !usable || x.dims()[D - 1] == 0 {
        return burn::tensor::activation::softmax(x, D - 1);
    }
    Tensor::from_dispatch(<Dispatch as SoftmaxBackend>::kiln_softmax_last(
        x.into_dispatch(),
    ))
}

/// Rows per task for rows of `n`: about 16k elements.
fn rows_per_task(n: usize) -> usize {
    (16384 / n).max(1)
}

wide! {
    /// Softmax of each row of `n`: `e^(x - max) / Σ e^(x - max)`.
    fn forward_rows(x: &[f32], y: &mut [f32], n: usize) {
        for (x, y) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let max = max(x);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = exp(x - max);
            }
            let scale = 1.0 / sum(y);
            for y in y.iter_mut() {
                *y *= scale;
            }
        }
    }
}

wide! {
    /// `dx = y (dy - Σ dy·y)` for each row of `n`.
    fn backward_rows(y: &[f32], dy: &[f32], dx: &mut [f32], n: usize) {
        for ((dx, y), dy) in dx.chunks_exact_mut(n).zip(y.chunks_exact(n)).zip(dy.chunks_exact(n)) {
            let dot = dot(y, dy);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                *dx = y * (g - dot);
            }
        }
    }
}

fn forward(x: FlexTensor) -> FlexTensor {
    let shape = x.shape().to_vec();
    let n = shape[shape.len() - 1];
    let x = host(&x);
    let mut y = vec![0.0f32; x.len()];
    let chunk = rows_per_task(n) * n;
    y.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(y, x)| forward_rows(x, y, n));
    flex(y, shape)
}

impl SoftmaxBackend for Flex {
    fn kiln_softmax_last(x: FlexTensor) -> FlexTensor {
        forward(x)
    }
}

/// `dx = y (dy - Σ dy·y)` per row of `n`.
fn backward_values(y: &[f32], dy: &[f32], n: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    let chunk = rows_per_task(n) * n;
    dx.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .for_each(|(dx, (y, dy))| backward_rows(y, dy, dx, n));
    dx
}

impl SoftmaxGrad for Flex {
    fn softmax_last_backward(y: FlexTensor, dy: FlexTensor) -> FlexTensor {
        let shape = y.shape();
        let n = shape[shape.num_dims() - 1];
        let dx = backward_values(&host(&y), &host(&dy), n);
        flex(dx, shape.to_vec())
    }
}

#[derive(Debug)]
struct SoftmaxBackward;

impl<B: SoftmaxGrad> Backward<B, 1> for SoftmaxBackward {
    /// The output.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<FloatTensor<B>, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::softmax_last_backward(ops.state, dy));
        }
    }
}

impl<B: SoftmaxBackend + SoftmaxGrad, C: CheckpointStrategy> SoftmaxBackend for Autodiff<B, C> {
    fn kiln_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::kiln_softmax_last(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::kiln_softmax_last(x.into_primitive())),
        }
    }
}

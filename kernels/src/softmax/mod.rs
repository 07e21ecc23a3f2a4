//! Softmax over the last dimension for the CPU, with one fused backward.
//!
//! Under autodiff, burn 0.22.1 builds softmax from five tracked ops (max, subtract, exp, sum,
//! divide), each with its own pass and buffers forward and backward. Here the forward is
//! burn-flex's own fused softmax (the values are flex's) and the backward one pass per row:
//! `dx = y (dy - Σ dy·y)`, rows over the rayon pool.
//!
//! The reference is burn's own `softmax`: the tests compare values and gradients with it.

#[cfg(test)]
mod tests;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::{flex, host};

#[backend_extension(Flex, Autodiff)]
pub trait SoftmaxBackend: Backend {
    fn kiln_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Softmax over the last dimension, through kiln's kernel on the CPU (`f32`, kernels on) and
/// burn's `softmax` elsewhere.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !crate::applies(&x) || x.dims()[D - 1] == 0 {
        return burn::tensor::activation::softmax(x, D - 1);
    }
    Tensor::from_dispatch(<Dispatch as SoftmaxBackend>::kiln_softmax_last(
        x.into_dispatch(),
    ))
}

fn forward(x: FlexTensor) -> FlexTensor {
    let last = x.shape().num_dims() - 1;
    Flex::softmax(x, last)
}

impl SoftmaxBackend for Flex {
    fn kiln_softmax_last(x: FlexTensor) -> FlexTensor {
        forward(x)
    }
}

/// `dx = y (dy - Σ dy·y)` per row of `n`.
fn backward_values(y: &[f32], dy: &[f32], n: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    // Rows per task: about 16k elements.
    let rows = (16384 / n).max(1);
    dx.par_chunks_mut(rows * n)
        .zip(y.par_chunks(rows * n).zip(dy.par_chunks(rows * n)))
        .for_each(|(dx, (y, dy))| {
            for ((dx, y), dy) in dx
                .chunks_exact_mut(n)
                .zip(y.chunks_exact(n))
                .zip(dy.chunks_exact(n))
            {
                let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                    *dx = y * (g - dot);
                }
            }
        });
    dx
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            let y = ops.state;
            let shape = y.shape();
            let n = shape[shape.num_dims() - 1];
            let dx = backward_values(&host(&y), &host(&dy), n);
            grads.register::<Flex>(node.id, flex(dx, shape.to_vec()));
        }
    }
}

impl<C: CheckpointStrategy> SoftmaxBackend for Autodiff<Flex, C> {
    fn kiln_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = forward(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
        }
    }
}

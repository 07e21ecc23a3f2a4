//! GELU (the exact, erf form) for the CPU, forward and backward, vectorised, on all threads.
//!
//! burn-flex 0.22.1 computes GELU and its gradient one element at a time on one thread (libm's
//! scalar `erff`, which branches, so it cannot be vectorised); under training that was about
//! 6% of a GPT step's samples while the other core waited. Here `erf` and `exp` are kiln's
//! branch-free ones ([`crate::vmath`], within 5e-7 of the exact values), so the loops run in
//! AVX-512 or AVX2 lanes, split over the rayon pool.
//!
//! The reference is burn's own `gelu`: the tests compare values and gradients with it.

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

use crate::vmath::{erf, exp, wide};
use crate::{flex, host};

/// Elements per task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 14;

#[backend_extension(Flex, Autodiff)]
pub trait GeluBackend: Backend {
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `0.5 x (1 + erf(x / √2))`, elementwise, through kiln's kernel on the CPU (`f32`, kernels
/// on) and burn's `gelu` elsewhere.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !crate::applies(&x) {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as GeluBackend>::kiln_gelu(x.into_dispatch()))
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

wide! {
    /// `y = 0.5 x (1 + erf(x / √2))`.
    fn forward_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
        }
    }
}

wide! {
    /// The forward values, and `erf(x / √2)` for the backward step.
    fn forward_keeping_chunk(x: &[f32], y: &mut [f32], erf_out: &mut [f32]) {
        for ((y, e), &x) in y.iter_mut().zip(erf_out.iter_mut()).zip(x) {
            *e = erf(x * FRAC_1_SQRT_2);
            *y = 0.5 * x * (1.0 + *e);
        }
    }
}

wide! {
    /// `dx = dy (Φ(x) + x φ(x))`, with `Φ(x) = (1 + erf(x / √2)) / 2` from the forward pass.
    fn backward_chunk(x: &[f32], erf_in: &[f32], dy: &[f32], dx: &mut [f32]) {
        // 1 / √(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for (((dx, &x), &e), &g) in dx.iter_mut().zip(x).zip(erf_in).zip(dy) {
            let cdf = 0.5 * (1.0 + e);
            let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
            *dx = g * (cdf + x * pdf);
        }
    }
}

fn forward_values(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| forward_chunk(x, y));
    y
}

/// The forward values and `erf(x / √2)` of each element, which the backward reuses.
fn forward_keeping_erf(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut y, mut erf) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
    y.par_chunks_mut(CHUNK)
        .zip(erf.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(y, (erf, x))| forward_keeping_chunk(x, y, erf));
    (y, erf)
}

fn backward_values(x: &[f32], erf: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(
            x.par_chunks(CHUNK)
                .zip(erf.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))),
        )
        .for_each(|(dx, (x, (erf, dy)))| backward_chunk(x, erf, dy, dx));
    dx
}

fn forward(x: &FlexTensor) -> FlexTensor {
    flex(forward_values(&host(x)), x.shape().to_vec())
}

impl GeluBackend for Flex {
    fn kiln_gelu(x: FlexTensor) -> FlexTensor {
        forward(&x)
    }
}

/// The input and `erf(x / √2)`, for the backward step.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    erf: Vec<f32>,
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            let Saved { x, erf } = ops.state;
            let dx = backward_values(&host(&x), &erf, &host(&dy));
            grads.register::<Flex>(node.id, flex(dx, x.shape().to_vec()));
        }
    }
}

impl<C: CheckpointStrategy> GeluBackend for Autodiff<Flex, C> {
    fn kiln_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, erf) = forward_keeping_erf(&host(x.primitive()));
                let y = flex(y, x.primitive().shape().to_vec());
                prep.finish(
                    Saved {
                        x: x.into_primitive(),
                        erf,
                    },
                    y,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive())),
        }
    }
}

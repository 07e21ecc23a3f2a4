//! GELU (the exact, erf form) for the CPU, forward and backward, on all threads.
//!
//! burn-flex 0.22.1 computes GELU and its gradient one element at a time on one thread (libm's
//! scalar `erff`); under training that was about 6% of a GPT step's samples while the other
//! core waited. These are the same formulas, element for element (so the values are flex's to
//! the bit), split over the rayon pool.
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

fn forward_values(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = 0.5 * x * (1.0 + libm::erff(x / core::f32::consts::SQRT_2));
            }
        });
    y
}

/// The forward values and `erf(x / √2)` of each element, which the backward reuses (flex
/// computes it again there).
fn forward_keeping_erf(x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut y, mut erf) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
    y.par_chunks_mut(CHUNK)
        .zip(erf.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(y, (erf, x))| {
            for ((y, e), &x) in y.iter_mut().zip(erf.iter_mut()).zip(x) {
                *e = libm::erff(x / core::f32::consts::SQRT_2);
                *y = 0.5 * x * (1.0 + *e);
            }
        });
    (y, erf)
}

/// flex's gradient formula, with `erf(x / √2)` from the forward pass.
fn backward_values(x: &[f32], erf: &[f32], dy: &[f32]) -> Vec<f32> {
    let inv_sqrt_2pi: f32 = 1.0 / (2.0 * core::f32::consts::PI).sqrt();
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(
            x.par_chunks(CHUNK)
                .zip(erf.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))),
        )
        .for_each(|(dx, (x, (erf, dy)))| {
            for (((dx, &x), &e), &g) in dx.iter_mut().zip(x).zip(erf).zip(dy) {
                let cdf = 0.5 * (1.0 + e);
                let pdf = inv_sqrt_2pi * (-0.5 * x * x).exp();
                *dx = g * (cdf + x * pdf);
            }
        });
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

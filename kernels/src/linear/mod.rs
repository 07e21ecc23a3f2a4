//! A linear layer at inference, `x · W + b`, on the CPU ([`cpu`]).
//!
//! burn's CPU backend multiplies through the `gemm` crate, which packs its operands first; for
//! the one-row products of serving that meant copying the whole weight matrix for every
//! request (the MNIST CNN's first dense layer: 1.6 MB per image). This kernel reads the
//! weights where they lie, once per tile of rows.
//!
//! Inference only: the op applies on the CPU backend without autodiff; training keeps burn's
//! `Linear::forward` and its gradients. The reference is that `forward`: the tests compare
//! values with it and check that a row's answer does not depend on its batch.

pub mod cpu;
#[cfg(test)]
mod tests;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor};

use crate::{flex, host};

/// `x: [n, d_in]`, `weight: [d_in, d_out]`, `bias: [d_out]` -> `[n, d_out]`.
#[backend_extension(Flex)]
pub trait LinearBackend: Backend {
    fn kiln_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `linear.forward(x)` for `x: [n, d_in]`, through the kernel where it applies (the CPU
/// backend without autodiff, `f32`, a bias, a CPU with fused multiply-add, and kernels
/// switched on) and through burn otherwise.
pub fn linear(linear: &Linear, x: Tensor<2>) -> Tensor<2> {
    let usable =
        crate::enabled() && crate::on_plain_cpu(&x) && x.dtype() == DType::F32 && cpu::available();
    if !usable {
        // The parameters are not even read here: a parameter not yet initialised is drawn
        // when first read, so reading the bias before the weight (or reading either) would
        // change a fresh model's initial weights.
        return linear.forward(x);
    }
    // The weight, then the bias: the order in which `Linear::forward` reads them.
    let weight = linear.weight.val();
    let Some(bias) = linear.bias.as_ref().map(|b| b.val()) else {
        return linear.forward(x);
    };
    let [_, d_in] = x.dims();
    let [w_in, d_out] = weight.dims();
    // Weights under autodiff (a training step, whose batch may sit on the plain device) keep
    // burn's path and their gradients.
    let fits = crate::on_plain_cpu(&weight)
        && crate::on_plain_cpu(&bias)
        && w_in == d_in
        && bias.dims() == [d_out]
        && weight.dtype() == DType::F32
        && bias.dtype() == DType::F32;
    if !fits {
        return linear.forward(x);
    }
    Tensor::from_dispatch(<Dispatch as LinearBackend>::kiln_linear(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// How many times the kernel ran: the tests check that `linear` takes it.
#[cfg(test)]
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl LinearBackend for Flex {
    fn kiln_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        #[cfg(test)]
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let [n, d_in] = x.shape().dims::<2>();
        let [_, d_out] = weight.shape().dims::<2>();
        let s = cpu::Shape { n, d_in, d_out };
        let y = cpu::forward(&s, &host(&x), &host(&weight), &host(&bias))
            .expect("the caller checked that the CPU runs the kernel");
        flex(y, vec![n, d_out])
    }
}

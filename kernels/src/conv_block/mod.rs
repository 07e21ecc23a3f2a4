//! A CNN block at inference, `maxpool(relu(conv2d(x)))`, as one op on the CPU: the
//! convolution, the ReLU and the pooling in one pass over each image ([`cpu`]).
//!
//! Serving answers one image at a time, and there the op-by-op path spent its time around the
//! arithmetic: an im2col copy and a matrix product packed afresh for every image (the first
//! convolution's product only 9 deep), a full-size activation written and read back by the
//! ReLU and again by the pool. Here each output is a vector of fused multiply-adds straight
//! from the padded image, pooled while it is still in cache; a block with a 3x3 kernel, a
//! 2x2 pool and channels in whole vectors of 16 takes Winograd's F(2x2, 3x3) ([`winograd`]).
//!
//! Inference only: the op applies on the CPU backend without autodiff (evaluation,
//! `kiln predict`, `kiln serve`); training keeps the op-by-op path and its gradients, so
//! training runs are unchanged. The reference is that op-by-op path (`conv2d`, `relu`,
//! `max_pool2d`): the tests compare values with it and check that an image's answer does not
//! depend on its batch.

pub mod cpu;
#[cfg(test)]
mod tests;
mod winograd;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor};

use crate::{flex, host};
use cpu::Geometry;

/// The block as the kernel takes it: input, weight and bias primitives, the padding (top,
/// bottom, left, right) and the pool's window (stride = window; `[1, 1]` for none).
#[backend_extension(Flex)]
pub trait ConvBlockBackend: Backend {
    fn kiln_conv_relu_pool(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: [usize; 4],
        pool: [usize; 2],
    ) -> FloatTensor<Self>;
}

/// `pool(relu(conv(x)))`, `x: [batch, c_in, h, w]` -> `[batch, c_out, oh / p, ow / p]` (no pool
/// when `pool` is `None`), through the fused kernel where it applies (the CPU backend without
/// autodiff, `f32`, stride 1, no groups, no dilation, a bias, explicit or no padding, a pool
/// whose stride is its window, a CPU with fused multiply-add, and kernels switched on) and op
/// by op otherwise.
pub fn conv_relu_pool(conv: &Conv2d, pool: Option<&MaxPool2d>, x: Tensor<4>) -> Tensor<4> {
    match fused(conv, pool, &x) {
        Some((g, weight, bias)) => {
            Tensor::from_dispatch(<Dispatch as ConvBlockBackend>::kiln_conv_relu_pool(
                x.into_dispatch(),
                weight.into_dispatch(),
                bias.into_dispatch(),
                g.padding,
                g.pool,
            ))
        }
        None => op_by_op(conv, pool, x),
    }
}

/// The reference: kiln's convolution, burn's ReLU, kiln's pooling.
pub fn op_by_op(conv: &Conv2d, pool: Option<&MaxPool2d>, x: Tensor<4>) -> Tensor<4> {
    let y = relu(crate::conv2d::conv2d(conv, x));
    match pool {
        Some(pool) => crate::max_pool2d::max_pool2d(pool, y),
        None => y,
    }
}

/// The block's geometry, weight and bias when the fused kernel applies to it.
fn fused(
    conv: &Conv2d,
    pool: Option<&MaxPool2d>,
    x: &Tensor<4>,
) -> Option<(Geometry, Tensor<4>, Tensor<1>)> {
    if !(crate::enabled() && crate::on_plain_cpu(x) && x.dtype() == DType::F32 && cpu::available())
    {
        return None;
    }
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, bottom, left, right],
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Same => return None,
    };
    let pool = match pool {
        None => [1, 1],
        Some(p) => {
            let plain = matches!(p.padding, PaddingConfig2d::Valid)
                && p.dilation == [1, 1]
                && !p.ceil_mode
                && p.stride == p.kernel_size;
            if !plain {
                return None;
            }
            p.kernel_size
        }
    };
    // The weight, then the bias: the order in which burn's `Conv2d::forward` reads them (a
    // parameter not yet initialised is drawn when first read, so the order sets a fresh
    // model's initial weights).
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref()?.val();
    let [_, c_in, _, _] = x.dims();
    let [c_out, w_in, _, _] = weight.dims();
    let g = geometry(x.dims(), weight.dims(), padding, pool);
    // Weights under autodiff (a training step, whose batch may sit on the plain device) keep
    // the op-by-op path and their gradients.
    let fits = crate::on_plain_cpu(&weight)
        && crate::on_plain_cpu(&bias)
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && conv.stride == [1, 1]
        && w_in == c_in
        && weight.dtype() == DType::F32
        && bias.dims() == [c_out]
        && bias.dtype() == DType::F32
        && g.is_valid();
    fits.then_some((g, weight, bias))
}

fn geometry(x: [usize; 4], weight: [usize; 4], padding: [usize; 4], pool: [usize; 2]) -> Geometry {
    let [batch, c_in, height, width] = x;
    let [c_out, _, kh, kw] = weight;
    Geometry {
        batch,
        c_in,
        height,
        width,
        c_out,
        kernel: [kh, kw],
        padding,
        pool,
    }
}

/// How many times the fused kernel ran: the tests check that `conv_relu_pool` takes it.
#[cfg(test)]
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl ConvBlockBackend for Flex {
    fn kiln_conv_relu_pool(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        padding: [usize; 4],
        pool: [usize; 2],
    ) -> FlexTensor {
        #[cfg(test)]
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let g = geometry(
            x.shape().dims::<4>(),
            weight.shape().dims::<4>(),
            padding,
            pool,
        );
        let y = cpu::forward(&g, &host(&x), &host(&weight), &host(&bias))
            .expect("the caller checked that the CPU runs the kernel");
        let [oh, ow] = g.out_hw();
        flex(y, vec![g.batch, g.c_out, oh, ow])
    }
}

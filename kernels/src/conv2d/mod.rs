//! 2-D convolution for the CPU: one op with its own backward, used by the CNN whenever the
//! tensors live on the Flex backend.
//!
//! burn-flex 0.22.1 computes the forward pass with a small matrix product per tile of pixels and
//! overrides no backward op, so autodiff falls back to burn's generic gradients: the weight
//! gradient becomes a convolution over swapped tensors (many thin products after strided
//! copies). Here every pass is one product per image over an im2col matrix ([`cpu`]): `W·col`
//! forward, `Wᵀ·dy` folded back for the input, `dy·colᵀ` summed over images for the weight, and
//! the bias gradient in the same sweep.
//!
//! The reference is burn's own `conv2d` (`reference` below): the tests compare forward values
//! and all three gradients with it.

pub mod cpu;
#[cfg(test)]
mod tests;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Tensor};

use crate::{flex, host};

use cpu::Geometry;

/// A convolution as kiln's kernel takes it: the three tensors' backend primitives plus the
/// stride and the padding (top, bottom, left, right). Groups 1, dilation 1, with a bias.
#[backend_extension(Flex, Autodiff)]
pub trait Conv2dBackend: Backend {
    fn kiln_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> FloatTensor<Self>;
}

/// `y = conv2d(x, conv.weight) + conv.bias`, `x: [batch, c_in, h, w]` -> `[batch, c_out, oh, ow]`,
/// through kiln's kernel where it applies (the CPU backend, `f32`, no groups, no dilation, a
/// bias, explicit or no padding, and kernels switched on) and through `conv.forward` otherwise.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, bottom, left, right]),
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Same => None,
    };
    let weight = conv.weight.val();
    let usable = crate::applies(&x)
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && weight.dtype() == DType::F32;
    match (usable, padding, &conv.bias) {
        (true, Some(padding), Some(bias)) => {
            let geometry = geometry(x.dims(), weight.dims(), conv.stride, padding);
            // Anything else (a channel count that does not match the weight, say) is left to
            // burn, which says what is wrong.
            let [_, c_in, _, _] = x.dims();
            let fits = geometry.is_valid()
                && weight.dims()[1] == c_in
                && bias.val().dims() == [geometry.c_out]
                && bias.val().dtype() == DType::F32;
            if !fits {
                return conv.forward(x);
            }
            Tensor::from_dispatch(<Dispatch as Conv2dBackend>::kiln_conv2d(
                x.into_dispatch(),
                weight.into_dispatch(),
                bias.val().into_dispatch(),
                conv.stride,
                padding,
            ))
        }
        _ => conv.forward(x),
    }
}

fn geometry(x: [usize; 4], w: [usize; 4], stride: [usize; 2], padding: [usize; 4]) -> Geometry {
    let [batch, c_in, height, width] = x;
    let [c_out, _, kh, kw] = w;
    Geometry {
        batch,
        c_in,
        height,
        width,
        c_out,
        kernel: [kh, kw],
        stride,
        padding,
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    t.shape().dims::<4>()
}

/// How many times the kernel's forward pass ran: the tests check that `conv2d` takes it.
#[cfg(test)]
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 4],
) -> FlexTensor {
    #[cfg(test)]
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let g = geometry(dims4(x), dims4(weight), stride, padding);
    let y = cpu::forward(&g, &host(x), &host(weight), Some(&host(bias)));
    let [oh, ow] = g.out_hw();
    flex(y, vec![g.batch, g.c_out, oh, ow])
}

impl Conv2dBackend for Flex {
    fn kiln_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> FlexTensor {
        forward(&x, &weight, &bias, stride, padding)
    }
}

/// The saved inputs of one convolution, for its backward step.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
    stride: [usize; 2],
    padding: [usize; 4],
}

#[derive(Debug)]
struct Conv2dBackward;

impl Backward<Flex, 3> for Conv2dBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Saved {
            x,
            weight,
            stride,
            padding,
        } = ops.state;
        let g = geometry(dims4(&x), dims4(&weight), stride, padding);
        let dy = host(&dy);
        if let Some(node) = node_x {
            let dx = cpu::input_grad(&g, &dy, &host(&weight));
            grads.register::<Flex>(node.id, flex(dx, dims4(&x).to_vec()));
        }
        if node_w.is_some() || node_b.is_some() {
            let (dw, db) = cpu::weight_bias_grad(&g, &host(&x), &dy);
            if let Some(node) = node_w {
                grads.register::<Flex>(node.id, flex(dw, dims4(&weight).to_vec()));
            }
            if let Some(node) = node_b {
                grads.register::<Flex>(node.id, flex(db, vec![g.c_out]));
            }
        }
    }
}

impl<C: CheckpointStrategy> Conv2dBackend for Autodiff<Flex, C> {
    fn kiln_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 4],
    ) -> FloatTensor<Self> {
        let prep = Conv2dBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let y = forward(
            x.primitive(),
            weight.primitive(),
            bias.primitive(),
            stride,
            padding,
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let saved = Saved {
                    x: x.into_primitive(),
                    weight: weight.into_primitive(),
                    stride,
                    padding,
                };
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

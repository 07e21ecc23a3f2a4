//! Causal multi-head self-attention for the CPU as one op with its own backward: from the
//! fused query/key/value projection `[batch, t, 3 c]` to the merged heads `[batch, t, c]`.
//!
//! Through burn, a GPT layer's attention is about a dozen tracked ops: three narrows of the
//! projection, reshapes and transposes (each a copy before a product), a batched product, a
//! scale, a mask fill, the softmax, a second product and a transpose back; the backward pass
//! retraces each, and the narrows' gradients are zero-filled copies of the whole projection.
//! At the sizes kiln trains on the CPU (64 positions, 32 channels per head) those copies cost
//! more than the arithmetic. Here ([`cpu`]) each head's products read the projection in place
//! through strides and write the output's columns directly, with the causal softmax and its
//! gradient in between; the backward pass keeps the projection (shared, not copied) and the
//! attention weights.
//!
//! The reference is [`reference`], the burn composition the GPT used before: the tests compare
//! the output and the projection's gradient with it.

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
use burn::tensor::{Bool, Tensor};

use crate::{flex, host};

use cpu::Shape;

#[backend_extension(Flex, Autodiff)]
pub trait AttentionBackend: Backend {
    fn kiln_causal_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// Causal self-attention over `heads` heads: `qkv` `[batch, t, 3 c]` holds the queries, keys
/// and values side by side (as one linear layer makes them; head `h` takes channels
/// `h c / heads ..`), and each position attends to itself and the positions before it.
/// Returns `[batch, t, c]`, the heads merged. Through kiln's kernel on the CPU (`f32`, kernels
/// on), through [`reference`] elsewhere.
///
/// # Panics
/// When the last dimension is not a multiple of `3 * heads` (a model's construction checks).
pub fn causal_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [_, _, c3] = qkv.dims();
    assert!(
        heads > 0 && c3 % (3 * heads) == 0,
        "attention: {c3} channels do not split into 3 x {heads} heads"
    );
    if !crate::applies(&qkv) {
        return reference(qkv, heads);
    }
    Tensor::from_dispatch(<Dispatch as AttentionBackend>::kiln_causal_attention(
        qkv.into_dispatch(),
        heads,
    ))
}

/// The same attention as burn ops: the heads split out and transposed, `softmax(QKᵀ/√d)` with
/// the positions after each query filled with -inf, times `V`, the heads merged back.
pub fn reference(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [b, t, c3] = qkv.dims();
    let (c, h) = (c3 / 3, heads);
    let d = c / h;
    let part = |i: usize| {
        qkv.clone()
            .narrow(2, i * c, c)
            .reshape([b, t, h, d])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (part(0), part(1), part(2));
    let hidden = Tensor::<2, Bool>::tril_mask([t, t], 0, &qkv.device())
        .reshape([1, 1, t, t])
        .expand([b, h, t, t]);
    let att = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt())
        .mask_fill(hidden, f32::NEG_INFINITY);
    let att = burn::tensor::activation::softmax(att, 3);
    att.matmul(v).swap_dims(1, 2).reshape([b, t, c])
}

fn shape_of(qkv: &FlexTensor, heads: usize) -> Shape {
    let [batch, t, c3] = qkv.shape().dims::<3>();
    Shape {
        batch,
        t,
        heads,
        d: c3 / 3 / heads,
    }
}

#[cfg(test)]
thread_local! {
    /// How many times the kernel's forward pass ran on this thread: the tests check that the
    /// op takes it (per thread, as tests run in parallel).
    static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The output and the attention weights.
fn forward(qkv: &FlexTensor, heads: usize) -> (FlexTensor, Vec<f32>) {
    #[cfg(test)]
    CALLS.with(|c| c.set(c.get() + 1));
    let s = shape_of(qkv, heads);
    let (y, p) = cpu::forward(&s, &host(qkv));
    (flex(y, vec![s.batch, s.t, s.heads * s.d]), p)
}

impl AttentionBackend for Flex {
    fn kiln_causal_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        forward(&qkv, heads).0
    }
}

/// The projection and the attention weights, for the backward step.
#[derive(Debug, Clone)]
struct Saved {
    qkv: FlexTensor,
    p: Vec<f32>,
    heads: usize,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            let Saved { qkv, p, heads } = ops.state;
            let s = shape_of(&qkv, heads);
            let dx = cpu::backward(&s, &host(&qkv), &p, &host(&dy));
            grads.register::<Flex>(node.id, flex(dx, qkv.shape().to_vec()));
        }
    }
}

impl<C: CheckpointStrategy> AttentionBackend for Autodiff<Flex, C> {
    fn kiln_causal_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, p) = forward(qkv.primitive(), heads);
                let saved = Saved {
                    qkv: qkv.into_primitive(),
                    p,
                    heads,
                };
                prep.finish(saved, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(qkv.primitive(), heads).0),
        }
    }
}

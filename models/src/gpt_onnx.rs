//! The GPT's ONNX graph, in standard ops (opset 17+): `Gather` for the embeddings,
//! `LayerNormalization`, `MatMul`, and attention written out (`Reshape`, `Transpose`, `MatMul`,
//! a causal mask added before `Softmax`), so any ONNX runtime serves it. The input is `[batch,
//! sequence]` token ids (int64), both axes dynamic, the sequence at most `block_size`; the output
//! is `[batch, sequence, vocab]` next-token logits.

use crate::GptConfig;
use crate::onnx::{Builder, LowerError, attr_int, attr_ints};

/// What stands for minus infinity in the causal mask: `exp` of it is 0 in f32, as burn's
/// masked positions are.
const MASKED: f32 = -1e9;

/// The dynamic sequence length of `ids` as a one-element int64 tensor.
fn seq_len(g: &mut Builder, ids: &str) -> String {
    let shape = g.node("Shape", &[ids], vec![], None);
    let one = g.constant_i64("one_i", &[1]);
    let two = g.constant_i64("two_i", &[2]);
    let zero = g.constant_i64("zero_i", &[0]);
    g.node("Slice", &[&shape, &one, &two, &zero], vec![], None)
}

/// `x[..., start..start + len]` on the last axis.
fn slice_last(g: &mut Builder, x: &str, start: usize, len: usize) -> String {
    let s = g.constant_i64("start", &[start as i64]);
    let e = g.constant_i64("end", &[(start + len) as i64]);
    let axis = g.constant_i64("axis", &[-1]);
    g.node("Slice", &[x, &s, &e, &axis], vec![], None)
}

/// The sizes the GPT and the encoder share.
struct Trunk {
    vocab: usize,
    block: usize,
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    bias: bool,
}

/// Embeddings, the blocks (attention scores plus `mask`, an additive mask that broadcasts to
/// `[batch, heads, t, t]`), the final layer norm: `[batch, t, n_embd]`. Returns it and the
/// token embedding's initializer.
fn trunk(
    c: &Trunk,
    g: &mut Builder,
    ids: &str,
    mask: &str,
) -> Result<(String, String), LowerError> {
    let (e, h, v, b) = (c.n_embd, c.n_head, c.vocab, c.block);
    let d = e / h;
    let wte = g.weight("wte.weight", &[v, e])?;
    let wpe = g.weight("wpe.weight", &[b, e])?;
    let positions = positions(g, ids);
    let tok = g.node("Gather", &[&wte, ids], vec![attr_int("axis", 0)], None);
    let pos = g.node(
        "Gather",
        &[&wpe, &positions],
        vec![attr_int("axis", 0)],
        None,
    );
    let mut x = g.node("Add", &[&tok, &pos], vec![], None);
    let scale = g.constant("scale", &[], &[1.0 / (d as f32).sqrt()]);
    let heads = g.constant_i64("heads_shape", &[0, 0, h as i64, d as i64]);
    let merged = g.constant_i64("merged_shape", &[0, 0, e as i64]);
    for i in 0..c.n_layer {
        let p = format!("blocks.{i}");
        let ln1 = g.layer_norm_opt(&x, &format!("{p}.ln_1"), e, c.bias)?;
        let qkv = g.linear_opt(&ln1, &format!("{p}.attn.qkv"), e, 3 * e, c.bias)?;
        let split = |g: &mut Builder, k: usize| {
            let part = slice_last(g, &qkv, k * e, e);
            g.node("Reshape", &[&part, &heads], vec![], None)
        };
        let (q, k, val) = (split(g, 0), split(g, 1), split(g, 2));
        let q = g.node(
            "Transpose",
            &[&q],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
            None,
        );
        let k = g.node(
            "Transpose",
            &[&k],
            vec![attr_ints("perm", &[0, 2, 3, 1])],
            None,
        );
        let val = g.node(
            "Transpose",
            &[&val],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
            None,
        );
        let att = g.node("MatMul", &[&q, &k], vec![], None);
        let att = g.node("Mul", &[&att, &scale], vec![], None);
        let att = g.node("Add", &[&att, mask], vec![], None);
        let att = g.node("Softmax", &[&att], vec![attr_int("axis", -1)], None);
        let y = g.node("MatMul", &[&att, &val], vec![], None);
        let y = g.node(
            "Transpose",
            &[&y],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
            None,
        );
        let y = g.node("Reshape", &[&y, &merged], vec![], None);
        let y = g.linear_opt(&y, &format!("{p}.attn.proj"), e, e, c.bias)?;
        x = g.node("Add", &[&x, &y], vec![], None);

        let ln2 = g.layer_norm_opt(&x, &format!("{p}.ln_2"), e, c.bias)?;
        let f = g.linear_opt(&ln2, &format!("{p}.mlp.fc"), e, 4 * e, c.bias)?;
        let f = g.activation(&f, crate::Activation::Gelu);
        let f = g.linear_opt(&f, &format!("{p}.mlp.proj"), 4 * e, e, c.bias)?;
        x = g.node("Add", &[&x, &f], vec![], None);
    }
    Ok((g.layer_norm_opt(&x, "ln_f", e, c.bias)?, wte))
}

/// Positions `0..t` of `ids` (`[batch, t]`).
fn positions(g: &mut Builder, ids: &str) -> String {
    let t = seq_len(g, ids);
    let axes = g.constant_i64("axes", &[0]);
    let t = g.node("Squeeze", &[&t, &axes], vec![], None);
    let zero = g.constant_i64_scalar("zero", 0);
    let one = g.constant_i64_scalar("one", 1);
    g.node("Range", &[&zero, &t, &one], vec![], None)
}

pub(crate) fn lower(c: &GptConfig, g: &mut Builder, ids: &str) -> Result<String, LowerError> {
    let b = c.block_size;
    // The causal mask of T positions: the top-left T x T of a block-sized one.
    let mask_values: Vec<f32> = (0..b * b)
        .map(|k| if k % b > k / b { MASKED } else { 0.0 })
        .collect();
    let full = g.constant("causal_mask", &[b, b], &mask_values);
    let t = seq_len(g, ids);
    let zeros = g.constant_i64("mask_start", &[0, 0]);
    let ends = g.node("Concat", &[&t, &t], vec![attr_int("axis", 0)], None);
    let mask = g.node("Slice", &[&full, &zeros, &ends], vec![], None);
    let sizes = Trunk {
        vocab: c.vocab_size,
        block: b,
        n_layer: c.n_layer,
        n_head: c.n_head,
        n_embd: c.n_embd,
        bias: c.bias,
    };
    let (x, wte) = trunk(&sizes, g, ids, &mask)?;
    if c.tie_weights {
        // Logits against the token embedding: `x @ wte^T`.
        let wt = g.node("Transpose", &[&wte], vec![attr_ints("perm", &[1, 0])], None);
        Ok(g.node("MatMul", &[&x, &wt], vec![], None))
    } else {
        g.linear_opt(&x, "head", c.n_embd, c.vocab_size, false)
    }
}

/// The text classifier: padding (id 0) masked out of attention and of the mean over tokens.
pub(crate) fn lower_encoder(
    c: &crate::EncoderConfig,
    g: &mut Builder,
    ids: &str,
) -> Result<String, LowerError> {
    let pad = g.constant_i64_scalar("pad", i64::from(crate::encoder::PAD));
    let is_pad = g.node("Equal", &[ids, &pad], vec![], None);
    let pad_f = g.node("Cast", &[&is_pad], vec![attr_int("to", 1)], None);
    let big = g.constant("masked", &[], &[MASKED]);
    let additive = g.node("Mul", &[&pad_f, &big], vec![], None);
    let axes = g.constant_i64("mask_axes", &[1, 2]);
    let mask = g.node("Unsqueeze", &[&additive, &axes], vec![], None);
    let sizes = Trunk {
        vocab: c.vocab_size,
        block: c.block_size,
        n_layer: c.n_layer,
        n_head: c.n_head,
        n_embd: c.n_embd,
        bias: c.bias,
    };
    let (x, _) = trunk(&sizes, g, ids, &mask)?;
    // The mean over the text's tokens.
    let one = g.constant("one", &[], &[1.0]);
    let keep = g.node("Sub", &[&one, &pad_f], vec![], None);
    let last = g.constant_i64("keep_axes", &[2]);
    let keep3 = g.node("Unsqueeze", &[&keep, &last], vec![], None);
    let kept = g.node("Mul", &[&x, &keep3], vec![], None);
    let axis1 = g.constant_i64("sum_axes", &[1]);
    let sum = g.node(
        "ReduceSum",
        &[&kept, &axis1],
        vec![attr_int("keepdims", 0)],
        None,
    );
    let count = g.node(
        "ReduceSum",
        &[&keep3, &axis1],
        vec![attr_int("keepdims", 0)],
        None,
    );
    let count = g.node("Max", &[&count, &one], vec![], None);
    let pooled = g.node("Div", &[&sum, &count], vec![], None);
    g.linear(&pooled, "head", c.n_embd, c.classes)
}

//! A decoder-only transformer language model, as GPT-2 and nanoGPT build it: token and position
//! embeddings, pre-norm blocks of causal multi-head self-attention and an MLP, a final layer
//! norm, and an output layer (by default the token embedding, transposed: tied weights).
//!
//! Initialisation follows GPT-2: every linear and embedding weight from N(0, 0.02), biases zero,
//! layer norms one and zero, and the two residual projections of each block (attention's and
//! the MLP's output layers) from N(0, 0.02 / sqrt(2 n_layer)), so the residual stream's variance
//! does not grow with depth.
//!
//! [`Gpt::forward_cached`] keeps each layer's keys and values ([`KvCache`]): generating a token
//! then costs one position, not the whole prefix.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor};
use kiln_kernels::attention::causal_attention;
use kiln_kernels::gelu::gelu;
use kiln_kernels::softmax::softmax_last;
use serde::{Deserialize, Serialize};

use crate::onnx::{Builder, LowerError};
use crate::section::check_probability;
use crate::{
    Architecture, Forward, Input, InputShape, ModelSection, Output, SectionError, TextRole,
};

/// Standard deviation of GPT-2's initial weights.
const INIT_STD: f64 = 0.02;

/// Named sizes: `(name, n_layer, n_head, n_embd, block_size)`.
pub const PRESETS: &[(&str, usize, usize, usize, usize)] = &[
    // nanoGPT's CPU example (`train_shakespeare_char.py` on a laptop).
    ("char-tiny", 4, 4, 128, 64),
    // nanoGPT's `train_shakespeare_char.py` on a GPU.
    ("char-small", 6, 6, 384, 256),
    // GPT-2 small's shape (vocabulary from the data).
    ("gpt2", 12, 12, 768, 1024),
];

/// A GPT's sizes, every one resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Tokens in the vocabulary (from the data).
    pub vocab_size: usize,
    /// Positions in the position table: the longest context the model reads.
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Dropout on the embeddings, attention weights and residual branches, in `[0, 1)`.
    pub dropout: f64,
    /// Biases in the linear layers and layer norms.
    pub bias: bool,
    /// The output layer is the token embedding, transposed.
    pub tie_weights: bool,
}

/// The sizes a `[model]` table asks for: a preset, then the keys it sets.
pub(crate) fn sizes(s: &ModelSection) -> Result<(usize, usize, usize, usize), SectionError> {
    let (mut l, mut h, mut e, mut b) = (4, 4, 128, 64);
    if let Some(name) = &s.preset {
        let Some(&(_, pl, ph, pe, pb)) = PRESETS.iter().find(|p| p.0 == name) else {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            return Err(SectionError::new(
                "model.preset",
                format!(
                    "`model.preset` = {name:?} is not a preset: use one of {}",
                    names.join(", ")
                ),
            ));
        };
        (l, h, e, b) = (pl, ph, pe, pb);
    }
    Ok((
        s.n_layer.unwrap_or(l),
        s.n_head.unwrap_or(h),
        s.n_embd.unwrap_or(e),
        s.block_size.unwrap_or(b),
    ))
}

/// What a token model reads: `(vocab, n_layer, n_head, n_embd, block_size)` from the data's
/// shape and the `[model]` table, the data's blocks checked against the position table.
/// `needs` says what to set when the data is not token ids.
pub(crate) fn token_sizes(
    s: &ModelSection,
    input: InputShape,
    needs: &str,
) -> Result<(usize, usize, usize, usize, usize), SectionError> {
    let InputShape::Tokens { vocab, len } = input else {
        return Err(SectionError::new("model.kind", needs));
    };
    let (n_layer, n_head, n_embd, block_size) = sizes(s)?;
    if len > block_size {
        return Err(SectionError::new(
            "data.block_size",
            format!(
                "`data.block_size` = {len} is over the model's position table (`model.block_size` = {block_size}): lower it or raise `model.block_size`"
            ),
        ));
    }
    Ok((vocab, n_layer, n_head, n_embd, block_size))
}

/// The position table a `[model]` table asks for (its preset's, or `model.block_size`); 1
/// when the preset is unknown (reported on its own).
pub fn section_block_size(s: &ModelSection) -> usize {
    sizes(s).map_or(1, |v| v.3)
}

/// Problems of the transformer keys of `[model]` (shared with the text classifier).
pub(crate) fn check_transformer(s: &ModelSection, out: &mut Vec<SectionError>) {
    let (l, h, e, b) = match sizes(s) {
        Ok(v) => v,
        Err(e) => return out.push(e),
    };
    for (key, v) in [
        ("model.n_layer", l),
        ("model.n_head", h),
        ("model.n_embd", e),
        ("model.block_size", b),
    ] {
        if v == 0 {
            out.push(SectionError::new(
                key,
                format!("`{key}` = 0: must be at least 1"),
            ));
        }
    }
    if h > 0 && e % h != 0 {
        out.push(SectionError::new(
            "model.n_embd",
            format!(
                "`model.n_embd` = {e} is not divisible by `model.n_head` = {h}: each head takes n_embd / n_head dimensions"
            ),
        ));
    }
    check_probability("model.dropout", s.dropout, out);
}

impl GptConfig {
    /// Parameters (saturating).
    pub(crate) fn count(vocab: u64, block: u64, l: u64, e: u64, bias: bool, tied: bool) -> u64 {
        let b = u64::from(bias);
        let norm = e + b * e;
        let per_layer = [
            norm,
            e * 3 * e + b * 3 * e,
            e * e + b * e,
            norm,
            e * 4 * e + b * 4 * e,
            4 * e * e + b * e,
        ]
        .iter()
        .fold(0u64, |a, &x| a.saturating_add(x));
        let head = if tied { 0 } else { vocab.saturating_mul(e) };
        vocab
            .saturating_mul(e)
            .saturating_add(block.saturating_mul(e))
            .saturating_add(l.saturating_mul(per_layer))
            .saturating_add(norm)
            .saturating_add(head)
    }
}

pub(crate) fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

/// A linear layer with GPT-2's initialisation: weights from N(0, std), bias zero.
pub(crate) fn linear(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(normal(std))
        .init(device);
    if bias {
        l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    }
    l
}

pub(crate) fn layer_norm(d: usize, bias: bool, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).with_bias(bias).init(device)
}

impl Architecture for GptConfig {
    type Net = Gpt;
    const SIZE_KEYS: &'static [&'static str] = &[
        "model.n_layer",
        "model.n_embd",
        "model.block_size",
        "data.block_size",
    ];
    const KEYS: &'static [&'static str] = &[
        "preset",
        "n_layer",
        "n_head",
        "n_embd",
        "block_size",
        "bias",
        "tie_weights",
        "dropout",
    ];
    // The linear layers' weights only, not embeddings, norms or biases (GPT-2's and nanoGPT's
    // practice).
    const DECAYED: Option<&'static str> = Some(DECAYED);
    const TEXT: Option<TextRole> = Some(TextRole::NextToken);

    fn context_len(s: &ModelSection) -> Option<usize> {
        Some(section_block_size(s))
    }

    /// Token ids only; the vocabulary comes from the data.
    fn from_section(
        s: &ModelSection,
        input: InputShape,
        outputs: usize,
    ) -> Result<Self, SectionError> {
        let (vocab, n_layer, n_head, n_embd, block_size) = token_sizes(
            s,
            input,
            "`model.kind` = \"gpt\" reads token ids: set `data.format` = \"text\" and `task` = \"language_model\"",
        )?;
        Ok(GptConfig {
            vocab_size: vocab.max(outputs),
            block_size,
            n_layer,
            n_head,
            n_embd,
            dropout: s.dropout,
            bias: s.bias.unwrap_or(true),
            tie_weights: s.tie_weights.unwrap_or(true),
        })
    }

    fn check_section(s: &ModelSection) -> Vec<SectionError> {
        let mut out = Vec::new();
        check_transformer(s, &mut out);
        out
    }

    fn min_params(s: &ModelSection) -> u64 {
        let Ok((l, _, e, b)) = sizes(s) else { return 0 };
        Self::count(
            1,
            b as u64,
            l as u64,
            e as u64,
            s.bias.unwrap_or(true),
            s.tie_weights.unwrap_or(true),
        )
    }

    fn init(&self, device: &Device) -> Gpt {
        let e = self.n_embd;
        Gpt {
            wte: embedding(self.vocab_size, e, device),
            wpe: embedding(self.block_size, e, device),
            drop: DropoutConfig::new(self.dropout).init(),
            blocks: blocks(
                self.n_layer,
                self.n_head,
                e,
                self.bias,
                self.dropout,
                device,
            ),
            ln_f: layer_norm(e, self.bias, device),
            head: (!self.tie_weights).then(|| linear(e, self.vocab_size, false, INIT_STD, device)),
            block_size: self.block_size,
        }
    }

    fn input(&self) -> InputShape {
        InputShape::Tokens {
            vocab: self.vocab_size,
            len: self.block_size,
        }
    }

    fn outputs(&self) -> usize {
        self.vocab_size
    }

    fn num_params(&self) -> u64 {
        Self::count(
            self.vocab_size as u64,
            self.block_size as u64,
            self.n_layer as u64,
            self.n_embd as u64,
            self.bias,
            self.tie_weights,
        )
    }

    /// Per block of `block_size` tokens: per layer about 16 n_embd floats per token (norms,
    /// q/k/v, the attention output, the 4x MLP and its GELU) plus 2 n_head block_size for the
    /// attention weights and their softmax; then the logits and their softmax.
    fn activations_per_example(&self) -> u64 {
        let t = self.block_size as u64;
        let per_token_layer = 16 * self.n_embd as u64 + 2 * (self.n_head as u64) * t;
        t.saturating_mul(
            (self.n_layer as u64)
                .saturating_mul(per_token_layer)
                .saturating_add(2 * self.vocab_size as u64),
        )
    }

    fn lower(&self, g: &mut Builder, x: &str) -> Result<String, LowerError> {
        crate::gpt_onnx::lower(self, g, x)
    }
}

/// Causal multi-head self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    attn_drop: Dropout,
    resid_drop: Dropout,
    #[module(skip)]
    n_head: usize,
}

#[derive(Module, Debug)]
pub struct FeedForward {
    fc: Linear,
    proj: Linear,
    drop: Dropout,
}

#[derive(Module, Debug)]
pub struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: FeedForward,
}

/// Which keys each query may see.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keys<'a> {
    /// Its own position and those before it, with no cache: `mask` says so for burn's ops
    /// (`[1, 1, t, t]`, `true` where hidden); kiln's fused attention needs no mask.
    Causal(&'a Tensor<4, Bool>),
    /// Those `mask` does not hide (`true` where hidden), `[1 or batch, 1, 1 or t, keys]`:
    /// a causal mask after cached positions, or padding; every key when `None`.
    Masked(Option<&'a Tensor<4, Bool>>),
}

impl Block {
    /// A pre-norm block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        keys: Keys,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let a = self.attn.forward(self.ln_1.forward(x.clone()), keys, cache);
        let x = x + a;
        let m = self.mlp.forward(self.ln_2.forward(x.clone()));
        x + m
    }
}

/// `n_layer` blocks of width `e` with GPT-2's initialisation.
pub(crate) fn blocks(
    n_layer: usize,
    n_head: usize,
    e: usize,
    bias: bool,
    dropout: f64,
    device: &Device,
) -> Vec<Block> {
    let residual_std = INIT_STD / (2.0 * n_layer as f64).sqrt();
    let drop = || DropoutConfig::new(dropout).init();
    (0..n_layer)
        .map(|_| Block {
            ln_1: layer_norm(e, bias, device),
            attn: Attention {
                qkv: linear(e, 3 * e, bias, INIT_STD, device),
                proj: linear(e, e, bias, residual_std, device),
                attn_drop: drop(),
                resid_drop: drop(),
                n_head,
            },
            ln_2: layer_norm(e, bias, device),
            mlp: FeedForward {
                fc: linear(e, 4 * e, bias, INIT_STD, device),
                proj: linear(4 * e, e, bias, residual_std, device),
                drop: drop(),
            },
        })
        .collect()
}

/// An embedding table with GPT-2's initialisation.
pub(crate) fn embedding(n: usize, e: usize, device: &Device) -> Embedding {
    EmbeddingConfig::new(n, e)
        .with_initializer(normal(INIT_STD))
        .init(device)
}

#[derive(Module, Debug)]
pub struct Gpt {
    wte: Embedding,
    wpe: Embedding,
    drop: Dropout,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// The output layer when it is not tied to `wte`.
    head: Option<Linear>,
    #[module(skip)]
    block_size: usize,
}

/// Keys and values of the positions seen so far, per layer: `[batch, n_head, positions,
/// head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Attention {
    /// `[batch, t, n_embd]` -> `[batch, t, n_embd]`. With a cache, the `t` new positions follow
    /// the cached ones and attend to them too; `keys` says which keys each query may see.
    ///
    /// Causal attention without a cache, and without dropout on the attention weights (none
    /// configured, or not training), takes kiln's fused kernel where it applies (the CPU,
    /// `f32`: `kiln_kernels::attention`), burn's ops otherwise.
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        keys: Keys,
        cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let h = self.n_head;
        let d = c / h;
        let qkv = self.qkv.forward(x);
        let mask = match keys {
            Keys::Causal(mask) => {
                if cache.is_none()
                    && !dropout_active(&self.attn_drop, &qkv)
                    && kiln_kernels::applies(&qkv)
                {
                    let y = causal_attention(qkv, h);
                    return self.resid_drop.forward(self.proj.forward(y));
                }
                Some(mask)
            }
            Keys::Masked(mask) => mask,
        };
        let heads = |i: usize| {
            qkv.clone()
                .narrow(2, i * c, c)
                .reshape([b, t, h, d])
                .swap_dims(1, 2)
        };
        let (q, mut k, mut v) = (heads(0), heads(1), heads(2));
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let keys = k.dims()[2];
        let mut att = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (d as f64).sqrt());
        if let Some(mask) = mask {
            att = att.mask_fill(mask.clone().expand([b, h, t, keys]), f32::NEG_INFINITY);
        }
        let att = self.attn_drop.forward(softmax_last(att));
        let y = att.matmul(v).swap_dims(1, 2).reshape([b, t, c]);
        self.resid_drop.forward(self.proj.forward(y))
    }
}

/// Whether `drop` changes `x` (as `Dropout::forward` decides): training with autodiff and a
/// probability above 0.
fn dropout_active(drop: &Dropout, x: &Tensor<3>) -> bool {
    drop.prob > 0.0 && drop.training.is_enabled() && x.device().is_autodiff()
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = gelu(self.fc.forward(x));
        self.drop.forward(self.proj.forward(x))
    }
}

impl Gpt {
    /// Token ids `[batch, t]` (t at most `block_size`) -> next-token logits `[batch, t,
    /// vocab]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.run(ids, None)
    }

    /// As [`Gpt::forward`], for `t` new positions after those in `cache` (which grows by `t`).
    /// The cache plus the new positions must fit in `block_size`.
    pub fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.run(ids, Some(cache))
    }

    /// The longest context the model reads.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    fn run(&self, ids: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let pos =
            Tensor::<1, Int>::arange(start as i64..(start + t) as i64, &device).reshape([1, t]);
        let mut x = self
            .drop
            .forward(self.wte.forward(ids) + self.wpe.forward(pos));
        // Query i sits at position start + i and may not see keys after it.
        let keys = start + t;
        let mask = (t > 1).then(|| {
            Tensor::<2, Bool>::tril_mask([t, keys], start as i64, &device).reshape([1, 1, t, keys])
        });
        if let Some(c) = cache.as_mut() {
            c.layers.resize(self.blocks.len(), None);
            c.len = keys;
        }
        let keys = match (&mask, start) {
            (Some(mask), 0) => Keys::Causal(mask),
            _ => Keys::Masked(mask.as_ref()),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, keys, slot);
        }
        let x = self.ln_f.forward(x);
        match &self.head {
            Some(head) => head.forward(x),
            None => {
                let [_, _, c] = x.dims();
                let w = self.wte.weight.val(); // [vocab, n_embd]
                let vocab = w.dims()[0];
                x.reshape([b * t, c])
                    .matmul(w.transpose())
                    .reshape([b, t, vocab])
            }
        }
    }
}

impl Forward for Gpt {
    fn forward_input(&self, x: Input) -> Output {
        Output::PerPosition(self.forward(x.into_tokens()))
    }
}

/// Regular expression matching the parameters AdamW decays: the weights of linear layers.
/// Embeddings, layer norms and biases are not decayed (GPT-2 and nanoGPT's practice).
pub const DECAYED: &str = r"(qkv|proj|fc|head)\.weight$";

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 11,
            block_size: 16,
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
            tie_weights: true,
        }
    }

    fn ids(v: &[i32], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let device = Device::flex();
        for tie in [true, false] {
            for bias in [true, false] {
                let c = GptConfig {
                    tie_weights: tie,
                    bias,
                    ..tiny()
                };
                assert_eq!(c.num_params(), c.init(&device).num_params() as u64);
            }
        }
    }

    #[test]
    fn a_position_sees_only_the_past() {
        let device = Device::flex();
        let m = tiny().init(&device);
        let a = m.forward(ids(&[1, 2, 3, 4, 5], &device));
        let b = m.forward(ids(&[1, 2, 3, 9, 0], &device));
        let first = |t: Tensor<3>| t.narrow(1, 0, 3).into_data();
        first(a.clone()).assert_approx_eq::<f32>(&first(b.clone()), Default::default());
        let last = |t: Tensor<3>| t.narrow(1, 3, 1).into_data().try_to_vec::<f32>().unwrap();
        assert_ne!(last(a), last(b));
    }

    #[test]
    fn cached_positions_give_the_logits_of_the_whole_prefix() {
        let device = Device::flex();
        let m = tiny().init(&device);
        let seq = [3, 1, 4, 1, 5, 9, 2, 6];
        let whole = m.forward(ids(&seq, &device));
        let mut cache = KvCache::new();
        let mut steps = vec![m.forward_cached(ids(&seq[..3], &device), &mut cache)];
        for &t in &seq[3..] {
            steps.push(m.forward_cached(ids(&[t], &device), &mut cache));
        }
        assert_eq!(cache.len(), seq.len());
        let cached = Tensor::cat(steps, 1);
        whole
            .into_data()
            .assert_approx_eq::<f32>(&cached.into_data(), burn::tensor::Tolerance::absolute(1e-5));
    }
}

//! A transformer encoder that classifies a text: token and position embeddings, pre-norm blocks
//! of (non-causal) self-attention and an MLP (the GPT's blocks, GPT-2's initialisation), a final
//! layer norm, the mean over the text's tokens (padding left out), and a linear head.
//!
//! Token id 0 is padding ([`PAD`]): batches of texts of different lengths are padded with it,
//! and attention and the pooling leave it out, so a text scores the same alone or in a batch.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, Linear};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::gpt::{
    Block, GptConfig, Keys, blocks, check_transformer, embedding, layer_norm, linear, sizes,
    token_sizes,
};
use crate::onnx::{Builder, LowerError};
use crate::{
    Architecture, Forward, Input, InputShape, ModelSection, Output, SectionError, TextRole,
};

/// The padding token's id.
pub const PAD: u32 = 0;

/// A text classifier's sizes, every one resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    /// Positions in the position table: the longest text (in tokens) the model reads.
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub dropout: f64,
    pub bias: bool,
    pub classes: usize,
}

impl Architecture for EncoderConfig {
    type Net = Encoder;
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
        "dropout",
    ];
    const DECAYED: Option<&'static str> = Some(crate::DECAYED);
    const TEXT: Option<TextRole> = Some(TextRole::Classify);

    fn context_len(s: &ModelSection) -> Option<usize> {
        Some(crate::section_block_size(s))
    }

    fn from_section(
        s: &ModelSection,
        input: InputShape,
        outputs: usize,
    ) -> Result<Self, SectionError> {
        let (vocab, n_layer, n_head, n_embd, block_size) = token_sizes(
            s,
            input,
            "`model.kind` = \"encoder\" reads text: name the text column with `data.text`",
        )?;
        Ok(EncoderConfig {
            vocab_size: vocab,
            block_size,
            n_layer,
            n_head,
            n_embd,
            dropout: s.dropout,
            bias: s.bias.unwrap_or(true),
            classes: outputs,
        })
    }

    fn check_section(s: &ModelSection) -> Vec<SectionError> {
        let mut out = Vec::new();
        check_transformer(s, &mut out);
        out
    }

    fn min_params(s: &ModelSection) -> u64 {
        let Ok((l, _, e, b)) = sizes(s) else { return 0 };
        GptConfig::count(
            1,
            b as u64,
            l as u64,
            e as u64,
            s.bias.unwrap_or(true),
            true,
        )
    }

    fn init(&self, device: &Device) -> Encoder {
        let e = self.n_embd;
        Encoder {
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
            head: linear(e, self.classes, true, 0.02, device),
        }
    }

    fn input(&self) -> InputShape {
        InputShape::Tokens {
            vocab: self.vocab_size,
            len: self.block_size,
        }
    }

    fn outputs(&self) -> usize {
        self.classes
    }

    fn num_params(&self) -> u64 {
        let e = self.n_embd as u64;
        let c = self.classes as u64;
        GptConfig::count(
            self.vocab_size as u64,
            self.block_size as u64,
            self.n_layer as u64,
            e,
            self.bias,
            true,
        )
        .saturating_add(e.saturating_mul(c).saturating_add(c))
    }

    /// As the GPT's, without the logits of every position.
    fn activations_per_example(&self) -> u64 {
        let t = self.block_size as u64;
        let per_token_layer = 16 * self.n_embd as u64 + 2 * (self.n_head as u64) * t;
        t.saturating_mul((self.n_layer as u64).saturating_mul(per_token_layer))
    }

    fn lower(&self, g: &mut Builder, x: &str) -> Result<String, LowerError> {
        crate::gpt_onnx::lower_encoder(self, g, x)
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    wte: Embedding,
    wpe: Embedding,
    drop: Dropout,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
}

impl Encoder {
    /// Token ids `[batch, t]`, padded with [`PAD`] -> class logits `[batch, classes]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let keep = ids.clone().not_equal_elem(PAD as i64);
        // A query may not look at padding.
        let mask = keep.clone().bool_not().reshape([b, 1, 1, t]);
        let pos = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]);
        let mut x = self
            .drop
            .forward(self.wte.forward(ids) + self.wpe.forward(pos));
        for block in &self.blocks {
            x = block.forward(x, Keys::Masked(Some(&mask)), None);
        }
        let x = self.ln_f.forward(x);
        let [_, _, e] = x.dims();
        let keep = keep.float().reshape([b, t, 1]);
        let count = keep.clone().sum_dim(1).reshape([b, 1]).clamp_min(1.0);
        let pooled = (x * keep).sum_dim(1).reshape([b, e]) / count;
        self.head.forward(pooled)
    }
}

impl Forward for Encoder {
    fn forward_input(&self, x: Input) -> Output {
        Output::PerExample(self.forward(x.into_tokens()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn padding_changes_nothing_and_the_count_matches() {
        let device = Device::flex();
        let c = EncoderConfig {
            vocab_size: 9,
            block_size: 8,
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
            classes: 3,
        };
        let m = c.init(&device);
        assert_eq!(c.num_params(), m.num_params() as u64);
        let ids = |v: Vec<i32>, b: usize| {
            let t = v.len() / b;
            Tensor::<2, Int>::from_data(TensorData::new(v, [b, t]), &device)
        };
        let alone = m.forward(ids(vec![3, 4, 5], 1));
        let batched = m.forward(ids(vec![3, 4, 5, 0, 0, 7, 8, 2, 6, 1], 2));
        alone.into_data().assert_approx_eq::<f32>(
            &batched.narrow(0, 0, 1).into_data(),
            burn::tensor::Tolerance::absolute(1e-5),
        );
    }
}

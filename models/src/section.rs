//! The `[model]` table people write in a config: plain serde, every field defaulted and
//! documented. Each model kind reads the fields it uses (see its `from_section`); the sizes that
//! depend on the data (input width, image shape, classes) come from the data, not from here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Activation, ModelKind, Norm};

/// The network. Input and output sizes come from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ModelSection {
    /// `mlp`, `cnn`, `resnet`, `gpt` (a language model) or `encoder` (a text classifier).
    /// Default: `mlp`.
    pub kind: ModelKind,
    /// Hidden layer widths of the MLP (for `cnn`: of its head). Default: `[128]`.
    pub hidden: Vec<usize>,
    /// `relu`, `gelu`, `tanh`, `sigmoid`, `silu` or `leaky_relu`. Default: `relu`.
    pub activation: Activation,
    /// Dropout after each hidden layer of the MLP / head, in `[0, 1)`. Default: 0.
    pub dropout: f64,
    /// Normalisation of the MLP's hidden layers: `none`, `batch` or `layer`. Default: `none`.
    pub norm: Norm,
    /// Convolution blocks of a `cnn`, in order (`[[model.conv]]` tables).
    pub conv: Vec<ConvSection>,
    /// Sizes by name. Transformers (`gpt`, `encoder`): `char-tiny` (4 layers, 4 heads, 128
    /// wide, 64 positions), `char-small` (6, 6, 384, 256) or `gpt2` (12, 12, 768, 1024); the keys
    /// below override it; default `char-tiny`'s sizes. `resnet`: `resnet8` (widths 16, 32, 64;
    /// one block per stage; the default), `resnet20` (16, 32, 64; three blocks each) or
    /// `resnet18` (64, 128, 256, 512; two each), `model.widths` and `model.depths` override it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Transformer blocks. Default: from `preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_layer: Option<usize>,
    /// Attention heads per block; must divide `n_embd`. Default: from `preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_head: Option<usize>,
    /// Width of the token vectors. Default: from `preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_embd: Option<usize>,
    /// Positions in the position table: the longest context the model reads (in tokens).
    /// Default: from `preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// Biases in the transformer's linear layers and layer norms. Default: true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<bool>,
    /// The output layer reuses the token embedding (transposed). Default: true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tie_weights: Option<bool>,
    /// `resnet`: channels of each stage. Default: from `preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<usize>>,
    /// `resnet`: basic blocks in each stage. Default: from `preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depths: Option<Vec<usize>>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            kind: ModelKind::default(),
            hidden: vec![128],
            activation: Activation::Relu,
            dropout: 0.0,
            norm: Norm::None,
            conv: Vec::new(),
            preset: None,
            n_layer: None,
            n_head: None,
            n_embd: None,
            block_size: None,
            bias: None,
            tie_weights: None,
            widths: None,
            depths: None,
        }
    }
}

impl ModelSection {
    /// Whether any layer keeps batch norm's running statistics (the kind decides).
    pub fn uses_batch_norm(&self) -> bool {
        self.kind.uses_batch_norm(self)
    }

    /// The keys (beside `kind`) whose values differ from their defaults: what the config set.
    /// Read from the serialised table, so that a key added to this struct is covered.
    pub fn set_keys(&self) -> Vec<String> {
        let (Ok(serde_json::Value::Object(now)), Ok(serde_json::Value::Object(default))) = (
            serde_json::to_value(self),
            serde_json::to_value(Self::default()),
        ) else {
            return Vec::new();
        };
        now.into_iter()
            .filter(|(key, value)| key != "kind" && default.get(key) != Some(value))
            .map(|(key, _)| key)
            .collect()
    }
}

/// One convolution block: conv (stride 1, same padding), batch norm, activation, max pool,
/// dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ConvSection {
    /// Output channels. Required.
    pub channels: usize,
    /// Kernel side, odd. Default: 3.
    pub kernel: usize,
    /// Max-pool window (and stride); 1 for none. Default: 2.
    pub pool: usize,
    /// Batch norm after the convolution. Default: false.
    pub batch_norm: bool,
    /// Dropout after the block, in `[0, 1)`. Default: 0.
    pub dropout: f64,
}

impl Default for ConvSection {
    fn default() -> Self {
        Self {
            channels: 0,
            kernel: 3,
            pool: 2,
            batch_norm: false,
            dropout: 0.0,
        }
    }
}

/// A problem with the `[model]` table: the key it is about (`model.conv.0.kernel`) and the
/// whole message, which names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SectionError {
    pub key: String,
    pub message: String,
}

impl SectionError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `value` must be in `[0, 1)`.
pub(crate) fn check_probability(key: &str, value: f64, out: &mut Vec<SectionError>) {
    if !(0.0..1.0).contains(&value) {
        out.push(SectionError::new(
            key,
            format!("`{key}` = {value}: must be in [0, 1)"),
        ));
    }
}

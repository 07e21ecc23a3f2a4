use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Activation, Mlp, MlpConfig};

/// One convolution block: conv (stride 1, "same" padding) -> [batch norm] -> activation ->
/// [max pool] -> [dropout].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvBlockConfig {
    pub channels: usize,
    /// Square kernel side; odd, so that "same" padding keeps the spatial size.
    pub kernel: usize,
    /// Max-pool window and stride; 1 means no pooling.
    pub pool: usize,
    pub batch_norm: bool,
    pub dropout: f64,
}

/// A CNN: conv blocks, then flatten, then an MLP head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnConfig {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub blocks: Vec<ConvBlockConfig>,
    pub activation: Activation,
    /// The head; its `d_input` must equal [`CnnConfig::flat_features`].
    pub head: MlpConfig,
}

impl CnnConfig {
    /// Spatial size `(height, width)` after all blocks.
    pub fn output_hw(&self) -> (usize, usize) {
        self.blocks
            .iter()
            .fold((self.height, self.width), |(h, w), b| {
                (h / b.pool.max(1), w / b.pool.max(1))
            })
    }

    /// Number of features the head receives.
    pub fn flat_features(&self) -> usize {
        let (h, w) = self.output_hw();
        self.blocks.last().map_or(self.in_channels, |b| b.channels) * h * w
    }

    pub fn init(&self, device: &Device) -> Cnn {
        let mut c_in = self.in_channels;
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                let pad = b.kernel / 2;
                let block = ConvBlock {
                    conv: Conv2dConfig::new([c_in, b.channels], [b.kernel, b.kernel])
                        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                        .init(device),
                    norm: b
                        .batch_norm
                        .then(|| BatchNormConfig::new(b.channels).init(device)),
                    pool: (b.pool > 1).then(|| MaxPool2dConfig::new([b.pool, b.pool]).init()),
                    dropout: DropoutConfig::new(b.dropout).init(),
                };
                c_in = b.channels;
                block
            })
            .collect();
        Cnn {
            blocks,
            head: self.head.init(device),
            activation: self.activation,
            input_shape: [self.in_channels, self.height, self.width],
        }
    }
}

#[derive(Module, Debug)]
struct ConvBlock {
    conv: Conv2d,
    norm: Option<BatchNorm>,
    pool: Option<MaxPool2d>,
    dropout: Dropout,
}

#[derive(Module, Debug)]
pub struct Cnn {
    blocks: Vec<ConvBlock>,
    head: Mlp,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    input_shape: [usize; 3],
}

impl Cnn {
    /// `x: [batch, channels * height * width]` (row-major images) -> `[batch, outputs]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let [c, h, w] = self.input_shape;
        let mut x: Tensor<4> = x.reshape([batch, c, h, w]);
        for block in &self.blocks {
            x = block.conv.forward(x);
            if let Some(norm) = &block.norm {
                x = norm.forward(x);
            }
            x = self.activation.forward(x);
            if let Some(pool) = &block.pool {
                x = pool.forward(x);
            }
            x = block.dropout.forward(x);
        }
        self.head.forward(x.flatten(1, 3))
    }
}

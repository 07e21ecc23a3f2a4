use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::onnx::{Builder, LowerError};
use crate::section::check_probability;
use crate::{
    Activation, Architecture, Forward, Input, InputShape, Mlp, MlpConfig, ModelSection, Output,
    SectionError,
};

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

    /// Channels and spatial size after each block.
    fn block_shapes(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (mut h, mut w) = (self.height, self.width);
        self.blocks.iter().map(move |b| {
            let conv = (b.channels, h, w);
            h /= b.pool.max(1);
            w /= b.pool.max(1);
            conv
        })
    }

    /// Parameters of the conv blocks for `c_in` input channels (saturating).
    fn conv_params(c_in: u64, blocks: &[ConvBlockConfig]) -> u64 {
        let mut c_in = c_in;
        let mut n = 0u64;
        for b in blocks {
            let c = b.channels as u64;
            let k = b.kernel as u64;
            n = n.saturating_add(
                c_in.saturating_mul(c)
                    .saturating_mul(k * k)
                    .saturating_add(c),
            );
            if b.batch_norm {
                // gamma, beta and the two running statistics, as burn counts them.
                n = n.saturating_add(c.saturating_mul(4));
            }
            c_in = c;
        }
        n
    }

    fn blocks_of(s: &ModelSection) -> Vec<ConvBlockConfig> {
        s.conv
            .iter()
            .map(|b| ConvBlockConfig {
                channels: b.channels,
                kernel: b.kernel,
                pool: b.pool,
                batch_norm: b.batch_norm,
                dropout: b.dropout,
            })
            .collect()
    }

    /// The module with freshly initialised weights.
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

impl Architecture for CnnConfig {
    type Net = Cnn;
    const SIZE_KEYS: &'static [&'static str] = &["model.conv", "model.hidden"];
    const KEYS: &'static [&'static str] = &["conv", "hidden", "activation", "dropout", "norm"];

    fn uses_batch_norm(s: &ModelSection) -> bool {
        s.norm == crate::Norm::Batch || s.conv.iter().any(|c| c.batch_norm)
    }

    /// Images only; the head's input is the flattened output of the last block.
    fn from_section(
        s: &ModelSection,
        input: InputShape,
        outputs: usize,
    ) -> Result<Self, SectionError> {
        let InputShape::Images {
            channels,
            height,
            width,
        } = input
        else {
            return Err(SectionError::new(
                "model.kind",
                "`model.kind` = \"cnn\" needs images: set `data.image_shape` = [channels, height, width]",
            ));
        };
        let shrink = s
            .conv
            .iter()
            .fold(1usize, |acc, b| acc.saturating_mul(b.pool.max(1)));
        if shrink > height.min(width) {
            return Err(SectionError::new(
                "model.conv",
                format!(
                    "`model.conv`: pooling shrinks the {height}x{width} images by {shrink}x, to nothing; use fewer or smaller pools"
                ),
            ));
        }
        let head = MlpConfig::from_section(s, InputShape::Rows { features: 0 }, outputs)?;
        let mut cnn = CnnConfig {
            in_channels: channels,
            height,
            width,
            blocks: Self::blocks_of(s),
            activation: s.activation,
            head,
        };
        cnn.head.d_input = cnn.flat_features();
        Ok(cnn)
    }

    fn check_section(s: &ModelSection) -> Vec<SectionError> {
        let mut out = Vec::new();
        MlpConfig::check_head(s, &mut out);
        if s.conv.is_empty() {
            out.push(SectionError::new(
                "model.conv",
                "`model.kind` = \"cnn\" needs at least one `[[model.conv]]` block",
            ));
        }
        for (i, c) in s.conv.iter().enumerate() {
            let key = |k: &str| format!("model.conv.{i}.{k}");
            if c.channels == 0 {
                out.push(SectionError::new(
                    key("channels"),
                    format!("`model.conv.{i}.channels` is required and must be at least 1"),
                ));
            }
            if c.kernel == 0 || c.kernel % 2 == 0 {
                out.push(SectionError::new(
                    key("kernel"),
                    format!(
                        "`model.conv.{i}.kernel` = {}: must be odd (1, 3, 5, ...)",
                        c.kernel
                    ),
                ));
            }
            if c.pool == 0 {
                out.push(SectionError::new(
                    key("pool"),
                    format!("`model.conv.{i}.pool` = 0: use 1 for no pooling"),
                ));
            }
            check_probability(&key("dropout"), c.dropout, &mut out);
        }
        out
    }

    fn min_params(s: &ModelSection) -> u64 {
        let blocks = Self::blocks_of(s);
        let last = blocks.last().map_or(1, |b| b.channels as u64);
        Self::conv_params(1, &blocks)
            .saturating_add(MlpConfig::count_params(last, &s.hidden, 1, s.norm))
    }

    fn init(&self, device: &Device) -> Cnn {
        CnnConfig::init(self, device)
    }

    fn input(&self) -> InputShape {
        InputShape::Images {
            channels: self.in_channels,
            height: self.height,
            width: self.width,
        }
    }

    fn outputs(&self) -> usize {
        self.head.d_output
    }

    fn num_params(&self) -> u64 {
        Self::conv_params(self.in_channels as u64, &self.blocks)
            .saturating_add(self.head.num_params())
    }

    /// Per block: the convolution's output, normalised, activated, pooled and dropped out.
    fn activations_per_example(&self) -> u64 {
        let convs: u64 = self
            .block_shapes()
            .map(|(c, h, w)| (c as u64).saturating_mul(h as u64).saturating_mul(w as u64))
            .fold(0, u64::saturating_add);
        (self.in_channels * self.height * self.width) as u64
            + convs.saturating_mul(5)
            + self.head.activations_per_example()
    }

    /// The input is `[batch, channels, height, width]`.
    fn lower(&self, g: &mut Builder, x: &str) -> Result<String, LowerError> {
        let mut x = x.to_string();
        let mut c_in = self.in_channels;
        for (i, b) in self.blocks.iter().enumerate() {
            let prefix = format!("blocks.{i}");
            x = g.conv2d(&x, &format!("{prefix}.conv"), c_in, b.channels, b.kernel)?;
            if b.batch_norm {
                x = g.batch_norm(&x, &format!("{prefix}.norm"), b.channels)?;
            }
            x = g.activation(&x, self.activation);
            if b.pool > 1 {
                x = g.max_pool(&x, b.pool);
            }
            c_in = b.channels;
        }
        let flat = g.node(
            "Flatten",
            &[&x],
            vec![crate::onnx::attr_int("axis", 1)],
            None,
        );
        self.head.lower_prefixed(g, &flat, "head.")
    }
}

impl Forward for Cnn {
    /// Images `[batch, channels, height, width]` (rows are taken as row-major images) ->
    /// `[batch, outputs]`.
    fn forward_input(&self, x: Input) -> Output {
        Output::PerExample(self.forward(x.into_images(self.input_shape)))
    }
}

impl Cnn {
    /// `x: [batch, channels, height, width]` -> `[batch, outputs]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for block in &self.blocks {
            x = match (&block.norm, self.activation) {
                // One op (fused at inference on the CPU, op by op elsewhere).
                (None, Activation::Relu) => {
                    kiln_kernels::conv_block::conv_relu_pool(&block.conv, block.pool.as_ref(), x)
                }
                (norm, activation) => {
                    x = kiln_kernels::conv2d::conv2d(&block.conv, x);
                    if let Some(norm) = norm {
                        x = norm.forward(x);
                    }
                    x = activation.forward(x);
                    match &block.pool {
                        Some(pool) => kiln_kernels::max_pool2d::max_pool2d(pool, x),
                        None => x,
                    }
                }
            };
            x = block.dropout.forward(x);
        }
        self.head.forward(x.flatten(1, 3))
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::{ConvSection, ModelConfig, ModelKind, Norm};

    fn section() -> ModelSection {
        ModelSection {
            kind: ModelKind::Cnn,
            hidden: vec![16],
            conv: vec![
                ConvSection {
                    channels: 4,
                    batch_norm: true,
                    ..Default::default()
                },
                ConvSection {
                    channels: 6,
                    kernel: 5,
                    pool: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    const IMAGES: InputShape = InputShape::Images {
        channels: 2,
        height: 8,
        width: 6,
    };

    fn cnn() -> CnnConfig {
        match ModelConfig::from_section(&section(), IMAGES, 3).unwrap() {
            ModelConfig::Cnn(c) => c,
            other => panic!("a cnn, not {other:?}"),
        }
    }

    #[test]
    fn the_table_and_the_image_shape_size_every_layer() {
        let c = cnn();
        // 8x6 pooled by 2 then by 1: 4x3, with 6 channels into the head.
        assert_eq!(c.output_hw(), (4, 3));
        assert_eq!(c.flat_features(), 6 * 4 * 3);
        assert_eq!(c.head.d_input, 72);
        assert_eq!(
            (Architecture::outputs(&c), Architecture::input(&c)),
            (3, IMAGES)
        );
        let device = Device::flex();
        let net = c.init(&device);
        assert_eq!(Architecture::num_params(&c), net.num_params() as u64);
        assert!(CnnConfig::min_params(&section()) <= net.num_params() as u64);
    }

    #[test]
    fn forward_reads_images_and_rows_of_pixels_alike() {
        let device = Device::flex();
        let net = cnn().init(&device).valid();
        let pixels: Vec<f32> = (0..2 * 96).map(|i| (i as f32 * 0.11).sin()).collect();
        let images = Tensor::<4>::from_data(TensorData::new(pixels.clone(), [2, 2, 8, 6]), &device);
        let rows = Tensor::<2>::from_data(TensorData::new(pixels, [2, 96]), &device);
        let a = net.forward_input(Input::Images(images)).per_example();
        let b = net.forward_input(Input::Rows(rows)).per_example();
        assert_eq!(a.dims(), [2, 3]);
        assert_eq!(a.into_data(), b.into_data());
    }

    #[test]
    fn a_cnn_needs_images_that_its_pools_do_not_shrink_to_nothing() {
        let e = ModelConfig::from_section(&section(), InputShape::Rows { features: 96 }, 3)
            .unwrap_err();
        assert_eq!(e.key, "model.kind");
        assert!(e.message.contains("needs images"), "{e}");
        let mut s = section();
        s.conv[1].pool = 8;
        let e = ModelConfig::from_section(&s, IMAGES, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`model.conv`: pooling shrinks the 8x6 images by 16x, to nothing; use fewer or smaller pools"
        );
    }

    #[test]
    fn every_problem_of_the_conv_blocks_is_reported_with_its_key() {
        let s = ModelSection {
            kind: ModelKind::Cnn,
            norm: Norm::None,
            conv: vec![ConvSection {
                channels: 0,
                kernel: 4,
                pool: 0,
                dropout: -0.1,
                batch_norm: false,
            }],
            ..Default::default()
        };
        let keys: Vec<String> = ModelKind::Cnn
            .check_section(&s)
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "model.conv.0.channels",
                "model.conv.0.kernel",
                "model.conv.0.pool",
                "model.conv.0.dropout"
            ]
        );
        let empty = ModelSection {
            kind: ModelKind::Cnn,
            ..Default::default()
        };
        let problems = ModelKind::Cnn.check_section(&empty);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .contains("at least one `[[model.conv]]` block")
        );
    }
}

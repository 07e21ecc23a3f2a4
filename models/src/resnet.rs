//! A residual network for images (He et al., 2016), laid out for small images: a 3x3 stem
//! (no 7x7 convolution, no max pool), stages of basic blocks, global average pooling, a linear
//! classifier.
//!
//! - **Basic block**: 3x3 conv (stride s) -> batch norm -> ReLU -> 3x3 conv -> batch norm, plus
//!   the shortcut (the input itself, or a 1x1 conv with stride s and batch norm where the
//!   width or the size changes), then ReLU.
//! - **Stages**: the first keeps the stem's size; each later one halves height and width in
//!   its first block.
//! - **Initialisation**: burn's defaults (Kaiming-uniform over fan-in for convolutions and the
//!   classifier, as PyTorch's; batch norm's gamma 1, beta 0). Convolutions keep a bias,
//!   redundant before batch norm, so that kiln's CPU convolution kernel applies to every one.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, activation};
use serde::{Deserialize, Serialize};

use crate::onnx::{Builder, LowerError, attr_int, attr_ints};
use crate::{Architecture, Forward, Input, InputShape, ModelSection, Output, SectionError};

/// `(name, widths, blocks per stage)`: CIFAR's ResNet-8 and ResNet-20, and ResNet-18's
/// stages with the small-image stem.
pub const RESNET_PRESETS: &[(&str, &[usize], &[usize])] = &[
    ("resnet8", &[16, 32, 64], &[1, 1, 1]),
    ("resnet20", &[16, 32, 64], &[3, 3, 3]),
    ("resnet18", &[64, 128, 256, 512], &[2, 2, 2, 2]),
];

/// The parameters AdamW decays: convolution and classifier weights, not batch norm, not
/// biases.
pub const RESNET_DECAYED: &str = r"(stem|conv1|conv2|conv|head)\.weight$";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    /// Channels of each stage (the stem has the first stage's).
    pub widths: Vec<usize>,
    /// Basic blocks per stage.
    pub depths: Vec<usize>,
    pub outputs: usize,
}

/// One basic block's sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BlockShape {
    c_in: usize,
    c_out: usize,
    stride: usize,
    /// Output height and width.
    h: usize,
    w: usize,
}

impl BlockShape {
    fn projects(&self) -> bool {
        self.stride != 1 || self.c_in != self.c_out
    }
}

/// The output size of a 3x3 convolution with padding 1 (or a 1x1 without), stride `s`.
fn strided(n: usize, s: usize) -> usize {
    (n - 1) / s + 1
}

impl ResNetConfig {
    fn blocks(&self) -> Vec<BlockShape> {
        let (mut h, mut w) = (self.height, self.width);
        let mut c_in = self.widths.first().copied().unwrap_or(1);
        let mut out = Vec::new();
        for (s, (&width, &depth)) in self.widths.iter().zip(&self.depths).enumerate() {
            for b in 0..depth {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                (h, w) = (strided(h, stride), strided(w, stride));
                out.push(BlockShape {
                    c_in,
                    c_out: width,
                    stride,
                    h,
                    w,
                });
                c_in = width;
            }
        }
        out
    }

    fn last_width(&self) -> usize {
        self.widths.last().copied().unwrap_or(1)
    }

    /// Widths and depths from the table: a preset, then the keys it sets.
    fn sizes(s: &ModelSection) -> Result<(Vec<usize>, Vec<usize>), SectionError> {
        let name = s.preset.as_deref().unwrap_or("resnet8");
        let Some(&(_, widths, depths)) = RESNET_PRESETS.iter().find(|p| p.0 == name) else {
            let names: Vec<&str> = RESNET_PRESETS.iter().map(|p| p.0).collect();
            return Err(SectionError::new(
                "model.preset",
                format!(
                    "`model.preset` = {name:?} is not a ResNet preset: use one of {}",
                    names.join(", ")
                ),
            ));
        };
        Ok((
            s.widths.clone().unwrap_or_else(|| widths.to_vec()),
            s.depths.clone().unwrap_or_else(|| depths.to_vec()),
        ))
    }

    fn conv_params(c_in: u64, c_out: u64, k: u64) -> u64 {
        c_in.saturating_mul(c_out)
            .saturating_mul(k * k)
            .saturating_add(c_out)
    }

    /// gamma, beta and the two running statistics, as burn counts them.
    fn norm_params(c: u64) -> u64 {
        c.saturating_mul(4)
    }

    fn count_params(&self) -> u64 {
        let w0 = self.widths.first().copied().unwrap_or(1) as u64;
        let mut n =
            Self::conv_params(self.in_channels as u64, w0, 3).saturating_add(Self::norm_params(w0));
        for b in self.blocks() {
            let (ci, co) = (b.c_in as u64, b.c_out as u64);
            n = n
                .saturating_add(Self::conv_params(ci, co, 3))
                .saturating_add(Self::conv_params(co, co, 3))
                .saturating_add(Self::norm_params(co).saturating_mul(2));
            if b.projects() {
                n = n
                    .saturating_add(Self::conv_params(ci, co, 1))
                    .saturating_add(Self::norm_params(co));
            }
        }
        let last = self.last_width() as u64;
        n.saturating_add(last.saturating_mul(self.outputs as u64))
            .saturating_add(self.outputs as u64)
    }
}

fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .init(device)
}

#[derive(Module, Debug)]
struct Shortcut {
    conv: Conv2d,
    norm: BatchNorm,
}

#[derive(Module, Debug)]
struct BasicBlock {
    conv1: Conv2d,
    norm1: BatchNorm,
    conv2: Conv2d,
    norm2: BatchNorm,
    shortcut: Option<Shortcut>,
}

impl BasicBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = kiln_kernels::conv2d::conv2d(&self.conv1, x.clone());
        let y = activation::relu(self.norm1.forward(y));
        let y = self
            .norm2
            .forward(kiln_kernels::conv2d::conv2d(&self.conv2, y));
        let skip = match &self.shortcut {
            Some(s) => s.norm.forward(kiln_kernels::conv2d::conv2d(&s.conv, x)),
            None => x,
        };
        activation::relu(y + skip)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    stem: Conv2d,
    stem_norm: BatchNorm,
    blocks: Vec<BasicBlock>,
    head: Linear,
    #[module(skip)]
    input_shape: [usize; 3],
}

impl ResNet {
    /// `x: [batch, channels, height, width]` -> `[batch, outputs]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = kiln_kernels::conv2d::conv2d(&self.stem, x);
        let mut x = activation::relu(self.stem_norm.forward(x));
        for b in &self.blocks {
            x = b.forward(x);
        }
        let [n, c, h, w] = x.dims();
        let pooled = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        self.head.forward(pooled)
    }
}

impl Forward for ResNet {
    fn forward_input(&self, x: Input) -> Output {
        Output::PerExample(self.forward(x.into_images(self.input_shape)))
    }
}

impl Architecture for ResNetConfig {
    type Net = ResNet;
    const SIZE_KEYS: &'static [&'static str] = &["model.preset", "model.widths", "model.depths"];
    const KEYS: &'static [&'static str] = &["preset", "widths", "depths"];
    // Convolution and classifier weights; not batch norm, not biases.
    const DECAYED: Option<&'static str> = Some(RESNET_DECAYED);

    fn uses_batch_norm(_: &ModelSection) -> bool {
        true
    }

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
                "`model.kind` = \"resnet\" needs images: image files (`data.format` = \"image_folder\"), or `data.image_shape`",
            ));
        };
        let (widths, depths) = Self::sizes(s)?;
        Ok(ResNetConfig {
            in_channels: channels,
            height,
            width,
            widths,
            depths,
            outputs,
        })
    }

    fn check_section(s: &ModelSection) -> Vec<SectionError> {
        let mut out = Vec::new();
        match Self::sizes(s) {
            Err(e) => out.push(e),
            Ok((widths, depths)) => {
                if widths.is_empty() || widths.contains(&0) {
                    out.push(SectionError::new(
                        "model.widths",
                        format!("`model.widths` = {widths:?}: one or more stages, each at least 1 channel wide"),
                    ));
                }
                if depths.len() != widths.len() || depths.contains(&0) {
                    out.push(SectionError::new(
                        "model.depths",
                        format!(
                            "`model.depths` = {depths:?}: one count of blocks (at least 1) per stage of `model.widths` = {widths:?}"
                        ),
                    ));
                }
            }
        }
        out
    }

    fn min_params(s: &ModelSection) -> u64 {
        Self::sizes(s).map_or(0, |(widths, depths)| {
            ResNetConfig {
                in_channels: 1,
                height: 1,
                width: 1,
                widths,
                depths,
                outputs: 1,
            }
            .count_params()
        })
    }

    fn init(&self, device: &Device) -> ResNet {
        let w0 = self.widths[0];
        let blocks = self
            .blocks()
            .into_iter()
            .map(|b| BasicBlock {
                conv1: conv(b.c_in, b.c_out, 3, b.stride, device),
                norm1: BatchNormConfig::new(b.c_out).init(device),
                conv2: conv(b.c_out, b.c_out, 3, 1, device),
                norm2: BatchNormConfig::new(b.c_out).init(device),
                shortcut: b.projects().then(|| Shortcut {
                    conv: conv(b.c_in, b.c_out, 1, b.stride, device),
                    norm: BatchNormConfig::new(b.c_out).init(device),
                }),
            })
            .collect();
        ResNet {
            stem: conv(self.in_channels, w0, 3, 1, device),
            stem_norm: BatchNormConfig::new(w0).init(device),
            blocks,
            head: LinearConfig::new(self.last_width(), self.outputs).init(device),
            input_shape: [self.in_channels, self.height, self.width],
        }
    }

    fn input(&self) -> InputShape {
        InputShape::Images {
            channels: self.in_channels,
            height: self.height,
            width: self.width,
        }
    }

    fn outputs(&self) -> usize {
        self.outputs
    }

    fn num_params(&self) -> u64 {
        self.count_params()
    }

    /// Per block: two convolutions' outputs, normalised and activated, the shortcut's and the
    /// sum (about eight maps of the block's output size).
    fn activations_per_example(&self) -> u64 {
        let plane = |c: usize, h: usize, w: usize| (c as u64) * (h as u64) * (w as u64);
        let stem = plane(self.widths[0], self.height, self.width).saturating_mul(3);
        self.blocks()
            .iter()
            .map(|b| plane(b.c_out, b.h, b.w).saturating_mul(8))
            .fold(stem, u64::saturating_add)
            .saturating_add(plane(self.in_channels, self.height, self.width))
    }

    fn lower(&self, g: &mut Builder, x: &str) -> Result<String, LowerError> {
        let conv = |g: &mut Builder,
                    x: &str,
                    prefix: &str,
                    c_in: usize,
                    c_out: usize,
                    k: usize,
                    stride: usize|
         -> Result<String, LowerError> {
            let w = g.weight(&format!("{prefix}.weight"), &[c_out, c_in, k, k])?;
            let b = g.weight(&format!("{prefix}.bias"), &[c_out])?;
            let p = (k / 2) as i64;
            Ok(g.node(
                "Conv",
                &[x, &w, &b],
                vec![
                    attr_ints("kernel_shape", &[k as i64, k as i64]),
                    attr_ints("pads", &[p, p, p, p]),
                    attr_ints("strides", &[stride as i64, stride as i64]),
                ],
                None,
            ))
        };
        let w0 = self.widths[0];
        let y = conv(g, x, "stem", self.in_channels, w0, 3, 1)?;
        let y = g.batch_norm(&y, "stem_norm", w0)?;
        let mut x = g.node("Relu", &[&y], vec![], None);
        for (i, b) in self.blocks().iter().enumerate() {
            let p = format!("blocks.{i}");
            let y = conv(g, &x, &format!("{p}.conv1"), b.c_in, b.c_out, 3, b.stride)?;
            let y = g.batch_norm(&y, &format!("{p}.norm1"), b.c_out)?;
            let y = g.node("Relu", &[&y], vec![], None);
            let y = conv(g, &y, &format!("{p}.conv2"), b.c_out, b.c_out, 3, 1)?;
            let y = g.batch_norm(&y, &format!("{p}.norm2"), b.c_out)?;
            let skip = match b.projects() {
                true => {
                    let s = conv(
                        g,
                        &x,
                        &format!("{p}.shortcut.conv"),
                        b.c_in,
                        b.c_out,
                        1,
                        b.stride,
                    )?;
                    g.batch_norm(&s, &format!("{p}.shortcut.norm"), b.c_out)?
                }
                false => x.clone(),
            };
            let sum = g.node("Add", &[&y, &skip], vec![], None);
            x = g.node("Relu", &[&sum], vec![], None);
        }
        let pooled = g.node("GlobalAveragePool", &[&x], vec![], None);
        let flat = g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)], None);
        g.linear(&flat, "head", self.last_width(), self.outputs)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::{ModelConfig, ModelKind};

    const IMAGES: InputShape = InputShape::Images {
        channels: 3,
        height: 9,
        width: 7,
    };

    fn section(preset: &str) -> ModelSection {
        ModelSection {
            kind: ModelKind::ResNet,
            preset: Some(preset.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_parameter_count_is_burns_and_odd_sizes_shrink_as_strided_convs_do() {
        let ModelConfig::ResNet(c) =
            ModelConfig::from_section(&section("resnet8"), IMAGES, 4).unwrap()
        else {
            panic!("a resnet")
        };
        let device = Device::flex();
        let net = c.init(&device);
        assert_eq!(Architecture::num_params(&c), net.num_params() as u64);
        assert!(ResNetConfig::min_params(&section("resnet8")) <= net.num_params() as u64);
        // 9x7 -> 5x4 -> 3x2 over the two strided stages.
        let sizes: Vec<(usize, usize)> = c.blocks().iter().map(|b| (b.h, b.w)).collect();
        assert_eq!(sizes, [(9, 7), (5, 4), (3, 2)]);
        let x = Tensor::<4>::from_data(
            TensorData::new(
                (0..2 * 3 * 63).map(|i| (i as f32 * 0.37).sin()).collect(),
                [2, 3, 9, 7],
            ),
            &device,
        );
        assert_eq!(net.forward(x).dims(), [2, 4]);
    }

    #[test]
    fn presets_and_stage_keys_are_checked_with_their_keys() {
        let problems = ModelKind::ResNet.check_section(&section("resnet9"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "model.preset");
        assert!(
            problems[0].message.contains("resnet8, resnet20, resnet18"),
            "{}",
            problems[0]
        );
        let mut s = section("resnet8");
        s.depths = Some(vec![1, 1]);
        let keys: Vec<String> = ModelKind::ResNet
            .check_section(&s)
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["model.depths"]);
        let e = ModelConfig::from_section(&s, InputShape::Rows { features: 4 }, 2).unwrap_err();
        assert!(e.message.contains("needs images"), "{e}");
    }
}

//! kiln's model zoo.
//!
//! Every model is a plain burn module with a plain config: `XConfig::init(&device) -> X`, and a
//! `forward` that documents its shapes. A model declares the shape of the examples it reads
//! ([`InputShape`]): the data is shaped for it on upload, so an MLP reads `[batch, features]`
//! rows and a CNN `[batch, channels, height, width]` images.
//!
//! **Adding a model kind**: a new file here with its config implementing [`Architecture`]
//! (built from the `[model]` table and the data's shape, with the checks of its sizes, its
//! parameter count and its ONNX lowering) and its module implementing [`Forward`], then one line
//! in the [`model_kinds!`] list below. Its `[model]` keys go in [`ModelSection`] (and its
//! `Architecture::KEYS`); what it reads and how it trains (decay, text, batch norm) are
//! `Architecture` items of its own file.
//!
//! ```no_run
//! use burn::tensor::{Device, Tensor};
//! use kiln_models::{Activation, MlpConfig, Norm};
//!
//! let device = Device::flex();
//! let mlp = MlpConfig {
//!     d_input: 64, hidden: vec![32], d_output: 10,
//!     activation: Activation::Relu, dropout: 0.0, norm: Norm::None,
//! }.init(&device);
//! let logits = mlp.forward(Tensor::<2>::zeros([4, 64], &device));
//! assert_eq!(logits.dims(), [4, 10]);
//! ```

mod activation;
mod cnn;
mod encoder;
mod gpt;
mod gpt_onnx;
mod io;
#[macro_use]
mod kind;
mod mlp;
pub mod onnx;
mod resnet;
mod section;

pub use activation::Activation;
pub use cnn::{Cnn, CnnConfig, ConvBlockConfig};
pub use encoder::{Encoder, EncoderConfig, PAD};
pub use gpt::{DECAYED, Gpt, GptConfig, KvCache, PRESETS, section_block_size};
pub use io::{Input, InputShape, Output};
pub use kind::{Architecture, Forward, TextRole};
pub use mlp::{Mlp, MlpConfig, Norm};
pub use resnet::{RESNET_DECAYED, RESNET_PRESETS, ResNet, ResNetConfig};
pub use section::{ConvSection, ModelSection, SectionError};

model_kinds! {
    /// A multi-layer perceptron over rows (images are read as rows of pixels).
    Mlp(MlpConfig => Mlp) = "mlp",
    /// Convolution blocks over images, then an MLP head.
    Cnn(CnnConfig => Cnn) = "cnn",
    /// A decoder-only transformer over token ids: a language model.
    Gpt(GptConfig => Gpt) = "gpt",
    /// A transformer encoder over a text's token ids, pooled: a text classifier.
    Encoder(EncoderConfig => Encoder) = "encoder",
    /// A residual network over images: basic blocks with batch norm, global average pooling.
    ResNet(ResNetConfig => ResNet) = "resnet",
}

//! kiln's model zoo.
//!
//! Every model is a plain burn module with a plain config: `XConfig::init(&device) -> X`, and a
//! `forward` that documents its shapes. Models take a flat batch `[batch, features]` so that one
//! data loader feeds them all; a CNN reshapes it to `[batch, channels, height, width]` itself.
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
mod mlp;

pub use activation::Activation;
pub use cnn::{Cnn, CnnConfig, ConvBlockConfig};
pub use mlp::{Mlp, MlpConfig, Norm};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The architecture of any model in the zoo, with every size resolved.
///
/// This is what a checkpoint stores so that a model can be rebuilt from it alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    Mlp(MlpConfig),
    Cnn(CnnConfig),
}

impl ModelConfig {
    /// Builds the model with freshly initialised weights on `device`.
    pub fn init(&self, device: &Device) -> Model {
        match self {
            ModelConfig::Mlp(c) => Model::Mlp(c.init(device)),
            ModelConfig::Cnn(c) => Model::Cnn(c.init(device)),
        }
    }

    /// Number of input features the model reads per example.
    pub fn d_input(&self) -> usize {
        match self {
            ModelConfig::Mlp(c) => c.d_input,
            ModelConfig::Cnn(c) => c.in_channels * c.height * c.width,
        }
    }

    /// Number of outputs per example (classes, or 1 for binary and regression).
    pub fn d_output(&self) -> usize {
        match self {
            ModelConfig::Mlp(c) => c.d_output,
            ModelConfig::Cnn(c) => c.head.d_output,
        }
    }
}

/// Any model in the zoo.
#[derive(Module, Debug)]
pub enum Model {
    Mlp(Mlp),
    Cnn(Cnn),
}

impl Model {
    /// `x: [batch, features]` -> `[batch, outputs]` (logits for classification).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.forward(x),
            Model::Cnn(m) => m.forward(x),
        }
    }
}

use burn::tensor::{Tensor, activation};
use serde::{Deserialize, Serialize};

/// The non-linearity between layers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    Silu,
    /// Leaky ReLU with slope 0.01 below zero.
    LeakyRelu,
}

impl Activation {
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Relu => activation::relu(x),
            Activation::Gelu => kiln_kernels::gelu::gelu(x),
            Activation::Tanh => activation::tanh(x),
            Activation::Sigmoid => activation::sigmoid(x),
            Activation::Silu => activation::silu(x),
            Activation::LeakyRelu => activation::leaky_relu(x, 0.01),
        }
    }
}

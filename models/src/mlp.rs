use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Activation;

/// Normalisation applied after each hidden linear layer, before the activation.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    #[default]
    None,
    Batch,
    Layer,
}

/// A multi-layer perceptron: `d_input -> hidden[0] -> ... -> d_output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    pub d_input: usize,
    pub hidden: Vec<usize>,
    pub d_output: usize,
    pub activation: Activation,
    /// Dropout probability after each hidden activation, in `[0, 1)`.
    pub dropout: f64,
    pub norm: Norm,
}

#[derive(Module, Debug)]
enum NormLayer {
    Batch(BatchNorm),
    Layer(LayerNorm),
}

#[derive(Module, Debug)]
struct Hidden {
    linear: Linear,
    norm: Option<NormLayer>,
}

#[derive(Module, Debug)]
pub struct Mlp {
    hidden: Vec<Hidden>,
    output: Linear,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
}

impl MlpConfig {
    pub fn init(&self, device: &Device) -> Mlp {
        let mut d_in = self.d_input;
        let hidden = self
            .hidden
            .iter()
            .map(|&d_out| {
                let layer = Hidden {
                    linear: LinearConfig::new(d_in, d_out).init(device),
                    norm: match self.norm {
                        Norm::None => None,
                        Norm::Batch => {
                            Some(NormLayer::Batch(BatchNormConfig::new(d_out).init(device)))
                        }
                        Norm::Layer => {
                            Some(NormLayer::Layer(LayerNormConfig::new(d_out).init(device)))
                        }
                    },
                };
                d_in = d_out;
                layer
            })
            .collect();
        Mlp {
            hidden,
            output: LinearConfig::new(d_in, self.d_output).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            activation: self.activation,
        }
    }
}

impl Mlp {
    /// `x: [batch, d_input]` -> `[batch, d_output]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut x = x;
        for layer in &self.hidden {
            x = layer.linear.forward(x);
            x = match &layer.norm {
                None => x,
                Some(NormLayer::Batch(bn)) => bn.forward(x),
                Some(NormLayer::Layer(ln)) => ln.forward(x),
            };
            x = self.dropout.forward(self.activation.forward(x));
        }
        self.output.forward(x)
    }
}

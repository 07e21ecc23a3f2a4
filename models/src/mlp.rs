use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::onnx::{Builder, LowerError};
use crate::section::check_probability;
use crate::{
    Activation, Architecture, Forward, Input, InputShape, ModelSection, Output, SectionError,
};

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
    /// Widths of the linear layers' outputs, in order: the hidden layers, then the output.
    fn widths(&self) -> impl Iterator<Item = usize> + '_ {
        self.hidden.iter().copied().chain([self.d_output])
    }

    /// Parameters of an MLP `d_input -> hidden -> d_output` (saturating).
    pub(crate) fn count_params(d_input: u64, hidden: &[usize], d_output: u64, norm: Norm) -> u64 {
        let mut d_in = d_input;
        let mut n = 0u64;
        for &h in hidden {
            let h = h as u64;
            n = n.saturating_add(d_in.saturating_mul(h).saturating_add(h));
            if norm != Norm::None {
                n = n.saturating_add(h.saturating_mul(2));
            }
            d_in = h;
        }
        n.saturating_add(d_in.saturating_mul(d_output).saturating_add(d_output))
    }

    /// The `[model]` table's MLP keys (also a CNN's head): widths, dropout.
    pub(crate) fn check_head(section: &ModelSection, out: &mut Vec<SectionError>) {
        if section.hidden.contains(&0) {
            out.push(SectionError::new(
                "model.hidden",
                "`model.hidden`: every layer width must be at least 1",
            ));
        }
        check_probability("model.dropout", section.dropout, out);
    }

    /// The MLP's nodes, its tensors named under `prefix` (`""`, or `"head."` in a CNN).
    pub(crate) fn lower_prefixed(
        &self,
        g: &mut Builder,
        x: &str,
        prefix: &str,
    ) -> Result<String, LowerError> {
        let mut x = x.to_string();
        let mut d = self.d_input;
        for (i, &h) in self.hidden.iter().enumerate() {
            let layer = format!("{prefix}hidden.{i}");
            x = g.linear(&x, &format!("{layer}.linear"), d, h)?;
            x = match self.norm {
                Norm::None => x,
                Norm::Batch => g.batch_norm(&x, &format!("{layer}.norm"), h)?,
                Norm::Layer => g.layer_norm(&x, &format!("{layer}.norm"), h)?,
            };
            // Dropout is the identity at inference.
            x = g.activation(&x, self.activation);
            d = h;
        }
        g.linear(&x, &format!("{prefix}output"), d, self.d_output)
    }

    /// The module with freshly initialised weights.
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

impl Architecture for MlpConfig {
    type Net = Mlp;
    const SIZE_KEYS: &'static [&'static str] = &["model.hidden"];

    /// Rows, or images taken as rows of their pixels.
    fn from_section(
        s: &ModelSection,
        input: InputShape,
        outputs: usize,
    ) -> Result<Self, SectionError> {
        Ok(MlpConfig {
            d_input: input.numel(),
            hidden: s.hidden.clone(),
            d_output: outputs,
            activation: s.activation,
            dropout: s.dropout,
            norm: s.norm,
        })
    }

    fn check_section(s: &ModelSection) -> Vec<SectionError> {
        let mut out = Vec::new();
        Self::check_head(s, &mut out);
        if !s.conv.is_empty() {
            out.push(SectionError::new(
                "model.conv",
                "`model.conv` is set but `model.kind` = \"mlp\"; use kind = \"cnn\" or remove the conv blocks",
            ));
        }
        out
    }

    fn min_params(s: &ModelSection) -> u64 {
        Self::count_params(1, &s.hidden, 1, s.norm)
    }

    fn init(&self, device: &Device) -> Mlp {
        MlpConfig::init(self, device)
    }

    fn input(&self) -> InputShape {
        InputShape::Rows {
            features: self.d_input,
        }
    }

    fn outputs(&self) -> usize {
        self.d_output
    }

    fn num_params(&self) -> u64 {
        Self::count_params(
            self.d_input as u64,
            &self.hidden,
            self.d_output as u64,
            self.norm,
        )
    }

    /// Per layer: the linear output, the normalised and activated values, the dropout mask.
    fn activations_per_example(&self) -> u64 {
        let per_layer: u64 = self.widths().map(|w| w as u64).fold(0, u64::saturating_add);
        (self.d_input as u64).saturating_add(per_layer.saturating_mul(4))
    }

    fn lower(&self, g: &mut Builder, x: &str) -> Result<String, LowerError> {
        self.lower_prefixed(g, x, "")
    }
}

impl Forward for Mlp {
    /// Rows `[batch, d_input]` (images are flattened) -> `[batch, d_output]`.
    fn forward_input(&self, x: Input) -> Output {
        Output::PerExample(self.forward(x.into_rows()))
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

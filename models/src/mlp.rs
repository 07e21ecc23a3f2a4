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

    /// Parameters of an MLP `d_input -> hidden -> d_output` (saturating), counted as burn
    /// counts them: batch norm's running statistics included.
    pub(crate) fn count_params(d_input: u64, hidden: &[usize], d_output: u64, norm: Norm) -> u64 {
        let per_norm = match norm {
            Norm::None => 0,
            Norm::Layer => 2,
            Norm::Batch => 4,
        };
        let mut d_in = d_input;
        let mut n = 0u64;
        for &h in hidden {
            let h = h as u64;
            n = n.saturating_add(d_in.saturating_mul(h).saturating_add(h));
            n = n.saturating_add(h.saturating_mul(per_norm));
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
    const KEYS: &'static [&'static str] = &["hidden", "activation", "dropout", "norm"];

    fn uses_batch_norm(s: &ModelSection) -> bool {
        s.norm == Norm::Batch
    }

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
            x = kiln_kernels::linear::linear(&layer.linear, x);
            x = match &layer.norm {
                None => x,
                Some(NormLayer::Batch(bn)) => bn.forward(x),
                Some(NormLayer::Layer(ln)) => ln.forward(x),
            };
            x = self.dropout.forward(self.activation.forward(x));
        }
        kiln_kernels::linear::linear(&self.output, x)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;
    use crate::{ModelConfig, ModelKind};

    fn config(norm: Norm) -> MlpConfig {
        MlpConfig {
            d_input: 12,
            hidden: vec![8, 5],
            d_output: 3,
            activation: Activation::Gelu,
            dropout: 0.0,
            norm,
        }
    }

    #[test]
    fn forward_maps_rows_to_outputs_and_reads_images_as_rows() {
        let device = Device::flex();
        let mlp = config(Norm::Layer).init(&device);
        let values: Vec<f32> = (0..24).map(|i| (i as f32 * 0.3).cos()).collect();
        let rows = Tensor::<2>::from_data(TensorData::new(values.clone(), [2, 12]), &device);
        let images = Tensor::<4>::from_data(TensorData::new(values, [2, 3, 2, 2]), &device);
        let a = mlp.forward_input(Input::Rows(rows)).per_example();
        let b = mlp.forward_input(Input::Images(images)).per_example();
        assert_eq!(a.dims(), [2, 3]);
        assert_eq!(a.into_data(), b.into_data());
    }

    #[test]
    fn the_parameter_count_is_burns() {
        let device = Device::flex();
        for norm in [Norm::None, Norm::Layer, Norm::Batch] {
            let c = config(norm);
            let counted = c.init(&device).num_params() as u64;
            assert_eq!(Architecture::num_params(&c), counted, "{norm:?}");
            assert!(
                MlpConfig::min_params(&ModelSection {
                    hidden: c.hidden.clone(),
                    norm,
                    ..Default::default()
                }) <= counted
            );
        }
        // An absurd width saturates instead of overflowing.
        let huge = MlpConfig {
            hidden: vec![usize::MAX, usize::MAX],
            ..config(Norm::None)
        };
        assert_eq!(Architecture::num_params(&huge), u64::MAX);
    }

    #[test]
    fn the_model_table_builds_an_mlp_for_any_input_and_reports_its_problems() {
        let section = ModelSection {
            hidden: vec![16],
            ..Default::default()
        };
        assert_eq!(section.kind, ModelKind::Mlp);
        let images = InputShape::Images {
            channels: 1,
            height: 4,
            width: 4,
        };
        let ModelConfig::Mlp(m) = ModelConfig::from_section(&section, images, 10).unwrap() else {
            panic!("an mlp")
        };
        assert_eq!(
            (m.d_input, m.hidden.clone(), m.d_output),
            (16, vec![16], 10)
        );
        assert_eq!(Architecture::input(&m), InputShape::Rows { features: 16 });
        let bad = ModelSection {
            hidden: vec![4, 0],
            dropout: 1.0,
            conv: vec![Default::default()],
            ..Default::default()
        };
        let keys: Vec<String> = ModelKind::Mlp
            .check_section(&bad)
            .into_iter()
            .chain(ModelKind::Mlp.foreign_keys(&bad))
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["model.hidden", "model.dropout", "model.conv"]);
    }

    #[test]
    fn the_onnx_lowering_names_every_weight_and_checks_its_shape() {
        let c = config(Norm::None);
        let mut weights = crate::onnx::Weights::new();
        for (name, shape) in [
            ("hidden.0.linear.weight", vec![12, 8]),
            ("hidden.0.linear.bias", vec![8]),
            ("hidden.1.linear.weight", vec![8, 5]),
            ("hidden.1.linear.bias", vec![5]),
            ("output.weight", vec![5, 3]),
            ("output.bias", vec![3]),
        ] {
            let n = shape.iter().product();
            weights.insert(name.into(), (shape, vec![0.0; n]));
        }
        let mut g = crate::onnx::Builder::new(&weights, 17);
        c.lower(&mut g, "x").unwrap();
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops.iter().filter(|o| **o == "MatMul").count(), 3);
        assert_eq!(
            g.initializers.len(),
            6 + 2 * 3,
            "six weights, and three constants per GELU"
        );
        weights.get_mut("output.weight").unwrap().0 = vec![3, 5];
        let mut g = crate::onnx::Builder::new(&weights, 17);
        let e = c.lower(&mut g, "x").unwrap_err();
        assert_eq!(e.layer, "output.weight");
        assert!(e.why.contains("[3, 5] in the weights, [5, 3]"), "{e}");
    }
}

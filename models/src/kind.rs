//! What every model kind provides, and the macro that lists the kinds in one place.
//!
//! A kind is a file in this crate with a config struct implementing [`Architecture`] (built from
//! the `[model]` table and the data's shape, checked, sized, lowered to ONNX) and a burn module
//! implementing [`Forward`]. [`crate::model_kinds`] in `lib.rs` then derives, from one line per
//! kind, the `model.kind` names ([`crate::ModelKind`]), the resolved architecture saved with a
//! run ([`crate::ModelConfig`]) and the module ([`crate::Model`]), with their dispatch.

use burn::tensor::Device;

use crate::onnx::{Builder, LowerError};
use crate::{Input, InputShape, ModelSection, Output, SectionError};

/// A model kind's architecture: every size resolved, enough to rebuild the model alone.
pub trait Architecture: Sized {
    /// The module [`Architecture::init`] builds.
    type Net;

    /// The `[model]` keys that size this kind (named when a model is too large).
    const SIZE_KEYS: &'static [&'static str];

    /// The architecture `section` describes for examples of shape `input` and `outputs`
    /// outputs per example (classes, or 1).
    fn from_section(
        section: &ModelSection,
        input: InputShape,
        outputs: usize,
    ) -> Result<Self, SectionError>;

    /// What is wrong with `section` for this kind, seen without the data (every problem).
    fn check_section(section: &ModelSection) -> Vec<SectionError>;

    /// Parameters of the smallest model `section` can describe (data sizes taken as 1): a
    /// size check before any data is read.
    fn min_params(section: &ModelSection) -> u64;

    /// The module with freshly initialised weights on `device`.
    fn init(&self, device: &Device) -> Self::Net;

    /// The shape of one example the model reads.
    fn input(&self) -> InputShape;

    /// Outputs per example.
    fn outputs(&self) -> usize;

    /// Number of parameters (saturating: an absurd config must not overflow).
    fn num_params(&self) -> u64;

    /// Floats one example keeps alive for the backward pass (an estimate, for the memory
    /// check before anything is allocated).
    fn activations_per_example(&self) -> u64;

    /// Appends the model's ONNX nodes to `g`, reading the input `x` (laid out as
    /// [`Architecture::input`] says, batch first); returns the output's name.
    fn lower(&self, g: &mut Builder, x: &str) -> Result<String, LowerError>;
}

/// A module's forward pass on the loop's [`Input`].
pub trait Forward {
    fn forward_input(&self, x: Input) -> Output;
}

/// Declares the model kinds: `Variant(ConfigType => ModuleType) = "name"`, one per line, with
/// doc comments. Generates [`crate::ModelKind`], [`crate::ModelConfig`] and [`crate::Model`].
#[macro_export]
macro_rules! model_kinds {
    ($( $(#[doc = $doc:literal])* $Variant:ident($Config:ident => $Net:ident) = $name:literal ),+ $(,)?) => {
        /// A model kind, as `model.kind` names it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        pub enum ModelKind {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $Variant ),+
        }

        impl ModelKind {
            /// Every kind, in the order they are listed; the first is the default.
            pub const ALL: &'static [ModelKind] = &[$(ModelKind::$Variant),+];

            /// The name `model.kind` takes.
            pub fn name(self) -> &'static str {
                match self { $(ModelKind::$Variant => $name),+ }
            }

            /// Problems of the `[model]` table for this kind, before any data is read.
            pub fn check_section(self, section: &$crate::ModelSection) -> Vec<$crate::SectionError> {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::check_section(section)),+ }
            }

            /// Parameters of the smallest model the table describes (data sizes taken as 1).
            pub fn min_params(self, section: &$crate::ModelSection) -> u64 {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::min_params(section)),+ }
            }

            /// The `[model]` keys that size this kind.
            pub fn size_keys(self) -> &'static [&'static str] {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::SIZE_KEYS),+ }
            }
        }

        impl Default for ModelKind {
            fn default() -> Self {
                ModelKind::ALL[0]
            }
        }

        /// The architecture of any model in the zoo, with every size resolved: what a checkpoint
        /// stores so that the model can be rebuilt from it alone.
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(tag = "kind")]
        pub enum ModelConfig {
            $( #[serde(rename = $name)] $Variant($Config) ),+
        }

        impl ModelConfig {
            /// The architecture the `[model]` table describes for the data's shape.
            pub fn from_section(
                section: &$crate::ModelSection,
                input: $crate::InputShape,
                outputs: usize,
            ) -> Result<Self, $crate::SectionError> {
                Ok(match section.kind {
                    $(ModelKind::$Variant => ModelConfig::$Variant(
                        <$Config as $crate::Architecture>::from_section(section, input, outputs)?,
                    )),+
                })
            }

            pub fn kind(&self) -> ModelKind {
                match self { $(ModelConfig::$Variant(_) => ModelKind::$Variant),+ }
            }

            /// Builds the model with freshly initialised weights on `device`.
            pub fn init(&self, device: &::burn::tensor::Device) -> Model {
                match self { $(ModelConfig::$Variant(c) => Model::$Variant($crate::Architecture::init(c, device))),+ }
            }

            /// The shape of one example the model reads.
            pub fn input(&self) -> $crate::InputShape {
                match self { $(ModelConfig::$Variant(c) => $crate::Architecture::input(c)),+ }
            }

            /// Outputs per example (classes, or 1 for binary and regression).
            pub fn outputs(&self) -> usize {
                match self { $(ModelConfig::$Variant(c) => $crate::Architecture::outputs(c)),+ }
            }

            pub fn num_params(&self) -> u64 {
                match self { $(ModelConfig::$Variant(c) => $crate::Architecture::num_params(c)),+ }
            }

            pub fn activations_per_example(&self) -> u64 {
                match self { $(ModelConfig::$Variant(c) => $crate::Architecture::activations_per_example(c)),+ }
            }

            /// Appends the model's ONNX nodes, reading `x`; returns the output's name.
            pub fn lower(
                &self,
                g: &mut $crate::onnx::Builder,
                x: &str,
            ) -> Result<String, $crate::onnx::LowerError> {
                match self { $(ModelConfig::$Variant(c) => $crate::Architecture::lower(c, g, x)),+ }
            }
        }

        /// Any model in the zoo.
        #[derive(::burn::module::Module, Debug)]
        pub enum Model {
            $( $Variant($Net) ),+
        }

        impl Model {
            /// A batch in the layout of the model's input shape -> its output (see each
            /// kind's `forward` for the shapes).
            pub fn forward(&self, x: $crate::Input) -> $crate::Output {
                match self { $(Model::$Variant(m) => $crate::Forward::forward_input(m, x)),+ }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::{Activation, MlpConfig, ModelConfig, ModelKind, ModelSection, Norm};

    #[test]
    fn kinds_are_named_once_and_the_first_is_the_default() {
        let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["mlp", "cnn", "gpt", "encoder", "resnet"]);
        assert_eq!(ModelKind::default(), ModelKind::Mlp);
        for k in ModelKind::ALL {
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, serde_json::json!(k.name()));
            assert!(!k.size_keys().is_empty());
        }
        assert_eq!(ModelSection::default().kind, ModelKind::Mlp);
    }

    #[test]
    fn a_resolved_architecture_is_tagged_with_its_kind_and_round_trips() {
        let c = ModelConfig::Mlp(MlpConfig {
            d_input: 4,
            hidden: vec![3],
            d_output: 2,
            activation: Activation::Tanh,
            dropout: 0.1,
            norm: Norm::Batch,
        });
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["kind"], "mlp");
        assert_eq!(json["hidden"], serde_json::json!([3]));
        let back: ModelConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.kind(), ModelKind::Mlp);
    }
}

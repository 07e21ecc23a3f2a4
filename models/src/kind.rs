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

    /// Every `[model]` key this kind reads, beside `kind`. A key another kind reads, set to
    /// something else than its default, is an error naming the kinds that read it.
    const KEYS: &'static [&'static str];

    /// The parameters AdamW's weight decay applies to, as a regex over their paths; `None`:
    /// all of them.
    const DECAYED: Option<&'static str> = None;

    /// What the kind does with text, if it reads token ids: the task and data it pairs with.
    const TEXT: Option<TextRole> = None;

    /// Whether the model `section` describes keeps batch norm's running statistics.
    fn uses_batch_norm(_section: &ModelSection) -> bool {
        false
    }

    /// The longest context in tokens the model `section` describes reads, for a kind that
    /// reads text: the default of `data.block_size`.
    fn context_len(_section: &ModelSection) -> Option<usize> {
        None
    }

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

/// What a kind that reads token ids does with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRole {
    /// Predicts each next token of a corpus: a language model (`task` = "language_model").
    NextToken,
    /// Classifies a whole text (`task` = "classification" with `data.text`).
    Classify,
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

            /// Keys the table sets (away from their defaults) that only other kinds read, each
            /// an error naming the kinds that read it. For configs people write: a run's saved
            /// config may hold keys that kiln ignored when it was trained.
            pub fn foreign_keys(self, section: &$crate::ModelSection) -> Vec<$crate::SectionError> {
                $crate::kind::foreign_keys(self.name(), self.keys(), section, |key| {
                    ModelKind::ALL
                        .iter()
                        .filter(|k| k.keys().contains(&key))
                        .map(|k| k.name())
                        .collect()
                })
            }

            /// Every `[model]` key this kind reads, beside `kind`.
            pub fn keys(self) -> &'static [&'static str] {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::KEYS),+ }
            }

            /// The parameters AdamW decays, as a regex over their paths; `None`: all.
            pub fn decayed(self) -> Option<&'static str> {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::DECAYED),+ }
            }

            /// What the kind does with text, if it reads token ids.
            pub fn text_role(self) -> Option<$crate::TextRole> {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::TEXT),+ }
            }

            /// The kinds that do `role` with text, as `model.kind` names them.
            pub fn names_with(role: $crate::TextRole) -> Vec<&'static str> {
                ModelKind::ALL.iter().filter(|k| k.text_role() == Some(role)).map(|k| k.name()).collect()
            }

            /// Whether the model `section` describes keeps batch norm's running statistics.
            pub fn uses_batch_norm(self, section: &$crate::ModelSection) -> bool {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::uses_batch_norm(section)),+ }
            }

            /// The longest context in tokens a text-reading kind's model reads.
            pub fn context_len(self, section: &$crate::ModelSection) -> Option<usize> {
                match self { $(ModelKind::$Variant => <$Config as $crate::Architecture>::context_len(section)),+ }
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

/// The keys `section` sets (away from their defaults) that kind `name` does not read, each an
/// error naming the kinds that do (`readers`).
pub fn foreign_keys(
    name: &str,
    keys: &[&str],
    section: &ModelSection,
    readers: impl Fn(&str) -> Vec<&'static str>,
) -> Vec<SectionError> {
    section
        .set_keys()
        .into_iter()
        .filter(|key| !keys.contains(&key.as_str()))
        .map(|key| {
            let kinds: Vec<String> = readers(&key).iter().map(|k| format!("{k:?}")).collect();
            SectionError::new(
                format!("model.{key}"),
                format!(
                    "`model.{key}` is set but `model.kind` = {name:?} does not read it (it sizes a {}); remove it or change `model.kind`",
                    kinds.join(" or ")
                ),
            )
        })
        .collect()
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

    /// Every kind's `KEYS` are keys of `[model]`, and every key of `[model]` is read by some
    /// kind: a key added to the table without a kind that reads it, or a misspelt one in a
    /// kind's list, fails here.
    #[test]
    fn every_model_key_belongs_to_a_kind_and_every_kind_key_exists() {
        let schema = serde_json::to_value(schemars::schema_for!(ModelSection)).unwrap();
        let fields: std::collections::BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "kind")
            .collect();
        let read: std::collections::BTreeSet<&str> = ModelKind::ALL
            .iter()
            .flat_map(|k| k.keys().iter().copied())
            .collect();
        assert_eq!(read, fields);
        // A key set away from its default is seen as set; at its default it is not.
        let mut s = ModelSection::default();
        assert!(s.set_keys().is_empty());
        s.n_layer = Some(2);
        s.dropout = 0.1;
        assert_eq!(s.set_keys(), ["dropout", "n_layer"]);
        assert!(ModelKind::Mlp.check_section(&s).is_empty());
        let problems = ModelKind::Mlp.foreign_keys(&s);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "model.n_layer");
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

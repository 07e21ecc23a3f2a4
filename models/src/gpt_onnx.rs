//! The GPT's ONNX graph.

use crate::GptConfig;
use crate::onnx::{Builder, LowerError};

pub(crate) fn lower(_c: &GptConfig, _g: &mut Builder, _x: &str) -> Result<String, LowerError> {
    Err(LowerError {
        layer: "gpt".into(),
        why: "not lowered yet".into(),
    })
}

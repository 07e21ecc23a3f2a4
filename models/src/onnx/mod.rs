//! Writing ONNX graphs: the protobuf messages ([`proto`]) and a [`Builder`] with one lowering
//! per layer kind of the zoo (`linear`, `batch_norm`, `layer_norm`, `conv2d`, `max_pool`, the
//! activations, `softmax`).
//!
//! Each model kind lowers itself beside its forward pass (`Architecture::lower` in its own
//! file) from its config and the safetensors weights, so a model built from these layers
//! exports, and a new layer kind exports once it has a lowering here.

pub mod proto;

use std::collections::BTreeMap;

use crate::Activation;
use proto::*;

/// Weights by safetensors name: shape and values.
pub type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads a safetensors file into [`Weights`]; f32 tensors only.
pub fn read_weights(bytes: &[u8]) -> Result<Weights, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!(
                "{name:?} is {:?}; the exporter reads f32",
                view.dtype()
            ));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Why a model cannot be lowered: the op and the layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot export layer {layer}: {why}")]
pub struct LowerError {
    pub layer: String,
    pub why: String,
}

/// A graph under construction.
pub struct Builder<'w> {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    weights: &'w Weights,
    pub opset: i64,
    counter: usize,
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: ATTR_INT,
        ..Default::default()
    }
}

pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: ATTR_FLOAT,
        ..Default::default()
    }
}

pub fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        s: s.as_bytes().to_vec(),
        r#type: ATTR_STRING,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: ATTR_INTS,
        ..Default::default()
    }
}

impl<'w> Builder<'w> {
    pub fn new(weights: &'w Weights, opset: i64) -> Self {
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            weights,
            opset,
            counter: 0,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node and returns the name of its (single) output.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        out: Option<&str>,
    ) -> String {
        let output = out.map_or_else(|| self.fresh(&op.to_lowercase()), str::to_string);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            attribute: attrs,
            domain: String::new(),
        });
        output
    }

    /// A float constant (an initializer).
    pub fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    pub fn constant_i64(&mut self, name: &str, values: &[i64]) -> String {
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: INT64,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A 0-d int64 constant.
    pub fn constant_i64_scalar(&mut self, name: &str, value: i64) -> String {
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            dims: vec![],
            data_type: INT64,
            name: name.clone(),
            raw_data: value.to_le_bytes().to_vec(),
        });
        name
    }

    /// A weight of the model, as an initializer, checked against the expected shape.
    pub(crate) fn weight(&mut self, name: &str, shape: &[usize]) -> Result<String, LowerError> {
        let (have, values) = self.weights.get(name).ok_or_else(|| LowerError {
            layer: name.into(),
            why: "the weights file has no such tensor".into(),
        })?;
        if have != shape {
            return Err(LowerError {
                layer: name.into(),
                why: format!("shape {have:?} in the weights, {shape:?} in the model config"),
            });
        }
        let values = values.clone();
        Ok(self.constant(&name.replace('.', "_"), shape, &values))
    }

    /// `x @ W + b` with burn's `[in, out]` weight layout.
    pub fn linear(
        &mut self,
        x: &str,
        prefix: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<String, LowerError> {
        let w = self.weight(&format!("{prefix}.weight"), &[d_in, d_out])?;
        let b = self.weight(&format!("{prefix}.bias"), &[d_out])?;
        let mm = self.node("MatMul", &[x, &w], vec![], None);
        Ok(self.node("Add", &[&mm, &b], vec![], None))
    }

    /// `x @ W (+ b)`, for layers built with or without a bias.
    pub fn linear_opt(
        &mut self,
        x: &str,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<String, LowerError> {
        if bias {
            return self.linear(x, prefix, d_in, d_out);
        }
        let w = self.weight(&format!("{prefix}.weight"), &[d_in, d_out])?;
        Ok(self.node("MatMul", &[x, &w], vec![], None))
    }

    /// Layer norm over the last axis, with or without its bias (`beta`).
    pub fn layer_norm_opt(
        &mut self,
        x: &str,
        prefix: &str,
        d: usize,
        bias: bool,
    ) -> Result<String, LowerError> {
        if bias {
            return self.layer_norm(x, prefix, d);
        }
        let g = self.weight(&format!("{prefix}.gamma"), &[d])?;
        Ok(self.node(
            "LayerNormalization",
            &[x, &g],
            vec![attr_int("axis", -1), attr_float("epsilon", 1e-5)],
            None,
        ))
    }

    /// Inference-mode batch norm over axis 1 (features of `[N, C]`, channels of `[N, C, H, W]`).
    pub fn batch_norm(&mut self, x: &str, prefix: &str, c: usize) -> Result<String, LowerError> {
        let names = ["gamma", "beta", "running_mean", "running_var"];
        let mut ins = vec![x.to_string()];
        for n in names {
            ins.push(self.weight(&format!("{prefix}.{n}"), &[c])?);
        }
        let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
        Ok(self.node(
            "BatchNormalization",
            &refs,
            vec![attr_float("epsilon", 1e-5)],
            None,
        ))
    }

    /// Layer norm over the last axis (opset 17's `LayerNormalization`).
    pub fn layer_norm(&mut self, x: &str, prefix: &str, d: usize) -> Result<String, LowerError> {
        let g = self.weight(&format!("{prefix}.gamma"), &[d])?;
        let b = self.weight(&format!("{prefix}.beta"), &[d])?;
        Ok(self.node(
            "LayerNormalization",
            &[x, &g, &b],
            vec![attr_int("axis", -1), attr_float("epsilon", 1e-5)],
            None,
        ))
    }

    pub fn activation(&mut self, x: &str, a: Activation) -> String {
        match a {
            Activation::Relu => self.node("Relu", &[x], vec![], None),
            Activation::Tanh => self.node("Tanh", &[x], vec![], None),
            Activation::Sigmoid => self.node("Sigmoid", &[x], vec![], None),
            Activation::LeakyRelu => {
                self.node("LeakyRelu", &[x], vec![attr_float("alpha", 0.01)], None)
            }
            Activation::Silu => {
                let s = self.node("Sigmoid", &[x], vec![], None);
                self.node("Mul", &[x, &s], vec![], None)
            }
            // Exact GELU, as burn computes it: opset 20's op, else x/2 * (1 + erf(x / sqrt 2)).
            Activation::Gelu if self.opset >= 20 => self.node("Gelu", &[x], vec![], None),
            Activation::Gelu => {
                let inv_sqrt2 = self.constant("inv_sqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]);
                let half = self.constant("half", &[], &[0.5]);
                let one = self.constant("one", &[], &[1.0]);
                let scaled = self.node("Mul", &[x, &inv_sqrt2], vec![], None);
                let erf = self.node("Erf", &[&scaled], vec![], None);
                let plus = self.node("Add", &[&erf, &one], vec![], None);
                let xh = self.node("Mul", &[x, &half], vec![], None);
                self.node("Mul", &[&xh, &plus], vec![], None)
            }
        }
    }

    pub fn softmax(&mut self, x: &str, out: &str) -> String {
        self.node("Softmax", &[x], vec![attr_int("axis", 1)], Some(out))
    }

    /// 2-D convolution, stride 1, "same" padding for an odd square kernel.
    pub fn conv2d(
        &mut self,
        x: &str,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
    ) -> Result<String, LowerError> {
        if k.is_multiple_of(2) {
            return Err(LowerError {
                layer: prefix.into(),
                why: format!("kernel {k} is even; \"same\" padding needs an odd kernel"),
            });
        }
        let w = self.weight(&format!("{prefix}.weight"), &[c_out, c_in, k, k])?;
        let b = self.weight(&format!("{prefix}.bias"), &[c_out])?;
        let p = (k / 2) as i64;
        Ok(self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                attr_ints("kernel_shape", &[k as i64, k as i64]),
                attr_ints("pads", &[p, p, p, p]),
                attr_ints("strides", &[1, 1]),
            ],
            None,
        ))
    }

    pub fn max_pool(&mut self, x: &str, p: usize) -> String {
        let p = p as i64;
        self.node(
            "MaxPool",
            &[x],
            vec![
                attr_ints("kernel_shape", &[p, p]),
                attr_ints("strides", &[p, p]),
            ],
            None,
        )
    }
}

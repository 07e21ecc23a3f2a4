//! What Triton's clients (`tritonclient.http`, perf_analyzer, KServe) send and expect beyond
//! the core protocol: the binary tensor data extension, plain version strings on every
//! versioned route, the model configuration and statistics routes, and compressed bodies.
//!
//! - Binary data: a body whose JSON header is followed by raw tensors, the header's length in
//!   `Inference-Header-Content-Length`; an input carries `parameters.binary_data_size`, and an
//!   output asked for with `parameters.binary_data` (or every output, with the request's
//!   `parameters.binary_data_output`) comes back the same way.
//! - Versions: a registry version `NAME/vN` is version `N` (`vN` is accepted too); a run served
//!   by its id is version `1`.
//! - `Content-Encoding: gzip` or `deflate` bodies are decoded (within the body limit); any other
//!   encoding is a 415.

use std::io::Read;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::protocol::Bad;

/// The header giving the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's version string for a served version's registry label: `N` for `NAME/vN`,
/// `1` for a run or checkpoint served by its id (it has one version, itself).
pub fn version_string(label: &str) -> String {
    match label.rsplit_once("/v") {
        Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
        _ => "1".to_string(),
    }
}

/// Whether a version asked for in a URL or a body names the served one: `N`, `vN`, or the
/// registry label itself.
pub fn names_version(asked: &str, label: &str) -> bool {
    let plain = version_string(label);
    asked == plain || asked.strip_prefix('v') == Some(plain.as_str()) || asked == label
}

/// A request body split into its JSON header and the binary tensors after it.
pub struct Body {
    pub json: Value,
    pub binary: Bytes,
}

/// Splits a body by `Inference-Header-Content-Length` (all JSON without it) and parses the
/// JSON part.
pub fn split_body(headers: &HeaderMap, body: Bytes) -> Result<Body, Bad> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Bad("Inference-Header-Content-Length is not a number of bytes".into())
                })?;
            if n > body.len() {
                return Err(Bad(format!(
                    "Inference-Header-Content-Length is {n}, but the body has {} bytes",
                    body.len()
                )));
            }
            n
        }
    };
    let json = serde_json::from_slice(&body[..json_len])
        .map_err(|e| Bad(format!("the body is not JSON: {e}")))?;
    Ok(Body {
        json,
        binary: body.slice(json_len..),
    })
}

/// Bytes per element of a numeric tensor type, or `None` for one kiln does not read.
fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

/// An IEEE half-precision number's value.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f32::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// A binary tensor's elements (little-endian, as the extension sends them) as f32.
pub fn decode(datatype: &str, bytes: &[u8]) -> Result<Vec<f32>, Bad> {
    let size = element_size(datatype).ok_or_else(|| {
        Bad(format!(
            "binary data of type {datatype:?}: the model reads numbers (FP32)"
        ))
    })?;
    if bytes.len() % size != 0 {
        return Err(Bad(format!(
            "binary data of {} bytes is not a whole number of {datatype} values",
            bytes.len()
        )));
    }
    let values = bytes.chunks_exact(size).map(|c| match datatype {
        "BOOL" | "UINT8" => f32::from(c[0]),
        "INT8" => f32::from(c[0] as i8),
        "INT16" => f32::from(i16::from_le_bytes([c[0], c[1]])),
        "UINT16" => f32::from(u16::from_le_bytes([c[0], c[1]])),
        "FP16" => f16_to_f32(u16::from_le_bytes([c[0], c[1]])),
        "BF16" => f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16),
        "INT32" => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
        "UINT32" => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
        "FP32" => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        "INT64" => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
        "UINT64" => u64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
        _ => f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
    });
    Ok(values.collect())
}

/// Takes an input's `binary_data_size` bytes off the front of what is left of the body; `None`
/// when the input carries its data in JSON.
pub fn take_binary(input: &Value, index: usize, rest: &mut Bytes) -> Result<Option<Bytes>, Bad> {
    let Some(size) = input.pointer("/parameters/binary_data_size") else {
        return Ok(None);
    };
    let size = size
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| {
            Bad(format!(
                "inputs[{index}].parameters.binary_data_size is not a number of bytes"
            ))
        })?;
    if size > rest.len() {
        return Err(Bad(format!(
            "inputs[{index}].parameters.binary_data_size is {size}, but {} bytes of binary data are left",
            rest.len()
        )));
    }
    Ok(Some(rest.split_to(size)))
}

/// Whether the request asks for output `name` as binary data.
pub fn wants_binary(request: &Value, name: &str) -> bool {
    let asked = request["outputs"].as_array().and_then(|outputs| {
        outputs
            .iter()
            .find(|o| o["name"] == name)
            .and_then(|o| o.pointer("/parameters/binary_data"))
            .and_then(Value::as_bool)
    });
    asked.unwrap_or_else(|| {
        request
            .pointer("/parameters/binary_data_output")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    })
}

/// An `infer` answer: JSON alone, or, when some outputs are binary, the JSON header then their
/// bytes (little-endian FP32), with the header's length in `Inference-Header-Content-Length`.
pub fn answer(mut json: Value, binary: Vec<Vec<f32>>) -> Response {
    if binary.is_empty() {
        return super::json_response(&json, None);
    }
    let head = std::mem::take(&mut json).to_string();
    let mut body =
        Vec::with_capacity(head.len() + binary.iter().map(|b| 4 * b.len()).sum::<usize>());
    body.extend_from_slice(head.as_bytes());
    for values in &binary {
        for v in values {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response();
    r.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(head.len()));
    r
}

/// Decodes a `Content-Encoding: gzip` or `deflate` body, reading at most `limit` bytes of it
/// decoded (a small body can inflate to gigabytes). Any other encoding is refused.
pub fn decompress(
    encoding: &str,
    body: &[u8],
    limit: usize,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let reader: Box<dyn Read + '_> = match encoding.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(body)),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(body)),
        "identity" | "" => return Ok(body.to_vec()),
        other => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?}: kiln reads gzip, deflate or identity"),
            ));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the {encoding} body does not decode: {e}"),
            )
        })?;
    if out.len() > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body decodes to more than the limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Triton's model configuration for a served version, from its v2 metadata: batched inputs and
/// outputs (`[-1, ...]`) lose the batch dimension to `max_batch_size`, as Triton writes them.
pub fn config(metadata: &Value, max_batch: usize, instances: usize, gpu: bool) -> Value {
    let batched = |t: &Value| t["shape"].get(0).and_then(Value::as_i64) == Some(-1);
    let tensors: Vec<&Value> = ["inputs", "outputs"]
        .iter()
        .flat_map(|k| metadata[*k].as_array().into_iter().flatten())
        .collect();
    let all_batched = !tensors.is_empty() && tensors.iter().all(|t| batched(t));
    let describe = |key: &str| -> Vec<Value> {
        metadata[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let shape: Vec<Value> = t["shape"].as_array().cloned().unwrap_or_default();
                let dims = if all_batched { &shape[1..] } else { &shape[..] };
                json!({
                    "name": t["name"],
                    "data_type": format!("TYPE_{}", t["datatype"].as_str().unwrap_or("FP32")),
                    "dims": dims,
                })
            })
            .collect()
    };
    json!({
        "name": metadata["name"],
        "platform": "kiln",
        "backend": "kiln",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": if all_batched { max_batch } else { 0 },
        "input": describe("inputs"),
        "output": describe("outputs"),
        "instance_group": [{
            "name": metadata["name"],
            "count": instances,
            "kind": if gpu { "KIND_GPU" } else { "KIND_CPU" },
        }],
        "dynamic_batching": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_plain_numbers_and_v_n_is_accepted() {
        assert_eq!(version_string("digits-mlp/v12"), "12");
        assert_eq!(version_string("digits-mlp-20261207-163059-31da"), "1");
        assert_eq!(version_string("my/vintage"), "1");
        assert!(names_version("12", "digits-mlp/v12"));
        assert!(names_version("v12", "digits-mlp/v12"));
        assert!(names_version("digits-mlp/v12", "digits-mlp/v12"));
        assert!(!names_version("1", "digits-mlp/v12"));
        assert!(!names_version("v", "digits-mlp/v12"));
    }

    #[test]
    fn binary_tensors_decode_little_endian_in_every_numeric_type() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(decode("FP32", &f32s).unwrap(), [1.5, -2.0]);
        let f64s: Vec<u8> = [0.25f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(decode("FP64", &f64s).unwrap(), [0.25]);
        assert_eq!(decode("UINT8", &[0, 255]).unwrap(), [0.0, 255.0]);
        assert_eq!(decode("INT8", &[0xff]).unwrap(), [-1.0]);
        assert_eq!(decode("INT64", &(-3i64).to_le_bytes()).unwrap(), [-3.0]);
        // 1.0, -2.5, 65504 (the largest half), the smallest subnormal, infinity.
        let halves: Vec<u8> = [0x3c00u16, 0xc100, 0x7bff, 0x0001, 0x7c00]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let got = decode("FP16", &halves).unwrap();
        assert_eq!(got[..3], [1.0, -2.5, 65504.0]);
        assert_eq!(got[3], 2f32.powi(-24));
        assert_eq!(got[4], f32::INFINITY);
        assert_eq!(decode("BF16", &0x3fc0u16.to_le_bytes()).unwrap(), [1.5]);
        assert!(decode("FP32", &[0, 0, 0]).is_err());
        assert!(decode("BYTES", &[0, 0, 0, 0]).is_err());
    }

    #[test]
    fn a_body_splits_at_the_header_length_and_sizes_are_checked() {
        let json = br#"{"inputs":[{"name":"x","parameters":{"binary_data_size":8}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[0u8; 8]);
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(json.len()));
        let mut b = split_body(&headers, Bytes::from(body.clone())).unwrap();
        let input = b.json["inputs"][0].clone();
        assert_eq!(
            take_binary(&input, 0, &mut b.binary)
                .unwrap()
                .unwrap()
                .len(),
            8
        );
        assert!(
            take_binary(&input, 0, &mut b.binary).is_err(),
            "nothing left"
        );
        headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
        assert!(split_body(&headers, Bytes::from(body.clone())).is_err());
        headers.insert(HEADER_LENGTH, HeaderValue::from_static("ten"));
        assert!(split_body(&headers, Bytes::from(body)).is_err());
    }

    #[test]
    fn outputs_are_binary_when_asked_by_name_or_for_all() {
        let r =
            json!({"outputs": [{"name": "a", "parameters": {"binary_data": true}}, {"name": "b"}]});
        assert!(wants_binary(&r, "a") && !wants_binary(&r, "b"));
        let all = json!({"parameters": {"binary_data_output": true}});
        assert!(wants_binary(&all, "a"));
        let overridden = json!({"parameters": {"binary_data_output": true},
                                "outputs": [{"name": "a", "parameters": {"binary_data": false}}]});
        assert!(!wants_binary(&overridden, "a"));
    }

    #[test]
    fn compressed_bodies_decode_within_the_limit() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![b'a'; 10_000]).unwrap();
        let small = gz.finish().unwrap();
        assert_eq!(decompress("gzip", &small, 10_000).unwrap().len(), 10_000);
        let (code, _) = decompress("gzip", &small, 9_999).unwrap_err();
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
        let (code, _) = decompress("br", &small, 10_000).unwrap_err();
        assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (code, _) = decompress("gzip", b"not gzip", 10_000).unwrap_err();
        assert_eq!(code, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_config_drops_the_batch_dimension_of_batched_tensors() {
        let metadata = json!({
            "name": "m",
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        });
        let c = config(&metadata, 256, 2, false);
        assert_eq!(c["max_batch_size"], 256);
        assert_eq!(c["input"][0]["dims"], json!([64]));
        assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(c["output"][0]["dims"], json!([10]));
        assert_eq!(c["instance_group"][0]["count"], 2);
        let text = json!({
            "name": "lm",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
        });
        let c = config(&text, 256, 1, false);
        assert_eq!(c["max_batch_size"], 0);
        assert_eq!(c["input"][0]["dims"], json!([1]));
    }
}

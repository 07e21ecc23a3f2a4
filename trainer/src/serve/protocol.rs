//! Requests and answers: `/predict` (rows as the data file has them) and the Open Inference
//! Protocol's `infer` (KServe v2 / Triton REST: named tensors). A malformed request is a
//! [`Bad`] naming what was wrong; nothing here touches the filesystem.

use serde_json::{Value, json};

use super::Schema;
use crate::data::preprocess::{Column, Preprocessor};
use crate::data::table::{Cells, RawTable};
use crate::data::{Dataset, Split, Targets};

/// A request the server cannot answer as asked: HTTP 400 with this message.
#[derive(Debug)]
pub struct Bad(pub String);

/// At most this many rows in one request.
pub const MAX_ROWS: usize = 65_536;

/// Values of a JSON cell as the data file would have them.
fn cell(v: &Value, missing: &str) -> Result<String, String> {
    match v {
        Value::Null => Ok(missing.to_string()),
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
            Err("a number, a string or null".into())
        }
    }
}

/// `/predict`'s body: `{"rows": [{"age": 39, "workclass": "State-gov", ...}, ...]}` for
/// tables and text (a text model reads its text column), `{"rows": [[pixels...], ...]}` for
/// images (raw pixel values, as in the data file). Returns the preprocessed rows.
pub fn predict_rows(schema: &Schema, body: &Value, allow_unseen: bool) -> Result<Split, Bad> {
    let (pre, columns) = (&schema.pre, &schema.columns);
    let rows = body
        .get("rows")
        .or_else(|| body.get("instances"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Bad("the body must be {\"rows\": [...]}: one object (column: value) per row".into())
        })?;
    if rows.is_empty() {
        return Err(Bad("\"rows\" is empty".into()));
    }
    if rows.len() > MAX_ROWS {
        return Err(Bad(format!(
            "{} rows: at most {MAX_ROWS} per request",
            rows.len()
        )));
    }
    if pre.columns.is_empty() && pre.text.is_none() {
        // Images (or raw feature vectors): arrays of numbers.
        let mut x = Vec::with_capacity(rows.len() * pre.n_features);
        for (i, r) in rows.iter().enumerate() {
            let a = r.as_array().ok_or_else(|| {
                Bad(format!(
                    "rows[{i}]: an image is an array of {} pixel values",
                    pre.n_features
                ))
            })?;
            if a.len() != pre.n_features {
                return Err(Bad(format!(
                    "rows[{i}]: {} values; the model reads {}",
                    a.len(),
                    pre.n_features
                )));
            }
            for (j, v) in a.iter().enumerate() {
                // Finite as the model reads it: 1e300 is no 32-bit float.
                let v = v
                    .as_f64()
                    .map(|v| v as f32)
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| Bad(format!("rows[{i}][{j}]: not a finite number")))?;
                x.push(v);
            }
        }
        return encode(pre, &x, rows.len()).map(Split::Table);
    }
    let missing = pre.missing_values.first().cloned().unwrap_or_default();
    let label = match &schema.spec.label {
        Some(crate::data::ColumnRef::Name(n)) => Some(n.as_str()),
        _ => None,
    };
    let mut cells = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let obj = r
            .as_object()
            .ok_or_else(|| Bad(format!("rows[{i}]: a row is an object of column: value")))?;
        for k in obj.keys() {
            let known =
                columns.contains(k) || label == Some(k.as_str()) || schema.spec.ignore.contains(k);
            if !known {
                let hint = crate::suggest::hint(k, columns);
                return Err(Bad(format!("rows[{i}]: unknown column {k:?}{hint}")));
            }
        }
        let mut row = Vec::with_capacity(columns.len());
        for c in columns {
            let v = obj.get(c).unwrap_or(&Value::Null);
            row.push(cell(v, &missing).map_err(|e| Bad(format!("rows[{i}].{c}: {e}")))?);
        }
        cells.push(row);
    }
    if !allow_unseen {
        check_categories(pre, &cells)?;
    }
    let table = RawTable {
        path: "request".into(),
        lines: (0..rows.len()).collect(),
        names: columns.to_vec(),
        cells: Cells::Text(cells),
        labels: Vec::new(),
    };
    crate::predict::preprocess(pre, &table).map_err(|e| match e {
        crate::eval::EvalError::Data(crate::data::DataError::Row { line, message, .. }) => {
            Bad(format!("rows[{line}]: {message}"))
        }
        e => Bad(e.to_string()),
    })
}

/// `/predict`'s body for an image (or raw feature vector) model read straight into numbers,
/// without building a JSON tree: the common request, made cheaper. `None` when the model
/// reads something else or the body is wrong in any way; [`predict_rows`] then reads it and
/// names the fault. The numbers are read as [`predict_rows`] reads them (as f64, then f32).
pub fn pixel_rows(schema: &Schema, body: &[u8]) -> Option<Split> {
    #[derive(serde::Deserialize)]
    struct Rows {
        #[serde(alias = "instances")]
        rows: Vec<Vec<f64>>,
    }
    let pre = &schema.pre;
    if !pre.columns.is_empty() || pre.text.is_some() {
        return None;
    }
    // serde would also read a struct from an array (`[[...]]`): only an object is a body.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let Rows { rows } = serde_json::from_slice(body).ok()?;
    if rows.is_empty() || rows.len() > MAX_ROWS {
        return None;
    }
    let mut x = Vec::with_capacity(rows.len() * pre.n_features);
    for r in &rows {
        if r.len() != pre.n_features || !r.iter().all(|&v| (v as f32).is_finite()) {
            return None;
        }
        x.extend(r.iter().map(|&v| v as f32));
    }
    encode(pre, &x, rows.len()).ok().map(Split::Table)
}

/// A category the training data never had is refused, naming the column and the value.
fn check_categories(pre: &Preprocessor, cells: &[Vec<String>]) -> Result<(), Bad> {
    for (j, c) in pre.columns.iter().enumerate() {
        let Column::Categorical {
            name, categories, ..
        } = c
        else {
            continue;
        };
        for (i, row) in cells.iter().enumerate() {
            let v = &row[j];
            if pre.missing_values.contains(v) || categories.contains(v) {
                continue;
            }
            let hint = crate::suggest::hint(v, categories);
            return Err(Bad(format!(
                "rows[{i}].{name}: category {v:?} was never seen in training{hint}"
            )));
        }
    }
    Ok(())
}

/// Rows of the exported model's input (`features`: numeric columns raw, NaN where missing;
/// categorical columns one-hot; image pixels raw) preprocessed as the model reads them.
pub fn encode(pre: &Preprocessor, x: &[f32], n: usize) -> Result<Dataset, Bad> {
    let d = pre.n_features;
    let mut out = vec![0f32; n * d];
    for i in 0..n {
        let (src, dst) = (&x[i * d..(i + 1) * d], &mut out[i * d..(i + 1) * d]);
        // Image files' models: pixels 0-255 at the model's size, channel by channel, scaled
        // to [0, 1] as decoding a file does (8-bit values over 255, in f32), then normalised
        // by the same function as training's: the features are those of the file, bit for bit.
        if let Some(p) = &pre.images {
            for (j, (o, &v)) in dst.iter_mut().zip(src).enumerate() {
                if !v.is_finite() {
                    return Err(Bad(format!("row {i}, pixel {j}: not a finite number")));
                }
                *o = v / 255.0;
            }
            p.normalise(dst);
            continue;
        }
        if pre.columns.is_empty() {
            for (j, (o, &v)) in dst.iter_mut().zip(src).enumerate() {
                if v.is_nan() {
                    return Err(Bad(format!(
                        "row {i}, feature {j}: missing (null), and the model reads every feature"
                    )));
                }
                if !v.is_finite() {
                    return Err(Bad(format!(
                        "row {i}, feature {j}: not a finite 32-bit number"
                    )));
                }
                *o = pre.encode_value(v as f64, 0.0, 1.0);
            }
            continue;
        }
        let mut k = 0;
        for c in &pre.columns {
            match c {
                Column::Numeric {
                    name,
                    fill,
                    mean,
                    std,
                } => {
                    let v = match (src[k].is_nan(), fill) {
                        (false, _) => src[k] as f64,
                        (true, Some(f)) => *f,
                        (true, None) => {
                            return Err(Bad(format!(
                                "row {i}, feature {k} ({name}): NaN (missing), and the model was trained without imputation"
                            )));
                        }
                    };
                    if !v.is_finite() {
                        return Err(Bad(format!("row {i}, feature {k} ({name}): not finite")));
                    }
                    dst[k] = pre.encode_value(v, *mean, *std);
                    k += 1;
                }
                Column::Categorical {
                    name, categories, ..
                } => {
                    for j in 0..categories.len() {
                        let v = src[k + j];
                        if v != 0.0 && v != 1.0 {
                            return Err(Bad(format!(
                                "row {i}, feature {} ({name} = {}): one-hot values are 0 or 1, not {v}",
                                k + j,
                                categories[j]
                            )));
                        }
                        dst[k + j] = v;
                    }
                    k += categories.len();
                }
            }
        }
    }
    Ok(Dataset {
        x: out,
        y: Targets::Values(vec![0.0; n]),
        n,
        d,
    })
}

/// The v2 `infer` request's input: one numeric tensor `[n, features]` (any name), its `data` in
/// the JSON (flat or nested, row-major) or, with the binary data extension, `binary_data_size`
/// bytes of `binary` (what followed the JSON header).
pub fn infer_rows(
    pre: &Preprocessor,
    body: &Value,
    mut binary: axum::body::Bytes,
) -> Result<(Split, Option<Value>), Bad> {
    if pre.text.is_some() {
        return Err(Bad(
            "a text model reads text: POST /predict with {\"rows\": [{\"text\": ...}]}".into(),
        ));
    }
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Bad("the body must have \"inputs\": [{name, shape, datatype, data}]".into())
        })?;
    let [input] = inputs.as_slice() else {
        return Err(Bad(format!(
            "\"inputs\" has {} tensors; the model reads one, \"features\"",
            inputs.len()
        )));
    };
    let datatype = input.get("datatype").and_then(Value::as_str).unwrap_or("");
    let raw = super::triton::take_binary(input, 0, &mut binary)?;
    if !binary.is_empty() {
        return Err(Bad(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    if raw.is_none()
        && !matches!(
            datatype,
            "FP32" | "FP64" | "FP16" | "INT32" | "INT64" | "UINT8"
        )
    {
        return Err(Bad(format!(
            "inputs[0].datatype {datatype:?}: the model reads numbers (FP32)"
        )));
    }
    let shape: Vec<i64> = input
        .get("shape")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .ok_or_else(|| Bad("inputs[0].shape is missing".into()))?;
    let d = pre.n_features;
    let width = shape.get(1..).and_then(|rest| {
        rest.iter().try_fold(
            1i64,
            |acc, &x| if x > 0 { acc.checked_mul(x) } else { None },
        )
    });
    let n = match (shape.first(), width) {
        (Some(&n), Some(w)) if n > 0 && shape.len() >= 2 && w as usize == d => n as usize,
        _ => {
            return Err(Bad(format!(
                "inputs[0].shape {shape:?}: the model reads [batch, {d}]"
            )));
        }
    };
    if n > MAX_ROWS {
        return Err(Bad(format!("{n} rows: at most {MAX_ROWS} per request")));
    }
    // Sized by what arrives, not by what the shape claims.
    let from_binary = raw.is_some();
    let mut flat = match raw {
        Some(bytes) => super::triton::decode(datatype, &bytes)
            .map_err(|Bad(m)| Bad(format!("inputs[0]: {m}")))?,
        None => Vec::new(),
    };
    fn walk(v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
        match v {
            Value::Array(a) => a.iter().try_for_each(|x| walk(x, out)),
            Value::Number(x) => {
                out.push(x.as_f64().unwrap_or(f64::NAN) as f32);
                Ok(())
            }
            // JSON has no NaN: null marks a missing value (imputed where the model was
            // trained with imputation, refused where it reads every feature).
            Value::Null => {
                out.push(f32::NAN);
                Ok(())
            }
            other => Err(format!("not a number: {other}")),
        }
    }
    if !from_binary {
        let data = input
            .get("data")
            .ok_or_else(|| Bad("inputs[0].data is missing".into()))?;
        walk(data, &mut flat).map_err(|e| Bad(format!("inputs[0].data: {e}")))?;
    }
    if flat.len() != n * d {
        return Err(Bad(format!(
            "inputs[0].data has {} values; shape {shape:?} needs {}",
            flat.len(),
            n * d
        )));
    }
    let ds = encode(pre, &flat, n)?;
    Ok((Split::Table(ds), body.get("id").cloned()))
}

/// The v2 model metadata; `version` is the registry label (`NAME/vN`), listed as the protocol's
/// plain version string (`N`).
pub fn metadata(name: &str, version: &str, run: &crate::eval::LoadedRun) -> Value {
    let version = super::triton::version_string(version);
    if matches!(
        run.pre.target,
        crate::data::preprocess::TargetEncoding::NextToken
    ) {
        // Triton's generate extension: a text in, a text out.
        return json!({
            "name": name,
            "versions": [version],
            "platform": "kiln",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
        });
    }
    let outputs: Vec<Value> = run
        .task
        .output_names()
        .iter()
        .map(|o| {
            let width = match *o {
                "prediction" => 1,
                _ => run.task.class_names().map_or(1, <[String]>::len),
            };
            json!({"name": o, "datatype": "FP32", "shape": [-1, width]})
        })
        .collect();
    json!({
        "name": name,
        "versions": [version],
        "platform": "kiln",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, run.pre.n_features]}],
        "outputs": outputs,
    })
}

//! `kiln predict`: a registry model over a data file, with the preprocessing it was trained
//! with; predictions to CSV or JSON.

use std::path::Path;

use burn::tensor::{Tensor, TensorData};

use crate::config::DataFormat;
use crate::config::LossKind;
use crate::data::preprocess::Column;
use crate::eval::{EVAL_BATCH, EvalError, LoadedRun};

/// One row's prediction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// 1-based line (or image number) in the input file.
    pub row: usize,
    /// The predicted class name, or the predicted value in the target's units.
    pub prediction: serde_json::Value,
    /// Class probabilities, in class order (classification only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probabilities: Vec<f32>,
}

pub struct Predictions {
    pub classes: Option<Vec<String>>,
    pub rows: Vec<Row>,
}

/// Reads `input` as the model's training data was read (its format, delimiter, header,
/// columns; the label column may be there or not) and predicts every row.
pub fn predict_file(run: &LoadedRun, input: &Path) -> Result<Predictions, EvalError> {
    let mut spec = run.data_spec.clone();
    spec.path = input.to_path_buf();
    let table = match spec.format {
        DataFormat::Idx => crate::data::idx::read_unlabelled(input)?,
        DataFormat::Csv => {
            let names: Vec<String> = run
                .pre
                .columns
                .iter()
                .map(|c| match c {
                    Column::Numeric { name, .. } | Column::Categorical { name, .. } => name.clone(),
                })
                .collect();
            crate::data::table::read_unlabelled(&spec, input, &names)?
        }
    };
    let n = table.lines.len();
    let rows: Vec<usize> = (0..n).collect();
    let x = run.pre.features(&table, &rows)?;
    let d = run.pre.n_features;
    let classes = run.pre.class_names().map(<[String]>::to_vec);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(n);
        let batch = Tensor::<2>::from_data(
            TensorData::new(x[start * d..end * d].to_vec(), [end - start, d]),
            &run.device,
        );
        let p = run.loss.predict(run.model.forward(batch));
        let width = p.dims()[1];
        let values = p.into_data().try_to_vec::<f32>().expect("outputs are f32");
        for (i, v) in values.chunks(width).enumerate() {
            let row = table.lines[start + i];
            let r = match (&run.loss.kind, &classes) {
                (LossKind::CrossEntropy | LossKind::Bce, Some(names)) => {
                    let best = v
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(k, _)| k);
                    Row {
                        row,
                        prediction: names[best].clone().into(),
                        probabilities: v.to_vec(),
                    }
                }
                _ => Row {
                    row,
                    prediction: serde_json::json!(run.pre.decode_value(v[0])),
                    probabilities: Vec::new(),
                },
            };
            out.push(r);
        }
    }
    Ok(Predictions { classes, rows: out })
}

/// CSV: `row,prediction` and, for classification, one probability column per class.
pub fn to_csv(p: &Predictions) -> String {
    let mut s = String::from("row,prediction");
    if let Some(names) = &p.classes {
        for n in names {
            s.push_str(&format!(",p_{n}"));
        }
    }
    s.push('\n');
    for r in &p.rows {
        let pred = match &r.prediction {
            serde_json::Value::String(v) => v.clone(),
            other => other.to_string(),
        };
        s.push_str(&format!("{},{pred}", r.row));
        for v in &r.probabilities {
            s.push_str(&format!(",{v}"));
        }
        s.push('\n');
    }
    s
}

//! `kiln predict`: a registry model over a data file, with the preprocessing it was trained
//! with; predictions to CSV or JSON.

use std::path::Path;

use crate::config::DataFormat;
use crate::data::preprocess::Column;
use crate::data::table::Cells;
use crate::data::text::Labeled;
use crate::data::{Dataset, Source, Split};
use crate::eval::{EVAL_BATCH, EvalError, LoadedRun};

/// One row's prediction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// 1-based line (or image number) in the input file.
    pub row: usize,
    /// Image files: the file, as found under `--input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
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
    let (data, lines) = read_input(run, input)?;
    let paths: Option<Vec<String>> = match &data {
        Split::Images(set) => Some(
            set.files()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        ),
        _ => None,
    };
    let n = lines.len();
    let classes = run.task.class_names().map(<[String]>::to_vec);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(EVAL_BATCH) {
        let idx: Vec<usize> = (start..(start + EVAL_BATCH).min(n)).collect();
        let batch = data
            .fetch(&idx, None)?
            .upload(run.mconf.input(), &run.device);
        let Some(x) = batch.input else { continue };
        for (i, p) in run
            .task
            .predictions(run.model.forward(x))
            .into_iter()
            .enumerate()
        {
            out.push(Row {
                row: lines[start + i],
                path: paths.as_ref().map(|p| p[start + i].clone()),
                prediction: p.prediction,
                probabilities: p.probabilities,
            });
        }
    }
    Ok(Predictions { classes, rows: out })
}

/// `input` read as the model's training data was read and preprocessed as it was (no
/// targets), with the 1-based line (or image number) of each example.
pub fn read_input(run: &LoadedRun, input: &Path) -> Result<(Split, Vec<usize>), EvalError> {
    let mut spec = run.data_spec.clone();
    spec.path = input.to_path_buf();
    let table = match spec.format {
        DataFormat::ImageFolder | DataFormat::ImageCsv => {
            let (Some(prep), true) = (run.pre.images.clone(), input.exists()) else {
                return Err(crate::data::DataError::Format {
                    path: input.display().to_string(),
                    message: "no such file or folder".into(),
                }
                .into());
            };
            let files = crate::data::images::input_files(&spec, input)?;
            let n = files.len();
            let set = crate::data::images::ImageSet::new(
                files,
                crate::data::Targets::Values(vec![0.0; n]),
                prep,
                None,
            );
            return Ok((Split::Images(set), (1..=n).collect()));
        }
        DataFormat::Text => {
            return Err(EvalError::LanguageModel {
                id: run.label.clone(),
                command: "predict",
            });
        }
        DataFormat::Idx => crate::data::idx::read_unlabelled(input)?,
        DataFormat::Csv => crate::data::table::read_unlabelled(&spec, input, &input_columns(run))?,
    };
    let data = preprocess(&run.pre, &table)?;
    Ok((data, table.lines))
}

/// The names of the columns a model reads from a table: its feature columns, or its text
/// column.
pub fn input_columns(run: &LoadedRun) -> Vec<String> {
    match &run.data_spec.text_column {
        Some(text) => vec![text.clone()],
        None => run
            .pre
            .columns
            .iter()
            .map(|c| match c {
                Column::Numeric { name, .. } | Column::Categorical { name, .. } => name.clone(),
            })
            .collect(),
    }
}

/// Rows as read from a file (cells of [`input_columns`], or pixels) preprocessed as the
/// model's training data was, without targets.
pub fn preprocess(
    pre: &crate::data::Preprocessor,
    table: &crate::data::table::RawTable,
) -> Result<Split, EvalError> {
    let n = table.lines.len();
    let rows: Vec<usize> = (0..n).collect();
    // The file may hold no labels, and predictions read none.
    let no_targets = crate::data::Targets::Values(vec![0.0; n]);
    let data = match (&pre.text, &table.cells) {
        (Some(tokenizer), Cells::Text(cells)) => {
            let texts: Vec<&str> = cells.iter().map(|r| r[0].as_str()).collect();
            Split::Labeled(Labeled::new(tokenizer, &texts, no_targets, pre.n_features))
        }
        _ => Split::Table(Dataset {
            x: pre.features(table, &rows)?,
            y: no_targets,
            n,
            d: pre.n_features,
        }),
    };
    Ok(data)
}

/// CSV: `row,prediction` and, for classification, one probability column per class.
pub fn to_csv(p: &Predictions) -> String {
    let images = p.rows.iter().any(|r| r.path.is_some());
    let mut s = String::from(if images {
        "path,prediction"
    } else {
        "row,prediction"
    });
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
        match &r.path {
            Some(path) => s.push_str(&format!("{},{pred}", csv_field(path))),
            None => s.push_str(&format!("{},{pred}", r.row)),
        }
        for v in &r.probabilities {
            s.push_str(&format!(",{v}"));
        }
        s.push('\n');
    }
    s
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

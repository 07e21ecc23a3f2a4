//! `kiln export`: a registry model to an ONNX file, accepted only through the parity gate, and
//! stored in the registry with its parity report.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};

use super::{Batch, Parity, Sidecar};
use crate::config::LossKind;
use crate::eval::LoadedRun;
use crate::registry::manifest::Kind;
use crate::registry::{self, Entry, Registry, RegistryError, store};

/// Rows of the validation batch the gate runs (all of them when the split is smaller).
pub const GATE_ROWS: usize = 256;

pub use crate::registry::EXPORTS;
pub const ONNX_FILE: &str = "model.onnx";
pub const SIDECAR_FILE: &str = "preprocess.json";
pub const PARITY_FILE: &str = "parity.json";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Lower(#[from] super::graph::LowerError),
    #[error("{0}")]
    Other(String),
    #[error(
        "parity gate failed: tract and kiln disagree on {rows} validation rows ({}; {} top-1 disagreements; tolerance {tolerance:e}); nothing was written",
        .report.max_abs.iter().map(|(n, m)| format!("{n} max abs {m:.3e}")).collect::<Vec<_>>().join(", "),
        .report.top1_disagreements,
        rows = .report.rows,
        tolerance = .report.tolerance
    )]
    Parity { report: Parity },
}

pub struct Options {
    pub opset: i64,
    pub batch: Batch,
}

pub struct Outcome {
    pub path: PathBuf,
    pub sidecar: PathBuf,
    pub registry_dir: PathBuf,
    pub parity: Parity,
    pub label: String,
}

/// kiln's own outputs for `rows` preprocessed rows `x`, in the graph's output order.
fn kiln_outputs(run: &LoadedRun, x: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let d = run.pre.n_features;
    let input = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [rows, d]), &run.device);
    let logits = run.model.forward(input);
    let flat = |t: Tensor<2>| {
        t.into_data()
            .try_to_vec::<f32>()
            .expect("model outputs are f32")
    };
    match run.loss.kind {
        LossKind::CrossEntropy | LossKind::Bce => {
            let probs = run.loss.predict(logits.clone());
            vec![flat(logits), flat(probs)]
        }
        LossKind::Mse | LossKind::Huber => vec![
            flat(logits)
                .into_iter()
                .map(|v| run.pre.decode_value(v) as f32)
                .collect(),
        ],
    }
}

/// The gate's rows: the validation split (else test, else train), preprocessed; repeated up
/// to a fixed batch size when the graph has one.
fn gate_rows(run: &LoadedRun, batch: Batch) -> Result<(Vec<f32>, usize), ExportError> {
    let d = run.pre.n_features;
    let split = [&run.data.valid, &run.data.test, &run.data.train]
        .into_iter()
        .find(|s| s.n > 0)
        .ok_or_else(|| {
            ExportError::Other("the model's data has no rows to check against".into())
        })?;
    let want = match batch {
        Batch::Dynamic => split.n.min(GATE_ROWS),
        Batch::Fixed(n) => n,
    };
    let x: Vec<f32> = (0..want)
        .flat_map(|i| {
            let r = i % split.n;
            split.x[r * d..(r + 1) * d].to_vec()
        })
        .collect();
    Ok((x, want))
}

fn file_stem_label(label: &str, opts: &Options) -> String {
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let batch = match opts.batch {
        Batch::Dynamic => "dynamic".to_string(),
        Batch::Fixed(n) => format!("batch{n}"),
    };
    format!("{safe}-opset{}-{batch}", opts.opset)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename: a failure
/// leaves no partial file.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let fail = |e: std::io::Error| ExportError::Other(format!("{}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or("export".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// Exports a registry entry to `output` (and its preprocessing JSON beside it) after the
/// parity gate, and stores the export with its report under `<registry>/exports/`.
pub fn export(
    reg: &Registry,
    entry: &Entry,
    output: &Path,
    opts: &Options,
) -> Result<Outcome, ExportError> {
    if output.extension().is_some_and(|e| e == "json") {
        return Err(ExportError::Other(format!(
            "{}: the preprocessing JSON goes beside the model with this name; name the model .onnx",
            output.display()
        )));
    }
    if output.is_dir() {
        return Err(ExportError::Other(format!(
            "{}: is a folder; give a file name, e.g. -o model.onnx",
            output.display()
        )));
    }
    let loaded = reg.load(entry)?;
    let manifest = loaded.manifest.clone();
    let weights = super::graph::read_weights(loaded.file(registry::WEIGHTS)?)
        .map_err(|e| ExportError::Other(format!("{}: {e}", entry.label)))?;
    let run = LoadedRun::open_entry(reg, entry)?;
    let names = super::output_names(run.loss.kind);
    let side: Sidecar = super::sidecar(&run.pre, &names);
    let side_json = serde_json::to_string_pretty(&side).expect("the sidecar is JSON");
    let weights_sha = manifest
        .files
        .get(registry::WEIGHTS)
        .map(|f| f.sha256.clone())
        .unwrap_or_default();
    let metadata = vec![
        (
            "kiln_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("model".into(), entry.label.clone()),
        ("model_name".into(), manifest.model_name.clone()),
        (
            "version".into(),
            manifest.version.map_or(String::new(), |v| format!("v{v}")),
        ),
        ("run_id".into(), manifest.run_id.clone()),
        ("weights_sha256".into(), weights_sha),
        (
            "input_layout".into(),
            format!(
                "features: float32 [batch, {}]; numeric columns in their own units (NaN when missing), categorical columns one-hot in the order of `preprocessing.columns`, image pixels as stored, row-major",
                run.pre.n_features
            ),
        ),
        (
            "class_names".into(),
            serde_json::to_string(&side.class_names).expect("JSON"),
        ),
        ("outputs".into(), names.join(",")),
        ("preprocessing".into(), side_json.clone()),
    ];
    let onnx = super::build(
        &run.mconf,
        &weights,
        &run.pre,
        run.loss.kind,
        opts.opset,
        opts.batch,
        &metadata,
    )?;

    // The gate: tract on the raw features of a validation batch against kiln's outputs.
    let (x, rows) = gate_rows(&run, opts.batch)?;
    let raw = super::raw_features(&run.pre, &x);
    let expected = kiln_outputs(&run, &x, rows);
    let got =
        super::run_tract(&onnx, &raw, rows, run.pre.n_features).map_err(ExportError::Other)?;
    let classify = !matches!(run.loss.kind, LossKind::Mse | LossKind::Huber);
    // Regression compares in standardised target units, so the tolerance means the same
    // whether the target is in the hundreds or the millions.
    let (got, expected) = match &run.pre.target {
        crate::data::preprocess::TargetEncoding::Values { mean, std } if !classify => {
            let z = |v: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
                v.into_iter()
                    .map(|o| {
                        o.into_iter()
                            .map(|p| ((p as f64 - mean) / std) as f32)
                            .collect()
                    })
                    .collect()
            };
            (z(got), z(expected))
        }
        _ => (got, expected),
    };
    let parity = super::compare(&names, &got, &expected, rows, classify);
    if !parity.passed {
        return Err(ExportError::Parity { report: parity });
    }

    let parity_json = serde_json::to_vec_pretty(&parity).expect("the report is JSON");
    let registry_dir = reg
        .root
        .join(EXPORTS)
        .join(file_stem_label(&entry.label, opts));
    let mut m = manifest;
    m.kind = Kind::Export;
    m.created = crate::checkpoint::now();
    let files = vec![
        (ONNX_FILE.to_string(), onnx.clone()),
        (SIDECAR_FILE.to_string(), side_json.clone().into_bytes()),
        (PARITY_FILE.to_string(), parity_json),
    ];
    // The registry first (a complete, verified entry), then the user's two files, each
    // written to a temporary name and renamed: a failure leaves no partial file, and never
    // removes a file the user had.
    {
        let _lock = reg.lock()?;
        store::blocking(store::commit_dir(&reg.root, &registry_dir, &files, m))?;
    }
    let sidecar_path = output.with_extension("json");
    write_whole(output, &onnx)?;
    write_whole(&sidecar_path, side_json.as_bytes())?;
    Ok(Outcome {
        path: output.to_path_buf(),
        sidecar: sidecar_path,
        registry_dir,
        parity,
        label: entry.label.clone(),
    })
}

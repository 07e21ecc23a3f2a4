//! `kiln export`: a registry model to an ONNX file, accepted only through the parity gate, and
//! stored in the registry with its parity report.

use crate::layout;
use std::path::{Path, PathBuf};

use super::{Batch, Parity, Sidecar};
use crate::data::{Dataset, Features, Source, Split, Targets};
use crate::eval::LoadedRun;
use crate::registry::manifest::{Kind, Manifest};
use crate::registry::{Entry, Registry, RegistryError, store};

/// Rows of the validation batch the gate runs (all of them when the split is smaller).
pub const GATE_ROWS: usize = 256;
/// Images the gate compares (of the first held-out image's size).
pub const GATE_IMAGES: usize = 32;

/// Blocks of text the gate runs a token model on.
pub const GATE_BLOCKS: usize = 8;

pub use layout::EXPORTS;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Lower(#[from] super::graph::LowerError),
    #[error(
        "{0}: the preprocessing JSON goes beside the model with this name; name the model .onnx"
    )]
    JsonOutput(String),
    #[error("{0}: is a folder; give a file name, e.g. -o model.onnx")]
    FolderOutput(String),
    #[error("{entry}: {why}")]
    WeightsFile { entry: String, why: String },
    #[error("the model's data has no rows to check against")]
    NoRows,
    /// tract could not read or run the graph (its messages).
    #[error("{0}")]
    Tract(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "parity gate failed: tract and kiln disagree on {rows} validation rows ({}; {} top-1 disagreements; tolerance {tolerance:e}); nothing was written",
        .report.max_abs.iter().map(|(n, m)| format!("{n} max abs {m:.3e}")).collect::<Vec<_>>().join(", "),
        .report.top1_disagreements,
        rows = .report.rows,
        tolerance = .report.tolerance
    )]
    Parity { report: Parity },
}

impl crate::usage::UserError for ExportError {
    fn is_usage(&self) -> bool {
        matches!(self, ExportError::Registry(r) if r.is_usage())
    }
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
    let data = Dataset {
        x: x.to_vec(),
        // The outputs do not read targets.
        y: Targets::Values(vec![0.0; rows]),
        n: rows,
        d: run.pre.n_features,
    };
    let idx: Vec<usize> = (0..rows).collect();
    batch_outputs(run, data.gather(&idx))
}

/// kiln's own outputs for a batch, in the graph's output order.
fn batch_outputs(run: &LoadedRun, batch: crate::data::Batch) -> Vec<Vec<f32>> {
    match batch.upload(run.mconf.input(), &run.device).input {
        Some(input) => run.task.output_values(run.model.forward(input)),
        None => Vec::new(),
    }
}

/// Blocks (or labeled texts, padded to the longest) of held-out text the gate runs a token
/// model on (validation, else test, else training), repeated up to a fixed batch size when the
/// graph has one; with their number and length.
fn gate_blocks(
    run: &LoadedRun,
    batch: Batch,
) -> Result<(crate::data::Batch, usize, usize), ExportError> {
    let split = [&run.data.valid, &run.data.test, &run.data.train]
        .into_iter()
        .map(|s| s.for_evaluation())
        .find(|s| !s.is_empty())
        .ok_or(ExportError::NoRows)?;
    let want = match batch {
        Batch::Dynamic => split.len().min(match split.as_ref() {
            Split::Labeled(_) => GATE_ROWS,
            _ => GATE_BLOCKS,
        }),
        Batch::Fixed(n) => n,
    };
    let idx: Vec<usize> = (0..want).map(|i| i % split.len()).collect();
    let b = split
        .fetch(&idx, None)
        .map_err(crate::eval::EvalError::from)?;
    let len = match &b.x {
        Features::Tokens { len, .. } => *len,
        Features::Dense { .. } => unreachable!("text is read as token ids"),
    };
    Ok((b, want, len))
}

/// The gate's rows: the validation split (else test, else train), preprocessed; repeated up
/// to a fixed batch size when the graph has one.
fn gate_rows(run: &LoadedRun, batch: Batch) -> Result<(Vec<f32>, usize), ExportError> {
    let d = run.pre.n_features;
    let split = [&run.data.valid, &run.data.test, &run.data.train]
        .into_iter()
        .find_map(|s| match s {
            Split::Table(d) if d.n > 0 => Some(d),
            _ => None,
        })
        .ok_or(ExportError::NoRows)?;
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

/// One input of the gate for an image model: raw pixels, their `[n, c, h, w]`, kiln's
/// outputs.
struct GateImages {
    pixels: Vec<f32>,
    shape: [usize; 4],
    expected: Vec<Vec<f32>>,
}

/// Files the gate reads looking for images of the first one's size.
const GATE_SCAN: usize = 256;

/// The gate's images: held-out files (validation, else test, else train) of the first file's
/// size, as stored (pixels 0-255, not resized: the graph resizes), repeated up to a fixed
/// batch size when the graph has one; with their shape and kiln's outputs for them.
fn gate_images(run: &LoadedRun, batch: Batch) -> Result<Vec<GateImages>, ExportError> {
    let prep = run.pre.images.as_ref().ok_or(ExportError::NoRows)?;
    let set = [&run.data.valid, &run.data.test, &run.data.train]
        .into_iter()
        .find_map(|s| match s {
            Split::Images(i) if !i.is_empty() => Some(i),
            _ => None,
        })
        .ok_or(ExportError::NoRows)?;
    let c = prep.channels;
    let mut raw = Vec::new();
    let mut chosen = Vec::new();
    let mut size = None;
    for (i, f) in set.files().iter().enumerate().take(GATE_SCAN) {
        if chosen.len() == GATE_IMAGES {
            break;
        }
        let (x, h, w) = crate::data::images::decode(f, c).map_err(crate::eval::EvalError::from)?;
        if *size.get_or_insert((h, w)) == (h, w) {
            raw.push(x);
            chosen.push(i);
        }
    }
    let want = match batch {
        Batch::Dynamic => chosen.len(),
        Batch::Fixed(n) => n,
    };
    let (h, w) = size.ok_or(ExportError::NoRows)?;
    let idx: Vec<usize> = (0..want).map(|i| chosen[i % chosen.len()]).collect();
    let x: Vec<f32> = (0..want)
        .flat_map(|i| raw[i % raw.len()].iter().map(|v| v * 255.0))
        .collect();
    let kiln = set
        .fetch(&idx, None)
        .map_err(crate::eval::EvalError::from)?;
    let stored = GateImages {
        pixels: x,
        shape: [want, c, h, w],
        expected: batch_outputs(run, kiln),
    };
    // The first image again at another, not square, size: the graph's resize and crop are
    // checked whatever the files' sizes.
    let [s0, s1] = prep.size;
    let (h2, w2) = (s0 + s0 / 2 + 1, s1 + 3);
    let other = crate::data::images::resize_crop(&raw[0], c, h, w, [h2, w2]);
    let encoded = prep.encode(other.clone(), h2, w2);
    let copies = match batch {
        Batch::Dynamic => 1,
        Batch::Fixed(n) => n,
    };
    let rows = Dataset {
        d: encoded.len(),
        x: encoded.repeat(copies),
        y: Targets::Values(vec![0.0; copies]),
        n: copies,
    };
    let resized = GateImages {
        pixels: other
            .iter()
            .map(|v| v * 255.0)
            .collect::<Vec<_>>()
            .repeat(copies),
        shape: [copies, c, h2, w2],
        expected: batch_outputs(run, rows.gather(&(0..copies).collect::<Vec<_>>())),
    };
    Ok(vec![stored, resized])
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

/// Replaces `path` with `bytes` whole ([`crate::atomic::write`]): a failure leaves no partial
/// file.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    crate::atomic::write(path, bytes).map_err(|source| ExportError::Io {
        path: crate::shown::path(path),
        source,
    })
}

/// Exports a registry entry to `output` (and its preprocessing JSON beside it) after the
/// parity gate, and stores the export with its report under `<registry>/exports/`.
pub fn export(
    reg: &Registry,
    entry: &Entry,
    output: &Path,
    opts: &Options,
) -> Result<Outcome, ExportError> {
    check_output(output)?;
    let loaded = reg.load(entry)?;
    let manifest = loaded.manifest.clone();
    let weights = super::graph::read_weights(loaded.file(layout::WEIGHTS)?).map_err(|why| {
        ExportError::WeightsFile {
            entry: entry.label.clone(),
            why,
        }
    })?;
    let run = LoadedRun::open_entry(reg, entry)?;
    let names = run.task.output_names();
    let side: Sidecar = super::sidecar(&run.pre, &names);
    let side_json = serde_json::to_string_pretty(&side).expect("the sidecar is JSON");
    let metadata = export_metadata(entry, &manifest, &run, &side, &names, &side_json);
    let onnx = super::build(
        &run.mconf,
        &weights,
        &run.pre,
        run.task.as_ref(),
        opts.opset,
        opts.batch,
        &metadata,
    )?;
    let parity = parity_gate(&run, &onnx, opts, &names)?;

    // The registry first (a complete, verified entry), then the user's two files, each
    // written to a temporary name and renamed: a failure leaves no partial file, and never
    // removes a file the user had.
    let registry_dir = store_export(reg, entry, manifest, opts, &onnx, &side_json, &parity)?;
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

/// Refuses an output named `.json` (the preprocessing JSON's own name) or naming a folder.
fn check_output(output: &Path) -> Result<(), ExportError> {
    if output.extension().is_some_and(|e| e == "json") {
        return Err(ExportError::JsonOutput(crate::shown::path(output)));
    }
    if output.is_dir() {
        return Err(ExportError::FolderOutput(crate::shown::path(output)));
    }
    Ok(())
}

/// The graph's metadata: kiln's version, the entry and its lineage, the input layout, the
/// class names, the outputs and the preprocessing JSON.
fn export_metadata(
    entry: &Entry,
    manifest: &Manifest,
    run: &LoadedRun,
    side: &Sidecar,
    names: &[&str],
    side_json: &str,
) -> Vec<(String, String)> {
    let weights_sha = manifest
        .files
        .get(layout::WEIGHTS)
        .map(|f| f.sha256.clone())
        .unwrap_or_default();
    vec![
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
        ("input_layout".into(), input_layout(run)),
        (
            "class_names".into(),
            serde_json::to_string(&side.class_names).expect("JSON"),
        ),
        ("outputs".into(), names.join(",")),
        ("preprocessing".into(), side_json.to_string()),
    ]
}

/// What the graph's input is, in words: an image's, a token model's or a table's layout.
fn input_layout(run: &LoadedRun) -> String {
    match &run.pre.text {
        None if run.pre.images.is_some() => {
            let p = run.pre.images.as_ref().expect("checked");
            format!(
                "image: float32 [batch, {}, height, width], pixels 0-255 (16-bit files scaled to 0-255), any size: the graph resizes (bilinear) to cover {}x{}, crops the centre and standardises each channel",
                p.channels, p.size[0], p.size[1]
            )
        }
        Some(t) => format!(
            "input_ids: int64 [batch, sequence], sequence at most {}; token ids of `preprocessing.tokenizer` (vocabulary of {}); output logits float32 [batch, sequence, vocabulary]",
            run.mconf.input().numel(),
            t.vocab_size()
        ),
        None => format!(
            "features: float32 [batch, {}]; numeric columns in their own units (NaN when missing), categorical columns one-hot in the order of `preprocessing.columns`, image pixels as stored, row-major",
            run.pre.n_features
        ),
    }
}

/// The gate: tract on the raw features (or the token ids, or the images) of a validation
/// batch against kiln's outputs; the report, or an error when they disagree.
fn parity_gate(
    run: &LoadedRun,
    onnx: &[u8],
    opts: &Options,
    names: &[&str],
) -> Result<Parity, ExportError> {
    let (rows, got, expected, top1) = match &run.data.valid {
        Split::Text(_) | Split::Labeled(_) => {
            let (batch, rows, len) = gate_blocks(run, opts.batch)?;
            let ids = match &batch.x {
                Features::Tokens { ids, .. } => ids.clone(),
                Features::Dense { .. } => unreachable!("text is read as token ids"),
            };
            let expected = batch_outputs(run, batch);
            let got = super::run_tract_tokens(onnx, &ids, rows, len).map_err(ExportError::Tract)?;
            match run.task.class_names() {
                // Every position's logits: `rows * len` rows of the vocabulary.
                None => (rows * len, got, expected, Some((0, run.mconf.outputs()))),
                Some(classes) => (rows, got, expected, Some((1, classes.len()))),
            }
        }
        Split::Images(_) => {
            let (got, expected, rows) = gate_image_outputs(run, onnx, opts.batch)?;
            let top1 = run.task.class_names().map(|c| (1, c.len()));
            (rows, got, expected, top1)
        }
        Split::Table(_) => {
            let (x, rows) = gate_rows(run, opts.batch)?;
            let raw = super::raw_features(&run.pre, &x);
            let expected = kiln_outputs(run, &x, rows);
            let got = super::run_tract(onnx, &raw, rows, run.pre.n_features)
                .map_err(ExportError::Tract)?;
            let top1 = run.task.class_names().map(|c| (1, c.len()));
            (rows, got, expected, top1)
        }
    };
    let (got, expected) = (run.task.parity_units(got), run.task.parity_units(expected));
    let parity = super::compare(names, &got, &expected, rows, top1);
    if !parity.passed {
        return Err(ExportError::Parity { report: parity });
    }
    Ok(parity)
}

/// tract's and kiln's outputs on the gate's images ([`gate_images`]), each output's inputs
/// concatenated in order; with the number of images.
fn gate_image_outputs(
    run: &LoadedRun,
    onnx: &[u8],
    batch: Batch,
) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>, usize), ExportError> {
    let (mut got, mut expected, mut rows) = (Vec::new(), Vec::new(), 0);
    for g in gate_images(run, batch)? {
        let out = super::run_tract_images(onnx, &g.pixels, g.shape).map_err(ExportError::Tract)?;
        got.resize(out.len(), Vec::new());
        expected.resize(g.expected.len(), Vec::new());
        for (all, part) in got.iter_mut().zip(out) {
            all.extend(part);
        }
        for (all, part) in expected.iter_mut().zip(g.expected) {
            all.extend(part);
        }
        rows += g.shape[0];
    }
    Ok((got, expected, rows))
}

/// Stores the export in the registry (`<registry>/exports/<label>-opset<n>-<batch>`): the
/// graph, its preprocessing JSON and the parity report, as one complete entry, under the
/// registry's lock; returns its folder.
fn store_export(
    reg: &Registry,
    entry: &Entry,
    manifest: Manifest,
    opts: &Options,
    onnx: &[u8],
    side_json: &str,
    parity: &Parity,
) -> Result<PathBuf, ExportError> {
    let parity_json = serde_json::to_vec_pretty(parity).expect("the report is JSON");
    let registry_dir = reg
        .root
        .join(layout::EXPORTS)
        .join(file_stem_label(&entry.label, opts));
    let mut m = manifest;
    m.kind = Kind::Export;
    m.created = crate::checkpoint::now();
    let files = vec![
        (layout::ONNX_FILE.to_string(), onnx.to_vec()),
        (
            layout::SIDECAR_FILE.to_string(),
            side_json.as_bytes().to_vec(),
        ),
        (layout::PARITY_FILE.to_string(), parity_json),
    ];
    {
        let _lock = reg.lock()?;
        store::blocking(store::commit_dir(&reg.root, &registry_dir, &files, m))?;
    }
    Ok(registry_dir)
}

//! `kiln export MODEL -o FILE.onnx`: ONNX through the parity gate.

use std::path::{Path, PathBuf};

use kiln_trainer::export;
use kiln_trainer::registry::Registry;

use super::{Usage, default_registry, resolve_model, usage};

pub fn run(
    reference: &str,
    output: &Path,
    opset: i64,
    batch: &str,
    json: bool,
    registry: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let batch: export::Batch = batch.parse().map_err(Usage)?;
    if !export::OPSETS.contains(&opset) {
        return usage(format!(
            "--opset {opset}: kiln writes opsets {} to {}",
            export::OPSETS.start(),
            export::OPSETS.end()
        ));
    }
    let (reg, entry) = resolve_model(&Registry::new(default_registry(registry)), reference)?;
    let opts = export::run::Options { opset, batch };
    let out = export::run::export(&reg, &entry, output, &opts)?;
    let worst = out
        .parity
        .max_abs
        .iter()
        .map(|(_, m)| *m)
        .fold(
            0.0,
            |a: f64, b| if b.is_nan() { f64::INFINITY } else { a.max(b) },
        );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": out.label,
                "onnx": out.path,
                "preprocess": out.sidecar,
                "registry": out.registry_dir,
                "parity": out.parity,
            })
        );
    } else {
        println!("exported {} -> {}", out.label, out.path.display());
        println!(
            "preprocessing (column encodings, tokenizer) -> {}",
            out.sidecar.display()
        );
        println!(
            "parity with tract on {} validation rows (positions, for a language model): max abs difference {worst:.2e} (tolerance {:.0e}), {} top-1 disagreements",
            out.parity.rows, out.parity.tolerance, out.parity.top1_disagreements
        );
        println!("stored in {}", out.registry_dir.display());
    }
    Ok(0)
}

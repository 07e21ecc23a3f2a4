//! `kiln predict MODEL --input FILE [-o out.csv|out.json]` (an image model: a file or a folder
//! of images).

use std::path::{Path, PathBuf};

use kiln_trainer::registry::Registry;
use kiln_trainer::{eval, predict, run as runs};

use super::{default_registry, resolve_model, usage};

pub fn run(
    reference: &str,
    input: &Path,
    output: Option<&Path>,
    registry: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let (reg, entry) = resolve_model(&Registry::new(default_registry(registry)), reference)?;
    let model = eval::LoadedRun::open_model(&reg, &entry)?;
    let folder_ok = model.pre.images.is_some() && input.is_dir();
    if !input.is_file() && !folder_ok {
        return usage(format!(
            "{}: no such file",
            kiln_trainer::shown::path(input)
        ));
    }
    let p = predict::predict_file(&model, input)?;
    let json = output.is_some_and(|o| o.extension().is_some_and(|e| e == "json"));
    let text = if json {
        serde_json::to_string_pretty(&serde_json::json!({
            "model": entry.label,
            "input": input,
            "classes": p.classes,
            "rows": p.rows,
        }))
        .expect("predictions are JSON")
    } else {
        predict::to_csv(&p)
    };
    match output {
        Some(path) => {
            runs::write_atomic(path, text.as_bytes())?;
            eprintln!(
                "{} rows of {} predicted with {} -> {}",
                p.rows.len(),
                input.display(),
                entry.label,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(0)
}

//! `kiln report RUN -o report.html`: one self-contained page of a run's curves and matrix.

use std::path::{Path, PathBuf};

use super::{default_registry, resolve_run};

pub fn run(reference: &str, output: &Path, registry: Option<PathBuf>) -> anyhow::Result<u8> {
    let dir = resolve_run(&default_registry(registry), reference)?;
    kiln_trainer::html::write_report(&dir, output)?;
    println!("wrote {}", output.display());
    Ok(0)
}

//! `kiln report RUN -o report.html [--group COLUMN]`: one self-contained page of a run's
//! curves, matrix, explanations and (with --group) fairness.

use std::path::{Path, PathBuf};

use super::{default_registry, resolve_run};

pub fn run(
    reference: &str,
    output: &Path,
    groups: &[String],
    registry: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let dir = resolve_run(&default_registry(registry), reference)?;
    kiln_trainer::html::write_report(&dir, output, groups)?;
    println!("wrote {}", output.display());
    Ok(0)
}

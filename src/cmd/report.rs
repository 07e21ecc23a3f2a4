//! `kiln report RUN -o report.html [--group COLUMN]`: one self-contained page of a run's
//! curves, matrix, explanations and (with --group) fairness.

use std::path::{Path, PathBuf};

use super::{cv_of, default_registry, resolve_run};

pub fn run(
    reference: &str,
    output: &Path,
    groups: &[String],
    registry: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let registry = default_registry(registry);
    let write = |page: String| {
        kiln_trainer::atomic::write(output, page.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", kiln_trainer::shown::path(output)))
    };
    // A cross-validation or a sweep has a page of its own.
    if let Some(cv) = cv_of(&registry, reference) {
        write(kiln_trainer::select::cv::page(&cv))?;
    } else if let Ok((s, spec)) = kiln_trainer::select::store::Sweep::open(&registry, reference) {
        let summary = kiln_trainer::select::summary::summarise(&s, &spec);
        write(kiln_trainer::select::summary::page(&summary))?;
    } else {
        let dir = resolve_run(&registry, reference)?;
        kiln_trainer::html::write_report(&dir, output, groups)?;
    }
    println!("wrote {}", output.display());
    Ok(0)
}

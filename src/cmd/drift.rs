//! `kiln drift MODEL --input FILE`: how far a batch of new rows is from the model's training
//! data; exit code 3 when a column (or the predictions) drifted past the thresholds.

use std::path::{Path, PathBuf};

use kiln_trainer::drift::{self, Thresholds};
use kiln_trainer::eval::LoadedRun;
use kiln_trainer::registry::Registry;
use kiln_trainer::{html, run as runs};

use super::{Usage, default_registry, resolve_model, usage};

/// The exit code of drift past the thresholds: a pipeline's signal to retrain.
pub const DRIFTED: u8 = 3;

pub fn run(
    reference: &str,
    input: &Path,
    json: bool,
    output: Option<&Path>,
    thresholds: Thresholds,
    registry: Option<PathBuf>,
) -> anyhow::Result<u8> {
    if !input.is_file() {
        return usage(format!(
            "{}: no such file",
            kiln_trainer::shown::path(input)
        ));
    }
    if !(thresholds.psi > 0.0
        && thresholds.psi.is_finite()
        && (0.0..=1.0).contains(&thresholds.ks)
        && thresholds.ks > 0.0)
    {
        return Err(
            Usage("--psi must be a finite number above 0 and --ks in (0, 1]".into()).into(),
        );
    }
    let (reg, entry) = resolve_model(&Registry::new(default_registry(registry)), reference)?;
    let model = LoadedRun::open_model(&reg, &entry)?;
    let report = drift::check_file(&model, input, thresholds)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("reports are JSON")
        );
    } else {
        println!(
            "{}: {} rows of {} against the training data (PSI >= {} or KS >= {} counts as drift)",
            report.model, report.rows, report.input, thresholds.psi, thresholds.ks
        );
        let w = report
            .columns
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(6)
            .max(10);
        println!(
            "{:<w$}  {:<11}  {:>8}  {:>8}  {:>8}",
            "column", "kind", "PSI", "KS", "unseen"
        );
        for s in report.columns.iter().chain(&report.predictions) {
            let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
            println!(
                "{:<w$}  {:<11}  {:>8.4}  {:>8}  {:>8}{}",
                s.name,
                s.kind,
                s.psi,
                opt(s.ks),
                opt(s.unseen),
                if s.drifted { "  DRIFT" } else { "" }
            );
        }
    }
    if let Some(path) = output {
        runs::write_atomic(path, html::drift_page(&report).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if report.drifted.is_empty() {
        return Ok(0);
    }
    eprintln!("drift: {}", report.drifted.join(", "));
    Ok(DRIFTED)
}

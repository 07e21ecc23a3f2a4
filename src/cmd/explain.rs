//! `kiln explain MODEL [--rows ROWS]`: permutation importance per original column, or
//! per-example attributions (Integrated Gradients, KernelSHAP).

use std::path::PathBuf;

use kiln_trainer::data::SplitName;
use kiln_trainer::eval::LoadedRun;
use kiln_trainer::explain::attribution::{self, IgOptions};
use kiln_trainer::explain::importance::ImportanceReport;
use kiln_trainer::explain::reports::{self, ImportanceRequest, Method, RowsReport, RowsRequest};
use kiln_trainer::registry::Registry;
use kiln_trainer::{html, run as runs};

use super::{Usage, default_registry, resolve_model, within};
use crate::cli::ExplainArgs;

pub fn run(args: ExplainArgs, registry: Option<PathBuf>) -> anyhow::Result<u8> {
    let split: SplitName = args.split.parse().map_err(Usage)?;
    let method: Option<Method> = args
        .method
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(Usage)?;
    if args.rows.is_none() && (method.is_some() || args.class.is_some()) {
        return Err(Usage(
            "--method and --class choose per-example attributions: give --rows too".into(),
        )
        .into());
    }
    within("--steps", args.steps, 1, attribution::MAX_STEPS)?;
    within("--budget", args.budget, 2, attribution::MAX_BUDGET)?;
    within("--background", args.background, 1, 1 << 20)?;
    within("--patch", args.patch, 1, 1 << 16)?;
    within("--repeats", args.repeats, 1, reports::MAX_REPEATS)?;
    if let Some(m) = args.max_samples {
        within("--max-samples", m, 2, usize::MAX)?;
    }
    let (reg, entry) = resolve_model(&Registry::new(default_registry(registry)), &args.model)?;
    let model = LoadedRun::open_entry(&reg, &entry)?;
    let page = match &args.rows {
        None => {
            let req = ImportanceRequest {
                split,
                metric: args.metric.clone(),
                repeats: args.repeats,
                seed: args.seed,
                patch: args.patch,
                max_samples: args.max_samples,
            };
            let report = reports::importance(&model, &req)?;
            if args.json {
                let out = serde_json::json!({
                    "model": model.label,
                    "split": reports::split_name(split),
                    "permutation_importance": report,
                });
                println!("{out}");
            } else {
                print!("{}", importance_text(&model.label, split, &report));
            }
            html::importance_page(&model.label, reports::split_name(split), &report)
        }
        Some(rows) => {
            let req = RowsRequest {
                split,
                rows: rows.clone(),
                method,
                class: args.class.clone(),
                ig: IgOptions {
                    steps: args.steps,
                    ..IgOptions::default()
                },
                budget: args.budget,
                background: args.background,
                seed: args.seed,
            };
            let report = reports::attributions(&model, &req)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("reports are JSON")
                );
            } else {
                print!("{}", rows_text(&report));
            }
            html::attributions_page(&report)
        }
    };
    if let Some(path) = &args.output {
        runs::write_atomic(path, page.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

fn importance_text(label: &str, split: SplitName, r: &ImportanceReport) -> String {
    let mut s = format!(
        "{label}: permutation importance on the {} split ({} rows, {} repeats); {} {:.4} unpermuted\n",
        reports::split_name(split),
        r.rows,
        r.repeats,
        r.metric,
        r.baseline
    );
    let w = r
        .importances
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    s.push_str(&format!(
        "{:<w$}  {:>10}  {:>8}\n",
        "column",
        format!("{} lost", r.metric),
        "std"
    ));
    for i in &r.importances {
        s.push_str(&format!(
            "{:<w$}  {:>10.4}  {:>8.4}\n",
            i.name, i.mean, i.std
        ));
    }
    s
}

fn rows_text(r: &RowsReport) -> String {
    let mut s = String::new();
    let ok = |a: &attribution::Attribution| attribution::complete(a, r.tolerance, r.scale);
    for row in &r.rows {
        let what = match &row.class {
            Some(c) => format!("P({c})"),
            None => "the prediction".into(),
        };
        s.push_str(&format!(
            "{}, {} split, row {}: predicted {}; attributions to {what}\n",
            r.model,
            r.split,
            row.row,
            match &row.prediction {
                serde_json::Value::String(v) => v.clone(),
                v => format!("{:.4}", v.as_f64().unwrap_or(f64::NAN)),
            }
        ));
        if r.image_shape.is_none() {
            let w = r.groups.iter().map(String::len).max().unwrap_or(6).max(6);
            let vw = row
                .values
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(5)
                .clamp(5, 24);
            s.push_str(&format!("  {:<w$}  {:<vw$}", "column", "value"));
            if row.integrated_gradients.is_some() {
                s.push_str(&format!("  {:>10}", "IG"));
            }
            if row.kernel_shap.is_some() {
                s.push_str(&format!("  {:>10}", "KernelSHAP"));
            }
            s.push('\n');
            for (g, name) in r.groups.iter().enumerate() {
                let v = row.values.get(g).map_or("", String::as_str);
                let v: String = v.chars().take(vw).collect();
                s.push_str(&format!("  {name:<w$}  {v:<vw$}"));
                for a in [&row.integrated_gradients, &row.kernel_shap]
                    .into_iter()
                    .flatten()
                {
                    s.push_str(&format!("  {:>10.4}", a.values[g]));
                }
                s.push('\n');
            }
        }
        for (name, a) in [
            ("Integrated Gradients", &row.integrated_gradients),
            ("KernelSHAP", &row.kernel_shap),
        ] {
            let Some(a) = a else { continue };
            let (unit, reference) = match name {
                "KernelSHAP" => ("coalitions", "background mean"),
                _ => ("steps", "baseline"),
            };
            let sum: f64 = a.values.iter().sum();
            s.push_str(&format!(
                "  {name}: sum {sum:.4} = {:.4} (output) - {:.4} ({reference}), gap {:.2e}{}, {} {unit}\n",
                a.output,
                a.reference,
                a.gap,
                if ok(a) { "" } else { " (above the tolerance: raise --steps)" },
                a.evaluations
            ));
        }
    }
    if r.image_shape.is_some() {
        s.push_str(
            "  (per-pixel maps: -o FILE.html draws them over the images; --json lists them)\n",
        );
    }
    s
}

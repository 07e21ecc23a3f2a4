//! `kiln fairness MODEL --group COLUMN ...`: per-group metrics and their gaps; exit code 3 when
//! a limit is broken.

use std::path::PathBuf;

use kiln_trainer::data::SplitName;
use kiln_trainer::eval::LoadedRun;
use kiln_trainer::explain::fairness::{Breakdown, GroupMetrics, Limits};
use kiln_trainer::explain::reports::{self, FairnessReport, FairnessRequest};
use kiln_trainer::registry::Registry;
use kiln_trainer::{html, run as runs};

use super::{Usage, default_registry, resolve_model};
use crate::cli::FairnessArgs;

/// The exit code of a broken limit: a pipeline's signal, not an error.
pub const LIMIT_BROKEN: u8 = 3;

pub fn run(args: FairnessArgs, registry: Option<PathBuf>) -> anyhow::Result<u8> {
    let split: SplitName = args.split.parse().map_err(Usage)?;
    for (flag, v) in [
        ("--max-dp-diff", args.max_dp_diff),
        ("--min-dp-ratio", args.min_dp_ratio),
        ("--max-eo-diff", args.max_eo_diff),
    ] {
        if let Some(v) = v
            && !(0.0..=1.0).contains(&v)
        {
            return Err(Usage(format!("{flag} {v}: a limit is between 0 and 1")).into());
        }
    }
    let (reg, entry) = resolve_model(&Registry::new(default_registry(registry)), &args.model)?;
    let model = LoadedRun::open_entry(&reg, &entry)?;
    let req = FairnessRequest {
        split,
        columns: args.groups.clone(),
        positive: args.positive.clone(),
        min_group: args.min_group,
        limits: Limits {
            max_dp_difference: args.max_dp_diff,
            min_dp_ratio: args.min_dp_ratio,
            max_eo_difference: args.max_eo_diff,
        },
    };
    let report = reports::fairness(&model, &req)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("reports are JSON")
        );
    } else {
        print!("{}", text(&report, args.min_group));
    }
    if let Some(path) = &args.output {
        runs::write_atomic(path, html::fairness_page(&report).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if report.violations.is_empty() {
        return Ok(0);
    }
    for v in &report.violations {
        eprintln!("fairness limit broken: {}", kiln_trainer::shown::name(v));
    }
    Ok(LIMIT_BROKEN)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

fn row(name: &str, g: &GroupMetrics, w: usize) -> String {
    format!(
        "{name:<w$}  {:>6}  {:>9.4}  {:>8.4}  {:>6}  {:>6}  {:>9}  {:>9.4}  {:>10.4}  {:>6.4}\n",
        g.count,
        g.selection_rate,
        g.accuracy,
        opt(g.tpr),
        opt(g.fpr),
        opt(g.precision),
        g.base_rate,
        g.mean_score,
        g.ece
    )
}

fn text(r: &FairnessReport, min_group: usize) -> String {
    let mut s = format!(
        "{}, {} split, favourable outcome {:?}: {} examples, selection rate {:.4}, accuracy {:.4}\n",
        r.model, r.split, r.positive, r.overall.count, r.overall.selection_rate, r.overall.accuracy
    );
    let mut any_small = false;
    for b in &r.breakdowns {
        s.push_str(&breakdown_text(b, &mut any_small));
    }
    if any_small {
        s.push_str(&format!(
            "* fewer than {min_group} examples: its rates are noisy (--min-group)\n"
        ));
    }
    s
}

fn breakdown_text(b: &Breakdown, any_small: &mut bool) -> String {
    let names: Vec<String> = b
        .groups
        .iter()
        .map(|g| format!("{}{}", g.group.join(" & "), if g.small { " *" } else { "" }))
        .collect();
    let w = names.iter().map(String::len).max().unwrap_or(5).max(5);
    let mut s = format!("\nby {}\n", b.columns.join(" x "));
    s.push_str(&format!(
        "{:<w$}  {:>6}  {:>9}  {:>8}  {:>6}  {:>6}  {:>9}  {:>9}  {:>10}  {:>6}\n",
        "group",
        "count",
        "selection",
        "accuracy",
        "TPR",
        "FPR",
        "precision",
        "base rate",
        "mean score",
        "ECE"
    ));
    for (g, name) in b.groups.iter().zip(&names) {
        *any_small |= g.small;
        s.push_str(&row(name, g, w));
    }
    let g = &b.gaps;
    s.push_str(&format!(
        "demographic parity difference {:.4}, ratio {:.4}; equalized odds difference {:.4} (TPR {:.4}, FPR {:.4}); accuracy difference {:.4}\n",
        g.demographic_parity_difference,
        g.demographic_parity_ratio,
        g.equalized_odds_difference,
        g.tpr_difference,
        g.fpr_difference,
        g.accuracy_difference
    ));
    s
}

//! What a sweep reports: its trials as a table, the best, how much each parameter matters, and
//! an HTML page with the metric over trials and against each parameter.
//!
//! A parameter's importance is its correlation ratio η² over the completed trials: the share
//! of the objective's variance explained by grouping the trials by that parameter (a choice's
//! values; a numeric parameter's quartiles, or fewer bins with fewer than 12 trials). It needs
//! no model fitted to the trials (Optuna's default, fANOVA, fits a random forest), and like
//! any one-parameter-at-a-time measure it misses interactions.

use std::fmt::Write as _;

use serde::Serialize;

use super::space::{Dist, SweepSpec};
use super::store::{Best, Sweep, Trial, TrialStatus};
use crate::layout;
use crate::run;

/// A sweep's state, for `kiln sweep show` and its JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub spec: SweepSpec,
    pub trials: Vec<Trial>,
    pub best: Option<Trial>,
    /// The registered best (`best.json`), once the sweep finished.
    pub registered: Option<Best>,
    pub importance: Vec<Importance>,
    /// Trials by status.
    pub counts: std::collections::BTreeMap<String, usize>,
    /// Optimizer steps over every trial.
    pub total_steps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Importance {
    pub key: String,
    /// η²: the share of the objective's variance the parameter's groups explain.
    pub eta_squared: f64,
    /// η² over the sum of every parameter's.
    pub share: f64,
}

pub fn summarise(sweep: &Sweep, spec: &SweepSpec) -> Summary {
    let trials = sweep.trials();
    let mut counts = std::collections::BTreeMap::new();
    for t in &trials {
        *counts
            .entry(format!("{:?}", t.status).to_lowercase())
            .or_insert(0) += 1;
    }
    Summary {
        id: sweep.id.clone(),
        spec: spec.clone(),
        best: Sweep::best(spec, &trials),
        registered: run::read_json(&sweep.dir().join(layout::SWEEP_BEST)).ok(),
        importance: importance(spec, &trials),
        counts,
        total_steps: trials.iter().map(|t| t.steps).sum(),
        trials,
    }
}

/// η² of each parameter over the completed trials, highest first (empty below 3 trials).
pub fn importance(spec: &SweepSpec, trials: &[Trial]) -> Vec<Importance> {
    let done: Vec<&Trial> = trials
        .iter()
        .filter(|t| t.status == TrialStatus::Completed && t.value.is_some())
        .collect();
    if done.len() < 3 {
        return Vec::new();
    }
    let y: Vec<f64> = done.iter().map(|t| t.value.unwrap_or(0.0)).collect();
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let total: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    let mut out: Vec<Importance> = spec
        .space
        .iter()
        .map(|p| {
            let groups: Vec<usize> = match &p.dist {
                Dist::Choice(_) => done
                    .iter()
                    .map(|t| {
                        t.params
                            .get(&p.key)
                            .and_then(|v| p.dist.index_of(v))
                            .unwrap_or(0)
                    })
                    .collect(),
                d => {
                    let x: Vec<f64> = done
                        .iter()
                        .map(|t| {
                            t.params
                                .get(&p.key)
                                .and_then(|v| d.point_of(v))
                                .unwrap_or(0.0)
                        })
                        .collect();
                    let mut order: Vec<usize> = (0..x.len()).collect();
                    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
                    let bins = (x.len() / 3).clamp(1, 4);
                    let mut g = vec![0; x.len()];
                    for (rank, &i) in order.iter().enumerate() {
                        g[i] = rank * bins / x.len();
                    }
                    g
                }
            };
            let n_groups = groups.iter().max().map_or(0, |m| m + 1);
            let between: f64 = (0..n_groups)
                .map(|g| {
                    let members: Vec<f64> = groups
                        .iter()
                        .zip(&y)
                        .filter(|(gi, _)| **gi == g)
                        .map(|(_, v)| *v)
                        .collect();
                    if members.is_empty() {
                        return 0.0;
                    }
                    let m = members.iter().sum::<f64>() / members.len() as f64;
                    members.len() as f64 * (m - mean).powi(2)
                })
                .sum();
            Importance {
                key: p.key.clone(),
                eta_squared: if total > 0.0 { between / total } else { 0.0 },
                share: 0.0,
            }
        })
        .collect();
    let sum: f64 = out.iter().map(|i| i.eta_squared).sum();
    for i in &mut out {
        i.share = if sum > 0.0 { i.eta_squared / sum } else { 0.0 };
    }
    out.sort_by(|a, b| b.eta_squared.total_cmp(&a.eta_squared));
    out
}

/// The terminal report: the trials, the best, the importance of each parameter.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    write_heading(&mut out, s);
    write_trials(&mut out, s);
    write_best(&mut out, s);
    write_importance(&mut out, s);
    out
}

/// The report's first two lines: what the sweep optimises and how, and its trials by status.
fn write_heading(out: &mut String, s: &Summary) {
    let spec = &s.spec;
    let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let lower = |d: &dyn std::fmt::Debug| format!("{d:?}").to_lowercase();
    let _ = writeln!(
        out,
        "sweep {}: {} validation {}{}, {} sampler, {} pruner",
        s.id,
        lower(&spec.direction),
        spec.metric,
        spec.cv
            .map_or(String::new(), |k| format!(" (mean of {k}-fold cv)")),
        lower(&spec.sampler),
        lower(&spec.pruner)
    );
    let _ = writeln!(
        out,
        "trials {} of {}: {}; {} optimizer steps in all\n",
        s.trials.len(),
        spec.trials,
        counts.join(", "),
        s.total_steps
    );
}

/// The table of trials: one row each, the best marked `*`, a column per parameter.
fn write_trials(out: &mut String, s: &Summary) {
    let spec = &s.spec;
    let keys: Vec<&String> = spec.space.iter().map(|p| &p.key).collect();
    let widths: Vec<usize> = keys
        .iter()
        .map(|k| {
            s.trials
                .iter()
                .filter_map(|t| t.params.get(*k).map(|v| short(v).len()))
                .chain([k.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let _ = write!(
        out,
        "{:>5}  {:<11}{:>10}{:>8}",
        "trial", "status", spec.metric, "steps"
    );
    for (k, w) in keys.iter().zip(&widths) {
        let _ = write!(out, "  {k:<w$}");
    }
    out.push('\n');
    for t in &s.trials {
        let status = match (t.status, t.pruned_at) {
            (TrialStatus::Pruned, Some(at)) => format!("pruned@{at}"),
            (st, _) => format!("{st:?}").to_lowercase(),
        };
        let mark = if s.best.as_ref().is_some_and(|b| b.number == t.number) {
            "*"
        } else {
            " "
        };
        let _ = write!(
            out,
            "{:>4}{mark}  {status:<11}{:>10}{:>8}",
            t.number,
            t.value.map_or("-".into(), |v| format!("{v:.4}")),
            t.steps
        );
        for (k, w) in keys.iter().zip(&widths) {
            let v = t.params.get(*k).map_or("-".into(), short);
            let _ = write!(out, "  {v:<w$}");
        }
        out.push('\n');
    }
}

/// The best trial with the overrides that reproduce it, and where it was registered.
fn write_best(out: &mut String, s: &Summary) {
    let spec = &s.spec;
    if let Some(b) = &s.best {
        let _ = writeln!(
            out,
            "\nbest: trial {} with {} {:.4} (run {})",
            b.number,
            spec.metric,
            b.value.unwrap_or(f64::NAN),
            b.run_id
        );
        for o in spec.overrides(&b.params) {
            let _ = writeln!(out, "  --set {o}");
        }
    }
    if let Some(r) = &s.registered {
        match &r.version {
            Some(v) => {
                let alias = super::worker::best_alias(&s.id);
                let _ = writeln!(out, "registered as {v}, tagged {alias}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "cross-validated: train these parameters on the whole data with kiln train"
                );
            }
        }
    }
}

/// Each parameter's η² and its share, highest first (nothing when there is none).
fn write_importance(out: &mut String, s: &Summary) {
    if !s.importance.is_empty() {
        let _ = writeln!(out, "\nimportance (η² over completed trials)");
        for i in &s.importance {
            let _ = writeln!(
                out,
                "  {:<24}{:>7.3}  {:>5.1}%",
                i.key,
                i.eta_squared,
                100.0 * i.share
            );
        }
    }
}

/// A parameter's position on a plot's x axis.
type XOf = Box<dyn Fn(&toml::Value) -> Option<f64>>;

/// A parameter's value for a table: floats to 4 significant digits.
fn short(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(f) if *f != 0.0 && (f.abs() < 1e-2 || f.abs() >= 1e4) => {
            format!("{f:.3e}")
        }
        toml::Value::Float(f) => format!(
            "{:.*}",
            (3 - f.abs().log10().floor() as i32).clamp(0, 6) as usize,
            f
        ),
        v => v.to_string(),
    }
}

/// The HTML page: the metric over trials (the best so far as a line), then against each
/// parameter, then the table.
pub fn page(s: &Summary) -> String {
    let spec = &s.spec;
    let points = |status: TrialStatus| -> Vec<(f64, f64)> {
        s.trials
            .iter()
            .filter(|t| t.status == status)
            .filter_map(|t| t.value.map(|v| (t.number as f64, v)))
            .collect()
    };
    let mut best_so_far = Vec::new();
    let mut best: Option<f64> = None;
    for t in s
        .trials
        .iter()
        .filter(|t| t.status == TrialStatus::Completed)
    {
        if let Some(v) = t.value {
            if best.is_none_or(|b| spec.direction.better(v, b)) {
                best = Some(v);
            }
            best_so_far.push((t.number as f64, best.unwrap_or(v)));
        }
    }
    let mut body = format!("<h1>Sweep {}</h1>", crate::html::escape(&s.id));
    body.push_str(&crate::html::scatter_svg(
        &format!("{} over trials", spec.metric),
        ("trial", &spec.metric),
        &[
            ("completed", points(TrialStatus::Completed), true),
            ("pruned", points(TrialStatus::Pruned), false),
        ],
        Some(("best so far", best_so_far)),
    ));
    for p in &spec.space {
        let (label, x_of): (String, XOf) = match &p.dist {
            Dist::Choice(values) => {
                let names: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{i} = {v}"))
                    .collect();
                let d = p.dist.clone();
                (
                    format!("{} (choice: {})", p.key, names.join(", ")),
                    Box::new(move |v| d.index_of(v).map(|i| i as f64)),
                )
            }
            d if d.is_log() => {
                let d = d.clone();
                (
                    format!("{} (log10)", p.key),
                    Box::new(move |v| d.point_of(v).map(|t| t / std::f64::consts::LN_10)),
                )
            }
            d => {
                let d = d.clone();
                (p.key.clone(), Box::new(move |v| d.point_of(v)))
            }
        };
        let by = |status: TrialStatus| -> Vec<(f64, f64)> {
            s.trials
                .iter()
                .filter(|t| t.status == status)
                .filter_map(|t| Some((x_of(t.params.get(&p.key)?)?, t.value?)))
                .collect()
        };
        body.push_str(&crate::html::scatter_svg(
            &label,
            (&p.key, &spec.metric),
            &[
                ("completed", by(TrialStatus::Completed), true),
                ("pruned", by(TrialStatus::Pruned), false),
            ],
            None,
        ));
    }
    let _ = write!(body, "<pre>{}</pre>", crate::html::escape(&table(s)));
    crate::html::page(&format!("sweep {}", s.id), &body)
}

//! Human-readable tables of results.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::metrics::Metrics;

/// A table of the headline metrics, one row per split (train, valid, test order).
pub fn metrics_table(metrics: &BTreeMap<String, Metrics>) -> String {
    let order = ["train", "valid", "test"];
    let rows: Vec<(&str, &Metrics)> = order
        .iter()
        .filter_map(|s| metrics.get(*s).map(|m| (*s, m)))
        .collect();
    let Some((_, first)) = rows.first() else {
        return String::new();
    };
    let columns: Vec<&str> = first.scalars().iter().map(|(k, _)| *k).collect();
    // Each column as wide as its name (one space apart), at least 10.
    let width = |c: &str| (c.len() + 1).max(10);
    let mut out = format!("{:<8}", "split");
    for c in &columns {
        let _ = write!(out, "{c:>w$}", w = width(c));
    }
    out.push('\n');
    for (split, m) in rows {
        let _ = write!(out, "{split:<8}");
        for c in &columns {
            let w = width(c);
            match m.get(c) {
                Some(v) => {
                    let _ = write!(out, "{v:>w$.4}");
                }
                None => {
                    let _ = write!(out, "{:>w$}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Per-class scores and the confusion matrix of a classification result.
pub fn class_table(m: &Metrics) -> String {
    let Metrics::Classification(c) = m else {
        return String::new();
    };
    let mut out = format!(
        "{:<16}{:>10}{:>10}{:>10}{:>9}\n",
        "class", "precision", "recall", "f1", "support"
    );
    for s in &c.per_class {
        let _ = writeln!(
            out,
            "{:<16}{:>10.4}{:>10.4}{:>10.4}{:>9}",
            truncate(&s.name),
            s.precision,
            s.recall,
            s.f1,
            s.support
        );
    }
    out.push_str("confusion matrix (rows: true class, columns: predicted)\n");
    for row in &c.confusion_matrix {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>6}")).collect();
        let _ = writeln!(out, "{}", cells.join(""));
    }
    out
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 15 {
        s.chars().take(14).collect::<String>() + "~"
    } else {
        s.to_string()
    }
}

/// `kiln runs list`: one row per run, oldest first.
pub fn runs_table(runs: &[crate::run::RunInfo]) -> String {
    let mut out = format!(
        "{:<44}{:<16}{:<13}{:>18}{:>10}  {:<25}{}\n",
        "run", "model", "status", "best valid", "time", "started", "member of"
    );
    for r in runs {
        let best = r
            .best_valid
            .map_or("-".to_string(), |v| format!("{} {v:.4}", r.monitor));
        let status = match (r.pruned_at, r.smoke) {
            (Some(_), _) => "pruned".to_string(),
            (None, true) => format!("{:?} (smoke)", r.status).to_lowercase(),
            (None, false) => format!("{:?}", r.status).to_lowercase(),
        };
        let member = r.member.as_ref().map_or(String::new(), |m| m.to_string());
        let _ = writeln!(
            out,
            "{:<44}{:<16}{:<13}{:>18}{:>9.1}s  {:<25}{member}",
            r.id,
            truncate(&r.name),
            status,
            best,
            r.wall_seconds,
            r.started
        );
    }
    out
}

/// Keys whose values differ between two configs (flattened), as `(key, a, b)`.
pub fn config_diff(a: &serde_json::Value, b: &serde_json::Value) -> Vec<(String, String, String)> {
    let (fa, fb) = (crate::tracking::flatten(a), crate::tracking::flatten(b));
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    let show = |v: Option<&serde_json::Value>| match v {
        None => "(unset)".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    keys.into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| (k.clone(), show(fa.get(k)), show(fb.get(k))))
        .collect()
}

/// Final metrics of two runs side by side: `(split, metric, a, b)`.
pub fn metrics_side_by_side(
    a: &BTreeMap<String, Metrics>,
    b: &BTreeMap<String, Metrics>,
) -> Vec<(String, String, Option<f64>, Option<f64>)> {
    let mut rows = Vec::new();
    for split in ["train", "valid", "test"] {
        let names: Vec<&str> = a
            .get(split)
            .or(b.get(split))
            .map(|m| m.all_scalars().into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default();
        for n in names {
            rows.push((
                split.to_string(),
                n.to_string(),
                a.get(split).and_then(|m| m.get(n)),
                b.get(split).and_then(|m| m.get(n)),
            ));
        }
    }
    rows
}

/// Flattened metrics (`<split>_<metric>`) of two entries side by side: `(split, metric, a, b)`.
pub fn flat_metrics_side_by_side(
    a: &BTreeMap<String, f64>,
    b: &BTreeMap<String, f64>,
) -> Vec<(String, String, Option<f64>, Option<f64>)> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let split_of = |k: &str| {
        ["train", "valid", "test"]
            .iter()
            .position(|s| k.starts_with(s))
    };
    let mut keys: Vec<&String> = keys.into_iter().collect();
    keys.sort_by_key(|k| (split_of(k), (*k).clone()));
    keys.into_iter()
        .map(|k| {
            let (split, metric) = k.split_once('_').unwrap_or(("", k));
            (
                split.to_string(),
                metric.to_string(),
                a.get(k).copied(),
                b.get(k).copied(),
            )
        })
        .collect()
}

/// `kiln registry list`: one row per version.
pub fn versions_table(versions: &[crate::registry::VersionInfo]) -> String {
    let mut out = format!(
        "{:<28}{:<18}{:>8}{:>22}  {}\n",
        "version", "aliases", "step", "monitored (best)", "run"
    );
    for v in versions {
        let monitored = v
            .monitor
            .value
            .map_or("-".to_string(), |x| format!("{} {x:.4}", v.monitor.metric));
        let _ = writeln!(
            out,
            "{:<28}{:<18}{:>8}{:>22}  {}",
            format!("{}/v{}", v.name, v.version),
            v.aliases.join(","),
            v.step,
            monitored,
            v.run_id
        );
    }
    out
}

/// `kiln registry show` for a person.
pub fn manifest_text(
    label: &str,
    dir: &std::path::Path,
    m: &crate::registry::manifest::Manifest,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "entry      {label} ({:?})", m.kind);
    let _ = writeln!(out, "folder     {}", dir.display());
    let _ = writeln!(out, "model      {}", m.model_name);
    let _ = writeln!(out, "run        {}", m.run_id);
    let _ = writeln!(out, "created    {}", m.created);
    let _ = writeln!(out, "step       {} (epoch {})", m.step, m.epoch);
    let _ = writeln!(
        out,
        "monitor    {} = {}",
        m.monitor.metric,
        m.monitor.value.map_or("-".into(), |v| format!("{v:.4}"))
    );
    let _ = writeln!(
        out,
        "kiln       {} on burn {}, {} ({})",
        m.kiln_version, m.burn_version, m.backend, m.device
    );
    if let Some(g) = &m.git {
        let _ = writeln!(
            out,
            "git        {}{}",
            g.commit,
            if g.dirty { " (dirty)" } else { "" }
        );
    }
    if let Some(i) = &m.lineage.init_from {
        let _ = writeln!(
            out,
            "init from  {} = {} (weights {})",
            i.reference,
            i.resolved,
            &i.weights_sha256[..12]
        );
    }
    for r in &m.lineage.resumed_from {
        let _ = writeln!(out, "resumed    from {r}");
    }
    let _ = writeln!(out, "data       split seed {}", m.data.split_seed);
    for f in &m.data.files {
        let _ = writeln!(
            out,
            "  {:<12}{}  sha256 {}",
            f.role,
            f.path,
            &f.sha256[..16]
        );
    }
    let _ = writeln!(out, "files");
    for (name, f) in &m.files {
        let _ = writeln!(
            out,
            "  {name:<20}{:>10} bytes  sha256 {}",
            f.bytes,
            &f.sha256[..16]
        );
    }
    if !m.metrics.is_empty() {
        let _ = writeln!(out, "metrics");
        for (k, v) in &m.metrics {
            let _ = writeln!(out, "  {k:<24}{v:.4}");
        }
    }
    out
}

/// `kiln runs compare` for a person: the differing config keys, then the metrics with `b - a`.
pub fn compare_text(
    a: &str,
    b: &str,
    diff: &[(String, String, String)],
    metrics: &[(String, String, Option<f64>, Option<f64>)],
) -> String {
    let mut out = format!("a  {a}\nb  {b}\n\nconfig that differs (a -> b):\n");
    for (k, x, y) in diff {
        let _ = writeln!(out, "  {k:<32} {x}  ->  {y}");
    }
    if diff.is_empty() {
        out.push_str("  (same config)\n");
    }
    let _ = writeln!(
        out,
        "\n{:<8}{:<12}{:>12}{:>12}{:>12}",
        "split", "metric", "a", "b", "b - a"
    );
    let show = |v: &Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    for (s, m, x, y) in metrics {
        let d = match (x, y) {
            (Some(x), Some(y)) => format!("{:+.4}", y - x),
            _ => "-".into(),
        };
        let _ = writeln!(out, "{s:<8}{m:<12}{:>12}{:>12}{d:>12}", show(x), show(y));
    }
    out
}

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
    let mut out = format!("{:<8}", "split");
    for c in &columns {
        let _ = write!(out, "{c:>10}");
    }
    out.push('\n');
    for (split, m) in rows {
        let _ = write!(out, "{split:<8}");
        for c in &columns {
            match m.get(c) {
                Some(v) => {
                    let _ = write!(out, "{v:>10.4}");
                }
                None => {
                    let _ = write!(out, "{:>10}", "-");
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

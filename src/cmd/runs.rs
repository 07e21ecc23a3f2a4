//! `kiln runs list|show|compare`: the runs of a registry.

use std::path::{Path, PathBuf};

use kiln_trainer::{layout, report, run};

use super::{cv_of, default_registry, print_comparison, resolve_run};
use crate::cli::RunsCommand;

pub fn run(command: RunsCommand, registry: Option<PathBuf>) -> anyhow::Result<u8> {
    let registry = default_registry(registry);
    let resolve = |r: &str| resolve_run(&registry, r);
    let info = |dir: &Path| run::read_json::<run::RunInfo>(&dir.join(layout::RUN));
    match command {
        RunsCommand::List { json } => {
            let mut runs: Vec<run::RunInfo> =
                run::list(&registry)?.into_iter().map(|(_, r)| r).collect();
            runs.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
            for (path, e) in run::unreadable(&registry) {
                eprintln!(
                    "warning: skipping {}: {e}",
                    kiln_trainer::shown::path(&path)
                );
            }
            if json {
                println!("{}", serde_json::to_string(&runs).expect("runs are JSON"));
            } else if runs.is_empty() {
                println!("no runs in {}", registry.display());
            } else {
                print!("{}", report::runs_table(&runs));
            }
        }
        RunsCommand::Show { run, json } if cv_of(&registry, &run).is_some() => {
            let cv = cv_of(&registry, &run).expect("checked");
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&cv).expect("the record is JSON")
                );
            } else {
                println!("cv      {} ({:?})", cv.id, cv.status);
                println!("config  {} {}", cv.config_path, cv.overrides.join(" "));
                println!("folds   {} x {} repeats", cv.folds, cv.repeats);
                for f in &cv.runs {
                    println!("  fold {:>2}  {}", f.index, f.run_id);
                }
                print!("{}", kiln_trainer::select::cv::summary_table(&cv));
            }
        }
        RunsCommand::Compare { a, b, json }
            if cv_of(&registry, &a).is_some() && cv_of(&registry, &b).is_some() =>
        {
            // Two CVs: the configs of their first folds, and each metric's mean over folds.
            let (ca, cb) = (
                cv_of(&registry, &a).expect("checked"),
                cv_of(&registry, &b).expect("checked"),
            );
            let first = |c: &kiln_trainer::select::cv::CvRecord| {
                layout::runs_dir(&registry).join(&c.runs[0].run_id)
            };
            let diff = report::config_diff(&config_json(&first(&ca))?, &config_json(&first(&cb))?);
            let keys: std::collections::BTreeSet<&String> =
                ca.summary.keys().chain(cb.summary.keys()).collect();
            let metrics: Vec<(String, String, Option<f64>, Option<f64>)> = keys
                .into_iter()
                .map(|k| {
                    let (split, m) = k.split_once('/').unwrap_or(("", k));
                    (
                        split.to_string(),
                        format!("{m} (mean of folds)"),
                        ca.summary.get(k).map(|s| s.mean),
                        cb.summary.get(k).map(|s| s.mean),
                    )
                })
                .collect();
            print_comparison(&ca.id, &cb.id, &diff, &metrics, json);
        }
        RunsCommand::Show { run, json } => {
            let dir = resolve(&run)?;
            let r = info(&dir)?;
            if json {
                println!("{}", serde_json::json!({"run_dir": dir, "run": r}));
            } else {
                print!("{}", report::runs_table(std::slice::from_ref(&r)));
                println!("folder  {}", dir.display());
                println!("config  {}", dir.join(layout::CONFIG).display());
                print!("{}", report::metrics_table(&r.metrics));
                if let Some(m) = r.metrics.get("test").or(r.metrics.get("valid")) {
                    print!("{}", report::class_table(m));
                }
            }
        }
        RunsCommand::Compare { a, b, json } => {
            let (da, db) = (resolve(&a)?, resolve(&b)?);
            let (ra, rb) = (info(&da)?, info(&db)?);
            let diff = report::config_diff(&config_json(&da)?, &config_json(&db)?);
            let metrics = report::metrics_side_by_side(&ra.metrics, &rb.metrics);
            print_comparison(&ra.id, &rb.id, &diff, &metrics, json);
        }
    }
    Ok(0)
}

/// A run's resolved config as JSON, for comparisons.
fn config_json(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let path = dir.join(layout::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(run::io(&path))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| run::RunError::Parse {
        path: kiln_trainer::shown::path(&path),
        message: e.to_string(),
    })?;
    Ok(serde_json::to_value(table).expect("TOML is JSON"))
}

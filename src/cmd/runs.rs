//! `kiln runs list|show|compare`: the runs of a registry.

use std::path::{Path, PathBuf};

use kiln_trainer::{layout, report, run};

use super::{default_registry, print_comparison, resolve_run};
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
                eprintln!("warning: skipping {}: {e}", path.display());
            }
            if json {
                println!("{}", serde_json::to_string(&runs).expect("runs are JSON"));
            } else if runs.is_empty() {
                println!("no runs in {}", registry.display());
            } else {
                print!("{}", report::runs_table(&runs));
            }
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
            let config = |d: &Path| -> anyhow::Result<serde_json::Value> {
                let path = d.join(layout::CONFIG);
                let text = std::fs::read_to_string(&path).map_err(run::io(&path))?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| run::RunError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                Ok(serde_json::to_value(table).expect("TOML is JSON"))
            };
            let diff = report::config_diff(&config(&da)?, &config(&db)?);
            let metrics = report::metrics_side_by_side(&ra.metrics, &rb.metrics);
            print_comparison(&ra.id, &rb.id, &diff, &metrics, json);
        }
    }
    Ok(0)
}

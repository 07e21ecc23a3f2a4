//! `kiln validate PATH... [--deep]`: every problem of every config file, at once.

use std::path::{Path, PathBuf};

use kiln_trainer::eval;

use super::{Usage, load_config, parse_overrides, usage};

pub fn run(paths: &[PathBuf], deep: bool, set: &[String]) -> anyhow::Result<u8> {
    let overrides = parse_overrides(set)?;
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            collect_tomls(p, &mut files)
                .map_err(|e| Usage(format!("{}: {e}", kiln_trainer::shown::path(p))))?;
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return usage(format!(
                "{}: no such file or folder",
                kiln_trainer::shown::path(p)
            ));
        }
    }
    if files.is_empty() {
        return usage("no .toml files found");
    }
    let mut failed = Vec::new();
    for f in &files {
        // A sweep file (`base` and `[space]`) is checked as a sweep: its space against its base.
        if is_sweep_file(f) {
            match kiln_trainer::select::space::read(f, None, None, None) {
                Ok(spec) => println!(
                    "ok    {}  (sweep of {}: {} parameters, {} trials)",
                    f.display(),
                    spec.base,
                    spec.space.len(),
                    spec.trials
                ),
                Err(e) => failed.push(e.to_string()),
            }
            continue;
        }
        match load_config(f, &overrides) {
            Ok(cfg) if deep => match eval::deep_check(&cfg) {
                Ok(summary) => println!("ok    {}  ({summary})", f.display()),
                Err(e) => failed.push(format!("{}: {e}", kiln_trainer::shown::path(f))),
            },
            Ok(_) => println!("ok    {}", f.display()),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        usage(failed.join("\n"))
    }
}

fn is_sweep_file(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("base") && t.contains_key("space"))
}

fn collect_tomls(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_tomls(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

//! `kiln registry ...`: versions, aliases, integrity and clean-up of the model registry.

use std::path::PathBuf;

use kiln_trainer::layout;
use kiln_trainer::registry::{self, Registry};
use kiln_trainer::report;

use super::{default_registry, print_comparison, resolve_model, usage};
use crate::cli::RegistryCommand;

pub fn run(command: RegistryCommand, registry: Option<PathBuf>) -> anyhow::Result<u8> {
    let root = default_registry(registry);
    if !root.is_dir() {
        return usage(format!(
            "no registry at {} (train a model first, or point --registry or $KILN_REGISTRY at one)",
            kiln_trainer::shown::path(&root)
        ));
    }
    let reg = Registry::new(root);
    match command {
        RegistryCommand::List { name, json } => list(&reg, name.as_deref(), json)?,
        RegistryCommand::Show { reference, json } => show(&reg, &reference, json)?,
        RegistryCommand::Tag { reference, alias } => {
            let entry = reg.tag(&reference, &alias)?;
            println!("{}@{alias} -> {}", model_name(&entry), entry.label);
        }
        RegistryCommand::Untag { name, alias } => {
            let v = reg.untag(&name, &alias)?;
            println!("removed {name}@{alias} (was v{v})");
        }
        RegistryCommand::Rm { reference, force } => {
            let entry = reg.remove(&reference, force)?;
            println!("removed {}", entry.label);
        }
        RegistryCommand::Gc { dry_run, json } => gc(&reg, dry_run, json)?,
        RegistryCommand::Diff { a, b, json } => {
            let ((ra, ea), (rb, eb)) = (resolve_model(&reg, &a)?, resolve_model(&reg, &b)?);
            let (ma, mb) = (ra.load(&ea)?.manifest, rb.load(&eb)?.manifest);
            let diff = report::config_diff(&ma.config, &mb.config);
            let metrics = report::flat_metrics_side_by_side(&ma.metrics, &mb.metrics);
            print_comparison(&ea.label, &eb.label, &diff, &metrics, json);
        }
        RegistryCommand::Verify { json } => return Ok(verify(&reg, json)),
    }
    Ok(0)
}

/// One line of JSON on stdout.
fn json_line(v: serde_json::Value) {
    println!("{v}");
}

/// `kiln registry list`: the versions of every model, or of `name`'s.
fn list(reg: &Registry, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let versions = reg.list(name)?;
    if json {
        json_line(serde_json::to_value(&versions).expect("versions are JSON"));
    } else if versions.is_empty() {
        println!("no model versions in {}", reg.root.display());
    } else {
        print!("{}", report::versions_table(&versions));
    }
    Ok(())
}

/// `kiln registry show`: an entry's manifest, checked against its files.
fn show(reg: &Registry, reference: &str, json: bool) -> anyhow::Result<()> {
    let (owner, entry) = resolve_model(reg, reference)?;
    let loaded = owner.load(&entry)?;
    let m = &loaded.manifest;
    if json {
        json_line(serde_json::json!({
            "entry": entry.label,
            "dir": entry.dir,
            "manifest": m,
        }));
    } else {
        print!("{}", report::manifest_text(&entry.label, &entry.dir, m));
    }
    Ok(())
}

/// `kiln registry gc`: removes (or, with `dry_run`, lists) what no entry needs.
fn gc(reg: &Registry, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let r = reg.gc(dry_run)?;
    if json {
        json_line(serde_json::json!({"dry_run": dry_run, "removed": r.removed, "bytes": r.bytes}));
    } else {
        for p in &r.removed {
            println!("{} {p}", if dry_run { "would remove" } else { "removed" });
        }
        println!(
            "{} {} entries, {:.1} MB",
            if dry_run { "would free" } else { "freed" },
            r.removed.len(),
            r.bytes as f64 / 1e6
        );
    }
    Ok(())
}

/// `kiln registry verify`: checks every entry's files; the exit code, 1 when one is damaged.
fn verify(reg: &Registry, json: bool) -> u8 {
    let r = reg.verify();
    if json {
        json_line(serde_json::to_value(&r).expect("reports are JSON"));
    } else {
        for d in &r.damaged {
            println!("DAMAGED {}: {}", d.path, d.problem);
        }
        if !r.unfinished.is_empty() {
            println!(
                "{} unfinished write(s) under {} (harmless; `kiln registry gc` removes them)",
                r.unfinished.len(),
                reg.root.join(layout::TMP).display()
            );
        }
        println!(
            "checked {} entries: {}",
            r.checked,
            if r.damaged.is_empty() {
                "all intact".to_string()
            } else {
                format!("{} problem(s)", r.damaged.len())
            }
        );
    }
    if !r.damaged.is_empty() {
        return 1;
    }
    0
}

fn model_name(entry: &registry::Entry) -> String {
    match &entry.kind {
        registry::EntryKind::Version { name, .. } => name.clone(),
        registry::EntryKind::Final { run } | registry::EntryKind::Checkpoint { run, .. } => {
            run.clone()
        }
    }
}

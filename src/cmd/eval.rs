//! `kiln eval MODEL [--split S]`: a model's metrics on one split of its data.

use std::path::PathBuf;

use kiln_trainer::data::SplitName;
use kiln_trainer::registry::Registry;
use kiln_trainer::{eval, report};

use super::{Usage, default_registry, resolve_model};

pub fn run(
    reference: &str,
    split: &str,
    json: bool,
    registry: Option<PathBuf>,
) -> anyhow::Result<u8> {
    let split: SplitName = split.parse().map_err(Usage)?;
    let (reg, entry) = resolve_model(&Registry::new(default_registry(registry)), reference)?;
    let (loaded, metrics) = eval::eval_entry(&reg, &entry, split)?;
    let split_name = format!("{split:?}").to_lowercase();
    if json {
        let out = serde_json::json!({
            "model": loaded.label,
            "run_id": loaded.info.as_ref().map(|i| i.id.clone()),
            "split": split_name,
            "metrics": metrics,
        });
        println!("{out}");
    } else {
        println!("{} ({split_name} split)", loaded.label);
        let mut m = std::collections::BTreeMap::new();
        m.insert(split_name, metrics.clone());
        print!("{}", report::metrics_table(&m));
        print!("{}", report::class_table(&metrics));
    }
    Ok(0)
}

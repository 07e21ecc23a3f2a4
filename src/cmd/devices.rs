//! `kiln devices`: what this build can compute on here.

use kiln_trainer::backend;

pub fn run(json: bool) -> anyhow::Result<u8> {
    let all = backend::list();
    // Each GPU backend compiled in that found nothing here, and why.
    let missing: serde_json::Map<String, serde_json::Value> = backend::compiled()
        .into_iter()
        .filter(|&k| k != "cpu" && !all.iter().any(|d| d.kind == k))
        .map(|k| (k.to_string(), backend::none_found(k).into()))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"compiled": backend::compiled(), "devices": all, "none_found": missing})
        );
        return Ok(0);
    }
    println!(
        "{:<10}{:<6}{:<15}{:<10}name",
        "id", "kind", "float", "hardware"
    );
    for d in &all {
        println!(
            "{:<10}{:<6}{:<15}{:<10}{}",
            d.id,
            d.kind,
            d.dtypes.join(","),
            if d.hardware { "gpu" } else { "-" },
            d.name
        );
    }
    for (kind, why) in &missing {
        println!("{kind}: {}", why.as_str().unwrap_or_default());
    }
    let auto = backend::choose(backend::DeviceSpec::Auto)?;
    println!(
        "compiled in: {}; `--device auto` picks {}",
        backend::compiled().join(", "),
        auto.id
    );
    Ok(0)
}

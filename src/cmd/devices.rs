//! `kiln devices`: what this build can compute on here.

use kiln_trainer::backend;

pub fn run(json: bool) -> anyhow::Result<u8> {
    let all = backend::list();
    if json {
        println!(
            "{}",
            serde_json::json!({"compiled": backend::compiled(), "devices": all})
        );
        return Ok(0);
    }
    println!(
        "{:<10}{:<6}{:<12}{:<10}name",
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
    let auto = backend::choose(backend::DeviceSpec::Auto)?;
    println!(
        "compiled in: {}; `--device auto` picks {}",
        backend::compiled().join(", "),
        auto.id
    );
    Ok(0)
}

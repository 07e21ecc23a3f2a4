//! Devices end to end: `kiln devices`, `--device` errors, and training on a real WGPU device.
//!
//! The WGPU tests need the `wgpu` feature and a Vulkan driver. CI installs Mesa's lavapipe (a
//! Vulkan device on the CPU) and runs them with `--features wgpu`; elsewhere, without an
//! adapter, they say they were skipped. CUDA tests need a CUDA GPU: none here, and they say so.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

fn devices(sb: &Sandbox) -> Value {
    let o = sb.kiln(&["devices", "--json"]);
    assert_exit(&o, 0);
    json(&o)
}

#[test]
fn devices_lists_the_cpu_and_what_was_compiled_in() {
    let sb = Sandbox::new();
    let v = devices(&sb);
    let list = v["devices"].as_array().unwrap();
    let cpu = list.last().unwrap();
    assert_eq!(cpu["id"], "cpu");
    assert!(cpu["dtypes"].as_array().unwrap().contains(&"f32".into()));
    let compiled: Vec<&str> = v["compiled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(compiled.contains(&"wgpu"), cfg!(feature = "wgpu"));
    assert_eq!(compiled.contains(&"cuda"), cfg!(feature = "cuda"));
    let o = sb.kiln(&["devices"]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("`--device auto` picks"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn unusable_devices_are_clear_errors() {
    let sb = Sandbox::new();
    let cfg = digits_config(&sb, "[train]\nepochs = 1\n");
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&["train", c, "--device", "gpu0"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("auto, cpu, wgpu"), "{}", stderr(&o));
    let o = sb.kiln(&["train", c, "--set", "backend.device=\"tpu\""]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("backend.device"), "{}", stderr(&o));
    let o = sb.kiln(&["train", c, "--set", "backend.precision=\"f8\""]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("backend.precision"), "{}", stderr(&o));

    // CUDA: not compiled in here, or compiled in without a GPU: either way a one-line reason.
    let o = sb.kiln(&["train", c, "--device", "cuda"]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    if cfg!(feature = "cuda") {
        assert!(
            err.contains("no CUDA device") || err.contains("there is no cuda"),
            "{err}"
        );
    } else {
        assert!(err.contains("built without the `cuda` feature"), "{err}");
    }
    // No run was left behind by a device error.
    assert!(
        !sb.registry().join("runs").exists()
            || std::fs::read_dir(sb.registry().join("runs"))
                .unwrap()
                .next()
                .is_none()
    );

    let o = sb.kiln(&["train", c, "--device", "wgpu:7"]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    if cfg!(feature = "wgpu") {
        assert!(
            err.contains("there is no wgpu:7") || err.contains("no WGPU adapter"),
            "{err}"
        );
    } else {
        assert!(err.contains("built without the `wgpu` feature"), "{err}");
    }
}

/// The WGPU adapters kiln sees; `None` (skipped) without the feature or an adapter, which CI
/// never accepts.
fn wgpu_adapter(sb: &Sandbox) -> Option<Value> {
    if !cfg!(feature = "wgpu") {
        eprintln!("SKIPPED: built without the `wgpu` feature (CI runs with --features wgpu)");
        return None;
    }
    let v = devices(sb);
    let found = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "wgpu")
        .cloned();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide a Vulkan device (mesa-vulkan-drivers)"
        );
        eprintln!("SKIPPED: no WGPU adapter (install a Vulkan driver, e.g. mesa-vulkan-drivers)");
    }
    found
}

/// The logged training losses of a run, by step.
fn train_losses(run_dir: &str) -> BTreeMap<u64, f64> {
    let text =
        std::fs::read_to_string(std::path::Path::new(run_dir).join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["split"] == "train" && v["loss"].is_number())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn wgpu_trains_the_digits_mlp_as_the_cpu_does() {
    let sb = Sandbox::new();
    let Some(adapter) = wgpu_adapter(&sb) else {
        return;
    };
    eprintln!("WGPU adapter: {adapter}");
    // Both devices start from the same weights (a CPU-made version) and see the same batches;
    // no dropout, so the loss curves differ only by floating-point order of operations.
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 2\nlog_every = 5\nmax_steps = 40\n[runtime]\nthreads = 1\n",
    );
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&[
        "train",
        c,
        "--device",
        "cpu",
        "--set",
        "train.max_steps=1",
        "--json",
    ]);
    assert_exit(&o, 0);
    let mut runs = Vec::new();
    for device in ["cpu", "wgpu"] {
        let o = sb.kiln(&[
            "train",
            c,
            "--device",
            device,
            "--init-from",
            "tiny/v1",
            "--json",
        ]);
        assert_exit(&o, 0);
        runs.push(json(&o));
    }
    let cpu = train_losses(runs[0]["run_dir"].as_str().unwrap());
    let gpu = train_losses(runs[1]["run_dir"].as_str().unwrap());
    assert_eq!(
        cpu.keys().collect::<Vec<_>>(),
        gpu.keys().collect::<Vec<_>>()
    );
    assert!(cpu.len() >= 8, "{cpu:?}");
    let worst = cpu
        .iter()
        .map(|(s, a)| (a - gpu[s]).abs() / a.abs().max(1.0))
        .fold(0.0, f64::max);
    eprintln!(
        "{} logged losses, largest relative difference cpu/wgpu {worst:.2e}",
        cpu.len()
    );
    for (step, a) in &cpu {
        let b = gpu[step];
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "step {step}: cpu loss {a}, wgpu loss {b}"
        );
    }
    let acc = |v: &Value| v["metrics"]["test"]["accuracy"].as_f64().unwrap();
    assert!((acc(&runs[0]) - acc(&runs[1])).abs() <= 0.01);
    // The run records the device it trained on.
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(runs[1]["run_dir"].as_str().unwrap()).join("run.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        info["device"].as_str().unwrap().starts_with("wgpu:0"),
        "{info}"
    );
}

#[test]
fn cuda_trains_when_a_gpu_is_present() {
    if !cfg!(feature = "cuda") {
        eprintln!("SKIPPED: built without the `cuda` feature");
        return;
    }
    let sb = Sandbox::new();
    let v = devices(&sb);
    if !v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["kind"] == "cuda")
    {
        eprintln!("SKIPPED: no CUDA GPU on this machine");
        return;
    }
    let cfg = digits_config(&sb, "[train]\nepochs = 2\n");
    let o = sb.kiln(&[
        "train",
        cfg.to_str().unwrap(),
        "--device",
        "cuda:0",
        "--json",
    ]);
    assert_exit(&o, 0);
    assert!(json(&o)["metrics"]["test"]["accuracy"].as_f64().unwrap() > 0.9);
}

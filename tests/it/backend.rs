//! Devices end to end: `kiln devices`, `--device` errors, and training on a real WGPU device.
//!
//! The WGPU tests need the `wgpu` feature (a default one) and a Vulkan driver. CI installs Mesa's
//! lavapipe (a Vulkan device on the CPU); elsewhere, without an adapter, they say they were
//! skipped. With `cuda` compiled in and no GPU (CI's CUDA step, scripts/test-cuda), the tests
//! check what the CUDA build says and refuses; the `gpu_` tests need a CUDA GPU and are ignored
//! unless asked for (`KILN_FEATURES=cuda,nccl,mpi scripts/test -- gpu_ -- --ignored`), when a
//! missing GPU fails them.

use std::collections::BTreeMap;

use crate::common::*;
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
    // CUDA compiled in on a machine without a GPU (CI's CUDA build): listed as missing, with
    // the reason, in both forms.
    let has_cuda = list.iter().any(|d| d["kind"] == "cuda");
    let why = v["none_found"]["cuda"].as_str();
    assert_eq!(why.is_some(), cfg!(feature = "cuda") && !has_cuda, "{v}");
    if let Some(why) = why {
        assert!(why.contains("libcuda.so"), "{why}");
        assert!(
            stdout(&o).contains(&format!("cuda: {why}")),
            "{}",
            stdout(&o)
        );
    }
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

    let o = sb.kiln(&[
        "train",
        c,
        "--set",
        "backend.precision=\"f16\"",
        "--set",
        "model.norm=\"batch\"",
    ]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("batch norm"), "{}", stderr(&o));

    // CUDA: not compiled in, compiled in without a GPU (CI), or a GPU index that does not
    // exist: each a one-line reason.
    let gpus = cuda_gpus(&sb);
    let wanted: &[&str] = if gpus == 0 {
        &["cuda", "cuda:7"]
    } else {
        &["cuda:7"]
    };
    for device in wanted {
        let o = sb.kiln(&["train", c, "--device", device]);
        assert_exit(&o, 1);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"), "{err}");
        if !cfg!(feature = "cuda") {
            assert!(err.contains("built without the `cuda` feature"), "{err}");
        } else if gpus == 0 {
            assert!(err.contains("no CUDA device"), "{err}");
            assert!(err.contains("nvidia-smi"), "{err}");
        } else {
            assert!(err.contains("there is no cuda:7"), "{err}");
        }
    }

    let o = sb.kiln(&["train", c, "--device", "wgpu:7"]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    if cfg!(feature = "wgpu") {
        assert!(
            err.contains("there is no wgpu:7") || err.contains("no WGPU adapter"),
            "{err}"
        );
    } else {
        assert!(err.contains("built without the `wgpu` feature"), "{err}");
    }
    // No run was left behind by a device error.
    assert!(
        !sb.registry().join("runs").exists()
            || std::fs::read_dir(sb.registry().join("runs"))
                .unwrap()
                .next()
                .is_none()
    );
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
    loss_curve(run_dir)
        .into_iter()
        .filter(|(split, _, _)| split == "train")
        .map(|(_, step, loss)| (step, loss))
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "wgpu"),
    ignore = "needs --features wgpu and a Vulkan driver"
)]
fn wgpu_trains_the_digits_mlp_as_the_cpu_does() {
    let sb = Sandbox::new();
    let Some(adapter) = wgpu_adapter(&sb) else {
        return;
    };
    eprintln!("WGPU adapter: {adapter}");
    if std::env::var_os("CI").is_some() {
        // CI's adapter is Mesa's lavapipe.
        assert!(
            adapter["name"].as_str().unwrap().contains("llvmpipe"),
            "{adapter}"
        );
        assert_eq!(adapter["hardware"], false);
    }
    let info = trains_as_the_cpu_does(&sb, "wgpu", 1e-4);
    assert!(
        info["device"].as_str().unwrap().starts_with("wgpu:0"),
        "{info}"
    );
}

/// Trains the digits MLP on the CPU and on `device` from the same starting weights (a
/// CPU-made version) and batches, with no dropout, so the loss curves differ only by the
/// order of floating-point operations: each logged loss within `tol` (relative), test
/// accuracy within 0.01. Returns the `device` run's run.json.
fn trains_as_the_cpu_does(sb: &Sandbox, device: &str, tol: f64) -> Value {
    let cfg = digits_config(
        sb,
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
    for device in ["cpu", device] {
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
        "{} logged losses, largest relative difference cpu/{device} {worst:.2e}",
        cpu.len()
    );
    for (step, a) in &cpu {
        let b = gpu[step];
        assert!(
            (a - b).abs() <= tol * a.abs().max(1.0),
            "step {step}: cpu loss {a}, {device} loss {b}"
        );
    }
    let acc = |v: &Value| v["metrics"]["test"]["accuracy"].as_f64().unwrap();
    assert!((acc(&runs[0]) - acc(&runs[1])).abs() <= 0.01);
    // The run records the device it trained on (the caller checks which).
    serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(runs[1]["run_dir"].as_str().unwrap()).join("run.json"),
        )
        .unwrap(),
    )
    .unwrap()
}

/// Fails unless this build has CUDA and the machine a GPU: the `gpu_` tests are ignored by
/// default and run on request (`KILN_FEATURES=cuda,nccl,mpi scripts/test -- gpu_ -- --ignored`),
/// so a missing GPU is a failure, not a skip.
fn require_cuda_gpu(sb: &Sandbox) {
    if !cfg!(feature = "cuda") {
        panic!("the gpu_ tests need a build with --features cuda");
    }
    assert!(
        cuda_gpus(sb) > 0,
        "no CUDA GPU here: `kiln devices` lists none (the gpu_ tests need one)"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: on a GPU machine, `KILN_FEATURES=cuda,nccl,mpi scripts/test -- gpu_ -- --ignored`"]
fn gpu_cuda_trains_the_digits_mlp_as_the_cpu_does() {
    let sb = Sandbox::new();
    require_cuda_gpu(&sb);
    // CUDA's f32 matrix products may sum in another order than the CPU's: the curves agree
    // closely, not bit for bit.
    let gpu = trains_as_the_cpu_does(&sb, "cuda:0", 1e-3);
    assert!(
        gpu["device"].as_str().unwrap().starts_with("cuda:0"),
        "{gpu}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: on a GPU machine, `KILN_FEATURES=cuda,nccl,mpi scripts/test -- gpu_ -- --ignored`"]
fn gpu_cuda_mixed_precision_tracks_f32() {
    let sb = Sandbox::new();
    require_cuda_gpu(&sb);
    let full = mixed_precision_tracks_f32(&sb, "cuda:0");
    let acc = full["metrics"]["test"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "{full}");
}

/// Logged training losses, loss scales and gradient norms of a run made with `--json`.
fn curve(run: &Value) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let text = std::fs::read_to_string(
        std::path::Path::new(run["run_dir"].as_str().unwrap()).join("metrics.jsonl"),
    )
    .unwrap();
    let points: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["split"] == "train" && v["loss"].is_number())
        .collect();
    (
        points.iter().map(|p| p["loss"].as_f64().unwrap()).collect(),
        points
            .iter()
            .filter_map(|p| p["loss_scale"].as_f64())
            .collect(),
        points
            .iter()
            .filter_map(|p| p["grad_norm"].as_f64())
            .collect(),
    )
}

#[test]
fn mixed_precision_tracks_f32_on_the_cpu() {
    let sb = Sandbox::new();
    mixed_precision_tracks_f32(&sb, "cpu");
}

/// Trains the digits MLP on `device` in f32, f16 and bf16: the early losses and gradient norms
/// of the mixed-precision runs track f32's (2% for f16, 5% for bf16) without being equal (the
/// casts happen), the loss scale is logged for f16 only, and test accuracy is within 0.05.
/// Returns the f32 run.
fn mixed_precision_tracks_f32(sb: &Sandbox, device: &str) -> Value {
    // Plain SGD (an update proportional to the gradient) and two micro-batches per step, so a
    // wrong unscaling of the f16 gradients would show in the curves and the norms.
    let cfg = digits_config(
        sb,
        "[train]\nepochs = 4\nlog_every = 5\ngrad_accum = 2\nbatch_size = 32\n[optim]\nname = \"sgd\"\nlr = 0.1\n[runtime]\nthreads = 1\n",
    );
    let c = cfg.to_str().unwrap();
    let run = |precision: &str| {
        let o = sb.kiln(&[
            "train",
            c,
            "--device",
            device,
            "--json",
            "--set",
            &format!("backend.precision=\"{precision}\""),
        ]);
        assert_exit(&o, 0);
        json(&o)
    };
    let (full, half, brain) = (run("f32"), run("f16"), run("bf16"));
    let (f32_loss, no_scale, f32_norm) = curve(&full);
    assert!(no_scale.is_empty(), "f32 logs no loss scale");
    for (name, r, tol) in [("f16", &half, 0.02), ("bf16", &brain, 0.05)] {
        let (loss, scale, norm) = curve(r);
        for (a, b) in f32_norm.iter().zip(&norm).take(6) {
            assert!(
                (a - b).abs() <= tol * a.abs().max(0.1),
                "{name}: gradient norm f32 {a} vs {b}"
            );
        }
        assert_eq!(loss.len(), f32_loss.len());
        assert_ne!(
            loss, f32_loss,
            "{name} computed exactly as f32: no cast happened"
        );
        for (a, b) in f32_loss.iter().zip(&loss).take(6) {
            assert!(
                (a - b).abs() <= tol * a.abs().max(0.1),
                "{name}: f32 {a} vs {b}"
            );
        }
        assert_eq!(
            scale.is_empty(),
            name == "bf16",
            "{name}: loss scale logged only for f16"
        );
        let acc = |r: &Value| r["metrics"]["test"]["accuracy"].as_f64().unwrap();
        assert!(
            (acc(r) - acc(&full)).abs() < 0.05,
            "{name} accuracy {} against f32 {}",
            acc(r),
            acc(&full)
        );
    }
    full
}

#[test]
#[cfg_attr(
    not(feature = "wgpu"),
    ignore = "needs --features wgpu and a Vulkan driver"
)]
fn wgpu_mixed_precision_f16_trains_and_bf16_is_refused() {
    let sb = Sandbox::new();
    if wgpu_adapter(&sb).is_none() {
        return;
    }
    let cfg = digits_config(&sb, "[train]\nepochs = 10\n[runtime]\nthreads = 1\n");
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&[
        "train",
        c,
        "--device",
        "wgpu",
        "--set",
        "backend.precision=\"bf16\"",
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("no bf16 arithmetic"), "{}", stderr(&o));
    let acc = |args: &[&str]| {
        let mut all = vec!["train", c, "--json"];
        all.extend_from_slice(args);
        let o = sb.kiln(&all);
        assert_exit(&o, 0);
        json(&o)["metrics"]["test"]["accuracy"].as_f64().unwrap()
    };
    let half = acc(&["--device", "wgpu", "--set", "backend.precision=\"f16\""]);
    let full = acc(&["--device", "cpu"]);
    assert!(
        (half - full).abs() < 0.05,
        "wgpu f16 accuracy {half}, cpu f32 {full}"
    );
}

#[test]
fn a_killed_f16_run_resumes_to_bit_identical_weights() {
    let sb = Sandbox::new();
    let cfg = digits_config_with(
        &sb,
        "\ndropout = 0.1",
        "[train]\nepochs = 60\ncheckpoint_every = 3\nrestore_best = false\n[backend]\nprecision = \"f16\"\n[runtime]\nthreads = 1\n",
    );
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&["train", c, "--device", "cpu", "--json"]);
    assert_exit(&o, 0);
    let full = json(&o);
    let weights = |run_dir: &str| {
        std::fs::read(std::path::Path::new(run_dir).join("final/model.safetensors")).unwrap()
    };
    let want = weights(full["run_dir"].as_str().unwrap());
    let mut child = sb
        .command(&["train", c, "--device", "cpu", "--quiet"])
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let run_dir = loop {
        let found = std::fs::read_dir(sb.registry().join("runs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.ends_with(full["run_id"].as_str().unwrap()))
            // Zero-padded step numbers compare as paths.
            .find(|p| {
                newest_checkpoint(p).is_some_and(|c| c >= p.join("checkpoints/step-000000300"))
            });
        if let Some(r) = found {
            break r;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(newest_checkpoint(&run_dir).unwrap().join("state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        state["loss_scale"]["scale"].as_f64().unwrap() >= 1.0,
        "{state}"
    );
    let id = run_dir.file_name().unwrap().to_str().unwrap();
    let o = sb.kiln(&["train", "--resume", id, "--json"]);
    assert_exit(&o, 0);
    let resumed = json(&o);
    assert!(
        weights(resumed["run_dir"].as_str().unwrap()) == want,
        "a killed and resumed f16 run ended with other weights"
    );
}

/// Starts a CPU training of `cfg` (with `train.checkpoint_every = 1`, `total_steps` steps in
/// all) and interrupts it as Ctrl-C does (SIGINT) after its first checkpoint; returns the run's
/// folder. The process is frozen while the test checks that steps remain (it runs at most a
/// few steps ahead of its newest checkpoint, the writer's queue being short), so the interrupt
/// cannot come after the last step; if too few remain (a very slow poll), the attempt is
/// dropped and made again with a new run.
fn interrupted_run(sb: &Sandbox, cfg: &str, total_steps: u64) -> std::path::PathBuf {
    // Runs already there, and attempts given up on, are not the one awaited.
    let mut dropped: Vec<std::path::PathBuf> = run_dirs(sb);
    for _ in 0..5 {
        let mut child = sb
            .command(&["train", cfg, "--device", "cpu"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let run_dir = wait_until(
            "the first checkpoint of a new run",
            std::time::Duration::from_secs(120),
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("the training ended ({status}) before its first checkpoint");
                }
                run_dirs(sb)
                    .into_iter()
                    .find(|r| !dropped.contains(r) && !checkpoint_steps(r).is_empty())
            },
        );
        freeze(child.id());
        let newest = *checkpoint_steps(&run_dir).last().unwrap();
        if newest + 5 < total_steps {
            signal(child.id(), "INT");
            signal(child.id(), "CONT");
            let o = wait_with_deadline(
                child,
                std::time::Duration::from_secs(120),
                "an interrupted training",
            );
            assert_exit(&o, 130);
            assert!(
                stderr(&o).contains("resume with: kiln train --resume"),
                "{}",
                stderr(&o)
            );
            return run_dir;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        dropped.push(run_dir);
    }
    panic!("five trainings all ran to their end before the test could interrupt them");
}

/// The book, "Backends and features": `--device` with `--resume` continues a run on another
/// device; a device that cannot be used is one line, exit code 1, before anything about the
/// run changes ("No GPU, no driver, an index out of range, a backend not compiled in: each is
/// one line saying which and how to fix it, exit code 1").
#[test]
fn resume_continues_on_another_device_and_a_missing_one_changes_nothing() {
    let sb = Sandbox::new();
    // 20 steps an epoch.
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 10\ncheckpoint_every = 1\n[runtime]\nthreads = 1\n",
    );
    let c = cfg.to_str().unwrap();
    let run_dir = interrupted_run(&sb, c, 200);
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let run_json = run_dir.join("run.json");
    let before = std::fs::read(&run_json).unwrap();
    assert_eq!(read_json(&run_json)["status"], "interrupted");

    // No such device here (CI has no NVIDIA GPU, and may be built without CUDA).
    let o = sb.kiln(&["train", "--resume", &id, "--device", "cuda:7"]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&run_json).unwrap(),
        before,
        "a resume refused for its device changed run.json"
    );

    let o = sb.kiln(&["train", "--resume", &id, "--device", "cpu", "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["status"], "completed");
    let info = read_json(&run_json);
    assert_eq!(info["status"], "completed", "{info}");
    assert!(
        info["device"].as_str().unwrap().starts_with("cpu"),
        "{info}"
    );

    // On the Vulkan device, where there is one (CI: lavapipe).
    if wgpu_adapter(&sb).is_none() {
        return;
    }
    let run_dir = interrupted_run(&sb, c, 200);
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let o = sb.kiln(&["train", "--resume", &id, "--device", "wgpu", "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["status"], "completed");
    let info = read_json(&run_dir.join("run.json"));
    assert_eq!(info["status"], "completed", "{info}");
    assert!(
        info["device"].as_str().unwrap().starts_with("wgpu"),
        "run.json names the device the run finished on: {info}"
    );
}

/// The logged losses of a run, in order: (split, step, loss).
fn loss_curve(run_dir: &str) -> Vec<(String, u64, f64)> {
    std::fs::read_to_string(std::path::Path::new(run_dir).join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|v| v["loss"].is_f64())
        .map(|v| {
            (
                v["split"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Trains `args` (a `kiln train` line) with kiln's CPU kernels and without
/// (`KILN_KERNELS=off`); checks that every logged loss agrees to `tol` (relative) and that the
/// two runs did differ (the switch is read, both paths ran). Returns both runs' JSON.
fn same_with_and_without_kernels(
    sb: &Sandbox,
    args: &[&str],
    tol: f64,
    min_points: usize,
) -> (Value, Value) {
    let train = |kernels: &str| {
        let o = sb
            .command(&[args, &["--json", "--quiet", "--device", "cpu"]].concat())
            .env("KILN_KERNELS", kernels)
            .output()
            .expect("kiln runs");
        assert_exit(&o, 0);
        json(&o)
    };
    let (on, off) = (train("on"), train("off"));
    let (a, b) = (
        loss_curve(on["run_dir"].as_str().unwrap()),
        loss_curve(off["run_dir"].as_str().unwrap()),
    );
    assert!(a.len() >= min_points, "logged losses: {a:?}");
    assert_eq!(a.len(), b.len());
    for ((split, step, x), (_, _, y)) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{split} loss at step {step}: {x} with the kernels, {y} without"
        );
    }
    // Not equal to the bit: the switch is read, and the two paths really ran.
    assert_ne!(a, b, "KILN_KERNELS=off changed no loss");
    (on, off)
}

#[test]
fn a_cnn_trains_the_same_with_and_without_kilns_cpu_kernels() {
    // The digits as 8x8 images through two conv blocks: kernels/ computes the convolutions and
    // pools (on the CPU, by default), or burn does (KILN_KERNELS=off). Same seed and data: the
    // two differ only by the order of float additions, so every logged loss agrees to 1e-4
    // (relative) over 6 epochs, and the accuracies match within one test example.
    let sb = Sandbox::new();
    let cfg = digits_config_with(
        &sb,
        "\nkind = \"cnn\"\n[[model.conv]]\nchannels = 8\nkernel = 3\npool = 2\n[[model.conv]]\nchannels = 16\nkernel = 3\npool = 2",
        "[train]\nepochs = 6\nbatch_size = 32\nlog_every = 10",
    );
    let cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[data]\n", "[data]\nimage_shape = [1, 8, 8]\n");
    let cfg = sb.write("cnn.toml", &cfg);
    let (on, off) = same_with_and_without_kernels(&sb, &["train", cfg.to_str().unwrap()], 1e-4, 24);
    let accuracy = |v: &Value| v["metrics"]["test"]["accuracy"].as_f64().unwrap();
    let count = on["metrics"]["test"]["count"].as_f64().unwrap();
    assert!(
        (accuracy(&on) - accuracy(&off)).abs() <= 1.0 / count + 1e-12,
        "test accuracy {} with the kernels, {} without",
        accuracy(&on),
        accuracy(&off)
    );
    assert!(accuracy(&on) > 0.7, "the CNN learned: {}", accuracy(&on));
}

#[test]
fn the_gpt_trains_the_same_with_and_without_kilns_cpu_kernels() {
    // The Shakespeare GPT for 60 steps: GELU, softmax and layer norm from kernels/ or from
    // burn. Every logged loss (every 10 steps, and a validation at 60) agrees to 1e-4.
    let sb = Sandbox::new();
    let args = [
        "train",
        "configs/shakespeare_char.toml",
        "--set",
        "train.max_steps=60",
        "--set",
        "train.log_every=10",
        "--set",
        "train.valid_every=60",
        "--set",
        "data.split.valid=0.02",
    ];
    same_with_and_without_kernels(&sb, &args, 1e-4, 6);
}

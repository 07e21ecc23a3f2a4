//! What checkpointing costs: the step-time overhead of checkpointing every N steps, and the
//! registry's save throughput against a plain write of the same bytes.
//!
//!   cargo bench --bench checkpoint -- [--steps N] [--rounds R]
//!
//! Model: the MNIST MLP 784-256-128-10 with Adam at batch 128 (weights 0.9 MB, optimizer
//! moments 1.9 MB per checkpoint). Rounds interleave the settings, and medians are reported,
//! because this machine is shared and noisy.
//!
//! 1. Overhead: `kiln train` for N steps with `train.checkpoint_every` unset, 100 and 20; the
//!    loop's wall time (snapshots on the training thread, writes in the background).
//! 2. Throughput: the files of a real checkpoint written as a registry entry
//!    (`store::commit_dir`: temporary folder, fsync of each file, rename, fsync of the parent)
//!    against `std::fs::write` + `fsync` of the same files into a plain folder.

use kiln_trainer::layout;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use kiln_trainer::config::{self, Override};
use kiln_trainer::registry::{manifest::Manifest, store};

fn train(registry: &Path, steps: usize, every: Option<usize>) -> (f64, std::path::PathBuf) {
    let cfg_path = "configs/mnist_mlp.toml";
    let mut sets = vec![
        "model.hidden=[256, 128]".to_string(),
        "model.dropout=0.0".into(),
        "train.batch_size=128".into(),
        "optim.name=adam".into(),
        format!("train.max_steps={steps}"),
        format!("train.log_every={steps}"),
        "data.split.valid=0.01".into(),
        "train.keep_last=2".into(),
        "train.keep_best=0".into(),
    ];
    if let Some(n) = every {
        sets.push(format!("train.checkpoint_every={n}"));
    }
    let overrides: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    let (file, _) = config::load(cfg_path.as_ref(), &overrides).unwrap();
    let cfg = config::validate(file, cfg_path, "bench").unwrap();
    let opts = kiln_trainer::train::Options {
        registry: registry.into(),
        smoke: false,
        quiet: true,
        config_path: cfg_path.into(),
        resume: None,
        stop: Arc::new(AtomicBool::new(false)),
        init_from: None,
        group: None,
        member: None,
    };
    let out = kiln_trainer::train::train(&cfg, &opts).unwrap();
    (out.info.wall_seconds, out.run_dir)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn plain_write(dir: &Path, files: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut steps = 400;
    let mut rounds = 3;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--steps" => {
                steps = args[i + 1].parse().expect("--steps N");
                i += 1;
            }
            "--rounds" => {
                rounds = args[i + 1].parse().expect("--rounds R");
                i += 1;
            }
            other => panic!("unknown argument {other:?}"),
        }
        i += 1;
    }
    kiln_trainer::backend::init_threads(2);
    let settings: [Option<usize>; 3] = [None, Some(100), Some(20)];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    let reg = tempfile::tempdir().unwrap();
    let mut last_run = None;
    for _ in 0..rounds {
        for (k, every) in settings.iter().enumerate() {
            let (wall, run) = train(reg.path(), steps, *every);
            walls[k].push(wall);
            last_run = Some(run);
        }
    }
    let base = median(walls[0].clone());
    for (k, every) in settings.iter().enumerate() {
        let m = median(walls[k].clone());
        let checkpoints = every.map_or(1, |n| steps / n);
        println!(
            "{}",
            serde_json::json!({
                "bench": "step_overhead",
                "checkpoint_every": every,
                "steps": steps,
                "checkpoints": checkpoints,
                "wall_seconds": m,
                "ms_per_step": 1e3 * m / steps as f64,
                "overhead_percent": 100.0 * (m - base) / base,
            })
        );
    }

    // Throughput: the files of the newest real checkpoint.
    let run = last_run.unwrap();
    let (_, ckpt) = layout::checkpoints(&run).into_iter().next().unwrap();
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(ckpt.join(layout::MANIFEST)).unwrap()).unwrap();
    let files: Vec<(String, Vec<u8>)> = manifest
        .files
        .keys()
        .map(|n| (n.clone(), std::fs::read(ckpt.join(n)).unwrap()))
        .collect();
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let reps = 20;
    let (mut registry_s, mut plain_s) = (Vec::new(), Vec::new());
    let out = tempfile::tempdir().unwrap();
    for r in 0..reps {
        let t = Instant::now();
        store::blocking(store::commit_dir(
            reg.path(),
            &reg.path().join("bench").join(format!("e{r}")),
            &files,
            manifest.clone(),
        ))
        .unwrap();
        registry_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        plain_write(&out.path().join(format!("p{r}")), &files);
        plain_s.push(t.elapsed().as_secs_f64());
    }
    let mbps = |s: f64| bytes as f64 / 1e6 / s;
    let (reg_m, plain_m) = (median(registry_s), median(plain_s));
    println!(
        "{}",
        serde_json::json!({
            "bench": "save_throughput",
            "bytes": bytes,
            "registry_ms": 1e3 * reg_m,
            "registry_mb_per_s": mbps(reg_m),
            "plain_write_fsync_ms": 1e3 * plain_m,
            "plain_write_fsync_mb_per_s": mbps(plain_m),
            "ratio": plain_m / reg_m,
        })
    );
}

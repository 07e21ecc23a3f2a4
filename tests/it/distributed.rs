//! Data-parallel training through MPI, end to end: `mpirun -np 2 kiln train` on the CPU.
//!
//! Needs a build with `--features mpi` and Open MPI's `mpirun` (CI installs Debian's
//! openmpi-bin); without the feature these tests are ignored and say why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// `mpirun -np N` (Open MPI) running `kiln ARGS` in the repository root. Several programs
/// (MPMD, `A : B`) when `ranks` has more than one entry.
fn mpirun(sb: &Sandbox, ranks: &[&[&str]]) -> Command {
    let mut c = Command::new("mpirun");
    // Root in containers, and two ranks on however many cores CI has.
    c.args(["--allow-run-as-root", "--oversubscribe"]);
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            c.arg(":");
        }
        c.args(["-np", "1", env!("CARGO_BIN_EXE_kiln")]).args(*args);
    }
    c.current_dir(root())
        .env("KILN_REGISTRY", sb.registry())
        .env_remove("BURN_DEVICE")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

/// Runs `c` and fails the test if it takes longer than `limit`.
fn within(mut c: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts (is Open MPI installed?)");
    loop {
        if child.try_wait().expect("wait").is_some() {
            return (child.wait_with_output().expect("output"), start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn final_weights_dir(registry: &Path) -> PathBuf {
    final_weights(registry)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn final_weights(registry: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(registry.join("runs"))
        .expect("runs")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(runs.len(), 1, "one run folder: {runs:?}");
    runs[0].join("final/model.safetensors")
}

fn versions(registry: &Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(registry.join("models").join(name))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('v'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// No dropout: its masks are drawn per rank, so they differ from one process's.
const SETTINGS: &[&str] = &["--set", "model.dropout=0", "--set", "train.epochs=6"];

#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs a build with --features mpi")]
fn two_ranks_train_the_weights_of_one_process_with_the_same_global_batch() {
    let cfg = "configs/digits_mlp.toml";
    let one = Sandbox::new();
    let mut args = vec!["train", cfg, "-q", "--set", "train.batch_size=64"];
    args.extend_from_slice(SETTINGS);
    let out = one.kiln(&args);
    assert_exit(&out, 0);

    let two = Sandbox::new();
    let mut args = vec!["train", cfg, "--set", "train.batch_size=32"];
    args.extend_from_slice(SETTINGS);
    let (out, _) = within(mpirun(&two, &[&args, &args]), Duration::from_secs(300));
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("2 ranks through mpi") && err.contains("global batch 64 (32 per rank)"),
        "{err}"
    );
    // Rank 0 alone reports and writes: one run, one model version.
    assert_eq!(stdout(&out).matches("model   digits-mlp/v1").count(), 1);
    assert_eq!(versions(&two.registry(), "digits-mlp"), vec!["v1"]);

    let diff = max_abs_diff(
        &tensors_f32(&final_weights(&one.registry())),
        &tensors_f32(&final_weights(&two.registry())),
    );
    eprintln!("max abs difference, 1 process vs 2 ranks: {diff:e}");
    assert!(diff <= 1e-5, "weights differ by {diff}");
    // The ranks evaluate shards and pool the predictions: the same metrics as one process.
    let metrics = |sb: &Sandbox| -> serde_json::Value {
        let run = final_weights_dir(&sb.registry()).join("run.json");
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run).unwrap()).unwrap()["metrics"].clone()
    };
    let (a, b) = (metrics(&one), metrics(&two));
    for split in ["train", "valid", "test"] {
        assert_eq!(a[split]["accuracy"], b[split]["accuracy"], "{split}");
        let (la, lb) = (
            a[split]["loss"].as_f64().unwrap(),
            b[split]["loss"].as_f64().unwrap(),
        );
        assert!((la - lb).abs() < 1e-5, "{split} loss {la} vs {lb}");
    }
    // The registry is intact.
    assert_exit(&two.kiln(&["registry", "verify"]), 0);
}

/// The book, "Multi-GPU and multi-node", batch size: gradients are weighted by each rank's share
/// (the last batch of an epoch may be uneven), so N ranks compute the gradient of the same
/// global-batch mean loss as one process. Plain SGD without momentum makes the update
/// proportional to the gradient itself (AdamW's would hide a constant factor), and the training
/// split is not a multiple of the global batch, so the last step of every epoch splits unevenly
/// between the two ranks.
#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs a build with --features mpi")]
fn two_ranks_with_uneven_shares_train_the_weights_of_one_process_with_sgd() {
    let cfg = "configs/digits_mlp.toml";
    let sgd = [
        "--set",
        "optim.name=sgd",
        "--set",
        "optim.momentum=0.0",
        "--set",
        "optim.lr=0.05",
        // The last weights: a validation that one rounding apart picks another best epoch
        // must not decide the comparison.
        "--set",
        "train.restore_best=false",
    ];
    let one = Sandbox::new();
    let mut args = vec!["train", cfg, "--json", "--set", "train.batch_size=64"];
    args.extend_from_slice(SETTINGS);
    args.extend_from_slice(&sgd);
    let out = one.kiln(&args);
    assert_exit(&out, 0);
    // The training split's size, from the run's own metrics: its last global batch of 64 must
    // be short, and longer than one rank's 32, so that both ranks hold part of it, unequally.
    let n = json(&out)["metrics"]["train"]["count"].as_u64().unwrap();
    let last = n % 64;
    assert!(
        last > 32,
        "the training split has {n} examples: its last batch of 64 holds {last}, which does not split unevenly between two ranks of 32; change the batch sizes"
    );

    let two = Sandbox::new();
    let mut args = vec!["train", cfg, "--set", "train.batch_size=32"];
    args.extend_from_slice(SETTINGS);
    args.extend_from_slice(&sgd);
    let (out, _) = within(mpirun(&two, &[&args, &args]), Duration::from_secs(300));
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("global batch 64 (32 per rank)"),
        "{}",
        stderr(&out)
    );
    let diff = max_abs_diff(
        &tensors_f32(&final_weights(&one.registry())),
        &tensors_f32(&final_weights(&two.registry())),
    );
    eprintln!("max abs difference, SGD, 1 process vs 2 ranks with uneven shares: {diff:e}");
    assert!(
        diff <= 1e-6,
        "2 ranks ({last} examples in the last batch: 32 and {}) end {diff:e} away from one process",
        last - 32
    );
}

#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs a build with --features mpi")]
fn ranks_with_different_configs_all_stop_with_the_reason() {
    let sb = Sandbox::new();
    let a: &[&str] = &["train", "configs/digits_mlp.toml", "--set", "optim.lr=1e-3"];
    let b: &[&str] = &["train", "configs/digits_mlp.toml", "--set", "optim.lr=3e-3"];
    let (out, took) = within(mpirun(&sb, &[a, b]), Duration::from_secs(60));
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    for rank in 0..2 {
        let line = format!(
            "error: rank {rank} of 2: rank 1's config differs from rank 0's: optim.lr is 0.003 on rank 1, 0.001 on rank 0"
        );
        assert!(err.contains(&line), "missing {line:?} in:\n{err}");
    }
    eprintln!("both ranks stopped after {took:?}");
    assert!(!sb.registry().join("runs").exists(), "nothing was written");

    // A rank whose config does not even load says so to the others.
    let bad: &[&str] = &["train", "configs/digits_mlp.toml", "--set", "optim.lr=-1"];
    let (out, _) = within(mpirun(&sb, &[a, bad]), Duration::from_secs(60));
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("error: rank 0 of 2: rank 1 could not start:") && err.contains("optim.lr"),
        "{err}"
    );
}

/// The newest checkpoint's step of the only run in `registry`.
fn newest_step(registry: &Path) -> Option<u64> {
    let run = std::fs::read_dir(registry.join("runs"))
        .ok()?
        .next()?
        .ok()?
        .path();
    let name = newest_checkpoint(&run)?
        .file_name()?
        .to_string_lossy()
        .into_owned();
    name.strip_prefix("step-")?.parse().ok()
}

/// Waits until `job` ends, failing the test after `limit`.
fn wait_for(job: &mut std::process::Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if job.try_wait().expect("wait").is_some() {
            let mut out = Output {
                status: job.wait().expect("status"),
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            use std::io::Read;
            if let Some(mut s) = job.stdout.take() {
                s.read_to_end(&mut out.stdout).unwrap();
            }
            if let Some(mut s) = job.stderr.take() {
                s.read_to_end(&mut out.stderr).unwrap();
            }
            return out;
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `job`'s ranks and returns once a checkpoint newer than `after` exists.
fn start_until_checkpoint(
    mut c: Command,
    registry: &Path,
    after: Option<u64>,
) -> std::process::Child {
    let mut job = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts");
    let start = Instant::now();
    while newest_step(registry) <= after {
        if let Some(status) = job.try_wait().expect("wait") {
            panic!("the job ended ({status}) before a new checkpoint");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no new checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    job
}

#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs a build with --features mpi")]
fn stopped_or_killed_ranks_resume_to_the_uninterrupted_weights() {
    let settings = [
        "--set",
        "model.dropout=0",
        "--set",
        "train.epochs=150",
        "--set",
        "train.checkpoint_every=100",
        "--set",
        "train.batch_size=32",
        "--set",
        "train.log_every=100",
    ];
    let mut args = vec!["train", "configs/digits_mlp.toml"];
    args.extend_from_slice(&settings);

    // The uninterrupted run, for reference.
    let whole = Sandbox::new();
    let (out, _) = within(mpirun(&whole, &[&args, &args]), Duration::from_secs(600));
    assert_exit(&out, 0);

    // SIGUSR1 to mpirun (which forwards it): every rank stops at the same step, rank 0 saves.
    let sb = Sandbox::new();
    let reg = sb.registry();
    let mut job = start_until_checkpoint(mpirun(&sb, &[&args, &args]), &reg, None);
    Command::new("kill")
        .args(["-USR1", &job.id().to_string()])
        .status()
        .expect("kill");
    let out = wait_for(&mut job, Duration::from_secs(60));
    assert_exit(&out, 130);
    assert!(
        stderr(&out).contains("interrupted at step"),
        "{}",
        stderr(&out)
    );
    let stopped = newest_step(&reg);
    // A run trained on 2 ranks resumes on 2: one process would take other batches.
    let out = sb.kiln(&["train", "--resume", "latest"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("was trained on 2 ranks (global batch 64); resume it on 2 ranks"),
        "{}",
        stderr(&out)
    );
    let run_json = final_weights_dir(&reg).join("run.json");
    let status =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&run_json).unwrap())
            .unwrap()["status"]
            .clone();
    assert_eq!(
        status, "interrupted",
        "a refused resume leaves the run as it was"
    );

    // Resume, then kill rank 1 without warning once it has saved again.
    let resume: &[&str] = &["train", "--resume", "latest"];
    let mut job = start_until_checkpoint(mpirun(&sb, &[resume, resume]), &reg, stopped);
    let ranks = children(job.id());
    assert_eq!(ranks.len(), 2, "two kiln ranks under mpirun: {ranks:?}");
    Command::new("kill")
        .args(["-KILL", &ranks[1].to_string()])
        .status()
        .expect("kill");
    let killed = Instant::now();
    let out = wait_for(&mut job, Duration::from_secs(60));
    assert_ne!(out.status.code(), Some(0));
    eprintln!(
        "the job ended {:?} after a rank was killed:\n{}",
        killed.elapsed(),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("error: rank 0 of 2: stopped by the launcher"),
        "{}",
        stderr(&out)
    );
    assert_exit(&sb.kiln(&["registry", "verify"]), 0);

    // Every rank resumes from rank 0's last checkpoint and ends where the whole run ended.
    let (out, _) = within(mpirun(&sb, &[resume, resume]), Duration::from_secs(600));
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
    // The book: the final weights equal an uninterrupted run's, to the bit (the CPU path is
    // deterministic, and the same weights give the same file).
    let diff = max_abs_diff(
        &tensors_f32(&final_weights(&whole.registry())),
        &tensors_f32(&final_weights(&reg)),
    );
    assert_eq!(
        sha256_file(&final_weights(&reg)),
        sha256_file(&final_weights(&whole.registry())),
        "the stopped, killed and resumed 2-rank run ended with other weights (max abs difference {diff:e})"
    );
    assert_eq!(versions(&reg, "digits-mlp"), vec!["v1"]);
}

#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs a build with --features mpi")]
fn batch_norm_statistics_agree_across_ranks() {
    // Batch norm's running statistics have no gradient: the ranks average them each step, so
    // the sharded evaluation during training sees the model that is saved.
    let sb = Sandbox::new();
    let args: &[&str] = &[
        "train",
        "configs/digits_mlp.toml",
        "--set",
        "model.norm=\"batch\"",
        "--set",
        "train.epochs=3",
    ];
    let (out, _) = within(mpirun(&sb, &[args, args]), Duration::from_secs(300));
    assert_exit(&out, 0);
    let run = final_weights_dir(&sb.registry()).join("run.json");
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run).unwrap()).unwrap();
    let out = sb.kiln(&["eval", "latest", "--split", "valid", "--json"]);
    assert_exit(&out, 0);
    let alone = json(&out)["metrics"].clone();
    let during = &recorded["metrics"]["valid"];
    assert_eq!(alone["accuracy"], during["accuracy"]);
    assert_eq!(alone["f1"], during["f1"]);
    let (a, b) = (
        alone["loss"].as_f64().unwrap(),
        during["loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "loss {a} alone, {b} in the run");
}

/// The book, "Multi-GPU and multi-node", a rank that hangs: any collective that waits longer than
/// `distributed.timeout_s` ends its rank with a message naming what it waited for.
#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs a build with --features mpi")]
fn a_hung_rank_ends_the_job_after_the_timeout() {
    // Rank 1 stops answering (SIGSTOP: alive, but silent): rank 0 waits in the gradient
    // all-reduce until `distributed.timeout_s`, then ends with the reason. The timeout is
    // generous, so that a loaded 2-core machine cannot trip it before the freeze (the start-up
    // handshake waits under it too), and rank 1 is frozen only once training is under way (a
    // checkpoint exists). No validation and no loss logging until the end: mid-run, the
    // gradient all-reduce is the only collective, so it is the one rank 0 waits in.
    let sb = Sandbox::new();
    let args: &[&str] = &[
        "train",
        "configs/digits_mlp.toml",
        "--set",
        "train.epochs=150",
        "--set",
        "train.checkpoint_every=100",
        "--set",
        "train.valid_every=1000000",
        "--set",
        "train.log_every=1000000",
        "--set",
        "distributed.timeout_s=20",
    ];
    let reg = sb.registry();
    let mut job = start_until_checkpoint(mpirun(&sb, &[args, args]), &reg, None);
    let ranks = children(job.id());
    assert_eq!(ranks.len(), 2, "two kiln ranks under mpirun: {ranks:?}");
    Command::new("kill")
        .args(["-STOP", &ranks[1].to_string()])
        .status()
        .expect("kill");
    let stopped = Instant::now();
    // Generous: the timeout, plus the launcher's clean-up on a loaded machine.
    let out = wait_for(&mut job, Duration::from_secs(120));
    let took = stopped.elapsed();
    // In case the launcher left it stopped.
    let _ = Command::new("kill")
        .args(["-KILL", &ranks[1].to_string()])
        .status();
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("error: rank 0 of 2: no answer from the other ranks after 20 s in the gradient all-reduce of step"),
        "{err}"
    );
    // No duration is asserted (this machine's load decides it); the job ended, with the reason.
    eprintln!("the job ended {took:?} after rank 1 stopped answering");
}

/// Process ids of the `kiln` children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            // /proc/PID/stat: "PID (comm) STATE PPID ..."
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                let after = s.rsplit_once(')').map_or("", |x| x.1);
                s.contains("(kiln)")
                    && after.split_whitespace().nth(1) == Some(pid.to_string().as_str())
            })
        })
        .collect();
    v.sort();
    v
}

#[test]
fn launch_mistakes_are_one_line_errors() {
    let sb = Sandbox::new();
    let cfg = "configs/digits_mlp.toml";
    let out = sb.kiln(&["train", cfg, "--devices", "cpu:2"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("mpirun -np N"), "{}", stderr(&out));
    // A launcher variable that is not a number is named.
    let out = sb
        .command(&["train", cfg])
        .env("SLURM_STEP_ID", "0")
        .env("SLURM_NTASKS", "2")
        .env("SLURM_PROCID", "first")
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out).trim(),
        "error: the launcher variable SLURM_PROCID=\"first\" is not a non-negative integer"
    );
    if !cfg!(feature = "nccl") {
        let out = sb.kiln(&["train", cfg, "--devices", "cuda:all"]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("--features cuda,nccl"),
            "{}",
            stderr(&out)
        );
        let out = sb
            .command(&["train", cfg])
            .env("RANK", "1")
            .env("WORLD_SIZE", "2")
            .output()
            .unwrap();
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("torchrun-style"), "{}", stderr(&out));
    } else {
        let out = sb.kiln(&["train", cfg, "--devices", "cuda:0,x"]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("\"x\" is not a GPU index"),
            "{}",
            stderr(&out)
        );
        if !has_cuda_gpu(&sb) {
            // The NCCL build on a machine without a GPU (CI): one line, before any rank starts.
            let out = sb.kiln(&["train", cfg, "--devices", "cuda:all"]);
            assert_exit(&out, 1);
            assert_eq!(error_lines(&out).len(), 1, "{}", stderr(&out));
            assert!(
                stderr(&out).contains("no CUDA GPU here"),
                "{}",
                stderr(&out)
            );
        }
    }
    assert!(!sb.registry().join("runs").exists(), "nothing was written");
}

/// Whether `kiln devices` lists a CUDA GPU (the tests that expect none then say so).
fn has_cuda_gpu(sb: &Sandbox) -> bool {
    let found = cuda_gpus(sb) > 0;
    if found {
        eprintln!("SKIPPED: the no-GPU error checks (this machine has a CUDA GPU)");
    }
    found
}

//! Helpers shared by the end-to-end tests: a sandbox registry, the `kiln` binary, outputs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The checkout the tests run in. Read when the tests run (cargo sets it for them), not baked in
/// at compile time: a build reused from another clone of the same commit (CI's warm run) must
/// read this clone's files.
pub fn root() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
    )
}

/// A temporary folder that also serves as the registry of the commands run in it.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn registry(&self) -> PathBuf {
        self.path().join("registry")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write a test file");
        p
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        // .cargo/config.toml sets BURN_DEVICE for the library's unit tests; the binary must
        // stage resumed state on the host by itself (src/signals.rs), so it does not get it.
        c.args(args)
            .current_dir(root())
            .env("KILN_REGISTRY", self.registry())
            .env_remove("BURN_DEVICE");
        // On a WGPU device, burn's autotune at cubecl's default level compiles and times every
        // matmul candidate and probes the device's memory bandwidth first: on lavapipe that is
        // 20 of the 55 seconds a 40-step digits run takes. The tests check what kiln computes,
        // which no candidate changes, so they ask for the fewest candidates.
        if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
            c.env("CUBECL_AUTOTUNE_LEVEL", "minimal");
        }
        c
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("kiln runs")
    }
}

/// How many CUDA devices `kiln devices --json` lists (0 without the `cuda` feature).
pub fn cuda_gpus(sb: &Sandbox) -> usize {
    let o = sb.kiln(&["devices", "--json"]);
    assert_exit(&o, 0);
    json(&o)["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "cuda")
        .count()
}

/// The newest `checkpoints/step-*` folder of a run.
pub fn newest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .max()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn json(o: &Output) -> Value {
    let out = stdout(o);
    let last = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr: {}", stderr(o)));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// A small digits config; `extra` is appended (later keys of a table must come in its own
/// section, so `extra` usually holds whole tables).
pub fn digits_config(sb: &Sandbox, extra: &str) -> PathBuf {
    digits_config_with(sb, "", extra)
}

/// As [`digits_config`], with `model` lines added to the `[model]` table (`hidden = [32]`
/// unless they set `hidden`).
pub fn digits_config_with(sb: &Sandbox, model: &str, extra: &str) -> PathBuf {
    let model = if model.contains("hidden =") {
        model.to_string()
    } else {
        format!("hidden = [32]{model}")
    };
    let text = format!(
        r#"
name = "tiny"
seed = 7
[data]
path = "{}/data/sklearn/digits.csv.gz"
[model]
{model}
{extra}
"#,
        root().display()
    );
    sb.write("tiny.toml", &text)
}

/// A Python that can import `module`: `$KILN_TEST_PYTHON` or `python3`. `None` (the caller says
/// the test was skipped) only outside CI: `.ci/run` installs the packages, and there a missing
/// one fails the test.
pub fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("KILN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide the Python package {module}: set KILN_TEST_PYTHON to a Python with it"
    );
    eprintln!(
        "SKIPPED: no Python with the {module} package ({python}); set KILN_TEST_PYTHON to run this test"
    );
    None
}

/// sha256 of a file, as lowercase hex (what "the same weights" compares: kiln writes the same
/// bytes for the same weights).
pub fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every regular file under `dir` with its sha256 (what "nothing else was touched" compares);
/// lock files are left out (taking a lock is not a change). Empty when `dir` does not exist.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() && p.file_name().unwrap() != ".lock" {
                out.insert(p.clone(), sha256_file(&p));
            }
        }
    }
    out
}

/// A JSON file, parsed.
pub fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", p.display()))
}

/// Names of the entries of a folder, sorted; empty when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The run folders of the sandbox's registry, oldest id first.
pub fn run_dirs(sb: &Sandbox) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(sb.registry().join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Steps of a run's `checkpoints/step-NNNNNNNNN` folders, ascending.
pub fn checkpoint_steps(run_dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = entries(&run_dir.join("checkpoints"))
        .iter()
        .filter_map(|n| n.strip_prefix("step-")?.parse().ok())
        .collect();
    v.sort();
    v
}

/// The folder of a run's checkpoint at `step`.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:09}"))
}

/// Calls `probe` every few milliseconds until it gives a value, and returns it; fails the test,
/// saying `what` was awaited, after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "waited {limit:?} for {what}; it never happened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (up to two minutes) until a run of the sandbox other than `except` has a checkpoint,
/// and returns its folder; fails the test if `child` (the training) ends first.
pub fn wait_for_checkpoint(sb: &Sandbox, child: &mut Child, except: Option<&str>) -> PathBuf {
    wait_until(
        "a checkpoint of the new run",
        Duration::from_secs(120),
        || {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("the training ended ({status}) before its first checkpoint");
            }
            run_dirs(sb).into_iter().find(|r| {
                except.is_none_or(|id| !r.ends_with(id)) && !checkpoint_steps(r).is_empty()
            })
        },
    )
}

/// Waits (up to `limit`) for `child` to end and returns its output; kills it and fails the test
/// otherwise.
pub fn wait_with_deadline(mut child: Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!(
                "{what}: still running after {limit:?}; killed it\nstderr: {}",
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal (`INT`, `KILL`, `STOP`, `CONT`, `USR1`) to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success(), "kill -{sig} {pid} failed");
}

/// The `error:` lines of a command's stderr.
pub fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

/// Whether the sandbox's registry holds no run folder (`runs/` absent or empty).
pub fn no_runs(sb: &Sandbox) -> bool {
    run_dirs(sb).is_empty()
}

/// Whether every thread of a process is stopped (a SIGSTOP took effect).
fn all_threads_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
            // "TID (comm) STATE ...": the state follows the last ')'.
            let state = s.rsplit_once(')').map_or("", |x| x.1).trim_start();
            state.starts_with('T') || state.starts_with('t')
        })
    })
}

/// Freezes a process (SIGSTOP) and returns once every one of its threads has stopped: from
/// then on it writes nothing (no checkpoint is committed, no step taken) until SIGCONT, so what
/// is on disk can be read without racing it.
pub fn freeze(pid: u32) {
    signal(pid, "STOP");
    wait_until("the process to stop", Duration::from_secs(30), || {
        all_threads_stopped(pid).then_some(())
    });
}

/// The UCI Adult file cut in two: the first 22,000 rows to train on, the other 10,561 as the
/// test file (so that the Python checks read the same test rows as kiln).
pub fn adult_files(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(root().join("data/adult/adult.data")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let train = sb.write("adult-train.csv", &(lines[..22_000].join("\n") + "\n"));
    let test = sb.write("adult-test.csv", &(lines[22_000..].join("\n") + "\n"));
    (train, test)
}

/// Trains an adult-income MLP (2 epochs) on [`adult_files`], the `ignore` columns left out of
/// its inputs; returns the config.
pub fn train_adult(sb: &Sandbox, ignore: &str) -> PathBuf {
    let (train, test) = adult_files(sb);
    let config = sb.write(
        "adult.toml",
        &format!(
            r#"
name = "adult"
seed = 3
[data]
path = "{}"
test_path = "{}"
columns = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
           "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
           "hours-per-week", "native-country", "income"]
label = "income"
ignore = [{ignore}]
missing_values = ["?", ""]
impute = "most_frequent"
[data.split]
valid = 0.1
[model]
hidden = [32]
[train]
epochs = 2
batch_size = 128
monitor = "accuracy"
"#,
            train.display(),
            test.display()
        ),
    );
    let o = sb.kiln(&["train", config.to_str().unwrap(), "--quiet"]);
    assert_exit(&o, 0);
    config
}

/// The f32 tensors of a safetensors file, by name.
pub fn tensors_f32(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest absolute difference between two sets of tensors with the same names.
pub fn max_abs_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.1.iter().zip(&y.1).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

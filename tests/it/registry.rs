//! The model registry end to end: versions and aliases, the registry commands, safetensors
//! read by Python, exact resume after SIGKILL, concurrent writers, damage and unsafe input.
//!
//! These tests train real models: run them with `cargo test --release`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn train_json(sb: &Sandbox, args: &[&str]) -> Value {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json"]);
    let o = sb.kiln(&all);
    assert_exit(&o, 0);
    json(&o)
}

fn verify(sb: &Sandbox) -> Value {
    let o = sb.kiln(&["registry", "verify", "--json"]);
    let v = json(&o);
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(
        o.status.code() == Some(0),
        damaged.is_empty(),
        "exit code and report disagree: {v}"
    );
    v
}

fn assert_intact(sb: &Sandbox) {
    let v = verify(sb);
    assert!(
        v["damaged"].as_array().unwrap().is_empty(),
        "verify found damage: {v}"
    );
}

const SMALL: &str = "[train]\nepochs = 3\n[runtime]\nthreads = 1\n";

#[test]
fn versions_aliases_and_the_registry_commands() {
    let sb = Sandbox::new();
    let cfg = digits_config(&sb, SMALL);
    let c = cfg.to_str().unwrap();
    let a = train_json(&sb, &[c]);
    assert_eq!(a["version"], "tiny/v1");
    let b = train_json(&sb, &[c, "--set", "optim.lr=3e-4"]);
    assert_eq!(b["version"], "tiny/v2");
    // A smoke run registers no version.
    let s = train_json(&sb, &[c, "--smoke"]);
    assert!(s["version"].is_null(), "{s}");

    let o = sb.kiln(&["registry", "list", "--json"]);
    assert_exit(&o, 0);
    let list = json(&o);
    let versions = list.as_array().unwrap();
    assert_eq!(versions.len(), 2, "{list}");
    assert_eq!(versions[1]["aliases"].as_array().unwrap()[0], "latest");
    assert_eq!(versions[0]["run_id"], a["run_id"]);
    // `best` sits on the version with the better validation loss (the monitor, lower wins).
    let loss = |v: &Value| v["monitor"]["value"].as_f64().unwrap();
    let best = if loss(&versions[0]) <= loss(&versions[1]) {
        0
    } else {
        1
    };
    assert!(
        versions[best]["aliases"]
            .as_array()
            .unwrap()
            .contains(&"best".into()),
        "{list}"
    );

    // show: the manifest describes the model fully.
    let o = sb.kiln(&["registry", "show", "tiny", "--json"]);
    assert_exit(&o, 0);
    let shown = json(&o);
    assert_eq!(shown["entry"], "tiny/v2");
    let m = &shown["manifest"];
    for f in [
        "model.safetensors",
        "config.toml",
        "model.json",
        "preprocess.json",
    ] {
        let dir = PathBuf::from(shown["dir"].as_str().unwrap());
        assert_eq!(
            m["files"][f]["sha256"].as_str().unwrap(),
            sha256_file(&dir.join(f)),
            "{f}"
        );
    }
    let data = root().join("data/sklearn/digits.csv.gz");
    assert_eq!(m["data"]["files"][0]["sha256"], sha256_file(&data).as_str());
    assert_eq!(m["data"]["split_seed"], 7);
    assert_eq!(m["config"]["optim"]["lr"], 3e-4);
    assert_eq!(m["model_config"]["kind"], "mlp");
    assert_eq!(m["burn_version"], "0.22.1");
    assert_eq!(m["backend"], "flex");
    assert!(m["preprocess"].is_object());

    // tag, resolve by alias, diff, untag, rm.
    let o = sb.kiln(&["registry", "tag", "tiny/v1", "production"]);
    assert_exit(&o, 0);
    let o = sb.kiln(&["registry", "show", "tiny@production", "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["entry"], "tiny/v1");
    let o = sb.kiln(&["registry", "tag", "tiny/v1", "latest"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("moves by itself"), "{}", stderr(&o));
    let o = sb.kiln(&["registry", "diff", "tiny/v1", "tiny/v2", "--json"]);
    assert_exit(&o, 0);
    let d = json(&o);
    let keys: Vec<&str> = d["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["optim.lr"], "{d}");
    assert!(!d["metrics"].as_array().unwrap().is_empty());
    let o = sb.kiln(&["registry", "rm", "tiny/v1"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("production"), "{}", stderr(&o));
    let o = sb.kiln(&["registry", "untag", "tiny", "production"]);
    assert_exit(&o, 0);

    // eval of a version reproduces the run's own test metrics.
    let o = sb.kiln(&["eval", "tiny/v2", "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["metrics"], b["metrics"]["test"]);

    let o = sb.kiln(&["registry", "rm", "tiny/v1"]);
    assert_exit(&o, 0);
    let o = sb.kiln(&["registry", "list", "--json"]);
    assert_eq!(json(&o).as_array().unwrap().len(), 1);
    assert_intact(&sb);
    // Version numbers are never reused, even after removing the newest.
    let o = sb.kiln(&["registry", "rm", "tiny/v2"]);
    assert_exit(&o, 0);
    let c3 = train_json(&sb, &[c]);
    assert_eq!(c3["version"], "tiny/v3");
    let o = sb.kiln(&["registry", "list"]);
    assert!(stdout(&o).contains("tiny/v3"), "{}", stdout(&o));
}

#[test]
fn weights_are_safetensors_that_python_reads() {
    let Some(python) = python_with("safetensors.numpy") else {
        return;
    };
    let sb = Sandbox::new();
    let cfg = digits_config_with(&sb, "\nhidden = [48, 24]", SMALL);
    train_json(&sb, &[cfg.to_str().unwrap()]);
    let file = sb.registry().join("models/tiny/v1/model.safetensors");
    let o = Command::new(python)
        .args([
            "-c",
            "import json, sys, numpy as np\n\
             from safetensors.numpy import load_file\n\
             t = load_file(sys.argv[1])\n\
             print(json.dumps({k: [list(v.shape), str(v.dtype), bool(np.isfinite(v).all()), float(np.abs(v).sum())] for k, v in t.items()}))",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let t = json(&o);
    // digits: 64 inputs, 10 classes; burn's Linear stores weights as [in, out].
    let expect = [
        ("hidden.0.linear.weight", vec![64, 48]),
        ("hidden.0.linear.bias", vec![48]),
        ("hidden.1.linear.weight", vec![48, 24]),
        ("hidden.1.linear.bias", vec![24]),
        ("output.weight", vec![24, 10]),
        ("output.bias", vec![10]),
    ];
    assert_eq!(t.as_object().unwrap().len(), expect.len(), "{t}");
    for (name, shape) in expect {
        let e = &t[name];
        assert_eq!(e[0], serde_json::json!(shape), "{name}: {t}");
        assert_eq!(e[1], "float32");
        assert_eq!(e[2], true, "{name} has non-finite values");
        assert!(e[3].as_f64().unwrap() > 0.0, "{name} is all zeros");
    }
}

/// A small deterministic generator for kill times (the test is reproducible).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn tmp_entries(sb: &Sandbox) -> Vec<String> {
    entries(&sb.registry().join(".tmp"))
}

/// The entries of `<registry>/.tmp` that are writes in progress (`<pid>-<n>-<nanos>-<what>`):
/// not the checkpoints retention retired (`...-retired`) or the entries a deletion moved
/// there (`...-deleted`), which are on their way out, not in.
fn writes_in_progress(sb: &Sandbox) -> Vec<String> {
    tmp_entries(sb)
        .into_iter()
        .filter(|e| !e.ends_with("-retired") && !e.ends_with("-deleted"))
        .collect()
}

#[test]
fn sigkill_twenty_times_then_resume_ends_bit_identical() {
    let sb = Sandbox::new();
    // Dropout, Adam, checkpoints every 2 steps (each one fsynced), last weights kept.
    let cfg = digits_config_with(
        &sb,
        "\nhidden = [128, 128]\ndropout = 0.1",
        "[train]\nepochs = 60\ncheckpoint_every = 2\nrestore_best = false\nkeep_last = 2\nkeep_best = 1\nlog_every = 10\n[runtime]\nthreads = 1\n",
    );
    let c = cfg.to_str().unwrap();
    let full = train_json(&sb, &[c]);
    let full_dir = PathBuf::from(full["run_dir"].as_str().unwrap());
    let want = sha256_file(&full_dir.join("final/model.safetensors"));

    let mut rng = Lcg(2026);
    let mut id: Option<String> = None;
    let mut kills = 0;
    let mut mid_write = 0;
    while kills < 20 {
        let args: Vec<&str> = match &id {
            None => vec!["train", c, "--quiet"],
            Some(id) => vec!["train", "--resume", id, "--quiet"],
        };
        let before = writes_in_progress(&sb);
        let mut child = sb.command(&args).spawn().unwrap();
        // The first session must reach a checkpoint; later ones run a random while.
        if id.is_none() {
            let started = Instant::now();
            let run_dir = loop {
                let run = std::fs::read_dir(sb.registry().join("runs"))
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| !p.ends_with(full["run_id"].as_str().unwrap()));
                if let Some(r) = run.filter(|r| newest_checkpoint(r).is_some()) {
                    break r;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
                std::thread::sleep(Duration::from_millis(5));
            };
            id = Some(run_dir.file_name().unwrap().to_str().unwrap().to_string());
        }
        if kills % 2 == 0 {
            // A random while: kills land wherever the session happens to be.
            std::thread::sleep(Duration::from_millis(60 + rng.below(240)));
        } else {
            // The moment a checkpoint write of this session is seen in progress (it takes a
            // few milliseconds, fsyncs included): a kill in mid-write, by event, not by luck.
            let started = Instant::now();
            while !writes_in_progress(&sb).iter().any(|e| !before.contains(e)) {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "session {kills} started no checkpoint write in a minute"
                );
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("session {kills} ended before the kill ({status}); make the run longer");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // A write the kill interrupted leaves its folder; a retired checkpoint or a deletion
        // does not count (it was complete, and on its way out).
        let after = writes_in_progress(&sb);
        if after.iter().any(|e| !before.contains(e)) {
            mid_write += 1;
        }
        // After every kill the registry is intact.
        assert_intact(&sb);
    }
    eprintln!("{kills} SIGKILLs, {mid_write} of them during a checkpoint write");
    assert!(
        mid_write >= 1,
        "no kill landed during a checkpoint write ({kills} kills)"
    );
    let id = id.unwrap();
    let o = sb.kiln(&["train", "--resume", &id, "--json"]);
    assert_exit(&o, 0);
    let resumed = json(&o);
    assert_eq!(resumed["steps"], full["steps"]);
    let run_dir = PathBuf::from(resumed["run_dir"].as_str().unwrap());
    assert_eq!(
        sha256_file(&run_dir.join("final/model.safetensors")),
        want,
        "after {kills} SIGKILLs ({mid_write} during a checkpoint write) the final weights differ"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    // Each session that got as far as loading its checkpoint recorded it (a kill during a
    // session's start-up comes before that).
    let resumed = info["lineage"]["resumed_from"].as_array().unwrap().len();
    assert!((1..=kills).contains(&resumed), "{resumed} resumes recorded");
    // gc removes the killed writers' leftovers.
    let o = sb.kiln(&["registry", "gc"]);
    assert_exit(&o, 0);
    assert!(tmp_entries(&sb).is_empty(), "{:?}", tmp_entries(&sb));
    assert_intact(&sb);
}

/// The book, "The model registry" (crash safety): the registry lock makes version numbers and
/// aliases safe with concurrent writers; `latest` and `best` move by themselves.
#[test]
fn two_trainings_into_one_registry_at_once() {
    let sb = Sandbox::new();
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 8\ncheckpoint_every = 5\n[runtime]\nthreads = 1\n",
    );
    let c = cfg.to_str().unwrap();
    // The test holds the registry lock while the trainings run. Each one trains, commits its
    // final weights, then waits for the lock to register its version: once every run has its
    // `final/`, all the registrations are pending at once, and letting go makes them race.
    // (kiln waits up to KILN_REGISTRY_LOCK_WAIT for the lock: ten minutes here, past any
    // deadline of the test's.)
    std::fs::create_dir_all(sb.registry()).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sb.registry().join(".lock"))
        .unwrap();
    lock.lock().expect("the test takes the registry lock");
    let mut children: Vec<_> = ["1", "2", "3"]
        .iter()
        .map(|seed| {
            sb.command(&[
                "train",
                c,
                "--quiet",
                "--json",
                "--set",
                &format!("seed={seed}"),
            ])
            .env("KILN_REGISTRY_LOCK_WAIT", "600")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    wait_until(
        "all three runs to commit their final weights",
        Duration::from_secs(300),
        || {
            for child in children.iter_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("a training ended ({status}) while the registry was locked");
                }
            }
            let finals = run_dirs(&sb)
                .iter()
                .filter(|r| r.join("final/manifest.json").is_file())
                .count();
            (finals == 3).then_some(())
        },
    );
    assert!(
        entries(&sb.registry().join("models/tiny"))
            .iter()
            .all(|e| !e.starts_with('v')),
        "a version was registered while the test held the registry lock"
    );
    drop(lock);
    let mut versions = Vec::new();
    for child in children {
        let o = wait_with_deadline(child, Duration::from_secs(90), "a registering training");
        assert_exit(&o, 0);
        versions.push(json(&o)["version"].as_str().unwrap().to_string());
    }
    versions.sort();
    assert_eq!(versions, vec!["tiny/v1", "tiny/v2", "tiny/v3"]);
    let o = sb.kiln(&["registry", "list", "--json"]);
    assert_exit(&o, 0);
    let list = json(&o);
    let runs: std::collections::BTreeSet<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs.len(), 3, "each version comes from its own run: {list}");
    // `latest` on the highest version; `best` on the version with the best monitored value
    // (the first of equals), read from each version's own manifest.
    let mut best: Option<(u64, f64)> = None;
    for v in 1..=3u64 {
        let o = sb.kiln(&["registry", "show", &format!("tiny/v{v}"), "--json"]);
        assert_exit(&o, 0);
        let monitor = json(&o)["manifest"]["monitor"].clone();
        assert_eq!(monitor["metric"], "loss", "{monitor}");
        assert_eq!(monitor["higher_is_better"], false, "{monitor}");
        let value = monitor["value"].as_f64().unwrap();
        if best.is_none_or(|(_, b)| value < b) {
            best = Some((v, value));
        }
    }
    let best = best.unwrap().0;
    let aliases_of = |v: u64| -> Vec<String> {
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["version"].as_u64() == Some(v))
            .unwrap_or_else(|| panic!("no v{v} in {list}"));
        entry["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    for v in 1..=3u64 {
        let aliases = aliases_of(v);
        assert_eq!(
            aliases.contains(&"latest".to_string()),
            v == 3,
            "v{v} has {aliases:?}: latest belongs on v3; {list}"
        );
        assert_eq!(
            aliases.contains(&"best".to_string()),
            v == best,
            "v{v} has {aliases:?}: best belongs on v{best}; {list}"
        );
    }
    assert_intact(&sb);
    assert!(verify(&sb)["checked"].as_u64().unwrap() >= 6);
}

/// Trains `tiny` to a version and returns the registry's path to its weights file.
fn one_version(sb: &Sandbox) -> PathBuf {
    let cfg = digits_config(sb, SMALL);
    train_json(sb, &[cfg.to_str().unwrap()]);
    sb.registry().join("models/tiny/v1/model.safetensors")
}

#[test]
fn damaged_files_are_named_and_nothing_else_is_touched() {
    let sb = Sandbox::new();
    let weights = one_version(&sb);
    let good = std::fs::read(&weights).unwrap();
    type Damage = Box<dyn Fn(&Path)>;
    let cases: [(&str, Damage, &str); 3] = [
        (
            "flipped byte",
            Box::new(|p: &Path| {
                let mut b = std::fs::read(p).unwrap();
                let i = b.len() - 7;
                b[i] ^= 0x40;
                std::fs::write(p, b).unwrap();
            }),
            "sha256",
        ),
        (
            "truncated",
            Box::new(|p: &Path| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() / 2]).unwrap();
            }),
            "truncated",
        ),
        (
            "missing",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
            "missing",
        ),
    ];
    for (what, damage, word) in cases {
        damage(&weights);
        let before = snapshot(&sb.registry());
        let v = verify(&sb);
        let damaged = v["damaged"].as_array().unwrap();
        assert_eq!(damaged.len(), 1, "{what}: {v}");
        assert_eq!(damaged[0]["path"], weights.to_str().unwrap(), "{what}");
        assert!(
            damaged[0]["problem"].as_str().unwrap().contains(word),
            "{what}: {v}"
        );
        let o = sb.kiln(&["registry", "verify"]);
        assert_exit(&o, 1);
        assert!(stdout(&o).contains("DAMAGED"), "{}", stdout(&o));
        // Loading refuses it, naming the file, in one line.
        let o = sb.kiln(&["eval", "tiny/v1"]);
        assert_exit(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains("model.safetensors") && err.lines().count() == 1,
            "{what}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            snapshot(&sb.registry()),
            before,
            "{what}: verify and eval changed the registry"
        );
        std::fs::write(&weights, &good).unwrap();
        assert_intact(&sb);
    }
}

#[test]
fn resume_falls_back_past_a_damaged_checkpoint() {
    let sb = Sandbox::new();
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 300\ncheckpoint_every = 3\nkeep_last = 3\n[runtime]\nthreads = 1\n",
    );
    let mut child = sb
        .command(&["train", cfg.to_str().unwrap(), "--quiet"])
        .spawn()
        .unwrap();
    let run_dir = wait_for_checkpoints(&sb, 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let newest = newest_checkpoint(&run_dir).unwrap();
    let optim = newest.join("optim.bpk");
    let mut b = std::fs::read(&optim).unwrap();
    b[10] ^= 1;
    std::fs::write(&optim, b).unwrap();
    let id = run_dir.file_name().unwrap().to_str().unwrap();
    let o = sb.kiln(&["train", "--resume", id, "--quiet"]);
    assert_exit(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains("skipping a damaged checkpoint") && err.contains("optim.bpk"),
        "{err}"
    );
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    let from = info["lineage"]["resumed_from"][0].as_str().unwrap();
    assert!(
        !from.ends_with(newest.file_name().unwrap().to_str().unwrap()),
        "resumed from the damaged checkpoint {from}"
    );
    // A checkpoint is a reference of its own.
    let label = format!("{id}@{}", latest_name(&run_dir));
    let o = sb.kiln(&["registry", "show", &label, "--json"]);
    assert_exit(&o, 0);
    assert_eq!(json(&o)["entry"], label.as_str());
    // The damaged one was set aside, and gc removes it.
    assert!(!newest.exists());
    let o = sb.kiln(&["registry", "gc", "--json"]);
    assert_exit(&o, 0);
    assert!(json(&o)["removed"].to_string().contains("damaged-step-"));
    assert_intact(&sb);
}

#[test]
fn resume_refuses_a_changed_config_or_data() {
    let sb = Sandbox::new();
    // A plain-text copy of digits, so that the test can change a row.
    let data = sb.path().join("digits.csv");
    let text = Command::new("gzip")
        .args([
            "-dc",
            root().join("data/sklearn/digits.csv.gz").to_str().unwrap(),
        ])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&data, &text).unwrap();
    let cfg = sb.write(
        "own.toml",
        &format!(
            "name = \"own\"\n[data]\npath = \"{}\"\n[model]\nhidden = [16]\n[train]\nepochs = 400\ncheckpoint_every = 5\n[runtime]\nthreads = 1\n",
            data.display()
        ),
    );
    let mut child = sb
        .command(&["train", cfg.to_str().unwrap(), "--quiet"])
        .spawn()
        .unwrap();
    let run_dir = wait_for_checkpoints(&sb, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    // The run's config edited by hand.
    let config = run_dir.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("lr = 0.001", "lr = 0.01")).unwrap();
    let o = sb.kiln(&["train", "--resume", &id]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("config.toml changed") && stderr(&o).contains("optim.lr"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&config, original).unwrap();
    // The data changed under the run: one more row.
    let first = text.split(|&b| b == b'\n').next().unwrap().to_vec();
    let mut changed = text.clone();
    changed.extend_from_slice(&first);
    changed.push(b'\n');
    std::fs::write(&data, changed).unwrap();
    let o = sb.kiln(&["train", "--resume", &id]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("digits.csv changed since"),
        "{}",
        stderr(&o)
    );
    assert_intact(&sb);
}

fn latest_name(run_dir: &Path) -> String {
    let p = newest_checkpoint(run_dir).unwrap();
    p.file_name().unwrap().to_str().unwrap().to_string()
}

/// Waits (up to a minute) for the sandbox's first run to have `n` checkpoints; its folder.
fn wait_for_checkpoints(sb: &Sandbox, n: usize) -> PathBuf {
    let started = Instant::now();
    loop {
        let run = std::fs::read_dir(sb.registry().join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .next();
        let count = |r: &PathBuf| {
            std::fs::read_dir(r.join("checkpoints")).map_or(0, |d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
                    .count()
            })
        };
        if let Some(r) = run.filter(|r| count(r) >= n) {
            return r;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bad_references_and_links_are_refused() {
    let sb = Sandbox::new();
    let weights = one_version(&sb);
    let before = snapshot(&sb.registry());
    for (args, code, says) in [
        (vec!["registry", "show", "../../etc/passwd"], 2, "not valid"),
        (vec!["registry", "show", "tiny/../../x"], 2, "not valid"),
        (vec!["registry", "show", "tiny/v9"], 2, "no model or run"),
        (
            vec!["registry", "show", "tinny@latest"],
            2,
            "did you mean \"tiny\"",
        ),
        (
            vec!["registry", "tag", "tiny/v1", "../evil"],
            2,
            "not valid",
        ),
        (vec!["registry", "tag", "tiny/v1", "a/b"], 2, "not valid"),
        (
            vec!["registry", "untag", "tiny", "production"],
            2,
            "no model or run",
        ),
        (vec!["registry", "rm", "../runs"], 2, "not valid"),
        (vec!["eval", "nope/v1"], 2, "no model or run"),
        (
            vec!["registry", "verify", "--registry", "/nonexistent/reg"],
            2,
            "no registry at /nonexistent/reg",
        ),
    ] {
        let o = sb.kiln(&args);
        assert_exit(&o, code);
        let err = stderr(&o);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let cfg = digits_config(&sb, SMALL);
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--init-from", "../../x"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("not valid"), "{}", stderr(&o));
    assert_eq!(
        snapshot(&sb.registry()),
        before,
        "refused commands changed the registry"
    );

    // A link planted in the registry is never followed.
    let outside = sb.write("outside.bin", "not weights");
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink(&outside, &weights).unwrap();
    let o = sb.kiln(&["eval", "tiny/v1"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    let v = verify(&sb);
    assert!(v.to_string().contains("not a regular file"), "{v}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "not weights");
}

/// Every command that reads a model resolves it the same way (the registry's one resolver):
/// a model name, alias or version, a run id, `latest` and a run folder each work for `eval`,
/// `--init-from` and `registry show`, and a reference that names nothing is the same usage
/// error (exit 2) for all of them; `runs show` takes runs only.
#[test]
fn every_command_takes_the_same_references() {
    let sb = Sandbox::new();
    one_version(&sb);
    let run_dir = run_dirs(&sb).pop().expect("a run");
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let folder = run_dir.to_str().unwrap().to_string();
    let cfg = digits_config(&sb, "[train]\nmax_steps = 1\n[runtime]\nthreads = 1\n");
    let cfg = cfg.to_str().unwrap();
    for reference in [
        "tiny",
        "tiny@latest",
        "tiny/v1",
        id.as_str(),
        "latest",
        folder.as_str(),
    ] {
        let o = sb.kiln(&["eval", reference, "--json"]);
        assert_exit(&o, 0);
        let o = sb.kiln(&["registry", "show", reference, "--json"]);
        assert_exit(&o, 0);
        let o = sb.kiln(&["train", cfg, "--init-from", reference, "--quiet"]);
        assert_exit(&o, 0);
    }
    // `latest` is the newest run: now a one-step run made from the model.
    let o = sb.kiln(&["runs", "show", "latest", "--json"]);
    assert_exit(&o, 0);
    assert_ne!(json(&o)["run"]["id"], id.as_str(), "{}", stdout(&o));
    for args in [
        vec!["eval", "tinyy"],
        vec!["registry", "show", "tinyy"],
        vec!["train", cfg, "--init-from", "tinyy"],
    ] {
        let o = sb.kiln(&args);
        assert_exit(&o, 2);
        let err = stderr(&o);
        assert!(err.contains("no model or run \"tinyy\""), "{args:?}: {err}");
        assert!(err.contains("did you mean \"tiny\""), "{args:?}: {err}");
    }
    let o = sb.kiln(&["runs", "show", "tiny"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("no run \"tiny\""), "{}", stderr(&o));
}

#[test]
fn init_from_records_lineage_and_checks_the_architecture() {
    let sb = Sandbox::new();
    one_version(&sb);
    let cfg = digits_config(&sb, SMALL);
    let t = train_json(&sb, &[cfg.to_str().unwrap(), "--init-from", "tiny@latest"]);
    assert_eq!(t["version"], "tiny/v2");
    let o = sb.kiln(&["registry", "show", "tiny/v2", "--json"]);
    let m = &json(&o)["manifest"];
    let init = &m["lineage"]["init_from"];
    assert_eq!(init["reference"], "tiny@latest");
    assert_eq!(init["resolved"], "tiny/v1");
    assert_eq!(
        init["weights_sha256"],
        sha256_file(&sb.registry().join("models/tiny/v1/model.safetensors")).as_str()
    );
    // Fine-tuning starts where v1 ended: its first logged loss is nearer v1's final training
    // loss than a fresh start's first logged loss.
    let first_loss = |run: &str| -> f64 {
        let text =
            std::fs::read_to_string(sb.registry().join("runs").join(run).join("metrics.jsonl"))
                .unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["split"] == "train" && v["loss"].is_number())
            .unwrap()["loss"]
            .as_f64()
            .unwrap()
    };
    let o = sb.kiln(&["registry", "show", "tiny/v1", "--json"]);
    let v1 = json(&o)["manifest"].clone();
    let v1_end = v1["metrics"]["train_loss"].as_f64().unwrap();
    let fresh = first_loss(v1["run_id"].as_str().unwrap());
    let tuned = first_loss(t["run_id"].as_str().unwrap());
    assert!(
        tuned < (fresh + v1_end) / 2.0,
        "--init-from did not start from the trained weights: first loss {tuned}, fresh {fresh}, v1 ended at {v1_end}"
    );
    // Another architecture: a clear error naming a tensor that differs and both its shapes
    // (the book, "The command line": "a mismatch names the tensor and both shapes"), and no run
    // left behind.
    let runs_before = run_dirs(&sb);
    let other = digits_config_with(&sb, "\nhidden = [16]", SMALL);
    let o = sb.kiln(&["train", other.to_str().unwrap(), "--init-from", "tiny/v1"]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("same architecture") && err.contains("tiny/v1"),
        "{err}"
    );
    // v1 has `hidden = [32]` (digits_config's default), the new model `hidden = [16]`; digits
    // has 64 inputs and 10 classes, and burn's Linear stores its weight as [in, out]. Each
    // tensor whose shape differs, as trainer/src/weights.rs words it ("{path} is {found:?} in
    // the file, {expected:?} in the model"); kiln names the first it meets, and all three
    // differ.
    let mismatches = [
        ("hidden.0.linear.weight", "[64, 32]", "[64, 16]"),
        ("hidden.0.linear.bias", "[32]", "[16]"),
        ("output.weight", "[32, 10]", "[16, 10]"),
    ];
    let named: Vec<String> = mismatches
        .iter()
        .map(|(t, file, model)| format!("{t} is {file} in the file, {model} in the model"))
        .collect();
    assert!(
        named.iter().any(|n| err.contains(n.as_str())),
        "the error names no differing tensor with both shapes (one of {named:?}):\n{err}"
    );
    assert_eq!(error_lines(&o).len(), 1, "{err}");
    assert_eq!(
        run_dirs(&sb),
        runs_before,
        "a refused --init-from left a run behind"
    );
}

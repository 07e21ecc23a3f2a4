//! What the book promises a user, each checked end to end through the `kiln` binary: config
//! and data errors that must be clear (not a crash), retention and `restore_best` on a real run,
//! the registry's clean-up and refusals, and a checkpoint write error.
//!
//! These tests train real models: run them with `cargo test --release`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// The one `error:` line of a refused command, which must mention every word of `says`.
fn one_error_line(o: &std::process::Output, says: &[&str]) -> String {
    let errors = error_lines(o);
    assert_eq!(errors.len(), 1, "one error line expected:\n{}", stderr(o));
    for word in says {
        assert!(
            errors[0].contains(word),
            "{word:?} missing from {:?}",
            errors[0]
        );
    }
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
    errors[0].clone()
}

/// The book, "Exit codes": a config error is one `error:` line and exit code 2, never a crash.
/// A hidden layer of four billion units would need terabytes for its weights alone: kiln must
/// say so before allocating anything (not abort with exit code 134 when the allocation
/// fails), and leave no run behind.
#[test]
fn a_model_too_large_for_memory_is_a_config_error() {
    let sb = Sandbox::new();
    let cfg = digits_config(&sb, "[train]\nepochs = 1\n");
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&["train", c, "--set", "model.hidden=[4000000000]"]);
    assert_ne!(o.status.code(), Some(134), "kiln aborted: {}", stderr(&o));
    assert_exit(&o, 2);
    one_error_line(&o, &["model.hidden", "memory"]);
    assert!(
        no_runs(&sb),
        "a refused config left a run: {:?}",
        run_dirs(&sb)
    );
    let o = sb.kiln(&["validate", c, "--set", "model.hidden=[4000000000]"]);
    assert_exit(&o, 2);
    one_error_line(&o, &["model.hidden", "memory"]);
}

/// The memory check counts the batch a run will really use: a `train.batch_size` larger than
/// the training split is full-batch training, not a model too large for memory.
#[test]
fn a_batch_larger_than_the_data_is_full_batch_training() {
    let sb = Sandbox::new();
    let cfg = digits_config(&sb, "[train]\nepochs = 1\nbatch_size = 1000000000\n");
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--smoke", "--json"]);
    assert_exit(&o, 0);
    assert_eq!(
        json(&o)["steps"],
        1,
        "one batch holds the whole (smoke) split"
    );
}

/// The book, "Configs": files are checked for existence before any work starts; a folder given
/// as the data file is named as one (not "no such file", which would send the user looking
/// for a missing path).
#[test]
fn a_folder_as_the_data_file_is_named_as_a_folder() {
    let sb = Sandbox::new();
    let folder = sb.path().join("data-folder");
    std::fs::create_dir(&folder).unwrap();
    let cfg = sb.write(
        "folder.toml",
        &format!(
            "name = \"folder\"\n[data]\npath = {:?}\n[train]\nepochs = 1\n",
            folder.display().to_string()
        ),
    );
    let c = cfg.to_str().unwrap();
    let o = sb.kiln(&["validate", c]);
    assert_exit(&o, 2);
    let line = one_error_line(&o, &["data.path", "is a directory"]);
    assert!(!line.contains("no such file"), "{line}");
    let o = sb.kiln(&["train", c]);
    assert_exit(&o, 2);
    one_error_line(&o, &["data.path", "is a directory"]);
    assert!(
        no_runs(&sb),
        "a refused config left a run: {:?}",
        run_dirs(&sb)
    );
}

/// A small, real-looking table: 60 rows, 3 numeric features and 2 classes (`yes`, `no`, or
/// 1, 0 with `numeric_labels`), the label first or last.
fn small_table(label_first: bool, numeric_labels: bool) -> Vec<String> {
    (0..60u32)
        .map(|i| {
            let x1 = f64::from((i * 37) % 101) / 10.0;
            let x2 = f64::from((i * 53) % 97) / 20.0;
            let x3 = f64::from(i % 7) * 0.5 + 0.25;
            let positive = x1 + x2 > 7.5;
            let label = match (numeric_labels, positive) {
                (true, true) => "1",
                (true, false) => "0",
                (false, true) => "yes",
                (false, false) => "no",
            };
            if label_first {
                format!("{label},{x1},{x2},{x3}")
            } else {
                format!("{x1},{x2},{x3},{label}")
            }
        })
        .collect()
}

const BOM: &str = "\u{feff}";

/// The book, "Configs" (`data.header`, `data.label` by name): a CSV saved by a spreadsheet
/// program often starts with a UTF-8 byte-order mark. The first column's name must not carry
/// it, so `data.label = "kind"` finds the column; and without a header, the first cell after
/// the mark is the number it reads as.
#[test]
fn a_byte_order_mark_does_not_change_the_first_column() {
    let sb = Sandbox::new();
    // With a header whose first column, the label, is named after the mark.
    let mut text = format!("{BOM}kind,x1,x2,x3\n");
    for row in small_table(true, false) {
        text.push_str(&row);
        text.push('\n');
    }
    let data = sb.write("bom-header.csv", &text);
    assert_eq!(&std::fs::read(&data).unwrap()[..3], b"\xef\xbb\xbf");
    let cfg = sb.write(
        "bom.toml",
        &format!(
            "name = \"bom\"\n[data]\npath = {:?}\nheader = true\nlabel = \"kind\"\n[model]\nhidden = [8]\n",
            data.display().to_string()
        ),
    );
    let o = sb.kiln(&["validate", cfg.to_str().unwrap()]);
    assert_exit(&o, 0);
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--smoke", "--json"]);
    assert_exit(&o, 0);
    let run = json(&o);
    assert_eq!(run["status"], "completed", "{run}");
    let pre = read_json(&Path::new(run["run_dir"].as_str().unwrap()).join("preprocess.json"));
    let names: Vec<&str> = pre["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x1", "x2", "x3"], "{pre}");

    // Without a header: the first cell of the file is a number after the mark.
    let rows = small_table(false, true);
    let plain: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let marked = sb.write("bom-plain.csv", &format!("{BOM}{plain}"));
    let unmarked = sb.write("no-bom.csv", &plain);
    let cfg = sb.write(
        "bom-plain.toml",
        &format!(
            "name = \"bom-plain\"\n[data]\npath = {:?}\n[model]\nhidden = [8]\n",
            marked.display().to_string()
        ),
    );
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--smoke", "--json"]);
    assert_exit(&o, 0);
    let run = json(&o);
    assert_eq!(run["status"], "completed", "{run}");
    // The marked file predicts exactly as the same file without the mark: its first cell is
    // the number written there, not a missing or unreadable value.
    let id = run["run_id"].as_str().unwrap();
    let predict = |input: &Path| {
        let o = sb.kiln(&["predict", id, "--input", input.to_str().unwrap()]);
        assert_exit(&o, 0);
        stdout(&o)
    };
    let (a, b) = (predict(&marked), predict(&unmarked));
    assert_eq!(a.lines().count(), 61, "{a}");
    assert_eq!(
        a, b,
        "the byte-order mark changed the first row's prediction"
    );
}

/// Trains with `sets` on the digits config of `sb` and returns the `--json` result.
fn train(sb: &Sandbox, cfg: &Path, sets: &[&str]) -> Value {
    let mut args = vec!["train", cfg.to_str().unwrap(), "--json"];
    for &s in sets {
        args.extend_from_slice(&["--set", s]);
    }
    let o = sb.kiln(&args);
    assert_exit(&o, 0);
    json(&o)
}

/// Digits with half of it held out for validation and a fast learning rate: the small training
/// split is overfitted within a few epochs, after which the validation loss rises, so the best
/// validation comes well before the last.
fn overfitting_config(sb: &Sandbox, train: &str) -> PathBuf {
    digits_config_with(
        sb,
        "\nhidden = [64]",
        &format!(
            "[data.split]\nvalid = 0.5\ntest = 0.1\n[train]\n{train}\n[optim]\nlr = 0.01\n[runtime]\nthreads = 1\n"
        ),
    )
}

/// The book, config reference, `train.restore_best`: "keep and evaluate the best weights by
/// `monitor`, not the last", and the model registered is that one.
#[test]
fn restore_best_keeps_the_best_weights_and_without_it_the_last() {
    let sb = Sandbox::new();
    let cfg = overfitting_config(&sb, "epochs = 40\nkeep_best = 1\nkeep_last = 1");
    let run = train(&sb, &cfg, &[]);
    let run_dir = PathBuf::from(run["run_dir"].as_str().unwrap());
    let last = run["steps"].as_u64().unwrap();
    let steps = checkpoint_steps(&run_dir);
    assert_eq!(steps.last(), Some(&last), "{steps:?}");
    let state = read_json(&checkpoint_dir(&run_dir, last).join("state.json"));
    let best = state["best_step"]
        .as_u64()
        .unwrap_or_else(|| panic!("no best step: {state}"));
    assert_ne!(
        best, last,
        "the best validation was the last one ({state}): this test needs a run whose best comes earlier; raise optim.lr or train.epochs"
    );
    // Retention kept the newest checkpoint and the best one, nothing else.
    assert_eq!(steps, vec![best, last], "keep_last = 1, keep_best = 1");
    let final_sha = sha256_file(&run_dir.join("final/model.safetensors"));
    assert_eq!(
        final_sha,
        sha256_file(&checkpoint_dir(&run_dir, best).join("model.safetensors")),
        "final/ is not the weights of the best checkpoint (step {best})"
    );
    assert_eq!(
        final_sha,
        sha256_file(&checkpoint_dir(&run_dir, last).join("best.safetensors")),
        "final/ is not the best weights the last checkpoint carries"
    );
    let version = run["version"].as_str().unwrap();
    assert_eq!(
        final_sha,
        sha256_file(
            &sb.registry()
                .join("models")
                .join(version)
                .join("model.safetensors")
        ),
        "the registered version {version} is not the best weights"
    );

    // Without it, the last weights.
    let run = train(&sb, &cfg, &["train.restore_best=false"]);
    let run_dir = PathBuf::from(run["run_dir"].as_str().unwrap());
    let last = run["steps"].as_u64().unwrap();
    let final_sha = sha256_file(&run_dir.join("final/model.safetensors"));
    assert_eq!(
        final_sha,
        sha256_file(&checkpoint_dir(&run_dir, last).join("model.safetensors")),
        "with restore_best = false, final/ is not the last checkpoint's weights"
    );
    let best = read_json(&checkpoint_dir(&run_dir, last).join("state.json"))["best_step"]
        .as_u64()
        .unwrap();
    assert_ne!(
        final_sha,
        sha256_file(&checkpoint_dir(&run_dir, best).join("model.safetensors")),
        "the best and the last weights are the same: restore_best decides nothing here"
    );
}

/// The checkpoint steps a run of `steps` optimizer steps and `epochs` full epochs wrote with
/// `checkpoint_every`: each `checkpoint_every` step before the last, and each epoch's end.
fn written_checkpoints(steps: u64, epochs: u64, every: u64) -> BTreeSet<u64> {
    assert!(
        steps.is_multiple_of(epochs),
        "{steps} steps in {epochs} epochs"
    );
    let per_epoch = steps / epochs;
    (1..steps)
        .filter(|s| s.is_multiple_of(every))
        .chain((1..=epochs).map(|e| e * per_epoch))
        .collect()
}

/// The book, "The model registry", retention: each run keeps its newest `train.keep_last`
/// checkpoints and the `train.keep_best` with the best monitored value, and nothing else.
#[test]
fn retention_keeps_the_newest_and_the_best_checkpoints() {
    let sb = Sandbox::new();
    let epochs = 8;
    let cfg = overfitting_config(
        &sb,
        &format!("epochs = {epochs}\ncheckpoint_every = 5\nkeep_last = 2\nkeep_best = 1"),
    );
    for keep_best in [1u64, 0] {
        let set = format!("train.keep_best={keep_best}");
        let run = train(&sb, &cfg, &[set.as_str()]);
        let run_dir = PathBuf::from(run["run_dir"].as_str().unwrap());
        let steps = run["steps"].as_u64().unwrap();
        assert_eq!(run["epochs"], epochs, "{run}");
        let written = written_checkpoints(steps, epochs, 5);
        let newest_two: BTreeSet<u64> = written.iter().rev().take(2).copied().collect();
        let mut expected = newest_two.clone();
        let state = read_json(&checkpoint_dir(&run_dir, steps).join("state.json"));
        if keep_best == 1 {
            // Validations come at epoch ends; the best is the first with the lowest loss.
            let best = state["best_step"].as_u64().unwrap();
            assert!(written.contains(&best), "best step {best} not a checkpoint");
            expected.insert(best);
            let manifest = read_json(&checkpoint_dir(&run_dir, best).join("manifest.json"));
            let valid_losses: Vec<f64> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|v| v["split"] == "valid")
                .map(|v| v["loss"].as_f64().unwrap())
                .collect();
            let lowest = valid_losses.iter().copied().fold(f64::INFINITY, f64::min);
            assert_eq!(
                manifest["monitor"]["value"].as_f64(),
                Some(lowest),
                "the kept best checkpoint (step {best}) is not the one with the lowest validation loss {valid_losses:?}"
            );
        }
        let kept: BTreeSet<u64> = checkpoint_steps(&run_dir).into_iter().collect();
        assert_eq!(
            kept, expected,
            "keep_last = 2, keep_best = {keep_best}: written {written:?}"
        );
        assert_eq!(
            entries(&run_dir.join("checkpoints")).len(),
            expected.len(),
            "something else is in the checkpoints folder: {:?}",
            entries(&run_dir.join("checkpoints"))
        );
    }
}

/// Copies the files of a (flat) folder.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A process id that is not running: a child this test started and waited for.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// The book, "The model registry", retention and commands: `kiln registry gc` removes unfinished
/// writes of dead processes and, in runs not training now, checkpoints beyond retention and
/// damaged ones a resume set aside; `--dry-run` lists what it would remove and changes nothing.
#[test]
fn gc_dry_run_lists_what_gc_then_removes() {
    let sb = Sandbox::new();
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 3\ncheckpoint_every = 2\nkeep_last = 5\nkeep_best = 0\n[runtime]\nthreads = 1\n",
    );
    let run = train(&sb, &cfg, &[]);
    let run_dir = PathBuf::from(run["run_dir"].as_str().unwrap());
    let steps = checkpoint_steps(&run_dir);
    assert_eq!(steps.len(), 5, "keep_last = 5: {steps:?}");
    let reg = sb.registry();
    // Garbage as it arises: a killed writer's folder in .tmp; a damaged checkpoint a resume
    // moved aside; a checkpoint beyond the run's retention (an older step, as a writer killed
    // between a commit and its retention leaves).
    let dead = dead_pid();
    let tmp_dead = reg.join(".tmp").join(format!("{dead}-0-0-step-000000004"));
    std::fs::create_dir_all(&tmp_dead).unwrap();
    std::fs::write(tmp_dead.join("model.safetensors"), b"half a file").unwrap();
    let oldest = checkpoint_dir(&run_dir, steps[0]);
    let damaged = run_dir
        .join("checkpoints")
        .join(format!("damaged-step-{:09}-{dead}", steps[0]));
    copy_dir(&oldest, &damaged);
    let beyond = checkpoint_dir(&run_dir, 1);
    copy_dir(&oldest, &beyond);
    // A write in progress of a live process (this one) stays.
    let tmp_live = reg
        .join(".tmp")
        .join(format!("{}-0-0-step-000000006", std::process::id()));
    std::fs::create_dir_all(&tmp_live).unwrap();
    std::fs::write(tmp_live.join("model.safetensors"), b"being written").unwrap();
    let expected: BTreeSet<String> = [&tmp_dead, &damaged, &beyond]
        .iter()
        .map(|p| p.display().to_string())
        .collect();

    let before = snapshot(&reg);
    let o = sb.kiln(&["registry", "gc", "--dry-run", "--json"]);
    assert_exit(&o, 0);
    let dry = json(&o);
    let listed: BTreeSet<String> = dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, expected, "what --dry-run would remove");
    assert_eq!(snapshot(&reg), before, "--dry-run changed the registry");
    for p in [&tmp_dead, &damaged, &beyond, &tmp_live] {
        assert!(p.is_dir(), "--dry-run removed {}", p.display());
    }
    let o = sb.kiln(&["registry", "gc", "--dry-run"]);
    assert_exit(&o, 0);
    for p in &expected {
        assert!(
            stdout(&o).contains(&format!("would remove {p}")),
            "{p} not listed:\n{}",
            stdout(&o)
        );
    }
    assert_eq!(snapshot(&reg), before, "--dry-run changed the registry");

    let o = sb.kiln(&["registry", "gc", "--json"]);
    assert_exit(&o, 0);
    let removed: BTreeSet<String> = json(&o)["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        removed, listed,
        "gc removed other things than --dry-run listed"
    );
    for p in [&tmp_dead, &damaged, &beyond] {
        assert!(!p.exists(), "gc left {}", p.display());
    }
    assert!(tmp_live.is_dir(), "gc removed a live process's write");
    let gone: Vec<&PathBuf> = vec![&tmp_dead, &damaged, &beyond];
    let mut rest = before.clone();
    rest.retain(|p, _| !gone.iter().any(|g| p.starts_with(g)));
    assert_eq!(snapshot(&reg), rest, "gc touched something it did not list");
    assert_eq!(
        checkpoint_steps(&run_dir),
        steps,
        "gc removed kept checkpoints"
    );
    std::fs::remove_dir_all(&tmp_live).unwrap();
    let o = sb.kiln(&["registry", "verify", "--json"]);
    assert_exit(&o, 0);
    assert!(json(&o)["damaged"].as_array().unwrap().is_empty());
}

/// The book, "The model registry", commands: `rm MODEL` of a version is refused while an alias
/// set by `tag` points at it (changing nothing), and with `--force` removes it and the alias.
#[test]
fn rm_of_a_tagged_version_needs_force_and_drops_the_alias() {
    let sb = Sandbox::new();
    let cfg = digits_config(&sb, "[train]\nepochs = 1\n[runtime]\nthreads = 1\n");
    train(&sb, &cfg, &[]);
    train(&sb, &cfg, &["optim.lr=3e-4"]);
    assert_exit(&sb.kiln(&["registry", "tag", "tiny/v1", "production"]), 0);
    let before = snapshot(&sb.registry());
    let o = sb.kiln(&["registry", "rm", "tiny/v1"]);
    assert_exit(&o, 1);
    one_error_line(&o, &["tiny/v1", "production", "--force"]);
    assert_eq!(
        snapshot(&sb.registry()),
        before,
        "a refused rm changed the registry"
    );

    let o = sb.kiln(&["registry", "rm", "tiny/v1", "--force"]);
    assert_exit(&o, 0);
    assert!(!sb.registry().join("models/tiny/v1").exists());
    let o = sb.kiln(&["registry", "list", "--json"]);
    assert_exit(&o, 0);
    let list = json(&o);
    let versions: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2], "{list}");
    assert!(
        !list.to_string().contains("production"),
        "the alias outlived its version: {list}"
    );
    let o = sb.kiln(&["registry", "show", "tiny@production"]);
    assert_exit(&o, 2);
    let o = sb.kiln(&["registry", "verify", "--json"]);
    assert_exit(&o, 0);
}

/// The book, "The model registry", commands: `rm` of a run is refused while it trains, and the
/// run is left as it was; once it no longer trains, it can be removed.
#[test]
fn rm_of_a_run_that_is_training_is_refused() {
    let sb = Sandbox::new();
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 2000\ncheckpoint_every = 5\n[runtime]\nthreads = 1\n",
    );
    let mut child = sb
        .command(&["train", cfg.to_str().unwrap(), "--quiet"])
        .spawn()
        .unwrap();
    let run_dir = wait_for_checkpoint(&sb, &mut child, None);
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    // What training does not rewrite while it runs.
    let fixed = ["config.toml", "model.json", "preprocess.json", "run.json"];
    let read = |dir: &Path| -> Vec<Vec<u8>> {
        fixed
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect()
    };
    let before = read(&run_dir);
    let o = sb.kiln(&["registry", "rm", &id]);
    let still_training = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        still_training,
        "the training ended before the test tried rm"
    );
    assert_ne!(
        o.status.code(),
        Some(0),
        "rm removed a run that was training"
    );
    one_error_line(&o, &[id.as_str(), "training"]);
    assert!(run_dir.is_dir(), "the run's folder is gone");
    assert_eq!(read(&run_dir), before, "a refused rm changed the run");
    assert!(
        !checkpoint_steps(&run_dir).is_empty(),
        "the run's checkpoints are gone"
    );
    let o = sb.kiln(&["registry", "verify", "--json"]);
    assert!(
        json(&o)["damaged"].as_array().unwrap().is_empty(),
        "{}",
        stdout(&o)
    );
    // Killed, it no longer trains: now rm removes it.
    let o = sb.kiln(&["registry", "rm", &id]);
    assert_exit(&o, 0);
    assert!(!run_dir.exists(), "rm of a stopped run left its folder");
}

/// The book, "The model registry", checkpoints in the background: "a write error stops training
/// with the error". The registry's `.tmp` (where every entry is written before its rename)
/// becomes a file under the running training, so its next checkpoint cannot be written, even
/// by root; the run must end with exit code 1, an error naming the path, and be marked failed.
#[test]
fn a_checkpoint_write_error_stops_training() {
    let sb = Sandbox::new();
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 2000\ncheckpoint_every = 1\n[runtime]\nthreads = 1\n",
    );
    let mut child = sb
        .command(&["train", cfg.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_dir = wait_for_checkpoint(&sb, &mut child, None);
    let tmp = sb.registry().join(".tmp");
    std::fs::rename(&tmp, sb.registry().join("tmp-aside")).unwrap();
    std::fs::write(&tmp, b"not a folder").unwrap();
    let o = wait_with_deadline(
        child,
        Duration::from_secs(120),
        "a training whose checkpoints cannot be written",
    );
    assert_exit(&o, 1);
    let reg = sb.registry().display().to_string();
    let line = one_error_line(&o, &[]);
    assert!(
        line.contains(&reg) && (line.contains(".tmp") || line.contains("checkpoints")),
        "the error does not name the path that failed: {line}"
    );
    let info = read_json(&run_dir.join("run.json"));
    assert_eq!(info["status"], "failed", "{info}");
}

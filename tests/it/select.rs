//! Model selection end to end: `kiln cv` (folds that partition the data and keep class
//! proportions, each fold equal to training it by hand) and `kiln sweep` (the space checked
//! before any trial, a grid enumerated exactly, SIGKILL then `--resume` equal to an
//! uninterrupted sweep, two workers never running one trial).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

#[test]
fn cv_folds_cover_the_data_keep_class_proportions_and_equal_training_each_fold_by_hand() {
    let sb = Sandbox::new();
    let report = sb.path().join("cv.html");
    let o = sb.kiln(&[
        "cv",
        "configs/breast_cancer.toml",
        "--folds",
        "5",
        "--json",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let cv = json(&o);
    let runs = cv["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 5);
    // 569 tumours, 20% of each class held out for test (42 + 71, the same rows for every
    // fold): 456 dealt into 5 folds of 91 or 92, each validating once.
    let valid = |r: &Value| r["metrics"]["valid"].clone();
    let info = |r: &Value| {
        read_json(
            &sb.registry()
                .join("runs")
                .join(r["run_id"].as_str().unwrap())
                .join("run.json"),
        )
    };
    let count = |r: &Value, split: &str| info(r)["metrics"][split]["count"].as_u64().unwrap();
    let counts: Vec<u64> = runs.iter().map(|r| count(r, "valid")).collect();
    let test_counts: BTreeSet<u64> = runs.iter().map(|r| count(r, "test")).collect();
    assert_eq!(test_counts, BTreeSet::from([113]));
    assert_eq!(
        counts.iter().sum::<u64>(),
        569 - 113,
        "the folds cover the non-test rows: {counts:?}"
    );
    assert!(
        counts.iter().all(|&c| c == 91 || c == 92),
        "fold sizes {counts:?}"
    );
    // Class proportions: 212 malignant of 569 overall; each fold within a row of 91 x 212/569.
    for r in runs {
        let info = info(r);
        let support = info["metrics"]["valid"]["per_class"][0]["support"]
            .as_f64()
            .unwrap();
        let expected = 91.2 * 212.0 / 569.0;
        assert!(
            (support - expected).abs() <= 1.5,
            "fold {}: {support} malignant vs {expected:.1}",
            r["index"]
        );
        assert_eq!(info["member"]["kind"], "cv");
        assert_eq!(info["member"]["id"], cv["id"]);
        assert_eq!(
            info["version"],
            Value::Null,
            "a fold registers no model version"
        );
    }
    // Mean and sample standard deviation of the per-fold values.
    let acc: Vec<f64> = runs
        .iter()
        .map(|r| valid(r)["accuracy"].as_f64().unwrap())
        .collect();
    let mean = acc.iter().sum::<f64>() / 5.0;
    let std = (acc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
    let s = &cv["summary"]["valid/accuracy"];
    assert!((s["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!((s["std"].as_f64().unwrap() - std).abs() < 1e-12);
    assert!(mean > 0.9, "breast cancer CV accuracy {mean}");
    // A fold trained by hand, with the same seed, gives the same metrics.
    let o = sb.kiln(&[
        "train",
        "configs/breast_cancer.toml",
        "--set",
        "data.split.folds=5",
        "--set",
        "data.split.fold=3",
        "--json",
    ]);
    assert_exit(&o, 0);
    let by_hand = json(&o)["metrics"].clone();
    for split in ["valid", "test"] {
        for m in ["loss", "accuracy", "auc", "f1"] {
            assert_eq!(
                by_hand[split][m], runs[3]["metrics"][split][m],
                "fold 3 {split} {m} by hand and in the CV"
            );
        }
    }
    // The runs list says which CV each fold belongs to; the page draws the folds.
    let o = sb.kiln(&["runs", "list"]);
    assert_exit(&o, 0);
    let id = cv["id"].as_str().unwrap();
    assert!(
        stdout(&o).contains(&format!("cv {id} fold 4")),
        "{}",
        stdout(&o)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<svg") && html.contains("valid/accuracy"));
    // A completed CV is not run again.
    let o = sb.kiln(&["cv", "--resume", id]);
    assert_exit(&o, 2);
    // A CV is a run reference for show, compare and report.
    let o = sb.kiln(&["runs", "show", id]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("valid/accuracy") && stdout(&o).contains("fold  4"),
        "{}",
        stdout(&o)
    );
    let o = sb.kiln(&[
        "cv",
        "configs/breast_cancer.toml",
        "--folds",
        "3",
        "--set",
        "optim.lr=3e-3",
        "--json",
    ]);
    assert_exit(&o, 0);
    let other = json(&o)["id"].as_str().unwrap().to_string();
    let o = sb.kiln(&["runs", "compare", id, &other, "--json"]);
    assert_exit(&o, 0);
    let cmp = json(&o);
    let keys: Vec<&str> = cmp["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"optim.lr") && keys.contains(&"data.split.folds"),
        "{keys:?}"
    );
    let page = sb.path().join("cv2.html");
    let o = sb.kiln(&["report", &other, "-o", page.to_str().unwrap()]);
    assert_exit(&o, 0);
    assert!(std::fs::read_to_string(&page).unwrap().contains(&other));
}

#[test]
fn a_killed_cv_resumes_its_interrupted_fold_and_ends_as_an_uninterrupted_one() {
    let reference = Sandbox::new();
    let cfg = digits_config(
        &reference,
        "[train]\nepochs = 20\nbatch_size = 8\nlog_every = 1000\n",
    );
    let o = reference.kiln(&["cv", cfg.to_str().unwrap(), "--folds", "3", "--json"]);
    assert_exit(&o, 0);
    let expected = json(&o)["summary"].clone();

    let sb = Sandbox::new();
    let cfg = digits_config(
        &sb,
        "[train]\nepochs = 20\nbatch_size = 8\nlog_every = 1000\n",
    );
    let mut child = sb
        .command(&["cv", cfg.to_str().unwrap(), "--folds", "3"])
        .spawn()
        .unwrap();
    // Kill it while fold 1 trains, after its first checkpoint.
    let fold1 = wait_until("fold 1 to checkpoint", Duration::from_secs(120), || {
        run_dirs(&sb)
            .into_iter()
            .find(|d| d.to_string_lossy().ends_with("-f1") && !checkpoint_steps(d).is_empty())
    });
    signal(child.id(), "KILL");
    let _ = child.wait();
    let id = entries(&sb.registry().join("cv")).pop().unwrap();
    let o = sb.kiln(&["cv", "--resume", &id, "--json"]);
    assert_exit(&o, 0);
    let cv = json(&o);
    assert_eq!(cv["summary"], expected, "the resumed CV's metrics differ");
    let info = read_json(&fold1.join("run.json"));
    assert!(
        !info["lineage"]["resumed_from"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{info}"
    );
    assert_eq!(run_dirs(&sb).len(), 3, "no fold trained twice");
}

#[test]
fn cv_refuses_bad_input_with_one_line() {
    let sb = Sandbox::new();
    for (args, needle) in [
        (
            vec!["cv", "configs/breast_cancer.toml", "--folds", "1"],
            "at least 2 folds",
        ),
        (
            vec!["cv", "configs/shakespeare_char.toml", "--folds", "3"],
            "split by position",
        ),
        (
            vec!["cv", "--resume", "nope-cv"],
            "no cross-validation \"nope-cv\"",
        ),
        (vec!["cv", "configs/no_such.toml"], "no such config file"),
    ] {
        let o = sb.kiln(&args);
        assert_exit(&o, 2);
        let errors = error_lines(&o);
        assert!(
            errors.iter().any(|l| l.contains(needle)),
            "{args:?}: {errors:?}"
        );
    }
    assert!(no_runs(&sb));
}

/// A sweep file over the tiny digits config.
fn sweep_file(sb: &Sandbox, name: &str, head: &str, space: &str) -> PathBuf {
    let base = digits_config(sb, "[train]\nepochs = 3\nlog_every = 1000\n");
    sb.write(
        name,
        &format!(
            "base = {:?}\nmetric = \"valid/accuracy\"\n{head}\n[space]\n{space}\n",
            base.display().to_string()
        ),
    )
}

#[test]
fn a_bad_space_is_one_clear_error_before_any_trial() {
    let sb = Sandbox::new();
    let cases = [
        (
            r#""optim.lrr" = { log_uniform = [1e-4, 1e-1] }"#,
            "",
            "optim.lrr",
            Some("optim.lr"),
        ),
        (
            r#""optim.lr" = { uniform = [0.1, 0.01] }"#,
            "",
            "empty range",
            None,
        ),
        (
            r#""optim.lr" = { log_uniform = [-1.0, 0.1] }"#,
            "",
            "log",
            None,
        ),
        (
            r#""optim.lr" = { loguniform = [1e-4, 1e-1] }"#,
            "",
            "loguniform",
            Some("log_uniform"),
        ),
        (
            r#""train.batch_size" = { choice = [16, "big"] }"#,
            "",
            "train.batch_size",
            None,
        ),
        (
            r#""optim.lr" = { log_uniform = [1e-4, 1e-1] }"#,
            r#"sampler = "grid""#,
            "grid",
            None,
        ),
        (
            r#""optim.lr" = { choice = [] }"#,
            "",
            "at least one value",
            None,
        ),
        (
            r#""optim.lr" = { log_uniform = [1e-4, 1e-1] }"#,
            r#"samplr = "tpe""#,
            "samplr",
            None,
        ),
    ];
    for (space, head, needle, hint) in cases {
        let file = sweep_file(&sb, "bad.toml", head, space);
        let o = sb.kiln(&["sweep", file.to_str().unwrap()]);
        assert_exit(&o, 2);
        let errors = error_lines(&o);
        assert!(
            errors
                .iter()
                .any(|l| l.contains(needle) && hint.is_none_or(|h| l.contains(h))),
            "{space} {head}: {errors:?}"
        );
    }
    let file = sweep_file(
        &sb,
        "metric.toml",
        "",
        r#""optim.lr" = { log_uniform = [1e-4, 1e-1] }"#,
    );
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("valid/accuracy", "valid/acuracy");
    std::fs::write(&file, text).unwrap();
    let o = sb.kiln(&["sweep", file.to_str().unwrap()]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("acuracy"), "{}", stderr(&o));
    assert!(no_runs(&sb));
    assert!(
        !sb.registry().join("sweeps").exists(),
        "nothing written for a bad sweep"
    );
}

fn trials_of(sb: &Sandbox, id: &str) -> Vec<Value> {
    let o = sb.kiln(&["sweep", "show", id, "--json"]);
    assert_exit(&o, 0);
    json(&o)["trials"].as_array().unwrap().clone()
}

fn sweep_id(sb: &Sandbox) -> String {
    let ids = entries(&sb.registry().join("sweeps"));
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

#[test]
fn a_grid_runs_every_point_once_and_registers_the_best() {
    let sb = Sandbox::new();
    let file = sweep_file(
        &sb,
        "grid.toml",
        "sampler = \"grid\"\ntrials = 10",
        "\"optim.lr\" = { choice = [1e-3, 1e-2] }\n\"model.hidden\" = { choice = [[16], [32]] }\n\"train.epochs\" = { int = [2, 3] }",
    );
    let o = sb.kiln(&["sweep", file.to_str().unwrap(), "--json"]);
    assert_exit(&o, 0);
    let summary = json(&o);
    let trials = summary["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8, "2 x 2 x 2 points, not the budget of 10");
    let points: BTreeSet<String> = trials.iter().map(|t| t["params"].to_string()).collect();
    assert_eq!(points.len(), 8, "no point twice");
    for lr in ["0.001", "0.01"] {
        for h in ["[16]", "[32]"] {
            for e in ["2", "3"] {
                let p = format!(r#"{{"model.hidden":{h},"optim.lr":{lr},"train.epochs":{e}}}"#);
                assert!(points.contains(&p), "{p} missing from {points:?}");
            }
        }
    }
    // Each trial a run with its parameters in its resolved config.
    for t in trials {
        assert_eq!(t["status"], "completed");
        let run_dir = sb
            .registry()
            .join("runs")
            .join(t["run_id"].as_str().unwrap());
        let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
        let epochs = t["params"]["train.epochs"].as_i64().unwrap();
        assert!(config.contains(&format!("epochs = {epochs}")), "{config}");
        assert_eq!(
            read_json(&run_dir.join("run.json"))["member"]["kind"],
            "sweep"
        );
    }
    // The best is registered as a version of the model, tagged with the sweep's id.
    let best = &summary["best"];
    let values: Vec<f64> = trials
        .iter()
        .map(|t| t["value"].as_f64().unwrap())
        .collect();
    let top = values.iter().copied().fold(f64::MIN, f64::max);
    assert_eq!(best["value"].as_f64().unwrap(), top);
    let id = summary["id"].as_str().unwrap();
    assert_eq!(summary["registered"]["version"], "tiny/v1");
    let o = sb.kiln(&["eval", &format!("tiny@sweep-{id}"), "--json"]);
    assert_exit(&o, 0);
    // The report: a table, the importance of each parameter, and the plots.
    let html = sb.path().join("sweep.html");
    let o = sb.kiln(&["sweep", "show", id, "-o", html.to_str().unwrap()]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("importance"), "{}", stdout(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.matches("<svg").count() >= 4,
        "one plot over trials and one per parameter"
    );
}

/// Trials of ~1 s each (30 epochs of batch 8 on digits), TPE after 3, median pruning.
fn slow_sweep(sb: &Sandbox) -> PathBuf {
    let base = digits_config(
        sb,
        "[train]\nepochs = 25\nbatch_size = 8\nlog_every = 1000\n",
    );
    sb.write(
        "slow.toml",
        &format!(
            r#"base = {:?}
metric = "accuracy"
sampler = "tpe"
pruner = "median"
trials = 6
seed = 11
[tpe]
startup_trials = 3
[pruning]
startup_trials = 2
[space]
"optim.lr" = {{ log_uniform = [1e-3, 3e-2] }}
"model.dropout" = {{ uniform = [0.0, 0.3] }}
"#,
            base.display().to_string()
        ),
    )
}

/// `(number, status, params, value, steps)` of every trial: what two sweeps must agree on.
fn outcome(trials: &[Value]) -> Vec<String> {
    trials
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {} {}",
                t["number"], t["status"], t["params"], t["value"], t["steps"]
            )
        })
        .collect()
}

#[test]
fn a_sigkilled_sweep_resumes_to_the_trials_an_uninterrupted_one_runs() {
    // The reference: the same seeded sweep, uninterrupted.
    let reference = Sandbox::new();
    let file = slow_sweep(&reference);
    let o = reference.kiln(&["sweep", file.to_str().unwrap(), "--json"]);
    assert_exit(&o, 0);
    let expected = outcome(json(&o)["trials"].as_array().unwrap());
    assert!(
        expected.iter().any(|t| t.contains("\"pruned\"")),
        "the median rule pruned nothing: {expected:#?}"
    );

    let sb = Sandbox::new();
    let file = slow_sweep(&sb);
    let mut child = sb
        .command(&["sweep", file.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Kill the sweep while trial 2 is training, after its first checkpoint.
    let trial2 = wait_until("trial 2 to checkpoint", Duration::from_secs(120), || {
        let dir = sb.registry().join("sweeps");
        let id = entries(&dir).pop()?;
        let t = std::fs::read_to_string(dir.join(&id).join("trials/0002/trial.json")).ok()?;
        let run_id = serde_json::from_str::<Value>(&t).ok()?["run_id"]
            .as_str()?
            .to_string();
        let run = sb.registry().join("runs").join(&run_id);
        (!checkpoint_steps(&run).is_empty()).then_some(run)
    });
    signal(child.id(), "KILL");
    let _ = child.wait();
    let id = sweep_id(&sb);
    let o = sb.kiln(&["sweep", "--resume", &id, "--json"]);
    assert_exit(&o, 0);
    let trials = json(&o)["trials"].as_array().unwrap().clone();
    assert_eq!(
        outcome(&trials),
        expected,
        "the resumed sweep ran other trials"
    );
    // Trial 2 resumed from its checkpoint (its trial process stopped with one when the sweep
    // died), not trained again: one run, with a resume in its lineage.
    let info = read_json(&trial2.join("run.json"));
    assert_eq!(info["status"], "completed", "{info}");
    assert!(
        !info["lineage"]["resumed_from"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{info}"
    );
    // No trial ran twice: one run folder per trial.
    let members: Vec<u64> = run_dirs(&sb)
        .iter()
        .map(|d| {
            read_json(&d.join("run.json"))["member"]["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut sorted = members.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..6).collect::<Vec<u64>>(),
        "runs per trial: {members:?}"
    );
    // Pruned trials say so in their run's record.
    for t in trials.iter().filter(|t| t["status"] == "pruned") {
        let run = sb
            .registry()
            .join("runs")
            .join(t["run_id"].as_str().unwrap());
        assert_eq!(
            read_json(&run.join("run.json"))["pruned_at"],
            t["pruned_at"]
        );
    }
}

#[test]
fn two_workers_on_one_sweep_never_run_the_same_trial() {
    let sb = Sandbox::new();
    let file = sweep_file(
        &sb,
        "two.toml",
        "sampler = \"random\"\ntrials = 8",
        "\"optim.lr\" = { log_uniform = [1e-3, 3e-2] }",
    );
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("epochs = 3", "epochs = 15")).unwrap();
    // As the tasks of a job array: the same line twice at once; one creates the sweep, the
    // other joins it.
    let id = "two-workers";
    let start = || {
        sb.command(&[
            "sweep",
            file.to_str().unwrap(),
            "--id",
            id,
            "--threads",
            "1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (first, second) = (start(), start());
    let a = wait_with_deadline(first, Duration::from_secs(300), "the first worker");
    let b = wait_with_deadline(second, Duration::from_secs(300), "the second worker");
    assert_exit(&a, 0);
    assert_exit(&b, 0);
    let ran = |o: &std::process::Output| -> BTreeSet<u64> {
        stderr(o)
            .lines()
            .filter_map(|l| l.strip_prefix("trial "))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let (ra, rb) = (ran(&a), ran(&b));
    assert!(
        ra.is_disjoint(&rb),
        "both ran {:?}",
        ra.intersection(&rb).collect::<Vec<_>>()
    );
    assert_eq!(
        ra.union(&rb).copied().collect::<Vec<_>>(),
        (0..8).collect::<Vec<u64>>()
    );
    assert!(!rb.is_empty(), "the second worker ran no trial");
    let trials = trials_of(&sb, id);
    assert!(
        trials
            .iter()
            .all(|t| t["status"] == "completed" && t["attempts"] == 1)
    );
    assert_eq!(run_dirs(&sb).len(), 8, "one run per trial");
}

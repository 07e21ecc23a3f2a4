//! `kiln drift`: the training profile saved with a table model, scores checked against numpy
//! and scipy, and what a shifted batch and an unshifted one get.

use std::process::Command;

use crate::common::*;
use serde_json::Value;

/// `adult-test.csv` with every age 10 years more and every `Private` workclass `Self-emp-inc`.
fn shifted(sb: &Sandbox, test: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(test).unwrap();
    let rows: Vec<String> = text
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split(',').map(|s| s.trim().to_string()).collect();
            f[0] = (f[0].parse::<u32>().unwrap() + 10).to_string();
            if f[1] == "Private" {
                f[1] = "Self-emp-inc".into();
            }
            f.join(", ")
        })
        .collect();
    sb.write("adult-shifted.csv", &(rows.join("\n") + "\n"))
}

fn scores(report: &Value) -> std::collections::BTreeMap<String, Value> {
    report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

#[test]
fn drift_flags_a_shifted_batch_and_not_an_unshifted_one_with_scores_as_scipy_computes_them() {
    let Some(python) = python_with("scipy") else {
        return;
    };
    let sb = Sandbox::new();
    let config = train_adult(&sb, "\"fnlwgt\"");
    let (_, test) = adult_files(&sb);
    let profile = run_dirs(&sb)[0].join("drift.json");
    assert!(profile.is_file(), "training saved the drift profile");
    let version = sb.registry().join("models/adult/v1/drift.json");
    assert!(version.is_file(), "the model version carries it");

    // The unshifted test rows: nothing drifted.
    let o = sb.kiln(&[
        "drift",
        "adult",
        "--input",
        test.to_str().unwrap(),
        "--json",
    ]);
    assert_exit(&o, 0);
    let calm = json(&o);
    assert_eq!(calm["drifted"], serde_json::json!([]), "{calm}");
    assert_eq!(calm["rows"], 10_561);

    // Ages +10 and a category swapped: those two drift, exit 3.
    let moved = shifted(&sb, &test);
    let page = sb.path().join("drift.html");
    let o = sb.kiln(&[
        "drift",
        "adult",
        "--input",
        moved.to_str().unwrap(),
        "--json",
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_exit(&o, 3);
    let storm = json(&o);
    let drifted: Vec<&str> = storm["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        drifted.contains(&"age") && drifted.contains(&"workclass"),
        "{drifted:?}"
    );
    for calm_column in ["race", "sex", "native-country", "education"] {
        assert!(!drifted.contains(&calm_column), "{drifted:?}");
    }
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("age: PSI") && html.contains("workclass: PSI"));

    // The same scores from numpy (bins, PSI) and scipy (KS), on both files.
    for (file, report) in [(&test, &calm), (&moved, &storm)] {
        let o = Command::new(&python)
            .arg(root().join("tests/drift_check.py"))
            .args([&profile, &config, file])
            .args(["age", "hours-per-week", "workclass", "race"])
            .output()
            .unwrap();
        assert!(o.status.success(), "drift_check.py: {}", stderr(&o));
        let want: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let got = scores(report);
        for (name, w) in want.as_object().unwrap() {
            let g = &got[name];
            let close = |a: &Value, b: &Value, what: &str| {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!(
                    (a - b).abs() < 1e-9,
                    "{name} {what}: kiln {a}, reference {b}"
                );
            };
            close(&g["psi"], &w["psi"], "PSI");
            if let Some(ks) = w.get("ks") {
                close(&g["ks"], ks, "KS statistic");
            }
            for (a, b) in g["actual"]
                .as_array()
                .unwrap()
                .iter()
                .zip(w["actual"].as_array().unwrap())
            {
                close(a, b, "share");
            }
        }
    }
}

#[test]
fn drift_refuses_what_it_cannot_compare() {
    let sb = Sandbox::new();
    let o = sb.kiln(&["drift", "nothing", "--input", "/no/such/file.csv"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
    // An image model has no columns to profile.
    assert_exit(
        &sb.kiln(&["train", "configs/mnist_cnn.toml", "--smoke", "--quiet"]),
        0,
    );
    let o = sb.kiln(&[
        "drift",
        "latest",
        "--input",
        "data/mnist/t10k-images.idx3-ubyte.gz",
    ]);
    assert_exit(&o, 1);
    assert_eq!(error_lines(&o).len(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no drift profile"), "{}", stderr(&o));
}

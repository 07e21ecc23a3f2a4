//! `kiln explain`, `kiln fairness` and the report's sections, end to end through the binary,
//! checked against scikit-learn, fairlearn and exact Shapley values (tests/explain_check.py).

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

fn python_check(python: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    let o = Command::new(python)
        .arg(root().join("tests/explain_check.py"))
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "explain_check.py: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Exports `model` to ONNX in the sandbox; returns the model's path (the sidecar is beside).
fn export(sb: &Sandbox, model: &str) -> PathBuf {
    let out = sb.path().join(format!("{model}.onnx"));
    assert_exit(&sb.kiln(&["export", model, "-o", out.to_str().unwrap()]), 0);
    out
}

/// The resolved config of the sandbox's only run.
fn run_config(sb: &Sandbox) -> PathBuf {
    let runs = run_dirs(sb);
    assert_eq!(runs.len(), 1);
    runs[0].join("config.toml")
}

#[test]
fn permutation_importance_matches_scikit_learn_and_repeats_itself() {
    let Some(python) = python_with("sklearn") else {
        return;
    };
    let sb = Sandbox::new();
    let config = train_adult(&sb, "\"fnlwgt\"");
    let repeats = "8";
    let o = sb.kiln(&["explain", "adult", "--repeats", repeats, "--json"]);
    assert_exit(&o, 0);
    let kiln = json(&o)["permutation_importance"].clone();
    assert_eq!(kiln["metric"], "accuracy");
    assert_eq!(kiln["rows"], 10_561);
    let again = sb.kiln(&["explain", "adult", "--repeats", repeats, "--json"]);
    assert_eq!(
        json(&again)["permutation_importance"],
        kiln,
        "same seed, same numbers"
    );

    let onnx = export(&sb, "adult");
    let (_, test) = adult_files(&sb);
    let sk = python_check(
        &python,
        &[
            &"importance",
            &onnx,
            &onnx.with_extension("json"),
            &config,
            &test,
            &repeats,
        ],
    );
    let imps = kiln["importances"].as_array().unwrap();
    assert_eq!(imps.len(), 13, "one importance per original column");
    let r: f64 = repeats.parse().unwrap();
    for i in imps {
        let name = i["name"].as_str().unwrap();
        let (km, ks) = (i["mean"].as_f64().unwrap(), i["std"].as_f64().unwrap());
        let (sm, ss) = (sk[name][0].as_f64().unwrap(), sk[name][1].as_f64().unwrap());
        // Different random permutations: the means agree within their sampling noise.
        let noise = 4.0 * ((ks * ks + ss * ss) / r).sqrt() + 0.002;
        assert!(
            (km - sm).abs() <= noise,
            "{name}: kiln {km:.4} ± {ks:.4}, scikit-learn {sm:.4} ± {ss:.4}"
        );
    }
    // The columns that matter are found by both.
    let top: Vec<&str> = imps
        .iter()
        .take(3)
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let best_sk = sk
        .as_object()
        .unwrap()
        .iter()
        .max_by(|a, b| {
            a.1[0]
                .as_f64()
                .unwrap()
                .total_cmp(&b.1[0].as_f64().unwrap())
        })
        .unwrap()
        .0;
    assert!(
        top.contains(&best_sk.as_str()),
        "kiln's top 3 {top:?}, scikit-learn's best {best_sk}"
    );
}

#[test]
fn integrated_gradients_are_complete_on_adult_and_mnist() {
    let sb = Sandbox::new();
    train_adult(&sb, "\"fnlwgt\"");
    let o = sb.kiln(&[
        "explain", "adult", "--rows", "0:20", "--method", "ig", "--json",
    ]);
    assert_exit(&o, 0);
    let j = json(&o);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 20);
    for r in rows {
        let a = &r["integrated_gradients"];
        let values = a["values"].as_array().unwrap();
        assert_eq!(values.len(), 13);
        let sum: f64 = values.iter().map(|v| v.as_f64().unwrap()).sum();
        let delta = a["output"].as_f64().unwrap() - a["reference"].as_f64().unwrap();
        assert!(
            (sum - delta).abs() <= 0.01 * delta.abs().max(1e-3),
            "row {}: attributions sum to {sum}, the output moved {delta}",
            r["row"]
        );
        assert_eq!(
            r["class"], r["prediction"],
            "the predicted class is explained"
        );
        assert!(r.get("kernel_shap").is_none());
    }

    // A CNN on MNIST images: attributions per pixel, maps over the digits.
    let o = sb.kiln(&["train", "configs/mnist_cnn.toml", "--smoke", "--quiet"]);
    assert_exit(&o, 0);
    let page = sb.path().join("saliency.html");
    let o = sb.kiln(&[
        "explain",
        "latest",
        "--rows",
        "0:4",
        "--json",
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let j = json(&o);
    assert_eq!(j["image_shape"], serde_json::json!([1, 28, 28]));
    for r in j["rows"].as_array().unwrap() {
        let a = &r["integrated_gradients"];
        let values: Vec<f64> = a["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), 784);
        let delta = a["output"].as_f64().unwrap() - a["reference"].as_f64().unwrap();
        let sum: f64 = values.iter().sum();
        assert!(
            (sum - delta).abs() <= 0.01 * delta.abs().max(1e-3),
            "image {}: attributions sum to {sum}, the output moved {delta}",
            r["row"]
        );
    }
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("<svg").count(), 4, "one map per image");
    let o = sb.kiln(&["explain", "latest", "--rows", "0", "--method", "shap"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--method ig"), "{}", stderr(&o));
}

#[test]
fn kernel_shap_and_integrated_gradients_give_the_exact_shapley_values_of_a_linear_model() {
    let Some(python) = python_with("sklearn") else {
        return;
    };
    let sb = Sandbox::new();
    // No hidden layer: a linear regression; every column numeric (sex as 1/2).
    let o = sb.kiln(&[
        "train",
        "configs/diabetes.toml",
        "--quiet",
        "--set",
        "model.hidden=[]",
        "--set",
        "data.categorical=[]",
        "--set",
        "train.epochs=40",
    ]);
    assert_exit(&o, 0);
    // The background is the whole training split, so its mean is the training mean; 10 columns
    // give 1,022 coalitions, all evaluated.
    let o = sb.kiln(&[
        "explain",
        "diabetes",
        "--rows",
        "0:6",
        "--background",
        "10000",
        "--json",
    ]);
    assert_exit(&o, 0);
    let report = json(&o);
    let rows_file = sb.write("rows.json", &report.to_string());
    let onnx = export(&sb, "diabetes");
    let config = run_config(&sb);
    let exact = python_check(
        &python,
        &[
            &"shapley",
            &onnx,
            &onnx.with_extension("json"),
            &config,
            &rows_file,
        ],
    );
    for (r, want) in report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(exact.as_array().unwrap())
    {
        let want: Vec<f64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for method in ["integrated_gradients", "kernel_shap"] {
            let got = r[method]["values"].as_array().unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let g = g.as_f64().unwrap();
                assert!(
                    (g - w).abs() <= 1e-3 * scale,
                    "row {} column {i}: {method} {g}, exact Shapley value {w}",
                    r["row"]
                );
            }
        }
    }
}

#[test]
fn fairness_matches_fairlearn_by_sex_race_and_both() {
    let Some(python) = python_with("fairlearn") else {
        return;
    };
    let sb = Sandbox::new();
    // The model does not read `sex`: groups come from the data file, not from the inputs.
    let config = train_adult(&sb, "\"fnlwgt\", \"sex\"");
    let (_, test) = adult_files(&sb);
    let o = sb.kiln(&[
        "fairness", "adult", "--group", "sex", "--group", "race", "--json",
    ]);
    assert_exit(&o, 0);
    let kiln = json(&o);
    assert_eq!(kiln["positive"], ">50K");
    let preds = sb.path().join("preds.csv");
    let o = sb.kiln(&[
        "predict",
        "adult",
        "--input",
        test.to_str().unwrap(),
        "-o",
        preds.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let fl = python_check(
        &python,
        &[
            &"fairness",
            &preds,
            &config,
            &test,
            &">50K",
            &"sex",
            &"race",
        ],
    );
    let breakdowns = kiln["breakdowns"].as_array().unwrap();
    assert_eq!(breakdowns.len(), 3, "sex, race, and sex x race");
    for (b, f) in breakdowns.iter().zip(fl.as_array().unwrap()) {
        assert_eq!(b["columns"], f["columns"]);
        let close = |a: &Value, b: &Value, what: &str| match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{what}: kiln {a}, fairlearn {b}"),
            _ => assert!(
                a.is_null() && b.is_null(),
                "{what}: kiln {a}, fairlearn {b}"
            ),
        };
        for key in [
            "demographic_parity_difference",
            "demographic_parity_ratio",
            "equalized_odds_difference",
        ] {
            close(&b["gaps"][key], &f[key], &format!("{} {key}", b["columns"]));
        }
        let groups = f["groups"].as_object().unwrap();
        assert_eq!(b["groups"].as_array().unwrap().len(), groups.len());
        for g in b["groups"].as_array().unwrap() {
            let name: Vec<&str> = g["group"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let name = name.join(" & ");
            let want = &groups[&name];
            for k in ["selection_rate", "accuracy", "tpr", "fpr", "precision"] {
                // A rate without a denominator: kiln says undefined, fairlearn 0.
                if g[k].is_null() && ["tpr", "fpr"].contains(&k) {
                    assert_eq!(want[k].as_f64(), Some(0.0), "{name} {k}");
                    continue;
                }
                close(&g[k], &want[k], &format!("{name} {k}"));
            }
        }
    }

    // Limits for pipelines: exit 3 when broken, 0 when they hold.
    let o = sb.kiln(&[
        "fairness",
        "adult",
        "--group",
        "sex",
        "--max-dp-diff",
        "0.01",
    ]);
    assert_exit(&o, 3);
    assert!(
        stderr(&o).contains("demographic parity difference by sex"),
        "{}",
        stderr(&o)
    );
    let o = sb.kiln(&[
        "fairness",
        "adult",
        "--group",
        "sex",
        "--max-dp-diff",
        "0.99",
        "--max-eo-diff",
        "0.99",
    ]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("by sex") && stdout(&o).contains("Female"),
        "{}",
        stdout(&o)
    );

    // The run's HTML report gains both sections.
    let report = sb.path().join("report.html");
    let o = sb.kiln(&[
        "report",
        "latest",
        "-o",
        report.to_str().unwrap(),
        "--group",
        "sex",
    ]);
    assert_exit(&o, 0);
    let html = std::fs::read_to_string(&report).unwrap();
    for want in [
        "<h2>Explanations</h2>",
        "Permutation importance",
        "<h2>Fairness</h2>",
        "selection rate by sex",
        "capital-gain",
    ] {
        assert!(html.contains(want), "the report lacks {want:?}");
    }
}

#[test]
fn explain_and_fairness_refuse_bad_input_with_one_line() {
    let sb = Sandbox::new();
    train_adult(&sb, "\"fnlwgt\"");
    let before = snapshot(&sb.registry());
    let refused = |args: &[&str], want: &str| {
        let o = sb.kiln(args);
        assert_exit(&o, 2);
        let lines = error_lines(&o);
        assert_eq!(lines.len(), 1, "{args:?}: {}", stderr(&o));
        assert!(lines[0].contains(want), "{args:?}: {}", lines[0]);
    };
    refused(
        &["fairness", "adult", "--group", "sexx"],
        "did you mean \"sex\"",
    );
    refused(
        &["fairness", "adult", "--group", "salary"],
        "no column \"salary\"",
    );
    refused(
        &["fairness", "adult", "--group", "fnlwgt"],
        "distinct values",
    );
    refused(
        &["fairness", "adult", "--positive", "rich", "--group", "sex"],
        "no such class",
    );
    refused(&["explain", "adult", "--rows", "10561"], "out of range");
    refused(&["explain", "adult", "--rows", "3,x"], "not a row number");
    refused(
        &["explain", "adult", "--rows", "0", "--class", "rich"],
        "no such class",
    );
    refused(&["explain", "adult", "--metric", "bleu"], "not a metric");
    refused(
        &["explain", "adult", "--method", "lime", "--rows", "0"],
        "use ig, shap or both",
    );
    assert_eq!(
        snapshot(&sb.registry()),
        before,
        "refused commands changed the registry"
    );

    // The data changed since training: no explanation of other data.
    let (_, test) = adult_files(&sb);
    let mut text = std::fs::read_to_string(&test).unwrap();
    text.push_str("39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K\n");
    std::fs::write(&test, text).unwrap();
    for args in [
        &["explain", "adult"][..],
        &["fairness", "adult", "--group", "sex"],
        &["eval", "adult"],
    ] {
        let o = sb.kiln(args);
        assert_exit(&o, 1);
        assert!(
            stderr(&o).contains("changed since adult/v1 was trained"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

//! `kiln predict` end to end: a model over a data file, with or without its label column.

use std::io::Read;

use crate::common::*;

fn csv_predictions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn predictions_on_the_raw_mnist_test_images_match_kiln_eval() {
    let sb = Sandbox::new();
    let o = sb.kiln(&["train", "configs/mnist_mlp.toml", "--smoke", "--json"]);
    assert_exit(&o, 0);
    let id = json(&o)["run_id"].as_str().unwrap().to_string();
    let out = sb.path().join("p.csv");
    let images = root().join("data/mnist/t10k-images.idx3-ubyte.gz");
    let o = sb.kiln(&[
        "predict",
        &id,
        "--input",
        images.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let preds = csv_predictions(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(preds.len(), 10_000);
    // The official labels, read here from the IDX file.
    let mut labels = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(root().join("data/mnist/t10k-labels.idx1-ubyte.gz")).unwrap(),
    )
    .read_to_end(&mut labels)
    .unwrap();
    let labels = &labels[8..];
    let right = preds
        .iter()
        .zip(labels)
        .filter(|((_, p), l)| *p == l.to_string())
        .count();
    let o = sb.kiln(&["eval", &id, "--split", "test", "--json"]);
    let kiln = json(&o)["metrics"]["accuracy"].as_f64().unwrap();
    assert_eq!(right as f64 / 10_000.0, kiln, "predict and eval disagree");
}

#[test]
fn the_label_column_may_be_there_or_not() {
    let sb = Sandbox::new();
    let o = sb.kiln(&["train", "configs/breast_cancer.toml", "--json"]);
    assert_exit(&o, 0);
    let labelled = root().join("data/sklearn/breast_cancer.csv");
    // The same file without its last column (the label); the count line stays.
    let text = std::fs::read_to_string(&labelled).unwrap();
    let mut lines = text.lines();
    let mut stripped = format!("{}\n", lines.next().unwrap());
    for l in lines {
        let cut = l.rfind(',').unwrap();
        stripped.push_str(&l[..cut]);
        stripped.push('\n');
    }
    let unlabelled = sb.write("unlabelled.csv", &stripped);
    let run = |input: &std::path::Path| {
        let o = sb.kiln(&[
            "predict",
            "breast-cancer",
            "--input",
            input.to_str().unwrap(),
        ]);
        assert_exit(&o, 0);
        stdout(&o)
    };
    let (a, b) = (run(&labelled), run(&unlabelled));
    assert_eq!(a, b, "the label column changed the predictions");
    let preds = csv_predictions(&a);
    assert_eq!(preds.len(), 569);
    assert!(preds.iter().all(|(_, p)| p == "malignant" || p == "benign"));
    // JSON too, with probabilities that sum to one.
    let out = sb.path().join("p.json");
    let o = sb.kiln(&[
        "predict",
        "breast-cancer",
        "--input",
        unlabelled.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 569);
    let p: f64 = rows[0]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-5);
    // A serving machine: the training data is gone, the model still predicts.
    let data = sb.path().join("train.csv");
    std::fs::copy(&labelled, &data).unwrap();
    let cfg = sb.write(
        "bc.toml",
        &format!(
            "name = \"bc\"\n[data]\npath = \"{}\"\nskip_rows = 1\nlabel = -1\nclass_names = [\"malignant\", \"benign\"]\n[train]\nepochs = 2\n",
            data.display()
        ),
    );
    let o = sb.kiln(&["train", cfg.to_str().unwrap()]);
    assert_exit(&o, 0);
    std::fs::remove_file(&data).unwrap();
    let o = sb.kiln(&["predict", "bc", "--input", unlabelled.to_str().unwrap()]);
    assert_exit(&o, 0);
    assert_eq!(csv_predictions(&stdout(&o)).len(), 569);
    // Bad input: a clear line each.
    let wrong = sb.write("wrong.csv", "1,2,3\n4,5,6\n");
    let o = sb.kiln(&[
        "predict",
        "breast-cancer",
        "--input",
        wrong.to_str().unwrap(),
    ]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("columns"), "{}", stderr(&o));
    let o = sb.kiln(&["predict", "breast-cancer", "--input", "nope.csv"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

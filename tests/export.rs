//! ONNX export end to end: every shipped model exports and passes the tract parity gate, the
//! file describes itself, a planted mismatch fails the gate, bad input leaves nothing behind.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_trainer::export::proto::{DimensionValue, ModelProto};
use prost::Message;
use serde_json::Value;

fn read_model(path: &Path) -> ModelProto {
    ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap()
}

fn metadata(m: &ModelProto, key: &str) -> String {
    m.metadata_props
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no metadata {key}"))
        .value
        .clone()
}

fn input_dims(m: &ModelProto) -> Vec<DimensionValue> {
    let g = m.graph.as_ref().unwrap();
    let t = g.input[0]
        .r#type
        .as_ref()
        .unwrap()
        .tensor_type
        .as_ref()
        .unwrap();
    t.shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| d.value.clone().unwrap())
        .collect()
}

#[test]
fn every_shipped_model_exports_through_the_parity_gate() {
    let sb = Sandbox::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("configs")).unwrap() {
        files.push(entry.unwrap().path());
    }
    files.sort();
    assert!(files.len() >= 6);
    for cfg in files {
        let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--smoke", "--json"]);
        assert_exit(&o, 0);
        let run = json(&o);
        let id = run["run_id"].as_str().unwrap();
        let out = sb.path().join(format!("{id}.onnx"));
        let o = sb.kiln(&["export", id, "-o", out.to_str().unwrap(), "--json"]);
        assert_exit(&o, 0);
        let v = json(&o);
        assert_eq!(v["parity"]["passed"], true, "{}: {v}", cfg.display());
        let worst = v["parity"]["max_abs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{}: {worst}", cfg.display());
        // The file describes itself.
        let m = read_model(&out);
        assert_eq!(m.producer_name, "kiln");
        assert_eq!(metadata(&m, "model"), id);
        let version_sha = metadata(&m, "weights_sha256");
        assert_eq!(version_sha.len(), 64);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.input[0].name, "features");
        assert_eq!(
            input_dims(&m)[0],
            DimensionValue::DimParam("batch".into()),
            "dynamic batch axis"
        );
        let outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        let is_regression = cfg.to_str().unwrap().contains("diabetes");
        if is_regression {
            assert_eq!(outputs, vec!["prediction"]);
        } else {
            assert_eq!(outputs, vec!["logits", "probabilities"]);
            let classes: Vec<String> = serde_json::from_str(&metadata(&m, "class_names")).unwrap();
            assert!(classes.len() >= 2);
        }
        // The preprocessing JSON beside the model, and the same in the metadata.
        let side: Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(
            side,
            serde_json::from_str::<Value>(&metadata(&m, "preprocessing")).unwrap()
        );
        // Stored in the registry with its parity report.
        let stored = PathBuf::from(v["registry"].as_str().unwrap());
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(stored.join("parity.json")).unwrap())
                .unwrap();
        assert_eq!(report["passed"], true);
        assert_eq!(
            std::fs::read(stored.join("model.onnx")).unwrap(),
            std::fs::read(&out).unwrap()
        );
    }
    let o = sb.kiln(&["registry", "verify", "--json"]);
    assert_exit(&o, 0);
    assert!(json(&o)["checked"].as_u64().unwrap() >= 12);
}

#[test]
fn a_fixed_batch_and_another_opset_export_too() {
    let sb = Sandbox::new();
    let cfg = digits_config_with(
        &sb,
        "\nhidden = [16]\nactivation = \"gelu\"\nnorm = \"layer\"",
        "[train]\nepochs = 2\n",
    );
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--json"]);
    assert_exit(&o, 0);
    for (opset, batch) in [("17", "7"), ("20", "dynamic")] {
        let out = sb.path().join(format!("tiny-{opset}.onnx"));
        let o = sb.kiln(&[
            "export",
            "tiny",
            "-o",
            out.to_str().unwrap(),
            "--opset",
            opset,
            "--batch",
            batch,
            "--json",
        ]);
        assert_exit(&o, 0);
        let v = json(&o);
        let m = read_model(&out);
        assert_eq!(m.opset_import[0].version.to_string(), opset);
        if batch == "7" {
            assert_eq!(input_dims(&m)[0], DimensionValue::DimValue(7));
            assert_eq!(v["parity"]["rows"], 7);
        }
        // GELU: opset 20 has the op; before it, kiln writes it with Erf.
        let ops: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.as_str())
            .collect();
        assert_eq!(ops.contains(&"Gelu"), opset == "20", "{ops:?}");
        assert!(ops.contains(&"LayerNormalization"));
    }
}

#[test]
fn bad_export_requests_are_clear_and_leave_nothing_behind() {
    let sb = Sandbox::new();
    let cfg = digits_config(&sb, "[train]\nepochs = 1\n");
    let o = sb.kiln(&["train", cfg.to_str().unwrap()]);
    assert_exit(&o, 0);
    let good = sb.path().join("m.onnx");
    let g = good.to_str().unwrap();
    for (args, code, says) in [
        (vec!["export", "nope", "-o", g], 2, "no model or run"),
        (vec!["export", "../x", "-o", g], 2, "not valid"),
        (
            vec!["export", "tiny", "-o", g, "--opset", "12"],
            2,
            "opsets 17 to 21",
        ),
        (
            vec!["export", "tiny", "-o", g, "--batch", "0"],
            2,
            "--batch",
        ),
        (
            vec!["export", "tiny", "-o", "/nonexistent/dir/m.onnx"],
            1,
            "/nonexistent/dir",
        ),
        (
            vec!["export", "tiny", "-o", sb.path().to_str().unwrap()],
            1,
            "is a folder",
        ),
        (
            vec!["export", "tiny", "-o", "m.json"],
            1,
            "name the model .onnx",
        ),
    ] {
        let o = sb.kiln(&args);
        assert_exit(&o, code);
        let err = stderr(&o);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(sb.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("onnx") || n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_planted_mismatch_fails_the_gate() {
    use burn::tensor::{Device, Tensor, TensorData};
    use kiln_models::{Activation, MlpConfig, ModelConfig, Norm};
    use kiln_trainer::config::LossKind;
    use kiln_trainer::data::preprocess::{Column, Preprocessor, TargetEncoding};
    use kiln_trainer::export::{self, Batch, graph};

    let device = Device::flex();
    let mconf = ModelConfig::Mlp(MlpConfig {
        d_input: 4,
        hidden: vec![8],
        d_output: 3,
        activation: Activation::Tanh,
        dropout: 0.0,
        norm: Norm::None,
    });
    let model = mconf.init(&device);
    let pre = Preprocessor {
        columns: (0..4)
            .map(|i| Column::Numeric {
                name: format!("x{i}"),
                fill: None,
                mean: 1.0,
                std: 2.0,
            })
            .collect(),
        image: None,
        target: TargetEncoding::Classes {
            raw: vec!["a".into(), "b".into(), "c".into()],
            names: vec!["a".into(), "b".into(), "c".into()],
        },
        missing_values: vec![],
        n_features: 4,
    };
    let rows = 5;
    let x: Vec<f32> = (0..rows * 4).map(|i| (i as f32 * 0.37).sin()).collect();
    let logits = model.forward(Tensor::<2>::from_data(
        TensorData::new(x.clone(), [rows, 4]),
        &device,
    ));
    let probs = burn::tensor::activation::softmax(logits.clone(), 1);
    let flat = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
    let expected = vec![flat(logits), flat(probs)];
    let raw = export::raw_features(&pre, &x);
    let names = ["logits", "probabilities"];
    let gate = |weights: &graph::Weights| {
        let onnx = export::build(
            &mconf,
            weights,
            &pre,
            LossKind::CrossEntropy,
            17,
            Batch::Dynamic,
            &[],
        )
        .unwrap();
        let got = export::run_tract(&onnx, &raw, rows, 4).unwrap();
        export::compare(&names, &got, &expected, rows, true)
    };
    let mut weights =
        graph::read_weights(&kiln_trainer::weights::to_bytes(&model).unwrap()).unwrap();
    let honest = gate(&weights);
    assert!(honest.passed, "{honest:?}");
    // One weight changed after the model was trained: the graph no longer matches kiln.
    weights.get_mut("output.bias").unwrap().1[0] += 0.01;
    let planted = gate(&weights);
    assert!(!planted.passed, "{planted:?}");
    assert!(planted.max_abs[0].1 > 1e-3, "{planted:?}");
    // A NaN output fails the gate instead of vanishing from the comparison.
    let nan = export::compare(
        &names,
        &[vec![f32::NAN; rows * 3], expected[1].clone()],
        &expected,
        rows,
        false,
    );
    assert!(!nan.passed, "{nan:?}");
}

#[test]
fn the_graph_imputes_missing_values_as_kiln_does() {
    use burn::tensor::{Device, Tensor, TensorData};
    use kiln_models::{Activation, MlpConfig, ModelConfig, Norm};
    use kiln_trainer::config::LossKind;
    use kiln_trainer::data::preprocess::{Column, Preprocessor, TargetEncoding};
    use kiln_trainer::export::{self, Batch, graph};

    let device = Device::flex();
    let mconf = ModelConfig::Mlp(MlpConfig {
        d_input: 3,
        hidden: vec![4],
        d_output: 1,
        activation: Activation::Relu,
        dropout: 0.0,
        norm: Norm::None,
    });
    let model = mconf.init(&device);
    // One numeric column imputed with 7.5, then a two-category column.
    let pre = Preprocessor {
        columns: vec![
            Column::Numeric {
                name: "age".into(),
                fill: Some(7.5),
                mean: 5.0,
                std: 2.0,
            },
            Column::Categorical {
                name: "color".into(),
                categories: vec!["blue".into(), "red".into()],
                fill: None,
            },
        ],
        image: None,
        target: TargetEncoding::Values {
            mean: 100.0,
            std: 10.0,
        },
        missing_values: vec!["?".into()],
        n_features: 3,
    };
    let weights = graph::read_weights(&kiln_trainer::weights::to_bytes(&model).unwrap()).unwrap();
    let onnx = export::build(
        &mconf,
        &weights,
        &pre,
        LossKind::Mse,
        17,
        Batch::Dynamic,
        &[],
    )
    .unwrap();
    // What a server sends for "?, red": NaN, then the one-hot of red.
    let got = export::run_tract(&onnx, &[f32::NAN, 0.0, 1.0], 1, 3).unwrap();
    // What kiln computes for the same row: 7.5 standardised, then 0, 1.
    let x = Tensor::<2>::from_data(
        TensorData::new(vec![((7.5 - 5.0) / 2.0) as f32, 0.0, 1.0], [1, 3]),
        &device,
    );
    let kiln = model.forward(x).into_data().try_to_vec::<f32>().unwrap()[0] as f64 * 10.0 + 100.0;
    assert!(
        (got[0][0] as f64 - kiln).abs() < 1e-4,
        "graph {} vs kiln {kiln}",
        got[0][0]
    );
}

#[test]
fn onnxruntime_reproduces_kiln_eval_on_the_raw_mnist_test_files() {
    let Some(python) = python_with("onnxruntime") else {
        return;
    };
    let sb = Sandbox::new();
    for cfg in ["configs/mnist_mlp.toml", "configs/mnist_cnn.toml"] {
        let o = sb.kiln(&["train", cfg, "--smoke", "--json"]);
        assert_exit(&o, 0);
        let id = json(&o)["run_id"].as_str().unwrap().to_string();
        let out = sb.path().join(format!("{id}.onnx"));
        let o = sb.kiln(&["export", &id, "-o", out.to_str().unwrap()]);
        assert_exit(&o, 0);
        let o = sb.kiln(&["eval", &id, "--split", "test", "--json"]);
        assert_exit(&o, 0);
        let kiln = json(&o)["metrics"]["accuracy"].as_f64().unwrap();
        let o = std::process::Command::new(&python)
            .arg(root().join("tests/onnx_eval.py"))
            .arg(&out)
            .arg(root().join("data/mnist/t10k-images.idx3-ubyte.gz"))
            .arg(root().join("data/mnist/t10k-labels.idx1-ubyte.gz"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let ort = json(&o);
        assert_eq!(ort["rows"], 10000);
        assert_eq!(
            ort["accuracy"].as_f64().unwrap(),
            kiln,
            "{cfg}: onnxruntime on the raw test file against kiln eval"
        );
    }
}

#[test]
fn onnxruntime_on_the_raw_csv_files_predicts_as_kiln_does() {
    let Some(python) = python_with("onnxruntime") else {
        return;
    };
    let sb = Sandbox::new();
    for (cfg, data) in [
        (
            "configs/breast_cancer.toml",
            "data/sklearn/breast_cancer.csv",
        ),
        ("configs/digits_mlp.toml", "data/sklearn/digits.csv.gz"),
        ("configs/adult_income.toml", "data/adult/adult.data"),
        (
            "configs/diabetes.toml",
            "data/sklearn/diabetes_data_raw.csv.gz",
        ),
    ] {
        let o = sb.kiln(&["train", cfg, "--json"]);
        assert_exit(&o, 0);
        let run = json(&o);
        let id = run["run_id"].as_str().unwrap().to_string();
        let out = sb.path().join(format!("{id}.onnx"));
        let o = sb.kiln(&["export", &id, "-o", out.to_str().unwrap()]);
        assert_exit(&o, 0);
        let preds = sb.path().join(format!("{id}.csv"));
        let data = root().join(data);
        let o = sb.kiln(&[
            "predict",
            &id,
            "--input",
            data.to_str().unwrap(),
            "-o",
            preds.to_str().unwrap(),
        ]);
        assert_exit(&o, 0);
        // Per row: the prediction, then the class probabilities (classification).
        let kiln: Vec<Vec<String>> = std::fs::read_to_string(&preds)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').skip(1).map(str::to_string).collect())
            .collect();
        let config = PathBuf::from(run["run_dir"].as_str().unwrap()).join("config.toml");
        let o = std::process::Command::new(&python)
            .arg(root().join("tests/onnx_predict.py"))
            .arg(&out)
            .arg(out.with_extension("json"))
            .arg(&config)
            .arg(&data)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(o.status.success(), "{cfg}: {}", stderr(&o));
        let ort: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(ort.len(), kiln.len(), "{cfg}: row counts");
        for (i, (a, b)) in ort.iter().zip(&kiln).enumerate() {
            match a {
                // Same class, and the same probabilities within 1e-4: every metric of every
                // split (accuracy, F1, AUC) is then kiln's.
                Value::Array(pair) => {
                    assert_eq!(pair[0].as_str().unwrap(), b[0], "{cfg}: row {}", i + 1);
                    let probs = pair[1].as_array().unwrap();
                    assert_eq!(probs.len(), b.len() - 1);
                    for (p, q) in probs.iter().zip(&b[1..]) {
                        let (p, q) = (p.as_f64().unwrap(), q.parse::<f64>().unwrap());
                        assert!((p - q).abs() <= 1e-4, "{cfg}: row {}: {p} vs {q}", i + 1);
                    }
                }
                v => {
                    let (a, b) = (v.as_f64().unwrap(), b[0].parse::<f64>().unwrap());
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{cfg}: row {}: onnxruntime {a}, kiln {b}",
                        i + 1
                    );
                }
            }
        }
    }
}

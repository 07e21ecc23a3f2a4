//! ONNX export end to end: every shipped model exports and passes the tract parity gate, the
//! file describes itself, a planted mismatch fails the gate, bad input leaves nothing behind.

use std::path::{Path, PathBuf};

use crate::common::*;
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
        let p = entry.unwrap().path();
        if p.is_file() {
            files.push(p);
        }
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
        // Text models read token ids, with a dynamic sequence axis too; models of image files
        // read pixels of any height and width.
        let text = cfg.to_str().unwrap().contains("shakespeare");
        let image_files = cfg.to_str().unwrap().contains("png");
        let input = match (text, image_files) {
            (true, _) => "input_ids",
            (false, true) => "image",
            (false, false) => "features",
        };
        assert_eq!(g.input[0].name, input);
        if image_files {
            assert_eq!(
                input_dims(&m)[2..],
                [
                    DimensionValue::DimParam("height".into()),
                    DimensionValue::DimParam("width".into())
                ]
            );
        }
        assert_eq!(
            input_dims(&m)[0],
            DimensionValue::DimParam("batch".into()),
            "dynamic batch axis"
        );
        if text {
            assert_eq!(
                input_dims(&m)[1],
                DimensionValue::DimParam("sequence".into())
            );
        }
        let outputs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        let is_regression = cfg.to_str().unwrap().contains("diabetes");
        if is_regression {
            assert_eq!(outputs, vec!["prediction"]);
        } else if cfg.to_str().unwrap().contains("shakespeare_char") {
            // A language model: next-token logits at every position.
            assert_eq!(outputs, vec!["logits"]);
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
        text: None,
        images: None,
    };
    let task = kiln_trainer::task::Classification {
        binary: false,
        names: vec!["a".into(), "b".into(), "c".into()],
        label_smoothing: 0.0,
    };
    let rows = 5;
    let x: Vec<f32> = (0..rows * 4).map(|i| (i as f32 * 0.37).sin()).collect();
    let logits = model
        .forward(kiln_models::Input::Rows(Tensor::<2>::from_data(
            TensorData::new(x.clone(), [rows, 4]),
            &device,
        )))
        .per_example();
    let probs = burn::tensor::activation::softmax(logits.clone(), 1);
    let flat = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
    let expected = vec![flat(logits), flat(probs)];
    let raw = export::raw_features(&pre, &x);
    let names = ["logits", "probabilities"];
    let gate = |weights: &graph::Weights| {
        let onnx = export::build(&mconf, weights, &pre, &task, 17, Batch::Dynamic, &[]).unwrap();
        let got = export::run_tract(&onnx, &raw, rows, 4).unwrap();
        export::compare(&names, &got, &expected, rows, Some((1, 3)))
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
        None,
    );
    assert!(!nan.passed, "{nan:?}");
}

/// A small table with missing values in column `a` (`?`), two classes: `a,b,c,label`.
fn table_with_missing_values() -> String {
    let mut text = String::from("a,b,c,label\n");
    for i in 0..150u32 {
        let a = f64::from((i * 37) % 101) / 10.0;
        let b = f64::from((i * 53) % 97) / 20.0;
        let c = f64::from(i % 7) * 0.5;
        let label = if a + b > 7.5 { "yes" } else { "no" };
        let a = if i % 6 == 0 {
            "?".to_string()
        } else {
            a.to_string()
        };
        text.push_str(&format!("{a},{b},{c},{label}\n"));
    }
    text
}

/// The book, "Export to ONNX": the numeric preprocessing, imputation of missing values included,
/// is in the graph, so a serving system feeds NaN for a missing value; "a test feeds the graph a
/// NaN for an imputed column and checks it against kiln's output for the imputed value". kiln's
/// output comes from `kiln predict` on a CSV row with the missing marker.
#[test]
fn the_graph_imputes_missing_values_as_kiln_does() {
    let sb = Sandbox::new();
    let data = sb.write("imp.csv", &table_with_missing_values());
    let cfg = sb.write(
        "imp.toml",
        &format!(
            "name = \"imp\"\n[data]\npath = {:?}\nheader = true\nlabel = \"label\"\nimpute = \"mean\"\n[model]\nhidden = [8]\n[train]\nepochs = 3\n",
            data.display().to_string()
        ),
    );
    let o = sb.kiln(&["train", cfg.to_str().unwrap(), "--json"]);
    assert_exit(&o, 0);
    let run_dir = PathBuf::from(json(&o)["run_dir"].as_str().unwrap());
    // The fill kiln saved for `a`: the mean of the training split's values.
    let pre = read_json(&run_dir.join("preprocess.json"));
    let col_a = pre["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "a")
        .unwrap_or_else(|| panic!("no column a in {pre}"));
    let fill = col_a["fill"]
        .as_f64()
        .unwrap_or_else(|| panic!("a is imputed: {col_a}"));

    // kiln: the row with `a` missing, and the same row with the fill written out.
    let rows = sb.write("rows.csv", &format!("a,b,c\n?,1.5,2\n{fill},1.5,2\n"));
    let out = sb.path().join("kiln.json");
    let o = sb.kiln(&[
        "predict",
        "imp",
        "--input",
        rows.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    let predicted = read_json(&out);
    let probs = |i: usize| -> Vec<f64> {
        predicted["rows"][i]["probabilities"]
            .as_array()
            .unwrap_or_else(|| panic!("{predicted}"))
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect()
    };
    let (missing, filled) = (probs(0), probs(1));
    assert_eq!(missing.len(), 2, "{predicted}");
    for (p, q) in missing.iter().zip(&filled) {
        assert!(
            (p - q).abs() <= 1e-6,
            "kiln predicts {missing:?} for a missing `a`, {filled:?} for a = {fill}: the missing value was not imputed with the saved fill"
        );
    }

    // The graph: the exported file, run in tract with NaN where `a` is missing.
    let onnx = sb.path().join("imp.onnx");
    let o = sb.kiln(&["export", "imp", "-o", onnx.to_str().unwrap()]);
    assert_exit(&o, 0);
    let side = read_json(&onnx.with_extension("json"));
    let x: Vec<f32> = side["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| match c["name"].as_str().unwrap() {
            "a" => f32::NAN,
            "b" => 1.5,
            "c" => 2.0,
            other => panic!("unexpected input column {other}: {side}"),
        })
        .collect();
    assert_eq!(side["input_width"], x.len(), "{side}");
    let bytes = std::fs::read(&onnx).unwrap();
    let got = kiln_trainer::export::run_tract(&bytes, &x, 1, x.len()).unwrap();
    let names: Vec<&str> = side["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    let at = names
        .iter()
        .position(|n| *n == "probabilities")
        .unwrap_or_else(|| panic!("no probabilities output: {names:?}"));
    let graph = &got[at];
    assert_eq!(graph.len(), missing.len());
    for (g, k) in graph.iter().zip(&missing) {
        assert!(
            (f64::from(*g) - k).abs() < 1e-5,
            "graph {graph:?} vs kiln predict {missing:?} for a missing `a`"
        );
    }
}

/// Sets the first value of `tensor` in a safetensors file to NaN (the file stays the same size).
fn plant_nan(file: &Path, tensor: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[tensor]["dtype"], "F32", "{header}");
    let at = 8 + n + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(file, &bytes).unwrap();
}

/// The book, "Export to ONNX", parity gate: when it fails, "the export fails with the report and
/// nothing is written": neither the requested file, nor its JSON beside it, nor a temporary
/// file, nor an entry under `<registry>/exports/`. The mismatch is planted through the registry
/// a user has: a NaN in a version's weights (its manifest updated to match, so the registry
/// accepts the file), which the gate must refuse ("a NaN on either side fails").
#[test]
fn a_failed_parity_gate_through_the_cli_leaves_nothing_behind() {
    let sb = Sandbox::new();
    let cfg = digits_config(&sb, "[train]\nepochs = 1\n");
    assert_exit(&sb.kiln(&["train", cfg.to_str().unwrap()]), 0);
    let version = sb.registry().join("models/tiny/v1");
    let weights = version.join("model.safetensors");
    plant_nan(&weights, "output.bias");
    let manifest_path = version.join("manifest.json");
    let mut manifest = read_json(&manifest_path);
    manifest["files"]["model.safetensors"]["sha256"] = sha256_file(&weights).into();
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    assert_exit(&sb.kiln(&["registry", "verify"]), 0);

    let out_dir = sb.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("m.onnx");
    let exports = sb.registry().join("exports");
    let (exports_before, tmp_before) = (
        (entries(&exports), snapshot(&exports)),
        entries(&sb.registry().join(".tmp")),
    );
    let o = sb.kiln(&["export", "tiny/v1", "-o", out.to_str().unwrap()]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("parity gate failed") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(error_lines(&o).len(), 1, "{err}");
    assert!(!out.exists(), "{} was written", out.display());
    assert!(
        !out.with_extension("json").exists(),
        "{} was written",
        out.with_extension("json").display()
    );
    assert_eq!(
        entries(&out_dir),
        Vec::<String>::new(),
        "a failed export left files beside its output"
    );
    assert_eq!(
        (entries(&exports), snapshot(&exports)),
        exports_before,
        "a failed export added to the registry's exports"
    );
    assert_eq!(
        entries(&sb.registry().join(".tmp")),
        tmp_before,
        "a failed export left a write in progress"
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

//! `kiln serve` through a real HTTP client (ureq) against the real binary: answers equal to
//! `kiln predict`, the KServe documentation's request, malformed requests, overload, and a soak
//! with an alias moved mid-run and a SIGTERM at the end. Everything on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// A running `kiln serve`; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(sb: &Sandbox, args: &[&str]) -> Server {
    start(
        sb.command(&[&["serve", "--port", "0"][..], args].concat()),
        &format!("{args:?}"),
    )
}

/// Spawns a `kiln serve` command and waits for the line that says where it listens.
fn start(mut c: Command, what: &str) -> Server {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("kiln serve: listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("kiln serve {what} did not start"));
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "binds 127.0.0.1 by default: {url}"
    );
    Server { child, url }
}

/// POSTs JSON; returns the status, the version header and the body.
fn post(url: &str, body: &str, token: Option<&str>) -> (u16, Option<String>, Value) {
    let mut r = client()
        .post(url)
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        r = r.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = r.send(body).unwrap_or_else(|e| panic!("{url}: {e}"));
    let code = resp.status().as_u16();
    let version = header(&resp, "kiln-model-version");
    let text = resp.body_mut().read_to_string().unwrap();
    (
        code,
        version,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// POSTs `body` and checks the answer is a 400 whose error says `says`.
fn refused(url: &str, body: &str, token: Option<&str>, says: &str) {
    let (code, _, answer) = post(url, body, token);
    assert_eq!(code, 400, "{body} -> {answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "{says}: {answer}");
}

fn get(url: &str) -> (u16, String) {
    let mut r = client()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// An HTTP client that hands back 4xx and 5xx answers as answers, not as errors.
fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

const ADULT_COLUMNS: [&str; 15] = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
];

/// Rows of an Adult file as `/predict` takes them: column: value, numbers as numbers, `?` as
/// null.
fn adult_rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut row = serde_json::Map::new();
            for (name, v) in ADULT_COLUMNS.iter().zip(l.split(',').map(str::trim)) {
                let v = match v.parse::<f64>() {
                    _ if v == "?" => Value::Null,
                    Ok(x) => json!(x),
                    Err(_) => json!(v),
                };
                row.insert(name.to_string(), v);
            }
            Value::Object(row)
        })
        .collect()
}

/// The exported model's input for Adult rows, from the version's preprocessing: numeric
/// columns raw (null when missing), categorical ones one-hot (missing: the fill).
fn adult_features(pre: &Value, rows: &[Value]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let mut f = Vec::new();
            for c in pre["columns"].as_array().unwrap() {
                let v = &r[c["name"].as_str().unwrap()];
                if c["kind"] == "numeric" {
                    f.push(v.clone());
                } else {
                    let v = if v.is_null() { &c["fill"] } else { v };
                    for cat in c["categories"].as_array().unwrap() {
                        f.push(json!(if cat == v { 1.0 } else { 0.0 }));
                    }
                }
            }
            Value::Array(f)
        })
        .collect()
}

/// `kiln predict`'s CSV: per row the prediction and the probabilities as f32.
fn predict_csv(sb: &Sandbox, model: &str, input: &Path) -> Vec<(String, Vec<f32>)> {
    let out = sb.path().join("predictions.csv");
    let o = sb.kiln(&[
        "predict",
        model,
        "--input",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_exit(&o, 0);
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[1].to_string(),
                f[2..].iter().map(|v| v.parse().unwrap()).collect(),
            )
        })
        .collect()
}

/// The output called `name` of a v2 `infer` answer.
fn v2_output<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["outputs"]
        .as_array()
        .expect("a v2 answer has outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {answer}"))
}

fn as_f32(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn predict_and_v2_infer_answer_as_kiln_predict_on_the_adult_and_mnist_test_files() {
    let sb = Sandbox::new();
    train_adult(&sb, "\"fnlwgt\"");
    let (_, test) = adult_files(&sb);
    let want = predict_csv(&sb, "adult", &test);
    // The test rows hold categories the training rows never had; kiln predict encodes them
    // as zeros, and so does the server when told to.
    let server = serve(&sb, &["adult", "--allow-unseen"]);
    let rows = adult_rows(&test);
    assert_eq!(rows.len(), want.len());
    let pre = read_json(&sb.registry().join("models/adult/v1/preprocess.json"));
    let mut at = 0;
    for chunk in rows.chunks(2000) {
        let (code, version, body) = post(
            &format!("{}/predict", server.url),
            &json!({"rows": chunk}).to_string(),
            None,
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(version.as_deref(), Some("adult/v1"));
        let features = adult_features(&pre, chunk);
        let d = features[0].as_array().unwrap().len();
        let request = json!({"id": "t", "inputs": [{"name": "features", "shape": [chunk.len(), d], "datatype": "FP32", "data": features}]});
        let (code, _, v2) = post(
            &format!("{}/v2/models/adult/infer", server.url),
            &request.to_string(),
            None,
        );
        assert_eq!(code, 200, "{v2}");
        assert_eq!(v2["id"], "t");
        let probs = v2_output(&v2, "probabilities");
        assert_eq!(probs["shape"], json!([chunk.len(), 2]));
        let probs = as_f32(&probs["data"]);
        for (i, p) in body["predictions"].as_array().unwrap().iter().enumerate() {
            let (class, expected) = &want[at + i];
            assert_eq!(p["prediction"].as_str().unwrap(), class, "row {}", at + i);
            assert_eq!(&as_f32(&p["probabilities"]), expected, "row {}", at + i);
            assert_eq!(&probs[i * 2..i * 2 + 2], &expected[..], "v2 row {}", at + i);
        }
        at += chunk.len();
    }
    assert_eq!(at, want.len());
    drop(server);

    // A CNN on the raw MNIST test images: pixels in, as in the IDX file.
    assert_exit(
        &sb.kiln(&["train", "configs/mnist_cnn.toml", "--smoke", "--quiet"]),
        0,
    );
    let run = run_dirs(&sb)
        .into_iter()
        .find(|d| d.to_string_lossy().contains("mnist"))
        .unwrap();
    let id = run.file_name().unwrap().to_str().unwrap().to_string();
    let images = root().join("data/mnist/t10k-images.idx3-ubyte.gz");
    let want = predict_csv(&sb, &id, &images);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&images).unwrap()),
        &mut bytes,
    )
    .unwrap();
    let pixels = &bytes[16..];
    assert_eq!(pixels.len(), want.len() * 784);
    // Three batcher instances of one thread, each chunk a request of its own, all at once:
    // every instance answers as `kiln predict` does.
    let server = serve(&sb, &[&id, "--instances", "3", "--threads", "1"]);
    std::thread::scope(|scope| {
        for (c, chunk) in pixels.chunks(784 * 1000).enumerate() {
            let (server, want, id) = (&server, &want, &id);
            scope.spawn(move || {
                let n = chunk.len() / 784;
                let rows: Vec<Vec<u8>> = chunk.chunks(784).map(<[u8]>::to_vec).collect();
                let (code, _, body) = post(
                    &format!("{}/predict", server.url),
                    &json!({"rows": rows}).to_string(),
                    None,
                );
                assert_eq!(code, 200, "{body}");
                let request = json!({"inputs": [{"name": "features", "shape": [n, 784], "datatype": "FP32", "data": chunk}]});
                let (code, _, v2) = post(
                    &format!("{}/v2/models/{id}/infer", server.url),
                    &request.to_string(),
                    None,
                );
                assert_eq!(code, 200, "{v2}");
                let probs = v2_output(&v2, "probabilities");
                let probs = as_f32(&probs["data"]);
                for (i, p) in body["predictions"].as_array().unwrap().iter().enumerate() {
                    let (class, expected) = &want[c * 1000 + i];
                    assert_eq!(p["prediction"].as_str().unwrap(), class);
                    assert_eq!(&as_f32(&p["probabilities"]), expected);
                    assert_eq!(&probs[i * 10..i * 10 + 10], &expected[..]);
                }
            });
        }
    });
    // `instances` is read as `rows`; a bad image is a 400 naming the row and the pixel.
    let image = |i: usize| pixels[i * 784..(i + 1) * 784].to_vec();
    let (code, _, body) = post(
        &format!("{}/predict", server.url),
        &json!({"instances": [image(0), image(1)]}).to_string(),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["predictions"][1]["prediction"].as_str().unwrap(),
        want[1].0
    );
    let mut text = json!(image(2));
    text[5] = json!("dark");
    let mut huge = json!(image(2));
    huge[7] = json!(1e300);
    for (rows, names) in [
        (
            json!([image(0), image(1)[..700].to_vec()]),
            "rows[1]: 700 values",
        ),
        (json!([image(0), text]), "rows[1][5]"),
        (json!([huge]), "rows[0][7]"),
        (json!([]), "empty"),
    ] {
        let body = json!({ "rows": rows }).to_string();
        refused(&format!("{}/predict", server.url), &body, None, names);
    }
    // A body is an object: the rows alone (an array of images) are refused.
    let body = json!([[image(0)]]).to_string();
    refused(&format!("{}/predict", server.url), &body, None, "{\"rows\"");
    // The same through v2 `infer`: a pixel no 32-bit float holds, or one missing (null).
    for (bad, names) in [
        (json!(1e300), "feature 7: not a finite"),
        (Value::Null, "feature 7: missing"),
    ] {
        let mut data = json!(image(3));
        data[7] = bad;
        let request = json!({"inputs": [{"name": "features", "shape": [1, 784], "datatype": "FP32", "data": data}]});
        let url = format!("{}/v2/models/{id}/infer", server.url);
        refused(&url, &request.to_string(), None, names);
    }
}

#[test]
fn a_request_body_from_the_kserve_documentation_works_unchanged() {
    let sb = Sandbox::new();
    let config = sb.write(
        "iris.toml",
        &format!(
            "name = \"iris\"\nseed = 1\n[data]\npath = \"{}/data/sklearn/iris.csv\"\nskip_rows = 1\nclass_names = [\"setosa\", \"versicolor\", \"virginica\"]\n[model]\nhidden = [16]\n[train]\nepochs = 30\nbatch_size = 16\n",
            root().display()
        ),
    );
    assert_exit(&sb.kiln(&["train", config.to_str().unwrap(), "--quiet"]), 0);
    let server = serve(&sb, &["iris"]);
    // KServe's "Open Inference Protocol" example for its sklearn iris model, verbatim.
    let body = r#"{
  "inputs": [
    {
      "name": "input-0",
      "shape": [2, 4],
      "datatype": "FP32",
      "data": [
        [6.8, 2.8, 4.8, 1.4],
        [6.0, 3.4, 4.5, 1.6]
      ]
    }
  ]
}"#;
    let (code, version, v2) = post(&format!("{}/v2/models/iris/infer", server.url), body, None);
    assert_eq!(code, 200, "{v2}");
    assert_eq!(version.as_deref(), Some("iris/v1"));
    assert_eq!(v2["model_name"], "iris");
    let probs = v2_output(&v2, "probabilities");
    assert_eq!(probs["shape"], json!([2, 3]));
    let rows = json!({"rows": [
        {"c0": 6.8, "c1": 2.8, "c2": 4.8, "c3": 1.4},
        {"c0": 6.0, "c1": 3.4, "c2": 4.5, "c3": 1.6}
    ]});
    let (code, _, p) = post(&format!("{}/predict", server.url), &rows.to_string(), None);
    assert_eq!(code, 200, "{p}");
    let from_rows: Vec<f32> = p["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| as_f32(&r["probabilities"]))
        .collect();
    // FP32 tensors against decimal strings read as f64: equal to f32 rounding.
    for (a, b) in as_f32(&probs["data"]).iter().zip(&from_rows) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // Metadata names what the model reads and gives.
    let (code, meta) = get(&format!("{}/v2/models/iris", server.url));
    assert_eq!(code, 200);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 4]));
    let (code, live) = get(&format!("{}/v2/health/live", server.url));
    assert_eq!((code, live.contains("true")), (200, true));
}

/// The value of the sample `name` (labels included) in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn requests_arriving_within_max_wait_share_a_forward_pass_and_answer_as_alone() {
    let sb = Sandbox::new();
    let config = sb.write(
        "iris.toml",
        &format!(
            "name = \"iris\"\nseed = 1\n[data]\npath = \"{}/data/sklearn/iris.csv\"\nskip_rows = 1\n[model]\nhidden = [16]\n[train]\nepochs = 5\nbatch_size = 16\n",
            root().display()
        ),
    );
    assert_exit(&sb.kiln(&["train", config.to_str().unwrap(), "--quiet"]), 0);
    let rows: Vec<Value> = (0..8)
        .map(|k| json!({"rows": [{"c0": 4.5 + 0.3 * k as f64, "c1": 3.0, "c2": 1.0 + 0.6 * k as f64, "c3": 0.2 * k as f64}]}))
        .collect();
    // Alone: one instance, no wait.
    let alone: Vec<Value> = {
        let server = serve(&sb, &["iris", "--instances", "1"]);
        rows.iter()
            .map(|r| post(&format!("{}/predict", server.url), &r.to_string(), None).2)
            .collect()
    };
    // Together: one instance that waits up to 2 s for up to 8 rows; eight requests at once.
    let server = serve(
        &sb,
        &[
            "iris",
            "--instances",
            "1",
            "--max-wait-ms",
            "2000",
            "--max-batch",
            "8",
        ],
    );
    let together: Vec<Value> = std::thread::scope(|scope| {
        let calls: Vec<_> = rows
            .iter()
            .map(|r| {
                let url = format!("{}/predict", server.url);
                scope.spawn(move || post(&url, &r.to_string(), None))
            })
            .collect();
        calls
            .into_iter()
            .map(|c| {
                let (code, _, body) = c.join().unwrap();
                assert_eq!(code, 200, "{body}");
                body
            })
            .collect()
    });
    assert_eq!(
        together, alone,
        "a row's answer does not depend on its batch"
    );
    let (_, text) = get(&format!("{}/metrics", server.url));
    let passes = metric(&text, "kiln_batch_rows_count{model=\"iris\"}");
    assert_eq!(metric(&text, "kiln_batch_rows_sum{model=\"iris\"}"), 8.0);
    // The eight arrive within the wait: fewer passes than requests (one, unless a client
    // thread started late).
    assert!(
        passes < 8.0,
        "{passes} forward passes for 8 requests:\n{text}"
    );
}

#[test]
fn malformed_requests_get_a_4xx_naming_the_field_and_a_full_queue_503() {
    let sb = Sandbox::new();
    train_adult(&sb, "\"fnlwgt\"");
    let server = serve(
        &sb,
        &["adult", "--token", "s3cret", "--body-limit", "200000"],
    );
    // Flags out of range are a usage error before anything loads.
    for flags in [
        ["--instances", "0"],
        ["--threads", "0"],
        ["--instances", "65"],
        ["--threads", "2000"],
        ["--http-threads", "0"],
        ["--http-threads", "2000"],
        ["--max-connections", "0"],
        ["--max-connections", "2000000"],
        ["--header-timeout", "0"],
        ["--header-timeout", "nan"],
        ["--body-timeout", "0.001"],
        ["--body-timeout", "1e9"],
    ] {
        let o = sb.kiln(&[&["serve", "adult"][..], &flags[..]].concat());
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(flags[0]), "{}", stderr(&o));
    }
    let predict = format!("{}/predict", server.url);
    let ok_row = json!({"age": 39, "workclass": "State-gov", "education": "Bachelors", "education-num": 13,
        "marital-status": "Never-married", "occupation": "Adm-clerical", "relationship": "Not-in-family",
        "race": "White", "sex": "Male", "capital-gain": 2174, "capital-loss": 0, "hours-per-week": 40,
        "native-country": "United-States"});
    let t = Some("s3cret");
    assert_eq!(
        post(&predict, &json!({"rows": [ok_row]}).to_string(), None).0,
        401
    );
    assert_eq!(
        post(
            &predict,
            &json!({"rows": [ok_row]}).to_string(),
            Some("wrong")
        )
        .0,
        401
    );
    assert_eq!(
        post(&predict, &json!({"rows": [ok_row]}).to_string(), t).0,
        200
    );
    // Missing values are imputed as in training: null, or the column left out.
    let mut partial = ok_row.clone();
    partial["workclass"] = Value::Null;
    partial.as_object_mut().unwrap().remove("age");
    assert_eq!(
        post(&predict, &json!({"rows": [partial]}).to_string(), t).0,
        200
    );
    let with = |key: &str, v: Value| {
        let mut r = ok_row.clone();
        r[key] = v;
        json!({"rows": [r]}).to_string()
    };
    for (body, code, names) in [
        ("{\"rows\": [".to_string(), 400, "not JSON"),
        ("{\"cols\": []}".to_string(), 400, "\"rows\""),
        (with("agee", json!(3)), 400, "\"agee\""),
        (with("age", json!("old")), 400, "age"),
        (with("age", json!("NaN")), 400, "age"),
        (with("age", json!([1])), 400, "rows[0].age"),
        (with("workclass", json!("Astronaut")), 400, "workclass"),
    ] {
        let (got, _, answer) = post(&predict, &body, t);
        assert_eq!(got, code, "{answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{names}: {answer}");
    }
    // A body over the limit is refused: 413, or the connection closed while the client is
    // still writing it; either way the server goes on answering.
    let huge = format!("{{\"rows\": [{}]}}", "1,".repeat(150_000) + "1");
    match client()
        .post(&predict)
        .header("Authorization", "Bearer s3cret")
        .send(&huge)
    {
        Ok(r) if r.status() == 413 => {}
        Err(ureq::Error::Io(_)) => {}
        other => panic!("an oversized body was not refused: {other:?}"),
    }
    assert_eq!(
        post(&predict, &json!({"rows": [ok_row]}).to_string(), t).0,
        200
    );
    let infer = format!("{}/v2/models/adult/infer", server.url);
    for (body, names) in [
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
            "shape",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 103], "datatype": "BYTES", "data": []}]}),
            "datatype",
        ),
        (json!({"inputs": []}), "\"inputs\""),
        // A shape that claims far more than the data holds, or negative sizes.
        (
            json!({"inputs": [{"name": "x", "shape": [65536, 103], "datatype": "FP32", "data": [1]}]}),
            "needs",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, -1, -103], "datatype": "FP32", "data": [1]}]}),
            "shape",
        ),
    ] {
        refused(&infer, &body.to_string(), t, names);
    }
    // Nothing in a request reaches the filesystem: a model name is a name.
    let (got, _, _) = post(
        &format!("{}/v2/models/..%2F..%2Fetc/infer", server.url),
        "{}",
        t,
    );
    assert_eq!(got, 404);
    drop(server);

    // A queue of one request and a batcher busy with a CNN's large batches: the rest get 503
    // at once, and the server answers again afterwards.
    assert_exit(
        &sb.kiln(&["train", "configs/mnist_cnn.toml", "--smoke", "--quiet"]),
        0,
    );
    let run = run_dirs(&sb)
        .into_iter()
        .find(|d| d.to_string_lossy().contains("mnist"))
        .unwrap();
    let id = run.file_name().unwrap().to_str().unwrap().to_string();
    let server = serve(&sb, &[&id, "--queue", "1", "--max-batch", "1"]);
    let big = json!({"rows": vec![vec![0u8; 784]; 2000]}).to_string();
    let codes = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (url, big, codes) = (
                format!("{}/predict", server.url),
                big.clone(),
                Arc::clone(&codes),
            );
            std::thread::spawn(move || {
                let (c, _, _) = post(&url, &big, None);
                codes.lock().unwrap().push(c);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let codes = codes.lock().unwrap().clone();
    assert!(codes.iter().all(|&c| c == 200 || c == 503), "{codes:?}");
    assert!(codes.contains(&503) && codes.contains(&200), "{codes:?}");
    let one = json!({"rows": [vec![0u8; 784]]}).to_string();
    assert_eq!(post(&format!("{}/predict", server.url), &one, None).0, 200);
}

/// The soft and hard limits on open files of process `pid`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

/// Reads `stream` until the server closes it; returns what it sent and when it closed.
fn until_closed(mut stream: std::net::TcpStream, limit: Duration) -> (String, Instant) {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("a stalled connection was still open after {limit:?}: {e}"),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

#[test]
fn stalled_clients_past_the_open_file_limit_neither_lock_others_out_nor_stay_open() {
    use std::io::Write;
    use std::net::TcpStream;
    let sb = Sandbox::new();
    let config = digits_config(&sb, "[train]\nepochs = 1\n");
    assert_exit(&sb.kiln(&["train", config.to_str().unwrap(), "--quiet"]), 0);
    // Started with a soft limit of 256 open files, as a login shell's 1024 would be to a
    // busier server; kiln raises it to the hard limit.
    let mut c = Command::new("sh");
    c.args(["-c", "ulimit -Sn 256 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "tiny", "--port", "0"])
        .args(["--header-timeout", "2", "--body-timeout", "2"])
        .current_dir(root())
        .env("KILN_REGISTRY", sb.registry())
        .env_remove("BURN_DEVICE");
    let server = start(c, "with a soft limit of 256 open files");
    let (soft, hard) = open_file_limits(server.child.id());
    assert_eq!(
        soft, hard,
        "the soft open-file limit is raised to the hard one"
    );
    const STALLED: usize = 300;
    assert!(
        soft > STALLED as u64 + 256,
        "this test needs a hard open-file limit over {} (ulimit -Hn): {hard}",
        STALLED + 256
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    let opened = Instant::now();
    let stalled: Vec<(TcpStream, bool)> = (0..STALLED)
        .map(|i| {
            let mut s = TcpStream::connect(&addr).unwrap();
            let mid_body = i % 2 == 1;
            let sent = if mid_body {
                "POST /predict HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{\"rows\": ["
            } else {
                "POST /predict HTTP/1.1\r\nHost: kiln\r\nContent-Ty"
            };
            s.write_all(sent.as_bytes()).unwrap();
            (s, mid_body)
        })
        .collect();
    // A normal client, with more stalled connections open than the limit kiln started with.
    let row: Vec<f64> = (0..64).map(|i| f64::from(i % 17)).collect();
    for _ in 0..3 {
        let t0 = Instant::now();
        assert_eq!(get(&format!("{}/v2/health/ready", server.url)).0, 200);
        let (code, _, answer) = post(
            &format!("{}/v2/models/tiny/infer", server.url),
            &json!({"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP64",
                                "data": row}]})
            .to_string(),
            None,
        );
        assert_eq!(code, 200, "{answer}");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "a normal client waited {:?} behind {STALLED} stalled ones",
            t0.elapsed()
        );
    }
    // Every stalled connection is closed once its read timeout passes: mid-body with a 408.
    let handles: Vec<_> = stalled
        .into_iter()
        .map(|(s, mid_body)| {
            std::thread::spawn(move || {
                let (said, closed) = until_closed(s, Duration::from_secs(30));
                (mid_body, said, closed)
            })
        })
        .collect();
    for h in handles {
        let (mid_body, said, closed) = h.join().unwrap();
        let after = closed - opened;
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_secs(20),
            "a connection stalled mid-{} was closed {after:?} after it opened (timeout 2 s)",
            if mid_body { "body" } else { "header" }
        );
        if mid_body {
            assert!(said.starts_with("HTTP/1.1 408"), "{said}");
            assert!(said.contains("--body-timeout"), "{said}");
        }
    }
    assert_eq!(get(&format!("{}/v2/health/ready", server.url)).0, 200);
}

#[test]
fn one_connection_over_the_limit_is_answered_503_at_once_and_served_once_one_closes() {
    use std::net::TcpStream;
    let sb = Sandbox::new();
    let config = digits_config(&sb, "[train]\nepochs = 1\n");
    assert_exit(&sb.kiln(&["train", config.to_str().unwrap(), "--quiet"]), 0);
    let server = serve(&sb, &["tiny", "--max-connections", "8"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let ready = format!("{}/v2/health/ready", server.url);
    // Eight connections open: wait until the server holds all eight (each answered once).
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..8 {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: kiln\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        idle.push(s);
    }
    let t0 = Instant::now();
    let (code, body) = get(&ready);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("--max-connections"), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    idle.pop();
    wait_until(
        "a slot freed by a closed connection",
        Duration::from_secs(10),
        || (get(&ready).0 == 200).then_some(()),
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn soak_valid_and_malformed_requests_an_alias_moved_then_sigterm() {
    let sb = Sandbox::new();
    let config = train_adult(&sb, "\"fnlwgt\"");
    // A second version to move the alias to.
    assert_exit(
        &sb.kiln(&[
            "train",
            config.to_str().unwrap(),
            "--quiet",
            "--set",
            "seed=4",
        ]),
        0,
    );
    assert_exit(&sb.kiln(&["registry", "tag", "adult/v1", "production"]), 0);
    let mut server = serve(&sb, &["adult@production", "--poll", "0.2"]);
    let pid = server.child.id();
    let url = format!("{}/predict", server.url);
    let (_, test) = adult_files(&sb);
    let rows = adult_rows(&test);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answered, dropped, server_errors) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let versions = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let rss_start = rss_kib(pid);
    let clients: Vec<_> = (0..6)
        .map(|k| {
            let (url, stop, sent, answered, dropped, errors, versions) = (
                url.clone(),
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&answered),
                Arc::clone(&dropped),
                Arc::clone(&server_errors),
                Arc::clone(&versions),
            );
            let rows: Vec<Value> = rows.iter().skip(k * 100).take(400).cloned().collect();
            std::thread::spawn(move || {
                let agent = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = if i % 4 == 0 {
                        "{\"rows\": [{\"age\": \"x\"}]}".to_string()
                    } else {
                        json!({"rows": rows[(i * 7) % 300..(i * 7) % 300 + 50]}).to_string()
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    match agent.post(&url).send(&body) {
                        Ok(r) if r.status().is_success() => {
                            versions
                                .lock()
                                .unwrap()
                                .insert(header(&r, "kiln-model-version").unwrap_or_default());
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            if r.status().is_server_error() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // The server stopped listening: this request was never accepted.
                        Err(ureq::Error::ConnectionFailed) => {
                            sent.fetch_sub(1, Ordering::Relaxed);
                            break;
                        }
                        Err(_) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // Events, not sleeps: 300 answers before the alias moves, 300 more once the new version
    // answers, then SIGTERM.
    let answers_reach = |n: usize, what: &str| {
        wait_until(what, Duration::from_secs(120), || {
            (answered.load(Ordering::Relaxed) >= n).then_some(())
        })
    };
    answers_reach(300, "300 answers from adult/v1");
    assert_exit(&sb.kiln(&["registry", "tag", "adult/v2", "production"]), 0);
    wait_until(
        "the server to follow the alias",
        Duration::from_secs(20),
        || versions.lock().unwrap().contains("adult/v2").then_some(()),
    );
    answers_reach(
        answered.load(Ordering::Relaxed) + 300,
        "300 answers once adult/v2 answers",
    );
    let rss_end = rss_kib(pid);
    // SIGTERM while the clients are sending.
    signal(pid, "TERM");
    let status = server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    assert_eq!(server_errors.load(Ordering::Relaxed), 0, "5xx answers");
    // Every request the server took was answered, and every answer arrived: the server's
    // count equals what the clients received. A connection the server had not read a request
    // from when SIGTERM came is closed unanswered (the request never reached kiln); the
    // clients count those apart, at most one each.
    let mut err = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let took: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("kiln serve: stopped after answering "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {err}"));
    assert_eq!(
        took,
        answered.load(Ordering::Relaxed),
        "answers lost in flight"
    );
    assert_eq!(
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed) + dropped.load(Ordering::Relaxed)
    );
    assert!(
        dropped.load(Ordering::Relaxed) <= 6,
        "{} unanswered",
        dropped.load(Ordering::Relaxed)
    );
    let seen = versions.lock().unwrap().clone();
    assert!(
        seen.contains("adult/v1") && seen.contains("adult/v2"),
        "{seen:?}"
    );
    assert!(
        rss_end < rss_start + 200 * 1024,
        "memory grew from {rss_start} to {rss_end} KiB"
    );
}

#[test]
fn a_text_classifier_is_served_from_text_rows_as_kiln_predict_answers() {
    let sb = Sandbox::new();
    assert_exit(
        &sb.kiln(&[
            "train",
            "configs/shakespeare_genre.toml",
            "--smoke",
            "--quiet",
        ]),
        0,
    );
    let id = run_dirs(&sb)[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(root().join("data/shakespeare_genre/test.tsv")).unwrap();
    // Speeches without quote marks: the file reader takes `"` as CSV quoting, JSON does not.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains('"'))
        .take(121)
        .collect();
    let file = sb.write("speeches.tsv", &(lines.join("\n") + "\n"));
    let want = predict_csv(&sb, &id, &file);
    assert_eq!(want.len(), 120);
    let rows: Vec<Value> = lines[1..]
        .iter()
        .map(|l| json!({"text": l.split('\t').next().unwrap().trim(), "genre": "ignored"}))
        .collect();
    let server = serve(&sb, &[&id]);
    let (code, _, body) = post(
        &format!("{}/predict", server.url),
        &json!({"rows": rows}).to_string(),
        None,
    );
    assert_eq!(code, 200, "{body}");
    for (p, (class, probs)) in body["predictions"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(p["prediction"].as_str().unwrap(), class);
        assert_eq!(&as_f32(&p["probabilities"]), probs);
    }
    // A text model reads text, not tensors.
    let (code, _, body) = post(
        &format!("{}/v2/models/{id}/infer", server.url),
        &json!({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]})
            .to_string(),
        None,
    );
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("/predict"),
        "{body}"
    );
}

/// The server-sent events of a `generate_stream` answer, parsed, in order.
fn events(url: &str, body: &Value) -> (Option<String>, Vec<Value>) {
    let resp = ureq::post(url)
        .header("Content-Type", "application/json")
        .send(&body.to_string())
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(
        header(&resp, "Content-Type").as_deref(),
        Some("text/event-stream")
    );
    let version = header(&resp, "kiln-model-version");
    let events = BufReader::new(resp.into_body().into_reader())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .map(|e| serde_json::from_str(&e).expect("an event is JSON"))
        .collect();
    (version, events)
}

#[test]
fn a_language_model_generates_and_streams_what_kiln_generate_writes() {
    let sb = Sandbox::new();
    for cfg in ["configs/shakespeare_char.toml", "configs/digits_mlp.toml"] {
        assert_exit(&sb.kiln(&["train", cfg, "--smoke", "--quiet"]), 0);
    }
    let ids: Vec<String> = run_dirs(&sb)
        .iter()
        .map(|d| d.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    let lm = ids.iter().find(|i| i.starts_with("shakespeare")).unwrap();
    let mlp = ids.iter().find(|i| i.starts_with("digits")).unwrap();
    // One server, a language model and a table model side by side.
    let server = serve(&sb, &[lm, mlp]);
    let (_, body) = get(&format!("{}/v2", server.url));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["extensions"],
        json!(["generate"])
    );
    let (code, body) = get(&format!("{}/v2/models/{lm}", server.url));
    assert_eq!(code, 200);
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["inputs"][0]["name"], "text_input");
    assert_eq!(meta["outputs"][0]["name"], "text_output");

    for (temperature, top_k, seed) in [("0", None, "1"), ("0.9", Some("12"), "5")] {
        let mut args = vec![
            "generate",
            lm,
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "40",
            "--temperature",
            temperature,
            "--seed",
            seed,
            "--json",
        ];
        if let Some(k) = top_k {
            args.extend(["--top-k", k]);
        }
        let o = sb.kiln(&args);
        assert_exit(&o, 0);
        let want = json(&o)["text"].as_str().unwrap().to_string();
        let mut params = json!({"max_tokens": 40, "temperature": temperature.parse::<f64>().unwrap(),
            "seed": seed.parse::<u64>().unwrap()});
        if let Some(k) = top_k {
            params["top_k"] = json!(k.parse::<u64>().unwrap());
        }
        let request = json!({"text_input": "ROMEO:", "parameters": params});
        let (code, version, body) = post(
            &format!("{}/v2/models/{lm}/generate", server.url),
            &request.to_string(),
            None,
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(version.as_deref(), Some(lm.as_str()));
        assert_eq!(
            body["text_output"],
            want.as_str(),
            "temperature {temperature}"
        );
        assert_eq!(body["new_tokens"], 40);

        // Streamed: a piece per event as tokens come, the same text in all, then the counts.
        let (version, events) = events(
            &format!("{}/v2/models/{lm}/generate_stream", server.url),
            &request,
        );
        assert_eq!(version.as_deref(), Some(lm.as_str()));
        let (last, pieces) = events.split_last().expect("events");
        assert!(
            pieces.len() >= 10,
            "one event per piece: {} events",
            pieces.len()
        );
        let text: String = pieces
            .iter()
            .map(|e| e["text_output"].as_str().unwrap())
            .collect();
        assert_eq!(text, want);
        assert!(pieces.iter().all(|e| e["model_name"] == lm.as_str()));
        assert_eq!(last["finished"], true, "{last}");
        assert_eq!(last["new_tokens"], 40);
        assert_eq!(last["prompt_tokens"], 6);
    }

    // Triton's own examples give the parameters beside text_input: the same text.
    let greedy = |body: Value| {
        let (code, _, answer) = post(
            &format!("{}/v2/models/{lm}/generate", server.url),
            &body.to_string(),
            None,
        );
        assert_eq!(code, 200, "{answer}");
        answer["text_output"].as_str().unwrap().to_string()
    };
    assert_eq!(
        greedy(json!({"text_input": "ROMEO:", "max_tokens": 12, "temperature": 0})),
        greedy(json!({"text_input": "ROMEO:", "parameters": {"max_tokens": 12, "temperature": 0}}))
    );

    // Bad requests: 400 naming the field, before anything is generated.
    let url = format!("{}/v2/models/{lm}/generate_stream", server.url);
    for (body, says) in [
        (
            json!({"text_input": "ROMEO:", "parameters": {"max_token": 5}}),
            "did you mean \"max_tokens\"",
        ),
        (json!({"text_input": "ROMEO: \u{4f60}"}), "vocabulary"),
        (json!({"text_input": ""}), "text_input: empty"),
        (json!({"text_input": 5}), "text_input"),
        (json!({"prompt": "ROMEO:"}), "\"prompt\""),
        (
            json!({"text_input": "a", "parameters": {"max_tokens": 0}}),
            "max_tokens",
        ),
        (
            json!({"text_input": "a", "parameters": {"max_tokens": 100000}}),
            "max_tokens",
        ),
        (
            json!({"text_input": "a", "parameters": {"temperature": -1}}),
            "temperature",
        ),
        (
            json!({"text_input": "a", "parameters": {"top_p": 1.5}}),
            "top_p",
        ),
        (
            json!({"text_input": "a", "parameters": {"top_k": 0}}),
            "top_k",
        ),
        (
            json!({"text_input": "a", "top_k": 2, "parameters": {"top_k": 3}}),
            "given twice",
        ),
        (
            json!({"text_input": "a", "temprature": 1}),
            "did you mean \"temperature\"",
        ),
    ] {
        let (code, _, answer) = post(&url, &body.to_string(), None);
        assert_eq!(code, 400, "{body} -> {answer}");
        let e = answer["error"].as_str().unwrap();
        assert!(e.contains(says), "{body}: {e}");
    }
    let (code, _, answer) = post(&url, "{not json", None);
    assert_eq!(code, 400, "{answer}");
    // A language model is not asked per example, and a table model generates nothing.
    let (code, _, answer) = post(
        &format!("{}/v2/models/{lm}/infer", server.url),
        &json!({"inputs": []}).to_string(),
        None,
    );
    assert_eq!(code, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("/generate"),
        "{answer}"
    );
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    assert!(
        metrics.contains(&format!(
            "kiln_generated_tokens_total{{model=\"{lm}\"}} 184"
        )),
        "40 tokens 4 times, 12 twice:\n{metrics}"
    );
    let (code, _, answer) = post(
        &format!("{}/v2/models/{mlp}/generate", server.url),
        &json!({"text_input": "a"}).to_string(),
        None,
    );
    assert_eq!(code, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("does not generate"),
        "{answer}"
    );
}

/// A model trained on a folder of PNG files is served from pixels (0-255, the model's size):
/// the server scales and normalises them as training did, and answers what `kiln predict`
/// answers on the files.
#[test]
fn an_image_folder_model_is_served_from_pixels_as_kiln_predict_answers_on_the_files() {
    let sb = Sandbox::new();
    let o = sb.kiln(&[
        "train",
        "configs/mnist_png_resnet.toml",
        "--smoke",
        "--json",
    ]);
    assert_exit(&o, 0);
    let id = json(&o)["run_id"].as_str().unwrap().to_string();
    let folder = sb.path().join("pngs");
    std::fs::create_dir(&folder).unwrap();
    let mut pixels = Vec::new();
    for digit in 0..10 {
        let dir = root().join(format!("data/mnist_png/test/{digit}"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files.into_iter().take(3) {
            let to = folder.join(format!(
                "{digit}-{}",
                f.file_name().unwrap().to_str().unwrap()
            ));
            std::fs::copy(&f, &to).unwrap();
        }
    }
    let mut copied: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    copied.sort();
    for f in &copied {
        let img = image::open(f).unwrap().to_luma8();
        pixels.push(json!(
            img.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>()
        ));
    }
    let want = predict_csv(&sb, &id, &folder);
    assert_eq!(want.len(), copied.len());
    let server = serve(&sb, &[&id]);
    let (code, _, body) = post(
        &format!("{}/predict", server.url),
        &json!({ "rows": pixels }).to_string(),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let answers = body["predictions"].as_array().unwrap();
    assert_eq!(answers.len(), want.len(), "{body}");
    for (i, p) in answers.iter().enumerate() {
        let (class, expected) = &want[i];
        assert_eq!(p["prediction"].as_str().unwrap(), class, "image {i}");
        // Served pixels and decoded files are encoded by one function: the same features, so
        // the same probabilities to the bit.
        assert_eq!(&as_f32(&p["probabilities"]), expected, "image {i}");
    }
    // A wrong number of pixels is a 400 naming the row.
    let body = json!({ "rows": [[0.0, 1.0]] }).to_string();
    refused(&format!("{}/predict", server.url), &body, None, "rows[0]");
}

/// NVIDIA's own client (tritonclient.http, tests/triton_client.py) works unchanged: binary
/// tensors and JSON, with and without a version, its config, statistics, async and gzip
/// requests, every answer equal to `kiln predict`'s.
#[test]
fn triton_s_http_client_works_unchanged_and_answers_as_kiln_predict() {
    let Some(python) = python_with("tritonclient.http") else {
        return;
    };
    let sb = Sandbox::new();
    assert_exit(
        &sb.kiln(&[
            "train",
            "configs/digits_mlp.toml",
            "--quiet",
            "--set",
            "train.epochs=2",
        ]),
        0,
    );
    let data = root().join("data/sklearn/digits.csv.gz");
    let want: Vec<Vec<f32>> = predict_csv(&sb, "digits-mlp", &data)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let expected = sb.path().join("expected.json");
    std::fs::write(&expected, serde_json::to_string(&want).unwrap()).unwrap();
    let server = serve(&sb, &["digits-mlp"]);
    let o = Command::new(python)
        .arg(root().join("tests/triton_client.py"))
        .arg(server.url.trim_start_matches("http://"))
        .args(["digits-mlp", "1"])
        .arg(&data)
        .arg(&expected)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(report["rows"], want.len());
    assert_eq!(report["passed"].as_array().unwrap().len(), 8, "{report}");
}

/// The versioned routes answer for `N`, `vN` and the registry label, and name the served
/// version when asked for another; infer takes the binary tensor extension, hand-made here.
#[test]
fn versioned_routes_and_binary_tensors_follow_the_protocol() {
    let sb = Sandbox::new();
    assert_exit(
        &sb.kiln(&[
            "train",
            "configs/digits_mlp.toml",
            "--quiet",
            "--set",
            "train.epochs=1",
        ]),
        0,
    );
    let server = serve(&sb, &["digits-mlp"]);
    let base = format!("{}/v2/models/digits-mlp", server.url);
    let (code, meta) = get(&base);
    assert_eq!(code, 200);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["versions"], json!(["1"]));
    for v in ["1", "v1", "digits-mlp%2Fv1"] {
        for route in ["", "/ready", "/config", "/stats"] {
            let (code, body) = get(&format!("{base}/versions/{v}{route}"));
            assert_eq!(code, 200, "{v}{route}: {body}");
        }
    }
    let (code, body) = get(&format!("{base}/versions/2/ready"));
    assert_eq!(code, 404);
    assert!(
        body.contains("serves version 1 (digits-mlp/v1), not version 2"),
        "{body}"
    );

    // One row of zeros, FP64, as raw little-endian bytes after the JSON header.
    let head = json!({
        "inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP64",
                    "parameters": {"binary_data_size": 64 * 8}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, 64 * 8));
    let send = |body: &[u8], length: usize| {
        client()
            .post(&format!("{base}/versions/1/infer"))
            .header("Inference-Header-Content-Length", &length.to_string())
            .send(body)
            .unwrap()
    };
    let mut r = send(&body, head.len());
    assert_eq!(r.status(), 200);
    let split: usize = header(&r, "Inference-Header-Content-Length")
        .unwrap()
        .parse()
        .unwrap();
    let raw = r.body_mut().read_to_vec().unwrap();
    let answer: Value = serde_json::from_slice(&raw[..split]).unwrap();
    assert_eq!(answer["model_version"], "1");
    let out = &answer["outputs"][0];
    assert_eq!(out["parameters"]["binary_data_size"], 40, "{answer}");
    let probs: Vec<f32> = raw[split..]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(probs.len(), 10);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{probs:?}");
    // The same row in JSON gives the same numbers.
    let (code, _, json_answer) = post(
        &format!("{base}/infer"),
        &json!({"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32",
                            "data": vec![0.0; 64]}]})
        .to_string(),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        as_f32(&v2_output(&json_answer, "probabilities")["data"]),
        probs
    );
    // Sizes that do not add up are 400s that say so.
    let r = send(&body[..body.len() - 8], head.len());
    assert_eq!(r.status(), 400);
    let r = send(&body, body.len() + 1);
    assert_eq!(r.status(), 400);
    let mut extra = body.clone();
    extra.extend([0u8; 4]);
    assert_eq!(send(&extra, head.len()).status(), 400);
    // A body in an encoding kiln does not read is a 415, not a JSON error.
    let r = client()
        .post(&format!("{base}/infer"))
        .header("Content-Encoding", "br")
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status(), 415);
}

//! `kiln serve` under load, against the anchor a user would otherwise pick (kiln's ONNX export
//! in onnxruntime behind FastAPI on uvicorn, `benches/serve_anchor.py`), in the same run, on
//! 127.0.0.1: requests/s and p50/p99 latency at a few concurrency levels, for the adult MLP
//! and the MNIST CNN, one example per request (online inference).
//!
//!   cargo bench --features cuda,nccl,mpi --bench serve_load
//!
//! KILN_BENCH_PYTHON: a Python with fastapi, uvicorn, onnxruntime and numpy (default
//! ~/.cache/kiln/bench-venv/bin/python). KILN_LOAD_SECONDS: seconds per level (default 5).
//! KILN_LOAD_MODELS: the models to load (comma-separated; default both).
//! KILN_LOAD_BASELINE: another kiln binary (an earlier build), or several, comma-separated,
//! served and measured in the same run as "kiln serve (baseline)": a change to the server is
//! judged against the build before it, on the same machine at the same time.
//! KILN_SERVE_ARGS: flags added to `kiln serve`. KILN_LOAD_URL: load a server already running
//! (a kiln serve of an MNIST model under `perf`, say) instead of starting any.
//! Closed-loop clients, each with a keep-alive connection of its own; bounded in time.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole process group (uvicorn's workers are children of its parent process), and
        // only the group the child leads: never this process's own, nor a pid 0 or 1.
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: getpgid and killpg take plain integers and touch no memory of ours.
        unsafe {
            if pid > 1 && libc::getpgid(pid) == pid {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The checkout, read when the bench runs (cargo sets it), not baked in when it was compiled.
fn root() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo bench sets CARGO_MANIFEST_DIR"),
    )
}

fn kiln(registry: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(root())
        .env("KILN_REGISTRY", registry)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn start_kiln(bin: &str, registry: &Path, model: &str) -> (Proc, String) {
    let extra = std::env::var("KILN_SERVE_ARGS").unwrap_or_default();
    let mut child = Command::new(bin)
        .args(["serve", model, "--port", "0"])
        .args(extra.split_whitespace())
        .process_group(0)
        .current_dir(root())
        .env("KILN_REGISTRY", registry)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("kiln serve: listening on ")
                .map(str::to_string)
        })
        .expect("kiln serve starts");
    (Proc(child), line)
}

fn start_anchor(python: &str, onnx: &Path, port: u16, workers: usize) -> (Proc, String) {
    let mut child = Command::new(python)
        .arg(root().join("benches/serve_anchor.py"))
        .arg(onnx)
        .arg(onnx.with_extension("json"))
        .arg(port.to_string())
        .arg(workers.to_string())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready when every worker says so: one that is still importing numpy and onnxruntime
    // would take CPU from whichever server is measured first.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Application startup complete") {
                let _ = tx.send(());
            }
        }
    });
    for _ in 0..workers {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the anchor's workers did not start");
    }
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while ureq::post(&format!("{url}/predict"))
        .send("{}")
        .is_err_and(|e| matches!(e, ureq::Error::Io(_) | ureq::Error::ConnectionFailed))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the anchor did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (Proc(child), url)
}

struct Level {
    concurrency: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// A keep-alive HTTP/1.1 connection that writes each request in one piece with TCP_NODELAY:
/// a client that sends headers and body in two writes meets Nagle and delayed ACKs (40 ms a
/// request on Linux), which would measure the client, not the server.
struct Conn {
    addr: String,
    stream: Option<BufReader<std::net::TcpStream>>,
}

impl Conn {
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        if self.stream.is_none() {
            let s = std::net::TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::new(s));
        }
        let r = self.stream.as_mut().expect("connected");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let result = (|| {
            r.get_mut().write_all(req.as_bytes())?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
            let (mut length, mut chunked) = (0usize, false);
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                    chunked = true;
                }
            }
            if chunked {
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                    let mut buf = vec![0; n + 2];
                    r.read_exact(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                }
            } else {
                let mut buf = vec![0; length];
                r.read_exact(&mut buf)?;
            }
            Ok(code)
        })();
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

/// `concurrency` closed-loop clients posting `bodies` (round robin) for `seconds`.
fn load(url: &str, bodies: &[String], concurrency: usize, seconds: f64) -> Level {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let addr = url.trim_start_matches("http://").to_string();
    let threads: Vec<_> = (0..concurrency)
        .map(|k| {
            let (addr, bodies) = (addr.clone(), bodies.to_vec());
            std::thread::spawn(move || {
                let mut conn = Conn { addr, stream: None };
                let (mut lat, mut errors, mut i) = (Vec::new(), 0, k);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match conn.post("/predict", &bodies[i % bodies.len()]) {
                        Ok(200) => lat.push(t.elapsed().as_secs_f64()),
                        _ => errors += 1,
                    }
                    i += concurrency;
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in threads {
        let (l, e) = t.join().unwrap();
        lat.extend(l);
        errors += e;
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
            * 1e3
    };
    Level {
        concurrency,
        rps: lat.len() as f64 / seconds,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        errors,
    }
}

fn adult_bodies() -> Vec<String> {
    let columns = [
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
    let text = std::fs::read_to_string(root().join("data/adult/adult.data")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(512)
        .map(|l| {
            let mut row = serde_json::Map::new();
            for (c, v) in columns.iter().zip(l.split(',').map(str::trim)) {
                let v = match v.parse::<f64>() {
                    _ if v == "?" => Value::Null,
                    Ok(x) => json!(x),
                    Err(_) => json!(v),
                };
                row.insert(c.to_string(), v);
            }
            json!({"rows": [row]}).to_string()
        })
        .collect()
}

fn mnist_bodies() -> Vec<String> {
    let path = root().join("data/mnist/t10k-images.idx3-ubyte.gz");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut bytes,
    )
    .unwrap();
    bytes[16..]
        .chunks(784)
        .take(256)
        .map(|img| json!({"rows": [img]}).to_string())
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let python = std::env::var("KILN_BENCH_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/kiln/bench-venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let seconds: f64 = std::env::var("KILN_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    // KILN_LOAD_URL=http://127.0.0.1:PORT: one server already running (under a profiler),
    // loaded with MNIST images at each level; nothing is started.
    if let Ok(url) = std::env::var("KILN_LOAD_URL") {
        let bodies = mnist_bodies();
        for concurrency in [1, 8, 32] {
            let l = load(&url, &bodies, concurrency, seconds);
            println!(
                "{url}: {} clients, {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                l.concurrency, l.rps, l.p50_ms, l.p99_ms, l.errors
            );
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry: PathBuf = dir.path().join("registry");
    let reg = registry.as_path();
    kiln(reg, &["train", "configs/adult_income.toml", "--quiet"]);
    // The CNN's weights do not change its speed: one epoch on a tenth of the data.
    kiln(
        reg,
        &[
            "train",
            "configs/mnist_cnn.toml",
            "--quiet",
            "--set",
            "train.epochs=1",
            "--set",
            "data.split.valid=0.9",
        ],
    );
    let onnx = |m: &str| {
        let p = dir.path().join(format!("{m}.onnx"));
        kiln(reg, &["export", m, "-o", p.to_str().unwrap()]);
        p
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string))
        })
        .unwrap_or_default();
    println!(
        "kiln serve vs FastAPI + onnxruntime (uvicorn, 2 workers), {seconds} s per level, one example per request, {} CPUs ({cpu})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| model | server | clients | requests/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    // KILN_LOAD_MODELS=mnist-cnn: one model alone (to profile it).
    let only = std::env::var("KILN_LOAD_MODELS").unwrap_or_default();
    for (model, bodies) in [
        ("adult-income", adult_bodies()),
        ("mnist-cnn", mnist_bodies()),
    ] {
        if !only.is_empty() && !only.split(',').any(|m| m == model) {
            continue;
        }
        let file = onnx(model);
        let mut servers = vec![(
            "kiln serve".to_string(),
            start_kiln(env!("CARGO_BIN_EXE_kiln"), reg, model),
        )];
        let baselines = std::env::var("KILN_LOAD_BASELINE").unwrap_or_default();
        let baselines: Vec<&str> = baselines.split(',').filter(|b| !b.is_empty()).collect();
        for bin in &baselines {
            let name = match baselines.len() {
                1 => "kiln serve (baseline)".to_string(),
                _ => format!("kiln serve (baseline {bin})"),
            };
            servers.push((name, start_kiln(bin, reg, model)));
        }
        // A port nobody listens on (an anchor left over from a killed run would answer on a
        // fixed one, and be measured instead).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        servers.push((
            "FastAPI + onnxruntime".to_string(),
            start_anchor(&python, &file, port, 2),
        ));
        // Steady state: each server's first requests (page faults, lazily built state, a
        // cold cache) are not measured.
        for (_, (_, url)) in &servers {
            load(url, &bodies, 8, 1.0);
        }
        for concurrency in [1, 8, 32] {
            for (name, (_, url)) in &servers {
                let l = load(url, &bodies, concurrency, seconds);
                println!(
                    "| {model} | {name} | {} | {:.0} | {:.2} | {:.2} | {} |",
                    l.concurrency, l.rps, l.p50_ms, l.p99_ms, l.errors
                );
            }
        }
        drop(servers);
    }
}

//! Training throughput on MNIST, f32, Adam: `kiln train`'s loop against a bare hand-written burn
//! loop on the same model and data. `benches/compare.py` runs this and PyTorch interleaved and
//! prints the ratios the book quotes.
//!
//!   cargo bench --bench throughput -- [mlp|cnn|all] [--steps N] [--threads T]
//!
//! Prints one JSON object per measurement: {"model", "impl", "samples_per_second", ...}.
//! Models: MLP 784-256-128-10 at batch 128; CNN conv32-pool-conv64-pool-fc128-fc10 (3x3,
//! padding 1) at batch 64.
//!
//! Both loops allocate with mimalloc, the allocator the `kiln` binary ships with.

/// The `kiln` binary's allocator (src/main.rs), so that kiln's loop is timed as users run it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::relu};
use kiln_trainer::config::{self, Override};
use kiln_trainer::data::idx;

#[derive(Module, Debug)]
struct BareMlp {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl BareMlp {
    fn new(device: &Device) -> Self {
        Self {
            l1: LinearConfig::new(784, 256).init(device),
            l2: LinearConfig::new(256, 128).init(device),
            l3: LinearConfig::new(128, 10).init(device),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l3
            .forward(relu(self.l2.forward(relu(self.l1.forward(x)))))
    }
}

#[derive(Module, Debug)]
struct BareCnn {
    c1: Conv2d,
    c2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl BareCnn {
    fn new(device: &Device) -> Self {
        let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
        Self {
            c1: Conv2dConfig::new([1, 32], [3, 3])
                .with_padding(pad.clone())
                .init(device),
            c2: Conv2dConfig::new([32, 64], [3, 3])
                .with_padding(pad)
                .init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(64 * 7 * 7, 128).init(device),
            fc2: LinearConfig::new(128, 10).init(device),
        }
    }
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [b, _] = x.dims();
        let x: Tensor<4> = x.reshape([b, 1, 28, 28]);
        let x = self.pool.forward(relu(self.c1.forward(x)));
        let x = self.pool.forward(relu(self.c2.forward(x)));
        self.fc2.forward(relu(self.fc1.forward(x.flatten(1, 3))))
    }
}

/// MNIST training images, standardised, and labels.
fn mnist() -> (Vec<f32>, Vec<i64>) {
    let (n, r, c, px) =
        idx::read_images("data/mnist/train-images.idx3-ubyte.gz".as_ref()).expect("MNIST images");
    let labels =
        idx::read_labels("data/mnist/train-labels.idx1-ubyte.gz".as_ref()).expect("MNIST labels");
    let x: Vec<f32> = px
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.1307) / 0.3081)
        .collect();
    assert_eq!(x.len(), n * r * c);
    (x, labels.iter().map(|&l| l as i64).collect())
}

/// The hand-written loop: slice a batch, forward, cross-entropy, backward, Adam step.
fn bare<M: Module>(
    model: M,
    forward: impl Fn(&M, Tensor<2>) -> Tensor<2>,
    batch: usize,
    steps: usize,
    warmup: usize,
) -> f64 {
    let device = Device::flex().autodiff();
    let (x, y) = mnist();
    let n = y.len();
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut model = model;
    let mut start = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            start = Instant::now();
        }
        let b = (step * batch) % (n - batch);
        let xb = Tensor::<2>::from_data(
            TensorData::new(x[b * 784..(b + batch) * 784].to_vec(), [batch, 784]),
            &device,
        );
        let yb = Tensor::<1, Int>::from_data(
            TensorData::new(y[b..b + batch].to_vec(), [batch]),
            &device,
        );
        let loss = loss_fn.forward(forward(&model, xb), yb);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    // The loop is synchronous on the CPU backend; reading a weight makes sure all work is done.
    let _ = model.into_record();
    (steps * batch) as f64 / start.elapsed().as_secs_f64()
}

/// `kiln train` on the shipped config, reshaped to the benchmark model; the rate of the last
/// logged window (after `warmup` steps), as the loop itself measures it.
fn kiln(model: &str, steps: usize, warmup: usize) -> f64 {
    let (cfg_path, sets): (&str, Vec<String>) = match model {
        "mlp" => (
            "configs/mnist_mlp.toml",
            vec![
                "model.hidden=[256, 128]".into(),
                "model.dropout=0.0".into(),
                "train.batch_size=128".into(),
            ],
        ),
        _ => (
            "configs/mnist_cnn.toml",
            vec![
                "model.dropout=0.0".into(),
                "train.batch_size=64".into(),
                "train.valid_every=1000000".into(),
            ],
        ),
    };
    let mut sets = sets;
    sets.extend([
        "optim.name=adam".to_string(),
        "optim.lr=1e-3".into(),
        "schedule.kind=constant".into(),
        "schedule.warmup_steps=0".into(),
        format!("train.max_steps={}", warmup + steps),
        format!(
            "train.log_every={}",
            if warmup == 0 { steps } else { warmup }
        ),
        "data.split.valid=0.01".into(),
    ]);
    let overrides: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    let (file, _) = config::load(cfg_path.as_ref(), &overrides).unwrap();
    let cfg = config::validate(file, cfg_path, "bench").unwrap();
    let registry = tempfile::tempdir().unwrap();
    let opts = kiln_trainer::train::Options {
        registry: registry.path().into(),
        smoke: false,
        quiet: true,
        config_path: cfg_path.into(),
        resume: None,
        stop: Arc::new(AtomicBool::new(false)),
        init_from: None,
        group: None,
        member: None,
    };
    let out = kiln_trainer::train::train(&cfg, &opts).unwrap();
    let log = std::fs::read_to_string(out.run_dir.join("metrics.jsonl")).unwrap();
    let last = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["split"] == "train")
        .unwrap();
    last["samples_per_second"].as_f64().unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut which = "all".to_string();
    let mut steps = 200;
    let mut threads = 2;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--steps" => {
                steps = args[i + 1].parse().expect("--steps N");
                i += 1;
            }
            "--threads" => {
                threads = args[i + 1].parse().expect("--threads T");
                i += 1;
            }
            m @ ("mlp" | "cnn" | "all") => which = m.to_string(),
            other => panic!("unknown argument {other:?}"),
        }
        i += 1;
    }
    kiln_trainer::backend::init_threads(threads);
    let warmup = (steps / 5).max(5);
    for model in ["mlp", "cnn"] {
        if which != "all" && which != model {
            continue;
        }
        let (batch, bare_rate) = match model {
            "mlp" => (
                128,
                bare(
                    BareMlp::new(&Device::flex().autodiff()),
                    BareMlp::forward,
                    128,
                    steps,
                    warmup,
                ),
            ),
            _ => (
                64,
                bare(
                    BareCnn::new(&Device::flex().autodiff()),
                    BareCnn::forward,
                    64,
                    steps,
                    warmup,
                ),
            ),
        };
        println!(
            "{}",
            serde_json::json!({"model": model, "impl": "burn-bare", "batch": batch, "threads": threads, "steps": steps, "samples_per_second": bare_rate})
        );
        let kiln_rate = kiln(model, steps, warmup);
        println!(
            "{}",
            serde_json::json!({"model": model, "impl": "kiln", "batch": batch, "threads": threads, "steps": steps, "samples_per_second": kiln_rate})
        );
    }
}

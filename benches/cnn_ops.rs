//! Where the CNN benchmark's time goes on burn's CPU backend: each layer of
//! conv32-pool-conv64-pool-fc128-fc10 at batch 64, forward alone and forward + backward.
//! `benches/cnn_ops.py` measures the same in PyTorch, for the book's explanation.
//!
//!   cargo bench --bench cnn_ops -- [--reps N] [--threads T]

use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor, activation::relu};

/// Mean milliseconds of `f` over `reps` runs after two warm-up runs.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .map_or(20, |i| args[i + 1].parse().expect("--reps N"));
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .map_or(2, |i| args[i + 1].parse().expect("--threads T"));
    kiln_trainer::backend::init_threads(threads);
    let device = Device::flex().autodiff();
    let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let c1 = Conv2dConfig::new([1, 32], [3, 3])
        .with_padding(pad.clone())
        .init(&device);
    let c2 = Conv2dConfig::new([32, 64], [3, 3])
        .with_padding(pad)
        .init(&device);
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let fc1 = LinearConfig::new(64 * 7 * 7, 128).init(&device);
    let random = |shape: [usize; 4]| {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad()
    };
    // The network's input needs no gradient, as in training; later inputs stand for
    // activations, which do.
    let x1 = Tensor::<4>::random([64, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let x2 = random([64, 32, 28, 28]);
    let x3 = random([64, 32, 14, 14]);
    let x4 = random([64, 64, 14, 14]);
    let x5 =
        Tensor::<2>::random([64, 3136], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let mut rows: Vec<(&str, f64, f64)> = Vec::new();
    // Every measurement ends by reading a value that depends on all the work, so nothing is
    // left pending when the clock stops: the output's sum (forward), a gradient (backward).
    macro_rules! op {
        ($name:expr, $x:expr, $weight:expr, $f:expr) => {{
            let fwd = time(reps, || {
                let _ = $f($x.clone()).sum().into_scalar::<f32>();
            });
            let both = time(reps, || {
                let grads = $f($x.clone()).sum().backward();
                let read = match $x.grad(&grads) {
                    Some(g) => g.sum().into_scalar::<f32>(),
                    None => $weight
                        .grad(&grads)
                        .expect("a weight gradient")
                        .sum()
                        .into_scalar::<f32>(),
                };
                std::hint::black_box(read);
            });
            rows.push(($name, fwd, both));
        }};
    }
    op!("conv1 1->32 28x28", x1, c1.weight.val(), |x| c1.forward(x));
    op!("relu+pool 32x28x28", x2, x2, |x| pool.forward(relu(x)));
    op!("conv2 32->64 14x14", x3, x3, |x| c2.forward(x));
    op!("relu+pool 64x14x14", x4, x4, |x| pool.forward(relu(x)));
    op!("fc1 3136->128", x5, x5, |x| fc1.forward(x));
    for (name, fwd, both) in rows {
        println!(
            "{}",
            serde_json::json!({"op": name, "impl": "burn-flex", "threads": threads, "forward_ms": fwd, "forward_backward_ms": both})
        );
    }
}

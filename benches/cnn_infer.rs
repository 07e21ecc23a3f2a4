//! The MNIST CNN's forward pass at inference on the CPU, as `kiln serve` and `kiln predict` run
//! it: op by op (kiln's convolution and pooling kernels, burn's ReLU and `Linear`) against the
//! fused inference kernels (`conv_block::conv_relu_pool`, `linear::linear`), per stage at
//! batch 1 and whole at batches 1, 8 and 32. One thread, inside its own rayon pool, as a
//! serving instance runs.
//!
//!   cargo bench --features cuda,nccl,mpi --bench cnn_infer -- [--reps N]

use std::time::Instant;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Distribution, Tensor};
use kiln_kernels::{conv_block, conv2d, linear, max_pool2d};

// The binary's allocator, so that allocation costs what it costs in `kiln serve`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mean microseconds of `f` over `reps` runs after `reps / 10` warm-up runs.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..reps / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / reps as f64
}

struct Net {
    c1: Conv2d,
    c2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl Net {
    fn op_by_op(&self, x: Tensor<4>) -> Tensor<2> {
        let y = max_pool2d::max_pool2d(&self.pool, relu(conv2d::conv2d(&self.c1, x)));
        let y = max_pool2d::max_pool2d(&self.pool, relu(conv2d::conv2d(&self.c2, y)));
        let y = relu(self.fc1.forward(y.flatten::<2>(1, 3)));
        softmax(self.fc2.forward(y), 1)
    }

    fn fused(&self, x: Tensor<4>) -> Tensor<2> {
        let y = conv_block::conv_relu_pool(&self.c1, Some(&self.pool), x);
        let y = conv_block::conv_relu_pool(&self.c2, Some(&self.pool), y);
        let y = relu(linear::linear(&self.fc1, y.flatten::<2>(1, 3)));
        softmax(linear::linear(&self.fc2, y), 1)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .map_or(2000, |i| args[i + 1].parse().expect("--reps N"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a rayon pool");
    pool.install(|| run(reps));
}

fn run(reps: usize) {
    assert!(
        conv_block::cpu::available(),
        "this CPU has no fused multiply-add: the fused kernels do not run here"
    );
    let device = Device::flex();
    let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let net = Net {
        c1: Conv2dConfig::new([1, 32], [3, 3])
            .with_padding(same.clone())
            .init(&device),
        c2: Conv2dConfig::new([32, 64], [3, 3])
            .with_padding(same)
            .init(&device),
        pool: MaxPool2dConfig::new([2, 2]).init(),
        fc1: LinearConfig::new(64 * 7 * 7, 128).init(&device),
        fc2: LinearConfig::new(128, 10).init(&device),
    };
    let image = |n: usize| {
        // Pixels as kiln reads MNIST (0 to 255), so the activations have the zeros of a
        // real image's.
        Tensor::<4>::random([n, 1, 28, 28], Distribution::Uniform(0.0, 255.0), &device)
    };
    let x = image(1);
    let p1 = conv_block::conv_relu_pool(&net.c1, Some(&net.pool), x.clone());
    let p2 = conv_block::conv_relu_pool(&net.c2, Some(&net.pool), p1.clone()).flatten::<2>(1, 3);
    let h = relu(linear::linear(&net.fc1, p2.clone()));
    // Every measurement ends by reading the output back, so no work is left pending.
    macro_rules! us {
        ($e:expr) => {
            time(reps, || {
                std::hint::black_box($e.into_data());
            })
        };
    }
    println!("MNIST CNN at inference, 1 thread, mean of {reps} runs (us)");
    println!("| stage (batch 1) | op by op | fused |");
    println!("|---|---:|---:|");
    let block = |c: &Conv2d, x: &Tensor<4>| {
        max_pool2d::max_pool2d(&net.pool, relu(conv2d::conv2d(c, x.clone())))
    };
    let rows = [
        (
            "conv1 + ReLU + pool",
            us!(block(&net.c1, &x)),
            us!(conv_block::conv_relu_pool(
                &net.c1,
                Some(&net.pool),
                x.clone()
            )),
        ),
        (
            "conv2 + ReLU + pool",
            us!(block(&net.c2, &p1)),
            us!(conv_block::conv_relu_pool(
                &net.c2,
                Some(&net.pool),
                p1.clone()
            )),
        ),
        (
            "fc1 (3136 -> 128)",
            us!(net.fc1.forward(p2.clone())),
            us!(linear::linear(&net.fc1, p2.clone())),
        ),
        (
            "fc2 (128 -> 10)",
            us!(net.fc2.forward(h.clone())),
            us!(linear::linear(&net.fc2, h.clone())),
        ),
    ];
    for (name, a, b) in rows {
        println!("| {name} | {a:.1} | {b:.1} |");
    }
    println!("| batch | op by op, per image | fused, per image | speed-up |");
    println!("|---:|---:|---:|---:|");
    for n in [1, 8, 32] {
        let x = image(n);
        let reps = (reps / n).max(10);
        let a = time(reps, || {
            std::hint::black_box(net.op_by_op(x.clone()).into_data());
        }) / n as f64;
        let b = time(reps, || {
            std::hint::black_box(net.fused(x.clone()).into_data());
        }) / n as f64;
        println!("| {n} | {a:.1} | {b:.1} | {:.2}x |", a / b);
    }
}

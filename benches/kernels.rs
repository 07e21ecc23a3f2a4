//! Each of kiln's kernels against its reference (burn's own path), in one run, at the shapes of
//! the shipped models: milliseconds forward, and forward + backward, with the ratio.
//!
//!   cargo bench --bench kernels -- [--reps N] [--threads T] [--ceiling | --gpu]
//!
//! `--ceiling` prints only the machine's matrix-multiply rate (see [`ceiling`]); the GPU
//! kernels run on the first WGPU device when there is one (see [`gpu_rows`]; `--gpu` runs only
//! them);
//! `KILN_BENCH_ONLY=gelu` (a kernel's name) times that kernel alone.
//!
//! One JSON line per row: `{"kernel", "shape", "reference_ms", "kernel_ms", "speedup", "pass"}`.

use std::time::Instant;

/// The `kiln` binary's allocator (src/main.rs): the kernels and burn's ops are timed with the
/// allocator they run with in training.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{LayerNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor};
use kiln_kernels::attention::causal_attention;
use kiln_kernels::conv2d::conv2d;
use kiln_kernels::gelu::gelu;
use kiln_kernels::layer_norm::layer_norm;
use kiln_kernels::max_pool2d::max_pool2d;
use kiln_kernels::softmax::softmax_last;

/// Median milliseconds of `f` over `reps` runs after two warm-up runs.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .map_or(default, |i| args[i + 1].parse().expect("a number"))
}

/// Times `f` with the kernels off (the reference) and on, alternating, and prints one row.
fn row(kernel: &str, shape: &str, pass: &str, reps: usize, mut f: impl FnMut()) {
    if std::env::var("KILN_BENCH_ONLY").is_ok_and(|only| only != kernel) {
        return;
    }
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..3 {
        kiln_kernels::set_enabled(false);
        off.push(time(reps, &mut f));
        kiln_kernels::set_enabled(true);
        on.push(time(reps, &mut f));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[1]
    };
    let (r, k) = (median(&mut off), median(&mut on));
    println!(
        "{}",
        serde_json::json!({"kernel": kernel, "shape": shape, "pass": pass,
            "reference_ms": r, "kernel_ms": k, "speedup": r / k})
    );
}

fn conv_rows(reps: usize) {
    let device = Device::flex().autodiff();
    let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
    // conv1 and conv2 of configs/mnist_cnn.toml at its batch (64), and conv2 at batch 1 (serving).
    for (name, [b, ci, co, hw]) in [
        ("conv1 1->32 28x28, batch 64", [64, 1, 32, 28]),
        ("conv2 32->64 14x14, batch 64", [64, 32, 64, 14]),
        ("conv2 32->64 14x14, batch 1", [1, 32, 64, 14]),
    ] {
        let conv = Conv2dConfig::new([ci, co], [3, 3])
            .with_padding(pad.clone())
            .init(&device);
        let x = Tensor::<4>::random([b, ci, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let x = if ci == 1 { x } else { x.require_grad() };
        // Serving runs the forward pass without autodiff.
        let (plain, xv) = (conv.valid(), x.clone().inner());
        row("conv2d", name, "forward", reps, || {
            let y = conv2d(&plain, xv.clone());
            std::hint::black_box(y.sum().into_scalar::<f32>());
        });
        row("conv2d", name, "forward+backward", reps, || {
            let grads = conv2d(&conv, x.clone()).sum().backward();
            let dw = conv.weight.grad(&grads).expect("a weight gradient");
            std::hint::black_box(dw.sum().into_scalar::<f32>());
        });
    }
}

fn pool_rows(reps: usize) {
    let device = Device::flex().autodiff();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    for (name, shape) in [
        ("2x2 over 32x28x28, batch 64", [64, 32, 28, 28]),
        ("2x2 over 64x14x14, batch 64", [64, 64, 14, 14]),
    ] {
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let xv = x.clone().inner();
        row("max_pool2d", name, "forward", reps, || {
            std::hint::black_box(max_pool2d(&pool, xv.clone()).sum().into_scalar::<f32>());
        });
        row("max_pool2d", name, "forward+backward", reps, || {
            read_grad(max_pool2d(&pool, x.clone()).sum(), &x);
        });
    }
}

/// Backpropagates `loss` and reads the sum of `x`'s gradient (reading waits for the device).
fn read_grad<const D: usize>(loss: Tensor<1>, x: &Tensor<D>) {
    let grads = loss.backward();
    let dx = x.grad(&grads).expect("an input gradient");
    std::hint::black_box(dx.sum().into_scalar::<f32>());
}

/// One row of softmax over the last dimension of `shape`, forward and backward, on `device`
/// (with autodiff), weighted so that the gradient is not zero (a softmax's rows sum to 1).
fn softmax_row(kernel: &str, device: &Device, shape: [usize; 4], reps: usize) {
    let a = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device).require_grad();
    let w = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let name = format!("{shape:?}, last dim");
    row(kernel, &name, "forward+backward", reps, || {
        read_grad((softmax_last(a.clone()) * w.clone()).sum(), &a);
    });
}

/// The transformer ops at the shapes of configs/shakespeare_char.toml (batch 12 x 64 positions,
/// width 128, 4 heads): causal attention from the query/key/value projection, GELU on the
/// 4x-wide MLP activation, softmax on the attention weights, layer norm on the residual stream.
fn transformer_rows(reps: usize) {
    let device = Device::flex().autodiff();
    let random = |shape: [usize; 3]| {
        Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad()
    };
    let qkv = random([12, 64, 384]);
    let wy = Tensor::<3>::random([12, 64, 128], Distribution::Normal(0.0, 1.0), &device);
    let name = "[12, 64, 3 x 128], 4 heads, causal";
    row("attention", name, "forward+backward", reps, || {
        read_grad((causal_attention(qkv.clone(), 4) * wy.clone()).sum(), &qkv);
    });
    let x = random([12, 64, 512]);
    row("gelu", "[12, 64, 512]", "forward+backward", reps, || {
        read_grad(gelu(x.clone()).sum(), &x);
    });
    softmax_row("softmax", &device, [12, 4, 64, 64], reps);
    let ln = LayerNormConfig::new(128).init(&device);
    let r = random([12, 64, 128]);
    let w3 = Tensor::<3>::random([12, 64, 128], Distribution::Normal(0.0, 1.0), &device);
    row(
        "layer_norm",
        "[12, 64, 128]",
        "forward+backward",
        reps,
        || {
            read_grad((layer_norm(&ln, r.clone(), 1e-5) * w3.clone()).sum(), &r);
        },
    );
}

/// The GPU kernels on the first WGPU device, if there is one, against burn's ops (fused by
/// burn's fusion, on in GPU builds). On a CPU-only machine the device is Mesa's lavapipe: a
/// ratio there, not a GPU speed.
#[cfg(feature = "wgpu")]
fn gpu_rows(reps: usize) {
    let Some(device) = Device::enumerate(burn::tensor::DeviceType::Wgpu)
        .into_vec()
        .into_iter()
        .next()
    else {
        println!(
            "{}",
            serde_json::json!({"skipped": "gpu rows: no WGPU device"})
        );
        return;
    };
    // The GPT's attention weights (a unit per row), and rows of 1,000 (a work group per row).
    for shape in [[12, 4, 64, 64], [4, 2, 32, 1000]] {
        softmax_row("softmax (wgpu)", &device.clone().autodiff(), shape, reps);
    }
}

/// GFLOP/s of the gemm crate (flex's matrix product) on a large square `f32` product with all
/// the pool's threads: the ceiling the other figures are read against.
fn ceiling() {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let ms = time(10, || {
        // SAFETY: three n x n row-major buffers, `c` distinct from `a` and `b`.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        std::hint::black_box(&c);
    });
    let gflops = 2.0 * (n * n * n) as f64 / (ms * 1e-3) / 1e9;
    println!(
        "{}",
        serde_json::json!({"ceiling": "sgemm 1024^3", "ms": ms, "gflops": gflops})
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = arg(&args, "--reps", 20);
    kiln_trainer::backend::init_threads(arg(&args, "--threads", 2));
    if args.iter().any(|a| a == "--ceiling") {
        ceiling();
        return;
    }
    #[cfg(feature = "wgpu")]
    if args.iter().any(|a| a == "--gpu") {
        gpu_rows(reps);
        return;
    }
    conv_rows(reps);
    pool_rows(reps);
    transformer_rows(reps);
    #[cfg(feature = "wgpu")]
    gpu_rows(reps);
}

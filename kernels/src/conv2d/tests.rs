//! The kernel against burn's own `conv2d` (the reference), forward values and the three
//! gradients, on random shapes including odd sizes, strides, asymmetric padding and batch 1.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Distribution, Tensor};

use super::conv2d;

/// Largest absolute difference, relative to the reference's largest magnitude.
fn rel_err<const D: usize>(got: Tensor<D>, want: Tensor<D>) -> f32 {
    let got = got.into_data().try_to_vec::<f32>().expect("f32 values");
    let want = want.into_data().try_to_vec::<f32>().expect("f32 values");
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(&want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    /// top, left, bottom, right, as burn's `Explicit` takes them.
    padding: [usize; 4],
}

fn layer(c: &Case, device: &Device) -> Conv2d {
    let [t, l, b, r] = c.padding;
    Conv2dConfig::new([c.c_in, c.c_out], c.kernel)
        .with_stride(c.stride)
        .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
        .init(device)
}

/// Runs the kernel and burn's path on the same weights and inputs, forward and backward,
/// returning the worst relative error of (y, dx, dw, db).
fn compare(c: &Case) -> [f32; 4] {
    let device = Device::flex().autodiff();
    let conv = layer(c, &device);
    let [h, w] = c.hw;
    let x0 = Tensor::<4>::random(
        [c.batch, c.c_in, h, w],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let run = |kernel: bool| {
        let x = x0.clone().detach().require_grad();
        let y = if kernel {
            conv2d(&conv, x.clone())
        } else {
            conv.forward(x.clone())
        };
        // A loss whose gradient differs per output element.
        let weights = Tensor::<4>::ones(y.dims(), &device)
            .cumsum(3)
            .div_scalar(7.0)
            .sin();
        let grads = (y.clone() * weights).sum().backward();
        let dx = x.grad(&grads).unwrap();
        let dw = conv.weight.grad(&grads).unwrap();
        let db = conv.bias.as_ref().unwrap().grad(&grads).unwrap();
        (y.inner(), dx, dw, db)
    };
    let (y, dx, dw, db) = run(true);
    let (ry, rdx, rdw, rdb) = run(false);
    assert_eq!(y.dims(), ry.dims());
    [
        rel_err(y, ry),
        rel_err(dx, rdx),
        rel_err(dw, rdw),
        rel_err(db, rdb),
    ]
}

const TOL: f32 = 2e-5;

fn check(c: Case) {
    let errs = compare(&c);
    assert!(
        errs.iter().all(|e| *e < TOL),
        "batch {} {}->{} {:?} k{:?} s{:?} p{:?}: relative errors (y, dx, dw, db) {errs:?}",
        c.batch,
        c.c_in,
        c.c_out,
        c.hw,
        c.kernel,
        c.stride,
        c.padding
    );
}

#[test]
fn the_mnist_cnn_layers_match_burn() {
    // conv1 and conv2 of configs/mnist_cnn.toml, at a small batch.
    check(Case {
        batch: 3,
        c_in: 1,
        c_out: 32,
        hw: [28, 28],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
    });
    check(Case {
        batch: 2,
        c_in: 32,
        c_out: 64,
        hw: [14, 14],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
    });
}

#[test]
fn batch_one_and_batches_past_one_gradient_group_match_burn() {
    check(Case {
        batch: 1,
        c_in: 3,
        c_out: 5,
        hw: [9, 7],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
    });
    // 19 images: two full groups of 8 and a partial one.
    check(Case {
        batch: 19,
        c_in: 2,
        c_out: 4,
        hw: [6, 5],
        kernel: [5, 5],
        stride: [1, 1],
        padding: [2; 4],
    });
}

#[test]
fn odd_sizes_strides_and_asymmetric_padding_match_burn() {
    check(Case {
        batch: 2,
        c_in: 3,
        c_out: 7,
        hw: [11, 8],
        kernel: [3, 5],
        stride: [2, 1],
        padding: [1, 2, 0, 2],
    });
    check(Case {
        batch: 3,
        c_in: 4,
        c_out: 3,
        hw: [13, 9],
        kernel: [3, 3],
        stride: [2, 3],
        padding: [0; 4],
    });
    check(Case {
        batch: 2,
        c_in: 1,
        c_out: 2,
        hw: [5, 5],
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0; 4],
    });
    // Padding wider than the image: some kernel columns read no pixel at all.
    check(Case {
        batch: 2,
        c_in: 2,
        c_out: 3,
        hw: [4, 1],
        kernel: [5, 5],
        stride: [1, 1],
        padding: [2; 4],
    });
    check(Case {
        batch: 1,
        c_in: 3,
        c_out: 2,
        hw: [2, 2],
        kernel: [7, 7],
        stride: [1, 1],
        padding: [3; 4],
    });
    // A kernel as large as the padded input: one output pixel.
    check(Case {
        batch: 2,
        c_in: 2,
        c_out: 3,
        hw: [4, 3],
        kernel: [6, 5],
        stride: [1, 1],
        padding: [1; 4],
    });
}

#[test]
fn the_forward_pass_without_autodiff_matches_burn() {
    let device = Device::flex();
    let c = Case {
        batch: 4,
        c_in: 3,
        c_out: 6,
        hw: [10, 12],
        kernel: [3, 3],
        stride: [1, 2],
        padding: [1; 4],
    };
    let conv = layer(&c, &device);
    let x = Tensor::<4>::random([4, 3, 10, 12], Distribution::Normal(0.0, 1.0), &device);
    let err = rel_err(conv2d(&conv, x.clone()), conv.forward(x));
    assert!(err < TOL, "relative error {err}");
}

#[test]
fn on_the_cpu_the_kernel_runs() {
    let device = Device::flex().autodiff();
    let c = Case {
        batch: 2,
        c_in: 1,
        c_out: 2,
        hw: [5, 5],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
    };
    let conv = layer(&c, &device);
    let before = super::CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let _ = conv2d(&conv, Tensor::<4>::zeros([2, 1, 5, 5], &device));
    assert!(super::CALLS.load(std::sync::atomic::Ordering::Relaxed) > before);
}

#[test]
fn the_weight_gradient_does_not_depend_on_the_thread_count() {
    let c = Case {
        batch: 21,
        c_in: 3,
        c_out: 8,
        hw: [12, 12],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1; 4],
    };
    let device = Device::flex().autodiff();
    let conv = layer(&c, &device);
    let x = Tensor::<4>::random([21, 3, 12, 12], Distribution::Normal(0.0, 1.0), &device);
    let grads_on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let grads = conv2d(&conv, x.clone()).sum().backward();
            conv.weight
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32 values")
        })
    };
    let one = grads_on(1);
    assert_eq!(
        one,
        grads_on(3),
        "1 thread and 3 threads give different weight gradients"
    );
}

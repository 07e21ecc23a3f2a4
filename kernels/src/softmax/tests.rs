//! The kernel against burn's own `softmax` over the last dimension (the reference): values
//! and gradients, with a causal mask's -inf as the GPT has them, on odd sizes.

use burn::tensor::{Bool, Device, Distribution, Tensor};

use super::softmax_last;
use crate::testing::values;

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().chain(b).all(|v| v.is_finite()),
        "a value is not finite"
    );
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Whether the kernel's values agree with the reference's within what summing a row of `n`
/// terms in another order can change: (n - 1) ulps of each value (the bound of recursive
/// summation), plus 1e-6. A fixed 1e-6 alone failed now and then: on lavapipe the 70,000
/// random rows of 129 differ by 7e-7 to 8e-7 at most from run to run (the kernel and burn's
/// reduction add in different orders), and the tail passes 1e-6. A wrong or missing row is
/// off by orders of magnitude more.
fn agree(a: &[f32], b: &[f32], n: usize) -> bool {
    let relative = (n.max(2) - 1) as f32 * f32::EPSILON;
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-6 + relative * y.abs())
}

/// Which rows of the kernel's `y` and the reference's `r` differ, and which side's rows do not
/// sum to 1: which of the two went wrong, for a failure's message.
fn where_rows_differ(y: &[f32], r: &[f32], n: usize) -> String {
    let differing: Vec<usize> = y
        .chunks(n)
        .zip(r.chunks(n))
        .enumerate()
        .filter(|(_, (a, b))| !agree(a, b, n))
        .map(|(i, _)| i)
        .collect();
    let not_one = |v: &[f32]| {
        v.chunks(n)
            .filter(|row| (row.iter().sum::<f32>() - 1.0).abs() > 1e-4)
            .count()
    };
    format!(
        "{} rows differ, the first {:?}, the last {:?}; rows not summing to 1: kernel {}, reference {}",
        differing.len(),
        differing.first(),
        differing.last(),
        not_one(y),
        not_one(r)
    )
}

fn check(shape: [usize; 4], causal: bool) {
    check_on(&Device::flex().autodiff(), shape, causal);
}

fn check_on(device: &Device, shape: [usize; 4], causal: bool) {
    let device = device.clone();
    let mut x0 = Tensor::<4>::random(shape, Distribution::Normal(0.0, 2.0), &device);
    if causal {
        let [_, _, t, k] = shape;
        let mask = Tensor::<2, Bool>::tril_mask([t, k], 0, &device)
            .unsqueeze::<4>()
            .expand(shape);
        x0 = x0.mask_fill(mask, f32::NEG_INFINITY);
    }
    // A random weight per element, so that the gradient differs everywhere (a softmax's rows
    // sum to 1: a weight constant along a row would give a zero gradient).
    let w = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let run = |kernel: bool| {
        let x = x0.clone().require_grad();
        let y = if kernel {
            softmax_last(x.clone())
        } else {
            burn::tensor::activation::softmax(x.clone(), 3)
        };
        let grads = (y.clone() * w.clone()).sum().backward();
        (
            values(y.inner()),
            values(x.grad(&grads).expect("a gradient")),
        )
    };
    let ((y, dx), (ry, rdx)) = (run(true), run(false));
    assert!(
        agree(&y, &ry, shape[3]),
        "{shape:?}: values differ by {} ({})",
        max_abs_diff(&y, &ry),
        where_rows_differ(&y, &ry, shape[3])
    );
    assert!(
        max_abs_diff(&dx, &rdx) < 1e-5,
        "{shape:?}: gradients differ by {}",
        max_abs_diff(&dx, &rdx)
    );
    assert!(y.iter().all(|v| v.is_finite()));
    // A masked position gets exactly 0.
    let x = values(x0);
    assert!(
        x.iter()
            .zip(&y)
            .all(|(x, y)| *x != f32::NEG_INFINITY || *y == 0.0)
    );
    // Every row sums to 1.
    for row in y.chunks(shape[3]) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn values_and_gradients_match_burns() {
    check([12, 4, 64, 64], true);
    check([2, 3, 5, 7], false);
    check([1, 1, 1, 1], false);
    check([3, 2, 9, 9], true);
}

/// The first WGPU device (Mesa's lavapipe in CI), or `None` when there is none; under CI a
/// missing device fails the test.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Option<Device> {
    let found = Device::enumerate(burn::tensor::DeviceType::Wgpu)
        .into_vec()
        .into_iter()
        .next();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide a WGPU device (Mesa's lavapipe: mesa-vulkan-drivers)"
        );
        eprintln!("SKIPPED: no WGPU device (install mesa-vulkan-drivers for lavapipe)");
    }
    found
}

#[cfg(feature = "wgpu")]
#[test]
fn on_wgpu_the_cubecl_kernels_match_burns() {
    let Some(device) = wgpu_device() else {
        return;
    };
    let before = super::gpu::calls();
    let ad = device.clone().autodiff();
    check_on(&ad, [12, 4, 64, 64], true);
    check_on(&ad, [2, 3, 5, 7], false);
    check_on(&ad, [1, 1, 1, 1], false);
    check_on(&ad, [3, 2, 9, 9], true);
    // Both sides of the switch from a thread per row to a work group per row.
    check_on(&ad, [1, 2, 3, 128], false);
    check_on(&ad, [1, 2, 3, 129], false);
    // Rows longer than a work group (units stride over them), and not a power of two, causal.
    check_on(&ad, [2, 1, 3, 1000], false);
    check_on(&ad, [1, 1, 300, 300], true);
    // More rows than one side of the grid (65,535): the second grid dimension.
    check_on(&ad, [1, 1, 70_000, 129], false);
    assert!(
        super::gpu::calls() - before >= 9,
        "the GPU kernel did not run"
    );
    // Without autodiff, and on a transposed (strided) tensor.
    let x = Tensor::<4>::random([2, 3, 40, 33], Distribution::Normal(0.0, 2.0), &device)
        .swap_dims(2, 3);
    let (got, want) = (
        values(softmax_last(x.clone())),
        values(burn::tensor::activation::softmax(x, 3)),
    );
    assert!(max_abs_diff(&got, &want) < 1e-6);
}

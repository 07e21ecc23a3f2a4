//! The kernel against burn's own `max_pool2d` (the reference): values and input gradients, on
//! odd sizes, overlapping and non-square windows, batch 1.

use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::{Device, Distribution, Tensor};

use super::max_pool2d;
use crate::testing::values;

/// Runs the kernel and burn on the same input, returning (kernel, burn) for y and dx.
fn compare(shape: [usize; 4], pool: &MaxPool2d) -> [(Vec<f32>, Vec<f32>); 2] {
    let device = Device::flex().autodiff();
    let x0 = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let run = |kernel: bool| {
        let x = x0.clone().require_grad();
        let y = if kernel {
            max_pool2d(pool, x.clone())
        } else {
            pool.forward(x.clone())
        };
        let weights = Tensor::<4>::ones(y.dims(), &device)
            .cumsum(3)
            .div_scalar(3.0)
            .cos();
        let grads = (y.clone() * weights).sum().backward();
        (
            values(y.inner()),
            values(x.grad(&grads).expect("a gradient")),
        )
    };
    let ((y, dx), (ry, rdx)) = (run(true), run(false));
    [(y, ry), (dx, rdx)]
}

fn check(shape: [usize; 4], kernel: [usize; 2], stride: [usize; 2]) {
    let pool = MaxPool2dConfig::new(kernel).with_strides(stride).init();
    let [(y, ry), (dx, rdx)] = compare(shape, &pool);
    // Same elements chosen, so the values and the gradients are equal, not just close.
    assert_eq!(y, ry, "{shape:?} k{kernel:?} s{stride:?}: values differ");
    assert_eq!(
        dx, rdx,
        "{shape:?} k{kernel:?} s{stride:?}: gradients differ"
    );
}

#[test]
fn the_mnist_cnn_pools_match_burn() {
    check([4, 32, 28, 28], [2, 2], [2, 2]);
    check([3, 64, 14, 14], [2, 2], [2, 2]);
}

#[test]
fn odd_sizes_overlapping_windows_and_batch_one_match_burn() {
    check([1, 3, 7, 9], [2, 2], [2, 2]);
    check([2, 2, 9, 8], [3, 3], [2, 2]);
    check([2, 3, 10, 7], [3, 2], [1, 2]);
    check([1, 1, 5, 5], [5, 5], [1, 1]);
}

#[test]
fn the_forward_pass_without_autodiff_matches_burn() {
    let device = Device::flex();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let x = Tensor::<4>::random([2, 5, 11, 13], Distribution::Normal(0.0, 1.0), &device);
    assert_eq!(
        values(max_pool2d(&pool, x.clone())),
        values(pool.forward(x))
    );
}

#[test]
fn a_nan_is_the_maximum_of_its_window() {
    let device = Device::flex();
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let x = Tensor::<4>::from_floats([[[[1.0, f32::NAN], [3.0, 2.0]]]], &device);
    assert!(values(max_pool2d(&pool, x))[0].is_nan());
}

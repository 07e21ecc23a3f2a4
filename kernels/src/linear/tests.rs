//! The kernel against burn's `Linear::forward`: the MNIST CNN's head, widths that leave
//! columns past the last vector, batches that leave rows past the last tile, many rows (the
//! parallel path), dense inputs and inputs after a ReLU (the zeros the kernel skips); and a
//! row's answer is the same alone or in any batch, whatever zeros its neighbours have; and every
//! vector unit this CPU has (AVX-512, AVX2, the plain build) gives the same values to the bit.

use std::sync::atomic::Ordering;

use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};

use super::{CALLS, cpu, linear};
use crate::testing::{same_on_every_unit, values};

fn layer(d_in: usize, d_out: usize) -> Linear {
    LinearConfig::new(d_in, d_out).init(&Device::flex())
}

fn input(n: usize, d_in: usize) -> Tensor<2> {
    Tensor::<2>::random([n, d_in], Distribution::Normal(0.0, 1.0), &Device::flex())
}

/// Inputs after a ReLU: half of them zero, in different places in each row, which the
/// kernel skips.
fn sparse_input(n: usize, d_in: usize) -> Tensor<2> {
    relu(input(n, d_in))
}

/// The kernel ran and agrees with burn to float rounding (the same products, summed in
/// another order).
fn check(n: usize, d_in: usize, d_out: usize) {
    check_on(n, d_in, d_out, input(n, d_in));
    check_on(n, d_in, d_out, sparse_input(n, d_in));
}

fn check_on(n: usize, d_in: usize, d_out: usize, x: Tensor<2>) {
    assert!(
        cpu::available(),
        "this CPU has no fused multiply-add: nothing to test"
    );
    let l = layer(d_in, d_out);
    let before = CALLS.load(Ordering::Relaxed);
    let y = linear(&l, x.clone());
    assert!(
        CALLS.load(Ordering::Relaxed) > before,
        "{n}x{d_in}->{d_out}: the kernel did not run"
    );
    let want = l.forward(x);
    assert_eq!(y.dims(), want.dims());
    let (y, want) = (values(y), values(want));
    let worst = y
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{n}x{d_in}->{d_out}: off by {worst:e}");
}

#[test]
fn the_mnist_cnn_head_matches_burn() {
    check(1, 3136, 128);
    check(32, 3136, 128);
    check(1, 128, 10);
    check(7, 128, 10);
}

#[test]
fn odd_widths_and_batches_match_burn() {
    for (n, d_in, d_out) in [
        (1, 1, 1),
        (3, 5, 17),
        (5, 13, 31),
        (6, 40, 100),
        (2, 7, 16),
        (9, 3, 250),
        (1, 64, 15),
        // More rows than one task takes: the parallel path.
        (53, 30, 40),
    ] {
        check(n, d_in, d_out);
    }
}

#[test]
fn a_row_gets_the_same_answer_alone_or_in_a_batch() {
    let l = layer(300, 70);
    let x = sparse_input(37, 300);
    let all = values(linear(&l, x.clone()));
    for i in [0, 3, 4, 16, 36] {
        let alone = values(linear(&l, x.clone().narrow(0, i, 1)));
        assert_eq!(
            alone,
            all[i * 70..(i + 1) * 70],
            "row {i}: not bit-identical"
        );
    }
}

#[test]
fn autodiff_weights_take_burns_path() {
    let device = Device::flex().autodiff();
    let l: Linear = LinearConfig::new(6, 4).init(&device);
    // A training step: the batch on the autodiff device, or (as kiln's loop uploads it) on
    // the plain CPU device while the weights are tracked; both need the weights' gradients.
    for x_device in [device.clone(), Device::flex()] {
        let x = Tensor::<2>::random([3, 6], Distribution::Normal(0.0, 1.0), &x_device);
        let y = linear(&l, x.clone());
        assert_eq!(values(y.clone()), values(l.forward(x)));
        let grads = y.sum().backward();
        assert!(l.weight.grad(&grads).is_some(), "no weight gradient");
    }
}

#[test]
fn every_vector_unit_gives_the_same_values() {
    // Rows and columns that leave remainders for every tile shape, and zeros to skip.
    let s = cpu::Shape {
        n: 7,
        d_in: 50,
        d_out: 133,
    };
    let x = values(sparse_input(7, 50));
    let w = values(input(50, 133));
    let bias = values(input(1, 133));
    same_on_every_unit(|unit| cpu::forward_on(unit, &s, &x, &w, &bias));
}

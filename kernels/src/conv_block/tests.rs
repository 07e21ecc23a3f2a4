//! The fused block against the op-by-op path (kiln's convolution, ReLU, kiln's pooling): the
//! MNIST CNN's blocks, odd sizes, asymmetric and no padding, no pool, a channel count the tile
//! does not divide; an image's answer is the same alone or in any batch; and every vector unit
//! this CPU has (AVX-512, AVX2, the plain build) gives the same values to the bit.

use std::sync::atomic::Ordering;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::{Device, Distribution, Tensor};

use super::{CALLS, conv_relu_pool, cpu, op_by_op, winograd};
use crate::testing::{same_on_every_unit, values};

fn conv(c_in: usize, c_out: usize, kernel: [usize; 2], padding: PaddingConfig2d) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], kernel)
        .with_padding(padding)
        .init(&Device::flex())
}

fn input(shape: [usize; 4]) -> Tensor<4> {
    Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex())
}

/// The fused kernel ran (once more than before) and agrees with the op-by-op path to float
/// rounding: the two add the same products in different orders.
fn check(shape: [usize; 4], conv: &Conv2d, pool: Option<&MaxPool2d>) {
    assert!(
        cpu::available(),
        "this CPU has no fused multiply-add: nothing to test"
    );
    let x = input(shape);
    let before = CALLS.load(Ordering::Relaxed);
    let y = conv_relu_pool(conv, pool, x.clone());
    assert!(
        CALLS.load(Ordering::Relaxed) > before,
        "{shape:?}: the fused kernel did not run"
    );
    let want = op_by_op(conv, pool, x);
    assert_eq!(y.dims(), want.dims(), "{shape:?}: shape");
    let (y, want) = (values(y), values(want));
    let worst = y
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{shape:?}: off by {worst:e}");
    // The ReLU happened: no negative value.
    assert!(y.iter().all(|&v| v >= 0.0), "{shape:?}: a negative output");
}

#[test]
fn the_mnist_cnn_blocks_match_op_by_op() {
    let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let pool = MaxPool2dConfig::new([2, 2]).init();
    check(
        [3, 1, 28, 28],
        &conv(1, 32, [3, 3], same.clone()),
        Some(&pool),
    );
    // The second block (32 -> 64 channels) takes Winograd's transform.
    let before = winograd::images([32, 64, 14, 14]);
    check([2, 32, 14, 14], &conv(32, 64, [3, 3], same), Some(&pool));
    assert!(winograd::images([32, 64, 14, 14]) >= before + 2);
}

#[test]
fn winograd_matches_op_by_op_on_odd_sizes_and_leaves_images_not_finite_to_the_direct_kernel() {
    let pool = MaxPool2dConfig::new([2, 2]).init();
    // Odd sizes (the pool drops the last row and column), asymmetric padding (top 2, left 0,
    // bottom 1, right 1), channels in one and in several vectors.
    check(
        [2, 16, 7, 9],
        &conv(16, 32, [3, 3], PaddingConfig2d::Explicit(2, 0, 1, 1)),
        Some(&pool),
    );
    check(
        [1, 48, 5, 6],
        &conv(48, 16, [3, 3], PaddingConfig2d::Valid),
        Some(&pool),
    );
    // Image 1 holds a NaN, image 2 an infinity: those two take the direct kernel, whose NaN
    // and infinities are the op-by-op path's; image 0 takes Winograd.
    let block = conv(16, 16, [3, 3], PaddingConfig2d::Explicit(1, 1, 1, 1));
    let mut x = values(input([3, 16, 6, 6]));
    let image = 16 * 6 * 6;
    x[image + 7] = f32::NAN;
    x[2 * image + 40] = f32::INFINITY;
    let x = Tensor::<4>::from_data(
        burn::tensor::TensorData::new(x, [3, 16, 6, 6]),
        &Device::flex(),
    );
    let before = winograd::images([16, 16, 6, 6]);
    let y = values(conv_relu_pool(&block, Some(&pool), x.clone()));
    // No other test has this shape.
    assert_eq!(winograd::images([16, 16, 6, 6]), before + 1);
    let want = values(op_by_op(&block, Some(&pool), x));
    assert!(y.iter().any(|v| v.is_nan()) && y.iter().any(|v| v.is_infinite()));
    for (a, b) in y.iter().zip(&want) {
        assert!(
            (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() / b.abs().max(1.0) < 1e-5,
            "{a} vs {b}"
        );
    }
}

#[test]
fn odd_sizes_paddings_and_pools_match_op_by_op() {
    let pool3 = MaxPool2dConfig::new([3, 3]).with_strides([3, 3]).init();
    let pool_wide = MaxPool2dConfig::new([1, 2]).with_strides([1, 2]).init();
    // 5x5 kernel, "same" padding, a 3x3 pool that drops the rows and columns left over
    // (floor: 2 of the 11 rows, 1 of the 13 columns).
    check(
        [2, 3, 11, 13],
        &conv(3, 6, [5, 5], PaddingConfig2d::Explicit(2, 2, 2, 2)),
        Some(&pool3),
    );
    // No padding, no pool, a channel count the tile does not divide.
    check(
        [1, 2, 9, 7],
        &conv(2, 7, [3, 3], PaddingConfig2d::Valid),
        None,
    );
    // Asymmetric padding (top 2, left 0, bottom 1, right 3), a non-square kernel and pool.
    check(
        [2, 4, 6, 10],
        &conv(4, 5, [3, 1], PaddingConfig2d::Explicit(2, 0, 1, 3)),
        Some(&pool_wide),
    );
    // One pixel, one channel: a 1x1 convolution.
    check(
        [3, 1, 1, 1],
        &conv(1, 3, [1, 1], PaddingConfig2d::Valid),
        None,
    );
}

#[test]
fn an_image_gets_the_same_answer_alone_or_in_a_batch() {
    let same = PaddingConfig2d::Explicit(1, 1, 1, 1);
    let block = conv(32, 64, [3, 3], same);
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let x = input([5, 32, 14, 14]);
    let all = values(conv_relu_pool(&block, Some(&pool), x.clone()));
    let per = all.len() / 5;
    for i in 0..5 {
        let alone = values(conv_relu_pool(
            &block,
            Some(&pool),
            x.clone().narrow(0, i, 1),
        ));
        assert_eq!(
            alone,
            all[i * per..(i + 1) * per],
            "image {i}: not bit-identical"
        );
    }
}

#[test]
fn autodiff_weights_take_the_op_by_op_path() {
    let device = Device::flex().autodiff();
    let block = Conv2dConfig::new([2, 3], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let pool = MaxPool2dConfig::new([2, 2]).init();
    // A training step: the batch on the autodiff device, or (as kiln's loop uploads it) on
    // the plain CPU device while the weights are tracked. Either way training gets the
    // op-by-op path's values exactly, and its gradients.
    for x_device in [device.clone(), Device::flex()] {
        let x = Tensor::<4>::random([2, 2, 6, 6], Distribution::Normal(0.0, 1.0), &x_device);
        let y = conv_relu_pool(&block, Some(&pool), x.clone());
        assert_eq!(values(y.clone()), values(op_by_op(&block, Some(&pool), x)));
        let grads = y.sum().backward();
        assert!(block.weight.grad(&grads).is_some(), "no weight gradient");
    }
}

#[test]
fn every_vector_unit_gives_the_same_values() {
    // Channels and vectors that leave remainders for every tile shape.
    let g = cpu::Geometry {
        batch: 2,
        c_in: 3,
        height: 9,
        width: 11,
        c_out: 7,
        kernel: [3, 3],
        padding: [1, 1, 1, 1],
        pool: [2, 2],
    };
    let x = values(input([2, 3, 9, 11]));
    let weight = values(input([7, 3, 3, 3]));
    let bias = values(input([1, 1, 1, 7]));
    same_on_every_unit(|unit| cpu::forward_on(unit, &g, &x, &weight, &bias));
    // A block Winograd's transform computes, with tiles and vectors left over.
    let g = cpu::Geometry {
        batch: 2,
        c_in: 32,
        height: 9,
        width: 11,
        c_out: 48,
        kernel: [3, 3],
        padding: [1, 1, 1, 1],
        pool: [2, 2],
    };
    let x = values(input([2, 32, 9, 11]));
    let weight = values(input([48, 32, 3, 3]));
    let bias = values(input([1, 1, 1, 48]));
    same_on_every_unit(|unit| cpu::forward_on(unit, &g, &x, &weight, &bias));
}

#[test]
fn wide_paddings_match_op_by_op_and_sizes_that_overflow_are_refused() {
    // A kernel larger than the image, and padding wider than it (top 3, left 4, bottom 3,
    // right 4 around 3x4 pixels).
    check(
        [2, 2, 3, 4],
        &conv(2, 3, [5, 5], PaddingConfig2d::Explicit(3, 4, 3, 4)),
        None,
    );
    // Padding is only numbers: one near usize::MAX must not wrap the buffer lengths the
    // kernel's reads are checked against.
    let huge = cpu::Geometry {
        batch: 1,
        c_in: 1,
        height: 1,
        width: 1,
        c_out: 2,
        kernel: [2, 17],
        padding: [0, 1, 0, usize::MAX / 2],
        pool: [1, usize::MAX / 2 - 15],
    };
    assert!(!huge.is_valid(), "a geometry whose sizes overflow passed");
}

/// Convolution, bias, ReLU and a 2x2 floor pool, one output at a time in f64: the reference
/// for weights laid out as the kernel takes them.
fn reference(g: &cpu::Geometry, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let [t, _, l, _] = g.padding;
    let [oh, ow] = g.out_hw();
    let at = |n: usize, c: usize, yy: isize, xx: isize| -> f64 {
        let (yy, xx) = (yy - t as isize, xx - l as isize);
        if yy < 0 || xx < 0 || yy >= g.height as isize || xx >= g.width as isize {
            return 0.0;
        }
        f64::from(x[((n * g.c_in + c) * g.height + yy as usize) * g.width + xx as usize])
    };
    let mut y = Vec::new();
    for n in 0..g.batch {
        for o in 0..g.c_out {
            for py in 0..oh {
                for px in 0..ow {
                    let mut m = f64::NEG_INFINITY;
                    for (cy, cx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let (oy, ox) = (2 * py + cy, 2 * px + cx);
                        let mut z = f64::from(b[o]);
                        for c in 0..g.c_in {
                            for i in 0..3 {
                                for j in 0..3 {
                                    let wv = f64::from(w[((o * g.c_in + c) * 3 + i) * 3 + j]);
                                    z += wv * at(n, c, (oy + i) as isize, (ox + j) as isize);
                                }
                            }
                        }
                        m = m.max(z);
                    }
                    y.push(m.max(0.0) as f32);
                }
            }
        }
    }
    y
}

fn close_to(y: &[f32], want: &[f32], what: &str) {
    assert_eq!(y.len(), want.len(), "{what}: size");
    for (k, (a, b)) in y.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() / b.abs().max(1.0) < 1e-5,
            "{what}, output {k}: {a} vs {b}"
        );
    }
}

#[test]
fn an_overflow_inside_winograd_falls_back_to_the_direct_kernel() {
    // Finite inputs whose transform overflows: 2e38 - (-2e38) is infinite in float, and the
    // weights that would multiply it are zero (infinity x 0: NaN in one of a tile's four
    // outputs). The block's answer is the direct kernel's: 5, the centre tap's pixel.
    let g = cpu::Geometry {
        batch: 1,
        c_in: 16,
        height: 4,
        width: 4,
        c_out: 16,
        kernel: [3, 3],
        padding: [0, 0, 0, 0],
        pool: [2, 2],
    };
    let mut x = vec![0.0f32; 16 * 16];
    x[0] = 2e38;
    x[2] = -2e38;
    x[5] = 5.0;
    let mut w = vec![0.0f32; 16 * 16 * 9];
    w[4] = 1.0;
    let b = vec![0.0f32; 16];
    let before = winograd::images([16, 16, 4, 4]);
    let y = cpu::forward(&g, &x, &w, &b).expect("an FMA CPU");
    assert_eq!(
        winograd::images([16, 16, 4, 4]),
        before,
        "counted only when it answers"
    );
    assert_eq!(y[0], 5.0);
    assert!(y[1..].iter().all(|&v| v == 0.0));
}

#[test]
fn the_same_weights_split_into_other_channels_are_other_weights() {
    // 16 -> 32 and 32 -> 16 channels: the same 4,608 numbers, transformed apart.
    let w = values(input([1, 1, 1, 16 * 32 * 9]));
    let b = values(input([1, 1, 1, 32]));
    for [c_in, c_out] in [[16, 32], [32, 16], [16, 32]] {
        let g = cpu::Geometry {
            batch: 2,
            c_in,
            height: 6,
            width: 5,
            c_out,
            kernel: [3, 3],
            padding: [1, 1, 1, 1],
            pool: [2, 2],
        };
        let x = values(input([2, c_in, 6, 5]));
        let before = winograd::images([c_in, c_out, 6, 5]);
        let y = cpu::forward(&g, &x, &w, &b[..c_out]).expect("an FMA CPU");
        assert!(winograd::images([c_in, c_out, 6, 5]) >= before + 2);
        close_to(
            &y,
            &reference(&g, &x, &w, &b[..c_out]),
            &format!("{c_in} -> {c_out}"),
        );
    }
}

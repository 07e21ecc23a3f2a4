//! The kernel against [`reference`] (burn's ops): outputs and the projection's gradient on
//! odd sizes, one head to many, one channel per head, batch 1 and one position; and results
//! that do not depend on the thread count or on the other rows of the batch.

use std::sync::atomic::Ordering;

use burn::tensor::{Device, Distribution, Tensor};

use super::{CALLS, causal_attention, reference};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 values")
}

/// Largest difference relative to the largest reference value.
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// `(output, gradient of qkv)` for a loss weighting the output by a fixed pattern.
fn run(qkv0: &Tensor<3>, heads: usize, kernel: bool) -> (Vec<f32>, Vec<f32>) {
    let qkv = qkv0.clone().require_grad();
    let y = if kernel {
        causal_attention(qkv.clone(), heads)
    } else {
        reference(qkv.clone(), heads)
    };
    let w = Tensor::<3>::ones(y.dims(), &qkv0.device())
        .cumsum(2)
        .div_scalar(7.0)
        .sin();
    let grads = (y.clone() * w).sum().backward();
    (
        values(y.inner()),
        values(qkv.grad(&grads).expect("a gradient")),
    )
}

fn check(batch: usize, t: usize, c: usize, heads: usize) {
    let device = Device::flex().autodiff();
    let qkv = Tensor::<3>::random([batch, t, 3 * c], Distribution::Normal(0.0, 1.5), &device);
    let before = CALLS.load(Ordering::Relaxed);
    let (y, dx) = run(&qkv, heads, true);
    assert!(
        CALLS.load(Ordering::Relaxed) > before,
        "the kernel did not run"
    );
    let (ry, rdx) = run(&qkv, heads, false);
    let shape = (batch, t, c, heads);
    assert!(
        rel_diff(&y, &ry) < 1e-5,
        "{shape:?}: outputs differ by {}",
        rel_diff(&y, &ry)
    );
    assert!(
        rel_diff(&dx, &rdx) < 1e-5,
        "{shape:?}: gradients differ by {}",
        rel_diff(&dx, &rdx)
    );
}

#[test]
fn outputs_and_gradients_match_burns() {
    check(12, 64, 128, 4); // the Shakespeare GPT's layer
    check(3, 7, 12, 3);
    check(2, 5, 6, 1); // one head
    check(2, 9, 4, 4); // one channel per head
    check(1, 1, 8, 2); // one position: it sees only itself
    check(1, 33, 20, 2);
}

#[test]
fn results_do_not_depend_on_threads_or_on_the_rest_of_the_batch() {
    let device = Device::flex().autodiff();
    let qkv = Tensor::<3>::random([5, 11, 3 * 12], Distribution::Normal(0.0, 1.0), &device);
    let all = run(&qkv, 3, true);
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool")
        .install(|| run(&qkv, 3, true));
    assert_eq!(all, one_thread);
    // Row 2 alone gives row 2's values, to the bit.
    let alone = run(&qkv.clone().narrow(0, 2, 1), 3, true);
    let per = |v: &[f32], n: usize| v[2 * n..3 * n].to_vec();
    assert_eq!(alone.0, per(&all.0, 11 * 12));
    assert_eq!(alone.1, per(&all.1, 11 * 36));
}

#[test]
fn the_forward_pass_without_autodiff_matches_burns() {
    let qkv = Tensor::<3>::random(
        [4, 16, 3 * 32],
        Distribution::Normal(0.0, 1.0),
        &Device::flex(),
    );
    let (y, r) = (
        values(causal_attention(qkv.clone(), 4)),
        values(reference(qkv, 4)),
    );
    assert!(rel_diff(&y, &r) < 1e-5);
}

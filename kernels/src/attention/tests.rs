//! The kernel against [`reference`] (burn's ops): outputs and the projection's gradient on
//! odd sizes, one head to many, one channel per head, batch 1 and one position; and results
//! that do not depend on the thread count or on the other rows of the batch.

use burn::tensor::{Device, Distribution, Tensor};

use super::{CALLS, causal_attention, reference};
use crate::testing::values;

/// Largest difference relative to the largest reference value (both must be finite).
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    assert!(
        got.iter().chain(want).all(|v| v.is_finite()),
        "a value is not finite"
    );
    let scale = want.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// The kernel's forward passes on this thread (the forward runs on the caller's thread).
fn calls() -> usize {
    CALLS.with(|c| c.get())
}

/// A random weight per output element of `qkv`'s attention (so the gradient differs at every
/// position, row and channel).
fn weights(qkv: &Tensor<3>) -> Tensor<3> {
    let [b, t, c3] = qkv.dims();
    Tensor::<3>::random(
        [b, t, c3 / 3],
        Distribution::Normal(0.0, 1.0),
        &qkv.device(),
    )
}

/// `(output, gradient of qkv)` for the loss `Σ w ⊙ attention(qkv)`.
fn run(qkv0: &Tensor<3>, w: &Tensor<3>, heads: usize, kernel: bool) -> (Vec<f32>, Vec<f32>) {
    let qkv = qkv0.clone().require_grad();
    let y = if kernel {
        causal_attention(qkv.clone(), heads)
    } else {
        reference(qkv.clone(), heads)
    };
    let grads = (y.clone() * w.clone()).sum().backward();
    (
        values(y.inner()),
        values(qkv.grad(&grads).expect("a gradient")),
    )
}

fn check(batch: usize, t: usize, c: usize, heads: usize) {
    let device = Device::flex().autodiff();
    let qkv = Tensor::<3>::random([batch, t, 3 * c], Distribution::Normal(0.0, 1.5), &device);
    let w = weights(&qkv);
    let before = calls();
    let (y, dx) = run(&qkv, &w, heads, true);
    assert_eq!(calls(), before + 1, "the kernel did not run");
    let (ry, rdx) = run(&qkv, &w, heads, false);
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
    let w = weights(&qkv);
    let all = run(&qkv, &w, 3, true);
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool")
        .install(|| run(&qkv, &w, 3, true));
    assert_eq!(all, one_thread);
    // Row 2 alone gives row 2's values, to the bit.
    let row = |t: &Tensor<3>| t.clone().narrow(0, 2, 1);
    let alone = run(&row(&qkv), &row(&w), 3, true);
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
    let before = calls();
    let y = values(causal_attention(qkv.clone(), 4));
    assert_eq!(calls(), before + 1, "the kernel did not run");
    let r = values(reference(qkv, 4));
    assert!(rel_diff(&y, &r) < 1e-5);
}

//! The kernel against burn's own `LayerNorm::forward` (the reference): values and the
//! gradients of the input, the scale and the shift, with and without a shift, on odd sizes
//! and across the row groups of the scale's gradient.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Distribution, Tensor};

use super::layer_norm;
use crate::testing::values;

const EPS: f64 = 1e-5;

/// Largest absolute difference, relative to the reference's largest magnitude.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn check(shape: [usize; 3], bias: bool) {
    let device = Device::flex().autodiff();
    let d = shape[2];
    let mut ln: LayerNorm = LayerNormConfig::new(d)
        .with_bias(bias)
        .with_epsilon(EPS)
        .init(&device);
    // A scale and shift other than 1 and 0, so that their roles are tested.
    ln.gamma = Param::from_tensor(Tensor::random([d], Distribution::Normal(1.0, 0.5), &device));
    if bias {
        ln.beta = Some(Param::from_tensor(Tensor::random(
            [d],
            Distribution::Normal(0.0, 0.5),
            &device,
        )));
    }
    let x0 = Tensor::<3>::random(shape, Distribution::Normal(0.5, 2.0), &device);
    let run = |kernel: bool| {
        let x = x0.clone().require_grad();
        let y = if kernel {
            layer_norm(&ln, x.clone(), EPS)
        } else {
            ln.forward(x.clone())
        };
        let w = Tensor::<3>::ones(y.dims(), &device)
            .cumsum(2)
            .div_scalar(4.0)
            .sin();
        let grads = (y.clone() * w).sum().backward();
        let dx = values(x.grad(&grads).expect("an input gradient"));
        let dg = values(ln.gamma.grad(&grads).expect("a scale gradient"));
        let db = ln
            .beta
            .as_ref()
            .map(|b| values(b.grad(&grads).expect("a shift gradient")));
        (values(y.inner()), dx, dg, db)
    };
    let (y, dx, dg, db) = run(true);
    let (ry, rdx, rdg, rdb) = run(false);
    let errs = [rel_err(&y, &ry), rel_err(&dx, &rdx), rel_err(&dg, &rdg)];
    assert!(
        errs.iter().all(|e| *e < 1e-5),
        "{shape:?} bias {bias}: (y, dx, dgamma) {errs:?}"
    );
    match (db, rdb) {
        (Some(db), Some(rdb)) => assert!(rel_err(&db, &rdb) < 1e-5, "{shape:?}: dbeta"),
        (None, None) => {}
        _ => panic!("a shift gradient on one side only"),
    }
}

#[test]
fn values_and_gradients_match_burns() {
    check([12, 64, 128], false);
    check([12, 64, 128], true);
    check([1, 1, 7], true);
    check([3, 50, 33], true);
    // Rows of 600: groups of 109 rows; 300 rows make two full groups and a partial one.
    check([3, 100, 600], true);
}

#[test]
fn the_scale_gradient_does_not_depend_on_the_thread_count() {
    let device = Device::flex().autodiff();
    // 320 rows of 600: three groups of rows.
    let ln = LayerNormConfig::new(600).init(&device);
    let x = Tensor::<3>::random([4, 80, 600], Distribution::Normal(0.0, 1.0), &device);
    let grad_on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let grads = layer_norm(&ln, x.clone(), 1e-5).sum().backward();
            values(ln.gamma.grad(&grads).unwrap())
        })
    };
    assert_eq!(grad_on(1), grad_on(3));
}

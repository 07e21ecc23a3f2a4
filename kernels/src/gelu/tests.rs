//! The kernel against burn's own `gelu` (the reference, libm's `erff`): values and gradients
//! within 1e-6 x max(1, |x|) (kiln's `erf` is within 5e-7 of the exact one), on odd sizes and
//! ranks, with NaN and infinities passed through as burn does.

use burn::tensor::{Device, Distribution, Tensor};

use super::gelu;
use crate::testing::values;

fn check<const D: usize>(shape: [usize; D]) {
    let device = Device::flex().autodiff();
    let x0 = Tensor::<D>::random(shape, Distribution::Normal(0.0, 3.0), &device);
    let run = |kernel: bool| {
        let x = x0.clone().require_grad();
        let y = if kernel {
            gelu(x.clone())
        } else {
            burn::tensor::activation::gelu(x.clone())
        };
        let w = Tensor::<D>::ones(y.dims(), &device)
            .cumsum(D - 1)
            .div_scalar(5.0)
            .sin();
        let grads = (y.clone() * w).sum().backward();
        (
            values(y.inner()),
            values(x.grad(&grads).expect("a gradient")),
        )
    };
    let ((y, dx), (ry, rdx)) = (run(true), run(false));
    let x = values(x0);
    close(&x, &y, &ry, &format!("{shape:?}: values"));
    close(&x, &dx, &rdx, &format!("{shape:?}: gradients"));
}

/// `got` within 1e-6 x max(1, |x|) of `want`, element by element.
fn close(x: &[f32], got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for ((&x, &g), &w) in x.iter().zip(got).zip(want) {
        let tol = 1e-6 * x.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "{what} differ at x = {x}: {g} against {w}"
        );
    }
}

#[test]
fn values_and_gradients_match_burns() {
    check([12, 64, 512]);
    check([3, 7]);
    check([1]);
    check([2, 3, 5, 7]);
}

#[test]
fn the_forward_pass_without_autodiff_matches_burns() {
    let x = Tensor::<2>::random([33, 65], Distribution::Normal(0.0, 2.0), &Device::flex());
    let (got, want) = (
        values(gelu(x.clone())),
        values(burn::tensor::activation::gelu(x.clone())),
    );
    close(&values(x), &got, &want, "values");
}

#[test]
fn nan_and_infinities_pass_as_burns_do() {
    let x = Tensor::<1>::from_floats(
        [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0],
        &Device::flex(),
    );
    let got = values(gelu(x));
    assert!(got[0].is_nan());
    assert_eq!(got[1], f32::INFINITY);
    // -inf x (1 + erf(-inf)): NaN for burn too (-inf x 0).
    assert!(got[2].is_nan() || got[2] == 0.0);
    assert_eq!(&got[3..], &[0.0, 0.0]);
}

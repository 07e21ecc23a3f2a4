//! The kernel against burn's own `gelu` (the reference): the same formulas element for
//! element, so values and gradients are equal to the bit, on odd sizes and ranks.

use burn::tensor::{Device, Distribution, Tensor};

use super::gelu;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 values")
}

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
    assert_eq!(y, ry, "{shape:?}: values differ");
    assert_eq!(dx, rdx, "{shape:?}: gradients differ");
}

#[test]
fn values_and_gradients_equal_burns() {
    check([12, 64, 512]);
    check([3, 7]);
    check([1]);
    check([2, 3, 5, 7]);
}

#[test]
fn the_forward_pass_without_autodiff_equals_burns() {
    let x = Tensor::<2>::random([33, 65], Distribution::Normal(0.0, 2.0), &Device::flex());
    assert_eq!(
        values(gelu(x.clone())),
        values(burn::tensor::activation::gelu(x))
    );
}

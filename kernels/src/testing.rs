//! What the kernels' tests share.

use burn::tensor::Tensor;

/// A tensor's values in row-major order.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 values")
}

/// Runs `f` on every vector unit this CPU has and asserts that all give the same values, to
/// the bit.
pub fn same_on_every_unit(f: impl Fn(crate::unit::Unit) -> Vec<f32>) {
    let units = crate::unit::all();
    let first = f(units[0]);
    for &unit in &units[1..] {
        assert_eq!(f(unit), first, "{unit:?} differs from {:?}", units[0]);
    }
}

//! What the kernels' tests share.

use burn::tensor::Tensor;

/// A tensor's values in row-major order.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 values")
}

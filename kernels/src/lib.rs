//! kiln's own kernels, for the ops where burn's are slow on the hardware kiln runs on.
//!
//! Each op lives in its own folder with the kernel, the reference it must agree with (the plain
//! burn composition) and the tests that compare them, forward values and gradients. Models call
//! the op's function (for example [`conv2d::conv2d`]) instead of the burn layer's `forward`; the
//! function takes the kernel only where it was built for the tensors' device and dtype, and burn's
//! own path everywhere else, so no config changes and no device is refused.
//!
//! `KILN_KERNELS=off` in the environment (or [`set_enabled`]`(false)`) sends every op down burn's
//! path, to compare results and speed with and without the kernels.

use std::sync::atomic::{AtomicU8, Ordering};

use std::borrow::Cow;

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData};

pub mod attention;
pub mod conv2d;
pub mod conv_block;
pub mod gelu;
pub mod layer_norm;
pub mod linear;
mod matmul;
pub mod max_pool2d;
pub mod softmax;
#[cfg(test)]
mod testing;
mod unit;
mod vmath;

/// 0: not decided yet (read `KILN_KERNELS` on first use), 1: on, 2: off.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Whether the kernels are used: on unless `KILN_KERNELS` is `off`, `0` or `false`, or
/// [`set_enabled`] said otherwise.
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = !matches!(
                std::env::var("KILN_KERNELS").as_deref(),
                Ok("off" | "0" | "false")
            );
            ENABLED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// Switches the kernels on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// The gate every op shares: kernels switched on, and `x` an `f32` tensor on the CPU backend.
/// Each op adds the conditions of its own layer.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    enabled() && on_cpu(x) && x.dtype() == burn::tensor::DType::F32
}

/// The gate of the GPU kernels: kernels switched on, and `x` an `f32` tensor on one of burn's
/// CubeCL devices (WGPU or CUDA, the runtimes kiln builds) in a build with one.
pub fn applies_gpu<const D: usize>(x: &Tensor<D>) -> bool {
    enabled() && on_gpu(x) && x.dtype() == burn::tensor::DType::F32
}

/// Whether `x` lives on a CubeCL device (any of burn's cubecl runtimes: kiln builds WGPU and
/// CUDA), with or without autodiff.
pub fn on_gpu<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "gpu")]
    {
        match x.device().as_dispatch() {
            DispatchDevice::Cube(_) => true,
            DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Cube(_)),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = x;
        false
    }
}

/// Whether `x` lives on burn's CPU backend (Flex) without autodiff: where the inference-only
/// kernels (`conv_block`, `linear`) may run. Each checks its input and its weights, since a
/// training batch can sit on the plain device while the weights it meets are tracked.
pub fn on_plain_cpu<const D: usize>(x: &Tensor<D>) -> bool {
    matches!(x.device().as_dispatch(), DispatchDevice::Flex(_))
}

/// Whether `x` lives on burn's CPU backend (Flex), with or without autodiff.
pub fn on_cpu<const D: usize>(x: &Tensor<D>) -> bool {
    // Other arms exist only in builds with a GPU backend.
    #[allow(unreachable_patterns)]
    match x.device().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}

/// A Flex tensor's elements in row-major order, copied only when its layout is strided.
fn host(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("a contiguous f32 tensor")
                .to_vec(),
        ),
    }
}

/// A Flex tensor of `shape` holding `values`.
fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

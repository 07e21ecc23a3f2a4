//! The softmax over the last dimension as CubeCL kernels, for burn's GPU backends (WGPU, CUDA).
//! Forward: `y = e^(x - max) / Σ`; backward: `dx = y (dy - Σ dy·y)`: one kernel each, where
//! burn's autodiff runs about ten (max, subtract, exp, sum, divide, and their gradients), each
//! a pass over the tensor. Rows of at most [`SHORT`] (attention weights at the block sizes
//! kiln trains) take one unit (thread) each, with no barrier; longer rows one cube (work
//! group) each, its units striding over the row, the reductions in shared memory.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// The longest row one unit takes alone.
const SHORT: usize = 128;

#[cube(launch)]
fn softmax_forward_short_kernel<F: Float>(
    x: &Tensor<F>,
    y: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(x.rank() - 1);
    let row = ABSOLUTE_POS;
    if row < x.len() / n {
        let base = row * n;
        let mut m = F::min_value();
        for i in 0..n {
            m = F::max(m, x[base + i]);
        }
        let mut acc = F::new(0.0);
        for i in 0..n {
            let e = (x[base + i] - m).exp();
            y[base + i] = e;
            acc += e;
        }
        let inv = F::new(1.0) / acc;
        for i in 0..n {
            y[base + i] *= inv;
        }
    }
}

#[cube(launch)]
fn softmax_backward_short_kernel<F: Float>(
    y: &Tensor<F>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let n = y.shape(y.rank() - 1);
    let row = ABSOLUTE_POS;
    if row < y.len() / n {
        let base = row * n;
        let mut dot = F::new(0.0);
        for i in 0..n {
            dot += y[base + i] * dy[base + i];
        }
        for i in 0..n {
            dx[base + i] = y[base + i] * (dy[base + i] - dot);
        }
    }
}

/// Launch geometry for one unit per row.
fn per_unit(t: &CubeTensor, rows: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, rows);
    (calculate_cube_count_elemwise(&t.client, rows, dim), dim)
}

/// Units per cube: a power of two (the reductions halve it), at most what the device allows.
fn block(tensor: &CubeTensor, n: usize) -> u32 {
    let max = tensor.client.properties().hardware.max_cube_dim.0.max(1);
    let want = (n.next_power_of_two() as u32).clamp(32, 256).min(max);
    // The largest power of two not above `want`.
    1 << (31 - want.leading_zeros())
}

/// Cubes for `rows` rows, one each, as a 2-D grid (each side at most 65,535, the limit WGPU
/// guarantees); cubes past the last row compute nothing.
fn grid(rows: usize) -> CubeCount {
    let x = rows.min(65_535) as u32;
    let y = rows.div_ceil(65_535) as u32;
    CubeCount::Static(x, y, 1)
}

/// The row of this cube in a [`grid`] launch.
#[cube]
fn grid_row() -> usize {
    CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize
}

/// The maximum (`max`) or the sum of every unit's `value` in the cube, returned to all units:
/// a tree over shared memory `s` (one slot per unit; the cube's size a power of two). Every
/// unit must call it, as it holds barriers.
#[cube]
fn cube_reduce<F: Float>(s: &mut Shared<[F]>, value: F, #[comptime] max: bool) -> F {
    let t = UNIT_POS_X as usize;
    s[t] = value;
    sync_cube();
    let mut k = CUBE_DIM_X as usize / 2;
    while k > 0 {
        if t < k {
            if max {
                s[t] = F::max(s[t], s[t + k]);
            } else {
                s[t] = s[t] + s[t + k];
            }
        }
        sync_cube();
        k /= 2;
    }
    let total = s[0];
    // Before `s` is written again.
    sync_cube();
    total
}

#[cube(launch)]
fn softmax_forward_kernel<F: Float>(
    x: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] block: u32,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(x.rank() - 1);
    let row = grid_row();
    let (b, t) = (CUBE_DIM_X as usize, UNIT_POS_X as usize);
    let mut s = Shared::new_slice(comptime!(block as usize));
    // Every unit takes part in every barrier; a cube past the last row computes nothing.
    let active = row < x.len() / n;
    let base = row * n;
    let mut m = F::min_value();
    let mut i = t;
    while i < n && active {
        m = F::max(m, x[base + i]);
        i += b;
    }
    let m = cube_reduce::<F>(&mut s, m, true);
    let mut acc = F::new(0.0);
    i = t;
    while i < n && active {
        let e = (x[base + i] - m).exp();
        y[base + i] = e;
        acc += e;
        i += b;
    }
    let inv = F::new(1.0) / cube_reduce::<F>(&mut s, acc, false);
    i = t;
    while i < n && active {
        y[base + i] *= inv;
        i += b;
    }
}

#[cube(launch)]
fn softmax_backward_kernel<F: Float>(
    y: &Tensor<F>,
    dy: &Tensor<F>,
    dx: &mut Tensor<F>,
    #[comptime] block: u32,
    #[define(F)] _dtype: ElemType,
) {
    let n = y.shape(y.rank() - 1);
    let row = grid_row();
    let (b, t) = (CUBE_DIM_X as usize, UNIT_POS_X as usize);
    let mut s = Shared::new_slice(comptime!(block as usize));
    let active = row < y.len() / n;
    let base = row * n;
    let mut acc = F::new(0.0);
    let mut i = t;
    while i < n && active {
        acc += y[base + i] * dy[base + i];
        i += b;
    }
    let dot = cube_reduce::<F>(&mut s, acc, false);
    i = t;
    while i < n && active {
        dx[base + i] = y[base + i] * (dy[base + i] - dot);
        i += b;
    }
}

/// The shape, its last dimension and its number of rows.
fn rows_of(t: &CubeTensor) -> (Shape, usize, usize) {
    let shape = t.meta.shape().clone();
    let n = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / n.max(1);
    (shape, n, rows)
}

/// Forward launches in this process: the tests check that the op takes the kernel. Not per
/// thread: with burn's fusion the launch happens where the lazy stream is executed, and only
/// one test runs the GPU kernel.
#[cfg(test)]
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(test)]
pub(super) fn calls() -> usize {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

pub(super) fn forward(x: CubeTensor) -> CubeTensor {
    #[cfg(test)]
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let x = into_contiguous(x);
    let (shape, n, rows) = rows_of(&x);
    let y = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
    if rows == 0 || n == 0 {
        return y;
    }
    let (client, dtype) = (x.client.clone(), x.dtype);
    if n <= SHORT {
        let (count, dim) = per_unit(&x, rows);
        softmax_forward_short_kernel::launch(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            dtype_to_storage_type(dtype),
        );
        return y;
    }
    let b = block(&x, n);
    softmax_forward_kernel::launch(
        &client,
        grid(rows),
        CubeDim::new_1d(b),
        x.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        b,
        dtype_to_storage_type(dtype),
    );
    y
}

pub(super) fn backward(y: CubeTensor, dy: CubeTensor) -> CubeTensor {
    debug_assert_eq!(
        y.meta.shape(),
        dy.meta.shape(),
        "softmax backward: dy's shape"
    );
    debug_assert_eq!(y.dtype, dy.dtype, "softmax backward: dy's dtype");
    let (y, dy) = (into_contiguous(y), into_contiguous(dy));
    let (shape, n, rows) = rows_of(&y);
    let dx = empty_device_contiguous_dtype(y.client.clone(), y.device.clone(), shape, y.dtype);
    if rows == 0 || n == 0 {
        return dx;
    }
    let (client, dtype) = (y.client.clone(), y.dtype);
    if n <= SHORT {
        let (count, dim) = per_unit(&y, rows);
        softmax_backward_short_kernel::launch(
            &client,
            count,
            dim,
            y.into_tensor_arg(),
            dy.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            dtype_to_storage_type(dtype),
        );
        return dx;
    }
    let b = block(&y, n);
    softmax_backward_kernel::launch(
        &client,
        grid(rows),
        CubeDim::new_1d(b),
        y.into_tensor_arg(),
        dy.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        b,
        dtype_to_storage_type(dtype),
    );
    dx
}

impl super::SoftmaxGrad for CubeBackend {
    fn softmax_last_backward(y: CubeTensor, dy: CubeTensor) -> CubeTensor {
        backward(y, dy)
    }
}

impl super::SoftmaxBackend for CubeBackend {
    fn kiln_softmax_last(x: CubeTensor) -> CubeTensor {
        forward(x)
    }
}

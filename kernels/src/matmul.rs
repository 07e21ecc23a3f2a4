//! One matrix product on host slices, every operand given by its row and column strides (the
//! `gemm` crate), so kernels multiply views (a head's columns, a transpose) without copying.

use gemm::Parallelism;

/// A matrix inside a slice: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        View { data, rs, cs }
    }

    /// The same matrix transposed.
    pub fn t(self) -> Self {
        View {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst (m x n) = [dst +] scale · lhs (m x k) · rhs (k x n)`, `dst`'s rows `dst_rs` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    parallelism: Parallelism,
) {
    // O(1) checks that keep the unsafe call in bounds whatever the caller passed: the last
    // element each operand addresses (without overflow) lies inside its slice, and every
    // stride fits an `isize`.
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows.checked_sub(1)?.checked_mul(rs)?).checked_add(cols.checked_sub(1)?.checked_mul(cs)?)
    };
    let fits = |len: usize, end: Option<usize>| end.is_some_and(|e| e < len);
    let empty = m == 0 || n == 0;
    assert!(
        [dst_rs, lhs.rs, lhs.cs, rhs.rs, rhs.cs]
            .iter()
            .all(|&s| isize::try_from(s).is_ok()),
        "matmul: stride too large"
    );
    assert!(
        empty || fits(dst.len(), last(m, dst_rs, n, 1)),
        "matmul: dst too short"
    );
    assert!(n <= dst_rs || m <= 1, "matmul: dst rows overlap");
    assert!(
        empty || k == 0 || fits(lhs.data.len(), last(m, lhs.rs, k, lhs.cs)),
        "matmul: lhs too short"
    );
    assert!(
        empty || k == 0 || fits(rhs.data.len(), last(k, rhs.rs, n, rhs.cs)),
        "matmul: rhs too short"
    );
    // SAFETY: the slices cover every element the strides address (checked above), the rows
    // of `dst` do not overlap, and `dst` is a distinct `&mut` borrow, so it does not alias the
    // operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

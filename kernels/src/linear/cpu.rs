//! `y = x · W + b` on host slices, inference only: `x: [n, d_in]`, `W: [d_in, d_out]` (burn's
//! layout), `b: [d_out]`, all contiguous `f32`.
//!
//! Every output starts at its bias and adds `x[r, i] * W[i, j]` for each nonzero `x[r, i]`, `i`
//! in order, one `mul_add` each, so a row's answer does not depend on the rows batched with it
//! or on the vector unit. A register tile holds `R` rows times `V` vectors of 16 columns; per
//! `i` it loads `V` vectors of `W`'s row `i` and broadcasts `R` inputs. `W` is read where it
//! lies, with no packing, and only the rows `i` some input of the tile needs: after a ReLU and
//! a max pool, 60% of the MNIST CNN's 3,136 head inputs are zero, so one image reads 40% of
//! the head's 1.6 MB. Columns past the last whole vector take a scalar loop in the same order.
//!
//! Skipping a zero input changes nothing for finite weights (`0 * w` adds zero) but the sign
//! of an exactly zero sum; a zero input meeting an infinite or NaN weight adds nothing here,
//! where a plain product would give NaN.

use std::ops::Range;

use rayon::prelude::*;

pub use crate::unit::available;
use crate::unit::{Unit, unit};

/// Lanes per vector of columns.
const L: usize = 16;

/// Rows per parallel task: a task reads `W` once per tile of rows.
const ROWS_PER_TASK: usize = 16;

/// The shapes: `n` rows of `d_in` inputs, `d_out` outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub d_in: usize,
    pub d_out: usize,
}

/// `R` rows times `V` vectors of columns from column `c`, for rows `x` (`R * d_in`) into `y`
/// (rows `d_out` apart).
///
/// # Safety
/// `x` holds `R * d_in` values, `w` `d_in * d_out`, and `c + V * L <= d_out`.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize>(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    c: usize,
    y: &mut [f32],
) {
    let mut acc = [[[0.0f32; L]; V]; R];
    for row in acc.iter_mut() {
        for (v, lanes) in row.iter_mut().enumerate() {
            lanes.copy_from_slice(&bias[c + v * L..c + (v + 1) * L]);
        }
    }
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    for i in 0..s.d_in {
        let mut xr = [0.0f32; R];
        let mut any = false;
        for r in 0..R {
            // SAFETY: `r * d_in + i < R * d_in`, inside `x` by the contract.
            xr[r] = unsafe { *xp.add(r * s.d_in + i) };
            any |= xr[r] != 0.0;
        }
        if !any {
            // Row `i` of `W` is not even read.
            continue;
        }
        for v in 0..V {
            // SAFETY: `i * d_out + c + (v + 1) * L <= d_in * d_out`, inside `w`; unaligned
            // loads are allowed.
            let wv: [f32; L] = unsafe {
                wp.add(i * s.d_out + c + v * L)
                    .cast::<[f32; L]>()
                    .read_unaligned()
            };
            for r in 0..R {
                let skip = R > 1 && xr[r] == 0.0;
                for l in 0..L {
                    let sum = xr[r].mul_add(wv[l], acc[r][v][l]);
                    acc[r][v][l] = if skip { acc[r][v][l] } else { sum };
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, lanes) in row.iter().enumerate() {
            let at = r * s.d_out + c + v * L;
            y[at..at + L].copy_from_slice(lanes);
        }
    }
}

/// `R` rows, every column: tiles of `V` vectors, then one as wide as the vectors left, then
/// the columns past the last whole vector one at a time.
#[inline(always)]
fn rows<const R: usize, const V: usize>(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
) {
    assert!(x.len() >= R * s.d_in && y.len() >= R * s.d_out && w.len() >= s.d_in * s.d_out);
    let vectors = s.d_out / L;
    let mut v = 0;
    // SAFETY (each tile): `x`, `y` and `w` are as long as asserted above, and every tile ends
    // at or before vector `vectors`, so within `d_out`.
    while v + V <= vectors {
        unsafe { tile::<R, V>(s, x, w, bias, v * L, y) };
        v += V;
    }
    let c = v * L;
    unsafe {
        match vectors - v {
            0 => {}
            1 => tile::<R, 1>(s, x, w, bias, c, y),
            2 => tile::<R, 2>(s, x, w, bias, c, y),
            3 => tile::<R, 3>(s, x, w, bias, c, y),
            4 => tile::<R, 4>(s, x, w, bias, c, y),
            5 => tile::<R, 5>(s, x, w, bias, c, y),
            6 => tile::<R, 6>(s, x, w, bias, c, y),
            7 => tile::<R, 7>(s, x, w, bias, c, y),
            more => {
                for k in 0..more {
                    tile::<R, 1>(s, x, w, bias, c + k * L, y);
                }
            }
        }
    }
    tail(s, &x[..R * s.d_in], w, bias, vectors * L..s.d_out, y);
}

/// Columns `cols` (fewer than a vector) of every row in `x`, in the same order of `i`.
#[inline(always)]
fn tail(s: &Shape, x: &[f32], w: &[f32], bias: &[f32], cols: Range<usize>, y: &mut [f32]) {
    if cols.is_empty() {
        return;
    }
    let width = cols.len();
    for (xr, yr) in x.chunks_exact(s.d_in).zip(y.chunks_mut(s.d_out)) {
        let mut acc = [0.0f32; L];
        acc[..width].copy_from_slice(&bias[cols.clone()]);
        for (i, &xi) in xr.iter().enumerate().filter(|&(_, &xi)| xi != 0.0) {
            let wr = &w[i * s.d_out + cols.start..i * s.d_out + cols.end];
            for (a, &wv) in acc[..width].iter_mut().zip(wr) {
                *a = xi.mul_add(wv, *a);
            }
        }
        yr[cols.clone()].copy_from_slice(&acc[..width]);
    }
}

/// Rows `x` (a whole number of rows, fewer than `R` left over at most once) into `y`: tiles of
/// `R` rows, then the rows left.
#[inline(always)]
fn block<const R: usize, const V: usize>(
    s: &Shape,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
) {
    let n = x.len() / s.d_in;
    let mut r = 0;
    while r + R <= n {
        rows::<R, V>(s, &x[r * s.d_in..], w, bias, &mut y[r * s.d_out..]);
        r += R;
    }
    let (x, y) = (&x[r * s.d_in..], &mut y[r * s.d_out..]);
    match n - r {
        0 => {}
        1 => rows::<1, V>(s, x, w, bias, y),
        2 => rows::<2, V>(s, x, w, bias, y),
        3 => rows::<3, V>(s, x, w, bias, y),
        _ => {
            for (xr, yr) in x.chunks_exact(s.d_in).zip(y.chunks_mut(s.d_out)) {
                rows::<1, V>(s, xr, w, bias, yr);
            }
        }
    }
}

/// [`block`] compiled for `unit`.
fn block_on(unit: Unit, s: &Shape, x: &[f32], w: &[f32], bias: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn avx512(s: &Shape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
            block::<4, 6>(s, x, w, b, y)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(s: &Shape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
            block::<2, 3>(s, x, w, b, y)
        }
        match unit {
            // SAFETY: `unit()` returned this unit after detecting the features: 4 rows x 6
            // vectors of accumulators in AVX-512's 32 registers, 2 x 3 in AVX2's 16.
            Unit::Avx512 => return unsafe { avx512(s, x, w, bias, y) },
            // SAFETY: as above.
            Unit::Avx2 => return unsafe { avx2(s, x, w, bias, y) },
            Unit::Native => {}
        }
    }
    let _ = unit;
    block::<2, 3>(s, x, w, bias, y)
}

/// `x · w + bias`; `None` where this CPU has no fused multiply-add in hardware.
pub fn forward(s: &Shape, x: &[f32], w: &[f32], bias: &[f32]) -> Option<Vec<f32>> {
    Some(forward_on(unit()?, s, x, w, bias))
}

/// [`forward`] on `unit` (the tests run every unit this CPU has).
pub(crate) fn forward_on(unit: Unit, s: &Shape, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), s.n * s.d_in, "linear: input size");
    assert_eq!(w.len(), s.d_in * s.d_out, "linear: weight size");
    assert_eq!(bias.len(), s.d_out, "linear: bias size");
    let mut y = vec![0.0f32; s.n * s.d_out];
    if y.is_empty() {
        return y;
    }
    if s.d_in == 0 {
        for row in y.chunks_exact_mut(s.d_out) {
            row.copy_from_slice(bias);
        }
        return y;
    }
    if s.n <= ROWS_PER_TASK {
        block_on(unit, s, x, w, bias, &mut y);
    } else {
        y.par_chunks_mut(ROWS_PER_TASK * s.d_out)
            .zip(x.par_chunks(ROWS_PER_TASK * s.d_in))
            .for_each(|(y, x)| block_on(unit, s, x, w, bias, y));
    }
    y
}

//! Winograd's F(2x2, 3x3) for the conv blocks it suits: a 3x3 kernel, a 2x2 pool, input and
//! output channels in whole vectors of 16 (the MNIST CNN's second block, 32 -> 64 channels).
//!
//! Each 2x2 tile of outputs is one pool window. Its 4x4 patch of the padded input becomes
//! `V = Bᵀ d B` (additions only), the weights `U = G g Gᵀ` (once per weight tensor, kept per
//! thread), and the 16 products `M[ξ] = Σ_c V[ξ, c] U[ξ, c]` are 16 matrix products, 32 -> 64
//! channels deep, of 4 multiply-adds per output instead of the direct convolution's 9. Then
//! `Aᵀ M A` gives the tile's 4 outputs, the bias is added, and the pool and the ReLU take
//! them straight from registers.
//!
//! Every output's arithmetic is fixed (the transforms' additions in one order, the products
//! one `mul_add` each over the channels in order), so an image's answer is the same alone or
//! in any batch and on every vector unit, as with the direct kernel; it differs from the
//! direct kernel's by float rounding. An image with a value that is not finite (where the
//! transforms' differences could turn infinities into NaN) takes the direct kernel.

use std::cell::RefCell;
use std::sync::Arc;

use super::cpu::Geometry;
use crate::unit::Unit;

/// Lanes per vector (of channels).
const L: usize = 16;

/// Whether this block suits the transform.
pub(super) fn suits(g: &Geometry) -> bool {
    g.kernel == [3, 3] && g.pool == [2, 2] && g.c_in.is_multiple_of(L) && g.c_out.is_multiple_of(L)
}

/// `U[ξ][c][o] = (G g Gᵀ)[ξ]` for the weight `g = weight[o][c]` (3x3), with
/// `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`.
fn transform_weights(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let (ci, co) = (g.c_in, g.c_out);
    let mut u = vec![0.0f32; 16 * ci * co];
    for o in 0..co {
        for c in 0..ci {
            let k = &weight[(o * ci + c) * 9..(o * ci + c + 1) * 9];
            // G k: 4 rows of 3.
            let mut t = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (k[j], k[3 + j], k[6 + j]);
                t[0][j] = a;
                t[1][j] = 0.5 * (a + b + d);
                t[2][j] = 0.5 * (a - b + d);
                t[3][j] = d;
            }
            // (G k) Gᵀ: 4 x 4.
            for (i, r) in t.iter().enumerate() {
                let (a, b, d) = (r[0], r[1], r[2]);
                let row = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                for (m, &v) in row.iter().enumerate() {
                    u[((i * 4 + m) * ci + c) * co + o] = v;
                }
            }
        }
    }
    u
}

/// A weight tensor this thread transformed, with its raw bits (a server calls once per
/// request with the same weights; transforming them takes longer than the products).
struct Cached {
    /// `[c_in, c_out]`: the same numbers split into other channels are other weights.
    channels: [usize; 2],
    raw: Vec<f32>,
    u: Arc<[f32]>,
}

/// A thread's buffers.
#[derive(Default)]
struct Scratch {
    /// The padded image, channels last: `[hp][wp][c_in]`.
    xh: Vec<f32>,
    /// `V[ξ][tile][c_in]`.
    v: Vec<f32>,
    /// `M[tile][ξ][c_out]`.
    m: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// Images computed here, by `[c_in, c_out, height, width]`: the tests check which blocks
/// and images take this path.
#[cfg(test)]
pub(super) static IMAGES: std::sync::Mutex<Vec<([usize; 4], usize)>> =
    std::sync::Mutex::new(Vec::new());

/// How many images of this shape were computed here.
#[cfg(test)]
pub(super) fn images(shape: [usize; 4]) -> usize {
    let log = IMAGES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.iter().find(|(s, _)| *s == shape).map_or(0, |(_, n)| *n)
}

/// At most this many weight tensors stay transformed per thread.
const CACHED: usize = 4;

/// Every value finite (no early exit: the loop vectorises).
fn finite(x: &[f32]) -> bool {
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff)) < 0x7f80_0000
}

/// The same bits (no early exit: the loop vectorises).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .fold(0u32, |d, (x, y)| d | (x.to_bits() ^ y.to_bits()))
            == 0
}

/// The block's weights transformed, if the block suits the transform and its weights and
/// bias are finite; from this thread's cache, or made now.
pub(super) fn prepare(g: &Geometry, weight: &[f32], bias: &[f32]) -> Option<Arc<[f32]>> {
    if !suits(g) || !finite(bias) {
        return None;
    }
    CACHE.with_borrow_mut(|cache| {
        let channels = [g.c_in, g.c_out];
        if let Some(c) = cache
            .iter()
            .find(|c| c.channels == channels && same_bits(&c.raw, weight))
        {
            return Some(Arc::clone(&c.u));
        }
        if !finite(weight) {
            return None;
        }
        if cache.len() == CACHED {
            cache.remove(0);
        }
        let u: Arc<[f32]> = transform_weights(g, weight).into();
        cache.push(Cached {
            channels,
            raw: weight.to_vec(),
            u: Arc::clone(&u),
        });
        Some(u)
    })
}

/// `V = Bᵀ d B` of every tile's 4x4 patch, 16 channels at a time, with
/// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
#[inline(always)]
fn input_transform(g: &Geometry, xh: &[f32], v: &mut [f32]) {
    let [oh, ow] = g.out_hw();
    let (ci, wp, tiles) = (g.c_in, g.wp(), oh * ow);
    let load = |at: usize| -> [f32; L] { xh[at..at + L].try_into().expect("a vector") };
    for ty in 0..oh {
        for tx in 0..ow {
            let t = ty * ow + tx;
            for cv in (0..ci).step_by(L) {
                let mut d = [[[0.0f32; L]; 4]; 4];
                for (i, row) in d.iter_mut().enumerate() {
                    for (j, e) in row.iter_mut().enumerate() {
                        *e = load(((2 * ty + i) * wp + 2 * tx + j) * ci + cv);
                    }
                }
                // Bᵀ d, row by row.
                let mut s = [[[0.0f32; L]; 4]; 4];
                for j in 0..4 {
                    for l in 0..L {
                        s[0][j][l] = d[0][j][l] - d[2][j][l];
                        s[1][j][l] = d[1][j][l] + d[2][j][l];
                        s[2][j][l] = d[2][j][l] - d[1][j][l];
                        s[3][j][l] = d[1][j][l] - d[3][j][l];
                    }
                }
                // (Bᵀ d) B, column by column.
                for (i, r) in s.iter().enumerate() {
                    let mut out = [[0.0f32; L]; 4];
                    for l in 0..L {
                        out[0][l] = r[0][l] - r[2][l];
                        out[1][l] = r[1][l] + r[2][l];
                        out[2][l] = r[2][l] - r[1][l];
                        out[3][l] = r[1][l] - r[3][l];
                    }
                    for (m, o) in out.iter().enumerate() {
                        let at = ((i * 4 + m) * tiles + t) * ci + cv;
                        v[at..at + L].copy_from_slice(o);
                    }
                }
            }
        }
    }
}

/// `M[t][ξ][o..o + VO * L]` for the `RT` tiles from `t0`: each starts at zero and adds
/// `V[ξ][t][c] * U[ξ][c][o]` over the channels in order, one `mul_add` each.
///
/// # Safety
/// `t0 + RT <= tiles` and `o + VO * L <= c_out`, for the buffers' sizes as
/// [`image`] makes them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn product_tile<const RT: usize, const VO: usize>(
    v: &[f32],
    u: &[f32],
    m: &mut [f32],
    xi: usize,
    t0: usize,
    o: usize,
    tiles: usize,
    ci: usize,
    co: usize,
) {
    let mut acc = [[[0.0f32; L]; VO]; RT];
    let (vp, up) = (v.as_ptr(), u.as_ptr());
    for c in 0..ci {
        let mut uv = [[0.0f32; L]; VO];
        for (k, w) in uv.iter_mut().enumerate() {
            // SAFETY: `((xi * ci + c) * co + o + (k + 1) * L) <= 16 * ci * co`, inside `u`.
            *w = unsafe {
                up.add((xi * ci + c) * co + o + k * L)
                    .cast::<[f32; L]>()
                    .read_unaligned()
            };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: `(xi * tiles + t0 + r) * ci + c < 16 * tiles * ci`, inside `v`.
            let x = unsafe { *vp.add((xi * tiles + t0 + r) * ci + c) };
            for (a, w) in row.iter_mut().zip(&uv) {
                for l in 0..L {
                    a[l] = x.mul_add(w[l], a[l]);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (k, a) in row.iter().enumerate() {
            let at = ((t0 + r) * 16 + xi) * co + o + k * L;
            m[at..at + L].copy_from_slice(a);
        }
    }
}

/// The products of `R` tiles from `t` for every output channel: `VO` vectors at a time, then
/// the vectors left one at a time.
///
/// # Safety
/// `t + R <= tiles`, and the buffers are as [`products`] asserts.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_row<const R: usize, const VO: usize>(
    v: &[f32],
    u: &[f32],
    m: &mut [f32],
    xi: usize,
    t: usize,
    tiles: usize,
    ci: usize,
    co: usize,
) {
    let mut o = 0;
    // SAFETY (each call): every vector ends at or before `c_out`; the rest by the contract.
    while o + VO * L <= co {
        unsafe { product_tile::<R, VO>(v, u, m, xi, t, o, tiles, ci, co) };
        o += VO * L;
    }
    while o < co {
        unsafe { product_tile::<R, 1>(v, u, m, xi, t, o, tiles, ci, co) };
        o += L;
    }
}

/// Every product: `RT` tiles at a time, then the tiles left one at a time.
#[inline(always)]
fn products<const RT: usize, const VO: usize>(g: &Geometry, v: &[f32], u: &[f32], m: &mut [f32]) {
    let [oh, ow] = g.out_hw();
    let (tiles, ci, co) = (oh * ow, g.c_in, g.c_out);
    assert!(v.len() >= 16 * tiles * ci && u.len() >= 16 * ci * co && m.len() >= tiles * 16 * co);
    for xi in 0..16 {
        let mut t = 0;
        // SAFETY (each call): every row of tiles ends at or before `tiles`, and the buffers are
        // as long as asserted.
        while t < tiles {
            if t + RT <= tiles {
                unsafe { tile_row::<RT, VO>(v, u, m, xi, t, tiles, ci, co) };
                t += RT;
            } else {
                unsafe { tile_row::<1, VO>(v, u, m, xi, t, tiles, ci, co) };
                t += 1;
            }
        }
    }
}

/// `Aᵀ M A` of every tile, `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`, plus the bias, then the max
/// of the tile's four outputs and the ReLU, into `y` (`c_out` planes). False if an output is
/// not finite (an overflow, which the direct kernel may not have had).
#[inline(always)]
fn output_transform(g: &Geometry, m: &[f32], bias: &[f32], y: &mut [f32]) -> bool {
    let [oh, ow] = g.out_hw();
    let (tiles, co) = (oh * ow, g.c_out);
    let mut nan = false;
    for t in 0..tiles {
        for o in (0..co).step_by(L) {
            let at = |xi: usize| t * 16 * co + xi * co + o;
            let mut s = [[[0.0f32; L]; 4]; 2];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (
                    &m[at(j)..at(j) + L],
                    &m[at(4 + j)..at(4 + j) + L],
                    &m[at(8 + j)..at(8 + j) + L],
                    &m[at(12 + j)..at(12 + j) + L],
                );
                for l in 0..L {
                    s[0][j][l] = m0[l] + m1[l] + m2[l];
                    s[1][j][l] = m1[l] - m2[l] - m3[l];
                }
            }
            let (a, c) = (&s[0], &s[1]);
            let mut p = [0.0f32; L];
            let mut bad = 0u32;
            for l in 0..L {
                let b = bias[o + l];
                let max = |p: f32, q: f32| if p > q { p } else { q };
                let y00 = a[0][l] + a[1][l] + a[2][l] + b;
                let y01 = a[1][l] - a[2][l] - a[3][l] + b;
                let y10 = c[0][l] + c[1][l] + c[2][l] + b;
                let y11 = c[1][l] - c[2][l] - c[3][l] + b;
                // An infinity or a NaN in any of the four (an overflow in the transforms
                // reaches at least one): the direct kernel redoes the image.
                let finite = y00.is_finite() & y01.is_finite() & y10.is_finite() & y11.is_finite();
                bad |= u32::from(!finite);
                p[l] = max(max(max(y00, y01), max(y10, y11)), 0.0);
            }
            nan |= bad != 0;
            for (l, &v) in p.iter().enumerate() {
                y[(o + l) * tiles + t] = v;
            }
        }
    }
    !nan
}

/// One image through the block, if its values are all finite: false (and `y` to be written
/// by the direct kernel) otherwise.
#[inline(always)]
fn image<const RT: usize, const VO: usize>(
    g: &Geometry,
    x: &[f32],
    u: &[f32],
    bias: &[f32],
    s: &mut Scratch,
    y: &mut [f32],
) -> bool {
    if !finite(x) {
        return false;
    }
    let Scratch { xh, v, m } = s;
    let [oh, ow] = g.out_hw();
    let (ci, wp, tiles) = (g.c_in, g.wp(), oh * ow);
    let [top, _, left, _] = g.padding;
    // Channels last, zero padded; zeroed afresh (the last image may have had another
    // geometry).
    xh.clear();
    xh.resize(g.plane() * ci, 0.0);
    let hw = g.height * g.width;
    for r in 0..g.height {
        let row = (r + top) * wp + left;
        for k in 0..g.width {
            let dst = &mut xh[(row + k) * ci..(row + k + 1) * ci];
            for (c, d) in dst.iter_mut().enumerate() {
                *d = x[c * hw + r * g.width + k];
            }
        }
    }
    v.resize(16 * tiles * ci, 0.0);
    m.resize(tiles * 16 * g.c_out, 0.0);
    input_transform(g, xh, v);
    products::<RT, VO>(g, v, u, m);
    let answered = output_transform(g, m, bias, y);
    #[cfg(test)]
    if answered {
        let shape = [g.c_in, g.c_out, g.height, g.width];
        let mut log = IMAGES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match log.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, n)) => *n += 1,
            None => log.push((shape, 1)),
        }
    }
    answered
}

/// [`image`] compiled for `unit`, on this thread's buffers, with the weights [`prepare`]
/// gave.
pub(super) fn image_on(
    unit: Unit,
    g: &Geometry,
    x: &[f32],
    u: &[f32],
    bias: &[f32],
    y: &mut [f32],
) -> bool {
    SCRATCH.with_borrow_mut(|s| {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,fma")]
            unsafe fn avx512(
                g: &Geometry,
                x: &[f32],
                w: &[f32],
                b: &[f32],
                s: &mut Scratch,
                y: &mut [f32],
            ) -> bool {
                image::<6, 4>(g, x, w, b, s, y)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(
                g: &Geometry,
                x: &[f32],
                w: &[f32],
                b: &[f32],
                s: &mut Scratch,
                y: &mut [f32],
            ) -> bool {
                image::<2, 2>(g, x, w, b, s, y)
            }
            match unit {
                // SAFETY: `unit()` returned this unit after detecting the features: 6 tiles x
                // 4 vectors of accumulators in AVX-512's 32 registers, 2 x 2 in AVX2's 16.
                Unit::Avx512 => return unsafe { avx512(g, x, u, bias, s, y) },
                // SAFETY: as above.
                Unit::Avx2 => return unsafe { avx2(g, x, u, bias, s, y) },
                Unit::Native => {}
            }
        }
        let _ = unit;
        image::<2, 2>(g, x, u, bias, s, y)
    })
}

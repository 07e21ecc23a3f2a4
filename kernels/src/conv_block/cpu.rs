//! Convolution (stride 1, a bias), ReLU and max pooling in one pass over each image, on host
//! slices: inference only. Layouts are burn's: input `[n, c, h, w]`, weight `[o, c, kh, kw]`,
//! output `[n, o, oh / ph, ow / pw]`, all contiguous `f32`.
//!
//! The image is copied once into a zero-padded buffer whose rows are `wp = w + left + right`
//! wide. Output pixel `(y, x)` then sits at `q = y * wp + x` on that grid, and tap
//! `(c, i, j)` reads the input at `q + off(c, i, j)` with `off = c * plane + i * wp + j`: 16
//! neighbouring outputs read 16 neighbouring inputs, so the whole convolution is vector loads
//! and fused multiply-adds, with no im2col copy. The grid's columns `x >= ow` are computed
//! and never read.
//!
//! A register tile holds `R` output channels times `V` vectors of 16 outputs; per tap it
//! loads `V` input vectors, broadcasts `R` weights and does `R * V` fused multiply-adds.
//! Every output starts at its bias and adds its taps in the weight's order, one `mul_add` each,
//! whatever the tile, the vector unit or the batch: an image's answer does not depend on what
//! it was batched with. The pooling and the ReLU then read the tile's plane (pool first, then
//! `max(0, ·)`: the same values as ReLU then pool).

use std::cell::RefCell;

use rayon::prelude::*;

use super::winograd;
pub use crate::unit::available;
use crate::unit::{Unit, unit};

/// Lanes per vector of outputs.
const L: usize = 16;

/// One block's geometry: `c_in x h x w` images, `c_out` channels of `kh x kw` kernels,
/// padding (top, bottom, left, right), then a `ph x pw` pool (stride = window, floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub padding: [usize; 4],
    pub pool: [usize; 2],
}

impl Geometry {
    /// The convolution's output size.
    pub fn conv_hw(&self) -> [usize; 2] {
        let [t, b, l, r] = self.padding;
        [
            self.height + t + b + 1 - self.kernel[0],
            self.width + l + r + 1 - self.kernel[1],
        ]
    }

    /// The block's output size, after the pool.
    pub fn out_hw(&self) -> [usize; 2] {
        let [oh, ow] = self.conv_hw();
        [oh / self.pool[0], ow / self.pool[1]]
    }

    /// Every size at least 1, the kernel inside the padded image, a pool no larger than the
    /// convolution's output, and every buffer's length an `isize` (padding is only numbers,
    /// so huge values must not wrap the lengths the kernel's reads are checked against).
    pub fn is_valid(&self) -> bool {
        let sizes = [
            self.batch,
            self.c_in,
            self.height,
            self.width,
            self.c_out,
            self.kernel[0],
            self.kernel[1],
            self.pool[0],
            self.pool[1],
        ];
        sizes.iter().all(|&s| s >= 1) && self.lengths_fit() == Some(true)
    }

    /// Whether the kernel fits in the padded image, the pool in the output, and every buffer
    /// length in an `isize`; `None` when computing a length overflows.
    fn lengths_fit(&self) -> Option<bool> {
        let [t, b, l, r] = self.padding;
        let [kh, kw] = self.kernel;
        let hp = self.height.checked_add(t)?.checked_add(b)?;
        let wp = self.width.checked_add(l)?.checked_add(r)?;
        if hp < kh || wp < kw || hp + 1 - kh < self.pool[0] || wp + 1 - kw < self.pool[1] {
            return Some(false);
        }
        let plane = hp.checked_mul(wp)?;
        let grid = (hp + 1 - kh).checked_mul(wp)?.div_ceil(L).checked_mul(L)?;
        let reach = (kh - 1).checked_mul(wp)?.checked_add(kw - 1)?;
        let padded = (self.c_in - 1)
            .checked_mul(plane)?
            .checked_add(grid)?
            .checked_add(reach)?;
        let z = self.c_out.checked_mul(grid)?;
        let io = self
            .batch
            .checked_mul(self.c_in.max(self.c_out))?
            .checked_mul(self.height.max(1).checked_mul(self.width)?.max(plane))?;
        let weights = self
            .c_out
            .checked_mul(self.c_in)?
            .checked_mul(kh)?
            .checked_mul(kw)?;
        let limit = isize::MAX as usize / 4;
        Some([padded, z, io, weights].iter().all(|&n| n <= limit))
    }

    /// Width of the padded grid's rows.
    pub(super) fn wp(&self) -> usize {
        self.width + self.padding[2] + self.padding[3]
    }

    /// Elements of one padded input plane.
    pub(super) fn plane(&self) -> usize {
        (self.height + self.padding[0] + self.padding[1]) * self.wp()
    }

    /// Vectors of outputs per channel on the padded grid (the last one partly past it).
    fn vectors(&self) -> usize {
        (self.conv_hw()[0] * self.wp()).div_ceil(L)
    }

    /// The padded input buffer: every plane, then enough zeros that the last vector's loads
    /// stay inside it.
    fn padded_len(&self) -> usize {
        let taps_reach = (self.kernel[0] - 1) * self.wp() + self.kernel[1] - 1;
        (self.c_in - 1) * self.plane() + self.vectors() * L + taps_reach
    }

    fn taps(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// Each tap's offset in the padded buffer, in the weight's order `(c, i, j)`.
    fn offsets(&self) -> Vec<usize> {
        let [kh, kw] = self.kernel;
        let mut offs = Vec::with_capacity(self.taps());
        for c in 0..self.c_in {
            for i in 0..kh {
                for j in 0..kw {
                    offs.push(c * self.plane() + i * self.wp() + j);
                }
            }
        }
        offs
    }

    /// Copies one image into the padded buffer (whose padding stays zero).
    #[inline(always)]
    fn pad(&self, x: &[f32], xp: &mut [f32]) {
        let [t, _, l, _] = self.padding;
        let (h, w, wp) = (self.height, self.width, self.wp());
        for c in 0..self.c_in {
            for y in 0..h {
                let src = &x[(c * h + y) * w..(c * h + y + 1) * w];
                let at = c * self.plane() + (y + t) * wp + l;
                xp[at..at + w].copy_from_slice(src);
            }
        }
    }

    /// Max pool, then ReLU, of one channel's grid `z` into its output plane `y`, with a row
    /// of scratch. The usual 2x2 pool of a channel without NaN takes a vectorised path: per
    /// output row, the window starting at every column of the two grid rows (a write-only
    /// loop of `max`), of which every other one is an output.
    #[inline(always)]
    fn pool_relu(&self, z: &[f32], y: &mut [f32], cols: &mut Vec<f32>) {
        let [oh, ow] = self.out_hw();
        let wp = self.wp();
        let nan = z.iter().fold(false, |n, v| n | v.is_nan());
        if self.pool != [2, 2] || nan {
            return self.pool_relu_any(z, y);
        }
        let span = 2 * ow;
        cols.resize(span - 1, 0.0);
        let max = |u: f32, v: f32| if u > v { u } else { v };
        for (py, y_row) in y.chunks_exact_mut(ow).enumerate().take(oh) {
            let top = 2 * py * wp;
            let (a, b) = (&z[top..top + span], &z[top + wp..top + wp + span]);
            // Every column's window, read straight from the grid (a scratch row written
            // and read back at an offset of one would stall on store forwarding).
            let windows = a.iter().zip(&a[1..]).zip(b.iter().zip(&b[1..]));
            for (c, ((&a0, &a1), (&b0, &b1))) in cols.iter_mut().zip(windows) {
                let m = max(max(a0, a1), max(b0, b1));
                *c = max(m, 0.0);
            }
            for (out, &m) in y_row.iter_mut().zip(cols.iter().step_by(2)) {
                *out = m;
            }
        }
    }

    /// Any pool, one window at a time; a NaN in a window is its maximum (as in the pooling
    /// kernel and PyTorch) and stays NaN through the ReLU.
    fn pool_relu_any(&self, z: &[f32], y: &mut [f32]) {
        let [ph, pw] = self.pool;
        let [oh, ow] = self.out_hw();
        let wp = self.wp();
        for py in 0..oh {
            for px in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for i in 0..ph {
                    let row = (py * ph + i) * wp + px * pw;
                    for &v in &z[row..row + pw] {
                        m = nan_max(m, v);
                    }
                }
                y[py * ow + px] = if m > 0.0 || m.is_nan() { m } else { 0.0 };
            }
        }
    }
}

/// The larger of `m` and `v`, NaN if either is (as the pooling kernel and PyTorch pool).
#[inline(always)]
fn nan_max(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() { v } else { m }
}

/// `R` channels times `V` vectors of outputs starting at grid position `q`: each starts at its
/// channel's bias and adds every tap in order. `w` holds the `R` channels' weights, `taps`
/// apart; `z` receives `R` rows of `vectors * L`.
///
/// # Safety
/// `xp` must hold `q + offs[t] + V * L` elements for every tap `t` (the caller sizes it by
/// [`Geometry::padded_len`]), and `w` at least `R * taps` weights.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize>(
    xp: &[f32],
    offs: &[usize],
    w: &[f32],
    bias: &[f32],
    q: usize,
    z: &mut [f32],
    z_stride: usize,
) {
    let taps = offs.len();
    debug_assert!(w.len() >= R * taps && bias.len() >= R);
    let mut acc = [[[0.0f32; L]; V]; R];
    for r in 0..R {
        acc[r] = [[bias[r]; L]; V];
    }
    let base = xp.as_ptr();
    for (t, &off) in offs.iter().enumerate() {
        let mut wr = [0.0f32; R];
        for r in 0..R {
            // SAFETY: `w` holds `R` rows of `taps` weights (the caller slices it so).
            wr[r] = unsafe { *w.get_unchecked(r * taps + t) };
        }
        for v in 0..V {
            // SAFETY: in bounds by the caller's contract; unaligned loads are allowed.
            let xv: [f32; L] = unsafe {
                base.add(q + off + v * L)
                    .cast::<[f32; L]>()
                    .read_unaligned()
            };
            for r in 0..R {
                for l in 0..L {
                    acc[r][v][l] = wr[r].mul_add(xv[l], acc[r][v][l]);
                }
            }
        }
    }
    for r in 0..R {
        for v in 0..V {
            let at = r * z_stride + q + v * L;
            z[at..at + L].copy_from_slice(&acc[r][v]);
        }
    }
}

/// One image's convolution into `z` (`c_out` rows of `vectors * L`), tiles of at most `R`
/// channels times `V` vectors.
#[inline(always)]
fn conv_image<const R: usize, const V: usize>(
    g: &Geometry,
    xp: &[f32],
    offs: &[usize],
    weight: &[f32],
    bias: &[f32],
    z: &mut [f32],
) {
    let (taps, n_vec) = (g.taps(), g.vectors());
    let stride = n_vec * L;
    assert!(xp.len() >= g.padded_len() && z.len() >= g.c_out * stride);
    macro_rules! tiles {
        ($r:expr, $o:expr) => {{
            let (w, b) = (&weight[$o * taps..], &bias[$o..]);
            let zr = &mut z[$o * stride..];
            let mut v = 0;
            while v + V <= n_vec {
                // SAFETY: `xp` holds `padded_len` elements, which covers every vector's loads.
                unsafe { tile::<{ $r }, V>(xp, offs, w, b, v * L, zr, stride) };
                v += V;
            }
            // The rest in one tile as wide as what is left.
            let q = v * L;
            // SAFETY: as above.
            unsafe {
                match n_vec - v {
                    0 => {}
                    1 => tile::<{ $r }, 1>(xp, offs, w, b, q, zr, stride),
                    2 => tile::<{ $r }, 2>(xp, offs, w, b, q, zr, stride),
                    3 => tile::<{ $r }, 3>(xp, offs, w, b, q, zr, stride),
                    4 => tile::<{ $r }, 4>(xp, offs, w, b, q, zr, stride),
                    5 => tile::<{ $r }, 5>(xp, offs, w, b, q, zr, stride),
                    rest => {
                        for k in 0..rest {
                            tile::<{ $r }, 1>(xp, offs, w, b, q + k * L, zr, stride);
                        }
                    }
                }
            }
        }};
    }
    let mut o = 0;
    while o + R <= g.c_out {
        tiles!(R, o);
        o += R;
    }
    while o < g.c_out {
        tiles!(1, o);
        o += 1;
    }
}

/// One image through the block: padded into `scratch.xp`, convolved into `scratch.z`, pooled
/// into `y` (`c_out` planes).
#[inline(always)]
fn image<const R: usize, const V: usize>(
    g: &Geometry,
    x: &[f32],
    offs: &[usize],
    weight: &[f32],
    bias: &[f32],
    s: &mut Scratch,
    y: &mut [f32],
) {
    // Zeroed afresh: the last block this thread ran may have had another geometry.
    s.xp.clear();
    s.xp.resize(g.padded_len(), 0.0);
    let stride = g.vectors() * L;
    s.z.resize(g.c_out * stride, 0.0);
    g.pad(x, &mut s.xp);
    conv_image::<R, V>(g, &s.xp, offs, weight, bias, &mut s.z);
    let [oh, ow] = g.out_hw();
    for (zc, yc) in s.z.chunks_exact(stride).zip(y.chunks_exact_mut(oh * ow)) {
        g.pool_relu(zc, yc, &mut s.cols);
    }
}

/// [`image`] compiled for `unit`.
#[allow(clippy::too_many_arguments)]
fn image_on(
    unit: Unit,
    g: &Geometry,
    x: &[f32],
    offs: &[usize],
    weight: &[f32],
    bias: &[f32],
    s: &mut Scratch,
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn avx512(
            g: &Geometry,
            x: &[f32],
            offs: &[usize],
            w: &[f32],
            b: &[f32],
            s: &mut Scratch,
            y: &mut [f32],
        ) {
            image::<4, 6>(g, x, offs, w, b, s, y)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(
            g: &Geometry,
            x: &[f32],
            offs: &[usize],
            w: &[f32],
            b: &[f32],
            s: &mut Scratch,
            y: &mut [f32],
        ) {
            image::<2, 3>(g, x, offs, w, b, s, y)
        }
        match unit {
            // SAFETY: `unit()` returned this unit after detecting the features: 4 channels x 6
            // vectors of accumulators in AVX-512's 32 registers, 2 x 3 in AVX2's 16.
            Unit::Avx512 => return unsafe { avx512(g, x, offs, weight, bias, s, y) },
            // SAFETY: as above.
            Unit::Avx2 => return unsafe { avx2(g, x, offs, weight, bias, s, y) },
            Unit::Native => {}
        }
    }
    let _ = unit;
    image::<2, 3>(g, x, offs, weight, bias, s, y)
}

/// A thread's buffers, kept between calls (serving calls once per request).
#[derive(Default)]
struct Scratch {
    /// The padded image.
    xp: Vec<f32>,
    /// The convolution on the padded grid.
    z: Vec<f32>,
    /// The pool's windows along one row.
    cols: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// `maxpool(relu(conv(x, weight) + bias))` for a batch; `None` where this CPU has no fused
/// multiply-add in hardware.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Option<Vec<f32>> {
    Some(forward_on(unit()?, g, x, weight, bias))
}

/// [`forward`] on `unit` (the tests run every unit this CPU has).
pub(crate) fn forward_on(
    unit: Unit,
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    assert!(g.is_valid(), "conv block: invalid geometry {g:?}");
    let image = g.c_in * g.height * g.width;
    assert_eq!(x.len(), g.batch * image, "conv block: input size");
    assert_eq!(weight.len(), g.c_out * g.taps(), "conv block: weight size");
    assert_eq!(bias.len(), g.c_out, "conv block: bias size");
    let [oh, ow] = g.out_hw();
    let out = g.c_out * oh * ow;
    let mut y = vec![0.0f32; g.batch * out];
    let offs = g.offsets();
    // Winograd where it suits the block (an image with a value that is not finite takes the
    // direct kernel).
    let u = winograd::prepare(g, weight, bias);
    y.par_chunks_mut(out)
        .zip(x.par_chunks(image))
        .for_each(|(y_n, x_n)| {
            let done = u
                .as_deref()
                .is_some_and(|u| winograd::image_on(unit, g, x_n, u, bias, y_n));
            if !done {
                SCRATCH.with_borrow_mut(|s| image_on(unit, g, x_n, &offs, weight, bias, s, y_n))
            }
        });
    y
}

//! 2-D convolution on host slices: im2col, then one matrix product per image, for the forward
//! pass and for both gradients. Layouts are burn's: input `[n, c, h, w]`, weight
//! `[o, c, kh, kw]`, output `[n, o, oh, ow]`, all contiguous `f32`.
//!
//! Work is split over images. The weight and bias gradients sum over images, so they are
//! accumulated per fixed group of [`GROUP`] images and the groups are then added in order: the
//! result does not depend on the number of threads or on scheduling, which keeps training
//! bit-reproducible (resume equals uninterrupted).

use gemm::Parallelism;

use crate::matmul::View;
use rayon::prelude::*;

/// Images whose weight-gradient contributions one task sums before the ordered reduction.
pub const GROUP: usize = 8;

/// The geometry of one convolution: groups 1, dilation 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Top, bottom, left, right.
    pub padding: [usize; 4],
}

impl Geometry {
    pub fn out_hw(&self) -> [usize; 2] {
        let [t, b, l, r] = self.padding;
        [
            (self.height + t + b - self.kernel[0]) / self.stride[0] + 1,
            (self.width + l + r - self.kernel[1]) / self.stride[1] + 1,
        ]
    }

    /// Whether the kernel fits in the padded input (else there is no output).
    pub fn is_valid(&self) -> bool {
        let [t, b, l, r] = self.padding;
        self.batch >= 1
            && self.c_in >= 1
            && self.c_out >= 1
            && self.height >= 1
            && self.width >= 1
            && self.kernel[0] >= 1
            && self.kernel[1] >= 1
            && self.stride[0] >= 1
            && self.stride[1] >= 1
            && self.height + t + b >= self.kernel[0]
            && self.width + l + r >= self.kernel[1]
    }

    /// Rows of the im2col matrix: `c_in * kh * kw`.
    fn patch(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// Columns of the im2col matrix: output pixels per image.
    fn pixels(&self) -> usize {
        let [oh, ow] = self.out_hw();
        oh * ow
    }

    fn image(&self) -> usize {
        self.c_in * self.height * self.width
    }

    /// The output positions `o` along one axis whose input `o * stride + k - pad` lies in
    /// `0..len`.
    fn valid(len: usize, out: usize, stride: usize, k: usize, pad: usize) -> (usize, usize) {
        // o * stride + k >= pad  and  o * stride + k < len + pad
        let lo = pad.saturating_sub(k).div_ceil(stride);
        let hi = (len + pad).saturating_sub(k).div_ceil(stride).min(out);
        (lo.min(hi), hi)
    }

    /// Fills `col` (`patch x pixels`) with the patches of one image.
    fn im2col(&self, x: &[f32], col: &mut [f32]) {
        let [oh, ow] = self.out_hw();
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [t, _, l, _] = self.padding;
        let (h, w) = (self.height, self.width);
        let mut rows = col.chunks_exact_mut(oh * ow);
        for c in 0..self.c_in {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for ki in 0..kh {
                let (y0, y1) = Self::valid(h, oh, sh, ki, t);
                for kj in 0..kw {
                    let (x0, x1) = Self::valid(w, ow, sw, kj, l);
                    let row = rows.next().expect("one row per (c, ki, kj)");
                    row[..y0 * ow].fill(0.0);
                    row[y1 * ow..].fill(0.0);
                    for oy in y0..y1 {
                        let iy = oy * sh + ki - t;
                        let out = &mut row[oy * ow..(oy + 1) * ow];
                        out[..x0].fill(0.0);
                        out[x1..].fill(0.0);
                        let src = &plane[iy * w..(iy + 1) * w];
                        // x0 == x1 when no output column reads the image at this kj (a
                        // padding wider than the image): x0 + kj - l may then underflow.
                        if sw == 1 && x0 < x1 {
                            let ix0 = x0 + kj - l;
                            out[x0..x1].copy_from_slice(&src[ix0..ix0 + (x1 - x0)]);
                        } else {
                            for ox in x0..x1 {
                                out[ox] = src[ox * sw + kj - l];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds the columns of `col` back onto the image they came from (the adjoint of
    /// [`Self::im2col`]); `x` must start zeroed.
    fn col2im(&self, col: &[f32], x: &mut [f32]) {
        let [oh, ow] = self.out_hw();
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [t, _, l, _] = self.padding;
        let (h, w) = (self.height, self.width);
        let mut rows = col.chunks_exact(oh * ow);
        for c in 0..self.c_in {
            let plane = &mut x[c * h * w..(c + 1) * h * w];
            for ki in 0..kh {
                let (y0, y1) = Self::valid(h, oh, sh, ki, t);
                for kj in 0..kw {
                    let (x0, x1) = Self::valid(w, ow, sw, kj, l);
                    let row = rows.next().expect("one row per (c, ki, kj)");
                    for oy in y0..y1 {
                        let iy = oy * sh + ki - t;
                        let src = &row[oy * ow..(oy + 1) * ow];
                        let dst = &mut plane[iy * w..(iy + 1) * w];
                        if sw == 1 && x0 < x1 {
                            let ix0 = x0 + kj - l;
                            for (d, s) in dst[ix0..ix0 + (x1 - x0)].iter_mut().zip(&src[x0..x1]) {
                                *d += s;
                            }
                        } else {
                            for ox in x0..x1 {
                                dst[ox * sw + kj - l] += src[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)`, `dst` contiguous, each operand given by
/// its row and column strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: &[f32],
    [rhs_rs, rhs_cs]: [usize; 2],
    parallelism: Parallelism,
) {
    crate::matmul::matmul(
        [m, n, k],
        dst,
        n,
        accumulate,
        View::new(lhs, lhs_rs, lhs_cs),
        View::new(rhs, rhs_rs, rhs_cs),
        1.0,
        parallelism,
    );
}

/// Threads for the products when there are too few images to split over.
fn inner_parallelism(tasks: usize) -> Parallelism {
    if tasks >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

/// Panics unless the buffers have the sizes `g` says (a caller's bug, not bad input: the
/// op's function checks shapes before calling).
fn check_sizes(g: &Geometry, x: Option<&[f32]>, weight: Option<&[f32]>, dy: Option<&[f32]>) {
    assert!(g.is_valid(), "conv2d: invalid geometry {g:?}");
    assert!(
        x.is_none_or(|x| x.len() == g.batch * g.image()),
        "conv2d: input size"
    );
    assert!(
        weight.is_none_or(|w| w.len() == g.c_out * g.patch()),
        "conv2d: weight size"
    );
    assert!(
        dy.is_none_or(|d| d.len() == g.batch * g.c_out * g.pixels()),
        "conv2d: output gradient size"
    );
}

/// The forward pass: `y = conv(x, weight) + bias`.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    check_sizes(g, Some(x), Some(weight), None);
    assert!(bias.is_none_or(|b| b.len() == g.c_out), "conv2d: bias size");
    let (patch, pixels) = (g.patch(), g.pixels());
    let mut y = vec![0.0f32; g.batch * g.c_out * pixels];
    if y.is_empty() {
        return y;
    }
    let inner = inner_parallelism(g.batch);
    y.par_chunks_mut(g.c_out * pixels)
        .zip(x.par_chunks(g.image().max(1)))
        .for_each_init(
            || vec![0.0f32; patch * pixels],
            |col, (y_n, x_n)| {
                g.im2col(x_n, col);
                if let Some(b) = bias {
                    for (row, &b) in y_n.chunks_exact_mut(pixels).zip(b) {
                        row.fill(b);
                    }
                }
                matmul(
                    [g.c_out, pixels, patch],
                    y_n,
                    bias.is_some(),
                    weight,
                    [patch, 1],
                    col,
                    [pixels, 1],
                    inner,
                );
            },
        );
    y
}

/// The input's gradient: each image's `weightᵀ · dy`, folded back by col2im.
pub fn input_grad(g: &Geometry, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    check_sizes(g, None, Some(weight), Some(dy));
    let (patch, pixels) = (g.patch(), g.pixels());
    let mut dx = vec![0.0f32; g.batch * g.image()];
    if dx.is_empty() || pixels == 0 {
        return dx;
    }
    let inner = inner_parallelism(g.batch);
    dx.par_chunks_mut(g.image())
        .zip(dy.par_chunks(g.c_out * pixels))
        .for_each_init(
            || vec![0.0f32; patch * pixels],
            |col, (dx_n, dy_n)| {
                // weightᵀ: element (r, o) of the patch x c_out matrix is weight[o * patch + r].
                matmul(
                    [patch, pixels, g.c_out],
                    col,
                    false,
                    weight,
                    [1, patch],
                    dy_n,
                    [pixels, 1],
                    inner,
                );
                g.col2im(col, dx_n);
            },
        );
    dx
}

/// The weight's and the bias's gradients: `Σₙ dyₙ · colₙᵀ` and `Σₙ Σₚ dyₙ`.
pub fn weight_bias_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    check_sizes(g, Some(x), None, Some(dy));
    let (patch, pixels) = (g.patch(), g.pixels());
    let (dw_len, db_len) = (g.c_out * patch, g.c_out);
    if g.batch == 0 || pixels == 0 {
        return (vec![0.0; dw_len], vec![0.0; db_len]);
    }
    let groups = g.batch.div_ceil(GROUP);
    let inner = inner_parallelism(groups);
    let partial: Vec<(Vec<f32>, Vec<f32>)> = (0..groups)
        .into_par_iter()
        .map(|group| {
            let mut col = vec![0.0f32; patch * pixels];
            let mut dw = vec![0.0f32; dw_len];
            let mut db = vec![0.0f32; db_len];
            let images = group * GROUP..((group + 1) * GROUP).min(g.batch);
            for (i, n) in images.enumerate() {
                g.im2col(&x[n * g.image()..(n + 1) * g.image()], &mut col);
                let dy_n = &dy[n * g.c_out * pixels..(n + 1) * g.c_out * pixels];
                // colᵀ: element (p, r) of the pixels x patch matrix is col[r * pixels + p].
                matmul(
                    [g.c_out, patch, pixels],
                    &mut dw,
                    i > 0,
                    dy_n,
                    [pixels, 1],
                    &col,
                    [1, pixels],
                    inner,
                );
                for (b, row) in db.iter_mut().zip(dy_n.chunks_exact(pixels)) {
                    *b += row.iter().sum::<f32>();
                }
            }
            (dw, db)
        })
        .collect();
    let mut parts = partial.into_iter();
    let (mut dw, mut db) = parts.next().expect("at least one group");
    for (pw, pb) in parts {
        dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
    }
    (dw, db)
}

//! 2-D max pooling on host slices, one `[h, w]` plane at a time, planes in parallel. No padding,
//! no dilation, floor division for the output size (burn's defaults, and what kiln's CNN uses).
//!
//! The forward pass under autodiff also records, per output, the offset of its maximum within
//! the plane; the backward pass adds each output's gradient at that offset. Ties go to the first
//! maximum in row-major window order, and a NaN in a window is its maximum, as in PyTorch.

use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Batch times channels.
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
}

impl Geometry {
    pub fn out_hw(&self) -> [usize; 2] {
        [
            (self.height - self.kernel[0]) / self.stride[0] + 1,
            (self.width - self.kernel[1]) / self.stride[1] + 1,
        ]
    }

    /// Whether the window fits in the input.
    pub fn is_valid(&self) -> bool {
        self.kernel[0] >= 1
            && self.kernel[1] >= 1
            && self.stride[0] >= 1
            && self.stride[1] >= 1
            && self.height >= self.kernel[0]
            && self.width >= self.kernel[1]
            && u32::try_from(self.plane()).is_ok()
    }

    fn plane(&self) -> usize {
        self.height * self.width
    }

    fn out_plane(&self) -> usize {
        let [oh, ow] = self.out_hw();
        oh * ow
    }

    /// Pools one plane into `y`, and the maxima's offsets into `at` when given.
    fn pool_plane(&self, x: &[f32], y: &mut [f32], at: Option<&mut [u32]>) {
        if self.kernel == [2, 2] && self.stride == [2, 2] {
            self.pool_plane_2x2(x, y, at);
        } else {
            self.pool_plane_any(x, y, at);
        }
    }

    /// The CNN's usual pool, written so that the compiler sees four loads per output.
    fn pool_plane_2x2(&self, x: &[f32], y: &mut [f32], mut at: Option<&mut [u32]>) {
        let [oh, ow] = self.out_hw();
        let w = self.width;
        for oy in 0..oh {
            let top = &x[2 * oy * w..2 * oy * w + 2 * ow];
            let bottom = &x[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
            let out = &mut y[oy * ow..(oy + 1) * ow];
            let mut at_row = at.as_deref_mut().map(|a| &mut a[oy * ow..(oy + 1) * ow]);
            for (ox, ((t, b), o)) in top
                .chunks_exact(2)
                .zip(bottom.chunks_exact(2))
                .zip(out.iter_mut())
                .enumerate()
            {
                let (mut best, mut k) = (t[0], 0);
                for (i, v) in [t[1], b[0], b[1]].into_iter().enumerate() {
                    if v > best || (v.is_nan() && !best.is_nan()) {
                        best = v;
                        k = i + 1;
                    }
                }
                *o = best;
                if let Some(a) = at_row.as_deref_mut() {
                    let base = 2 * oy * w + 2 * ox;
                    a[ox] = (base + [0, 1, w, w + 1][k]) as u32;
                }
            }
        }
    }

    fn pool_plane_any(&self, x: &[f32], y: &mut [f32], mut at: Option<&mut [u32]>) {
        let [oh, ow] = self.out_hw();
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, x0) = (oy * sh, ox * sw);
                let mut best = x[y0 * self.width + x0];
                let mut best_at = y0 * self.width + x0;
                for ky in 0..kh {
                    let row = (y0 + ky) * self.width + x0;
                    for (kx, &v) in x[row..row + kw].iter().enumerate() {
                        if v > best || (v.is_nan() && !best.is_nan()) {
                            best = v;
                            best_at = row + kx;
                        }
                    }
                }
                y[oy * ow + ox] = best;
                if let Some(at) = at.as_deref_mut() {
                    at[oy * ow + ox] = best_at as u32;
                }
            }
        }
    }
}

/// The pooled values, `[planes, oh, ow]`.
pub fn forward(g: &Geometry, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; g.planes * g.out_plane()];
    if !y.is_empty() {
        y.par_chunks_mut(g.out_plane())
            .zip(x.par_chunks(g.plane()))
            .for_each(|(y, x)| g.pool_plane(x, y, None));
    }
    y
}

/// The pooled values and, per output, the offset of its maximum within its plane.
pub fn forward_with_argmax(g: &Geometry, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let n = g.planes * g.out_plane();
    let (mut y, mut at) = (vec![0.0f32; n], vec![0u32; n]);
    if n > 0 {
        y.par_chunks_mut(g.out_plane())
            .zip(at.par_chunks_mut(g.out_plane()))
            .zip(x.par_chunks(g.plane()))
            .for_each(|((y, at), x)| g.pool_plane(x, y, Some(at)));
    }
    (y, at)
}

/// The input's gradient: each output's gradient added at its maximum.
pub fn backward(g: &Geometry, dy: &[f32], at: &[u32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; g.planes * g.plane()];
    if g.out_plane() > 0 {
        dx.par_chunks_mut(g.plane())
            .zip(
                dy.par_chunks(g.out_plane())
                    .zip(at.par_chunks(g.out_plane())),
            )
            .for_each(|(dx, (dy, at))| {
                for (&d, &i) in dy.iter().zip(at) {
                    dx[i as usize] += d;
                }
            });
    }
    dx
}

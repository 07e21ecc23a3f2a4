//! Augmentation of training images: random crop with padding, flips, rotation, colour jitter.
//! Each example's transform is a pure function of (seed, epoch, example index), so resumed and
//! data-parallel runs read the same pixels.

use super::*;

/// `[data.augment]`: random transforms of training images (never of validation or test).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Pad by `padding` pixels (black), then crop back to `data.image_size` at a random place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_crop: Option<RandomCrop>,
    /// Probability of mirroring an image left to right. Default: 0.
    pub horizontal_flip: f64,
    /// Probability of flipping an image upside down. Default: 0.
    pub vertical_flip: f64,
    /// Rotate by an angle drawn uniformly from `[-d, d]` degrees (bilinear, black corners).
    /// Default: 0.
    pub rotation_degrees: f64,
    /// Brightness, contrast and saturation scaled by factors drawn from `[1 - j, 1 + j]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color_jitter: Option<ColorJitter>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RandomCrop {
    /// The crop's `[height, width]`: must be `data.image_size` (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<[usize; 2]>,
    /// Pixels of black added on every side before cropping. Default: 0.
    pub padding: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    /// Colour images only.
    pub saturation: f64,
}

impl Augment {
    pub fn is_identity(&self) -> bool {
        self.random_crop.as_ref().is_none_or(|c| c.padding == 0)
            && self.horizontal_flip == 0.0
            && self.vertical_flip == 0.0
            && self.rotation_degrees == 0.0
            && self
                .color_jitter
                .as_ref()
                .is_none_or(|j| j.brightness == 0.0 && j.contrast == 0.0 && j.saturation == 0.0)
    }

    /// Problems of the table, each naming its key.
    pub fn problems(&self, image_size: Option<[usize; 2]>) -> Vec<String> {
        let mut out = Vec::new();
        let mut probability = |key: &str, p: f64| {
            if !(0.0..=1.0).contains(&p) {
                out.push(format!(
                    "`data.augment.{key}` = {p}: a probability, in [0, 1]"
                ));
            }
        };
        probability("horizontal_flip", self.horizontal_flip);
        probability("vertical_flip", self.vertical_flip);
        if !(0.0..=180.0).contains(&self.rotation_degrees) {
            out.push(format!(
                "`data.augment.rotation_degrees` = {}: must be in [0, 180]",
                self.rotation_degrees
            ));
        }
        if let Some(j) = &self.color_jitter {
            for (key, v) in [
                ("brightness", j.brightness),
                ("contrast", j.contrast),
                ("saturation", j.saturation),
            ] {
                if !(0.0..1.0).contains(&v) {
                    out.push(format!(
                        "`data.augment.color_jitter.{key}` = {v}: must be in [0, 1)"
                    ));
                }
            }
        }
        if let (Some(c), Some(size)) = (&self.random_crop, image_size)
            && let Some(s) = c.size
            && s != size
        {
            out.push(format!(
                "`data.augment.random_crop.size` = {s:?}: must be `data.image_size` ({size:?}); the crop gives training images the size the model reads"
            ));
        }
        out
    }
}

/// One random transform of an image in [0, 1] (`channels x h x w`): the geometric part
/// (padded crop, flips, rotation about the centre) as one inverse map sampled bilinearly with
/// black outside, then colour jitter.
pub fn augment(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    a: &Augment,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let pad = a.random_crop.as_ref().map_or(0, |r| r.padding) as i64;
    // The draws happen in a fixed order, whether or not an augmentation is on.
    let dy = rng.random_range(-pad..=pad) as f32;
    let dx = rng.random_range(-pad..=pad) as f32;
    let flip_x = rng.random::<f64>() < a.horizontal_flip;
    let flip_y = rng.random::<f64>() < a.vertical_flip;
    let angle = rng.random_range(-1.0..=1.0f64) * a.rotation_degrees;
    let jitter: [f32; 3] = std::array::from_fn(|_| rng.random_range(-1.0..=1.0f64) as f32);
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (sin, cos) = (angle.to_radians() as f32).sin_cos();
    let plane = h * w;
    let mut out = vec![0.0f32; c * plane];
    let sample = |ch: usize, y: f32, xs: f32| -> f32 {
        if y <= -1.0 || xs <= -1.0 || y >= h as f32 || xs >= w as f32 {
            return 0.0;
        }
        let (y0, x0) = (y.floor(), xs.floor());
        let (fy, fx) = (y - y0, xs - x0);
        let at = |yy: f32, xx: f32| -> f32 {
            if yy < 0.0 || xx < 0.0 || yy >= h as f32 || xx >= w as f32 {
                0.0
            } else {
                x[ch * plane + yy as usize * w + xx as usize]
            }
        };
        let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
        let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
        top * (1.0 - fy) + bottom * fy
    };
    for i in 0..h {
        for j in 0..w {
            // Output pixel -> the padded crop's pixel -> flipped -> rotated back.
            let mut y = i as f32 + dy;
            let mut xx = j as f32 + dx;
            if flip_y {
                y = h as f32 - 1.0 - y;
            }
            if flip_x {
                xx = w as f32 - 1.0 - xx;
            }
            let (ry, rx) = (y - cy, xx - cx);
            let (sy, sx) = (cos * ry - sin * rx + cy, sin * ry + cos * rx + cx);
            for ch in 0..c {
                out[ch * plane + i * w + j] = sample(ch, sy, sx);
            }
        }
    }
    if let Some(j) = &a.color_jitter {
        let factor = |amount: f64, u: f32| 1.0 + amount as f32 * u;
        let (b, k, s) = (
            factor(j.brightness, jitter[0]),
            factor(j.contrast, jitter[1]),
            factor(j.saturation, jitter[2]),
        );
        for v in out.iter_mut() {
            *v = (*v * b).clamp(0.0, 1.0);
        }
        let grey = |o: &[f32], p: usize| -> f32 {
            if c == 3 {
                0.299 * o[p] + 0.587 * o[plane + p] + 0.114 * o[2 * plane + p]
            } else {
                o[p]
            }
        };
        let mean = (0..plane).map(|p| grey(&out, p)).sum::<f32>() / plane as f32;
        for v in out.iter_mut() {
            *v = ((*v - mean) * k + mean).clamp(0.0, 1.0);
        }
        if c == 3 {
            for p in 0..plane {
                let g = grey(&out, p);
                for ch in 0..3 {
                    let v = &mut out[ch * plane + p];
                    *v = ((*v - g) * s + g).clamp(0.0, 1.0);
                }
            }
        }
    }
    out
}

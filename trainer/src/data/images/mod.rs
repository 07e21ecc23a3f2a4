//! Folders of image files, as people store them: `root/<class>/*.png|jpg` (`image_folder`) or a
//! CSV/TSV of relative paths and labels (`image_csv`), decoded while the model trains.
//!
//! - **Index**: the files are listed once per process (path, size, modification time, label,
//!   a hash of their first and last 4 KiB) and their headers checked, so a file that is not a
//!   PNG or JPEG is named before training starts. The index is saved with the run; all but the
//!   modification times hash into the run's data fingerprint, so resuming or evaluating on a
//!   changed folder is refused (a copy with new times is the same data).
//! - **Decoding**: PNG (grey, RGB, with alpha, 8 or 16 bits) and JPEG by the `image` crate's
//!   pure-Rust decoders, on the loader's worker threads: at most `workers x prefetch` decoded
//!   batches are held, never the data set.
//! - **Resize and centre crop**: the image is scaled (bilinear, ONNX `Resize`'s `half_pixel`
//!   rule) so that it covers `image_size` with its aspect ratio kept, then cropped at the
//!   centre; an image already of that size is read as it is.
//! - **Normalisation**: pixels are scaled to [0, 1], then standardised per channel with a mean
//!   and deviation fitted on (up to [`NORM_SAMPLE`] of) the training images.
//! - **Augmentation** (training only): random crop with padding, flips, rotation, colour
//!   jitter; each example's transform is a pure function of (seed, epoch, example index), so
//!   resumed and data-parallel runs read the same pixels.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::table::{Cells, RawData, RawTable};
use super::{Batch, DataError, DataSpec, Features, Pass, Source, Targets};

mod augment;
mod decode;
mod index;
mod set;

pub use augment::*;
pub use decode::*;
pub use index::*;
pub use set::*;

/// Training images read to fit the per-channel mean and deviation (evenly spaced).
pub const NORM_SAMPLE: usize = 2000;

/// File extensions read from an image folder (any case).
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// The most pixels an image file (or `data.image_size`) may have: Pillow's
/// `MAX_IMAGE_PIXELS`, past which it warns of a decompression bomb (and refuses at twice as
/// many). A PNG of a few kB can claim 20000x20000 pixels, 4.8 GB once decoded to floats;
/// its header is refused before any pixel is decoded.
pub const MAX_PIXELS: usize = 89_478_485;

/// What to do with a file that is not a readable image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BadImages {
    /// Stop with an error naming the file.
    #[default]
    Error,
    /// Leave the file out, and count it in the run record.
    Skip,
}

/// How images are read, saved with the run (`preprocess.json`): what evaluation, prediction,
/// serving and export apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePrep {
    /// `[height, width]` the model reads.
    pub size: [usize; 2],
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Per channel, of pixels scaled to [0, 1].
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl ImagePrep {
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.size[0], self.size[1]]
    }

    /// Decoded pixels in [0, 1] of an `h x w` image as the model reads them: resized and
    /// cropped when not of the model's size, then normalised.
    pub fn encode(&self, x: Vec<f32>, h: usize, w: usize) -> Vec<f32> {
        let mut x = match [h, w] == self.size {
            true => x,
            false => resize_crop(&x, self.channels, h, w, self.size),
        };
        self.normalise(&mut x);
        x
    }

    pub(crate) fn normalise(&self, x: &mut [f32]) {
        let plane = self.size[0] * self.size[1];
        for (c, values) in x.chunks_mut(plane).enumerate() {
            let (m, s) = (self.mean[c] as f32, self.std[c] as f32);
            for v in values {
                *v = (*v - m) / s;
            }
        }
    }
}

fn format_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: crate::shown::path(path),
        message: message.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: crate::shown::path(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_of_the_model_size_is_read_as_it_is_and_others_cover_then_crop() {
        assert_eq!(cover_size(28, 28, [28, 28]), [28, 28]);
        assert_eq!(cover_size(10, 20, [5, 5]), [5, 10]);
        assert_eq!(cover_size(3, 4, [6, 6]), [6, 8]);
        // A 2x4 ramp halved to 1x2: half_pixel sampling averages neighbouring pairs.
        let x = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        let out = resize_crop(&x, 1, 2, 4, [1, 2]);
        assert_eq!(out, vec![5.5, 7.5]);
        // Cropping a 1x4 row's centre 1x2 keeps the middle pixels (scale 1).
        let out = resize_crop(&[1.0, 2.0, 3.0, 4.0], 1, 1, 4, [1, 2]);
        assert_eq!(out, vec![2.0, 3.0]);
    }

    #[test]
    fn augmentation_is_a_pure_function_of_its_draws_and_keeps_shapes() {
        let a = Augment {
            random_crop: Some(RandomCrop {
                size: None,
                padding: 2,
            }),
            horizontal_flip: 0.5,
            vertical_flip: 0.0,
            rotation_degrees: 10.0,
            color_jitter: Some(ColorJitter {
                brightness: 0.2,
                contrast: 0.2,
                saturation: 0.2,
            }),
        };
        let x: Vec<f32> = (0..3 * 8 * 6).map(|i| (i % 7) as f32 / 7.0).collect();
        let run = |seed| augment(&x, 3, 8, 6, &a, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert_eq!(run(1).len(), x.len());
        assert!(run(3).iter().all(|v| (0.0..=1.0).contains(v)));
        // No augmentation asked: the image comes back unchanged.
        let none = augment(
            &x,
            3,
            8,
            6,
            &Augment::default(),
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        assert_eq!(none, x);
    }

    /// 16-bit grey, RGBA and grey-with-alpha PNG files, written by the image crate's encoder:
    /// full scale is 1 whatever the depth, alpha is dropped, and channels convert both ways.
    #[test]
    fn sixteen_bit_grey_rgba_and_grey_alpha_files_decode_to_unit_scale() {
        let dir = tempfile::tempdir().unwrap();
        let g16 = dir.path().join("g16.png");
        image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![0u16, 65535])
            .unwrap()
            .save(&g16)
            .unwrap();
        let (x, h, w) = decode(&g16, 1).unwrap();
        assert_eq!((x, h, w), (vec![0.0, 1.0], 1, 2));
        assert_eq!(channels_of(&g16).unwrap(), 1);
        let rgba = dir.path().join("rgba.png");
        image::RgbaImage::from_raw(2, 1, vec![255, 0, 0, 10, 0, 0, 255, 255])
            .unwrap()
            .save(&rgba)
            .unwrap();
        assert_eq!(channels_of(&rgba).unwrap(), 3);
        let (x, _, _) = decode(&rgba, 3).unwrap();
        // Channel-major: red of both pixels, then green, then blue; alpha gone.
        assert_eq!(x, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        let (grey, _, _) = decode(&rgba, 1).unwrap();
        assert!(
            (grey[0] - 0.299).abs() < 1e-6 && (grey[1] - 0.114).abs() < 1e-6,
            "{grey:?}"
        );
        let la = dir.path().join("la.png");
        image::ImageBuffer::<image::LumaA<u8>, _>::from_raw(1, 1, vec![51u8, 0])
            .unwrap()
            .save(&la)
            .unwrap();
        assert_eq!(channels_of(&la).unwrap(), 1);
        let (x, _, _) = decode(&la, 3).unwrap();
        assert!(
            x.len() == 3 && x.iter().all(|v| (v - 0.2).abs() < 1e-6),
            "{x:?}"
        );
        // Not an image, whatever its name says.
        let fake = dir.path().join("fake.png");
        std::fs::write(&fake, "GIF89a").unwrap();
        assert!(
            header(&fake)
                .unwrap_err()
                .to_string()
                .contains("not an image")
        );
    }

    #[test]
    fn the_saved_index_says_what_changed_and_a_link_loop_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let png = |p: &Path, v: u8| {
            image::GrayImage::from_raw(2, 2, vec![v; 4])
                .unwrap()
                .save(p)
                .unwrap();
        };
        for class in ["a", "b"] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for i in 0..3 {
                png(&dir.path().join(format!("{class}/{i}.png")), i as u8);
            }
        }
        // A link from a class folder to itself: each folder is read once.
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("a/loop")).unwrap();
        let read = || Indexed {
            main: index_folder(dir.path(), BadImages::Error).unwrap(),
            test: None,
        };
        let before = read();
        assert_eq!(before.main.entries.len(), 6, "{:?}", before.main.entries);
        let saved = before.to_tsv();
        assert_eq!(read().changes_since(&saved), None);
        png(&dir.path().join("b/9.png"), 9);
        std::fs::remove_file(dir.path().join("a/0.png")).unwrap();
        png(&dir.path().join("b/1.png"), 200);
        assert_eq!(
            read().changes_since(&saved).unwrap(),
            "1 added (train/b/9.png); 1 removed (train/a/0.png); 1 rewritten or relabelled (train/b/1.png)"
        );
        // The fingerprint ignores modification times, not contents.
        let (a, _) = before.main.fingerprint();
        let (b, _) = read().main.fingerprint();
        assert_ne!(a, b);
    }

    #[test]
    fn a_flip_alone_mirrors_the_image() {
        let a = Augment {
            horizontal_flip: 1.0,
            ..Default::default()
        };
        let x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        let out = augment(&x, 1, 2, 3, &a, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(out, vec![0.3, 0.2, 0.1, 0.6, 0.5, 0.4]);
    }
}

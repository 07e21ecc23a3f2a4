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

/// Training images read to fit the per-channel mean and deviation (evenly spaced).
pub const NORM_SAMPLE: usize = 2000;

/// File extensions read from an image folder (any case).
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// The most pixels an image file (or `data.image_size`) may have: Pillow's
/// `MAX_IMAGE_PIXELS`, past which it warns of a decompression bomb (and refuses at twice as
/// many). A PNG of a few kB can claim 20000x20000 pixels, 4.8 GB once decoded to floats;
/// its header is refused before any pixel is decoded.
pub const MAX_PIXELS: usize = 89_478_485;

/// Refuses a `w x h` image over [`MAX_PIXELS`].
fn check_pixels(path: &Path, w: u32, h: u32) -> Result<(), DataError> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS as u64 {
        return Err(DataError::TooLarge {
            path: crate::shown::path(path),
            message: format!(
                "{w}x{h} pixels, over the limit of {MAX_PIXELS} (a decompression bomb?): \
                 scale it down, or leave it out"
            ),
        });
    }
    Ok(())
}

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

/// One file of the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Relative to the index's root.
    pub path: String,
    pub bytes: u64,
    /// Seconds since the epoch (and nanoseconds), as the file system reports them.
    pub modified: (u64, u32),
    /// The label as written: the class folder's name, or the CSV's label cell.
    pub label: String,
    /// sha256 of the file's first and last 4 KiB (the whole of a small file), hex.
    pub sample: String,
}

/// The files of one image folder (or CSV), in a stable order.
#[derive(Debug, Clone)]
pub struct Index {
    pub root: PathBuf,
    pub entries: Vec<IndexEntry>,
    /// Files left out (`bad_images = "skip"`), with why.
    pub skipped: Vec<String>,
}

impl Index {
    /// A hash of every (path, size, label, content sample): what the data fingerprint holds.
    /// Not the modification time: a copy of the folder on another machine (each rank's own)
    /// hashes as the original does.
    pub fn fingerprint(&self) -> (String, u64) {
        let mut h = Sha256::new();
        let mut bytes = 0u64;
        for e in &self.entries {
            h.update(e.path.as_bytes());
            h.update([0]);
            h.update(e.bytes.to_le_bytes());
            h.update(e.label.as_bytes());
            h.update([0]);
            h.update(e.sample.as_bytes());
            bytes += e.bytes;
        }
        let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        (hex, bytes)
    }

    /// The index as a table: one row per file (`path`), its label.
    fn table(&self) -> RawTable {
        RawTable {
            path: self.root.display().to_string(),
            lines: (1..=self.entries.len()).collect(),
            names: vec!["path".into()],
            cells: Cells::Text(self.entries.iter().map(|e| vec![e.path.clone()]).collect()),
            labels: self.entries.iter().map(|e| e.label.clone()).collect(),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .map(|e| self.root.join(&e.path))
            .collect()
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

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// A name starting with a dot: not read (`.DS_Store`, `.git`, kiln's own `.complete`).
fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

/// A name kiln can write in its index (a line per file, tab-separated): UTF-8, without tabs
/// or line breaks.
fn check_name(p: &Path) -> Result<(), DataError> {
    match p.file_name().and_then(|n| n.to_str()) {
        Some(n) if !n.contains(['\t', '\n', '\r']) => Ok(()),
        Some(_) => Err(format_error(
            p,
            "a name with a tab or a line break: rename it",
        )),
        None => Err(format_error(p, "a name that is not UTF-8: rename it")),
    }
}

/// Every image file under `dir` (recursively, each folder once however symbolic links lead
/// back to it), sorted by path; hidden entries are ignored; a name that is not UTF-8 is an
/// error naming it.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(std::fs::canonicalize(&d).map_err(|e| io_error(&d, e))?) {
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| io_error(&d, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| io_error(&d, e)))
            .collect::<Result<_, _>>()?;
        // Sorted: which of two links to one folder is kept does not depend on the file system.
        found.sort();
        for p in found {
            let hidden = is_hidden(&p);
            if hidden {
                continue;
            }
            let wanted = p.is_dir() || has_image_extension(&p);
            if wanted {
                check_name(&p)?;
            }
            if p.is_dir() {
                stack.push(p);
            } else if has_image_extension(&p) {
                // A pipe, socket or device named like an image is no image: opening one
                // could block for ever.
                if !p.is_file() {
                    return Err(format_error(
                        &p,
                        "not a regular file (a named pipe, socket or device): remove it",
                    ));
                }
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Lists `root/<class>/...` (classes are the sub-folders, sorted by name; files by path).
pub fn index_folder(root: &Path, bad: BadImages) -> Result<Index, DataError> {
    if !root.is_dir() {
        return Err(format_error(
            root,
            "not a folder: `data.format` = \"image_folder\" reads root/<class>/*.png|jpg",
        ));
    }
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| io_error(root, e))? {
        let p = entry.map_err(|e| io_error(root, e))?.path();
        let hidden = is_hidden(&p);
        if p.is_dir() && !hidden {
            check_name(&p)?;
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            classes.push(name.to_string());
        }
    }
    classes.sort();
    if classes.is_empty() {
        return Err(format_error(
            root,
            "no class folders: an image folder holds one sub-folder of images per class",
        ));
    }
    let mut files = Vec::new();
    for class in &classes {
        let dir = root.join(class);
        let found = image_files(&dir)?;
        if found.is_empty() {
            return Err(format_error(
                &dir,
                format!(
                    "class folder {class:?} holds no image files ({})",
                    EXTENSIONS.join(", ")
                ),
            ));
        }
        files.extend(found.into_iter().map(|p| (p, class.clone())));
    }
    entries(root, files, bad)
}

/// Lists the files of a CSV/TSV with a column of paths (relative to the CSV's folder) and a
/// label column.
pub fn index_csv(spec: &DataSpec, csv: &Path, bad: BadImages) -> Result<Index, DataError> {
    let label = match &spec.label {
        Some(super::ColumnRef::Name(n)) => n.clone(),
        Some(super::ColumnRef::Index(_)) => {
            return Err(format_error(
                csv,
                "`data.label`: name the label column of an image CSV (it has a header)",
            ));
        }
        None => "label".into(),
    };
    let mut header = spec.clone();
    header.header = true;
    let cols = super::table::read_columns(&header, csv, &[spec.path_column.clone(), label])?;
    let root = csv.parent().unwrap_or(Path::new(".")).to_path_buf();
    let files = cols[0]
        .iter()
        .zip(&cols[1])
        .map(|(p, l)| (root.join(p), l.clone()))
        .collect();
    entries(&root, files, bad)
}

/// sha256 of a file's first and last 4 KiB (of all of it when it is smaller than 8 KiB).
fn content_sample(path: &Path, len: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = super::open_regular(path)?;
    let mut h = Sha256::new();
    if len > 8192 {
        let mut buf = vec![0u8; 4096];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        f.seek(SeekFrom::End(-4096))?;
        f.read_exact(&mut buf)?;
        h.update(&buf);
    } else {
        let mut all = Vec::with_capacity(len as usize);
        f.read_to_end(&mut all)?;
        h.update(&all);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Stats and checks every file (in parallel), in the given order: its header, or with
/// `bad_images = "skip"` all of its pixels, so that every file left in decodes.
fn entries(root: &Path, files: Vec<(PathBuf, String)>, bad: BadImages) -> Result<Index, DataError> {
    let checked: Vec<Result<IndexEntry, DataError>> = files
        .par_iter()
        .map(|(path, label)| {
            let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
            header(path)?;
            if bad == BadImages::Skip {
                decode(path, 1)?;
            }
            let rel = path.strip_prefix(root).unwrap_or(path);
            let Some(rel) = rel.to_str() else {
                return Err(format_error(path, "a path that is not UTF-8: rename it"));
            };
            if rel.contains(['\t', '\n', '\r']) || label.contains(['\t', '\n', '\r']) {
                return Err(format_error(
                    path,
                    "a path or label with a tab or a line break: kiln's index holds a line per file",
                ));
            }
            Ok(IndexEntry {
                path: rel.to_string(),
                bytes: meta.len(),
                modified,
                label: label.clone(),
                sample: content_sample(path, meta.len()).map_err(|e| io_error(path, e))?,
            })
        })
        .collect();
    let mut index = Index {
        root: root.to_path_buf(),
        entries: Vec::with_capacity(checked.len()),
        skipped: Vec::new(),
    };
    for c in checked {
        match (c, bad) {
            (Ok(e), _) => index.entries.push(e),
            (Err(e), BadImages::Skip) => index.skipped.push(e.to_string()),
            // The fault named, and what to do; a file too large stays that kind of error.
            (Err(e), BadImages::Error) => {
                let (path, message) = (
                    e.to_string(),
                    "set `data.bad_images` = \"skip\" to leave such files out".into(),
                );
                return Err(match e {
                    DataError::TooLarge { .. } => DataError::TooLarge { path, message },
                    _ => DataError::Format { path, message },
                });
            }
        }
    }
    Ok(index)
}

/// The image's format and size from its first bytes; an error naming the file when it is not
/// a PNG or JPEG.
pub fn header(path: &Path) -> Result<(image::ImageFormat, u32, u32), DataError> {
    use std::io::Read;
    let mut magic = [0u8; 8];
    let n = super::open_regular(path)
        .and_then(|f| f.take(8).read(&mut magic))
        .map_err(|e| io_error(path, e))?;
    let png = n == 8 && magic == *b"\x89PNG\r\n\x1a\n";
    let jpeg = n >= 3 && magic[..3] == [0xFF, 0xD8, 0xFF];
    if !png && !jpeg {
        return Err(format_error(
            path,
            "not an image: neither a PNG nor a JPEG file by its first bytes",
        ));
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    let format = match reader.format() {
        Some(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg)) => f,
        Some(other) => {
            return Err(format_error(
                path,
                format!("a {other:?} image: kiln reads PNG and JPEG files"),
            ));
        }
        None => return Err(format_error(path, "not an image (PNG or JPEG expected)")),
    };
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format_error(path, format!("a broken {format:?} header: {e}")))?;
    if w == 0 || h == 0 {
        return Err(format_error(path, format!("an empty {w}x{h} image")));
    }
    check_pixels(path, w, h)?;
    Ok((format, w, h))
}

/// Channels of the first file: 1 for grey (with or without alpha), else 3.
pub fn channels_of(path: &Path) -> Result<usize, DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format_error(path, format!("cannot read the image: {e}")))?;
    use image::ImageDecoder;
    let _ = decoder.set_limits(image::Limits::default());
    Ok(match decoder.color_type().channel_count() {
        1 | 2 => 1,
        _ => 3,
    })
}

/// Decodes one file: `channels x height x width` values in [0, 1] (alpha dropped; grey to RGB
/// by copying, RGB to grey with ITU-R 601's weights 0.299, 0.587, 0.114, as Pillow and
/// torchvision), and its height and width.
pub fn decode(path: &Path, channels: usize) -> Result<(Vec<f32>, usize, usize), DataError> {
    use image::ImageDecoder;
    let decoder = image::ImageReader::open(path)
        .map_err(|e| io_error(path, e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, e))?
        .into_decoder()
        .map_err(|e| format_error(path, format!("cannot decode the image: {e}")))?;
    // The size is checked before a pixel is decoded (the file may have changed since its
    // header was read).
    let (w, h) = decoder.dimensions();
    check_pixels(path, w, h)?;
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| format_error(path, format!("cannot decode the image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let grey = matches!(
        img.color(),
        image::ColorType::L8
            | image::ColorType::La8
            | image::ColorType::L16
            | image::ColorType::La16
    );
    let x = match channels {
        1 if grey => img.to_luma32f().into_raw(),
        1 => img
            .to_rgb32f()
            .into_raw()
            .chunks_exact(3)
            .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
            .collect(),
        _ => {
            let hwc = img.to_rgb32f().into_raw();
            let plane = h * w;
            let mut chw = vec![0.0; 3 * plane];
            for (p, px) in hwc.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    chw[c * plane + p] = px[c];
                }
            }
            chw
        }
    };
    Ok((x, h, w))
}

/// The size an `h x w` image is scaled to so that it covers `size` with its aspect ratio
/// kept (the centre crop then takes `size`).
/// In f32 and rounding halves up, as the exported graph computes it.
pub fn cover_size(h: usize, w: usize, size: [usize; 2]) -> [usize; 2] {
    let s = (size[0] as f32 / h as f32).max(size[1] as f32 / w as f32);
    [
        ((h as f32 * s + 0.5).floor() as usize).max(size[0]),
        ((w as f32 * s + 0.5).floor() as usize).max(size[1]),
    ]
}

/// [`decode`], then scaled to cover `size` and cropped at the centre.
pub fn read_resized(path: &Path, channels: usize, size: [usize; 2]) -> Result<Vec<f32>, DataError> {
    let (x, h, w) = decode(path, channels)?;
    if [h, w] == size {
        return Ok(x);
    }
    Ok(resize_crop(&x, channels, h, w, size))
}

/// Bilinear scaling to [`cover_size`] with ONNX `Resize`'s `half_pixel` coordinates
/// (`src = (dst + 0.5) / scale - 0.5`, clamped to the image), then the centre `size` crop.
pub fn resize_crop(x: &[f32], channels: usize, h: usize, w: usize, size: [usize; 2]) -> Vec<f32> {
    let [rh, rw] = cover_size(h, w, size);
    let (top, left) = ((rh - size[0]) / 2, (rw - size[1]) / 2);
    let axis = |out: usize, n_out: usize, n_in: usize| -> (usize, usize, f32) {
        let scale = n_out as f32 / n_in as f32;
        let src = ((out as f32 + 0.5) / scale - 0.5).clamp(0.0, (n_in - 1) as f32);
        let i0 = src.floor() as usize;
        (i0, (i0 + 1).min(n_in - 1), src - i0 as f32)
    };
    let rows: Vec<_> = (0..size[0]).map(|i| axis(i + top, rh, h)).collect();
    let cols: Vec<_> = (0..size[1]).map(|j| axis(j + left, rw, w)).collect();
    let mut out = Vec::with_capacity(channels * size[0] * size[1]);
    for c in 0..channels {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for &(y0, y1, fy) in &rows {
            for &(x0, x1, fx) in &cols {
                let top = plane[y0 * w + x0] + (plane[y0 * w + x1] - plane[y0 * w + x0]) * fx;
                let bottom = plane[y1 * w + x0] + (plane[y1 * w + x1] - plane[y1 * w + x0]) * fx;
                out.push(top + (bottom - top) * fy);
            }
        }
    }
    out
}

/// Per-channel mean and deviation of up to [`NORM_SAMPLE`] evenly spaced `files`.
pub fn fit_norm(
    files: &[PathBuf],
    channels: usize,
    size: [usize; 2],
) -> Result<(Vec<f64>, Vec<f64>), DataError> {
    let n = files.len();
    let k = n.min(NORM_SAMPLE);
    let sample: Vec<&PathBuf> = (0..k).map(|i| &files[i * n / k]).collect();
    let sums = sample
        .par_iter()
        .map(|p| {
            let x = read_resized(p, channels, size)?;
            let plane = size[0] * size[1];
            Ok(x.chunks(plane)
                .map(|v| {
                    v.iter().fold((0.0f64, 0.0f64), |(s, q), &a| {
                        (s + a as f64, q + (a as f64) * (a as f64))
                    })
                })
                .collect::<Vec<_>>())
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    let count = (k * size[0] * size[1]) as f64;
    let mut mean = vec![0.0; channels];
    let mut std = vec![0.0; channels];
    for c in 0..channels {
        let (s, q) = sums
            .iter()
            .fold((0.0, 0.0), |(s, q), v| (s + v[c].0, q + v[c].1));
        let m = s / count;
        let var = (q / count - m * m).max(0.0);
        mean[c] = m;
        std[c] = if var.sqrt() > 1e-6 { var.sqrt() } else { 1.0 };
    }
    Ok((mean, std))
}

/// Images of one split, decoded when a batch asks for them.
#[derive(Debug, Clone)]
pub struct ImageSet {
    files: Arc<Vec<PathBuf>>,
    y: Targets,
    prep: ImagePrep,
    /// Training only.
    augment: Option<Augment>,
}

impl PartialEq for ImageSet {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.y == other.y && self.prep == other.prep
    }
}

impl ImageSet {
    pub fn new(files: Vec<PathBuf>, y: Targets, prep: ImagePrep, augment: Option<Augment>) -> Self {
        Self {
            files: Arc::new(files),
            y,
            prep,
            augment: augment.filter(|a| !a.is_identity()),
        }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Decodes every file once (in parallel): a corrupt file is named now, not when an
    /// evaluation reaches it.
    pub fn verify(&self) -> Result<(), DataError> {
        let c = self.prep.channels;
        self.files
            .par_iter()
            .try_for_each(|f| decode(f, c).map(|_| ()))
    }

    pub fn head(&self, n: usize) -> ImageSet {
        let n = n.min(self.files.len());
        ImageSet {
            files: Arc::new(self.files[..n].to_vec()),
            y: self.y.select(&(0..n).collect::<Vec<_>>()),
            prep: self.prep.clone(),
            augment: self.augment.clone(),
        }
    }

    /// Every image decoded and normalised, in memory (no augmentation): for reports that
    /// need the whole split's pixels.
    pub fn to_dataset(&self) -> Result<super::Dataset, DataError> {
        let idx: Vec<usize> = (0..self.files.len()).collect();
        let b = self.fetch(&idx, None)?;
        let Features::Dense { x, width } = b.x else {
            unreachable!("images are dense")
        };
        Ok(super::Dataset {
            x,
            y: b.y,
            n: idx.len(),
            d: width,
        })
    }
}

impl Source for ImageSet {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn fetch(&self, idx: &[usize], pass: Option<Pass>) -> Result<Batch, DataError> {
        let [c, h, w] = self.prep.shape();
        let mut x = Vec::with_capacity(idx.len() * c * h * w);
        for &i in idx {
            let mut img = read_resized(&self.files[i], c, self.prep.size)?;
            if let (Some(a), Some(p)) = (&self.augment, pass) {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    p.seed
                        ^ (p.epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                );
                img = augment(&img, c, h, w, a, &mut rng);
            }
            self.prep.normalise(&mut img);
            x.extend(img);
        }
        Ok(Batch {
            x: Features::Dense {
                x,
                width: c * h * w,
            },
            y: self.y.select(idx),
            len: idx.len(),
        })
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

/// What [`super::prepare`] needs of an image data set: the training index (and the test one),
/// as tables of paths and labels for the split and the label encoding.
#[derive(Debug, Clone)]
pub struct Indexed {
    pub main: Index,
    pub test: Option<Index>,
}

impl Indexed {
    /// The index of the spec's files, read once per process: training, its fingerprint and an
    /// evaluation's comparison see the same listing (and `bad_images = "skip"` decodes every
    /// file once, not once per reader).
    pub fn read(spec: &DataSpec) -> Result<Indexed, DataError> {
        use std::sync::{Mutex, OnceLock};
        type Cache = Mutex<std::collections::HashMap<String, Indexed>>;
        static READ: OnceLock<Cache> = OnceLock::new();
        let key = format!(
            "{:?}|{}|{:?}|{}|{:?}|{:?}",
            spec.format,
            spec.path.display(),
            spec.test_path,
            spec.path_column,
            spec.label,
            spec.bad_images
        );
        let cache = READ.get_or_init(Default::default);
        if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(hit.clone());
        }
        let read = Self::read_uncached(spec)?;
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, read.clone());
        Ok(read)
    }

    fn read_uncached(spec: &DataSpec) -> Result<Indexed, DataError> {
        let read = |p: &Path| match spec.format {
            super::DataFormat::ImageCsv => index_csv(spec, p, spec.bad_images),
            _ => index_folder(p, spec.bad_images),
        };
        let main = read(&spec.path)?;
        let test = spec.test_path.as_deref().map(read).transpose()?;
        Ok(Indexed { main, test })
    }

    /// The index as saved with a run: `split, path, bytes, modified (s.ns), label, sample`,
    /// tab-separated, a line per file.
    pub fn to_tsv(&self) -> String {
        let mut s = String::from("split\tpath\tbytes\tmodified\tlabel\tsample\n");
        let parts = [("train", Some(&self.main)), ("test", self.test.as_ref())];
        for (split, index) in parts {
            for e in index.map_or(&[][..], |i| &i.entries[..]) {
                s.push_str(&format!(
                    "{split}\t{}\t{}\t{}.{:09}\t{}\t{}\n",
                    e.path, e.bytes, e.modified.0, e.modified.1, e.label, e.sample
                ));
            }
        }
        s
    }

    /// What changed from a saved index ([`Indexed::to_tsv`]) to this one: counts of files
    /// added, removed and rewritten, and the first few of each; `None` when nothing did.
    pub fn changes_since(&self, saved: &str) -> Option<String> {
        use std::collections::BTreeMap;
        let key = |split: &str, path: &str| format!("{split}/{path}");
        let mut was: BTreeMap<String, (String, String, String)> = BTreeMap::new();
        for line in saved.lines().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 6 {
                was.insert(key(f[0], f[1]), (f[2].into(), f[4].into(), f[5].into()));
            }
        }
        let mut now: BTreeMap<String, (String, String, String)> = BTreeMap::new();
        let parts = [("train", Some(&self.main)), ("test", self.test.as_ref())];
        for (split, index) in parts {
            for e in index.map_or(&[][..], |i| &i.entries[..]) {
                now.insert(
                    key(split, &e.path),
                    (e.bytes.to_string(), e.label.clone(), e.sample.clone()),
                );
            }
        }
        let added: Vec<&String> = now.keys().filter(|k| !was.contains_key(*k)).collect();
        let removed: Vec<&String> = was.keys().filter(|k| !now.contains_key(*k)).collect();
        let changed: Vec<&String> = now
            .iter()
            .filter(|(k, v)| was.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k)
            .collect();
        let part = |what: &str, v: &[&String]| -> Option<String> {
            (!v.is_empty()).then(|| {
                let first: Vec<&str> = v.iter().take(3).map(|s| s.as_str()).collect();
                let more = if v.len() > 3 { ", ..." } else { "" };
                format!("{} {what} ({}{more})", v.len(), first.join(", "))
            })
        };
        let parts: Vec<String> = [
            part("added", &added),
            part("removed", &removed),
            part("rewritten or relabelled", &changed),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    pub fn raw(&self) -> RawData {
        RawData {
            main: self.main.table(),
            test: self.test.as_ref().map(Index::table),
        }
    }
}

/// The splits of an image data set, and its preprocessing (fitted on the training images,
/// unless given).
pub fn prepare(
    spec: &DataSpec,
    fitted: Option<&super::Preprocessor>,
) -> Result<super::Prepared, DataError> {
    let indexed = Indexed::read(spec)?;
    let raw = indexed.raw();
    let parts = super::split::split(&raw, spec)?;
    let files = indexed.main.files();
    let pre = match fitted {
        Some(p) => p.clone(),
        None => {
            let target = super::preprocess::fit_target(&raw, &parts.train, spec)?;
            let train: Vec<PathBuf> = parts.train.iter().map(|&i| files[i].clone()).collect();
            let first = train.first().ok_or_else(|| {
                format_error(&spec.path, "no training images (the split left none)")
            })?;
            let size = match spec.image_size {
                Some(s) => s,
                None => {
                    let (_, w, h) = header(first)?;
                    [h as usize, w as usize]
                }
            };
            // Colour when any of a sample of the training files is (a grey JPEG among
            // colour photographs does not make the model grey).
            let channels = match spec.channels {
                Some(c) => c,
                None => {
                    let k = train.len().min(64);
                    let mut c = 1;
                    for i in 0..k {
                        c = c.max(channels_of(&train[i * train.len() / k])?);
                    }
                    c
                }
            };
            let (mean, std) = fit_norm(&train, channels, size)?;
            super::Preprocessor::for_images(
                ImagePrep {
                    size,
                    channels,
                    mean,
                    std,
                },
                target,
            )
        }
    };
    let prep = pre.images.clone().expect("an image preprocessor");
    let set = |t: &RawTable, files: &[PathBuf], rows: &[usize], augment: bool| {
        let y = pre.targets(t, rows)?;
        Ok::<_, DataError>(super::Split::Images(ImageSet::new(
            rows.iter().map(|&i| files[i].clone()).collect(),
            y,
            prep.clone(),
            augment.then(|| spec.augment.clone()),
        )))
    };
    let test = match (&indexed.test, &raw.test) {
        (Some(index), Some(t)) => set(t, &index.files(), &(0..t.len()).collect::<Vec<_>>(), false)?,
        _ => set(&raw.main, &files, &parts.test, false)?,
    };
    Ok(super::Prepared {
        train: set(&raw.main, &files, &parts.train, true)?,
        valid: set(&raw.main, &files, &parts.valid, false)?,
        test,
        preprocessor: pre,
        indexed: Some(indexed.clone()),
        skipped: indexed
            .main
            .skipped
            .iter()
            .chain(indexed.test.iter().flat_map(|t| &t.skipped))
            .cloned()
            .collect(),
    })
}

/// The image files a `kiln predict --input` names: one file, every image under a folder
/// (recursively, sorted by path), or the paths a CSV/TSV lists in its `data.path_column`
/// (relative to its folder; a label column may be there or not).
pub fn input_files(spec: &DataSpec, input: &Path) -> Result<Vec<PathBuf>, DataError> {
    let listed = input
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("tsv"));
    if listed && input.is_file() {
        let mut header_spec = spec.clone();
        header_spec.header = true;
        header_spec.skip_rows = 0;
        // The training CSV's delimiter for a listing like it, else by the file's extension.
        header_spec.delimiter = match (spec.format, input.extension().and_then(|e| e.to_str())) {
            (super::DataFormat::ImageCsv, _) => spec.delimiter,
            (_, Some(e)) if e.eq_ignore_ascii_case("tsv") => Some(b'\t'),
            _ => Some(b','),
        };
        let cols = super::table::read_columns(
            &header_spec,
            input,
            std::slice::from_ref(&spec.path_column),
        )?;
        let dir = input.parent().unwrap_or(Path::new("."));
        let files: Vec<PathBuf> = cols[0].iter().map(|p| dir.join(p)).collect();
        for f in &files {
            header(f)?;
        }
        return Ok(files);
    }
    if input.is_dir() {
        let files = image_files(input)?;
        if files.is_empty() {
            return Err(format_error(
                input,
                format!("no image files ({}) in this folder", EXTENSIONS.join(", ")),
            ));
        }
        Ok(files)
    } else {
        header(input)?;
        Ok(vec![input.to_path_buf()])
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

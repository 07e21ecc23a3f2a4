//! Reading one image file: its header (format and size, refused past [`MAX_PIXELS`] before any
//! pixel is decoded), its pixels in [0, 1], and the resize and centre crop to the model's size.

use super::*;

/// Refuses a `w x h` image over [`MAX_PIXELS`].
pub(super) fn check_pixels(path: &Path, w: u32, h: u32) -> Result<(), DataError> {
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

/// The image's format and size from its first bytes; an error naming the file when it is not
/// a PNG or JPEG.
pub fn header(path: &Path) -> Result<(image::ImageFormat, u32, u32), DataError> {
    use std::io::Read;
    let mut magic = [0u8; 8];
    let n = crate::data::open_regular(path)
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

//! MNIST's IDX format: a big-endian header (magic, dimensions) then raw bytes; gzip or plain.

use std::path::Path;

use super::table::{Cells, RawData, RawTable};
use super::{DataError, DataSpec};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads an IDX image file: `(count, rows, cols, pixels)`.
pub fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let shown = crate::shown::path(path);
    let b = super::read_bytes(path)?;
    let fail = |m: String| DataError::Format {
        path: shown.clone(),
        message: m,
    };
    if b.len() < 16 || be_u32(&b, 0) != IMAGES_MAGIC {
        return Err(fail(
            "not an IDX image file (magic 0x00000803 expected)".into(),
        ));
    }
    let (n, r, c) = (
        be_u32(&b, 4) as usize,
        be_u32(&b, 8) as usize,
        be_u32(&b, 12) as usize,
    );
    let size = n
        .checked_mul(r)
        .and_then(|x| x.checked_mul(c))
        .and_then(|x| x.checked_add(16));
    if size != Some(b.len()) {
        return Err(fail(format!(
            "header says {n} images of {r}x{c} but the file holds {} bytes",
            b.len()
        )));
    }
    Ok((n, r, c, b[16..].to_vec()))
}

/// Reads an IDX label file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let shown = crate::shown::path(path);
    let b = super::read_bytes(path)?;
    if b.len() < 8 || be_u32(&b, 0) != LABELS_MAGIC {
        return Err(DataError::Format {
            path: shown,
            message: "not an IDX label file (magic 0x00000801 expected)".into(),
        });
    }
    let n = be_u32(&b, 4) as usize;
    if b.len() != 8 + n {
        return Err(DataError::Format {
            path: shown,
            message: format!(
                "header says {n} labels but the file holds {} bytes",
                b.len() - 8
            ),
        });
    }
    Ok(b[8..].to_vec())
}

fn read_pair(images: &Path, labels: &Path) -> Result<RawTable, DataError> {
    let mut table = read_unlabelled(images)?;
    let n = table.lines.len();
    let l = read_labels(labels)?;
    if l.len() != n {
        return Err(DataError::Format {
            path: crate::shown::path(labels),
            message: format!(
                "{} labels for the {n} images of {}",
                l.len(),
                crate::shown::path(images)
            ),
        });
    }
    table.labels = l.into_iter().map(|v| v.to_string()).collect();
    Ok(table)
}

/// An images file alone, for `kiln predict` (no labels; `labels` stays empty).
pub fn read_unlabelled(images: &Path) -> Result<RawTable, DataError> {
    let (n, r, c, pixels) = read_images(images)?;
    Ok(RawTable {
        path: crate::shown::path(images),
        lines: (1..=n).collect(),
        names: vec![format!("{r}x{c}")],
        cells: Cells::Dense {
            x: pixels.into_iter().map(f32::from).collect(),
            d: r * c,
            shape: [1, r, c],
        },
        labels: Vec::new(),
    })
}

pub fn read_all(spec: &DataSpec) -> Result<RawData, DataError> {
    let labels = spec
        .labels_path
        .as_ref()
        .expect("validation requires labels_path for idx");
    let main = read_pair(&spec.path, labels)?;
    let test = match (&spec.test_path, &spec.test_labels_path) {
        (Some(i), Some(l)) => Some(read_pair(i, l)?),
        _ => None,
    };
    Ok(RawData { main, test })
}

/// The item count of an IDX file's header, after checking its magic number. Reads only the
/// header, so validation does not decompress whole image files.
fn header_count(path: &Path, magic: u32, what: &str) -> Result<u32, String> {
    let size = if magic == IMAGES_MAGIC { 16 } else { 8 };
    let b = super::read_prefix(path, size).map_err(|e| e.to_string())?;
    if b.len() < size as usize || be_u32(&b, 0) != magic {
        return Err(format!(
            "{}: not an IDX {what} file (magic {magic:#010x} expected)",
            crate::shown::path(path)
        ));
    }
    Ok(be_u32(&b, 4))
}

pub fn peek_problems(spec: &DataSpec) -> Vec<String> {
    let mut out = Vec::new();
    let pairs = [
        (Some(&spec.path), spec.labels_path.as_ref()),
        (spec.test_path.as_ref(), spec.test_labels_path.as_ref()),
    ];
    for (images, labels) in pairs {
        let n_images = images.map(|p| header_count(p, IMAGES_MAGIC, "image"));
        let n_labels = labels.map(|p| header_count(p, LABELS_MAGIC, "label"));
        match (n_images, n_labels) {
            (Some(Ok(i)), Some(Ok(l))) if i != l => out.push(format!(
                "{}: {l} labels for the {i} images of {}",
                crate::shown::path(labels.expect("counted")),
                crate::shown::path(images.expect("counted"))
            )),
            (i, l) => out.extend([i, l].into_iter().flatten().filter_map(Result::err)),
        }
    }
    out
}

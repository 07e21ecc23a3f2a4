//! The index of an image data set: the files of a folder (`root/<class>/*`) or of a CSV/TSV of
//! paths and labels, each with its size, time, label and a hash of its ends, their headers
//! checked before training starts.

use super::*;

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
    pub(super) fn table(&self) -> RawTable {
        RawTable {
            path: self.root.display().to_string(),
            lines: (1..=self.entries.len()).collect(),
            names: vec!["path".into()],
            cells: Cells::Text(self.entries.iter().map(|e| vec![e.path.clone()]).collect()),
            labels: self.entries.iter().map(|e| e.label.clone()).collect(),
        }
    }

    pub(super) fn files(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .map(|e| self.root.join(&e.path))
            .collect()
    }
}

pub(super) fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// A name starting with a dot: not read (`.DS_Store`, `.git`, kiln's own `.complete`).
pub(super) fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

/// A name kiln can write in its index (a line per file, tab-separated): UTF-8, without tabs
/// or line breaks.
pub(super) fn check_name(p: &Path) -> Result<(), DataError> {
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
pub(super) fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
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
        Some(crate::data::ColumnRef::Name(n)) => n.clone(),
        Some(crate::data::ColumnRef::Index(_)) => {
            return Err(format_error(
                csv,
                "`data.label`: name the label column of an image CSV (it has a header)",
            ));
        }
        None => "label".into(),
    };
    let mut header = spec.clone();
    header.header = true;
    let cols = crate::data::table::read_columns(&header, csv, &[spec.path_column.clone(), label])?;
    let root = csv.parent().unwrap_or(Path::new(".")).to_path_buf();
    let files = cols[0]
        .iter()
        .zip(&cols[1])
        .map(|(p, l)| (root.join(p), l.clone()))
        .collect();
    entries(&root, files, bad)
}

/// sha256 of a file's first and last 4 KiB (of all of it when it is smaller than 8 KiB).
pub(super) fn content_sample(path: &Path, len: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = crate::data::open_regular(path)?;
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
pub(super) fn entries(
    root: &Path,
    files: Vec<(PathBuf, String)>,
    bad: BadImages,
) -> Result<Index, DataError> {
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

//! Delimited text files (CSV, TSV, whitespace), gzip or plain.

use std::path::Path;

use super::{DataError, DataSpec};
use crate::data::spec::ColumnRef;

/// Feature cells of a file, before preprocessing.
#[derive(Debug, Clone)]
pub enum Cells {
    /// One string per field: CSV files.
    Text(Vec<Vec<String>>),
    /// Dense numbers, `[n, d]`: IDX images of `shape` (`[channels, height, width]`).
    Dense {
        x: Vec<f32>,
        d: usize,
        shape: [usize; 3],
    },
}

/// A file as read: feature columns (label and ignored columns removed) and raw labels.
#[derive(Debug, Clone)]
pub struct RawTable {
    pub path: String,
    /// 1-based line (or record number) of each row in its file, for messages.
    pub lines: Vec<usize>,
    pub names: Vec<String>,
    pub cells: Cells,
    pub labels: Vec<String>,
}

impl RawTable {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The training file and, when given, the test file.
#[derive(Debug, Clone)]
pub struct RawData {
    pub main: RawTable,
    pub test: Option<RawTable>,
}

pub fn read_all(spec: &DataSpec) -> Result<RawData, DataError> {
    let main = read(spec, &spec.path, spec.labels_path.as_deref())?;
    let test = match &spec.test_path {
        Some(p) => {
            let t = read(spec, p, spec.test_labels_path.as_deref())?;
            if t.names != main.names {
                return Err(DataError::Format {
                    path: t.path,
                    message: format!(
                        "columns differ from the training file's: {:?} vs {:?}",
                        t.names, main.names
                    ),
                });
            }
            Some(t)
        }
        None => None,
    };
    Ok(RawData { main, test })
}

/// A file to predict on: its columns named as in training (from its header, or by position),
/// the label column used if present and skipped if not; only the `features` columns are kept,
/// in that order. `labels` stays empty.
pub fn read_unlabelled(
    spec: &DataSpec,
    path: &Path,
    features: &[String],
) -> Result<RawTable, DataError> {
    let (shown, lines, width) = read_rows(spec, path)?;
    let names = if lines.header.is_some() {
        column_names(spec, &lines, width)
    } else {
        // Without a header, columns are known by position: the training layout had the
        // features, the ignored columns and (unless labels came from their own file) the label.
        let full = features.len() + spec.ignore.len() + usize::from(spec.labels_path.is_none());
        if width == full {
            column_names(spec, &lines, width)
        } else if width + 1 == full {
            let mut all = column_names(spec, &lines, full);
            let label = label_index(spec, &all).map_err(|m| DataError::Format {
                path: shown.clone(),
                message: m,
            })?;
            all.remove(label);
            all
        } else {
            return Err(DataError::Format {
                path: shown,
                message: format!(
                    "{width} columns; the model was trained on files of {full} (or {} without the label)",
                    full - 1
                ),
            });
        }
    };
    let mut index = Vec::with_capacity(features.len());
    for f in features {
        let i = names
            .iter()
            .position(|n| n == f)
            .ok_or_else(|| DataError::Format {
                path: shown.clone(),
                message: format!("no column {f:?}, which the model was trained on"),
            })?;
        index.push(i);
    }
    let mut cells = Vec::with_capacity(lines.rows.len());
    let mut line_numbers = Vec::with_capacity(lines.rows.len());
    for (line, mut fields) in lines.rows {
        cells.push(
            index
                .iter()
                .map(|&i| std::mem::take(&mut fields[i]))
                .collect::<Vec<_>>(),
        );
        line_numbers.push(line);
    }
    Ok(RawTable {
        path: shown,
        lines: line_numbers,
        names: features.to_vec(),
        cells: Cells::Text(cells),
        labels: Vec::new(),
    })
}

/// Columns of a file as written, a value per data row each, whether or not the model reads
/// them (a sensitive attribute left out of the inputs, the label): for per-group reports.
pub fn read_columns(
    spec: &DataSpec,
    path: &Path,
    columns: &[String],
) -> Result<Vec<Vec<String>>, DataError> {
    let (shown, lines, width) = read_rows(spec, path)?;
    let names = column_names(spec, &lines, width);
    let mut index = Vec::with_capacity(columns.len());
    for column in columns {
        let Some(j) = names.iter().position(|n| n == column) else {
            let hint = crate::suggest::hint(column, &names);
            let listed: Vec<_> = names.iter().map(|n| crate::shown::name(n)).collect();
            return Err(DataError::Format {
                path: shown,
                message: format!(
                    "no column {column:?}{hint} (columns: {})",
                    listed.join(", ")
                ),
            });
        };
        index.push(j);
    }
    Ok(index
        .iter()
        .map(|&j| lines.rows.iter().map(|(_, f)| f[j].clone()).collect())
        .collect())
}

/// Splits one line into fields: quoted fields (`"a, b"`, `""` inside) are supported; every
/// field is trimmed.
pub fn split_line(line: &str, delimiter: Option<u8>) -> Vec<String> {
    let Some(delim) = delimiter else {
        return line.split_whitespace().map(str::to_string).collect();
    };
    let delim = delim as char;
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if quoted => quoted = false,
            '"' if field.trim().is_empty() => {
                field.clear();
                quoted = true
            }
            c if c == delim && !quoted => out.push(std::mem::take(&mut field).trim().to_string()),
            c => field.push(c),
        }
    }
    out.push(field.trim().to_string());
    out
}

struct Lines {
    /// (1-based line, fields) of the data rows.
    rows: Vec<(usize, Vec<String>)>,
    header: Option<Vec<String>>,
}

fn read_lines(spec: &DataSpec, path: &Path, max_rows: Option<usize>) -> Result<Lines, DataError> {
    let bytes = super::read_bytes(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::Format {
        path: crate::shown::path(path),
        message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })?;
    // Spreadsheet programs often start UTF-8 files with a byte-order mark; it is not part of
    // the first cell.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut header = None;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(spec.skip_rows) {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_line(line, spec.delimiter);
        if spec.header && header.is_none() {
            header = Some(fields);
            continue;
        }
        rows.push((i + 1, fields));
        if max_rows.is_some_and(|m| rows.len() >= m) {
            break;
        }
    }
    Ok(Lines { rows, header })
}

/// Column names: the header, `columns`, or `c0, c1, ...`.
fn column_names(spec: &DataSpec, lines: &Lines, width: usize) -> Vec<String> {
    if let Some(h) = &lines.header {
        h.clone()
    } else if !spec.columns.is_empty() {
        spec.columns.clone()
    } else {
        (0..width).map(|i| format!("c{i}")).collect()
    }
}

/// Index of the label column.
fn label_index(spec: &DataSpec, names: &[String]) -> Result<usize, String> {
    let n = names.len() as i64;
    match &spec.label {
        None => Ok(names.len() - 1),
        Some(ColumnRef::Index(i)) => {
            let j = if *i < 0 { n + i } else { *i };
            if (0..n).contains(&j) {
                Ok(j as usize)
            } else {
                Err(format!(
                    "`data.label` = {i}: the file has {n} columns (0..{})",
                    n - 1
                ))
            }
        }
        Some(ColumnRef::Name(name)) => names.iter().position(|c| c == name).ok_or_else(|| {
            let hint = crate::suggest::hint(name, names);
            format!("`data.label` = {name:?}: no such column{hint}")
        }),
    }
}

/// Checks what the first rows can tell: widths, label column, named columns.
pub fn peek_problems(spec: &DataSpec) -> Vec<String> {
    let mut out = Vec::new();
    let lines = match read_lines(spec, &spec.path, Some(5)) {
        Ok(l) => l,
        Err(e) => return vec![e.to_string()],
    };
    let path = crate::shown::path(&spec.path);
    let Some((_, first)) = lines.rows.first() else {
        return vec![format!("{path}: no data rows")];
    };
    let width = first.len();
    if !spec.columns.is_empty() && spec.columns.len() != width {
        out.push(format!(
            "`data.columns` names {} columns but {path} has {width}",
            spec.columns.len()
        ));
        return out;
    }
    let names = column_names(spec, &lines, width);
    let has_label_col = spec.labels_path.is_none();
    if has_label_col && let Err(e) = label_index(spec, &names) {
        out.push(e);
    }
    if let Some(c) = &spec.text_column
        && !names.contains(c)
    {
        let hint = crate::suggest::hint(c, &names);
        out.push(format!("`data.text` names {c:?}: no such column{hint}"));
    }
    for (key, list) in [("categorical", &spec.categorical), ("ignore", &spec.ignore)] {
        for c in list {
            if !names.contains(c) {
                let hint = crate::suggest::hint(c, &names);
                out.push(format!("`data.{key}` names {c:?}: no such column{hint}"));
            }
        }
    }
    if let Some([c, h, w]) = spec.image_shape {
        let label = if has_label_col {
            label_index(spec, &names).ok()
        } else {
            None
        };
        let features = (0..width)
            .filter(|&i| Some(i) != label && !spec.ignore.contains(&names[i]))
            .count();
        if c * h * w != features {
            out.push(format!(
                "`data.image_shape` = [{c}, {h}, {w}] holds {} pixels but {path} has {features} feature columns",
                c * h * w
            ));
        }
    }
    out
}

/// A file's data rows, all of one width: `(path as shown, rows, width)`.
fn read_rows(spec: &DataSpec, path: &Path) -> Result<(String, Lines, usize), DataError> {
    let shown = crate::shown::path(path);
    let lines = read_lines(spec, path, None)?;
    let Some((_, first)) = lines.rows.first() else {
        return Err(DataError::Format {
            path: shown,
            message: "no data rows (empty file?)".into(),
        });
    };
    let width = first.len();
    for (line, fields) in &lines.rows {
        if fields.len() != width {
            return Err(DataError::Row {
                path: shown,
                line: *line,
                message: format!("expected {width} fields, found {}", fields.len()),
            });
        }
    }
    Ok((shown, lines, width))
}

fn read(spec: &DataSpec, path: &Path, labels_path: Option<&Path>) -> Result<RawTable, DataError> {
    let (shown, lines, width) = read_rows(spec, path)?;
    let names = column_names(spec, &lines, width);
    if names.len() != width {
        return Err(DataError::Format {
            path: shown,
            message: format!("{} column names for {width} columns", names.len()),
        });
    }
    let label = match labels_path {
        Some(_) => None,
        None => Some(label_index(spec, &names).map_err(|m| DataError::Format {
            path: shown.clone(),
            message: m,
        })?),
    };
    let keep: Vec<usize> = (0..width)
        .filter(|&i| Some(i) != label && !spec.ignore.contains(&names[i]))
        .collect();
    let mut labels = Vec::with_capacity(lines.rows.len());
    let mut cells = Vec::with_capacity(lines.rows.len());
    let mut line_numbers = Vec::with_capacity(lines.rows.len());
    for (line, mut fields) in lines.rows {
        if let Some(l) = label {
            labels.push(std::mem::take(&mut fields[l]));
        }
        cells.push(
            keep.iter()
                .map(|&i| std::mem::take(&mut fields[i]))
                .collect::<Vec<_>>(),
        );
        line_numbers.push(line);
    }
    if let Some(lp) = labels_path {
        let text = String::from_utf8(super::read_bytes(lp)?).map_err(|_| DataError::Format {
            path: crate::shown::path(lp),
            message: "not UTF-8 text".into(),
        })?;
        labels = text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if labels.len() != cells.len() {
            return Err(DataError::Format {
                path: crate::shown::path(lp),
                message: format!(
                    "{} targets for the {} rows of {shown}",
                    labels.len(),
                    cells.len()
                ),
            });
        }
    }
    Ok(RawTable {
        path: shown,
        lines: line_numbers,
        names: keep.iter().map(|&i| names[i].clone()).collect(),
        cells: Cells::Text(cells),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_fields_and_trims() {
        assert_eq!(
            split_line(r#"1, "a, b" ,"say ""hi""",x"#, Some(b',')),
            ["1", "a, b", "say \"hi\"", "x"]
        );
        assert_eq!(split_line("59 2  32.1", None), ["59", "2", "32.1"]);
        assert_eq!(split_line("a\tb\t", Some(b'\t')), ["a", "b", ""]);
    }
}

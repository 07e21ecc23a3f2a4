//! Preprocessing: imputation, one-hot encoding, standardisation, label encoding.
//!
//! Every statistic is fitted on the training split only and stored with the run
//! (`preprocess.json`), so evaluation and export apply exactly what training saw.

use serde::{Deserialize, Serialize};

use super::table::{Cells, RawData, RawTable};
use super::{DataError, DataSpec, Dataset, Targets};
use crate::data::spec::{Impute, Task};

/// How one input column becomes model features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Column {
    /// One feature: `(value - mean) / std`; a missing value becomes `fill` (an error when none).
    Numeric {
        name: String,
        fill: Option<f64>,
        mean: f64,
        std: f64,
    },
    /// One feature per category (one-hot). A category not seen in training encodes as all
    /// zeros; a missing value becomes `fill` (an error when none).
    Categorical {
        name: String,
        categories: Vec<String>,
        fill: Option<String>,
    },
}

/// Pixel standardisation shared by all pixels of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageNorm {
    pub shape: [usize; 3],
    pub mean: f64,
    pub std: f64,
}

/// How targets are encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetEncoding {
    /// Class `i` is written `raw[i]` in the data file and called `names[i]`.
    Classes {
        raw: Vec<String>,
        names: Vec<String>,
    },
    /// The model predicts `(y - mean) / std`.
    Values { mean: f64, std: f64 },
    /// The model predicts the next token of each position (a language model).
    NextToken,
}

/// The fitted preprocessing of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    pub columns: Vec<Column>,
    pub image: Option<ImageNorm>,
    pub target: TargetEncoding,
    pub missing_values: Vec<String>,
    /// Width of the encoded feature vector (text: tokens per block).
    pub n_features: usize,
    /// Text: the tokenizer (and so the vocabulary) of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<super::text::Tokenizer>,
    /// Image files: how they are decoded, resized and normalised (`image` then holds their
    /// shape, with the identity as its normalisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<super::images::ImagePrep>,
}

const MISSING_CATEGORY: &str = "<missing>";

impl Preprocessor {
    /// A number of a column with statistics `mean` and `std` as the model reads it, the image
    /// normalisation on top when there is one (`mean` 0 and `std` 1 for raw pixels).
    pub fn encode_value(&self, v: f64, mean: f64, std: f64) -> f32 {
        let (im, is) = self.image.as_ref().map_or((0.0, 1.0), |i| (i.mean, i.std));
        (((v - mean) / std - im) / is) as f32
    }

    pub fn class_names(&self) -> Option<&[String]> {
        match &self.target {
            TargetEncoding::Classes { names, .. } => Some(names),
            TargetEncoding::Values { .. } | TargetEncoding::NextToken => None,
        }
    }

    /// The preprocessing of labeled text: its tokenizer, texts of at most `block` tokens, the
    /// classes.
    pub fn for_labeled_text(
        tokenizer: super::text::Tokenizer,
        target: TargetEncoding,
        block: usize,
    ) -> Self {
        Preprocessor {
            columns: Vec::new(),
            image: None,
            target,
            missing_values: Vec::new(),
            n_features: block,
            text: Some(tokenizer),
            images: None,
        }
    }

    /// The preprocessing of image files: their decoding and normalisation, the classes.
    pub fn for_images(prep: super::images::ImagePrep, target: TargetEncoding) -> Self {
        let shape = prep.shape();
        Preprocessor {
            columns: Vec::new(),
            image: Some(ImageNorm {
                shape,
                mean: 0.0,
                std: 1.0,
            }),
            target,
            missing_values: Vec::new(),
            n_features: shape.iter().product(),
            text: None,
            images: Some(prep),
        }
    }

    /// The preprocessing of a text corpus: its tokenizer, blocks of `block` tokens.
    pub fn for_text(tokenizer: super::text::Tokenizer, block: usize) -> Self {
        Preprocessor {
            columns: Vec::new(),
            image: None,
            target: TargetEncoding::NextToken,
            missing_values: Vec::new(),
            n_features: block,
            text: Some(tokenizer),
            images: None,
        }
    }

    /// Fits on the rows `train` of `raw.main`.
    pub fn fit(raw: &RawData, train: &[usize], spec: &DataSpec) -> Result<Self, DataError> {
        let t = &raw.main;
        let target = fit_target(raw, train, spec)?;
        let (columns, image, n_features) = match &t.cells {
            Cells::Dense {
                x,
                d,
                shape: file_shape,
            } => {
                let image = fit_pixels(t, x, *d, *file_shape, train, spec)?;
                (Vec::new(), Some(image), *d)
            }
            Cells::Text(rows) => {
                let (columns, width) = fit_columns(t, rows, train, spec)?;
                let image = fit_table_image(t, rows, &columns, train, spec)?;
                (columns, image, width)
            }
        };
        Ok(Self {
            columns,
            image,
            target,
            missing_values: spec.missing_values.clone(),
            n_features,
            text: None,
            images: None,
        })
    }

    /// Encodes the rows `rows` of `t`.
    pub fn transform(&self, t: &RawTable, rows: &[usize]) -> Result<Dataset, DataError> {
        let x = self.features(t, rows)?;
        let y = self.targets(t, rows)?;
        Ok(Dataset {
            x,
            y,
            n: rows.len(),
            d: self.n_features,
        })
    }

    /// The encoded features of `rows` (row-major, `n_features` each); labels are not read, so
    /// this serves files without them (`kiln predict`).
    pub fn features(&self, t: &RawTable, rows: &[usize]) -> Result<Vec<f32>, DataError> {
        let d = self.n_features;
        let mut x = vec![0f32; rows.len() * d];
        match &t.cells {
            Cells::Dense { x: src, d: sd, .. } => {
                if *sd != d {
                    return Err(DataError::Format {
                        path: t.path.clone(),
                        message: format!("{sd} features per row, the model was fitted on {d}"),
                    });
                }
                for (o, &r) in rows.iter().enumerate() {
                    for (dst, &v) in x[o * d..(o + 1) * d]
                        .iter_mut()
                        .zip(&src[r * d..(r + 1) * d])
                    {
                        *dst = self.encode_value(v as f64, 0.0, 1.0);
                    }
                }
            }
            Cells::Text(cells) => {
                let fitted: Vec<&str> = self.columns.iter().map(c_name).collect();
                if t.names
                    .iter()
                    .map(String::as_str)
                    .ne(fitted.iter().copied())
                {
                    return Err(DataError::Format {
                        path: t.path.clone(),
                        message: format!(
                            "columns {:?} differ from the ones the run was trained on: {fitted:?}",
                            t.names
                        ),
                    });
                }
                for (o, &r) in rows.iter().enumerate() {
                    let out = &mut x[o * d..(o + 1) * d];
                    let mut k = 0;
                    for (j, c) in self.columns.iter().enumerate() {
                        let s = cells[r][j].as_str();
                        let missing = self.missing_values.iter().any(|m| m == s);
                        match c {
                            Column::Numeric {
                                name,
                                fill,
                                mean,
                                std,
                            } => {
                                let v = if missing {
                                    fill.ok_or_else(|| missing_error(t, r, name))?
                                } else {
                                    parse_number(s, t, r, name)?
                                };
                                out[k] = self.encode_value(v, *mean, *std);
                                k += 1;
                            }
                            Column::Categorical {
                                name,
                                categories,
                                fill,
                            } => {
                                let value = if missing {
                                    fill.as_deref().ok_or_else(|| missing_error(t, r, name))?
                                } else {
                                    s
                                };
                                if let Ok(p) =
                                    categories.binary_search_by(|c| c.as_str().cmp(value))
                                {
                                    out[k + p] = 1.0;
                                }
                                k += categories.len();
                            }
                        }
                    }
                }
            }
        }
        Ok(x)
    }

    pub(crate) fn targets(&self, t: &RawTable, rows: &[usize]) -> Result<Targets, DataError> {
        let y = match &self.target {
            TargetEncoding::Classes { raw, .. } => {
                let mut ys = Vec::with_capacity(rows.len());
                for &r in rows {
                    let l = &t.labels[r];
                    let c = raw
                        .iter()
                        .position(|v| v == l)
                        .ok_or_else(|| DataError::Row {
                            path: t.path.clone(),
                            line: t.lines.get(r).copied().unwrap_or(r + 1),
                            message: format!(
                                "label {l:?} is not one of the training classes {raw:?}"
                            ),
                        })?;
                    ys.push(c as u32);
                }
                Targets::Classes(ys)
            }
            TargetEncoding::Values { mean, std } => {
                let mut ys = Vec::with_capacity(rows.len());
                for &r in rows {
                    let v = parse_number(&t.labels[r], t, r, "target")?;
                    ys.push(((v - mean) / std) as f32);
                }
                Targets::Values(ys)
            }
            TargetEncoding::NextToken => unreachable!("text is not read as a table"),
        };
        Ok(y)
    }

    /// Undoes the target standardisation of a regression prediction.
    pub fn decode_value(&self, v: f32) -> f64 {
        match &self.target {
            TargetEncoding::Values { mean, std } => v as f64 * std + mean,
            TargetEncoding::Classes { .. } | TargetEncoding::NextToken => v as f64,
        }
    }
}

/// The normalisation of dense images (`x`, `d` pixels a row): their shape (`data.image_shape`
/// when it holds `d` pixels, else the file's) and, when standardising, the mean and standard
/// deviation of every training pixel.
fn fit_pixels(
    t: &RawTable,
    x: &[f32],
    d: usize,
    file_shape: [usize; 3],
    train: &[usize],
    spec: &DataSpec,
) -> Result<ImageNorm, DataError> {
    let shape = match spec.image_shape {
        Some([c, h, w]) if c * h * w == d => [c, h, w],
        Some(s) => {
            return Err(DataError::Format {
                path: t.path.clone(),
                message: format!(
                    "`data.image_shape` = {s:?} holds {} pixels but the images have {d} ({file_shape:?})",
                    s.iter().product::<usize>()
                ),
            });
        }
        None => file_shape,
    };
    let (mean, std) = if spec.standardize {
        mean_std(
            train
                .iter()
                .flat_map(|&r| x[r * d..(r + 1) * d].iter().map(|&v| v as f64)),
        )
    } else {
        (0.0, 1.0)
    };
    Ok(ImageNorm { shape, mean, std })
}

/// Each column of a CSV table, in order: categorical when listed in `data.categorical` or
/// when no value of it is a number, numeric otherwise; with the width of the encoded features.
fn fit_columns(
    t: &RawTable,
    rows: &[Vec<String>],
    train: &[usize],
    spec: &DataSpec,
) -> Result<(Vec<Column>, usize), DataError> {
    let is_missing = |s: &str| spec.missing_values.iter().any(|m| m == s);
    let mut columns = Vec::new();
    let mut width = 0;
    for (j, name) in t.names.iter().enumerate() {
        let listed = spec.categorical.contains(name);
        let any_number = rows
            .iter()
            .any(|r| !is_missing(&r[j]) && r[j].parse::<f64>().is_ok());
        if listed || !any_number {
            let (categories, fill) = fit_categories(rows, j, train, spec);
            width += categories.len();
            columns.push(Column::Categorical {
                name: name.clone(),
                categories,
                fill,
            });
        } else {
            let (fill, mean, std) = fit_numeric(t, rows, j, name, train, spec)?;
            width += 1;
            columns.push(Column::Numeric {
                name: name.clone(),
                fill,
                mean,
                std,
            });
        }
    }
    Ok((columns, width))
}

/// A categorical column `j`: its training categories, sorted (with `<missing>` when missing
/// values are imputed as a constant), and the category a missing value becomes.
fn fit_categories(
    rows: &[Vec<String>],
    j: usize,
    train: &[usize],
    spec: &DataSpec,
) -> (Vec<String>, Option<String>) {
    let is_missing = |s: &str| spec.missing_values.iter().any(|m| m == s);
    let train_values = train
        .iter()
        .map(|&i| rows[i][j].as_str())
        .filter(|s| !is_missing(s));
    let mut cats: Vec<String> = train_values.clone().map(str::to_string).collect();
    cats.sort();
    cats.dedup();
    let fill = match spec.impute {
        Impute::Error => None,
        Impute::Constant => {
            cats.push(MISSING_CATEGORY.to_string());
            cats.sort();
            Some(MISSING_CATEGORY.to_string())
        }
        _ => most_frequent(train_values.map(str::to_string)),
    };
    (cats, fill)
}

/// A numeric column `j` (`name`): the value a missing one becomes, and the mean and standard
/// deviation of its training values (missing ones counted as that value, or 0) when
/// standardising a table that is not an image.
fn fit_numeric(
    t: &RawTable,
    rows: &[Vec<String>],
    j: usize,
    name: &str,
    train: &[usize],
    spec: &DataSpec,
) -> Result<(Option<f64>, f64, f64), DataError> {
    let is_missing = |s: &str| spec.missing_values.iter().any(|m| m == s);
    let mut values = Vec::with_capacity(train.len());
    for &i in train {
        let s = rows[i][j].as_str();
        if !is_missing(s) {
            values.push(parse_number(s, t, i, name)?);
        }
    }
    let fill = match spec.impute {
        Impute::Error => None,
        Impute::Constant => Some(spec.impute_value),
        Impute::Mean => Some(mean_std(values.iter().copied()).0),
        Impute::Median => Some(median(&values)),
        Impute::MostFrequent => {
            most_frequent(values.iter().map(|v| v.to_bits())).map(f64::from_bits)
        }
    };
    let missing = train.len() - values.len();
    let (mean, std) = if spec.standardize && spec.image_shape.is_none() {
        let f = fill.unwrap_or(0.0);
        mean_std(
            values
                .iter()
                .copied()
                .chain(std::iter::repeat_n(f, missing)),
        )
    } else {
        (0.0, 1.0)
    };
    Ok((fill, mean, std))
}

/// The image normalisation of a CSV table of pixels (`data.image_shape` set): when
/// standardising, the mean and standard deviation of every training pixel of the numeric
/// columns (a missing one as its fill, or 0); `None` for a table that is not an image.
fn fit_table_image(
    t: &RawTable,
    rows: &[Vec<String>],
    columns: &[Column],
    train: &[usize],
    spec: &DataSpec,
) -> Result<Option<ImageNorm>, DataError> {
    let is_missing = |s: &str| spec.missing_values.iter().any(|m| m == s);
    let image = match spec.image_shape {
        Some(shape) if spec.standardize => {
            let mut all = Vec::new();
            for &i in train {
                for (j, c) in columns.iter().enumerate() {
                    if let Column::Numeric { fill, .. } = c {
                        let s = rows[i][j].as_str();
                        all.push(if is_missing(s) {
                            fill.unwrap_or(0.0)
                        } else {
                            parse_number(s, t, i, c_name(c))?
                        });
                    }
                }
            }
            let (mean, std) = mean_std(all.into_iter());
            Some(ImageNorm { shape, mean, std })
        }
        Some(shape) => Some(ImageNorm {
            shape,
            mean: 0.0,
            std: 1.0,
        }),
        None => None,
    };
    Ok(image)
}

fn c_name(c: &Column) -> &str {
    match c {
        Column::Numeric { name, .. } | Column::Categorical { name, .. } => name,
    }
}

pub(crate) fn fit_target(
    raw: &RawData,
    train: &[usize],
    spec: &DataSpec,
) -> Result<TargetEncoding, DataError> {
    let t = &raw.main;
    let is_missing = |s: &str| spec.missing_values.iter().any(|m| m == s);
    if let Some(r) = (0..t.len()).find(|&r| is_missing(&t.labels[r])) {
        return Err(DataError::Row {
            path: t.path.clone(),
            line: t.lines[r],
            message: format!("the label is missing ({:?})", t.labels[r]),
        });
    }
    match spec.task {
        Task::LanguageModel => unreachable!("text is not read as a table"),
        Task::Regression => {
            let mut values = Vec::with_capacity(train.len());
            for &i in train {
                values.push(parse_number(&t.labels[i], t, i, "target")?);
            }
            let (mean, std) = if spec.standardize_target {
                mean_std(values.into_iter())
            } else {
                (0.0, 1.0)
            };
            Ok(TargetEncoding::Values { mean, std })
        }
        Task::Classification => {
            let mut raw_classes: Vec<String> = t.labels.clone();
            raw_classes.sort();
            raw_classes.dedup();
            let numeric: Option<Vec<f64>> =
                raw_classes.iter().map(|s| s.parse::<f64>().ok()).collect();
            if let Some(nums) = numeric {
                let mut pairs: Vec<(f64, String)> = nums.into_iter().zip(raw_classes).collect();
                pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
                raw_classes = pairs.into_iter().map(|p| p.1).collect();
            }
            if raw_classes.len() < 2 {
                return Err(DataError::Format {
                    path: t.path.clone(),
                    message: format!(
                        "classification needs at least 2 classes, the labels hold {raw_classes:?}"
                    ),
                });
            }
            let names = if spec.class_names.is_empty() {
                raw_classes.clone()
            } else if spec.class_names.len() == raw_classes.len() {
                spec.class_names.clone()
            } else {
                return Err(DataError::ClassNames {
                    names: spec.class_names.len(),
                    classes: raw_classes,
                });
            };
            Ok(TargetEncoding::Classes {
                raw: raw_classes,
                names,
            })
        }
    }
}

fn parse_number(s: &str, t: &RawTable, row: usize, column: &str) -> Result<f64, DataError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v.abs() <= f32::MAX as f64 => Ok(v),
        _ => Err(DataError::Row {
            path: t.path.clone(),
            line: t.lines.get(row).copied().unwrap_or(row + 1),
            message: format!(
                "column `{}`: {s:?} is not a number (list the column in data.categorical to one-hot encode it, or add the value to data.missing_values)",
                crate::shown::name(column)
            ),
        }),
    }
}

fn missing_error(t: &RawTable, row: usize, column: &str) -> DataError {
    DataError::Row {
        path: t.path.clone(),
        line: t.lines.get(row).copied().unwrap_or(row + 1),
        message: format!(
            "column `{}`: missing value (set data.impute to mean, median, most_frequent or constant to fill it)",
            crate::shown::name(column)
        ),
    }
}

/// Mean and population standard deviation; a deviation of 0 (or no values) becomes 1 so that a
/// constant feature encodes as 0 rather than NaN.
pub fn mean_std(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
    for v in values {
        n += 1.0;
        let delta = v - mean;
        mean += delta / n;
        m2 += delta * (v - mean);
    }
    let std = if n > 0.0 { (m2 / n).sqrt() } else { 0.0 };
    (mean, if std > 1e-12 { std } else { 1.0 })
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

/// The most frequent value; ties go to the smallest.
fn most_frequent<T: Ord + Clone>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts = std::collections::BTreeMap::new();
    for v in values {
        *counts.entry(v).or_insert(0usize) += 1;
    }
    let mut best: Option<(T, usize)> = None;
    for (v, c) in counts {
        if best.as_ref().is_none_or(|(_, bc)| c > *bc) {
            best = Some((v, c));
        }
    }
    best.map(|b| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        // numpy: np.mean([1,2,3,4]) = 2.5, np.std([1,2,3,4]) = 1.118033988749895
        let (m, s) = mean_std([1.0, 2.0, 3.0, 4.0].into_iter());
        assert!((m - 2.5).abs() < 1e-12 && (s - 1.118033988749895).abs() < 1e-12);
        assert_eq!(mean_std([5.0, 5.0].into_iter()), (5.0, 1.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(
            most_frequent(["b", "a", "b", "a", "c"].into_iter()),
            Some("a")
        );
    }
}

//! The data's own kinds, as the `[data]` table and `task` name them: the file format, the
//! label column, imputation, and whether targets are classes or values.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Classification,
    Regression,
    /// Next-token prediction over a text corpus (`data.format` = "text").
    LanguageModel,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    #[default]
    Csv,
    Idx,
    /// A text corpus for a language model: a file, a folder or a glob of files.
    Text,
    /// A folder of PNG/JPEG files, one sub-folder per class.
    ImageFolder,
    /// A CSV/TSV of image paths (relative to its folder) and labels.
    ImageCsv,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Impute {
    Mean,
    Median,
    MostFrequent,
    Constant,
    #[default]
    Error,
}

/// A column named by its header name or its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ColumnRef {
    Index(i64),
    Name(String),
}

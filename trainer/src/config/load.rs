//! Reading a config: TOML text -> overrides -> [`FileConfig`], with every unknown key found.

use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use super::{ConfigError, FileConfig, Problem};

/// A `--set a.b=c` override, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub value: Value,
    /// The text the user wrote, for messages.
    pub raw: String,
}

impl Override {
    /// Parses `a.b=c`. The value is read as TOML (`3e-4`, `true`, `[64, 32]`, `"x"`); anything
    /// that is not valid TOML is taken as a bare string, so `--set optim.name=adam` works.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (key, value) = raw.split_once('=').ok_or_else(|| {
            format!(
                "--set {}: expected KEY=VALUE, like optim.lr=3e-4",
                crate::shown::name(raw)
            )
        })?;
        let path: Vec<String> = key
            .trim()
            .split('.')
            .map(|s| s.trim().to_string())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "--set {}: the key `{}` has an empty part",
                crate::shown::name(raw),
                crate::shown::name(key.trim())
            ));
        }
        let text = value.trim();
        let value = match toml::from_str::<Table>(&format!("v = {text}")) {
            Ok(mut t) => t.remove("v").expect("the table was parsed from `v = ...`"),
            Err(_) => Value::String(text.to_string()),
        };
        Ok(Self {
            path,
            value,
            raw: raw.to_string(),
        })
    }
}

/// Reads `path`, applies `overrides` in order, and deserialises. Every unknown key is reported,
/// each with its line (or its `--set`) and a suggestion when one is close.
pub fn load(path: &Path, overrides: &[Override]) -> Result<(FileConfig, Table), ConfigError> {
    let origin = crate::shown::path(path);
    let text = crate::data::open_regular(path)
        .and_then(|mut f| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f, &mut text).map(|_| text)
        })
        .map_err(|e| {
            ConfigError::single(Problem::new(&origin, None, format!("cannot read: {e}")))
        })?;
    parse(&origin, &text, overrides)
}

/// As [`load`], from text; `origin` names it in messages.
pub fn parse(
    origin: &str,
    text: &str,
    overrides: &[Override],
) -> Result<(FileConfig, Table), ConfigError> {
    let spans = match DeTable::parse(text) {
        Ok(t) => t.into_inner(),
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().trim().to_string();
            return Err(ConfigError::single(Problem::new(
                origin,
                line,
                format!("invalid TOML: {msg}"),
            )));
        }
    };
    let mut table: Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        ConfigError::single(Problem::new(
            origin,
            line,
            format!("invalid TOML: {}", e.message().trim()),
        ))
    })?;
    let mut problems = Vec::new();
    for o in overrides {
        if let Err(msg) = set_path(&mut table, &o.path, o.value.clone()) {
            problems.push(Problem::new(&format!("--set {}", o.raw), None, msg));
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    let where_is = |key: &[String]| -> (String, Option<usize>) {
        if let Some(o) = overrides
            .iter()
            .rev()
            .find(|o| key.starts_with(&o.path) || o.path.starts_with(key))
        {
            return (format!("--set {}", o.raw), None);
        }
        (
            origin.to_string(),
            key_line(&spans, key).map(|pos| line_of(text, pos)),
        )
    };

    let mut unknown: Vec<Vec<String>> = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path| unknown.push(path_parts(&p));
    let result: Result<FileConfig, _> = serde_path_to_error::deserialize(
        serde_ignored::Deserializer::new(Value::Table(table.clone()), &mut on_unknown),
    );
    let schema = super::schema();
    for key in &unknown {
        let (o, line) = where_is(key);
        let dotted = crate::shown::name(&key.join(".")).into_owned();
        let known = super::schema::known_keys(&schema, &key[..key.len() - 1]);
        let leaf = key.last().map(String::as_str).unwrap_or("");
        let msg = match crate::suggest::suggest(leaf, &known) {
            Some(s) => {
                let mut full = key[..key.len() - 1].to_vec();
                full.push(s);
                format!("unknown key `{dotted}`; did you mean `{}`?", full.join("."))
            }
            None if known.is_empty() => format!("unknown key `{dotted}`"),
            None => format!(
                "unknown key `{dotted}`; expected one of: {}",
                known.join(", ")
            ),
        };
        problems.push(Problem::new(&o, line, msg));
    }
    match result {
        Ok(config) if problems.is_empty() => Ok((config, table)),
        Ok(_) => Err(ConfigError { problems }),
        Err(e) => {
            let key: Vec<String> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect();
            let (o, line) = where_is(&key);
            let inner = e.into_inner().to_string();
            // toml appends "in `a.b`" on a second line; the key is already in our message.
            let inner = inner.lines().next().unwrap_or("").trim().to_string();
            problems.push(Problem::new(
                &o,
                line,
                format!("`{}`: {inner}", crate::shown::name(&key.join("."))),
            ));
            Err(ConfigError { problems })
        }
    }
}

fn path_parts(p: &serde_ignored::Path) -> Vec<String> {
    match p {
        serde_ignored::Path::Root => Vec::new(),
        serde_ignored::Path::Seq { parent, index } => {
            let mut v = path_parts(parent);
            v.push(index.to_string());
            v
        }
        serde_ignored::Path::Map { parent, key } => {
            let mut v = path_parts(parent);
            v.push(key.clone());
            v
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => path_parts(parent),
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path
        .split_last()
        .expect("an override path has at least one part");
    let mut t = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = t
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        t = match entry {
            Value::Table(inner) => inner,
            other => {
                return Err(format!(
                    "`{}` is a {}, not a table, so `{}` cannot be set inside it",
                    path[..=i].join("."),
                    other.type_str(),
                    path.join(".")
                ));
            }
        };
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// Byte offset of `key` in the parsed document, when it is there.
fn key_line(spans: &DeTable<'_>, key: &[String]) -> Option<usize> {
    let (first, rest) = key.split_first()?;
    let (k, v) = spans.get_key_value(first.as_str())?;
    if rest.is_empty() {
        return Some(k.span().start);
    }
    value_key_line(v.get_ref(), rest).or(Some(k.span().start))
}

fn value_key_line(value: &DeValue<'_>, key: &[String]) -> Option<usize> {
    match value {
        DeValue::Table(t) => key_line(t, key),
        DeValue::Array(a) => {
            let (first, rest) = key.split_first()?;
            let item = a.get(first.parse::<usize>().ok()?)?;
            if rest.is_empty() {
                return Some(item.span().start);
            }
            value_key_line(item.get_ref(), rest).or(Some(item.span().start))
        }
        _ => None,
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

//! Names, aliases and references: what a user may type, checked before any path is built.
//!
//! A name or alias is one path component by construction (letters, digits, `-`, `_`, `.`, not
//! starting with `.`), so no reference can climb out of the registry or name a hidden file.

use std::fmt;

/// Aliases kiln moves by itself; `tag` refuses them.
pub const AUTOMATIC_ALIASES: [&str; 2] = ["latest", "best"];

/// Why a string is not a valid name, alias or reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {why}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub why: String,
}

/// Checks a model name, alias or run id: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn check(what: &'static str, value: &str) -> Result<(), NameError> {
    let fail = |why: &str| {
        Err(NameError {
            what,
            value: value.to_string(),
            why: why.to_string(),
        })
    };
    if value.is_empty() || value.len() > 64 {
        return fail("use 1 to 64 characters");
    }
    if value.starts_with('.') {
        return fail("it may not start with '.'");
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return fail(&format!(
            "{c:?} is not allowed (letters, digits, '-', '_' and '.' are)"
        ));
    }
    Ok(())
}

/// What a user wrote to point at a model: `name` (its `latest`), `name@alias`, `name/vN`, or a
/// run id (its final model, or its newest checkpoint while unfinished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Alias {
        name: String,
        alias: String,
    },
    Version {
        name: String,
        version: u32,
    },
    /// A bare word: a model name or a run id; the registry decides which.
    Word(String),
}

impl Reference {
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let bad = |why: &str| NameError {
            what: "reference",
            value: text.to_string(),
            why: why.to_string(),
        };
        if let Some((name, alias)) = text.split_once('@') {
            check("model name", name).map_err(|e| bad(&e.why))?;
            check("alias", alias).map_err(|e| bad(&e.why))?;
            return Ok(Self::Alias {
                name: name.into(),
                alias: alias.into(),
            });
        }
        if let Some((name, v)) = text.split_once('/') {
            check("model name", name).map_err(|e| bad(&e.why))?;
            let version = v
                .strip_prefix('v')
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|&n| {
                    n > 0 && !v[1..].starts_with('0') && v[1..].bytes().all(|b| b.is_ascii_digit())
                })
                .ok_or_else(|| {
                    bad(&format!(
                        "after '/' comes a version like v3, not {v:?} (forms: NAME, NAME@ALIAS, NAME/vN, RUN_ID)"
                    ))
                })?;
            return Ok(Self::Version {
                name: name.into(),
                version,
            });
        }
        check("reference", text).map_err(|e| {
            bad(&format!(
                "{} (forms: NAME, NAME@ALIAS, NAME/vN, RUN_ID)",
                e.why
            ))
        })?;
        Ok(Self::Word(text.into()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alias { name, alias } => write!(f, "{name}@{alias}"),
            Self::Version { name, version } => write!(f, "{name}/v{version}"),
            Self::Word(w) => f.write_str(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Reference::parse("mnist-cnn@best").unwrap(),
            Reference::Alias {
                name: "mnist-cnn".into(),
                alias: "best".into()
            }
        );
        assert_eq!(
            Reference::parse("mnist-cnn/v12").unwrap(),
            Reference::Version {
                name: "mnist-cnn".into(),
                version: 12
            }
        );
        assert_eq!(
            Reference::parse("digits_mlp").unwrap(),
            Reference::Word("digits_mlp".into())
        );
        assert_eq!(
            Reference::parse("a/v3").unwrap().to_string(),
            "a/v3".to_string()
        );
    }

    #[test]
    fn refuses_traversal_and_garbage() {
        for bad in [
            "",
            "..",
            "../etc",
            "a/../../b",
            "/etc/passwd",
            ".hidden",
            "a/b/c",
            "a/v0",
            "a/v01",
            "a/3",
            "a/v+3",
            "a@",
            "@best",
            "a@b@c",
            "a@../x",
            "a b",
            "a\\b",
            "a\0b",
            &"x".repeat(65),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let e = Reference::parse("../etc").unwrap_err().to_string();
        assert!(e.contains("\"../etc\""), "{e}");
    }

    #[test]
    fn names_are_single_components() {
        assert!(check("alias", "production").is_ok());
        assert!(check("alias", "v1.2-rc_3").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", ".x", "é"] {
            assert!(check("alias", bad).is_err(), "{bad:?}");
        }
    }
}

//! Names as messages show them: a file name, column, class or reference comes from the user
//! or the data and may hold a newline or a terminal escape. Messages are one line each
//! (`error: ...`), so control characters are shown escaped (`\n`, `\t`, `\u{1b}`); every
//! other character, and so every ordinary name, is shown as it is.

use std::borrow::Cow;
use std::path::Path;

/// `name` with its control characters escaped.
pub fn name(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path for a message: as `Path::display` shows it, control characters escaped.
pub fn path(path: &Path) -> String {
    name(&path.display().to_string()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_shown_as_they_are_and_control_characters_escaped() {
        assert_eq!(name("adult/v1"), "adult/v1");
        assert_eq!(name("Genève – ünïcode 名前"), "Genève – ünïcode 名前");
        assert!(matches!(name("plain"), Cow::Borrowed(_)));
        assert_eq!(name("two\nlines"), "two\\nlines");
        assert_eq!(name("tab\there\r"), "tab\\there\\r");
        assert_eq!(name("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(path(Path::new("data/a\nb.png")), "data/a\\nb.png");
        assert!(!path(Path::new("x\n\u{7f}y")).chars().any(char::is_control));
    }
}

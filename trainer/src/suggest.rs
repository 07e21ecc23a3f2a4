//! "Did you mean ...?": the closest known name to a misspelled key, column, model or run.

/// The closest known name, when it is close enough to be a typo.
pub fn suggest(word: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3) && *d < k.len().max(word.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

/// `"; did you mean "x"?"` when a known name is close to `word`, else `""`.
pub fn hint(word: &str, known: &[String]) -> String {
    suggest(word, known)
        .map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_strangers_none() {
        let known: Vec<String> = ["epochs", "batch_size", "lr"].map(String::from).to_vec();
        assert_eq!(suggest("epohcs", &known).as_deref(), Some("epochs"));
        assert_eq!(suggest("lrr", &known).as_deref(), Some("lr"));
        assert_eq!(suggest("momentum", &known), None);
        assert_eq!(hint("batch_sise", &known), "; did you mean \"batch_size\"?");
        assert_eq!(hint("zzz", &known), "");
    }
}

//! Text for language models: a corpus (one file, a folder, or a glob of files, read in name
//! order), a tokenizer (characters or bytes), contiguous splits, and blocks of tokens.
//!
//! The corpus is split by position, not by block: the first `1 - valid - test` of its tokens
//! train, the next `valid` validate and the last `test` test, so no block of one split overlaps
//! another. Training examples are every block of `block_size + 1` tokens that starts in the
//! training split (a block's inputs and its next-token targets); the loader's epoch order, a
//! pure function of (seed, epoch), draws them at random without replacement, so a resumed run
//! reads the same blocks. Validation and test read fixed, non-overlapping blocks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Batch, DataError, DataSpec, Features, Source, Targets};

/// How text becomes token ids. Saved with the run (`preprocess.json`), so generation and
/// evaluation read text exactly as training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tokenizer {
    /// One token per character (Unicode scalar); the vocabulary is every character of the
    /// corpus, sorted (as nanoGPT's `shakespeare_char`).
    Chars { chars: String },
    /// One token per byte: a vocabulary of 256, any text.
    Bytes,
    /// One token per word (lower-cased letters, digits and apostrophes) or punctuation mark:
    /// `words[0]` is padding, `words[1]` an unknown word, then the training split's most
    /// frequent words. For classifying text; decoding does not give the text back.
    Words { words: Vec<String> },
    /// A Hugging Face `tokenizers` tokenizer, as its `tokenizer.json`: a byte-level BPE kiln
    /// trained on the training split, or a file given with `data.tokenizer_file`.
    Hf { json: String },
}

/// A tokenizer kind, as `data.tokenizer` names it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    #[default]
    Char,
    Byte,
    Word,
    Bpe,
}

/// The padding and unknown-word tokens of a word vocabulary.
pub const PAD_WORD: &str = "<pad>";
pub const UNKNOWN_WORD: &str = "<unk>";

/// The words and punctuation marks of `text`, lower-cased.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut rest = text;
    std::iter::from_fn(move || {
        rest = rest.trim_start();
        let first = rest.chars().next()?;
        let is_word = |c: char| c.is_alphanumeric() || c == '\'';
        let end = if is_word(first) {
            rest.find(|c: char| !is_word(c)).unwrap_or(rest.len())
        } else {
            first.len_utf8()
        };
        let (w, r) = rest.split_at(end);
        rest = r;
        Some(w.to_lowercase())
    })
}

/// Text a tokenizer cannot encode: the character and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("character {ch:?} at position {at} is not in the model's vocabulary of {vocab} characters")]
pub struct UnknownChar {
    pub ch: char,
    pub at: usize,
    pub vocab: usize,
}

/// Why a text could not become tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    #[error(transparent)]
    UnknownChar(#[from] UnknownChar),
    /// The `tokenizers` library's own message.
    #[error("the tokenizer failed: {0}")]
    Hf(String),
}

/// A `tokenizer.json`, parsed once per process and kept (generation decodes every token).
fn hf(json: &str) -> Result<std::sync::Arc<tokenizers::Tokenizer>, TokenizeError> {
    use std::sync::{Arc, Mutex};
    static LOADED: Mutex<Vec<(String, Arc<tokenizers::Tokenizer>)>> = Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, t)) = loaded.iter().find(|(j, _)| j == json) {
        return Ok(Arc::clone(t));
    }
    let t: tokenizers::Tokenizer = json
        .parse()
        .map_err(|e| TokenizeError::Hf(format!("{e}")))?;
    let t = Arc::new(t);
    loaded.push((json.to_string(), Arc::clone(&t)));
    Ok(t)
}

impl Tokenizer {
    /// A word vocabulary of at most `size` tokens (padding and unknown included): the most
    /// frequent words of `texts` (ties in alphabetical order), each seen at least twice.
    pub fn fit_words<'a>(texts: impl Iterator<Item = &'a str>, size: usize) -> Tokenizer {
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        for t in texts {
            for w in words(t) {
                *counts.entry(w).or_default() += 1;
            }
        }
        let mut ranked: Vec<(String, usize)> = counts.into_iter().filter(|c| c.1 >= 2).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut out = vec![PAD_WORD.to_string(), UNKNOWN_WORD.to_string()];
        out.extend(ranked.into_iter().take(size.saturating_sub(2)).map(|c| c.0));
        Tokenizer::Words { words: out }
    }

    /// A byte-level BPE of at most `size` tokens trained on `text` (GPT-2's scheme: no prefix
    /// space, merges of pairs seen at least twice; id 0 is `<pad>`): any text encodes, and
    /// decodes back to itself.
    pub fn train_bpe(text: &str, size: usize) -> Result<Tokenizer, TokenizeError> {
        use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::{AddedToken, TokenizerBuilder};
        let failed = |e: tokenizers::Error| TokenizeError::Hf(e.to_string());
        let byte_level = ByteLevel::new(false, true, true);
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(size)
            .min_frequency(2)
            .special_tokens(vec![AddedToken::from(PAD_WORD, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut t: tokenizers::TokenizerImpl<
            BPE,
            tokenizers::NormalizerWrapper,
            ByteLevel,
            tokenizers::PostProcessorWrapper,
            ByteLevel,
        > = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_pre_tokenizer(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .map_err(failed)?;
        // Lines are the training sequences (a corpus is one long text).
        t.train(&mut trainer, text.lines()).map_err(failed)?;
        Ok(Tokenizer::Hf {
            json: t.to_string(false).map_err(failed)?,
        })
    }

    /// A Hugging Face `tokenizer.json` (checked by loading it).
    pub fn from_file(path: &Path) -> Result<Tokenizer, DataError> {
        let shown = crate::shown::path(path);
        let json = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: shown.clone(),
            source,
        })?;
        hf(&json).map_err(|e| DataError::Format {
            path: shown,
            message: format!("not a tokenizer.json that `tokenizers` 0.22 reads: {e}"),
        })?;
        Ok(Tokenizer::Hf { json })
    }

    /// The tokenizer `kind` for `text` (BPE: trained on it, with `size` tokens).
    pub fn fit(kind: TokenizerKind, text: &str, size: usize) -> Result<Tokenizer, TokenizeError> {
        Ok(match kind {
            TokenizerKind::Bpe => Tokenizer::train_bpe(text, size)?,
            TokenizerKind::Word => Tokenizer::fit_words(std::iter::once(text), usize::MAX),
            TokenizerKind::Byte => Tokenizer::Bytes,
            TokenizerKind::Char => {
                let mut chars: Vec<char> = text.chars().collect();
                chars.sort_unstable();
                chars.dedup();
                Tokenizer::Chars {
                    chars: chars.into_iter().collect(),
                }
            }
        })
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Chars { chars } => chars.chars().count(),
            Tokenizer::Bytes => 256,
            Tokenizer::Words { words } => words.len(),
            Tokenizer::Hf { json } => hf(json).map_or(0, |t| t.get_vocab_size(true)),
        }
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.encoder()?.encode(text)
    }

    /// The tokenizer with its lookup tables built, for encoding many texts.
    pub fn encoder(&self) -> Result<Encoder<'_>, TokenizeError> {
        Ok(match self {
            Tokenizer::Hf { json } => Encoder::Hf(hf(json)?),
            Tokenizer::Bytes => Encoder::Bytes,
            Tokenizer::Words { words } => Encoder::Words(
                words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (w.as_str(), i as u32))
                    .collect(),
            ),
            Tokenizer::Chars { chars } => Encoder::Chars(chars.chars().collect()),
        })
    }

    /// The text of `ids` (bytes that are not UTF-8 are shown as U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Tokenizer::Chars { chars } => {
                let table: Vec<char> = chars.chars().collect();
                ids.iter()
                    .map(|&i| table.get(i as usize).copied().unwrap_or('\u{FFFD}'))
                    .collect()
            }
            Tokenizer::Words { words } => ids
                .iter()
                .map(|&i| words.get(i as usize).map_or(UNKNOWN_WORD, String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            Tokenizer::Hf { json } => hf(json)
                .and_then(|t| {
                    t.decode(ids, false)
                        .map_err(|e| TokenizeError::Hf(e.to_string()))
                })
                .unwrap_or_else(|e| format!("<{e}>")),
        }
    }
}

/// The corpus files `pattern` names: a file, every file of a folder, or a glob; in name order.
pub fn corpus_files(pattern: &Path) -> Result<Vec<PathBuf>, DataError> {
    let shown = crate::shown::path(pattern);
    let glob_pattern = pattern.display().to_string();
    let mut files: Vec<PathBuf> = if pattern.is_dir() {
        std::fs::read_dir(pattern)
            .map_err(|source| DataError::Io {
                path: shown.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    } else if glob_pattern.contains(['*', '?', '[']) {
        glob::glob(&glob_pattern)
            .map_err(|e| DataError::Format {
                path: shown.clone(),
                message: format!("not a valid glob: {e}"),
            })?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![pattern.to_path_buf()]
    };
    files.sort();
    if files.is_empty() {
        return Err(DataError::Format {
            path: shown,
            message: "matches no file".into(),
        });
    }
    Ok(files)
}

/// The corpus as bytes, for the byte tokenizer: its files in order, each read whole (gzip
/// too), joined as they are. Any bytes: binary data and Latin-1 text are corpora too.
pub fn read_corpus_bytes(pattern: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    for f in corpus_files(pattern)? {
        bytes.extend(super::read_bytes(&f)?);
    }
    Ok(bytes)
}

/// The corpus as one text: its files in order, each read whole (gzip too), joined as they are.
pub fn read_corpus(pattern: &Path) -> Result<String, DataError> {
    let mut text = String::new();
    for f in corpus_files(pattern)? {
        let bytes = super::read_bytes(&f)?;
        let part = String::from_utf8(bytes).map_err(|e| DataError::Format {
            path: crate::shown::path(&f),
            message: format!(
                "not UTF-8 text (byte {}); use `data.tokenizer` = \"byte\" for binary data",
                e.utf8_error().valid_up_to()
            ),
        })?;
        text.push_str(&part);
    }
    Ok(text)
}

/// Which blocks of a split are its examples.
#[derive(Debug, Clone, PartialEq)]
enum Starts {
    /// Every position with a whole block after it (training).
    Every(usize),
    /// These positions (validation and test: non-overlapping blocks).
    Fixed(Vec<usize>),
}

/// One split of a tokenized corpus, served as blocks of `block` inputs and `block` next-token
/// targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks {
    tokens: Arc<[u32]>,
    block: usize,
    starts: Starts,
}

impl Blocks {
    /// Every block of `tokens` (training): one per start position.
    pub fn every(tokens: Vec<u32>, block: usize) -> Blocks {
        let n = tokens.len().saturating_sub(block);
        Blocks {
            tokens: tokens.into(),
            block,
            starts: Starts::Every(n),
        }
    }

    /// Non-overlapping blocks of `tokens`, in order (validation, test).
    pub fn tiled(tokens: Vec<u32>, block: usize) -> Blocks {
        let starts = (0..)
            .map(|i| i * block)
            .take_while(|s| s + block < tokens.len())
            .collect();
        Blocks {
            tokens: tokens.into(),
            block,
            starts: Starts::Fixed(starts),
        }
    }

    /// Non-overlapping blocks of the same tokens, for scoring a training split: evenly spaced
    /// over the whole split, at most `max_tokens` of them (nanoGPT estimates its training loss
    /// on a sample too; all of a 1 MB corpus would cost more than the training steps).
    pub fn tiled_view(&self, max_tokens: usize) -> Blocks {
        match &self.starts {
            Starts::Fixed(_) => self.clone(),
            Starts::Every(n) => {
                let all: Vec<usize> = (0..*n).step_by(self.block).collect();
                let keep = (max_tokens / self.block).clamp(1, all.len().max(1));
                let starts = (0..keep.min(all.len()))
                    .map(|i| all[i * all.len() / keep])
                    .collect();
                Blocks {
                    tokens: Arc::clone(&self.tokens),
                    block: self.block,
                    starts: Starts::Fixed(starts),
                }
            }
        }
    }

    /// Tokens per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Tokens in the split.
    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    fn start(&self, i: usize) -> usize {
        match &self.starts {
            Starts::Every(_) => i,
            Starts::Fixed(s) => s[i],
        }
    }

    /// The first `n` blocks.
    pub fn head(&self, n: usize) -> Blocks {
        let starts = match &self.starts {
            Starts::Every(k) => Starts::Every(n.min(*k)),
            Starts::Fixed(s) => Starts::Fixed(s[..n.min(s.len())].to_vec()),
        };
        Blocks {
            starts,
            ..self.clone()
        }
    }
}

impl Source for Blocks {
    fn len(&self) -> usize {
        match &self.starts {
            Starts::Every(n) => *n,
            Starts::Fixed(s) => s.len(),
        }
    }

    fn fetch(&self, idx: &[usize], _: Option<super::Pass>) -> Result<Batch, DataError> {
        Ok(self.gather(idx))
    }
}

impl Blocks {
    /// The blocks `idx` and their next tokens.
    pub fn gather(&self, idx: &[usize]) -> Batch {
        let t = self.block;
        let mut ids = Vec::with_capacity(idx.len() * t);
        let mut next = Vec::with_capacity(idx.len() * t);
        for &i in idx {
            let s = self.start(i);
            ids.extend_from_slice(&self.tokens[s..s + t]);
            next.extend_from_slice(&self.tokens[s + 1..s + t + 1]);
        }
        Batch {
            x: Features::Tokens { ids, len: t },
            y: Targets::Tokens { ids: next, len: t },
            len: idx.len(),
        }
    }
}

/// Labeled texts (one split), each at most `block` tokens: a batch is padded with
/// [`kiln_models::PAD`] to its longest text.
#[derive(Debug, Clone, PartialEq)]
pub struct Labeled {
    pub ids: Arc<Vec<Vec<u32>>>,
    pub y: Targets,
}

impl Labeled {
    /// Tokenizes `texts`, each cut to `block` tokens (an empty one reads as one unknown word).
    pub fn new(tokenizer: &Tokenizer, texts: &[&str], y: Targets, block: usize) -> Labeled {
        let encoder = tokenizer.encoder().ok();
        let ids = texts
            .iter()
            .map(|t| {
                let mut v = encoder
                    .as_ref()
                    .and_then(|e| e.encode(t).ok())
                    .unwrap_or_default();
                v.truncate(block);
                if v.is_empty() {
                    v.push(1);
                }
                v
            })
            .collect();
        Labeled {
            ids: Arc::new(ids),
            y,
        }
    }

    pub fn head(&self, n: usize) -> Labeled {
        let n = n.min(self.ids.len());
        Labeled {
            ids: Arc::new(self.ids[..n].to_vec()),
            y: self.y.select(&(0..n).collect::<Vec<_>>()),
        }
    }
}

impl Source for Labeled {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn fetch(&self, idx: &[usize], _: Option<super::Pass>) -> Result<Batch, DataError> {
        Ok(self.gather(idx))
    }
}

impl Labeled {
    /// The texts `idx`, padded to the longest.
    pub fn gather(&self, idx: &[usize]) -> Batch {
        let t = idx.iter().map(|&i| self.ids[i].len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(idx.len() * t);
        for &i in idx {
            let row = &self.ids[i];
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(kiln_models::PAD, t - row.len()));
        }
        Batch {
            x: Features::Tokens { ids, len: t },
            y: self.y.select(idx),
            len: idx.len(),
        }
    }
}

/// A [`Tokenizer`] ready to encode: its vocabulary as a lookup table.
pub enum Encoder<'t> {
    Bytes,
    /// The sorted characters.
    Chars(Vec<char>),
    Words(std::collections::HashMap<&'t str, u32>),
    Hf(std::sync::Arc<tokenizers::Tokenizer>),
}

impl Encoder<'_> {
    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        match self {
            Encoder::Hf(t) => Ok(t
                .encode(text, false)
                .map_err(|e| TokenizeError::Hf(e.to_string()))?
                .get_ids()
                .to_vec()),
            Encoder::Bytes => Ok(text.bytes().map(u32::from).collect()),
            // An unknown word is a token of its own, not an error.
            Encoder::Words(index) => Ok(words(text)
                .map(|w| index.get(w.as_str()).copied().unwrap_or(1))
                .collect()),
            Encoder::Chars(table) => text
                .chars()
                .enumerate()
                .map(|(at, ch)| {
                    table.binary_search(&ch).map(|i| i as u32).map_err(|_| {
                        UnknownChar {
                            ch,
                            at,
                            vocab: table.len(),
                        }
                        .into()
                    })
                })
                .collect(),
        }
    }
}

/// A tokenized corpus, split.
pub struct TextSplits {
    pub tokenizer: Tokenizer,
    pub train: Blocks,
    pub valid: Blocks,
    pub test: Blocks,
}

/// Reads the corpus, splits it by position (characters), fits the tokenizer (char: the whole
/// corpus's characters; BPE: the training text only) and tokenizes each part. `fitted` reuses a
/// run's tokenizer.
pub fn prepare(spec: &DataSpec, fitted: Option<&Tokenizer>) -> Result<TextSplits, DataError> {
    let shown = crate::shown::path(&spec.path);
    let byte_level = match fitted {
        Some(t) => matches!(t, Tokenizer::Bytes),
        None => spec.tokenizer_file.is_none() && spec.tokenizer == TokenizerKind::Byte,
    };
    // UTF-8 text splits by characters whatever the tokenizer; other bytes, by bytes.
    let text = if byte_level {
        match String::from_utf8(read_corpus_bytes(&spec.path)?) {
            Ok(text) => text,
            Err(e) => return prepare_bytes(spec, shown, e.into_bytes()),
        }
    } else {
        read_corpus(&spec.path)?
    };
    if text.is_empty() {
        return Err(DataError::Format {
            path: shown,
            message: "the corpus is empty: a language model needs text to read".into(),
        });
    }
    let (n_train, n_valid) = split_sizes(text.chars().count(), spec);
    let at = |chars: usize| {
        text.char_indices()
            .nth(chars)
            .map_or(text.len(), |(i, _)| i)
    };
    let (train, rest) = text.split_at(at(n_train));
    let (valid, test) = rest.split_at(at(n_train + n_valid) - train.len());
    let fail = |e: TokenizeError| DataError::Format {
        path: shown.clone(),
        message: e.to_string(),
    };
    let tokenizer = match (fitted, &spec.tokenizer_file) {
        (Some(t), _) => t.clone(),
        (None, Some(file)) => Tokenizer::from_file(file)?,
        (None, None) => match spec.tokenizer {
            TokenizerKind::Bpe => Tokenizer::fit(spec.tokenizer, train, spec.vocab_size),
            kind => Tokenizer::fit(kind, &text, spec.vocab_size),
        }
        .map_err(fail)?,
    };
    let (train, valid, test) = (
        tokenizer.encode(train).map_err(fail)?,
        tokenizer.encode(valid).map_err(fail)?,
        tokenizer.encode(test).map_err(fail)?,
    );
    into_blocks(spec, shown, tokenizer, [train, valid, test])
}

/// A corpus of bytes that are not UTF-8 (binary data, Latin-1 text) read by the byte tokenizer:
/// split by position in bytes, each byte a token (as [`Tokenizer::Bytes`] encodes a text).
fn prepare_bytes(spec: &DataSpec, shown: String, bytes: Vec<u8>) -> Result<TextSplits, DataError> {
    let (n_train, n_valid) = split_sizes(bytes.len(), spec);
    let tokens = |part: &[u8]| part.iter().map(|&b| u32::from(b)).collect::<Vec<u32>>();
    let (train, rest) = bytes.split_at(n_train);
    let (valid, test) = rest.split_at(n_valid);
    let parts = [tokens(train), tokens(valid), tokens(test)];
    into_blocks(spec, shown, Tokenizer::Bytes, parts)
}

/// Of a corpus of `n` characters (or bytes), how many go to training and how many to
/// validation, in that order; the test split has the rest.
fn split_sizes(n: usize, spec: &DataSpec) -> (usize, usize) {
    let n_test = (n as f64 * spec.test_fraction).round() as usize;
    let n_valid = (n as f64 * spec.valid_fraction).round() as usize;
    let n_train = n.saturating_sub(n_test + n_valid);
    (n_train, n_valid.min(n - n_train))
}

/// The tokenized splits as blocks of `data.block_size`, refused when training holds no more
/// than one block.
fn into_blocks(
    spec: &DataSpec,
    shown: String,
    tokenizer: Tokenizer,
    [train, valid, test]: [Vec<u32>; 3],
) -> Result<TextSplits, DataError> {
    let block = spec.block_size;
    if train.len() <= block {
        return Err(DataError::Format {
            path: shown,
            message: format!(
                "the training split holds {} tokens, not more than one block of `data.block_size` = {block}: add text or lower the block size",
                train.len()
            ),
        });
    }
    Ok(TextSplits {
        tokenizer,
        train: Blocks::every(train, block),
        valid: Blocks::tiled(valid, block),
        test: Blocks::tiled(test, block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_gives_the_text_back() {
        let text = "First Citizen:\nBefore we proceed any further, hear me speak. Ça va — ünïcode!";
        for kind in [TokenizerKind::Char, TokenizerKind::Byte, TokenizerKind::Bpe] {
            let t = Tokenizer::fit(kind, &text.repeat(3), 300).unwrap();
            let ids = t.encode(text).unwrap();
            assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
            assert_eq!(t.decode(&ids), text);
        }
        let t = Tokenizer::fit(TokenizerKind::Char, "abc", 0).unwrap();
        assert_eq!(t.vocab_size(), 3);
        assert_eq!(t.encode("cab").unwrap(), vec![2, 0, 1]);
        let e = t.encode("abz").unwrap_err();
        let TokenizeError::UnknownChar(u) = &e else {
            panic!("{e}")
        };
        assert_eq!((u.ch, u.at), ('z', 2));
        assert!(e.to_string().contains("'z'"), "{e}");
        // A BPE learns merges: fewer tokens than bytes, and any text (unseen characters too)
        // comes back whole.
        let corpus = "the king, the queen, the kingdom; the king's crown\n".repeat(20);
        let bpe = Tokenizer::train_bpe(&corpus, 300).unwrap();
        let ids = bpe.encode("the king's queen").unwrap();
        assert!(ids.len() < "the king's queen".len(), "{ids:?}");
        assert_eq!(bpe.decode(&ids), "the king's queen");
        let odd = "Ça — 漢字 ™";
        assert_eq!(bpe.decode(&bpe.encode(odd).unwrap()), odd);
        assert_eq!(bpe.encode("<pad>").unwrap(), vec![0]);
    }

    #[test]
    fn words_are_lower_cased_and_unknown_ones_share_a_token() {
        let w: Vec<String> = words("Good morrow, Kate; that's your name?").collect();
        assert_eq!(
            w,
            [
                "good", "morrow", ",", "kate", ";", "that's", "your", "name", "?"
            ]
        );
        let t = Tokenizer::fit_words(["a b b c c c", "c d"].into_iter(), 4);
        assert_eq!(
            t,
            Tokenizer::Words {
                words: vec!["<pad>".into(), "<unk>".into(), "c".into(), "b".into()]
            }
        );
        assert_eq!(t.encode("C b zz a").unwrap(), vec![2, 3, 1, 1]);
        assert_eq!(t.decode(&[2, 3, 1]), "c b <unk>");
        let l = Labeled::new(
            &t,
            &["c b c", "", "b b b b b"],
            Targets::Classes(vec![0, 1, 2]),
            4,
        );
        let batch = l.gather(&[1, 0]);
        assert_eq!(
            batch.x,
            Features::Tokens {
                ids: vec![1, 0, 0, 2, 3, 2],
                len: 3
            }
        );
        assert_eq!(
            l.gather(&[2]).x,
            Features::Tokens {
                ids: vec![3; 4],
                len: 4
            }
        );
    }

    #[test]
    fn a_block_targets_the_next_token_of_every_position() {
        let b = Blocks::every((0..10).collect(), 4);
        assert_eq!(b.len(), 6);
        let batch = b.gather(&[5, 0]);
        assert_eq!(
            batch.x,
            Features::Tokens {
                ids: vec![5, 6, 7, 8, 0, 1, 2, 3],
                len: 4
            }
        );
        assert_eq!(
            batch.y,
            Targets::Tokens {
                ids: vec![6, 7, 8, 9, 1, 2, 3, 4],
                len: 4
            }
        );
        // Fixed blocks do not overlap and each keeps one token for its last target.
        let v = Blocks::tiled((0..10).collect(), 4);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v.gather(&[1]).x,
            Features::Tokens {
                ids: vec![4, 5, 6, 7],
                len: 4
            }
        );
        assert_eq!(Blocks::tiled((0..9).collect(), 4).len(), 2);
        assert_eq!(Blocks::tiled((0..8).collect(), 4).len(), 1);
    }
}

//! Text generation from a trained language model: `kiln generate`.
//!
//! Each new token is drawn from the model's next-token distribution at the last position,
//! shaped by temperature, top-k and top-p (nucleus) filtering, with a seeded generator: the same
//! seed gives the same text. With the key/value cache (the default), a new token costs one
//! position; without it the whole context is recomputed each time (the reference the cache is
//! tested and measured against).
//!
//! **The context window.** A model reads at most `block_size` positions. When the text outgrows
//! it, the window slides forward by half a block and the cache is rebuilt from the kept half
//! (positions are absolute, so cached keys cannot be shifted). Both paths slide alike, so they
//! read the same context at every step.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use kiln_models::{Gpt, KvCache, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::text::Tokenizer;
use crate::eval::{EvalError, LoadedRun};

/// `kiln generate --max-new-tokens` at most (a model's window slides along; a million tokens
/// is far past any use and still bounded).
pub const MAX_NEW_TOKENS: usize = 1_000_000;

/// How tokens are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// Divides the logits; 0 takes the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities add up to `p`.
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Use the key/value cache.
    pub cache: bool,
}

/// What was generated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generated {
    /// The new text (without the prompt).
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// The first position of the window the model reads when the text holds `len` tokens and the
/// window started at `start`: unchanged while it fits, else half a block back from the end.
fn window_start(start: usize, len: usize, block: usize) -> usize {
    if len - start <= block {
        start
    } else {
        len - (block / 2).max(1)
    }
}

fn ids_tensor(ids: &[u32], device: &burn::tensor::Device) -> Tensor<2, Int> {
    let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    Tensor::from_data(TensorData::new(v, [1, ids.len()]), device)
}

/// The next token from the logits of one position.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map_or(0, |(i, _)| i as u32)
    };
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    // Tokens by decreasing logit (the lower id first among equals).
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = s.top_k {
        order.truncate(k.max(1));
    }
    let top = f64::from(logits[order[0]]);
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i]) - top) / s.temperature).exp())
        .collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if let Some(p) = s.top_p {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                acc += q;
                acc >= p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (&i, &q) in order.iter().zip(&probs) {
        if u < q {
            return i as u32;
        }
        u -= q;
    }
    order[order.len() - 1] as u32
}

/// Writes text as tokens come, holding back the bytes of a character not yet complete.
struct Stream<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
    /// A BPE's tokens so far and the text written of them (a token may end mid-character).
    ids: Vec<u32>,
    written: usize,
}

impl Stream<'_> {
    /// What was held back at the end (an incomplete character), as the full decode shows it.
    fn finish(&mut self) -> String {
        match self.tokenizer {
            Tokenizer::Bytes => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                s
            }
            Tokenizer::Hf { .. } => {
                let text = self.tokenizer.decode(&self.ids);
                let rest = text.get(self.written..).unwrap_or("").to_string();
                self.written = text.len();
                rest
            }
            _ => String::new(),
        }
    }

    fn push(&mut self, id: u32) -> String {
        match self.tokenizer {
            Tokenizer::Bytes => {
                self.pending.push(id as u8);
                match std::str::from_utf8(&self.pending) {
                    Ok(s) => {
                        let s = s.to_string();
                        self.pending.clear();
                        s
                    }
                    // Incomplete at the end: wait for the rest; invalid: show it replaced.
                    Err(e) if e.error_len().is_none() && self.pending.len() < 4 => String::new(),
                    Err(_) => {
                        let s = String::from_utf8_lossy(&self.pending).into_owned();
                        self.pending.clear();
                        s
                    }
                }
            }
            Tokenizer::Hf { .. } => {
                self.ids.push(id);
                let text = self.tokenizer.decode(&self.ids);
                // Hold back a trailing replacement character: the rest of its bytes may come.
                let ready = text.trim_end_matches('\u{FFFD}');
                match ready.get(self.written..) {
                    Some(new) if ready.len() > self.written => {
                        self.written = ready.len();
                        new.to_string()
                    }
                    _ => String::new(),
                }
            }
            t => t.decode(&[id]),
        }
    }
}

/// The language model of a loaded run, and its tokenizer.
pub fn language_model(run: &LoadedRun) -> Result<(&Gpt, &Tokenizer), EvalError> {
    match (&run.model, &run.pre.text) {
        (Model::Gpt(g), Some(t)) => Ok((g, t)),
        _ => Err(EvalError::NotLanguageModel {
            id: run.label.clone(),
            kind: run.mconf.kind().name(),
        }),
    }
}

/// Generates up to `s.max_new_tokens` tokens after `prompt`, calling `on_text` with the text
/// of each as it comes; `on_text` answering `Break` stops early (a client went away).
pub fn generate(
    run: &LoadedRun,
    prompt: &str,
    s: &Sampling,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Generated, EvalError> {
    let (model, tokenizer) = language_model(run)?;
    let mut ids = tokenizer.encode(prompt)?;
    if ids.is_empty() {
        return Err(EvalError::EmptyPrompt);
    }
    let prompt_tokens = ids.len();
    let (tokens, seconds, rest) =
        generate_ids(model, &mut ids, s, &run.device, tokenizer, |id, stream| {
            on_text(&stream.push(id))
        });
    if !rest.is_empty() {
        let _ = on_text(&rest);
    }
    Ok(Generated {
        text: tokenizer.decode(&tokens),
        tokens_per_second: tokens.len() as f64 / seconds.max(1e-9),
        tokens,
        prompt_tokens,
        seconds,
    })
}

/// The token loop: appends new tokens to `ids`; returns them, the seconds they took and the
/// text the stream still held back at the end.
fn generate_ids(
    model: &Gpt,
    ids: &mut Vec<u32>,
    s: &Sampling,
    device: &burn::tensor::Device,
    tokenizer: &Tokenizer,
    mut on_token: impl FnMut(u32, &mut Stream) -> ControlFlow<()>,
) -> (Vec<u32>, f64, String) {
    let block = model.block_size();
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut stream = Stream {
        tokenizer,
        pending: Vec::new(),
        ids: Vec::new(),
        written: 0,
    };
    let started = Instant::now();
    let mut start = ids.len().saturating_sub(block);
    let mut cache = KvCache::new();
    let mut cached_from = None;
    let mut new = Vec::with_capacity(s.max_new_tokens.min(4096));
    for _ in 0..s.max_new_tokens {
        start = window_start(start, ids.len(), block);
        let logits = if s.cache {
            let feed = if cached_from == Some(start) {
                &ids[ids.len() - 1..]
            } else {
                cache = KvCache::new();
                cached_from = Some(start);
                &ids[start..]
            };
            model.forward_cached(ids_tensor(feed, device), &mut cache)
        } else {
            model.forward(ids_tensor(&ids[start..], device))
        };
        let [_, t, vocab] = logits.dims();
        let last: Vec<f32> = logits
            .narrow(1, t - 1, 1)
            .reshape([vocab])
            .into_data()
            .try_to_vec()
            .expect("logits are f32");
        let id = sample(&last, s, &mut rng);
        ids.push(id);
        new.push(id);
        if on_token(id, &mut stream).is_break() {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    (new, seconds, stream.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Sampling {
        Sampling {
            max_new_tokens: 1,
            temperature,
            top_k,
            top_p,
            seed: 7,
            cache: true,
        }
    }

    #[test]
    fn filters_keep_only_the_likely_tokens() {
        let logits = [0.0f32, 3.0, 2.9, -1.0, 1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(sample(&logits, &sampling(0.0, None, None), &mut rng), 1);
        assert_eq!(sample(&logits, &sampling(1.0, Some(1), None), &mut rng), 1);
        for _ in 0..200 {
            let t = sample(&logits, &sampling(1.0, Some(2), None), &mut rng);
            assert!(t == 1 || t == 2, "{t}");
            // p(1) = 0.47, p(2) = 0.43: the nucleus of 0.5 holds both.
            let t = sample(&logits, &sampling(1.0, None, Some(0.5)), &mut rng);
            assert!(t == 1 || t == 2, "{t}");
        }
        let seen: std::collections::BTreeSet<u32> = (0..500)
            .map(|_| sample(&logits, &sampling(1.0, None, None), &mut rng))
            .collect();
        assert_eq!(seen.len(), 5);
    }

    #[test]
    fn the_window_slides_by_half_a_block_when_full() {
        assert_eq!(window_start(0, 8, 8), 0);
        assert_eq!(window_start(0, 9, 8), 5);
        assert_eq!(window_start(5, 13, 8), 5);
        assert_eq!(window_start(5, 14, 8), 10);
        assert_eq!(window_start(0, 2, 1), 1);
    }

    #[test]
    fn bytes_stream_whole_characters() {
        let t = Tokenizer::Bytes;
        let mut s = Stream {
            tokenizer: &t,
            pending: Vec::new(),
            ids: Vec::new(),
            written: 0,
        };
        let out: Vec<String> = "aé€".bytes().map(|b| s.push(u32::from(b))).collect();
        assert_eq!(out, ["a", "", "é", "", "", "€"]);
        // A character cut short at the end is flushed as the full decode shows it.
        assert_eq!(s.push(0xE2), "");
        assert_eq!(s.finish(), "\u{FFFD}");
        assert_eq!(s.finish(), "");
    }
}

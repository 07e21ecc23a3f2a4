//! `kiln generate MODEL --prompt TEXT`: text from a trained language model, streamed to stdout
//! as it comes (`--json`: one object at the end, with the text and the speed).

use std::io::Write;
use std::path::PathBuf;

use kiln_trainer::eval::LoadedRun;
use kiln_trainer::generate::{self, Sampling};
use kiln_trainer::registry::Registry;

use super::{default_registry, resolve_model, usage, within};
use crate::cli::GenerateArgs;

pub fn run(a: GenerateArgs, registry: Option<PathBuf>) -> anyhow::Result<u8> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return usage(format!(
            "--temperature {}: must be 0 (greedy) or positive",
            a.temperature
        ));
    }
    within(
        "--max-new-tokens",
        a.max_new_tokens,
        1,
        generate::MAX_NEW_TOKENS,
    )?;
    if a.top_k == Some(0) {
        return usage("--top-k 0: keep at least 1 token");
    }
    if let Some(p) = a.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return usage(format!("--top-p {p}: must be in (0, 1]"));
    }
    let (reg, entry) = resolve_model(&Registry::new(default_registry(registry)), &a.model)?;
    let run = LoadedRun::open_model(&reg, &entry)?;
    let sampling = Sampling {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        cache: !a.no_cache,
    };
    let mut out = std::io::stdout().lock();
    let stream = !a.json;
    let mut started = false;
    let g = generate::generate(&run, &a.prompt, &sampling, |piece| {
        if stream {
            // The prompt once it is known to encode, then each piece as it comes. A closed
            // pipe (`| head`) ends the output, not the program.
            let prompt = if started { "" } else { a.prompt.as_str() };
            started = true;
            let _ = write!(out, "{prompt}{piece}").and_then(|_| out.flush());
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if a.json {
        let v = serde_json::json!({
            "model": run.label,
            "prompt": a.prompt,
            "text": g.text,
            "prompt_tokens": g.prompt_tokens,
            "new_tokens": g.tokens.len(),
            "seconds": g.seconds,
            "tokens_per_second": g.tokens_per_second,
            "kv_cache": sampling.cache,
            "seed": a.seed,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
        eprintln!(
            "{} tokens in {:.2} s ({:.0} tokens/s{})",
            g.tokens.len(),
            g.seconds,
            g.tokens_per_second,
            if sampling.cache { "" } else { ", no cache" }
        );
    }
    Ok(0)
}

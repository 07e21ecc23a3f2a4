//! Language models over HTTP, as Triton's generate extension has it:
//!
//! - `POST /v2/models/{name}/generate` with `{"text_input": "ROMEO:", "parameters":
//!   {"max_tokens": 64, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 1}}` answers
//!   `{"model_name", "model_version", "text_output", ...}` once the text is complete;
//! - `POST /v2/models/{name}/generate_stream`, the same body, answers `text/event-stream`: one
//!   `data: {"model_name", "model_version", "text_output": PIECE}` event per piece of text as
//!   it is generated, then a last event with `"finished": true` and the counts.
//!
//! The prompt is encoded and every parameter checked before anything is generated, so a bad
//! request is a 400 naming the field, never a broken stream. Generation runs on a blocking
//! thread with the model's lock (one text at a time per model, as the batcher's forward
//! passes); at most `queue` requests per model wait for it, further ones get 503 at once. A
//! client that goes away mid-stream stops its generation at the next token.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::{App, Slot, Version, error, json_response};
use crate::generate::{self, Sampling};

/// The most tokens one request may ask for.
pub const MAX_TOKENS: usize = 4096;

/// A checked request: the prompt and how to sample.
struct Request {
    prompt: String,
    sampling: Sampling,
}

fn bad(message: String) -> Box<Response> {
    Box::new(error(StatusCode::BAD_REQUEST, message))
}

/// `parameters.<key>` as a number, if present.
fn number(
    params: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<f64>, Box<Response>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| bad(format!("parameters.{key}: {v} is not a number"))),
    }
}

/// `parameters.<key>` as a whole number, if present.
fn whole(params: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u64>, Box<Response>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("parameters.{key}: {v} is not a whole number"))),
    }
}

/// Reads and checks a generate request body; defaults as `kiln generate`'s flags (64 tokens,
/// temperature 0.8, seed 1, the key/value cache on).
fn parse(body: &Value, version: &Version) -> Result<Request, Box<Response>> {
    let Some(obj) = body.as_object() else {
        return Err(bad(
            "the body must be a JSON object with \"text_input\"".into()
        ));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["text_input", "parameters", "id"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "{k:?}: not a field of a generate request (text_input, parameters)"
        )));
    }
    let prompt = match obj.get("text_input") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(bad(format!("text_input: {v} is not a string"))),
        None => return Err(bad("text_input: missing (the prompt to continue)".into())),
    };
    let empty = serde_json::Map::new();
    let params = match obj.get("parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(v) => return Err(bad(format!("parameters: {v} is not an object"))),
    };
    const KNOWN: [&str; 6] = [
        "max_tokens",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "cache",
    ];
    if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        let known: Vec<String> = KNOWN.iter().map(|k| k.to_string()).collect();
        return Err(bad(format!(
            "parameters.{k}: unknown{} (known: {})",
            crate::suggest::hint(k, &known),
            KNOWN.join(", ")
        )));
    }
    let max_tokens = whole(params, "max_tokens")?.unwrap_or(64);
    if max_tokens == 0 || max_tokens > MAX_TOKENS as u64 {
        return Err(bad(format!(
            "parameters.max_tokens: {max_tokens}: must be 1 to {MAX_TOKENS}"
        )));
    }
    let temperature = number(params, "temperature")?.unwrap_or(0.8);
    if temperature < 0.0 {
        return Err(bad(format!(
            "parameters.temperature: {temperature}: must be 0 (greedy) or positive"
        )));
    }
    let top_k = whole(params, "top_k")?;
    if top_k == Some(0) {
        return Err(bad("parameters.top_k: 0: keep at least 1 token".into()));
    }
    let top_p = number(params, "top_p")?;
    if let Some(p) = top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(bad(format!("parameters.top_p: {p}: must be in (0, 1]")));
    }
    let cache = match params.get("cache") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(bad(format!("parameters.cache: {v} is not true or false"))),
    };
    // The prompt must encode: an unknown character is the client's error, said before any
    // text is streamed.
    let Some(tokenizer) = &version.schema.pre.text else {
        return Err(bad("this model reads no text".into()));
    };
    match tokenizer.encode(&prompt) {
        Ok(ids) if ids.is_empty() => {
            return Err(bad("text_input: empty: give some text to continue".into()));
        }
        Ok(_) => {}
        Err(e) => return Err(bad(format!("text_input: {e}"))),
    }
    Ok(Request {
        prompt,
        sampling: Sampling {
            max_new_tokens: max_tokens as usize,
            temperature,
            top_k: top_k.map(|k| k as usize),
            top_p,
            seed: whole(params, "seed")?.unwrap_or(1),
            cache,
        },
    })
}

/// The request's slot, version and checked body, and a place in the model's line.
fn admit(
    app: &App,
    name: &str,
    body: &Bytes,
) -> Result<(Arc<Version>, Request, tokio::sync::OwnedSemaphorePermit), Box<Response>> {
    let slot: &Slot = super::slot(app, name)?;
    let v = Arc::clone(&slot.current.read().expect("slot lock"));
    if !v.schema.generates {
        return Err(bad(format!(
            "{name} does not generate text: POST /v2/models/{name}/infer or /predict"
        )));
    }
    let body = super::parse_body(body)?;
    let request = parse(&body, &v)?;
    let permit = Arc::clone(&slot.generations)
        .try_acquire_owned()
        .map_err(|_| {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many generations waiting for this model: retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Box::new(r)
        })?;
    Ok((v, request, permit))
}

/// `POST /v2/models/{name}/generate`: the whole text in one answer.
pub async fn generate(app: Arc<App>, name: String, body: Bytes) -> Response {
    let (v, request, permit) = match admit(&app, &name, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let v2 = Arc::clone(&v);
    let done = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let run = v2.run.lock().expect("model lock");
        generate::generate(&run, &request.prompt, &request.sampling, |_| {
            ControlFlow::Continue(())
        })
    })
    .await;
    if let Ok(Ok(g)) = &done {
        app.metrics.generated(&name, g.tokens.len());
    }
    match done {
        Ok(Ok(g)) => json_response(
            &json!({
                "model_name": name,
                "model_version": v.label,
                "text_output": g.text,
                "prompt_tokens": g.prompt_tokens,
                "new_tokens": g.tokens.len(),
                "tokens_per_second": g.tokens_per_second,
            }),
            Some(&v.label),
        ),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the generation failed"),
    }
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// `POST /v2/models/{name}/generate_stream`: server-sent events, a piece of text each.
pub async fn generate_stream(app: Arc<App>, name: String, body: Bytes) -> Response {
    let (v, request, permit) = match admit(&app, &name, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    // A few events of slack: the generator waits for a slow reader rather than buffering.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let v2 = Arc::clone(&v);
    let model = name.clone();
    let metrics = Arc::clone(&app.metrics);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let head = |piece: &str| json!({"model_name": model, "model_version": v2.label, "text_output": piece});
        let run = v2.run.lock().expect("model lock");
        let result = generate::generate(&run, &request.prompt, &request.sampling, |piece| {
            if piece.is_empty() {
                return ControlFlow::Continue(());
            }
            match tx.blocking_send(event(&head(piece))) {
                Ok(()) => ControlFlow::Continue(()),
                // The client went away: stop generating.
                Err(_) => ControlFlow::Break(()),
            }
        });
        let mut last = head("");
        match result {
            Ok(g) => {
                metrics.generated(&model, g.tokens.len());
                last["finished"] = json!(true);
                last["prompt_tokens"] = json!(g.prompt_tokens);
                last["new_tokens"] = json!(g.tokens.len());
                last["tokens_per_second"] = json!(g.tokens_per_second);
            }
            Err(e) => last["error"] = json!(e.to_string()),
        }
        let _ = tx.blocking_send(event(&last));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(label) = HeaderValue::from_str(&v.label) {
        h.insert(super::VERSION_HEADER, label);
    }
    r
}

//! Language models over HTTP, as Triton's generate extension has it:
//!
//! - `POST /v2/models/{name}/generate` with `{"text_input": "ROMEO:", "parameters":
//!   {"max_tokens": 64, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 1}}` (the
//!   parameters may also stand beside `text_input`, as in Triton's own examples) answers
//!   `{"model_name", "model_version", "text_output", ...}` once the text is complete;
//! - `POST /v2/models/{name}/generate_stream`, the same body, answers `text/event-stream`: one
//!   `data: {"model_name", "model_version", "text_output": PIECE}` event per piece of text as
//!   it is generated, then a last event with `"finished": true` and the counts.
//!
//! The prompt is encoded and every parameter checked before anything is generated, so a bad
//! request is a 400 naming the field, never a broken stream. Generation runs on a blocking
//! thread with the model's lock (one text at a time per model); at most `queue` requests per
//! model hold a place in line, further ones get 503 at once. The lock is never held waiting on
//! a client (events go to an unbounded channel, at most `MAX_TOKENS + 1` of them), and a client
//! that goes away stops its generation at the next token.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{App, Slot, Version, error, json_response};
use crate::generate::{self, Sampling};

/// The most tokens one request may ask for.
pub const MAX_TOKENS: usize = 4096;

/// The sampling parameters a request may give.
const PARAMETERS: [&str; 6] = [
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "cache",
];

/// A checked request: the prompt and how to sample.
struct Request {
    prompt: String,
    sampling: Sampling,
}

type Refusal = Box<Response>;

fn bad(message: String) -> Refusal {
    Box::new(error(StatusCode::BAD_REQUEST, message))
}

fn known_parameters() -> Vec<String> {
    PARAMETERS.iter().map(|k| k.to_string()).collect()
}

/// `parameters.<key>` as a finite number, if present.
fn number(params: &Map<String, Value>, key: &str) -> Result<Option<f64>, Refusal> {
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
fn whole(params: &Map<String, Value>, key: &str) -> Result<Option<u64>, Refusal> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("parameters.{key}: {v} is not a whole number"))),
    }
}

/// The sampling parameters: the `parameters` object and those given beside `text_input`.
fn parameters(obj: &Map<String, Value>) -> Result<Map<String, Value>, Refusal> {
    let mut params = match obj.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(v) => return Err(bad(format!("parameters: {v} is not an object"))),
    };
    if let Some(k) = params.keys().find(|k| !PARAMETERS.contains(&k.as_str())) {
        return Err(bad(format!(
            "parameters.{k}: unknown{} (known: {})",
            crate::suggest::hint(k, &known_parameters()),
            PARAMETERS.join(", ")
        )));
    }
    for k in PARAMETERS {
        if let Some(v) = obj.get(k) {
            if params.contains_key(k) {
                return Err(bad(format!(
                    "{k}: given twice, beside text_input and in parameters"
                )));
            }
            params.insert(k.to_string(), v.clone());
        }
    }
    Ok(params)
}

/// Reads and checks a generate request body; defaults as `kiln generate`'s flags (64 tokens,
/// temperature 0.8, seed 1, the key/value cache on).
fn parse(body: &Value, version: &Version) -> Result<Request, Refusal> {
    let Some(obj) = body.as_object() else {
        return Err(bad(
            "the body must be a JSON object with \"text_input\"".into()
        ));
    };
    let fields = ["text_input", "parameters", "id"];
    if let Some(k) = obj
        .keys()
        .find(|k| !fields.contains(&k.as_str()) && !PARAMETERS.contains(&k.as_str()))
    {
        return Err(bad(format!(
            "{k:?}: not a field of a generate request{} (text_input, parameters, or one of {})",
            crate::suggest::hint(k, &known_parameters()),
            PARAMETERS.join(", ")
        )));
    }
    let prompt = match obj.get("text_input") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(bad(format!("text_input: {v} is not a string"))),
        None => return Err(bad("text_input: missing (the prompt to continue)".into())),
    };
    let params = parameters(obj)?;
    let max_tokens = whole(&params, "max_tokens")?.unwrap_or(64);
    if max_tokens == 0 || max_tokens > MAX_TOKENS as u64 {
        return Err(bad(format!(
            "parameters.max_tokens: {max_tokens}: must be 1 to {MAX_TOKENS}"
        )));
    }
    let temperature = number(&params, "temperature")?.unwrap_or(0.8);
    if temperature < 0.0 {
        return Err(bad(format!(
            "parameters.temperature: {temperature}: must be 0 (greedy) or positive"
        )));
    }
    let top_k = whole(&params, "top_k")?;
    if top_k == Some(0) {
        return Err(bad("parameters.top_k: 0: keep at least 1 token".into()));
    }
    let top_p = number(&params, "top_p")?;
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
            seed: whole(&params, "seed")?.unwrap_or(1),
            cache,
        },
    })
}

/// The request's version and checked body, and a place in the model's line.
fn admit(
    app: &App,
    name: &str,
    body: &Bytes,
) -> Result<(Arc<Version>, Request, tokio::sync::OwnedSemaphorePermit), Refusal> {
    let slot: &Slot = super::slot(app, name)?;
    let v = Arc::clone(&slot.current.read().expect("slot lock"));
    if !v.schema.generates {
        return Err(bad(format!(
            "{name} does not generate text: POST /v2/models/{name}/infer or /predict"
        )));
    }
    // The place in line first: under overload, a 503 costs no parsing.
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
    let body = super::parse_body(body)?;
    let request = parse(&body, &v)?;
    Ok((v, request, permit))
}

/// One generation under the model's lock. A panic inside (memory exhausted, say) is an error
/// for this request, and the lock is not left poisoned for the next.
fn run_generation(
    v: &Version,
    request: &Request,
    on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<generate::Generated, String> {
    let run = v
        .run
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generate::generate(&run, &request.prompt, &request.sampling, on_text)
    }))
    .map_err(|_| "the generation failed".to_string())?
    .map_err(|e| e.to_string())
}

/// `POST /v2/models/{name}/generate`: the whole text in one answer.
pub async fn generate(app: Arc<App>, name: String, body: Bytes) -> Response {
    let (v, request, permit) = match admit(&app, &name, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let v2 = Arc::clone(&v);
    // `gone` is dropped with this handler if the client goes away: the generation then stops.
    let (alive, gone) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if alive.is_closed() {
            return Err("the client went away".to_string());
        }
        run_generation(&v2, &request, |_| {
            if alive.is_closed() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
    })
    .await;
    drop(gone);
    match done {
        Ok(Ok(g)) => {
            app.metrics.generated(&name, g.tokens.len());
            json_response(
                &json!({
                    "model_name": name,
                    "model_version": v.label,
                    "text_output": g.text,
                    "prompt_tokens": g.prompt_tokens,
                    "new_tokens": g.tokens.len(),
                    "tokens_per_second": g.tokens_per_second,
                }),
                Some(&v.label),
            )
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let v2 = Arc::clone(&v);
    let model = name.clone();
    let metrics = Arc::clone(&app.metrics);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // The client may have gone while this waited in line.
        if tx.is_closed() {
            return;
        }
        let head = |piece: &str| json!({"model_name": model, "model_version": v2.label, "text_output": piece});
        let result = run_generation(&v2, &request, |piece| {
            if tx.is_closed() {
                // The client went away: stop generating.
                return ControlFlow::Break(());
            }
            if !piece.is_empty() {
                let _ = tx.send(event(&head(piece)));
            }
            ControlFlow::Continue(())
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
            Err(e) => last["error"] = json!(e),
        }
        let _ = tx.send(event(&last));
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>))
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

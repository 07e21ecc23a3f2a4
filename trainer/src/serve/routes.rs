//! The server's routes: the Open Inference Protocol's endpoints, `/predict`, the generate
//! extension's and `/metrics`, each a handler of [`App`]'s state, and the layers every request
//! passes. The server's life-cycle (loading, aliases followed, shutdown) is in `mod.rs`.

use super::*;

/// Every route of the server, with the layers each request passes: the body read (with its
/// time limit and decompression), then the per-model tracking, then the body size limit.
pub(super) fn router(app: &Arc<App>, body_limit: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/models/{name}/config", get(model_config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/models/{name}/predict", post(predict_named))
        .route(
            "/v2/models/{name}/generate",
            post(|State(app), Path(name), body| generation::generate(app, name, body)),
        )
        .route(
            "/v2/models/{name}/generate_stream",
            post(|State(app), Path(name), body| generation::generate_stream(app, name, body)),
        )
        .route("/predict", post(predict_default))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(app),
            read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(app), track))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(Arc::clone(app))
}

/// A JSON error answer.
pub(super) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": message.into()}).to_string(),
    )
        .into_response()
}

pub(super) fn json_response(v: &Value, version: Option<&str>) -> Response {
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response();
    if let Some(v) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
        r.headers_mut().insert(VERSION_HEADER, v);
    }
    r
}

/// Counts and times every request; checks the bearer token (health checks excepted).
async fn track(
    State(app): State<Arc<App>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let endpoint = matched
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let model = req
        .uri()
        .path()
        .strip_prefix("/v2/models/")
        .and_then(|p| p.split('/').next())
        .filter(|name| app.slots.iter().any(|s| s.name == *name))
        .map(str::to_string)
        .or_else(|| {
            (endpoint == "/predict")
                .then(|| app.slots.first().map(|s| s.name.clone()))
                .flatten()
        })
        .unwrap_or_default();
    let health = endpoint.starts_with("/v2/health");
    let response = match &app.token {
        Some(token) if !health && !authorized(req.headers(), token) => {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        _ => next.run(req).await,
    };
    app.metrics.request(
        &model,
        &endpoint,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = v.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant time in the token's length.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn live() -> Response {
    json_response(&json!({"live": true}), None)
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    json_response(&json!({"ready": !app.slots.is_empty()}), None)
}

/// Server metadata; `extensions` names Triton's generate extension when a language model is
/// served.
async fn server_metadata(State(app): State<Arc<App>>) -> Response {
    let generates = app
        .slots
        .iter()
        .any(|s| s.current.read().expect("slot lock").schema.generates);
    let extensions: Vec<&str> = if generates { vec!["generate"] } else { vec![] };
    json_response(
        &json!({"name": "kiln", "version": env!("CARGO_PKG_VERSION"), "extensions": extensions}),
        None,
    )
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint: see /v2, /v2/models/{name}, /predict, /metrics",
    )
}

/// An answer to give instead (boxed: a `Response` is large).
type Answer = Box<Response>;

pub(super) fn slot<'a>(app: &'a App, name: &str) -> Result<&'a Slot, Answer> {
    app.slots.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = app.slots.iter().map(|s| s.name.as_str()).collect();
        Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no model {name:?} here (serving: {})", names.join(", ")),
        ))
    })
}

/// A model route's parameters: `name`, and `version` on its versioned form.
type Target = std::collections::HashMap<String, String>;

/// The slot serving `name` and its version now, checked against the version a URL or body
/// asks for (`N`, `vN` or the registry label): 404 naming the served one when it differs.
fn served<'a>(
    app: &'a App,
    name: &str,
    asked: Option<&str>,
) -> Result<(&'a Slot, Arc<Version>), Answer> {
    let s = slot(app, name)?;
    let v = Arc::clone(&s.current.read().expect("slot lock"));
    match asked {
        Some(want) if !want.is_empty() && !triton::names_version(want, &v.label) => {
            Err(Box::new(error(
                StatusCode::NOT_FOUND,
                format!(
                    "{name} serves version {} ({}), not version {want}",
                    triton::version_string(&v.label),
                    v.label
                ),
            )))
        }
        _ => Ok((s, v)),
    }
}

fn metadata_of(app: &App, name: &str, asked: Option<&str>) -> Response {
    match served(app, name, asked) {
        Ok((_, v)) => json_response(&v.schema.metadata, Some(&v.label)),
        Err(r) => *r,
    }
}

async fn model_metadata(State(app): State<Arc<App>>, Path(p): Path<Target>) -> Response {
    metadata_of(&app, &p["name"], p.get("version").map(String::as_str))
}

fn ready_of(app: &App, name: &str, asked: Option<&str>) -> Response {
    match served(app, name, asked) {
        Ok((_, v)) => json_response(&json!({"name": name, "ready": true}), Some(&v.label)),
        Err(r) => *r,
    }
}

async fn model_ready(State(app): State<Arc<App>>, Path(p): Path<Target>) -> Response {
    ready_of(&app, &p["name"], p.get("version").map(String::as_str))
}

/// Triton's model configuration (`tritonclient`'s `get_model_config`).
fn config_of(app: &App, name: &str, asked: Option<&str>) -> Response {
    match served(app, name, asked) {
        Ok((_, v)) => {
            let gpu = v.device != crate::backend::cpu();
            let config = triton::config(&v.schema.metadata, app.max_batch, app.instances, gpu);
            json_response(&config, Some(&v.label))
        }
        Err(r) => *r,
    }
}

async fn model_config(State(app): State<Arc<App>>, Path(p): Path<Target>) -> Response {
    config_of(&app, &p["name"], p.get("version").map(String::as_str))
}

/// Triton's statistics of the named model, or of every model.
fn stats_of(app: &App, name: Option<&str>, asked: Option<&str>) -> Response {
    let tally = |t: metrics::Tally| json!({"count": t.count, "ns": t.ns});
    if let Some(Err(r)) = name.map(|n| slot(app, n)) {
        return *r;
    }
    let mut stats = Vec::new();
    for s in &app.slots {
        if name.is_some_and(|n| n != s.name) {
            continue;
        }
        let v = match served(app, &s.name, asked) {
            Ok((_, v)) => v,
            Err(r) => return *r,
        };
        let m = app.metrics.model_stats(&s.name);
        stats.push(json!({
            "name": s.name,
            "version": triton::version_string(&v.label),
            "last_inference": m.last_inference_ms,
            "inference_count": m.inference_count,
            "execution_count": m.execution_count,
            "inference_stats": {
                "success": tally(m.success),
                "fail": tally(m.fail),
                "queue": tally(m.queue),
                "compute_infer": tally(m.compute_infer),
            },
        }));
    }
    json_response(&json!({"model_stats": stats}), None)
}

async fn all_stats(State(app): State<Arc<App>>) -> Response {
    stats_of(&app, None, None)
}

async fn model_stats(State(app): State<Arc<App>>, Path(p): Path<Target>) -> Response {
    stats_of(&app, Some(&p["name"]), p.get("version").map(String::as_str))
}

/// Reads the whole body before any handler sees it: within the body timeout (a client that
/// stalls mid-body is answered 408 and the connection closed), up to the body limit (413),
/// and decoded when it is `gzip` or `deflate` (another `Content-Encoding` is a 415).
async fn read_body(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let read = tokio::time::timeout(app.body_timeout, axum::body::to_bytes(body, app.body_limit));
    let raw = match read.await {
        Ok(Ok(raw)) => raw,
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over the limit of {} bytes", app.body_limit),
            );
        }
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s (--body-timeout)",
                    app.body_timeout.as_secs_f64()
                ),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let Some(encoding) = parts.headers.get(header::CONTENT_ENCODING).cloned() else {
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(raw)))
            .await;
    };
    let encoding = encoding.to_str().unwrap_or("(not text)").to_string();
    let decoded = match tokio::task::spawn_blocking({
        let limit = app.body_limit;
        move || triton::decompress(&encoding, &raw, limit)
    })
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err((code, message))) => return error(code, message),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decoding the body failed",
            );
        }
    };
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    next.run(Request::from_parts(parts, axum::body::Body::from(decoded)))
        .await
}

pub(super) fn parse_body(body: &Bytes) -> Result<Value, Answer> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        ))
    })
}

/// Queues preprocessed rows for the slot's batcher and waits for the answer.
async fn run_batch(
    app: &App,
    slot: &Slot,
    v: Arc<Version>,
    data: crate::data::Split,
) -> Result<batcher::Answer, Answer> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let rows = data.table().map(|t| t.x.clone());
    let d = data.table().map_or(0, |t| t.d);
    let job = batcher::Job {
        version: Arc::clone(&v),
        queued_at: Instant::now(),
        data,
        reply: tx,
    };
    app.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if let Err((_, refused)) = slot.queue.push(job) {
        app.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let why = match refused {
            queue::Refused::Full => "the queue is full: retry later",
            queue::Refused::Stopped => "the model's worker stopped",
        };
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, why);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(Box::new(r));
    }
    let answer = rx.await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model's worker stopped",
        )
    })?;
    for p in &answer.predictions {
        if let Some(c) = p.prediction.as_str() {
            app.metrics.predicted(&slot.name, c);
        }
    }
    // The drift window: the rows served and their predicted classes.
    if let (Some(x), true) = (rows, app.window > 0 && v.schema.reference.is_some()) {
        let mut w = slot.window.lock().expect("window lock");
        // Rows encoded for a version no longer served would be decoded with the new one's
        // statistics.
        let current = Arc::ptr_eq(&slot.current.read().expect("slot lock"), &v);
        for (i, row) in x.chunks(d.max(1)).enumerate().filter(|_| current) {
            w.push_back((row.to_vec(), answer.classes.get(i).copied()));
            if w.len() > app.window {
                w.pop_front();
            }
        }
    }
    Ok(answer)
}

async fn predict_default(State(app): State<Arc<App>>, body: Bytes) -> Response {
    if app.slots.len() != 1 {
        let names: Vec<&str> = app.slots.iter().map(|s| s.name.as_str()).collect();
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "several models are served ({}): POST /v2/models/NAME/predict",
                names.join(", ")
            ),
        );
    }
    let name = app.slots[0].name.clone();
    predict(app, name, body).await
}

async fn predict_named(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    predict(app, name, body).await
}

async fn predict(app: Arc<App>, name: String, body: Bytes) -> Response {
    let slot = match slot(&app, &name) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let v = Arc::clone(&slot.current.read().expect("slot lock"));
    let fast = if v.schema.generates {
        None
    } else {
        protocol::pixel_rows(&v.schema, &body)
    };
    let data = match fast {
        Some(d) => Ok(d),
        None => {
            let body = match parse_body(&body) {
                Ok(b) => b,
                Err(r) => return *r,
            };
            if v.schema.generates {
                return generates_text(&name);
            }
            protocol::predict_rows(&v.schema, &body, app.allow_unseen)
        }
    };
    let data = match data {
        Ok(d) => d,
        Err(protocol::Bad(m)) => return error(StatusCode::BAD_REQUEST, m),
    };
    let answer = match run_batch(&app, slot, Arc::clone(&v), data).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    json_response(
        &json!({
            "model": name,
            "version": v.label,
            "classes": v.schema.classes,
            "predictions": answer.predictions,
        }),
        Some(&v.label),
    )
}

async fn infer(
    State(app): State<Arc<App>>,
    Path(p): Path<Target>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = p["name"].clone();
    let (slot, v) = match served(&app, &name, p.get("version").map(String::as_str)) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let triton::Body { json: body, binary } = match triton::split_body(&headers, body) {
        Ok(b) => b,
        Err(protocol::Bad(m)) => return error(StatusCode::BAD_REQUEST, m),
    };
    if v.schema.generates {
        return generates_text(&name);
    }
    let parsed = protocol::infer_rows(&v.schema.pre, &body, binary);
    let (data, id) = match parsed {
        Ok(p) => p,
        Err(protocol::Bad(m)) => return error(StatusCode::BAD_REQUEST, m),
    };
    let wanted: Option<Vec<String>> = body.get("outputs").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|o| o.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    });
    if let Some(w) = &wanted
        && let Some(bad) = w.iter().find(|o| !answer_names(&v).contains(o))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "outputs: no output {bad:?} (the model has {})",
                answer_names(&v).join(", ")
            ),
        );
    }
    let answer = match run_batch(&app, slot, Arc::clone(&v), data).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let n = answer.predictions.len();
    let mut binary = Vec::new();
    let mut outputs = Vec::new();
    for (o, values) in answer.outputs {
        if wanted.as_ref().is_some_and(|w| !w.contains(&o)) {
            continue;
        }
        let shape = json!([n, values.len() / n.max(1)]);
        if triton::wants_binary(&body, &o) {
            let size = 4 * values.len();
            outputs.push(json!({"name": o, "datatype": "FP32", "shape": shape,
                                "parameters": {"binary_data_size": size}}));
            binary.push(values);
        } else {
            outputs.push(json!({"name": o, "datatype": "FP32", "shape": shape, "data": values}));
        }
    }
    let mut out = json!({
        "model_name": name,
        "model_version": triton::version_string(&v.label),
        "outputs": outputs,
    });
    if let Some(id) = id {
        out["id"] = id;
    }
    let mut r = triton::answer(out, binary);
    if let Ok(label) = HeaderValue::from_str(&v.label) {
        r.headers_mut().insert(VERSION_HEADER, label);
    }
    r
}

/// A per-example request to a language model.
fn generates_text(name: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!(
            "{name} is a language model: POST /v2/models/{name}/generate (or generate_stream) with {{\"text_input\": ...}}"
        ),
    )
}

fn answer_names(v: &Version) -> Vec<String> {
    v.schema.metadata["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["name"].as_str().map(str::to_string))
        .collect()
}

async fn prometheus(State(app): State<Arc<App>>) -> Response {
    let app2 = Arc::clone(&app);
    // Drift scores sort samples: off the runtime's threads.
    let text = tokio::task::spawn_blocking(move || {
        let mut versions = Vec::new();
        let mut scores = Vec::new();
        let mut windows = Vec::new();
        for s in &app2.slots {
            let v = Arc::clone(&s.current.read().expect("slot lock"));
            versions.push((s.name.clone(), v.label.clone()));
            let window: Vec<(Vec<f32>, Option<usize>)> = s
                .window
                .lock()
                .expect("window lock")
                .iter()
                .cloned()
                .collect();
            windows.push((s.name.clone(), window.len()));
            let Some(reference) = &v.schema.reference else {
                continue;
            };
            // A handful of rows says nothing about a distribution.
            if window.len() < MIN_DRIFT_ROWS {
                continue;
            }
            let pre = &v.schema.pre;
            let d = pre.n_features;
            let data = crate::data::Dataset {
                x: window.iter().flat_map(|(r, _)| r.iter().copied()).collect(),
                y: crate::data::Targets::Values(vec![0.0; window.len()]),
                n: window.len(),
                d,
            };
            let Some(values) = drift::columns_of(pre, &data) else {
                continue;
            };
            for (p, x) in reference.columns.iter().zip(&values) {
                let sc = drift::score(p, x, drift::Thresholds::default());
                scores.push((s.name.clone(), sc.name, sc.psi, sc.ks));
            }
            if let Some(p) = &reference.predictions {
                let classes = drift::Values::Categorical(window.iter().map(|(_, c)| *c).collect());
                if matches!(p, drift::Profile::Categorical { .. }) {
                    let sc = drift::score(p, &classes, drift::Thresholds::default());
                    scores.push((s.name.clone(), "(prediction)".into(), sc.psi, None));
                }
            }
        }
        app2.metrics.render(&versions, &scores, &windows)
    })
    .await;
    let Ok(text) = text else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be computed",
        );
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

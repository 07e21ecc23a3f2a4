//! `kiln serve`: registry models over HTTP, on tokio (waiting on the network is the work;
//! the number crunching is on each model's batcher instances, threads of their own).
//!
//! - The Open Inference Protocol (KServe v2 / Triton REST): `/v2/health/{live,ready}`, `/v2`,
//!   `/v2/models/{name}[/versions/{v}]` and its `/ready`, `/infer`, `/config`, `/stats`, with
//!   Triton's binary tensor data and compressed bodies ([`triton`]); and
//!   `/predict` (`/v2/models/{name}/predict`): rows as the data file has them, answered as
//!   `kiln predict` answers ([`protocol`]).
//! - Dynamic batching: requests wait in a bounded queue (a full one answers 503 at once);
//!   a free batcher instance takes up to `max_batch` rows or waits `max_wait` for more, runs
//!   one forward pass and answers each request ([`batcher`]).
//! - Language models: `/v2/models/{name}/generate` and `/generate_stream` (server-sent events,
//!   a piece of text as each token comes), as Triton's generate extension ([`generation`]).
//! - `/metrics` in Prometheus' text format ([`metrics`]), the served version in a header of
//!   every model answer, aliases followed while serving (polled, or on SIGHUP) without
//!   dropping a request, graceful shutdown on SIGTERM or Ctrl-C, a bearer token, a body limit.
//! - Connections ([`conn`]): header and body read timeouts, a connection limit answered with a
//!   503, and the soft open-file limit raised to the hard one, so that stalled clients cannot
//!   lock others out.

mod batcher;
mod conn;
mod generation;
pub mod metrics;
pub mod protocol;
mod queue;
mod routes;
mod triton;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::drift;
use crate::eval::LoadedRun;
use crate::registry::{Entry, EntryKind, Registry};

pub use batcher::BatchOptions;
pub use conn::Limits;
use routes::{error, json_response, parse_body, slot};

/// Drift scores are published once the window holds this many rows.
pub const MIN_DRIFT_ROWS: usize = 100;

/// The response header naming the model version that answered.
pub const VERSION_HEADER: &str = "kiln-model-version";

/// How the server runs.
pub struct Options {
    /// Registry references: `NAME`, `NAME@ALIAS`, `NAME/vN`, a run id, `latest` or a run folder
    /// (both followed as the run they name when the server starts).
    pub models: Vec<String>,
    pub registry: PathBuf,
    pub addr: SocketAddr,
    pub batch: BatchOptions,
    /// The async runtime's threads (HTTP, JSON, encoding rows; never a forward pass).
    pub http_threads: usize,
    /// `Authorization: Bearer <token>` required on everything but the health checks.
    pub token: Option<String>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Read timeouts and the connection limit.
    pub limits: Limits,
    /// Re-resolve the references this often (an alias moved: the new version is served).
    pub poll: Option<Duration>,
    /// Served rows kept for the drift scores of `/metrics`.
    pub window: usize,
    /// Encode a category never seen in training as all zeros (as `kiln predict` does)
    /// instead of answering 400.
    pub allow_unseen: bool,
    /// Called with the bound address once the server listens.
    pub on_ready: Option<Box<dyn FnOnce(SocketAddr) + Send>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
}

impl crate::usage::UserError for ServeError {
    fn is_usage(&self) -> bool {
        match self {
            ServeError::Registry(e) => crate::usage::UserError::is_usage(e),
            ServeError::Eval(e) => crate::usage::UserError::is_usage(e),
            _ => false,
        }
    }
}

/// One version of a model, loaded: what requests are encoded with and the batcher runs.
pub struct Version {
    pub label: String,
    /// The run as loaded (a language model's generations run on it).
    pub run: Mutex<LoadedRun>,
    /// Read without the model's lock: the request side's view.
    pub schema: Schema,
    /// A copy of the model per batcher instance; burn's tensors count references, so the
    /// copies share one set of weights.
    pub models: Vec<Mutex<kiln_models::Model>>,
    /// The run's task, input shape and device, copied out of `run` so that the instances
    /// read them without taking its lock.
    pub task: Arc<dyn crate::task::Task>,
    pub input: kiln_models::InputShape,
    pub device: burn::tensor::Device,
}

/// What encoding a request needs, outside the model's lock.
pub struct Schema {
    pub pre: crate::data::Preprocessor,
    pub spec: crate::data::DataSpec,
    pub columns: Vec<String>,
    pub classes: Option<Vec<String>>,
    pub metadata: Value,
    pub reference: Option<drift::Reference>,
    /// A language model: it answers `generate`, not `infer` or `predict`.
    pub generates: bool,
}

/// A served name: the reference it follows and the version it serves now.
struct Slot {
    name: String,
    reference: String,
    current: RwLock<Arc<Version>>,
    queue: queue::Sender<batcher::Job>,
    /// Places in line for a language model's generations (one runs at a time).
    generations: Arc<tokio::sync::Semaphore>,
    /// Served rows (preprocessed) and predicted classes, newest last.
    window: Mutex<VecDeque<(Vec<f32>, Option<usize>)>>,
}

struct App {
    slots: Vec<Slot>,
    registry: Registry,
    metrics: Arc<metrics::Metrics>,
    token: Option<String>,
    window: usize,
    allow_unseen: bool,
    /// Batcher instances per model (a reloaded version gets a model copy for each).
    instances: usize,
    /// Largest request body, bytes, decoded (a compressed body is decoded up to this).
    body_limit: usize,
    /// Time to send a body once the headers are in.
    body_timeout: Duration,
    /// Rows per forward pass, at most (Triton's `max_batch_size`).
    max_batch: usize,
}

fn load(registry: &Registry, reference: &str) -> Result<(Entry, LoadedRun), ServeError> {
    let (owner, entry) = registry.find_model(reference)?;
    let run = LoadedRun::open_model(&owner, &entry)?;
    Ok((entry, run))
}

/// What a slot follows as aliases move: the reference as written, except `latest` and a run
/// folder, which name a run only when the server starts; the slot then follows that run by its
/// id (its newest checkpoint, then its final model), never a newer, unrelated run.
fn followed(reference: &str, entry: &Entry) -> String {
    let names_a_run = crate::registry::lookup::names_a_run(reference);
    match &entry.kind {
        EntryKind::Final { run } | EntryKind::Checkpoint { run, .. } if names_a_run => run.clone(),
        _ => reference.to_string(),
    }
}

fn version(entry: &Entry, run: LoadedRun, instances: usize) -> Version {
    let name = served_name(entry);
    let metadata = protocol::metadata(&name, &entry.label, &run);
    let reference = drift::profile_of(&run).ok();
    Version {
        label: entry.label.clone(),
        schema: Schema {
            pre: run.pre.clone(),
            spec: run.data_spec.clone(),
            columns: crate::predict::input_columns(&run),
            classes: run.task.class_names().map(<[String]>::to_vec),
            metadata,
            reference,
            generates: matches!(
                run.pre.target,
                crate::data::preprocess::TargetEncoding::NextToken
            ),
        },
        models: (0..instances.max(1))
            .map(|_| Mutex::new(run.model.clone()))
            .collect(),
        task: Arc::clone(&run.task),
        input: run.mconf.input(),
        device: run.device.clone(),
        run: Mutex::new(run),
    }
}

/// The name a model is served under: its registry name, or a run's id.
fn served_name(entry: &Entry) -> String {
    match &entry.kind {
        EntryKind::Version { name, .. } => name.clone(),
        EntryKind::Final { run } | EntryKind::Checkpoint { run, .. } => run.clone(),
    }
}

/// Serves until SIGTERM or Ctrl-C; in-flight requests are answered first. Returns how many
/// requests were answered.
pub fn serve(mut opts: Options) -> Result<u64, ServeError> {
    if opts.models.is_empty() {
        return Err(ServeError::Refused("name a model to serve".into()));
    }
    let registry = Registry::new(&opts.registry);
    let metrics = Arc::new(metrics::Metrics::default());
    let mut slots = Vec::new();
    let mut workers = Vec::new();
    for reference in &opts.models {
        let (entry, run) = load(&registry, reference)?;
        let v = Arc::new(version(&entry, run, opts.batch.instances));
        let name = served_name(&entry);
        if slots.iter().any(|s: &Slot| s.name == name) {
            return Err(ServeError::Refused(format!(
                "{name} is named twice: one version per model name"
            )));
        }
        let (tx, rx) = queue::bounded(opts.batch.queue);
        workers.extend(batcher::start(&name, rx, opts.batch, &metrics)?);
        slots.push(Slot {
            name,
            reference: followed(reference, &entry),
            current: RwLock::new(v),
            queue: tx,
            generations: Arc::new(tokio::sync::Semaphore::new(opts.batch.queue.max(1))),
            window: Mutex::new(VecDeque::new()),
        });
    }
    let app = Arc::new(App {
        slots,
        registry,
        metrics,
        token: opts.token.clone().filter(|t| !t.is_empty()),
        window: opts.window,
        allow_unseen: opts.allow_unseen,
        instances: opts.batch.instances,
        body_limit: opts.body_limit,
        body_timeout: opts.limits.body_timeout,
        max_batch: opts.batch.max_batch,
    });
    let max_connections = conn::connection_limit(opts.limits.max_connections);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.http_threads.max(1))
        .enable_all()
        .build()?;
    let on_ready = opts.on_ready.take();
    let result = rt.block_on(run_server(
        Arc::clone(&app),
        opts,
        max_connections,
        on_ready,
    ));
    let answered = app.metrics.answered();
    // Every request has been answered: closing the queues ends the batchers.
    drop(app);
    drop(rt);
    for w in workers {
        let _ = w.join();
    }
    result.map(|()| answered)
}

async fn run_server(
    app: Arc<App>,
    opts: Options,
    max_connections: usize,
    on_ready: Option<Box<dyn FnOnce(SocketAddr) + Send>>,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    if let Some(f) = on_ready {
        f(addr);
    }
    if let Some(every) = opts.poll {
        tokio::spawn(follow_aliases(Arc::clone(&app), every));
    }
    tokio::spawn(reload_on_hangup(Arc::clone(&app)));
    let router = routes::router(&app, opts.body_limit);
    conn::serve(listener, router, opts.limits, max_connections, shutdown()).await?;
    Ok(())
}

/// SIGTERM (launchers, Kubernetes) or Ctrl-C.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn reload_on_hangup(app: Arc<App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        refresh(&app).await;
    }
}

async fn follow_aliases(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        refresh(&app).await;
    }
}

/// Re-resolves every reference; a slot whose reference now names another version loads it
/// (off the runtime) and serves it from the next request on. Requests already encoded finish
/// on the version they were encoded for.
async fn refresh(app: &Arc<App>) {
    for i in 0..app.slots.len() {
        let app2 = Arc::clone(app);
        let loaded = tokio::task::spawn_blocking(move || {
            let slot = &app2.slots[i];
            let (_, entry) = app2.registry.find_model(&slot.reference).ok()?;
            let now = slot.current.read().expect("slot lock").label.clone();
            if entry.label == now {
                return None;
            }
            match load(&app2.registry, &slot.reference) {
                Ok((entry, run)) => Some(Arc::new(version(&entry, run, app2.instances))),
                Err(e) => {
                    eprintln!(
                        "kiln serve: {} now names {}, which does not load: {e}",
                        slot.reference, entry.label
                    );
                    None
                }
            }
        })
        .await
        .ok()
        .flatten();
        if let Some(v) = loaded {
            let slot = &app.slots[i];
            eprintln!("kiln serve: {} -> {}", slot.reference, v.label);
            let mut window = slot.window.lock().expect("window lock");
            let old = std::mem::replace(&mut *slot.current.write().expect("slot lock"), v);
            window.clear();
            drop(window);
            // The old version is freed when its last queued request is answered.
            drop(old);
        }
    }
}

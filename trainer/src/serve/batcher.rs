//! The dynamic batcher: each served model has `instances` worker threads (Triton's model
//! instances) sharing its queue. A free instance takes queued requests, up to `max_batch` rows
//! or what arrives within `max_wait` of the first, runs one forward pass per model version
//! among them on its own copy of the model (the weights are shared), and answers each request
//! with its rows. While one instance computes, the next gathers a batch.
//!
//! Each instance runs inside its own rayon pool of `threads` threads, so the CPU backend's
//! parallel loops stay on that instance's threads: two one-thread instances on two cores hand
//! no operation to another thread, where one two-thread instance would wake a second thread
//! for every operation of a small batch.

use std::sync::Arc;
use std::time::Duration;

use super::Version;
use super::metrics::Metrics;
use super::queue::Receiver;
use crate::data::{Source, Split};
use crate::task::Prediction;

/// How requests are batched.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Rows per forward pass, at most (a larger request runs alone).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_wait: Duration,
    /// Requests waiting, at most; one more is answered 503.
    pub queue: usize,
    /// Worker threads per model, each with its own copy of the model.
    pub instances: usize,
    /// CPU threads each instance computes with.
    pub threads: usize,
}

impl BatchOptions {
    /// Two instances when there are two CPUs or more (one computes while the other gathers
    /// the next batch); they share the CPUs.
    pub fn auto_instances(cpus: usize) -> usize {
        cpus.clamp(1, 2)
    }
}

/// A request's rows, preprocessed for `version`, and where its answer goes.
pub struct Job {
    pub version: Arc<Version>,
    /// When the request was queued (its wait is counted in the model's statistics).
    pub queued_at: std::time::Instant,
    pub data: Split,
    pub reply: tokio::sync::oneshot::Sender<Answer>,
}

/// A request's answer: what `kiln predict` says of each row, the exported graph's outputs
/// (row-major each), and the predicted class indices (for the drift window).
pub struct Answer {
    pub predictions: Vec<Prediction>,
    pub outputs: Vec<(String, Vec<f32>)>,
    pub classes: Vec<usize>,
}

/// Starts the batcher of `model`: `opts.instances` threads; they end when the queue is
/// closed and empty.
pub fn start(
    model: &str,
    rx: Receiver<Job>,
    opts: BatchOptions,
    metrics: &Arc<Metrics>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..opts.instances.max(1))
        .map(|k| {
            let (model, rx, metrics) = (model.to_string(), rx.clone(), Arc::clone(metrics));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(opts.threads.max(1))
                .thread_name(move |t| format!("kiln-serve-{k}.{t}"))
                .build()
                .map_err(std::io::Error::other)?;
            std::thread::Builder::new()
                .name(format!("kiln-batcher-{model}-{k}"))
                .spawn(move || pool.install(|| instance(k, &model, &rx, opts, &metrics)))
        })
        .collect()
}

/// Instance `k`'s loop: a batch off the queue, its forward passes, again.
fn instance(k: usize, model: &str, rx: &Receiver<Job>, opts: BatchOptions, metrics: &Metrics) {
    while let Some(mut jobs) = rx.next_batch(opts.max_batch, opts.max_wait, |j| j.data.len()) {
        metrics
            .queue_depth
            .fetch_sub(jobs.len() as i64, std::sync::atomic::Ordering::Relaxed);
        for j in &jobs {
            metrics.queued(model, j.queued_at.elapsed().as_secs_f64());
        }
        // One forward pass per version (an alias moved while these waited).
        while !jobs.is_empty() {
            let v = Arc::clone(&jobs[0].version);
            let (same, rest): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| Arc::ptr_eq(&j.version, &v));
            jobs = rest;
            metrics.batch(model, same.iter().map(|j| j.data.len()).sum());
            // A panic in a forward pass (a backend out of memory) answers its jobs 503 (their
            // reply senders are dropped) and the instance goes on.
            let started = std::time::Instant::now();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&v, k, same)));
            metrics.computed(model, started.elapsed().as_secs_f64());
            if ran.is_err() {
                eprintln!(
                    "kiln serve: a forward pass of {model} failed; its requests were answered 503"
                );
            }
        }
    }
}

/// One forward pass over the jobs' rows on instance `k`'s model, then each job's share of
/// the answer.
fn run(v: &Version, k: usize, jobs: Vec<Job>) {
    let model = v.models[k % v.models.len()]
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match one_table(&jobs) {
        Some(data) => {
            let answer = answer_of(v, &model, &data);
            send_parts(answer, &data, jobs);
        }
        // Text of different lengths: a pass per request.
        None => {
            for j in jobs {
                let a = answer_of(v, &model, &j.data);
                let _ = j.reply.send(a);
            }
        }
    }
}

/// The rows of every job as one table, when every job is a table (`None` otherwise).
fn one_table(jobs: &[Job]) -> Option<Split> {
    let tables: Vec<&crate::data::Dataset> = jobs.iter().filter_map(|j| j.data.table()).collect();
    if tables.len() == jobs.len() {
        // Rows of every job, one batch.
        let d = tables[0].d;
        let n: usize = tables.iter().map(|t| t.n).sum();
        let mut x = Vec::with_capacity(n * d);
        for t in &tables {
            x.extend_from_slice(&t.x);
        }
        Some(Split::Table(crate::data::Dataset {
            x,
            y: crate::data::Targets::Values(vec![0.0; n]),
            n,
            d,
        }))
    } else {
        None
    }
}

/// `model`'s answer to every row of `data`: predictions, named outputs and class indices
/// (empty when the rows cannot be read or give no input).
fn answer_of(v: &Version, model: &kiln_models::Model, data: &Split) -> Answer {
    let idx: Vec<usize> = (0..data.len()).collect();
    // Served requests are held in memory: reading them cannot fail.
    let Ok(batch) = data.fetch(&idx, None) else {
        return Answer {
            predictions: Vec::new(),
            outputs: Vec::new(),
            classes: Vec::new(),
        };
    };
    let batch = batch.upload(v.input, &v.device);
    let Some(x) = batch.input else {
        return Answer {
            predictions: Vec::new(),
            outputs: Vec::new(),
            classes: Vec::new(),
        };
    };
    let out = model.forward(x);
    let predictions = v.task.predictions(out.clone());
    let names = v.task.output_names();
    let values = v.task.output_values(out);
    let classes = match v.task.class_names() {
        Some(names) => predictions
            .iter()
            .map(|p| {
                names
                    .iter()
                    .position(|n| Some(n.as_str()) == p.prediction.as_str())
                    .unwrap_or(0)
            })
            .collect(),
        None => Vec::new(),
    };
    Answer {
        predictions,
        outputs: names.iter().map(|n| n.to_string()).zip(values).collect(),
        classes,
    }
}

/// Sends each job, in order, its rows' share of `answer`, the answer to `data`: all the jobs'
/// rows in one batch.
fn send_parts(mut answer: Answer, data: &Split, jobs: Vec<Job>) {
    let widths: Vec<usize> = answer
        .outputs
        .iter()
        .map(|(_, v)| v.len() / data.len().max(1))
        .collect();
    let mut start = 0;
    for j in jobs {
        let n = j.data.len();
        let part = Answer {
            predictions: answer.predictions[start..start + n].to_vec(),
            outputs: answer
                .outputs
                .iter_mut()
                .zip(&widths)
                .map(|((name, v), &w)| (name.clone(), v[start * w..(start + n) * w].to_vec()))
                .collect(),
            classes: answer
                .classes
                .get(start..start + n)
                .map(<[usize]>::to_vec)
                .unwrap_or_default(),
        };
        start += n;
        let _ = j.reply.send(part);
    }
}

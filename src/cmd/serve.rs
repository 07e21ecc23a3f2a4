//! `kiln serve MODEL...`: registry models over HTTP until SIGTERM or Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kiln_trainer::serve::{self, BatchOptions, Options};

use super::{Usage, default_registry, usage, within};
use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let opts = options(&args)?;
    let answered = serve::serve(opts)?;
    eprintln!("kiln serve: stopped after answering {answered} requests");
    Ok(0)
}

/// The server's options from the flags, each checked against its range (a usage error, exit
/// 2, before any model loads).
fn options(args: &ServeArgs) -> anyhow::Result<Options> {
    let host: IpAddr = args.host.parse().map_err(|_| {
        Usage(format!(
            "--host {:?}: an IP address (127.0.0.1, 0.0.0.0, ::1)",
            args.host
        ))
    })?;
    let batch = batch_options(args)?;
    let http_threads = args.http_threads.unwrap_or((available_cpus() / 2).max(1));
    within("--http-threads", http_threads, 1, 1024)?;
    within("--body-limit", args.body_limit, 1, usize::MAX)?;
    within("--drift-window", args.drift_window, 0, 1_000_000)?;
    if !(args.poll == 0.0 || (0.01..=86_400.0).contains(&args.poll)) {
        return usage(format!(
            "--poll {}: seconds, 0 (SIGHUP only) or 0.01 to 86400",
            args.poll
        ));
    }
    within("--header-timeout", args.header_timeout, 0.01, 86_400.0)?;
    within("--body-timeout", args.body_timeout, 0.01, 86_400.0)?;
    if let Some(n) = args.max_connections {
        within("--max-connections", n, 1, 1 << 20)?;
    }
    Ok(Options {
        models: args.models.clone(),
        registry: default_registry(args.registry.clone()),
        addr: SocketAddr::new(host, args.port),
        batch,
        http_threads,
        token: args
            .token
            .clone()
            .or_else(|| std::env::var("KILN_SERVE_TOKEN").ok()),
        body_limit: args.body_limit,
        limits: serve::Limits {
            header_timeout: Duration::from_secs_f64(args.header_timeout),
            body_timeout: Duration::from_secs_f64(args.body_timeout),
            max_connections: args.max_connections,
        },
        poll: (args.poll > 0.0).then(|| Duration::from_secs_f64(args.poll)),
        window: args.drift_window,
        allow_unseen: args.allow_unseen,
        on_ready: Some(Box::new(move |addr| {
            // One line a launcher (or a test) can wait for.
            println!("kiln serve: listening on http://{addr}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        })),
    })
}

/// Dynamic batching's flags: batch size, wait, queue, instances and their threads.
fn batch_options(args: &ServeArgs) -> anyhow::Result<BatchOptions> {
    within("--max-batch", args.max_batch, 1, usize::MAX)?;
    within("--queue", args.queue, 1, 1_000_000)?;
    let cpus = available_cpus();
    let instances = args
        .instances
        .unwrap_or_else(|| BatchOptions::auto_instances(cpus));
    within("--instances", instances, 1, 64)?;
    let threads = args.threads.unwrap_or((cpus / instances).max(1));
    within("--threads", threads, 1, 1024)?;
    if instances * threads > 1024 {
        return usage(format!(
            "--instances {instances} x --threads {threads}: at most 1024 threads per model"
        ));
    }
    within("--max-wait-ms", args.max_wait_ms, 0.0, 10_000.0)?;
    Ok(BatchOptions {
        max_batch: args.max_batch,
        max_wait: Duration::from_secs_f64(args.max_wait_ms / 1e3),
        queue: args.queue,
        instances,
        threads,
    })
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

//! `kiln serve MODEL...`: registry models over HTTP until SIGTERM or Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kiln_trainer::serve::{self, BatchOptions, Options};

use super::{Usage, default_registry};
use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let host: IpAddr = args.host.parse().map_err(|_| {
        Usage(format!(
            "--host {:?}: an IP address (127.0.0.1, 0.0.0.0, ::1)",
            args.host
        ))
    })?;
    for (flag, value) in [
        ("--max-batch", Some(args.max_batch)),
        ("--queue", Some(args.queue)),
        ("--body-limit", Some(args.body_limit)),
        ("--instances", args.instances),
        ("--threads", args.threads),
        ("--http-threads", args.http_threads),
    ] {
        if value == Some(0) {
            return Err(Usage(format!("{flag} 0: at least 1")).into());
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let instances = args
        .instances
        .unwrap_or_else(|| BatchOptions::auto_instances(cpus));
    if instances > 64 {
        return Err(Usage(format!("--instances {instances}: at most 64")).into());
    }
    let threads = args.threads.unwrap_or((cpus / instances).max(1));
    if instances * threads > 1024 {
        return Err(Usage(format!(
            "--instances {instances} x --threads {threads}: at most 1024 threads per model"
        ))
        .into());
    }
    let http_threads = args.http_threads.unwrap_or((cpus / 2).max(1));
    if http_threads > 1024 {
        return Err(Usage(format!("--http-threads {http_threads}: at most 1024")).into());
    }
    if !(args.max_wait_ms >= 0.0 && args.max_wait_ms <= 10_000.0) {
        return Err(Usage(format!("--max-wait-ms {}: 0 to 10000", args.max_wait_ms)).into());
    }
    if !(args.poll == 0.0 || (0.01..=86_400.0).contains(&args.poll)) {
        return Err(Usage(format!(
            "--poll {}: seconds, 0 (SIGHUP only) or 0.01 to 86400",
            args.poll
        ))
        .into());
    }
    let opts = Options {
        models: args.models.clone(),
        registry: default_registry(args.registry.clone()),
        addr: SocketAddr::new(host, args.port),
        batch: BatchOptions {
            max_batch: args.max_batch,
            max_wait: Duration::from_secs_f64(args.max_wait_ms / 1e3),
            queue: args.queue,
            instances,
            threads,
        },
        http_threads,
        token: args
            .token
            .clone()
            .or_else(|| std::env::var("KILN_SERVE_TOKEN").ok()),
        body_limit: args.body_limit,
        poll: (args.poll > 0.0).then(|| Duration::from_secs_f64(args.poll)),
        window: args.drift_window,
        allow_unseen: args.allow_unseen,
        on_ready: Some(Box::new(move |addr| {
            // One line a launcher (or a test) can wait for.
            println!("kiln serve: listening on http://{addr}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        })),
    };
    let answered = serve::serve(opts)?;
    eprintln!("kiln serve: stopped after answering {answered} requests");
    Ok(0)
}

//! Connections: the accept loop, its limit and its read timeouts.
//!
//! - A client has `header_timeout` to send a request's line and headers, counted from the
//!   moment the server waits for them: a new connection, or a kept-alive one between
//!   requests (hyper's header read timer). An idle or stalled connection is closed then.
//! - The body has `body_timeout` once the headers are in (the `read_body` layer of
//!   [`super`]): a client stalled mid-body gets a 408 and the connection is closed.
//! - At most `max_connections` are open at once. One more is answered `503` with a JSON
//!   error and closed, instead of waiting in the kernel's backlog behind stalled clients.
//! - The soft open-file limit is raised to the hard one at start ([`raise_open_file_limit`]),
//!   and the connection limit stays under it, so that accepting never fails for want of a
//!   file descriptor.
//! - Shutdown stops accepting, lets every connection finish the request it is answering,
//!   closes idle ones, and returns once all are gone.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's headers (and the longest a kept-alive connection idles).
    pub header_timeout: Duration,
    /// Time to send a request's body, once its headers are in.
    pub body_timeout: Duration,
    /// Connections open at once, at most (`None`: [`DEFAULT_MAX_CONNECTIONS`]); lowered to
    /// what the open-file limit allows ([`connection_limit`]).
    pub max_connections: Option<usize>,
}

/// Connections open at once when none is asked for.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Files the server keeps open besides its connections: the registry, the model files being
/// (re)loaded, standard streams, the runtime's own descriptors, refusals being written.
pub const RESERVED_FILES: u64 = 128;

/// Refused connections being answered at once, at most; past this a refused connection is
/// closed without an answer (each answer holds a descriptor for up to a second).
const REFUSALS_IN_FLIGHT: usize = 64;

/// Raises the soft limit on open files to the hard limit, as servers do (nginx's
/// `worker_rlimit_nofile`, systemd's services); returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// The connection limit to serve with: the one asked for (else the default), after the soft
/// open-file limit is raised to the hard one, and no more than the files allow (a limit
/// asked for and lowered says so on stderr).
pub fn connection_limit(asked: Option<usize>) -> usize {
    let open_files = raise_open_file_limit();
    let allowed = connections_allowed(open_files);
    let wanted = asked.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if wanted > allowed && asked.is_some() {
        eprintln!(
            "kiln serve: --max-connections {wanted} is more than the open-file limit \
             ({open_files}) allows; serving at most {allowed} at once"
        );
    }
    wanted.min(allowed)
}

/// The most connections `open_files` descriptors allow, leaving [`RESERVED_FILES`].
pub fn connections_allowed(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Accepts and serves connections with `router`, at most `max_connections` at once, until
/// `shutdown` completes, then waits for the open ones to finish what they are answering.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max = max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let (stop, stopping) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if let Ok(place) = Arc::clone(&refusals).try_acquire_owned() {
                tokio::spawn(refuse(stream, max, place));
            }
            continue;
        };
        // Answers are small and written whole: send them at once.
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopping.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Each connection holds a slot until it ends: all of them back means all have ended.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// An accept that failed: a connection reset before it was taken is nothing; out of
/// descriptors or memory, wait a little for connections to close rather than spin.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Answers a connection over the limit with a 503 and closes it. What the client sent is
/// read first, so that closing does not reset the connection before the answer arrives.
async fn refuse(mut stream: TcpStream, max: usize, _place: OwnedSemaphorePermit) {
    let body = serde_json::json!({
        "error": format!(
            "the server has its limit of {max} connections open; try again (--max-connections)"
        )
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await;
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_descriptors_for_the_server() {
        assert_eq!(connections_allowed(1024), 1024 - RESERVED_FILES as usize);
        assert_eq!(connections_allowed(RESERVED_FILES), 1);
        assert_eq!(connections_allowed(0), 1);
        assert!(connections_allowed(u64::MAX) > 1 << 30);
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let soft = raise_open_file_limit();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert_eq!(soft, now.rlim_cur);
    }
}

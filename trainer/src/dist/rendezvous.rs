//! The rendezvous of torchrun-style launches: rank 0 listens at `MASTER_ADDR:MASTER_PORT`,
//! every other rank connects, says its rank and world size, and receives rank 0's 128 bytes
//! (NCCL's communicator id). Nothing else travels here: the training's traffic is NCCL's.
//!
//! tokio waits on the sockets; a rank that does not show up within the timeout is an error
//! naming it, on rank 0, and a rank 0 that never listens is one on the others.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The first bytes of a kiln rank's hello: anything else on the port is not a rank.
const MAGIC: &[u8; 8] = b"kiln-rdv";

/// A listening socket handed to rank 0 by the process that started it (`kiln train --devices`
/// binds the port itself and passes the socket down), so no other process can take the port
/// between choosing it and listening on it.
pub const INHERITED_FD: &str = "KILN_RENDEZVOUS_FD";

/// The listener `INHERITED_FD` names, if any.
#[cfg(unix)]
pub fn inherited_listener() -> Option<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var(INHERITED_FD).ok()?.parse().ok()?;
    // Checked to be an open socket before it is owned: a stale variable must not make this
    // process close a descriptor it uses for something else.
    // SAFETY: fstat only reads the descriptor's metadata into a zeroed struct.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    // SAFETY: the descriptor is an open socket that the parent passed to this process alone.
    is_socket.then(|| unsafe { std::net::TcpListener::from_raw_fd(fd) })
}

#[cfg(not(unix))]
pub fn inherited_listener() -> Option<std::net::TcpListener> {
    None
}

/// Rank 0's `payload` on every rank; rank 0 passes `Some`, the others `None`. Rank 0 listens on
/// `listener` when given (already bound), else binds `port` itself.
pub fn exchange(
    addr: &str,
    port: u16,
    rank: usize,
    world: usize,
    payload: Option<[u8; 128]>,
    timeout: Duration,
    listener: Option<std::net::TcpListener>,
) -> Result<[u8; 128], String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("the rendezvous cannot start: {e}"))?;
    let work = async {
        match payload {
            Some(p) => serve(port, world, p, listener).await.map(|()| p),
            None => join(addr, port, rank, world).await,
        }
    };
    rt.block_on(async {
        tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
            Err(format!(
                "the rendezvous at {addr}:{port} did not complete within {} s: {}",
                timeout.as_secs(),
                if rank == 0 {
                    "some ranks never connected (are they running, with the same MASTER_ADDR and MASTER_PORT?)"
                } else {
                    "rank 0 is not listening there (is it running? is the port reachable?)"
                }
            ))
        })
    })
}

async fn serve(
    port: u16,
    world: usize,
    payload: [u8; 128],
    bound: Option<std::net::TcpListener>,
) -> Result<(), String> {
    let cannot =
        |e: std::io::Error| format!("rank 0 cannot listen on port {port} (MASTER_PORT): {e}");
    let listener = match bound {
        Some(l) => {
            l.set_nonblocking(true).map_err(cannot)?;
            TcpListener::from_std(l).map_err(cannot)?
        }
        None => TcpListener::bind(("0.0.0.0", port)).await.map_err(cannot)?,
    };
    let mut seen = vec![false; world];
    seen[0] = true;
    let mut waiting = Vec::new();
    while seen.iter().any(|s| !s) {
        let (mut s, peer) = listener
            .accept()
            .await
            .map_err(|e| format!("the rendezvous: {e}"))?;
        // A stray connection (a port scanner, a health check) that says nothing within a few
        // seconds is dropped, not waited for.
        let mut hello = [0u8; 24];
        match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hello)).await {
            Ok(Ok(_)) if &hello[..8] == MAGIC => {}
            _ => continue,
        }
        let r = u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes")) as usize;
        let w = u64::from_le_bytes(hello[16..].try_into().expect("8 bytes")) as usize;
        if w != world {
            return Err(format!(
                "rank {r} at {peer} was told the world has {w} ranks, rank 0 {world}"
            ));
        }
        match seen.get_mut(r) {
            Some(s) if !*s => *s = true,
            Some(_) => {
                return Err(format!(
                    "two processes at the rendezvous say they are rank {r}"
                ));
            }
            None => return Err(format!("{peer} says it is rank {r} of {world}")),
        }
        waiting.push(s);
    }
    for mut s in waiting {
        s.write_all(&payload)
            .await
            .map_err(|e| format!("the rendezvous: {e}"))?;
    }
    Ok(())
}

async fn join(addr: &str, port: u16, rank: usize, world: usize) -> Result<[u8; 128], String> {
    // Rank 0 may start later than this rank: retry until the timeout.
    let mut s = loop {
        match TcpStream::connect((addr, port)).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut hello = [0u8; 24];
    hello[..8].copy_from_slice(MAGIC);
    hello[8..16].copy_from_slice(&(rank as u64).to_le_bytes());
    hello[16..].copy_from_slice(&(world as u64).to_le_bytes());
    s.write_all(&hello)
        .await
        .map_err(|e| format!("the rendezvous at {addr}:{port}: {e}"))?;
    let mut payload = [0u8; 128];
    s.read_exact(&mut payload).await.map_err(|e| {
        format!("the rendezvous at {addr}:{port} closed before rank 0 answered ({e}); see rank 0's error")
    })?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listening socket on a free port, held for the whole test (no other process can take
    /// the port meanwhile).
    fn listener() -> (std::net::TcpListener, u16) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[test]
    fn every_rank_gets_rank_0s_bytes_and_strays_are_ignored() {
        let (l, port) = listener();
        let id = [7u8; 128];
        let t = Duration::from_secs(20);
        // A stray client (an HTTP health check) connects first, so rank 0 accepts it first:
        // it must not be taken for a rank.
        let mut stray = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut stray, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let others: Vec<_> = (1..4)
            .map(|r| std::thread::spawn(move || exchange("127.0.0.1", port, r, 4, None, t, None)))
            .collect();
        assert_eq!(
            exchange("127.0.0.1", port, 0, 4, Some(id), t, Some(l)).unwrap(),
            id
        );
        for o in others {
            assert_eq!(o.join().unwrap().unwrap(), id);
        }
    }

    #[test]
    fn ranks_that_start_before_rank_0_wait_for_it() {
        // The port is chosen, then the others start and retry until rank 0 listens on it.
        let (l, port) = listener();
        let t = Duration::from_secs(20);
        let one = std::thread::spawn(move || exchange("127.0.0.1", port, 1, 2, None, t, None));
        let two = std::thread::spawn(move || {
            // Rank 0 starts once rank 1's thread is running.
            exchange("127.0.0.1", port, 0, 2, Some([3; 128]), t, Some(l))
        });
        assert_eq!(one.join().unwrap().unwrap(), [3; 128]);
        assert_eq!(two.join().unwrap().unwrap(), [3; 128]);
    }

    #[test]
    fn a_missing_rank_is_an_error_within_the_timeout() {
        let (l, port) = listener();
        let t = Duration::from_millis(600);
        let one = std::thread::spawn(move || exchange("127.0.0.1", port, 1, 3, None, t, None));
        let e = exchange("127.0.0.1", port, 0, 3, Some([1; 128]), t, Some(l)).unwrap_err();
        assert!(e.contains("some ranks never connected"), "{e}");
        let e = one.join().unwrap().unwrap_err();
        assert!(
            e.contains("closed before rank 0 answered") || e.contains("did not complete"),
            "{e}"
        );
        // And a rank whose rank 0 never answers: a socket that listens but is not rank 0.
        let (_silent, port) = listener();
        let e = exchange("127.0.0.1", port, 2, 3, None, t, None).unwrap_err();
        assert!(e.contains("rank 0 is not listening"), "{e}");
    }
}

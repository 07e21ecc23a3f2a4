//! Ends the process when a collective waits too long: a missing, hung or dead rank otherwise
//! leaves the others blocked inside MPI or NCCL forever.
//!
//! Arming and disarming are two atomic stores (they happen every step, on the hot path); a
//! thread that sleeps half a second at a time checks the deadline. It never spins, and it wakes
//! no one: on a machine whose cores are all busy with ranks, waking a thread per step costs a
//! context switch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct State {
    /// Milliseconds since `origin` when the current collective started, plus one; 0: none.
    armed_at: AtomicU64,
    timeout_ms: AtomicU64,
    what: Mutex<String>,
    origin: Instant,
}

pub struct Watchdog {
    state: Arc<State>,
}

/// Disarms the watchdog when dropped (the collective returned).
pub struct Disarm<'a>(&'a Watchdog);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        self.0.state.armed_at.store(0, Ordering::SeqCst);
    }
}

const TICK: Duration = Duration::from_millis(500);

impl Watchdog {
    pub fn start(rank: usize, world: usize) -> Self {
        let state = Arc::new(State {
            armed_at: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(u64::MAX),
            what: Mutex::new(String::new()),
            origin: Instant::now(),
        });
        let watched = Arc::clone(&state);
        std::thread::Builder::new()
            .name("kiln-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let at = watched.armed_at.load(Ordering::SeqCst);
                    if at == 0 {
                        continue;
                    }
                    let now = watched.origin.elapsed().as_millis() as u64 + 1;
                    let timeout = watched.timeout_ms.load(Ordering::SeqCst);
                    if now.saturating_sub(at) < timeout
                        || watched.armed_at.load(Ordering::SeqCst) != at
                    {
                        continue;
                    }
                    let what = watched
                        .what
                        .lock()
                        .map(|w| w.clone())
                        .unwrap_or_default();
                    eprintln!(
                        "error: rank {rank} of {world}: no answer from the other ranks after {} s in {what}: a rank is missing, hung or dead (see its own error); raise distributed.timeout_s if ranks are merely slow",
                        timeout / 1000
                    );
                    // The main thread is blocked inside the engine: end the process from here,
                    // without running exit handlers that could block.
                    #[cfg(unix)]
                    // SAFETY: _exit takes no locks and runs no handlers.
                    unsafe {
                        libc::_exit(1)
                    };
                    #[cfg(not(unix))]
                    std::process::abort();
                }
            })
            .expect("the OS can start the watchdog thread");
        Self { state }
    }

    /// Starts the clock on a collective named `what`, for `timeout`.
    pub fn arm(&self, timeout: Duration, what: String) -> Disarm<'_> {
        let s = &self.state;
        if let Ok(mut w) = s.what.lock() {
            *w = what;
        }
        s.timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::SeqCst);
        s.armed_at
            .store(s.origin.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        Disarm(self)
    }
}

//! Ends the process when a collective waits too long: a missing, hung or dead rank otherwise
//! leaves the others blocked inside MPI or NCCL forever.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

struct Armed {
    deadline: Instant,
    timeout: Duration,
    what: String,
}

pub struct Watchdog {
    slot: Arc<(Mutex<Option<Armed>>, Condvar)>,
}

/// Disarms the watchdog when dropped (the collective returned).
pub struct Disarm<'a>(&'a Watchdog);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        let (lock, cv) = &*self.0.slot;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = None;
        cv.notify_one();
    }
}

impl Watchdog {
    /// A thread that sleeps until armed, then until the deadline or the disarm; it never
    /// spins.
    pub fn start(rank: usize, world: usize) -> Self {
        let slot: Arc<(Mutex<Option<Armed>>, Condvar)> =
            Arc::new((Mutex::new(None), Condvar::new()));
        let watched = Arc::clone(&slot);
        std::thread::Builder::new()
            .name("kiln-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*watched;
                let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    match g.as_ref() {
                        None => g = cv.wait(g).unwrap_or_else(|p| p.into_inner()),
                        Some(a) => {
                            let now = Instant::now();
                            if now >= a.deadline {
                                eprintln!(
                                    "error: rank {rank} of {world}: no answer from the other ranks after {} s in {}: a rank is missing, hung or dead (see its own error); raise distributed.timeout_s if ranks are merely slow",
                                    a.timeout.as_secs(),
                                    a.what
                                );
                                // The main thread is blocked inside the engine: end the process
                                // from here, without running exit handlers that could block.
                                #[cfg(unix)]
                                // SAFETY: _exit is async-signal-safe and takes no locks.
                                unsafe {
                                    libc::_exit(1)
                                };
                                #[cfg(not(unix))]
                                std::process::abort();
                            }
                            let left = a.deadline - now;
                            g = cv.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
                        }
                    }
                }
            })
            .expect("the OS can start the watchdog thread");
        Self { slot }
    }

    pub fn arm(&self, timeout: Duration, what: String) -> Disarm<'_> {
        let (lock, cv) = &*self.slot;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(Armed {
            deadline: Instant::now() + timeout,
            timeout,
            what,
        });
        cv.notify_one();
        Disarm(self)
    }
}

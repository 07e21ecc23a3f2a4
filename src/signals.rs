//! Signals and the process environment: Ctrl-C and SIGUSR1 stop a training after the current
//! step with a checkpoint; SIGTERM from a launcher ends a rank saying why; `--devices` passes
//! signals on to the ranks it started. Every handler only does async-signal-safe work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Ctrl-C once: stop after the current step and save. Twice: exit now.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let installed = ctrlc_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: stopping after this step and saving a checkpoint (Ctrl-C again to quit now)"
        );
    });
    if let Err(e) = installed {
        eprintln!("warning: cannot catch Ctrl-C ({e}); an interrupt will not save a checkpoint");
    }
    stop_on_sigusr1(&stop);
    stop
}

/// SIGUSR1 asks for what a first Ctrl-C does: stop after this step and save. Launchers pass it
/// on (mpirun forwards SIGUSR1 to every rank; Slurm sends it before a time limit with
/// `--signal=USR1@SECONDS`), whereas Ctrl-C under mpirun becomes SIGTERM, which ends at once.
fn stop_on_sigusr1(stop: &Arc<AtomicBool>) {
    #[cfg(unix)]
    {
        static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
        extern "C" fn usr1(_: libc::c_int) {
            if let Some(f) = FLAG.get() {
                f.store(true, Ordering::SeqCst);
            }
        }
        if FLAG.set(Arc::clone(stop)).is_ok() {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(libc::SIGUSR1, usr1 as *const () as libc::sighandler_t);
            }
        }
    }
}

/// Installs a Ctrl-C handler (once per process).
pub fn ctrlc_handler(f: impl FnMut() + Send + 'static) -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(f)
}

/// The ranks `--devices` started and has not reaped, for [`forward_signals`]'s handler.
pub static RANK_PIDS: [std::sync::atomic::AtomicI32; 64] =
    [const { std::sync::atomic::AtomicI32::new(0) }; 64];

/// Passes SIGUSR1 (stop with a checkpoint) and SIGTERM (stop now) sent to `--devices`'s
/// process on to the ranks it started, as mpirun does; the ranks' exit codes then say how
/// they ended.
pub fn forward_signals() {
    #[cfg(unix)]
    {
        extern "C" fn forward(sig: libc::c_int) {
            for p in &RANK_PIDS {
                let pid = p.load(Ordering::SeqCst);
                if pid > 0 {
                    // SAFETY: kill(2) is async-signal-safe.
                    unsafe {
                        libc::kill(pid, sig);
                    }
                }
            }
        }
        // SAFETY: the handler only loads atomics and calls kill(2), async-signal-safe.
        unsafe {
            libc::signal(libc::SIGUSR1, forward as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        }
    }
}

/// A launcher that stops the job (another rank failed, or the job was cancelled) sends
/// SIGTERM; say so before going, since the cause is in another rank's output.
pub fn on_launcher_stop(rank: usize, world: usize) {
    #[cfg(unix)]
    {
        static MESSAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        extern "C" fn stop(_: libc::c_int) {
            if let Some(m) = MESSAGE.get() {
                // SAFETY: write(2) and _exit(2) are async-signal-safe.
                unsafe {
                    libc::write(2, m.as_ptr().cast(), m.len());
                    libc::_exit(143);
                }
            }
        }
        let _ = MESSAGE.set(
            format!(
                "error: rank {rank} of {world}: stopped by the launcher (SIGTERM): another rank failed or the job was cancelled (see the first error above); once a checkpoint exists, continue with `kiln train --resume RUN` under the same launcher (`kiln runs list` shows the run)\n"
            )
            .into_bytes(),
        );
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            libc::signal(libc::SIGTERM, stop as *const () as libc::sighandler_t);
        }
    }
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" once per adapter probe
/// on a headless machine (a server, CI). Point it at a private folder when it is unset, so
/// `kiln devices` and errors stay readable. Runs first in `main`, before any thread exists.
pub fn quiet_headless_vulkan() {
    #[cfg(all(unix, feature = "wgpu"))]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        use std::os::unix::fs::DirBuilderExt;
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let dir = std::env::temp_dir().join(format!("kiln-runtime-{uid}"));
        // Created now or before; used only if it is ours and private (not a folder someone
        // else planted in the shared temp dir).
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        let ours = std::fs::symlink_metadata(&dir).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0
        });
        if ours {
            // SAFETY: single-threaded here (the first thing `main` does).
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}

/// burn materialises a resumed optimizer's state on its *default* device and moves it to each
/// parameter's device at the next step. With `cuda` compiled in that default is CUDA whatever
/// `--device` says: without a driver it panics, and on a machine with several GPUs every rank
/// would put its copy on GPU 0. kiln names its device everywhere else, so the default only
/// stages such state: make it the host (burn's `flex`), as PyTorch's `map_location="cpu"`,
/// unless the user set `BURN_DEVICE`. Runs first in `main`, before any thread exists.
pub fn stage_on_host() {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: single-threaded here (the first thing `main` does).
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
}

//! `kiln train --devices cuda:all`: one process per GPU of this machine, started, watched and
//! signalled here (the launcher a machine without mpirun or torchrun needs).

use std::sync::atomic::Ordering;

use super::{Usage, usage};
use crate::signals::{RANK_PIDS, ctrlc_handler, forward_signals};

/// `--devices cuda:all`: starts one kiln per GPU of this machine with torchrun-style variables
/// (they meet at a local rendezvous and all-reduce through NCCL), waits for them, and stops
/// the others when one fails.
pub fn run(devices: &str) -> anyhow::Result<u8> {
    if kiln_trainer::dist::Topology::from_env()
        .map_err(Usage)?
        .is_some()
    {
        return usage(
            "--devices starts its own processes, but a launcher (mpirun, srun, torchrun) already started this one: use --device",
        );
    }
    let list = devices.strip_prefix("cuda:").ok_or_else(|| {
        Usage(format!(
            "--devices {devices:?}: use cuda:all or cuda:N,M,... (one process per GPU); CPUs scale with mpirun -np N"
        ))
    })?;
    let listed = listed_devices(devices, list)?;
    if !cfg!(feature = "nccl") {
        return usage(
            "--devices needs NCCL: build kiln with `--features cuda,nccl`, or launch with `mpirun -np N kiln train CONFIG --device cuda` on an MPI build",
        );
    }
    let found = kiln_trainer::backend::cuda_devices().len();
    let chosen: Vec<usize> = listed.unwrap_or_else(|| (0..found).collect());
    if found == 0 {
        anyhow::bail!("--devices: no CUDA GPU here (`kiln devices` lists what this build can use)");
    }
    if let Some(bad) = chosen.iter().find(|&&i| i >= found) {
        return usage(format!(
            "--devices: there is no cuda:{bad}; this machine has {found} (cuda:0 to cuda:{})",
            found - 1
        ));
    }
    // Rank 0's rendezvous socket is bound here and handed down to it, so the port cannot be
    // taken by another process between choosing it and listening on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| anyhow::anyhow!("--devices: no free local port: {e}"))?;
    let port = listener.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let args = rank_args();
    let visible: Vec<String> = chosen.iter().map(usize::to_string).collect();
    let world = chosen.len();
    // Ctrl-C reaches every process of the terminal: the ranks stop together and save; this
    // one waits for them. SIGUSR1 and SIGTERM sent to this process are passed on to the ranks.
    let _ = ctrlc_handler(|| {});
    forward_signals();
    let mut children = Vec::new();
    let mut listener = Some(listener);
    for rank in 0..world {
        let mut command = std::process::Command::new(&exe);
        command
            .args(&args)
            .env("CUDA_VISIBLE_DEVICES", visible.join(","))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if rank == 0
            && let Some(l) = &listener
        {
            inherit(&mut command, l);
        }
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("--devices: cannot start rank {rank}: {e}"))?;
        // Rank 0 holds the socket now.
        listener = None;
        RANK_PIDS[rank.min(RANK_PIDS.len() - 1)].store(child.id() as i32, Ordering::SeqCst);
        children.push(child);
    }
    Ok(supervise(children))
}

/// The GPU indices `--devices cuda:N,M,...` lists (`None` for `cuda:all`); an index that is
/// not a number, or one listed twice, is a usage error.
fn listed_devices(devices: &str, list: &str) -> anyhow::Result<Option<Vec<usize>>> {
    if list == "all" {
        return Ok(None);
    }
    let listed: Vec<usize> = list
        .split(',')
        .map(|i| {
            i.trim()
                .parse::<usize>()
                .map_err(|_| Usage(format!("--devices {devices:?}: {i:?} is not a GPU index")))
        })
        .collect::<Result<_, _>>()?;
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = listed.iter().find(|&&i| !seen.insert(i)) {
        return usage(format!(
            "--devices {devices:?}: cuda:{twice} is listed twice (one rank per GPU)"
        ));
    }
    Ok(Some(listed))
}

/// The ranks' command line: this one without `--devices`, with `--device cuda` (cuda:LOCAL_RANK
/// among the visible GPUs).
fn rank_args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut skip = false;
    for a in std::env::args_os().skip(1) {
        let text = a.to_string_lossy();
        if skip {
            skip = false;
        } else if text == "--devices" {
            skip = true;
        } else if !text.starts_with("--devices=") {
            args.push(a);
        }
    }
    args.extend(["--device".into(), "cuda".into()]);
    args
}

/// Waits for every rank; when one fails, stops the others (as mpirun does). Returns the exit
/// code: the first failure's, else 130 when the ranks stopped on request, else 0.
fn supervise(children: Vec<std::process::Child>) -> u8 {
    let (mut failure, mut stopped) = (None::<u8>, false);
    let mut running: Vec<Option<std::process::Child>> = children.into_iter().map(Some).collect();
    while running.iter().any(Option::is_some) {
        let mut failed_now = false;
        for (rank, slot) in running.iter_mut().enumerate() {
            if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                *slot = None;
                // Reaped: its process id may be reused, so no signal goes there any more.
                RANK_PIDS[rank.min(RANK_PIDS.len() - 1)].store(0, Ordering::SeqCst);
                match status.code() {
                    Some(0) => {}
                    // Stopped on request: every rank stops after the same step.
                    Some(130) => stopped = true,
                    other => {
                        failed_now |= failure.is_none();
                        failure.get_or_insert(other.map_or(1, |c| c.clamp(1, 255) as u8));
                    }
                }
            }
        }
        // One rank failed: stop the others, as mpirun would.
        #[cfg(unix)]
        if failed_now {
            for other in running.iter().flatten() {
                // SAFETY: signals a child process this function started and has not reaped.
                unsafe {
                    libc::kill(other.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    failure.unwrap_or(if stopped { 130 } else { 0 })
}

/// Hands `listener` to the child `command` starts (its descriptor stays open across `exec`,
/// named by `KILN_RENDEZVOUS_FD`), for rank 0's rendezvous.
fn inherit(command: &mut std::process::Command, listener: &std::net::TcpListener) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = listener.as_raw_fd();
        command.env(kiln_trainer::dist::rendezvous::INHERITED_FD, fd.to_string());
        // SAFETY: runs in the child between fork and exec; fcntl is async-signal-safe and
        // only clears close-on-exec on the child's copy of the descriptor.
        unsafe {
            command.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

//! The worker loop: claim a trial, run it as a `kiln train` (or `kiln cv`) process, record how
//! it ended, again until the sweep's budget is spent. `--parallel N` runs N such loops in one
//! worker, each trial with `cores / N` compute threads; `kiln sweep --worker ID` on other
//! machines runs more loops on the same registry folder.
//!
//! A trial's process stops with a checkpoint when its worker dies (Linux: SIGUSR1 on the
//! parent's death) or on Ctrl-C; the next claim resumes it from that checkpoint, exactly as
//! `kiln train --resume` does. A trial that died before its first checkpoint is trained again
//! as a new run (`attempts` counts them); one whose run had completed is only recorded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::cv::CvRecord;
use super::space::SweepSpec;
use super::store::{Best, Claim, Sweep, Trial, TrialStatus};
use super::{SelectError, rfc3339_now, unix_now};
use crate::layout;
use crate::run::{self, RunInfo, Status};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The `kiln` executable the trials run.
    pub exe: PathBuf,
    pub parallel: usize,
    /// Compute threads per trial; 0: the machine's cores shared among `parallel`.
    pub threads: usize,
    /// Set by Ctrl-C: claim nothing more.
    pub stop: Arc<AtomicBool>,
    pub quiet: bool,
}

/// What a worker did.
#[derive(Debug, Clone, Default)]
pub struct WorkReport {
    pub ran: usize,
    pub interrupted: bool,
    /// Set when this worker found the sweep finished and registered (or found) its best.
    pub best: Option<Best>,
}

/// Runs trials of `sweep` until none is left to claim (or Ctrl-C).
pub fn work(
    sweep: &Sweep,
    spec: &SweepSpec,
    opts: &WorkerOptions,
) -> Result<WorkReport, SelectError> {
    let deadline = spec.timeout_seconds.map(|t| unix_now() + t);
    let threads = if opts.threads > 0 {
        opts.threads
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / opts.parallel.max(1)).max(1)
    };
    let results: Vec<Result<(usize, bool), SelectError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..opts.parallel.max(1))
            .map(|_| scope.spawn(|| worker_loop(sweep, spec, opts, deadline, threads)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SelectError::Input("a worker thread panicked".into())))
            })
            .collect()
    });
    let mut report = WorkReport::default();
    for r in results {
        let (ran, interrupted) = r?;
        report.ran += ran;
        report.interrupted |= interrupted;
    }
    if !report.interrupted {
        report.best = finish(sweep, spec)?;
    }
    Ok(report)
}

fn worker_loop(
    sweep: &Sweep,
    spec: &SweepSpec,
    opts: &WorkerOptions,
    deadline: Option<f64>,
    threads: usize,
) -> Result<(usize, bool), SelectError> {
    let mut ran = 0;
    loop {
        if opts.stop.load(Ordering::SeqCst) {
            return Ok((ran, true));
        }
        let claim = sweep.claim(spec, deadline, |n| trial_run_id(spec, n, None))?;
        let Claim::Trial(trial, held) = claim else {
            return Ok((ran, false));
        };
        let trial = run_trial(sweep, spec, opts, *trial, threads)?;
        drop(held);
        ran += 1;
        if !opts.quiet {
            eprintln!("{}", trial_line(spec, &trial));
        }
        if trial.status == TrialStatus::Interrupted {
            return Ok((ran, true));
        }
    }
}

/// The run id of a trial's attempt: `<name>-<time>-<hex>-tN`, `-A` from the second attempt on;
/// the name is cut so that the id stays within 64 characters.
fn trial_run_id(spec: &SweepSpec, number: usize, attempt: Option<usize>) -> String {
    let id = format!("{}-t{number}", run::new_id(&run::id_stem(&spec.name, 24)));
    match attempt {
        Some(a) => format!("{id}-{a}"),
        None => id,
    }
}

/// One line per finished trial: its number, how it ended, its value and parameters.
pub fn trial_line(spec: &SweepSpec, t: &Trial) -> String {
    let params: Vec<String> = t.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let value = t.value.map_or("-".into(), |v| format!("{v:.4}"));
    let how = match (t.status, t.pruned_at) {
        (TrialStatus::Pruned, Some(at)) => format!("pruned at validation {at}"),
        (s, _) => format!("{s:?}").to_lowercase(),
    };
    let mut line = format!(
        "trial {:>3}  {how:<24} {} {value}  {:>6} steps {:>6.1} s  {}",
        t.number,
        spec.metric,
        t.steps,
        t.seconds,
        params.join(" ")
    );
    if let Some(e) = &t.error {
        line.push_str(&format!("\n           {e}"));
    }
    line
}

/// Runs (or resumes, or only records) one claimed trial and writes how it ended.
fn run_trial(
    sweep: &Sweep,
    spec: &SweepSpec,
    opts: &WorkerOptions,
    mut t: Trial,
    threads: usize,
) -> Result<Trial, SelectError> {
    let trial_dir = sweep.trial_dir(t.number);
    let Some(resume) = standing(sweep, spec, &mut t)? else {
        return Ok(t);
    };
    t.attempts += 1;
    t.error = None;
    sweep.update(&t)?;

    let mut cmd = trial_command(sweep, spec, opts, &t, resume, threads, &trial_dir);
    let log_path = trial_dir.join(layout::TRIAL_LOG);
    let (status, seconds) = run_logged(&mut cmd, &log_path, opts)?;
    t.seconds += seconds;
    t.owner = None;
    record_exit(sweep, spec, opts, &mut t, status, &log_path)?;
    sweep.update(&t)?;
    Ok(t)
}

/// Where a claimed trial's current attempt stands: `Some(resume)` when it is to run (`resume`:
/// from its checkpoint), `None` when it was only recorded and written (its run had completed,
/// or it is still running somewhere).
fn standing(sweep: &Sweep, spec: &SweepSpec, t: &mut Trial) -> Result<Option<bool>, SelectError> {
    let registry = &sweep.registry;
    match spec.cv {
        None => run_standing(sweep, spec, t),
        Some(_) => match CvRecord::load(registry, &t.run_id) {
            Ok(r) if r.status == Status::Completed => {
                record_cv(spec, t, &r, registry);
                sweep.update(t)?;
                Ok(None)
            }
            Ok(_) => Ok(Some(true)),
            Err(_) => Ok(Some(false)),
        },
    }
}

/// [`standing`] for a trial that is one training run: its run record and checkpoints say
/// whether it completed, resumes, or starts again under a new run id.
fn run_standing(
    sweep: &Sweep,
    spec: &SweepSpec,
    t: &mut Trial,
) -> Result<Option<bool>, SelectError> {
    let dir = layout::runs_dir(&sweep.registry).join(&t.run_id);
    match run::read_json::<RunInfo>(&dir.join(layout::RUN)) {
        Ok(info) if info.status == Status::Completed => {
            record_run(spec, t, &info);
            sweep.update(t)?;
            Ok(None)
        }
        Ok(_) if !layout::checkpoints(&dir).is_empty() => {
            // Wait for the run's lock, then look again: it may have finished.
            if super::wait_for_run(&dir).is_err() {
                // Still running somewhere: leave the trial to a later claim.
                t.status = TrialStatus::Interrupted;
                t.owner = None;
                sweep.update(t)?;
                return Ok(None);
            }
            let info: RunInfo = run::read_json(&dir.join(layout::RUN))?;
            if info.status == Status::Completed {
                record_run(spec, t, &info);
                sweep.update(t)?;
                return Ok(None);
            }
            Ok(Some(true))
        }
        Ok(_) => {
            t.run_id = trial_run_id(spec, t.number, Some(t.attempts + 1));
            Ok(Some(false))
        }
        Err(_) if dir.exists() => {
            // Died before its record was written: a new run id for the next attempt.
            t.run_id = trial_run_id(spec, t.number, Some(t.attempts + 1));
            Ok(Some(false))
        }
        Err(_) => Ok(Some(false)),
    }
}

/// The `kiln train` (or `kiln cv`) command line of a trial's attempt: a new run with the
/// trial's parameters and thread count, or a resume of its run.
fn trial_command(
    sweep: &Sweep,
    spec: &SweepSpec,
    opts: &WorkerOptions,
    t: &Trial,
    resume: bool,
    threads: usize,
    trial_dir: &Path,
) -> Command {
    let mut cmd = Command::new(&opts.exe);
    match (spec.cv, resume) {
        (None, true) => {
            cmd.args(["train", "--resume", &t.run_id]);
        }
        (None, false) => {
            cmd.arg("train").arg(&spec.base);
        }
        (Some(_), true) => {
            cmd.args(["cv", "--resume", &t.run_id]);
        }
        (Some(k), false) => {
            cmd.arg("cv")
                .arg(&spec.base)
                .args(["--folds", &k.to_string()]);
        }
    }
    if !resume {
        for o in spec.overrides(&t.params) {
            cmd.arg("--set").arg(o);
        }
        cmd.arg("--set").arg(format!("runtime.threads={threads}"));
    }
    cmd.arg("--registry")
        .arg(&sweep.registry)
        .arg("--trial")
        .arg(trial_dir)
        .arg("--quiet");
    cmd
}

/// Runs `cmd` to its end with its output appended to the trial's log: its exit status and the
/// seconds it ran.
fn run_logged(
    cmd: &mut Command,
    log_path: &Path,
    opts: &WorkerOptions,
) -> Result<(std::process::ExitStatus, f64), SelectError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(super::io(log_path))?;
    let log2 = log.try_clone().map_err(super::io(log_path))?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    stop_with_parent(cmd);
    let started = Instant::now();
    let status = cmd
        .spawn()
        .and_then(|mut child| child.wait())
        .map_err(super::io(&opts.exe))?;
    Ok((status, started.elapsed().as_secs_f64()))
}

/// Records in `t` how its process ended: completed (read back from its run or CV record),
/// interrupted (resumes on the next claim), or failed with the log's last error.
fn record_exit(
    sweep: &Sweep,
    spec: &SweepSpec,
    opts: &WorkerOptions,
    t: &mut Trial,
    status: std::process::ExitStatus,
    log_path: &Path,
) -> Result<(), SelectError> {
    let registry = &sweep.registry;
    match status.code() {
        Some(0) => match spec.cv {
            None => {
                let dir = layout::runs_dir(registry).join(&t.run_id);
                let info: RunInfo = run::read_json(&dir.join(layout::RUN))?;
                record_run(spec, t, &info);
            }
            Some(_) => {
                let r = CvRecord::load(registry, &t.run_id)?;
                record_cv(spec, t, &r, registry);
            }
        },
        Some(130) => t.status = TrialStatus::Interrupted,
        // Killed by a signal before its handler was installed (Ctrl-C while it loaded): it
        // resumes or starts again on the next claim.
        _ if opts.stop.load(Ordering::SeqCst) || killed_by_stop_signal(&status) => {
            t.status = TrialStatus::Interrupted
        }
        _ => {
            t.status = TrialStatus::Failed;
            t.finished = Some(rfc3339_now());
            t.error =
                Some(last_error(log_path).unwrap_or_else(|| format!("kiln exited with {status}")));
        }
    }
    Ok(())
}

fn killed_by_stop_signal(status: &std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        matches!(
            status.signal(),
            Some(libc::SIGINT | libc::SIGTERM | libc::SIGUSR1)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        false
    }
}

/// The trial's process gets SIGUSR1 (stop with a checkpoint) when its worker dies.
fn stop_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid, prctl and getppid are async-signal-safe; nothing else runs between
        // fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1);
                // The worker died before the prctl: do not start an orphan.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the sweep worker is gone"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map(str::to_string)
}

fn record_run(spec: &SweepSpec, t: &mut Trial, info: &RunInfo) {
    t.value = spec.objective(&info.metrics);
    t.steps = info.steps;
    t.pruned_at = info.pruned_at;
    t.status = if info.pruned_at.is_some() {
        TrialStatus::Pruned
    } else {
        TrialStatus::Completed
    };
    t.finished = Some(rfc3339_now());
    t.owner = None;
}

fn record_cv(spec: &SweepSpec, t: &mut Trial, r: &CvRecord, registry: &Path) {
    t.value = r
        .summary
        .get(&format!("valid/{}", spec.metric))
        .map(|s| s.mean);
    t.steps = r
        .runs
        .iter()
        .filter_map(|f| {
            run::read_json::<RunInfo>(&layout::runs_dir(registry).join(&f.run_id).join(layout::RUN))
                .ok()
        })
        .map(|i| i.steps)
        .sum();
    t.status = TrialStatus::Completed;
    t.finished = Some(rfc3339_now());
    t.owner = None;
}

/// The alias the best version of a sweep gets: `sweep-<id>` (never a user's own alias).
pub fn best_alias(id: &str) -> String {
    format!("sweep-{id}")
}

/// When every trial has finished: the best registered as a version of the model and tagged
/// with the sweep's id (once; again if a longer budget found a better one), in `best.json`.
pub fn finish(sweep: &Sweep, spec: &SweepSpec) -> Result<Option<Best>, SelectError> {
    let _lock = sweep.lock()?;
    let trials = sweep.trials();
    if trials.iter().any(|t| !t.status.finished()) {
        return Ok(None);
    }
    let Some(best) = Sweep::best(spec, &trials) else {
        return Ok(None);
    };
    let path = sweep.dir().join(layout::SWEEP_BEST);
    if let Ok(b) = run::read_json::<Best>(&path)
        && b.trial == best.number
    {
        return Ok(Some(b));
    }
    let version = match spec.cv {
        Some(_) => None,
        None => {
            let dir = layout::runs_dir(&sweep.registry).join(&best.run_id);
            let v = crate::train::register_run(&sweep.registry, &dir)?;
            crate::registry::Registry::new(&sweep.registry).tag(&v, &best_alias(&sweep.id))?;
            Some(v)
        }
    };
    let b = Best {
        trial: best.number,
        value: best.value.expect("a completed trial has a value"),
        run_id: best.run_id.clone(),
        params: best.params.clone(),
        version,
    };
    run::write_json(&path, &b)?;
    Ok(Some(b))
}

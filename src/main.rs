//! The `kiln` command: parses arguments, dispatches to the trainer, maps errors to exit codes.
//!
//! Exit codes: 0 success; 1 a data or runtime failure; 2 a usage or config error;
//! 130 training interrupted (Ctrl-C) after saving a checkpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use kiln_trainer::config::{self, ConfigError, Override};
use kiln_trainer::data::SplitName;
use kiln_trainer::registry::{self, Registry, RegistryError};
use kiln_trainer::{eval, report, run, train};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train neural models from a config file, on burn."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML config (or continue an interrupted run with --resume).
    Train {
        /// The config file.
        #[arg(required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Override a config value, e.g. `--set optim.lr=3e-4` (repeatable; applied in order).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A few steps on a small slice, a validation pass, a checkpoint and an evaluation.
        #[arg(long)]
        smoke: bool,
        /// Continue a run (a run id, `latest`, or a run folder) from its last checkpoint.
        #[arg(long, value_name = "RUN", conflicts_with_all = ["config", "set", "smoke"])]
        resume: Option<String>,
        /// Start from the weights of a registry model (NAME, NAME@ALIAS, NAME/vN or a run id);
        /// the architecture must match. Recorded as the new model's lineage.
        #[arg(long, value_name = "REF", conflicts_with = "resume")]
        init_from: Option<String>,
        /// Where to compute: auto, cpu, wgpu[:N], cuda[:N] (the config's backend.device
        /// otherwise). With --resume, continues the run on another device.
        #[arg(long, value_name = "DEVICE")]
        device: Option<String>,
        /// Every GPU of this machine, one process each, gradients through NCCL: `cuda:all`
        /// or `cuda:0,1,...` (needs `--features cuda,nccl`). Under mpirun or srun, use
        /// --device instead: the launcher starts the ranks.
        #[arg(long, value_name = "DEVICES", conflicts_with = "device")]
        devices: Option<String>,
        /// Print only the result.
        #[arg(long, short)]
        quiet: bool,
        /// End with one JSON object (run id, folder, metrics per split) on stdout.
        #[arg(long)]
        json: bool,
        /// The registry folder (default: $KILN_REGISTRY, the config's runtime.registry, or ./kiln-registry).
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Check config files (or folders of them, recursively) and report every problem.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also load the data, build the model and run a forward pass on a real batch.
        #[arg(long)]
        deep: bool,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Metrics of a model on one split of its data.
    Eval {
        /// A model (NAME, NAME@ALIAS, NAME/vN), a run id, `latest` (the newest run), or a run
        /// folder.
        run: String,
        /// train, valid or test.
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Export a model to ONNX, accepted only if tract reproduces kiln's outputs (parity gate).
    Export {
        /// NAME, NAME@ALIAS, NAME/vN, a run id, `latest` or a run folder.
        model: String,
        /// The ONNX file to write; its preprocessing JSON goes beside it (`.json`).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// ONNX opset, 17 to 21.
        #[arg(long, default_value_t = 17)]
        opset: i64,
        /// `dynamic` (a symbolic batch axis) or a fixed batch size.
        #[arg(long, default_value = "dynamic")]
        batch: String,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Predict every row of a data file with a registry model (the file read and preprocessed
    /// as the training data was; its label column may be there or not).
    Predict {
        /// NAME, NAME@ALIAS, NAME/vN, a run id, `latest` or a run folder.
        model: String,
        /// The data file (CSV/TSV like the training file, or IDX images).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Where to write: `.csv` (row, prediction, a probability per class) or `.json`;
        /// stdout (CSV) without it.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// The devices this build can compute on here: id (for --device), kind, name, float types.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the config file, for editors.
    Schema,
    /// List, show and compare runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
        #[arg(long, value_name = "DIR", global = true)]
        registry: Option<PathBuf>,
    },
    /// The model registry: versions, aliases, integrity, clean-up.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
        #[arg(long, value_name = "DIR", global = true)]
        registry: Option<PathBuf>,
    },
    /// Write an HTML page with a run's curves and confusion matrix (or residual plot).
    Report {
        /// A run id, `latest`, or a run folder.
        run: String,
        /// The HTML file to write.
        #[arg(short, long, default_value = "report.html")]
        output: PathBuf,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Every run of the registry: id, model, status, best validation metric, time.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One run: its record and final metrics.
    Show {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Two runs side by side: the config keys that differ and the final metrics.
    Compare {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Every model version (or those of one model): aliases, run, step, monitored metric.
    List {
        /// Only this model.
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One entry (NAME, NAME@ALIAS, NAME/vN, a run id): its manifest, files and lineage.
    Show {
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Point an alias (e.g. `production`) at a version.
    Tag { reference: String, alias: String },
    /// Remove an alias set by `tag`.
    Untag { name: String, alias: String },
    /// Delete a version (NAME/vN) or a run (its id).
    Rm {
        reference: String,
        /// Also drop the aliases pointing at the version.
        #[arg(long)]
        force: bool,
    },
    /// Remove unfinished writes of dead processes and checkpoints beyond each run's retention.
    Gc {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Two entries side by side: the config keys that differ and the metrics.
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every file of every entry against its manifest and report any damage.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

/// An error and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Name(_) | RegistryError::NotFound { .. } => Self::usage(e.to_string()),
            _ => Self::runtime(e.to_string()),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::usage(e.to_string())
    }
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`kiln runs list | head`) instead of failing to print.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    quiet_headless_vulkan();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train {
            devices: Some(devices),
            ..
        } => launch_local(&devices),
        Command::Train {
            config,
            set,
            smoke,
            resume,
            init_from,
            device,
            devices: None,
            quiet,
            json,
            registry,
        } => cmd_train(TrainArgs {
            config_path: config,
            set,
            smoke,
            resume,
            init_from,
            device,
            quiet,
            json,
            registry,
        }),
        Command::Devices { json } => cmd_devices(json),
        Command::Predict {
            model,
            input,
            output,
            registry,
        } => cmd_predict(&model, &input, output.as_deref(), registry),
        Command::Export {
            model,
            output,
            opset,
            batch,
            json,
            registry,
        } => cmd_export(&model, &output, opset, &batch, json, registry),
        Command::Validate { paths, deep, set } => cmd_validate(&paths, deep, &set),
        Command::Eval {
            run,
            split,
            json,
            registry,
        } => cmd_eval(&run, &split, json, registry),
        Command::Runs { command, registry } => cmd_runs(command, registry),
        Command::Registry { command, registry } => {
            cmd_registry(command, registry_for(registry, "kiln-registry"))
        }
        Command::Report {
            run,
            output,
            registry,
        } => {
            let registry = registry_for(registry, "kiln-registry");
            let dir = run::resolve(&registry, &run).map_err(|e| Failure::usage(e.to_string()));
            dir.and_then(|dir| {
                kiln_trainer::html::write_report(&dir, &output)
                    .map_err(|e| Failure::runtime(e.to_string()))?;
                println!("wrote {}", output.display());
                Ok(0)
            })
        }
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config::schema()).expect("schema is JSON")
            );
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            print_error("", &f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" once per adapter probe
/// on a headless machine (a server, CI). Point it at a private folder when it is unset, so
/// `kiln devices` and errors stay readable. Runs first in `main`, before any thread exists.
fn quiet_headless_vulkan() {
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

fn parse_overrides(set: &[String]) -> Result<Vec<Override>, Failure> {
    set.iter()
        .map(|s| Override::parse(s).map_err(Failure::usage))
        .collect()
}

fn registry_for(flag: Option<PathBuf>, from_config: &str) -> PathBuf {
    flag.or_else(|| std::env::var_os("KILN_REGISTRY").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(from_config))
}

fn load_config(path: &Path, overrides: &[Override]) -> Result<config::RunConfig, Failure> {
    if !path.is_file() {
        return Err(Failure::usage(format!(
            "{}: no such config file",
            path.display()
        )));
    }
    let (file, _) = config::load(path, overrides)?;
    Ok(config::validate(
        file,
        &path.display().to_string(),
        &config::default_name(path),
    )?)
}

/// `kiln train`'s arguments, as given.
struct TrainArgs {
    config_path: Option<PathBuf>,
    set: Vec<String>,
    smoke: bool,
    resume: Option<String>,
    init_from: Option<String>,
    device: Option<String>,
    quiet: bool,
    json: bool,
    registry: Option<PathBuf>,
}

fn cmd_train(args: TrainArgs) -> Result<u8, Failure> {
    // Started by a launcher (mpirun, srun) as one rank of several: join the others first.
    let group = kiln_trainer::dist::Group::join()
        .map_err(Failure::usage)?
        .map(std::rc::Rc::new);
    if let Some(g) = &group {
        on_launcher_stop(g.rank(), g.world());
    }
    let result = train_one(args, group.clone());
    let Some(g) = group.as_deref() else {
        return result.map_err(|r| match r {
            Ranked::Agreed(f) | Ranked::Alone(f) => f,
        });
    };
    let (rank, world) = (g.rank(), g.world());
    match result {
        Ok(code) => Ok(code),
        // Every rank knows (the handshake): each says why, then all end together.
        Err(Ranked::Agreed(f)) => {
            print_error(&format!("rank {rank} of {world}: "), &f.message);
            g.barrier();
            Ok(f.code)
        }
        // This rank failed alone, mid-run: end the whole job rather than leave the others
        // waiting in the next all-reduce.
        Err(Ranked::Alone(f)) => {
            print_error(&format!("rank {rank} of {world}: "), &f.message);
            g.abort(i32::from(f.code))
        }
    }
}

/// `error: ` lines on stderr, in one write: ranks of a job share one terminal, and their lines
/// must not interleave.
fn print_error(prefix: &str, message: &str) {
    use std::io::Write;
    let text: String = message
        .lines()
        .map(|l| format!("error: {prefix}{l}\n"))
        .collect();
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// `--devices cuda:all`: starts one kiln per GPU of this machine with torchrun-style variables
/// (they meet at a local rendezvous and all-reduce through NCCL), waits for them, and stops
/// the others when one fails.
fn launch_local(devices: &str) -> Result<u8, Failure> {
    if kiln_trainer::dist::Topology::from_env()
        .map_err(Failure::usage)?
        .is_some()
    {
        return Err(Failure::usage(
            "--devices starts its own processes, but a launcher (mpirun, srun, torchrun) already started this one: use --device",
        ));
    }
    let list = devices.strip_prefix("cuda:").ok_or_else(|| {
        Failure::usage(format!(
            "--devices {devices:?}: use cuda:all or cuda:N,M,... (one process per GPU); CPUs scale with mpirun -np N"
        ))
    })?;
    if !cfg!(feature = "nccl") {
        return Err(Failure::usage(
            "--devices needs NCCL: build kiln with `--features cuda,nccl`, or launch with `mpirun -np N kiln train CONFIG --device cuda` on an MPI build",
        ));
    }
    let found = kiln_trainer::backend::cuda_devices().len();
    let chosen: Vec<usize> = if list == "all" {
        (0..found).collect()
    } else {
        list.split(',')
            .map(|i| {
                i.trim().parse::<usize>().map_err(|_| {
                    Failure::usage(format!("--devices {devices:?}: {i:?} is not a GPU index"))
                })
            })
            .collect::<Result<_, _>>()?
    };
    if found == 0 {
        return Err(Failure::runtime(
            "--devices: no CUDA GPU here (`kiln devices` lists what this build can use)",
        ));
    }
    if let Some(bad) = chosen.iter().find(|&&i| i >= found) {
        return Err(Failure::usage(format!(
            "--devices: there is no cuda:{bad}; this machine has {found} (cuda:0 to cuda:{})",
            found - 1
        )));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Failure::runtime(format!("--devices: no free local port: {e}")))?
        .port();
    let exe = std::env::current_exe().map_err(|e| Failure::runtime(e.to_string()))?;
    // The same command line without --devices; `--device cuda` means cuda:LOCAL_RANK among
    // the visible GPUs.
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
    let visible: Vec<String> = chosen.iter().map(usize::to_string).collect();
    let world = chosen.len();
    // Ctrl-C reaches every process of the terminal: the ranks stop together and save; this
    // one waits for them. SIGUSR1 and SIGTERM sent to this process are passed on to the ranks.
    let _ = ctrlc_handler(|| {});
    forward_signals();
    let mut children = Vec::new();
    for rank in 0..world {
        let child = std::process::Command::new(&exe)
            .args(&args)
            .env("CUDA_VISIBLE_DEVICES", visible.join(","))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .map_err(|e| Failure::runtime(format!("--devices: cannot start rank {rank}: {e}")))?;
        RANK_PIDS[rank.min(RANK_PIDS.len() - 1)].store(child.id() as i32, Ordering::SeqCst);
        children.push(child);
    }
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
    let code = failure.unwrap_or(if stopped { 130 } else { 0 });
    Ok(code)
}

/// The ranks `--devices` started and has not reaped, for [`forward_signals`]'s handler.
static RANK_PIDS: [std::sync::atomic::AtomicI32; 64] =
    [const { std::sync::atomic::AtomicI32::new(0) }; 64];

/// Passes SIGUSR1 (stop with a checkpoint) and SIGTERM (stop now) sent to `--devices`'s
/// process on to the ranks it started, as mpirun does; the ranks' exit codes then say how
/// they ended.
fn forward_signals() {
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

/// How a rank's failure reaches the others.
enum Ranked {
    /// Said in the start-up handshake: every rank knows.
    Agreed(Failure),
    /// After it: only this rank knows.
    Alone(Failure),
}

impl From<Failure> for Ranked {
    fn from(f: Failure) -> Self {
        Self::Agreed(f)
    }
}

/// A launcher that stops the job (another rank failed, or the job was cancelled) sends
/// SIGTERM; say so before going, since the cause is in another rank's output.
fn on_launcher_stop(rank: usize, world: usize) {
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

fn train_one(
    args: TrainArgs,
    group: Option<std::rc::Rc<kiln_trainer::dist::Group>>,
) -> Result<u8, Ranked> {
    let TrainArgs {
        config_path,
        set,
        smoke,
        resume,
        init_from,
        device,
        quiet,
        json,
        registry,
    } = args;
    let loaded = load_for_training(
        config_path.as_deref(),
        &set,
        resume.as_deref(),
        device.as_deref(),
        registry,
    );
    let (cfg, registry, resume_dir, shown) = match (loaded, &group) {
        (Ok(v), _) => v,
        (Err(f), Some(g)) => {
            // The first collective: the other ranks learn why this one cannot start.
            let _ = g.agree(Err(f.message.clone()));
            return Err(Ranked::Agreed(f));
        }
        (Err(f), None) => return Err(Ranked::Agreed(f)),
    };
    let writer = group.as_ref().is_none_or(|g| g.is_writer());
    let stop = interrupt_flag();
    // The flag a resume needs: none when the registry is where `--resume` looks by default.
    let registry_flag = if registry == registry_for(None, "kiln-registry") {
        String::new()
    } else {
        format!(" --registry {}", registry.display())
    };
    let opts = train::Options {
        registry,
        smoke,
        quiet: quiet || json,
        config_path: shown,
        resume: resume_dir,
        stop,
        init_from,
        group,
    };
    let outcome = train::train(&cfg, &opts).map_err(|e| match e {
        train::TrainError::Distributed(m) => Ranked::Agreed(Failure::runtime(m)),
        e => Ranked::Alone(Failure::runtime(e.to_string())),
    })?;
    if !writer {
        return Ok(match outcome.info.status {
            run::Status::Interrupted => 130,
            _ => 0,
        });
    }
    let info = &outcome.info;
    if info.status == run::Status::Interrupted {
        eprintln!(
            "interrupted at step {}; checkpoint saved in {}\nresume with: kiln train --resume {}{registry_flag}",
            info.steps,
            registry::checkpoints(&outcome.run_dir)
                .into_iter()
                .next()
                .map_or_else(|| outcome.run_dir.join(run::CHECKPOINTS), |(_, d)| d)
                .display(),
            info.id
        );
    }
    if json {
        let out = serde_json::json!({
            "run_id": info.id,
            "run_dir": outcome.run_dir,
            "version": info.version,
            "status": info.status,
            "steps": info.steps,
            "epochs": info.epochs_done,
            "wall_seconds": info.wall_seconds,
            "train_samples_per_second": info.train_samples_per_second,
            "metrics": info.metrics,
        });
        println!("{out}");
    } else if info.status != run::Status::Interrupted {
        println!("run     {}", info.id);
        println!("folder  {}", outcome.run_dir.display());
        if let Some(v) = &info.version {
            println!("model   {v}");
        }
        println!(
            "trained {} steps, {} epochs in {:.1} s ({:.0} samples/s)",
            info.steps, info.epochs_done, info.wall_seconds, info.train_samples_per_second
        );
        print!("{}", report::metrics_table(&info.metrics));
    }
    Ok(if info.status == run::Status::Interrupted {
        130
    } else {
        0
    })
}

fn cmd_export(
    reference: &str,
    output: &Path,
    opset: i64,
    batch: &str,
    json: bool,
    registry: Option<PathBuf>,
) -> Result<u8, Failure> {
    use kiln_trainer::export::{self, run::ExportError};
    let batch: export::Batch = batch.parse().map_err(Failure::usage)?;
    if !export::OPSETS.contains(&opset) {
        return Err(Failure::usage(format!(
            "--opset {opset}: kiln writes opsets {} to {}",
            export::OPSETS.start(),
            export::OPSETS.end()
        )));
    }
    let (reg, entry) = resolve_model(
        &Registry::new(registry_for(registry, "kiln-registry")),
        reference,
    )?;
    let opts = export::run::Options { opset, batch };
    let out = export::run::export(&reg, &entry, output, &opts).map_err(|e| match e {
        ExportError::Registry(r) => Failure::from(r),
        other => Failure::runtime(other.to_string()),
    })?;
    let worst = out
        .parity
        .max_abs
        .iter()
        .map(|(_, m)| *m)
        .fold(
            0.0,
            |a: f64, b| if b.is_nan() { f64::INFINITY } else { a.max(b) },
        );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": out.label,
                "onnx": out.path,
                "preprocess": out.sidecar,
                "registry": out.registry_dir,
                "parity": out.parity,
            })
        );
    } else {
        println!("exported {} -> {}", out.label, out.path.display());
        println!(
            "preprocessing (categorical encodings) -> {}",
            out.sidecar.display()
        );
        println!(
            "parity with tract on {} validation rows: max abs difference {worst:.2e} (tolerance {:.0e}), {} top-1 disagreements",
            out.parity.rows, out.parity.tolerance, out.parity.top1_disagreements
        );
        println!("stored in {}", out.registry_dir.display());
    }
    Ok(0)
}

fn cmd_predict(
    reference: &str,
    input: &Path,
    output: Option<&Path>,
    registry: Option<PathBuf>,
) -> Result<u8, Failure> {
    use kiln_trainer::predict;
    if !input.is_file() {
        return Err(Failure::usage(format!("{}: no such file", input.display())));
    }
    let (reg, entry) = resolve_model(
        &Registry::new(registry_for(registry, "kiln-registry")),
        reference,
    )?;
    let run =
        eval::LoadedRun::open_model(&reg, &entry).map_err(|e| Failure::runtime(e.to_string()))?;
    let p = predict::predict_file(&run, input).map_err(|e| Failure::runtime(e.to_string()))?;
    let json = output.is_some_and(|o| o.extension().is_some_and(|e| e == "json"));
    let text = if json {
        serde_json::to_string_pretty(&serde_json::json!({
            "model": entry.label,
            "input": input,
            "classes": p.classes,
            "rows": p.rows,
        }))
        .expect("predictions are JSON")
    } else {
        predict::to_csv(&p)
    };
    match output {
        Some(path) => {
            run::write_atomic(path, text.as_bytes())
                .map_err(|e| Failure::runtime(e.to_string()))?;
            eprintln!(
                "{} rows of {} predicted with {} -> {}",
                p.rows.len(),
                input.display(),
                entry.label,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(0)
}

fn cmd_devices(json: bool) -> Result<u8, Failure> {
    use kiln_trainer::backend;
    let all = backend::list();
    if json {
        println!(
            "{}",
            serde_json::json!({"compiled": backend::compiled(), "devices": all})
        );
        return Ok(0);
    }
    println!(
        "{:<10}{:<6}{:<12}{:<10}name",
        "id", "kind", "float", "hardware"
    );
    for d in &all {
        println!(
            "{:<10}{:<6}{:<15}{:<10}{}",
            d.id,
            d.kind,
            d.dtypes.join(","),
            if d.hardware { "gpu" } else { "-" },
            d.name
        );
    }
    let auto =
        backend::choose(backend::DeviceSpec::Auto).map_err(|e| Failure::runtime(e.to_string()))?;
    println!(
        "compiled in: {}; `--device auto` picks {}",
        backend::compiled().join(", "),
        auto.id
    );
    Ok(0)
}

/// The config (from a file with overrides, or from the run being resumed) and the registry.
fn load_for_training(
    config_path: Option<&Path>,
    set: &[String],
    resume: Option<&str>,
    device: Option<&str>,
    registry: Option<PathBuf>,
) -> Result<(config::RunConfig, PathBuf, Option<PathBuf>, String), Failure> {
    Ok(match (config_path, resume) {
        (_, Some(reference)) => {
            let registry = registry_for(registry, "kiln-registry");
            let dir =
                run::resolve(&registry, reference).map_err(|e| Failure::usage(e.to_string()))?;
            let mut cfg = config::load_run(&dir)?;
            if let Some(d) = &device {
                cfg.device = d
                    .parse()
                    .map_err(|e| Failure::usage(format!("--device: {e}")))?;
                cfg.file.backend.device = d.to_string();
            }
            (cfg, registry, Some(dir), reference.to_string())
        }
        (Some(path), None) => {
            let mut overrides = parse_overrides(set)?;
            if let Some(d) = &device {
                overrides.push(
                    Override::parse(&format!("backend.device={d:?}")).map_err(Failure::usage)?,
                );
            }
            let cfg = load_config(path, &overrides)?;
            let registry = registry_for(registry, &cfg.file.runtime.registry);
            (cfg, registry, None, path.display().to_string())
        }
        (None, None) => return Err(Failure::usage("give a config file, or --resume RUN")),
    })
}

/// Ctrl-C once: stop after the current step and save. Twice: exit now.
fn interrupt_flag() -> Arc<AtomicBool> {
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

fn ctrlc_handler(f: impl FnMut() + Send + 'static) -> Result<(), String> {
    kiln_trainer::train::set_interrupt_handler(f)
}

fn cmd_validate(paths: &[PathBuf], deep: bool, set: &[String]) -> Result<u8, Failure> {
    let overrides = parse_overrides(set)?;
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            collect_tomls(p, &mut files)
                .map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?;
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(Failure::usage(format!(
                "{}: no such file or folder",
                p.display()
            )));
        }
    }
    if files.is_empty() {
        return Err(Failure::usage("no .toml files found"));
    }
    let mut failed = Vec::new();
    for f in &files {
        match load_config(f, &overrides) {
            Ok(cfg) if deep => match eval::deep_check(&cfg) {
                Ok(summary) => println!("ok    {}  ({summary})", f.display()),
                Err(e) => failed.push(format!("{}: {e}", f.display())),
            },
            Ok(_) => println!("ok    {}", f.display()),
            Err(e) => failed.push(e.message),
        }
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        Err(Failure::usage(failed.join("\n")))
    }
}

fn collect_tomls(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_tomls(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

/// A model reference: a run folder or `latest` (the newest run), or anything the registry
/// resolves (NAME, NAME@ALIAS, NAME/vN, a run id). Returns the registry that holds it: for a
/// run folder, the one two levels up.
fn resolve_model(reg: &Registry, reference: &str) -> Result<(Registry, registry::Entry), Failure> {
    if reference == "latest" || Path::new(reference).join(run::RUN).is_file() {
        let dir = run::resolve(&reg.root, reference).map_err(|e| Failure::usage(e.to_string()))?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = dir
            .parent()
            .and_then(Path::parent)
            .map_or_else(|| reg.root.clone(), Path::to_path_buf);
        let owner = Registry::new(root);
        let entry = owner.resolve(&id)?;
        return Ok((owner, entry));
    }
    let entry = reg.resolve(reference)?;
    Ok((Registry::new(reg.root.clone()), entry))
}

fn cmd_eval(
    reference: &str,
    split: &str,
    json: bool,
    registry: Option<PathBuf>,
) -> Result<u8, Failure> {
    let split: SplitName = split.parse().map_err(Failure::usage)?;
    let (reg, entry) = resolve_model(
        &Registry::new(registry_for(registry, "kiln-registry")),
        reference,
    )?;
    let (loaded, metrics) =
        eval::eval_entry(&reg, &entry, split).map_err(|e| Failure::runtime(e.to_string()))?;
    let split_name = format!("{split:?}").to_lowercase();
    if json {
        let out = serde_json::json!({
            "model": loaded.label,
            "run_id": loaded.info.as_ref().map(|i| i.id.clone()),
            "split": split_name,
            "metrics": metrics,
        });
        println!("{out}");
    } else {
        println!("{} ({split_name} split)", loaded.label);
        let mut m = std::collections::BTreeMap::new();
        m.insert(split_name, metrics.clone());
        print!("{}", report::metrics_table(&m));
        print!("{}", report::class_table(&metrics));
    }
    Ok(0)
}

fn cmd_registry(command: RegistryCommand, root: PathBuf) -> Result<u8, Failure> {
    if !root.is_dir() {
        return Err(Failure::usage(format!(
            "no registry at {} (train a model first, or point --registry or $KILN_REGISTRY at one)",
            root.display()
        )));
    }
    let reg = Registry::new(root);
    let json_line = |v: serde_json::Value| println!("{v}");
    match command {
        RegistryCommand::List { name, json } => {
            let versions = reg.list(name.as_deref())?;
            if json {
                json_line(serde_json::to_value(&versions).expect("versions are JSON"));
            } else if versions.is_empty() {
                println!("no model versions in {}", reg.root.display());
            } else {
                print!("{}", report::versions_table(&versions));
            }
        }
        RegistryCommand::Show { reference, json } => {
            let (owner, entry) = resolve_model(&reg, &reference)?;
            let loaded = owner.load(&entry)?;
            let m = &loaded.manifest;
            if json {
                json_line(serde_json::json!({
                    "entry": entry.label,
                    "dir": entry.dir,
                    "manifest": m,
                }));
            } else {
                print!("{}", report::manifest_text(&entry.label, &entry.dir, m));
            }
        }
        RegistryCommand::Tag { reference, alias } => {
            let entry = reg.tag(&reference, &alias)?;
            println!("{}@{alias} -> {}", model_name(&entry), entry.label);
        }
        RegistryCommand::Untag { name, alias } => {
            let v = reg.untag(&name, &alias)?;
            println!("removed {name}@{alias} (was v{v})");
        }
        RegistryCommand::Rm { reference, force } => {
            let entry = reg.remove(&reference, force)?;
            println!("removed {}", entry.label);
        }
        RegistryCommand::Gc { dry_run, json } => {
            let r = reg.gc(dry_run)?;
            if json {
                json_line(
                    serde_json::json!({"dry_run": dry_run, "removed": r.removed, "bytes": r.bytes}),
                );
            } else {
                for p in &r.removed {
                    println!("{} {p}", if dry_run { "would remove" } else { "removed" });
                }
                println!(
                    "{} {} entries, {:.1} MB",
                    if dry_run { "would free" } else { "freed" },
                    r.removed.len(),
                    r.bytes as f64 / 1e6
                );
            }
        }
        RegistryCommand::Diff { a, b, json } => {
            let ((ra, ea), (rb, eb)) = (resolve_model(&reg, &a)?, resolve_model(&reg, &b)?);
            let (ma, mb) = (ra.load(&ea)?.manifest, rb.load(&eb)?.manifest);
            let diff = report::config_diff(&ma.config, &mb.config);
            let metrics = report::flat_metrics_side_by_side(&ma.metrics, &mb.metrics);
            print_comparison(&ea.label, &eb.label, &diff, &metrics, json);
        }
        RegistryCommand::Verify { json } => {
            let r = reg.verify();
            if json {
                json_line(serde_json::to_value(&r).expect("reports are JSON"));
            } else {
                for d in &r.damaged {
                    println!("DAMAGED {}: {}", d.path, d.problem);
                }
                if !r.unfinished.is_empty() {
                    println!(
                        "{} unfinished write(s) under {} (harmless; `kiln registry gc` removes them)",
                        r.unfinished.len(),
                        reg.root.join(registry::TMP).display()
                    );
                }
                println!(
                    "checked {} entries: {}",
                    r.checked,
                    if r.damaged.is_empty() {
                        "all intact".to_string()
                    } else {
                        format!("{} problem(s)", r.damaged.len())
                    }
                );
            }
            if !r.damaged.is_empty() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Two runs or models side by side (`runs compare`, `registry diff`): the config keys that
/// differ and the metrics, as text or one JSON object.
fn print_comparison(
    a: &str,
    b: &str,
    diff: &[(String, String, String)],
    metrics: &[(String, String, Option<f64>, Option<f64>)],
    json: bool,
) {
    if !json {
        print!("{}", report::compare_text(a, b, diff, metrics));
        return;
    }
    let diff: Vec<_> = diff
        .iter()
        .map(|(k, x, y)| serde_json::json!({"key": k, "a": x, "b": y}))
        .collect();
    let metrics: Vec<_> = metrics
        .iter()
        .map(|(s, m, x, y)| serde_json::json!({"split": s, "metric": m, "a": x, "b": y}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"a": a, "b": b, "config": diff, "metrics": metrics})
    );
}

fn model_name(entry: &registry::Entry) -> String {
    match &entry.kind {
        registry::EntryKind::Version { name, .. } => name.clone(),
        registry::EntryKind::Final { run } | registry::EntryKind::Checkpoint { run, .. } => {
            run.clone()
        }
    }
}

fn cmd_runs(command: RunsCommand, registry: Option<PathBuf>) -> Result<u8, Failure> {
    let registry = registry_for(registry, "kiln-registry");
    let resolve = |r: &str| run::resolve(&registry, r).map_err(|e| Failure::usage(e.to_string()));
    let info = |dir: &Path| {
        run::read_json::<run::RunInfo>(&dir.join(run::RUN))
            .map_err(|e| Failure::runtime(e.to_string()))
    };
    match command {
        RunsCommand::List { json } => {
            let mut runs: Vec<run::RunInfo> = run::list(&registry)
                .map_err(|e| Failure::runtime(e.to_string()))?
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            runs.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
            for (path, e) in run::unreadable(&registry) {
                eprintln!("warning: skipping {}: {e}", path.display());
            }
            if json {
                println!("{}", serde_json::to_string(&runs).expect("runs are JSON"));
            } else if runs.is_empty() {
                println!("no runs in {}", registry.display());
            } else {
                print!("{}", report::runs_table(&runs));
            }
        }
        RunsCommand::Show { run, json } => {
            let dir = resolve(&run)?;
            let r = info(&dir)?;
            if json {
                println!("{}", serde_json::json!({"run_dir": dir, "run": r}));
            } else {
                print!("{}", report::runs_table(std::slice::from_ref(&r)));
                println!("folder  {}", dir.display());
                println!("config  {}", dir.join(run::CONFIG).display());
                print!("{}", report::metrics_table(&r.metrics));
                if let Some(m) = r.metrics.get("test").or(r.metrics.get("valid")) {
                    print!("{}", report::class_table(m));
                }
            }
        }
        RunsCommand::Compare { a, b, json } => {
            let (da, db) = (resolve(&a)?, resolve(&b)?);
            let (ra, rb) = (info(&da)?, info(&db)?);
            let config = |d: &Path| -> Result<serde_json::Value, Failure> {
                let text = std::fs::read_to_string(d.join(run::CONFIG))
                    .map_err(|e| Failure::runtime(format!("{}: {e}", d.display())))?;
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| Failure::runtime(format!("{}: {e}", d.display())))?;
                Ok(serde_json::to_value(table).expect("TOML is JSON"))
            };
            let diff = report::config_diff(&config(&da)?, &config(&db)?);
            let metrics = report::metrics_side_by_side(&ra.metrics, &rb.metrics);
            print_comparison(&ra.id, &rb.id, &diff, &metrics, json);
        }
    }
    Ok(0)
}

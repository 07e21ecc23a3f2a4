//! The command line: what `kiln` accepts, parsed by clap. Each command's work is in
//! `cmd/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train neural models from a config file, on burn."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a model from a TOML config (or continue an interrupted run with --resume).
    Train(TrainArgs),
    /// k-fold cross-validation of a config: one run per fold, mean ± std of every metric.
    Cv(CvArgs),
    /// Search hyperparameters: trials as runs of a base config (grid, random or TPE sampling,
    /// median or ASHA pruning), crash-safe, on several processes or machines.
    Sweep(SweepArgs),
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
    /// Why a model decides as it does: permutation importance per original column (or pixel
    /// patch) on a split, or per-example attributions (--rows) by Integrated Gradients and
    /// KernelSHAP.
    Explain {
        #[command(flatten)]
        args: ExplainArgs,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Per-group metrics of a classifier (selection rate, accuracy, TPR, FPR, precision,
    /// calibration) and their gaps; exit code 3 when a --max-*/--min-* limit is broken.
    Fairness {
        #[command(flatten)]
        args: FairnessArgs,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// How far new rows are from a model's training data: PSI and Kolmogorov-Smirnov per
    /// column, and the predictions' shift; exit code 3 when past the thresholds.
    Drift {
        /// A table model: NAME, NAME@ALIAS, NAME/vN, a run id, `latest` or a run folder.
        model: String,
        /// The new rows: a data file like the training file (the label column optional).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// A column drifted when its PSI is at least this.
        #[arg(long, default_value_t = 0.2)]
        psi: f64,
        /// A numeric column drifted when its KS statistic is at least this.
        #[arg(long, default_value_t = 0.1)]
        ks: f64,
        #[arg(long)]
        json: bool,
        /// Also write an HTML page with a plot per drifted column.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
    /// Serve models over HTTP: the Open Inference Protocol (KServe v2 / Triton REST),
    /// `/predict` with rows as the data file has them, `/metrics` for Prometheus.
    Serve(ServeArgs),
    /// Generate text with a trained language model, streamed to stdout as it comes.
    Generate {
        #[command(flatten)]
        args: GenerateArgs,
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
        /// A column of the data file to break the fairness section down by (repeatable).
        #[arg(long = "group", value_name = "COLUMN")]
        groups: Vec<String>,
        #[arg(long, value_name = "DIR")]
        registry: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum RunsCommand {
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
pub enum RegistryCommand {
    /// Every model version (or those of one model): aliases, run, step, monitored metric.
    List {
        /// Only this model.
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One entry (NAME, NAME@ALIAS, NAME/vN, a run id, `latest` or a run folder): its manifest,
    /// files and lineage.
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

/// `kiln train`'s arguments.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The config file.
    #[arg(required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. `--set optim.lr=3e-4` (repeatable; applied in order).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A few steps on a small slice, a validation pass, a checkpoint and an evaluation.
    #[arg(long)]
    pub smoke: bool,
    /// Continue a run (a run id, `latest`, or a run folder) from its last checkpoint.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["config", "set", "smoke"])]
    pub resume: Option<String>,
    /// Start from the weights of a registry model (NAME, NAME@ALIAS, NAME/vN, a run id,
    /// `latest` or a run folder); the architecture must match. Recorded as the new model's
    /// lineage.
    #[arg(long, value_name = "REF", conflicts_with = "resume")]
    pub init_from: Option<String>,
    /// Where to compute: auto, cpu, wgpu[:N], cuda[:N] (the config's backend.device
    /// otherwise). With --resume, continues the run on another device.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Every GPU of this machine, one process each, gradients through NCCL: `cuda:all`
    /// or `cuda:0,1,...` (needs `--features cuda,nccl`). Under mpirun or srun, use
    /// --device instead: the launcher starts the ranks.
    #[arg(long, value_name = "DEVICES", conflicts_with = "device")]
    pub devices: Option<String>,
    /// Print only the result.
    #[arg(long, short)]
    pub quiet: bool,
    /// End with one JSON object (run id, folder, metrics per split) on stdout.
    #[arg(long)]
    pub json: bool,
    /// The registry folder (default: $KILN_REGISTRY, the config's runtime.registry, or ./kiln-registry).
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
    /// A sweep trial's folder: set by `kiln sweep` for the trials it runs.
    #[arg(long, value_name = "DIR", hide = true)]
    pub trial: Option<PathBuf>,
}

/// `kiln cv`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CvArgs {
    /// The config file.
    #[arg(required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Folds: each validates once while the others train (stratified for classification).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Repeat the whole CV with other fold assignments (split seed + 1, + 2, ...).
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Override a config value (repeatable; applied in order, before the fold's own).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue a cross-validation (its id) after a crash or Ctrl-C: completed folds are kept,
    /// an interrupted one resumes from its checkpoint.
    #[arg(long, value_name = "CV_ID", conflicts_with_all = ["config", "set"])]
    pub resume: Option<String>,
    /// Print only the result.
    #[arg(long, short)]
    pub quiet: bool,
    /// End with the CV's record (folds, their metrics, mean and std) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML page of the per-fold metrics.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
    /// A sweep trial's folder: set by `kiln sweep` for cross-validated trials.
    #[arg(long, value_name = "DIR", hide = true)]
    pub trial: Option<PathBuf>,
}

/// `kiln sweep`'s flags.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub command: Option<SweepCommand>,
    /// The sweep file (a base config, the metric, the sampler, the pruner, the space).
    #[arg(required_unless_present_any = ["resume", "worker"])]
    pub file: Option<PathBuf>,
    /// Trials in all (the sweep file's `trials` otherwise).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Trials run at once as processes, sharing the cores.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Start no new trial after this long: "30m", "2h" (the file's `timeout` otherwise).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// The sampler's seed (the file's `seed` otherwise).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue a sweep after a crash or Ctrl-C: finished trials are kept, a running one
    /// resumes from its checkpoint.
    #[arg(long, value_name = "SWEEP_ID", conflicts_with_all = ["file", "worker"])]
    pub resume: Option<String>,
    /// Join a sweep as one more worker (another machine sharing the registry folder).
    #[arg(long, value_name = "SWEEP_ID", conflicts_with = "file")]
    pub worker: Option<String>,
    /// Name the sweep: the first process to run the command creates it, the others join it
    /// (every task of a Slurm job array can run the same line).
    #[arg(long, value_name = "SWEEP_ID")]
    pub id: Option<String>,
    /// Compute threads per trial (default: the cores shared among --parallel).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print only the result.
    #[arg(long, short)]
    pub quiet: bool,
    /// End with the sweep's summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "DIR", global = true)]
    pub registry: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SweepCommand {
    /// A sweep's trials, its best, the importance of each parameter; -o writes the plots.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        /// An HTML page: the metric over trials and against each parameter.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// `kiln explain`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// A table or image model: NAME, NAME@ALIAS, NAME/vN, a run id, `latest` or a run folder.
    pub model: String,
    /// train, valid or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Explain these rows of the split (`0,17,42`, `0:8`) instead of the whole model.
    #[arg(long, value_name = "ROWS")]
    pub rows: Option<String>,
    /// Attribution method for --rows: ig, shap or both [default: both for tables, ig for
    /// images].
    #[arg(long)]
    pub method: Option<String>,
    /// The class whose probability is explained [default: each row's predicted class].
    #[arg(long, value_name = "NAME")]
    pub class: Option<String>,
    /// Integrated Gradients: integration steps of the first try (doubled until the
    /// attributions sum to the change of output within 1%, at most 4096).
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// KernelSHAP: coalitions evaluated per row (all of them when there are no more).
    #[arg(long, default_value_t = 2048)]
    pub budget: usize,
    /// KernelSHAP: training rows standing in for absent columns.
    #[arg(long, default_value_t = 100)]
    pub background: usize,
    /// Permutation importance: the metric [default: the run's monitor, else accuracy or r2].
    #[arg(long)]
    pub metric: Option<String>,
    /// Permutation importance: permutations per column.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Permutation importance: at most this many rows of the split (a seeded draw) [default:
    /// all rows of a table, 1000 images].
    #[arg(long, value_name = "N")]
    pub max_samples: Option<usize>,
    /// Permutation importance of images: pixels per side of a patch.
    #[arg(long, default_value_t = 7)]
    pub patch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML page (importance bars, attributions, maps over images).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `kiln fairness`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FairnessArgs {
    /// A classifier: NAME, NAME@ALIAS, NAME/vN, a run id, `latest` or a run folder.
    pub model: String,
    /// A column of the data file to group by (read by the model or not); several are also
    /// intersected.
    #[arg(long = "group", value_name = "COLUMN", required = true)]
    pub groups: Vec<String>,
    /// train, valid or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// The favourable class [default: the second of two classes].
    #[arg(long, value_name = "CLASS")]
    pub positive: Option<String>,
    /// Groups with fewer examples are flagged as small.
    #[arg(long, default_value_t = 30)]
    pub min_group: usize,
    /// Exit 3 when a demographic parity difference is above this.
    #[arg(long, value_name = "X")]
    pub max_dp_diff: Option<f64>,
    /// Exit 3 when a demographic parity ratio is below this.
    #[arg(long, value_name = "X")]
    pub min_dp_ratio: Option<f64>,
    /// Exit 3 when an equalized odds difference is above this.
    #[arg(long, value_name = "X")]
    pub max_eo_diff: Option<f64>,
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML page with the per-group bars.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `kiln serve`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Models to serve, each under its name: NAME, NAME@ALIAS (followed as it moves), NAME/vN,
    /// a run id, `latest` (the newest run) or a run folder (each followed as the run it names
    /// at start).
    #[arg(required = true)]
    pub models: Vec<String>,
    /// The address to listen on (127.0.0.1: this machine only; 0.0.0.0 to be reachable).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one, printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Rows per forward pass, at most.
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    /// How long the first request of a batch waits for others, milliseconds (0: a batch is
    /// what is queued when the batcher is free, as Triton's default).
    #[arg(long, default_value_t = 0.0)]
    pub max_wait_ms: f64,
    /// Requests waiting per model, at most; one more is answered 503 at once.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Batcher instances per model, each with its own copy of the model (weights shared):
    /// while one computes a batch, the next gathers one (default: 2 with 2 CPUs or more).
    #[arg(long)]
    pub instances: Option<usize>,
    /// CPU threads per instance (default: the CPUs divided among the instances; given alone,
    /// the instances stay at their default).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Threads for HTTP and JSON (the async runtime's; forward passes run on the instances'
    /// threads) (default: half the CPUs, at least 1).
    #[arg(long)]
    pub http_threads: Option<usize>,
    /// Require `Authorization: Bearer TOKEN` (health checks excepted); also $KILN_SERVE_TOKEN.
    #[arg(long)]
    pub token: Option<String>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub body_limit: usize,
    /// Seconds a client has to send a request's headers; also how long a kept-alive
    /// connection may idle. A stalled or idle connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a client has to send a request's body once its headers are in; a stalled one
    /// is answered 408 and closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Connections open at once, at most; one more is answered 503 and closed (default: 4096,
    /// or what the open-file limit allows, the soft limit raised to the hard one first).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Check the model references (aliases) this often, seconds; 0: only on SIGHUP.
    #[arg(long, default_value_t = 2.0)]
    pub poll: f64,
    /// Served rows kept for the drift scores of /metrics (0: no drift scores).
    #[arg(long, default_value_t = 1000)]
    pub drift_window: usize,
    /// Encode a category never seen in training as all zeros (as `kiln predict` does)
    /// instead of answering 400.
    #[arg(long)]
    pub allow_unseen: bool,
    #[arg(long, value_name = "DIR")]
    pub registry: Option<PathBuf>,
}

/// `kiln generate`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// A language model: NAME, NAME@ALIAS, NAME/vN, a run id, `latest` or a run folder.
    pub model: String,
    /// The text to continue (in the model's vocabulary).
    #[arg(long, default_value = "\n")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// Divides the logits: lower is more conservative; 0 always takes the most likely token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Draw only from the K most likely tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Draw only from the most likely tokens whose probabilities add up to P (nucleus).
    #[arg(long, value_name = "P")]
    pub top_p: Option<f64>,
    /// The same seed gives the same text.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Recompute the whole context for every token instead of caching keys and values (slower;
    /// the same tokens).
    #[arg(long)]
    pub no_cache: bool,
    /// One JSON object at the end (text, tokens, tokens/s) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

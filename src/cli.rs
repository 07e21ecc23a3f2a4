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
    /// Start from the weights of a registry model (NAME, NAME@ALIAS, NAME/vN or a run id);
    /// the architecture must match. Recorded as the new model's lineage.
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

//! Setting a run up: everything between a validated config and step 0 (or the resumed step).
//!
//! In order: threads and device (each rank its own), the ranks' handshake, the data (fitted, or
//! the run's own statistics when resuming), the task and the model (checked to fit in memory
//! before anything is allocated), the run folder (written before step 0, locked while it
//! trains), the state (fresh, `--init-from`, or the newest intact checkpoint) shared from rank
//! 0, and what rank 0 records (tracking, checkpoints, manifests).

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::Device;
use kiln_models::{InputShape, Model, ModelConfig};

use super::Options;
use super::ranks::{handshake, share_start};
pub(super) use super::run_folder::RunRecord;
use super::run_folder::open_run;
use crate::amp::LossScale;
use crate::backend::Chosen;
use crate::checkpoint::{self, Saver};
use crate::config::RunConfig;
use crate::data::{self, Loader, Preprocessor, Source, Split};
use crate::dist::Group;
use crate::error::{ResumeError, SetupError, TrainError};
use crate::layout;
use crate::progress::Progress;
use crate::registry::Registry;
use crate::registry::manifest::{DataFile, InitFrom, Manifest};
use crate::registry::retention::Policy;
use crate::run::{self, RunInfo, Status};
use crate::state::TrainState;
use crate::task::{Task, task_of};
use crate::tracking::Tracker;

/// Examples in each split of a smoke run, and its number of steps.
const SMOKE_EXAMPLES: usize = 512;
const SMOKE_STEPS: usize = 4;

/// A run, set up: what the loop reads and updates.
pub(super) struct Session<'a> {
    pub cfg: &'a RunConfig,
    pub opts: &'a Options,
    pub group: Option<&'a Group>,
    pub rank: usize,
    pub world: usize,
    /// The device without autodiff (evaluation), and with it (training).
    pub base: Device,
    pub device: Device,
    pub task: Arc<dyn Task>,
    /// How the model reads an example: the layout batches are uploaded in.
    pub input: InputShape,
    pub train: Arc<Split>,
    pub valid: Split,
    pub test: Split,
    pub plan: Plan,
    pub state: TrainState,
    pub run: RunRecord,
    /// What rank 0 alone writes; `None` on the other ranks.
    pub rank0: Option<Rank0>,
    pub progress: Progress,
    /// The latest logged values (`train_loss`, `valid_<metric>`), recorded in checkpoints.
    pub last_metrics: BTreeMap<String, f64>,
    /// Data-parallel with batch norm: running statistics ride in the gradient all-reduce.
    pub has_buffers: bool,
}

/// The run's shape in steps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub epochs: usize,
    pub total_steps: usize,
    pub batches_per_epoch: usize,
    /// Examples per batch over all ranks (`train.batch_size` is per rank).
    pub global_batch: usize,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// Examples in the training split.
    pub examples: usize,
}

impl Plan {
    /// Examples of batch `b` of an epoch over all ranks (the last one may be short).
    pub fn batch_examples(&self, b: usize) -> usize {
        self.global_batch
            .min(self.examples.saturating_sub(b * self.global_batch))
    }
}

/// Rank 0's writers.
pub(super) struct Rank0 {
    pub tracker: Tracker,
    pub saver: Saver,
    /// What every manifest of the run shares.
    pub manifest: Manifest,
}

/// A seed per (run seed, step, micro-batch): dropout masks are a function of the position in
/// training, so a resumed run draws the same masks as an uninterrupted one.
pub(super) fn step_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let mut z = seed ^ ((step as u64) << 8 | micro as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

/// Every rank's dropout masks differ; rank 0's are those of a single process.
pub(super) fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed ^ (rank as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

impl<'a> Session<'a> {
    pub fn open(cfg: &'a RunConfig, opts: &'a Options) -> Result<Self, TrainError> {
        let group = opts.group.as_deref();
        // Rank 0 writes the run, its checkpoints, logs and registry entries; the others compute.
        let writer = group.is_none_or(|g| g.is_writer());
        let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world()));
        let (chosen, agreed, data_files) = join_ranks_on_devices(cfg, opts, group)?;
        let reg = Registry::new(&opts.registry);
        if writer {
            reg.ensure()?;
        }
        let base = chosen.device.clone();
        base.seed(cfg.seed);
        let device = base.clone().autodiff();

        // A resumed run continues as it was started (smoke or not).
        let resumed = resumed_info(opts)?;
        let smoke = resumed.as_ref().map_or(opts.smoke, |r| r.smoke);
        let (train, valid, test, pre, skipped, indexed) = load_data(cfg, opts, smoke)?;
        let task = task_of(cfg, &pre)?;
        let mconf = crate::model::architecture(cfg, &pre, task.as_ref())?;
        crate::model::check_memory(cfg, &mconf, chosen.backend, train.len())?;

        // The model; `--init-from` weights are loaded (and the architecture checked) before the
        // run's folder exists, so a bad reference leaves nothing behind. Rank 0 reads the
        // registry; the others receive its weights below.
        let model: Model = mconf.init(&device);
        let init = match (&opts.init_from, &opts.resume) {
            (Some(reference), None) if writer => Some(init_from(&reg, reference, model.clone())?),
            _ => None,
        };

        let device_label = device_label(&chosen, group);
        let mut run = open_run(
            cfg,
            opts,
            writer,
            resumed,
            smoke,
            &pre,
            &mconf,
            device_label,
        )?;
        record_image_files(&mut run, indexed, skipped, writer, opts)?;

        let fresh = TrainState::new(model, crate::optim::optimizer(cfg));
        let (state, refused, resumed_from) = starting_state(
            cfg, opts, &reg, &mut run, fresh, init, &pre, &mconf, &device,
        )?;
        let state = shared_start(cfg, group, state, refused, &mconf, &device)?;

        let plan = plan(cfg, train.len(), world, smoke);
        let rank0 = match writer {
            true => Some(rank0(
                cfg,
                opts,
                &run,
                &pre,
                &mconf,
                &chosen,
                data_files,
                resumed_from.as_ref(),
                state.pos.step,
            )?),
            false => None,
        };
        let progress = announce(
            cfg,
            opts,
            &chosen,
            agreed.as_ref(),
            &plan,
            resumed_from.as_ref().map(|(label, _)| label.as_str()),
            &run,
            &state,
        );
        let has_buffers = group.is_some() && crate::dist::grads::has_buffers(state.model());
        Ok(Self {
            cfg,
            opts,
            group,
            rank,
            world,
            base,
            device,
            task,
            input: mconf.input(),
            train: Arc::new(train),
            valid,
            test,
            plan,
            state,
            run,
            rank0,
            progress,
            last_metrics: BTreeMap::new(),
            has_buffers,
        })
    }
}

/// The start rank 0 chose ([`starting_state`]) shared with the other ranks of a job, and the
/// position's job-wide fields set: the world, the seed, f16's loss scale.
fn shared_start(
    cfg: &RunConfig,
    group: Option<&Group>,
    mut state: TrainState,
    refused: Option<ResumeError>,
    mconf: &ModelConfig,
    device: &Device,
) -> Result<TrainState, TrainError> {
    if let Some(g) = group {
        state = share_start(g, cfg, state, refused, mconf, device)?;
    }
    state.pos.world = Some(group.map_or(1, |g| g.world()));
    state.pos.seed = cfg.seed;
    if cfg.precision.scales_loss() && state.pos.loss_scale.is_none() {
        state.pos.loss_scale = Some(LossScale::default());
    }
    Ok(state)
}

/// The device as the run's record names it: `cpu`, or `cuda:0 x 4 ranks (nccl)`.
fn device_label(chosen: &Chosen, group: Option<&Group>) -> String {
    match group {
        Some(g) => format!(
            "{} x {} ranks ({})",
            chosen.describe(),
            g.world(),
            g.engine_name()
        ),
        None => chosen.describe(),
    }
}

/// The progress display, and its first lines: the device, how a job's ranks met, where a
/// resumed run goes on from.
#[allow(clippy::too_many_arguments)]
fn announce(
    cfg: &RunConfig,
    opts: &Options,
    chosen: &Chosen,
    agreed: Option<&crate::dist::AgreeReport>,
    plan: &Plan,
    resumed_from: Option<&str>,
    run: &RunRecord,
    state: &TrainState,
) -> Progress {
    let group = opts.group.as_deref();
    let writer = group.is_none_or(|g| g.is_writer());
    let progress = Progress::new(plan.total_steps, plan.epochs, opts.quiet || !writer);
    progress.line(&format!("device {}", chosen.describe()));
    if let (Some(g), Some(a)) = (group, agreed) {
        progress.line(&ranks_line(g, a, plan, cfg.train.batch_size));
    }
    if let Some(label) = resumed_from {
        progress.line(&format!(
            "resuming {} from {label}: epoch {} step {}",
            run.info.id,
            state.pos.epoch + 1,
            state.pos.step
        ));
    }
    progress
}

/// The line saying how a job's ranks meet: engine, launcher, batch, how long they took.
fn ranks_line(g: &Group, a: &crate::dist::AgreeReport, plan: &Plan, batch_size: usize) -> String {
    format!(
        "{} ranks through {} ({}); global batch {} ({batch_size} per rank); ranks agreed after {:.1} s, test all-reduce {:.1} ms",
        g.world(),
        g.engine_name(),
        g.topology().launcher.describe(),
        plan.global_batch,
        a.waited.as_secs_f64(),
        a.test_all_reduce.as_secs_f64() * 1e3
    )
}

/// The device of this process and, in a job, the ranks' agreement on the config, data and
/// devices (and NCCL for the gradients when MPI launched CUDA ranks): what the ranks agreed
/// (and how fast), and the data files rank 0 checked.
fn join_ranks_on_devices(
    cfg: &RunConfig,
    opts: &Options,
    group: Option<&Group>,
) -> Result<
    (
        Chosen,
        Option<crate::dist::AgreeReport>,
        Option<Vec<DataFile>>,
    ),
    TrainError,
> {
    let chosen = open_device(cfg, group);
    let (agreed, data_files) = match group {
        Some(g) => {
            let (agreed, files) = handshake(g, cfg, opts, &chosen)?;
            (Some(agreed), files)
        }
        None => (None, None),
    };
    let chosen = chosen?;
    #[cfg(feature = "nccl")]
    if let Some(g) = group.filter(|g| chosen.backend == "cuda" && g.engine_name() == "mpi") {
        let ordinal = chosen
            .id
            .strip_prefix("cuda:")
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        g.use_nccl(ordinal).map_err(TrainError::Nccl)?;
    }
    Ok((chosen, agreed, data_files))
}

/// The record of the run `--resume` continues; a completed run is not trained again.
fn resumed_info(opts: &Options) -> Result<Option<RunInfo>, TrainError> {
    let resumed: Option<RunInfo> = match &opts.resume {
        Some(dir) => Some(run::read_json(&dir.join(layout::RUN))?),
        None => None,
    };
    if let Some(r) = resumed.as_ref().filter(|r| r.status == Status::Completed) {
        return Err(TrainError::AlreadyCompleted { id: r.id.clone() });
    }
    Ok(resumed)
}

/// Image files: the index as read, saved with a new run (a resumed run has it), and the
/// unreadable files `data.bad_images = "skip"` left out, counted in `run.json` and warned of.
fn record_image_files(
    run: &mut RunRecord,
    indexed: Option<data::images::Indexed>,
    skipped: Vec<String>,
    writer: bool,
    opts: &Options,
) -> Result<(), TrainError> {
    if let Some(ix) = indexed.filter(|_| writer && opts.resume.is_none()) {
        let path = run.dir.join(crate::layout::IMAGE_INDEX);
        run::write_atomic(&path, ix.to_tsv().as_bytes())?;
    }
    if !skipped.is_empty() {
        if writer && !opts.quiet {
            eprintln!(
                "warning: {} unreadable image files left out (data.bad_images = \"skip\"), listed in run.json; the first: {}",
                skipped.len(),
                skipped[0]
            );
        }
        run.info.skipped_files = skipped;
    }
    Ok(())
}

/// Where training starts on rank 0: fresh, from `--init-from`, or from the run's newest intact
/// checkpoint (checked against the config, preprocessing and model it was written with). A run
/// resumes on as many ranks as saved it; otherwise it is refused before anything about it
/// changes: alone, with an error; in a job, on every rank (the verdict rides in the start's
/// broadcast). Returns the state, the refusal, and the checkpoint resumed from.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn starting_state(
    cfg: &RunConfig,
    opts: &Options,
    reg: &Registry,
    run: &mut RunRecord,
    fresh: TrainState,
    init: Option<(Model, InitFrom)>,
    pre: &Preprocessor,
    mconf: &ModelConfig,
    device: &Device,
) -> Result<(TrainState, Option<ResumeError>, Option<(String, Manifest)>), TrainError> {
    let group = opts.group.as_deref();
    let world = group.map_or(1, |g| g.world());
    let writer = group.is_none_or(|g| g.is_writer());
    let mut state = fresh;
    let mut resumed_from = None;
    let mut refused: Option<ResumeError> = None;
    if opts.resume.is_some() && writer {
        let optimizer = crate::optim::optimizer(cfg);
        let r = checkpoint::restore(reg, &run.dir, &run.info.id, mconf, device, optimizer)?;
        for why in &r.skipped {
            eprintln!("warning: skipping a damaged checkpoint: {why}");
        }
        checkpoint::check_unchanged(cfg, pre, mconf, &r.manifest, &r.label)?;
        let was = r.state.pos.world.unwrap_or(1);
        if was != world {
            // run.json is untouched: the run stays resumable with the right count.
            run.guard.disarm();
            let why = ResumeError::Ranks {
                id: run.info.id.clone(),
                was,
                batch: cfg.train.batch_size,
            };
            if group.is_none() {
                return Err(why.into());
            }
            refused = Some(why);
        } else {
            run.info.lineage.resumed_from.push(r.label.clone());
            run::write_json(&run.dir.join(layout::RUN), &run.info)?;
        }
        state = r.state;
        resumed_from = Some((r.label, r.manifest));
    } else if let Some((weights, from)) = init {
        state.map_model(|_| weights);
        run.info.lineage.init_from = Some(from);
        run::write_json(&run.dir.join(layout::RUN), &run.info)?;
    }
    Ok((state, refused, resumed_from))
}

/// The three splits (a slice of each for a smoke run) and the preprocessing: fitted on the
/// training split, or the run's own statistics when resuming.
/// The splits, the preprocessing, image files left out, and the image index.
type LoadedData = (
    Split,
    Split,
    Split,
    Preprocessor,
    Vec<String>,
    Option<data::images::Indexed>,
);

fn load_data(cfg: &RunConfig, opts: &Options, smoke: bool) -> Result<LoadedData, TrainError> {
    let fitted: Option<Preprocessor> = match &opts.resume {
        Some(dir) => Some(run::read_json(&dir.join(layout::PREPROCESS))?),
        None => None,
    };
    let prepared = data::prepare(&cfg.data, fitted.as_ref())?;
    let (mut train, mut valid, mut test) = (prepared.train, prepared.valid, prepared.test);
    if smoke {
        train = train.head(SMOKE_EXAMPLES);
        valid = valid.head(SMOKE_EXAMPLES);
        test = test.head(SMOKE_EXAMPLES);
    }
    // Image files: the held-out ones are decoded once now, so a corrupt file stops the run
    // before training rather than at its final evaluation (a training file is met in the
    // first epoch).
    for split in [&valid, &test] {
        if let Split::Images(set) = split {
            set.verify()?;
        }
    }
    if train.is_empty() {
        return Err(SetupError::EmptyTrainingSplit.into());
    }
    Ok((
        train,
        valid,
        test,
        prepared.preprocessor,
        prepared.skipped,
        prepared.indexed,
    ))
}

/// Threads (ranks on one machine share its cores) and this rank's device, probed before it is
/// opened; the precision checked against it.
fn open_device(cfg: &RunConfig, group: Option<&Group>) -> Result<Chosen, TrainError> {
    let mut threads = cfg.runtime.threads;
    if let Some(g) = group {
        g.set_timeout(cfg.timeout);
        let local = g.topology().local_world.unwrap_or(1);
        if threads == 0 && local > 1 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            threads = (cores / local).max(1);
        }
    }
    crate::backend::init_threads(threads);
    let spec = match group {
        Some(g) => crate::backend::for_local_rank(cfg.device, g.topology().local_rank),
        None => cfg.device,
    };
    let chosen = crate::backend::choose(spec)?;
    crate::backend::check_precision(&chosen, cfg.precision)?;
    Ok(chosen)
}

/// Loads the weights of a registry entry into `model` (checking the architecture).
fn init_from(
    reg: &Registry,
    reference: &str,
    model: Model,
) -> Result<(Model, InitFrom), TrainError> {
    let (owner, entry) = reg.find_model(reference)?;
    let loaded = owner.load(&entry)?;
    let bytes = loaded.file(layout::WEIGHTS)?.to_vec();
    let sha = loaded.manifest.files[layout::WEIGHTS].sha256.clone();
    let init = crate::weights::from_bytes(model, bytes).map_err(|source| TrainError::InitFrom {
        reference: reference.to_string(),
        entry: entry.label.clone(),
        source,
    })?;
    let from = InitFrom {
        reference: reference.to_string(),
        resolved: entry.label,
        weights_sha256: sha,
    };
    Ok((init, from))
}

/// The run's length in batches and steps.
fn plan(cfg: &RunConfig, examples: usize, world: usize, smoke: bool) -> Plan {
    let t = &cfg.train;
    // `train.batch_size` is per rank: a step takes `global_batch` examples, as one process
    // with that batch size would.
    let global_batch = t.batch_size.saturating_mul(world);
    let batches_per_epoch = Loader::batches_per_epoch(examples, global_batch);
    let steps_per_epoch = batches_per_epoch.div_ceil(t.grad_accum);
    let epochs = if smoke { 1 } else { t.epochs };
    let mut total_steps = epochs.saturating_mul(steps_per_epoch);
    if let Some(m) = t.max_steps {
        total_steps = total_steps.min(m);
    }
    if smoke {
        total_steps = total_steps.min(SMOKE_STEPS);
    }
    Plan {
        epochs,
        total_steps,
        batches_per_epoch,
        global_batch,
        accum: t.grad_accum,
        examples,
    }
}

/// Rank 0's writers: the manifest every entry of the run shares (checked against the
/// checkpoint's data when resuming), the background checkpoint writer, and tracking (a resumed
/// session continues the same step axis).
#[allow(clippy::too_many_arguments)]
fn rank0(
    cfg: &RunConfig,
    opts: &Options,
    run: &RunRecord,
    pre: &Preprocessor,
    mconf: &ModelConfig,
    chosen: &Chosen,
    data_files: Option<Vec<DataFile>>,
    resumed_from: Option<&(String, Manifest)>,
    step: usize,
) -> Result<Rank0, TrainError> {
    let files = match data_files {
        Some(files) => files,
        None => checkpoint::data_files(cfg)?,
    };
    let manifest = checkpoint::base_manifest(
        cfg,
        &run.info.id,
        mconf,
        pre,
        &opts.config_path,
        run.info.lineage.clone(),
        chosen,
        files,
    )?;
    if let Some((label, m)) = resumed_from {
        checkpoint::check_same_data(&m.data, &manifest.data, Some(label))?;
    }
    let policy = Policy {
        keep_last: cfg.train.keep_last,
        keep_best: cfg.train.keep_best,
        higher_is_better: cfg.monitor.higher_is_better,
    };
    let saver = Saver::new(&opts.registry, &run.dir, manifest.clone(), policy);
    let mut tracker = Tracker::open(&run.dir, opts.resume.as_ref().map(|_| step as u64))?;
    if opts.resume.is_none() {
        // The HParams tab averages the sessions of a group: each run is its own group.
        tracker.started(
            &crate::tracking::flatten(&cfg.resolved_json()),
            &run.info.id,
        )?;
    }
    Ok(Rank0 {
        tracker,
        saver,
        manifest,
    })
}

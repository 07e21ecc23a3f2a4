//! The training loop, top to bottom: data, model, optimizer, steps, validation, checkpoints,
//! final evaluation. One function; no hooks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Tensor, TensorData};
use kiln_models::Model;

use crate::checkpoint::{self, LoopState, Saver};
use crate::config::RunConfig;
use crate::data::{self, DataError, Dataset, Loader, Preprocessor};
use crate::eval::evaluate_in;
use crate::metrics::Metrics;
use crate::optim;
use crate::progress::{Progress, StepReport};
use crate::registry::manifest::{InitFrom, Kind, Lineage};
use crate::registry::retention::Policy;
use crate::registry::{self, Registry, RegistryError, store};
use crate::run::{self, RunError, RunInfo, Status};
pub use crate::setup::{device, init_threads, loss_of, model_config};

/// How a training is launched (what is not in the config).
#[derive(Debug, Clone)]
pub struct Options {
    /// Registry root; runs go to `<registry>/runs/<id>`.
    pub registry: PathBuf,
    /// A few steps on a small slice, validation, checkpoint, evaluation.
    pub smoke: bool,
    pub quiet: bool,
    /// Where the config came from, for the run's record.
    pub config_path: String,
    /// Continue this run (its folder) from its last checkpoint.
    pub resume: Option<PathBuf>,
    /// Set (by Ctrl-C) to stop after the current step, save and exit.
    pub stop: Arc<AtomicBool>,
    /// Start from the weights of this registry entry (`name`, `name@alias`, `name/vN`, run id).
    pub init_from: Option<String>,
    /// The other ranks of a data-parallel job (see [`crate::dist`]); `None` trains alone.
    pub group: Option<std::rc::Rc<crate::dist::Group>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error("{0}")]
    Setup(String),
    /// The ranks of a data-parallel job disagree, or one could not start; every rank says it.
    #[error("{0}")]
    Distributed(String),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error(
        "training diverged at step {step}: the loss is {loss}; lower optim.lr or set train.clip_grad_norm"
    )]
    Diverged { step: usize, loss: f64 },
}

/// What a training produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub info: RunInfo,
}

/// Examples in the training slice of a smoke run, and its number of steps.
const SMOKE_EXAMPLES: usize = 512;
const SMOKE_STEPS: usize = 4;

/// A seed per (run seed, step, micro-batch): dropout masks are a function of the position in
/// training, so a resumed run draws the same masks as an uninterrupted one.
fn step_seed(seed: u64, step: usize, micro: usize) -> u64 {
    let mut z = seed ^ ((step as u64) << 8 | micro as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

/// Every rank's dropout masks differ; rank 0's are those of a single process.
fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed ^ (rank as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// What this rank tells the others before step 0 (see [`crate::dist::Group::agree`]).
fn hello(
    cfg: &RunConfig,
    opts: &Options,
    world: usize,
    backend: &str,
    data_files: &[crate::registry::manifest::DataFile],
) -> Result<crate::dist::Hello, TrainError> {
    let mut resolved = serde_json::to_value(&cfg.file).expect("the config serialises to JSON");
    resolved["name"] = cfg.name.clone().into();
    // Each rank has its own device (cuda:LOCAL_RANK), threads and registry folder.
    if let Some(o) = resolved.as_object_mut() {
        o.remove("runtime");
    }
    if let Some(b) = resolved.get_mut("backend").and_then(|b| b.as_object_mut()) {
        b.remove("device");
    }
    let mut config = crate::tracking::flatten(&resolved);
    config.insert("(--smoke)".into(), opts.smoke.into());
    config.insert("(--init-from)".into(), opts.init_from.clone().into());
    // One engine for all: NCCL only when every rank is on CUDA.
    config.insert("(backend)".into(), backend.into());
    if let Some(dir) = &opts.resume {
        // Each rank reads the resumed run's preprocessing from its own copy of the registry.
        let p = dir.join(run::PREPROCESS);
        let (sha, _) = registry::store::hash_file(&p)
            .map_err(|e| TrainError::Setup(format!("{}: {e}", p.display())))?;
        config.insert("(resumed preprocess.json)".into(), sha.into());
    }
    let data = data_files
        .iter()
        .map(|f| (f.role.clone(), f.sha256.clone()))
        .collect();
    Ok(crate::dist::Hello {
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        world,
        config,
        data,
        resume: opts
            .resume
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
    })
}

fn smoke_slice(d: &Dataset) -> Dataset {
    d.head(SMOKE_EXAMPLES)
}

/// Trains a model as `cfg` says and records the run. Returns when training ends: finished,
/// stopped early, or interrupted (then `info.status` is `Interrupted` and a checkpoint exists).
pub fn train(cfg: &RunConfig, opts: &Options) -> Result<Outcome, TrainError> {
    let f = &cfg.file;
    let t = &f.train;
    let group = opts.group.as_deref();
    // Rank 0 writes the run, its checkpoints, logs and registry entries; the others compute.
    let writer = group.is_none_or(|g| g.is_writer());
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world()));
    let mut threads = f.runtime.threads;
    if let Some(g) = group {
        g.set_timeout(Duration::from_secs(f.distributed.timeout_s));
        // Ranks sharing a machine share its cores.
        let local = g.topology().local_world.unwrap_or(1);
        if threads == 0 && local > 1 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            threads = (cores / local).max(1);
        }
    }
    init_threads(threads);
    let prelude = (|| {
        let precision = crate::amp::Precision::parse(&f.backend.precision).ok_or_else(|| {
            TrainError::Setup(format!(
                "`backend.precision` = {:?}: use f32, f16 or bf16",
                f.backend.precision
            ))
        })?;
        let spec = match group {
            Some(g) => crate::backend::for_local_rank(cfg.device, g.topology().local_rank),
            None => cfg.device,
        };
        let chosen = crate::backend::choose(spec)?;
        crate::backend::check_precision(&chosen, precision)?;
        Ok::<_, TrainError>((precision, chosen))
    })();
    let mut agreed = None;
    // The data files' hashes: compared between ranks, then recorded in rank 0's manifests.
    let mut data_files = None;
    if let Some(g) = group {
        // The first collective: a rank that failed to start tells the others, so every rank
        // ends with the reason instead of waiting.
        let mine = prelude
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|(_, chosen)| {
                let files = checkpoint::data_files(cfg).map_err(|e| e.to_string())?;
                let h = hello(cfg, opts, world, chosen.backend, &files);
                data_files = Some(files);
                h.map_err(|e| e.to_string())
            });
        agreed = Some(g.agree(mine).map_err(TrainError::Distributed)?);
    }
    let (precision, chosen) = prelude?;
    #[cfg(feature = "nccl")]
    if let Some(g) = group.filter(|g| chosen.backend == "cuda" && g.engine_name() == "mpi") {
        let ordinal = chosen
            .id
            .strip_prefix("cuda:")
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        g.use_nccl(ordinal).map_err(TrainError::Setup)?;
    }
    // What run.json records as the device: with several ranks, how many and through what.
    let device_label = match group {
        Some(g) => format!(
            "{} x {world} ranks ({})",
            chosen.describe(),
            g.engine_name()
        ),
        None => chosen.describe(),
    };
    let reg = Registry::new(&opts.registry);
    if writer {
        reg.ensure()?;
    }
    let base = chosen.device.clone();
    base.seed(f.seed);
    let device = base.clone().autodiff();

    // Data: fitted on the training split, or the run's own statistics when resuming.
    // A resumed run continues as it was started (smoke or not); a completed one is not
    // trained again.
    let resumed: Option<RunInfo> = match &opts.resume {
        Some(dir) => Some(run::read_json(&dir.join(run::RUN))?),
        None => None,
    };
    if let Some(r) = resumed.as_ref().filter(|r| r.status == Status::Completed) {
        return Err(TrainError::Setup(format!(
            "run {} already completed; train a new run, or evaluate this one with `kiln eval {}`",
            r.id, r.id
        )));
    }
    let smoke = resumed.as_ref().map_or(opts.smoke, |r| r.smoke);
    let fitted: Option<Preprocessor> = match &opts.resume {
        Some(dir) => Some(run::read_json(&dir.join(run::PREPROCESS))?),
        None => None,
    };
    let prepared = data::prepare(&cfg.data, fitted.as_ref())?;
    let (mut train_set, mut valid_set, mut test_set) =
        (prepared.train, prepared.valid, prepared.test);
    if smoke {
        train_set = smoke_slice(&train_set);
        valid_set = smoke_slice(&valid_set);
        test_set = smoke_slice(&test_set);
    }
    if train_set.n == 0 {
        return Err(TrainError::Setup(
            "the training split is empty: lower data.split.valid / data.split.test".into(),
        ));
    }
    let pre = prepared.preprocessor;
    let loss_fn = loss_of(cfg, &pre)?;
    let mconf = model_config(cfg, &pre, train_set.d, loss_fn.outputs())?;

    // The model; `--init-from` weights are loaded (and the architecture checked) before the
    // run's folder exists, so a bad reference leaves nothing behind.
    let mut model: Model = mconf.init(&device);
    let init = match (&opts.init_from, &opts.resume) {
        // Rank 0 reads the registry; the others receive its weights below.
        (Some(reference), None) if writer => {
            let entry = reg.resolve(reference)?;
            let loaded = reg.load(&entry)?;
            let bytes = loaded.file(registry::WEIGHTS)?.to_vec();
            let sha = loaded.manifest.files[registry::WEIGHTS].sha256.clone();
            let init = crate::weights::from_bytes(model.clone(), bytes).map_err(|e| {
                TrainError::Setup(format!("--init-from {reference} ({}): {e}", entry.label))
            })?;
            let from = InitFrom {
                reference: reference.clone(),
                resolved: entry.label,
                weights_sha256: sha,
            };
            Some((init, from))
        }
        _ => None,
    };

    // The run's folder, written before step 0.
    // One process trains a run at a time: its lock is taken before anything is written.
    let run_lock = |dir: &std::path::Path, id: &str| {
        store::Lock::acquire(
            &dir.join(registry::LOCK),
            Duration::ZERO,
            &format!("run {id}"),
        )
    };
    let new_info = |id: String| RunInfo {
        id,
        name: cfg.name.clone(),
        status: Status::Running,
        smoke,
        started: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        finished: None,
        config_path: opts.config_path.clone(),
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        device: device_label.clone(),
        steps: 0,
        epochs_done: 0,
        wall_seconds: 0.0,
        train_samples_per_second: 0.0,
        monitor: cfg.monitor.metric.clone(),
        best_valid: None,
        metrics: BTreeMap::new(),
        lineage: Lineage::default(),
        version: None,
    };
    let (run_dir, mut info, _run_lock) = match (&opts.resume, resumed) {
        (Some(dir), Some(mut info)) => {
            let lock = if writer {
                Some(run_lock(dir, &info.id)?)
            } else {
                None
            };
            info.status = Status::Running;
            info.finished = None;
            (dir.clone(), info, lock)
        }
        // Not rank 0: the run's record lives in memory only.
        _ if !writer => (PathBuf::new(), new_info(String::new()), None),
        _ => {
            let id = run::new_id(&cfg.name);
            let runs = run::runs_dir(&opts.registry);
            let dir = runs.join(&id);
            std::fs::create_dir_all(&runs).map_err(run::io(&runs))?;
            // `create_dir`, not `_all`: an id taken by another run is an error, not a merge.
            std::fs::create_dir(&dir).map_err(run::io(&dir))?;
            let lock = run_lock(&dir, &id)?;
            let ckpts = dir.join(run::CHECKPOINTS);
            std::fs::create_dir(&ckpts).map_err(run::io(&ckpts))?;
            let mut resolved = cfg.file.clone();
            resolved.name = Some(cfg.name.clone());
            let toml = toml::to_string_pretty(&resolved).expect("the config serialises to TOML");
            let header = format!(
                "# Resolved config of run {id}: defaults filled in, overrides applied.\n# From: {}\n",
                opts.config_path
            );
            run::write_atomic(&dir.join(run::CONFIG), format!("{header}{toml}").as_bytes())?;
            run::write_json(&dir.join(run::PREPROCESS), &pre)?;
            run::write_json(&dir.join(run::MODEL_CONFIG), &mconf)?;
            let info = new_info(id);
            run::write_json(&dir.join(run::RUN), &info)?;
            (dir, info, Some(lock))
        }
    };

    // From here on the run exists on disk: if training fails (an error or a panic), it is
    // marked `failed` rather than left `running`.
    let mut guard = FailGuard {
        path: run_dir.join(run::RUN),
        info: writer.then(|| info.clone()),
    };

    // Model, optimizer, loop state: fresh, or from the last checkpoint.
    let mut optimizer = optim::optimizer(cfg);
    let mut st = LoopState::default();
    let mut best_model: Option<Model> = None;
    let mut resumed_label = None;
    let mut resumed_manifest = None;
    // A run resumes on as many ranks as saved it; otherwise it is refused before anything
    // about it changes, on every rank (the verdict rides in the broadcast below).
    let mut refused: Option<String> = None;
    if opts.resume.is_some() && writer {
        let r = checkpoint::load(&reg, &run_dir, &info.id, &mconf, &device, optimizer)?;
        for why in &r.skipped {
            eprintln!("warning: skipping a damaged checkpoint: {why}");
        }
        checkpoint::check_unchanged(cfg, &pre, &mconf, &r.manifest, &r.label)?;
        let was = r.state.world.unwrap_or(1);
        if was != world {
            let why = format!(
                "run {} was trained on {was} rank{} (global batch {}); resume it on {was}{}: another number of ranks changes the global batch, the schedule and the place in the epoch",
                info.id,
                if was == 1 { "" } else { "s" },
                t.batch_size * was,
                if was == 1 {
                    " process, without a launcher".to_string()
                } else {
                    format!(" ranks (mpirun -np {was})")
                }
            );
            // run.json is untouched: the run stays resumable with the right count.
            guard.info = None;
            if group.is_none() {
                return Err(TrainError::Setup(why));
            }
            refused = Some(why);
        } else {
            info.lineage.resumed_from.push(r.label.clone());
            run::write_json(&run_dir.join(run::RUN), &info)?;
        }
        (model, optimizer, st, best_model) = (r.model, r.optimizer, r.state, r.best);
        resumed_label = Some(r.label);
        resumed_manifest = Some(r.manifest);
    } else if let Some((init, from)) = init {
        model = init;
        info.lineage.init_from = Some(from);
        run::write_json(&run_dir.join(run::RUN), &info)?;
    }
    if let Some(g) = group {
        // Every rank starts from rank 0's weights (and, resuming, its optimizer moments, loop
        // state and best weights): identical replicas, whatever the backend's initialisation.
        let packed = if let Some(why) = &refused {
            [&[0u8][..], why.as_bytes()].concat()
        } else if writer {
            // burn draws a parameter's initial values when it is first used; alone, that is
            // the first forward pass, after the step's seed is set. Draw them from that seed
            // here too, so a data-parallel run starts from a single process's weights.
            device.seed(step_seed(f.seed, st.step, 0));
            let mut packed = vec![1u8];
            packed.extend(checkpoint::pack_start(
                &model,
                &optimizer,
                &st,
                best_model.as_ref(),
                opts.resume.is_some(),
            )?);
            packed
        } else {
            Vec::new()
        };
        let packed = g.broadcast(packed, &|| {
            "the broadcast of rank 0's starting weights".into()
        });
        // The first byte: 1, rank 0's state follows; 0, why rank 0 refused to start.
        if packed.first() != Some(&1) {
            return Err(TrainError::Distributed(
                String::from_utf8_lossy(packed.get(1..).unwrap_or_default()).into_owned(),
            ));
        }
        if !writer {
            (model, optimizer, st, best_model) =
                checkpoint::unpack_start(&packed[1..], &mconf, &device, optimizer)?;
        }
    }
    st.world = Some(world);
    st.seed = f.seed;
    if precision.scales_loss() && st.loss_scale.is_none() {
        st.loss_scale = Some(crate::amp::LossScale::default());
    }
    let policy = Policy {
        keep_last: t.keep_last,
        keep_best: t.keep_best,
        higher_is_better: cfg.monitor.higher_is_better,
    };
    let base_manifest = if !writer {
        None
    } else {
        Some(checkpoint::base_manifest(
            cfg,
            &info.id,
            &mconf,
            &pre,
            &opts.config_path,
            info.lineage.clone(),
            &chosen,
            match data_files.take() {
                Some(files) => files,
                None => checkpoint::data_files(cfg)?,
            },
        )?)
    };
    if let (Some(m), Some(b)) = (&resumed_manifest, &base_manifest) {
        checkpoint::check_same_data(&m.data, &b.data, resumed_label.as_deref())?;
    }
    let saver = base_manifest
        .as_ref()
        .map(|b| Saver::new(&opts.registry, &run_dir, b.clone(), policy));
    let mut last_metrics: BTreeMap<String, f64> = BTreeMap::new();

    let accum = t.grad_accum;
    // `train.batch_size` is per rank: a step takes `global_batch` examples, as one process
    // with that batch size would.
    let global_batch = t.batch_size * world;
    let batches_per_epoch = Loader::batches_per_epoch(train_set.n, global_batch);
    let steps_per_epoch = batches_per_epoch.div_ceil(accum);
    let epochs = if smoke { 1 } else { t.epochs };
    let mut total_steps = epochs * steps_per_epoch;
    if let Some(m) = t.max_steps {
        total_steps = total_steps.min(m);
    }
    if smoke {
        total_steps = total_steps.min(SMOKE_STEPS);
    }
    let progress = Progress::new(total_steps, epochs, opts.quiet || !writer);
    progress.line(&format!("device {}", chosen.describe()));
    if let (Some(g), Some(a)) = (group, agreed) {
        progress.line(&format!(
            "{world} ranks through {} ({}); global batch {global_batch} ({} per rank); ranks agreed after {:.1} s, test all-reduce {:.1} ms",
            g.engine_name(),
            g.topology().launcher.describe(),
            t.batch_size,
            a.waited.as_secs_f64(),
            a.test_all_reduce.as_secs_f64() * 1e3
        ));
    }
    if let Some(label) = &resumed_label {
        progress.line(&format!(
            "resuming {} from {label}: epoch {} step {}",
            info.id,
            st.epoch + 1,
            st.step
        ));
    }
    // Tracking: metrics.jsonl and TensorBoard; a resumed session continues the same step axis.
    let mut tracker = match writer {
        true => Some(crate::tracking::Tracker::open(
            &run_dir,
            opts.resume.as_ref().map(|_| st.step as u64),
        )?),
        false => None,
    };
    if let Some(tracker) = tracker.as_mut().filter(|_| opts.resume.is_none()) {
        let mut resolved = serde_json::to_value(&cfg.file).expect("the config serialises to JSON");
        resolved["name"] = cfg.name.clone().into();
        // The HParams tab averages the sessions of a group: each run is its own group.
        tracker.started(&crate::tracking::flatten(&resolved), &info.id)?;
    }
    // A point that cannot be written (a full disk) stops training at once, with the error.
    let mut log_line = |p: crate::tracking::Point| match tracker.as_mut() {
        Some(t) => t.record(p),
        None => Ok(()),
    };

    let train_data = Arc::new(train_set);
    let has_buffers = group.is_some() && crate::dist::grads::has_buffers(&model);
    let started = Instant::now();
    let mut window_start = Instant::now();
    let mut window_samples = 0usize;
    let mut window_loss: Option<Tensor<1>> = None;
    let mut window_batches = 0usize;
    let mut interrupted = false;
    // A resumed run that had run out of patience stops at once.
    let mut stop_early = t
        .early_stopping
        .as_ref()
        .is_some_and(|e| st.validations_without_improvement >= e.patience);
    let d = train_data.d;

    let validate = |model: &Model,
                    st: &mut LoopState,
                    last_metrics: &mut BTreeMap<String, f64>,
                    best_model: &mut Option<Model>,
                    progress: &Progress,
                    log_line: &mut dyn FnMut(crate::tracking::Point) -> Result<(), RunError>|
     -> Result<(Metrics, bool), RunError> {
        let m = evaluate_in(group, &model.valid(), &valid_set, &loss_fn, &pre, &base);
        let value = m.get(&cfg.monitor.metric);
        let min_delta = t.early_stopping.as_ref().map_or(0.0, |e| e.min_delta);
        let improved = value.is_some_and(|v| cfg.monitor.improves(v, st.best, min_delta));
        st.last_valid = value;
        last_metrics.retain(|k, _| !k.starts_with("valid_"));
        last_metrics.extend(m.scalars().iter().map(|(k, v)| (format!("valid_{k}"), *v)));
        if improved {
            st.best = value;
            st.best_step = Some(st.step);
            st.validations_without_improvement = 0;
            // A snapshot of its own: a clone would share batch norm's running statistics
            // with the model that goes on training.
            *best_model = Some(model.valid());
        } else if value.is_some() {
            // An undefined metric (AUC of a split missing a class) says nothing either way.
            st.validations_without_improvement += 1;
        }
        let shown: Vec<String> = m
            .scalars()
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        progress.line(&format!(
            "valid epoch {} step {}: {}{}",
            st.epoch + usize::from(st.batch > 0),
            st.step,
            shown.join(" "),
            if improved { " (best)" } else { "" }
        ));
        log_line(crate::tracking::Point {
            split: "valid",
            step: st.step as u64,
            epoch: st.epoch,
            values: m
                .all_scalars()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })?;
        let patience_out = t
            .early_stopping
            .as_ref()
            .is_some_and(|e| st.validations_without_improvement >= e.patience);
        Ok((m, patience_out))
    };

    'epochs: while st.epoch < epochs && st.step < total_steps {
        let epoch_started = Instant::now();
        let order = data::loader::epoch_order(train_data.n, f.seed, st.epoch, true);
        let loader = match world {
            1 => Loader::new(
                Arc::clone(&train_data),
                order,
                t.batch_size,
                st.batch,
                f.runtime.workers,
                f.runtime.prefetch,
            ),
            _ => Loader::from_batches(
                Arc::clone(&train_data),
                crate::dist::shard(&order, t.batch_size, world, rank),
                st.batch,
                f.runtime.workers,
                f.runtime.prefetch,
            ),
        };
        let mut accumulator = GradientsAccumulator::<Model>::new();
        let mut micro = 0;
        // One batch ahead: the next batch's copy to the device is queued before this step's
        // kernels, so on a GPU the transfer overlaps compute.
        // A rank's share of the last, short batch may be empty: it only joins the all-reduce.
        let upload = |b: data::loader::Batch| {
            let x = (b.len > 0)
                .then(|| Tensor::<2>::from_data(TensorData::new(b.x, [b.len, d]), &device));
            (x, b.y, b.len)
        };
        let mut batches = loader.map(upload).peekable();
        while let Some((x, y, len)) = batches.next() {
            batches.peek();
            // This step's examples over all ranks; this rank's loss counts `len / m` of their
            // mean, so the summed gradient is the gradient of the global batch's mean loss.
            let m = global_batch.min(train_data.n - st.batch * global_batch);
            let share = len as f64 / m as f64;
            window_batches += 1;
            window_samples += m;
            st.samples_seen += m as u64;
            let grads = match x {
                None => GradientsParams::new(),
                Some(x) => {
                    device.seed(rank_seed(step_seed(f.seed, st.step, micro), rank));
                    let out = match precision.compute() {
                        Some(half) => crate::amp::forward(&model, x, half),
                        None => model.forward(x),
                    };
                    let mut loss = loss_fn.forward(out, &y, &device);
                    if share != 1.0 {
                        loss = loss.mul_scalar(share);
                    }
                    let detached = loss.clone().detach();
                    window_loss = Some(match window_loss.take() {
                        Some(acc) => acc + detached,
                        None => detached,
                    });
                    // f16: the loss is scaled before the backward pass so small gradients
                    // survive.
                    let loss = match &st.loss_scale {
                        Some(s) => loss.mul_scalar(s.scale),
                        None => loss,
                    };
                    GradientsParams::from_grads(loss.backward(), &model)
                }
            };
            st.batch += 1;
            micro += 1;
            let mut grads = if accum == 1 {
                grads
            } else {
                accumulator.accumulate(&model, grads);
                if micro < accum && st.batch < batches_per_epoch {
                    continue;
                }
                accumulator.grads()
            };
            // The mean over micro-batches, unscaled.
            let unscale = micro as f64 * st.loss_scale.as_ref().map_or(1.0, |s| s.scale);
            if unscale != 1.0 {
                optim::scale_grads(&model, &mut grads, 1.0 / unscale);
            }
            micro = 0;
            // Data-parallel: one all-reduce of the flat gradient, with a stop flag riding along
            // so every rank stops (Ctrl-C) at the same step.
            let mut stop_requested = opts.stop.load(Ordering::SeqCst);
            if let Some(g) = group {
                let flag = [f32::from(u8::from(stop_requested))];
                if has_buffers {
                    // burn keeps batch norm's newest running statistics aside, per thread,
                    // until the module is synchronised; `valid()` does that (and the copy it
                    // returns is not needed), so the statistics read and replaced below are
                    // the current ones.
                    drop(model.valid());
                }
                let (mut flat, layout) = crate::dist::grads::flatten(&model, &grads, &flag);
                g.all_reduce_sum(&mut flat, &|| {
                    format!("the gradient all-reduce of step {}", st.step + 1)
                });
                stop_requested = flat[layout.extra_start()] > 0.0;
                grads = crate::dist::grads::unflatten(&model, &flat, &layout, &base);
                if layout.has_buffers() {
                    model = crate::dist::grads::average_buffers(model, &flat, &layout, world);
                }
            }
            // f16: a step whose gradients overflowed is skipped and the scale lowered (one
            // host read per step, as in PyTorch's GradScaler).
            let apply = match st.loss_scale.as_mut() {
                Some(s) => {
                    let n = optim::grad_norm(&model, &grads);
                    let apply = s.update(n.is_finite());
                    if s.stalled() {
                        return Err(TrainError::Setup(format!(
                            "f16 gradients overflowed on {} steps in a row, down to loss scale 1 (step {}); train in bf16 or f32, or lower optim.lr",
                            crate::amp::STALL_STEPS,
                            st.step
                        )));
                    }
                    apply
                }
                None => true,
            };
            let logging = (st.step + 1) % t.log_every == 0 || st.step + 1 >= total_steps;
            // Clipping stays on the device; the norm is read back only at log points.
            let norm = match t.clip_grad_norm {
                Some(max) => optim::clip_grad_norm(&model, &mut grads, max),
                None if logging => optim::grad_norm_tensor(&model, &grads),
                None => None,
            };
            let norm = norm
                .filter(|_| logging)
                .map(|n| n.into_scalar::<f32>() as f64);
            let lr = optim::learning_rate(&f.schedule, f.optim.lr, st.step, total_steps);
            if apply {
                model = optimizer.step(lr, model, grads);
            }
            st.step += 1;
            progress.tick(st.step);

            let last_step = st.step >= total_steps;
            if st.step % t.log_every == 0 || last_step {
                let mut mean_loss = window_loss
                    .take()
                    .map_or(0.0, |l| l.into_scalar::<f32>() as f64)
                    / window_batches.max(1) as f64;
                if let Some(g) = group {
                    let mut sum = vec![mean_loss as f32];
                    g.all_reduce_sum(&mut sum, &|| format!("the loss sum of step {}", st.step));
                    mean_loss = f64::from(sum[0]);
                }
                if !mean_loss.is_finite() {
                    return Err(TrainError::Diverged {
                        step: st.step,
                        loss: mean_loss,
                    });
                }
                let elapsed = window_start.elapsed().as_secs_f64().max(1e-9);
                let sps = window_samples as f64 / elapsed;
                let steps_left = total_steps - st.step;
                let eta = Duration::from_secs_f64(
                    steps_left as f64 * elapsed / (window_batches.max(1) as f64 / accum as f64),
                );
                progress.step(&StepReport {
                    epoch: st.epoch,
                    step: st.step,
                    loss: mean_loss,
                    lr,
                    samples_per_second: sps,
                    eta,
                });
                let mut values = vec![
                    ("loss".to_string(), mean_loss),
                    ("lr".to_string(), lr),
                    ("samples_per_second".to_string(), sps),
                ];
                values.extend(norm.map(|n| ("grad_norm".to_string(), n)));
                if let Some(s) = &st.loss_scale {
                    values.push(("loss_scale".into(), s.scale));
                    values.push(("skipped_steps".into(), s.skipped as f64));
                }
                last_metrics.insert("train_loss".into(), mean_loss);
                values
                    .extend(crate::tracking::resident_mib().map(|m| ("memory_mib".to_string(), m)));
                log_line(crate::tracking::Point {
                    split: "train",
                    step: st.step as u64,
                    epoch: st.epoch,
                    values,
                })?;
                window_start = Instant::now();
                window_samples = 0;
                window_batches = 0;
            }
            if t.valid_every.is_some_and(|n| st.step % n == 0) && valid_set.n > 0 {
                let (_, out) = validate(
                    &model,
                    &mut st,
                    &mut last_metrics,
                    &mut best_model,
                    &progress,
                    &mut log_line,
                )?;
                stop_early |= out;
            }
            if stop_requested {
                interrupted = true;
                break 'epochs;
            }
            if let Some(saver) = saver
                .as_ref()
                .filter(|_| t.checkpoint_every.is_some_and(|n| st.step % n == 0) && !last_step)
            {
                saver.save(
                    &model,
                    &optimizer,
                    &st,
                    best_model.as_ref(),
                    last_metrics.clone(),
                )?;
            }
            if last_step || stop_early {
                break;
            }
        }
        if st.batch >= batches_per_epoch {
            st.epoch += 1;
            st.batch = 0;
            info.epochs_done = st.epoch;
            log_line(crate::tracking::Point {
                split: "train",
                step: st.step as u64,
                epoch: st.epoch,
                values: vec![(
                    "epoch_seconds".into(),
                    epoch_started.elapsed().as_secs_f64(),
                )],
            })?;
        }
        if t.valid_every.is_none() && valid_set.n > 0 && !stop_early {
            let (_, out) = validate(
                &model,
                &mut st,
                &mut last_metrics,
                &mut best_model,
                &progress,
                &mut log_line,
            )?;
            stop_early |= out;
        }
        if let Some(saver) = &saver {
            saver.save(
                &model,
                &optimizer,
                &st,
                best_model.as_ref(),
                last_metrics.clone(),
            )?;
        }
        if stop_early {
            progress.line(&format!(
                "early stopping: valid {} has not improved for {} validations",
                cfg.monitor.metric, st.validations_without_improvement
            ));
            break;
        }
    }
    progress.finish();
    let wall = started.elapsed().as_secs_f64();
    info.steps = st.step;
    info.wall_seconds += wall;
    info.train_samples_per_second = st.samples_seen as f64 / info.wall_seconds.max(1e-9);

    info.monitor = cfg.monitor.metric.clone();
    info.best_valid = st.best;
    if saver.is_none() && interrupted {
        // Rank 0 saves the checkpoint: wait for it before leaving.
        if let Some(g) = group {
            g.barrier();
        }
        info.status = Status::Interrupted;
        return Ok(Outcome { run_dir, info });
    }
    // The final model: the best by `train.monitor` when asked, else the last.
    let final_model = match (t.restore_best, best_model.clone()) {
        (true, Some(best)) => best,
        _ => model.clone(),
    };
    let final_metrics = |info: &mut RunInfo| {
        let eval_model = final_model.valid();
        for (name, split) in [
            ("train", &*train_data),
            ("valid", &valid_set),
            ("test", &test_set),
        ] {
            if split.n > 0 {
                let m = evaluate_in(group, &eval_model, split, &loss_fn, &pre, &base);
                info.metrics.insert(name.into(), m);
            }
        }
    };
    let Some(saver) = saver else {
        // Not rank 0: it helps with the final evaluation; the run's record and model version
        // are rank 0's.
        final_metrics(&mut info);
        info.status = Status::Completed;
        return Ok(Outcome { run_dir, info });
    };
    let base_manifest = base_manifest.expect("rank 0 has the run's manifest");
    let mut tracker = tracker.expect("rank 0 tracks the run");
    if interrupted {
        saver.save(
            &model,
            &optimizer,
            &st,
            best_model.as_ref(),
            last_metrics.clone(),
        )?;
        saver.finish()?;
        info.status = Status::Interrupted;
        run::write_json(&run_dir.join(run::RUN), &info)?;
        guard.info = None;
        if let Some(g) = group {
            g.barrier();
        }
        return Ok(Outcome { run_dir, info });
    }

    // The other ranks take part in the final evaluation: it comes before waiting for the
    // checkpoint writer.
    final_metrics(&mut info);
    saver.finish()?;
    let finals = finals_map(&info.metrics).into_iter().collect();
    tracker.record(crate::tracking::Point {
        split: "final",
        step: st.step as u64,
        epoch: st.epoch,
        values: finals,
    })?;
    // The final weights: the run's `final/` folder, then (unless smoke) a model version.
    let weights_bytes =
        crate::weights::to_bytes(&final_model).map_err(|e| TrainError::Checkpoint {
            path: run_dir.join(registry::FINAL).display().to_string(),
            message: e,
        })?;
    let mut manifest = base_manifest;
    manifest.created = checkpoint::now();
    manifest.step = st.step;
    manifest.epoch = st.epoch;
    manifest.lineage = info.lineage.clone();
    manifest.metrics = checkpoint::finite(finals_map(&info.metrics));
    manifest.monitor.value = st
        .best
        .or_else(|| {
            info.metrics
                .get("valid")
                .or(info.metrics.get("test"))
                .and_then(|m| m.get(&cfg.monitor.metric))
        })
        .filter(|v| v.is_finite());
    manifest.kind = Kind::Final;
    let weights_file = vec![(registry::WEIGHTS.to_string(), weights_bytes)];
    store::blocking(store::commit_dir(
        &opts.registry,
        &run_dir.join(registry::FINAL),
        &weights_file,
        manifest.clone(),
    ))?;
    if !smoke {
        let mut files = weights_file;
        for name in [run::CONFIG, run::MODEL_CONFIG, run::PREPROCESS] {
            let p = run_dir.join(name);
            files.push((name.to_string(), std::fs::read(&p).map_err(run::io(&p))?));
        }
        let (v, _) = reg.register(&cfg.name, &files, manifest)?;
        info.version = Some(format!("{}/v{v}", cfg.name));
    }
    tracker.ended(Status::Completed)?;
    info.status = Status::Completed;
    info.finished =
        Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
    run::write_json(&run_dir.join(run::RUN), &info)?;
    guard.info = None;
    Ok(Outcome { run_dir, info })
}

/// Final metrics flattened to `<split>_<metric>`.
fn finals_map(metrics: &BTreeMap<String, Metrics>) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .flat_map(|(split, m)| {
            m.all_scalars()
                .into_iter()
                .map(move |(k, v)| (format!("{split}_{k}"), v))
        })
        .collect()
}

/// Marks a run `failed` in its `run.json` when dropped while still armed (`info` is `Some`).
struct FailGuard {
    path: PathBuf,
    info: Option<RunInfo>,
}

impl Drop for FailGuard {
    fn drop(&mut self) {
        if let Some(mut info) = self.info.take() {
            info.status = Status::Failed;
            info.finished =
                Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
            // Best effort: the error that got us here is what the user needs to see.
            let _ = run::write_json(&self.path, &info);
        }
    }
}

/// Installs a Ctrl-C handler (once per process).
pub fn set_interrupt_handler(f: impl FnMut() + Send + 'static) -> Result<(), String> {
    ctrlc::set_handler(f).map_err(|e| e.to_string())
}

//! The run's folder and record: created and written before step 0 (or the resumed run's,
//! locked), and marked failed if training ends with an error or a panic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_models::ModelConfig;

use super::Options;
use crate::config::RunConfig;
use crate::data::Preprocessor;
use crate::error::TrainError;
use crate::layout;
use crate::registry::manifest::Lineage;
use crate::registry::store;
use crate::run::{self, RunInfo, Status};

/// The run's folder: created and written before step 0 (config, preprocessing, model,
/// `run.json`), or the resumed run's, locked either way. One process trains a run at a time:
/// its lock is taken before anything is written. Ranks other than 0 keep the record in memory.
#[allow(clippy::too_many_arguments)]
pub(super) fn open_run(
    cfg: &RunConfig,
    opts: &Options,
    writer: bool,
    resumed: Option<RunInfo>,
    smoke: bool,
    pre: &Preprocessor,
    mconf: &ModelConfig,
    device_label: String,
) -> Result<RunRecord, TrainError> {
    let lock = |dir: &std::path::Path, id: &str| {
        store::Lock::acquire(
            &dir.join(layout::LOCK),
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
        data_wait_seconds: 0.0,
        monitor: cfg.monitor.metric.clone(),
        best_valid: None,
        metrics: BTreeMap::new(),
        lineage: Lineage::default(),
        version: None,
        member: opts.member.as_ref().map(|m| m.of.clone()),
        pruned_at: None,
        skipped_files: Vec::new(),
    };
    let (dir, info, held) = match (&opts.resume, resumed) {
        (Some(dir), Some(mut info)) => {
            let held = if writer {
                Some(lock(dir, &info.id)?)
            } else {
                None
            };
            info.status = Status::Running;
            info.finished = None;
            // The device of the latest session (`--device` may move a run to another).
            info.device = device_label.clone();
            (dir.clone(), info, held)
        }
        // Not rank 0: the run's record lives in memory only.
        _ if !writer => (PathBuf::new(), new_info(String::new()), None),
        _ => {
            let id = match &opts.member {
                Some(m) => m.run_id.clone(),
                None => run::new_id(&cfg.name),
            };
            let runs = layout::runs_dir(&opts.registry);
            let dir = runs.join(&id);
            std::fs::create_dir_all(&runs).map_err(run::io(&runs))?;
            // `create_dir`, not `_all`: an id taken by another run is an error, not a merge.
            std::fs::create_dir(&dir).map_err(run::io(&dir))?;
            let held = lock(&dir, &id)?;
            let ckpts = dir.join(layout::CHECKPOINTS);
            std::fs::create_dir(&ckpts).map_err(run::io(&ckpts))?;
            let header = format!(
                "# Resolved config of run {id}: defaults filled in, overrides applied.\n# From: {}\n",
                opts.config_path
            );
            run::write_atomic(
                &dir.join(layout::CONFIG),
                cfg.resolved_toml(&header).as_bytes(),
            )?;
            run::write_json(&dir.join(layout::PREPROCESS), pre)?;
            run::write_json(&dir.join(layout::MODEL_CONFIG), mconf)?;
            let info = new_info(id);
            run::write_json(&dir.join(layout::RUN), &info)?;
            (dir, info, Some(held))
        }
    };
    // From here on the run exists on disk: if training fails (an error or a panic), it is
    // marked `failed` rather than left `running`.
    let guard = FailGuard {
        path: dir.join(layout::RUN),
        info: writer.then(|| info.clone()),
    };
    Ok(RunRecord {
        dir,
        info,
        smoke,
        guard,
        _lock: held,
    })
}

/// Marks a run `failed` in its `run.json` when dropped while still armed (`info` is `Some`).
pub(super) struct FailGuard {
    path: PathBuf,
    info: Option<RunInfo>,
}

impl FailGuard {
    /// The run's record is final (or must stay as it is): nothing to mark.
    pub fn disarm(&mut self) {
        self.info = None;
    }
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

/// The run's record and folder (an empty path on ranks other than 0).
pub(super) struct RunRecord {
    pub dir: PathBuf,
    pub info: RunInfo,
    pub smoke: bool,
    /// Marks the run failed if training ends with an error or a panic.
    pub guard: FailGuard,
    _lock: Option<store::Lock>,
}

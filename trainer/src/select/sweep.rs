//! Starting or joining a sweep, and the trial side: a `kiln train --trial DIR` (or `kiln cv
//! --trial DIR`) process finds its sweep, its run id and its pruner from the trial's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::SelectError;
use super::pruner::SweepPruner;
use super::space::{self, SweepSpec};
use super::store::{Sweep, Trial};
use crate::layout;
use crate::run::{self, GroupKind, Membership};
use crate::train::Member;

/// A new sweep from a sweep file, checked whole before its folder is written; with `id`, the
/// sweep of that name, created by whichever worker comes first.
pub fn start(
    file: &Path,
    registry: &Path,
    trials: Option<usize>,
    seed: Option<u64>,
    timeout: Option<&str>,
    id: Option<&str>,
) -> Result<(Sweep, SweepSpec), SelectError> {
    if let Some(id) = id {
        // The id also names the best version's alias (`sweep-<id>`): checked before anything
        // is written.
        crate::registry::names::check("sweep id", id)
            .ok()
            .filter(|()| id.len() <= 58)
            .ok_or_else(|| {
                SelectError::Input(format!(
                    "--id {id:?}: use 1 to 58 of letters, digits, '-', '_' and '.', not starting with '.'"
                ))
            })?;
    }
    let spec = space::read(file, trials, seed, timeout)?;
    crate::registry::Registry::new(registry).ensure()?;
    let sweep = match id {
        Some(id) => Sweep::create_or_join(registry, &spec, id)?,
        None => Sweep::create(registry, &spec)?,
    };
    Ok((sweep, spec))
}

/// The registry a sweep file's trials go to when no `--registry` is given: its base config's.
pub fn base_registry(file: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(file).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let base = file.parent()?.join(table.get("base")?.as_str()?);
    let (cfg, _) = crate::config::load(&base, &[]).ok()?;
    Some(PathBuf::from(cfg.runtime.registry))
}

/// What a trial's process knows of its sweep.
pub struct TrialContext {
    pub sweep: Sweep,
    pub spec: SweepSpec,
    pub trial: Trial,
}

impl TrialContext {
    /// From a trial's folder, `<registry>/sweeps/<id>/trials/NNNN`.
    pub fn open(trial_dir: &Path) -> Result<Self, SelectError> {
        let bad = || {
            SelectError::Input(format!(
                "--trial {}: not a sweep trial's folder (<registry>/sweeps/<id>/trials/NNNN)",
                trial_dir.display()
            ))
        };
        let trial: Trial =
            run::read_json(&trial_dir.join(layout::TRIAL_RECORD)).map_err(|_| bad())?;
        let sweep_dir = trial_dir.parent().and_then(Path::parent).ok_or_else(bad)?;
        let registry = sweep_dir.parent().and_then(Path::parent).ok_or_else(bad)?;
        let id = sweep_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(bad)?;
        let (sweep, spec) = Sweep::open(registry, &id)?;
        Ok(Self { sweep, spec, trial })
    }

    pub fn membership(&self) -> Membership {
        Membership {
            kind: GroupKind::Sweep,
            id: self.sweep.id.clone(),
            index: self.trial.number,
        }
    }

    /// The trial's run: its id, its place in the sweep, and the pruner its validations go to.
    pub fn member(&self) -> Member {
        Member {
            run_id: self.trial.run_id.clone(),
            of: self.membership(),
            pruner: Some(Arc::new(SweepPruner {
                sweep: self.sweep.clone(),
                spec: self.spec.clone(),
                number: self.trial.number,
            })),
        }
    }
}

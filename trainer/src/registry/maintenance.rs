//! Keeping a registry sound: checking every entry against its manifest (`kiln registry
//! verify`), removing what killed writers left and what nothing references (`kiln registry
//! gc`), and deleting a folder in one step.

use super::*;

impl Registry {
    /// Moves a folder into `.tmp` (one rename) and deletes it there.
    pub fn discard(&self, dir: &Path) -> Result<(), RegistryError> {
        store::no_links(&self.root, dir)?;
        let name = dir
            .file_name()
            .map_or("entry".into(), |n| n.to_string_lossy().into_owned());
        let doomed = store::tmp_path(&self.root, &format!("{name}-deleted"));
        let parent = doomed.parent().expect("tmp paths have a parent");
        std::fs::create_dir_all(parent).map_err(store::io_err(parent))?;
        std::fs::rename(dir, &doomed).map_err(store::io_err(dir))?;
        std::fs::remove_dir_all(&doomed).map_err(store::io_err(&doomed))
    }

    /// Every committed folder of the registry: checkpoints and final models of runs, versions.
    pub(super) fn committed_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (dir, _) in crate::run::list(&self.root).unwrap_or_default() {
            out.extend(layout::checkpoints(&dir).into_iter().map(|(_, d)| d));
            if dir.join(layout::FINAL).exists() {
                out.push(dir.join(layout::FINAL));
            }
        }
        for name in self.model_names() {
            out.extend(
                self.versions(&name)
                    .into_iter()
                    .map(|v| self.version_dir(&name, v)),
            );
        }
        let mut exports: Vec<PathBuf> = std::fs::read_dir(self.root.join(layout::EXPORTS))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        exports.sort();
        out.extend(exports);
        out
    }

    /// Re-hashes every file of every entry against its manifest, and checks that every alias
    /// points at a version that exists.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        for dir in self.committed_dirs() {
            report.checked += 1;
            if let Err(d) = store::check_dir(&self.root, &dir) {
                report.damaged.extend(d);
            }
        }
        for name in self.model_names() {
            match self.tagged(&name) {
                Ok(tagged) => {
                    for (alias, v) in tagged {
                        if !self.version_dir(&name, v).is_dir() {
                            report.damaged.push(Damage {
                                path: self
                                    .model_dir(&name)
                                    .join(layout::ALIASES)
                                    .display()
                                    .to_string(),
                                problem: format!("alias {alias} points at missing version v{v}"),
                            });
                        }
                    }
                }
                Err(e) => report.damaged.push(Damage {
                    path: self
                        .model_dir(&name)
                        .join(layout::ALIASES)
                        .display()
                        .to_string(),
                    problem: e.to_string(),
                }),
            }
        }
        for e in std::fs::read_dir(self.root.join(layout::TMP))
            .into_iter()
            .flatten()
            .flatten()
        {
            report.unfinished.push(e.path().display().to_string());
        }
        for (path, e) in crate::run::unreadable(&self.root) {
            report.damaged.push(Damage {
                path: path.display().to_string(),
                problem: e.to_string(),
            });
        }
        report
    }

    /// Removes what no one needs: unfinished writes of processes that are gone, and the
    /// checkpoints of runs not training now beyond their retention policy (`keep_last`,
    /// `keep_best` from each run's config).
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, RegistryError> {
        let _lock = self.lock()?;
        let mut report = GcReport::default();
        let drop = |path: PathBuf, report: &mut GcReport| -> Result<(), RegistryError> {
            report.bytes += dir_bytes(&path);
            report.removed.push(path.display().to_string());
            if dry_run {
                return Ok(());
            }
            // Outside .tmp, one rename into .tmp first, so a kill never leaves half an entry.
            if path.starts_with(self.root.join(layout::TMP)) {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(store::io_err(&path))?;
                } else {
                    std::fs::remove_file(&path).map_err(store::io_err(&path))?;
                }
                Ok(())
            } else {
                self.discard(&path)
            }
        };
        for e in std::fs::read_dir(self.root.join(layout::TMP))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let alive = store::tmp_owner(&name).is_some_and(store::process_alive);
            if !alive {
                drop(e.path(), &mut report)?;
            }
        }
        for (dir, _) in crate::run::list(&self.root).unwrap_or_default() {
            if store::no_links(&self.root, &dir).is_err() {
                continue;
            }
            let Ok(_run_lock) =
                store::Lock::acquire(&dir.join(layout::LOCK), Duration::ZERO, "the run")
            else {
                continue; // training now: its own writer applies the policy
            };
            // Damaged checkpoints a resume set aside.
            for e in std::fs::read_dir(dir.join(layout::CHECKPOINTS))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(layout::DAMAGED_PREFIX)
                {
                    drop(e.path(), &mut report)?;
                }
            }
            let Ok(cfg) = crate::config::load_run(&dir) else {
                continue;
            };
            let policy = retention::Policy {
                keep_last: cfg.train.keep_last,
                keep_best: cfg.train.keep_best,
                higher_is_better: cfg.monitor.higher_is_better,
            };
            // Only checkpoints with a readable manifest take part; others are left for
            // `verify` to report.
            let all: Vec<(usize, PathBuf, Manifest)> = layout::checkpoints(&dir)
                .into_iter()
                .filter_map(|(s, d)| self.read_manifest(&d).map(|m| (s, d, m)))
                .collect();
            let candidates: Vec<retention::Candidate> = all
                .iter()
                .map(|(step, _, m)| retention::Candidate {
                    step: *step,
                    metric: m.monitor.value,
                })
                .collect();
            let keep = retention::keep(&candidates, &policy);
            for (step, d, _) in all {
                if !keep.contains(&step) {
                    drop(d, &mut report)?;
                }
            }
        }
        Ok(report)
    }
}

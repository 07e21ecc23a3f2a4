//! Looking things up: models, versions, aliases and runs by what a user wrote. One place turns a
//! reference into what it names ([`Registry::find_run`], [`Registry::find_model`]); every
//! command that takes a run or a model asks it.

use super::*;

/// The reference to the newest run.
pub const LATEST: &str = "latest";

/// Whether `text` names a run rather than a model: `latest`, or a folder holding `run.json`.
pub fn names_a_run(text: &str) -> bool {
    text == LATEST || Path::new(text).join(layout::RUN).is_file()
}

impl Registry {
    /// Model names with at least one version folder, sorted.
    pub fn model_names(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.root.join(layout::MODELS))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| names::check("model name", n).is_ok())
            .collect();
        out.sort();
        out
    }

    /// A model's versions, ascending.
    pub fn versions(&self, name: &str) -> Vec<u32> {
        let mut out: Vec<u32> = std::fs::read_dir(self.model_dir(name))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| version_of_dir(&e.file_name().to_string_lossy()))
            .collect();
        out.sort();
        out
    }

    pub(super) fn read_manifest(&self, dir: &Path) -> Option<Manifest> {
        let bytes = store::read_checked(
            &self.root,
            &dir.join(layout::MANIFEST),
            store::MAX_METADATA_BYTES,
        )
        .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Aliases set by `tag`.
    pub fn tagged(&self, name: &str) -> Result<BTreeMap<String, u32>, RegistryError> {
        let path = self.model_dir(name).join(layout::ALIASES);
        match store::read_checked(&self.root, &path, store::MAX_METADATA_BYTES) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| RegistryError::Unreadable {
                    path: path.display().to_string(),
                    source,
                })
            }
            Err(RegistryError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(BTreeMap::new())
            }
            Err(e) => Err(e),
        }
    }

    /// `latest` (the newest version) and `best` (the best by the monitored metric among the
    /// versions that monitor the same metric as the newest one).
    pub(super) fn automatic(&self, name: &str) -> BTreeMap<String, u32> {
        let versions = self.versions(name);
        let mut out = BTreeMap::new();
        let Some(&latest) = versions.last() else {
            return out;
        };
        out.insert("latest".to_string(), latest);
        let monitors: Vec<(u32, manifest::Monitor)> = versions
            .iter()
            .filter_map(|&v| {
                self.read_manifest(&self.version_dir(name, v))
                    .map(|m| (v, m.monitor))
            })
            .collect();
        if let Some((_, newest)) = monitors.last() {
            let best = monitors
                .iter()
                .filter(|(_, m)| m.metric == newest.metric)
                .filter_map(|(v, m)| m.value.filter(|x| x.is_finite()).map(|x| (*v, x)))
                .reduce(|a, b| {
                    let better = if newest.higher_is_better {
                        b.1 > a.1
                    } else {
                        b.1 < a.1
                    };
                    if better { b } else { a }
                });
            if let Some((v, _)) = best {
                out.insert("best".to_string(), v);
            }
        }
        out
    }

    /// Every alias of a model, automatic and tagged.
    pub fn aliases(&self, name: &str) -> Result<BTreeMap<String, u32>, RegistryError> {
        let mut all = self.tagged(name)?;
        all.extend(self.automatic(name));
        Ok(all)
    }

    pub(super) fn run_dir(&self, id: &str) -> PathBuf {
        layout::runs_dir(&self.root).join(id)
    }

    pub(super) fn not_found(&self, reference: &str, candidates: &[String]) -> RegistryError {
        self.not_found_as("model or run", reference, candidates)
    }

    /// [`RegistryError::NotFound`] for `reference`, naming `what` it had to be, with the
    /// nearest of `candidates` as a hint.
    fn not_found_as(
        &self,
        what: &'static str,
        reference: &str,
        candidates: &[String],
    ) -> RegistryError {
        RegistryError::NotFound {
            what,
            reference: reference.to_string(),
            registry: self.root.display().to_string(),
            hint: {
                let whole = crate::suggest::hint(reference, candidates);
                let name = reference.split(['@', '/']).next().unwrap_or(reference);
                if whole.is_empty() {
                    crate::suggest::hint(name, candidates)
                } else {
                    whole
                }
            },
        }
    }

    /// A run, from what a user wrote: a path to a run folder, `latest` (the newest run, by
    /// start time), or a run id. `train --resume`, `runs show` and `report` take runs.
    pub fn find_run(&self, text: &str) -> Result<PathBuf, RegistryError> {
        let as_path = Path::new(text);
        if as_path.join(layout::RUN).is_file() {
            return Ok(as_path.to_path_buf());
        }
        let runs = || crate::run::list(&self.root).unwrap_or_default();
        if text == LATEST {
            return runs()
                .into_iter()
                .max_by(|a, b| a.1.started.cmp(&b.1.started).then(a.1.id.cmp(&b.1.id)))
                .map(|(dir, _)| dir)
                .ok_or_else(|| RegistryError::NotFound {
                    what: "run",
                    reference: text.into(),
                    registry: self.root.display().to_string(),
                    hint: "; train one first with `kiln train CONFIG`".into(),
                });
        }
        // Run ids hold the config's name and a time stamp: no length limit here.
        if text.is_empty()
            || text.starts_with('.')
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(NameError {
                what: "run reference",
                value: text.into(),
                why: "use a run id (letters, digits, '-', '_', '.'), a folder holding run.json, or `latest`".into(),
            }
            .into());
        }
        // As training does, a run folder reached through a link (`runs/` on another disk) is
        // followed here; models are read through `find_model`, which refuses links.
        let dir = self.run_dir(text);
        if dir.join(layout::RUN).is_file() {
            return Ok(dir);
        }
        let ids: Vec<String> = runs().into_iter().map(|(_, r)| r.id).collect();
        Err(self.not_found_as("run", text, &ids))
    }

    /// A model, from what a user wrote: anything [`Self::resolve`] takes (NAME, NAME@ALIAS,
    /// NAME/vN, a run id, RUN@step-N), or a run as [`Self::find_run`] takes it (a folder,
    /// `latest`): that run's final model, else its newest checkpoint. Returns the registry
    /// holding the model: for a run folder, the one it sits in. Every command that reads a
    /// model resolves it here.
    pub fn find_model(&self, text: &str) -> Result<(Registry, Entry), RegistryError> {
        if names_a_run(text) {
            let dir = self.find_run(text)?;
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let owner = Registry::new(layout::registry_of_run(&dir));
            let entry = owner.resolve(&id)?;
            return Ok((owner, entry));
        }
        Ok((Registry::new(self.root.clone()), self.resolve(text)?))
    }

    /// Resolves a name (`name`, `name@alias`, `name/vN`, a run id, `run@step-N`) to an entry
    /// of this registry; [`Self::find_model`] also takes run folders and `latest`.
    pub fn resolve(&self, text: &str) -> Result<Entry, RegistryError> {
        let reference = Reference::parse(text)?;
        match reference {
            Reference::Version { name, .. } if self.versions(&name).is_empty() => {
                Err(self.not_found(text, &self.model_names()))
            }
            Reference::Version { name, version } => self.version_entry(text, &name, version),
            Reference::Alias { name, alias } => {
                if self.versions(&name).is_empty() {
                    return self.run_checkpoint_entry(text, name, alias);
                }
                let aliases = self.aliases(&name)?;
                match aliases.get(&alias) {
                    Some(&v) => self.version_entry(text, &name, v),
                    None => {
                        let known: Vec<String> =
                            aliases.keys().map(|a| format!("{name}@{a}")).collect();
                        Err(self.not_found(text, &known))
                    }
                }
            }
            Reference::Word(word) => self.word_entry(text, word),
        }
    }

    /// Version `version` of model `name`, for [`Self::resolve`] of `text`; one that does not
    /// exist is an error naming the versions that do.
    pub(super) fn version_entry(
        &self,
        text: &str,
        name: &str,
        version: u32,
    ) -> Result<Entry, RegistryError> {
        let dir = self.version_dir(name, version);
        store::no_links(&self.root, &dir)?;
        if !dir.is_dir() {
            let known: Vec<String> = self
                .versions(name)
                .iter()
                .map(|v| format!("{name}/v{v}"))
                .collect();
            return Err(self.not_found(text, &known));
        }
        Ok(Entry {
            label: format!("{name}/v{version}"),
            kind: EntryKind::Version {
                name: name.to_string(),
                version,
            },
            dir,
        })
    }

    /// `<run id>@step-N`, for [`Self::resolve`] of `text` when `name` is no model: one
    /// checkpoint of a run (how kiln labels them).
    pub(super) fn run_checkpoint_entry(
        &self,
        text: &str,
        name: String,
        alias: String,
    ) -> Result<Entry, RegistryError> {
        let run = self.run_dir(&name);
        store::no_links(&self.root, &run)?;
        if run.join(layout::RUN).is_file() {
            let all = layout::checkpoints(&run);
            let found = all
                .iter()
                .find(|(s, _)| layout::checkpoint_name(*s) == alias);
            return match found {
                Some((step, dir)) => Ok(Entry {
                    label: format!("{name}@{alias}"),
                    kind: EntryKind::Checkpoint {
                        run: name,
                        step: *step,
                    },
                    dir: dir.clone(),
                }),
                None => {
                    let known: Vec<String> = all
                        .iter()
                        .map(|(s, _)| format!("{name}@{}", layout::checkpoint_name(*s)))
                        .collect();
                    Err(self.not_found(text, &known))
                }
            };
        }
        Err(self.not_found(text, &self.model_names()))
    }

    /// A bare word, for [`Self::resolve`] of `text`: a model's latest version, else a run's
    /// final model or its first checkpoint.
    pub(super) fn word_entry(&self, text: &str, word: String) -> Result<Entry, RegistryError> {
        if let Some(&v) = self.versions(&word).last() {
            return self.version_entry(text, &word, v);
        }
        let run = self.run_dir(&word);
        store::no_links(&self.root, &run)?;
        if run.join(layout::RUN).is_file() {
            let fin = run.join(layout::FINAL);
            if fin.is_dir() {
                return Ok(Entry {
                    label: word.clone(),
                    kind: EntryKind::Final { run: word },
                    dir: fin,
                });
            }
            if let Some((step, dir)) = layout::checkpoints(&run).into_iter().next() {
                return Ok(Entry {
                    label: format!("{word}@{}", layout::checkpoint_name(step)),
                    kind: EntryKind::Checkpoint { run: word, step },
                    dir,
                });
            }
            return Err(RegistryError::Refused(format!(
                "run {word} has neither a final model nor a checkpoint"
            )));
        }
        let mut known = self.model_names();
        known.extend(
            crate::run::list(&self.root)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, r)| r.id),
        );
        Err(self.not_found(text, &known))
    }

    /// Versions of every model (or of one), oldest first.
    pub fn list(&self, only: Option<&str>) -> Result<Vec<VersionInfo>, RegistryError> {
        let names = match only {
            Some(n) => {
                names::check("model name", n)?;
                vec![n.to_string()]
            }
            None => self.model_names(),
        };
        let mut out = Vec::new();
        for name in names {
            let aliases = self.aliases(&name)?;
            for v in self.versions(&name) {
                let Some(m) = self.read_manifest(&self.version_dir(&name, v)) else {
                    continue;
                };
                out.push(self.version_info(&name, v, &aliases, m));
            }
        }
        Ok(out)
    }

    pub fn version_info(
        &self,
        name: &str,
        version: u32,
        aliases: &BTreeMap<String, u32>,
        m: Manifest,
    ) -> VersionInfo {
        VersionInfo {
            name: name.to_string(),
            version,
            aliases: aliases
                .iter()
                .filter(|(_, v)| **v == version)
                .map(|(a, _)| a.clone())
                .collect(),
            run_id: m.run_id,
            created: m.created,
            step: m.step,
            monitor: m.monitor,
            metrics: m.metrics,
            weights_sha256: m
                .files
                .get(layout::WEIGHTS)
                .map(|f| f.sha256.clone())
                .unwrap_or_default(),
            lineage: m.lineage,
        }
    }
}

//! The local model registry: runs, their checkpoints, and named, versioned models.
//!
//! ```text
//! <registry>/
//!   kiln-registry.json               format marker
//!   .lock                            held while versions or aliases change
//!   .tmp/<pid>-<n>-<what>/           writes in progress (a killed writer's are removed by gc)
//!   runs/<run id>/                   a training run (see `run`); `.lock` held while it trains
//!     checkpoints/step-NNNNNNNNN/    model.safetensors, best.safetensors, optim.bpk,
//!                                    state.json, manifest.json
//!     final/                         model.safetensors, manifest.json
//!   models/<name>/
//!     aliases.json                   aliases set by `kiln registry tag` (latest and best are
//!                                    computed from the versions, never stored)
//!     vN/                            model.safetensors, config.toml, model.json,
//!                                    preprocess.json, manifest.json
//!   exports/<model>-opsetN-<batch>/  model.onnx, preprocess.json, parity.json, manifest.json
//! ```
//!
//! Every folder with a `manifest.json` is written whole or not at all ([`store::commit_dir`]),
//! and its manifest holds the sha256 of each file, which every load checks.

pub mod manifest;
pub mod names;
pub mod retention;
pub mod store;
pub mod writer;

use crate::layout;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manifest::Manifest;
use names::{NameError, Reference};
use store::Damage;

/// How long a command waits for another process holding the registry lock, unless
/// `KILN_REGISTRY_LOCK_WAIT` gives other seconds (a registry on a busy network file system).
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// [`LOCK_WAIT`], or `KILN_REGISTRY_LOCK_WAIT` seconds (0.1 to a day) when that is set.
fn lock_wait() -> Duration {
    std::env::var("KILN_REGISTRY_LOCK_WAIT")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| (0.1..=86_400.0).contains(s))
        .map_or(LOCK_WAIT, Duration::from_secs_f64)
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{}: {source}", crate::shown::name(path))]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{}: refused: {why}", crate::shown::name(path))]
    Unsafe { path: String, why: String },
    #[error(
        "{}: {what} is locked by another kiln process",
        crate::shown::name(path)
    )]
    Locked { path: String, what: String },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(
        "no model or run {reference:?} in {}{hint}",
        crate::shown::name(registry)
    )]
    NotFound {
        reference: String,
        registry: String,
        hint: String,
    },
    #[error(
        "{entry} is damaged: {}{}",
        crate::shown::name(&problems[0].path),
        describe_more(problems)
    )]
    Damaged {
        entry: String,
        problems: Vec<Damage>,
    },
    #[error("{}: unreadable: {source}", crate::shown::name(path))]
    Unreadable {
        path: String,
        source: serde_json::Error,
    },
    /// What kiln will not do to the registry, and why (a tagged version, a run in training).
    #[error("{0}")]
    Refused(String),
}

impl crate::usage::UserError for RegistryError {
    fn is_usage(&self) -> bool {
        matches!(
            self,
            RegistryError::Name(_) | RegistryError::NotFound { .. }
        )
    }
}

fn describe_more(problems: &[Damage]) -> String {
    let first = format!(": {}", crate::shown::name(&problems[0].problem));
    match problems.len() {
        1 => first,
        n => format!(
            "{first} (and {} more problems; run `kiln registry verify`)",
            n - 1
        ),
    }
}

/// A registry entry a reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// How kiln names it: `name/vN`, `<run id>` (its final model) or `<run id>@step-N`.
    pub label: String,
    pub kind: EntryKind,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Version { name: String, version: u32 },
    Final { run: String },
    Checkpoint { run: String, step: usize },
}

/// An entry's manifest and file contents, every file checked against its sha256.
pub struct Loaded {
    pub manifest: Manifest,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Loaded {
    pub fn file(&self, name: &str) -> Result<&[u8], RegistryError> {
        self.files.get(name).map(Vec::as_slice).ok_or_else(|| {
            RegistryError::Refused(format!(
                "{} has no {name} (it is a {:?} entry)",
                self.manifest.run_id, self.manifest.kind
            ))
        })
    }
}

/// A version as `list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: u32,
    pub aliases: Vec<String>,
    pub run_id: String,
    pub created: String,
    pub step: usize,
    pub monitor: manifest::Monitor,
    pub metrics: BTreeMap<String, f64>,
    pub weights_sha256: String,
    pub lineage: manifest::Lineage,
}

/// What `verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub damaged: Vec<Damage>,
    /// Leftovers of writes that never finished (harmless; `gc` removes them).
    pub unfinished: Vec<String>,
}

/// What `gc` removed (or would remove, dry run).
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub bytes: u64,
}

pub struct Registry {
    pub root: PathBuf,
}

fn version_of_dir(name: &str) -> Option<u32> {
    name.strip_prefix('v')
        .filter(|n| !n.starts_with('0') && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| dir_bytes(&e.path()))
        .sum()
}

impl Registry {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the registry's top folders (and its format marker) if they are missing; refuses
    /// a registry written by a newer kiln.
    pub fn ensure(&self) -> Result<(), RegistryError> {
        let marker = self.root.join(layout::MARKER);
        match std::fs::read(&marker) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|source| RegistryError::Unreadable {
                        path: marker.display().to_string(),
                        source,
                    })?;
                let format = v["format"].as_u64().unwrap_or(0);
                if format > u64::from(manifest::FORMAT) {
                    return Err(RegistryError::Refused(format!(
                        "{} is format {format}; this kiln reads format {} (upgrade kiln)",
                        crate::shown::path(&self.root),
                        manifest::FORMAT
                    )));
                }
                Ok(())
            }
            Err(_) => {
                for d in [layout::TMP, layout::MODELS, layout::RUNS] {
                    let p = self.root.join(d);
                    std::fs::create_dir_all(&p).map_err(store::io_err(&p))?;
                }
                let text = serde_json::json!({"format": manifest::FORMAT, "kind": "kiln registry"});
                store::blocking(store::replace_file(
                    &self.root,
                    &marker,
                    text.to_string().as_bytes(),
                ))
            }
        }
    }

    /// The registry lock: held while versions, aliases or deletions change anything.
    pub fn lock(&self) -> Result<store::Lock, RegistryError> {
        store::Lock::acquire(&self.root.join(layout::LOCK), lock_wait(), "the registry")
    }

    fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(layout::MODELS).join(name)
    }

    pub fn version_dir(&self, name: &str, version: u32) -> PathBuf {
        self.model_dir(name).join(format!("v{version}"))
    }

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

    fn read_manifest(&self, dir: &Path) -> Option<Manifest> {
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
    fn automatic(&self, name: &str) -> BTreeMap<String, u32> {
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

    fn run_dir(&self, id: &str) -> PathBuf {
        layout::runs_dir(&self.root).join(id)
    }

    fn not_found(&self, reference: &str, candidates: &[String]) -> RegistryError {
        RegistryError::NotFound {
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

    /// Resolves what a user wrote (`name`, `name@alias`, `name/vN`, a run id) to an entry.
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
    fn version_entry(&self, text: &str, name: &str, version: u32) -> Result<Entry, RegistryError> {
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
    fn run_checkpoint_entry(
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
    fn word_entry(&self, text: &str, word: String) -> Result<Entry, RegistryError> {
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

    /// Reads an entry, checking every file against the manifest. A damaged entry is an error
    /// naming the file.
    pub fn load(&self, entry: &Entry) -> Result<Loaded, RegistryError> {
        let damaged = |problems| RegistryError::Damaged {
            entry: entry.label.clone(),
            problems,
        };
        store::no_links(&self.root, &entry.dir)?;
        let mpath = entry.dir.join(layout::MANIFEST);
        let bytes = store::read_regular(&mpath, store::MAX_METADATA_BYTES).map_err(|e| {
            damaged(vec![Damage {
                path: mpath.display().to_string(),
                problem: format!("manifest: {e}"),
            }])
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            damaged(vec![Damage {
                path: mpath.display().to_string(),
                problem: format!("unreadable manifest: {e}"),
            }])
        })?;
        let mut files = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, want) in &manifest.files {
            let p = entry.dir.join(name);
            if names::check("file name", name).is_err() {
                problems.push(Damage {
                    path: p.display().to_string(),
                    problem: "the manifest names a file outside its folder".into(),
                });
                continue;
            }
            match store::read_checked(&self.root, &p, want.bytes) {
                Err(e) => problems.push(Damage {
                    path: p.display().to_string(),
                    problem: match e {
                        RegistryError::Io { source, .. } => source.to_string(),
                        other => other.to_string(),
                    },
                }),
                Ok(b) if (b.len() as u64) < want.bytes => problems.push(Damage {
                    path: p.display().to_string(),
                    problem: format!(
                        "truncated or extended: {} bytes, the manifest says {}",
                        b.len(),
                        want.bytes
                    ),
                }),
                Ok(b) if store::sha256_hex(&b) != want.sha256 => problems.push(Damage {
                    path: p.display().to_string(),
                    problem: "sha256 does not match the manifest (the file changed)".into(),
                }),
                Ok(b) => {
                    files.insert(name.clone(), b);
                }
            }
        }
        if !problems.is_empty() {
            return Err(damaged(problems));
        }
        Ok(Loaded { manifest, files })
    }

    /// Registers a version of `name` holding `files`; `latest` (and `best`, when it is better)
    /// move to it. Safe against concurrent writers: version numbers are taken under the lock.
    pub fn register(
        &self,
        name: &str,
        files: &[(String, Vec<u8>)],
        mut manifest: Manifest,
    ) -> Result<(u32, Manifest), RegistryError> {
        names::check("model name", name)?;
        self.ensure()?;
        let _lock = self.lock()?;
        // Numbers are never reused, even after `rm` of the newest: `layout::HIGHEST` remembers.
        let highest_path = self.model_dir(name).join(layout::HIGHEST);
        let recorded: u32 = store::read_checked(&self.root, &highest_path, 64)
            .ok()
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
            .unwrap_or(0);
        let version = self
            .versions(name)
            .last()
            .copied()
            .unwrap_or(0)
            .max(recorded)
            + 1;
        manifest.version = Some(version);
        manifest.kind = manifest::Kind::Version;
        let dir = self.version_dir(name, version);
        store::no_links(&self.root, &dir)?;
        let m = store::blocking(async {
            let m = store::commit_dir(&self.root, &dir, files, manifest).await?;
            store::replace_file(&self.root, &highest_path, version.to_string().as_bytes()).await?;
            Ok::<_, RegistryError>(m)
        })?;
        Ok((version, m))
    }

    fn write_tagged(
        &self,
        name: &str,
        tagged: &BTreeMap<String, u32>,
    ) -> Result<(), RegistryError> {
        let path = self.model_dir(name).join(layout::ALIASES);
        store::no_links(&self.root, &path)?;
        let text = serde_json::to_vec_pretty(tagged).expect("aliases are JSON");
        store::blocking(store::replace_file(&self.root, &path, &text))
    }

    /// Points `alias` at the version `reference` resolves to.
    pub fn tag(&self, reference: &str, alias: &str) -> Result<Entry, RegistryError> {
        names::check("alias", alias)?;
        if names::AUTOMATIC_ALIASES.contains(&alias) {
            return Err(RegistryError::Refused(format!(
                "`{alias}` moves by itself (latest: the newest version; best: the best by the monitored metric); pick another alias"
            )));
        }
        let _lock = self.lock()?;
        let entry = self.resolve(reference)?;
        let EntryKind::Version { name, version } = &entry.kind else {
            return Err(RegistryError::Refused(format!(
                "{reference} is a run, not a model version; only versions (NAME/vN) take aliases"
            )));
        };
        let mut tagged = self.tagged(name)?;
        tagged.insert(alias.to_string(), *version);
        self.write_tagged(name, &tagged)?;
        Ok(entry)
    }

    /// Removes an alias set by `tag`; returns the version it pointed at.
    pub fn untag(&self, name: &str, alias: &str) -> Result<u32, RegistryError> {
        names::check("model name", name)?;
        names::check("alias", alias)?;
        if names::AUTOMATIC_ALIASES.contains(&alias) {
            return Err(RegistryError::Refused(format!(
                "`{alias}` moves by itself and cannot be removed"
            )));
        }
        let _lock = self.lock()?;
        let mut tagged = self.tagged(name)?;
        let Some(v) = tagged.remove(alias) else {
            let known: Vec<String> = tagged.keys().cloned().collect();
            return Err(self.not_found(&format!("{name}@{alias}"), &known));
        };
        self.write_tagged(name, &tagged)?;
        Ok(v)
    }

    /// Deletes a version (refused while a tagged alias points at it, unless `force`, which drops
    /// those aliases) or a run (refused while it trains). The folder is first moved into
    /// `.tmp` in one rename, so a kill mid-way never leaves half an entry.
    pub fn remove(&self, reference: &str, force: bool) -> Result<Entry, RegistryError> {
        let _lock = self.lock()?;
        let entry = self.resolve(reference)?;
        match &entry.kind {
            EntryKind::Version { name, version } => {
                let mut tagged = self.tagged(name)?;
                let pointing: Vec<String> = tagged
                    .iter()
                    .filter(|(_, v)| *v == version)
                    .map(|(a, _)| a.clone())
                    .collect();
                if !pointing.is_empty() && !force {
                    return Err(RegistryError::Refused(format!(
                        "{} is tagged {}; untag it first, or pass --force",
                        entry.label,
                        pointing.join(", ")
                    )));
                }
                // Aliases first: a kill in between leaves an untagged version, never an alias
                // pointing at nothing.
                if !pointing.is_empty() {
                    tagged.retain(|_, v| v != version);
                    self.write_tagged(name, &tagged)?;
                }
                self.discard(&entry.dir)?;
            }
            EntryKind::Final { run } | EntryKind::Checkpoint { run, .. } => {
                if Reference::parse(reference)? != Reference::Word(run.clone()) {
                    return Err(RegistryError::Refused(format!(
                        "{reference} is not a run id"
                    )));
                }
                let dir = self.run_dir(run);
                let _run_lock =
                    store::Lock::acquire(&dir.join(layout::LOCK), Duration::ZERO, "the run")
                        .map_err(|_| {
                            RegistryError::Refused(format!(
                                "run {run} is training in another process; stop it first"
                            ))
                        })?;
                self.discard(&dir)?;
            }
        }
        Ok(entry)
    }

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
    fn committed_dirs(&self) -> Vec<PathBuf> {
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

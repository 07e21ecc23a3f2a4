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

pub mod lookup;
mod maintenance;
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
    #[error("no {what} {reference:?} in {}{hint}", crate::shown::name(registry))]
    NotFound {
        /// What the reference had to name: "model or run", "run".
        what: &'static str,
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
}

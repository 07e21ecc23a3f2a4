//! The registry's disk primitives: folders committed whole (temporary folder inside the
//! registry, every file fsynced, one rename, the parent fsynced), hashes, link checks and locks.
//!
//! A folder is only ever seen complete or not at all: a process killed at any instant leaves at
//! most an unfinished folder under `<registry>/.tmp`, which `kiln registry gc` removes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::RegistryError;
use super::manifest::{FileEntry, Manifest};
use crate::layout;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 and length of a file, read in blocks.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A fresh folder name under `<root>/.tmp`, unique per process and call, that says who owns it
/// (`<pid>-<counter>-<what>`), so `gc` can tell a live writer's folder from a dead one's.
pub fn tmp_path(root: &Path, what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    root.join(layout::TMP)
        .join(format!("{}-{n}-{nanos:08x}-{what}", std::process::id()))
}

/// The process id a `.tmp` entry belongs to.
pub fn tmp_owner(name: &str) -> Option<u32> {
    name.split('-').next()?.parse().ok()
}

/// Whether a process with this id is alive on this machine (signal 0 probes without sending;
/// EPERM means it exists under another user).
#[cfg(unix)]
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Without a way to ask, every owner counts as alive: `gc` then leaves `.tmp` alone.
#[cfg(not(unix))]
pub fn process_alive(_pid: u32) -> bool {
    true
}

async fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path).await.map_err(io_err(path))?;
    f.write_all(bytes).await.map_err(io_err(path))?;
    f.sync_all().await.map_err(io_err(path))
}

async fn sync_dir(path: &Path) -> Result<(), RegistryError> {
    let dir = tokio::fs::File::open(path).await.map_err(io_err(path))?;
    dir.sync_all().await.map_err(io_err(path))
}

/// Writes `files` and a manifest (`manifest` with their sizes and sha256 filled in) as the
/// folder `dest`, atomically: a temporary folder inside the registry, each file fsynced, one
/// rename, the parent fsynced. An existing `dest` is replaced.
pub async fn commit_dir(
    root: &Path,
    dest: &Path,
    files: &[(String, Vec<u8>)],
    mut manifest: Manifest,
) -> Result<Manifest, RegistryError> {
    let what = dest
        .file_name()
        .map_or("entry".into(), |n| n.to_string_lossy().into_owned());
    let tmp = tmp_path(root, &what);
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(io_err(&tmp))?;
    manifest.files.clear();
    for (name, bytes) in files {
        write_synced(&tmp.join(name), bytes).await?;
        manifest.files.insert(
            name.clone(),
            FileEntry {
                sha256: sha256_hex(bytes),
                bytes: bytes.len() as u64,
            },
        );
    }
    let text = serde_json::to_vec_pretty(&manifest).expect("manifests serialise to JSON");
    write_synced(&tmp.join(layout::MANIFEST), &text).await?;
    sync_dir(&tmp).await?;
    let parent = dest.parent().expect("registry entries have a parent");
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io_err(parent))?;
    if tokio::fs::symlink_metadata(dest).await.is_ok() {
        // A folder cannot be renamed over a full one: swap the two in one step, so `dest` is
        // never absent, then delete the old one (now at the temporary name).
        exchange(&tmp, dest).map_err(io_err(dest))?;
        let _ = tokio::fs::remove_dir_all(&tmp).await;
    } else {
        tokio::fs::rename(&tmp, dest).await.map_err(io_err(dest))?;
    }
    sync_dir(parent).await?;
    Ok(manifest)
}

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere: move the old folder aside, then the new one in (a kill between the two leaves
/// the entry absent, never half written).
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let aside = a.with_extension("old");
    std::fs::rename(b, &aside)?;
    std::fs::rename(a, b)?;
    std::fs::rename(&aside, a)
}

/// Reads a regular file of at most `max` bytes; refuses links, FIFOs, devices and anything
/// larger (a planted `/dev/zero` or a FIFO can neither exhaust memory nor block).
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let m = std::fs::symlink_metadata(path)?;
    if !m.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if m.file_type().is_symlink() {
                "a symbolic link; kiln does not follow links inside its registry"
            } else {
                "not a regular file"
            },
        ));
    }
    if m.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes, more than the {max} expected", m.len()),
        ));
    }
    let mut f = File::open(path)?;
    let mut out = Vec::with_capacity(m.len() as usize);
    f.by_ref().take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "grew while being read",
        ));
    }
    Ok(out)
}

/// The most a manifest or an alias file may hold.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;

/// Replaces a small file atomically and durably (temporary file, fsync, rename, fsync parent).
pub async fn replace_file(root: &Path, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let tmp = tmp_path(root, "file");
    let tmp_parent = tmp.parent().expect("tmp paths have a parent");
    tokio::fs::create_dir_all(tmp_parent)
        .await
        .map_err(io_err(tmp_parent))?;
    crate::atomic::write_via(&tmp, path, bytes).map_err(io_err(path))
}

/// Runs registry I/O from synchronous code.
pub fn blocking<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime needs no resources that can run out")
        .block_on(fut)
}

/// Refuses a path under `root` if any component below `root` is a symbolic link: nothing is
/// read or written through a link, so a planted link cannot lead out of the registry.
pub fn no_links(root: &Path, path: &Path) -> Result<(), RegistryError> {
    let Ok(rel) = path.strip_prefix(root) else {
        return Err(RegistryError::Unsafe {
            path: path.display().to_string(),
            why: format!("outside the registry {}", crate::shown::path(root)),
        });
    };
    let mut cur = root.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        if let Ok(m) = std::fs::symlink_metadata(&cur)
            && m.file_type().is_symlink()
        {
            return Err(RegistryError::Unsafe {
                path: cur.display().to_string(),
                why: "a symbolic link; kiln does not follow links inside its registry".into(),
            });
        }
    }
    Ok(())
}

/// An exclusive lock on a file, held until dropped. Waits up to `wait` for another holder,
/// then fails naming the lock instead of hanging.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    pub fn acquire(path: &Path, wait: Duration, what: &str) -> Result<Self, RegistryError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let started = Instant::now();
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(Self(f)),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(RegistryError::Locked {
                        path: path.display().to_string(),
                        what: what.to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
            }
        }
    }
}

/// One problem found by [`check_dir`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    pub path: String,
    pub problem: String,
}

/// Re-hashes a committed folder against its manifest. Returns the manifest when every file is
/// present, the right size and the right sha256, and nothing else is there; otherwise what is
/// wrong, file by file.
pub fn check_dir(root: &Path, dir: &Path) -> Result<Manifest, Vec<Damage>> {
    let damage = |p: &Path, problem: String| Damage {
        path: p.display().to_string(),
        problem,
    };
    if let Err(e) = no_links(root, dir) {
        return Err(vec![damage(dir, e.to_string())]);
    }
    let mpath = dir.join(layout::MANIFEST);
    let manifest: Manifest = match read_regular(&mpath, MAX_METADATA_BYTES) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(vec![damage(&mpath, "missing manifest".into())]);
        }
        Err(e) => return Err(vec![damage(&mpath, e.to_string())]),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => return Err(vec![damage(&mpath, format!("unreadable manifest: {e}"))]),
        },
    };
    let mut problems = Vec::new();
    for (name, entry) in &manifest.files {
        let p = dir.join(name);
        if name.contains('/') || name.starts_with('.') {
            problems.push(damage(
                &p,
                "the manifest names a file outside its folder".into(),
            ));
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Err(_) => problems.push(damage(&p, "missing".into())),
            Ok(m) if !m.file_type().is_file() => {
                problems.push(damage(&p, "not a regular file".into()))
            }
            Ok(m) if m.len() != entry.bytes => problems.push(damage(
                &p,
                format!(
                    "truncated or extended: {} bytes, the manifest says {}",
                    m.len(),
                    entry.bytes
                ),
            )),
            Ok(_) => match hash_file(&p) {
                Ok((sha, _)) if sha == entry.sha256 => {}
                Ok((sha, _)) => problems.push(damage(
                    &p,
                    format!(
                        "sha256 {} does not match the manifest's {}",
                        &sha[..12],
                        entry.sha256.get(..12).unwrap_or(&entry.sha256)
                    ),
                )),
                Err(e) => problems.push(damage(&p, e.to_string())),
            },
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != layout::MANIFEST && !manifest.files.contains_key(&name) {
                problems.push(damage(&e.path(), "not in the manifest".into()));
            }
        }
    }
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(problems)
    }
}

/// Reads a file inside the registry: no link on the way, a regular file of at most `max` bytes.
pub fn read_checked(root: &Path, path: &Path, max: u64) -> Result<Vec<u8>, RegistryError> {
    no_links(root, path)?;
    read_regular(path, max).map_err(io_err(path))
}

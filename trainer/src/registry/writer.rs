//! Checkpoints written in the background, so training does not wait on the disk.
//!
//! The training thread takes a snapshot (the tensors' bytes) and hands it over; a thread
//! running a tokio runtime writes it with [`store::commit_dir`] (fsync, rename), then applies
//! the retention policy. At most one snapshot waits behind the one being written, so memory
//! stays bounded and a disk slower than training slows training down instead of filling memory.
//! A write error is reported at the next `submit` or at `finish`, and stops training.

use crate::layout;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::manifest::Manifest;
use super::retention::{self, Candidate, Policy};
use super::{RegistryError, store};

pub struct Job {
    /// `<run>/checkpoints/step-NNNNNNNNN`.
    pub dest: PathBuf,
    pub files: Vec<(String, Vec<u8>)>,
    pub manifest: Manifest,
}

pub struct Writer {
    tx: Option<tokio::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    error: Arc<Mutex<Option<RegistryError>>>,
}

impl Writer {
    /// Starts the writer for one run's checkpoints in registry `root`.
    pub fn start(root: PathBuf, run_dir: PathBuf, policy: Policy) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(1);
        let error = Arc::new(Mutex::new(None));
        let err = Arc::clone(&error);
        let thread = std::thread::Builder::new()
            .name("kiln-checkpoint".into())
            .spawn(move || {
                store::blocking(async move {
                    while let Some(job) = rx.recv().await {
                        if err.lock().map(|e| e.is_some()).unwrap_or(true) {
                            continue; // after a failure, drain without writing
                        }
                        let result = write(&root, &run_dir, &policy, job).await;
                        if let Err(e) = result
                            && let Ok(mut slot) = err.lock()
                        {
                            *slot = Some(e);
                        }
                    }
                })
            })
            .expect("the checkpoint thread starts");
        Self {
            tx: Some(tx),
            thread: Some(thread),
            error,
        }
    }

    fn take_error(&self) -> Result<(), RegistryError> {
        match self.error.lock().ok().and_then(|mut e| e.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Queues a checkpoint; waits only while another one is still queued.
    pub fn submit(&self, job: Job) -> Result<(), RegistryError> {
        self.take_error()?;
        let tx = self.tx.as_ref().expect("submit before finish");
        tx.blocking_send(job)
            .map_err(|_| RegistryError::Refused("the checkpoint writer stopped".into()))
    }

    /// Waits for every queued checkpoint to be on disk.
    pub fn finish(mut self) -> Result<(), RegistryError> {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.take_error()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // An error path: let the queued checkpoint land before the process goes on to exit.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write(
    root: &std::path::Path,
    run_dir: &std::path::Path,
    policy: &Policy,
    job: Job,
) -> Result<(), RegistryError> {
    store::no_links(root, &job.dest)?;
    store::commit_dir(root, &job.dest, &job.files, job.manifest).await?;
    // Retention: everything the policy does not keep is moved into .tmp (one rename each, so
    // a kill never leaves half a checkpoint) and deleted there.
    // Only checkpoints with a readable manifest take part; others are left for `verify`.
    let mut all = Vec::new();
    let mut candidates = Vec::new();
    for (step, dir) in layout::checkpoints(run_dir) {
        let manifest = tokio::fs::read(dir.join(layout::MANIFEST))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        if let Some(m) = manifest {
            candidates.push(Candidate {
                step,
                metric: m.monitor.value,
            });
            all.push((step, dir));
        }
    }
    let keep = retention::keep(&candidates, policy);
    for (step, dir) in all {
        if !keep.contains(&step) {
            let doomed = store::tmp_path(root, "retired");
            tokio::fs::rename(&dir, &doomed)
                .await
                .map_err(store::io_err(&dir))?;
            let _ = tokio::fs::remove_dir_all(&doomed).await;
        }
    }
    Ok(())
}

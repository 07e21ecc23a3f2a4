//! Batches for the training loop, assembled ahead of time by worker threads.
//!
//! The order of examples is a pure function of `(seed, epoch)`, so a run is reproducible and
//! a loader can start from any batch of an epoch. Worker `w` builds batches `w, w + W, ...` and
//! the consumer reads the workers' channels in turn, so the order does not depend on timing.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::{Batch, DataError, Pass, Source};

/// The example order of one epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
    }
    order
}

/// An epoch's batches, in order, from `start_batch` on. A batch that could not be read (a
/// corrupt image file) comes as the error, and the loader stops after it.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch, DataError>>>,
    workers: Vec<JoinHandle<()>>,
    start: usize,
    next: usize,
    end: usize,
}

impl Loader {
    /// Starts `workers` threads that each keep up to `prefetch` batches ready: at most
    /// `workers x (prefetch + 1)` batches exist before the consumer takes them.
    pub fn new(
        data: Arc<dyn Source>,
        order: Vec<usize>,
        batch_size: usize,
        start_batch: usize,
        workers: usize,
        prefetch: usize,
        pass: Option<Pass>,
    ) -> Self {
        let batches = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        Self::from_batches(data, batches, start_batch, workers, prefetch, pass)
    }

    /// A loader over given batches of example indices (a rank's shard, where a batch may be
    /// empty).
    pub fn from_batches(
        data: Arc<dyn Source>,
        batches: Vec<Vec<usize>>,
        start_batch: usize,
        workers: usize,
        prefetch: usize,
        pass: Option<Pass>,
    ) -> Self {
        let n_batches = batches.len();
        let batches = Arc::new(batches);
        let workers = workers.max(1);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(prefetch.max(1));
            let (data, batches) = (Arc::clone(&data), Arc::clone(&batches));
            handles.push(
                std::thread::Builder::new()
                    .name(format!("kiln-loader-{w}"))
                    .spawn(move || {
                        let mut b = start_batch + w;
                        while b < n_batches {
                            let batch = data.fetch(&batches[b], pass);
                            let failed = batch.is_err();
                            if tx.send(batch).is_err() || failed {
                                return; // the consumer stopped early, or cannot go on
                            }
                            b += workers;
                        }
                    })
                    .expect("the OS can start a loader thread"),
            );
            receivers.push(rx);
        }
        Self {
            receivers,
            workers: handles,
            start: start_batch,
            next: start_batch,
            end: n_batches,
        }
    }

    /// Number of batches in a full epoch of `n` examples.
    pub fn batches_per_epoch(n: usize, batch_size: usize) -> usize {
        n.div_ceil(batch_size)
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        // Worker w's first batch is `start + w`, so batch b comes from worker (b - start) % W.
        let w = (self.next - self.start) % self.receivers.len();
        let batch = self.receivers[w]
            .recv()
            .expect("a loader thread ends only after its last batch, or after an error");
        self.next = match batch.is_ok() {
            true => self.next + 1,
            false => self.end,
        };
        Some(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting to send
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, Features, Targets};

    fn data(n: usize) -> Arc<dyn Source> {
        Arc::new(Dataset {
            x: (0..n).map(|i| i as f32).collect(),
            y: Targets::Classes((0..n as u32).collect()),
            n,
            d: 1,
        })
    }

    fn values(b: &Batch) -> Vec<f32> {
        match &b.x {
            Features::Dense { x, .. } => x.clone(),
            Features::Tokens { .. } => unreachable!("dense test data"),
        }
    }

    #[test]
    fn workers_keep_the_order_and_cover_every_example_once() {
        let order = epoch_order(103, 7, 2, true);
        let all = |l: Loader| -> Vec<Batch> { l.map(Result::unwrap).collect() };
        let one = all(Loader::new(data(103), order.clone(), 10, 0, 1, 2, None));
        let three = all(Loader::new(data(103), order.clone(), 10, 0, 3, 1, None));
        assert_eq!(one, three);
        assert_eq!(one.len(), 11);
        let mut seen: Vec<f32> = one.iter().flat_map(values).collect();
        seen.sort_by(f32::total_cmp);
        assert_eq!(seen, (0..103).map(|i| i as f32).collect::<Vec<_>>());
        let resumed = all(Loader::new(data(103), order, 10, 4, 2, 1, None));
        assert_eq!(resumed, one[4..]);
    }

    /// A source whose batch holding example `bad` cannot be read.
    struct Failing {
        n: usize,
        bad: usize,
    }

    impl Source for Failing {
        fn len(&self) -> usize {
            self.n
        }

        fn fetch(&self, idx: &[usize], _: Option<Pass>) -> Result<Batch, DataError> {
            if idx.contains(&self.bad) {
                return Err(DataError::Format {
                    path: format!("example {}", self.bad),
                    message: "cannot decode".into(),
                });
            }
            Ok(Batch {
                x: Features::Dense {
                    x: idx.iter().map(|&i| i as f32).collect(),
                    width: 1,
                },
                y: Targets::Classes(idx.iter().map(|&i| i as u32).collect()),
                len: idx.len(),
            })
        }
    }

    #[test]
    fn a_batch_that_cannot_be_read_comes_once_as_the_error_then_the_loader_ends() {
        for workers in [1, 2, 3] {
            let data: Arc<dyn Source> = Arc::new(Failing { n: 100, bad: 57 });
            let order: Vec<usize> = (0..100).collect();
            let out: Vec<Result<Batch, DataError>> =
                Loader::new(data, order, 10, 0, workers, 2, None).collect();
            // Batches 0-4 arrive, batch 5 (examples 50-59) is the error, nothing after it.
            assert_eq!(out.len(), 6, "{workers} workers");
            assert!(out[..5].iter().all(Result::is_ok));
            let e = out[5].as_ref().unwrap_err().to_string();
            assert_eq!(e, "example 57: cannot decode");
        }
        // Dropped part-way, with workers blocked on full channels: the drop returns.
        let data: Arc<dyn Source> = Arc::new(Failing { n: 1000, bad: 999 });
        let mut l = Loader::new(data, (0..1000).collect(), 10, 0, 3, 1, None);
        assert!(l.next().unwrap().is_ok());
        drop(l);
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(50, 1, 3, true), epoch_order(50, 1, 3, true));
        assert_ne!(epoch_order(50, 1, 3, true), epoch_order(50, 1, 4, true));
        assert_eq!(epoch_order(5, 1, 3, false), vec![0, 1, 2, 3, 4]);
    }
}

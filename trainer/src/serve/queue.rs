//! A model's bounded request queue, shared by its batcher instances.
//!
//! Each request wakes at most one idle instance, the one idle for the shortest time (when
//! the server is quiet, one instance answers everything, on caches it keeps warm), and an
//! instance sleeps only while it has nothing to do. A `Mutex<Receiver>` shared by the
//! instances (what this replaces) cost one more thread switch per request when the server is
//! quiet: the instance that took a request woke the next one to wait on the lock, which then
//! slept again in the receive. On a VM each switch costs tens of microseconds.
//!
//! With a `max_wait`, the instance gathering a batch has the queue to itself until its batch
//! is full or its wait is over (the others wait their turn), as with the lock before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `capacity` requests are waiting already.
    Full,
    /// No instance takes requests any more (they stopped, or the queue is closing).
    Stopped,
}

struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

struct State<T> {
    jobs: VecDeque<T>,
    /// Instances waiting for a request, the one that went idle last on top: it is woken
    /// first, while its caches (and its CPU's) still hold the model's weights.
    idle: Vec<Thread>,
    /// The instance gathering a batch within its `max_wait`: requests go to it.
    gatherer: Option<Thread>,
    /// The sender is gone: the instances take what is left, then stop.
    closed: bool,
    /// Receivers alive; at none, requests are refused (and those queued dropped: their
    /// waiting clients hear that the model's worker stopped).
    receivers: usize,
}

impl<T> State<T> {
    /// Takes `me` out of the idle stack (a wake-up that was not meant for it, or came too
    /// late).
    fn forget(&mut self, me: &Thread) {
        if let Some(i) = self.idle.iter().position(|t| t.id() == me.id()) {
            self.idle.remove(i);
        }
    }
}

/// The requests' end of the queue; dropping it closes the queue.
pub struct Sender<T>(Arc<Queue<T>>);

/// An instance's end of the queue (cloned for each instance).
pub struct Receiver<T>(Arc<Queue<T>>);

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.closed = true;
        let gatherer = s.gatherer.clone();
        let all: Vec<Thread> = s.idle.drain(..).chain(gatherer).collect();
        drop(s);
        all.iter().for_each(Thread::unpark);
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.0.lock().receivers += 1;
        Receiver(Arc::clone(&self.0))
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.receivers -= 1;
        if s.receivers == 0 {
            // Dropped outside the lock: a job's reply sender wakes its client.
            let jobs = std::mem::take(&mut s.jobs);
            drop(s);
            drop(jobs);
        }
    }
}

impl<T> Sender<T> {
    /// Queues `job`, or gives it back with why not (at once: it never waits).
    pub fn push(&self, job: T) -> Result<(), (T, Refused)> {
        let q = &self.0;
        let mut s = q.lock();
        if s.closed || s.receivers == 0 {
            return Err((job, Refused::Stopped));
        }
        if s.jobs.len() >= q.capacity {
            return Err((job, Refused::Full));
        }
        s.jobs.push_back(job);
        let wake = match &s.gatherer {
            Some(g) => Some(g.clone()),
            None => s.idle.pop(),
        };
        drop(s);
        if let Some(t) = wake {
            t.unpark();
        }
        Ok(())
    }
}

/// A bounded queue (at least one place) and its two ends.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let q = Arc::new(Queue {
        state: Mutex::new(State {
            jobs: VecDeque::new(),
            idle: Vec::new(),
            gatherer: None,
            closed: false,
            receivers: 1,
        }),
        capacity: capacity.max(1),
    });
    (Sender(Arc::clone(&q)), Receiver(q))
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Receiver<T> {
    /// The next batch: the first request to come, then those queued (or, within `max_wait`
    /// of the first, arriving) while the batch has fewer than `max_batch` rows (`rows` of
    /// each; a request is never split). `None`: the queue is closed and empty.
    pub fn next_batch(
        &self,
        max_batch: usize,
        max_wait: Duration,
        rows: impl Fn(&T) -> usize,
    ) -> Option<Vec<T>> {
        let me = std::thread::current();
        let mut s = self.0.lock();
        loop {
            if s.gatherer.is_none() && !s.jobs.is_empty() {
                break;
            }
            if s.closed && s.jobs.is_empty() {
                return None;
            }
            // Woken by a request, by the gatherer as it ends, or by the queue closing.
            s.idle.push(me.clone());
            drop(s);
            std::thread::park();
            s = self.0.lock();
            s.forget(&me);
        }
        let (mut batch, mut n) = (Vec::new(), 0);
        let mut take = |s: &mut State<T>| {
            while n < max_batch.max(1) {
                let Some(job) = s.jobs.pop_front() else { break };
                n += rows(&job);
                batch.push(job);
            }
            n >= max_batch.max(1)
        };
        let full = take(&mut s);
        if max_wait > Duration::ZERO && !full && !s.closed {
            s.gatherer = Some(me);
            let deadline = Instant::now() + max_wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || s.closed {
                    break;
                }
                drop(s);
                std::thread::park_timeout(left);
                s = self.0.lock();
                if take(&mut s) {
                    break;
                }
            }
            s.gatherer = None;
        }
        // No gatherer now (this instance holds the lock and gathers no more): requests this
        // batch left go to the instance idle last, which passes on what it leaves in turn;
        // once closed, every waiting instance comes to take what is left or stop.
        let wake: Vec<Thread> = if s.closed {
            s.idle.drain(..).collect()
        } else if s.jobs.is_empty() {
            Vec::new()
        } else {
            s.idle.pop().into_iter().collect()
        };
        drop(s);
        wake.iter().for_each(Thread::unpark);
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `t`'s result, or a failure (not a hang) when it takes over 10 s.
    fn join<R>(t: std::thread::JoinHandle<R>) -> R {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "an instance never returned");
            std::thread::sleep(Duration::from_millis(1));
        }
        t.join().unwrap()
    }

    /// An instance taking one batch, on a thread of its own.
    fn instance(
        q: &Receiver<u32>,
        max_batch: usize,
        max_wait: Duration,
    ) -> std::thread::JoinHandle<Option<Vec<u32>>> {
        let q = q.clone();
        std::thread::spawn(move || q.next_batch(max_batch, max_wait, |_| 1))
    }

    /// Until `n` instances wait for a request.
    fn until_idle(q: &Receiver<u32>, n: usize) {
        while q.0.lock().idle.len() < n {
            std::thread::yield_now();
        }
    }

    /// Until an instance gathers a batch.
    fn until_gathering(q: &Receiver<u32>) {
        while q.0.lock().gatherer.is_none() {
            std::thread::yield_now();
        }
    }

    #[test]
    fn refuses_past_capacity_and_after_closing() {
        let (tx, q) = bounded::<u32>(2);
        assert!(tx.push(1).is_ok());
        assert!(tx.push(2).is_ok());
        assert_eq!(tx.push(3).unwrap_err(), (3, Refused::Full));
        let batch = q.next_batch(8, Duration::ZERO, |_| 1).unwrap();
        assert_eq!(batch, vec![1, 2]);
        assert!(tx.push(4).is_ok());
        drop(tx);
        // What was queued before closing is still taken, then the instances stop.
        assert_eq!(q.next_batch(8, Duration::ZERO, |_| 1), Some(vec![4]));
        assert_eq!(q.next_batch(8, Duration::ZERO, |_| 1), None);
    }

    #[test]
    fn with_every_instance_gone_requests_are_refused_and_the_queued_dropped() {
        let (tx, q) = bounded::<Arc<()>>(4);
        let job = Arc::new(());
        tx.push(Arc::clone(&job)).unwrap();
        drop(q);
        // The queued job was dropped (its client hears that the worker stopped).
        assert_eq!(Arc::strong_count(&job), 1);
        assert_eq!(tx.push(job).unwrap_err().1, Refused::Stopped);
    }

    #[test]
    fn a_batch_stops_at_max_batch_rows() {
        let (tx, q) = bounded::<usize>(16);
        for rows in [3, 3, 3, 1] {
            tx.push(rows).unwrap();
        }
        // 3 + 3 < 7, so a third request joins (a request is never split).
        assert_eq!(q.next_batch(7, Duration::ZERO, |r| *r), Some(vec![3, 3, 3]));
        assert_eq!(q.next_batch(7, Duration::ZERO, |r| *r), Some(vec![1]));
    }

    #[test]
    fn an_idle_instance_wakes_for_each_request() {
        let (tx, q) = bounded::<u32>(1000);
        let instances: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while let Some(b) = q.next_batch(8, Duration::ZERO, |_| 1) {
                        seen.extend(b);
                    }
                    seen
                })
            })
            .collect();
        for k in 0..100 {
            tx.push(k).unwrap();
            // Taken at once: a request whose wake-up was lost would wait for the next one.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !q.0.lock().jobs.is_empty() {
                assert!(Instant::now() < deadline, "request {k} was never taken");
                std::thread::yield_now();
            }
        }
        drop(tx);
        let mut seen: Vec<u32> = instances.into_iter().flat_map(join).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn the_instance_idle_last_is_woken_first() {
        let (tx, q) = bounded::<u32>(4);
        let first = instance(&q, 8, Duration::ZERO);
        until_idle(&q, 1);
        let last = instance(&q, 8, Duration::ZERO);
        until_idle(&q, 2);
        tx.push(1).unwrap();
        assert_eq!(join(last), Some(vec![1]));
        tx.push(2).unwrap();
        assert_eq!(join(first), Some(vec![2]));
    }

    #[test]
    fn the_gatherer_keeps_the_queue_until_its_batch_is_full() {
        let (tx, q) = bounded::<u32>(8);
        let gatherer = instance(&q, 3, Duration::from_secs(30));
        tx.push(1).unwrap();
        until_gathering(&q);
        // Another instance, free now, waits its turn rather than take requests 2 and 3.
        let other = instance(&q, 8, Duration::ZERO);
        until_idle(&q, 1);
        for k in 2..=4 {
            tx.push(k).unwrap();
        }
        // Full at 3 rows: it returns then, not when its 30 s are over.
        assert_eq!(join(gatherer), Some(vec![1, 2, 3]));
        // And the request it left goes to the instance that waited.
        assert_eq!(join(other), Some(vec![4]));
    }

    #[test]
    fn closing_while_a_batch_is_gathered_stops_every_instance() {
        let (tx, q) = bounded::<u32>(8);
        let gatherer = instance(&q, 4, Duration::from_secs(30));
        tx.push(1).unwrap();
        until_gathering(&q);
        let others: Vec<_> = (0..2).map(|_| instance(&q, 4, Duration::ZERO)).collect();
        until_idle(&q, 2);
        tx.push(2).unwrap();
        drop(tx);
        // The gatherer ends at the close with what came; the others find nothing and stop.
        assert_eq!(join(gatherer), Some(vec![1, 2]));
        for o in others {
            assert_eq!(join(o), None);
        }
    }
}

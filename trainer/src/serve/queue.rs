//! A model's bounded request queue, shared by its batcher instances.
//!
//! Each request wakes at most one idle instance, the one idle for the shortest time (its
//! caches still hold the weights), and an instance sleeps only while it has nothing to do.
//! A `Mutex<Receiver>` shared by the instances (what this replaces) cost one more thread
//! switch per request when the server is quiet (the instance that took a request woke the
//! next one to wait on the lock, which then slept again in the receive), and took turns
//! between the instances, so each request found the weights in the other core's cache. On a
//! VM each switch costs tens of microseconds.
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
    /// The server is closing.
    Closed,
}

pub struct Queue<T> {
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
    closed: bool,
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

/// The requests' end of the queue; dropping it closes the queue: the instances take what is
/// left, then stop.
pub struct Sender<T>(Arc<Queue<T>>);

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

impl<T> Sender<T> {
    /// Queues `job`, or gives it back with why not (at once: it never waits).
    pub fn push(&self, job: T) -> Result<(), (T, Refused)> {
        let q = &self.0;
        let mut s = q.lock();
        if s.closed {
            return Err((job, Refused::Closed));
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
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Arc<Queue<T>>) {
    let q = Arc::new(Queue {
        state: Mutex::new(State {
            jobs: VecDeque::new(),
            idle: Vec::new(),
            gatherer: None,
            closed: false,
        }),
        capacity: capacity.max(1),
    });
    (Sender(Arc::clone(&q)), q)
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch: the first request to come, then those queued (or, within `max_wait`
    /// of the first, arriving) while the batch has fewer than `max_batch` rows (`rows` of
    /// each). `None`: the queue is closed and empty.
    pub fn next_batch(
        &self,
        max_batch: usize,
        max_wait: Duration,
        rows: impl Fn(&T) -> usize,
    ) -> Option<Vec<T>> {
        let me = std::thread::current();
        let mut s = self.lock();
        loop {
            if s.gatherer.is_none() && !s.jobs.is_empty() {
                break;
            }
            if s.closed && s.jobs.is_empty() {
                return None;
            }
            s.idle.push(me.clone());
            drop(s);
            std::thread::park();
            s = self.lock();
            s.forget(&me);
        }
        let (mut batch, mut n) = (Vec::new(), 0);
        let mut take = |s: &mut State<T>| {
            while n < max_batch {
                let Some(job) = s.jobs.pop_front() else { break };
                n += rows(&job);
                batch.push(job);
            }
            n >= max_batch
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
                s = self.lock();
                if take(&mut s) {
                    break;
                }
            }
            s.gatherer = None;
            // Requests the full batch left: an idle instance takes them.
            if !s.jobs.is_empty()
                && let Some(t) = s.idle.pop()
            {
                drop(s);
                t.unpark();
            }
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (tx, q) = bounded::<u32>(4);
        let instances: Vec<_> = (0..2)
            .map(|_| {
                let q = Arc::clone(&q);
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
            tx.push(k).unwrap_or_else(|_| panic!("request {k} refused"));
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(tx);
        let mut seen: Vec<u32> = instances
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn the_instance_idle_last_is_woken_first() {
        let (tx, q) = bounded::<u32>(4);
        let instance = || {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.next_batch(8, Duration::ZERO, |_| 1))
        };
        let idle = |n: usize| {
            while q.lock().idle.len() < n {
                std::thread::yield_now();
            }
        };
        let first = instance();
        idle(1);
        let last = instance();
        idle(2);
        tx.push(1).unwrap();
        assert_eq!(last.join().unwrap(), Some(vec![1]));
        tx.push(2).unwrap();
        assert_eq!(first.join().unwrap(), Some(vec![2]));
    }

    #[test]
    fn the_gatherer_keeps_the_queue_until_its_batch_is_full() {
        let (tx, q) = bounded::<u32>(8);
        let gatherer = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.next_batch(3, Duration::from_secs(30), |_| 1))
        };
        tx.push(1).unwrap();
        while q.lock().gatherer.is_none() {
            std::thread::yield_now();
        }
        // Another instance, free now, waits its turn rather than take requests 2 and 3.
        let other = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.next_batch(8, Duration::ZERO, |_| 1))
        };
        for k in 2..=4 {
            tx.push(k).unwrap();
        }
        // Full at 3 rows: it returns then, not when its 30 s are over (the test would hang).
        assert_eq!(gatherer.join().unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(other.join().unwrap(), Some(vec![4]));
    }
}

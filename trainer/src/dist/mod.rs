//! Data-parallel training across processes and machines, on engines people already run.
//!
//! A launcher (mpirun, srun, torchrun-style variables) starts one kiln per rank; [`Group::join`]
//! reads where this process stands ([`Topology`]) and opens the collective engine (MPI, or
//! NCCL on CUDA). Every rank holds the whole model; each step, each rank computes gradients on
//! its share of the global batch ([`shard`]), the flat gradient is summed across ranks
//! ([`Group::all_reduce_sum`]) and every rank applies the same optimizer step, so the weights
//! stay identical without ever being sent. Only rank 0 writes checkpoints, logs and registry
//! entries.
//!
//! Before step 0 the ranks [`Group::agree`] on kiln's version, the config and the data, and run
//! a test all-reduce. A collective that does not complete within the timeout ends the process
//! with a message naming what it waited for (a missing, hung or dead rank), rather than hang.

pub mod grads;
pub mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub mod rendezvous;
mod watchdog;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use launch::{Launcher, Topology};
use watchdog::Watchdog;

/// How long a collective may wait for the other ranks before the process gives up. Large
/// enough for a slow rank to load its data; `distributed.timeout_s` in the config.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a group of ranks needs from a collective engine. Buffers are host memory.
pub trait Engine {
    fn name(&self) -> &'static str;
    /// Sums `buf` element-wise across ranks, in place, on every rank.
    fn all_reduce_sum(&mut self, buf: &mut Vec<f32>);
    /// Rank 0's bytes into `buf` on every rank (every rank passes the same length).
    fn broadcast_fixed(&mut self, buf: &mut [u8]);
    /// Every rank's `mine` (all of one length), concatenated in rank order.
    fn all_gather_fixed(&mut self, mine: &[u8]) -> Vec<u8>;
    /// Ends every rank of the job (after this rank failed on its own).
    fn abort(&mut self, code: i32) -> !;
}

/// The ranks of one training job and the engine that connects them.
pub struct Group {
    topology: Topology,
    engine: RefCell<Box<dyn Engine>>,
    /// NCCL for the gradients of ranks on CUDA, when the control engine is MPI.
    fast: RefCell<Option<Box<dyn Engine>>>,
    watchdog: Watchdog,
    timeout: std::cell::Cell<Duration>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("topology", &self.topology)
            .field("engine", &self.engine.borrow().name())
            .finish()
    }
}

impl Group {
    /// Joins the job that started this process. `None`: no launcher, or a world of one (then
    /// kiln trains as a single process).
    pub fn join() -> Result<Option<Self>, String> {
        let Some(mut topology) = Topology::from_env()? else {
            return Ok(None);
        };
        if topology.world == 1 {
            return Ok(None);
        }
        #[cfg(feature = "nccl")]
        nccl::make_nccl_findable();
        let engine: Box<dyn Engine> = match &topology.launcher {
            l if l.is_mpi() => {
                let (engine, local) = open_mpi(&topology)?;
                topology.local_world.get_or_insert(local);
                engine
            }
            #[cfg(feature = "nccl")]
            Launcher::Torchrun { addr, port } => open_nccl_rendezvous(&topology, addr, *port)?,
            #[cfg(not(feature = "nccl"))]
            Launcher::Torchrun { .. } => {
                return Err(format!(
                    "started as rank {} of {} by torchrun-style variables (RANK, WORLD_SIZE): \
                     they need NCCL on CUDA GPUs, and this kiln was built without it (rebuild \
                     with `--features nccl`); on CPUs launch with mpirun or srun, or unset \
                     RANK and WORLD_SIZE",
                    topology.rank, topology.world
                ));
            }
            _ => unreachable!("every launcher is MPI or torchrun-style"),
        };
        let group = Self {
            watchdog: Watchdog::start(topology.rank, topology.world),
            topology,
            engine: RefCell::new(engine),
            fast: RefCell::new(None),
            timeout: std::cell::Cell::new(DEFAULT_TIMEOUT),
        };
        Ok(Some(group))
    }

    pub fn rank(&self) -> usize {
        self.topology.rank
    }

    pub fn world(&self) -> usize {
        self.topology.world
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The engine that all-reduces the gradients (`mpi` or `nccl`).
    pub fn engine_name(&self) -> &'static str {
        match self.fast.borrow().as_ref() {
            Some(f) => f.name(),
            None => self.engine.borrow().name(),
        }
    }

    /// Ranks on CUDA under an MPI launcher: from here on, gradients go through NCCL, whose
    /// communicator id rank 0 makes and MPI broadcasts. `ordinal` is this rank's GPU.
    #[cfg(feature = "nccl")]
    pub fn use_nccl(&self, ordinal: usize) -> Result<(), String> {
        let id = if self.is_writer() {
            nccl::new_id().map_err(|e| format!("rank 0: {e}"))
        } else {
            Ok([0; 128])
        };
        // One byte of verdict, then the id: a rank 0 without NCCL stops every rank.
        let mut msg = vec![u8::from(id.is_ok())];
        msg.extend_from_slice(&id.as_ref().map_or([0; 128], |i| *i));
        let msg = self.broadcast(msg, &|| "the broadcast of NCCL's communicator id".into());
        if msg[0] == 0 {
            return Err(id
                .err()
                .unwrap_or_else(|| "rank 0 cannot start NCCL (see its error)".into()));
        }
        let id: [u8; 128] = msg[1..129].try_into().expect("128 bytes");
        let (rank, world) = (self.rank(), self.world());
        let opened = {
            let _armed = self.watchdog.arm(
                self.timeout.get(),
                "NCCL's start-up (ncclCommInitRank)".into(),
            );
            nccl::Nccl::open(ordinal, rank, world, id)?
        };
        *self.fast.borrow_mut() = Some(Box::new(opened));
        Ok(())
    }

    /// Rank 0 writes checkpoints, logs and registry entries; the others only compute.
    pub fn is_writer(&self) -> bool {
        self.topology.rank == 0
    }

    pub fn set_timeout(&self, t: Duration) {
        self.timeout.set(t);
    }

    /// Runs one collective under the watchdog: past the timeout, the process ends with a
    /// message naming `what`.
    fn guarded<T>(&self, what: &dyn Fn() -> String, f: impl FnOnce(&mut dyn Engine) -> T) -> T {
        let _armed = self.watchdog.arm(self.timeout.get(), what());
        f(&mut **self.engine.borrow_mut())
    }

    /// Sums `buf` across ranks, in place.
    pub fn all_reduce_sum(&self, buf: &mut Vec<f32>, what: &dyn Fn() -> String) {
        if let Some(fast) = self.fast.borrow_mut().as_mut() {
            let _armed = self.watchdog.arm(self.timeout.get(), what());
            return fast.all_reduce_sum(buf);
        }
        self.guarded(what, |e| e.all_reduce_sum(buf));
    }

    /// Rank 0's `bytes` on every rank (the others' `bytes` are ignored).
    pub fn broadcast(&self, bytes: Vec<u8>, what: &dyn Fn() -> String) -> Vec<u8> {
        self.guarded(what, |e| {
            let mut len = (bytes.len() as u64).to_le_bytes();
            e.broadcast_fixed(&mut len);
            let mut buf = bytes;
            buf.resize(u64::from_le_bytes(len) as usize, 0);
            e.broadcast_fixed(&mut buf);
            buf
        })
    }

    /// Every rank's `mine`, in rank order.
    pub fn all_gather(&self, mine: &[u8], what: &dyn Fn() -> String) -> Vec<Vec<u8>> {
        self.guarded(what, |e| {
            let lens = e.all_gather_fixed(&(mine.len() as u64).to_le_bytes());
            let lens: Vec<usize> = lens
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
                .collect();
            let max = lens.iter().copied().max().unwrap_or(0);
            let mut padded = mine.to_vec();
            padded.resize(max, 0);
            let all = e.all_gather_fixed(&padded);
            lens.iter()
                .enumerate()
                .map(|(r, &n)| all[r * max..r * max + n].to_vec())
                .collect()
        })
    }

    /// Waits until every rank gets here: after a failed handshake each rank prints its
    /// message first, so the launcher, which ends the job at the first non-zero exit, cannot
    /// cut another rank short.
    pub fn barrier(&self) {
        self.all_reduce_sum(&mut vec![0.0], &|| "the final barrier".into());
    }

    /// Ends every rank of the job, after this one failed on its own.
    pub fn abort(&self, code: i32) -> ! {
        self.engine.borrow_mut().abort(code)
    }

    /// The ranks compare what they are about to train (every rank passes its [`Hello`], or why
    /// it could not start), then run a test all-reduce. Every rank returns the same verdict:
    /// `Err` names the rank that failed or differs, and how.
    pub fn agree(&self, mine: Result<Hello, String>) -> Result<AgreeReport, String> {
        let bytes = serde_json::to_vec(&mine).expect("a hello is JSON");
        let started = Instant::now();
        let all = self.all_gather(&bytes, &|| {
            "the start-up handshake (waiting for every rank to load its config and data)".into()
        });
        let hellos: Vec<Result<Hello, String>> = all
            .iter()
            .enumerate()
            .map(|(r, b)| {
                serde_json::from_slice(b).unwrap_or_else(|e| {
                    Err(format!(
                        "rank {r} sent a handshake this kiln cannot read ({e})"
                    ))
                })
            })
            .collect();
        let waited = started.elapsed();
        if let Some(why) = compare(&hellos, self.rank()) {
            return Err(why);
        }
        // A test all-reduce: every rank adds its rank + 1, 1 MiB of it.
        let mut probe = vec![(self.rank() + 1) as f32; 1 << 18];
        let t = Instant::now();
        self.all_reduce_sum(&mut probe, &|| "the test all-reduce".into());
        let test = t.elapsed();
        let want = (self.world() * (self.world() + 1) / 2) as f32;
        if let Some(bad) = probe.iter().find(|v| **v != want) {
            return Err(format!(
                "the test all-reduce over {} ranks gave {bad}, not {want}: the {} engine is broken",
                self.world(),
                self.engine_name()
            ));
        }
        Ok(AgreeReport {
            waited,
            test_all_reduce: test,
        })
    }
}

impl Drop for Group {
    /// Unwinding from a panic would end in `MPI_Finalize`, which waits for ranks that are
    /// waiting for this one: end the job instead, once the run was marked failed (the trainer's
    /// guards drop first).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "error: rank {} of {}: kiln panicked (a bug: please report it with the message above); stopping the job",
                self.rank(),
                self.world()
            );
            self.engine.get_mut().abort(101);
        }
    }
}

#[cfg(feature = "mpi")]
fn open_mpi(t: &Topology) -> Result<(Box<dyn Engine>, usize), String> {
    let m = mpi::Mpi::init()?;
    if m.size() != t.world || m.rank() != t.rank {
        return Err(format!(
            "{} says rank {} of {}, but MPI says rank {} of {}: is this kiln linked against the \
             MPI library of the launcher that started it?",
            t.launcher.describe(),
            t.rank,
            t.world,
            m.rank(),
            m.size()
        ));
    }
    let local = m.local_size();
    Ok((Box::new(m), local))
}

#[cfg(not(feature = "mpi"))]
fn open_mpi(t: &Topology) -> Result<(Box<dyn Engine>, usize), String> {
    Err(format!(
        "started as rank {} of {} by {}, but this kiln was built without MPI: rebuild with \
         `cargo build --release --features mpi` (needs the MPI development files, e.g. Debian's \
         libopenmpi-dev)",
        t.rank,
        t.world,
        t.launcher.describe()
    ))
}

/// torchrun-style launch: NCCL on `cuda:LOCAL_RANK`, its id shared at the rendezvous.
#[cfg(feature = "nccl")]
fn open_nccl_rendezvous(
    t: &Topology,
    addr: &Option<String>,
    port: Option<u16>,
) -> Result<Box<dyn Engine>, String> {
    let (Some(addr), Some(port)) = (addr, port) else {
        return Err(
            "torchrun-style variables need MASTER_ADDR and MASTER_PORT (where rank 0 listens)"
                .into(),
        );
    };
    let payload = if t.rank == 0 {
        Some(nccl::new_id()?)
    } else {
        None
    };
    let bound = (t.rank == 0).then(rendezvous::inherited_listener).flatten();
    let id = rendezvous::exchange(addr, port, t.rank, t.world, payload, DEFAULT_TIMEOUT, bound)?;
    Ok(Box::new(nccl::Nccl::open(
        t.local_rank,
        t.rank,
        t.world,
        id,
    )?))
}

/// What each rank says before step 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub kiln_version: String,
    /// The world size this rank was told.
    pub world: usize,
    /// The resolved config, flattened to dotted keys; the device and `runtime` (threads,
    /// registry folder) may differ between ranks and are left out.
    pub config: BTreeMap<String, serde_json::Value>,
    /// sha256 of each data file, by role (`data`, `labels`, `test`, `test_labels`).
    pub data: BTreeMap<String, String>,
    /// The run this rank resumes, if any.
    pub resume: Option<String>,
}

/// How the start-up went.
#[derive(Debug, Clone, Copy)]
pub struct AgreeReport {
    /// Waiting for the slowest rank.
    pub waited: Duration,
    pub test_all_reduce: Duration,
}

/// The first disagreement among the ranks, worded for rank `me`; `None` when all agree.
pub fn compare(hellos: &[Result<Hello, String>], me: usize) -> Option<String> {
    for (r, h) in hellos.iter().enumerate() {
        if let Err(e) = h {
            return Some(if r == me {
                e.clone()
            } else {
                format!("rank {r} could not start: {e}")
            });
        }
    }
    let hellos: Vec<&Hello> = hellos.iter().filter_map(|h| h.as_ref().ok()).collect();
    let first = hellos[0];
    for (r, h) in hellos.iter().enumerate().skip(1) {
        if h.kiln_version != first.kiln_version {
            return Some(format!(
                "rank {r} runs kiln {}, rank 0 kiln {}: install one kiln on every machine",
                h.kiln_version, first.kiln_version
            ));
        }
        if h.world != first.world {
            return Some(format!(
                "rank {r} was told the world has {} ranks, rank 0 {}",
                h.world, first.world
            ));
        }
        if h.resume != first.resume {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "a new run".into());
            return Some(format!(
                "rank {r} resumes {}, rank 0 {}: give every rank the same --resume",
                show(&h.resume),
                show(&first.resume)
            ));
        }
        let keys: std::collections::BTreeSet<&String> =
            h.config.keys().chain(first.config.keys()).collect();
        let differ: Vec<&String> = keys
            .into_iter()
            .filter(|k| h.config.get(*k) != first.config.get(*k))
            .collect();
        if let Some(k) = differ.first() {
            let show = |v: Option<&serde_json::Value>| {
                v.map_or_else(|| "unset".to_string(), |v| v.to_string())
            };
            let more = match differ.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more keys)"),
            };
            return Some(format!(
                "rank {r}'s config differs from rank 0's: {k} is {} on rank {r}, {} on rank 0{more}; \
                 give every rank the same config and --set flags",
                show(h.config.get(*k)),
                show(first.config.get(*k))
            ));
        }
        if h.data != first.data {
            let role = h
                .data
                .keys()
                .chain(first.data.keys())
                .find(|k| h.data.get(*k) != first.data.get(*k))
                .cloned()
                .unwrap_or_default();
            let short = |v: Option<&String>| {
                v.map_or_else(|| "absent".to_string(), |s| s.chars().take(12).collect())
            };
            return Some(format!(
                "rank {r}'s {role} file differs from rank 0's (sha256 {} vs {}): every machine needs the same data",
                short(h.data.get(&role)),
                short(first.data.get(&role))
            ));
        }
    }
    None
}

/// The examples rank `rank` of `world` trains on in each step of an epoch: global batch `k` is
/// `order[k*B..(k+1)*B]` with `B = local_batch * world` (the same examples a single process
/// with batch `B` takes), split into `world` consecutive pieces as even as possible. Pieces of
/// the last, short batch may be empty. Disjoint and covering across ranks.
pub fn shard(order: &[usize], local_batch: usize, world: usize, rank: usize) -> Vec<Vec<usize>> {
    let global = local_batch * world;
    order
        .chunks(global)
        .map(|b| {
            let (q, extra) = (b.len() / world, b.len() % world);
            let start = rank * q + rank.min(extra);
            let len = q + usize::from(rank < extra);
            b[start..start + len].to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            kiln_version: "0.1.0".into(),
            world: 2,
            config: [("optim.lr".to_string(), serde_json::json!(0.001))].into(),
            data: [("data".to_string(), "ab".repeat(32))].into(),
            resume: None,
        }
    }

    #[test]
    fn shards_are_disjoint_covering_and_match_the_global_batch() {
        let order: Vec<usize> = (0..103).rev().collect();
        for world in [1, 2, 3, 7] {
            let shards: Vec<Vec<Vec<usize>>> =
                (0..world).map(|r| shard(&order, 8, world, r)).collect();
            let steps = order.len().div_ceil(8 * world);
            for (k, global) in order.chunks(8 * world).enumerate() {
                let mut joined = Vec::new();
                for s in &shards {
                    assert_eq!(s.len(), steps);
                    joined.extend_from_slice(&s[k]);
                }
                assert_eq!(joined, global, "world {world}, step {k}");
            }
        }
        // 3 examples left over 4 ranks: one rank gets none.
        let last: Vec<usize> = (0..4)
            .map(|r| shard(&[1, 2, 3], 2, 4, r)[0].len())
            .collect();
        assert_eq!(last, vec![1, 1, 1, 0]);
    }

    #[test]
    fn disagreements_name_the_rank_and_the_key() {
        let a = hello();
        assert_eq!(compare(&[Ok(a.clone()), Ok(a.clone())], 0), None);
        let mut b = a.clone();
        b.config.insert("optim.lr".into(), serde_json::json!(0.003));
        let why = compare(&[Ok(a.clone()), Ok(b)], 0).unwrap();
        assert!(
            why.contains("optim.lr is 0.003 on rank 1, 0.001 on rank 0"),
            "{why}"
        );
        let mut c = a.clone();
        c.data.insert("data".into(), "cd".repeat(32));
        let why = compare(&[Ok(a.clone()), Ok(c)], 1).unwrap();
        assert!(why.contains("rank 1's data file differs"), "{why}");
        let failed = [
            Ok(a.clone()),
            Err("configs/x.toml: no such file".to_string()),
        ];
        assert_eq!(
            compare(&failed, 0).unwrap(),
            "rank 1 could not start: configs/x.toml: no such file"
        );
        assert_eq!(compare(&failed, 1).unwrap(), "configs/x.toml: no such file");
    }
}

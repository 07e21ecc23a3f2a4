//! The MPI engine: the system's MPI library (Open MPI, MPICH, Intel MPI) through rsmpi.
//!
//! Buffers live in host memory; on a GPU backend the flat gradient is read back once per step,
//! all-reduced here, and uploaded again.

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};

use super::Engine;

pub struct Mpi {
    world: SimpleCommunicator,
    /// The receive buffer of the last all-reduce, swapped with the caller's: no copy, and no
    /// fresh pages to fault in each step.
    spare: Vec<f32>,
    // Dropped last: MPI_Finalize.
    _universe: Universe,
}

/// MPI moves at most `i32::MAX` elements per call; larger buffers go in pieces.
const CHUNK: usize = 1 << 30;

impl Mpi {
    /// `MPI_Init`. Fails when MPI was initialised already in this process.
    pub fn init() -> Result<Self, String> {
        let universe = mpi::initialize().ok_or("MPI was initialised twice in one process")?;
        let world = universe.world();
        Ok(Self {
            world,
            spare: Vec::new(),
            _universe: universe,
        })
    }

    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    pub fn size(&self) -> usize {
        self.world.size() as usize
    }

    /// Ranks on this machine (`MPI_Comm_split_type` with shared memory).
    pub fn local_size(&self) -> usize {
        self.world.split_shared(self.world.rank()).size() as usize
    }
}

impl Engine for Mpi {
    fn name(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&mut self, buf: &mut Vec<f32>) {
        self.spare.resize(buf.len(), 0.0);
        if buf.len() <= CHUNK {
            self.world
                .all_reduce_into(&buf[..], &mut self.spare[..], SystemOperation::sum());
        } else {
            for (piece, out) in buf.chunks(CHUNK).zip(self.spare.chunks_mut(CHUNK)) {
                self.world
                    .all_reduce_into(piece, out, SystemOperation::sum());
            }
        }
        std::mem::swap(buf, &mut self.spare);
    }

    fn broadcast_fixed(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(CHUNK) {
            self.world.process_at_rank(0).broadcast_into(piece);
        }
    }

    fn all_gather_fixed(&mut self, mine: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; mine.len() * self.size()];
        self.world.all_gather_into(mine, &mut out[..]);
        out
    }

    fn abort(&mut self, code: i32) -> ! {
        self.world.abort(code)
    }
}

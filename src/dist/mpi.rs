//! [`Collective`] over MPI (rsmpi's `mpi` crate on the system's MPI library; cargo feature `mpi`).

use ::mpi::collective::SystemOperation;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;

use super::Collective;

/// Environment variables a launcher (Open MPI's `mpirun`, MPICH's Hydra, Slurm's PMI) sets in
/// every process it starts: their presence means this process is one rank of a job.
const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"];

/// Whether this process was started by an MPI launcher.
pub fn launched() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// The world of an MPI job: MPI stays initialised while it lives (dropping it finalises MPI).
pub struct MpiWorld {
    world: SimpleCommunicator,
    local_rank: usize,
    local_size: usize,
    // Last: dropped after the communicators.
    _universe: Universe,
}

impl std::fmt::Debug for MpiWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiWorld")
            .field("rank", &self.world.rank())
            .field("size", &self.world.size())
            .field("local_rank", &self.local_rank)
            .finish()
    }
}

impl MpiWorld {
    /// Initialises MPI when this process was started by an MPI launcher; `None` otherwise (or
    /// when MPI was initialised already).
    pub fn init_if_launched() -> Option<MpiWorld> {
        if !launched() {
            return None;
        }
        let universe = ::mpi::initialize()?;
        let world = universe.world();
        // The ranks on this machine (sharing its memory) number its adapters among themselves.
        let node = world.split_shared(world.rank());
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        Some(MpiWorld {
            world,
            local_rank,
            local_size,
            _universe: universe,
        })
    }

    /// This rank's index among the ranks on its machine.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Ranks on this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Name of the machine this rank runs on.
    pub fn host(&self) -> String {
        ::mpi::environment::processor_name().unwrap_or_else(|_| "?".into())
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_f32(&self, buf: &mut [f32]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }

    fn sum_f64(&self, buf: &mut [f64]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }

    fn min_u64(&self, buf: &mut [u64]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::min());
    }

    fn max_u64(&self, buf: &mut [u64]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::max());
    }

    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>) {
        let root = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        root.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        root.broadcast_into(&mut buf[..]);
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

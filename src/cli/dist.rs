//! The ranks of `rigl train` and `rigl bench step` under `mpirun` (cargo feature `mpi`): MPI
//! set up when a launcher started this process, one adapter per rank, and a failing rank ending
//! the others at once.

use std::rc::Rc;

use rigl::dist::Collective;
use rigl::gpu::GpuContext;

use super::{CliError, CliResult};

/// This process's place in a data-parallel job (a job of one when not started by `mpirun`).
pub struct Ranks {
    #[cfg(feature = "mpi")]
    world: Option<Rc<rigl::dist::mpi::MpiWorld>>,
}

impl Ranks {
    /// Initialises MPI when a launcher started this process. A build without the `mpi` feature
    /// started as one of several copies refuses, rather than train N unrelated runs into one
    /// directory.
    pub fn start() -> Result<Ranks, CliError> {
        #[cfg(feature = "mpi")]
        {
            let world = rigl::dist::mpi::MpiWorld::init_if_launched().map(Rc::new);
            Ok(Ranks { world })
        }
        #[cfg(not(feature = "mpi"))]
        {
            match rigl::dist::launched_ranks() {
                Some(n) if n > 1 => Err(CliError::usage(format!(
                    "started as one of {n} MPI processes, but this rigl was built without MPI: \
                     build it with `cargo build --release --features mpi`"
                ))),
                _ => Ok(Ranks {}),
            }
        }
    }

    /// The communicator of a job of two or more ranks.
    pub fn comm(&self) -> Option<Rc<dyn Collective>> {
        #[cfg(feature = "mpi")]
        if let Some(w) = self.world.as_ref().filter(|w| w.size() > 1) {
            let c: Rc<dyn Collective> = w.clone();
            return Some(c);
        }
        None
    }

    /// This process's rank (0 in a job of one).
    pub fn rank(&self) -> usize {
        self.comm().map_or(0, |c| c.rank())
    }

    /// Ranks of the job (1 when not started by `mpirun`).
    pub fn size(&self) -> usize {
        self.comm().map_or(1, |c| c.size())
    }

    /// Whether this process writes files and prints results (rank 0).
    pub fn is_writer(&self) -> bool {
        self.rank() == 0
    }

    /// The GPU context of this rank: the adapter of its local rank among the suitable ones
    /// (or `$RIGL_ADAPTER`'s), reported on stderr with the rank; the best adapter in a job of
    /// one.
    pub fn context(&self) -> Result<GpuContext, CliError> {
        #[cfg(feature = "mpi")]
        if let Some(w) = self.world.as_ref().filter(|w| w.size() > 1) {
            let ctx = GpuContext::for_local_rank(w.local_rank())?;
            eprintln!(
                "rank {}/{} on {} (local rank {} of {}): adapter '{}' ({:?})",
                w.rank(),
                w.size(),
                w.host(),
                w.local_rank(),
                w.local_size(),
                ctx.info.name,
                ctx.info.backend
            );
            return Ok(ctx);
        }
        Ok(GpuContext::new()?)
    }

    /// Ends a rank's command: in a job of several ranks, an error (other than a stop, which
    /// every rank makes at the same step) is printed with the rank and ends every rank at once
    /// with its exit code (MPI_Abort), so no rank waits forever on one that failed.
    pub fn finish(self, result: CliResult, stopped_code: i32) -> CliResult {
        match (self.comm(), result) {
            (Some(comm), Err(e)) if e.code != stopped_code => {
                let msg = format!("{:#}", e.err);
                if !msg.is_empty() {
                    eprintln!("rigl: rank {}: error: {msg}", comm.rank());
                }
                comm.abort(e.code)
            }
            (_, r) => r,
        }
    }
}

//! Data-parallel training (SPEC §9): the collectives a run needs from its ranks, the split of a
//! global batch into equal shards, the mask checksums ranks compare at every update, and the
//! count of what the gradient exchange sends.
//!
//! The trainer speaks to [`Collective`] only; the MPI implementation (the `mpi` module, cargo feature
//! `mpi`) is one such communicator, so the library and its default build need no MPI.
//! [`Single`] is the communicator of a run of one process.

#[cfg(feature = "mpi")]
pub mod mpi;

use std::time::Duration;

use crate::error::{Result, RiglError};

/// What a data-parallel run needs of its ranks. Every call is collective: every rank makes it,
/// in the same order, with buffers of the same length. A failure of the transport ends the
/// process (MPI's default error handler); a failing rank ends the others with [`Collective::abort`].
pub trait Collective: std::fmt::Debug {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over the ranks, in place; every rank receives the same values.
    fn sum_f32(&self, buf: &mut [f32]);
    /// Element-wise sum over the ranks, in place.
    fn sum_f64(&self, buf: &mut [f64]);
    /// Element-wise minimum over the ranks, in place.
    fn min_u64(&self, buf: &mut [u64]);
    /// Element-wise maximum over the ranks, in place.
    fn max_u64(&self, buf: &mut [u64]);
    /// Rank `root`'s bytes on every rank (`buf` is replaced on the others).
    fn broadcast_bytes(&self, root: usize, buf: &mut Vec<u8>);
    /// Ends every rank of the run with `code` (MPI_Abort); does not return.
    fn abort(&self, code: i32) -> !;

    /// Whether any rank passes `true`.
    fn any(&self, flag: bool) -> bool {
        let mut v = [u64::from(flag)];
        self.max_u64(&mut v);
        v[0] != 0
    }
}

/// The communicator of a single process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn min_u64(&self, _: &mut [u64]) {}
    fn max_u64(&self, _: &mut [u64]) {}
    fn broadcast_bytes(&self, _: usize, _: &mut Vec<u8>) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Environment variables a launcher (Open MPI's `mpirun`, MPICH's Hydra, Slurm's PMI) sets in
/// every process it starts, with the job's number of processes.
const LAUNCHER_SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// The number of processes of the MPI job this process was started in, as its launcher's
/// environment says (`None` when it was not started by one). A build without the `mpi` feature
/// uses it to refuse running as one of several copies.
pub fn launched_ranks() -> Option<usize> {
    LAUNCHER_SIZE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The samples per rank of a global batch of `batch` over `ranks` ranks.
///
/// Errors: [`RiglError::InvalidArgument`] naming both numbers when the batch does not divide
/// into equal shards.
pub fn shard_size(batch: usize, ranks: usize) -> Result<usize> {
    if ranks == 0 || batch == 0 || !batch.is_multiple_of(ranks) {
        return Err(RiglError::invalid(format!(
            "the global batch of {batch} samples does not split into {ranks} equal shards \
             (one per rank): give a --batch that is a multiple of {ranks}"
        )));
    }
    Ok(batch / ranks)
}

/// Copies shard `rank` (samples `rank * b .. (rank + 1) * b`) of a feature-major global batch
/// `x` of `features` rows into `shard` (`[features, b]`), and its labels.
pub fn take_shard(
    x: &[f32],
    labels: &[u32],
    features: usize,
    rank: usize,
    shard: &mut [f32],
    shard_labels: &mut [u32],
) {
    let b = shard_labels.len();
    let global = labels.len();
    let start = rank * b;
    shard_labels.copy_from_slice(&labels[start..start + b]);
    for f in 0..features {
        shard[f * b..(f + 1) * b].copy_from_slice(&x[f * global + start..f * global + start + b]);
    }
}

/// CRC-32 of a layer's 0/1 mask (its bits in flat order), as ranks compare them.
pub fn mask_checksum(mask: &[f32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut word = 0u8;
    for (i, &m) in mask.iter().enumerate() {
        word |= u8::from(m != 0.0) << (i % 8);
        if i % 8 == 7 {
            h.update(&[word]);
            word = 0;
        }
    }
    if !mask.len().is_multiple_of(8) {
        h.update(&[word]);
    }
    h.finalize()
}

/// Compares every layer's mask checksum over the ranks; the first layer whose checksums differ
/// is a [`RiglError::MasksDiverged`] at `step` (steps done).
pub fn check_masks(
    comm: &dyn Collective,
    names: &[String],
    checksums: &[u32],
    step: u64,
) -> Result<()> {
    let mut lo: Vec<u64> = checksums.iter().map(|&c| u64::from(c)).collect();
    let mut hi = lo.clone();
    comm.min_u64(&mut lo);
    comm.max_u64(&mut hi);
    for (l, (a, b)) in lo.iter().zip(&hi).enumerate() {
        if a != b {
            return Err(RiglError::MasksDiverged {
                layer: names.get(l).cloned().unwrap_or_else(|| format!("#{l}")),
                step,
                checksums: format!("{a:08x} and {b:08x}"),
            });
        }
    }
    Ok(())
}

/// What the gradient exchange sent and how long it took: per rank, the payload of its
/// all-reduces (4 bytes a value; an all-reduce over a ring moves about twice that over each
/// link).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    /// Ordinary steps exchanged.
    pub steps: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Their time (read back, all-reduce, write back).
    pub time: Duration,
    /// Mask-update steps exchanged.
    pub update_steps: u64,
    /// Their bytes (dense gradients of the sparse layers included).
    pub update_bytes: u64,
    /// Their time.
    pub update_time: Duration,
}

impl ExchangeStats {
    /// Counts one step's exchange.
    pub fn add(&mut self, update: bool, bytes: u64, time: Duration) {
        if update {
            self.update_steps += 1;
            self.update_bytes += bytes;
            self.update_time += time;
        } else {
            self.steps += 1;
            self.bytes += bytes;
            self.time += time;
        }
    }

    /// Bytes of an ordinary step (the mean over those counted).
    pub fn bytes_per_step(&self) -> f64 {
        self.bytes as f64 / self.steps.max(1) as f64
    }

    /// Bytes of an update step (the mean over those counted).
    pub fn bytes_per_update(&self) -> f64 {
        self.update_bytes as f64 / self.update_steps.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_evenly_or_name_both_numbers() {
        assert_eq!(shard_size(100, 4).ok(), Some(25));
        let e = shard_size(100, 3)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("100") && e.contains('3'), "{e}");
    }

    #[test]
    fn a_shard_is_its_columns_of_every_feature() {
        // 2 features, global batch 4, 2 ranks.
        let x = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        let labels = [5, 6, 7, 8];
        let (mut s, mut l) = ([0.0f32; 4], [0u32; 2]);
        take_shard(&x, &labels, 2, 1, &mut s, &mut l);
        assert_eq!(s, [2.0, 3.0, 12.0, 13.0]);
        assert_eq!(l, [7, 8]);
    }

    #[test]
    fn a_checksum_sees_one_moved_connection() {
        let a = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let b = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        assert_ne!(mask_checksum(&a), mask_checksum(&b));
        assert_eq!(mask_checksum(&a), mask_checksum(&a.map(|v| v * 2.0)));
    }
}

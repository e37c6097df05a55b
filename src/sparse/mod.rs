//! Sparsity: per-layer distributions, update and pruning schedules, random sparse
//! initialisation, FLOPs accounting and sparsity plans. The mask update itself (and its CPU
//! twin) is in [`crate::cpu::mask_update`]; [`Method`] is re-exported here.

pub mod distribution;
pub mod schedule;

pub use crate::cpu::mask_update::{Method, UpdateStats};
pub use distribution::{
    active_count, layer_sparsities, Distribution, DistributionConfig, LayerShape, LayerSparsity,
};
pub use schedule::{DropSchedule, PruneSchedule, UpdateSchedule};

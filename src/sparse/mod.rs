//! Sparsity: per-layer distributions, update and pruning schedules, random sparse
//! initialisation, FLOPs accounting, sparsity plans and the GPU mask update ([`update`]). The
//! CPU twin of the mask update is in [`crate::cpu::mask_update`]; [`Method`] is re-exported here.

pub mod csr;
pub mod distribution;
pub mod flops;
pub mod init;
pub mod plan;
pub mod schedule;
pub mod update;

pub use crate::cpu::mask_update::{Method, UpdateStats};
pub use distribution::{
    active_count, layer_sparsities, Distribution, DistributionConfig, LayerShape, LayerSparsity,
};
pub use flops::{LayerCost, TrainFlopsConfig};
pub use init::{init_layer, SparseInit, WeightInit};
pub use plan::{parse_layers, LayerKind, LayerSpec, Plan, PlanConfig, PlanLayer};
pub use schedule::{DropSchedule, PruneSchedule, UpdateSchedule};

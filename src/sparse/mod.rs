//! Sparsity: distributions, schedules, FLOPs accounting, masks (filled by the RigL issue).
pub mod update;

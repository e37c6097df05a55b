//! rigl: a GPU training engine for sparse neural networks trained with RigL
//! ("Rigging the Lottery: Making All Tickets Winners", Evci et al., ICML 2020), on wgpu compute
//! shaders.
//!
//! Floors, each using only those below: [`gpu`] (context, buffers, kernels, profiling) and
//! [`cpu`] (the reference twin of every kernel), [`sparse`] (distributions, schedules, masks and
//! their updates), [`npy`] (NumPy `.npy` reading, `.npz` writing) and [`data`] (the IDX reader,
//! datasets, the synthetic task and feature-major batching). [`embed`] is the API for other
//! trainers: rigl as the sparse backend of their own training loop. [`dist`] holds what a
//! data-parallel run needs of its ranks (MPI behind the cargo feature `mpi`).
#![warn(missing_docs)]

pub mod canonical;
pub mod cpu;
pub mod data;
pub mod dist;
pub mod embed;
pub mod error;
pub mod gpu;
pub mod nn;
pub mod npy;
pub mod shape;
pub mod sparse;
pub mod train;

pub use error::{Result, RiglError};

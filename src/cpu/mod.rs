//! Plain-Rust reference ("CPU twin") of every kernel and of the mask update. Tests compare the GPU
//! against these; the `--cpu` paths run them directly.

pub mod conv;
pub mod dense;
pub mod mask_update;
pub mod mlp;
pub mod model;
pub mod sparse;

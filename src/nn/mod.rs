//! Networks: the multi-layer perceptron of sparse linear layers that the trainer runs.

pub mod mlp;
pub mod sparse_linear;
pub mod sparse_mlp;

pub use mlp::{Mlp, MlpConfig};
pub use sparse_linear::{LinearIo, SparseLinear, SparseLinearConfig};
pub use sparse_mlp::SparseMlp;

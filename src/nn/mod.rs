//! Networks: the multi-layer perceptron of sparse linear layers that the trainer runs.

pub mod mlp;

pub use mlp::{Mlp, MlpConfig};

//! Networks: the multi-layer perceptron of sparse linear layers that the trainer runs, and the
//! state every model saves to and restores from checkpoints.

pub mod mlp;
pub mod state;

pub use mlp::{Mlp, MlpConfig};
pub use state::ModelState;

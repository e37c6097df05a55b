//! GPU side: context (adapter and device), buffers, kernel registry, kernels, profiling.

pub mod buffer;
pub mod context;
pub mod conv;
pub mod conv_pool;
pub mod conv_tex;
pub mod gemm;
pub mod image;
pub mod ops;
pub mod profile;
pub mod registry;
pub mod shaders;
pub mod sparse_conv;
pub mod spmm;
pub mod texture;
pub mod tuning;

pub use buffer::Tensor;
pub use context::GpuContext;
pub use gemm::{GemmOp, GemmShape, GemmVariant};

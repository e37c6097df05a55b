//! Networks the trainer runs, with one interface ([`Network`]): the multi-layer perceptron in two
//! storage forms, masked-dense layers ([`Mlp`], every weight stored, a 0/1 mask applied in the
//! products) and compressed sparse layers ([`SparseMlp`], only the active weights stored); any
//! model of layers ([`spec::ModelSpec`]: LeNet-5, WRN, a model file) masked-dense
//! ([`model::GpuModel`]); and the state ([`ModelState`]) every model saves to and restores from
//! checkpoints.

pub mod choice;
mod loss;
pub mod mlp;
pub mod model;
pub mod sparse_mlp;
pub mod spec;
pub mod state;

pub use mlp::{Mlp, MlpConfig};
pub use sparse_mlp::{MemoryReport, SparseMlp};
pub use state::{ModelLayout, ModelState, NormState, ParamLayout};

use crate::cpu::model as cpu_model;
use crate::error::Result;
use crate::gpu::ops::{Dispatch, SgdConfig};
use crate::gpu::GpuContext;

/// Splits a flat bias-layout tensor read back from the GPU into layers (`sizes` are the model's
/// widths, input first).
pub(crate) fn read_bias_layout(
    ctx: &GpuContext,
    t: &crate::gpu::Tensor,
    offsets: &[usize],
    sizes: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let all = t.read_f32(ctx)?;
    Ok(offsets
        .iter()
        .enumerate()
        .map(|(l, &o)| all[o..o + sizes[l + 1]].to_vec())
        .collect())
}

/// What the trainer, the evaluator and the model file need of a network on the GPU.
pub trait Network {
    /// Samples per batch.
    fn batch(&self) -> usize;
    /// Input features per sample.
    fn features(&self) -> usize;
    /// Classes (output width).
    fn classes(&self) -> usize;
    /// Sets training (with the step, for dropout) or evaluation mode (batch norm on running
    /// statistics, no dropout) for the next passes. A model without such layers ignores it.
    fn set_mode(&self, ctx: &GpuContext, mode: model::RunMode) -> Result<()> {
        let _ = (ctx, mode);
        Ok(())
    }
    /// Batch norms' parameters and running statistics (none for the MLP).
    fn read_norms(&self, ctx: &GpuContext) -> Result<Vec<cpu_model::HostNorm>> {
        let _ = ctx;
        Ok(Vec::new())
    }
    /// `masked` (dense storage with masks), `dense` (no masks) or `sparse` (compressed).
    fn kernels(&self) -> &'static str;
    /// Writes a batch (`x` feature-major `[in, batch]`).
    fn set_batch(&self, ctx: &GpuContext, x: &[f32], labels: &[u32]) -> Result<()>;
    /// Only the first `valid` samples of the batch count.
    fn set_valid(&self, ctx: &GpuContext, valid: usize);
    /// Sets the optimizer's hyper-parameters.
    fn set_sgd(&self, ctx: &GpuContext, sgd: SgdConfig);
    /// Forward pass and loss.
    fn forward_ops(&self) -> Vec<&Dispatch>;
    /// Backward pass.
    fn backward_ops(&self) -> Vec<&Dispatch>;
    /// Optimizer step.
    fn sgd_ops(&self) -> Vec<&Dispatch>;
    /// Resets the running loss sums.
    fn reset_sums(&self, ctx: &GpuContext) -> Result<()>;
    /// Reads (loss sum, correct count) since the last reset.
    fn read_sums(&self, ctx: &GpuContext) -> Result<(f64, f64)>;
    /// Weights per layer, dense `[in, out]` (zero outside the mask).
    fn read_weights(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>>;
    /// 0/1 masks per layer, dense `[in, out]`.
    fn read_masks(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>>;
    /// Biases per layer.
    fn read_biases(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>>;
    /// GPU bytes of the trainable state.
    fn memory(&self) -> MemoryReport;
    /// Reads the whole training state back (checkpoints).
    fn read_state(&self, ctx: &GpuContext) -> Result<ModelState>;
    /// Restores a state from [`Network::read_state`] bit for bit (resume).
    fn load_state(&self, ctx: &GpuContext, state: &ModelState) -> Result<()>;
    /// Sets the running loss sums (undoing a skipped batch).
    fn set_sums(&self, ctx: &GpuContext, sums: [f32; 2]) -> Result<()>;
    /// Reads the running loss sums as the GPU holds them.
    fn read_sums_f32(&self, ctx: &GpuContext) -> Result<[f32; 2]>;
}

impl Network for Mlp {
    fn batch(&self) -> usize {
        self.cfg.batch
    }
    fn features(&self) -> usize {
        self.cfg.sizes[0]
    }
    fn classes(&self) -> usize {
        self.cfg.sizes[self.cfg.sizes.len() - 1]
    }
    fn kernels(&self) -> &'static str {
        if self.cfg.masked {
            "masked"
        } else {
            "dense"
        }
    }
    fn set_batch(&self, ctx: &GpuContext, x: &[f32], labels: &[u32]) -> Result<()> {
        Mlp::set_batch(self, ctx, x, labels)
    }
    fn set_valid(&self, ctx: &GpuContext, valid: usize) {
        Mlp::set_valid(self, ctx, valid)
    }
    fn set_sgd(&self, ctx: &GpuContext, sgd: SgdConfig) {
        Mlp::set_sgd(self, ctx, sgd)
    }
    fn forward_ops(&self) -> Vec<&Dispatch> {
        Mlp::forward_ops(self)
    }
    fn backward_ops(&self) -> Vec<&Dispatch> {
        Mlp::backward_ops(self)
    }
    fn sgd_ops(&self) -> Vec<&Dispatch> {
        Mlp::sgd_ops(self)
    }
    fn reset_sums(&self, ctx: &GpuContext) -> Result<()> {
        Mlp::reset_sums(self, ctx)
    }
    fn read_sums(&self, ctx: &GpuContext) -> Result<(f64, f64)> {
        Mlp::read_sums(self, ctx)
    }
    fn read_weights(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        self.read_layers(ctx, &self.w)
    }
    fn read_masks(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        self.read_layers(ctx, &self.mask)
    }
    fn read_biases(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        Mlp::read_biases(self, ctx)
    }
    fn memory(&self) -> MemoryReport {
        Mlp::memory(self)
    }
    fn read_state(&self, ctx: &GpuContext) -> Result<ModelState> {
        Mlp::read_state(self, ctx)
    }
    fn load_state(&self, ctx: &GpuContext, state: &ModelState) -> Result<()> {
        Mlp::load_state(self, ctx, state)
    }
    fn set_sums(&self, ctx: &GpuContext, sums: [f32; 2]) -> Result<()> {
        Mlp::set_sums(self, ctx, sums)
    }
    fn read_sums_f32(&self, ctx: &GpuContext) -> Result<[f32; 2]> {
        Mlp::read_sums_f32(self, ctx)
    }
}

impl Network for SparseMlp {
    fn batch(&self) -> usize {
        self.cfg.batch
    }
    fn features(&self) -> usize {
        self.cfg.sizes[0]
    }
    fn classes(&self) -> usize {
        self.cfg.sizes[self.cfg.sizes.len() - 1]
    }
    fn kernels(&self) -> &'static str {
        "sparse"
    }
    fn set_batch(&self, ctx: &GpuContext, x: &[f32], labels: &[u32]) -> Result<()> {
        SparseMlp::set_batch(self, ctx, x, labels)
    }
    fn set_valid(&self, ctx: &GpuContext, valid: usize) {
        SparseMlp::set_valid(self, ctx, valid)
    }
    fn set_sgd(&self, ctx: &GpuContext, sgd: SgdConfig) {
        SparseMlp::set_sgd(self, ctx, sgd)
    }
    fn forward_ops(&self) -> Vec<&Dispatch> {
        SparseMlp::forward_ops(self)
    }
    fn backward_ops(&self) -> Vec<&Dispatch> {
        SparseMlp::backward_ops(self)
    }
    fn sgd_ops(&self) -> Vec<&Dispatch> {
        SparseMlp::sgd_ops(self)
    }
    fn reset_sums(&self, ctx: &GpuContext) -> Result<()> {
        SparseMlp::reset_sums(self, ctx)
    }
    fn read_sums(&self, ctx: &GpuContext) -> Result<(f64, f64)> {
        SparseMlp::read_sums(self, ctx)
    }
    fn read_weights(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        self.read_dense(ctx, &self.vals)
    }
    fn read_masks(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        SparseMlp::read_masks(self, ctx)
    }
    fn read_biases(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        SparseMlp::read_biases(self, ctx)
    }
    fn memory(&self) -> MemoryReport {
        self.memory.clone()
    }
    fn read_state(&self, ctx: &GpuContext) -> Result<ModelState> {
        SparseMlp::read_state(self, ctx)
    }
    fn load_state(&self, ctx: &GpuContext, state: &ModelState) -> Result<()> {
        SparseMlp::load_state(self, ctx, state)
    }
    fn set_sums(&self, ctx: &GpuContext, sums: [f32; 2]) -> Result<()> {
        SparseMlp::set_sums(self, ctx, sums)
    }
    fn read_sums_f32(&self, ctx: &GpuContext) -> Result<[f32; 2]> {
        SparseMlp::read_sums_f32(self, ctx)
    }
}

impl Network for model::GpuModel {
    fn batch(&self) -> usize {
        self.batch
    }
    fn features(&self) -> usize {
        model::GpuModel::features(self)
    }
    fn classes(&self) -> usize {
        model::GpuModel::classes(self)
    }
    fn set_mode(&self, ctx: &GpuContext, mode: model::RunMode) -> Result<()> {
        model::GpuModel::set_mode(self, ctx, mode)
    }
    fn read_norms(&self, ctx: &GpuContext) -> Result<Vec<cpu_model::HostNorm>> {
        self.read_host_norms(ctx)
    }
    fn kernels(&self) -> &'static str {
        model::GpuModel::kernels(self)
    }
    fn set_batch(&self, ctx: &GpuContext, x: &[f32], labels: &[u32]) -> Result<()> {
        model::GpuModel::set_batch(self, ctx, x, labels)
    }
    fn set_valid(&self, ctx: &GpuContext, valid: usize) {
        model::GpuModel::set_valid(self, ctx, valid)
    }
    fn set_sgd(&self, ctx: &GpuContext, sgd: SgdConfig) {
        model::GpuModel::set_sgd(self, ctx, sgd)
    }
    fn forward_ops(&self) -> Vec<&Dispatch> {
        self.forward_loss_ops()
    }
    fn backward_ops(&self) -> Vec<&Dispatch> {
        model::GpuModel::backward_ops(self)
    }
    fn sgd_ops(&self) -> Vec<&Dispatch> {
        self.optimizer_ops()
    }
    fn reset_sums(&self, ctx: &GpuContext) -> Result<()> {
        model::GpuModel::reset_sums(self, ctx)
    }
    fn read_sums(&self, ctx: &GpuContext) -> Result<(f64, f64)> {
        let s = self.read_sums_f32(ctx)?;
        Ok((f64::from(s[0]), f64::from(s[1])))
    }
    fn read_weights(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        self.read_params(ctx, model::ParamTensor::Weights)
    }
    fn read_masks(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        self.read_params(ctx, model::ParamTensor::Masks)
    }
    fn read_biases(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        model::GpuModel::read_biases(self, ctx)
    }
    fn memory(&self) -> MemoryReport {
        model::GpuModel::memory(self)
    }
    fn read_state(&self, ctx: &GpuContext) -> Result<ModelState> {
        model::GpuModel::read_state(self, ctx)
    }
    fn load_state(&self, ctx: &GpuContext, state: &ModelState) -> Result<()> {
        model::GpuModel::load_state(self, ctx, state)
    }
    fn set_sums(&self, ctx: &GpuContext, sums: [f32; 2]) -> Result<()> {
        model::GpuModel::set_sums(self, ctx, sums)
    }
    fn read_sums_f32(&self, ctx: &GpuContext) -> Result<[f32; 2]> {
        model::GpuModel::read_sums_f32(self, ctx)
    }
}

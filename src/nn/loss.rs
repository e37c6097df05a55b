//! The loss head both models share: the labels, softmax cross-entropy of the logits (which also
//! writes the logits' gradient), and the running (loss sum, correct count) since the last reset.

use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch};
use crate::gpu::{GpuContext, Tensor};

/// Labels, the cross-entropy and its running sums, built once per model.
#[derive(Debug)]
pub(crate) struct LossHead {
    labels: Tensor,
    stats: Tensor,
    sums: Tensor,
    xent: Dispatch,
    reduce: Dispatch,
    classes: usize,
    batch: usize,
    label_smoothing: f32,
}

impl LossHead {
    /// The loss of `logits` `[classes, batch]`, its gradient written to `dlogits`.
    pub(crate) fn new(
        ctx: &GpuContext,
        logits: &Tensor,
        dlogits: &Tensor,
        classes: usize,
        batch: usize,
        label_smoothing: f32,
    ) -> Result<Self> {
        let labels = Tensor::zeros(ctx, "labels", batch)?;
        let stats = Tensor::zeros(ctx, "loss stats", 2 * batch)?;
        let sums = Tensor::zeros(ctx, "loss sums", 2)?;
        let xent = ops::softmax_xent(
            ctx,
            logits,
            &labels,
            dlogits,
            &stats,
            classes,
            batch,
            label_smoothing,
            1.0 / batch as f32,
        )?;
        let reduce = ops::segment_sum(ctx, &stats, &sums, 2, batch, true)?;
        Ok(LossHead {
            labels,
            stats,
            sums,
            xent,
            reduce,
            classes,
            batch,
            label_smoothing,
        })
    }

    /// Checks a batch's labels (one per sample, below the class count or
    /// [`crate::data::PAD_LABEL`]) and writes them.
    pub(crate) fn write_labels(&self, ctx: &GpuContext, labels: &[u32]) -> Result<()> {
        if labels.len() != self.batch {
            return Err(RiglError::invalid(format!(
                "{} labels for a batch of {}",
                labels.len(),
                self.batch
            )));
        }
        let classes = self.classes as u32;
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= classes && l != crate::data::PAD_LABEL)
        {
            return Err(RiglError::invalid(format!(
                "label {l} of sample {i} is not below the class count {classes}"
            )));
        }
        ctx.queue.write_buffer(
            &self.labels.buffer,
            self.labels.offset,
            bytemuck::cast_slice(labels),
        );
        Ok(())
    }

    /// The labels tensor (u32 `[batch]`).
    pub(crate) fn labels(&self) -> &Tensor {
        &self.labels
    }

    /// Per-sample loss and correct flag `[2 * batch]` of the last forward pass.
    pub(crate) fn stats(&self) -> &Tensor {
        &self.stats
    }

    /// Only the first `valid` samples of the batch count in the loss and its gradient.
    pub(crate) fn set_valid(&self, ctx: &GpuContext, valid: usize) {
        let valid = valid.clamp(1, self.batch);
        ops::set_xent_valid(
            ctx,
            &self.xent,
            self.classes,
            self.batch,
            valid,
            self.label_smoothing,
            1.0 / valid as f32,
        );
    }

    /// The loss and its sums, after the forward pass.
    pub(crate) fn ops(&self) -> [&Dispatch; 2] {
        [&self.xent, &self.reduce]
    }

    /// Sets the running (loss sum, correct count).
    pub(crate) fn set_sums(&self, ctx: &GpuContext, sums: [f32; 2]) -> Result<()> {
        self.sums.write_f32(ctx, &sums)
    }

    /// Reads the running (loss sum, correct count) as the GPU holds them.
    pub(crate) fn read_sums_f32(&self, ctx: &GpuContext) -> Result<[f32; 2]> {
        let s = self.sums.read_f32(ctx)?;
        Ok([s[0], s[1]])
    }
}

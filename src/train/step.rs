//! One training step, phase by phase: the batch, the non-finite check, the mask update's plan,
//! the dispatch list (forward, backward, optimizer, mask update, in the order the official code
//! runs them), FLOPs accounting, and the submission (one step kept in flight on a GPU).

use std::time::Instant;

use crate::error::{Result, RiglError};
use crate::gpu::ops::{Dispatch, SgdConfig};
use crate::gpu::GpuContext;
use crate::nn::model::RunMode;
use crate::sparse::schedule::drop_count;
use crate::sparse::update::LayerCounts;
use crate::sparse::{active_count, Method};

use super::checkpoint::NanPolicy;
use super::net;
use super::run::{ModelParts, Run};

impl Run<'_> {
    /// Runs step `step` (counted from 0): submits it and waits for the one before.
    pub(super) fn step(&mut self, step: u64) -> Result<()> {
        if self.dist.is_some() {
            return self.step_distributed(step);
        }
        let t0 = Instant::now();
        // GPU faults of this step come back as errors naming it, not as panics.
        let oom_scope = self
            .ctx
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation_scope = self
            .ctx
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let (samples, skipped, counts) = self.begin_step(step)?;
        let is_update = counts.is_some();
        let ops = self.parts.step_ops(
            self.ctx,
            self.cfg.method,
            self.opts.on_nan,
            step,
            skipped,
            counts.as_deref(),
        )?;
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        crate::gpu::ops::encode_ops(&mut enc, "train step", &ops);
        let idx = self.ctx.queue.submit([enc.finish()]);
        let validation = pollster::block_on(validation_scope.pop());
        let oom = pollster::block_on(oom_scope.pop());
        if let Some(err) = validation.or(oom) {
            return Err(RiglError::Gpu {
                what: format!("running training step {}", step + 1),
                message: err.to_string(),
            });
        }
        self.settle(idx, is_update)?;
        self.c.train_seconds += t0.elapsed().as_secs_f64();
        if !skipped {
            self.c.window_samples += samples as u64;
        }
        self.progress.step(step + 1);
        Ok(())
    }

    /// The start of every step: the batch, the non-finite check, the mask update's plan (noted
    /// in the counters) and the FLOPs of the step. Returns the batch's samples, whether it is
    /// skipped, and the update's per-layer counts if this is an update step.
    pub(super) fn begin_step(
        &mut self,
        step: u64,
    ) -> Result<(usize, bool, Option<Vec<LayerCounts>>)> {
        let samples = self.load_batch(step)?;
        let skipped = self.skip_non_finite(step)?;
        let counts = match self.parts.rule {
            Some(_) if !skipped => self.plan_update(step),
            _ => None,
        };
        if let Some(counts) = &counts {
            self.note_update(step, counts);
        }
        self.count_flops(counts.is_some());
        Ok((samples, skipped, counts))
    }

    /// Uploads the next batch, sets training mode and this step's learning rate; returns the
    /// batch's samples.
    pub(super) fn load_batch(&mut self, step: u64) -> Result<usize> {
        let model = self.parts.model();
        let info = self
            .batcher
            .next_batch(self.train, &mut self.x, &mut self.labels)?;
        match self.dist.as_mut() {
            // A data-parallel rank trains on its shard of the global batch.
            Some(d) => {
                let (x, labels) = d.shard(&self.x, &self.labels, self.train.features);
                model.set_batch(self.ctx, x, labels)?;
            }
            None => model.set_batch(self.ctx, &self.x, &self.labels)?,
        }
        model.set_mode(self.ctx, RunMode::Train { step: step as u32 })?;
        self.lr = self.cfg.lr_at(step, self.total_steps, self.steps_per_epoch);
        model.set_sgd(
            self.ctx,
            SgdConfig {
                lr: self.lr,
                ..self.sgd
            },
        );
        Ok(info.len)
    }

    /// `--on-nan skip`: runs forward and backward alone and looks at this batch's loss before
    /// anything changes the weights; a non-finite one is taken out of the sums and the step
    /// skipped (returns true). Without it, nothing runs here.
    pub(super) fn skip_non_finite(&mut self, step: u64) -> Result<bool> {
        if self.opts.on_nan != NanPolicy::Skip {
            return Ok(false);
        }
        let (ctx, model) = (self.ctx, self.parts.model());
        let before = model.read_sums_f32(ctx)?;
        self.pending = None; // the read waited for every earlier submission
        let mut fb = model.forward_ops();
        fb.extend(model.backward_ops());
        crate::gpu::ops::run(ctx, &format!("training step {}", step + 1), &fb)?;
        let after = model.read_sums_f32(ctx)?;
        // Every rank of a data-parallel run skips the batch if one of them must.
        let bad = !(after[0].is_finite() && after[1].is_finite());
        if !self.any_rank(bad) {
            return Ok(false);
        }
        model.set_sums(ctx, before)?;
        self.c.nan_skips += 1;
        Ok(true)
    }

    /// The per-layer counts of a mask update at `step`, if the method updates there: a prune
    /// step's shrunken targets, or a RigL/SET/SNFS step's drop (and regrow) of a scheduled
    /// fraction, which becomes the last drop fraction.
    pub(super) fn plan_update(&mut self, step: u64) -> Option<Vec<LayerCounts>> {
        let active = &self.c.active;
        match self.cfg.method {
            // A prune step can only shrink the active set.
            Method::Prune if self.prune.is_prune_step(step) => Some(
                self.plan
                    .iter()
                    .zip(active)
                    .map(|(p, &a)| {
                        let s = self.prune.sparsity_at_with_final(step, p.sparsity);
                        LayerCounts {
                            k_keep: active_count(p.total, s).min(a),
                            k_grow: 0,
                        }
                    })
                    .collect(),
            ),
            Method::Rigl | Method::Set | Method::Snfs if self.update.is_update_step(step) => {
                let df = self.update.drop_fraction(step);
                self.c.last_drop_fraction = df;
                Some(
                    active
                        .iter()
                        .map(|&a| {
                            let d = drop_count(a, df);
                            LayerCounts {
                                k_keep: a - d,
                                k_grow: d,
                            }
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// Counts a mask update planned at `step`: the active counts it leaves.
    pub(super) fn note_update(&mut self, step: u64, counts: &[LayerCounts]) {
        for (a, c) in self.c.active.iter_mut().zip(counts) {
            *a = c.k_keep + c.k_grow;
        }
        self.c.mask_updates += 1;
        self.c.last_update_step = Some(step);
    }

    /// FLOPs of this step (SPEC §6), counted with the masks in force after its update.
    pub(super) fn count_flops(&mut self, is_update: bool) {
        let (fs, fd) = (self.flops.sparse(&self.c.active), self.flops.dense);
        let batch = self.cfg.batch as f64;
        self.c.train_flops += batch
            * match self.cfg.method {
                Method::Dense => 3.0 * fd,
                Method::Static | Method::Set | Method::Prune => 3.0 * fs,
                Method::Snfs => 2.0 * fs + fd,
                Method::Rigl if is_update => 2.0 * fs + fd,
                Method::Rigl => 3.0 * fs,
            };
        self.c.dense_flops += batch * 3.0 * fd;
    }

    /// Keeps one step in flight on a GPU: waits for the previous one, not this one, so the host
    /// prepares the next batch while the device works. On a CPU adapter (lavapipe) waits for
    /// this one too: there the host's work takes a core from the driver's threads, each of which
    /// runs a fixed share of every dispatch, so the dispatch would wait for the one delayed
    /// (docs/performance.md#one-step-at-a-time-on-a-cpu-adapter). After a mask update waits
    /// for it too, and reads how many connections it made.
    fn settle(&mut self, idx: wgpu::SubmissionIndex, is_update: bool) -> Result<()> {
        if let Some(prev) = self.pending.replace(idx) {
            self.ctx.wait("training step", prev)?;
        }
        if is_update || self.ctx.is_software() {
            if let Some(idx) = self.pending.take() {
                let what = if is_update {
                    "mask update"
                } else {
                    "training step"
                };
                self.ctx.wait(what, idx)?;
            }
            if is_update {
                self.c.last_changes = self
                    .parts
                    .net
                    .read_new_connections(self.ctx, self.parts.updater.as_ref())?;
            }
        }
        Ok(())
    }
}

impl ModelParts {
    /// The dispatches of one step, in order: forward and backward (unless `--on-nan skip` ran
    /// them already), the SNFS gradient average, the optimizer and the mask update of `counts`.
    /// A skipped step runs nothing.
    pub(super) fn step_ops(
        &self,
        ctx: &GpuContext,
        method: Method,
        on_nan: NanPolicy,
        step: u64,
        skipped: bool,
        counts: Option<&[LayerCounts]>,
    ) -> Result<Vec<&Dispatch>> {
        let model = self.model();
        let mut ops = Vec::new();
        if on_nan != NanPolicy::Skip {
            ops = model.forward_ops();
            ops.extend(model.backward_ops());
        }
        ops.extend(self.after_backward_ops(ctx, method, step, skipped, counts)?);
        Ok(ops)
    }

    /// The dispatches of a step after its backward pass, in order: the SNFS gradient average,
    /// the optimizer and the mask update of `counts`. A data-parallel run averages the
    /// gradients over its ranks before them (`exchange.rs`).
    pub(super) fn after_backward_ops(
        &self,
        ctx: &GpuContext,
        method: Method,
        step: u64,
        skipped: bool,
        counts: Option<&[LayerCounts]>,
    ) -> Result<Vec<&Dispatch>> {
        let model = self.model();
        let mut ops = Vec::new();
        if let (Some(ema), Method::Snfs, false) = (self.net.ema_op(), method, skipped) {
            ops.push(ema);
        }
        let update_ops = match (self.rule, counts) {
            (Some(rule), Some(counts)) => net::update_ops(
                ctx,
                &self.net,
                self.updater.as_ref(),
                step as u32,
                counts,
                rule,
            )?,
            _ => Vec::new(),
        };
        // The official RigL spends the batch of an update step on the update. The other methods
        // (SET, SNFS, prune) step the optimizer first, as the official code: the update then drops
        // by the stepped weights and leaves new connections at 0.
        if !skips_optimizer(method, skipped, counts.is_some()) {
            ops.extend(model.sgd_ops());
        }
        ops.extend(update_ops);
        Ok(ops)
    }
}

/// Whether a step leaves the optimizer out: a skipped batch, and RigL's update steps.
pub(super) fn skips_optimizer(method: Method, skipped: bool, is_update: bool) -> bool {
    skipped || (is_update && method == Method::Rigl)
}

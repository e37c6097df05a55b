//! The exchange phase of a data-parallel run (SPEC §9): each rank trains on its shard of the
//! global batch, and between the backward pass and the optimizer the gradients are averaged over
//! the ranks, so every rank applies the mean gradient of the whole batch and the replicas stay
//! equal. Compressed layers and weight tensors send their active values only; masked and dense
//! ones their dense gradient; biases and batch-norm gamma and beta too. At a RigL update step
//! each compressed layer's or tensor's dense gradient is averaged before its grow selection
//! reads it, so the selection runs on identical inputs on every rank; after every update the
//! ranks compare their masks' checksums.
//!
//! The exchange reads the GPU buffers back, all-reduces on the host and writes them back: simple
//! and correct on every adapter; its bytes and time are counted ([`ExchangeStats`]).

use std::rc::Rc;
use std::time::Instant;

use crate::dist::{check_masks, mask_checksum, take_shard, Collective, ExchangeStats};
use crate::error::Result;
use crate::gpu::ops::{self, Dispatch};
use crate::gpu::{GpuContext, Tensor};
use crate::sparse::update::GrowRule;

use super::checkpoint::NanPolicy;
use super::net::Net;
use super::run::Run;
use super::step::skips_optimizer;

/// A run's place among the ranks of a data-parallel run (two or more ranks).
pub(super) struct Dist {
    pub(super) comm: Rc<dyn Collective>,
    pub(super) rank: usize,
    pub(super) size: usize,
    /// This rank's shard of the global batch, feature-major, and its labels.
    pub(super) x: Vec<f32>,
    pub(super) labels: Vec<u32>,
    /// What the exchange sent and how long it took.
    pub(super) stats: ExchangeStats,
}

impl Dist {
    pub(super) fn new(comm: Rc<dyn Collective>, features: usize, shard: usize) -> Self {
        Dist {
            rank: comm.rank(),
            size: comm.size(),
            comm,
            x: vec![0.0; features * shard],
            labels: vec![0; shard],
            stats: ExchangeStats::default(),
        }
    }

    /// Replaces every tensor's values by their mean over the ranks: read back, one all-reduce of
    /// the sum, divided by the number of ranks, written back. Returns the bytes this rank sent.
    pub(super) fn average(&self, ctx: &GpuContext, tensors: &[&Tensor]) -> Result<u64> {
        let mut buf = Vec::new();
        let mut lens = Vec::with_capacity(tensors.len());
        for t in tensors {
            let v = t.read_f32(ctx)?;
            lens.push(v.len());
            buf.extend_from_slice(&v);
        }
        self.comm.sum_f32(&mut buf);
        let n = self.size as f32;
        for v in &mut buf {
            *v /= n;
        }
        let mut at = 0;
        for (t, len) in tensors.iter().zip(lens) {
            t.write_f32(ctx, &buf[at..at + len])?;
            at += len;
        }
        Ok(4 * buf.len() as u64)
    }

    /// Copies this rank's shard of the global batch `x` (`[features, B]`) and `labels`.
    pub(super) fn shard(&mut self, x: &[f32], labels: &[u32], features: usize) -> (&[f32], &[u32]) {
        take_shard(
            x,
            labels,
            features,
            self.rank,
            &mut self.x,
            &mut self.labels,
        );
        (&self.x, &self.labels)
    }
}

/// Runs `ops` as one submission, GPU errors named by `what`.
fn run_ops(ctx: &GpuContext, what: &str, ops: &[&Dispatch]) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    ctx.scoped(what, || ops::run(ctx, what, ops))
}

impl Run<'_> {
    /// One step of a data-parallel run: the step's phases as [`Run::step`] runs them, with the
    /// exchange between the backward pass and the optimizer (and inside a compressed model's
    /// RigL update), each phase waited for.
    pub(super) fn step_distributed(&mut self, step: u64) -> Result<()> {
        let t0 = Instant::now();
        self.wait_pending()?;
        let (samples, skipped, counts) = self.begin_step(step)?;
        let is_update = counts.is_some();
        let (ctx, method) = (self.ctx, self.cfg.method);
        let what = format!("running training step {}", step + 1);
        let model = self.parts.model();
        if self.opts.on_nan != NanPolicy::Skip {
            let mut fb = model.forward_ops();
            fb.extend(model.backward_ops());
            run_ops(ctx, &what, &fb)?;
        }
        let Some(dist) = self.dist.as_ref() else {
            return Ok(());
        };
        let mut bytes = 0;
        let mut spent = std::time::Duration::ZERO;
        // A compressed model's RigL update averages each layer's dense gradient inside it.
        let sparse_grow = match (&self.parts.net, self.parts.rule, counts.as_deref()) {
            (Net::Sparse(sp), Some(GrowRule::Score), Some(c)) => Some((sp, c)),
            _ => None,
        };
        // So does a model of layers' for its compressed tensors, after the updater over its
        // flat params (which reads their averaged dense gradients).
        let model_grow = match (&self.parts.net, self.parts.rule, counts.as_deref()) {
            (Net::Model(m), Some(GrowRule::Score), Some(c)) if m.has_compressed() => Some((m, c)),
            _ => None,
        };
        let optimizer = !skips_optimizer(method, skipped, is_update);
        // The compressed model's slot gradients are read by the optimizer alone.
        let needs_grads = match &self.parts.net {
            Net::Sparse(_) => optimizer,
            _ => !skipped,
        };
        if needs_grads {
            let t = Instant::now();
            bytes += dist.average(ctx, &self.parts.net.grad_tensors())?;
            spent += t.elapsed();
        }
        // An update whose grow selections read averaged dense gradients: the dispatches before
        // it, and its segments, each ending with the dense gradient to average (in `views`).
        let segmented = match (sparse_grow, model_grow) {
            (_, Some((m, c))) => {
                let mut pre: Vec<&Dispatch> = Vec::new();
                if optimizer {
                    pre = model.sgd_ops();
                }
                if let Some(up) = self.parts.updater.as_ref() {
                    up.prepare(ctx, step as u32, &m.flat_counts(c)?)?;
                    pre.extend(up.dispatches(GrowRule::Score));
                    pre.push(m.ever_op());
                }
                m.prepare_compressed(ctx, step as u32, c)?;
                let (segments, views) = m.compressed_update_segments(ctx)?;
                Some((pre, segments, views))
            }
            (Some((sp, c)), None) => {
                sp.prepare_update(ctx, step as u32, c)?;
                let mut pre: Vec<&Dispatch> = Vec::new();
                if optimizer {
                    pre = model.sgd_ops();
                }
                let (segments, views) = sp.update_segments();
                Some((pre, segments, views.to_vec()))
            }
            (None, None) => None,
        };
        match segmented {
            Some((mut pre, segments, views)) => {
                for (l, seg) in segments.into_iter().enumerate() {
                    let mut ops = std::mem::take(&mut pre);
                    ops.extend(seg);
                    run_ops(ctx, &what, &ops)?;
                    if let Some(v) = views.get(l) {
                        let t = Instant::now();
                        bytes += dist.average(ctx, &[v])?;
                        spent += t.elapsed();
                    }
                }
            }
            None => {
                let ops =
                    self.parts
                        .after_backward_ops(ctx, method, step, skipped, counts.as_deref())?;
                run_ops(ctx, &what, &ops)?;
            }
        }
        if !skipped {
            if let Some(d) = self.dist.as_mut() {
                d.stats.add(is_update, bytes, spent);
            }
        }
        if is_update {
            self.c.last_changes = self
                .parts
                .net
                .read_new_connections(ctx, self.parts.updater.as_ref())?;
            self.compare_masks(step + 1)?;
        }
        self.c.train_seconds += t0.elapsed().as_secs_f64();
        if !skipped {
            self.c.window_samples += samples as u64;
        }
        self.progress.step(step + 1);
        Ok(())
    }

    /// Compares every layer's mask checksum over the ranks after the update of `done` steps.
    fn compare_masks(&self, done: u64) -> Result<()> {
        let Some(dist) = self.dist.as_ref() else {
            return Ok(());
        };
        let masks = self.parts.model().read_masks(self.ctx)?;
        let sums: Vec<u32> = masks.iter().map(|m| mask_checksum(m)).collect();
        let names: Vec<String> = self.plan.iter().map(|p| p.name.clone()).collect();
        check_masks(dist.comm.as_ref(), &names, &sums, done)
    }

    /// Sums `values` over the ranks (the loss and accuracy sums of a logging window), when
    /// there are ranks.
    pub(super) fn sum_over_ranks(&self, values: &mut [f64]) {
        if let Some(d) = &self.dist {
            d.comm.sum_f64(values);
        }
    }

    /// The running loss and accuracy sums over every rank (a data-parallel checkpoint saves
    /// them), waiting for the step in flight; `None` in a run of one.
    pub(super) fn window_sums_over_ranks(&mut self) -> Result<Option<[f32; 2]>> {
        if self.dist.is_none() {
            return Ok(None);
        }
        self.wait_pending()?;
        let s = self.parts.model().read_sums_f32(self.ctx)?;
        let mut sums = [f64::from(s[0]), f64::from(s[1])];
        self.sum_over_ranks(&mut sums);
        Ok(Some([sums[0] as f32, sums[1] as f32]))
    }

    /// Whether any rank asks for `flag` (a stop, a skipped batch), when there are ranks.
    pub(super) fn any_rank(&self, flag: bool) -> bool {
        match &self.dist {
            Some(d) => d.comm.any(flag),
            None => flag,
        }
    }

    /// Whether this process writes the run's files and evaluates (rank 0, or a run of one).
    pub(super) fn is_writer(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.rank == 0)
    }
}

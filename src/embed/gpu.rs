//! The scheduler on the host's own GPU buffers: rigl keeps the masks (and scratch space) on the
//! device, copies the host's weights, gradients and optimizer slots in and out with buffer
//! copies inside the host's command encoder, and runs the same mask update as its own trainer
//! ([`MaskUpdater`]).
//!
//! The host's buffers need only `COPY_SRC` (gradients) or `COPY_SRC | COPY_DST` (weights and
//! optimizer slots) and 4-byte-aligned offsets; they may hold several layers or other data.

use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch};
use crate::gpu::{GpuContext, Tensor};
use crate::nn::mlp::ALIGN;
use crate::sparse::update::{GrowRule, LayerPlacement, MaskUpdater};

use super::{Core, MaskUpdateInfo, SchedulerConfig, SchedulerState, SparseLayerSpec};

/// Where a tensor of the host starts: a buffer and a byte offset in it (its length is the
/// layer's).
#[derive(Debug, Clone)]
pub struct BufferRegion {
    /// The host's buffer.
    pub buffer: wgpu::Buffer,
    /// Byte offset of element 0 (a multiple of 4).
    pub offset: u64,
    /// Name used in errors (the host's label of the buffer; wgpu does not expose it).
    pub label: String,
}

impl BufferRegion {
    /// From the start of `buffer`.
    pub fn whole(buffer: &wgpu::Buffer) -> Self {
        Self::at(buffer, 0)
    }

    /// From byte `offset` of `buffer`.
    pub fn at(buffer: &wgpu::Buffer, offset: u64) -> Self {
        BufferRegion {
            buffer: buffer.clone(),
            offset,
            label: "host buffer".to_string(),
        }
    }

    /// With a name for errors.
    pub fn named(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
}

/// The host's buffers of one sparse layer.
#[derive(Debug, Clone)]
pub struct LayerBuffers {
    /// Weights (`COPY_SRC | COPY_DST`).
    pub weights: BufferRegion,
    /// Dense gradient `dL/d(mask ⊙ w)` (`COPY_SRC`); required for RigL.
    pub grad: Option<BufferRegion>,
    /// Optimizer slots (`COPY_SRC | COPY_DST`), zeroed with the weights at new connections and
    /// outside the mask. Every layer must have the same number.
    pub slots: Vec<BufferRegion>,
}

impl LayerBuffers {
    /// A layer with weights only.
    pub fn new(weights: BufferRegion) -> Self {
        LayerBuffers {
            weights,
            grad: None,
            slots: Vec::new(),
        }
    }

    /// With the dense gradient.
    pub fn with_grad(mut self, grad: BufferRegion) -> Self {
        self.grad = Some(grad);
        self
    }

    /// With one more optimizer slot.
    pub fn with_slot(mut self, slot: BufferRegion) -> Self {
        self.slots.push(slot);
        self
    }
}

#[derive(Debug)]
struct Bound {
    w: Tensor,
    grad: Option<Tensor>,
    slots: Vec<Tensor>,
}

/// Masks and mask updates of a host's model on the host's GPU buffers.
#[derive(Debug)]
pub struct SparseScheduler {
    ctx: GpuContext,
    core: Core,
    bound: Vec<Bound>,
    placements: Vec<LayerPlacement>,
    n_slots: usize,
    w_flat: Tensor,
    mask_flat: Tensor,
    keep_flat: Tensor,
    score_flat: Tensor,
    scratch: Tensor,
    ones: Tensor,
    updater: Option<MaskUpdater>,
    zero_w: Dispatch,
    zero_slot: Dispatch,
    zero_slot_new: Dispatch,
}

/// Storage buffers the mask update binds at once (weights, mask, slot, score, table, scratch,
/// selection).
const STORAGE_BUFFERS_NEEDED: u32 = 7;
/// Workgroup size of the kernels.
const WORKGROUP: u32 = 256;

/// Checks the device limits the scheduler's kernels need, naming the one that falls short.
pub fn check_device_limits(ctx: &GpuContext) -> Result<()> {
    let l = &ctx.limits;
    for (needed, limit, name, unit) in [
        (
            STORAGE_BUFFERS_NEEDED,
            l.max_storage_buffers_per_shader_stage,
            "max_storage_buffers_per_shader_stage",
            "storage buffers",
        ),
        (
            WORKGROUP,
            l.max_compute_invocations_per_workgroup,
            "max_compute_invocations_per_workgroup",
            "invocations",
        ),
        (
            WORKGROUP,
            l.max_compute_workgroup_size_x,
            "max_compute_workgroup_size_x",
            "invocations",
        ),
    ] {
        if limit < needed {
            return Err(RiglError::TooLarge {
                what: "the sparse scheduler's kernels".into(),
                needed: u64::from(needed),
                unit,
                limit: u64::from(limit),
                limit_name: name,
            });
        }
    }
    Ok(())
}

impl SparseScheduler {
    /// A scheduler over the host's `layers`, whose tensors are in `buffers` (same order), with
    /// the trainer's initial random masks for `cfg.seed`. The host's weights are not touched
    /// until [`SparseScheduler::apply_masks`] or an update.
    ///
    /// Errors: a buffer too small, misaligned or lacking a usage flag
    /// ([`RiglError::BadBuffer`], naming the buffer and its role), a missing gradient for
    /// RigL, layers with different slot counts, or a device short of a limit
    /// ([`RiglError::TooLarge`], naming the limit).
    pub fn new(
        ctx: &GpuContext,
        cfg: SchedulerConfig,
        layers: Vec<SparseLayerSpec>,
        buffers: Vec<LayerBuffers>,
    ) -> Result<Self> {
        let core = Core::new(cfg, layers)?;
        check_device_limits(ctx)?;
        if buffers.len() != core.layers.len() {
            return Err(RiglError::invalid(format!(
                "{} layer buffers for {} layers",
                buffers.len(),
                core.layers.len()
            )));
        }
        let rule = core.rule();
        let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let n_slots = buffers[0].slots.len();
        let mut bound = Vec::new();
        let mut placements = Vec::new();
        let mut off = 0usize;
        for (li, (spec, b)) in core.layers.iter().zip(&buffers).enumerate() {
            let n = spec.len();
            let wrap = |r: &BufferRegion, role: String, usage| {
                Tensor::from_buffer(&r.buffer, r.offset, n, &r.label, &role, usage)
            };
            let w = wrap(&b.weights, format!("weights of layer {}", spec.name), copy)?;
            let grad = match &b.grad {
                Some(g) => Some(wrap(
                    g,
                    format!("gradient of layer {}", spec.name),
                    wgpu::BufferUsages::COPY_SRC,
                )?),
                None if rule == GrowRule::Score && cfg.method.drops_and_grows() => {
                    return Err(RiglError::invalid(format!(
                        "layer {}: RigL needs the dense gradient buffer (LayerBuffers::with_grad)",
                        spec.name
                    )))
                }
                None => None,
            };
            if b.slots.len() != n_slots {
                return Err(RiglError::invalid(format!(
                    "layer {} has {} optimizer slots, layer {} has {n_slots}: give every layer \
                     the same slots",
                    spec.name,
                    b.slots.len(),
                    core.layers[0].name
                )));
            }
            let slots = b
                .slots
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    wrap(
                        s,
                        format!("optimizer slot {j} of layer {}", spec.name),
                        copy,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            bound.push(Bound { w, grad, slots });
            placements.push(LayerPlacement {
                name: spec.name.clone(),
                offset: off,
                n,
                id: li as u32,
            });
            off += n.div_ceil(ALIGN) * ALIGN;
        }
        let total = off;
        let w_flat = Tensor::zeros(ctx, "scheduler weights", total)?;
        let mask_flat = Tensor::zeros(ctx, "scheduler masks", total)?;
        let keep_flat = Tensor::zeros(ctx, "scheduler slot keep-map", total)?;
        let score_flat = Tensor::zeros(ctx, "scheduler grow scores", total)?;
        let scratch = Tensor::zeros(ctx, "scheduler slot scratch", total)?;
        let ones = Tensor::from_f32(ctx, "scheduler ones", &vec![1.0; total])?;
        let updater = if cfg.method.drops_and_grows() {
            Some(MaskUpdater::new(
                ctx,
                placements.clone(),
                &w_flat,
                &mask_flat,
                &keep_flat,
                &score_flat,
                cfg.seed as u32,
            )?)
        } else {
            None
        };
        let s = SparseScheduler {
            ctx: ctx.clone(),
            zero_w: ops::mask_zero(ctx, &mask_flat, &w_flat, total)?,
            zero_slot: ops::mask_zero(ctx, &mask_flat, &scratch, total)?,
            zero_slot_new: ops::mask_zero(ctx, &keep_flat, &scratch, total)?,
            core,
            bound,
            placements,
            n_slots,
            w_flat,
            mask_flat,
            keep_flat,
            score_flat,
            scratch,
            ones,
            updater,
        };
        s.write_masks(&s.core.initial_masks()?)?;
        Ok(s)
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.core.cfg
    }

    /// The layers.
    pub fn layers(&self) -> &[SparseLayerSpec] {
        &self.core.layers
    }

    /// Active weights per layer (host-side bookkeeping: no read-back).
    pub fn active_counts(&self) -> &[usize] {
        &self.core.active
    }

    /// Whether the masks change at `step`.
    pub fn is_update_step(&self, step: u64) -> bool {
        self.core.is_update_step(step)
    }

    /// Whether the update at `step` reads the dense gradient: the host must then compute the
    /// gradient of every weight, active or not (RigL update steps; never for SET or static).
    pub fn needs_dense_gradient(&self, step: u64) -> bool {
        self.core.needs_dense_gradient(step)
    }

    /// Whether the host should skip its optimizer step at `step` (RigL spends the batch of an
    /// update step on the update, SPEC §4).
    pub fn skips_optimizer(&self, step: u64) -> bool {
        self.core.needs_dense_gradient(step)
    }

    /// The 0/1 mask of layer `layer` as a tensor view on the device (for the host's own masked
    /// kernels; valid until the next update changes it in place).
    pub fn mask(&self, layer: usize) -> Result<Tensor> {
        let p = self.placements.get(layer).ok_or_else(|| {
            RiglError::invalid(format!(
                "layer {layer} out of range ({} layers)",
                self.placements.len()
            ))
        })?;
        self.mask_flat
            .slice(&self.ctx, p.offset, p.n, &format!("{} mask", p.name))
    }

    fn write_masks(&self, masks: &[Vec<f32>]) -> Result<()> {
        let mut flat = vec![0.0f32; self.mask_flat.len];
        for (p, m) in self.placements.iter().zip(masks) {
            flat[p.offset..p.offset + p.n].copy_from_slice(m);
        }
        self.mask_flat.write_f32(&self.ctx, &flat)
    }

    /// Replaces the masks (0/1 values, one per layer of the layer's length).
    pub fn set_masks(&mut self, masks: &[Vec<f32>]) -> Result<()> {
        let active = self.core.check_masks(masks)?;
        self.write_masks(masks)?;
        self.core.active = active;
        Ok(())
    }

    /// Reads the masks back (waits for rigl's own submission only).
    pub fn read_masks(&self) -> Result<Vec<Vec<f32>>> {
        let flat = self.mask_flat.read_f32(&self.ctx)?;
        Ok(self
            .placements
            .iter()
            .map(|p| flat[p.offset..p.offset + p.n].to_vec())
            .collect())
    }

    fn copy_in(
        &self,
        enc: &mut wgpu::CommandEncoder,
        src: &Tensor,
        dst: &Tensor,
        p: &LayerPlacement,
    ) {
        enc.copy_buffer_to_buffer(
            &src.buffer,
            src.offset,
            &dst.buffer,
            dst.offset + (p.offset * 4) as u64,
            (p.n * 4) as u64,
        );
    }

    fn copy_out(
        &self,
        enc: &mut wgpu::CommandEncoder,
        src: &Tensor,
        dst: &Tensor,
        p: &LayerPlacement,
    ) {
        enc.copy_buffer_to_buffer(
            &src.buffer,
            src.offset + (p.offset * 4) as u64,
            &dst.buffer,
            dst.offset,
            (p.n * 4) as u64,
        );
    }

    fn pass(enc: &mut wgpu::CommandEncoder, label: &str, ops: &[&Dispatch]) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        for op in ops {
            op.encode(&mut pass);
        }
    }

    /// Zeroes every optimizer slot where `op`'s map is 0, through the scratch buffer.
    fn zero_slots(&self, enc: &mut wgpu::CommandEncoder, op: &Dispatch) {
        for j in 0..self.n_slots {
            for (b, p) in self.bound.iter().zip(&self.placements) {
                self.copy_in(enc, &b.slots[j], &self.scratch, p);
            }
            Self::pass(enc, "scheduler slots", &[op]);
            for (b, p) in self.bound.iter().zip(&self.placements) {
                self.copy_out(enc, &self.scratch, &b.slots[j], p);
            }
        }
    }

    /// Records into `enc`: weights and optimizer slots outside the masks := 0. Call it after
    /// each optimizer step of the host (and once at the start).
    pub fn apply_masks(&self, enc: &mut wgpu::CommandEncoder) {
        for (b, p) in self.bound.iter().zip(&self.placements) {
            self.copy_in(enc, &b.w, &self.w_flat, p);
        }
        Self::pass(enc, "scheduler masks", &[&self.zero_w]);
        for (b, p) in self.bound.iter().zip(&self.placements) {
            self.copy_out(enc, &self.w_flat, &b.w, p);
        }
        self.zero_slots(enc, &self.zero_slot);
    }

    /// [`SparseScheduler::apply_masks`] in an encoder of its own, submitted to the queue and
    /// waited for (rigl's submission only).
    pub fn apply_masks_now(&self) -> Result<()> {
        let mut enc = self.encoder("apply masks");
        self.apply_masks(&mut enc);
        self.ctx.submit_and_wait("applying masks", [enc.finish()])
    }

    fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Records the mask update of `step` into `enc` if it is an update step (else returns
    /// `None` and records nothing): per layer, drop the weakest active weights by |w| and grow
    /// as many where |dense gradient| (RigL) or a seeded hash (SET) is largest, ties to the
    /// lower index; new connections' weights and slots := 0; weights and slots outside the new
    /// masks := 0.
    ///
    /// The host's gradient buffers must hold this step's dense gradient when
    /// [`SparseScheduler::needs_dense_gradient`] says so. The layer table is written with
    /// `queue.write_buffer`, so submit `enc` before recording the next update.
    pub fn update(
        &mut self,
        step: u64,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<Option<MaskUpdateInfo>> {
        self.core.step = self.core.step.max(step + 1);
        let Some(up) = self
            .updater
            .as_ref()
            .filter(|_| self.core.is_update_step(step))
        else {
            return Ok(None);
        };
        let rule = self.core.rule();
        let (df, counts) = self.core.counts(step)?;
        up.prepare(&self.ctx, step as u32, &counts)?;
        for (b, p) in self.bound.iter().zip(&self.placements) {
            self.copy_in(enc, &b.w, &self.w_flat, p);
            if rule == GrowRule::Score {
                if let Some(g) = &b.grad {
                    self.copy_in(enc, g, &self.score_flat, p);
                }
            }
        }
        // The updater zeroes its slot buffer where a slot must be zeroed; starting it at 1
        // makes it the keep-map applied to every slot of the host.
        enc.copy_buffer_to_buffer(
            &self.ones.buffer,
            0,
            &self.keep_flat.buffer,
            0,
            self.keep_flat.bytes(),
        );
        Self::pass(enc, "mask update", &up.dispatches(rule));
        for (b, p) in self.bound.iter().zip(&self.placements) {
            self.copy_out(enc, &self.w_flat, &b.w, p);
        }
        self.zero_slots(enc, &self.zero_slot_new);
        for (a, c) in self.core.active.iter_mut().zip(&counts) {
            *a = c.k_keep + c.k_grow;
        }
        Ok(Some(Core::info(step, df, &counts)))
    }

    /// [`SparseScheduler::update`] in an encoder of its own, submitted and waited for.
    pub fn update_now(&mut self, step: u64) -> Result<Option<MaskUpdateInfo>> {
        let mut enc = self.encoder("mask update");
        let info = self.update(step, &mut enc)?;
        if info.is_some() {
            self.ctx.submit_and_wait("mask update", [enc.finish()])?;
        }
        Ok(info)
    }

    /// The state to save with the host's checkpoint (reads the masks back).
    pub fn state(&self) -> Result<SchedulerState> {
        Ok(self.core.state(&self.read_masks()?))
    }

    /// Continues from a saved state (the layers must have the same names and shapes; the
    /// method and seed must be those this scheduler was built with, as its kernels depend on
    /// them).
    pub fn restore(&mut self, state: &SchedulerState) -> Result<()> {
        if state.method != self.core.cfg.method || state.seed != self.core.cfg.seed {
            return Err(RiglError::invalid(format!(
                "saved state is {} with seed {}, this scheduler {} with seed {}",
                state.method, state.seed, self.core.cfg.method, self.core.cfg.seed
            )));
        }
        let mut core = self.core.clone();
        let masks = core.restore(state)?;
        self.write_masks(&masks)?;
        self.core = core;
        Ok(())
    }
}

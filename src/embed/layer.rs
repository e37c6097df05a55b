//! A sparse linear layer as one object — forward, backward, optimizer step and its own mask
//! updates — on GPU buffers that rigl allocates or the caller owns, on rigl's device or the
//! caller's ([`GpuContext::from_device`]). The "whole layers" way of embedding rigl.
//!
//! Layout: weights `[in, out]` row-major; activations feature-major `[features, batch]`:
//! ```text
//! forward   y = act((w ⊙ m)ᵀ x + b)               act = ReLU or identity
//! backward  dy ⊙= relu'(y) (ReLU only, in place),  db = Σ_batch dy,
//!           dW = x dyᵀ (dense: dL/d(m ⊙ w), what RigL grows by),  dx = (w ⊙ m) dy
//! step      SGD with momentum on the active weights and on b, then the mask update at the
//!           schedule's update steps (RigL skips the SGD there, SPEC §4)
//! ```
//! The storage (masked dense today) is private, so it can change (to compressed rows) without
//! changing this API.

use crate::embed::{Core, MaskUpdateInfo, SchedulerConfig, SparseLayerSpec};
use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch, SgdConfig};
use crate::gpu::{GemmOp, GemmShape, GemmVariant, GpuContext, Tensor};
use crate::sparse::init::{dense_weights, rng_for, WeightInit};
use crate::sparse::update::MaskUpdater;

/// Shape, sparsity and hyper-parameters of a [`SparseLinear`].
#[derive(Debug, Clone, PartialEq)]
pub struct SparseLinearConfig {
    /// Name (errors, saved state).
    pub name: String,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Samples per step (the width of `x`, `y`, `dy`, `dx`).
    pub batch: usize,
    /// Sparsity of the weights in `[0, 1)` (exact active count).
    pub sparsity: f64,
    /// ReLU after the bias (identity when false).
    pub relu: bool,
    /// Optimizer (weight decay applies to the weights only).
    pub sgd: SgdConfig,
    /// Method, schedule and seed of the mask updates.
    pub scheduler: SchedulerConfig,
    /// Index of the layer in its model: selects the random streams of its initial mask and
    /// weights (as `rigl train` numbers its layers).
    pub layer_index: u64,
    /// Preferred GEMM variant (resolved per product shape).
    pub gemm: GemmVariant,
}

impl SparseLinearConfig {
    /// A layer `in_features -> out_features` at `sparsity` with SGD (lr 0.1, momentum 0.9,
    /// no weight decay), no activation, the rowblock GEMM and `scheduler`'s updates.
    pub fn new(
        name: impl Into<String>,
        in_features: usize,
        out_features: usize,
        batch: usize,
        sparsity: f64,
        scheduler: SchedulerConfig,
    ) -> Self {
        SparseLinearConfig {
            name: name.into(),
            in_features,
            out_features,
            batch,
            sparsity,
            relu: false,
            sgd: SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            },
            scheduler,
            layer_index: 0,
            gemm: GemmVariant::RowBlock,
        }
    }
}

/// The activations a [`SparseLinear`] reads and writes: rigl's or the caller's buffers.
///
/// Views of one `wgpu::Buffer` are fine (at the device's `min_storage_buffer_offset_alignment`)
/// except for the pairs one dispatch reads and writes together: `x` and `y`, `y` and `dy`, `dy`
/// and `dx` must lie in different buffers (refused with [`RiglError::BadBuffer`] otherwise).
#[derive(Debug, Clone)]
pub struct LinearIo {
    /// Input `[in, batch]` (read).
    pub x: Tensor,
    /// Output `[out, batch]` (written by the forward pass).
    pub y: Tensor,
    /// Gradient of the loss with respect to `y` `[out, batch]` (written by the caller; the
    /// backward pass of a ReLU layer turns it into the pre-activation gradient in place).
    pub dy: Tensor,
    /// Gradient with respect to `x` `[in, batch]`, written by the backward pass; `None` for a
    /// first layer.
    pub dx: Option<Tensor>,
}

impl LinearIo {
    /// Allocates all four on rigl's side.
    pub fn allocate(
        ctx: &GpuContext,
        in_features: usize,
        out_features: usize,
        batch: usize,
        with_dx: bool,
    ) -> Result<Self> {
        Ok(LinearIo {
            x: Tensor::zeros(ctx, "layer input", in_features * batch)?,
            y: Tensor::zeros(ctx, "layer output", out_features * batch)?,
            dy: Tensor::zeros(ctx, "layer output gradient", out_features * batch)?,
            dx: if with_dx {
                Some(Tensor::zeros(
                    ctx,
                    "layer input gradient",
                    in_features * batch,
                )?)
            } else {
                None
            },
        })
    }
}

/// A sparse linear layer on the GPU with its own masks and mask updates.
#[derive(Debug)]
pub struct SparseLinear {
    cfg: SparseLinearConfig,
    core: Core,
    io: LinearIo,
    w: Tensor,
    mask: Tensor,
    mom: Tensor,
    grad: Tensor,
    bias: Tensor,
    bmom: Tensor,
    bgrad: Tensor,
    fwd: Vec<Dispatch>,
    bwd: Vec<Dispatch>,
    sgd: LayerSgd,
    updater: Option<MaskUpdater>,
}

/// Checks a caller's (or rigl's) activation buffer for the role `role` of a layer: at least
/// `len` elements, `STORAGE` usage, an offset the device can bind, a size it can bind.
fn check_io(ctx: &GpuContext, t: &Tensor, role: &str, len: usize) -> Result<()> {
    let bad = |message: String| RiglError::BadBuffer {
        buffer: t.label.clone(),
        role: role.to_string(),
        message,
    };
    if t.len < len {
        return Err(bad(format!("has {} elements, needs {len}", t.len)));
    }
    if !t.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(bad(format!(
            "lacks usage flag STORAGE (it has {:?})",
            t.buffer.usage()
        )));
    }
    let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment.max(4));
    if !t.offset.is_multiple_of(align) {
        return Err(bad(format!(
            "offset {} is not a multiple of the device's min_storage_buffer_offset_alignment \
             ({align})",
            t.offset
        )));
    }
    ctx.check_storage_size(role, t.bytes())
}

/// Checks a whole layer's activations: `x` and `dx` of `n_in` elements, `y` and `dy` of
/// `n_out` ([`check_io`] each, naming its role in layer `name`), and [`check_apart`].
pub(crate) fn check_layer_io(
    ctx: &GpuContext,
    name: &str,
    [x, y, dy]: [&Tensor; 3],
    dx: Option<&Tensor>,
    n_in: usize,
    n_out: usize,
) -> Result<()> {
    let (rx, ry) = (
        format!("input of layer {name}"),
        format!("output of layer {name}"),
    );
    let rdy = format!("output gradient of layer {name}");
    let rdx = format!("input gradient of layer {name}");
    check_io(ctx, x, &rx, n_in)?;
    check_io(ctx, y, &ry, n_out)?;
    check_io(ctx, dy, &rdy, n_out)?;
    if let Some(dx) = dx {
        check_io(ctx, dx, &rdx, n_in)?;
        check_apart(&[(dy, &rdy, dx, &rdx)])?;
    }
    check_apart(&[(x, &rx, y, &ry), (y, &ry, dy, &rdy)])
}

/// Refuses activation buffers that one dispatch of a layer binds together with one of them
/// written (`x` with `y`, `y` with `dy`, `dy` with `dx`) when they are views of the same
/// `wgpu::Buffer`: wgpu forbids a buffer bound read-only and read-write in one dispatch, even at
/// disjoint ranges, and would panic at encoding time.
pub(crate) fn check_apart(pairs: &[(&Tensor, &str, &Tensor, &str)]) -> Result<()> {
    for (a, a_role, b, b_role) in pairs {
        if a.buffer == b.buffer {
            return Err(RiglError::BadBuffer {
                buffer: b.label.clone(),
                role: b_role.to_string(),
                message: format!(
                    "is in the same wgpu buffer as the {a_role} ('{}'): one dispatch reads one \
                     and writes the other, which wgpu forbids even at disjoint ranges; give them \
                     separate buffers",
                    a.label
                ),
            });
        }
    }
    Ok(())
}

/// The optimizer of a whole layer: SGD with momentum on its masked weights (with weight decay)
/// and on its bias (without).
#[derive(Debug)]
pub(crate) struct LayerSgd {
    /// Gradient, weights, momentum and mask of the weights.
    w: [Tensor; 4],
    /// Gradient, values and momentum of the bias.
    b: [Tensor; 3],
    ops: Vec<Dispatch>,
    cfg: SgdConfig,
}

impl LayerSgd {
    pub(crate) fn new(
        ctx: &GpuContext,
        cfg: SgdConfig,
        w: [&Tensor; 4],
        b: [&Tensor; 3],
    ) -> Result<Self> {
        let w = w.map(Tensor::clone);
        let b = b.map(Tensor::clone);
        let ops = Self::build(ctx, cfg, &w, &b)?;
        Ok(LayerSgd { w, b, ops, cfg })
    }

    fn build(
        ctx: &GpuContext,
        cfg: SgdConfig,
        w: &[Tensor; 4],
        b: &[Tensor; 3],
    ) -> Result<Vec<Dispatch>> {
        let [grad, wt, mom, mask] = w;
        let [bgrad, bias, bmom] = b;
        Ok(vec![
            ops::sgd(ctx, grad, wt, mom, Some(mask), wt.len, cfg)?,
            ops::sgd(ctx, bgrad, bias, bmom, None, bias.len, Self::bias_cfg(cfg))?,
        ])
    }

    fn bias_cfg(cfg: SgdConfig) -> SgdConfig {
        SgdConfig {
            weight_decay: 0.0,
            ..cfg
        }
    }

    pub(crate) fn dispatches(&self) -> &[Dispatch] {
        &self.ops
    }

    /// New hyper-parameters from the next submit: written into the kernels' parameters, or the
    /// kernels rebuilt when Nesterov changes (a pipeline constant).
    pub(crate) fn set(&mut self, ctx: &GpuContext, cfg: SgdConfig) -> Result<()> {
        if cfg.nesterov != self.cfg.nesterov {
            self.ops = Self::build(ctx, cfg, &self.w, &self.b)?;
        } else {
            ops::set_sgd(ctx, &self.ops[0], self.w[1].len, cfg);
            ops::set_sgd(ctx, &self.ops[1], self.b[1].len, Self::bias_cfg(cfg));
        }
        self.cfg = cfg;
        Ok(())
    }
}

/// The mask updater of a whole layer whose method drops and grows (none for static masks): one
/// placement over its `n` weights.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_updater(
    ctx: &GpuContext,
    scheduler: &SchedulerConfig,
    name: &str,
    n: usize,
    w: &Tensor,
    mask: &Tensor,
    mom: &Tensor,
    grad: &Tensor,
) -> Result<Option<MaskUpdater>> {
    if !scheduler.method.drops_and_grows() {
        return Ok(None);
    }
    let placement = crate::sparse::update::LayerPlacement {
        name: name.to_string(),
        offset: 0,
        n,
        id: 0,
    };
    Ok(Some(MaskUpdater::new(
        ctx,
        vec![placement],
        w,
        mask,
        mom,
        grad,
        scheduler.seed as u32,
    )?))
}

/// The end of training step `step` of a whole layer, into `enc`: its `sgd` dispatches (except
/// at a RigL update step, which spends the batch on the update), then the mask update when
/// `step` is an update step.
pub(crate) fn encode_layer_step(
    core: &mut Core,
    updater: Option<&MaskUpdater>,
    sgd: &[Dispatch],
    ctx: &GpuContext,
    step: u64,
    enc: &mut wgpu::CommandEncoder,
    label: &str,
) -> Result<Option<MaskUpdateInfo>> {
    core.step = core.step.max(step + 1);
    let mut ops: Vec<&Dispatch> = Vec::new();
    if !core.needs_dense_gradient(step) {
        ops.extend(sgd.iter());
    }
    let mut info = None;
    if let Some(up) = updater.filter(|_| core.is_update_step(step)) {
        let (df, counts) = core.counts(step)?;
        up.prepare(ctx, step as u32, &counts)?;
        ops.extend(up.dispatches(core.rule()));
        info = Some(Core::info(step, df, &counts));
    }
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    for op in ops {
        op.encode(&mut pass);
    }
    Ok(info)
}

impl SparseLinear {
    /// Builds the layer: Glorot-uniform weights and an exact random mask from the scheduler's
    /// seed (streams `2 * layer_index` and `2 * layer_index + 1`, as `rigl train`), zero bias,
    /// and every dispatch of a step on `io`.
    pub fn new(ctx: &GpuContext, cfg: SparseLinearConfig, io: LinearIo) -> Result<Self> {
        let (fin, fout, b) = (cfg.in_features, cfg.out_features, cfg.batch);
        if fin == 0 || fout == 0 || b == 0 {
            return Err(RiglError::invalid(format!(
                "layer {}: features and batch must be positive ({fin} -> {fout}, batch {b})",
                cfg.name
            )));
        }
        crate::embed::gpu::check_device_limits(ctx)?;
        let spec = SparseLayerSpec::new(cfg.name.clone(), &[fin, fout], cfg.sparsity);
        let mut core = Core::new(cfg.scheduler, vec![spec])?;
        // The layer's own streams, as layer `layer_index` of a trainer's model.
        let stream = cfg
            .layer_index
            .checked_mul(2)
            .ok_or_else(|| RiglError::invalid("layer_index too large"))?;
        let mask_v = crate::sparse::init::random_mask(
            fin * fout,
            core.active[0],
            &mut rng_for(cfg.scheduler.seed, stream),
        )?;
        core.active = core.check_masks(std::slice::from_ref(&mask_v))?;
        let mut w_v = dense_weights(
            &[fin, fout],
            WeightInit::GlorotUniform,
            &mut rng_for(cfg.scheduler.seed, stream + 1),
        )?;
        for (w, m) in w_v.iter_mut().zip(&mask_v) {
            *w *= m;
        }
        let name = &cfg.name;
        check_layer_io(
            ctx,
            name,
            [&io.x, &io.y, &io.dy],
            io.dx.as_ref(),
            fin * b,
            fout * b,
        )?;
        let n = fin * fout;
        let w = Tensor::from_f32(ctx, &format!("{name} weights"), &w_v)?;
        let mask = Tensor::from_f32(ctx, &format!("{name} mask"), &mask_v)?;
        let mom = Tensor::zeros(ctx, &format!("{name} momentum"), n)?;
        let grad = Tensor::zeros(ctx, &format!("{name} weight gradient"), n)?;
        let bias = Tensor::zeros(ctx, &format!("{name} bias"), fout)?;
        let bmom = Tensor::zeros(ctx, &format!("{name} bias momentum"), fout)?;
        let bgrad = Tensor::zeros(ctx, &format!("{name} bias gradient"), fout)?;
        let gemm = |shape: GemmShape, a: &Tensor, bm: &Tensor, c: &Tensor, m: Option<&Tensor>| {
            let v = crate::gpu::gemm::pick(ctx, cfg.gemm, &shape)?;
            GemmOp::new(ctx, shape, v, a, bm, c, m, false).map(|g| g.dispatch)
        };
        let fwd_shape = GemmShape {
            m: fout,
            n: b,
            k: fin,
            trans_a: true,
            trans_b: false,
        };
        let fwd = vec![
            gemm(fwd_shape, &w, &io.x, &io.y, Some(&mask))?,
            ops::bias_act(ctx, &bias, &io.y, fout, b, cfg.relu)?,
        ];
        let mut bwd = Vec::new();
        if cfg.relu {
            bwd.push(ops::relu_bwd(ctx, &io.y, &io.dy, fout * b)?);
        }
        bwd.push(ops::segment_sum(ctx, &io.dy, &bgrad, fout, b, false)?);
        let grad_shape = GemmShape {
            m: fin,
            n: fout,
            k: b,
            trans_a: false,
            trans_b: true,
        };
        bwd.push(gemm(grad_shape, &io.x, &io.dy, &grad, None)?);
        if let Some(dx) = &io.dx {
            bwd.push(gemm(
                GemmShape::nn(fin, b, fout),
                &w,
                &io.dy,
                dx,
                Some(&mask),
            )?);
        }
        let sgd = LayerSgd::new(
            ctx,
            cfg.sgd,
            [&grad, &w, &mom, &mask],
            [&bgrad, &bias, &bmom],
        )?;
        let updater = layer_updater(ctx, &cfg.scheduler, name, n, &w, &mask, &mom, &grad)?;
        Ok(SparseLinear {
            cfg,
            core,
            io,
            w,
            mask,
            mom,
            grad,
            bias,
            bmom,
            bgrad,
            fwd,
            bwd,
            sgd,
            updater,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SparseLinearConfig {
        &self.cfg
    }

    /// The activations it reads and writes.
    pub fn io(&self) -> &LinearIo {
        &self.io
    }

    /// Active weights (constant under RigL, SET and static training).
    pub fn active(&self) -> usize {
        self.core.active[0]
    }

    /// Records the forward pass into a compute pass.
    pub fn encode_forward(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.fwd {
            d.encode(pass);
        }
    }

    /// Records the backward pass (`io.dy` must hold the output gradient).
    pub fn encode_backward(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.bwd {
            d.encode(pass);
        }
    }

    /// Records the end of training step `step` into `enc`: SGD (except at a RigL update step,
    /// which spends the batch on the update), then the mask update when `step` is an update
    /// step, as the official code orders them. Submit `enc` before recording the next step.
    pub fn encode_step(
        &mut self,
        ctx: &GpuContext,
        step: u64,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<Option<MaskUpdateInfo>> {
        encode_layer_step(
            &mut self.core,
            self.updater.as_ref(),
            self.sgd.dispatches(),
            ctx,
            step,
            enc,
            "sparse linear step",
        )
    }

    /// Sets the optimizer's hyper-parameters (e.g. a new learning rate) from the next submit
    /// (a change of `nesterov` rebuilds the two SGD kernels; an error only when that fails).
    pub fn set_sgd(&mut self, ctx: &GpuContext, sgd: SgdConfig) -> Result<()> {
        self.sgd.set(ctx, sgd)?;
        self.cfg.sgd = sgd;
        Ok(())
    }

    /// Overwrites weights (`[in, out]`, zeroed outside the mask) and bias; resets momentum.
    pub fn load(&self, ctx: &GpuContext, weights: &[f32], bias: &[f32]) -> Result<()> {
        let mask = self.mask.read_f32(ctx)?;
        if weights.len() != mask.len() || bias.len() != self.cfg.out_features {
            return Err(RiglError::invalid(format!(
                "layer {}: {} weights and {} biases, expected {} and {}",
                self.cfg.name,
                weights.len(),
                bias.len(),
                mask.len(),
                self.cfg.out_features
            )));
        }
        let w: Vec<f32> = weights.iter().zip(&mask).map(|(w, m)| w * m).collect();
        self.w.write_f32(ctx, &w)?;
        self.bias.write_f32(ctx, bias)?;
        self.mom.write_f32(ctx, &vec![0.0; w.len()])?;
        self.bmom.write_f32(ctx, &vec![0.0; bias.len()])
    }

    /// Reads the weights back (`[in, out]`, zero outside the mask).
    pub fn read_weights(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.w.read_f32(ctx)
    }

    /// Reads the 0/1 mask back.
    pub fn read_mask(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.mask.read_f32(ctx)
    }

    /// Reads the dense weight gradient of the last backward pass.
    pub fn read_weight_gradient(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.grad.read_f32(ctx)
    }

    /// Reads the weight momentum back.
    pub fn read_momentum(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.mom.read_f32(ctx)
    }

    /// Reads the bias back.
    pub fn read_bias(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.bias.read_f32(ctx)
    }

    /// Reads the bias gradient of the last backward pass.
    pub fn read_bias_gradient(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.bgrad.read_f32(ctx)
    }
}

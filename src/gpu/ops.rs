//! Dispatches: a kernel with its bind group, parameter buffer and workgroup counts, built once and
//! encoded any number of times (nothing is allocated when a step is encoded).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::buffer::dispatch_dims;
use crate::gpu::context::Held;
use crate::gpu::registry::{Binding, Kernel, KernelSpec};
use crate::gpu::texture::Texture;
use crate::gpu::{GpuContext, Tensor};

/// Set once this process has built a dispatch that binds a storage texture: lavapipe's timestamps
/// go wrong from then on (see [`crate::gpu::profile::time_ops`]).
pub(crate) static TEXTURES_BUILT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// One ready-to-encode kernel launch.
#[derive(Debug)]
pub struct Dispatch {
    /// Kernel name (`file.wgsl:entry`).
    pub name: String,
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    params: wgpu::Buffer,
    dims: (u32, u32),
    /// Useful floating-point operations per launch (for GFLOP/s).
    pub flops: f64,
    /// Bytes moved per launch, at least once each (for GB/s).
    pub bytes: f64,
    /// Whether the kernel (or one of its `before` launches) binds a texture.
    pub uses_textures: bool,
    /// Launches encoded just before this one, as part of it (e.g. packing a GEMM's operands),
    /// each with the copy that can stand in for it where the caller owns the command encoder.
    before: Vec<(Dispatch, Option<TexCopy>)>,
    /// The shares of [`GpuContext::gpu_bytes_held`] of the parameter block and of everything
    /// bound: a dispatch keeps what it binds alive, so it keeps it counted.
    _held: Vec<Arc<Held>>,
}

/// A dispatch's identity ([`Dispatch::id`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchId(wgpu::Buffer);

/// A buffer-to-texture copy that writes what a `before` launch writes (rows of a matrix into
/// the texels of a GEMM operand texture). It runs outside compute passes, so only
/// [`encode_ops`] uses it; [`Dispatch::encode`] runs the launch it stands in for.
#[derive(Debug)]
pub(crate) struct TexCopy {
    /// Source buffer, byte offset of its first row and bytes from one row to the next
    /// (a multiple of 256).
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub bytes_per_row: u32,
    /// Destination texture, and the texels copied: `width` by `rows` from the origin.
    pub texture: wgpu::Texture,
    pub width: u32,
    pub rows: u32,
}

impl TexCopy {
    fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        enc.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: &self.buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: self.offset,
                    bytes_per_row: Some(self.bytes_per_row),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: &self.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: self.width,
                height: self.rows,
                depth_or_array_layers: 1,
            },
        );
    }
}

/// A resource bound to a kernel: a storage buffer (view) or a storage texture.
#[derive(Clone, Copy, Debug)]
pub enum Res<'a> {
    /// A buffer view.
    Buf(&'a Tensor),
    /// An activation texture.
    Tex(&'a Texture),
}

impl Dispatch {
    /// Builds a dispatch of `spec` over `workgroups` workgroups (split over x/y as needed), with
    /// `params` as binding 0 and `tensors` as bindings 1.. in order.
    pub fn build(
        ctx: &GpuContext,
        spec: &KernelSpec,
        params: &[u8],
        tensors: &[&Tensor],
        workgroups: u64,
    ) -> Result<Self> {
        let res: Vec<Res<'_>> = tensors.iter().map(|t| Res::Buf(t)).collect();
        Self::build_res(ctx, spec, params, &res, workgroups)
    }

    /// [`Dispatch::build`] with buffers and textures.
    pub fn build_res(
        ctx: &GpuContext,
        spec: &KernelSpec,
        params: &[u8],
        tensors: &[Res<'_>],
        workgroups: u64,
    ) -> Result<Self> {
        if tensors.len() + 1 != spec.bindings.len() {
            return Err(RiglError::invalid(format!(
                "{} takes {} buffers, got {}",
                spec.name(),
                spec.bindings.len() - 1,
                tensors.len()
            )));
        }
        let kernel = ctx.registry().get(&ctx.device, spec)?;
        let params_buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(spec.entry),
            size: params.len().max(16) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&params_buf, 0, params);
        let mut held = vec![ctx.hold(params_buf.size())];
        for t in tensors {
            match t {
                Res::Buf(b) => held.extend(b.held.clone()),
                Res::Tex(x) => held.push(x.held.clone()),
            }
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params_buf.as_entire_binding(),
        }];
        for (i, (t, kind)) in tensors.iter().zip(&spec.bindings[1..]).enumerate() {
            let is_tex = kind.is_texture();
            let resource = match (t, is_tex) {
                (Res::Buf(b), false) => b.binding(),
                (Res::Tex(x), true) => wgpu::BindingResource::TextureView(&x.view),
                _ => {
                    return Err(RiglError::invalid(format!(
                        "{}: binding {} takes a {}",
                        spec.name(),
                        i + 1,
                        if is_tex { "texture" } else { "buffer" }
                    )))
                }
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource,
            });
        }
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.entry),
            layout: &kernel.layout,
            entries: &entries,
        });
        let dims = dispatch_dims(ctx, workgroups, &spec.name())?;
        let uses_textures = spec.bindings.iter().any(|b| b.is_texture());
        if uses_textures {
            TEXTURES_BUILT.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Dispatch {
            name: spec.name(),
            kernel,
            bind_group,
            params: params_buf,
            dims,
            flops: 0.0,
            bytes: 0.0,
            before: Vec::new(),
            uses_textures,
            _held: held,
        })
    }

    /// Records the launch (after its `before` launches) into a compute pass.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (b, _) in &self.before {
            b.encode(pass);
        }
        self.encode_self(pass);
    }

    fn encode_self(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.dims.0, self.dims.1, 1);
    }

    /// The launches encoded before this one as part of it (profiles time them one by one).
    pub fn before_launches(&self) -> Vec<&Dispatch> {
        self.before.iter().map(|(b, _)| b).collect()
    }

    /// Whether some `before` launch has a copy standing in for it (see [`encode_ops`]).
    pub fn has_copies(&self) -> bool {
        self.before.iter().any(|(_, c)| c.is_some())
    }

    /// The `before` launches with no copy standing in for them, then the launch itself: what
    /// [`encode_ops`] records into a pass after the copies.
    fn encode_after_copies(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (b, c) in &self.before {
            if c.is_none() {
                b.encode(pass);
            }
        }
        self.encode_self(pass);
    }

    /// Overwrites the parameter block (e.g. a new learning rate); takes effect at the next submit.
    pub fn write_params(&self, ctx: &GpuContext, params: &[u8]) {
        ctx.queue.write_buffer(&self.params, 0, params);
    }

    /// Makes `before` part of this dispatch: they are encoded, in order, just before it
    /// (wgpu orders the writes of one launch before the reads of the next).
    /// Its name in profiles says so (`gemm_tex.wgsl:gemm_texture (+2 before)`).
    pub fn with_before(self, before: Vec<Dispatch>) -> Self {
        self.with_before_or_copy(before.into_iter().map(|b| (b, None)).collect())
    }

    /// [`Dispatch::with_before`], where a launch may have a copy that [`encode_ops`] runs
    /// instead (outside the pass).
    pub(crate) fn with_before_or_copy(mut self, before: Vec<(Dispatch, Option<TexCopy>)>) -> Self {
        self.uses_textures |= before.iter().any(|(b, _)| b.uses_textures);
        if !before.is_empty() {
            let copies = before.iter().filter(|(_, c)| c.is_some()).count();
            self.name = if copies == 0 {
                format!("{} (+{} before)", self.name, before.len())
            } else {
                format!(
                    "{} (+{} before, {copies} as copies)",
                    self.name,
                    before.len()
                )
            };
        }
        self.before = before;
        self
    }

    /// Makes `first` part of this dispatch, encoded before its other `before` launches.
    pub fn after(mut self, first: Dispatch) -> Self {
        let mut before = self.take_before();
        before.insert(0, (first, None));
        self.with_before_or_copy(before)
    }

    /// Takes the `before` launches out, and their count out of the name.
    fn take_before(&mut self) -> Vec<(Dispatch, Option<TexCopy>)> {
        if let Some(i) = self.name.find(" (+") {
            self.name.truncate(i);
        }
        std::mem::take(&mut self.before)
    }

    /// What tells this dispatch from every other one (its parameter block).
    pub fn id(&self) -> DispatchId {
        DispatchId(self.params.clone())
    }

    /// Drops the `before` launches whose kernel entry point (`file.wgsl:entry`) is one of
    /// `entries`, when what they write is already in place; the name counts what is left.
    pub fn without_before(mut self, entries: &[&str]) -> Self {
        let before = self.take_before();
        let kept = before
            .into_iter()
            .filter(|(b, _)| {
                let entry = b.name.rsplit(':').next().unwrap_or(&b.name);
                !entries.contains(&entry)
            })
            .collect();
        self.with_before_or_copy(kept)
    }

    /// Sets the FLOP and byte counts used by profiles.
    pub fn with_cost(mut self, flops: f64, bytes: f64) -> Self {
        self.flops = flops;
        self.bytes = bytes;
        self
    }
}

/// Records `ops` in order into `enc`: into one compute pass, except that a dispatch with copies
/// (a `texture` GEMM whose operands can be copied rather than packed) ends the pass, has its
/// copies recorded, and starts the next one. The results are those of recording every op with
/// [`Dispatch::encode`] into one pass: a copy writes exactly what the launch it replaces writes.
pub fn encode_ops(enc: &mut wgpu::CommandEncoder, label: &str, ops: &[&Dispatch]) {
    let mut i = 0;
    while i < ops.len() {
        for c in ops[i].before.iter().filter_map(|(_, c)| c.as_ref()) {
            c.encode(enc);
        }
        let end = ops[i + 1..]
            .iter()
            .position(|op| op.has_copies())
            .map_or(ops.len(), |j| i + 1 + j);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        ops[i].encode_after_copies(&mut pass);
        for op in &ops[i + 1..end] {
            op.encode(&mut pass);
        }
        i = end;
    }
}

/// Records `ops` with [`encode_ops`], submits and waits for that submission.
pub fn run(ctx: &GpuContext, what: &str, ops: &[&Dispatch]) -> Result<()> {
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
    encode_ops(&mut enc, what, ops);
    ctx.submit_and_wait(what, [enc.finish()])
}

/// Parameter block shared by the elementwise and reduction kernels (see `shaders/act.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct EwParams {
    /// Total elements.
    pub n: u32,
    /// Features / classes / segments.
    pub rows: u32,
    /// Batch / segment length.
    pub cols: u32,
    /// Kernel-specific flag.
    pub flag: u32,
    /// Learning rate or label smoothing.
    pub f0: f32,
    /// Momentum or gradient scale.
    pub f1: f32,
    /// Weight decay.
    pub f2: f32,
    _pad: u32,
}

const EW_WG: u64 = 256;

/// An error naming `what` and the tensor when `t` holds fewer than `needed` elements.
pub(crate) fn check_len(t: &Tensor, needed: usize, what: &str) -> Result<()> {
    if t.len < needed {
        return Err(RiglError::invalid(format!(
            "{what}: tensor '{}' has {} elements, needs {needed}",
            t.label, t.len
        )));
    }
    Ok(())
}

/// `z[f, b] = act(z[f, b] + bias[f])` in place; `relu` chooses ReLU or identity.
pub fn bias_act(
    ctx: &GpuContext,
    bias: &Tensor,
    z: &Tensor,
    features: usize,
    batch: usize,
    relu: bool,
) -> Result<Dispatch> {
    const B: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];
    let n = features * batch;
    check_len(bias, features, "bias_act")?;
    check_len(z, n, "bias_act")?;
    let p = EwParams {
        n: n as u32,
        rows: features as u32,
        cols: batch.max(1) as u32,
        flag: relu as u32,
        ..Default::default()
    };
    Ok(Dispatch::build(
        ctx,
        &KernelSpec::new("act", "bias_act_fwd", B),
        bytemuck::bytes_of(&p),
        &[bias, z],
        (n as u64).div_ceil(EW_WG),
    )?
    .with_cost(n as f64 * 2.0, n as f64 * 8.0))
}

/// `g[i] = y[i] > 0 ? g[i] : 0` in place, for `n` elements.
pub fn relu_bwd(ctx: &GpuContext, y: &Tensor, g: &Tensor, n: usize) -> Result<Dispatch> {
    const B: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];
    check_len(y, n, "relu_bwd")?;
    check_len(g, n, "relu_bwd")?;
    let p = EwParams {
        n: n as u32,
        ..Default::default()
    };
    Ok(Dispatch::build(
        ctx,
        &KernelSpec::new("act", "relu_bwd", B),
        bytemuck::bytes_of(&p),
        &[y, g],
        (n as u64).div_ceil(EW_WG),
    )?
    .with_cost(n as f64, n as f64 * 12.0))
}

/// Elements per chunk when [`segment_sum`] cuts long segments.
const SEGMENT_CHUNK: usize = 4096;

/// `out[s] = sum(x[s*len .. (s+1)*len])` for `s < segments` (`+=` with `accumulate`).
/// Segments of `2 * 4096` elements or more are summed in chunks of 4,096 first (one launch
/// before the sum, in the same dispatch).
pub fn segment_sum(
    ctx: &GpuContext,
    x: &Tensor,
    out: &Tensor,
    segments: usize,
    len: usize,
    accumulate: bool,
) -> Result<Dispatch> {
    segment_sum_of(ctx, x, None, out, segments, len, accumulate)
}

/// [`segment_sum`] over the elements whose max-pooling argmax `arg` (one per element, as
/// [`crate::gpu::image::max_pool`] writes it) exists: the sum of a max pooling's output gradient
/// over the outputs that pass it on, which equals the sum of the pooling's input gradient. A
/// convolution's bias gradient read before the pooling rather than after it.
pub fn segment_sum_pooled(
    ctx: &GpuContext,
    dy: &Tensor,
    arg: &Tensor,
    out: &Tensor,
    segments: usize,
    len: usize,
) -> Result<Dispatch> {
    check_len(arg, segments * len, "segment_sum_pooled")?;
    segment_sum_of(ctx, dy, Some(arg), out, segments, len, false)
}

fn segment_sum_of(
    ctx: &GpuContext,
    x: &Tensor,
    arg: Option<&Tensor>,
    out: &Tensor,
    segments: usize,
    len: usize,
    accumulate: bool,
) -> Result<Dispatch> {
    const B: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];
    const B_ARG: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
    ];
    check_len(x, segments * len, "segment_sum")?;
    check_len(out, segments, "segment_sum")?;
    let cost = |d: Dispatch| {
        let reads = if arg.is_some() { 8 } else { 4 };
        d.with_cost((segments * len) as f64, (segments * len * reads) as f64)
    };
    if len >= 2 * SEGMENT_CHUNK && segments > 0 {
        // Few long segments (a convolution's bias gradient: channels of N * H * W): chunk sums
        // first, one workgroup each, so that every core has work; then the sum of the chunks.
        let chunks = len.div_ceil(SEGMENT_CHUNK);
        let partial = Tensor::zeros(ctx, "segment_sum chunks", segments * chunks)?;
        let p = EwParams {
            n: chunks as u32,
            rows: segments as u32,
            cols: len as u32,
            flag: SEGMENT_CHUNK as u32,
            ..Default::default()
        };
        let part = match arg {
            Some(a) => Dispatch::build(
                ctx,
                &KernelSpec::new("reduce", "segment_part_arg", B_ARG),
                bytemuck::bytes_of(&p),
                &[x, &partial, a],
                (segments * chunks) as u64,
            )?,
            None => Dispatch::build(
                ctx,
                &KernelSpec::new("reduce", "segment_part", B),
                bytemuck::bytes_of(&p),
                &[x, &partial],
                (segments * chunks) as u64,
            )?,
        };
        let sum = segment_sum_of(ctx, &partial, None, out, segments, chunks, accumulate)?;
        return Ok(cost(sum.with_before(vec![part])));
    }
    let p = EwParams {
        n: segments as u32,
        rows: segments as u32,
        cols: len as u32,
        ..Default::default()
    };
    let accum = f64::from(u8::from(accumulate));
    let d = match arg {
        Some(a) => Dispatch::build(
            ctx,
            &KernelSpec::new("reduce", "segment_sum_arg", B_ARG).with_override("ACCUMULATE", accum),
            bytemuck::bytes_of(&p),
            &[x, out, a],
            segments as u64,
        )?,
        None => Dispatch::build(
            ctx,
            &KernelSpec::new("reduce", "segment_sum", B).with_override("ACCUMULATE", accum),
            bytemuck::bytes_of(&p),
            &[x, out],
            segments as u64,
        )?,
    };
    Ok(cost(d))
}

/// Softmax cross-entropy over feature-major logits `[classes, batch]`: writes the logits gradient
/// (times `grad_scale`) and per-sample loss and correct flags into `stats[2 * batch]`. All
/// `batch` columns are valid; see [`set_xent_valid`] for a partial batch.
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent(
    ctx: &GpuContext,
    logits: &Tensor,
    labels: &Tensor,
    dlogits: &Tensor,
    stats: &Tensor,
    classes: usize,
    batch: usize,
    label_smoothing: f32,
    grad_scale: f32,
) -> Result<Dispatch> {
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    if classes == 0 {
        return Err(RiglError::invalid("softmax_xent needs at least one class"));
    }
    check_len(logits, classes * batch, "softmax_xent")?;
    check_len(labels, batch, "softmax_xent")?;
    check_len(dlogits, classes * batch, "softmax_xent")?;
    check_len(stats, 2 * batch, "softmax_xent")?;
    let p = xent_params(classes, batch, batch, label_smoothing, grad_scale);
    let n = (classes * batch) as f64;
    Ok(Dispatch::build(
        ctx,
        &KernelSpec::new("xent", "softmax_xent", B),
        bytemuck::bytes_of(&p),
        &[logits, labels, dlogits, stats],
        (batch as u64).div_ceil(EW_WG),
    )?
    .with_cost(n * 8.0, n * 8.0))
}

fn xent_params(classes: usize, batch: usize, valid: usize, smoothing: f32, scale: f32) -> EwParams {
    EwParams {
        n: batch as u32,
        rows: classes as u32,
        cols: batch as u32,
        flag: valid.min(batch) as u32,
        f0: smoothing,
        f1: scale,
        ..Default::default()
    }
}

/// Makes only the first `valid` samples of a [`softmax_xent`] dispatch count (the rest of the
/// batch is padding), with gradient scale `grad_scale`.
pub fn set_xent_valid(
    ctx: &GpuContext,
    op: &Dispatch,
    classes: usize,
    batch: usize,
    valid: usize,
    label_smoothing: f32,
    grad_scale: f32,
) {
    let p = xent_params(classes, batch, valid, label_smoothing, grad_scale);
    op.write_params(ctx, bytemuck::bytes_of(&p));
}

/// `ema -= (1 - decay) * (ema - x)` over `n` elements (TensorFlow's moving average; SNFS).
pub fn ema(ctx: &GpuContext, x: &Tensor, ema: &Tensor, n: usize, decay: f32) -> Result<Dispatch> {
    state_update(ctx, "ema_update", x, ema, n, 1.0 - decay, 3.0)
}

/// `acc = max(acc, x)` over `n` elements (the "ever active" map behind the ITOP rate).
pub fn max_into(ctx: &GpuContext, x: &Tensor, acc: &Tensor, n: usize) -> Result<Dispatch> {
    state_update(ctx, "max_into", x, acc, n, 0.0, 1.0)
}

/// `x[i] = 0` wherever `mask[i] == 0`, over `n` elements (masks applied to weights and optimizer
/// slots; writes `+0.0`).
pub fn mask_zero(ctx: &GpuContext, mask: &Tensor, x: &Tensor, n: usize) -> Result<Dispatch> {
    state_update(ctx, "mask_zero", mask, x, n, 0.0, 1.0)
}

/// An `elementwise.wgsl` entry that folds `x` into `acc` over `n` elements with parameter `f0`.
fn state_update(
    ctx: &GpuContext,
    entry: &'static str,
    x: &Tensor,
    acc: &Tensor,
    n: usize,
    f0: f32,
    flops_per_element: f64,
) -> Result<Dispatch> {
    const B: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];
    check_len(x, n, entry)?;
    check_len(acc, n, entry)?;
    let p = EwParams {
        n: n as u32,
        f0,
        ..Default::default()
    };
    Ok(Dispatch::build(
        ctx,
        &KernelSpec::new("elementwise", entry, B),
        bytemuck::bytes_of(&p),
        &[x, acc],
        (n as u64).div_ceil(EW_WG),
    )?
    .with_cost(n as f64 * flops_per_element, n as f64 * 12.0))
}

/// SGD hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum coefficient (0 for plain SGD).
    pub momentum: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl SgdConfig {
    /// The optimizer at rest: learning rate 0, no momentum, no weight decay (a model built for
    /// evaluation, or before its trainer sets the run's settings).
    pub const AT_REST: SgdConfig = SgdConfig {
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };

    fn params(&self, n: usize) -> EwParams {
        EwParams {
            n: n as u32,
            f0: self.lr,
            f1: self.momentum,
            f2: self.weight_decay,
            ..Default::default()
        }
    }
}

/// An SGD update of `n` weights with momentum; with `mask`, masked positions are held at zero.
pub fn sgd(
    ctx: &GpuContext,
    grad: &Tensor,
    w: &Tensor,
    m: &Tensor,
    mask: Option<&Tensor>,
    n: usize,
    cfg: SgdConfig,
) -> Result<Dispatch> {
    sgd_mirrored(ctx, grad, w, m, mask, n, cfg, None)
}

/// [`sgd`] that also writes every new weight into `mirror`, a value texture of the
/// [`crate::gpu::texture::meta_texture`] layout (texel i = weight i).
#[allow(clippy::too_many_arguments)]
pub fn sgd_mirrored(
    ctx: &GpuContext,
    grad: &Tensor,
    w: &Tensor,
    m: &Tensor,
    mask: Option<&Tensor>,
    n: usize,
    cfg: SgdConfig,
    mirror: Option<&Texture>,
) -> Result<Dispatch> {
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::MetaWrite,
    ];
    for t in [grad, w, m].into_iter().chain(mask) {
        check_len(t, n, "sgd")?;
    }
    if let Some(t) = mirror {
        if t.rows * crate::gpu::texture::META_WIDTH < n {
            return Err(RiglError::invalid(format!(
                "sgd: value texture '{}' is smaller than the {n} weights",
                t.label
            )));
        }
    }
    // A vec4 at a time where the count allows (`sgd_update_v4`, same bits).
    let (entry, invocations) = if n.is_multiple_of(4) {
        ("sgd_update_v4", n / 4)
    } else {
        ("sgd_update", n)
    };
    let spec = KernelSpec::new("sgd", entry, B)
        .with_override("NESTEROV", f64::from(u8::from(cfg.nesterov)))
        .with_override("USE_MASK", f64::from(u8::from(mask.is_some())))
        .with_override("STORE_TEX", f64::from(u8::from(mirror.is_some())));
    // Without a mask the binding is never read; the gradient stands in for it.
    let mask_t = mask.unwrap_or(grad);
    let placeholder;
    let tex = match mirror {
        Some(t) => t,
        None => {
            placeholder = crate::gpu::texture::meta_texture(ctx, "sgd placeholder", 1)?;
            &placeholder
        }
    };
    let d = Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&cfg.params(n)),
        &[
            Res::Buf(grad),
            Res::Buf(w),
            Res::Buf(m),
            Res::Buf(mask_t),
            Res::Tex(tex),
        ],
        (invocations as u64).div_ceil(EW_WG),
    )?;
    Ok(d.with_cost(n as f64 * 6.0, n as f64 * 20.0))
}

/// Updates the learning rate (and other hyper-parameters) of a dispatch built by [`sgd`].
pub fn set_sgd(ctx: &GpuContext, op: &Dispatch, n: usize, cfg: SgdConfig) {
    op.write_params(ctx, bytemuck::bytes_of(&cfg.params(n)));
}

//! Host side of `shaders/image.wgsl`: batch normalisation, max/average/global average pooling,
//! flatten, counter-based dropout and the residual add (CPU twins in [`crate::cpu::conv`]), and
//! the fused forms: a batch norm's passes can apply a ReLU and a dropout after it ([`Epilogue`])
//! and add a residual gradient into its input gradient, max pooling can pool `relu(x)`
//! ([`max_pool_relu`]). On lavapipe every storage load and store is a per-lane loop, so a pass
//! saved is worth its whole traffic.
//!
//! A batch norm keeps its `gamma` and `beta` interleaved in one `[2C]` buffer (`gamma[c]` at `2c`,
//! `beta[c]` at `2c + 1`; its gradient has the same layout), its running statistics likewise
//! (`mean`, `var`), and a `[4C]` scratch for the statistics the forward used and the backward's
//! sums.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::ops::{check_len as check, Dispatch, Res};
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::texture::Texture;
use crate::gpu::{GpuContext, Tensor};
use crate::shape::Window;

/// Batch-norm momentum of the running statistics (official value, SPEC §8).
pub const BN_MOMENTUM: f32 = 0.9;
/// Batch-norm epsilon (official value).
pub const BN_EPSILON: f32 = 1e-5;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct ImageParams {
    c: u32,
    n: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    k: u32,
    stride: u32,
    pad_t: u32,
    pad_l: u32,
    flags: u32,
    seed: u32,
    step: u32,
    threshold: u32,
    f0: f32,
    f1: f32,
}

/// The bindings of every entry (`shaders/image.wgsl`): uniform; 1, 2 read; 3, 4, 5 read-write;
/// 6, 7 read; 8 a texture written (`max_pool_fwd_tex`). An entry binds a prefix of them.
const B9: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Read,
    Binding::Read,
    Binding::TexWrite,
];
const B4: &[Binding] = B9.split_at(5).0;
const B5: &[Binding] = B9.split_at(6).0;
const B6: &[Binding] = B9.split_at(7).0;
const B7: &[Binding] = B9.split_at(8).0;
const WG: u64 = 256;
/// Elements per invocation of the per-channel element kernels (`RUN` in the shader).
const RUN: u64 = 8;

/// `G_EPI` bits (`shaders/image.wgsl`).
const EPI_RELU: u32 = 1;
const EPI_DROPOUT: u32 = 2;
const EPI_PLUS: u32 = 4;
const EPI_FLAT: u32 = 8;

/// `v` as a u32 kernel index, or [`RiglError::TooLarge`] naming `what`.
pub(crate) fn u(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| RiglError::TooLarge {
        what: what.to_string(),
        needed: v as u64,
        unit: "elements",
        limit: u64::from(u32::MAX),
        limit_name: "u32 indexing",
    })
}

/// A one-element placeholder for a binding an entry does not use.
fn unused(ctx: &GpuContext) -> Result<Tensor> {
    // One vec4: the vec4 forms' views of a binding need 16 bytes even where they do not read it.
    Tensor::zeros(ctx, "unused binding", 4)
}

fn build(
    ctx: &GpuContext,
    entry: &'static str,
    p: &ImageParams,
    tensors: &[&Tensor],
    workgroups: u64,
) -> Result<Dispatch> {
    build_epi(ctx, entry, p, tensors, workgroups, 0)
}

/// [`build`] with the `G_EPI` bits of a fused epilogue.
fn build_epi(
    ctx: &GpuContext,
    entry: &'static str,
    p: &ImageParams,
    tensors: &[&Tensor],
    workgroups: u64,
    epi: u32,
) -> Result<Dispatch> {
    let bindings = match tensors.len() {
        7 => B7,
        6 => B6,
        5 => B5,
        _ => B4,
    };
    let spec = geometry_spec(entry, bindings, p, epi);
    Dispatch::build(ctx, &spec, bytemuck::bytes_of(p), tensors, workgroups)
}

/// The kernel spec of an image entry with its geometry (and the `G_EPI` bits) as overrides.
fn geometry_spec(
    entry: &'static str,
    bindings: &'static [Binding],
    p: &ImageParams,
    epi: u32,
) -> KernelSpec {
    let mut spec = KernelSpec::new("image", entry, bindings);
    if epi != 0 {
        spec = spec.with_override("G_EPI", f64::from(epi));
    }
    for (name, v) in [
        ("G_C", p.c),
        ("G_N", p.n),
        ("G_H", p.h),
        ("G_W", p.w),
        ("G_HO", p.ho),
        ("G_WO", p.wo),
        ("G_K", p.k),
        ("G_STRIDE", p.stride),
        ("G_PAD_T", p.pad_t),
        ("G_PAD_L", p.pad_l),
    ] {
        spec = spec.with_override(name, f64::from(v));
    }
    spec
}

/// A batch of `n` images of `c` channels, `h` by `w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Channels.
    pub c: usize,
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl ImageShape {
    /// Elements, `c*n*h*w`.
    pub fn len(&self) -> usize {
        self.c * self.n * self.h * self.w
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn params(&self) -> Result<ImageParams> {
        u(self.len(), "image tensor")?;
        Ok(ImageParams {
            c: u(self.c, "channels")?,
            n: u(self.n, "images")?,
            h: u(self.h, "height")?,
            w: u(self.w, "width")?,
            ..Default::default()
        })
    }

    /// The entry and workgroups of a per-channel element kernel (`bn_apply`, `bn_bwd_apply`):
    /// its vec4 form (`..._v4` in `shaders/image.wgsl`) where every channel's run is whole
    /// vec4s, and a workgroup per `RUN * WG` items (elements or vec4s) of one channel.
    fn per_channel_entry(&self, scalar: &'static str, v4: &'static str) -> (&'static str, u64) {
        let m = self.n * self.h * self.w;
        let (entry, items) = if m.is_multiple_of(4) {
            (v4, m / 4)
        } else {
            (scalar, m)
        };
        (entry, self.c as u64 * (items as u64).div_ceil(WG * RUN))
    }

    /// The entry of a per-channel reduction (`bn_stats`, `bn_bwd_reduce`; a workgroup per
    /// channel): its vec4 form where every channel's run is whole vec4s.
    fn reduction_entry(&self, scalar: &'static str, v4: &'static str) -> &'static str {
        if (self.n * self.h * self.w).is_multiple_of(4) {
            v4
        } else {
            scalar
        }
    }

    fn check_channels(&self, ctx: &GpuContext) -> Result<()> {
        let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
        if self.c > max {
            return Err(RiglError::TooLarge {
                what: format!("a batch norm over {} channels", self.c),
                needed: self.c as u64,
                unit: "workgroups",
                limit: max as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        Ok(())
    }
}

/// The batch norm's statistics: in training, the batch mean and variance of `x` into `stats`
/// and the running statistics moved (momentum 0.9); in evaluation, the running statistics
/// copied into `stats`. `stats` `[4C]`, `running` `[2C]`.
pub fn bn_stats(
    ctx: &GpuContext,
    s: ImageShape,
    x: &Tensor,
    stats: &Tensor,
    running: &Tensor,
    training: bool,
) -> Result<Dispatch> {
    s.check_channels(ctx)?;
    check(x, s.len(), "batch norm input")?;
    check(stats, 4 * s.c, "batch norm statistics")?;
    check(running, 2 * s.c, "batch norm running statistics")?;
    let p = bn_stats_params(s, training)?;
    let pad = unused(ctx)?;
    let entry = s.reduction_entry("bn_stats", "bn_stats_v4");
    build(ctx, entry, &p, &[x, &pad, stats, running], s.c as u64)
}

fn bn_stats_params(s: ImageShape, training: bool) -> Result<ImageParams> {
    Ok(ImageParams {
        flags: u32::from(training),
        f0: BN_MOMENTUM,
        f1: BN_EPSILON,
        ..s.params()?
    })
}

/// The parameter block that switches a [`bn_stats`] dispatch between training and evaluation
/// (for [`Dispatch::write_params`]).
pub fn bn_stats_mode(s: ImageShape, training: bool) -> Result<Vec<u8>> {
    Ok(bytemuck::bytes_of(&bn_stats_params(s, training)?).to_vec())
}

/// The parameter block of a [`dropout`] dispatch at another step (rate 0: the identity, for
/// evaluation), for [`Dispatch::write_params`].
pub fn dropout_step(len: usize, seed: u32, step: u32, layer: u32, rate: f32) -> Result<Vec<u8>> {
    Ok(bytemuck::bytes_of(&dropout_params(len, seed, step, layer, rate)?).to_vec())
}

fn dropout_params(len: usize, seed: u32, step: u32, layer: u32, rate: f32) -> Result<ImageParams> {
    Ok(ImageParams {
        c: u(len, "dropout")?,
        flags: layer,
        seed,
        step,
        threshold: (f64::from(rate) * 4_294_967_296.0).min(4_294_967_295.0) as u32,
        f0: 1.0 / (1.0 - rate),
        ..Default::default()
    })
}

/// A dropout's identity: the run seed, the step, the layer id (its position among the model's
/// dropouts) and the rate; the keep mask is [`crate::cpu::conv::dropout_mask`]'s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutKey {
    /// Run seed.
    pub seed: u32,
    /// Training step.
    pub step: u32,
    /// Layer id.
    pub layer: u32,
    /// Rate in `[0, 1)` (0: the identity, as in evaluation).
    pub rate: f32,
}

/// What a batch norm's passes apply after the normalisation, fused: `y = dropout(relu(bn(x)))`
/// with either part optional, and in the backward pass the same chain's gradient folded into the
/// batch norm's (the ReLU mask recomputed from `x`, the dropout mask from its hash).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Epilogue {
    /// A ReLU after the batch norm.
    pub relu: bool,
    /// A dropout after that.
    pub dropout: Option<DropoutKey>,
}

impl Epilogue {
    fn bits(&self) -> u32 {
        (if self.relu { EPI_RELU } else { 0 })
            | (if self.dropout.is_some() {
                EPI_DROPOUT
            } else {
                0
            })
    }

    /// The parameter block of a batch norm pass of shape `s` with this epilogue.
    fn params(&self, s: ImageShape) -> Result<ImageParams> {
        let base = ImageParams {
            f1: BN_EPSILON,
            ..s.params()?
        };
        Ok(match self.dropout {
            None => base,
            Some(k) => {
                check_rate(k.rate)?;
                let d = dropout_params(s.len(), k.seed, k.step, k.layer, k.rate)?;
                ImageParams {
                    flags: d.flags,
                    seed: d.seed,
                    step: d.step,
                    threshold: d.threshold,
                    f0: d.f0,
                    ..base
                }
            }
        })
    }
}

/// The parameter block of a [`bn_apply`] or [`bn_backward`] dispatch of shape `s` with
/// `epilogue` (its dropout at another step, or at rate 0 for evaluation), for
/// [`Dispatch::write_params`].
pub fn bn_epilogue_step(s: ImageShape, epilogue: Epilogue) -> Result<Vec<u8>> {
    Ok(bytemuck::bytes_of(&epilogue.params(s)?).to_vec())
}

fn check_rate(rate: f32) -> Result<()> {
    if !(0.0..1.0).contains(&rate) {
        return Err(RiglError::invalid(format!(
            "dropout rate must be in [0, 1), got {rate}"
        )));
    }
    Ok(())
}

/// `y = epilogue(gamma * (x - mean) / sqrt(var + eps) + beta)` with the statistics in `stats`.
pub fn bn_apply(
    ctx: &GpuContext,
    s: ImageShape,
    x: &Tensor,
    gamma_beta: &Tensor,
    y: &Tensor,
    stats: &Tensor,
    epilogue: Epilogue,
) -> Result<Dispatch> {
    check(x, s.len(), "batch norm input")?;
    check(y, s.len(), "batch norm output")?;
    check(gamma_beta, 2 * s.c, "batch norm gamma and beta")?;
    check(stats, 4 * s.c, "batch norm statistics")?;
    let (entry, workgroups) = s.per_channel_entry("bn_apply", "bn_apply_v4");
    build_epi(
        ctx,
        entry,
        &epilogue.params(s)?,
        &[x, gamma_beta, y, stats],
        workgroups,
        epilogue.bits(),
    )
}

/// The tensors of a batch norm's backward pass ([`bn_backward`]).
#[derive(Clone, Copy, Debug)]
pub struct BnGrad<'a> {
    /// The batch norm's input `x`.
    pub x: &'a Tensor,
    /// Gamma and beta `[2C]`.
    pub gamma_beta: &'a Tensor,
    /// The statistics `[4C]` the forward used; the backward's sums go to its second half.
    pub stats: &'a Tensor,
    /// The gradient of the output (after the epilogue).
    pub dy: &'a Tensor,
    /// Receives (dgamma, dbeta) per channel `[2C]`.
    pub grads: &'a Tensor,
    /// Receives the input gradient; `None`: the parameter gradients only.
    pub dx: Option<&'a Tensor>,
    /// Added to `dx` (a residual block's other contribution to its input's gradient).
    pub plus: Option<&'a Tensor>,
}

/// The batch norm's backward (training mode) through `epilogue`: `grads` := (dgamma, dbeta) per
/// channel, then, when `t.dx` is given, `dx` := the input gradient `[+ plus]`. `dy` is only read.
/// One dispatch, or two with `dx`.
pub fn bn_backward(
    ctx: &GpuContext,
    s: ImageShape,
    t: BnGrad<'_>,
    epilogue: Epilogue,
) -> Result<Vec<Dispatch>> {
    s.check_channels(ctx)?;
    check(t.x, s.len(), "batch norm input")?;
    check(t.dy, s.len(), "batch norm output gradient")?;
    check(t.gamma_beta, 2 * s.c, "batch norm gamma and beta")?;
    check(t.grads, 2 * s.c, "batch norm gradient")?;
    check(t.stats, 4 * s.c, "batch norm statistics")?;
    let p = epilogue.params(s)?;
    let bits = epilogue.bits();
    let arg_pad = unused(ctx)?;
    let mut out = vec![build_epi(
        ctx,
        s.reduction_entry("bn_bwd_reduce", "bn_bwd_reduce_v4"),
        &p,
        &[t.x, t.dy, t.grads, t.stats, &arg_pad, t.gamma_beta],
        s.c as u64,
        bits,
    )?];
    match (t.dx, t.plus) {
        (Some(dx), plus) => {
            check(dx, s.len(), "batch norm input gradient")?;
            let plus_pad = unused(ctx)?;
            let (plus, bits) = match plus {
                Some(t) => {
                    check(t, s.len(), "gradient added to the batch norm's")?;
                    (t, bits | EPI_PLUS)
                }
                None => (&plus_pad, bits),
            };
            let (entry, workgroups) = s.per_channel_entry("bn_bwd_apply", "bn_bwd_apply_v4");
            out.push(build_epi(
                ctx,
                entry,
                &p,
                &[t.x, t.gamma_beta, dx, t.stats, &arg_pad, t.dy, plus],
                workgroups,
                bits,
            )?);
        }
        (None, Some(_)) => {
            return Err(RiglError::invalid(
                "a batch norm backward adds to an input gradient it does not write",
            ))
        }
        (None, None) => {}
    }
    Ok(out)
}

fn window_params(s: ImageShape, g: Window) -> Result<(ImageParams, ImageShape)> {
    if g.n != s.n || g.h != s.h || g.w != s.w {
        return Err(RiglError::invalid(format!(
            "pooling window over {}x{}x{} does not match the input {}x{}x{}",
            g.n, g.h, g.w, s.n, s.h, s.w
        )));
    }
    let (ho, wo) = g.out().ok_or_else(|| {
        RiglError::invalid(format!(
            "a {k}x{k} pooling window does not fit a {}x{} input",
            s.h,
            s.w,
            k = g.k
        ))
    })?;
    let (pad_t, pad_l) = g.pad();
    let p = ImageParams {
        ho: u(ho, "output height")?,
        wo: u(wo, "output width")?,
        k: u(g.k, "window")?,
        stride: u(g.stride, "stride")?,
        pad_t: u(pad_t, "padding")?,
        pad_l: u(pad_l, "padding")?,
        ..s.params()?
    };
    Ok((p, ImageShape { h: ho, w: wo, ..s }))
}

/// Max pooling: `y` and, per output, the flat input index of its maximum in `arg` (u32).
pub fn max_pool(
    ctx: &GpuContext,
    s: ImageShape,
    g: Window,
    x: &Tensor,
    y: &Tensor,
    arg: &Tensor,
) -> Result<Dispatch> {
    max_pool_into(ctx, s, g, x, y, arg, false, PoolLayout::Images, None)
}

/// Max pooling of `relu(x)` in one pass: `y = max(max(x), 0)` per window (`max` and ReLU
/// commute), and in `arg` the flat input index of the maximum, or `u32::MAX` where it is `<= 0`
/// (the ReLU passes no gradient there). [`max_pool_backward`] over this `arg` is then the
/// gradient of both layers: `dx` nonzero only at argmaxes whose value was positive.
pub fn max_pool_relu(
    ctx: &GpuContext,
    s: ImageShape,
    g: Window,
    x: &Tensor,
    y: &Tensor,
    arg: &Tensor,
) -> Result<Dispatch> {
    max_pool_into(ctx, s, g, x, y, arg, true, PoolLayout::Images, None)
}

/// Where a max pooling keeps its output, its argmax and its output gradient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoolLayout {
    /// `[C, N, HO, WO]`, as every image activation.
    #[default]
    Images,
    /// Flattened, `[C*HO*WO, N]` (feature-major): a flatten after the pooling, fused.
    Flat,
}

impl PoolLayout {
    /// Its `G_EPI` bit.
    fn epi(self) -> u32 {
        match self {
            PoolLayout::Images => 0,
            PoolLayout::Flat => EPI_FLAT,
        }
    }
}

/// [`max_pool`] (`relu` false) or [`max_pool_relu`], its output and argmax in `layout`; with
/// `tex` (the flattened layout only) the output is also written to that activation texture
/// (`[C*HO*WO, N]`, N a multiple of 4), the input a compressed linear layer reads.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_into(
    ctx: &GpuContext,
    s: ImageShape,
    g: Window,
    x: &Tensor,
    y: &Tensor,
    arg: &Tensor,
    relu: bool,
    layout: PoolLayout,
    tex: Option<&Texture>,
) -> Result<Dispatch> {
    let epi = layout.epi() | if relu { EPI_RELU } else { 0 };
    let (p, o) = window_params(s, g)?;
    check(x, s.len(), "max pooling input")?;
    check(y, o.len(), "max pooling output")?;
    check(arg, o.len(), "max pooling argmax")?;
    // Unused bindings: one placeholder for the read-only ones, one for the read-write one.
    let (pad, pad2) = (unused(ctx)?, unused(ctx)?);
    let Some(t) = tex else {
        return build_epi(
            ctx,
            "max_pool_fwd",
            &p,
            &[x, &pad, y, &pad2, arg],
            (o.len() as u64).div_ceil(WG),
            epi,
        );
    };
    if layout != PoolLayout::Flat || t.rows != o.c * o.h * o.w || t.batch != s.n {
        return Err(RiglError::invalid(format!(
            "max pooling into texture '{}' ({} rows of {}): needs the flattened layout and {} \
             rows of {}",
            t.label,
            t.rows,
            t.batch,
            o.c * o.h * o.w,
            s.n
        )));
    }
    let spec = geometry_spec("max_pool_fwd_tex", B9, &p, epi);
    Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&p),
        &[
            Res::Buf(x),
            Res::Buf(&pad),
            Res::Buf(y),
            Res::Buf(&pad2),
            Res::Buf(arg),
            Res::Buf(&pad),
            Res::Buf(&pad),
            Res::Tex(t),
        ],
        (o.len() as u64 / 4).div_ceil(WG),
    )
}

/// Max pooling backward: `dx[j]` = the sum of `dy` over the outputs whose argmax is `j`. Where
/// the windows do not overlap (stride >= window) one invocation per window writes its inputs
/// (`max_pool_bwd_cells`, a quarter of the loads for 2x2 windows); elsewhere one per input
/// gathers over the windows covering it.
pub fn max_pool_backward(
    ctx: &GpuContext,
    s: ImageShape,
    g: Window,
    dy: &Tensor,
    dx: &Tensor,
    arg: &Tensor,
) -> Result<Dispatch> {
    max_pool_backward_from(ctx, s, g, dy, dx, arg, PoolLayout::Images)
}

/// [`max_pool_backward`] with `dy` and `arg` in `layout` ([`max_pool_into`]'s).
pub fn max_pool_backward_from(
    ctx: &GpuContext,
    s: ImageShape,
    g: Window,
    dy: &Tensor,
    dx: &Tensor,
    arg: &Tensor,
    layout: PoolLayout,
) -> Result<Dispatch> {
    let (p, o) = window_params(s, g)?;
    check(dy, o.len(), "max pooling output gradient")?;
    check(dx, s.len(), "max pooling input gradient")?;
    check(arg, o.len(), "max pooling argmax")?;
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    let (entry, invocations) = if g.stride >= g.k {
        let (pad_t, pad_l) = g.pad();
        let cells = (s.h + pad_t).div_ceil(g.stride) * (s.w + pad_l).div_ceil(g.stride);
        let n = s.c * s.n * cells;
        u(n, "max pooling cells")?;
        ("max_pool_bwd_cells", n)
    } else {
        ("max_pool_bwd", s.len())
    };
    build_epi(
        ctx,
        entry,
        &p,
        &[dy, &pad, dx, &pad2, arg],
        (invocations as u64).div_ceil(WG),
        layout.epi(),
    )
}

/// Average pooling over the taps inside the image (`backward`: its input gradient).
pub fn avg_pool(
    ctx: &GpuContext,
    s: ImageShape,
    g: Window,
    input: &Tensor,
    out: &Tensor,
    backward: bool,
) -> Result<Dispatch> {
    let (p, o) = window_params(s, g)?;
    let (n_in, n_out) = if backward {
        (o.len(), s.len())
    } else {
        (s.len(), o.len())
    };
    check(input, n_in, "average pooling input")?;
    check(out, n_out, "average pooling output")?;
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    let entry = if backward {
        "avg_pool_bwd"
    } else {
        "avg_pool_fwd"
    };
    build(
        ctx,
        entry,
        &p,
        &[input, &pad, out, &pad2],
        (n_out as u64).div_ceil(WG),
    )
}

/// Global average pooling `[C, N, H, W]` to `[C, N]` (`backward`: its input gradient).
pub fn global_avg_pool(
    ctx: &GpuContext,
    s: ImageShape,
    input: &Tensor,
    out: &Tensor,
    backward: bool,
) -> Result<Dispatch> {
    let pooled = s.c * s.n;
    let (n_in, n_out) = if backward {
        (pooled, s.len())
    } else {
        (s.len(), pooled)
    };
    check(input, n_in, "global average pooling input")?;
    check(out, n_out, "global average pooling output")?;
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    let entry = if backward {
        "global_avg_pool_bwd"
    } else {
        "global_avg_pool"
    };
    build(
        ctx,
        entry,
        &s.params()?,
        &[input, &pad, out, &pad2],
        (n_out as u64).div_ceil(WG),
    )
}

/// `[C, N, H, W]` to `[C*H*W, N]` (`inverse`: back).
pub fn flatten(
    ctx: &GpuContext,
    s: ImageShape,
    input: &Tensor,
    out: &Tensor,
    inverse: bool,
) -> Result<Dispatch> {
    check(input, s.len(), "flatten input")?;
    check(out, s.len(), "flatten output")?;
    let p = ImageParams {
        flags: u32::from(inverse),
        ..s.params()?
    };
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    build(
        ctx,
        "flatten",
        &p,
        &[input, &pad, out, &pad2],
        (s.len() as u64).div_ceil(WG),
    )
}

/// Dropout of `len` elements at `rate` for (seed, step, layer): `out = input * keep`, with the
/// keep mask of [`crate::cpu::conv::dropout_mask`] (the same call on the output gradient is the
/// backward pass).
#[allow(clippy::too_many_arguments)]
pub fn dropout(
    ctx: &GpuContext,
    input: &Tensor,
    out: &Tensor,
    len: usize,
    seed: u32,
    step: u32,
    layer: u32,
    rate: f32,
) -> Result<Dispatch> {
    check_rate(rate)?;
    check(input, len, "dropout input")?;
    check(out, len, "dropout output")?;
    let p = dropout_params(len, seed, step, layer, rate)?;
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    build(
        ctx,
        "dropout",
        &p,
        &[input, &pad, out, &pad2],
        (len as u64).div_ceil(WG),
    )
}

/// `out += input` over `len` elements (the residual add).
pub fn add(ctx: &GpuContext, input: &Tensor, out: &Tensor, len: usize) -> Result<Dispatch> {
    check(input, len, "add input")?;
    check(out, len, "add output")?;
    let p = ImageParams {
        c: u(len, "add")?,
        ..Default::default()
    };
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    // A vec4 at a time where the count allows (`add_v4`, same bits).
    let (entry, items) = if len.is_multiple_of(4) {
        ("add_v4", len / 4)
    } else {
        ("add", len)
    };
    build(
        ctx,
        entry,
        &p,
        &[input, &pad, out, &pad2],
        (items as u64).div_ceil(WG),
    )
}

fn elementwise(
    ctx: &GpuContext,
    entry: &'static str,
    a: &Tensor,
    b: Option<&Tensor>,
    out: &Tensor,
    len: usize,
) -> Result<Dispatch> {
    check(a, len, entry)?;
    check(out, len, entry)?;
    if let Some(b) = b {
        check(b, len, entry)?;
    }
    let p = ImageParams {
        c: u(len, entry)?,
        ..Default::default()
    };
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    build(
        ctx,
        entry,
        &p,
        &[a, b.unwrap_or(&pad), out, &pad2],
        (len as u64).div_ceil(WG),
    )
}

/// `out = max(input, 0)` over `len` elements.
pub fn relu(ctx: &GpuContext, input: &Tensor, out: &Tensor, len: usize) -> Result<Dispatch> {
    elementwise(ctx, "relu", input, None, out, len)
}

/// ReLU backward into another buffer: `dx = y > 0 ? dy : 0` (`y` the ReLU's output).
pub fn relu_backward(
    ctx: &GpuContext,
    y: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    len: usize,
) -> Result<Dispatch> {
    elementwise(ctx, "relu_bwd_to", y, Some(dy), dx, len)
}

/// `out = input` over `len` elements.
pub fn copy(ctx: &GpuContext, input: &Tensor, out: &Tensor, len: usize) -> Result<Dispatch> {
    elementwise(ctx, "copy", input, None, out, len)
}

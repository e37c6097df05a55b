//! Host side of `shaders/image.wgsl`: batch normalisation, max/average/global average pooling,
//! flatten, counter-based dropout and the residual add (CPU twins in [`crate::cpu::conv`]).
//!
//! A batch norm keeps its `gamma` and `beta` interleaved in one `[2C]` buffer (`gamma[c]` at `2c`,
//! `beta[c]` at `2c + 1`; its gradient has the same layout), its running statistics likewise
//! (`mean`, `var`), and a `[4C]` scratch for the statistics the forward used and the backward's
//! sums.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::ops::{check_len as check, Dispatch};
use crate::gpu::registry::{Binding, KernelSpec};
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

const B4: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
];
const B5: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
];
const WG: u64 = 256;

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
    Tensor::zeros(ctx, "unused binding", 1)
}

fn build(
    ctx: &GpuContext,
    entry: &'static str,
    p: &ImageParams,
    tensors: &[&Tensor],
    workgroups: u64,
) -> Result<Dispatch> {
    let bindings = if tensors.len() == 5 { B5 } else { B4 };
    let mut spec = KernelSpec::new("image", entry, bindings);
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
    Dispatch::build(ctx, &spec, bytemuck::bytes_of(p), tensors, workgroups)
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
    build(ctx, "bn_stats", &p, &[x, &pad, stats, running], s.c as u64)
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

/// `y = gamma * (x - mean) / sqrt(var + eps) + beta` with the statistics in `stats`.
pub fn bn_apply(
    ctx: &GpuContext,
    s: ImageShape,
    x: &Tensor,
    gamma_beta: &Tensor,
    y: &Tensor,
    stats: &Tensor,
) -> Result<Dispatch> {
    check(x, s.len(), "batch norm input")?;
    check(y, s.len(), "batch norm output")?;
    check(gamma_beta, 2 * s.c, "batch norm gamma and beta")?;
    check(stats, 4 * s.c, "batch norm statistics")?;
    let p = ImageParams {
        f1: BN_EPSILON,
        ..s.params()?
    };
    build(
        ctx,
        "bn_apply",
        &p,
        &[x, gamma_beta, y, stats],
        (s.len() as u64).div_ceil(WG),
    )
}

/// The batch norm's backward (training mode): `grads` `[2C]` := (dgamma, dbeta) per channel, and
/// `dy` := dx in place. Two dispatches.
pub fn bn_backward(
    ctx: &GpuContext,
    s: ImageShape,
    x: &Tensor,
    gamma_beta: &Tensor,
    dy: &Tensor,
    grads: &Tensor,
    stats: &Tensor,
) -> Result<[Dispatch; 2]> {
    s.check_channels(ctx)?;
    check(x, s.len(), "batch norm input")?;
    check(dy, s.len(), "batch norm output gradient")?;
    check(grads, 2 * s.c, "batch norm gradient")?;
    check(stats, 4 * s.c, "batch norm statistics")?;
    let p = ImageParams {
        f1: BN_EPSILON,
        ..s.params()?
    };
    let reduce = build(ctx, "bn_bwd_reduce", &p, &[x, dy, grads, stats], s.c as u64)?;
    let apply = build(
        ctx,
        "bn_bwd_apply",
        &p,
        &[x, gamma_beta, dy, stats],
        (s.len() as u64).div_ceil(WG),
    )?;
    Ok([reduce, apply])
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
    let (p, o) = window_params(s, g)?;
    check(x, s.len(), "max pooling input")?;
    check(y, o.len(), "max pooling output")?;
    check(arg, o.len(), "max pooling argmax")?;
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    build(
        ctx,
        "max_pool_fwd",
        &p,
        &[x, &pad, y, &pad2, arg],
        (o.len() as u64).div_ceil(WG),
    )
}

/// Max pooling backward: `dx[j]` = the sum of `dy` over the outputs whose argmax is `j`.
pub fn max_pool_backward(
    ctx: &GpuContext,
    s: ImageShape,
    g: Window,
    dy: &Tensor,
    dx: &Tensor,
    arg: &Tensor,
) -> Result<Dispatch> {
    let (p, o) = window_params(s, g)?;
    check(dy, o.len(), "max pooling output gradient")?;
    check(dx, s.len(), "max pooling input gradient")?;
    check(arg, o.len(), "max pooling argmax")?;
    let pad = unused(ctx)?;
    let pad2 = unused(ctx)?;
    build(
        ctx,
        "max_pool_bwd",
        &p,
        &[dy, &pad, dx, &pad2, arg],
        (s.len() as u64).div_ceil(WG),
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
    if !(0.0..1.0).contains(&rate) {
        return Err(RiglError::invalid(format!(
            "dropout rate must be in [0, 1), got {rate}"
        )));
    }
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
    build(
        ctx,
        "add",
        &p,
        &[input, &pad, out, &pad2],
        (len as u64).div_ceil(WG),
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

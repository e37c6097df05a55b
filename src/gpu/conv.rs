//! 2-D convolution forward, input gradient and weight gradient, in two forms with one CPU twin
//! ([`crate::cpu::conv`]): the direct kernels of `shaders/conv.wgsl` (portable: one invocation
//! per output value, no subgroups, no textures) and the texture GEMMs of
//! [`crate::gpu::conv_tex`] (lavapipe-shaped, on subgroups and storage textures). [`forward`],
//! [`input_grad`] and [`weight_grad`] take the texture form where the device and the shape allow
//! it ([`ConvVariant::pick`]), `RIGL_CONV=direct|texture` forcing one; the `_with` functions take
//! a given form.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch};
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::{conv_tex, image};
use crate::gpu::{GpuContext, Tensor};
use crate::shape::Window;

/// The two forms of the convolution kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvVariant {
    /// `shaders/conv.wgsl`: one invocation per output value, gathering its taps.
    Direct,
    /// [`crate::gpu::conv_tex`]: gathers into operand textures and the texture GEMM.
    Texture,
}

/// Environment variable forcing a convolution form (`direct` or `texture`).
pub const CONV_ENV: &str = "RIGL_CONV";

impl ConvVariant {
    /// Name on the command line and in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConvVariant::Direct => "direct",
            ConvVariant::Texture => "texture",
        }
    }

    /// Whether this form can run `g` on this device.
    pub fn supports(&self, ctx: &GpuContext, g: &ConvGeom) -> bool {
        match self {
            ConvVariant::Direct => true,
            ConvVariant::Texture => crate::gpu::conv_tex::supports(ctx, g),
        }
    }

    /// The form for `g`: `RIGL_CONV` when set (an error when it names no form or one that
    /// cannot run `g`), else the texture GEMMs where they can run (on every adapter measured
    /// so far they are faster: a LeNet-5 step on lavapipe from seconds to a fraction of one,
    /// docs/models.md), else the direct kernels.
    pub fn pick(ctx: &GpuContext, g: &ConvGeom) -> Result<ConvVariant> {
        match std::env::var(CONV_ENV).ok().filter(|v| !v.is_empty()) {
            Some(v) => {
                let v = match v.to_ascii_lowercase().as_str() {
                    "direct" => ConvVariant::Direct,
                    "texture" => ConvVariant::Texture,
                    other => {
                        return Err(RiglError::invalid(format!(
                            "{CONV_ENV}={other}: expected direct or texture"
                        )))
                    }
                };
                if !v.supports(ctx, g) {
                    return Err(RiglError::invalid(format!(
                        "{CONV_ENV}={}: cannot run a {}x{} convolution of {} channels to {} on                          {}x{} inputs, batch {} on {}",
                        v.as_str(),
                        g.window.k,
                        g.window.k,
                        g.cin,
                        g.cout,
                        g.window.h,
                        g.window.w,
                        g.window.n,
                        ctx.info.name
                    )));
                }
                Ok(v)
            }
            None if ConvVariant::Texture.supports(ctx, g) => Ok(ConvVariant::Texture),
            None => Ok(ConvVariant::Direct),
        }
    }
}

/// A convolution's geometry: the window over the batch of input images and the channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Images, input size, kernel, stride and padding.
    pub window: Window,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
}

impl ConvGeom {
    /// Output height and width; an error when a valid window does not fit.
    pub fn out(&self) -> Result<(usize, usize)> {
        self.window.out().ok_or_else(|| {
            RiglError::invalid(format!(
                "a {k}x{k} valid convolution does not fit a {}x{} input",
                self.window.h,
                self.window.w,
                k = self.window.k
            ))
        })
    }

    /// Elements of the input `[cin, N, H, W]`.
    pub fn input_len(&self) -> usize {
        self.cin * self.window.n * self.window.h * self.window.w
    }

    /// Elements of the output `[cout, N, Ho, Wo]`.
    pub fn output_len(&self) -> Result<usize> {
        let (ho, wo) = self.out()?;
        Ok(self.cout * self.window.n * ho * wo)
    }

    /// Elements of the weights `[k, k, cin, cout]`.
    pub fn weight_len(&self) -> usize {
        self.window.k * self.window.k * self.cin * self.cout
    }

    /// Useful FLOPs of one product (2 per multiply-add of the dense kernel).
    pub fn flops(&self) -> f64 {
        let (ho, wo) = self.out().unwrap_or((0, 0));
        2.0 * self.weight_len() as f64 * (self.window.n * ho * wo) as f64
    }

    /// The geometry as the kernels' u32 parameters, every flat index checked to fit u32.
    pub(crate) fn params(&self, flags: u32) -> Result<ConvParams> {
        let (ho, wo) = self.out()?;
        let (pad_t, pad_l) = self.window.pad();
        let g = self.window;
        if g.k == 0 || g.stride == 0 || self.cin == 0 || self.cout == 0 || g.n == 0 {
            return Err(RiglError::invalid(
                "a convolution needs images, channels, kernel and stride of at least 1",
            ));
        }
        let u = |v: usize, what: &str| image::u(v, &format!("convolution {what}"));
        // Every flat index the kernel forms must fit u32.
        u(
            self.input_len()
                .max(self.output_len()?)
                .max(self.weight_len()),
            "tensor",
        )?;
        Ok(ConvParams {
            n: u(g.n, "batch")?,
            h: u(g.h, "height")?,
            w: u(g.w, "width")?,
            cin: u(self.cin, "input channels")?,
            cout: u(self.cout, "output channels")?,
            ho: u(ho, "output height")?,
            wo: u(wo, "output width")?,
            k: u(g.k, "kernel")?,
            stride: u(g.stride, "stride")?,
            pad_t: u(pad_t, "padding")?,
            pad_l: u(pad_l, "padding")?,
            flags,
        })
    }
}

/// The uniform block of `shaders/conv.wgsl` (and the head of `conv_tex.wgsl`'s).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct ConvParams {
    pub(crate) n: u32,
    pub(crate) h: u32,
    pub(crate) w: u32,
    pub(crate) cin: u32,
    pub(crate) cout: u32,
    pub(crate) ho: u32,
    pub(crate) wo: u32,
    pub(crate) k: u32,
    pub(crate) stride: u32,
    pub(crate) pad_t: u32,
    pub(crate) pad_l: u32,
    pub(crate) flags: u32,
}

const B: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];
const WG: u64 = 256;
const BIAS_OR_ACC: u32 = 1;
const MASKED: u32 = 2;

fn check(t: &Tensor, needed: usize, what: &str) -> Result<()> {
    ops::check_len(t, needed, &format!("convolution {what}"))
}

/// The tensor-length checks of the three products, shared by both forms.
impl ConvGeom {
    pub(crate) fn check_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        mask: Option<&Tensor>,
        bias: Option<&Tensor>,
        y: &Tensor,
    ) -> Result<()> {
        check(x, self.input_len(), "input")?;
        check(w, self.weight_len(), "weights")?;
        check(y, self.output_len()?, "output")?;
        if let Some(m) = mask {
            check(m, self.weight_len(), "mask")?;
        }
        if let Some(b) = bias {
            check(b, self.cout, "bias")?;
        }
        Ok(())
    }

    pub(crate) fn check_input_grad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        mask: Option<&Tensor>,
        dx: &Tensor,
    ) -> Result<()> {
        check(dy, self.output_len()?, "output gradient")?;
        check(w, self.weight_len(), "weights")?;
        check(dx, self.input_len(), "input gradient")?;
        if let Some(m) = mask {
            check(m, self.weight_len(), "mask")?;
        }
        Ok(())
    }

    pub(crate) fn check_weight_grad(&self, x: &Tensor, dy: &Tensor, dw: &Tensor) -> Result<()> {
        check(x, self.input_len(), "input")?;
        check(dy, self.output_len()?, "output gradient")?;
        check(dw, self.weight_len(), "weight gradient")
    }
}

/// `y = conv(x, w ⊙ mask) + bias`, `y` `[cout, N, Ho, Wo]`, in the form [`ConvVariant::pick`]
/// picks.
pub fn forward(
    ctx: &GpuContext,
    g: ConvGeom,
    x: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    bias: Option<&Tensor>,
    y: &Tensor,
) -> Result<Dispatch> {
    forward_with(ctx, ConvVariant::pick(ctx, &g)?, g, x, w, mask, bias, y)
}

/// [`forward`] in a given form.
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    ctx: &GpuContext,
    variant: ConvVariant,
    g: ConvGeom,
    x: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    bias: Option<&Tensor>,
    y: &Tensor,
) -> Result<Dispatch> {
    if variant == ConvVariant::Texture {
        return conv_tex::forward(ctx, g, x, w, mask, bias, y, conv_tex::CHUNK_BYTES);
    }
    let flags =
        if mask.is_some() { MASKED } else { 0 } | if bias.is_some() { BIAS_OR_ACC } else { 0 };
    let p = g.params(flags)?;
    let n_out = g.output_len()?;
    g.check_forward(x, w, mask, bias, y)?;
    Ok(Dispatch::build(
        ctx,
        &KernelSpec::new("conv", "conv_fwd", B),
        bytemuck::bytes_of(&p),
        &[x, w, mask.unwrap_or(w), bias.unwrap_or(w), y],
        (n_out as u64).div_ceil(WG),
    )?
    .with_cost(
        g.flops(),
        4.0 * (g.input_len() + g.weight_len() + n_out) as f64,
    ))
}

/// `dx (+)= conv_transpose(dy, w ⊙ mask)`, `dx` `[cin, N, H, W]`, in the form
/// [`ConvVariant::pick`] picks.
pub fn input_grad(
    ctx: &GpuContext,
    g: ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    dx: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    input_grad_sharing(ctx, g, dy, w, mask, dx, accumulate, None)
}

/// [`input_grad`] reading `dy`'s source texture from `shared` (filled by
/// [`weight_grad_sharing`]'s launch, which must run first) where its form reads one.
#[allow(clippy::too_many_arguments)]
pub fn input_grad_sharing(
    ctx: &GpuContext,
    g: ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    dx: &Tensor,
    accumulate: bool,
    shared: Option<&conv_tex::DyRows>,
) -> Result<Dispatch> {
    let variant = ConvVariant::pick(ctx, &g)?;
    input_grad_in(ctx, variant, g, dy, w, mask, dx, accumulate, shared)
}

/// [`input_grad`] in a given form.
#[allow(clippy::too_many_arguments)]
pub fn input_grad_with(
    ctx: &GpuContext,
    variant: ConvVariant,
    g: ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    dx: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    input_grad_in(ctx, variant, g, dy, w, mask, dx, accumulate, None)
}

#[allow(clippy::too_many_arguments)]
fn input_grad_in(
    ctx: &GpuContext,
    variant: ConvVariant,
    g: ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    dx: &Tensor,
    accumulate: bool,
    shared: Option<&conv_tex::DyRows>,
) -> Result<Dispatch> {
    if variant == ConvVariant::Texture {
        return conv_tex::input_grad_sharing(
            ctx,
            g,
            dy,
            w,
            mask,
            dx,
            accumulate,
            conv_tex::CHUNK_BYTES,
            conv_tex::DgradForm::Auto,
            shared,
        );
    }
    let flags = if mask.is_some() { MASKED } else { 0 } | if accumulate { BIAS_OR_ACC } else { 0 };
    let p = g.params(flags)?;
    g.check_input_grad(dy, w, mask, dx)?;
    Ok(Dispatch::build(
        ctx,
        &KernelSpec::new("conv", "conv_dgrad", B),
        bytemuck::bytes_of(&p),
        &[dy, w, mask.unwrap_or(w), w, dx],
        (g.input_len() as u64).div_ceil(WG),
    )?
    .with_cost(
        g.flops(),
        4.0 * (g.input_len() + g.weight_len() + g.output_len()?) as f64,
    ))
}

/// `dw (+)= sum over images and outputs of dy ⊗ patch(x)`: the dense weight gradient
/// `dL/d(mask ⊙ w)` at every position, `dw` `[k, k, cin, cout]`, in the form
/// [`ConvVariant::pick`] picks.
pub fn weight_grad(
    ctx: &GpuContext,
    g: ConvGeom,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    Ok(weight_grad_sharing(ctx, g, x, dy, dw, accumulate)?.0)
}

/// [`weight_grad`], and the output gradient's source texture its launch fills where the form
/// [`ConvVariant::pick`] picks makes one, for [`input_grad_sharing`]: a layer's backward copies
/// `dy` once for both products.
pub fn weight_grad_sharing(
    ctx: &GpuContext,
    g: ConvGeom,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    accumulate: bool,
) -> Result<(Dispatch, Option<conv_tex::DyRows>)> {
    weight_grad_in(ctx, ConvVariant::pick(ctx, &g)?, g, x, dy, dw, accumulate)
}

/// [`weight_grad`] in a given form.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad_with(
    ctx: &GpuContext,
    variant: ConvVariant,
    g: ConvGeom,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    accumulate: bool,
) -> Result<Dispatch> {
    Ok(weight_grad_in(ctx, variant, g, x, dy, dw, accumulate)?.0)
}

fn weight_grad_in(
    ctx: &GpuContext,
    variant: ConvVariant,
    g: ConvGeom,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    accumulate: bool,
) -> Result<(Dispatch, Option<conv_tex::DyRows>)> {
    if variant == ConvVariant::Texture {
        return conv_tex::weight_grad_sharing(
            ctx,
            g,
            x,
            dy,
            dw,
            accumulate,
            conv_tex::CHUNK_BYTES,
            conv_tex::WgradTiles::Auto,
        );
    }
    let p = g.params(if accumulate { BIAS_OR_ACC } else { 0 })?;
    g.check_weight_grad(x, dy, dw)?;
    let d = Dispatch::build(
        ctx,
        &KernelSpec::new("conv", "conv_wgrad", B),
        bytemuck::bytes_of(&p),
        &[x, dy, x, x, dw],
        (g.weight_len() as u64).div_ceil(WG),
    )?
    .with_cost(
        g.flops(),
        4.0 * (g.input_len() + g.weight_len() + g.output_len()?) as f64,
    );
    Ok((d, None))
}

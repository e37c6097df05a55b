//! The lavapipe-shaped convolutions: each product is the texture GEMM (`shaders/gemm_tex.wgsl`)
//! on operands gathered straight from the activations and weights into its operand textures
//! (`shaders/conv_tex.wgsl`), the patch matrix never stored in a buffer. CPU twin:
//! [`crate::cpu::conv`]; the portable form is [`crate::gpu::conv`]'s direct kernels.
//!
//! - forward: `y[cout, P] = (w ⊙ mask)ᵀ[cout, K] · patches[K, P]` (P = N·Ho·Wo, K = k·k·cin; the
//!   bias as one more row of ones);
//! - input gradient: `dx[cin, Q] = wd[cin, Kd] · dpatches[Kd, Q]` (Q = N·H·W, Kd = k·k·cout: the
//!   output gradient gathered at the outputs each input feeds), or for valid and strided
//!   convolutions (whose Q exceeds P) and 1x1 ones `cols[K, P] = (w ⊙ mask)[K, cout] · dy[cout,
//!   P]` and every input summing its taps' columns (col2im, [`DgradForm`]);
//! - weight gradient: `dwᵀ[cout, K] = dy[cout, P] · patchesᵀ[P, K]`, its reduction over P split
//!   into parts summed (and transposed into `[K, cout]`) by `shaders/conv_sum.wgsl`.
//!
//! Where the geometry lets a patch texel be read straight from a copy of the activation (a
//! stride of 1 and rows of whole texels for the forward and the transposed input gradient; rows
//! of whole texels and input channels in fours for the weight gradient), the GEMM gathers it
//! itself (`gemm::ImplicitB`, `gemm::ImplicitWgrad`) and nothing is packed. Otherwise
//! positions are processed in chunks so that an operand texture stays within the device's
//! texture size and [`CHUNK_BYTES`]; a chunk is a gather and a product. Needs subgroups (as the
//! texture GEMM) and P and Q multiples of 4; [`supports`] says when.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::conv::{ConvGeom, ConvParams};
use crate::gpu::gemm::{self, tex_cols, tex_product, ImplicitB, TexOut};
use crate::gpu::ops::{Dispatch, Res};
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::texture::Texture;
use crate::gpu::{GemmShape, GemmVariant, GpuContext, Tensor};

/// Largest operand texture a convolution allocates by default (bytes; each function takes its
/// own bound): positions beyond it are done in further chunks.
pub const CHUNK_BYTES: usize = 32 << 20;

/// Rows of work items per invocation of the gathers (`ITEM_ROWS` in `shaders/conv_tex.wgsl`).
const ITEM_ROWS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct PackParams {
    /// The geometry (its `flags` unused here).
    geom: ConvParams,
    rows: u32,
    cols4: u32,
    first: u32,
    real: u32,
    blocks_x: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct SumParams {
    k: u32,
    cout: u32,
    kp: u32,
    splits: u32,
}

const PACK: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::TexWrite,
];
/// The gathers: [`PACK`] and their source texture.
const PACK_T: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::TexWrite,
    Binding::TexRead,
];
const SUM: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];
const SRC: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::TexWrite];
const COL2IM: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Col2imParams {
    q0: u32,
    texels: u32,
    ldc: u32,
    plane4: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct SrcParams {
    n: u32,
    texels: u32,
    c: u32,
    _pad: u32,
}

/// How a source texture holds an activation `[c, n, h, w]` (`shaders/conv_src.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SrcLayout {
    /// 4 positions of one image row of one channel per texel: `n·ceil(w / 4)` texels by `c·h`
    /// rows (the gathers of the forward and the input gradient, and dy for the weight gradient).
    Rows,
    /// 4 channels of one position per texel: `n·w` texels by `ceil(c / 4)·h` rows (the input for
    /// the implicit weight gradient).
    Channels4,
}

impl SrcLayout {
    /// Texture rows and texels per row for an activation `(c, n, h, w)`.
    fn size(self, (c, n, h, w): (usize, usize, usize, usize)) -> (usize, usize) {
        match self {
            SrcLayout::Rows => (c * h, n * w.div_ceil(4)),
            SrcLayout::Channels4 => (c.div_ceil(4) * h, n * w),
        }
    }

    /// Whether an activation `dims` fits such a texture on this device.
    pub(crate) fn fits(self, ctx: &GpuContext, dims: (usize, usize, usize, usize)) -> bool {
        let max = ctx.limits.max_texture_dimension_2d as usize;
        let (rows, per_row) = self.size(dims);
        rows <= max && per_row <= max
    }
}

/// The activation `src` `(c, n, h, w)` as a source texture laid out as `layout` says, and the
/// launch that fills it. Rows of whole texels (`w` a multiple of 4) read `src` a vec4 at a time
/// (the `_v4` entries; 4 channels per texel then take one invocation per 4 texels).
pub(crate) fn src_texture(
    ctx: &GpuContext,
    src: &Tensor,
    dims: (usize, usize, usize, usize),
    layout: SrcLayout,
    label: &str,
) -> Result<(Texture, Dispatch)> {
    let (c, n, h, w) = dims;
    let (rows, per_row) = layout.size(dims);
    let tex = Texture::new(ctx, label, rows, 4 * per_row)?;
    let texels = rows * per_row;
    let (entry, invocations) = match (layout, w.is_multiple_of(4)) {
        (SrcLayout::Rows, true) => ("act_to_tex_v4", texels),
        (SrcLayout::Rows, false) => ("act_to_tex", texels),
        (SrcLayout::Channels4, true) => ("act_to_tex_c4_v4", texels / 4),
        (SrcLayout::Channels4, false) => ("act_to_tex_c4", texels),
    };
    let params = SrcParams {
        n: u(n, "batch")?,
        texels: u(invocations, "texels")?,
        c: u(c, "channels")?,
        _pad: 0,
    };
    let spec = KernelSpec::new("conv_src", entry, SRC)
        .with_override("H", h as f64)
        .with_override("W", w as f64)
        .with_override("W4", w.div_ceil(4) as f64);
    let d = Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[Res::Buf(src), Res::Tex(&tex)],
        invocations.div_ceil(64) as u64,
    )?
    .with_cost(0.0, 32.0 * texels as f64);
    Ok((tex, d))
}

/// A convolution's output gradient copied into its [`SrcLayout::Rows`] source texture by a
/// launch of the weight gradient ([`weight_grad_sharing`]), for the input gradient of the same
/// backward pass to read instead of copying `dy` again ([`input_grad_sharing`]). Valid from the
/// weight gradient's launch until `dy` changes: the input gradient must run after it.
#[derive(Clone, Debug)]
pub struct DyRows {
    tex: Texture,
    dims: (usize, usize, usize, usize),
    /// The output gradient copied: its buffer and offset.
    src: (wgpu::Buffer, u64),
}

fn round4(v: usize) -> usize {
    v.div_ceil(4) * 4
}

fn u(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| RiglError::invalid(format!("convolution {what} {v} exceeds u32")))
}

/// Whether the texture path can run this convolution on this device: subgroups for the texture
/// GEMM, output and input positions in multiples of 4, and operand rows within the texture size.
pub fn supports(ctx: &GpuContext, g: &ConvGeom) -> bool {
    let Ok((ho, wo)) = g.out() else {
        return false;
    };
    let win = g.window;
    let p = win.n * ho * wo;
    let q = win.n * win.h * win.w;
    let k = round4(win.k * win.k * g.cin + 1);
    let kd = round4(win.k * win.k * g.cout);
    let max = ctx.limits.max_texture_dimension_2d as usize;
    GemmVariant::Subgroup.supports(ctx, &GemmShape::nn(4, 4, 4))
        && SrcLayout::Rows.fits(ctx, (g.cin, win.n, win.h, win.w))
        && SrcLayout::Rows.fits(ctx, (g.cout, win.n, ho, wo))
        && p.is_multiple_of(4)
        && q.is_multiple_of(4)
        && k.max(kd).max(g.cin).max(g.cout) <= max
        && tex_cols(k.max(kd)) / 4 <= max
}

/// Positions per chunk: all of them when they fit, else a multiple of 256 (the GEMM's tile)
/// such that a texture of `rows` rows of them (`as_rows`: of them as its rows, `rows` columns)
/// stays within `bytes` and the device's texture size.
fn chunk_len(ctx: &GpuContext, total: usize, rows: usize, as_rows: bool, bytes: usize) -> usize {
    let max = ctx.limits.max_texture_dimension_2d as usize;
    let by_size = if as_rows {
        max
    } else {
        // Texels per row with `tex_cols`' padding of up to 32 columns.
        4 * max.saturating_sub(8)
    };
    let cap = (bytes / (4 * rows.max(1))).min(by_size);
    if total <= cap {
        return total;
    }
    (cap / 256 * 256).max(256)
}

/// One gather launch. `rows` texture rows of `cols4` texels; `per_row` true for the entries
/// with one invocation per texture row (`pack_patch_t`), else 64 texels by [`ITEM_ROWS`] rows.
#[allow(clippy::too_many_arguments)]
fn pack(
    ctx: &GpuContext,
    entry: &'static str,
    base: PackParams,
    (rows, cols4, first, real): (usize, usize, usize, usize),
    src: &Tensor,
    mask: Option<&Tensor>,
    bias: Option<&Tensor>,
    dst: &Texture,
    srct: Option<&Texture>,
) -> Result<Dispatch> {
    let per_row = entry == "pack_patch_t";
    let blocks_x = cols4.div_ceil(64);
    let workgroups = if per_row {
        rows.div_ceil(64)
    } else {
        blocks_x * rows.div_ceil(ITEM_ROWS)
    };
    let params = PackParams {
        rows: u(rows, "rows")?,
        cols4: u(cols4, "texels")?,
        first: u(first, "first position")?,
        real: u(real, "patch rows")?,
        blocks_x: u(blocks_x, "blocks")?,
        ..base
    };
    let mut spec = KernelSpec::new(
        "conv_tex",
        entry,
        if srct.is_some() { PACK_T } else { PACK },
    )
    .with_override("MASKED", f64::from(u8::from(mask.is_some())))
    .with_override("BIAS", f64::from(u8::from(bias.is_some())));
    for (name, v) in [
        ("H", base.geom.h),
        ("W", base.geom.w),
        ("CIN", base.geom.cin),
        ("COUT", base.geom.cout),
        ("HO", base.geom.ho),
        ("WO", base.geom.wo),
        ("K", base.geom.k),
        ("STRIDE", base.geom.stride),
        ("PAD_T", base.geom.pad_t),
        ("PAD_L", base.geom.pad_l),
        ("W4", base.geom.w.div_ceil(4)),
        ("WO4", base.geom.wo.div_ceil(4)),
    ] {
        spec = spec.with_override(name, f64::from(v));
    }
    let mut res = vec![
        Res::Buf(src),
        Res::Buf(mask.unwrap_or(src)),
        Res::Buf(bias.unwrap_or(src)),
        Res::Tex(dst),
    ];
    if let Some(t) = srct {
        res.push(Res::Tex(t));
    }
    Ok(Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &res,
        workgroups as u64,
    )?
    .with_cost(0.0, 32.0 * (rows * cols4) as f64))
}

/// Whether a product over positions `qw` wide (the forward's output width, or the transposed
/// input gradient's input width) gathers its patches inside the GEMM ([`ImplicitB`]) instead of
/// packing them first: at a stride of 1 with rows of whole texels, where a patch texel is 4
/// consecutive values of one source row. Measured on lavapipe (docs/performance.md#implicit-
/// patches).
fn implicit(g: &ConvGeom, qw: usize) -> bool {
    g.window.stride == 1 && qw.is_multiple_of(4)
}

fn signed(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| RiglError::invalid(format!("convolution padding {v} exceeds i32")))
}

/// Chains launches into one dispatch: the last one, with the others encoded before it.
fn chain(mut ops: Vec<Dispatch>) -> Result<Dispatch> {
    let last = ops
        .pop()
        .ok_or_else(|| RiglError::invalid("a convolution with no launches"))?;
    let (flops, bytes) = ops
        .iter()
        .chain(std::iter::once(&last))
        .fold((0.0, 0.0), |(f, b), d| (f + d.flops, b + d.bytes));
    Ok(last.with_before(ops).with_cost(flops, bytes))
}

/// `y = conv(x, w ⊙ mask) + bias`, `y` `[cout, N, Ho, Wo]` (overwritten); operand textures of
/// at most `chunk_bytes` (but at least 256 positions).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &GpuContext,
    g: ConvGeom,
    x: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    bias: Option<&Tensor>,
    y: &Tensor,
    chunk_bytes: usize,
) -> Result<Dispatch> {
    let base = PackParams {
        geom: g.params(0)?,
        ..PackParams::default()
    };
    let (ho, wo) = g.out()?;
    let p = g.window.n * ho * wo;
    let k = g.window.k * g.window.k * g.cin;
    g.check_forward(x, w, mask, bias, y)?;
    let kp = round4(k + usize::from(bias.is_some()));
    let at = Texture::new(ctx, "convolution weights (texture)", g.cout, tex_cols(kp))?;
    let dims = (g.cin, g.window.n, g.window.h, g.window.w);
    let (xt, to_tex) = src_texture(ctx, x, dims, SrcLayout::Rows, "convolution input (texture)")?;
    let mut ops = vec![
        to_tex,
        pack(
            ctx,
            "pack_wt",
            base,
            (g.cout, kp / 4, 0, k),
            w,
            mask,
            bias,
            &at,
            None,
        )?,
    ];
    if implicit(&g, wo) {
        let (pad_t, pad_l) = g.window.pad();
        let b = ImplicitB {
            qh: ho,
            qw: wo,
            sh: g.window.h,
            sw4: g.window.w.div_ceil(4),
            sc: g.cin,
            k: g.window.k,
            off_t: -signed(pad_t)?,
            off_l: -signed(pad_l)?,
            sign: 1,
            real: k,
            bias_row: bias.is_some(),
        };
        ops.push(gemm::tex_product_implicit(
            ctx,
            (g.cout, p, kp),
            &at,
            &xt,
            y,
            false,
            b,
        )?);
        return chain(ops);
    }
    let chunk = chunk_len(ctx, p, kp, false, chunk_bytes);
    let bt = Texture::new(ctx, "convolution patches (texture)", kp, tex_cols(chunk))?;
    for first in (0..p).step_by(chunk) {
        let len = chunk.min(p - first);
        ops.push(pack(
            ctx,
            "pack_patch",
            base,
            (kp, len / 4, first, k),
            x,
            None,
            bias,
            &bt,
            Some(&xt),
        )?);
        ops.push(tex_product(
            ctx,
            (g.cout, len, kp),
            &at,
            &bt,
            y,
            false,
            TexOut {
                ldc4: p / 4,
                c_off4: first / 4,
                ksplit4: 0,
                narrow: false,
            },
        )?);
    }
    chain(ops)
}

/// How the texture path computes a convolution's input gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DgradForm {
    /// [`DgradForm::Transposed`] where the GEMM gathers its patches itself (a stride of 1 and
    /// input rows of whole texels); else [`DgradForm::Col2im`] where its product is smaller
    /// than the transposed convolution's (more input positions than output positions: a valid
    /// or strided convolution) or its sum is one tap (1x1), and its chunks of whole images fit;
    /// else [`DgradForm::Transposed`]. What training runs. Measured on lavapipe
    /// (docs/performance.md): col2im against the packed transposed form, LeNet-5's `conv2` 50
    /// to 21 ms, a 3x3 stride-2 32-to-64 one at 32x32 222 to 70 ms, a 1x1 47 to 29 ms (3x3 same
    /// convolutions gain nothing, -8% to +11%); the implicit transposed form against col2im,
    /// LeNet-5's `conv2` 30-38 to 23-24 ms, a 1x1 16-to-32 at 32x32 level (29-39 against 33-34).
    Auto,
    /// The transposed convolution: `dx[cin, Q] = wd[cin, k·k·cout] · dpatches[k·k·cout, Q]` over
    /// the output gradient gathered at the outputs each input feeds (Q = N·H·W input positions;
    /// for a valid or strided convolution most of the gathered values are zeros).
    Transposed,
    /// `cols[k·k·cin, P] = (w ⊙ mask)[k·k·cin, cout] · dy[cout, P]` (P = N·Ho·Wo output
    /// positions: the forward's work), then every input sums the taps that read it
    /// (`shaders/conv_col2im.wgsl`). Needs chunks of whole images ([`col2im_fits`]).
    Col2im,
}

/// Images per chunk of the col2im input gradient within `chunk_bytes` (its columns buffer and
/// output-gradient texture), `None` where no chunk of whole images keeps every chunk's positions
/// a multiple of 4 or its operands within the device's texture size.
fn col2im_images(ctx: &GpuContext, g: &ConvGeom, chunk_bytes: usize) -> Option<usize> {
    let (ho, wo) = g.out().ok()?;
    let win = g.window;
    let (plane_o, plane_i) = (ho * wo, win.h * win.w);
    let k = win.k * win.k * g.cin;
    let coutp = round4(g.cout);
    let max = ctx.limits.max_texture_dimension_2d as usize;
    if k > max || coutp > max || tex_cols(coutp) / 4 > max {
        return None;
    }
    let cap = chunk_len(ctx, win.n * plane_o, k.max(coutp), false, chunk_bytes);
    let imgs = (cap / plane_o).min(win.n);
    if imgs == win.n {
        // One chunk: P and Q are multiples of 4 wherever the texture path runs.
        return Some(imgs);
    }
    let imgs = if plane_o.is_multiple_of(4) && plane_i.is_multiple_of(4) {
        imgs
    } else if win.n.is_multiple_of(4) {
        // Chunks of a multiple of 4 images, the last one's too.
        imgs / 4 * 4
    } else {
        return None;
    };
    (imgs > 0 && tex_cols(imgs * plane_o) / 4 <= max).then_some(imgs)
}

/// Whether [`DgradForm::Col2im`] can run this convolution in chunks of at most `chunk_bytes`.
pub fn col2im_fits(ctx: &GpuContext, g: &ConvGeom, chunk_bytes: usize) -> bool {
    supports(ctx, g) && col2im_images(ctx, g, chunk_bytes).is_some()
}

/// `dx (+)= conv_transpose(dy, w ⊙ mask)`, `dx` `[cin, N, H, W]`, in `form` (training: `Auto`).
#[allow(clippy::too_many_arguments)]
pub fn input_grad(
    ctx: &GpuContext,
    g: ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    dx: &Tensor,
    accumulate: bool,
    chunk_bytes: usize,
    form: DgradForm,
) -> Result<Dispatch> {
    input_grad_sharing(ctx, g, dy, w, mask, dx, accumulate, chunk_bytes, form, None)
}

/// [`input_grad`] reading `dy`'s source texture from `shared` where its form reads one (the
/// transposed forms; col2im reads `dy` itself), instead of copying `dy` into its own.
#[allow(clippy::too_many_arguments)]
pub fn input_grad_sharing(
    ctx: &GpuContext,
    g: ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    dx: &Tensor,
    accumulate: bool,
    chunk_bytes: usize,
    form: DgradForm,
    shared: Option<&DyRows>,
) -> Result<Dispatch> {
    g.check_input_grad(dy, w, mask, dx)?;
    let (ho, wo) = g.out()?;
    let dims = (g.cout, g.window.n, ho, wo);
    if let Some(d) = shared {
        if d.dims != dims || d.src != (dy.buffer.clone(), dy.offset) {
            return Err(RiglError::invalid(format!(
                "the input gradient over {} {dims:?} given the source texture of another \
                 output gradient ({:?})",
                dy.label, d.dims
            )));
        }
    }
    let images = col2im_images(ctx, &g, chunk_bytes);
    let images = match form {
        DgradForm::Transposed => None,
        DgradForm::Auto => images.filter(|_| {
            !implicit(&g, g.window.w) && (g.window.h * g.window.w > ho * wo || g.window.k == 1)
        }),
        DgradForm::Col2im => Some(images.ok_or_else(|| {
            RiglError::invalid(format!(
                "col2im input gradient of a {}x{} convolution over {}x{}: no chunk of whole \
                 images fits {chunk_bytes} bytes with positions in multiples of 4",
                g.window.k, g.window.k, g.window.h, g.window.w
            ))
        })?),
    };
    if let Some(images) = images {
        return input_grad_col2im(ctx, g, dy, w, mask, dx, accumulate, images);
    }
    let base = PackParams {
        geom: g.params(0)?,
        ..PackParams::default()
    };
    let q = g.input_len() / g.cin;
    let kd = g.window.k * g.window.k * g.cout;
    let kdp = round4(kd);
    let at = Texture::new(ctx, "convolution weights (texture)", g.cin, tex_cols(kdp))?;
    let mut ops = Vec::new();
    let dyt = match shared {
        Some(d) => d.tex.clone(),
        None => {
            let (dyt, to_tex) = src_texture(
                ctx,
                dy,
                dims,
                SrcLayout::Rows,
                "convolution output gradient (source)",
            )?;
            ops.push(to_tex);
            dyt
        }
    };
    ops.push(pack(
        ctx,
        "pack_wd",
        base,
        (g.cin, kdp / 4, 0, kd),
        w,
        mask,
        None,
        &at,
        None,
    )?);
    if implicit(&g, g.window.w) {
        let (pad_t, pad_l) = g.window.pad();
        let b = ImplicitB {
            qh: g.window.h,
            qw: g.window.w,
            sh: ho,
            sw4: wo.div_ceil(4),
            sc: g.cout,
            k: g.window.k,
            off_t: signed(pad_t)?,
            off_l: signed(pad_l)?,
            sign: -1,
            real: kd,
            bias_row: false,
        };
        ops.push(gemm::tex_product_implicit(
            ctx,
            (g.cin, q, kdp),
            &at,
            &dyt,
            dx,
            accumulate,
            b,
        )?);
        return chain(ops);
    }
    let chunk = chunk_len(ctx, q, kdp, false, chunk_bytes);
    let bt = Texture::new(
        ctx,
        "convolution output gradient (texture)",
        kdp,
        tex_cols(chunk),
    )?;
    for first in (0..q).step_by(chunk) {
        let len = chunk.min(q - first);
        ops.push(pack(
            ctx,
            "pack_dpatch",
            base,
            (kdp, len / 4, first, kd),
            dy,
            None,
            None,
            &bt,
            Some(&dyt),
        )?);
        ops.push(tex_product(
            ctx,
            (g.cin, len, kdp),
            &at,
            &bt,
            dx,
            accumulate,
            TexOut {
                ldc4: q / 4,
                c_off4: first / 4,
                ksplit4: 0,
                narrow: false,
            },
        )?);
    }
    chain(ops)
}

/// [`DgradForm::Col2im`] in chunks of `images` whole images: per chunk, the output gradient's
/// rows into a texture, the product into the columns buffer and the col2im sum into `dx`.
#[allow(clippy::too_many_arguments)]
fn input_grad_col2im(
    ctx: &GpuContext,
    g: ConvGeom,
    dy: &Tensor,
    w: &Tensor,
    mask: Option<&Tensor>,
    dx: &Tensor,
    accumulate: bool,
    images: usize,
) -> Result<Dispatch> {
    let base = PackParams {
        geom: g.params(0)?,
        ..PackParams::default()
    };
    let win = g.window;
    let (ho, wo) = g.out()?;
    let (plane_o, plane_i) = (ho * wo, win.h * win.w);
    let k = win.k * win.k * g.cin;
    let coutp = round4(g.cout);
    let chunk = images * plane_o;
    let at = Texture::new(ctx, "convolution weights (texture)", k, tex_cols(coutp))?;
    let bt = Texture::new(
        ctx,
        "convolution output gradient (texture)",
        coutp,
        tex_cols(chunk),
    )?;
    let cols = Tensor::zeros(ctx, "convolution input gradient columns", k * chunk)?;
    let mut ops = vec![pack(
        ctx,
        "pack_w",
        base,
        (k, coutp / 4, 0, g.cout),
        w,
        mask,
        None,
        &at,
        None,
    )?];
    let mut spec = KernelSpec::new("conv_col2im", "col2im", COL2IM)
        .with_override("ACCUMULATE", f64::from(u8::from(accumulate)));
    for (name, v) in [
        ("H", win.h),
        ("W", win.w),
        ("HO", ho),
        ("WO", wo),
        ("K", win.k),
        ("STRIDE", win.stride),
        ("PAD_T", base.geom.pad_t as usize),
        ("PAD_L", base.geom.pad_l as usize),
        ("CIN", g.cin),
    ] {
        spec = spec.with_override(name, v as f64);
    }
    for img0 in (0..win.n).step_by(images) {
        let count = images.min(win.n - img0);
        let len = count * plane_o;
        ops.push(pack(
            ctx,
            "pack_rows",
            base,
            (coutp, len / 4, img0 * plane_o, 0),
            dy,
            None,
            None,
            &bt,
            None,
        )?);
        ops.push(tex_product(
            ctx,
            (k, len, coutp),
            &at,
            &bt,
            &cols,
            false,
            TexOut {
                ldc4: len / 4,
                c_off4: 0,
                ksplit4: 0,
                narrow: false,
            },
        )?);
        let texels = count * plane_i / 4;
        let params = Col2imParams {
            q0: u(img0 * plane_i, "first input position")?,
            texels: u(texels, "texels")?,
            ldc: u(len, "positions")?,
            plane4: u(win.n * plane_i / 4, "positions")?,
        };
        ops.push(
            Dispatch::build(
                ctx,
                &spec,
                bytemuck::bytes_of(&params),
                &[&cols, dx],
                (g.cin * texels).div_ceil(64) as u64,
            )?
            .with_cost(0.0, 4.0 * (k * len + 4 * g.cin * texels) as f64),
        );
    }
    chain(ops)
}

/// How a weight gradient's product over `len` positions on `tiles` tiles splits its reduction:
/// enough (tile, split) pairs to keep 64 workgroups busy, each split at least 256 positions per
/// part long (`subs` parts per split: 8 on narrow tiles, one per subgroup). Returns the split's
/// length (a multiple of 4) and the partial products it writes.
fn split_plan(tiles: usize, len: usize, subs: usize) -> (usize, usize) {
    let splits = 64usize
        .div_ceil(tiles)
        .clamp(1, (len / (256 * subs)).max(1));
    let split_len = round4(len.div_ceil(splits));
    (split_len, len.div_ceil(split_len) * subs)
}

/// The tiles of a weight gradient's texture products (`gemm_tex.wgsl`): `Auto` (what training
/// runs) takes the narrow ones where `gemm::narrow_tiles` says they fit the product better;
/// tests force either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgradTiles {
    /// Narrow where the adapter allows and the columns fit them better, wide otherwise.
    Auto,
    /// 256 columns, every adapter.
    Wide,
    /// 32 columns, k split 8 ways per workgroup; adapters with subgroups of exactly 8.
    Narrow,
}

/// `dw (+)= Σ over positions of dy ⊗ patch(x)`: the dense weight gradient `dL/d(mask ⊙ w)` at
/// every position, `dw` `[k, k, cin, cout]`, its products on `tiles` (training: `Auto`).
#[allow(clippy::too_many_arguments)]
pub fn weight_grad(
    ctx: &GpuContext,
    g: ConvGeom,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    accumulate: bool,
    chunk_bytes: usize,
    tiles: WgradTiles,
) -> Result<Dispatch> {
    Ok(weight_grad_sharing(ctx, g, x, dy, dw, accumulate, chunk_bytes, tiles)?.0)
}

/// [`weight_grad`], and the source texture of `dy` its launch fills where its form makes one
/// (the implicit weight gradient), for [`input_grad_sharing`].
#[allow(clippy::too_many_arguments)]
pub fn weight_grad_sharing(
    ctx: &GpuContext,
    g: ConvGeom,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    accumulate: bool,
    chunk_bytes: usize,
    tiles: WgradTiles,
) -> Result<(Dispatch, Option<DyRows>)> {
    let base = PackParams {
        geom: g.params(0)?,
        ..PackParams::default()
    };
    let p = g.output_len()? / g.cout;
    let k = g.window.k * g.window.k * g.cin;
    g.check_weight_grad(x, dy, dw)?;
    let kp = round4(k);
    let (ho, wo) = g.out()?;
    let win = g.window;
    let implicit = implicit_wgrad(ctx, &g, ho, wo);
    let narrow = match tiles {
        // Gathered in the product, the narrow tiles (every lane on a real column) win up to
        // 576 columns (288: 102 / 105 to 80 / 84 ms; 576: 62 / 65 to 54 / 55 ms on lavapipe),
        // not at 1,152 (48 / 49 to 49 / 67 ms); packed, only up to 128 (the packing dominates).
        WgradTiles::Auto if implicit => gemm::narrow_tiles_supported(ctx) && kp <= 576,
        WgradTiles::Auto => gemm::narrow_tiles(ctx, kp),
        WgradTiles::Wide => false,
        WgradTiles::Narrow => true,
    };
    // Narrow tiles: 32 columns, and each split again in 8 parts, one per subgroup.
    let (tile_cols, subs) = if narrow { (32, 8) } else { (256, 1) };
    let tiles = g.cout.div_ceil(32) * kp.div_ceil(tile_cols);
    if implicit {
        let (split_len, slots) = split_plan(tiles, p, subs);
        let part = Tensor::zeros(
            ctx,
            "convolution weight gradient parts",
            slots * g.cout * kp,
        )?;
        let dy_dims = (g.cout, win.n, ho, wo);
        let (dyt, dy_tex) = src_texture(
            ctx,
            dy,
            dy_dims,
            SrcLayout::Rows,
            "convolution output gradient (source)",
        )?;
        let (x4t, x_tex) = src_texture(
            ctx,
            x,
            (g.cin, win.n, win.h, win.w),
            SrcLayout::Channels4,
            "convolution input (4-channel texture)",
        )?;
        let (pad_t, pad_l) = win.pad();
        let w = gemm::ImplicitWgrad {
            ho,
            wo,
            h: win.h,
            w: win.w,
            cin: g.cin,
            k: win.k,
            stride: win.stride,
            pad_t: signed(pad_t)?,
            pad_l: signed(pad_l)?,
        };
        let out = TexOut {
            ldc4: kp / 4,
            c_off4: 0,
            ksplit4: split_len / 4,
            narrow,
        };
        let product = gemm::tex_product_wgrad(ctx, (g.cout, kp, p), &dyt, &x4t, &part, out, w)?;
        let sum = wgrad_sum(ctx, &g, &part, dw, slots, accumulate)?;
        let shared = DyRows {
            tex: dyt,
            dims: dy_dims,
            src: (dy.buffer.clone(), dy.offset),
        };
        return Ok((chain(vec![dy_tex, x_tex, product, sum])?, Some(shared)));
    }
    // Both operands hold a chunk of positions: dy's rows as columns, the patches as rows.
    let chunk = chunk_len(ctx, p, kp.max(g.cout), true, chunk_bytes);
    let at = Texture::new(
        ctx,
        "convolution output gradient (texture)",
        g.cout,
        tex_cols(chunk),
    )?;
    let bt = Texture::new(ctx, "convolution patches (texture)", chunk, tex_cols(kp))?;
    let mut plan = Vec::new();
    for first in (0..p).step_by(chunk) {
        let len = chunk.min(p - first);
        let (split_len, parts) = split_plan(tiles, len, subs);
        plan.push((first, len, split_len, parts));
    }
    let slots: usize = plan.iter().map(|c| c.3).sum();
    let part = Tensor::zeros(
        ctx,
        "convolution weight gradient parts",
        slots * g.cout * kp,
    )?;
    let dims = (g.cin, g.window.n, g.window.h, g.window.w);
    let (xt, to_tex) = src_texture(ctx, x, dims, SrcLayout::Rows, "convolution input (texture)")?;
    let mut ops = vec![to_tex];
    let mut slot = 0;
    for (first, len, split_len, splits) in plan {
        ops.push(pack(
            ctx,
            "pack_rows",
            base,
            (g.cout, len / 4, first, 0),
            dy,
            None,
            None,
            &at,
            None,
        )?);
        ops.push(pack(
            ctx,
            "pack_patch_t",
            base,
            (len, kp / 4, first, k),
            x,
            None,
            None,
            &bt,
            Some(&xt),
        )?);
        ops.push(tex_product(
            ctx,
            (g.cout, kp, len),
            &at,
            &bt,
            &part,
            false,
            TexOut {
                ldc4: kp / 4,
                c_off4: slot * g.cout * kp / 4,
                ksplit4: split_len / 4,
                narrow,
            },
        )?);
        slot += splits;
    }
    ops.push(wgrad_sum(ctx, &g, &part, dw, slots, accumulate)?);
    Ok((chain(ops)?, None))
}

/// Whether the weight gradient gathers both operands inside the GEMM
/// ([`gemm::ImplicitWgrad`]) instead of packing them: output rows of whole texels, input
/// channels in multiples of 4 and both source textures within the device's size.
fn implicit_wgrad(ctx: &GpuContext, g: &ConvGeom, ho: usize, wo: usize) -> bool {
    let win = g.window;
    wo.is_multiple_of(4)
        && g.cin.is_multiple_of(4)
        && SrcLayout::Rows.fits(ctx, (g.cout, win.n, ho, wo))
        && SrcLayout::Channels4.fits(ctx, (g.cin, win.n, win.h, win.w))
}

/// The launch summing the weight gradient's `slots` parts `[slot][cout][kp]` (and transposing
/// them) into `dw` `[k·k·cin, cout]`.
fn wgrad_sum(
    ctx: &GpuContext,
    g: &ConvGeom,
    part: &Tensor,
    dw: &Tensor,
    slots: usize,
    accumulate: bool,
) -> Result<Dispatch> {
    let k = g.window.k * g.window.k * g.cin;
    let params = SumParams {
        k: u(k, "patch rows")?,
        cout: u(g.cout, "output channels")?,
        kp: u(round4(k), "padded patch rows")?,
        splits: u(slots, "splits")?,
    };
    let spec = KernelSpec::new("conv_sum", "conv_wgrad_sum", SUM)
        .with_override("ACCUMULATE", f64::from(u8::from(accumulate)));
    Ok(Dispatch::build(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[part, dw],
        (k * g.cout).div_ceil(64) as u64,
    )?
    .with_cost(0.0, 4.0 * ((slots + 1) * k * g.cout) as f64))
}

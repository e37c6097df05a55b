//! Host side of the compressed sparse kernels: SpMM (`shaders/spmm.wgsl`) for the forward product
//! and the input gradient, SDDMM (`shaders/sddmm.wgsl`) for the weight gradient at active
//! positions, and the index rebuild of a mask update (`shaders/csr.wgsl`). CPU twins in
//! [`crate::cpu::sparse`]; the index layout in [`crate::sparse::csr`].

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::ops::{Dispatch, Res};
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::texture::{meta_texture, Texture, META_WIDTH};
use crate::gpu::{GpuContext, Tensor};

/// Most batch vec4s per invocation in the SpMM (`V` in `spmm.wgsl`).
const V: usize = 16;

/// Whether this adapter can run the compressed sparse kernels (subgroups of 8 to 64 lanes),
/// and if not, why.
pub fn support(ctx: &GpuContext) -> std::result::Result<(), String> {
    if !ctx.features.contains(wgpu::Features::SUBGROUP) {
        return Err(format!(
            "adapter '{}' has no subgroup operations",
            ctx.info.name
        ));
    }
    if ctx.limits.max_storage_textures_per_shader_stage < 5 {
        return Err(format!(
            "adapter '{}' binds {} storage textures per shader stage (the sparse kernels need 5)",
            ctx.info.name, ctx.limits.max_storage_textures_per_shader_stage
        ));
    }
    if ctx.info.subgroup_min_size < 8 || ctx.info.subgroup_max_size > 64 {
        return Err(format!(
            "adapter '{}' has subgroups of {} to {} lanes (the sparse kernels need 8 to 64)",
            ctx.info.name, ctx.info.subgroup_min_size, ctx.info.subgroup_max_size
        ));
    }
    Ok(())
}

/// Whether a batch size suits the sparse kernels (vec4 loads along the batch).
pub fn batch_supported(batch: usize) -> bool {
    batch.is_multiple_of(4)
}

/// Shape of one compressed sparse layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseShape {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// Active weights (slots).
    pub nnz: usize,
    /// Samples per product (a multiple of 4).
    pub batch: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SpParams {
    rows: u32,
    b4: u32,
    out_dim: u32,
    nnz: u32,
    ptr_off: u32,
    blocks: u32,
    _pad: [u32; 2],
}

/// Workgroup width, vec4s per lane and batch blocks of WG x V vec4s of the SpMM: the narrowest
/// workgroup (at least one subgroup of `sg` lanes) whose lanes cover the batch with at most V
/// vec4s each, so each nonzero's metadata is loaded by as few subgroups as possible.
fn layout(b4: usize, sg: usize) -> (u32, usize, usize) {
    let wg = (8 * b4.div_ceil(8 * V)).clamp(sg.clamp(8, 64), 64);
    let v = b4.div_ceil(wg).clamp(1, V);
    (wg as u32, v, b4.div_ceil(wg * v))
}

fn check(ctx: &GpuContext, s: &SparseShape, idx: &Tensor, what: &str) -> Result<()> {
    support(ctx).map_err(RiglError::invalid)?;
    if !batch_supported(s.batch) {
        return Err(RiglError::invalid(format!(
            "{what}: batch {} is not a multiple of 4 (the sparse kernels load 4 samples at once)",
            s.batch
        )));
    }
    let need = crate::sparse::csr::CsrIndex::words_len(s.in_dim, s.out_dim, s.nnz);
    if idx.len < need {
        return Err(RiglError::invalid(format!(
            "{what}: index '{}' has {} words, the layer needs {need}",
            idx.label, idx.len
        )));
    }
    Ok(())
}

fn check_meta(t: &Texture, nnz: usize, what: &str) -> Result<()> {
    if t.rows * META_WIDTH < nnz {
        return Err(RiglError::invalid(format!(
            "{what}: texture '{}' holds {} nonzeros, needs {nnz}",
            t.label,
            t.rows * META_WIDTH
        )));
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MetaParams {
    nnz: u32,
    out_dim: u32,
    slot0: u32,
    _pad: u32,
}

/// Writes the metadata textures of a layer from its index (`shaders/sparse_meta.wgsl`): `fwd`
/// for the forward product, `bwd` (when the input gradient is needed) for the input gradient,
/// and the layer's values into the model's value texture `values` from texel `slot0`. Runs at
/// load and after every mask update; the optimizer keeps `values` current between them.
#[allow(clippy::too_many_arguments)]
pub fn meta(
    ctx: &GpuContext,
    s: SparseShape,
    idx: &Tensor,
    vals: &Tensor,
    slot0: usize,
    values: &Texture,
    fwd: &Texture,
    bwd: Option<&Texture>,
) -> Result<Dispatch> {
    check_meta(values, slot0 + s.nnz, "value texture")?;
    check(ctx, &s, idx, "sparse metadata")?;
    check_len(vals, s.nnz, "sparse metadata values")?;
    check_meta(fwd, s.nnz, "forward metadata")?;
    if let Some(b) = bwd {
        check_meta(b, s.nnz, "backward metadata")?;
    }
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::Read,
        Binding::MetaWrite,
        Binding::MetaWrite,
        Binding::MetaWrite,
    ];
    let dummy;
    let bwd_t = match bwd {
        Some(b) => b,
        None => {
            dummy = meta_texture(ctx, "metadata placeholder", 1)?;
            &dummy
        }
    };
    let params = MetaParams {
        nnz: s.nnz as u32,
        out_dim: s.out_dim as u32,
        slot0: slot0 as u32,
        _pad: 0,
    };
    let spec = KernelSpec::new("sparse_meta", "sparse_meta", B)
        .with_override("BWD", f64::from(u8::from(bwd.is_some())));
    Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[
            Res::Buf(idx),
            Res::Buf(vals),
            Res::Tex(fwd),
            Res::Tex(bwd_t),
            Res::Tex(values),
        ],
        (s.nnz.max(1) as u64).div_ceil(64),
    )
}

fn check_tex(t: &Texture, rows: usize, batch: usize, what: &str) -> Result<()> {
    if t.rows != rows || t.batch != batch {
        return Err(RiglError::invalid(format!(
            "{what}: texture '{}' holds {} rows of {} samples, needs {rows} of {batch}",
            t.label, t.rows, t.batch
        )));
    }
    Ok(())
}

/// How an elementwise kernel of `shaders/sparse_act.wgsl` treats its buffer before writing the
/// texture copy.
#[derive(Clone, Copy, Debug)]
pub enum PackOp<'a> {
    /// Copy only.
    Copy,
    /// `y = act(y + bias[row])` (ReLU when the flag is set).
    BiasAct(&'a Tensor, bool),
    /// `y = a > 0 ? y : 0` with `a` the ReLU output.
    ReluBwd(&'a Tensor),
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PackParams {
    n4: u32,
    b4: u32,
    relu: u32,
    _pad: u32,
}

/// A dispatch that copies the activation texture `t` into `y` `[rows, B]`.
pub fn unpack(ctx: &GpuContext, t: &Texture, y: &Tensor) -> Result<Dispatch> {
    pack_impl(ctx, "unpack", PackOp::Copy, y, t)
}

/// A dispatch that applies `op` to `y` `[rows, B]` in place and writes the result to `t`.
pub fn pack(ctx: &GpuContext, op: PackOp<'_>, y: &Tensor, t: &Texture) -> Result<Dispatch> {
    let entry = match op {
        PackOp::Copy => "pack",
        PackOp::BiasAct(..) => "bias_act_pack",
        PackOp::ReluBwd(_) => "relu_bwd_pack",
    };
    pack_impl(ctx, entry, op, y, t)
}

fn pack_impl(
    ctx: &GpuContext,
    entry: &'static str,
    op: PackOp<'_>,
    y: &Tensor,
    t: &Texture,
) -> Result<Dispatch> {
    let (rows, b) = (t.rows, t.batch);
    check_len(y, rows * b, "pack buffer")?;
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
        Binding::TexWrite,
        Binding::TexRead,
    ];
    let dummy = || Tensor::zeros(ctx, "pack placeholder", 64);
    let (bias, a, relu) = match op {
        PackOp::Copy => (dummy()?, dummy()?, false),
        PackOp::BiasAct(bias, relu) => {
            check_len(bias, rows, "pack bias")?;
            (bias.clone(), dummy()?, relu)
        }
        PackOp::ReluBwd(a) => {
            check_len(a, rows * b, "pack ReLU output")?;
            (dummy()?, a.clone(), false)
        }
    };
    // The unpack reads `t` and writes a placeholder texture (a texture may not be bound for
    // reading and writing at once); the others write `t` and read a placeholder.
    let other = Texture::new(ctx, "pack placeholder", 1, 4)?;
    let (wt, rt) = if entry == "unpack" {
        (&other, t)
    } else {
        (t, &other)
    };
    let n4 = rows * b / 4;
    let params = PackParams {
        n4: n4 as u32,
        b4: (b / 4) as u32,
        relu: u32::from(relu),
        _pad: 0,
    };
    let spec = KernelSpec::new("sparse_act", entry, B);
    Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[
            Res::Buf(&bias),
            Res::Buf(y),
            Res::Buf(&a),
            Res::Tex(wt),
            Res::Tex(rt),
        ],
        (n4 as u64).div_ceil(64),
    )
}

fn check_len(t: &Tensor, n: usize, what: &str) -> Result<()> {
    if t.len < n {
        return Err(RiglError::invalid(format!(
            "{what}: '{}' has {} elements, needs {n}",
            t.label, t.len
        )));
    }
    Ok(())
}

/// What [`spmm_stores`] does to the product before storing it.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// Store the product.
    None,
    /// `act(product + bias[row])`, ReLU when `relu`.
    BiasAct {
        /// Per output row.
        bias: &'a Tensor,
        /// Apply ReLU.
        relu: bool,
    },
    /// `a > 0 ? product : 0`: the ReLU backward of the layer whose output `a` is (its texture).
    ReluMask(&'a Texture),
}

/// `y = W x` through the forward index (`forward`), or `y = Wᵀ x` through the input rows
/// (`!forward`: x is the output gradient `[out, B]`, y the input gradient `[in, B]`). `x` is read
/// from its activation texture.
pub fn spmm(
    ctx: &GpuContext,
    s: SparseShape,
    idx: &Tensor,
    meta: &Metadata<'_>,
    x: &Texture,
    y: &Tensor,
    forward: bool,
) -> Result<Dispatch> {
    spmm_stores(ctx, s, idx, meta, x, y, forward, Epilogue::None, None, true)
}

/// What a sparse product reads its nonzeros from: the per-layer metadata texture of the
/// product's direction (written by [`meta`]) and the model's value texture.
#[derive(Clone, Copy, Debug)]
pub struct Metadata<'a> {
    /// (column, slot) per nonzero in the product's order.
    pub index: &'a Texture,
    /// Value bits per slot of the model.
    pub values: &'a Texture,
}

/// [`spmm`] with an epilogue fused into the store (see [`Epilogue`]), the result also written to
/// the texture `t` when given, and to `y` only when `store_buffer` (else `y` is only checked and
/// bound).
#[allow(clippy::too_many_arguments)]
pub fn spmm_stores(
    ctx: &GpuContext,
    s: SparseShape,
    idx: &Tensor,
    meta: &Metadata<'_>,
    x: &Texture,
    y: &Tensor,
    forward: bool,
    epilogue: Epilogue<'_>,
    t: Option<&Texture>,
    store_buffer: bool,
) -> Result<Dispatch> {
    if !store_buffer && t.is_none() {
        return Err(RiglError::invalid(
            "spmm: a product stored nowhere (no buffer and no texture)",
        ));
    }
    check(ctx, &s, idx, "spmm")?;
    let (rows, cols) = if forward {
        (s.out_dim, s.in_dim)
    } else {
        (s.in_dim, s.out_dim)
    };
    check_meta(meta.index, s.nnz, "spmm metadata")?;
    check_tex(x, cols, s.batch, "spmm input")?;
    check_len(y, rows * s.batch, "spmm output")?;
    if let Some(t) = t {
        check_tex(t, rows, s.batch, "spmm output texture")?;
    }
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::MetaRead,
        Binding::TexRead,
        Binding::ReadWrite,
        Binding::Read,
        Binding::TexRead,
        Binding::TexWrite,
        Binding::MetaRead,
    ];
    let b4 = s.batch / 4;
    let (wg, v, blocks) = layout(b4, ctx.info.subgroup_max_size as usize);
    let ptr_off = if forward {
        2 * s.nnz + s.in_dim + 1
    } else {
        2 * s.nnz
    };
    let params = SpParams {
        rows: rows as u32,
        b4: b4 as u32,
        out_dim: s.out_dim as u32,
        nnz: s.nnz as u32,
        ptr_off: ptr_off as u32,
        blocks: blocks as u32,
        _pad: [0; 2],
    };
    let dummy = || Tensor::zeros(ctx, "spmm placeholder", 64);
    let dummy_a = || Texture::new(ctx, "spmm placeholder", 1, 4);
    let (code, relu, bias, a) = match epilogue {
        Epilogue::None => (0u8, false, dummy()?, dummy_a()?),
        Epilogue::BiasAct { bias, relu } => {
            check_len(bias, rows, "spmm bias")?;
            (1, relu, bias.clone(), dummy_a()?)
        }
        Epilogue::ReluMask(a) => {
            check_tex(a, rows, s.batch, "spmm ReLU output")?;
            (2, false, dummy()?, a.clone())
        }
    };
    let store_tex = t.is_some();
    let dummy_tex;
    let t = match t {
        Some(t) => t,
        None => {
            dummy_tex = Texture::new(ctx, "spmm placeholder texture", 1, 4)?;
            &dummy_tex
        }
    };
    let spec = KernelSpec::new("spmm", "spmm", B)
        .with_override("FORWARD", f64::from(u8::from(forward)))
        .with_override("WG", f64::from(wg))
        .with_override("V", v as f64)
        .with_override("EPILOGUE", f64::from(code))
        .with_override("RELU", f64::from(u8::from(relu)))
        .with_override("STORE_TEX", f64::from(u8::from(store_tex)))
        .with_override("STORE_BUF", f64::from(u8::from(store_buffer)));
    let flops = 2.0 * s.nnz as f64 * s.batch as f64;
    let bytes = 4.0 * (s.nnz as f64 * (s.batch as f64 + 3.0) + (rows * s.batch) as f64);
    Ok(Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[
            Res::Buf(idx),
            Res::Tex(meta.index),
            Res::Tex(x),
            Res::Buf(y),
            Res::Buf(&bias),
            Res::Tex(&a),
            Res::Tex(t),
            Res::Tex(meta.values),
        ],
        (rows * blocks) as u64,
    )?
    .with_cost(flops, bytes))
}

/// `grad[s] = Σ_b x[c(s), b] d[r(s), b]` at the active positions of the layer.
pub fn sddmm(
    ctx: &GpuContext,
    s: SparseShape,
    idx: &Tensor,
    x: &Texture,
    d: &Texture,
    grad: &Tensor,
) -> Result<Dispatch> {
    sddmm_with_bias(ctx, s, idx, x, d, grad, None)
}

/// [`sddmm`] that also writes the bias gradient `Σ_b d[r, b]` of every output row.
pub fn sddmm_with_bias(
    ctx: &GpuContext,
    s: SparseShape,
    idx: &Tensor,
    x: &Texture,
    d: &Texture,
    grad: &Tensor,
    bias_grad: Option<&Tensor>,
) -> Result<Dispatch> {
    check(ctx, &s, idx, "sddmm")?;
    check_tex(x, s.in_dim, s.batch, "sddmm input")?;
    check_tex(d, s.out_dim, s.batch, "sddmm output gradient")?;
    check_len(grad, s.nnz, "sddmm gradient")?;
    if let Some(b) = bias_grad {
        check_len(b, s.out_dim, "sddmm bias gradient")?;
    }
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::TexRead,
        Binding::TexRead,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    let placeholder;
    let bg = match bias_grad {
        Some(b) => b,
        None => {
            placeholder = Tensor::zeros(ctx, "sddmm placeholder", 64)?;
            &placeholder
        }
    };
    let b4 = s.batch / 4;
    let params = SpParams {
        rows: s.out_dim as u32,
        b4: b4 as u32,
        out_dim: s.out_dim as u32,
        nnz: s.nnz as u32,
        ptr_off: (2 * s.nnz + s.in_dim + 1) as u32,
        blocks: 1,
        _pad: [0; 2],
    };
    let spec = KernelSpec::new("sddmm", "sddmm", B)
        .with_override("WG", f64::from(sddmm_width(&s)))
        .with_override("BIAS", f64::from(u8::from(bias_grad.is_some())));
    let flops = 2.0 * s.nnz as f64 * s.batch as f64;
    let bytes = 4.0 * (s.nnz as f64 * (s.batch as f64 + 3.0) + (s.out_dim * s.batch) as f64);
    Ok(Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[
            Res::Buf(idx),
            Res::Tex(x),
            Res::Tex(d),
            Res::Buf(grad),
            Res::Buf(bg),
        ],
        s.out_dim as u64,
    )?
    .with_cost(flops, bytes))
}

/// Lanes per workgroup of the SDDMM (one lane per nonzero of a row): the width among 8..64 that
/// wastes the fewest lanes at the layer's mean nonzeros per row (the wider on a tie).
fn sddmm_width(s: &SparseShape) -> u32 {
    let per_row = (s.nnz as f64 / s.out_dim.max(1) as f64).max(1.0);
    [64u32, 32, 16, 8]
        .into_iter()
        .min_by(|&a, &b| {
            let waste = |w: u32| (per_row / f64::from(w)).ceil() * f64::from(w) - per_row;
            waste(a).total_cmp(&waste(b))
        })
        .unwrap_or(64)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CsrParams {
    in_dim: u32,
    out_dim: u32,
    nnz: u32,
    n: u32,
}

/// Words of the rebuild scratch a layer needs (new in_ptr, next positions, values, momentum).
pub fn rebuild_scratch_len(in_dim: usize, nnz: usize) -> usize {
    in_dim + 1 + 3 * nnz
}

/// Words of a layer's statistics block (new-connection counter, ever-active bitmap).
pub fn stats_len(in_dim: usize, out_dim: usize) -> usize {
    64 + (in_dim * out_dim).div_ceil(32)
}

/// The buffers one layer's index rebuild works on.
pub struct RebuildBuffers<'a> {
    /// Dense selection flags of the layer (at least in·out words).
    pub gsel: &'a Tensor,
    /// The layer's index.
    pub idx: &'a Tensor,
    /// Values per slot.
    pub vals: &'a Tensor,
    /// Momentum per slot.
    pub mom: &'a Tensor,
    /// Rebuild scratch ([`rebuild_scratch_len`] words).
    pub scratch: &'a Tensor,
    /// Drop-phase selection per slot of the layer.
    pub dropsel: &'a Tensor,
    /// The layer's statistics block ([`stats_len`] words).
    pub stats: &'a Tensor,
}

/// The dispatches that rebuild one layer's slots and indexes at a mask update, in two groups:
/// before the grow phase (clear the flags, mark the kept positions) and after it (count, scan,
/// fill, install).
pub fn rebuild(
    ctx: &GpuContext,
    s: SparseShape,
    b: &RebuildBuffers<'_>,
) -> Result<(Vec<Dispatch>, Vec<Dispatch>)> {
    let n = s.in_dim * s.out_dim;
    check_len(b.gsel, n, "index rebuild flags")?;
    check_len(b.vals, s.nnz, "index rebuild values")?;
    check_len(b.mom, s.nnz, "index rebuild momentum")?;
    check_len(
        b.scratch,
        rebuild_scratch_len(s.in_dim, s.nnz),
        "index rebuild scratch",
    )?;
    check_len(b.dropsel, s.nnz, "index rebuild drop selection")?;
    check_len(
        b.stats,
        stats_len(s.in_dim, s.out_dim),
        "index rebuild stats",
    )?;
    check_len(
        b.idx,
        crate::sparse::csr::CsrIndex::words_len(s.in_dim, s.out_dim, s.nnz),
        "index rebuild index",
    )?;
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::ReadWrite,
        Binding::Read,
        Binding::ReadWrite,
    ];
    let params = CsrParams {
        in_dim: s.in_dim as u32,
        out_dim: s.out_dim as u32,
        nnz: s.nnz as u32,
        n: n as u32,
    };
    let bufs = [b.gsel, b.idx, b.vals, b.mom, b.scratch, b.dropsel, b.stats];
    let op = |entry: &'static str, which: u32, items: usize| {
        let spec = KernelSpec::new("csr", entry, B).with_override("WHICH", f64::from(which));
        let wgs = if entry == "csr_scan" {
            1
        } else {
            (items.max(1) as u64).div_ceil(64)
        };
        Dispatch::build(ctx, &spec, bytemuck::bytes_of(&params), &bufs, wgs)
    };
    let before = vec![op("csr_clear", 0, n)?, op("csr_mark", 0, s.nnz)?];
    let after = vec![
        op("csr_count_in", 0, s.in_dim)?,
        op("csr_scan", 0, 1)?,
        op("csr_fill_in", 0, s.in_dim)?,
        op("csr_count_out", 0, s.out_dim)?,
        op("csr_scan", 1, 1)?,
        op("csr_fill_out", 0, s.out_dim)?,
        op("csr_copy", 0, s.nnz.max(s.in_dim + 1))?,
    ];
    Ok((before, after))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SlotParams {
    n: u32,
    nnz: u32,
    _pad: [u32; 2],
}

/// What [`slots`] does between a layer's slots and a dense `[in, out]` scratch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotOp {
    /// Zero the scratch.
    Zero,
    /// Write each slot's value at its position (after [`SlotOp::Zero`]).
    Scatter,
    /// Read each slot's gradient from its position of the scratch.
    Gather,
}

/// A dispatch moving a layer's slots to or from a dense scratch (`shaders/slots.wgsl`), for a
/// compressed layer run on dense GEMMs.
pub fn slots(
    ctx: &GpuContext,
    op: SlotOp,
    s: SparseShape,
    idx: &Tensor,
    vals: &Tensor,
    dense: &Tensor,
    grad: &Tensor,
) -> Result<Dispatch> {
    let n = s.in_dim * s.out_dim;
    check_len(idx, s.nnz, "slots index")?;
    check_len(vals, s.nnz, "slots values")?;
    check_len(grad, s.nnz, "slots gradient")?;
    check_len(dense, n, "slots dense scratch")?;
    const B: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
        Binding::ReadWrite,
    ];
    let (entry, items) = match op {
        SlotOp::Zero => ("slots_zero", n),
        SlotOp::Scatter => ("slots_scatter", s.nnz),
        SlotOp::Gather => ("slots_gather", s.nnz),
    };
    let params = SlotParams {
        n: n as u32,
        nnz: s.nnz as u32,
        _pad: [0; 2],
    };
    Dispatch::build(
        ctx,
        &KernelSpec::new("slots", entry, B),
        bytemuck::bytes_of(&params),
        &[idx, vals, dense, grad],
        (items.max(1) as u64).div_ceil(64),
    )
}

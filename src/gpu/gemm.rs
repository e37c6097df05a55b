//! Dense GEMM `C = op(A)·op(B)` (optionally masked on A, optionally accumulating), with several
//! variants chosen per adapter by timing them once.

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::ops::{Dispatch, Res, TexCopy};
use crate::gpu::profile::time_ops;
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::texture::Texture;
use crate::gpu::tuning;
use crate::gpu::{GpuContext, Tensor};

/// Environment variable that forces a GEMM variant (`rowblock`, `tiled`, `vec4`, `subgroup` or
/// `texture`).
pub const GEMM_ENV: &str = "RIGL_GEMM";

/// GEMM implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmVariant {
    /// No workgroup memory; A rows broadcast across the workgroup (fast on software rasterisers).
    RowBlock,
    /// 64×64 tiles staged in workgroup memory (fast on real GPUs).
    Tiled,
    /// 4×4 blocks on vec4 loads, no workgroup memory; needs m, n, k multiples of 4.
    Vec4,
    /// 8×4 blocks per invocation, rows of A shared through subgroup broadcasts; needs subgroups
    /// of at least 8 and n, k multiples of 4 (m too when A is transposed).
    Subgroup,
    /// [`GemmVariant::Subgroup`] reading its operands from `rgba32float` storage textures, into
    /// which a pack kernel first copies them (transposed and masked as the shape asks), or a
    /// buffer-to-texture copy where the pack would only move rows and the caller records through
    /// [`crate::gpu::ops::encode_ops`]: a storage-texture load is a branch-free gather on lavapipe.
    /// Same requirements, plus textures of k/4 × m and n/4 × k texels within the device's limit.
    Texture,
}

impl GemmVariant {
    /// All variants.
    pub const ALL: [GemmVariant; 5] = [
        GemmVariant::RowBlock,
        GemmVariant::Tiled,
        GemmVariant::Vec4,
        GemmVariant::Subgroup,
        GemmVariant::Texture,
    ];

    /// Name used on the command line and in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            GemmVariant::RowBlock => "rowblock",
            GemmVariant::Tiled => "tiled",
            GemmVariant::Vec4 => "vec4",
            GemmVariant::Subgroup => "subgroup",
            GemmVariant::Texture => "texture",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rowblock" => Ok(GemmVariant::RowBlock),
            "tiled" => Ok(GemmVariant::Tiled),
            "vec4" => Ok(GemmVariant::Vec4),
            "subgroup" => Ok(GemmVariant::Subgroup),
            "texture" => Ok(GemmVariant::Texture),
            other => Err(RiglError::invalid(format!(
                "unknown GEMM variant '{other}' (expected rowblock, tiled, vec4, subgroup or \
                 texture)"
            ))),
        }
    }

    fn entry(&self) -> &'static str {
        match self {
            GemmVariant::RowBlock => "gemm_rowblock",
            GemmVariant::Tiled => "gemm_tiled",
            GemmVariant::Vec4 => "gemm_vec4",
            GemmVariant::Subgroup => "gemm_subgroup",
            GemmVariant::Texture => "gemm_texture",
        }
    }

    /// Whether this variant can run `shape` on this device.
    pub fn supports(&self, ctx: &GpuContext, shape: &GemmShape) -> bool {
        let m4 = shape.m.is_multiple_of(4);
        let n4 = shape.n.is_multiple_of(4);
        let k4 = shape.k.is_multiple_of(4);
        match self {
            GemmVariant::RowBlock | GemmVariant::Tiled => true,
            GemmVariant::Vec4 => m4 && n4 && k4,
            GemmVariant::Subgroup => {
                ctx.features.contains(wgpu::Features::SUBGROUP)
                    && ctx.info.subgroup_min_size >= 8
                    && ctx.info.subgroup_max_size <= 64
                    && n4
                    && k4
                    && (m4 || !shape.trans_a)
            }
            GemmVariant::Texture => {
                let max = ctx.limits.max_texture_dimension_2d as usize;
                GemmVariant::Subgroup.supports(ctx, shape)
                    && shape.m.max(shape.k) <= max
                    && tex_cols(shape.k.max(shape.n)) / 4 <= max
            }
        }
    }

    /// This variant if it supports `shape`, else the best general one for this device
    /// (`subgroup` for a `texture` choice whose textures would be too large, `vec4` where the
    /// shape allows, then `tiled` on GPUs, `rowblock` on CPU adapters).
    pub fn resolve(self, ctx: &GpuContext, shape: &GemmShape) -> GemmVariant {
        if self.supports(ctx, shape) {
            return self;
        }
        if self == GemmVariant::Texture && GemmVariant::Subgroup.supports(ctx, shape) {
            return GemmVariant::Subgroup;
        }
        if GemmVariant::Vec4.supports(ctx, shape) {
            return GemmVariant::Vec4;
        }
        if ctx.info.device_type == wgpu::DeviceType::Cpu {
            GemmVariant::RowBlock
        } else {
            GemmVariant::Tiled
        }
    }

    /// Rows and columns of C covered by one workgroup.
    fn tile(&self) -> (usize, usize) {
        match self {
            GemmVariant::RowBlock => (8, 128),
            GemmVariant::Tiled => (64, 64),
            GemmVariant::Vec4 => (16, 64),
            GemmVariant::Subgroup | GemmVariant::Texture => (32, 256),
        }
    }
}

/// Shape and transposition of a product `C[m,n] = op(A)·op(B)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct GemmShape {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// A is stored `[k, m]`.
    pub trans_a: bool,
    /// B is stored `[n, k]`.
    pub trans_b: bool,
}

impl GemmShape {
    /// `C = A·B` with A `[m,k]`, B `[k,n]`.
    pub fn nn(m: usize, n: usize, k: usize) -> Self {
        GemmShape {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
        }
    }

    /// Useful FLOPs (2·m·n·k).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    tiles_total: u32,
    /// Row stride of C in vec4s (0: n / 4); `gemm_tex` only.
    ldc4: u32,
    /// C's first vec4; `gemm_tex` only.
    c_off4: u32,
    /// Steps of k / 4 per split of the reduction (0: none); `gemm_tex` only.
    ksplit4: u32,
}

/// A GEMM ready to encode.
#[derive(Debug)]
pub struct GemmOp {
    /// The dispatch.
    pub dispatch: Dispatch,
    /// Its shape.
    pub shape: GemmShape,
    /// Its variant.
    pub variant: GemmVariant,
}

impl GemmOp {
    /// Builds `c (+)= op(a ⊙ mask)·op(b)`. `mask` has the layout of `a`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &GpuContext,
        shape: GemmShape,
        variant: GemmVariant,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        mask: Option<&Tensor>,
        accumulate: bool,
    ) -> Result<Self> {
        const B: &[Binding] = &[
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
            Binding::Read,
        ];
        let GemmShape { m, n, k, .. } = shape;
        if !variant.supports(ctx, &shape) {
            return Err(RiglError::invalid(format!(
                "GEMM variant {} cannot run {m}x{n}x{k} (trans_a={}, trans_b={}) on {}",
                variant.as_str(),
                shape.trans_a,
                shape.trans_b,
                ctx.info.name
            )));
        }
        if m == 0 || n == 0 {
            return Err(RiglError::invalid(format!(
                "GEMM needs m, n >= 1 (got m={m}, n={n})"
            )));
        }
        for (t, need, what) in [(a, m * k, "A"), (b, k * n, "B"), (c, m * n, "C")]
            .into_iter()
            .chain(mask.map(|t| (t, m * k, "mask")))
        {
            if t.len < need {
                return Err(RiglError::invalid(format!(
                    "GEMM {m}x{n}x{k}: {what} ('{}') has {} elements, needs {need}",
                    t.label, t.len
                )));
            }
        }
        for (dim, v) in [("m", m), ("n", n), ("k", k)] {
            if v > u32::MAX as usize / 2 {
                return Err(RiglError::invalid(format!(
                    "GEMM dimension {dim}={v} too large"
                )));
            }
        }
        // A product of few columns on `rowblock` (64 lanes along the columns, 2 each) runs as
        // its transpose `Cᵀ = op(B)ᵀ·op(A)ᵀ`, stored transposed: LeNet-5's fc4 weight gradient
        // (500x10 over a batch of 100) used 10 of each workgroup's 128 columns (16 ms on
        // lavapipe). Not with a mask, which is on A.
        let rowblock_cols = GemmVariant::RowBlock.tile().1;
        let swap = variant == GemmVariant::RowBlock
            && mask.is_none()
            && 2 * n < rowblock_cols
            && m > 2 * n;
        let (a, b, m, n, trans_a, trans_b) = if swap {
            (b, a, n, m, !shape.trans_b, !shape.trans_a)
        } else {
            (a, b, m, n, shape.trans_a, shape.trans_b)
        };
        let (rows, tall, (tm, tn)) = if variant == GemmVariant::Texture {
            tex_tile(ctx, m, n, false)
        } else {
            (0, false, variant.tile())
        };
        let tiles_n = n.div_ceil(tn);
        let tiles_total = m.div_ceil(tm) * tiles_n;
        let params = GemmParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            tiles_n: tiles_n as u32,
            tiles_total: tiles_total as u32,
            ldc4: 0,
            c_off4: 0,
            ksplit4: 0,
        };
        let flag = |b: bool| f64::from(u8::from(b));
        let bytes = 4.0 * (m * k + k * n + m * n) as f64;
        let dispatch = if variant == GemmVariant::Texture {
            // op(A) [m,k] and op(B) [k,n] as textures of 4 columns per texel, rows padded
            // (`tex_cols`).
            let at = Texture::new(ctx, &format!("{} as texture", a.label), m, tex_cols(k))?;
            let bt = Texture::new(ctx, &format!("{} as texture", b.label), k, tex_cols(n))?;
            let (ar, ac) = if shape.trans_a { (k, m) } else { (m, k) };
            let (br, bc) = if shape.trans_b { (n, k) } else { (k, n) };
            let before = vec![
                (
                    pack(ctx, a, mask, ar, ac, shape.trans_a, &at)?,
                    plain_copy(a, mask.is_some() || shape.trans_a, ar, ac, &at),
                ),
                (
                    pack(ctx, b, None, br, bc, shape.trans_b, &bt)?,
                    plain_copy(b, shape.trans_b, br, bc, &bt),
                ),
            ];
            let spec = KernelSpec::new("gemm_tex", variant.entry(), TEX_BINDINGS)
                .with_override("ACCUMULATE", flag(accumulate))
                .with_override("ROWS", rows as f64)
                .with_override("TALL", flag(tall));
            Dispatch::build_res(
                ctx,
                &spec,
                bytemuck::bytes_of(&params),
                &[Res::Tex(&at), Res::Tex(&bt), Res::Buf(c)],
                tiles_total as u64,
            )?
            .with_before_or_copy(before)
        } else {
            let shader = match variant {
                GemmVariant::Vec4 => "gemm4",
                GemmVariant::Subgroup => "gemm_sg",
                _ => "gemm",
            };
            let mut spec = KernelSpec::new(shader, variant.entry(), B)
                .with_override("TRANS_A", flag(trans_a))
                .with_override("TRANS_B", flag(trans_b))
                .with_override("MASK_A", flag(mask.is_some()))
                .with_override("ACCUMULATE", flag(accumulate));
            if swap {
                spec = spec.with_override("TRANS_C", 1.0);
            }
            let mask_t = mask.unwrap_or(a);
            Dispatch::build(
                ctx,
                &spec,
                bytemuck::bytes_of(&params),
                &[a, b, c, mask_t],
                tiles_total as u64,
            )?
        }
        .with_cost(shape.flops(), bytes);
        Ok(GemmOp {
            dispatch,
            shape,
            variant,
        })
    }
}

/// Columns of a `texture` GEMM's operand texture holding rows of `cols` values: enough texels,
/// rounded up to whole 64-byte lines, and to an odd number of them. llvmpipe lays a texture out
/// row after row (each padded to 4 texels, one cache line), so at k = 1024 the rows of A were
/// 64 lines (4 KB) apart and the 32 rows an invocation reads all fell in one set of the L1 data
/// cache, which holds 12: every load missed. An odd number of lines per row puts any 64
/// consecutive rows in 64 different sets. The 1024³ product went from 32.7-33.0 ms to 31.1-31.3.
pub(crate) fn tex_cols(cols: usize) -> usize {
    let lines = cols.div_ceil(16);
    16 * (lines | 1)
}

/// Where a texture product writes: C's row stride and first element, in vec4s, and the split of
/// its reduction.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TexOut {
    /// Row stride of C in vec4s (0: n / 4).
    pub ldc4: usize,
    /// C's first vec4.
    pub c_off4: usize,
    /// Steps of k / 4 per split (0: no split); split s writes at `c_off4 + s * m * ldc4`.
    pub ksplit4: usize,
    /// Tiles 32 columns wide whose 8 subgroups split each split's k range again: split s,
    /// subgroup j writes part `8s + j` (needs subgroups of exactly 8, see [`narrow_tiles`]).
    pub narrow: bool,
}

/// Whether a texture product with `n` columns is better run on narrow tiles (32 columns wide,
/// k split 8 ways within each workgroup) than on the wide ones (256 columns): only where the
/// adapter's subgroups are exactly 8 invocations, and at most 128 columns, where the wide tile
/// leaves at least half its lanes on clamped copies. Measured on lavapipe (docs/performance.md#
/// narrow-tiles-for-weight-gradients): 2.1-2.6x faster weight gradients at 4 to 28 columns, no
/// gain seen at 144 or 576, where packing the patches dominates.
pub(crate) fn narrow_tiles(ctx: &GpuContext, n: usize) -> bool {
    narrow_tiles_supported(ctx) && n <= 128
}

/// The texture GEMM's rows per invocation and tile shape for a product of `m` rows and `n`
/// columns (`ROWS` and `TALL` in `shaders/gemm_tex.wgsl`): rows per invocation the fewest
/// multiple of 8 that covers `m`, at most 32 (a convolution's input gradient to 20 channels
/// multiplied 12 clamped copies of its last row on every 32); tall tiles (each subgroup its own
/// rows of the same 32 columns) where the wide tile would leave at least half its lanes on
/// clamped copies of the last column and the adapter's subgroups are exactly 8 (narrow tiles,
/// which split k instead, take precedence). Returns (rows, tall, rows x columns of a tile).
fn tex_tile(ctx: &GpuContext, m: usize, n: usize, narrow: bool) -> (usize, bool, (usize, usize)) {
    let rows = 8 * m.div_ceil(8).clamp(1, 4);
    let tall = !narrow && narrow_tiles(ctx, n);
    let tile = if narrow {
        (rows, 32)
    } else if tall {
        (8 * rows, 32)
    } else {
        (rows, GemmVariant::Texture.tile().1)
    };
    (rows, tall, tile)
}

/// Whether this adapter can run the texture GEMM's narrow tiles: subgroups of exactly 8
/// invocations (a subgroup must hold one block of columns; `rigl info` reports it).
pub fn narrow_tiles_supported(ctx: &GpuContext) -> bool {
    ctx.features.contains(wgpu::Features::SUBGROUP)
        && ctx.info.subgroup_min_size == 8
        && ctx.info.subgroup_max_size == 8
}

/// A convolution's patch matrix as the texture GEMM's op(B), gathered by the product itself
/// from a source texture in `shaders/conv_src.wgsl`'s layout (`IMPLICIT` in
/// `shaders/gemm_tex.wgsl`, which says what each field means). Only for a stride of 1 and
/// position rows of whole texels (`qw` a multiple of 4); `src/gpu/conv_tex.rs` builds it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImplicitB {
    /// Height and width of the positions the columns stand for.
    pub qh: usize,
    pub qw: usize,
    /// Source rows per channel and texels per image row.
    pub sh: usize,
    pub sw4: usize,
    /// Channels per tap of the reduction, kernel size.
    pub sc: usize,
    pub k: usize,
    /// Source offset of a position's first tap, and +1 (forward) or −1 (transposed).
    pub off_t: i32,
    pub off_l: i32,
    pub sign: i32,
    /// Real rows (k·k·sc), and whether row `real` is ones (the forward's bias).
    pub real: usize,
    pub bias_row: bool,
}

impl ImplicitB {
    /// Whether the product takes its columns row by row (`BY_ROW` in `shaders/gemm_tex.wgsl`)
    /// to skip the steps of k whose kernel rows read only padding: where at least an eighth of
    /// the (position row, kernel row) pairs read outside the source (a valid convolution's input
    /// gradient: LeNet-5's `conv2` a third; a 3x3 same one's at 8x8 a twelfth, not taken), and
    /// not with the bias row, which every column reads.
    fn by_row(&self) -> bool {
        let (sh, k) = (self.sh as i64, self.k as i64);
        let inside: i64 = (0..self.qh as i64)
            .map(|qy| {
                (0..k)
                    .filter(|ky| {
                        let sy = qy + i64::from(self.off_t) + i64::from(self.sign) * ky;
                        (0..sh).contains(&sy)
                    })
                    .count() as i64
            })
            .sum();
        !self.bias_row && 8 * inside <= 7 * self.qh as i64 * k
    }

    /// `BY_ROW`'s images per block: the fewest whose row of texels is a multiple of 8 (a
    /// subgroup's), at most the batch (`images`), so that no subgroup spans two blocks.
    fn row_block(&self, images: usize) -> usize {
        let per_row = (self.qw / 4).max(1);
        let mut g = 8;
        while !per_row.is_multiple_of(g) {
            g /= 2;
        }
        (8 / g).min(images.max(1))
    }

    fn overrides(&self, images: usize) -> Vec<(&'static str, f64)> {
        vec![
            ("IMPLICIT", 1.0),
            ("BY_ROW", f64::from(u8::from(self.by_row()))),
            ("ROW_BLOCK", self.row_block(images) as f64),
            ("BIAS_ROW", f64::from(u8::from(self.bias_row))),
            ("QH", self.qh as f64),
            ("QW", self.qw as f64),
            ("SH", self.sh as f64),
            ("SW4", self.sw4 as f64),
            ("SC", self.sc as f64),
            ("KS", self.k as f64),
            ("OFF_T", f64::from(self.off_t)),
            ("OFF_L", f64::from(self.off_l)),
            ("SIGN", f64::from(self.sign)),
            ("REAL", self.real as f64),
        ]
    }
}

/// A convolution's weight gradient `C[cout, k·k·cin] = dy · patchesᵀ` with neither operand
/// packed (`WGRAD` in `shaders/gemm_tex.wgsl`): op(A) from the output gradient's source texture
/// (`act_to_tex`), op(B) from the input's 4-channel texture (`act_to_tex_c4`). Output rows of
/// whole texels (`wo` a multiple of 4) and input channels in multiples of 4.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImplicitWgrad {
    pub ho: usize,
    pub wo: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub k: usize,
    pub stride: usize,
    pub pad_t: i32,
    pub pad_l: i32,
}

impl ImplicitWgrad {
    fn overrides(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("WGRAD", 1.0),
            ("QH", self.ho as f64),
            ("QW", self.wo as f64),
            ("SH", self.h as f64),
            ("SW", self.w as f64),
            ("SC", self.cin as f64),
            ("KS", self.k as f64),
            ("STRIDE_W", self.stride as f64),
            ("OFF_T", -f64::from(self.pad_t)),
            ("OFF_L", -f64::from(self.pad_l)),
        ]
    }
}

/// The `gemm_texture` launch `C (+)= at · bt` on operand textures the caller has filled (op(A)
/// `m` rows of `k` columns, op(B) `k` rows of `n`), writing as `out` says. n and k multiples
/// of 4; the caller checks the textures' sizes and C's length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tex_product(
    ctx: &GpuContext,
    mnk: (usize, usize, usize),
    at: &Texture,
    bt: &Texture,
    c: &Tensor,
    accumulate: bool,
    out: TexOut,
) -> Result<Dispatch> {
    tex_product_with(ctx, mnk, at, bt, c, accumulate, out, &[])
}

/// [`tex_product`] with op(B) gathered from the source texture `src` as `b` says: `n` is every
/// position (no chunks, no split, wide tiles).
#[allow(clippy::too_many_arguments)]
pub(crate) fn tex_product_implicit(
    ctx: &GpuContext,
    (m, n, k): (usize, usize, usize),
    at: &Texture,
    src: &Texture,
    c: &Tensor,
    accumulate: bool,
    b: ImplicitB,
) -> Result<Dispatch> {
    let plane = b.qh * b.qw;
    if plane == 0 || !b.qw.is_multiple_of(4) || b.real == 0 || !n.is_multiple_of(plane) {
        return Err(RiglError::invalid(format!(
            "implicit texture product {m}x{n}x{k}: needs position rows of whole texels and \
             {n} positions of whole images of {}x{}",
            b.qh, b.qw
        )));
    }
    let out = TexOut {
        ldc4: n / 4,
        ..TexOut::default()
    };
    tex_product_with(
        ctx,
        (m, n, k),
        at,
        src,
        c,
        accumulate,
        out,
        &b.overrides(n / plane),
    )
}

/// [`tex_product`] as a convolution's weight gradient (`m` output channels, `n` patch rows,
/// reduction over `k` output positions) with both operands gathered as `w` says, from `dyt`
/// and `x4t`; splits and narrow tiles as `out` says.
pub(crate) fn tex_product_wgrad(
    ctx: &GpuContext,
    (m, n, k): (usize, usize, usize),
    dyt: &Texture,
    x4t: &Texture,
    c: &Tensor,
    out: TexOut,
    w: ImplicitWgrad,
) -> Result<Dispatch> {
    let plane = w.ho * w.wo;
    if plane == 0 || !w.wo.is_multiple_of(4) || !w.cin.is_multiple_of(4) || !k.is_multiple_of(plane)
    {
        return Err(RiglError::invalid(format!(
            "implicit weight gradient {m}x{n}x{k}: needs output rows of whole texels, input \
             channels in multiples of 4 and {k} positions of whole images of {}x{}",
            w.ho, w.wo
        )));
    }
    tex_product_with(ctx, (m, n, k), dyt, x4t, c, false, out, &w.overrides())
}

#[allow(clippy::too_many_arguments)]
fn tex_product_with(
    ctx: &GpuContext,
    (m, n, k): (usize, usize, usize),
    at: &Texture,
    bt: &Texture,
    c: &Tensor,
    accumulate: bool,
    out: TexOut,
    extra: &[(&'static str, f64)],
) -> Result<Dispatch> {
    if m == 0 || n == 0 || k == 0 || !n.is_multiple_of(4) || !k.is_multiple_of(4) {
        return Err(RiglError::invalid(format!(
            "texture product {m}x{n}x{k}: needs every dimension positive, n and k multiples of 4"
        )));
    }
    if out.narrow && !narrow_tiles_supported(ctx) {
        return Err(RiglError::invalid(format!(
            "texture product {m}x{n}x{k}: narrow tiles need subgroups of exactly 8 invocations \
             ({} has {}..{})",
            ctx.info.name, ctx.info.subgroup_min_size, ctx.info.subgroup_max_size
        )));
    }
    let (rows, tall, (tm, tn)) = tex_tile(ctx, m, n, out.narrow);
    let tiles_n = n.div_ceil(tn);
    let splits = if out.ksplit4 == 0 {
        1
    } else {
        (k / 4).div_ceil(out.ksplit4)
    };
    let tiles_total = m.div_ceil(tm) * tiles_n * splits;
    let parts = splits * if out.narrow { 8 } else { 1 };
    let u = |v: usize, what: &str| {
        u32::try_from(v)
            .map_err(|_| RiglError::invalid(format!("texture product: {what} {v} exceeds u32")))
    };
    let params = GemmParams {
        m: u(m, "m")?,
        n: u(n, "n")?,
        k: u(k, "k")?,
        tiles_n: u(tiles_n, "column tiles")?,
        tiles_total: u(tiles_total, "tiles")?,
        ldc4: u(out.ldc4, "row stride")?,
        c_off4: u(out.c_off4, "C offset")?,
        ksplit4: u(out.ksplit4, "split")?,
    };
    // The shader's largest vec4 index of C (the last split's last row) must fit u32 too.
    u(out.c_off4 + parts * m * out.ldc4.max(n / 4), "C extent")?;
    let mut spec = KernelSpec::new("gemm_tex", GemmVariant::Texture.entry(), TEX_BINDINGS)
        .with_override("ACCUMULATE", f64::from(u8::from(accumulate)))
        .with_override("NARROW", f64::from(u8::from(out.narrow)))
        .with_override("ROWS", rows as f64)
        .with_override("TALL", f64::from(u8::from(tall)));
    for &(name, v) in extra {
        spec = spec.with_override(name, v);
    }
    Ok(Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[Res::Tex(at), Res::Tex(bt), Res::Buf(c)],
        tiles_total as u64,
    )?
    .with_cost(
        GemmShape::nn(m, n, k).flops(),
        4.0 * (m * k + k * n + m * n) as f64,
    ))
}

const TEX_BINDINGS: &[Binding] = &[
    Binding::Uniform,
    Binding::TexRead,
    Binding::TexRead,
    Binding::ReadWrite,
];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PackParams {
    rows: u32,
    cols: u32,
    blocks_x: u32,
    _pad: u32,
}

/// Rows of pack work items per invocation (`ITEM_ROWS` in `shaders/gemm_pack.wgsl`).
const PACK_ITEM_ROWS: usize = 8;

/// The launch that writes op(`src` ⊙ `mask`) into `dst` (`shaders/gemm_pack.wgsl`); `src` is
/// stored `[rows, cols]`, and op transposes it when `transpose`.
fn pack(
    ctx: &GpuContext,
    src: &Tensor,
    mask: Option<&Tensor>,
    rows: usize,
    cols: usize,
    transpose: bool,
    dst: &Texture,
) -> Result<Dispatch> {
    const PACK: &[Binding] = &[
        Binding::Uniform,
        Binding::Read,
        Binding::Read,
        Binding::TexWrite,
    ];
    let spec = KernelSpec::new("gemm_pack", "gemm_pack", PACK)
        .with_override("TRANSPOSE", f64::from(u8::from(transpose)))
        .with_override("MASK", f64::from(u8::from(mask.is_some())));
    // Work items: (cols/4) x rows texels, or (cols/4) x (rows/4) blocks of 4x4 when
    // transposing; 64 per workgroup along x, PACK_ITEM_ROWS per invocation along y.
    let blocks_x = (cols / 4).div_ceil(64);
    let item_rows = (if transpose { rows / 4 } else { rows }).div_ceil(PACK_ITEM_ROWS);
    let params = PackParams {
        rows: rows as u32,
        cols: cols as u32,
        blocks_x: blocks_x as u32,
        _pad: 0,
    };
    let bytes = 4.0 * (rows * cols * (1 + usize::from(mask.is_some())) * 2) as f64;
    Ok(Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[Res::Buf(src), Res::Buf(mask.unwrap_or(src)), Res::Tex(dst)],
        (blocks_x * item_rows) as u64,
    )?
    .with_cost(0.0, bytes))
}

/// The copy that can stand in for packing `src` (stored `[rows, cols]`) into `dst`: when
/// the pack only moves rows (`reshaped` false: no transpose, no mask), a row is a whole
/// number of 256-byte copy rows (cols a multiple of 64), the view starts on a texel and the
/// buffer can be copied from. lavapipe copies at memory speed, where the pack kernel's texture
/// stores are a loop over the lanes: at 1024³ the two packs took 5.9 ms, the two copies 0.8.
fn plain_copy(
    src: &Tensor,
    reshaped: bool,
    rows: usize,
    cols: usize,
    dst: &Texture,
) -> Option<TexCopy> {
    let bytes_per_row = 4 * cols;
    let ok = !reshaped
        && bytes_per_row.is_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as usize)
        && src.offset.is_multiple_of(16)
        && src.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC)
        && dst.texture.usage().contains(wgpu::TextureUsages::COPY_DST);
    ok.then(|| TexCopy {
        buffer: src.buffer.clone(),
        offset: src.offset,
        bytes_per_row: bytes_per_row as u32,
        texture: dst.texture.clone(),
        width: (cols / 4) as u32,
        rows: rows as u32,
    })
}

/// Per-context record of the chosen variant and of the per-shape picks of [`pick`]: what this
/// context has used (a run writes it to its `kernels.json`), or what [`pin`] fixed.
#[derive(Debug, Default)]
pub(crate) struct TuneCache {
    chosen: Mutex<Option<GemmVariant>>,
    shapes: Mutex<HashMap<GemmShape, GemmVariant>>,
}

fn forced() -> Option<String> {
    std::env::var(GEMM_ENV).ok().filter(|v| !v.is_empty())
}

/// The GEMM variant for this adapter: `$RIGL_GEMM` if set, else the one [`pin`]ned on this
/// context, else the faster of the variants on a 512×512×512 product, timed once per adapter,
/// driver and kernel sources and kept in the on-disk tuning cache ([`crate::gpu::tuning`]).
pub fn choose_variant(ctx: &GpuContext) -> Result<GemmVariant> {
    if let Some(v) = forced() {
        return GemmVariant::parse(&v);
    }
    let cache = &ctx.registry.tuned_gemm;
    if let Some(v) = cache.chosen.lock().ok().and_then(|g| *g) {
        return Ok(v);
    }
    let key = format!("gemm variant|{}", tuning::device_key(ctx));
    let v = tuning::get_or_measure(&key, || autotune(ctx, 512))?;
    if let Ok(mut g) = cache.chosen.lock() {
        *g = Some(v);
    }
    Ok(v)
}

/// The variant to run `shape` with, given the model's variant `preferred`: `preferred` resolved
/// for the shape ([`GemmVariant::resolve`]), except that between `subgroup` and `texture` the
/// faster on this very shape is taken, timed once per shape and adapter and kept in the tuning
/// cache (or as [`pin`]ned). The two run the same kernel (the same multiply-adds in the same
/// order; `texture` only loads its operands from textures it packs first), so their results are
/// bit-identical (tested); which is faster depends on the shape, as the packing costs most on
/// small products. With `$RIGL_GEMM` set, `preferred` is only resolved.
pub fn pick(ctx: &GpuContext, preferred: GemmVariant, shape: &GemmShape) -> Result<GemmVariant> {
    let v = pick_untracked(ctx, preferred, shape)?;
    if is_pair(ctx, shape, preferred.resolve(ctx, shape)) {
        if let Ok(mut c) = ctx.registry.tuned_gemm.shapes.lock() {
            c.insert(*shape, v);
        }
    }
    Ok(v)
}

fn is_pair(ctx: &GpuContext, shape: &GemmShape, v: GemmVariant) -> bool {
    let pair = [GemmVariant::Subgroup, GemmVariant::Texture];
    forced().is_none() && pair.contains(&v) && pair.iter().all(|p| p.supports(ctx, shape))
}

/// [`pick`] without recording the pick among the context's [`picks`]: for products that are
/// only timed (the kernel choice's masked-dense timings), so a run's `kernels.json` lists the
/// products it runs.
pub(crate) fn pick_untracked(
    ctx: &GpuContext,
    preferred: GemmVariant,
    shape: &GemmShape,
) -> Result<GemmVariant> {
    let v = preferred.resolve(ctx, shape);
    if !is_pair(ctx, shape, v) {
        return Ok(v);
    }
    let cache = &ctx.registry.tuned_gemm.shapes;
    if let Some(&p) = cache.lock().ok().as_ref().and_then(|c| c.get(shape)) {
        return Ok(p);
    }
    let GemmShape {
        m,
        n,
        k,
        trans_a,
        trans_b,
    } = *shape;
    let key = format!(
        "gemm pick|{}|{m}x{n}x{k}{}{}",
        tuning::device_key(ctx),
        if trans_a { " trans_a" } else { "" },
        if trans_b { " trans_b" } else { "" }
    );
    let pair = [GemmVariant::Subgroup, GemmVariant::Texture];
    tuning::get_or_measure(&key, || {
        Ok(fastest(&time_variants(ctx, shape, &pair)?).map_or(v, |t| t.1))
    })
}

/// Fixes this context's GEMM choices: `variant` (what [`choose_variant`] returns) and the
/// per-shape `picks` (what [`pick`] returns for those shapes), so a run replays another run's
/// choices whatever the tuning cache holds. `$RIGL_GEMM` still wins.
pub fn pin(ctx: &GpuContext, variant: GemmVariant, picks: &[(GemmShape, GemmVariant)]) {
    let cache = &ctx.registry.tuned_gemm;
    if let Ok(mut g) = cache.chosen.lock() {
        *g = Some(variant);
    }
    if let Ok(mut c) = cache.shapes.lock() {
        c.extend(picks.iter().copied());
    }
}

/// The per-shape picks this context has made or been given, in a stable order.
pub fn picks(ctx: &GpuContext) -> Vec<(GemmShape, GemmVariant)> {
    let mut out: Vec<(GemmShape, GemmVariant)> = ctx
        .registry
        .tuned_gemm
        .shapes
        .lock()
        .map(|c| c.iter().map(|(s, v)| (*s, *v)).collect())
        .unwrap_or_default();
    out.sort_by_key(|(s, _)| (s.m, s.n, s.k, s.trans_a, s.trans_b));
    out
}

/// Wall-clock milliseconds of each of `variants` on `shape` (scratch operands, one warm-up,
/// median of 3). Wall clock: lavapipe's timestamps go wrong once a process has run
/// texture-reading kernels (see gpu::profile), and a choice must not depend on what ran before.
fn time_variants(
    ctx: &GpuContext,
    shape: &GemmShape,
    variants: &[GemmVariant],
) -> Result<Vec<(f64, GemmVariant)>> {
    let GemmShape { m, n, k, .. } = *shape;
    let a = Tensor::filled(ctx, "tune A", m * k, 0.5)?;
    let b = Tensor::filled(ctx, "tune B", k * n, 0.25)?;
    let c = Tensor::zeros(ctx, "tune C", m * n)?;
    let mut times = Vec::with_capacity(variants.len());
    for &v in variants {
        let op = GemmOp::new(ctx, *shape, v, &a, &b, &c, None, false)?;
        let (ms, _) = time_ops(ctx, &[&op.dispatch], 1, 3, true)?;
        log::info!("gemm {m}x{n}x{k} {}: {ms:.3} ms", v.as_str());
        times.push((ms, v));
    }
    Ok(times)
}

/// The entry with the smallest time.
fn fastest(times: &[(f64, GemmVariant)]) -> Option<(f64, GemmVariant)> {
    times.iter().copied().min_by(|x, y| x.0.total_cmp(&y.0))
}

/// Times the variants on an `s`×`s`×`s` product and returns the fastest. A first round at a
/// quarter of `s` (64 times less work) drops the variants more than 4x slower than the best
/// there, so the slow ones cost little of the start-up.
pub fn autotune(ctx: &GpuContext, s: usize) -> Result<GemmVariant> {
    let mut candidates: Vec<GemmVariant> = GemmVariant::ALL
        .into_iter()
        .filter(|v| v.supports(ctx, &GemmShape::nn(s, s, s)))
        .collect();
    let mut best = GemmVariant::RowBlock;
    for size in [(s / 4).max(1), s] {
        let shape = GemmShape::nn(size, size, size);
        let runnable: Vec<GemmVariant> = candidates
            .iter()
            .copied()
            .filter(|v| v.supports(ctx, &shape))
            .collect();
        let times = time_variants(ctx, &shape, &runnable)?;
        let Some((best_ms, v)) = fastest(&times) else {
            continue;
        };
        best = v;
        // A variant that could not run the small size stays in.
        candidates.retain(|v| times.iter().all(|t| t.1 != *v || t.0 <= 4.0 * best_ms));
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::tex_cols;

    #[test]
    fn texture_rows_are_an_odd_number_of_lines_holding_every_column() {
        for cols in [1, 4, 16, 17, 100, 300, 784, 1000, 1024, 4096] {
            let t = tex_cols(cols);
            assert!(t >= cols, "{cols} -> {t}");
            assert_eq!(t % 16, 0, "{cols} -> {t}");
            assert_eq!((t / 16) % 2, 1, "{cols} -> {t}");
            assert!(t < cols + 32, "{cols} -> {t}: more than a line of padding");
        }
        assert_eq!(tex_cols(1024), 1040);
        assert_eq!(tex_cols(1000), 1008);
    }
}

//! Dense GEMM `C = op(A)·op(B)` (optionally masked on A, optionally accumulating), with two
//! variants chosen per adapter by timing them once.

use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::ops::Dispatch;
use crate::gpu::profile::time_ops;
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::{GpuContext, Tensor};

/// Environment variable that forces a GEMM variant (`rowblock` or `tiled`).
pub const GEMM_ENV: &str = "RIGL_GEMM";

/// GEMM implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
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
}

impl GemmVariant {
    /// All variants.
    pub const ALL: [GemmVariant; 4] = [
        GemmVariant::RowBlock,
        GemmVariant::Tiled,
        GemmVariant::Vec4,
        GemmVariant::Subgroup,
    ];

    /// Name used on the command line and in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            GemmVariant::RowBlock => "rowblock",
            GemmVariant::Tiled => "tiled",
            GemmVariant::Vec4 => "vec4",
            GemmVariant::Subgroup => "subgroup",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rowblock" => Ok(GemmVariant::RowBlock),
            "tiled" => Ok(GemmVariant::Tiled),
            "vec4" => Ok(GemmVariant::Vec4),
            "subgroup" => Ok(GemmVariant::Subgroup),
            other => Err(RiglError::invalid(format!(
                "unknown GEMM variant '{other}' (expected rowblock, tiled, vec4 or subgroup)"
            ))),
        }
    }

    fn entry(&self) -> &'static str {
        match self {
            GemmVariant::RowBlock => "gemm_rowblock",
            GemmVariant::Tiled => "gemm_tiled",
            GemmVariant::Vec4 => "gemm_vec4",
            GemmVariant::Subgroup => "gemm_subgroup",
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
        }
    }

    /// This variant if it supports `shape`, else the best general one for this device
    /// (`vec4` where the shape allows, then `tiled` on GPUs, `rowblock` on CPU adapters).
    pub fn resolve(self, ctx: &GpuContext, shape: &GemmShape) -> GemmVariant {
        if self.supports(ctx, shape) {
            return self;
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
            GemmVariant::Subgroup => (32, 256),
        }
    }
}

/// Shape and transposition of a product `C[m,n] = op(A)·op(B)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    _pad: [u32; 3],
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
        let (tm, tn) = variant.tile();
        let tiles_n = n.div_ceil(tn);
        let tiles_total = m.div_ceil(tm) * tiles_n;
        let params = GemmParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            tiles_n: tiles_n as u32,
            tiles_total: tiles_total as u32,
            _pad: [0; 3],
        };
        let flag = |b: bool| f64::from(u8::from(b));
        let shader = match variant {
            GemmVariant::Vec4 => "gemm4",
            GemmVariant::Subgroup => "gemm_sg",
            _ => "gemm",
        };
        let spec = KernelSpec::new(shader, variant.entry(), B)
            .with_override("TRANS_A", flag(shape.trans_a))
            .with_override("TRANS_B", flag(shape.trans_b))
            .with_override("MASK_A", flag(mask.is_some()))
            .with_override("ACCUMULATE", flag(accumulate));
        let mask_t = mask.unwrap_or(a);
        let bytes = 4.0 * (m * k + k * n + m * n) as f64;
        let dispatch = Dispatch::build(
            ctx,
            &spec,
            bytemuck::bytes_of(&params),
            &[a, b, c, mask_t],
            tiles_total as u64,
        )?
        .with_cost(shape.flops(), bytes);
        Ok(GemmOp {
            dispatch,
            shape,
            variant,
        })
    }
}

/// Per-context cache of the chosen variant.
pub(crate) type TuneCache = Mutex<Option<GemmVariant>>;

/// The GEMM variant for this adapter: `$RIGL_GEMM` if set, else the faster of the variants on a
/// 512×512×512 product, timed once and cached for the life of the context.
pub fn choose_variant(ctx: &GpuContext) -> Result<GemmVariant> {
    if let Ok(v) = std::env::var(GEMM_ENV) {
        if !v.is_empty() {
            return GemmVariant::parse(&v);
        }
    }
    if let Some(v) = ctx.registry.tuned_gemm.lock().ok().and_then(|g| *g) {
        return Ok(v);
    }
    let v = autotune(ctx, 512)?;
    if let Ok(mut g) = ctx.registry.tuned_gemm.lock() {
        *g = Some(v);
    }
    Ok(v)
}

/// Times every variant on an `s`×`s`×`s` product and returns the fastest.
pub fn autotune(ctx: &GpuContext, s: usize) -> Result<GemmVariant> {
    let a = Tensor::from_f32(ctx, "tune A", &vec![0.5; s * s])?;
    let b = Tensor::from_f32(ctx, "tune B", &vec![0.25; s * s])?;
    let c = Tensor::zeros(ctx, "tune C", s * s)?;
    let mut best = (f64::INFINITY, GemmVariant::RowBlock);
    let shape = GemmShape::nn(s, s, s);
    for v in GemmVariant::ALL
        .into_iter()
        .filter(|v| v.supports(ctx, &shape))
    {
        let op = GemmOp::new(ctx, shape, v, &a, &b, &c, None, false)?;
        // Wall clock: lavapipe's timestamps go wrong once a process has run texture-reading
        // kernels (see gpu::profile), and the choice must not depend on what ran before.
        let (ms, _) = time_ops(ctx, &[&op.dispatch], 1, 3, true)?;
        log::info!("autotune gemm {}: {ms:.3} ms", v.as_str());
        if ms < best.0 {
            best = (ms, v);
        }
    }
    Ok(best.1)
}

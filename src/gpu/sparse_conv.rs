//! Compressed sparse convolutions: a kernel `[k, k, cin, cout]` kept as the slots of a
//! [`crate::sparse::csr::CsrIndex`] over the matrix `[k·k·cin, cout]` (SPEC §8's flat positions),
//! and its three products doing work in proportion to the active weights:
//!
//! - forward `y = conv(x, w) (+ bias)`: the sparse matrix times the input's shifted phase planes
//!   (`shaders/sconv.wgsl`, rows = output channels);
//! - input gradient `dx (+)= conv_transpose(dy, w)`: the same kernel over the transposed order,
//!   rows = (input channel, stride phase), source = the padded output gradient;
//! - weight gradient at the active positions only (`shaders/sconv_sddmm.wgsl`).
//!
//! Every tap of the kernel reads its source at a fixed offset from the output position's place in
//! the source once the source is laid out as planes (the input's stride phases, or the padded
//! output gradient), and a strided tap is a shift too within the stride phase it reads (see
//! `shaders/sconv.wgsl`); each lane finds its output position's place once and computes the
//! output's positions only. A texel of a source holds one position of 4 images
//! (`shaders/sconv_src.wgsl`), so every shifted read is one whole texel and a lane computes that
//! position for the 4 images. The per-nonzero metadata (address, value) is written by
//! `shaders/sconv_meta.wgsl` at every launch from the index and the current values, so the
//! optimizer needs to know nothing of it. CPU twin: the dense convolution
//! ([`crate::cpu::conv`]) of the weights scattered from the slots.
//!
//! Textures used by one launch are [`Scratch`]: sized for the largest of a model's layers and
//! shared by all of them (each product rewrites what it reads).

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::conv::ConvGeom;
use crate::gpu::ops::{Dispatch, Res};
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::texture::{meta_texture, Texture, META_WIDTH};
use crate::gpu::{GpuContext, Tensor};
use crate::shape::Window;
use crate::sparse::csr::CsrIndex;

/// Texels per row of the linear textures (`tex_at` in the shaders).
pub const TEX_WIDTH: usize = 4096;

/// Most output vec4s per lane (`V` in `shaders/sconv.wgsl`).
const VMAX: usize = 8;

/// The two forms of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SparseConvForm {
    /// Metadata handed out with `subgroupBroadcast` (needs subgroups of 8 to 64 lanes).
    Subgroup,
    /// Every lane loads the metadata itself (any adapter with storage textures).
    Portable,
}

impl SparseConvForm {
    /// Both forms.
    pub const ALL: [SparseConvForm; 2] = [SparseConvForm::Subgroup, SparseConvForm::Portable];

    /// Name in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            SparseConvForm::Subgroup => "subgroup",
            SparseConvForm::Portable => "portable",
        }
    }

    /// Whether this adapter can run this form.
    pub fn supported(&self, ctx: &GpuContext) -> std::result::Result<(), String> {
        match self {
            SparseConvForm::Subgroup => crate::gpu::spmm::support(ctx),
            SparseConvForm::Portable => {
                if ctx.limits.max_storage_textures_per_shader_stage < 3 {
                    Err(format!(
                        "adapter '{}' binds {} storage textures per shader stage (3 needed)",
                        ctx.info.name, ctx.limits.max_storage_textures_per_shader_stage
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The subgroup form where the adapter has it, else the portable one.
    pub fn pick(ctx: &GpuContext) -> SparseConvForm {
        if SparseConvForm::Subgroup.supported(ctx).is_ok() {
            SparseConvForm::Subgroup
        } else {
            SparseConvForm::Portable
        }
    }
}

/// Smallest `a >= 0` whose padded coordinate `a·s + ph` is past `pad` (the shaders' `lo`).
fn lo(pad: usize, ph: usize, s: usize) -> usize {
    if pad > ph {
        (pad - ph).div_ceil(s)
    } else {
        0
    }
}

fn u(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| RiglError::invalid(format!("sparse convolution {what} {v} exceeds u32")))
}

/// The derived geometry of one sparse convolution: its output spaces and source planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The convolution.
    pub geom: ConvGeom,
    ho: usize,
    wo: usize,
    pad_t: usize,
    pad_l: usize,
    /// Image groups: the batch in texels of 4 images.
    n4: usize,
    /// Forward: phases per side, plane row stride, plane rows, plane positions per image group,
    /// output positions per image group (`ho·wo`), texels per virtual channel.
    npy: usize,
    wq: usize,
    hq: usize,
    p_fwd: usize,
    u_fwd: usize,
    st: usize,
    /// Input gradient: padding of the output gradient, its plane rows and row stride, the
    /// output space's columns (the most input columns of a stride phase), positions per image
    /// group of the planes and of the output space, texels per virtual channel.
    lt: usize,
    ll: usize,
    hd: usize,
    wd: usize,
    wa: usize,
    p_bwd: usize,
    u_bwd: usize,
    std: usize,
}

/// Per phase of one axis: the first and last index `a` whose pixel `a·s + ph - pad` is inside
/// `0..len`, if any.
fn phase_range(len: usize, pad: usize, ph: usize, s: usize) -> Option<(usize, usize)> {
    let a0 = lo(pad, ph, s);
    let last = (len - 1 + pad).checked_sub(ph)? / s;
    (last >= a0).then_some((a0, last))
}

/// The input gradient's geometry along one axis: (padding before the output gradient, plane
/// length, largest count of indices of a phase, largest first index of a phase).
fn bwd_axis(len: usize, pad: usize, k: usize, s: usize) -> (usize, usize, usize, usize) {
    let (mut before, mut last, mut count, mut first) = (0usize, 0usize, 0usize, 0usize);
    for ph in 0..s {
        let Some((a0, a1)) = phase_range(len, pad, ph, s) else {
            continue;
        };
        count = count.max(a1 - a0 + 1);
        first = first.max(a0);
        last = last.max(a1);
        if ph < k {
            // The phase's largest tap offset (k - 1 - ph) / s reads a0 + before - it >= 0.
            before = before.max(((k - 1 - ph) / s).saturating_sub(a0));
        }
    }
    (before, before + last + 1, count, first)
}

impl Layout {
    /// The layout of `g`.
    pub fn new(g: ConvGeom) -> Result<Self> {
        // Validates the geometry (every flat index within u32).
        g.params(0)?;
        let (ho, wo) = g.out()?;
        let (pad_t, pad_l) = g.window.pad();
        let (k, s, n) = (g.window.k, g.window.stride, g.window.n);
        let m = (k - 1) / s;
        let (wq, hq) = (wo + m, ho + m);
        let n4 = n.div_ceil(4);
        let p_fwd = hq * wq;
        // Only the output's positions are computed: a lane maps its position to the planes'
        // row stride (`base` in shaders/sconv.wgsl).
        let u_fwd = ho * wo;
        // A lane past the output reads at the last position; the largest tap shift is m·wq + m.
        let st = n4 * p_fwd + m * wq + m + 1;
        let (lt, hd, max_ha, max_a0) = bwd_axis(g.window.h, pad_t, k, s);
        let (ll, wd, max_wa, max_c0) = bwd_axis(g.window.w, pad_l, k, s);
        // At stride 1 a plane row needs no padding on its right: a tap reading past the row's
        // end lands in the next row's left padding, which is zero too. A row is then the data
        // with its left padding, or the input row, whichever is longer (12 per row instead of
        // 16 for LeNet-5's conv2). The product computes the positions of each phase's input
        // pixels only, `max_ha x max_wa` (all of them when the phases have equal counts).
        let wd = if s == 1 {
            (ll + wo).max(pad_l + g.window.w)
        } else {
            wd
        };
        let p_bwd = hd * wd;
        let u_bwd = max_ha * max_wa;
        let std = n4 * p_bwd + (max_a0 + lt) * wd + max_c0 + ll + 1;
        let lay = Layout {
            geom: g,
            n4,
            ho,
            wo,
            pad_t,
            pad_l,
            npy: s.min(k),
            wq,
            hq,
            p_fwd,
            u_fwd,
            st,
            lt,
            ll,
            hd,
            wd,
            wa: max_wa,
            p_bwd,
            u_bwd,
            std,
        };
        u(
            lay.fwd_planes_texels().max(lay.bwd_planes_texels()),
            "source texels",
        )?;
        Ok(lay)
    }

    /// Texels of the forward source (the input's shifted phase planes).
    pub fn fwd_planes_texels(&self) -> usize {
        self.npy * self.npy * self.geom.cin * self.st
    }

    /// Texels of the padded output gradient (the input gradient's source, which the weight
    /// gradient reads too).
    pub fn bwd_planes_texels(&self) -> usize {
        self.geom.cout * self.std
    }

    /// Output positions of an image the input-gradient product computes, over the input's
    /// positions.
    pub fn bwd_overhead(&self) -> f64 {
        let g = self.geom;
        (g.window.stride * g.window.stride * self.u_bwd) as f64
            / (g.window.h * g.window.w).max(1) as f64
    }

    /// Images every product computes (the batch rounded up to groups of 4), over the batch.
    pub fn batch_overhead(&self) -> f64 {
        (4 * self.n4) as f64 / self.geom.window.n.max(1) as f64
    }

    /// Rows of the input-gradient product: (input channel, stride phase).
    pub fn bwd_rows(&self) -> usize {
        self.geom.cin * self.geom.window.stride * self.geom.window.stride
    }

    /// Words of the input gradient's pointers (`bwd_rows` in `shaders/sconv_meta.wgsl`): the
    /// row pointers, then per row the first slot of each tap `ky·k + kx` (and its end).
    pub fn bwd_ptr_len(&self) -> usize {
        let rows = self.bwd_rows();
        let k = self.geom.window.k;
        rows + 1 + rows * (k * k + 1)
    }

    /// Whether the input gradient walks, per subgroup of positions, only the taps that read the
    /// output gradient (`TAPSKIP` in `shaders/sconv.wgsl`): at stride 1, kernels of at most
    /// 8x8, where at least a tenth of the (input row, kernel row) pairs read only the padding
    /// (LeNet-5's valid `conv2`: a third; a 3x3 `same` convolution of 32 rows: 2 in 96).
    pub fn bwd_skips_rows(&self) -> bool {
        let w = self.geom.window;
        if w.stride != 1 || w.k > 8 {
            return false;
        }
        let pairs = (0..w.h)
            .flat_map(|iy| (0..w.k).map(move |ky| (iy + self.pad_t, ky)))
            .filter(|&(oy, ky)| oy < ky || oy - ky >= self.ho)
            .count();
        10 * pairs >= w.h * w.k
    }

    /// Rows of the kernel matrix (`k·k·cin`).
    pub fn in_dim(&self) -> usize {
        self.geom.window.k * self.geom.window.k * self.geom.cin
    }

    fn geometry(&self, mut spec: KernelSpec) -> KernelSpec {
        let g = self.geom;
        for (name, v) in [
            ("N", g.window.n),
            ("K", g.window.k),
            ("S", g.window.stride),
            ("CIN", g.cin),
            ("COUT", g.cout),
            ("H", g.window.h),
            ("W", g.window.w),
            ("HO", self.ho),
            ("WO", self.wo),
            ("PAD_T", self.pad_t),
            ("PAD_L", self.pad_l),
        ] {
            spec = spec.with_override(name, v as f64);
        }
        spec
    }
}

/// Textures shared by the sparse convolutions of a model: the input's phase planes, the
/// per-nonzero metadata and the padded output gradient.
#[derive(Debug)]
pub struct Scratch {
    /// The input's phase planes (linear, [`TEX_WIDTH`] texels a row): the forward's source,
    /// read by the weight gradient too.
    pub planes: Texture,
    /// Metadata, one texel per slot.
    pub meta: Texture,
    /// The output gradient padded for the input gradient (its source), read by the weight
    /// gradient too.
    pub dspace: Texture,
    /// The input gradient's row pointers (`bwd_rows` in `shaders/sconv_meta.wgsl`).
    pub rows: Tensor,
    /// The one geometry this scratch serves, when every layer it was made for has the same:
    /// then only that geometry's output gradients are written into `dspace`, their data only,
    /// and its padding stays the zeros the texture was made with.
    solo: Option<Layout>,
}

fn linear_texture(ctx: &GpuContext, label: &str, texels: usize) -> Result<Texture> {
    Texture::new(ctx, label, texels.max(1).div_ceil(TEX_WIDTH), 4 * TEX_WIDTH)
}

impl Scratch {
    /// Scratch for layers of these layouts with at most `max_nnz` slots each.
    pub fn new(ctx: &GpuContext, layouts: &[Layout], max_nnz: usize) -> Result<Self> {
        Self::with_users(ctx, layouts, layouts, max_nnz)
    }

    /// [`Scratch::new`] for `layouts` of which only `users` run products on it (the others run
    /// theirs elsewhere): one geometry among the users makes it that geometry's alone.
    pub fn with_users(
        ctx: &GpuContext,
        layouts: &[Layout],
        users: &[Layout],
        max_nnz: usize,
    ) -> Result<Self> {
        let planes = layouts
            .iter()
            .map(Layout::fwd_planes_texels)
            .max()
            .unwrap_or(1);
        let dspace = layouts
            .iter()
            .map(Layout::bwd_planes_texels)
            .max()
            .unwrap_or(1);
        let solo = match users {
            [first, rest @ ..] if rest.iter().all(|l| l == first) => Some(*first),
            _ => None,
        };
        let dlabel = "sparse convolution output gradient";
        let dspace = if solo.is_some() {
            // Zeros written, not left to the driver: the padding is read, never written.
            let rows = dspace.max(1).div_ceil(TEX_WIDTH);
            let zeros = vec![0.0; rows * 4 * TEX_WIDTH];
            Texture::from_f32(ctx, dlabel, &zeros, rows, 4 * TEX_WIDTH)?
        } else {
            linear_texture(ctx, dlabel, dspace)?
        };
        Ok(Scratch {
            planes: linear_texture(ctx, "sparse convolution planes", planes)?,
            meta: meta_texture(ctx, "sparse convolution metadata", max_nnz)?,
            dspace,
            rows: Tensor::zeros(
                ctx,
                "sparse convolution row pointers",
                layouts.iter().map(Layout::bwd_ptr_len).max().unwrap_or(1),
            )?,
            solo,
        })
    }

    fn check(&self, lay: &Layout, nnz: usize) -> Result<()> {
        if let Some(solo) = self.solo.filter(|s| s != lay) {
            return Err(RiglError::invalid(format!(
                "sparse convolution scratch '{}' was made for the layer {:?} alone, not {:?}",
                self.dspace.label, solo.geom, lay.geom
            )));
        }
        let need = [
            (&self.planes, lay.fwd_planes_texels(), TEX_WIDTH),
            (&self.meta, nnz, META_WIDTH),
            (&self.dspace, lay.bwd_planes_texels(), TEX_WIDTH),
        ];
        if self.rows.len < lay.bwd_ptr_len() {
            return Err(RiglError::invalid(format!(
                "sparse convolution scratch '{}' holds {} row pointers, the layer needs {}",
                self.rows.label,
                self.rows.len,
                lay.bwd_ptr_len()
            )));
        }
        for (t, n, width) in need {
            if t.rows * width < n {
                return Err(RiglError::invalid(format!(
                    "sparse convolution scratch '{}' holds {} texels, the layer needs {n}",
                    t.label,
                    t.rows * width
                )));
            }
        }
        Ok(())
    }
}

/// Whether the sparse convolution kernels can run `g` in `form` on this device, and if not why.
pub fn supports(
    ctx: &GpuContext,
    g: &ConvGeom,
    form: SparseConvForm,
) -> std::result::Result<(), String> {
    form.supported(ctx)?;
    let lay = Layout::new(*g).map_err(|e| e.to_string())?;
    let max = ctx.limits.max_texture_dimension_2d as usize;
    let rows = lay
        .fwd_planes_texels()
        .max(lay.bwd_planes_texels())
        .div_ceil(TEX_WIDTH);
    if rows > max || TEX_WIDTH > max {
        return Err(format!(
            "its source planes need {rows} texture rows of {TEX_WIDTH}, the adapter allows {max}"
        ));
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct Params {
    rows: u32,
    blocks: u32,
    nnz: u32,
    ptr_off: u32,
    texels: u32,
    accum: u32,
    _pad: [u32; 2],
}

const SRC: &[Binding] = &[Binding::Uniform, Binding::Read, Binding::TexWrite];
const META: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::MetaWrite,
    Binding::ReadWrite,
];
const SPCONV: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::MetaRead,
    Binding::TexRead,
    Binding::ReadWrite,
    Binding::Read,
];
const SPCONV_POOL: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::MetaRead,
    Binding::TexRead,
    Binding::ReadWrite,
    Binding::Read,
    Binding::ReadWrite,
    Binding::TexWrite,
];
const SDDMM: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::MetaRead,
    Binding::TexRead,
    Binding::TexRead,
    Binding::ReadWrite,
];

/// The shape checks every product makes.
fn check(lay: &Layout, nnz: usize, idx: &Tensor, sc: &Scratch) -> Result<()> {
    let in_dim = lay.in_dim();
    if nnz == 0 || nnz > in_dim * lay.geom.cout {
        return Err(RiglError::invalid(format!(
            "a sparse convolution with {nnz} active weights of {}",
            in_dim * lay.geom.cout
        )));
    }
    let need = CsrIndex::words_len(in_dim, lay.geom.cout, nnz);
    if idx.len < need {
        return Err(RiglError::invalid(format!(
            "sparse convolution index '{}' has {} words, the layer needs {need}",
            idx.label, idx.len
        )));
    }
    sc.check(lay, nnz)
}

fn check_len(t: &Tensor, n: usize, what: &str) -> Result<()> {
    crate::gpu::ops::check_len(t, n, &format!("sparse convolution {what}"))
}

/// A source `[c, N, sh, sw]` and the planes it is laid out in (`shaders/sconv_src.wgsl`): `np`
/// x `np` stride phases of `hp` x `wp` with `sp` positions per image group, element (a, b) of
/// phase (py, px) the source's `(a·stride + py - off_y, b·stride + px - off_x)`, `st` texels
/// per virtual channel.
#[derive(Clone, Copy)]
struct PlanesGeom {
    c: usize,
    n: usize,
    sh: usize,
    sw: usize,
    stride: usize,
    np: usize,
    hp: usize,
    wp: usize,
    sp: usize,
    off_y: usize,
    off_x: usize,
    st: usize,
}

impl PlanesGeom {
    /// The forward's source: the phase planes of the layer's input.
    fn input(lay: &Layout) -> Self {
        let (g, win) = (lay.geom, lay.geom.window);
        PlanesGeom {
            c: g.cin,
            n: win.n,
            sh: win.h,
            sw: win.w,
            stride: win.stride,
            np: lay.npy,
            hp: lay.hq,
            wp: lay.wq,
            sp: lay.p_fwd,
            off_y: lay.pad_t,
            off_x: lay.pad_l,
            st: lay.st,
        }
    }

    /// The output gradient padded for the input gradient (one phase).
    fn dy(lay: &Layout) -> Self {
        let g = lay.geom;
        PlanesGeom {
            c: g.cout,
            n: g.window.n,
            sh: lay.ho,
            sw: lay.wo,
            stride: 1,
            np: 1,
            hp: lay.hd,
            wp: lay.wd,
            sp: lay.p_bwd,
            off_y: lay.lt,
            off_x: lay.ll,
            st: lay.std,
        }
    }

    /// Texels of the planes, or with `data_only` of the source's own positions.
    fn texels(&self, data_only: bool) -> usize {
        if data_only {
            self.c * self.n.div_ceil(4) * self.sh * self.sw
        } else {
            self.np * self.np * self.c * self.st
        }
    }

    /// `entry` of `shaders/sconv_src.wgsl` specialised to this geometry.
    fn spec(
        &self,
        entry: &'static str,
        bindings: &'static [Binding],
        data_only: bool,
    ) -> KernelSpec {
        let mut spec = KernelSpec::new("sconv_src", entry, bindings)
            .with_override("DATA_ONLY", f64::from(u8::from(data_only)));
        for (name, v) in [
            ("N", self.n),
            ("SC", self.c),
            ("SH", self.sh),
            ("SW", self.sw),
            ("SS", self.stride),
            ("NP", self.np),
            ("HP", self.hp),
            ("WP", self.wp),
            ("SP", self.sp),
            ("OFF_Y", self.off_y),
            ("OFF_X", self.off_x),
            ("ST_", self.st),
        ] {
            spec = spec.with_override(name, v as f64);
        }
        spec
    }
}

/// The launch writing `src` into its planes `planes` of geometry `geom` (`entry`: `src_planes`
/// or `dy_planes`, the same code), or with `data_only` (`dy_planes` only) the texels of `src`'s
/// own positions only.
fn src_planes(
    ctx: &GpuContext,
    entry: &'static str,
    data_only: bool,
    src: &Tensor,
    geom: PlanesGeom,
    planes: &Texture,
) -> Result<Dispatch> {
    // One invocation per texel: a position of 4 images.
    let texels = geom.texels(data_only);
    let params = Params {
        texels: u(texels, "texels")?,
        ..Params::default()
    };
    Ok(Dispatch::build_res(
        ctx,
        &geom.spec(entry, SRC, data_only),
        bytemuck::bytes_of(&params),
        &[Res::Buf(src), Res::Tex(planes)],
        texels.div_ceil(64) as u64,
    )?
    .with_cost(0.0, 32.0 * texels as f64))
}

/// The launch writing the forward source: the phase planes of the input `x`.
fn input_planes(ctx: &GpuContext, lay: &Layout, x: &Tensor, sc: &Scratch) -> Result<Dispatch> {
    let geom = PlanesGeom::input(lay);
    src_planes(ctx, "src_planes", false, x, geom, &sc.planes)
}

/// The launch writing the padded output gradient `dy` into `sc.dspace`: the input gradient's
/// source, which the weight gradient reads too. Where the scratch serves this geometry alone,
/// only dy's own texels: the padding is still the zeros the texture was made with.
fn dy_planes(ctx: &GpuContext, lay: &Layout, dy: &Tensor, sc: &Scratch) -> Result<Dispatch> {
    let solo = sc.solo == Some(*lay);
    src_planes(ctx, "dy_planes", solo, dy, PlanesGeom::dy(lay), &sc.dspace)
}

const POOL_SRC: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::TexWrite,
    Binding::Read,
];

/// The launch that writes `dy_planes`'s texels for the layer `lay` from the max pooling its
/// output feeds alone (ReLU fused): the pooling's output gradient `pooled` and argmax `arg`
/// (`[cout, N, Ho', Wo']`, or flattened `[cout·Ho'·Wo', N]` with `flat`, as
/// [`crate::gpu::image::max_pool_into`] writes them), over the window `pool` (the
/// convolution's output). The output gradient that the pooling's backward would write is
/// never formed: the layer's weight and input gradients then run without their own copy
/// ([`Dispatch::without_before`] of `dy_planes`). `None` where this does not apply: a scratch
/// that serves other geometries too (the padding must be written), or windows that do not tile
/// the output exactly (overlapping, strided past the window, padded, or leaving rows over).
pub fn pooled_dy_planes(
    ctx: &GpuContext,
    lay: &Layout,
    pooled: &Tensor,
    arg: &Tensor,
    pool: Window,
    flat: bool,
    sc: &Scratch,
) -> Result<Option<Dispatch>> {
    let g = lay.geom;
    let n = g.window.n;
    let Some((pho, pwo)) = pool.out() else {
        return Ok(None);
    };
    let k = pool.k;
    if sc.solo != Some(*lay)
        || (pool.n, pool.h, pool.w) != (n, lay.ho, lay.wo)
        || pool.stride != k
        || pool.pad() != (0, 0)
        || pho * k != lay.ho
        || pwo * k != lay.wo
    {
        return Ok(None);
    }
    check_len(pooled, g.cout * n * pho * pwo, "pooled output gradient")?;
    check_len(arg, g.cout * n * pho * pwo, "pooling argmax")?;
    let windows = g.cout * n.div_ceil(4) * pho * pwo;
    let mut spec = PlanesGeom::dy(lay)
        .spec("pool_dy_planes", POOL_SRC, true)
        .with_override("PFLAT", f64::from(u8::from(flat)));
    for (name, v) in [("PK_", k), ("PHO", pho), ("PWO", pwo)] {
        spec = spec.with_override(name, v as f64);
    }
    let params = Params {
        texels: u(windows, "pooling windows")?,
        ..Params::default()
    };
    Ok(Some(
        Dispatch::build_res(
            ctx,
            &spec,
            bytemuck::bytes_of(&params),
            &[Res::Buf(pooled), Res::Tex(&sc.dspace), Res::Buf(arg)],
            windows.div_ceil(64) as u64,
        )?
        .with_cost(0.0, 32.0 * (windows * k * k) as f64),
    ))
}

fn meta(
    ctx: &GpuContext,
    lay: &Layout,
    entry: &'static str,
    nnz: usize,
    idx: &Tensor,
    vals: &Tensor,
    sc: &Scratch,
) -> Result<Dispatch> {
    let mut spec = lay.geometry(KernelSpec::new("sconv_meta", entry, META));
    for (name, v) in [
        ("NPY", lay.npy),
        ("WQ", lay.wq),
        ("ST", lay.st),
        ("LT", lay.lt),
        ("LL", lay.ll),
        ("WD", lay.wd),
        ("STD", lay.std),
    ] {
        spec = spec.with_override(name, v as f64);
    }
    let params = Params {
        nnz: u(nnz, "slots")?,
        texels: u(nnz, "slots")?,
        ..Params::default()
    };
    let workgroups = if entry == "bwd_rows" {
        1
    } else {
        nnz.div_ceil(64) as u64
    };
    Ok(Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[
            Res::Buf(idx),
            Res::Buf(vals),
            Res::Tex(&sc.meta),
            Res::Buf(&sc.rows),
        ],
        workgroups,
    )?
    .with_cost(0.0, 20.0 * nnz as f64))
}

/// Chains launches into one dispatch: the last one, with the others encoded before it.
fn chain(mut ops: Vec<Dispatch>, flops: f64) -> Result<Dispatch> {
    let last = ops
        .pop()
        .ok_or_else(|| RiglError::invalid("a sparse convolution with no launches"))?;
    let bytes = ops
        .iter()
        .chain(std::iter::once(&last))
        .map(|d| d.bytes)
        .sum();
    Ok(last.with_before(ops).with_cost(flops, bytes))
}

/// The spconv launch: `rows` rows over an output space of `n·u` positions.
#[allow(clippy::too_many_arguments)]
fn spconv(
    ctx: &GpuContext,
    lay: &Layout,
    form: SparseConvForm,
    forward: bool,
    nnz: usize,
    idx: &Tensor,
    sc: &Scratch,
    out: &Tensor,
    bias: Option<&Tensor>,
    accumulate: bool,
    pool: Option<&PooledOut<'_>>,
) -> Result<Dispatch> {
    let g = lay.geom;
    let s = g.window.stride;
    let (rows, u_sp, cols, roww, p_src, ptr_off, ptrs) = if forward {
        (
            g.cout,
            lay.u_fwd,
            lay.wo,
            lay.wq,
            lay.p_fwd,
            2 * nnz + lay.in_dim() + 1,
            idx,
        )
    } else {
        (
            g.cin * s * s,
            lay.u_bwd,
            lay.wa,
            lay.wd,
            lay.p_bwd,
            0,
            &sc.rows,
        )
    };
    let total = lay.n4 * u_sp;
    let wg = 64usize;
    // The rows of one block of positions read every source plane's texels of that block: keep
    // them within about 512 KiB (a core's L2) so the block stays cached while its rows run
    // (docs/performance.md#sparse-convolutions).
    let planes = if forward {
        lay.npy * lay.npy * g.cin
    } else {
        g.cout
    };
    let v = ((512 << 10) / (planes * 16 * wg))
        .min(total.div_ceil(wg))
        .clamp(1, VMAX);
    // Skipping taps: places first, a subgroup's 16 positions in a row (LeNet-5's `conv2`: one
    // or two places of 25 image groups). 2 positions a lane measured faster than 1 (the
    // metadata of 8 nonzeros feeds twice the gathers) and than 4 (more places, wider boxes).
    let skip = !forward && lay.bwd_skips_rows();
    let v = if skip { 2 } else { v };
    // Pooled: a lane per window of a pair of image groups, its 4 places of both.
    let (v, lanes, entry, bindings) = match pool {
        Some(po) => (
            8,
            lay.n4.div_ceil(2) * po.pho * po.pwo,
            "spconv_pool",
            SPCONV_POOL,
        ),
        None => (v, total.div_ceil(v), "spconv", SPCONV),
    };
    let blocks = lanes.div_ceil(wg);
    let (pho, pwo) = pool.map_or((1, 1), |po| (po.pho, po.pwo));
    let spec = lay
        .geometry(KernelSpec::new("sconv", entry, bindings))
        .with_override("POOL", f64::from(u8::from(pool.is_some())))
        .with_override("PHO", pho as f64)
        .with_override("PWO", pwo as f64)
        .with_override("N4", lay.n4 as f64)
        .with_override("U", u_sp as f64)
        .with_override("COLS", cols as f64)
        .with_override("ROWW", roww as f64)
        .with_override("PG", p_src as f64)
        .with_override("FORWARD", f64::from(u8::from(forward)))
        .with_override("BIAS", f64::from(u8::from(bias.is_some())))
        .with_override(
            "BCAST",
            f64::from(u8::from(form == SparseConvForm::Subgroup)),
        )
        .with_override("WG", wg as f64)
        .with_override("V", v as f64)
        .with_override("TAPSKIP", f64::from(u8::from(skip)));
    let params = Params {
        rows: u(rows, "rows")?,
        blocks: u(blocks, "blocks")?,
        nnz: u(nnz, "slots")?,
        ptr_off: u(ptr_off, "index offset")?,
        accum: u32::from(accumulate),
        ..Params::default()
    };
    Ok(Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[
            Res::Buf(ptrs),
            Res::Tex(&sc.meta),
            Res::Tex(if forward { &sc.planes } else { &sc.dspace }),
            Res::Buf(out),
            Res::Buf(bias.unwrap_or(idx)),
        ]
        .into_iter()
        .chain(
            pool.into_iter()
                .flat_map(|po| [Res::Buf(po.arg), Res::Tex(po.tex)]),
        )
        .collect::<Vec<_>>(),
        (rows * blocks) as u64,
    )?
    .with_cost(0.0, 16.0 * (nnz as f64) * total as f64 / g.cout as f64))
}

/// `y = conv(x, w) + bias` with `w` the `nnz` slots `vals` of index `idx`; `x` `[cin, N, H, W]`,
/// `y` `[cout, N, Ho, Wo]` (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &GpuContext,
    form: SparseConvForm,
    lay: &Layout,
    nnz: usize,
    idx: &Tensor,
    vals: &Tensor,
    bias: Option<&Tensor>,
    x: &Tensor,
    y: &Tensor,
    sc: &Scratch,
) -> Result<Dispatch> {
    let g = lay.geom;
    check(lay, nnz, idx, sc)?;
    check_len(vals, nnz, "values")?;
    check_len(x, g.input_len(), "input")?;
    check_len(y, g.output_len()?, "output")?;
    if let Some(b) = bias {
        check_len(b, g.cout, "bias")?;
    }
    let ops = vec![
        meta(ctx, lay, "meta_fwd", nnz, idx, vals, sc)?,
        input_planes(ctx, lay, x, sc)?,
        spconv(ctx, lay, form, true, nnz, idx, sc, y, bias, false, None)?,
    ];
    chain(ops, sparse_flops(lay, nnz))
}

/// The pooled outputs of [`forward_pooled`] besides the pooled values.
struct PooledOut<'a> {
    arg: &'a Tensor,
    tex: &'a Texture,
    pho: usize,
    pwo: usize,
}

/// [`forward`] of a convolution whose output feeds a 2x2 max pooling of stride 2 alone, with
/// the ReLU between them fused and the pooling's output flattened for a compressed linear
/// layer (`max_pool_into` with `relu`, the flattened layout and a texture): writes what that
/// pooling writes, `pooled` `[cout·Ho'·Wo', N]`, its argmax `arg` (into the convolution's
/// output `[cout, N, Ho, Wo]`) and the linear layer's input texture `tex`, and never the
/// convolution's output itself (`shaders/sconv.wgsl`, `spconv_pool`). `None` where it does not
/// apply: other windows, windows that do not tile the output, a batch not a multiple of 4.
#[allow(clippy::too_many_arguments)]
pub fn forward_pooled(
    ctx: &GpuContext,
    form: SparseConvForm,
    lay: &Layout,
    nnz: usize,
    idx: &Tensor,
    vals: &Tensor,
    bias: Option<&Tensor>,
    x: &Tensor,
    pool: Window,
    (pooled, arg, tex): (&Tensor, &Tensor, &Texture),
    sc: &Scratch,
) -> Result<Option<Dispatch>> {
    let g = lay.geom;
    let n = g.window.n;
    let Some((pho, pwo)) = pool.out() else {
        return Ok(None);
    };
    if (pool.k, pool.stride) != (2, 2)
        || pool.pad() != (0, 0)
        || (pool.n, pool.h, pool.w) != (n, lay.ho, lay.wo)
        || (2 * pho, 2 * pwo) != (lay.ho, lay.wo)
        || !n.is_multiple_of(4)
    {
        return Ok(None);
    }
    check(lay, nnz, idx, sc)?;
    check_len(vals, nnz, "values")?;
    check_len(x, g.input_len(), "input")?;
    check_len(pooled, g.cout * n * pho * pwo, "pooled output")?;
    check_len(arg, g.cout * n * pho * pwo, "pooling argmax")?;
    if let Some(b) = bias {
        check_len(b, g.cout, "bias")?;
    }
    if (tex.rows, tex.batch) != (g.cout * pho * pwo, n) {
        return Err(RiglError::invalid(format!(
            "sparse convolution pooled into texture '{}' ({} rows of {}): needs {} rows of {n}",
            tex.label,
            tex.rows,
            tex.batch,
            g.cout * pho * pwo
        )));
    }
    let po = PooledOut { arg, tex, pho, pwo };
    let ops = vec![
        meta(ctx, lay, "meta_fwd", nnz, idx, vals, sc)?,
        input_planes(ctx, lay, x, sc)?,
        spconv(
            ctx,
            lay,
            form,
            true,
            nnz,
            idx,
            sc,
            pooled,
            bias,
            false,
            Some(&po),
        )?,
    ];
    chain(ops, sparse_flops(lay, nnz)).map(Some)
}

/// Useful FLOPs of one product of a layer with `nnz` active weights.
pub fn sparse_flops(lay: &Layout, nnz: usize) -> f64 {
    2.0 * nnz as f64 * (lay.geom.window.n * lay.ho * lay.wo) as f64
}

/// `dx (+)= conv_transpose(dy, w)`: `dy` `[cout, N, Ho, Wo]`, `dx` `[cin, N, H, W]`. Its first
/// launch writes `dy`'s padded planes, which [`weight_grad`] of the same `dy` writes too: a
/// caller running both in a row may drop this one's (`Dispatch::without_before(&["dy_planes"])`).
#[allow(clippy::too_many_arguments)]
pub fn input_grad(
    ctx: &GpuContext,
    form: SparseConvForm,
    lay: &Layout,
    nnz: usize,
    idx: &Tensor,
    vals: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    sc: &Scratch,
) -> Result<Dispatch> {
    let g = lay.geom;
    check(lay, nnz, idx, sc)?;
    check_len(vals, nnz, "values")?;
    check_len(dy, g.output_len()?, "output gradient")?;
    check_len(dx, g.input_len(), "input gradient")?;
    let ops = vec![
        meta(ctx, lay, "bwd_rows", nnz, idx, vals, sc)?,
        meta(ctx, lay, "meta_bwd", nnz, idx, vals, sc)?,
        dy_planes(ctx, lay, dy, sc)?,
        spconv(
            ctx, lay, form, false, nnz, idx, sc, dx, None, accumulate, None,
        )?,
    ];
    chain(ops, sparse_flops(lay, nnz))
}

/// The weight gradient at the `nnz` active positions of `idx`, per slot into `grad`
/// (overwritten): `x` `[cin, N, H, W]`, `dy` `[cout, N, Ho, Wo]`.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad(
    ctx: &GpuContext,
    form: SparseConvForm,
    lay: &Layout,
    nnz: usize,
    idx: &Tensor,
    x: &Tensor,
    dy: &Tensor,
    grad: &Tensor,
    sc: &Scratch,
) -> Result<Dispatch> {
    let g = lay.geom;
    check(lay, nnz, idx, sc)?;
    check_len(grad, nnz, "weight gradient")?;
    check_len(x, g.input_len(), "input")?;
    check_len(dy, g.output_len()?, "output gradient")?;
    // The metadata's values are not read here: the gradient stands in for them.
    let rows_nnz = nnz.div_ceil(g.cout);
    let wg = rows_nnz.div_ceil(8) * 8;
    let wg = wg.clamp(8, 64);
    let spec = KernelSpec::new("sconv_sddmm", "sddmm", SDDMM)
        .with_override("N4", lay.n4 as f64)
        .with_override("U", lay.u_fwd as f64)
        .with_override("COLS", lay.wo as f64)
        .with_override("ROWW", lay.wq as f64)
        .with_override("PG", lay.p_fwd as f64)
        .with_override("DST", lay.std as f64)
        .with_override("DPG", lay.p_bwd as f64)
        .with_override("DROWW", lay.wd as f64)
        .with_override("DLT", lay.lt as f64)
        .with_override("DLL", lay.ll as f64)
        .with_override(
            "BCAST",
            f64::from(u8::from(form == SparseConvForm::Subgroup)),
        )
        .with_override("WG", wg as f64);
    let params = Params {
        rows: u(g.cout, "rows")?,
        nnz: u(nnz, "slots")?,
        ptr_off: u(2 * nnz + lay.in_dim() + 1, "index offset")?,
        ..Params::default()
    };
    let sddmm = Dispatch::build_res(
        ctx,
        &spec,
        bytemuck::bytes_of(&params),
        &[
            Res::Buf(idx),
            Res::Tex(&sc.meta),
            Res::Tex(&sc.planes),
            Res::Tex(&sc.dspace),
            Res::Buf(grad),
        ],
        g.cout as u64,
    )?
    .with_cost(0.0, 32.0 * nnz as f64 * (lay.n4 * lay.u_fwd) as f64);
    let ops = vec![
        meta(ctx, lay, "meta_fwd", nnz, idx, grad, sc)?,
        input_planes(ctx, lay, x, sc)?,
        dy_planes(ctx, lay, dy, sc)?,
        sddmm,
    ];
    chain(ops, sparse_flops(lay, nnz))
}

//! A network's first convolution, its ReLU and a max pooling as one layer (`shaders/conv_pool.wgsl`):
//! `y = max_pool(relu(conv(x, w ⊙ mask) + bias))` with the argmax of each window, and the weight
//! and bias gradients from the pooled output gradient, visiting only the argmaxes. The CPU twin
//! is the three layers in a row ([`crate::cpu::conv`]).
//!
//! It is for a first convolution (no input gradient) with few input values under one pooling
//! window ([`ConvPoolGeom::fits`]): LeNet-5's `conv1` reads a 6x6 patch per pooled output.
//! Unfused, that layer's convolution writes four times the pooled output, the pooling reads it
//! back, and its backward scatters the pooled gradient into a tensor of the same size, three
//! quarters zeros, for the weight gradient to read again.

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, RiglError};
use crate::gpu::conv::ConvGeom;
use crate::gpu::conv_tex::{src_texture, SrcLayout};
use crate::gpu::image::u;
use crate::gpu::ops::{check_len, Dispatch, Res};
use crate::gpu::registry::{Binding, KernelSpec};
use crate::gpu::texture::Texture;
use crate::gpu::{GpuContext, Tensor};
use crate::shape::Window;

/// The most input values under one pooling window's convolutions that the fused layer keeps in
/// registers, and the most taps (`k·k·cin`) of its weight gradient's accumulators.
pub const MAX_PATCH: usize = 64;

/// The most accumulators (`(k·k·cin + 1)·cout`) of one weight-gradient invocation.
pub const MAX_ACCUMULATORS: usize = 1024;

/// Invocations of the weight gradient's partial sums (each visits every `CHUNKS`-th pooled
/// position, for every channel): two workgroups, one per core of a 2-core host; the sum of
/// their partials reads `CHUNKS` values per weight.
const CHUNKS: usize = 128;

/// A convolution and the max pooling of its ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPoolGeom {
    /// The convolution.
    pub conv: ConvGeom,
    /// The pooling window over the convolution's output (its `n`, `h`, `w` are the
    /// convolution's output).
    pub pool: Window,
    /// The code unrolled for this geometry (true), or the shader file's generic loops.
    unrolled: bool,
}

impl ConvPoolGeom {
    /// The convolution `conv` pooled by `pool` (a window over the convolution's output: its
    /// `n`, `h` and `w` are the convolution's, as [`crate::nn::spec::Layer::pool_window`] makes
    /// it); an error when either window does not fit or `pool` is over another shape.
    pub fn new(conv: ConvGeom, pool: Window) -> Result<Self> {
        let (hc, wc) = conv.out()?;
        if (pool.n, pool.h, pool.w) != (conv.window.n, hc, wc) {
            return Err(RiglError::invalid(format!(
                "a pooling over {} images of {}x{} after a convolution of {} images to {hc}x{wc}",
                pool.n, pool.h, pool.w, conv.window.n
            )));
        }
        if pool.k == 0 || pool.stride == 0 || pool.out().is_none() {
            return Err(RiglError::invalid(format!(
                "a {k}x{k} pooling of stride {} does not fit a {hc}x{wc} convolution output",
                pool.stride,
                k = pool.k
            )));
        }
        Ok(ConvPoolGeom {
            conv,
            pool,
            unrolled: true,
        })
    }

    /// The same layer on the shader file's generic loops instead of the code unrolled for its
    /// geometry: the same results, slower on lavapipe (the tests run both).
    pub fn generic(self) -> Self {
        ConvPoolGeom {
            unrolled: false,
            ..self
        }
    }

    /// Pooled height and width.
    pub fn out(&self) -> (usize, usize) {
        self.pool.out().unwrap_or((0, 0))
    }

    /// Rows (= columns) of the input patch under one pooling window's convolutions.
    pub fn patch_side(&self) -> usize {
        (self.pool.k - 1) * self.conv.window.stride + self.conv.window.k
    }

    /// Input values under one pooling window's convolutions.
    pub fn patch_len(&self) -> usize {
        self.conv.cin * self.patch_side() * self.patch_side()
    }

    /// Taps of the convolution (`k·k·cin`).
    pub fn taps(&self) -> usize {
        self.conv.window.k * self.conv.window.k * self.conv.cin
    }

    /// Whether the fused kernels take this layer: its patch and its taps fit in registers, the
    /// weight gradient's accumulators of every channel in one invocation's private memory.
    pub fn fits(&self) -> bool {
        self.patch_len() <= MAX_PATCH
            && self.taps() < MAX_PATCH
            && (self.taps() + 1) * self.conv.cout <= MAX_ACCUMULATORS
    }

    /// Elements of the pooled output (and of its argmax) `[cout, N, Ho, Wo]`.
    pub fn output_len(&self) -> usize {
        let (ho, wo) = self.out();
        self.conv.cout * self.conv.window.n * ho * wo
    }

    /// Pooled positions per channel (`N·Ho·Wo`).
    fn positions(&self) -> usize {
        let (ho, wo) = self.out();
        self.conv.window.n * ho * wo
    }

    /// The kernel specialised to this geometry, reading its input from the texture copy
    /// (`tex`) or the buffer.
    fn spec(&self, entry: &'static str, tex: bool) -> Result<KernelSpec> {
        if !self.fits() {
            return Err(RiglError::invalid(format!(
                "a fused convolution and pooling keeps at most {MAX_PATCH} input values per \
                 pooled output, fewer taps and {MAX_ACCUMULATORS} weight-gradient accumulators, \
                 not {}, {} and {}",
                self.patch_len(),
                self.taps(),
                (self.taps() + 1) * self.conv.cout
            )));
        }
        let c = self.conv;
        let (cpt, cpl) = c.window.pad();
        let (hc, wc) = c.out()?;
        let (ppt, ppl) = self.pool.pad();
        let (ho, wo) = self.out();
        let side = self.patch_side();
        let bindings = match entry {
            "conv_pool_fwd" | "conv_pool_wgrad" => BINDINGS_T,
            _ => BINDINGS,
        };
        let mut spec = KernelSpec::new("conv_pool", entry, bindings)
            .with_const("TEX", if tex { "true" } else { "false" });
        for (name, code) in self.unrolled_code(entry, tex) {
            spec = spec.with_snippet(name, code);
        }
        for (name, v) in [
            ("CK", c.window.k),
            ("CS", c.window.stride),
            ("CPT", cpt),
            ("CPL", cpl),
            ("CIN", c.cin),
            ("COUT", c.cout),
            ("H", c.window.h),
            ("W", c.window.w),
            ("W4", c.window.w.div_ceil(4)),
            ("HC", hc),
            ("WC", wc),
            ("PK", self.pool.k),
            ("PS", self.pool.stride),
            ("PPT", ppt),
            ("PPL", ppl),
            ("HO", ho),
            ("WO", wo),
            ("PH", side),
            ("PW", side),
            ("PATCH", self.patch_len()),
            ("TAPS", self.taps()),
            ("TAPS1", self.taps() + 1),
            ("WU4", ((self.taps() + 1) * c.cout).div_ceil(4)),
            ("ACC", (self.taps() + 1) * c.cout),
        ] {
            spec = spec.with_const(name, format!("{}u", u(v, "fused convolution geometry")?));
        }
        Ok(spec)
    }

    /// The code of `entry`'s `// BEGIN` ... `// END` regions unrolled for this geometry: the
    /// input patch and the weights of one channel as scalars (forward), the accumulators of
    /// the weight gradient as scalars. With `tex`, each patch row is read as the texels that
    /// hold it (`ceil((side + 3) / 4)` from the one of its first value) and its values picked at
    /// the row's shift within them.
    fn unrolled_code(&self, entry: &str, tex: bool) -> Vec<(&'static str, String)> {
        use std::fmt::Write;
        if !self.unrolled {
            return Vec::new();
        }
        let (k, s, cin) = (self.conv.window.k, self.conv.window.stride, self.conv.cin);
        let side = self.patch_side();
        let taps = self.taps();
        // Tap t = (ky * k + kx) * cin + ci, as in the weights' layout.
        let tap = |t: usize| (t / cin / k, t / cin % k, t % cin);
        // The input patch under the pooling window as scalars x{ci}_{row}_{column}.
        let texels = (side + 2) / 4 + 1;
        let patch = |out: &mut String, indent: &str| {
            if tex {
                let _ = writeln!(out, "{indent}let psh = u32(ix0 & 3);");
                let _ = writeln!(out, "{indent}let px4 = ix0 >> 2u;");
            }
            for ci in 0..cin {
                for r in 0..side {
                    if !tex {
                        for col in 0..side {
                            let _ = writeln!(
                                out,
                                "{indent}let x{ci}_{r}_{col} = input_at({ci}u, img, iy0 + {r}, ix0 + {col});"
                            );
                        }
                        continue;
                    }
                    for j in 0..texels {
                        let _ = writeln!(
                            out,
                            "{indent}let t{ci}_{r}_{j} = input_texel({ci}u, img, iy0 + {r}, px4 + {j});"
                        );
                    }
                    // Value k of the row's texels.
                    let v =
                        |k: usize| format!("t{ci}_{r}_{}.{}", k / 4, ["x", "y", "z", "w"][k % 4]);
                    for col in 0..side {
                        let _ = writeln!(
                            out,
                            "{indent}let x{ci}_{r}_{col} = pick4(psh, {}, {}, {}, {});",
                            v(col),
                            v(col + 1),
                            v(col + 2),
                            v(col + 3)
                        );
                    }
                }
            }
        };
        let mut a = String::new();
        let mut b = String::new();
        let mut c = String::new();
        match entry {
            "conv_pool_fwd" => {
                patch(&mut a, "    ");
                for t in 0..taps {
                    let _ = writeln!(b, "        let w{t} = weight({t}u * COUT + co);");
                }
                for qy in 0..self.pool.k {
                    for qx in 0..self.pool.k {
                        let _ = writeln!(b, "        {{\n            var v = b;");
                        for t in 0..taps {
                            let (ky, kx, ci) = tap(t);
                            let (r, col) = (qy * s + ky, qx * s + kx);
                            let _ = writeln!(b, "            v = fma(w{t}, x{ci}_{r}_{col}, v);");
                        }
                        let _ = writeln!(
                            b,
                            "            cell(co, img, cy0 + {qy}, cx0 + {qx}, v, &best, &at, &found);\n        }}"
                        );
                    }
                }
                vec![("PATCH", a), ("CELLS", b)]
            }
            "conv_pool_wgrad" => {
                let cout = self.conv.cout;
                let cells = self.pool.k * self.pool.k;
                for co in 0..cout {
                    for t in 0..=taps {
                        let _ = writeln!(a, "    var a{co}_{t} = 0.0;");
                        let _ =
                            writeln!(c, "    out[base + {}u] = a{co}_{t};", co * (taps + 1) + t);
                    }
                }
                patch(&mut b, "        ");
                for co in 0..cout {
                    let _ = writeln!(
                        b,
                        "        {{\n            let o = {co}u * total + pos;\n            \
                         let a = arg[o];\n            \
                         let g = select(0.0, b2[o], a != NO_ARG);\n            \
                         let q = u32(clamp(i32((a / WC) % HC) - cy0, 0, i32(PK) - 1)) * PK\n                \
                         + u32(clamp(i32(a % WC) - cx0, 0, i32(PK) - 1));"
                    );
                    for t in 0..taps {
                        let (ky, kx, ci) = tap(t);
                        // The tap's input under each window cell, picked by the argmax's cell.
                        let at = |q: usize| {
                            let (qy, qx) = (q / self.pool.k, q % self.pool.k);
                            format!("x{ci}_{}_{}", qy * s + ky, qx * s + kx)
                        };
                        let mut v = at(0);
                        for q in 1..cells {
                            v = format!("select({v}, {}, q == {q}u)", at(q));
                        }
                        let _ = writeln!(b, "            a{co}_{t} = fma(g, {v}, a{co}_{t});");
                    }
                    let _ = writeln!(b, "            a{co}_{taps} += g;\n        }}");
                }
                vec![("ACC", a), ("ADD", b), ("STORE", c)]
            }
            _ => Vec::new(),
        }
    }

    fn params(&self, flags: u32, chunks: usize) -> Result<Params> {
        let c = &self.conv;
        // Every flat index the kernels form must fit u32.
        u(
            c.input_len()
                .max(c.output_len()?)
                .max(c.weight_len())
                .max(c.cout * chunks * (self.taps() + 1)),
            "fused convolution tensor",
        )?;
        Ok(Params {
            n: u(c.window.n, "batch")?,
            flags,
            chunks: u(chunks, "chunks")?,
            _pad: 0,
        })
    }

    /// Invocations of the weight gradient's partial sums (each covers every channel).
    fn chunks(&self) -> usize {
        CHUNKS.min(self.positions()).max(1)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct Params {
    n: u32,
    flags: u32,
    chunks: u32,
    _pad: u32,
}

/// The forward's and the weight gradient's bindings, the input's texture copy last.
const BINDINGS_T: &[Binding] = &[
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::Uniform,
    Binding::TexRead,
];
/// The other entries': [`BINDINGS_T`] without the texture.
const BINDINGS: &[Binding] = BINDINGS_T.split_at(BINDINGS_T.len() - 1).0;
const WG: u64 = 64;
const BIAS: u32 = 1;
const MASKED: u32 = 2;

/// The layer's input `x` copied into a texture that [`forward`] and [`weight_grad`] read their
/// patches from (4 values of an input row per texel; see `shaders/conv_pool.wgsl`), and the
/// launch that fills it, to run before the forward at every step; `None` where the texture
/// would not fit this device (the kernels then read `x` itself).
pub fn input_texture(
    ctx: &GpuContext,
    g: &ConvPoolGeom,
    x: &Tensor,
) -> Result<Option<(Texture, Dispatch)>> {
    let c = &g.conv;
    check_len(x, c.input_len(), "fused convolution input")?;
    let dims = (c.cin, c.window.n, c.window.h, c.window.w);
    if !SrcLayout::Rows.fits(ctx, dims) {
        return Ok(None);
    }
    src_texture(
        ctx,
        x,
        dims,
        SrcLayout::Rows,
        "fused convolution input texture",
    )
    .map(Some)
}

/// `y = max_pool(relu(conv(x, w ⊙ mask) + bias))` and, per pooled output, the flat index into
/// the convolution's output `[cout, N, Hc, Wc]` of its window's first maximum, or `u32::MAX`
/// where that maximum is `<= 0` ([`crate::gpu::image::max_pool_relu`]'s convention). The
/// patches come from `xt`, [`input_texture`]'s copy of `x`, where given.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &GpuContext,
    g: &ConvPoolGeom,
    x: &Tensor,
    xt: Option<&Texture>,
    w: &Tensor,
    mask: Option<&Tensor>,
    bias: Option<&Tensor>,
    y: &Tensor,
    arg: &Tensor,
) -> Result<Dispatch> {
    let c = &g.conv;
    check_len(x, c.input_len(), "fused convolution input")?;
    check_len(w, c.weight_len(), "fused convolution weights")?;
    if let Some(m) = mask {
        check_len(m, c.weight_len(), "fused convolution mask")?;
    }
    if let Some(b) = bias {
        check_len(b, c.cout, "fused convolution bias")?;
    }
    check_len(y, g.output_len(), "fused convolution output")?;
    check_len(arg, g.output_len(), "fused convolution argmax")?;
    let p = g.params(0, 1)?;
    let prep = g.params(
        if mask.is_some() { MASKED } else { 0 } | if bias.is_some() { BIAS } else { 0 },
        1,
    )?;
    let s = Spares::new(ctx)?;
    // The masked weights and the bias, copied where every invocation reads them as uniforms.
    let wu = Tensor::zeros_uniform(ctx, "fused convolution weights", c.weight_len() + c.cout)?;
    let to_uniform = Dispatch::build(
        ctx,
        &g.spec("conv_pool_wprep", false)?,
        bytemuck::bytes_of(&prep),
        &[
            w,
            mask.unwrap_or(w),
            bias.unwrap_or(&s.r),
            &wu,
            &s.w1,
            &s.w2,
            &s.u,
        ],
        ((c.weight_len() + c.cout) as u64).div_ceil(WG),
    )?;
    Ok(Dispatch::build_res(
        ctx,
        &g.spec("conv_pool_fwd", xt.is_some())?,
        bytemuck::bytes_of(&p),
        &[
            Res::Buf(x),
            Res::Buf(&s.r),
            Res::Buf(&s.r),
            Res::Buf(y),
            Res::Buf(arg),
            Res::Buf(&s.w2),
            Res::Buf(&wu),
            Res::Tex(xt.unwrap_or(&s.t)),
        ],
        (g.positions() as u64).div_ceil(WG),
    )?
    .with_before(vec![to_uniform])
    .with_cost(
        c.flops(),
        4.0 * (c.input_len() + 2 * g.output_len() + c.weight_len()) as f64,
    ))
}

/// Placeholders for the bindings an entry does not use: read, written (a buffer cannot be bound
/// both ways in one dispatch, nor written twice), uniform and texture.
struct Spares {
    r: Tensor,
    w1: Tensor,
    w2: Tensor,
    u: Tensor,
    t: Texture,
}

impl Spares {
    fn new(ctx: &GpuContext) -> Result<Self> {
        let t = |what| Tensor::zeros(ctx, what, 1);
        Ok(Spares {
            r: t("unused binding")?,
            w1: t("unused binding")?,
            w2: t("unused binding")?,
            u: Tensor::zeros_uniform(ctx, "unused binding", 4)?,
            t: Texture::new(ctx, "unused binding", 1, 4)?,
        })
    }
}

/// The weight gradient `dw` `[k, k, cin, cout]` (the dense `dL/d(mask ⊙ w)` at every position)
/// and, given `db`, the bias gradient, from the pooled output gradient `dy` and the argmax
/// [`forward`] wrote: partial sums over chunks of the pooled outputs, then their sum (one
/// dispatch, the partial sums before it). The patches come from `xt` where given, as in
/// [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn weight_grad(
    ctx: &GpuContext,
    g: &ConvPoolGeom,
    x: &Tensor,
    xt: Option<&Texture>,
    dy: &Tensor,
    arg: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
) -> Result<Dispatch> {
    let c = &g.conv;
    check_len(x, c.input_len(), "fused convolution input")?;
    check_len(dy, g.output_len(), "fused convolution output gradient")?;
    check_len(arg, g.output_len(), "fused convolution argmax")?;
    check_len(dw, c.weight_len(), "fused convolution weight gradient")?;
    if let Some(b) = db {
        check_len(b, c.cout, "fused convolution bias gradient")?;
    }
    let chunks = g.chunks();
    let taps1 = g.taps() + 1;
    let partial = Tensor::zeros(
        ctx,
        "fused convolution partial sums",
        c.cout * chunks * taps1,
    )?;
    let flags = if db.is_some() { BIAS } else { 0 };
    let p = g.params(flags, chunks)?;
    let s = Spares::new(ctx)?;
    let parts = Dispatch::build_res(
        ctx,
        &g.spec("conv_pool_wgrad", xt.is_some())?,
        bytemuck::bytes_of(&p),
        &[
            Res::Buf(x),
            Res::Buf(dy),
            Res::Buf(&s.r),
            Res::Buf(&partial),
            Res::Buf(arg),
            Res::Buf(&s.w1),
            Res::Buf(&s.u),
            Res::Tex(xt.unwrap_or(&s.t)),
        ],
        (chunks as u64).div_ceil(WG),
    )?;
    let live = g.positions() * c.cout;
    Ok(Dispatch::build(
        ctx,
        &g.spec("conv_pool_wsum", false)?,
        bytemuck::bytes_of(&p),
        &[&partial, &s.r, &s.r, dw, arg, db.unwrap_or(&s.w1), &s.u],
        ((taps1 * c.cout) as u64).div_ceil(WG),
    )?
    .with_before(vec![parts])
    .with_cost(
        2.0 * (live * taps1) as f64,
        4.0 * (c.input_len() + 2 * live + c.weight_len()) as f64,
    ))
}

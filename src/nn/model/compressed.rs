//! The compressed weight tensors of a [`GpuModel`]: each tensor's active weights as the slots of
//! a [`CsrIndex`] over `[rows, cols]` (a convolution kernel `[kh·kw·cin, cout]`, a linear layer
//! `[in, out]`), with their gradient and momentum, in flat slot buffers shared by every
//! compressed tensor. Convolutions run on [`crate::gpu::sparse_conv`], linear layers on the
//! sparse matrix kernels of [`crate::gpu::spmm`] (as [`crate::nn::SparseMlp`]'s layers, with
//! per-layer metadata textures and one value texture the optimizer keeps current).
//!
//! Nothing dense of such a tensor stays on the GPU: a mask update runs there as
//! [`crate::nn::SparseMlp`]'s does (drop over the slot values of all compressed tensors; then one
//! tensor at a time its dense gradient into one scratch sized for the largest (RigL only), the
//! grow selection over it, and the slots and both orders of the index rebuilt,
//! `shaders/csr.wgsl`), so the masks are the masked-dense path's bit for bit. The saved state is
//! dense per param, read from the slots and the index.

use crate::cpu::model::HostModel;
use crate::error::{Result, RiglError};
use crate::gpu::ops::Dispatch;
use crate::gpu::ops::{self as gpu_ops};
use crate::gpu::sparse_conv::{self, Layout, Scratch, SparseConvForm};
use crate::gpu::spmm::{self, RebuildBuffers, SparseShape};
use crate::gpu::texture::{meta_texture, Texture};
use crate::gpu::{GpuContext, Tensor};
use crate::nn::mlp::ALIGN;
use crate::sparse::csr::CsrIndex;
use crate::sparse::update::{GrowRule, LayerCounts, LayerPlacement, MaskUpdater};

use super::GpuModel;

/// Which of a compressed tensor's training products run dense, over its slots scattered into a
/// scratch shared by such tensors (the masked path's kernels; the tensor's memory stays in
/// proportion to its density), instead of on the compressed kernels. `--kernels auto` picks
/// each product of a convolution by its measured time; a linear layer runs all of its products
/// one way (its compressed products share their operand textures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenseProducts {
    /// The forward product.
    pub forward: bool,
    /// The weight gradient (gathered back into the slot gradients).
    pub weight_grad: bool,
    /// The input gradient (not run for the first layer).
    pub input_grad: bool,
}

impl DenseProducts {
    /// Every product one way: all dense (`true`) or all compressed.
    pub const fn all(dense: bool) -> Self {
        DenseProducts {
            forward: dense,
            weight_grad: dense,
            input_grad: dense,
        }
    }

    /// Whether any product runs dense (the tensor then needs the dense weight scratch).
    pub fn any(&self) -> bool {
        self.forward || self.weight_grad || self.input_grad
    }

    /// Whether every product runs dense.
    pub fn every(&self) -> bool {
        self.forward && self.weight_grad && self.input_grad
    }

    /// `all(x)` for some `x`: `Some(x)`; a mix of the two: None.
    pub fn uniform(&self) -> Option<bool> {
        (*self == Self::all(self.forward)).then_some(self.forward)
    }
}

/// What kind of layer a compressed tensor belongs to, and what its products need.
#[derive(Debug)]
pub enum CompressedKind {
    /// A convolution kernel on [`crate::gpu::sparse_conv`], with its product geometry.
    Conv(Box<Layout>),
    /// A linear layer on [`crate::gpu::spmm`]: its metadata textures (forward and input
    /// gradient orders) and the dispatch that rewrites them and its values in the value texture
    /// of [`Slots`] from the index (after loading and after every mask update).
    Linear(Box<LinearMeta>),
}

/// A compressed linear layer's metadata: per nonzero (column, slot) in each product's order.
#[derive(Debug)]
pub struct LinearMeta {
    /// Forward metadata.
    pub fwd_meta: Texture,
    /// Input-gradient metadata.
    pub bwd_meta: Texture,
    /// The dispatch that rewrites both, and the layer's values in the value texture of
    /// [`Slots`], from the index.
    pub meta: Dispatch,
}

/// A weight tensor kept compressed: its active weights as the slots of an index, with their
/// gradient (the SDDMM's, active positions only) and momentum, each a view of the model's flat
/// slot buffers ([`Slots`]).
#[derive(Debug)]
pub struct CompressedParam {
    /// The layer it belongs to.
    pub kind: CompressedKind,
    /// Rows of the weight matrix (`kh·kw·cin`, or a linear layer's inputs).
    pub rows: usize,
    /// Columns (output channels or features).
    pub cols: usize,
    /// Active weights.
    pub nnz: usize,
    /// The param this kernel is (index into [`GpuModel::params`]).
    pub param: usize,
    /// First slot in the flat slot buffers.
    pub slot_offset: usize,
    /// Index words ([`CsrIndex::to_words`]).
    pub idx: Tensor,
    /// Value per slot.
    pub vals: Tensor,
    /// Gradient per slot.
    pub grad: Tensor,
    /// Momentum per slot.
    pub mom: Tensor,
    /// New-connection counter and ever-active bitmap ([`spmm::stats_len`] words).
    pub stats: Tensor,
    /// The dense kernel gradient into [`Slots::dense_grad`] (RigL's grow score, run at mask
    /// updates only).
    pub(super) dense_grad: Option<Dispatch>,
}

/// What the compressed kernels of a model share: the flat slot buffers, the textures of the
/// products, and the scratch of mask updates (one layer at a time).
#[derive(Debug)]
pub struct Slots {
    /// Values of every compressed kernel's slots.
    pub vals: Tensor,
    /// Their gradients.
    pub grad: Tensor,
    /// Their momentum.
    pub mom: Tensor,
    /// Slots in the flat buffers, alignment padding included.
    pub total: usize,
    /// Textures the convolution products share (None without compressed convolutions).
    pub(super) textures: Option<Scratch>,
    /// Slot values as the linear layers' products read them (None without compressed linear
    /// layers); the optimizer writes it with the values.
    pub(super) values: Option<Texture>,
    /// One tensor's dense gradient (at a mask update, and in the backward pass of a tensor on
    /// dense products), the largest tensor's size.
    pub(super) dense_grad: Tensor,
    /// One tensor's weights scattered from its slots, for the tensors on dense products (None
    /// without any).
    pub(super) dense_w: Option<Tensor>,
    /// One kernel's grow selection flags.
    gsel: Tensor,
    /// One kernel's index rebuild scratch.
    rebuild: Tensor,
}

/// The prebuilt mask update of the compressed kernels.
#[derive(Debug)]
pub(super) struct SlotUpdate {
    drop: MaskUpdater,
    grows: Vec<MaskUpdater>,
    rebuild: Vec<(Vec<Dispatch>, Vec<Dispatch>)>,
}

impl Slots {
    /// Bytes of the scratch shared by the compressed tensors (dense gradient, grow flags, index
    /// rebuild, and the dense weights of the tensors on dense products).
    pub fn update_scratch_bytes(&self) -> u64 {
        self.dense_grad.bytes()
            + self.gsel.bytes()
            + self.rebuild.bytes()
            + self.dense_w.as_ref().map_or(0, Tensor::bytes)
    }

    /// SGD over every compressed tensor's slots in one dispatch (padding slots stay 0), which
    /// also keeps the value texture of the compressed linear layers current.
    pub(super) fn sgd(
        &self,
        ctx: &GpuContext,
        cfg: crate::gpu::ops::SgdConfig,
    ) -> Result<Dispatch> {
        gpu_ops::sgd_mirrored(
            ctx,
            &self.grad,
            &self.vals,
            &self.mom,
            None,
            self.total,
            cfg,
            self.values.as_ref(),
        )
    }

    /// The dense weight scratch viewed as `c`'s weight matrix.
    pub(super) fn dense_weights(
        &self,
        ctx: &GpuContext,
        c: &CompressedParam,
        name: &str,
    ) -> Result<Tensor> {
        let w = self.dense_w.as_ref().ok_or_else(|| {
            RiglError::invalid(format!(
                "{name}: no dense weight scratch for its dense products"
            ))
        })?;
        w.slice(
            ctx,
            0,
            c.rows() * c.cols(),
            &format!("{name} dense weights"),
        )
    }
}

impl SlotUpdate {
    /// Bytes of the drop phase's selection.
    pub(super) fn selection_bytes(&self) -> u64 {
        self.drop.selection().bytes()
    }
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl CompressedParam {
    /// Rows of the weight matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the weight matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The sparse-matrix shape over a batch of `n`.
    pub fn shape(&self, n: usize) -> SparseShape {
        SparseShape {
            in_dim: self.rows,
            out_dim: self.cols,
            nnz: self.nnz,
            batch: n,
        }
    }

    /// Reads the index back from the GPU.
    pub fn read_index(&self, ctx: &GpuContext) -> Result<CsrIndex> {
        CsrIndex::from_words(self.rows(), self.cols(), self.nnz, &self.idx.read_u32(ctx)?)
    }

    /// Reads one state tensor back, dense `[kh, kw, cin, cout]`.
    pub(super) fn read(&self, ctx: &GpuContext, kind: ParamTensor) -> Result<Vec<f32>> {
        match kind {
            ParamTensor::Ema => Ok(vec![0.0; self.rows() * self.cols()]),
            ParamTensor::Ever => Ok(self.ever_of(&self.stats.read_u32(ctx)?)),
            ParamTensor::Weights => Ok(self.read_index(ctx)?.scatter(&self.vals.read_f32(ctx)?)),
            ParamTensor::Momentum => Ok(self.read_index(ctx)?.scatter(&self.mom.read_f32(ctx)?)),
            ParamTensor::Masks => Ok(self.read_index(ctx)?.mask()),
        }
    }

    /// Reads every state tensor back at once, dense, reading the index once: weights, mask,
    /// momentum, EMA (zeros: only SNFS keeps one, and it runs masked-dense) and the ever-active
    /// map, in [`ParamTensor`]'s order.
    pub(super) fn read_all(&self, ctx: &GpuContext) -> Result<[Vec<f32>; 5]> {
        let index = self.read_index(ctx)?;
        Ok([
            index.scatter(&self.vals.read_f32(ctx)?),
            index.mask(),
            index.scatter(&self.mom.read_f32(ctx)?),
            vec![0.0; self.rows() * self.cols()],
            self.ever_of(&self.stats.read_u32(ctx)?),
        ])
    }

    /// The dense ever-active map from the update statistics' words (its bits follow the
    /// 64-word header).
    fn ever_of(&self, bits: &[u32]) -> Vec<f32> {
        (0..self.rows() * self.cols())
            .map(|q| f32::from((bits[64 + q / 32] >> (q % 32)) & 1 == 1))
            .collect()
    }

    /// Checks dense tensors for [`CompressedParam::load`] without writing anything: their
    /// lengths, a 0/1 mask, and the mask's active count equal to this tensor's.
    pub(super) fn check(
        &self,
        name: &str,
        w: &[f32],
        mask: &[f32],
        mom: &[f32],
        ever: &[f32],
    ) -> Result<()> {
        let n = self.rows() * self.cols();
        if [w.len(), mask.len(), mom.len(), ever.len()]
            .iter()
            .any(|&l| l != n)
        {
            return Err(RiglError::invalid(format!(
                "weight tensor {name}: weights, mask, momentum and ever-active map must be {n} \
                 values each (got {}, {}, {}, {})",
                w.len(),
                mask.len(),
                mom.len(),
                ever.len()
            )));
        }
        if let Some((i, &v)) = mask.iter().enumerate().find(|(_, &v)| v != 0.0 && v != 1.0) {
            return Err(RiglError::invalid(format!(
                "weight tensor {name}: mask[{i}] = {v}, expected 0 or 1"
            )));
        }
        let active = mask.iter().filter(|&&m| m != 0.0).count();
        if active != self.nnz {
            return Err(RiglError::invalid(format!(
                "weight tensor {name}: {active} active weights, its compressed form holds {}",
                self.nnz
            )));
        }
        Ok(())
    }

    /// Writes the tensor from dense tensors of its shape: the index of `mask`, which
    /// must hold this tensor's active count, the values of `w` and `mom` at its slots, the
    /// ever-active bitmap of `ever`; the new-connection counter starts at 0.
    pub(super) fn load(
        &self,
        ctx: &GpuContext,
        name: &str,
        w: &[f32],
        mask: &[f32],
        mom: &[f32],
        ever: &[f32],
    ) -> Result<()> {
        self.check(name, w, mask, mom, ever)?;
        self.write(ctx, w, mask, mom, ever)
    }

    /// [`CompressedParam::load`] of tensors that [`CompressedParam::check`] has passed.
    pub(super) fn write(
        &self,
        ctx: &GpuContext,
        w: &[f32],
        mask: &[f32],
        mom: &[f32],
        ever: &[f32],
    ) -> Result<()> {
        let index = CsrIndex::from_mask(self.rows(), self.cols(), mask)?;
        let mut stats = vec![0u32; spmm::stats_len(self.rows(), self.cols())];
        for (q, &e) in ever.iter().enumerate() {
            if e != 0.0 {
                stats[64 + q / 32] |= 1 << (q % 32);
            }
        }
        self.idx.write_u32(ctx, &index.to_words())?;
        self.vals.write_f32(ctx, &index.gather(w))?;
        self.mom.write_f32(ctx, &index.gather(mom))?;
        self.stats.write_u32(ctx, &stats)
    }
}

/// A per-param state tensor, as [`GpuModel::read_params`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamTensor {
    /// Weights (zero where inactive).
    Weights,
    /// 0/1 masks.
    Masks,
    /// Momentum.
    Momentum,
    /// The SNFS gradient average (zero for a compressed kernel: SNFS runs masked-dense).
    Ema,
    /// The ever-active record (ITOP).
    Ever,
}

/// Which weight tensors a [`GpuModel`] keeps compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Compress {
    /// Convolution kernels.
    pub convs: bool,
    /// Linear layers (where the adapter runs [`crate::gpu::spmm`] and the batch is a multiple
    /// of 4; see [`linear_support`]).
    pub linears: bool,
}

/// Why a linear layer cannot be compressed on this adapter at batch `n`, if it cannot.
pub fn linear_support(ctx: &GpuContext, n: usize) -> std::result::Result<(), String> {
    spmm::support(ctx)?;
    if !spmm::batch_supported(n) {
        return Err(format!(
            "batch {n} is not a multiple of 4 (the sparse matrix kernels load 4 samples at once)"
        ));
    }
    Ok(())
}

/// The compressed form of the weight tensors of `host` that `which` selects, for batches of
/// `n` (None for the other params), and their shared buffers. The slots are loaded from `host`
/// (momentum zero, the ever-active record at the mask); a linear layer's metadata is written
/// by its `meta` dispatch, which the caller runs.
#[allow(clippy::type_complexity)]
pub(super) fn compress_params(
    ctx: &GpuContext,
    host: &HostModel,
    n: usize,
    which: Compress,
    dense_products: &[DenseProducts],
    fused: Option<usize>,
) -> Result<(Vec<Option<CompressedParam>>, Option<Slots>)> {
    let (_, layers) = host.spec.infer()?;
    let form = SparseConvForm::pick(ctx);
    let linears = which.linears && linear_support(ctx, n).is_ok();
    // First pass: kind, shape, active counts and offsets.
    let mut plan = Vec::with_capacity(host.weights.len());
    let (mut total, mut n_max, mut rb_max) = (0usize, 1usize, 1usize);
    let mut dense_max = 0usize;
    let mut any_linear = false;
    for (i, (wl, hw)) in layers.iter().zip(&host.weights).enumerate() {
        let (geom, rows, cols) = match wl.conv_geom(n) {
            Some(g) if which.convs => {
                sparse_conv::supports(ctx, &g, form).map_err(|e| {
                    RiglError::invalid(format!(
                        "convolution {}: the compressed kernels cannot run it: {e}",
                        hw.name
                    ))
                })?;
                (Some(g), g.window.k * g.window.k * g.cin, g.cout)
            }
            None if linears && hw.shape.len() == 2 => (None, hw.shape[0], hw.shape[1]),
            _ => {
                plan.push(None);
                continue;
            }
        };
        if hw.mask.len() != rows * cols {
            return Err(RiglError::invalid(format!(
                "{}: a mask of {} values for a {rows}x{cols} weight matrix",
                hw.name,
                hw.mask.len()
            )));
        }
        let nnz = hw.mask.iter().filter(|&&m| m != 0.0).count();
        if nnz == 0 {
            return Err(RiglError::invalid(format!(
                "{}: no active weights to compress",
                hw.name
            )));
        }
        if rows * cols > u32::MAX as usize / 2 {
            return Err(RiglError::invalid(format!("{} is too large", hw.name)));
        }
        any_linear |= geom.is_none();
        plan.push(Some((geom, rows, cols, nnz, total)));
        total += align(nnz);
        n_max = n_max.max(rows * cols);
        // The fused first convolution ([`super::fused_first_conv`]) runs dense over its slots.
        if dense_products.get(i).is_some_and(DenseProducts::any) || fused == Some(i) {
            dense_max = dense_max.max(rows * cols);
        }
        rb_max = rb_max.max(spmm::rebuild_scratch_len(rows, nnz));
    }
    if total == 0 {
        return Ok((host.weights.iter().map(|_| None).collect(), None));
    }
    let t = |label: &str, len: usize| Tensor::zeros(ctx, label, len);
    let (vals, grad, mom) = (
        t("slot values", total)?,
        t("slot gradients", total)?,
        t("slot momentum", total)?,
    );
    let values = if any_linear {
        Some(meta_texture(ctx, "slot value texture", total)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(plan.len());
    let mut layouts = Vec::new();
    // The layouts whose products run on the shared scratch: not the fused first convolution's,
    // nor one run dense over its slots throughout.
    let mut users = Vec::new();
    let mut max_nnz = 1;
    for (i, (p, hw)) in plan.into_iter().zip(&host.weights).enumerate() {
        let Some((geom, rows, cols, nnz, off)) = p else {
            out.push(None);
            continue;
        };
        let label = |what: &str| format!("{} {what}", hw.name);
        let idx = t(&label("index"), CsrIndex::words_len(rows, cols, nnz))?;
        let vview = vals.slice(ctx, off, nnz, &label("slot values"))?;
        let kind = match (geom, &values) {
            (Some(g), _) => {
                let layout = Layout::new(g)?;
                layouts.push(layout);
                let all_dense = dense_products.get(i) == Some(&DenseProducts::all(true));
                if fused != Some(i) && !all_dense {
                    users.push(layout);
                }
                max_nnz = max_nnz.max(nnz);
                CompressedKind::Conv(Box::new(layout))
            }
            (None, Some(values)) => {
                let fwd_meta = meta_texture(ctx, &label("forward metadata"), nnz)?;
                let bwd_meta = meta_texture(ctx, &label("input-gradient metadata"), nnz)?;
                let shape = SparseShape {
                    in_dim: rows,
                    out_dim: cols,
                    nnz,
                    batch: n,
                };
                let meta = spmm::meta(
                    ctx,
                    shape,
                    &idx,
                    &vview,
                    off,
                    values,
                    &fwd_meta,
                    Some(&bwd_meta),
                )?;
                CompressedKind::Linear(Box::new(LinearMeta {
                    fwd_meta,
                    bwd_meta,
                    meta,
                }))
            }
            (None, None) => {
                return Err(RiglError::invalid(
                    "a compressed linear layer without the value texture",
                ))
            }
        };
        let c = CompressedParam {
            kind,
            rows,
            cols,
            nnz,
            param: i,
            slot_offset: off,
            idx,
            vals: vview,
            grad: grad.slice(ctx, off, nnz, &label("slot gradients"))?,
            mom: mom.slice(ctx, off, nnz, &label("slot momentum"))?,
            stats: t(&label("update statistics"), spmm::stats_len(rows, cols))?,
            dense_grad: None,
        };
        c.load(
            ctx,
            &hw.name,
            &hw.w,
            &hw.mask,
            &vec![0.0; rows * cols],
            &hw.mask,
        )?;
        out.push(Some(c));
    }
    let slots = Slots {
        vals,
        grad,
        mom,
        total,
        textures: if layouts.is_empty() {
            None
        } else {
            Some(Scratch::with_users(ctx, &layouts, &users, max_nnz)?)
        },
        values,
        dense_grad: t("dense gradient scratch", n_max)?,
        dense_w: if dense_max > 0 {
            Some(t("dense weight scratch", dense_max)?)
        } else {
            None
        },
        gsel: t("grow selection scratch", n_max)?,
        rebuild: t("index rebuild scratch", rb_max)?,
    };
    Ok((out, Some(slots)))
}

/// The mask update of the compressed kernels: drop over all their slots, grow and rebuild per
/// kernel. Layer ids are the params' indexes, as in the masked path's updater, so SET's random
/// growth and every tie break select the same positions.
pub(super) fn slot_update(
    ctx: &GpuContext,
    convs: &[Option<CompressedParam>],
    slots: &Slots,
    names: &[String],
    seed: u32,
) -> Result<SlotUpdate> {
    let convs: Vec<&CompressedParam> = convs.iter().flatten().collect();
    let drop = MaskUpdater::for_compressed_drop(
        ctx,
        convs
            .iter()
            .map(|c| LayerPlacement {
                name: names[c.param].clone(),
                offset: c.slot_offset,
                n: c.nnz,
                id: c.param as u32,
            })
            .collect(),
        &slots.vals,
        seed,
    )?;
    let mut grows = Vec::with_capacity(convs.len());
    let mut rebuild = Vec::with_capacity(convs.len());
    for c in convs {
        let name = &names[c.param];
        let n = c.rows() * c.cols();
        let g = slots
            .dense_grad
            .slice(ctx, 0, n, &format!("{name} dense gradient"))?;
        grows.push(MaskUpdater::for_dense_grow(
            ctx,
            LayerPlacement {
                name: name.clone(),
                offset: 0,
                n,
                id: c.param as u32,
            },
            &g,
            &slots.gsel,
            seed,
        )?);
        let dropsel =
            drop.selection()
                .slice(ctx, c.slot_offset, c.nnz, &format!("{name} drop selection"))?;
        rebuild.push(spmm::rebuild(
            ctx,
            c.shape(1),
            &RebuildBuffers {
                gsel: &slots.gsel,
                idx: &c.idx,
                vals: &c.vals,
                mom: &c.mom,
                scratch: &slots.rebuild,
                dropsel: &dropsel,
                stats: &c.stats,
            },
        )?);
    }
    Ok(SlotUpdate {
        drop,
        grows,
        rebuild,
    })
}

impl GpuModel {
    /// Whether some weight tensor is kept compressed.
    pub fn has_compressed(&self) -> bool {
        self.compressed.iter().any(Option::is_some)
    }

    /// The per-layer counts of a mask update (one per param) that the masked path's updater over
    /// the flat buffers takes: those of the params kept there ([`GpuModel::placements`]).
    pub fn flat_counts(&self, counts: &[LayerCounts]) -> Result<Vec<LayerCounts>> {
        self.check_counts(counts)?;
        Ok(self
            .placements
            .iter()
            .map(|p| counts[p.id as usize])
            .collect())
    }

    fn check_counts(&self, counts: &[LayerCounts]) -> Result<()> {
        if counts.len() != self.params.len() {
            return Err(RiglError::invalid(format!(
                "mask update: {} layer counts for {} weight tensors",
                counts.len(),
                self.params.len()
            )));
        }
        Ok(())
    }

    /// Writes the compressed kernels' part of a mask update at `step` (`counts` one per param),
    /// before [`GpuModel::compressed_update_ops`]. Each kernel keeps its active count.
    pub fn prepare_compressed(
        &self,
        ctx: &GpuContext,
        step: u32,
        counts: &[LayerCounts],
    ) -> Result<()> {
        self.check_counts(counts)?;
        let Some(up) = &self.slot_update else {
            return Ok(());
        };
        let mut own = Vec::new();
        for c in self.compressed.iter().flatten() {
            let k = counts[c.param];
            if k.k_keep + k.k_grow != c.nnz {
                return Err(RiglError::invalid(format!(
                    "mask update of convolution {}: keeping {} and growing {} must give its {} \
                     active weights",
                    self.params[c.param].name, k.k_keep, k.k_grow, c.nnz
                )));
            }
            own.push(k);
        }
        up.drop.prepare(ctx, step, &own)?;
        for (g, k) in up.grows.iter().zip(&own) {
            g.prepare(ctx, step, std::slice::from_ref(k))?;
        }
        Ok(())
    }

    /// The dispatches of the compressed kernels' mask update (after a backward pass on the
    /// update's batch, which RigL's grow score reads; after [`GpuModel::prepare_compressed`]):
    /// drop over every kernel, then per kernel its dense gradient (RigL), the grow selection and
    /// the index rebuild. No optimizer step may follow on the same batch: the slot gradients
    /// are those of the old index. Empty without compressed kernels.
    pub fn compressed_update_ops(&self, rule: GrowRule) -> Result<Vec<&Dispatch>> {
        let Some(up) = &self.slot_update else {
            return Ok(Vec::new());
        };
        if rule == GrowRule::None {
            return Err(RiglError::invalid(
                "compressed kernels keep a fixed active count: pruning runs on the masked path",
            ));
        }
        let mut v = up.drop.drop_dispatches();
        for (i, c) in self.compressed.iter().flatten().enumerate() {
            if rule == GrowRule::Score {
                let dg = c.dense_grad.as_ref().ok_or_else(|| {
                    RiglError::invalid(format!(
                        "convolution {} has no dense gradient dispatch",
                        self.params[c.param].name
                    ))
                })?;
                v.push(dg);
            }
            v.extend(up.rebuild[i].0.iter());
            v.extend(up.grows[i].grow_dispatches(rule));
            v.extend(up.rebuild[i].1.iter());
        }
        v.extend(self.meta_ops());
        Ok(v)
    }

    /// [`GpuModel::compressed_update_ops`]`(GrowRule::Score)` cut after each tensor's dense
    /// gradient, for a data-parallel run to average it over the ranks before that tensor's grow
    /// selection reads it: segment `l` ends with the `l`-th compressed tensor's dense gradient,
    /// written to `views[l]` (a view of the one scratch, so it must be averaged before the next
    /// segment runs); the last segment has the rest. In order, the segments are exactly
    /// [`GpuModel::compressed_update_ops`]`(GrowRule::Score)`.
    pub fn compressed_update_segments(
        &self,
        ctx: &GpuContext,
    ) -> Result<(Vec<Vec<&Dispatch>>, Vec<Tensor>)> {
        let (Some(up), Some(slots)) = (&self.slot_update, &self.slots) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut segments = Vec::new();
        let mut views = Vec::new();
        let mut v = up.drop.drop_dispatches();
        for (i, c) in self.compressed.iter().flatten().enumerate() {
            let name = &self.params[c.param].name;
            let dg = c.dense_grad.as_ref().ok_or_else(|| {
                RiglError::invalid(format!("{name} has no dense gradient dispatch"))
            })?;
            v.push(dg);
            segments.push(std::mem::take(&mut v));
            views.push(slots.dense_grad.slice(
                ctx,
                0,
                c.rows() * c.cols(),
                &format!("{name} dense gradient"),
            )?);
            v.extend(up.rebuild[i].0.iter());
            v.extend(up.grows[i].grow_dispatches(GrowRule::Score));
            v.extend(up.rebuild[i].1.iter());
        }
        v.extend(self.meta_ops());
        segments.push(v);
        Ok((segments, views))
    }

    /// The compressed linear layers' metadata rewrites (after loading and after every mask
    /// update).
    pub(super) fn meta_ops(&self) -> Vec<&Dispatch> {
        self.compressed
            .iter()
            .flatten()
            .filter_map(|c| match &c.kind {
                CompressedKind::Linear(m) => Some(&m.meta),
                CompressedKind::Conv(_) => None,
            })
            .collect()
    }

    /// Runs [`GpuModel::meta_ops`] (waits for the GPU).
    pub(super) fn write_meta(&self, ctx: &GpuContext) -> Result<()> {
        let ops = self.meta_ops();
        if ops.is_empty() {
            return Ok(());
        }
        gpu_ops::run(ctx, "compressed linear metadata", &ops)
    }

    /// New connections per compressed kernel made by the last mask update.
    pub fn compressed_new_connections(&self, ctx: &GpuContext) -> Result<usize> {
        let heads = self
            .compressed
            .iter()
            .flatten()
            .map(|c| c.stats.slice(ctx, 0, 1, "update statistics header"))
            .collect::<Result<Vec<_>>>()?;
        let words = crate::gpu::buffer::read_many_u32(ctx, &heads, "update statistics headers")?;
        Ok(words.iter().flatten().map(|&n| n as usize).sum())
    }
}

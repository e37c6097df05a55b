//! The MLP of [`crate::nn::mlp`] with compressed sparse layers: every layer keeps only its active
//! weights (values, momentum and gradient per slot, plus the index of [`crate::sparse::csr`]), so
//! memory and the work of a step scale with the density.
//!
//! ```text
//! forward   z_l = SpMM(W_l, a_{l-1}) + b_l                      (shaders/spmm.wgsl)
//! backward  dW_l = SDDMM(a_{l-1}, d_l) at the slots only        (shaders/sddmm.wgsl)
//!           d_{l-1} = SpMMᵀ(W_l, d_l) through the input rows
//! update    SGD with momentum over the slots
//! ```
//! A mask update (RigL, SET) runs on the GPU without reading weights back: the drop phase selects
//! over the compressed values of all layers at once; then, one layer at a time, the dense gradient
//! of that layer (RigL only) is computed into one scratch sized for the largest layer, the grow
//! phase selects over it, and the layer's slots and both indexes are rebuilt
//! (`shaders/csr.wgsl`). Masks are the same as the masked-dense path's, bit for bit.

use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch, SgdConfig};
use crate::gpu::spmm::{self, Epilogue, PackOp, RebuildBuffers, SlotOp, SparseShape};
use crate::gpu::texture::{meta_texture, Texture};
use crate::gpu::{GemmOp, GemmShape, GpuContext, Tensor};
use crate::nn::loss::LossHead;
use crate::nn::mlp::{layer_names, MlpConfig, ALIGN};
use crate::nn::ModelState;
use crate::sparse::csr::CsrIndex;
use crate::sparse::update::{GrowRule, LayerCounts, LayerPlacement, MaskUpdater};

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The dense weight gradient of layer `ly` over a batch of `b`: `g[in, out] = input · doutᵀ`
/// (feature-major `input [in, b]` and `dout [out, b]`), the product both the dense-GEMM layers'
/// backward pass and RigL's grow phase need.
fn dense_wgrad_op(
    ctx: &GpuContext,
    variant: crate::gpu::GemmVariant,
    ly: &SparseLayer,
    b: usize,
    input: &Tensor,
    dout: &Tensor,
    g: &Tensor,
) -> Result<Dispatch> {
    let shape = GemmShape {
        m: ly.shape.in_dim,
        n: ly.shape.out_dim,
        k: b,
        trans_a: false,
        trans_b: true,
    };
    let v = crate::gpu::gemm::pick(ctx, variant, &shape)?;
    Ok(GemmOp::new(ctx, shape, v, input, dout, g, None, false)?.dispatch)
}

/// Where one compressed layer lives in the model's flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseLayer {
    /// Layer name.
    pub name: String,
    /// Shape and active count (batch of the model).
    pub shape: SparseShape,
    /// First slot in the flat value, momentum and gradient buffers.
    pub slot_offset: usize,
    /// First word of the layer's index in the flat index buffer.
    pub index_offset: usize,
    /// First word of the layer's statistics block (new connections, ever-active bitmap).
    pub stats_offset: usize,
}

/// GPU bytes of a model's trainable state, by part (biases excluded: dense in every form).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MemoryReport {
    /// Per layer: (name, bytes of weights + gradients + momentum + index).
    pub layers: Vec<(String, u64)>,
    /// Weights, gradients, momentum and index of all layers (biases excluded).
    pub weights_grads_momentum: u64,
    /// Scratch used only at mask updates (dense gradient and flags of the largest layer, rebuild
    /// buffers, ever-active bitmaps).
    pub update_scratch: u64,
}

/// The compressed sparse model on the GPU with every dispatch of a step and of a mask update
/// prebuilt.
#[derive(Debug)]
pub struct SparseMlp {
    /// Configuration it was built with (`masked` is ignored: layers are always sparse).
    pub cfg: MlpConfig,
    /// The compressed layers.
    pub layers: Vec<SparseLayer>,
    /// Offsets of each layer's bias in the flat bias buffers.
    pub bias_offsets: Vec<usize>,
    /// Values per slot.
    pub vals: Tensor,
    /// Momentum per slot.
    pub mom: Tensor,
    /// Gradient per slot (SDDMM).
    pub grad: Tensor,
    /// Index words of every layer.
    pub index: Tensor,
    /// Per layer: new-connection counter and ever-active bitmap.
    pub stats: Tensor,
    /// Flat biases.
    pub bias: Tensor,
    /// Flat bias momentum.
    pub bmom: Tensor,
    /// Flat bias gradient.
    pub bgrad: Tensor,
    x: Tensor,
    x_tex: Texture,
    acts: Vec<Tensor>,
    fwd: Vec<Dispatch>,
    loss: LossHead,
    bwd: Vec<Dispatch>,
    sgd_w: Dispatch,
    sgd_b: Dispatch,
    meta_ops: Vec<Dispatch>,
    unpack_ops: Vec<Dispatch>,
    drop: MaskUpdater,
    grows: Vec<MaskUpdater>,
    dense_grad: Vec<Dispatch>,
    /// Per layer: the view of the dense gradient scratch its `dense_grad` op writes.
    dense_grad_views: Vec<Tensor>,
    rebuild: Vec<(Vec<Dispatch>, Vec<Dispatch>)>,
    total_slots: usize,
    total_b: usize,
    pub(crate) memory: MemoryReport,
}

impl SparseMlp {
    /// Allocates every buffer and builds every dispatch; `active[l]` is layer l's fixed active
    /// count. `seed` keys SET's random grow stream (as in the masked path).
    pub fn new(ctx: &GpuContext, cfg: MlpConfig, active: &[usize], seed: u32) -> Result<Self> {
        let n = cfg.sizes.len().saturating_sub(1);
        Self::with_layer_kernels(ctx, cfg, active, seed, &vec![false; n])
    }

    /// [`SparseMlp::new`] where layer l runs its products on dense GEMMs when `dense[l]` (its
    /// slots scattered into a dense scratch before the products, the dense gradient gathered
    /// back): the per-layer masked-dense choice. The compressed form stays the state, and mask
    /// updates are the same.
    pub fn with_layer_kernels(
        ctx: &GpuContext,
        cfg: MlpConfig,
        active: &[usize],
        seed: u32,
        dense: &[bool],
    ) -> Result<Self> {
        spmm::support(ctx).map_err(RiglError::invalid)?;
        if cfg.sizes.len() < 2 || cfg.sizes.contains(&0) {
            return Err(RiglError::invalid(format!(
                "an MLP needs at least an input and an output width, all positive (got {:?})",
                cfg.sizes
            )));
        }
        if !spmm::batch_supported(cfg.batch) {
            return Err(RiglError::invalid(format!(
                "the sparse kernels need a batch that is a multiple of 4 (got {})",
                cfg.batch
            )));
        }
        let n_layers = cfg.sizes.len() - 1;
        if dense.len() != n_layers {
            return Err(RiglError::invalid(format!(
                "{} kernel choices for {n_layers} layers",
                dense.len()
            )));
        }
        if active.len() != n_layers {
            return Err(RiglError::invalid(format!(
                "{} active counts for {n_layers} layers",
                active.len()
            )));
        }
        let names = layer_names(n_layers);
        let b = cfg.batch;
        let mut layers = Vec::new();
        let mut bias_offsets = Vec::new();
        let (mut so, mut io, mut to, mut bo) = (0usize, 0usize, 0usize, 0usize);
        let (mut n_max, mut rb_max) = (1usize, 1usize);
        for (l, name) in names.iter().enumerate() {
            let (in_dim, out_dim) = (cfg.sizes[l], cfg.sizes[l + 1]);
            let n = in_dim * out_dim;
            if active[l] == 0 || active[l] > n {
                return Err(RiglError::invalid(format!(
                    "layer {name}: {} active weights of {n} (need 1 to {n})",
                    active[l]
                )));
            }
            if n > u32::MAX as usize / 2 {
                return Err(RiglError::invalid(format!("layer {name} is too large")));
            }
            let shape = SparseShape {
                in_dim,
                out_dim,
                nnz: active[l],
                batch: b,
            };
            layers.push(SparseLayer {
                name: name.clone(),
                shape,
                slot_offset: so,
                index_offset: io,
                stats_offset: to,
            });
            bias_offsets.push(bo);
            so += align(active[l]);
            io += align(CsrIndex::words_len(in_dim, out_dim, active[l]));
            to += align(spmm::stats_len(in_dim, out_dim));
            bo += align(out_dim);
            n_max = n_max.max(n);
            rb_max = rb_max.max(spmm::rebuild_scratch_len(in_dim, active[l]));
        }
        let (total_slots, total_b) = (so, bo);
        let t = |label: &str, len: usize| Tensor::zeros(ctx, label, len);
        let vals = t("sparse weights", total_slots)?;
        let mom = t("sparse momentum", total_slots)?;
        let grad = t("sparse gradients", total_slots)?;
        let index = t("sparse index", io)?;
        let stats = t("sparse layer stats", to)?;
        let bias = t("biases", total_b)?;
        let bmom = t("bias momentum", total_b)?;
        let bgrad = t("bias gradients", total_b)?;
        let x = t("input batch", cfg.sizes[0] * b)?;
        let g_scratch = t("dense gradient scratch", n_max)?;
        let n_dense = (0..n_layers)
            .filter(|&l| dense[l])
            .map(|l| cfg.sizes[l] * cfg.sizes[l + 1])
            .max()
            .unwrap_or(1);
        let w_scratch = t("dense weight scratch", n_dense)?;
        // A layer's output goes to its buffer when the loss or a dense-GEMM layer reads it.
        let act_buf = |l: usize| l + 1 == n_layers || dense[l] || dense[l + 1];
        let gsel = t("grow selection scratch", n_max)?;
        let rb = t("index rebuild scratch", rb_max)?;
        let mut acts = Vec::new();
        let mut dacts = Vec::new();
        for (l, name) in names.iter().enumerate() {
            acts.push(t(&format!("{name} activations"), cfg.sizes[l + 1] * b)?);
            dacts.push(t(
                &format!("{name} activation gradients"),
                cfg.sizes[l + 1] * b,
            )?);
        }
        let lv = |tensor: &Tensor, ly: &SparseLayer, what: &str| {
            tensor.slice(
                ctx,
                ly.slot_offset,
                ly.shape.nnz,
                &format!("{} {what}", ly.name),
            )
        };
        let iv = |ly: &SparseLayer| {
            index.slice(
                ctx,
                ly.index_offset,
                CsrIndex::words_len(ly.shape.in_dim, ly.shape.out_dim, ly.shape.nnz),
                &format!("{} index", ly.name),
            )
        };
        let bview = |tensor: &Tensor, l: usize, what: &str| {
            tensor.slice(
                ctx,
                bias_offsets[l],
                cfg.sizes[l + 1],
                &format!("{} {what}", names[l]),
            )
        };
        // Texture copies of what the sparse products gather from: the input and every hidden
        // activation (forward, SDDMM), every output gradient but the first layer's (input
        // gradient).
        let tex = |label: String, rows: usize| Texture::new(ctx, &label, rows, b);
        let x_tex = tex("input batch texture".into(), cfg.sizes[0])?;
        let mut act_tex = Vec::new();
        let mut grad_tex = Vec::new();
        for (l, name) in names.iter().enumerate() {
            let rows = cfg.sizes[l + 1];
            act_tex.push(if l + 1 < n_layers {
                Some(tex(format!("{name} activation texture"), rows)?)
            } else {
                None
            });
            grad_tex.push(tex(format!("{name} activation gradient texture"), rows)?);
        }
        let input_tex = |l: usize| -> &Texture {
            match l {
                0 => &x_tex,
                _ => act_tex[l - 1].as_ref().unwrap_or(&x_tex),
            }
        };
        // Per-nonzero metadata (column, slot) in each product's order, rewritten at load and after
        // every mask update, and the value texture the optimizer keeps current.
        let val_tex = meta_texture(ctx, "sparse weight texture", total_slots)?;
        let mut fwd_meta = Vec::new();
        let mut bwd_meta = Vec::new();
        for (l, ly) in layers.iter().enumerate() {
            fwd_meta.push(meta_texture(
                ctx,
                &format!("{} forward metadata", ly.name),
                ly.shape.nnz,
            )?);
            bwd_meta.push(if l > 0 {
                Some(meta_texture(
                    ctx,
                    &format!("{} backward metadata", ly.name),
                    ly.shape.nnz,
                )?)
            } else {
                None
            });
        }
        // The host writes the batch into x_tex directly (set_batch); bias, ReLU and the texture
        // copy are fused into each product's store.
        // At a RigL update the dense-gradient GEMMs read the hidden activations and gradients
        // from buffers: fill those from the textures first.
        let mut unpack_ops = Vec::new();
        for l in 0..n_layers {
            if let Some(t) = &act_tex[l] {
                if !act_buf(l) {
                    unpack_ops.push(spmm::unpack(ctx, t, &acts[l])?);
                }
            }
            // Written to a buffer by a dense-GEMM layer above, or when it is dense-GEMM itself.
            if l + 1 < n_layers && !dense[l] && !dense[l + 1] {
                unpack_ops.push(spmm::unpack(ctx, &grad_tex[l], &dacts[l])?);
            }
        }
        let mut meta_ops = Vec::new();
        for (l, ly) in layers.iter().enumerate() {
            meta_ops.push(spmm::meta(
                ctx,
                ly.shape,
                &iv(ly)?,
                &lv(&vals, ly, "weights")?,
                ly.slot_offset,
                &val_tex,
                &fwd_meta[l],
                bwd_meta[l].as_ref(),
            )?);
        }
        let fmeta = |l: usize| spmm::Metadata {
            index: &fwd_meta[l],
            values: &val_tex,
        };
        let wview = |ly: &SparseLayer| {
            w_scratch.slice(
                ctx,
                0,
                ly.shape.in_dim * ly.shape.out_dim,
                &format!("{} dense weights", ly.name),
            )
        };
        let gview = |ly: &SparseLayer| {
            g_scratch.slice(
                ctx,
                0,
                ly.shape.in_dim * ly.shape.out_dim,
                &format!("{} dense gradient", ly.name),
            )
        };
        let gemm = |shape: GemmShape, a: &Tensor, bm: &Tensor, c: &Tensor| {
            GemmOp::new(
                ctx,
                shape,
                crate::gpu::gemm::pick(ctx, cfg.gemm, &shape)?,
                a,
                bm,
                c,
                None,
                false,
            )
            .map(|g| g.dispatch)
        };
        // Scatter a dense-GEMM layer's slots into the weight scratch (shared by such layers, so
        // rebuilt before each use).
        let scatter = |ly: &SparseLayer| -> Result<Vec<Dispatch>> {
            let (iw, vw, ww, gw) = (
                iv(ly)?,
                lv(&vals, ly, "weights")?,
                wview(ly)?,
                lv(&grad, ly, "gradient")?,
            );
            Ok(vec![
                spmm::slots(ctx, SlotOp::Zero, ly.shape, &iw, &vw, &ww, &gw)?,
                spmm::slots(ctx, SlotOp::Scatter, ly.shape, &iw, &vw, &ww, &gw)?,
            ])
        };
        // The weight gradient of a dense-GEMM layer: dense into the gradient scratch, gathered
        // into the slots.
        let dense_wgrad = |l: usize, ly: &SparseLayer| -> Result<Vec<Dispatch>> {
            let input = if l == 0 { &x } else { &acts[l - 1] };
            let g = gview(ly)?;
            Ok(vec![
                dense_wgrad_op(ctx, cfg.gemm, ly, b, input, &dacts[l], &g)?,
                spmm::slots(
                    ctx,
                    SlotOp::Gather,
                    ly.shape,
                    &iv(ly)?,
                    &lv(&vals, ly, "weights")?,
                    &g,
                    &lv(&grad, ly, "gradient")?,
                )?,
            ])
        };
        let mut fwd = Vec::new();
        for (l, ly) in layers.iter().enumerate() {
            let bv = bview(&bias, l, "bias")?;
            if dense[l] {
                let input = if l == 0 { &x } else { &acts[l - 1] };
                fwd.extend(scatter(ly)?);
                let shape = GemmShape {
                    m: ly.shape.out_dim,
                    n: b,
                    k: ly.shape.in_dim,
                    trans_a: true,
                    trans_b: false,
                };
                fwd.push(gemm(shape, &wview(ly)?, input, &acts[l])?);
                fwd.push(match &act_tex[l] {
                    Some(t) => spmm::pack(ctx, PackOp::BiasAct(&bv, true), &acts[l], t)?,
                    None => ops::bias_act(ctx, &bv, &acts[l], ly.shape.out_dim, b, false)?,
                });
                continue;
            }
            // Hidden activations go to their texture only unless a dense-GEMM layer or the loss
            // reads the buffer (it is filled at mask updates otherwise).
            fwd.push(spmm::spmm_stores(
                ctx,
                ly.shape,
                &iv(ly)?,
                &fmeta(l),
                input_tex(l),
                &acts[l],
                true,
                Epilogue::BiasAct {
                    bias: &bv,
                    relu: l + 1 < n_layers,
                },
                act_tex[l].as_ref(),
                act_buf(l),
            )?);
        }
        let classes = cfg.sizes[n_layers];
        let loss = LossHead::new(
            ctx,
            &acts[n_layers - 1],
            &dacts[n_layers - 1],
            classes,
            b,
            cfg.label_smoothing,
        )?;
        let mut bwd = vec![spmm::pack(
            ctx,
            PackOp::Copy,
            &dacts[n_layers - 1],
            &grad_tex[n_layers - 1],
        )?];
        for l in (0..n_layers).rev() {
            let ly = &layers[l];
            if dense[l] {
                bwd.push(ops::segment_sum(
                    ctx,
                    &dacts[l],
                    &bview(&bgrad, l, "bias gradient")?,
                    ly.shape.out_dim,
                    b,
                    false,
                )?);
                bwd.extend(dense_wgrad(l, ly)?);
                if l > 0 {
                    bwd.extend(scatter(ly)?);
                    let shape = GemmShape::nn(ly.shape.in_dim, b, ly.shape.out_dim);
                    bwd.push(gemm(shape, &wview(ly)?, &dacts[l], &dacts[l - 1])?);
                    let rows = ly.shape.in_dim;
                    bwd.push(if dense[l - 1] {
                        ops::relu_bwd(ctx, &acts[l - 1], &dacts[l - 1], rows * b)?
                    } else {
                        spmm::pack(
                            ctx,
                            PackOp::ReluBwd(&acts[l - 1]),
                            &dacts[l - 1],
                            &grad_tex[l - 1],
                        )?
                    });
                }
                continue;
            }
            // The weight gradient at the slots, and the bias gradient with it.
            bwd.push(spmm::sddmm_with_bias(
                ctx,
                ly.shape,
                &iv(ly)?,
                input_tex(l),
                &grad_tex[l],
                &lv(&grad, ly, "gradient")?,
                Some(&bview(&bgrad, l, "bias gradient")?),
            )?);
            if let Some(m) = &bwd_meta[l] {
                // The input gradient with the ReLU backward of the layer below fused in.
                bwd.push(spmm::spmm_stores(
                    ctx,
                    ly.shape,
                    &iv(ly)?,
                    &spmm::Metadata {
                        index: m,
                        values: &val_tex,
                    },
                    &grad_tex[l],
                    &dacts[l - 1],
                    false,
                    Epilogue::ReluMask(act_tex[l - 1].as_ref().unwrap_or(&x_tex)),
                    Some(&grad_tex[l - 1]),
                    dense[l - 1],
                )?);
            }
        }
        let sgd_w = ops::sgd_mirrored(
            ctx,
            &grad,
            &vals,
            &mom,
            None,
            total_slots,
            cfg.sgd,
            Some(&val_tex),
        )?;
        let bias_sgd = SgdConfig {
            weight_decay: 0.0,
            ..cfg.sgd
        };
        let sgd_b = ops::sgd(ctx, &bgrad, &bias, &bmom, None, total_b, bias_sgd)?;

        // Mask update: drop over the values of all layers, then grow and rebuild per layer.
        let drop = MaskUpdater::for_compressed_drop(
            ctx,
            layers
                .iter()
                .enumerate()
                .map(|(l, ly)| LayerPlacement {
                    name: ly.name.clone(),
                    offset: ly.slot_offset,
                    n: ly.shape.nnz,
                    id: l as u32,
                })
                .collect(),
            &vals,
            seed,
        )?;
        let variant = cfg.gemm;
        let mut grows = Vec::new();
        let mut dense_grad = Vec::new();
        let mut dense_grad_views = Vec::new();
        let mut rebuild = Vec::new();
        for (l, ly) in layers.iter().enumerate() {
            let n = ly.shape.in_dim * ly.shape.out_dim;
            let g = g_scratch.slice(ctx, 0, n, &format!("{} dense gradient", ly.name))?;
            grows.push(MaskUpdater::for_dense_grow(
                ctx,
                LayerPlacement {
                    name: ly.name.clone(),
                    offset: 0,
                    n,
                    id: l as u32,
                },
                &g,
                &gsel,
                seed,
            )?);
            let input = if l == 0 { &x } else { &acts[l - 1] };
            dense_grad.push(dense_wgrad_op(ctx, variant, ly, b, input, &dacts[l], &g)?);
            dense_grad_views.push(g);
            let dropsel = drop.selection().slice(
                ctx,
                ly.slot_offset,
                ly.shape.nnz,
                &format!("{} drop selection", ly.name),
            )?;
            let st = stats.slice(
                ctx,
                ly.stats_offset,
                spmm::stats_len(ly.shape.in_dim, ly.shape.out_dim),
                &format!("{} stats", ly.name),
            )?;
            rebuild.push(spmm::rebuild(
                ctx,
                ly.shape,
                &RebuildBuffers {
                    gsel: &gsel,
                    idx: &iv(ly)?,
                    vals: &lv(&vals, ly, "weights")?,
                    mom: &lv(&mom, ly, "momentum")?,
                    scratch: &rb,
                    dropsel: &dropsel,
                    stats: &st,
                },
            )?);
        }
        let memory = MemoryReport {
            layers: layers
                .iter()
                .map(|ly| {
                    let words = 3 * ly.shape.nnz
                        + CsrIndex::words_len(ly.shape.in_dim, ly.shape.out_dim, ly.shape.nnz);
                    (ly.name.clone(), 4 * words as u64)
                })
                .collect(),
            weights_grads_momentum: 4 * (3 * total_slots + io) as u64,
            update_scratch: 4 * (2 * n_max + n_dense + rb_max + to) as u64
                + drop.selection().bytes(),
        };
        Ok(SparseMlp {
            cfg,
            layers,
            bias_offsets,
            vals,
            mom,
            grad,
            index,
            stats,
            bias,
            bmom,
            bgrad,
            x,
            x_tex,
            acts,
            fwd,
            loss,
            bwd,
            sgd_w,
            sgd_b,
            meta_ops,
            unpack_ops,
            drop,
            grows,
            dense_grad,
            dense_grad_views,
            rebuild,
            total_slots,
            total_b,
            memory,
        })
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Uploads weights, masks and biases (dense per layer, `[in, out]`); each mask must have the
    /// layer's active count. Momentum is reset; the ever-active map starts as the mask.
    pub fn load(
        &self,
        ctx: &GpuContext,
        weights: &[Vec<f32>],
        masks: &[Vec<f32>],
        biases: &[Vec<f32>],
    ) -> Result<()> {
        let n_layers = self.n_layers();
        if weights.len() != n_layers || masks.len() != n_layers || biases.len() != n_layers {
            return Err(RiglError::invalid(format!(
                "model has {n_layers} layers; got {} weight, {} mask and {} bias arrays",
                weights.len(),
                masks.len(),
                biases.len()
            )));
        }
        let mut vals = vec![0.0f32; self.total_slots];
        let mut idx = vec![0u32; self.index.len];
        let mut stats = vec![0u32; self.stats.len];
        let mut b = vec![0.0f32; self.total_b];
        for (l, ly) in self.layers.iter().enumerate() {
            let s = ly.shape;
            let n = s.in_dim * s.out_dim;
            if weights[l].len() != n || masks[l].len() != n {
                return Err(RiglError::invalid(format!(
                    "layer {}: {} weights and {} mask values, expected {n}",
                    ly.name,
                    weights[l].len(),
                    masks[l].len()
                )));
            }
            if let Some((i, &v)) = masks[l]
                .iter()
                .enumerate()
                .find(|(_, &v)| v != 0.0 && v != 1.0)
            {
                return Err(RiglError::invalid(format!(
                    "layer {}: mask[{i}] = {v}, expected 0 or 1",
                    ly.name
                )));
            }
            let ci = CsrIndex::from_mask(s.in_dim, s.out_dim, &masks[l])?;
            if ci.nnz() != s.nnz {
                return Err(RiglError::invalid(format!(
                    "layer {}: the mask has {} active weights, the sparse layer holds {}",
                    ly.name,
                    ci.nnz(),
                    s.nnz
                )));
            }
            if biases[l].len() != s.out_dim {
                return Err(RiglError::invalid(format!(
                    "layer {}: {} biases, expected {}",
                    ly.name,
                    biases[l].len(),
                    s.out_dim
                )));
            }
            vals[ly.slot_offset..ly.slot_offset + s.nnz].copy_from_slice(&ci.gather(&weights[l]));
            let words = ci.to_words();
            idx[ly.index_offset..ly.index_offset + words.len()].copy_from_slice(&words);
            for &q in &ci.pos {
                stats[ly.stats_offset + 64 + q as usize / 32] |= 1 << (q % 32);
            }
            b[self.bias_offsets[l]..self.bias_offsets[l] + s.out_dim].copy_from_slice(&biases[l]);
        }
        self.vals.write_f32(ctx, &vals)?;
        ctx.queue.write_buffer(
            &self.index.buffer,
            self.index.offset,
            bytemuck::cast_slice(&idx),
        );
        ctx.queue.write_buffer(
            &self.stats.buffer,
            self.stats.offset,
            bytemuck::cast_slice(&stats),
        );
        self.bias.write_f32(ctx, &b)?;
        self.mom.write_f32(ctx, &vec![0.0; self.total_slots])?;
        self.bmom.write_f32(ctx, &vec![0.0; self.total_b])?;
        // The products read the index and the values through textures written from these.
        let meta: Vec<&Dispatch> = self.meta_ops.iter().collect();
        ops::run(ctx, "sparse metadata", &meta)?;
        self.reset_sums(ctx)
    }

    /// Writes a batch: `x` feature-major `[in, batch]`, `labels[batch]` (see
    /// [`crate::nn::Mlp::set_batch`]).
    pub fn set_batch(&self, ctx: &GpuContext, x: &[f32], labels: &[u32]) -> Result<()> {
        self.loss.write_labels(ctx, labels)?;
        self.x.write_f32(ctx, x)?;
        ctx.queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &self.x_tex.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            bytemuck::cast_slice(x),
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some((self.cfg.batch * 4) as u32),
                rows_per_image: Some(self.cfg.sizes[0] as u32),
            },
            self.x_tex.texture.size(),
        );
        Ok(())
    }

    /// Only the first `valid` samples of the batch count in the loss and its gradient.
    pub fn set_valid(&self, ctx: &GpuContext, valid: usize) {
        self.loss.set_valid(ctx, valid);
    }

    /// Sets the optimizer's hyper-parameters.
    pub fn set_sgd(&self, ctx: &GpuContext, sgd: SgdConfig) {
        ops::set_sgd(ctx, &self.sgd_w, self.total_slots, sgd);
        let b = SgdConfig {
            weight_decay: 0.0,
            ..sgd
        };
        ops::set_sgd(ctx, &self.sgd_b, self.total_b, b);
    }

    /// Forward pass and loss (adds to the running sums).
    pub fn forward_ops(&self) -> Vec<&Dispatch> {
        let mut v: Vec<&Dispatch> = self.fwd.iter().collect();
        v.extend(self.loss.ops());
        v
    }

    /// Backward pass: bias gradients, weight gradients at the slots, input gradients.
    pub fn backward_ops(&self) -> Vec<&Dispatch> {
        self.bwd.iter().collect()
    }

    /// Optimizer step on the slots and the biases.
    pub fn sgd_ops(&self) -> Vec<&Dispatch> {
        vec![&self.sgd_w, &self.sgd_b]
    }

    /// Writes the per-layer counts of a mask update at `step` (before [`Self::update_ops`]).
    pub fn prepare_update(
        &self,
        ctx: &GpuContext,
        step: u32,
        counts: &[LayerCounts],
    ) -> Result<()> {
        if counts.len() != self.n_layers() {
            return Err(RiglError::invalid(format!(
                "mask update: {} layer counts for {} layers",
                counts.len(),
                self.n_layers()
            )));
        }
        for (ly, c) in self.layers.iter().zip(counts) {
            if c.k_keep + c.k_grow != ly.shape.nnz {
                return Err(RiglError::invalid(format!(
                    "mask update of sparse layer {}: keeping {} and growing {} must give its {} \
                     active weights",
                    ly.name, c.k_keep, c.k_grow, ly.shape.nnz
                )));
            }
        }
        self.drop.prepare(ctx, step, counts)?;
        for (g, c) in self.grows.iter().zip(counts) {
            g.prepare(ctx, step, std::slice::from_ref(c))?;
        }
        Ok(())
    }

    /// The dispatches of one mask update (after a backward pass on the update's batch, which the
    /// RigL grow score needs): drop over all layers, then per layer the dense gradient (RigL),
    /// the grow selection and the index rebuild. `rule` is `Score` (RigL) or `Random` (SET).
    /// No optimizer step may follow on the same batch (the slot gradients are those of the old
    /// index): SET takes its step before the update, as the official code does.
    pub fn update_ops(&self, rule: GrowRule) -> Result<Vec<&Dispatch>> {
        if rule == GrowRule::None {
            return Err(RiglError::invalid(
                "the sparse layers keep a fixed active count: pruning runs on the masked path",
            ));
        }
        let mut v = self.drop.drop_dispatches();
        if rule == GrowRule::Score {
            v.extend(self.unpack_ops.iter());
        }
        for l in 0..self.n_layers() {
            if rule == GrowRule::Score {
                v.push(&self.dense_grad[l]);
            }
            v.extend(self.rebuild[l].0.iter());
            v.extend(self.grows[l].grow_dispatches(rule));
            v.extend(self.rebuild[l].1.iter());
        }
        v.extend(self.meta_ops.iter());
        Ok(v)
    }

    /// [`Self::update_ops`] cut after each layer's dense gradient (RigL's grow score), for a
    /// data-parallel run to average it over the ranks before that layer's grow selection reads
    /// it: segment `l` ends with layer `l`'s dense gradient, written to `views[l]` (a view of the
    /// one scratch, so it must be averaged before the next segment runs); the last segment has
    /// the rest. The segments in order are exactly [`Self::update_ops`]`(GrowRule::Score)`.
    pub fn update_segments(&self) -> (Vec<Vec<&Dispatch>>, &[Tensor]) {
        let mut segments = Vec::with_capacity(self.n_layers() + 1);
        let mut v = self.drop.drop_dispatches();
        v.extend(self.unpack_ops.iter());
        for l in 0..self.n_layers() {
            v.push(&self.dense_grad[l]);
            segments.push(std::mem::take(&mut v));
            v.extend(self.rebuild[l].0.iter());
            v.extend(self.grows[l].grow_dispatches(GrowRule::Score));
            v.extend(self.rebuild[l].1.iter());
        }
        v.extend(self.meta_ops.iter());
        segments.push(v);
        (segments, &self.dense_grad_views)
    }

    /// New connections per layer made by the last mask update.
    pub fn read_new_connections(&self, ctx: &GpuContext) -> Result<Vec<usize>> {
        let all = self.stats.read_u32(ctx)?;
        Ok(self
            .layers
            .iter()
            .map(|ly| all[ly.stats_offset] as usize)
            .collect())
    }

    /// Weights that were active at some point, per layer.
    pub fn ever_active(&self, ctx: &GpuContext) -> Result<Vec<usize>> {
        let all = self.stats.read_u32(ctx)?;
        Ok(self
            .layers
            .iter()
            .map(|ly| {
                let words = (ly.shape.in_dim * ly.shape.out_dim).div_ceil(32);
                all[ly.stats_offset + 64..ly.stats_offset + 64 + words]
                    .iter()
                    .map(|w| w.count_ones() as usize)
                    .sum()
            })
            .collect())
    }

    /// Reads every layer's index back.
    pub fn read_indexes(&self, ctx: &GpuContext) -> Result<Vec<CsrIndex>> {
        let all = self.index.read_u32(ctx)?;
        self.layers
            .iter()
            .map(|ly| {
                CsrIndex::from_words(
                    ly.shape.in_dim,
                    ly.shape.out_dim,
                    ly.shape.nnz,
                    &all[ly.index_offset..],
                )
            })
            .collect()
    }

    /// Reads a per-slot tensor (values, momentum, gradient) back as dense `[in, out]` per layer.
    pub fn read_dense(&self, ctx: &GpuContext, t: &Tensor) -> Result<Vec<Vec<f32>>> {
        let idx = self.read_indexes(ctx)?;
        let all = t.read_f32(ctx)?;
        Ok(self
            .layers
            .iter()
            .zip(&idx)
            .map(|(ly, ci)| ci.scatter(&all[ly.slot_offset..ly.slot_offset + ly.shape.nnz]))
            .collect())
    }

    /// Reads the masks back, dense `[in, out]` per layer.
    pub fn read_masks(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        Ok(self.read_indexes(ctx)?.iter().map(|ci| ci.mask()).collect())
    }

    /// Reads the biases back, per layer.
    pub fn read_biases(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        crate::nn::read_bias_layout(ctx, &self.bias, &self.bias_offsets, &self.cfg.sizes)
    }

    /// Resets the running loss sums.
    pub fn reset_sums(&self, ctx: &GpuContext) -> Result<()> {
        self.loss.set_sums(ctx, [0.0, 0.0])
    }

    /// Reads (loss sum, correct count) accumulated since the last reset.
    pub fn read_sums(&self, ctx: &GpuContext) -> Result<(f64, f64)> {
        let s = self.loss.read_sums_f32(ctx)?;
        Ok((f64::from(s[0]), f64::from(s[1])))
    }

    /// The logits of the last forward pass, `[classes, batch]`.
    pub fn logits(&self) -> &Tensor {
        &self.acts[self.n_layers() - 1]
    }

    /// Reads the whole training state back, dense `[in, out]` per layer (the EMA is zero: the
    /// sparse path does not run SNFS). [`SparseMlp::load_state`] of it restores the GPU exactly:
    /// the index is rebuilt from the mask in the same canonical order the update writes.
    pub fn read_state(&self, ctx: &GpuContext) -> Result<ModelState> {
        let idx = self.read_indexes(ctx)?;
        let vals = self.vals.read_f32(ctx)?;
        let mom = self.mom.read_f32(ctx)?;
        let stats = self.stats.read_u32(ctx)?;
        let sums = self.loss.read_sums_f32(ctx)?;
        let dense = |all: &[f32]| -> Vec<Vec<f32>> {
            self.layers
                .iter()
                .zip(&idx)
                .map(|(ly, ci)| ci.scatter(&all[ly.slot_offset..ly.slot_offset + ly.shape.nnz]))
                .collect()
        };
        let ever = self
            .layers
            .iter()
            .map(|ly| {
                let n = ly.shape.in_dim * ly.shape.out_dim;
                let bits = &stats[ly.stats_offset + 64..];
                (0..n)
                    .map(|q| f32::from((bits[q / 32] >> (q % 32)) & 1 == 1))
                    .collect()
            })
            .collect();
        let per_bias = |all: Vec<f32>| -> Vec<Vec<f32>> {
            self.bias_offsets
                .iter()
                .enumerate()
                .map(|(l, &o)| all[o..o + self.cfg.sizes[l + 1]].to_vec())
                .collect()
        };
        Ok(ModelState {
            weights: dense(&vals),
            masks: idx.iter().map(|ci| ci.mask()).collect(),
            momentum: dense(&mom),
            biases: per_bias(self.bias.read_f32(ctx)?),
            bias_momentum: per_bias(self.bmom.read_f32(ctx)?),
            ema: self
                .layers
                .iter()
                .map(|ly| vec![0.0; ly.shape.in_dim * ly.shape.out_dim])
                .collect(),
            ever,
            loss_sums: [sums[0], sums[1]],
            norms: Vec::new(),
        })
    }

    /// Restores a state read by [`SparseMlp::read_state`] (or by the masked-dense model's, for a
    /// model of the same shape and active counts) bit for bit.
    pub fn load_state(&self, ctx: &GpuContext, state: &ModelState) -> Result<()> {
        self.load(ctx, &state.weights, &state.masks, &state.biases)?;
        let n_layers = self.n_layers();
        for (what, layers) in state.tensors() {
            if layers.len() != n_layers {
                return Err(RiglError::invalid(format!(
                    "model state: {} {what} layers, the model has {n_layers}",
                    layers.len()
                )));
            }
        }
        let mut mom = vec![0.0f32; self.total_slots];
        let mut stats = vec![0u32; self.stats.len];
        let mut bmom = vec![0.0f32; self.total_b];
        for (l, ly) in self.layers.iter().enumerate() {
            let (s, n) = (ly.shape, ly.shape.in_dim * ly.shape.out_dim);
            if state.momentum[l].len() != n || state.ever[l].len() != n {
                return Err(RiglError::invalid(format!(
                    "model state: layer {} momentum or ever-active map is not {n} values",
                    ly.name
                )));
            }
            if state.bias_momentum[l].len() != s.out_dim {
                return Err(RiglError::invalid(format!(
                    "model state: layer {} has {} bias momenta, expected {}",
                    ly.name,
                    state.bias_momentum[l].len(),
                    s.out_dim
                )));
            }
            let ci = CsrIndex::from_mask(s.in_dim, s.out_dim, &state.masks[l])?;
            mom[ly.slot_offset..ly.slot_offset + s.nnz]
                .copy_from_slice(&ci.gather(&state.momentum[l]));
            for (q, &e) in state.ever[l].iter().enumerate() {
                if e != 0.0 {
                    stats[ly.stats_offset + 64 + q / 32] |= 1 << (q % 32);
                }
            }
            bmom[self.bias_offsets[l]..self.bias_offsets[l] + s.out_dim]
                .copy_from_slice(&state.bias_momentum[l]);
        }
        self.mom.write_f32(ctx, &mom)?;
        ctx.queue.write_buffer(
            &self.stats.buffer,
            self.stats.offset,
            bytemuck::cast_slice(&stats),
        );
        self.bmom.write_f32(ctx, &bmom)?;
        self.loss.set_sums(ctx, state.loss_sums)
    }

    /// Sets the running loss sums (loss sum, correct count), e.g. to undo a skipped batch.
    pub fn set_sums(&self, ctx: &GpuContext, sums: [f32; 2]) -> Result<()> {
        self.loss.set_sums(ctx, sums)
    }

    /// Reads the running loss sums as the GPU holds them (f32).
    pub fn read_sums_f32(&self, ctx: &GpuContext) -> Result<[f32; 2]> {
        self.loss.read_sums_f32(ctx)
    }
}

//! A multi-layer perceptron of sparse linear layers on the GPU, ReLU between layers, softmax
//! cross-entropy on top.
//!
//! Storage (the masked-dense path): every layer's weights `[in, out]` live back to back in one flat
//! buffer at 64-element-aligned offsets, with a 0/1 mask, momentum, the dense weight gradient
//! (`dL/d(mask ⊙ w)`), the SNFS gradient EMA and the "ever active" map in flat buffers of the
//! same layout, so the mask update and the optimizer each cover all layers in one dispatch.
//! Activations are feature-major `[features, batch]`.
//!
//! Step, for layers l = 0..L-1 with input a_{-1} = x:
//! ```text
//! forward   z_l = (w_l ⊙ m_l)ᵀ a_{l-1} + b_l,   a_l = relu(z_l) (identity for the last)
//! loss      softmax cross-entropy of a_{L-1}; d_{L-1} = (softmax - target) / batch
//! backward  d_l ⊙= relu'(a_l) (hidden),  db_l = Σ_batch d_l,  dW_l = a_{l-1} d_lᵀ (dense),
//!           d_{l-1} = (w_l ⊙ m_l) d_l
//! update    SGD with momentum on w (masked) and b
//! ```

use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch, SgdConfig};
use crate::gpu::{GemmOp, GemmShape, GemmVariant, GpuContext, Tensor};
use crate::nn::loss::LossHead;
use crate::nn::ModelState;
use crate::sparse::init::count_active;
use crate::sparse::update::LayerPlacement;

/// Alignment of layer offsets in the flat buffers, in elements (256 bytes: WebGPU's largest
/// `min_storage_buffer_offset_alignment`).
pub const ALIGN: usize = 64;

/// Shape and hyper-parameters of an [`Mlp`].
#[derive(Clone, Debug, PartialEq)]
pub struct MlpConfig {
    /// Layer widths, input first: `[784, 300, 100, 10]` is LeNet-300-100.
    pub sizes: Vec<usize>,
    /// Samples per step.
    pub batch: usize,
    /// Apply the masks in the products (false for dense training).
    pub masked: bool,
    /// Label smoothing of the cross-entropy target.
    pub label_smoothing: f32,
    /// Optimizer for the weights (biases use the same without weight decay).
    pub sgd: SgdConfig,
    /// Preferred GEMM variant (resolved per product shape).
    pub gemm: GemmVariant,
}

/// Names of the layers of an MLP with `n_layers` layers: `fc1`, `fc2`, ...
pub fn layer_names(n_layers: usize) -> Vec<String> {
    (1..=n_layers).map(|i| format!("fc{i}")).collect()
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The model on the GPU with every dispatch of a step prebuilt.
#[derive(Debug)]
pub struct Mlp {
    /// Configuration it was built with.
    pub cfg: MlpConfig,
    /// Where each layer's weights are in the flat buffers.
    pub placements: Vec<LayerPlacement>,
    /// Offsets of each layer's bias in the flat bias buffers.
    pub bias_offsets: Vec<usize>,
    /// Flat weights.
    pub w: Tensor,
    /// Flat 0/1 masks.
    pub mask: Tensor,
    /// Flat weight momentum.
    pub mom: Tensor,
    /// Flat dense weight gradient of the last backward pass.
    pub grad: Tensor,
    /// Flat EMA of the dense gradient (SNFS).
    pub ema: Tensor,
    /// Flat "ever active" map (ITOP rate).
    pub ever: Tensor,
    /// Flat biases.
    pub bias: Tensor,
    /// Flat bias momentum.
    pub bmom: Tensor,
    /// Flat bias gradient.
    pub bgrad: Tensor,
    /// Input batch `[in, batch]`.
    pub x: Tensor,
    acts: Vec<Tensor>,
    fwd: Vec<Dispatch>,
    loss: LossHead,
    bwd: Vec<Dispatch>,
    sgd_w: Dispatch,
    sgd_b: Dispatch,
    ema_op: Dispatch,
    ever_op: Dispatch,
    total_w: usize,
    total_b: usize,
}

impl Mlp {
    /// Allocates every buffer and builds every dispatch of a step (nothing is allocated later).
    pub fn new(ctx: &GpuContext, cfg: MlpConfig) -> Result<Self> {
        if cfg.sizes.len() < 2 || cfg.sizes.contains(&0) {
            return Err(RiglError::invalid(format!(
                "an MLP needs at least an input and an output width, all positive (got {:?})",
                cfg.sizes
            )));
        }
        if cfg.batch == 0 {
            return Err(RiglError::invalid("batch size must be at least 1"));
        }
        let n_layers = cfg.sizes.len() - 1;
        let names = layer_names(n_layers);
        let mut placements = Vec::new();
        let mut bias_offsets = Vec::new();
        let (mut off, mut boff) = (0usize, 0usize);
        for (l, name) in names.iter().enumerate() {
            let n = cfg.sizes[l] * cfg.sizes[l + 1];
            placements.push(LayerPlacement {
                name: name.clone(),
                offset: off,
                n,
                id: l as u32,
            });
            bias_offsets.push(boff);
            off += align(n);
            boff += align(cfg.sizes[l + 1]);
        }
        let (total_w, total_b) = (off, boff);
        let t = |label: &str, len: usize| Tensor::zeros(ctx, label, len);
        let w = t("weights", total_w)?;
        let mask = Tensor::from_f32(ctx, "masks", &vec![1.0; total_w])?;
        let mom = t("momentum", total_w)?;
        let grad = t("weight gradients", total_w)?;
        let ema = t("gradient EMA", total_w)?;
        let ever = t("ever-active map", total_w)?;
        let bias = t("biases", total_b)?;
        let bmom = t("bias momentum", total_b)?;
        let bgrad = t("bias gradients", total_b)?;
        let b = cfg.batch;
        let x = t("input batch", cfg.sizes[0] * b)?;
        let mut acts = Vec::new();
        let mut dacts = Vec::new();
        for (l, name) in names.iter().enumerate() {
            acts.push(t(&format!("{name} activations"), cfg.sizes[l + 1] * b)?);
            dacts.push(t(
                &format!("{name} activation gradients"),
                cfg.sizes[l + 1] * b,
            )?);
        }
        let view = |tensor: &Tensor, l: usize, what: &str| {
            let p = &placements[l];
            tensor.slice(ctx, p.offset, p.n, &format!("{} {what}", p.name))
        };
        let bview = |tensor: &Tensor, l: usize, what: &str| {
            tensor.slice(
                ctx,
                bias_offsets[l],
                cfg.sizes[l + 1],
                &format!("{} {what}", names[l]),
            )
        };
        let gemm = |shape: GemmShape, a: &Tensor, bm: &Tensor, c: &Tensor, m: Option<&Tensor>| {
            let v = crate::gpu::gemm::pick(ctx, cfg.gemm, &shape)?;
            GemmOp::new(ctx, shape, v, a, bm, c, m, false).map(|g| g.dispatch)
        };
        let mut fwd = Vec::new();
        for l in 0..n_layers {
            let (fin, fout) = (cfg.sizes[l], cfg.sizes[l + 1]);
            let input = if l == 0 { &x } else { &acts[l - 1] };
            let wv = view(&w, l, "weights")?;
            let mv = view(&mask, l, "mask")?;
            let shape = GemmShape {
                m: fout,
                n: b,
                k: fin,
                trans_a: true,
                trans_b: false,
            };
            fwd.push(gemm(
                shape,
                &wv,
                input,
                &acts[l],
                cfg.masked.then_some(&mv),
            )?);
            let bv = bview(&bias, l, "bias")?;
            fwd.push(ops::bias_act(
                ctx,
                &bv,
                &acts[l],
                fout,
                b,
                l + 1 < n_layers,
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
        let mut bwd = Vec::new();
        for l in (0..n_layers).rev() {
            let (fin, fout) = (cfg.sizes[l], cfg.sizes[l + 1]);
            if l + 1 < n_layers {
                bwd.push(ops::relu_bwd(ctx, &acts[l], &dacts[l], fout * b)?);
            }
            let bg = bview(&bgrad, l, "bias gradient")?;
            bwd.push(ops::segment_sum(ctx, &dacts[l], &bg, fout, b, false)?);
            let input = if l == 0 { &x } else { &acts[l - 1] };
            let gv = view(&grad, l, "weight gradient")?;
            let shape = GemmShape {
                m: fin,
                n: fout,
                k: b,
                trans_a: false,
                trans_b: true,
            };
            bwd.push(gemm(shape, input, &dacts[l], &gv, None)?);
            if l > 0 {
                let wv = view(&w, l, "weights")?;
                let mv = view(&mask, l, "mask")?;
                let shape = GemmShape::nn(fin, b, fout);
                bwd.push(gemm(
                    shape,
                    &wv,
                    &dacts[l],
                    &dacts[l - 1],
                    cfg.masked.then_some(&mv),
                )?);
            }
        }
        let sgd_w = ops::sgd(ctx, &grad, &w, &mom, Some(&mask), total_w, cfg.sgd)?;
        let bias_sgd = SgdConfig {
            weight_decay: 0.0,
            ..cfg.sgd
        };
        let sgd_b = ops::sgd(ctx, &bgrad, &bias, &bmom, None, total_b, bias_sgd)?;
        let ema_op = ops::ema(ctx, &grad, &ema, total_w, 0.9)?;
        let ever_op = ops::max_into(ctx, &mask, &ever, total_w)?;
        Ok(Mlp {
            cfg,
            placements,
            bias_offsets,
            w,
            mask,
            mom,
            grad,
            ema,
            ever,
            bias,
            bmom,
            bgrad,
            x,
            acts,
            fwd,
            loss,
            bwd,
            sgd_w,
            sgd_b,
            ema_op,
            ever_op,
            total_w,
            total_b,
        })
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.placements.len()
    }

    /// Uploads weights, masks and biases (one entry per layer, weights `[in, out]` row-major);
    /// weights outside the mask are written as zero. Momentum and the EMA are reset; the
    /// ever-active map starts as the mask.
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
        let mut w = vec![0.0f32; self.total_w];
        let mut m = vec![0.0f32; self.total_w];
        let mut b = vec![0.0f32; self.total_b];
        for (l, p) in self.placements.iter().enumerate() {
            if weights[l].len() != p.n || masks[l].len() != p.n {
                return Err(RiglError::invalid(format!(
                    "layer {}: {} weights and {} mask values, expected {}",
                    p.name,
                    weights[l].len(),
                    masks[l].len(),
                    p.n
                )));
            }
            let fout = self.cfg.sizes[l + 1];
            if biases[l].len() != fout {
                return Err(RiglError::invalid(format!(
                    "layer {}: {} biases, expected {fout}",
                    p.name,
                    biases[l].len()
                )));
            }
            for i in 0..p.n {
                let mk = masks[l][i];
                if mk != 0.0 && mk != 1.0 {
                    return Err(RiglError::invalid(format!(
                        "layer {}: mask[{i}] = {mk}, expected 0 or 1",
                        p.name
                    )));
                }
                m[p.offset + i] = mk;
                w[p.offset + i] = weights[l][i] * mk;
            }
            b[self.bias_offsets[l]..self.bias_offsets[l] + fout].copy_from_slice(&biases[l]);
        }
        self.w.write_f32(ctx, &w)?;
        self.mask.write_f32(ctx, &m)?;
        self.ever.write_f32(ctx, &m)?;
        self.bias.write_f32(ctx, &b)?;
        let zeros_w = vec![0.0f32; self.total_w];
        self.mom.write_f32(ctx, &zeros_w)?;
        self.ema.write_f32(ctx, &zeros_w)?;
        self.bmom.write_f32(ctx, &vec![0.0; self.total_b])?;
        self.reset_sums(ctx)
    }

    /// Writes a batch: `x` feature-major `[in, batch]`, `labels[batch]`. A partial batch of
    /// `valid < batch` samples is padded by the caller (labels [`crate::data::PAD_LABEL`]); call
    /// [`Mlp::set_valid`] so the padding does not count.
    pub fn set_batch(&self, ctx: &GpuContext, x: &[f32], labels: &[u32]) -> Result<()> {
        self.loss.write_labels(ctx, labels)?;
        self.x.write_f32(ctx, x)
    }

    /// Only the first `valid` samples of the batch count in the loss and its gradient.
    pub fn set_valid(&self, ctx: &GpuContext, valid: usize) {
        self.loss.set_valid(ctx, valid);
    }

    /// Sets the optimizer's hyper-parameters (the learning rate changes every step).
    pub fn set_sgd(&self, ctx: &GpuContext, sgd: SgdConfig) {
        ops::set_sgd(ctx, &self.sgd_w, self.total_w, sgd);
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

    /// Backward pass: bias gradients, dense weight gradients, input gradients.
    pub fn backward_ops(&self) -> Vec<&Dispatch> {
        self.bwd.iter().collect()
    }

    /// Optimizer step on weights and biases.
    pub fn sgd_ops(&self) -> Vec<&Dispatch> {
        vec![&self.sgd_w, &self.sgd_b]
    }

    /// SNFS: EMA of the dense gradient.
    pub fn ema_op(&self) -> &Dispatch {
        &self.ema_op
    }

    /// ITOP bookkeeping: mark the current mask as ever active.
    pub fn ever_op(&self) -> &Dispatch {
        &self.ever_op
    }

    /// The logits of the last forward pass, `[classes, batch]`.
    pub fn logits(&self) -> &Tensor {
        &self.acts[self.n_layers() - 1]
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

    /// Reads one flat tensor back, split per layer.
    pub fn read_layers(&self, ctx: &GpuContext, t: &Tensor) -> Result<Vec<Vec<f32>>> {
        let all = t.read_f32(ctx)?;
        Ok(self
            .placements
            .iter()
            .map(|p| all[p.offset..p.offset + p.n].to_vec())
            .collect())
    }

    /// Reads the biases back, per layer.
    pub fn read_biases(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        self.read_bias_layers(ctx, &self.bias)
    }

    /// Reads a flat bias-layout tensor back, per layer.
    fn read_bias_layers(&self, ctx: &GpuContext, t: &Tensor) -> Result<Vec<Vec<f32>>> {
        crate::nn::read_bias_layout(ctx, t, &self.bias_offsets, &self.cfg.sizes)
    }

    /// Reads the whole training state back (waits for the GPU): everything a step reads from
    /// the steps before it. [`Mlp::load_state`] of the result restores the GPU exactly.
    pub fn read_state(&self, ctx: &GpuContext) -> Result<ModelState> {
        let sums = self.loss.read_sums_f32(ctx)?;
        Ok(ModelState {
            weights: self.read_layers(ctx, &self.w)?,
            masks: self.read_layers(ctx, &self.mask)?,
            momentum: self.read_layers(ctx, &self.mom)?,
            biases: self.read_bias_layers(ctx, &self.bias)?,
            bias_momentum: self.read_bias_layers(ctx, &self.bmom)?,
            ema: self.read_layers(ctx, &self.ema)?,
            ever: self.read_layers(ctx, &self.ever)?,
            loss_sums: [sums[0], sums[1]],
            norms: Vec::new(),
        })
    }

    /// Restores a state read by [`Mlp::read_state`] (of a model of the same shape) bit for bit;
    /// the alignment padding between layers is zero, as after [`Mlp::load`].
    pub fn load_state(&self, ctx: &GpuContext, state: &ModelState) -> Result<()> {
        let n_layers = self.n_layers();
        let flat_w = |what: &str, layers: &Vec<Vec<f32>>| {
            crate::sparse::update::flatten_layers(&self.placements, self.total_w, layers, what)
        };
        let flat_b = |what: &str, layers: &Vec<Vec<f32>>| -> Result<Vec<f32>> {
            if layers.len() != n_layers {
                return Err(RiglError::invalid(format!(
                    "model state: {} {what} layers, the model has {n_layers}",
                    layers.len()
                )));
            }
            let mut flat = vec![0.0f32; self.total_b];
            for (l, v) in layers.iter().enumerate() {
                let (o, fout) = (self.bias_offsets[l], self.cfg.sizes[l + 1]);
                if v.len() != fout {
                    return Err(RiglError::invalid(format!(
                        "model state: layer {} {what} has {} values, expected {fout}",
                        self.placements[l].name,
                        v.len()
                    )));
                }
                flat[o..o + fout].copy_from_slice(v);
            }
            Ok(flat)
        };
        // Check every shape before writing anything.
        let w = flat_w("weight", &state.weights)?;
        let m = flat_w("mask", &state.masks)?;
        let mom = flat_w("momentum", &state.momentum)?;
        let ema = flat_w("ema", &state.ema)?;
        let ever = flat_w("ever", &state.ever)?;
        let b = flat_b("bias", &state.biases)?;
        let bmom = flat_b("bias momentum", &state.bias_momentum)?;
        self.w.write_f32(ctx, &w)?;
        self.mask.write_f32(ctx, &m)?;
        self.mom.write_f32(ctx, &mom)?;
        self.ema.write_f32(ctx, &ema)?;
        self.ever.write_f32(ctx, &ever)?;
        self.bias.write_f32(ctx, &b)?;
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

    /// Active weights per layer (reads the masks back).
    pub fn active_counts(&self, ctx: &GpuContext) -> Result<Vec<usize>> {
        Ok(self
            .read_layers(ctx, &self.mask)?
            .iter()
            .map(|m| count_active(m))
            .collect())
    }

    /// GPU bytes of the trainable state: weights, mask, momentum and dense gradient per layer
    /// (16 bytes per weight); the SNFS gradient EMA and the ever-active map count as update
    /// scratch.
    pub fn memory(&self) -> crate::nn::MemoryReport {
        crate::nn::MemoryReport {
            layers: self
                .placements
                .iter()
                .map(|p| (p.name.clone(), 16 * p.n as u64))
                .collect(),
            weights_grads_momentum: 16 * self.total_w as u64,
            update_scratch: 8 * self.total_w as u64,
        }
    }

    /// Total elements of the flat weight buffers (layers plus alignment padding).
    pub fn flat_len(&self) -> usize {
        self.total_w
    }
}

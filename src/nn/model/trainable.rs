//! What the trainer needs of a [`GpuModel`] beyond a step's dispatches: the batch in the engine
//! layout, the optimizer's settings, the SNFS and ITOP bookkeeping over the flat buffers, and the
//! whole training state read back and restored (checkpoints).
//!
//! Input layout: the [`crate::data::Batcher`] produces feature-major batches `[features, N]`
//! with feature `f = (c * H + y) * W + x` (a Fashion-MNIST image is `C = 1`, `28 x 28`); the
//! engine reads images as `[C, N, H, W]`. [`GpuModel::set_batch`] permutes on the host, in one
//! pass over the batch, before the upload (for `C = 1` the two layouts differ only in where the
//! sample index sits).

use super::{GpuModel, ParamTensor, RunMode};
use crate::cpu::model::HostNorm;
use crate::error::{Result, RiglError};
use crate::gpu::ops::{self, Dispatch, SgdConfig};
use crate::gpu::{GpuContext, Tensor};
use crate::nn::{MemoryReport, ModelState, NormState};

/// `[features, N]` (feature `f = (c * H + y) * W + x`) to `[C, N, H, W]`.
pub fn features_to_images(x: &[f32], c: usize, hw: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for ch in 0..c {
        for p in 0..hw {
            let row = &x[(ch * hw + p) * n..(ch * hw + p + 1) * n];
            for (s, &v) in row.iter().enumerate() {
                out[(ch * n + s) * hw + p] = v;
            }
        }
    }
    out
}

impl GpuModel {
    /// Writes a batch: `x` feature-major `[C*H*W, N]` as the batcher gives it (permuted here to
    /// `[C, N, H, W]`), `labels[N]` (padding [`crate::data::PAD_LABEL`]).
    pub fn set_batch(&self, ctx: &GpuContext, x: &[f32], labels: &[u32]) -> Result<()> {
        let s = self.spec.input_shape();
        if x.len() != s.len() * self.batch {
            return Err(RiglError::invalid(format!(
                "a batch of {} values for model '{}' with input {}x{}x{} = {} features at batch {}",
                x.len(),
                self.spec.name,
                s.c,
                s.h,
                s.w,
                s.len(),
                self.batch
            )));
        }
        self.loss.write_labels(ctx, labels)?;
        if s.h * s.w == 1 {
            // A flat input: [C, N, 1, 1] is [C, N].
            return self.input.write_f32(ctx, x);
        }
        self.input
            .write_f32(ctx, &features_to_images(x, s.c, s.h * s.w, self.batch))
    }

    /// Only the first `valid` samples of the batch count in the loss and its gradient.
    pub fn set_valid(&self, ctx: &GpuContext, valid: usize) {
        self.loss.set_valid(ctx, valid);
    }

    /// Sets the optimizer's hyper-parameters (weight decay on the weight tensors only).
    pub fn set_sgd(&self, ctx: &GpuContext, sgd: SgdConfig) {
        for s in &self.sgd {
            let cfg = if s.decay {
                sgd
            } else {
                SgdConfig {
                    weight_decay: 0.0,
                    ..sgd
                }
            };
            ops::set_sgd(ctx, &s.op, s.len, cfg);
        }
    }

    /// The forward pass and the loss (adds to the running sums).
    pub fn forward_loss_ops(&self) -> Vec<&Dispatch> {
        self.forward.iter().chain(self.loss.ops()).collect()
    }

    /// The backward pass (every parameter's gradient).
    pub fn backward_ops(&self) -> Vec<&Dispatch> {
        self.backward.iter().collect()
    }

    /// The prebuilt optimizer step over every param, bias and batch norm.
    pub fn optimizer_ops(&self) -> Vec<&Dispatch> {
        self.sgd.iter().map(|s| &s.op).collect()
    }

    /// SNFS: EMA of the dense gradient.
    pub fn ema_op(&self) -> &Dispatch {
        &self.ema_op
    }

    /// ITOP bookkeeping: mark the current mask as ever active.
    pub fn ever_op(&self) -> &Dispatch {
        &self.ever_op
    }

    /// `sparse` (convolutions compressed), `masked`, or `dense` for dense training.
    pub fn kernels(&self) -> &'static str {
        if self.has_compressed() {
            "sparse"
        } else if self.masked {
            "masked"
        } else {
            "dense"
        }
    }

    /// Resets the running loss sums.
    pub fn reset_sums(&self, ctx: &GpuContext) -> Result<()> {
        self.loss.set_sums(ctx, [0.0, 0.0])
    }

    /// Sets the running (loss sum, correct count).
    pub fn set_sums(&self, ctx: &GpuContext, sums: [f32; 2]) -> Result<()> {
        self.loss.set_sums(ctx, sums)
    }

    /// Reads the running (loss sum, correct count) as the GPU holds them.
    pub fn read_sums_f32(&self, ctx: &GpuContext) -> Result<[f32; 2]> {
        self.loss.read_sums_f32(ctx)
    }

    /// Reads one state tensor back per param, dense in the param's shape, compressed kernels
    /// included (from their slots and index).
    pub fn read_params(&self, ctx: &GpuContext, kind: ParamTensor) -> Result<Vec<Vec<f32>>> {
        let flat = match kind {
            ParamTensor::Weights => &self.w,
            ParamTensor::Masks => &self.mask,
            ParamTensor::Momentum => &self.mom,
            ParamTensor::Ema => &self.ema,
            ParamTensor::Ever => &self.ever,
        };
        let mut out = self.read_flat(ctx, flat)?;
        for c in self.compressed.iter().flatten() {
            out[c.param] = c.read(ctx, kind)?;
        }
        Ok(out)
    }

    /// One flat tensor read back per param: the params kept in the flat buffers, empty for the
    /// compressed ones.
    fn read_flat(&self, ctx: &GpuContext, flat: &Tensor) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); self.params.len()];
        for (p, v) in self.placements.iter().zip(self.read_layers(ctx, flat)?) {
            out[p.id as usize] = v;
        }
        Ok(out)
    }

    /// Reads one flat tensor back, split per param kept in the flat buffers (in
    /// [`GpuModel::placements`]' order; compressed kernels are not there: see
    /// [`GpuModel::read_params`]).
    pub fn read_layers(&self, ctx: &GpuContext, t: &Tensor) -> Result<Vec<Vec<f32>>> {
        let all = t.read_f32(ctx)?;
        Ok(self
            .placements
            .iter()
            .map(|p| all[p.offset..p.offset + p.n].to_vec())
            .collect())
    }

    /// Biases per param (empty for a layer without one).
    pub fn read_biases(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        self.params
            .iter()
            .map(|p| match &p.bias {
                Some([b, _, _]) => b.read_f32(ctx),
                None => Ok(Vec::new()),
            })
            .collect()
    }

    /// Every batch norm's parameters, momentum and running statistics.
    pub fn read_norms(&self, ctx: &GpuContext) -> Result<Vec<NormState>> {
        let split = |v: Vec<f32>| -> (Vec<f32>, Vec<f32>) {
            (
                v.iter().step_by(2).copied().collect(),
                v.iter().skip(1).step_by(2).copied().collect(),
            )
        };
        self.norms
            .iter()
            .map(|n| {
                let (gamma, beta) = split(n.gamma_beta.read_f32(ctx)?);
                let (gamma_momentum, beta_momentum) = split(n.mom.read_f32(ctx)?);
                let (mean, var) = split(n.running.read_f32(ctx)?);
                Ok(NormState {
                    gamma,
                    beta,
                    gamma_momentum,
                    beta_momentum,
                    mean,
                    var,
                })
            })
            .collect()
    }

    /// The batch norms as the CPU twin and the model file hold them.
    pub fn read_host_norms(&self, ctx: &GpuContext) -> Result<Vec<HostNorm>> {
        Ok(self
            .read_norms(ctx)?
            .into_iter()
            .map(|n| HostNorm {
                gamma: n.gamma,
                beta: n.beta,
                mean: n.mean,
                var: n.var,
            })
            .collect())
    }

    /// Reads the whole training state back (waits for the GPU): weights, masks, momentum, EMA,
    /// ever-active record, biases and their momentum, batch norms and the running loss sums.
    pub fn read_state(&self, ctx: &GpuContext) -> Result<ModelState> {
        let bias_mom = self
            .params
            .iter()
            .map(|p| match &p.bias {
                Some([_, _, m]) => m.read_f32(ctx),
                None => Ok(Vec::new()),
            })
            .collect::<Result<Vec<_>>>()?;
        // The flat params one tensor at a time, each compressed tensor's state at once (its
        // index read once).
        let mut weights = self.read_flat(ctx, &self.w)?;
        let mut masks = self.read_flat(ctx, &self.mask)?;
        let mut momentum = self.read_flat(ctx, &self.mom)?;
        let mut ema = self.read_flat(ctx, &self.ema)?;
        let mut ever = self.read_flat(ctx, &self.ever)?;
        for c in self.compressed.iter().flatten() {
            let [w, m, mo, e, ev] = c.read_all(ctx)?;
            weights[c.param] = w;
            masks[c.param] = m;
            momentum[c.param] = mo;
            ema[c.param] = e;
            ever[c.param] = ev;
        }
        Ok(ModelState {
            weights,
            masks,
            momentum,
            biases: self.read_biases(ctx)?,
            bias_momentum: bias_mom,
            ema,
            ever,
            loss_sums: self.loss.read_sums_f32(ctx)?,
            norms: self.read_norms(ctx)?,
        })
    }

    /// Restores a state read by [`GpuModel::read_state`] of the same model bit for bit; every
    /// shape is checked before anything is written.
    pub fn load_state(&self, ctx: &GpuContext, state: &ModelState) -> Result<()> {
        let n = self.params.len();
        for (what, layers) in state.tensors() {
            if layers.len() != n {
                return Err(RiglError::invalid(format!(
                    "model state: {} {what} tensors, the model has {n}",
                    layers.len()
                )));
            }
        }
        // The params kept in the flat buffers; the compressed kernels below.
        let flat = |what: &str, layers: &Vec<Vec<f32>>| {
            let mine: Vec<Vec<f32>> = self
                .placements
                .iter()
                .map(|p| layers[p.id as usize].clone())
                .collect();
            crate::sparse::update::flatten_layers(&self.placements, self.total_w, &mine, what)
        };
        let w = flat("weight", &state.weights)?;
        let m = flat("mask", &state.masks)?;
        let mom = flat("momentum", &state.momentum)?;
        let ema = flat("ema", &state.ema)?;
        let ever = flat("ever", &state.ever)?;
        let bias_len = |p: &super::Param| p.bias.as_ref().map_or(0, |b| b[0].len);
        for (what, layers) in [
            ("bias", &state.biases),
            ("bias momentum", &state.bias_momentum),
        ] {
            if layers.len() != n
                || self
                    .params
                    .iter()
                    .zip(layers)
                    .any(|(p, v)| v.len() != bias_len(p))
            {
                return Err(RiglError::invalid(format!(
                    "model state: the {what} tensors do not match the model's biases"
                )));
            }
        }
        if state.norms.len() != self.norms.len()
            || self
                .norms
                .iter()
                .zip(&state.norms)
                .any(|(g, s)| s.tensors().iter().any(|(_, v)| v.len() != g.channels))
        {
            return Err(RiglError::invalid(format!(
                "model state: {} batch norms, the model has {} (or their channels differ)",
                state.norms.len(),
                self.norms.len()
            )));
        }
        for c in self.compressed.iter().flatten() {
            let i = c.param;
            c.check(
                &self.params[i].name,
                &state.weights[i],
                &state.masks[i],
                &state.momentum[i],
                &state.ever[i],
            )?;
        }
        self.w.write_f32(ctx, &w)?;
        self.mask.write_f32(ctx, &m)?;
        self.mom.write_f32(ctx, &mom)?;
        self.ema.write_f32(ctx, &ema)?;
        self.ever.write_f32(ctx, &ever)?;
        for ((p, b), bm) in self
            .params
            .iter()
            .zip(&state.biases)
            .zip(&state.bias_momentum)
        {
            if let Some([bt, _, mt]) = &p.bias {
                bt.write_f32(ctx, b)?;
                mt.write_f32(ctx, bm)?;
            }
        }
        let zip = |a: &[f32], b: &[f32]| -> Vec<f32> {
            a.iter().zip(b).flat_map(|(x, y)| [*x, *y]).collect()
        };
        for (g, s) in self.norms.iter().zip(&state.norms) {
            g.gamma_beta.write_f32(ctx, &zip(&s.gamma, &s.beta))?;
            g.mom
                .write_f32(ctx, &zip(&s.gamma_momentum, &s.beta_momentum))?;
            g.running.write_f32(ctx, &zip(&s.mean, &s.var))?;
        }
        // Checked above, before anything was written.
        for c in self.compressed.iter().flatten() {
            let i = c.param;
            c.write(
                ctx,
                &state.weights[i],
                &state.masks[i],
                &state.momentum[i],
                &state.ever[i],
            )?;
        }
        self.write_meta(ctx)?;
        self.loss.set_sums(ctx, state.loss_sums)
    }

    /// GPU bytes of the trainable state: weights, mask, momentum and dense gradient per param
    /// in the flat buffers (16 bytes per weight); a compressed tensor's slots (value, gradient,
    /// momentum) and index (a compressed linear layer's metadata textures, 16 bytes per active
    /// weight, are left out, as [`crate::nn::SparseMlp`]'s report leaves them out). Update scratch: the flat EMA and ever-active map, and for
    /// compressed kernels their update statistics, the dense gradient, grow flags and rebuild
    /// scratch of the largest kernel, and the drop phase's selection.
    pub fn memory(&self) -> MemoryReport {
        let mut layers: Vec<(String, u64)> =
            self.params.iter().map(|p| (p.name.clone(), 0)).collect();
        for p in &self.placements {
            layers[p.id as usize].1 = 16 * p.n as u64;
        }
        let mut scratch = 8 * self.total_w as u64;
        for c in self.compressed.iter().flatten() {
            layers[c.param].1 = 12 * c.nnz as u64 + c.idx.bytes();
            scratch += c.stats.bytes();
        }
        if let Some(sl) = &self.slots {
            scratch += sl.update_scratch_bytes();
        }
        if let Some(up) = &self.slot_update {
            scratch += up.selection_bytes();
        }
        MemoryReport {
            weights_grads_momentum: layers.iter().map(|l| l.1).sum(),
            layers,
            update_scratch: scratch,
        }
    }

    /// Input features per sample (`C * H * W`).
    pub fn features(&self) -> usize {
        self.spec.input_shape().len()
    }

    /// Classes (rows of the logits).
    pub fn classes(&self) -> usize {
        self.logits.len / self.batch
    }

    /// Sets the mode for the next passes: [`RunMode::Train`] at each step (dropout's hash, batch
    /// statistics), [`RunMode::Eval`] for evaluation.
    pub fn set_run_mode(&self, ctx: &GpuContext, mode: RunMode) -> Result<()> {
        self.set_mode(ctx, mode)
    }
}

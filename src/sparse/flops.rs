//! FLOPs accounting (SPEC §6, the paper's Appendix H).
//!
//! One multiply-add counts as 2 FLOPs; biases and activations are ignored (for dense and sparse
//! alike). A layer's dense forward cost per sample is `2 * prod(shape) * positions`, where
//! `positions` is the number of output positions (`1` for a dense layer `[in, out]`, `H * W` of
//! the output for a convolution `[kh, kw, cin, cout]`); its sparse cost is
//! `2 * active * positions` with the exact active count. Backward costs 2 × forward.
//!
//! | method | training FLOPs per step |
//! |---|---|
//! | dense | `3 f_D` |
//! | static, SET | `3 f_S` |
//! | SNFS | `2 f_S + f_D` |
//! | RigL | `(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)` |
//! | prune | mean over steps of `3 f_D(t)`, with the mask in force at step `t` |
//!
//! Ratios are reported as multiples of the dense model's (`3 f_D` for training, `f_D` for
//! inference).

use crate::cpu::mask_update::Method;
use crate::error::{Result, RiglError};
use crate::sparse::distribution::active_count;
use crate::sparse::schedule::PruneSchedule;

/// Forward FLOPs per sample of the dense layer `shape` with `positions` output positions:
/// `2 * prod(shape) * positions`.
pub fn dense_layer_flops(shape: &[usize], positions: u64) -> Result<f64> {
    Ok(LayerCost::new(shape, 0.0, positions)?.dense_flops())
}

/// The cost model of one layer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LayerCost {
    /// Weights of the dense layer.
    pub total: usize,
    /// Sparsity of the layer (final sparsity for pruning); active = `total - floor(s * total)`.
    pub sparsity: f64,
    /// Output positions per sample (1 for dense layers, `H * W` for convolutions).
    pub positions: u64,
}

impl LayerCost {
    /// The cost of a layer of `shape` at `sparsity` with `positions` output positions.
    pub fn new(shape: &[usize], sparsity: f64, positions: u64) -> Result<Self> {
        if shape.is_empty() || shape.contains(&0) || positions == 0 {
            return Err(RiglError::invalid(format!(
                "layer cost of shape {shape:?} with {positions} output positions: empty or \
                 zero-sized"
            )));
        }
        if !(0.0..1.0).contains(&sparsity) {
            return Err(RiglError::invalid(format!(
                "layer sparsity must be in [0, 1), got {sparsity}"
            )));
        }
        let total = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| RiglError::invalid(format!("shape {shape:?} overflows")))?;
        Ok(LayerCost {
            total,
            sparsity,
            positions,
        })
    }

    /// Active weights, `total - floor(sparsity * total)`.
    pub fn active(&self) -> usize {
        active_count(self.total, self.sparsity)
    }

    /// Dense forward FLOPs per sample, `2 * total * positions`.
    pub fn dense_flops(&self) -> f64 {
        2.0 * self.total as f64 * self.positions as f64
    }

    /// Sparse forward FLOPs per sample, `2 * active * positions`.
    pub fn sparse_flops(&self) -> f64 {
        self.flops_with_active(self.active())
    }

    fn flops_with_active(&self, active: usize) -> f64 {
        2.0 * active as f64 * self.positions as f64
    }
}

/// `f_D`: dense forward FLOPs per sample of the model.
pub fn dense_forward_flops(layers: &[LayerCost]) -> f64 {
    layers.iter().map(LayerCost::dense_flops).sum()
}

/// `f_S`: sparse forward FLOPs per sample of the model.
pub fn sparse_forward_flops(layers: &[LayerCost]) -> f64 {
    layers.iter().map(LayerCost::sparse_flops).sum()
}

/// What training FLOPs depend on besides the layers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TrainFlopsConfig {
    /// Steps between RigL mask updates (ΔT), at least 1 for RigL.
    pub delta_t: u64,
    /// Training steps (the mean for pruning runs over `0..total_steps`), at least 1 for pruning.
    pub total_steps: u64,
    /// Pruning schedule (needed by [`Method::Prune`]; each layer's final sparsity is its
    /// [`LayerCost::sparsity`], see [`PruneSchedule::sparsity_at_with_final`]).
    pub prune: Option<PruneSchedule>,
}

fn check_layers(layers: &[LayerCost]) -> Result<f64> {
    if layers.is_empty() {
        return Err(RiglError::invalid("FLOPs of a model without layers"));
    }
    Ok(dense_forward_flops(layers))
}

/// Inference FLOPs as a multiple of the dense model's: `f_S / f_D` (1 for [`Method::Dense`];
/// for [`Method::Prune`] the final masks).
pub fn inference_flops_vs_dense(method: Method, layers: &[LayerCost]) -> Result<f64> {
    let fd = check_layers(layers)?;
    Ok(match method {
        Method::Dense => 1.0,
        _ => sparse_forward_flops(layers) / fd,
    })
}

/// Training FLOPs per step per sample (forward + backward), absolute, for `method` (table in the
/// module docs).
///
/// Pruning: before the first pruning step the model is dense; at each pruning step `p` (see
/// [`PruneSchedule::is_prune_step`]) layer `l` gets `active(s_l(p))` weights, kept until the
/// next one; the result is the mean over `t` in `0..total_steps` of
/// `3 * sum_l(2 * active_l(t) * positions_l)`.
pub fn train_flops_per_step(
    method: Method,
    layers: &[LayerCost],
    cfg: &TrainFlopsConfig,
) -> Result<f64> {
    let fd = check_layers(layers)?;
    let fs = sparse_forward_flops(layers);
    Ok(match method {
        Method::Dense => 3.0 * fd,
        Method::Static | Method::Set => 3.0 * fs,
        Method::Snfs => 2.0 * fs + fd,
        Method::Rigl => {
            if cfg.delta_t == 0 {
                return Err(RiglError::invalid("RigL FLOPs need delta_t >= 1"));
            }
            let dt = cfg.delta_t as f64;
            (3.0 * fs * dt + 2.0 * fs + fd) / (dt + 1.0)
        }
        Method::Prune => {
            let sched = cfg
                .prune
                .ok_or_else(|| RiglError::invalid("pruning FLOPs need a prune schedule"))?;
            sched.validate()?;
            if cfg.total_steps == 0 {
                return Err(RiglError::invalid("pruning FLOPs need total_steps >= 1"));
            }
            3.0 * prune_mean_forward(layers, &sched, cfg.total_steps)
        }
    })
}

/// Mean over `0..total` of the forward FLOPs of the masks in force.
fn prune_mean_forward(layers: &[LayerCost], sched: &PruneSchedule, total: u64) -> f64 {
    let mut current = dense_forward_flops(layers);
    let mut sum = 0.0;
    for t in 0..total {
        if sched.is_prune_step(t) {
            current = layers
                .iter()
                .map(|l| {
                    let s = sched.sparsity_at_with_final(t, l.sparsity);
                    l.flops_with_active(active_count(l.total, s))
                })
                .sum();
        }
        sum += current;
    }
    sum / total as f64
}

/// Training FLOPs per step as a multiple of dense training (`3 f_D`).
pub fn train_flops_vs_dense(
    method: Method,
    layers: &[LayerCost],
    cfg: &TrainFlopsConfig,
) -> Result<f64> {
    let fd = check_layers(layers)?;
    Ok(train_flops_per_step(method, layers, cfg)? / (3.0 * fd))
}

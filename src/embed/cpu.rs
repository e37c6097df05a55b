//! The scheduler on plain `&mut [f32]` slices, no GPU: the same masks, schedule and update as
//! [`super::SparseScheduler`] (its arithmetic is the CPU twin, [`crate::cpu::mask_update`]).

use crate::cpu::mask_update::{rigl_update, set_update};
use crate::error::{Result, RiglError};
use crate::sparse::update::GrowRule;

use super::{Core, MaskUpdateInfo, SchedulerConfig, SchedulerState, SparseLayerSpec};

/// One layer of the host's model on the CPU, in the scheduler's layer order.
#[derive(Debug)]
pub struct CpuLayer<'a> {
    /// Weights, flat, `len()` of the layer.
    pub weights: &'a mut [f32],
    /// The dense gradient `dL/d(mask ⊙ w)` of this step; needed at RigL update steps.
    pub grad: Option<&'a [f32]>,
    /// Optimizer slots (momentum, Adam's moments, ...) zeroed with the weights at new
    /// connections and outside the mask.
    pub slots: Vec<&'a mut [f32]>,
}

impl<'a> CpuLayer<'a> {
    /// A layer with weights only.
    pub fn new(weights: &'a mut [f32]) -> Self {
        CpuLayer {
            weights,
            grad: None,
            slots: Vec::new(),
        }
    }

    /// With the dense gradient.
    pub fn with_grad(mut self, grad: &'a [f32]) -> Self {
        self.grad = Some(grad);
        self
    }

    /// With one more optimizer slot.
    pub fn with_slot(mut self, slot: &'a mut [f32]) -> Self {
        self.slots.push(slot);
        self
    }
}

/// Masks and mask updates of a host's model on the CPU.
#[derive(Debug, Clone)]
pub struct CpuScheduler {
    core: Core,
    masks: Vec<Vec<f32>>,
}

impl CpuScheduler {
    /// A scheduler over `layers`, with the trainer's initial random masks for `cfg.seed`
    /// (exact active counts).
    pub fn new(cfg: SchedulerConfig, layers: Vec<SparseLayerSpec>) -> Result<Self> {
        let core = Core::new(cfg, layers)?;
        let masks = core.initial_masks()?;
        Ok(CpuScheduler { core, masks })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.core.cfg
    }

    /// The layers.
    pub fn layers(&self) -> &[SparseLayerSpec] {
        &self.core.layers
    }

    /// The 0/1 masks, one per layer.
    pub fn masks(&self) -> &[Vec<f32>] {
        &self.masks
    }

    /// Active weights per layer.
    pub fn active_counts(&self) -> &[usize] {
        &self.core.active
    }

    /// Replaces the masks (0/1 values, one per layer of the layer's length).
    pub fn set_masks(&mut self, masks: Vec<Vec<f32>>) -> Result<()> {
        self.core.active = self.core.check_masks(&masks)?;
        self.masks = masks;
        Ok(())
    }

    /// Whether the masks change at `step`.
    pub fn is_update_step(&self, step: u64) -> bool {
        self.core.is_update_step(step)
    }

    /// Whether [`CpuScheduler::update`] at `step` needs the dense gradient (RigL update steps).
    pub fn needs_dense_gradient(&self, step: u64) -> bool {
        self.core.needs_dense_gradient(step)
    }

    /// Whether the host should skip its optimizer step at `step` (RigL spends the batch of an
    /// update step on the update, SPEC §4).
    pub fn skips_optimizer(&self, step: u64) -> bool {
        self.core.needs_dense_gradient(step)
    }

    fn check(&self, layers: &[CpuLayer<'_>], need_grad: bool) -> Result<()> {
        if layers.len() != self.core.layers.len() {
            return Err(RiglError::invalid(format!(
                "{} layers given to a scheduler of {}",
                layers.len(),
                self.core.layers.len()
            )));
        }
        for (spec, l) in self.core.layers.iter().zip(layers) {
            let n = spec.len();
            let bad = |what: &str, len: usize| {
                RiglError::invalid(format!(
                    "layer {}: {what} has {len} values, the layer has {n}",
                    spec.name
                ))
            };
            if l.weights.len() != n {
                return Err(bad("weights", l.weights.len()));
            }
            for (j, s) in l.slots.iter().enumerate() {
                if s.len() != n {
                    return Err(bad(&format!("optimizer slot {j}"), s.len()));
                }
            }
            match l.grad {
                Some(g) if g.len() != n => return Err(bad("gradient", g.len())),
                None if need_grad => {
                    return Err(RiglError::invalid(format!(
                        "layer {}: a RigL update needs the dense gradient",
                        spec.name
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Zeroes weights and optimizer slots outside the masks (after the host's optimizer step).
    pub fn apply_masks(&self, layers: &mut [CpuLayer<'_>]) -> Result<()> {
        self.check(layers, false)?;
        for (mask, l) in self.masks.iter().zip(layers.iter_mut()) {
            for (i, &m) in mask.iter().enumerate() {
                if m == 0.0 {
                    l.weights[i] = 0.0;
                    for s in l.slots.iter_mut() {
                        s[i] = 0.0;
                    }
                }
            }
        }
        Ok(())
    }

    /// The mask update of `step` if it is an update step (else `None`, nothing changes):
    /// drop and grow per layer, new connections' weights and slots zeroed, weights and slots
    /// outside the new masks zeroed. Checks every layer before changing any.
    pub fn update(
        &mut self,
        step: u64,
        layers: &mut [CpuLayer<'_>],
    ) -> Result<Option<MaskUpdateInfo>> {
        self.core.step = self.core.step.max(step + 1);
        if !self.core.is_update_step(step) {
            return Ok(None);
        }
        let rule = self.core.rule();
        self.check(layers, rule == GrowRule::Score)?;
        let (df, counts) = self.core.counts(step)?;
        let seed = self.core.cfg.seed as u32;
        for (li, (mask, l)) in self.masks.iter_mut().zip(layers.iter_mut()).enumerate() {
            match (rule, l.grad) {
                (GrowRule::Random, _) => {
                    set_update(
                        l.weights,
                        &mut l.slots,
                        mask,
                        seed,
                        step as u32,
                        li as u32,
                        df,
                    )?;
                }
                (_, Some(g)) => {
                    rigl_update(l.weights, &mut l.slots, mask, g, df)?;
                }
                (_, None) => {
                    return Err(RiglError::invalid(format!(
                        "layer {li}: a RigL update needs the dense gradient"
                    )))
                }
            }
        }
        Ok(Some(Core::info(step, df, &counts)))
    }

    /// The state to save with the host's checkpoint.
    pub fn state(&self) -> SchedulerState {
        self.core.state(&self.masks)
    }

    /// Continues from a saved state (the layers must have the same names and shapes).
    pub fn restore(&mut self, state: &SchedulerState) -> Result<()> {
        let mut core = self.core.clone();
        self.masks = core.restore(state)?;
        self.core = core;
        Ok(())
    }
}

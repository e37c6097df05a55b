//! When masks change and by how much: the RigL/SET/SNFS update schedule (SPEC §3) and the gradual
//! magnitude pruning schedule of Zhu & Gupta (SPEC §5).

use crate::error::{Result, RiglError};

/// How the drop fraction decays over the update steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropSchedule {
    /// `alpha/2 * (1 + cos(pi * min(t, t_end) / t_end))` (the default).
    #[default]
    Cosine,
    /// `alpha` at every update step.
    Constant,
}

impl DropSchedule {
    /// Parses `cosine` or `constant` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cosine" => Ok(DropSchedule::Cosine),
            "constant" => Ok(DropSchedule::Constant),
            other => Err(RiglError::invalid(format!(
                "unknown drop schedule '{other}' (expected cosine or constant)"
            ))),
        }
    }

    /// The name accepted by [`DropSchedule::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            DropSchedule::Cosine => "cosine",
            DropSchedule::Constant => "constant",
        }
    }
}

/// Default ΔT (steps between mask updates).
pub const DEFAULT_DELTA_T: u64 = 100;
/// Default initial drop fraction α.
pub const DEFAULT_ALPHA: f32 = 0.3;

/// The mask update schedule of RigL, SET and SNFS (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct UpdateSchedule {
    /// Steps between mask updates (ΔT), at least 1.
    pub delta_t: u64,
    /// Last step at which a mask update may happen (inclusive).
    pub t_end: u64,
    /// Initial drop fraction α, in `[0, 1]`.
    pub alpha: f32,
    /// Decay of the drop fraction.
    pub drop_schedule: DropSchedule,
}

impl UpdateSchedule {
    /// A checked schedule: `delta_t >= 1`, `alpha` in `[0, 1]`.
    pub fn new(delta_t: u64, t_end: u64, alpha: f32, drop_schedule: DropSchedule) -> Result<Self> {
        let s = UpdateSchedule {
            delta_t,
            t_end,
            alpha,
            drop_schedule,
        };
        s.validate()?;
        Ok(s)
    }

    /// The SPEC defaults for a run of `total_steps`: ΔT = 100, `t_end = floor(0.75 *
    /// total_steps)` (computed as `total_steps * 3 / 4` in integers), α = 0.3, cosine.
    pub fn with_defaults(total_steps: u64) -> Self {
        UpdateSchedule {
            delta_t: DEFAULT_DELTA_T,
            t_end: default_t_end(total_steps),
            alpha: DEFAULT_ALPHA,
            drop_schedule: DropSchedule::Cosine,
        }
    }

    /// Checks the fields (see [`UpdateSchedule::new`]).
    pub fn validate(&self) -> Result<()> {
        if self.delta_t == 0 {
            return Err(RiglError::invalid("delta_t must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(RiglError::invalid(format!(
                "alpha (initial drop fraction) must be in [0, 1], got {}",
                self.alpha
            )));
        }
        Ok(())
    }

    /// Whether step `t` updates the masks: `t % delta_t == 0 && t <= t_end` (step 0 included).
    /// Always `false` when `delta_t == 0`.
    pub fn is_update_step(&self, t: u64) -> bool {
        t.checked_rem(self.delta_t) == Some(0) && t <= self.t_end
    }

    /// The drop fraction at step `t`, in f32 exactly as `cosine_drop_fraction` of
    /// `reference/rigl_update.py`:
    /// `r = f32(min(t, t_end)) / f32(t_end)`, then `(alpha * 0.5) * (1 + cos(PI * r))` with f32
    /// operations in that order ([`std::f32::consts::PI`], f32 `cos`). With `t_end == 0` the
    /// ratio is taken as 0 (so the fraction is α). `Constant` returns α.
    ///
    /// Bits: f32 `cos` is the platform libm's `cosf`, which (like numpy's SIMD float32 `cos`
    /// used by the reference script) is not correctly rounded everywhere, so the last bit or two
    /// may differ between platforms and from numpy (by up to ~40 ulp right before `t_end`,
    /// where `1 + cos` cancels). GPU code should take this value (or the drop count) from the
    /// host rather than recompute it: WGSL's `cos` is far less precise.
    pub fn drop_fraction(&self, t: u64) -> f32 {
        match self.drop_schedule {
            DropSchedule::Constant => self.alpha,
            DropSchedule::Cosine => cosine_drop_fraction(t, self.alpha, self.t_end),
        }
    }
}

/// `floor(0.75 * total_steps)`, the default `t_end`.
pub fn default_t_end(total_steps: u64) -> u64 {
    // u128 so that no total overflows.
    (u128::from(total_steps) * 3 / 4) as u64
}

/// `alpha/2 * (1 + cos(pi * min(t, t_end) / t_end))` in f32, see
/// [`UpdateSchedule::drop_fraction`].
pub fn cosine_drop_fraction(t: u64, alpha: f32, t_end: u64) -> f32 {
    let r = if t_end == 0 {
        0.0f32
    } else {
        t.min(t_end) as f32 / t_end as f32
    };
    alpha * 0.5f32 * (1.0f32 + (std::f32::consts::PI * r).cos())
}

pub use crate::cpu::mask_update::drop_count;

/// Gradual magnitude pruning (Zhu & Gupta 2017, SPEC §5):
/// `s_t = s_final + (s_init - s_final) * (1 - (t - t0) / (t1 - t0))^3` between `t0` and `t1`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PruneSchedule {
    /// Sparsity at `t0` (usually 0), in `[0, 1)`.
    pub s_init: f64,
    /// Sparsity reached at `t1`, in `[0, 1)`.
    pub s_final: f64,
    /// First pruning step.
    pub t0: u64,
    /// Last pruning step (`>= t0`).
    pub t1: u64,
    /// Steps between pruning steps, at least 1.
    pub every: u64,
}

impl PruneSchedule {
    /// A checked schedule (see the field docs).
    pub fn new(s_init: f64, s_final: f64, t0: u64, t1: u64, every: u64) -> Result<Self> {
        let p = PruneSchedule {
            s_init,
            s_final,
            t0,
            t1,
            every,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the fields.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [("s_init", self.s_init), ("s_final", self.s_final)] {
            if !(0.0..1.0).contains(&v) {
                return Err(RiglError::invalid(format!(
                    "prune {what} must be in [0, 1), got {v}"
                )));
            }
        }
        if self.t1 < self.t0 {
            return Err(RiglError::invalid(format!(
                "prune end step t1 = {} is before start step t0 = {}",
                self.t1, self.t0
            )));
        }
        if self.every == 0 {
            return Err(RiglError::invalid("prune_every must be at least 1"));
        }
        Ok(())
    }

    /// The target sparsity at step `t`, in f64: `s_init` before `t0`, `s_final` from `t1` on, the
    /// cubic in between (with `t1 == t0`, `s_final` from `t0` on).
    pub fn sparsity_at(&self, t: u64) -> f64 {
        self.sparsity_at_with_final(t, self.s_final)
    }

    /// [`PruneSchedule::sparsity_at`] for a layer whose own final sparsity is `s_final` (from
    /// a distribution); its initial sparsity is `min(s_init, s_final)`, so a layer kept dense
    /// stays dense.
    pub fn sparsity_at_with_final(&self, t: u64, s_final: f64) -> f64 {
        let s_init = self.s_init.min(s_final);
        if t < self.t0 {
            return s_init;
        }
        if t >= self.t1 {
            return s_final;
        }
        let p = (t - self.t0) as f64 / (self.t1 - self.t0) as f64;
        let r = 1.0 - p;
        s_final + (s_init - s_final) * (r * r * r)
    }

    /// Whether the masks are pruned at step `t`: `t0 <= t <= t1` and `(t - t0) % every == 0`, and
    /// always at `t1` so that `s_final` is reached even when `t1 - t0` is not a multiple of
    /// `every`. Never when `every == 0`.
    pub fn is_prune_step(&self, t: u64) -> bool {
        if self.every == 0 || t < self.t0 || t > self.t1 {
            return false;
        }
        t == self.t1 || (t - self.t0).is_multiple_of(self.every)
    }
}

//! CPU twin of one mask update of one flat layer (SPEC §4–5, `reference/rigl_update.py`), for
//! every method: RigL, SET, SNFS (drop by magnitude, grow by a score) and magnitude pruning.
//!
//! Layout: a layer is flat (row-major over its shape); the mask is `f32` 0/1 (the dense path's
//! layout); weights and every optimizer slot (momentum, ...) have the mask's length.
//!
//! Selection order. Every selection takes the `k` best positions under one total order:
//! score descending, then flat index ascending (ties go to the lower index). Float scores are
//! compared by value with NaN treated as `-inf` (so `-0.0` and `+0.0` tie, and NaN ties with
//! `-inf`); `u32` scores (SET) compare as unsigned integers.
//!
//! Update of a layer with `n_active` active positions and drop fraction `f`:
//! ```text
//! n_drop = floor(f32(n_active) * f32(f))
//! kept   = the n_active - n_drop active positions with the largest |w|
//! grown  = the n_drop positions outside `kept` with the largest grow score
//! new    = grown & !mask_before  -> weight := 0, every slot := 0
//! mask   = kept | grown;  weights and slots outside it := 0
//! ```
//! Positions dropped and grown again in the same update keep their weight and slots. Only
//! positions outside `kept` are grow candidates (the reference lifts kept positions to `-inf`;
//! excluding them is the same whenever no candidate score is NaN, and never lets a kept
//! position be "grown" twice).

use crate::error::{Result, RiglError};

/// Training method: how masks change (SPEC §5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// No sparsity.
    Dense,
    /// A fixed random mask.
    Static,
    /// Sparse Evolutionary Training: drop by magnitude, grow at random.
    Set,
    /// Sparse Networks From Scratch: grow by |EMA of the dense gradient|.
    Snfs,
    /// Rigging the Lottery: grow by |dense gradient| at the update step (the default).
    #[default]
    Rigl,
    /// Gradual magnitude pruning from dense (Zhu & Gupta).
    Prune,
}

impl Method {
    /// Parses `dense`, `static`, `set`, `snfs`, `rigl` or `prune` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dense" => Ok(Method::Dense),
            "static" => Ok(Method::Static),
            "set" => Ok(Method::Set),
            "snfs" => Ok(Method::Snfs),
            "rigl" => Ok(Method::Rigl),
            "prune" | "pruning" => Ok(Method::Prune),
            other => Err(RiglError::invalid(format!(
                "unknown method '{other}' (expected dense, static, set, snfs, rigl or prune)"
            ))),
        }
    }

    /// The name accepted by [`Method::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Dense => "dense",
            Method::Static => "static",
            Method::Set => "set",
            Method::Snfs => "snfs",
            Method::Rigl => "rigl",
            Method::Prune => "prune",
        }
    }

    /// Whether masks are redistributed by drop-and-grow (RigL, SET, SNFS).
    pub fn drops_and_grows(self) -> bool {
        matches!(self, Method::Set | Method::Snfs | Method::Rigl)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one update did to one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct UpdateStats {
    /// Active positions before the update.
    pub n_active: usize,
    /// Active positions after the update (equal to `n_active` except for pruning).
    pub n_active_after: usize,
    /// Positions dropped by the drop phase (`n_active - |kept|`).
    pub n_drop: usize,
    /// Grown positions that were inactive before: new connections, started at zero.
    pub n_grown_new: usize,
    /// Positions dropped and grown again in the same update (they keep weight and slots).
    pub n_regrown: usize,
}

/// Float score as a comparable value: NaN becomes `-inf`.
#[inline]
fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// `Ordering` of positions `a`, `b` under (score desc, index asc); `Less` means `a` ranks first.
#[inline]
fn rank_f32(scores: &[f32], a: usize, b: usize) -> std::cmp::Ordering {
    let (sa, sb) = (key(scores[a]), key(scores[b]));
    // Neither is NaN, so partial_cmp is total here.
    match sb.partial_cmp(&sa) {
        Some(std::cmp::Ordering::Equal) | None => a.cmp(&b),
        Some(o) => o,
    }
}

/// Keeps the best `k` of `cand` under `cmp` (a strict total order), in rank order.
fn select_top<F>(mut cand: Vec<usize>, k: usize, mut cmp: F) -> Vec<usize>
where
    F: FnMut(&usize, &usize) -> std::cmp::Ordering,
{
    if k == 0 {
        return Vec::new();
    }
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, &mut cmp);
        cand.truncate(k);
    }
    cand.sort_unstable_by(cmp);
    cand
}

/// Flat indices of the `k` largest `scores` (ties to the lower index, NaN as `-inf`), best first.
/// `k` larger than `scores.len()` returns every index.
pub fn top_k_indices(scores: &[f32], k: usize) -> Vec<usize> {
    select_top((0..scores.len()).collect(), k, |&a, &b| {
        rank_f32(scores, a, b)
    })
}

/// [`top_k_indices`] for `u32` scores (compared as unsigned integers), as used by SET.
pub fn top_k_indices_u32(scores: &[u32], k: usize) -> Vec<usize> {
    select_top((0..scores.len()).collect(), k, |&a, &b| {
        scores[b].cmp(&scores[a]).then(a.cmp(&b))
    })
}

/// murmur3's 32-bit finaliser: a bijection on `u32` with good avalanche.
#[inline]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// SET's pseudo-random grow score of position `index` of layer `layer` at step `step`: a
/// counter-based hash made only of u32 wrapping multiplies, xors and shifts, so that it ports
/// verbatim to WGSL (where `u32` arithmetic wraps):
/// ```text
/// h = fmix32(seed ^ 0x9e3779b9)
/// h = fmix32(h ^ step)
/// h = fmix32(h ^ layer)
/// h = fmix32(h ^ index)
/// ```
/// with `fmix32(h) = h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13; h *= 0xc2b2ae35; h ^= h >> 16`.
/// Each stage is a bijection of its new word, so for fixed `(seed, step, layer)` distinct
/// indices get distinct scores (SET's selection has no ties).
pub fn set_score(seed: u32, step: u32, layer: u32, index: u32) -> u32 {
    let mut h = fmix32(seed ^ 0x9e37_79b9);
    h = fmix32(h ^ step);
    h = fmix32(h ^ layer);
    fmix32(h ^ index)
}

/// The exponential moving average of SNFS, as TensorFlow's `assign_moving_average` (the
/// official SNFS uses `tf.train.ExponentialMovingAverage`):
/// `ema[i] -= (1 - decay) * (ema[i] - grad[i])`, in f32 with operations in that order (no
/// fused multiply-add). Start `ema` at zero; SPEC's decay is 0.9.
pub fn ema_update(ema: &mut [f32], grad: &[f32], decay: f32) -> Result<()> {
    if ema.len() != grad.len() {
        return Err(RiglError::invalid(format!(
            "ema_update: ema has {} values, grad {}",
            ema.len(),
            grad.len()
        )));
    }
    let one_minus = 1.0f32 - decay;
    for (e, g) in ema.iter_mut().zip(grad) {
        *e -= one_minus * (*e - *g);
    }
    Ok(())
}

/// Number of active weights dropped: `floor(f32(n_active) * f32(drop_fraction))`, clamped to
/// `[0, n_active]` (a NaN or negative fraction drops nothing).
pub fn drop_count(n_active: usize, drop_fraction: f32) -> usize {
    let d = (n_active as f32 * drop_fraction).floor();
    if d.is_nan() || d <= 0.0 {
        0
    } else {
        (d as usize).min(n_active)
    }
}

/// The grow criterion of a drop-and-grow update.
#[derive(Debug, Clone, Copy)]
pub enum GrowScore<'a> {
    /// Grow where `|score|` is largest: RigL (dense gradient) and SNFS (EMA of it).
    Magnitude(&'a [f32]),
    /// Grow where [`set_score`]`(seed, step, layer, index)` is largest (SET).
    Random {
        /// Run seed.
        seed: u32,
        /// Training step of the update.
        step: u32,
        /// Layer index.
        layer: u32,
    },
}

fn check_layer(weights: &[f32], slots: &[&mut [f32]], mask: &[f32]) -> Result<usize> {
    let n = mask.len();
    if weights.len() != n {
        return Err(RiglError::invalid(format!(
            "mask update: {} weights but a mask of {n}",
            weights.len()
        )));
    }
    for (i, s) in slots.iter().enumerate() {
        if s.len() != n {
            return Err(RiglError::invalid(format!(
                "mask update: optimizer slot {i} has {} values but the mask {n}",
                s.len()
            )));
        }
    }
    let mut n_active = 0;
    for (i, &m) in mask.iter().enumerate() {
        if m == 1.0 {
            n_active += 1;
        } else if m != 0.0 {
            return Err(RiglError::invalid(format!(
                "mask update: mask[{i}] = {m}, expected 0 or 1"
            )));
        }
    }
    Ok(n_active)
}

/// Active positions with the largest `|w|`, `keep` of them, as a bool mask.
fn keep_by_magnitude(weights: &[f32], mask: &[f32], keep: usize) -> Vec<bool> {
    let mag: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
    let active: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] == 1.0).collect();
    let mut kept = vec![false; mask.len()];
    for i in select_top(active, keep, |&a, &b| rank_f32(&mag, a, b)) {
        kept[i] = true;
    }
    kept
}

/// Writes the new mask: zero weights and slots outside it and at new connections.
fn apply_mask(
    weights: &mut [f32],
    slots: &mut [&mut [f32]],
    mask: &mut [f32],
    new_mask: &[bool],
    stats: &mut UpdateStats,
) {
    let mut after = 0;
    for i in 0..mask.len() {
        let was = mask[i] == 1.0;
        let is = new_mask[i];
        if is {
            after += 1;
        }
        if !is || !was {
            // Outside the new mask, or a new connection: starts (or stays) at zero.
            weights[i] = 0.0;
            for s in slots.iter_mut() {
                s[i] = 0.0;
            }
        }
        mask[i] = if is { 1.0 } else { 0.0 };
    }
    stats.n_active_after = after;
}

/// One drop-and-grow mask update of one flat layer (RigL, SET or SNFS by `grow`), in place.
///
/// `slots` are the optimizer's per-weight buffers (momentum, ...). Errors (nothing is changed)
/// when the lengths differ, the mask holds a value other than 0 or 1, or the layer has more than
/// `u32::MAX` positions with [`GrowScore::Random`].
pub fn drop_grow_update(
    weights: &mut [f32],
    slots: &mut [&mut [f32]],
    mask: &mut [f32],
    grow: GrowScore<'_>,
    drop_fraction: f32,
) -> Result<UpdateStats> {
    let n_active = check_layer(weights, slots, mask)?;
    let n = mask.len();
    let n_drop = drop_count(n_active, drop_fraction);
    let kept = keep_by_magnitude(weights, mask, n_active - n_drop);
    let candidates: Vec<usize> = (0..n).filter(|&i| !kept[i]).collect();
    let grown = match grow {
        GrowScore::Magnitude(score) => {
            if score.len() != n {
                return Err(RiglError::invalid(format!(
                    "mask update: grow score has {} values but the mask {n}",
                    score.len()
                )));
            }
            let mag: Vec<f32> = score.iter().map(|g| g.abs()).collect();
            select_top(candidates, n_drop, |&a, &b| rank_f32(&mag, a, b))
        }
        GrowScore::Random { seed, step, layer } => {
            if u32::try_from(n).is_err() {
                return Err(RiglError::invalid(format!(
                    "SET update: layer of {n} positions exceeds u32 indices"
                )));
            }
            let score: Vec<u32> = (0..n)
                .map(|i| set_score(seed, step, layer, i as u32))
                .collect();
            select_top(candidates, n_drop, |&a, &b| {
                score[b].cmp(&score[a]).then(a.cmp(&b))
            })
        }
    };
    let mut new_mask = kept;
    let mut stats = UpdateStats {
        n_active,
        n_drop,
        ..UpdateStats::default()
    };
    for &i in &grown {
        new_mask[i] = true;
        if mask[i] == 1.0 {
            stats.n_regrown += 1;
        } else {
            stats.n_grown_new += 1;
        }
    }
    apply_mask(weights, slots, mask, &new_mask, &mut stats);
    Ok(stats)
}

/// RigL's update (SPEC §4): grow by `|grad|`, the dense gradient of the layer at this step.
pub fn rigl_update(
    weights: &mut [f32],
    slots: &mut [&mut [f32]],
    mask: &mut [f32],
    grad: &[f32],
    drop_fraction: f32,
) -> Result<UpdateStats> {
    drop_grow_update(
        weights,
        slots,
        mask,
        GrowScore::Magnitude(grad),
        drop_fraction,
    )
}

/// SNFS's update: grow by `|ema|`, the caller's [`ema_update`] average of dense gradients.
pub fn snfs_update(
    weights: &mut [f32],
    slots: &mut [&mut [f32]],
    mask: &mut [f32],
    ema: &[f32],
    drop_fraction: f32,
) -> Result<UpdateStats> {
    drop_grow_update(
        weights,
        slots,
        mask,
        GrowScore::Magnitude(ema),
        drop_fraction,
    )
}

/// SET's update: grow the top [`set_score`]`(seed, step, layer, index)` positions outside `kept`.
pub fn set_update(
    weights: &mut [f32],
    slots: &mut [&mut [f32]],
    mask: &mut [f32],
    seed: u32,
    step: u32,
    layer: u32,
    drop_fraction: f32,
) -> Result<UpdateStats> {
    drop_grow_update(
        weights,
        slots,
        mask,
        GrowScore::Random { seed, step, layer },
        drop_fraction,
    )
}

/// Magnitude pruning: keeps the `target_active` active positions with the largest `|w|` (ties
/// to the lower index, NaN as `-inf`) and zeroes weights and slots elsewhere. Nothing grows. A
/// target at or above the current active count changes nothing (and is not an error).
pub fn prune_update(
    weights: &mut [f32],
    slots: &mut [&mut [f32]],
    mask: &mut [f32],
    target_active: usize,
) -> Result<UpdateStats> {
    let n_active = check_layer(weights, slots, mask)?;
    let keep = target_active.min(n_active);
    let kept = keep_by_magnitude(weights, mask, keep);
    let mut stats = UpdateStats {
        n_active,
        n_drop: n_active - keep,
        ..UpdateStats::default()
    };
    apply_mask(weights, slots, mask, &kept, &mut stats);
    Ok(stats)
}

//! Random sparse initialisation: a mask with an exact active count (SPEC §1) and weights drawn
//! from the DENSE layer's initialiser, then masked (as the official code does).
//!
//! Reproducibility: everything derives from a `u64` seed through [`ChaCha8Rng`]. Layer `l` draws
//! its mask from stream `2l` and its weights from stream `2l + 1` of `ChaCha8Rng::seed_from_u64
//! (seed)`, so the dense weights of a layer do not depend on its sparsity or on other layers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, RiglError};

/// The dense initialiser of a weight tensor `[.., fan_in_dim, out]` (dense `[in, out]`, conv
/// `[kh, kw, cin, cout]`). Fans are those of the DENSE layer, as Keras defines them:
/// `receptive = prod(shape[..len-2])`, `fan_in = receptive * shape[len-2]`,
/// `fan_out = receptive * shape[len-1]` (not the sparse layer's fan-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// He normal: `N(0, 2 / fan_in)` (untruncated; Box–Muller over the ChaCha8 stream).
    #[default]
    HeNormal,
    /// Glorot uniform: `U(-l, l)` with `l = sqrt(6 / (fan_in + fan_out))`.
    GlorotUniform,
}

impl WeightInit {
    /// Parses `he_normal` / `he` or `glorot_uniform` / `glorot` / `xavier`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "he_normal" | "he" => Ok(WeightInit::HeNormal),
            "glorot_uniform" | "glorot" | "xavier" => Ok(WeightInit::GlorotUniform),
            other => Err(RiglError::invalid(format!(
                "unknown weight initialiser '{other}' (expected he_normal or glorot_uniform)"
            ))),
        }
    }

    /// The name accepted by [`WeightInit::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            WeightInit::HeNormal => "he_normal",
            WeightInit::GlorotUniform => "glorot_uniform",
        }
    }
}

/// `(fan_in, fan_out)` of a dense weight tensor of `shape` (at least 2 dimensions, none zero).
pub fn fans(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() < 2 || shape.contains(&0) {
        return Err(RiglError::invalid(format!(
            "weight shape {shape:?} needs at least 2 non-zero dimensions"
        )));
    }
    let k = shape.len();
    let mut receptive: usize = 1;
    for &d in &shape[..k - 2] {
        receptive = receptive
            .checked_mul(d)
            .ok_or_else(|| RiglError::invalid(format!("weight shape {shape:?} overflows")))?;
    }
    let fan_in = receptive
        .checked_mul(shape[k - 2])
        .ok_or_else(|| RiglError::invalid(format!("weight shape {shape:?} overflows")))?;
    let fan_out = receptive
        .checked_mul(shape[k - 1])
        .ok_or_else(|| RiglError::invalid(format!("weight shape {shape:?} overflows")))?;
    Ok((fan_in, fan_out))
}

/// The generator of stream `stream` of `seed`.
pub fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Indices of `active` distinct positions out of `n`, uniformly at random: the first `active`
/// steps of a Fisher–Yates shuffle of `0..n` (step `i` swaps position `i` with one drawn by
/// `rng.random_range(i as u64..n as u64)`). Returned in the order drawn.
pub fn random_indices(n: usize, active: usize, rng: &mut ChaCha8Rng) -> Result<Vec<usize>> {
    if active > n {
        return Err(RiglError::invalid(format!(
            "cannot choose {active} active positions out of {n}"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..active {
        let j = rng.random_range(i as u64..n as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(active);
    Ok(idx)
}

/// A 0/1 mask of `n` positions with exactly `active` ones at [`random_indices`].
pub fn random_mask(n: usize, active: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
    let idx = random_indices(n, active, rng)?;
    indices_to_mask(n, &idx)
}

/// `n` dense weights of a tensor of `shape` from `init` (see [`WeightInit`]).
pub fn dense_weights(shape: &[usize], init: WeightInit, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
    let (fan_in, fan_out) = fans(shape)?;
    let n = fan_in
        .checked_mul(shape[shape.len() - 1])
        .ok_or_else(|| RiglError::invalid(format!("weight shape {shape:?} overflows")))?;
    let mut w = Vec::with_capacity(n);
    match init {
        WeightInit::HeNormal => {
            let std = (2.0 / fan_in as f64).sqrt();
            while w.len() < n {
                // Box–Muller: u1 in (0, 1], u2 in [0, 1).
                let u1 = 1.0 - rng.random::<f64>();
                let u2 = rng.random::<f64>();
                let r = (-2.0 * u1.ln()).sqrt();
                let th = std::f64::consts::TAU * u2;
                w.push((std * r * th.cos()) as f32);
                if w.len() < n {
                    w.push((std * r * th.sin()) as f32);
                }
            }
        }
        WeightInit::GlorotUniform => {
            let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
            for _ in 0..n {
                let u = rng.random::<f64>();
                w.push(((2.0 * u - 1.0) * limit) as f32);
            }
        }
    }
    Ok(w)
}

/// A sparse layer's initial state.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseInit {
    /// 0/1 mask, row-major over the layer's shape.
    pub mask: Vec<f32>,
    /// Dense initial weights times the mask (zero where the mask is 0).
    pub weights: Vec<f32>,
}

/// Initial mask (exactly `active` ones, stream `2 * layer`) and masked weights (dense `init`,
/// stream `2 * layer + 1`) of layer number `layer` of shape `shape`, from `seed`.
pub fn init_layer(
    seed: u64,
    layer: u64,
    shape: &[usize],
    active: usize,
    init: WeightInit,
) -> Result<SparseInit> {
    let (mask_stream, weight_stream) = layer
        .checked_mul(2)
        .and_then(|s| Some((s, s.checked_add(1)?)))
        .ok_or_else(|| RiglError::invalid(format!("layer index {layer} too large")))?;
    let mut weights = dense_weights(shape, init, &mut rng_for(seed, weight_stream))?;
    let mask = random_mask(weights.len(), active, &mut rng_for(seed, mask_stream))?;
    for (w, m) in weights.iter_mut().zip(&mask) {
        if *m == 0.0 {
            *w = 0.0;
        }
    }
    Ok(SparseInit { mask, weights })
}

/// A 0/1 `f32` mask of `n` positions with ones at `indices` (duplicates allowed).
pub fn indices_to_mask(n: usize, indices: &[usize]) -> Result<Vec<f32>> {
    let mut mask = vec![0.0f32; n];
    for &i in indices {
        *mask.get_mut(i).ok_or_else(|| {
            RiglError::invalid(format!("mask index {i} out of range for {n} positions"))
        })? = 1.0;
    }
    Ok(mask)
}

/// Flat indices of the non-zero entries of `mask`, ascending.
pub fn mask_to_indices(mask: &[f32]) -> Vec<usize> {
    (0..mask.len()).filter(|&i| mask[i] != 0.0).collect()
}

/// Number of non-zero entries of `mask`.
pub fn count_active(mask: &[f32]) -> usize {
    mask.iter().filter(|&&m| m != 0.0).count()
}

/// `mask` as bytes (1 where non-zero), e.g. for saving in a `.npz`.
pub fn mask_to_u8(mask: &[f32]) -> Vec<u8> {
    mask.iter().map(|&m| u8::from(m != 0.0)).collect()
}

/// `mask` from bytes (or booleans as bytes): 1.0 where non-zero.
pub fn mask_from_u8(bytes: &[u8]) -> Vec<f32> {
    bytes
        .iter()
        .map(|&b| if b != 0 { 1.0 } else { 0.0 })
        .collect()
}

/// `mask` as booleans (true where non-zero).
pub fn mask_to_bool(mask: &[f32]) -> Vec<bool> {
    mask.iter().map(|&m| m != 0.0).collect()
}

/// A 0/1 `f32` mask from booleans.
pub fn mask_from_bool(bits: &[bool]) -> Vec<f32> {
    bits.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect()
}

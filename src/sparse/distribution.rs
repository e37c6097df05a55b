//! Per-layer sparsity from a global target `S` (SPEC §2): `uniform`, `er` (Erdős–Rényi) and `erk`
//! (Erdős–Rényi-Kernel), with the dense-forcing loop of the official `get_sparsities_erdos_renyi`.
//!
//! Active counts are exact: a layer of `n` weights at sparsity `s` keeps `n - floor(s * n)`
//! weights ([`active_count`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Result, RiglError};

/// A weight tensor that may be sparse: a dense layer `[in, out]` or a convolution
/// `[kh, kw, cin, cout]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerShape {
    /// Unique layer name (the key of custom sparsities).
    pub name: String,
    /// Dimensions; at least two, none zero.
    pub shape: Vec<usize>,
}

impl LayerShape {
    /// A layer named `name` with dimensions `shape`.
    pub fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        LayerShape {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// Number of weights (product of the dimensions), or an error when the shape is empty, has
    /// a zero dimension, fewer than two dimensions, or overflows `usize`.
    pub fn numel(&self) -> Result<usize> {
        if self.shape.len() < 2 {
            return Err(RiglError::invalid(format!(
                "layer '{}': a weight shape needs at least 2 dimensions, got {:?}",
                self.name, self.shape
            )));
        }
        let mut n: usize = 1;
        for &d in &self.shape {
            if d == 0 {
                return Err(RiglError::invalid(format!(
                    "layer '{}': zero dimension in shape {:?}",
                    self.name, self.shape
                )));
            }
            n = n.checked_mul(d).ok_or_else(|| {
                RiglError::invalid(format!(
                    "layer '{}': shape {:?} has too many elements",
                    self.name, self.shape
                ))
            })?;
        }
        Ok(n)
    }
}

/// How the global sparsity is spread over the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every sparse layer gets `S`.
    Uniform,
    /// Erdős–Rényi: density proportional to `(n_in + n_out) / (n_in * n_out)` of the last two
    /// dimensions.
    Er,
    /// Erdős–Rényi-Kernel (the default): density proportional to
    /// `(sum(shape) / prod(shape)) ^ erk_power_scale`.
    Erk,
}

impl Distribution {
    /// Parses `uniform`, `er` or `erk` (also the official names `random`, `erdos_renyi`,
    /// `erdos_renyi_kernel`), case-insensitively.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uniform" | "random" => Ok(Distribution::Uniform),
            "er" | "erdos_renyi" => Ok(Distribution::Er),
            "erk" | "erdos_renyi_kernel" => Ok(Distribution::Erk),
            other => Err(RiglError::invalid(format!(
                "unknown sparsity distribution '{other}' (expected uniform, er or erk)"
            ))),
        }
    }

    /// The canonical name (`uniform`, `er`, `erk`), accepted by [`Distribution::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Er => "er",
            Distribution::Erk => "erk",
        }
    }
}

impl Default for Distribution {
    /// [`Distribution::Erk`], SPEC §2's default.
    fn default() -> Self {
        Distribution::Erk
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options of [`layer_sparsities`].
///
/// A layer kept dense by `first_layer_dense` / `last_layer_dense` gets sparsity 0 and is left
/// out of the budget, exactly as an unmasked layer in the official code (equivalently, a custom
/// sparsity of 0).
#[derive(Debug, Clone, PartialEq)]
pub struct DistributionConfig {
    /// How `sparsity` is spread over the layers.
    pub distribution: Distribution,
    /// Global target sparsity `S`, in `[0, 1)`.
    pub sparsity: f64,
    /// Keep the first layer dense. `None` resolves per distribution: `true` for
    /// [`Distribution::Uniform`], `false` for [`Distribution::Er`] and [`Distribution::Erk`]
    /// (SPEC §2). See [`DistributionConfig::first_layer_dense_resolved`].
    pub first_layer_dense: Option<bool>,
    /// Keep the last layer dense. `None` resolves to `false` for every distribution.
    pub last_layer_dense: Option<bool>,
    /// Fixed sparsity (in `[0, 1)`) per layer name; these layers are left out of the budget.
    /// A custom entry wins over an unset (`None`) first/last-layer default; naming a layer that
    /// is explicitly forced dense by `Some(true)` is an error, as is a name that matches no layer.
    pub custom: BTreeMap<String, f64>,
    /// Exponent applied to the ERK raw score (default 1; values below 1 soften ERK). Finite and
    /// `>= 0`. Ignored by `uniform` and `er` (as in the official code).
    pub erk_power_scale: f64,
}

impl DistributionConfig {
    /// `distribution` at global sparsity `sparsity`, with every other option at its default.
    pub fn new(distribution: Distribution, sparsity: f64) -> Self {
        DistributionConfig {
            distribution,
            sparsity,
            first_layer_dense: None,
            last_layer_dense: None,
            custom: BTreeMap::new(),
            erk_power_scale: 1.0,
        }
    }

    /// `first_layer_dense` with `None` resolved: `true` for uniform, `false` for ER/ERK.
    pub fn first_layer_dense_resolved(&self) -> bool {
        self.first_layer_dense
            .unwrap_or(self.distribution == Distribution::Uniform)
    }

    /// `last_layer_dense` with `None` resolved: `false`.
    pub fn last_layer_dense_resolved(&self) -> bool {
        self.last_layer_dense.unwrap_or(false)
    }
}

/// The sparsity chosen for one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerSparsity {
    /// Layer name.
    pub name: String,
    /// Layer dimensions.
    pub shape: Vec<usize>,
    /// Fraction of zero weights, in `[0, 1)`.
    pub sparsity: f64,
    /// Exact number of active weights, `total - floor(sparsity * total)`.
    pub active: usize,
    /// Number of weights of the dense layer.
    pub total: usize,
}

/// `floor(sparsity * n)`, the number of zeros of a layer of `n` weights: the product is taken in
/// f64 and floored, exactly as `int(np.floor(sparsity * size))` in the official code (so e.g.
/// `0.29 * 100 = 28.999999999999996` gives 28 zeros, not 29). `n` up to 2^53 converts
/// exactly. The result is clamped to `[0, n]`; a NaN sparsity gives 0.
pub fn zeros_count(n: usize, sparsity: f64) -> usize {
    let z = (sparsity * n as f64).floor();
    if z.is_nan() || z <= 0.0 {
        0
    } else if z >= n as f64 {
        n
    } else {
        z as usize
    }
}

/// Exact active count `n - floor(sparsity * n)` (see [`zeros_count`] for the rounding).
pub fn active_count(n: usize, sparsity: f64) -> usize {
    n - zeros_count(n, sparsity)
}

fn check_sparsity(what: &str, s: f64) -> Result<()> {
    if !(0.0..1.0).contains(&s) {
        return Err(RiglError::invalid(format!(
            "{what} must be in [0, 1), got {s}"
        )));
    }
    Ok(())
}

/// Per-layer sparsities of `layers` (in order) for `cfg` (SPEC §2).
///
/// ER/ERK solve for `eps` so that the active count of the budget layers (those neither custom
/// nor forced dense by the first/last options) equals the uniform one, forcing to dense EVERY
/// layer whose raw score equals the maximum while `max(raw) * eps > 1`, and repeating. The
/// arithmetic is that of the official code: integer `rhs`, f64 `divisor += raw * n` in layer
/// order, `eps = rhs / divisor`, `s = 1 - eps * raw`, exact `==` on raw scores.
///
/// Errors: empty `layers`, a bad shape, duplicate names, `S` outside `[0, 1)`, a custom value
/// outside `[0, 1)` or naming no layer, a custom entry on a layer explicitly forced dense, a bad
/// `erk_power_scale`, or a target that cannot be met once layers are forced dense (a sparsity
/// of 1 or more would be needed).
pub fn layer_sparsities(
    layers: &[LayerShape],
    cfg: &DistributionConfig,
) -> Result<Vec<LayerSparsity>> {
    if layers.is_empty() {
        return Err(RiglError::invalid("no layers to distribute sparsity over"));
    }
    check_sparsity("global sparsity", cfg.sparsity)?;
    if !cfg.erk_power_scale.is_finite() || cfg.erk_power_scale < 0.0 {
        return Err(RiglError::invalid(format!(
            "erk_power_scale must be finite and >= 0, got {}",
            cfg.erk_power_scale
        )));
    }
    let mut sizes = Vec::with_capacity(layers.len());
    let mut names = BTreeSet::new();
    for l in layers {
        sizes.push(l.numel()?);
        if !names.insert(l.name.as_str()) {
            return Err(RiglError::invalid(format!(
                "duplicate layer name '{}'",
                l.name
            )));
        }
    }
    for (name, &s) in &cfg.custom {
        if !names.contains(name.as_str()) {
            return Err(RiglError::invalid(format!(
                "custom sparsity for '{name}', which is not a layer (layers: {})",
                layers
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        check_sparsity(&format!("custom sparsity of '{name}'"), s)?;
    }

    // Fixed sparsities: custom entries, then first/last layer forced dense.
    let last = layers.len() - 1;
    let mut fixed: Vec<Option<f64>> = layers
        .iter()
        .map(|l| cfg.custom.get(&l.name).copied())
        .collect();
    for (idx, explicit, resolved, which) in [
        (
            0,
            cfg.first_layer_dense,
            cfg.first_layer_dense_resolved(),
            "first",
        ),
        (
            last,
            cfg.last_layer_dense,
            cfg.last_layer_dense_resolved(),
            "last",
        ),
    ] {
        if !resolved {
            continue;
        }
        match (fixed[idx], explicit) {
            (Some(_), Some(true)) => {
                return Err(RiglError::invalid(format!(
                    "layer '{}' is both forced dense ({which} layer) and given a custom sparsity",
                    layers[idx].name
                )))
            }
            (Some(_), _) => {} // custom wins over the distribution's default
            (None, _) => fixed[idx] = Some(0.0),
        }
    }

    let s = cfg.sparsity;
    let sparsities: Vec<f64> = match cfg.distribution {
        Distribution::Uniform => fixed.iter().map(|f| f.unwrap_or(s)).collect(),
        Distribution::Er | Distribution::Erk => {
            let raw: Vec<f64> = layers
                .iter()
                .zip(&sizes)
                .map(|(l, &n)| raw_score(cfg, &l.shape, n))
                .collect();
            solve_erdos_renyi(layers, &sizes, &fixed, &raw, s)?
        }
    };

    Ok(layers
        .iter()
        .zip(sizes)
        .zip(sparsities)
        .map(|((l, total), sparsity)| LayerSparsity {
            name: l.name.clone(),
            shape: l.shape.clone(),
            sparsity,
            active: active_count(total, sparsity),
            total,
        })
        .collect())
}

/// The raw (un-normalised) density of a layer under ER/ERK.
fn raw_score(cfg: &DistributionConfig, shape: &[usize], n: usize) -> f64 {
    match cfg.distribution {
        Distribution::Er => {
            let n_in = shape[shape.len() - 2] as f64;
            let n_out = shape[shape.len() - 1] as f64;
            (n_in + n_out) / (n_in * n_out)
        }
        _ => {
            let sum: usize = shape.iter().sum();
            let r = sum as f64 / n as f64;
            if cfg.erk_power_scale == 1.0 {
                r
            } else {
                r.powf(cfg.erk_power_scale)
            }
        }
    }
}

fn solve_erdos_renyi(
    layers: &[LayerShape],
    sizes: &[usize],
    fixed: &[Option<f64>],
    raw: &[f64],
    s: f64,
) -> Result<Vec<f64>> {
    let mut dense = vec![false; layers.len()];
    let eps = loop {
        let mut rhs: i128 = 0;
        let mut divisor = 0.0f64;
        let mut max_raw: Option<f64> = None;
        for i in 0..layers.len() {
            if fixed[i].is_some() {
                continue;
            }
            let n = sizes[i];
            let n_zeros = zeros_count(n, s);
            if dense[i] {
                rhs -= n_zeros as i128;
            } else {
                rhs += (n - n_zeros) as i128;
                divisor += raw[i] * n as f64;
                max_raw = Some(max_raw.map_or(raw[i], |m: f64| m.max(raw[i])));
            }
        }
        let Some(max_raw) = max_raw else {
            // Every budget layer is dense (or there is none): nothing left to solve.
            break 0.0;
        };
        let eps = rhs as f64 / divisor;
        if max_raw * eps > 1.0 {
            for i in 0..layers.len() {
                if fixed[i].is_none() && !dense[i] && raw[i] == max_raw {
                    dense[i] = true;
                }
            }
        } else {
            break eps;
        }
    };
    let mut out = Vec::with_capacity(layers.len());
    for i in 0..layers.len() {
        let sl = match fixed[i] {
            Some(v) => v,
            None if dense[i] => 0.0,
            None => 1.0 - eps * raw[i],
        };
        if !(0.0..1.0).contains(&sl) {
            return Err(RiglError::invalid(format!(
                "sparsity {s} cannot be met: layer '{}' would need sparsity {sl} once the \
                 layers forced dense are counted",
                layers[i].name
            )));
        }
        out.push(sl);
    }
    Ok(out)
}

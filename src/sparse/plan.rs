//! A sparsity plan: per-layer sparsities and active counts of a model for a method and a
//! distribution, with its FLOPs relative to dense; printable as a table or as JSON.

use std::fmt::Write as _;

use crate::cpu::mask_update::Method;
use crate::error::{Result, RiglError};
use crate::sparse::distribution::{layer_sparsities, DistributionConfig, LayerShape};
use crate::sparse::flops::{
    dense_forward_flops, inference_flops_vs_dense, sparse_forward_flops, train_flops_vs_dense,
    LayerCost, TrainFlopsConfig,
};
use crate::sparse::schedule::PruneSchedule;

/// A layer's dimensions as the tables and errors print them: `784x300`.
pub fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

/// Kind of a weight layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LayerKind {
    /// Fully connected, shape `[in, out]`.
    Dense,
    /// Convolution, shape `[kh, kw, cin, cout]`.
    Conv,
}

impl LayerKind {
    /// `dense` or `conv`.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Dense => "dense",
            LayerKind::Conv => "conv",
        }
    }
}

/// One layer of a model description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerSpec {
    /// Dense or convolution.
    pub kind: LayerKind,
    /// Name and shape.
    pub layer: LayerShape,
    /// Output spatial size `(H, W)`; `(1, 1)` for dense layers.
    pub out_hw: (usize, usize),
}

impl LayerSpec {
    /// Output positions per sample, `H * W`.
    pub fn positions(&self) -> u64 {
        self.out_hw.0 as u64 * self.out_hw.1 as u64
    }
}

fn parse_dims(text: &str, item: &str) -> Result<Vec<usize>> {
    text.split('x')
        .map(|d| {
            let d = d.trim();
            match d.parse::<usize>() {
                Ok(0) => Err(RiglError::invalid(format!(
                    "layer '{item}': dimension 0 is not allowed"
                ))),
                Ok(v) => Ok(v),
                Err(_) => Err(RiglError::invalid(format!(
                    "layer '{item}': '{d}' is not a positive integer dimension"
                ))),
            }
        })
        .collect()
}

/// Parses a comma-separated model description: `dense:INxOUT` or `conv:KHxKWxCINxCOUT[@HxW]`
/// (`@HxW` is the output spatial size, default `1x1`). Layers are named by kind and position:
/// `dense:784x300,dense:300x100,conv:3x3x16x32@8x8` gives `dense0`, `dense1`, `conv2`.
/// Whitespace around items and numbers is ignored.
pub fn parse_layers(spec: &str) -> Result<Vec<LayerSpec>> {
    if spec.trim().is_empty() {
        return Err(RiglError::invalid(
            "empty layer list (expected e.g. dense:784x300,dense:300x10)",
        ));
    }
    let mut out = Vec::new();
    for (i, raw) in spec.split(',').enumerate() {
        let item = raw.trim();
        if item.is_empty() {
            return Err(RiglError::invalid(format!(
                "layer {i} is empty (stray comma in '{spec}')"
            )));
        }
        let (kind, rest) = item.split_once(':').ok_or_else(|| {
            RiglError::invalid(format!(
                "layer '{item}': expected KIND:DIMS, e.g. dense:784x300 or conv:3x3x16x32@32x32"
            ))
        })?;
        let kind = match kind.trim().to_ascii_lowercase().as_str() {
            "dense" => LayerKind::Dense,
            "conv" => LayerKind::Conv,
            other => {
                return Err(RiglError::invalid(format!(
                    "layer '{item}': unknown kind '{other}' (expected dense or conv)"
                )))
            }
        };
        let (dims, hw) = match rest.split_once('@') {
            Some((d, hw)) => (d, Some(hw)),
            None => (rest, None),
        };
        let shape = parse_dims(dims, item)?;
        let want = match kind {
            LayerKind::Dense => 2,
            LayerKind::Conv => 4,
        };
        if shape.len() != want {
            return Err(RiglError::invalid(format!(
                "layer '{item}': a {} layer needs {want} dimensions, got {}",
                kind.as_str(),
                shape.len()
            )));
        }
        let out_hw = match (kind, hw) {
            (_, None) => (1, 1),
            (LayerKind::Dense, Some(_)) => {
                return Err(RiglError::invalid(format!(
                    "layer '{item}': only conv layers take an @HxW output size"
                )))
            }
            (LayerKind::Conv, Some(hw)) => {
                let v = parse_dims(hw, item)?;
                if v.len() != 2 {
                    return Err(RiglError::invalid(format!(
                        "layer '{item}': output size must be @HxW, got '@{hw}'"
                    )));
                }
                (v[0], v[1])
            }
        };
        let layer = LayerShape::new(format!("{}{i}", kind.as_str()), &shape);
        layer.numel()?;
        out.push(LayerSpec {
            kind,
            layer,
            out_hw,
        });
    }
    Ok(out)
}

/// Everything a plan depends on besides the layers.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    /// Per-layer sparsity (ignored by [`Method::Dense`]; the final sparsities for pruning).
    pub distribution: DistributionConfig,
    /// Training method.
    pub method: Method,
    /// Steps between mask updates (ΔT).
    pub delta_t: u64,
    /// Training steps.
    pub total_steps: u64,
    /// Pruning schedule; required by [`Method::Prune`].
    pub prune: Option<PruneSchedule>,
}

/// One layer of a [`Plan`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlanLayer {
    /// Layer name.
    pub name: String,
    /// Layer dimensions.
    pub shape: Vec<usize>,
    /// Sparsity (final sparsity for pruning).
    pub sparsity: f64,
    /// Active weights.
    pub active: usize,
    /// Weights of the dense layer.
    pub total: usize,
    /// Output spatial size `(H, W)` (`(1, 1)` for dense layers).
    pub out_hw: (usize, usize),
    /// Forward FLOPs per sample of the dense layer (2 per multiply-add).
    pub dense_flops: f64,
    /// Forward FLOPs per sample at this layer's sparsity.
    pub sparse_flops: f64,
}

/// Per-layer sparsities of a model and its cost relative to dense.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Plan {
    /// Method name.
    pub method: String,
    /// Distribution name.
    pub distribution: String,
    /// Global target sparsity (0 for dense).
    pub target_sparsity: f64,
    /// The layers, in order.
    pub layers: Vec<PlanLayer>,
    /// Active weights over all layers.
    pub active: usize,
    /// Weights over all layers.
    pub total: usize,
    /// `active / total`.
    pub density: f64,
    /// Dense forward FLOPs per sample (`f_D`).
    pub dense_forward_flops: f64,
    /// Sparse forward FLOPs per sample (`f_S`).
    pub sparse_forward_flops: f64,
    /// `f_S / f_D`.
    pub inference_flops_vs_dense: f64,
    /// Training FLOPs per step relative to dense training.
    pub train_flops_vs_dense: f64,
}

impl Plan {
    /// Builds the plan of `layers` under `cfg`.
    pub fn build(layers: &[LayerSpec], cfg: &PlanConfig) -> Result<Plan> {
        if layers.is_empty() {
            return Err(RiglError::invalid("a plan needs at least one layer"));
        }
        let shapes: Vec<LayerShape> = layers.iter().map(|l| l.layer.clone()).collect();
        let dense = cfg.method == Method::Dense;
        let dist = if dense {
            let mut d = DistributionConfig::new(cfg.distribution.distribution, 0.0);
            d.first_layer_dense = Some(false);
            d.last_layer_dense = Some(false);
            d
        } else {
            cfg.distribution.clone()
        };
        let sparsities = layer_sparsities(&shapes, &dist)?;
        let mut costs = Vec::with_capacity(layers.len());
        for (spec, s) in layers.iter().zip(&sparsities) {
            costs.push(LayerCost::new(&s.shape, s.sparsity, spec.positions())?);
        }
        let tcfg = TrainFlopsConfig {
            delta_t: cfg.delta_t,
            total_steps: cfg.total_steps,
            prune: cfg.prune,
        };
        let active: usize = sparsities.iter().map(|s| s.active).sum();
        let total: usize = sparsities.iter().map(|s| s.total).sum();
        Ok(Plan {
            method: cfg.method.as_str().to_string(),
            distribution: if dense {
                "none".to_string()
            } else {
                cfg.distribution.distribution.as_str().to_string()
            },
            target_sparsity: dist.sparsity,
            layers: sparsities
                .into_iter()
                .zip(layers.iter().zip(&costs))
                .map(|(s, (spec, cost))| PlanLayer {
                    name: s.name,
                    shape: s.shape,
                    sparsity: s.sparsity,
                    active: s.active,
                    total: s.total,
                    out_hw: spec.out_hw,
                    dense_flops: cost.dense_flops(),
                    sparse_flops: cost.sparse_flops(),
                })
                .collect(),
            active,
            total,
            density: active as f64 / total as f64,
            dense_forward_flops: dense_forward_flops(&costs),
            sparse_forward_flops: sparse_forward_flops(&costs),
            inference_flops_vs_dense: inference_flops_vs_dense(cfg.method, &costs)?,
            train_flops_vs_dense: train_flops_vs_dense(cfg.method, &costs, &tcfg)?,
        })
    }

    /// A table for the terminal: one row per layer, then totals and FLOPs ratios.
    pub fn to_text(&self) -> String {
        let name_w = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .chain([5])
            .max()
            .unwrap_or(5);
        let shape_w = self
            .layers
            .iter()
            .map(|l| shape_text(&l.shape).len())
            .chain([5])
            .max()
            .unwrap_or(5);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "method {}, distribution {}, target sparsity {:.4}",
            self.method, self.distribution, self.target_sparsity
        );
        let _ = writeln!(
            t,
            "{:<name_w$}  {:<shape_w$}  {:>7}  {:>8}  {:>12}  {:>12}  {:>12}  {:>12}",
            "layer", "shape", "output", "sparsity", "active", "total", "MFLOPs", "dense MFLOPs"
        );
        let mflops = |f: f64| format!("{:.3}", f / 1e6);
        for l in &self.layers {
            let _ = writeln!(
                t,
                "{:<name_w$}  {:<shape_w$}  {:>7}  {:>8.4}  {:>12}  {:>12}  {:>12}  {:>12}",
                l.name,
                shape_text(&l.shape),
                format!("{}x{}", l.out_hw.0, l.out_hw.1),
                l.sparsity,
                l.active,
                l.total,
                mflops(l.sparse_flops),
                mflops(l.dense_flops)
            );
        }
        let _ = writeln!(
            t,
            "{:<name_w$}  {:<shape_w$}  {:>7}  {:>8.4}  {:>12}  {:>12}  {:>12}  {:>12}",
            "all",
            "",
            "",
            1.0 - self.density,
            self.active,
            self.total,
            mflops(self.sparse_forward_flops),
            mflops(self.dense_forward_flops)
        );
        let _ = writeln!(
            t,
            "FLOPs: forward, per sample, 2 per multiply-add (SPEC §6)"
        );
        let _ = writeln!(
            t,
            "density {:.4}; inference FLOPs {:.3}x dense; training FLOPs {:.3}x dense",
            self.density, self.inference_flops_vs_dense, self.train_flops_vs_dense
        );
        t
    }
}

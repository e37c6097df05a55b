//! The model file written at the end of training (`model.safetensors`): per layer
//! `fcN.weight` (f32 `[in, out]`), `fcN.mask` (u8 0/1 `[in, out]`), `fcN.bias` (f32 `[out]`), and
//! metadata `rigl.sizes` (JSON list of widths), `rigl.config` (the run's TOML) and
//! `rigl.version`.
//!
//! A model of layers (`--model`, `--model-file`) stores its weight tensors by layer name with
//! their own shapes (`conv1.weight` f32 `[5, 5, 1, 20]`, `conv1.mask`, a `.bias` only where the
//! layer has one) and each batch norm as `bnN.gamma`, `bnN.beta`, `bnN.running_mean`,
//! `bnN.running_var` (f32 `[C]`, walk order from 1); `rigl.sizes` is then `[features, classes]`
//! and the shapes come from the model in `rigl.config`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::cpu::model::HostNorm;
use crate::error::{Result, RiglError};
use crate::gpu::GpuContext;
use crate::nn::state::norm_name;
use crate::nn::{ModelLayout, Network};
use crate::sparse::init::mask_to_u8;
use crate::train::TrainConfig;

/// A model read back from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// Layer widths, input first.
    pub sizes: Vec<usize>,
    /// Weights per layer, `[in, out]` row-major.
    pub weights: Vec<Vec<f32>>,
    /// 0/1 masks per layer.
    pub masks: Vec<Vec<f32>>,
    /// Biases per layer.
    pub biases: Vec<Vec<f32>>,
    /// The configuration the model was trained with, if recorded.
    pub config: Option<TrainConfig>,
    /// Batch norms (a model of layers; empty for the MLP).
    pub norms: Vec<HostNorm>,
}

impl ModelFile {
    /// The stored tensors: the recorded model's, or the MLP of `sizes`.
    pub fn layout(&self) -> Result<ModelLayout> {
        match &self.config {
            Some(c) => c.layout(&self.sizes),
            None => Ok(ModelLayout::mlp(&self.sizes)),
        }
    }
}

fn bad(path: &Path, message: impl Into<String>) -> RiglError {
    RiglError::BadFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Writes the model (read back from the GPU) atomically: a temporary file in the same directory,
/// then a rename.
pub fn save(
    ctx: &GpuContext,
    model: &dyn Network,
    cfg: &TrainConfig,
    sizes: &[usize],
    path: &Path,
) -> Result<()> {
    let weights = model.read_weights(ctx)?;
    let masks = model.read_masks(ctx)?;
    let biases = model.read_biases(ctx)?;
    let file = ModelFile {
        sizes: sizes.to_vec(),
        weights,
        masks,
        biases,
        config: Some(cfg.clone()),
        norms: model.read_norms(ctx)?,
    };
    write(&file, path)
}

/// Writes a [`ModelFile`] atomically.
pub fn write(file: &ModelFile, path: &Path) -> Result<()> {
    let layout = file.layout()?;
    if file.weights.len() != layout.params.len()
        || file.masks.len() != layout.params.len()
        || file.biases.len() != layout.params.len()
        || file.norms.len() != layout.norms.len()
    {
        return Err(bad(path, "the model's tensors do not match its layers"));
    }
    let masks_u8: Vec<Vec<u8>> = file.masks.iter().map(|m| mask_to_u8(m)).collect();
    let mut views = Vec::new();
    let err = |e: safetensors::SafeTensorError| bad(path, e.to_string());
    for (l, p) in layout.params.iter().enumerate() {
        let name = &p.name;
        views.push((
            format!("{name}.weight"),
            TensorView::new(
                Dtype::F32,
                p.shape.clone(),
                bytemuck::cast_slice(&file.weights[l]),
            )
            .map_err(err)?,
        ));
        views.push((
            format!("{name}.mask"),
            TensorView::new(Dtype::U8, p.shape.clone(), &masks_u8[l]).map_err(err)?,
        ));
        if let Some(n) = p.bias {
            views.push((
                format!("{name}.bias"),
                TensorView::new(Dtype::F32, vec![n], bytemuck::cast_slice(&file.biases[l]))
                    .map_err(err)?,
            ));
        }
    }
    for (i, (n, &c)) in file.norms.iter().zip(&layout.norms).enumerate() {
        for (what, v) in [
            ("gamma", &n.gamma),
            ("beta", &n.beta),
            ("running_mean", &n.mean),
            ("running_var", &n.var),
        ] {
            views.push((
                format!("{}.{what}", norm_name(i)),
                TensorView::new(Dtype::F32, vec![c], bytemuck::cast_slice(v)).map_err(err)?,
            ));
        }
    }
    let mut meta = HashMap::new();
    meta.insert(
        "rigl.sizes".to_string(),
        serde_json::to_string(&file.sizes).unwrap_or_default(),
    );
    meta.insert(
        "rigl.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    if let Some(cfg) = &file.config {
        meta.insert("rigl.config".to_string(), cfg.to_toml()?);
    }
    let bytes = crate::canonical::safetensors_bytes(
        safetensors::serialize(views, Some(meta)).map_err(err)?,
    )?;
    let tmp = path.with_extension("safetensors.tmp");
    let io = |source| RiglError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|source| RiglError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a model file, checking every tensor's presence, dtype and shape.
pub fn read(path: &Path) -> Result<ModelFile> {
    let bytes = std::fs::read(path).map_err(|source| RiglError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let sizes: Vec<usize> = meta
        .get("rigl.sizes")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad(path, "no rigl.sizes metadata: not a rigl model file"))?;
    if sizes.len() < 2 || sizes.contains(&0) {
        return Err(bad(path, format!("invalid layer widths {sizes:?}")));
    }
    let config = match meta.get("rigl.config") {
        Some(t) => Some(toml::from_str(t).map_err(|e| bad(path, format!("rigl.config: {e}")))?),
        None => None,
    };
    let layout = match &config {
        Some(c) => TrainConfig::layout(c, &sizes).map_err(|e| bad(path, e.to_string()))?,
        None => ModelLayout::mlp(&sizes),
    };
    let get = |key: String, dtype: Dtype, shape: Vec<usize>| -> Result<Vec<u8>> {
        let t = st
            .tensor(&key)
            .map_err(|_| bad(path, format!("tensor {key} is missing")))?;
        if t.dtype() != dtype || t.shape() != shape.as_slice() {
            return Err(bad(
                path,
                format!(
                    "tensor {key} is {:?} {:?}, expected {dtype:?} {shape:?}",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        Ok(t.data().to_vec())
    };
    let f32s = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let (mut weights, mut masks, mut biases) = (Vec::new(), Vec::new(), Vec::new());
    for p in &layout.params {
        let name = &p.name;
        weights.push(f32s(get(
            format!("{name}.weight"),
            Dtype::F32,
            p.shape.clone(),
        )?));
        let m = get(format!("{name}.mask"), Dtype::U8, p.shape.clone())?;
        if let Some(v) = m.iter().find(|&&v| v > 1) {
            return Err(bad(path, format!("{name}.mask holds {v}, expected 0 or 1")));
        }
        masks.push(m.iter().map(|&v| f32::from(v)).collect());
        biases.push(match p.bias {
            Some(n) => f32s(get(format!("{name}.bias"), Dtype::F32, vec![n])?),
            None => Vec::new(),
        });
    }
    let mut norms = Vec::new();
    for (i, &c) in layout.norms.iter().enumerate() {
        let g = |what: &str| -> Result<Vec<f32>> {
            Ok(f32s(get(
                format!("{}.{what}", norm_name(i)),
                Dtype::F32,
                vec![c],
            )?))
        };
        norms.push(HostNorm {
            gamma: g("gamma")?,
            beta: g("beta")?,
            mean: g("running_mean")?,
            var: g("running_var")?,
        });
    }
    Ok(ModelFile {
        sizes,
        weights,
        masks,
        biases,
        config,
        norms,
    })
}

//! The scheduler's state in and out: masks, step, seed (SET's random stream is counter-based on
//! seed, step, layer and index, so the seed and step are all of its position) and schedule, as
//! safetensors bytes or a safetensors file.
//!
//! Layout: one `U8` tensor `rigl.<layer>.mask` of the layer's shape per layer, and the metadata
//! key `rigl.scheduler` holding JSON: method, ΔT, `t_end`, α, drop schedule, seed, step and the
//! layer names in order.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Result, RiglError};
use crate::sparse::{DropSchedule, Method, UpdateSchedule};

/// Metadata key of the scheduler's settings in the safetensors header.
pub const METADATA_KEY: &str = "rigl.scheduler";

/// Saved state of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerState {
    /// Layer name.
    pub name: String,
    /// Layer shape.
    pub shape: Vec<usize>,
    /// Mask, 0 or 1 per weight, row-major over the shape.
    pub mask: Vec<u8>,
}

/// Everything a scheduler needs to continue a run exactly where it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerState {
    /// Method.
    pub method: Method,
    /// Update schedule.
    pub schedule: UpdateSchedule,
    /// Seed (initial masks, SET's random grow score).
    pub seed: u64,
    /// One past the last step given to the scheduler's `update` (0 before the first).
    pub step: u64,
    /// Per-layer masks, in the scheduler's layer order.
    pub layers: Vec<LayerState>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    method: Method,
    delta_t: u64,
    t_end: u64,
    alpha: f32,
    drop_schedule: DropSchedule,
    seed: u64,
    step: u64,
    layers: Vec<String>,
}

fn bad(what: &str, message: impl Into<String>) -> RiglError {
    RiglError::BadFile {
        path: what.to_string(),
        message: message.into(),
    }
}

impl SchedulerState {
    /// The state as a safetensors file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = Meta {
            method: self.method,
            delta_t: self.schedule.delta_t,
            t_end: self.schedule.t_end,
            alpha: self.schedule.alpha,
            drop_schedule: self.schedule.drop_schedule,
            seed: self.seed,
            step: self.step,
            layers: self.layers.iter().map(|l| l.name.clone()).collect(),
        };
        let err = |e: safetensors::SafeTensorError| RiglError::invalid(e.to_string());
        let mut views = Vec::new();
        for l in &self.layers {
            views.push((
                format!("rigl.{}.mask", l.name),
                TensorView::new(Dtype::U8, l.shape.clone(), &l.mask).map_err(err)?,
            ));
        }
        let json = serde_json::to_string(&meta)
            .map_err(|e| RiglError::invalid(format!("scheduler state to JSON: {e}")))?;
        let header = HashMap::from([(METADATA_KEY.to_string(), json)]);
        crate::canonical::safetensors_bytes(
            safetensors::serialize(views, Some(header)).map_err(err)?,
        )
    }

    /// Reads a state written by [`SchedulerState::to_bytes`]; errors name what is missing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes, "scheduler state")
    }

    /// Writes the state to a safetensors file (atomically: a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let tmp = path.with_extension("tmp");
        let io = |source| RiglError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a state file written by [`SchedulerState::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| RiglError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes, &path.display().to_string())
    }

    fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(what, format!("not a safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(what, format!("not a safetensors file: {e}")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| bad(what, format!("no {METADATA_KEY} metadata")))?;
        let meta: Meta = serde_json::from_str(json)
            .map_err(|e| bad(what, format!("bad {METADATA_KEY} metadata: {e}")))?;
        let schedule =
            UpdateSchedule::new(meta.delta_t, meta.t_end, meta.alpha, meta.drop_schedule)
                .map_err(|e| bad(what, e.to_string()))?;
        let mut layers = Vec::new();
        for name in &meta.layers {
            let key = format!("rigl.{name}.mask");
            let t = st
                .tensor(&key)
                .map_err(|_| bad(what, format!("tensor {key} is missing")))?;
            if t.dtype() != Dtype::U8 {
                return Err(bad(
                    what,
                    format!("tensor {key} is {:?}, not U8", t.dtype()),
                ));
            }
            let mask = t.data().to_vec();
            if let Some(v) = mask.iter().find(|&&v| v > 1) {
                return Err(bad(what, format!("tensor {key} holds {v}, not 0 or 1")));
            }
            layers.push(LayerState {
                name: name.clone(),
                shape: t.shape().to_vec(),
                mask,
            });
        }
        Ok(SchedulerState {
            method: meta.method,
            schedule,
            seed: meta.seed,
            step: meta.step,
            layers,
        })
    }
}

//! What kernels a run used, written to `RUN_DIR/kernels.json`, and replaying them in another run
//! (`rigl train --kernels-from RUN_DIR`).
//!
//! Every kernel choice made by timing changes the order of float sums, so two runs that choose
//! differently end in different bits. The tuning cache ([`crate::gpu::tuning`]) makes every run
//! on one machine choose alike; a record makes a run choose as another one did, on another
//! machine or with another cache.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RiglError};
use crate::gpu::{gemm, GemmShape, GemmVariant, GpuContext};
use crate::nn::choice::{Decision, LayerTiming};

/// File name of the record in a run directory.
pub const FILE: &str = "kernels.json";

/// One product shape and the GEMM variant it ran with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmPick {
    /// The product.
    pub shape: GemmShape,
    /// Its variant.
    pub variant: GemmVariant,
}

/// The kernel choices of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelRecord {
    /// Adapter name.
    pub adapter: String,
    /// Driver (name and version).
    pub driver: String,
    /// Backend (Vulkan, Metal, ...).
    pub backend: String,
    /// The model's GEMM variant.
    pub gemm: GemmVariant,
    /// The variant of every product shape the run picked one for.
    pub gemm_picks: Vec<GemmPick>,
    /// `sparse` (compressed layers) or `masked`.
    pub kernels: String,
    /// Why (as the summary reports it).
    pub reason: String,
    /// Per-layer timings of the choice, when it measured; a compressed MLP runs a layer on
    /// dense GEMMs where its masked time is lower ([`crate::nn::choice::dense_layers`]), a
    /// compressed model of layers each product where its dense time is
    /// ([`crate::nn::choice::dense_products`]).
    pub layers: Vec<LayerTiming>,
}

impl KernelRecord {
    /// The record of what a run on `ctx` uses: `gemm_variant`, `decision`, and the per-shape
    /// picks the context has made so far.
    pub fn of(ctx: &GpuContext, gemm_variant: GemmVariant, decision: &Decision) -> Self {
        KernelRecord {
            adapter: ctx.info.name.clone(),
            driver: format!("{} {}", ctx.info.driver, ctx.info.driver_info)
                .trim()
                .to_string(),
            backend: format!("{:?}", ctx.info.backend),
            gemm: gemm_variant,
            gemm_picks: gemm::picks(ctx)
                .into_iter()
                .map(|(shape, variant)| GemmPick { shape, variant })
                .collect(),
            kernels: decision.kernels.to_string(),
            reason: decision.reason.clone(),
            layers: decision.layers.clone(),
        }
    }

    /// Reads `RUN_DIR/kernels.json`, or the file itself when `path` is a file. Errors name the
    /// file.
    pub fn read(path: &Path) -> Result<(Self, PathBuf)> {
        let file = if path.is_dir() {
            path.join(FILE)
        } else {
            path.to_path_buf()
        };
        let bad = |message: String| RiglError::BadFile {
            path: file.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            bad(if e.kind() == std::io::ErrorKind::NotFound {
                "no such file (a run directory written by this version of rigl holds one)"
                    .to_string()
            } else {
                e.to_string()
            })
        })?;
        let record =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a kernel record: {e}")))?;
        Ok((record, file))
    }

    /// Writes the record as `dir/kernels.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let file = dir.join(FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| RiglError::invalid(format!("kernel record: {e}")))?;
        std::fs::write(&file, text + "\n").map_err(|source| RiglError::Io {
            path: file.display().to_string(),
            source,
        })
    }

    /// Fixes `ctx`'s GEMM choices to the record's ([`gemm::pin`]).
    pub fn pin(&self, ctx: &GpuContext) {
        let picks: Vec<(GemmShape, GemmVariant)> = self
            .gemm_picks
            .iter()
            .map(|p| (p.shape, p.variant))
            .collect();
        gemm::pin(ctx, self.gemm, &picks);
    }

    /// Where the record was made on another adapter or driver than `ctx`'s: a warning saying so
    /// (the choices still apply, where the adapter supports them), else `None`.
    pub fn mismatch(&self, ctx: &GpuContext) -> Option<String> {
        let here = KernelRecord::of(ctx, self.gemm, &Decision::default());
        (here.adapter != self.adapter || here.driver != self.driver).then(|| {
            format!(
                "the kernel choices come from {} ({}), this run uses {} ({}): the results may \
                 differ in the last bits from the run they come from",
                self.adapter, self.driver, here.adapter, here.driver
            )
        })
    }
}

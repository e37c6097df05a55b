//! `rigl bench step` of a data-parallel run (under `mpirun`, or `--exchange` in one process): a
//! short training run on a synthetic task through the trainer's own step, timing each step and
//! its gradient exchange and counting the bytes exchanged, per ordinary step and per mask-update
//! step.

use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use crate::data::Dataset;
use crate::dist::{Collective, ExchangeStats};
use crate::error::{Result, RiglError};
use crate::gpu::GpuContext;

use super::checkpoint::RunOptions;
use super::run::Run;
use super::{NoProgress, TrainConfig};

/// What a data-parallel step bench reports (medians over the timed steps of each kind).
#[derive(Clone, Debug, Serialize)]
pub struct DistStepBench {
    /// Method.
    pub method: String,
    /// Kernels the model ran on.
    pub kernels: String,
    /// Ranks.
    pub ranks: usize,
    /// Global batch.
    pub batch: usize,
    /// Samples per rank.
    pub shard: usize,
    /// Ordinary steps timed.
    pub steps: usize,
    /// Mask-update steps timed.
    pub update_steps: usize,
    /// Wall time of an ordinary step, ms (median).
    pub step_ms: f64,
    /// Its gradient exchange (read back, all-reduce, write back), ms (median).
    pub exchange_ms: f64,
    /// The rest: `step_ms - exchange_ms`.
    pub compute_ms: f64,
    /// Bytes this rank sent in the all-reduces of an ordinary step.
    pub bytes_per_step: f64,
    /// Wall time of a mask-update step, ms (median; none without updates).
    pub update_step_ms: Option<f64>,
    /// Its exchange, ms (median).
    pub update_exchange_ms: Option<f64>,
    /// Bytes of an update step's all-reduces (the sparse layers' dense gradients included).
    pub bytes_per_update_step: Option<f64>,
    /// Adapter of this rank.
    pub adapter: String,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Trains `cfg` (its batch the global batch) on a synthetic task of `features` and `classes`
/// for `warmup + steps` steps over `comm`'s ranks (one process without it), timing the last
/// `steps`.
pub fn bench_distributed(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    features: usize,
    classes: usize,
    comm: Option<Rc<dyn Collective>>,
    warmup: usize,
    steps: usize,
) -> Result<DistStepBench> {
    if steps == 0 {
        return Err(RiglError::invalid("--reps must be at least 1"));
    }
    let total = warmup + steps;
    let data = Dataset::synthetic(cfg.batch * total, cfg.batch, features, classes, cfg.seed)?;
    let (train, test) = (&data.train, &data.test);
    let cfg = TrainConfig {
        epochs: 1,
        ..cfg.clone()
    };
    let ranks = comm.as_ref().map_or(1, |c| c.size());
    let opts = RunOptions {
        comm,
        ..RunOptions::default()
    };
    let mut progress = NoProgress;
    let mut run = Run::start(ctx, &cfg, train, test, None, &mut progress, &opts)?;
    let (mut ord, mut ord_x, mut upd, mut upd_x) = (vec![], vec![], vec![], vec![]);
    let (mut bytes, mut update_bytes) = (0u64, 0u64);
    for step in 0..total as u64 {
        let before = run
            .dist
            .as_ref()
            .map(|d| d.stats.clone())
            .unwrap_or_default();
        let updates = run.c.mask_updates;
        let t = Instant::now();
        run.step(step)?;
        let ms = 1e3 * t.elapsed().as_secs_f64();
        if step < warmup as u64 {
            continue;
        }
        let after: ExchangeStats = run
            .dist
            .as_ref()
            .map(|d| d.stats.clone())
            .unwrap_or_default();
        let x_ms = 1e3
            * ((after.time + after.update_time) - (before.time + before.update_time)).as_secs_f64();
        let b = (after.bytes + after.update_bytes) - (before.bytes + before.update_bytes);
        if run.c.mask_updates > updates {
            upd.push(ms);
            upd_x.push(x_ms);
            update_bytes += b;
        } else {
            ord.push(ms);
            ord_x.push(x_ms);
            bytes += b;
        }
    }
    run.wait_pending()?;
    let (n_ord, n_upd) = (ord.len(), upd.len());
    let step_ms = median(ord).unwrap_or(f64::NAN);
    let exchange_ms = median(ord_x).unwrap_or(0.0);
    Ok(DistStepBench {
        method: cfg.method.as_str().to_string(),
        kernels: run.parts.model().kernels().to_string(),
        ranks,
        batch: cfg.batch,
        shard: cfg.batch / ranks,
        steps: n_ord,
        update_steps: n_upd,
        step_ms,
        exchange_ms,
        compute_ms: step_ms - exchange_ms,
        bytes_per_step: bytes as f64 / n_ord.max(1) as f64,
        update_step_ms: median(upd),
        update_exchange_ms: median(upd_x),
        bytes_per_update_step: (n_upd > 0).then(|| update_bytes as f64 / n_upd as f64),
        adapter: ctx.info.name.clone(),
    })
}

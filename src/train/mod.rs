//! The trainer: data, model, sparse schedule and optimizer wired into one step loop, with metrics,
//! FLOPs accounting, the ITOP rate, checkpoints with exact resume, and the final model file.

pub mod bench;
pub mod bench_dist;
pub mod checkpoint;
pub mod config;
mod exchange;
pub mod kernels;
mod metrics;
pub mod model_file;
mod net;
mod run;
mod step;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::{Batcher, Dataset};
use crate::error::{Result, RiglError};
use crate::gpu::GpuContext;
use crate::nn::choice::Decision;
use crate::nn::mlp::layer_names;
use crate::nn::model::RunMode;
use crate::nn::{MemoryReport, Network};
use crate::sparse::{
    layer_sparsities, DistributionConfig, LayerKind, LayerShape, LayerSpec, Method,
};

pub use checkpoint::{NanPolicy, RunOptions};
pub use config::{LrSchedule, TrainConfig};
pub use net::sparse_method_support;
use run::Run;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsLine {
    /// `train` (running averages since the last line) or `eval` (test set).
    pub kind: &'static str,
    /// Global step (steps done).
    pub step: u64,
    /// Epoch (from 1 for completed epochs in eval lines; fractional in train lines).
    pub epoch: f64,
    /// Mean loss.
    pub loss: f64,
    /// Accuracy in [0, 1].
    pub accuracy: f64,
    /// Learning rate at the last step.
    pub lr: f32,
    /// Drop fraction of the last mask update (0 when none yet).
    pub drop_fraction: f32,
    /// New connections made by the last mask update, all layers.
    pub mask_changes: usize,
    /// Training throughput since the last line.
    pub samples_per_sec: f64,
    /// Training FLOPs so far as a multiple of dense training over the same steps.
    pub train_flops_vs_dense: f64,
    /// Batches skipped so far for a non-finite loss (`--on-nan skip`).
    pub nan_skips: u64,
}

/// Per-layer line of the summary.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// `[in, out]`.
    pub shape: Vec<usize>,
    /// Target sparsity from the distribution.
    pub sparsity: f64,
    /// Sparsity measured on the final mask.
    pub actual_sparsity: f64,
    /// Active weights in the final mask.
    pub active: usize,
    /// Weights of the dense layer.
    pub total: usize,
    /// Hidden layers: units whose ReLU output is 0 on every test sample with the final model
    /// (dead for good: every weight in and out of them has a zero gradient). `None` for the
    /// output layer.
    pub dead_units: Option<usize>,
}

/// What a run reports at the end (`summary.json`, `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// Method trained.
    pub method: String,
    /// Final test accuracy in [0, 1].
    pub test_accuracy: f64,
    /// Final test loss.
    pub test_loss: f64,
    /// Mean training loss over the last epoch.
    pub final_train_loss: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// Steps trained.
    pub steps: u64,
    /// Training samples per second (training steps only, evaluation excluded).
    pub samples_per_sec: f64,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Final density (active / total over all layers).
    pub density: f64,
    /// Training FLOPs counted over the run, as a multiple of dense training (SPEC §6).
    pub train_flops_vs_dense: f64,
    /// Inference FLOPs of the final model as a multiple of dense.
    pub inference_flops_vs_dense: f64,
    /// Share of weights that were active at some point of the run.
    pub itop_rate: f64,
    /// Mask updates performed.
    pub mask_updates: u64,
    /// Batches skipped for a non-finite loss (`--on-nan skip`).
    pub nan_skips: u64,
    /// GPU adapter used.
    pub adapter: String,
    /// Per-layer report.
    pub layers: Vec<LayerReport>,
    /// Run directory, if one was written.
    pub run_dir: Option<String>,
    /// Kernels the layers ran on (`sparse`, `masked` or `dense`) and why.
    pub kernels: Decision,
    /// GPU memory of the model against the dense model.
    pub gpu_memory: GpuMemory,
    /// A data-parallel run's ranks and gradient exchange (absent for a run of one process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistReport>,
}

/// The ranks of a data-parallel run and what its gradient exchange sent (per rank, the payload
/// of its all-reduces) and cost, per ordinary step and per mask-update step.
#[derive(Clone, Debug, Serialize)]
pub struct DistReport {
    /// Ranks.
    pub ranks: usize,
    /// Samples per rank of each global batch.
    pub shard: usize,
    /// Bytes exchanged in an ordinary step.
    pub bytes_per_step: f64,
    /// Bytes exchanged in a mask-update step.
    pub bytes_per_update_step: f64,
    /// Mean exchange time of an ordinary step (read back, all-reduce, write back), ms.
    pub exchange_ms_per_step: f64,
    /// Mean exchange time of a mask-update step, ms.
    pub exchange_ms_per_update_step: f64,
    /// Ordinary and update steps counted (this process's, after a resume).
    pub steps: u64,
    /// Mask-update steps counted.
    pub update_steps: u64,
}

impl DistReport {
    pub(crate) fn new(ranks: usize, shard: usize, s: &crate::dist::ExchangeStats) -> Self {
        let ms = |d: std::time::Duration, n: u64| 1e3 * d.as_secs_f64() / n.max(1) as f64;
        DistReport {
            ranks,
            shard,
            bytes_per_step: s.bytes_per_step(),
            bytes_per_update_step: s.bytes_per_update(),
            exchange_ms_per_step: ms(s.time, s.steps),
            exchange_ms_per_update_step: ms(s.update_time, s.update_steps),
            steps: s.steps,
            update_steps: s.update_steps,
        }
    }
}

/// GPU memory of the trained model's weights, gradients and momentum (with masks or indexes),
/// next to what the dense model needs (12 bytes per weight).
#[derive(Clone, Debug, Serialize)]
pub struct GpuMemory {
    /// Bytes of the model's weights, gradients, momentum and masks or indexes.
    pub model_bytes: u64,
    /// Bytes the dense model's weights, gradients and momentum take.
    pub dense_bytes: u64,
    /// model_bytes / dense_bytes.
    pub ratio_vs_dense: f64,
    /// Scratch used at mask updates only.
    pub update_scratch_bytes: u64,
    /// Per layer: (name, bytes).
    pub layers: Vec<(String, u64)>,
    /// Every buffer and texture rigl held on the device when this was measured: the above plus
    /// biases, activations, the GEMMs' packed operand copies, parameter blocks and scratch
    /// ([`GpuContext::gpu_bytes_held`]).
    pub held_bytes: u64,
}

impl GpuMemory {
    pub(crate) fn new(ctx: &GpuContext, m: MemoryReport, total_weights: usize) -> Self {
        let dense_bytes = 12 * total_weights as u64;
        GpuMemory {
            model_bytes: m.weights_grads_momentum,
            dense_bytes,
            ratio_vs_dense: m.weights_grads_momentum as f64 / dense_bytes.max(1) as f64,
            update_scratch_bytes: m.update_scratch,
            layers: m.layers,
            held_bytes: ctx.gpu_bytes_held(),
        }
    }
}

/// Receives progress; the CLI draws a bar or prints lines.
pub trait Progress {
    /// Training starts: `total_steps` steps of `steps_per_epoch`.
    fn start(&mut self, total_steps: u64, steps_per_epoch: u64) {
        let _ = (total_steps, steps_per_epoch);
    }
    /// A metrics line was produced.
    fn line(&mut self, line: &MetricsLine) {
        let _ = line;
    }
    /// A step finished (cheap; called every step).
    fn step(&mut self, step: u64) {
        let _ = step;
    }
    /// Training ended.
    fn finish(&mut self) {}
}

/// A progress sink that ignores everything.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The weight layers a configuration trains, with kernel dims and output positions (as
/// `rigl plan --model` takes them): the model of layers' ([`TrainConfig::model_spec`]), or the
/// MLP's `fc1`, `fc2`, ... of widths `sizes`.
pub fn weight_layers(cfg: &TrainConfig, sizes: &[usize]) -> Result<Vec<LayerSpec>> {
    if let Some(spec) = cfg.model_spec()? {
        return spec.weight_layers();
    }
    Ok(layer_names(sizes.len() - 1)
        .into_iter()
        .enumerate()
        .map(|(l, n)| LayerSpec {
            kind: LayerKind::Dense,
            layer: LayerShape::new(n, &[sizes[l], sizes[l + 1]]),
            out_hw: (1, 1),
        })
        .collect())
}

/// The per-layer sparsity plan of a configuration for run widths `sizes` (uniform, ER or ERK
/// over the weight layers with their kernel dims, `--first-layer-dense`, `--last-layer-dense`).
pub fn plan_layers(
    cfg: &TrainConfig,
    sizes: &[usize],
) -> Result<Vec<crate::sparse::LayerSparsity>> {
    let shapes: Vec<LayerShape> = weight_layers(cfg, sizes)?
        .into_iter()
        .map(|l| l.layer)
        .collect();
    let sparsity = if matches!(cfg.method, Method::Dense) {
        0.0
    } else {
        cfg.sparsity
    };
    let mut dc = DistributionConfig::new(cfg.distribution, sparsity);
    dc.first_layer_dense = cfg.first_layer_dense;
    dc.last_layer_dense = cfg.last_layer_dense;
    dc.erk_power_scale = cfg.erk_power_scale;
    layer_sparsities(&shapes, &dc)
}

/// Checks that a model of layers fits the data: its input `C*H*W` equals the data's features
/// and it scores at least the data's classes.
fn check_model_fits_data(cfg: &TrainConfig, features: usize, classes: usize) -> Result<()> {
    let Some(spec) = cfg.model_spec()? else {
        return Ok(());
    };
    let s = spec.input_shape();
    if s.len() != features {
        return Err(RiglError::invalid(format!(
            "model '{}' takes inputs of {}x{}x{} = {} features, the dataset has {features} \
             features per sample",
            spec.name,
            s.c,
            s.h,
            s.w,
            s.len()
        )));
    }
    let (out, _) = spec.infer()?;
    if out.len() < classes {
        return Err(RiglError::invalid(format!(
            "model '{}' scores {} classes, the dataset has {classes}",
            spec.name,
            out.len()
        )));
    }
    Ok(())
}

/// Trains according to `cfg` on `train`, evaluating on `test` after every epoch. Writes the run
/// directory when `run_dir` is given (config.toml, metrics.jsonl, summary.json, model.safetensors,
/// and checkpoints at step 0 and every epoch's end).
pub fn train(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    run_dir: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<TrainSummary> {
    match train_with(
        ctx,
        cfg,
        train,
        test,
        run_dir,
        progress,
        &RunOptions::default(),
    )? {
        RunEnd::Finished(s) => Ok(*s),
        RunEnd::Stopped { step, .. } => Err(RiglError::invalid(format!(
            "training stopped at step {step} without a stop request"
        ))),
    }
}

/// How [`train_with`] ended.
#[derive(Debug)]
pub enum RunEnd {
    /// Every step ran.
    Finished(Box<TrainSummary>),
    /// A stop was requested (signal or `stop_after_steps`); the run can resume from the
    /// checkpoint written at `step`.
    Stopped {
        /// Steps done.
        step: u64,
        /// The checkpoint written there (none without a run directory).
        checkpoint: Option<PathBuf>,
    },
}

/// [`train`] with run control: checkpoints every `opts.checkpoint_every` steps (and at step 0 and
/// each epoch's end, when there is a run directory), an exact resume from `opts.resume`, the
/// non-finite loss policy, and stopping with a checkpoint when `opts.stop` is raised.
pub fn train_with(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    run_dir: Option<&Path>,
    progress: &mut dyn Progress,
    opts: &RunOptions,
) -> Result<RunEnd> {
    let mut run = Run::start(ctx, cfg, train, test, run_dir, progress, opts)?;
    for step in run.start_step..run.total_steps {
        // Forward, backward, optimizer and mask update; submitted with one step in flight (on a
        // GPU; a CPU adapter waits for each).
        run.step(step)?;
        let end_of_epoch = run.is_epoch_end(step);
        if run.is_log_step(step) || end_of_epoch {
            run.log_window(step)?;
        }
        if end_of_epoch {
            run.evaluate_epoch(step)?;
        }
        if let Some(end) = run.checkpoint(step, end_of_epoch)? {
            return Ok(end);
        }
    }
    Ok(RunEnd::Finished(Box::new(run.finish()?)))
}

/// The error for a non-finite training loss: what and where (the model state read back names the
/// layers and tensors holding non-finite values), and the last good checkpoint.
fn non_finite_error(
    state: Result<crate::nn::ModelState>,
    names: &[String],
    step: u64,
    what: String,
    last_checkpoint: Option<&Path>,
) -> RiglError {
    let mut lines = vec![what];
    match state {
        Ok(state) => {
            let found = state.non_finite(names);
            if found.is_empty() {
                lines.push("weights, biases and optimizer state are all finite".into());
            }
            lines.extend(found);
        }
        Err(e) => lines.push(format!("(could not read the model state back: {e})")),
    }
    non_finite_message(step, &lines, last_checkpoint)
}

fn non_finite_message(step: u64, found: &[String], last_checkpoint: Option<&Path>) -> RiglError {
    let keep = match last_checkpoint {
        Some(p) => format!(
            "; the last good checkpoint is {} (resume from it with a lower --lr, or use --on-nan skip)",
            p.display()
        ),
        None => "; lower the learning rate or use --on-nan skip".to_string(),
    };
    RiglError::NonFinite {
        step,
        message: format!("non-finite values: {}{keep}", found.join("; ")),
    }
}

/// Test loss and accuracy of the model over a whole dataset (partial last batch included), in
/// evaluation mode (batch norm on running statistics, no dropout).
pub fn evaluate(ctx: &GpuContext, model: &dyn Network, data: &Dataset) -> Result<(f64, f64)> {
    let b = model.batch();
    model.set_mode(ctx, RunMode::Eval)?;
    let mut batcher = Batcher::for_evaluation(data.n, b)?;
    let mut x = vec![0.0f32; data.features * b];
    let mut labels = vec![0u32; b];
    model.reset_sums(ctx)?;
    let ops = model.forward_ops();
    for i in 0..batcher.batches_per_epoch() {
        let len = batcher.fill_batch(data, 0, i, &mut x, &mut labels)?;
        model.set_batch(ctx, &x, &labels)?;
        model.set_valid(ctx, len);
        crate::gpu::ops::run(ctx, "evaluation", &ops)?;
    }
    model.set_valid(ctx, b);
    let (loss, correct) = model.read_sums(ctx)?;
    model.reset_sums(ctx)?;
    Ok((loss / data.n as f64, correct / data.n as f64))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| RiglError::Io {
        path: path.display().to_string(),
        source,
    })
}

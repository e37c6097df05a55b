//! The trainer: data, model, sparse schedule and optimizer wired into one step loop, with metrics,
//! FLOPs accounting, the ITOP rate and the final model file.

pub mod bench;
pub mod config;
pub mod model_file;
mod net;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::data::{Batcher, Dataset};
use crate::error::{Result, RiglError};
use crate::gpu::ops::{Dispatch, SgdConfig};
use crate::gpu::GpuContext;
use crate::nn::choice::Decision;
use crate::nn::mlp::layer_names;
use crate::nn::{MemoryReport, Network};
use crate::sparse::init::count_active;
use crate::sparse::schedule::drop_count;
use crate::sparse::update::LayerCounts;
use crate::sparse::{
    active_count, layer_sparsities, DistributionConfig, LayerShape, Method, PruneSchedule,
    UpdateSchedule,
};

pub use config::{LrSchedule, TrainConfig};
pub use net::sparse_method_support;
use net::{build, Built, Net};

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
}

impl GpuMemory {
    pub(crate) fn new(m: MemoryReport, total_weights: usize) -> Self {
        let dense_bytes = 12 * total_weights as u64;
        GpuMemory {
            model_bytes: m.weights_grads_momentum,
            dense_bytes,
            ratio_vs_dense: m.weights_grads_momentum as f64 / dense_bytes.max(1) as f64,
            update_scratch_bytes: m.update_scratch,
            layers: m.layers,
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

/// The per-layer sparsity plan of a configuration for layers of `sizes`.
pub fn plan_layers(
    cfg: &TrainConfig,
    sizes: &[usize],
) -> Result<Vec<crate::sparse::LayerSparsity>> {
    let names = layer_names(sizes.len() - 1);
    let shapes: Vec<LayerShape> = names
        .iter()
        .enumerate()
        .map(|(l, n)| LayerShape::new(n.clone(), &[sizes[l], sizes[l + 1]]))
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

/// Trains according to `cfg` on `train`, evaluating on `test` after every epoch. Writes the run
/// directory when `run_dir` is given (config.toml, metrics.jsonl, summary.json, model.safetensors).
pub fn train(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    run_dir: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<TrainSummary> {
    cfg.validate()?;
    if train.features != test.features || train.classes != test.classes {
        return Err(RiglError::invalid(format!(
            "training set ({} features, {} classes) and test set ({} features, {} classes) differ",
            train.features, train.classes, test.features, test.classes
        )));
    }
    let t_start = Instant::now();
    let mut sizes = vec![train.features];
    sizes.extend(&cfg.hidden);
    sizes.push(train.classes);
    let plan = plan_layers(cfg, &sizes)?;

    let mut batcher = Batcher::for_training(train.n, cfg.batch, cfg.seed)?;
    let steps_per_epoch = batcher.batches_per_epoch() as u64;
    if steps_per_epoch == 0 {
        return Err(RiglError::invalid(format!(
            "the training set has {} samples, fewer than one batch of {}",
            train.n, cfg.batch
        )));
    }
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let update = UpdateSchedule::new(
        cfg.delta_t,
        cfg.t_end_steps(total_steps),
        cfg.alpha,
        cfg.drop_schedule,
    )?;
    let prune = PruneSchedule::new(
        0.0,
        cfg.sparsity,
        (cfg.prune_start * total_steps as f64) as u64,
        (cfg.prune_end * total_steps as f64) as u64,
        cfg.prune_every,
    )?;
    let sgd = SgdConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        nesterov: cfg.nesterov,
    };
    let Built {
        net,
        decision,
        rule,
        updater,
        masks,
    } = build(ctx, cfg, &sizes, &plan, sgd)?;
    let model = net.net();
    let totals: Vec<usize> = plan.iter().map(|p| p.total).collect();
    let mut active: Vec<usize> = masks.iter().map(|m| count_active(m)).collect();
    drop(masks);

    // FLOPs per sample: a multiply-add is 2 FLOPs (SPEC §6).
    let f_dense: f64 = totals.iter().map(|&n| 2.0 * n as f64).sum();
    let f_sparse = |active: &[usize]| -> f64 { active.iter().map(|&n| 2.0 * n as f64).sum() };
    let mut train_flops = 0.0f64;
    let mut dense_flops_ref = 0.0f64;

    if let Some(dir) = run_dir {
        std::fs::create_dir_all(dir).map_err(|source| RiglError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        write_file(&dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    }
    let mut metrics = match run_dir {
        Some(dir) => Some(MetricsWriter::create(&dir.join("metrics.jsonl"))?),
        None => None,
    };

    let mut x = vec![0.0f32; train.features * cfg.batch];
    let mut labels = vec![0u32; cfg.batch];
    let mut last_drop_fraction = 0.0f32;
    let mut last_changes = 0usize;
    let mut mask_updates = 0u64;
    let mut train_time = 0.0f64;
    let mut window = (Instant::now(), 0u64); // start of the logging window, samples in it
    let mut last_eval = (f64::NAN, f64::NAN);
    let mut epoch_loss = (0.0f64, 0u64);
    let mut final_train_loss = f64::NAN;
    let mut pending: Option<wgpu::SubmissionIndex> = None;
    let mut lr;
    progress.start(total_steps, steps_per_epoch);
    model.reset_sums(ctx)?;

    for step in 0..total_steps {
        let t0 = Instant::now();
        let info = batcher.next_batch(train, &mut x, &mut labels)?;
        model.set_batch(ctx, &x, &labels)?;
        lr = cfg.lr_at(step, total_steps, steps_per_epoch);
        model.set_sgd(ctx, SgdConfig { lr, ..sgd });

        let mut ops: Vec<&Dispatch> = model.forward_ops();
        ops.extend(model.backward_ops());
        let mut is_update = false;
        let mut skip_optimizer = false;
        if let (Net::Masked(m), Method::Snfs) = (&net, cfg.method) {
            ops.push(m.ema_op());
        }
        if let Some(rule) = rule {
            let counts: Option<Vec<LayerCounts>> = match cfg.method {
                // A prune step can only shrink the active set.
                Method::Prune if prune.is_prune_step(step) => Some(
                    plan.iter()
                        .zip(&active)
                        .map(|(p, &a)| {
                            let s = prune.sparsity_at_with_final(step, p.sparsity);
                            LayerCounts {
                                k_keep: active_count(p.total, s).min(a),
                                k_grow: 0,
                            }
                        })
                        .collect(),
                ),
                Method::Rigl | Method::Set | Method::Snfs if update.is_update_step(step) => {
                    let df = update.drop_fraction(step);
                    last_drop_fraction = df;
                    Some(
                        active
                            .iter()
                            .map(|&a| {
                                let d = drop_count(a, df);
                                LayerCounts {
                                    k_keep: a - d,
                                    k_grow: d,
                                }
                            })
                            .collect(),
                    )
                }
                _ => None,
            };
            if let Some(counts) = counts {
                match (&net, &updater) {
                    (Net::Masked(m), Some(up)) => {
                        up.prepare(ctx, step as u32, &counts)?;
                        ops.extend(up.dispatches(rule));
                        ops.push(m.ever_op());
                    }
                    (Net::Sparse(sp), _) => {
                        sp.prepare_update(ctx, step as u32, &counts)?;
                        ops.extend(sp.update_ops(rule)?);
                    }
                    (Net::Masked(_), None) => {
                        return Err(RiglError::invalid("mask update without an updater"))
                    }
                }
                for (a, c) in active.iter_mut().zip(&counts) {
                    *a = c.k_keep + c.k_grow;
                }
                is_update = true;
                mask_updates += 1;
                // The official RigL spends the batch of an update step on the update.
                skip_optimizer = cfg.method == Method::Rigl;
            }
        }
        if !skip_optimizer {
            ops.extend(model.sgd_ops());
        }
        // FLOPs of this step (SPEC §6), counted with the masks in force.
        let (fs, fd) = (f_sparse(&active), f_dense);
        train_flops += cfg.batch as f64
            * match cfg.method {
                Method::Dense => 3.0 * fd,
                Method::Static | Method::Set | Method::Prune => 3.0 * fs,
                Method::Snfs => 2.0 * fs + fd,
                Method::Rigl if is_update => 2.0 * fs + fd,
                Method::Rigl => 3.0 * fs,
            };
        dense_flops_ref += cfg.batch as f64 * 3.0 * fd;

        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("train step"),
                timestamp_writes: None,
            });
            for op in &ops {
                op.encode(&mut pass);
            }
        }
        let idx = ctx.queue.submit([enc.finish()]);
        // Keep one step in flight: wait for the previous one, not this one.
        if let Some(prev) = pending.replace(idx) {
            ctx.wait("training step", prev)?;
        }
        if is_update {
            if let Some(idx) = pending.take() {
                ctx.wait("mask update", idx)?;
                last_changes = match (&net, &updater) {
                    (Net::Sparse(sp), _) => sp.read_new_connections(ctx)?.iter().sum(),
                    (Net::Masked(_), Some(up)) => up.read_new_connections(ctx)?.iter().sum(),
                    (Net::Masked(_), None) => 0,
                };
            }
        }
        train_time += t0.elapsed().as_secs_f64();
        window.1 += info.len as u64;
        progress.step(step + 1);

        let end_of_epoch = (step + 1) % steps_per_epoch == 0;
        if (step + 1) % cfg.log_every == 0 || end_of_epoch {
            if let Some(idx) = pending.take() {
                ctx.wait("training step", idx)?;
            }
            let (loss_sum, correct) = model.read_sums(ctx)?;
            model.reset_sums(ctx)?;
            let samples = window.1.max(1) as f64;
            let loss = loss_sum / samples;
            if !loss.is_finite() {
                return Err(RiglError::Gpu {
                    what: format!("training step {}", step + 1),
                    message: format!(
                        "the training loss is not finite ({loss}); lower the learning rate"
                    ),
                });
            }
            epoch_loss.0 += loss_sum;
            epoch_loss.1 += samples as u64;
            let line = MetricsLine {
                kind: "train",
                step: step + 1,
                epoch: (step + 1) as f64 / steps_per_epoch as f64,
                loss,
                accuracy: correct / samples,
                lr,
                drop_fraction: last_drop_fraction,
                mask_changes: last_changes,
                samples_per_sec: window.1 as f64 / window.0.elapsed().as_secs_f64(),
                train_flops_vs_dense: train_flops / dense_flops_ref,
            };
            progress.line(&line);
            if let Some(m) = metrics.as_mut() {
                m.write(&line)?;
            }
            window = (Instant::now(), 0);
        }
        if end_of_epoch {
            final_train_loss = epoch_loss.0 / epoch_loss.1.max(1) as f64;
            epoch_loss = (0.0, 0);
            last_eval = evaluate(ctx, model, test)?;
            let line = MetricsLine {
                kind: "eval",
                step: step + 1,
                epoch: ((step + 1) / steps_per_epoch) as f64,
                loss: last_eval.0,
                accuracy: last_eval.1,
                lr,
                drop_fraction: last_drop_fraction,
                mask_changes: last_changes,
                samples_per_sec: 0.0,
                train_flops_vs_dense: train_flops / dense_flops_ref,
            };
            progress.line(&line);
            if let Some(m) = metrics.as_mut() {
                m.write(&line)?;
            }
            model.reset_sums(ctx)?;
            window = (Instant::now(), 0);
        }
    }
    progress.finish();

    let final_active: Vec<usize> = model
        .read_masks(ctx)?
        .iter()
        .map(|m| count_active(m))
        .collect();
    let ever_active: usize = match &net {
        Net::Masked(m) => m
            .read_layers(ctx, &m.ever)?
            .iter()
            .map(|e| count_active(e))
            .sum(),
        Net::Sparse(sp) => sp.ever_active(ctx)?.iter().sum(),
    };
    let total: usize = totals.iter().sum();
    let layers: Vec<LayerReport> = plan
        .iter()
        .zip(&final_active)
        .map(|(p, &a)| LayerReport {
            name: p.name.clone(),
            shape: p.shape.clone(),
            sparsity: p.sparsity,
            actual_sparsity: 1.0 - a as f64 / p.total as f64,
            active: a,
            total: p.total,
        })
        .collect();
    let density = final_active.iter().sum::<usize>() as f64 / total as f64;
    let summary = TrainSummary {
        method: cfg.method.as_str().to_string(),
        test_accuracy: last_eval.1,
        test_loss: last_eval.0,
        final_train_loss,
        epochs: cfg.epochs,
        steps: total_steps,
        samples_per_sec: (total_steps * cfg.batch as u64) as f64 / train_time.max(1e-9),
        seconds: t_start.elapsed().as_secs_f64(),
        density,
        train_flops_vs_dense: train_flops / dense_flops_ref,
        inference_flops_vs_dense: f_sparse(&final_active) / f_dense,
        itop_rate: ever_active as f64 / total as f64,
        mask_updates,
        adapter: ctx.info.name.clone(),
        layers,
        run_dir: run_dir.map(|d| d.display().to_string()),
        kernels: Decision {
            kernels: model.kernels(),
            ..decision
        },
        gpu_memory: GpuMemory::new(model.memory(), total),
    };
    if let Some(dir) = run_dir {
        model_file::save(ctx, model, cfg, &dir.join("model.safetensors"))?;
        let json = serde_json::to_string_pretty(&summary)
            .map_err(|e| RiglError::invalid(format!("summary to JSON: {e}")))?;
        write_file(&dir.join("summary.json"), json.as_bytes())?;
    }
    Ok(summary)
}

/// Test loss and accuracy of the model over a whole dataset (partial last batch included).
pub fn evaluate(ctx: &GpuContext, model: &dyn Network, data: &Dataset) -> Result<(f64, f64)> {
    let b = model.config().batch;
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

struct MetricsWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl MetricsWriter {
    fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|source| RiglError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(MetricsWriter {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, line: &MetricsLine) -> Result<()> {
        use std::io::Write;
        let io = |source| RiglError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let json = serde_json::to_string(line)
            .map_err(|e| RiglError::invalid(format!("metrics to JSON: {e}")))?;
        writeln!(self.file, "{json}").map_err(io)?;
        self.file.flush().map_err(|source| RiglError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}

//! The trainer: data, model, sparse schedule and optimizer wired into one step loop, with metrics,
//! FLOPs accounting, the ITOP rate, checkpoints with exact resume, and the final model file.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod kernels;
pub mod model_file;
mod net;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::data::{Batcher, Dataset};
use crate::error::{Result, RiglError};
use crate::gpu::ops::{Dispatch, SgdConfig};
use crate::gpu::{gemm, GemmVariant, GpuContext};
use crate::nn::choice::{self, Decision};
use crate::nn::mlp::layer_names;
use crate::nn::model::RunMode;
use crate::nn::{MemoryReport, Network};
use crate::sparse::init::count_active;
use crate::sparse::schedule::drop_count;
use crate::sparse::update::LayerCounts;
use crate::sparse::{
    active_count, layer_sparsities, DistributionConfig, LayerKind, LayerShape, LayerSpec, Method,
    PruneSchedule, UpdateSchedule,
};

pub use checkpoint::{NanPolicy, RunOptions};
pub use config::{LrSchedule, TrainConfig};
use kernels::KernelRecord;
use net::{build, Built, Net};
pub use net::{sparse_method_support, SPARSE_CONV_MISSING};

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
    cfg.validate()?;
    if opts.keep_checkpoints == 0 || opts.checkpoint_every == Some(0) {
        return Err(RiglError::invalid(
            "--keep-checkpoints and --checkpoint-every must be at least 1",
        ));
    }
    let resume = opts.resume.as_ref();
    if train.features != test.features || train.classes != test.classes {
        return Err(RiglError::invalid(format!(
            "training set ({} features, {} classes) and test set ({} features, {} classes) differ",
            train.features, train.classes, test.features, test.classes
        )));
    }
    let t_start = Instant::now();
    check_model_fits_data(cfg, train.features, train.classes)?;
    let sizes = cfg.run_sizes(train.features, train.classes)?;
    let layers = weight_layers(cfg, &sizes)?;
    let layer_names_all = cfg.layout(&sizes)?.names();
    let plan = plan_layers(cfg, &sizes)?;

    let mut batcher = Batcher::for_training(train.n, cfg.batch, cfg.seed)?;
    if let Some(a) = cfg.augmentation()? {
        batcher = batcher.with_augment(a)?;
    }
    let steps_per_epoch = batcher.batches_per_epoch() as u64;
    if steps_per_epoch == 0 {
        return Err(RiglError::invalid(format!(
            "the training set has {} samples, fewer than one batch of {}",
            train.n, cfg.batch
        )));
    }
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    if let Some(ck) = resume {
        checkpoint::compare(ck, cfg, &sizes, steps_per_epoch)?;
    }
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
    let sgd = cfg.sgd();
    // A resumed run uses the kernel choices of the run it continues, a run with
    // `--kernels-from` those of the run it names (every choice is made by timing; another
    // choice sums in another order and the results would differ in the last bits). Otherwise
    // the tuning cache makes the choices, the same for every run on this machine.
    let replay: Option<KernelRecord> = match resume {
        Some(ck) => Some(KernelRecord {
            adapter: ck.trainer.adapter.clone(),
            driver: String::new(),
            backend: String::new(),
            gemm: GemmVariant::parse(&ck.trainer.gemm)?,
            gemm_picks: ck.trainer.gemm_picks.clone(),
            kernels: ck.trainer.kernels.clone(),
            reason: ck.trainer.kernels_reason.clone(),
            layers: ck.trainer.kernels_layers.clone(),
        }),
        None => opts.kernels_from.clone(),
    };
    if let Some(r) = &replay {
        r.pin(ctx);
    }
    // `--kernels` changed on resume: the new setting, with the old GEMM variant.
    let same_kernels = replay
        .as_ref()
        .filter(|_| resume.is_none_or(|ck| ck.config.kernels == cfg.kernels));
    let kernels = match same_kernels {
        Some(r) => choice::KernelChoice::parse(&r.kernels)?,
        None => cfg.kernels,
    };
    let gemm_variant = match &replay {
        Some(r) => r.gemm,
        None => gemm::choose_variant(ctx)?,
    };
    let Built {
        net,
        mut decision,
        rule,
        updater,
        masks,
    } = build(
        ctx,
        cfg,
        &sizes,
        &plan,
        sgd,
        kernels,
        gemm_variant,
        same_kernels.map(|r| r.layers.as_slice()),
    )?;
    if let Some(r) = same_kernels {
        // The decision as the run made it (reason and timings), not as the forced choice reads.
        decision.reason = r.reason.clone();
        decision.layers = r.layers.clone();
    }
    let record = KernelRecord::of(ctx, gemm_variant, &decision);
    let model = net.net();
    let totals: Vec<usize> = plan.iter().map(|p| p.total).collect();
    let mut active: Vec<usize> = masks.iter().map(|m| count_active(m)).collect();
    drop(masks);
    if let Some(ck) = resume {
        model.load_state(ctx, &ck.model)?;
        active = ck.trainer.active.clone();
        let in_masks: Vec<usize> = ck.model.masks.iter().map(|m| count_active(m)).collect();
        if in_masks != active {
            return Err(RiglError::BadFile {
                path: ck.path.display().to_string(),
                message: format!(
                    "the masks hold {in_masks:?} active weights, the trainer state says {active:?}"
                ),
            });
        }
    }

    // FLOPs per sample: a multiply-add is 2 FLOPs (SPEC §6), a convolution's weight used at
    // every output position (SPEC §8; pooling, batch norm and activations left out).
    let positions: Vec<f64> = layers.iter().map(|l| l.positions() as f64).collect();
    let f_dense: f64 = totals
        .iter()
        .zip(&positions)
        .map(|(&n, &p)| 2.0 * n as f64 * p)
        .sum();
    let f_sparse = |active: &[usize]| -> f64 {
        active
            .iter()
            .zip(&positions)
            .map(|(&n, &p)| 2.0 * n as f64 * p)
            .sum()
    };
    let mut train_flops = 0.0f64;
    let mut dense_flops_ref = 0.0f64;

    if let Some(dir) = run_dir {
        std::fs::create_dir_all(dir).map_err(|source| RiglError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        write_file(&dir.join("config.toml"), cfg.to_toml()?.as_bytes())?;
        record.write(dir)?;
    }
    let mut metrics = match run_dir {
        Some(dir) => Some(MetricsWriter::open(
            &dir.join("metrics.jsonl"),
            resume.map(|ck| ck.trainer.metrics_bytes),
        )?),
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
    let mut start_step = 0u64;
    let mut nan_skips = 0u64;
    let mut window_start = 0u64;
    let mut last_update_step: Option<u64> = None;
    let mut last_checkpoint: Option<PathBuf> = None;
    let mut wall_before = 0.0f64;
    if let Some(ck) = resume {
        let t = &ck.trainer;
        start_step = t.step;
        batcher.set_cursor(crate::data::Cursor {
            epoch: t.cursor_epoch,
            batch: t.cursor_batch,
        })?;
        last_drop_fraction = t.last_drop_fraction;
        last_changes = t.last_changes;
        mask_updates = t.mask_updates;
        last_update_step = t.last_update_step;
        train_flops = t.train_flops;
        dense_flops_ref = t.dense_flops;
        train_time = t.train_seconds;
        wall_before = t.wall_seconds;
        window.1 = t.window_samples;
        window_start = t.window_start;
        epoch_loss = (t.epoch_loss_sum, t.epoch_loss_samples);
        last_eval = (t.last_eval_loss, t.last_eval_accuracy);
        final_train_loss = t.final_train_loss;
        nan_skips = t.nan_skips;
        last_checkpoint = Some(ck.path.clone());
    }
    // The trainer's state at a step boundary, for a checkpoint.
    macro_rules! trainer_state {
        ($step:expr, $metrics_bytes:expr) => {
            checkpoint::TrainerState {
                step: $step,
                total_steps,
                steps_per_epoch,
                cursor_epoch: batcher.cursor().epoch,
                cursor_batch: batcher.cursor().batch,
                mask_updates,
                last_update_step,
                last_drop_fraction,
                last_changes,
                active: active.clone(),
                train_flops,
                dense_flops: dense_flops_ref,
                window_samples: window.1,
                window_start,
                epoch_loss_sum: epoch_loss.0,
                epoch_loss_samples: epoch_loss.1,
                last_eval_loss: last_eval.0,
                last_eval_accuracy: last_eval.1,
                final_train_loss,
                nan_skips,
                train_seconds: train_time,
                wall_seconds: wall_before + t_start.elapsed().as_secs_f64(),
                metrics_bytes: $metrics_bytes,
                gemm: gemm_variant.as_str().to_string(),
                kernels: decision.kernels.to_string(),
                kernels_reason: decision.reason.clone(),
                kernels_layers: decision.layers.clone(),
                gemm_picks: record.gemm_picks.clone(),
                checkpoint_every: opts.checkpoint_every,
                keep_checkpoints: opts.keep_checkpoints,
                on_nan_skip: opts.on_nan == NanPolicy::Skip,
                adapter: ctx.info.name.clone(),
            }
        };
    }
    if let (Some(dir), None) = (run_dir, resume) {
        // Step 0: a good checkpoint exists before anything can go wrong.
        let state = model.read_state(ctx)?;
        let path = checkpoint::save(
            dir,
            cfg,
            &sizes,
            &trainer_state!(0, 0),
            &state,
            opts.keep_checkpoints,
            opts.stall_checkpoint_write == Some(0),
        )?;
        last_checkpoint = Some(path);
    }
    progress.start(total_steps, steps_per_epoch);
    match resume {
        Some(_) => progress.step(start_step),
        None => model.reset_sums(ctx)?,
    }

    for step in start_step..total_steps {
        let t0 = Instant::now();
        // GPU faults of this step come back as errors naming it, not as panics.
        let oom_scope = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation_scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let info = batcher.next_batch(train, &mut x, &mut labels)?;
        model.set_batch(ctx, &x, &labels)?;
        model.set_mode(ctx, RunMode::Train { step: step as u32 })?;
        lr = cfg.lr_at(step, total_steps, steps_per_epoch);
        model.set_sgd(ctx, SgdConfig { lr, ..sgd });

        // --on-nan skip: run forward and backward alone and look at this batch's loss before
        // anything changes the weights; a non-finite one is taken out of the sums and skipped.
        let mut skipped = false;
        let mut ops: Vec<&Dispatch> = Vec::new();
        if opts.on_nan == NanPolicy::Skip {
            let before = model.read_sums_f32(ctx)?;
            pending = None; // the read waited for every earlier submission
            let mut fb = model.forward_ops();
            fb.extend(model.backward_ops());
            crate::gpu::ops::run(ctx, &format!("training step {}", step + 1), &fb)?;
            let after = model.read_sums_f32(ctx)?;
            if !(after[0].is_finite() && after[1].is_finite()) {
                model.set_sums(ctx, before)?;
                nan_skips += 1;
                skipped = true;
            }
        } else {
            ops = model.forward_ops();
            ops.extend(model.backward_ops());
        }
        let mut is_update = false;
        let mut skip_optimizer = skipped;
        let mut update_ops = Vec::new();
        if let (Some(ema), Method::Snfs, false) = (net.ema_op(), cfg.method, skipped) {
            ops.push(ema);
        }
        if let Some(rule) = rule.filter(|_| !skipped) {
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
                update_ops =
                    net::update_ops(ctx, &net, updater.as_ref(), step as u32, &counts, rule)?;
                for (a, c) in active.iter_mut().zip(&counts) {
                    *a = c.k_keep + c.k_grow;
                }
                is_update = true;
                mask_updates += 1;
                last_update_step = Some(step);
                // The official RigL spends the batch of an update step on the update.
                skip_optimizer = cfg.method == Method::Rigl;
            }
        }
        // As the official code: the optimizer step (SET, SNFS, prune) comes before the mask
        // update, which then drops by the stepped weights and leaves new connections at 0.
        if !skip_optimizer {
            ops.extend(model.sgd_ops());
        }
        ops.extend(update_ops);
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
        crate::gpu::ops::encode_ops(&mut enc, "train step", &ops);
        let idx = ctx.queue.submit([enc.finish()]);
        let validation = pollster::block_on(validation_scope.pop());
        let oom = pollster::block_on(oom_scope.pop());
        if let Some(err) = validation.or(oom) {
            return Err(RiglError::Gpu {
                what: format!("running training step {}", step + 1),
                message: err.to_string(),
            });
        }
        // Keep one step in flight: wait for the previous one, not this one.
        if let Some(prev) = pending.replace(idx) {
            ctx.wait("training step", prev)?;
        }
        if is_update {
            if let Some(idx) = pending.take() {
                ctx.wait("mask update", idx)?;
                last_changes = net.read_new_connections(ctx, updater.as_ref())?;
            }
        }
        train_time += t0.elapsed().as_secs_f64();
        if !skipped {
            window.1 += info.len as u64;
        }
        progress.step(step + 1);

        let end_of_epoch = (step + 1) % steps_per_epoch == 0;
        if (step + 1) % cfg.log_every == 0 || end_of_epoch {
            if let Some(idx) = pending.take() {
                ctx.wait("training step", idx)?;
            }
            let (loss_sum, correct) = model.read_sums(ctx)?;
            model.reset_sums(ctx)?;
            // A window of skipped batches only has no loss (NaN, written as null).
            let samples = window.1 as f64;
            let loss = loss_sum / samples;
            if window.1 > 0 && !loss.is_finite() {
                return Err(non_finite_error(
                    model.read_state(ctx),
                    &layer_names_all,
                    step + 1,
                    format!(
                        "the training loss of steps {}..={} is {loss}",
                        window_start + 1,
                        step + 1
                    ),
                    last_checkpoint.as_deref(),
                ));
            }
            epoch_loss.0 += loss_sum;
            epoch_loss.1 += window.1;
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
                nan_skips,
            };
            progress.line(&line);
            if let Some(m) = metrics.as_mut() {
                m.write(&line)?;
            }
            window = (Instant::now(), 0);
            window_start = step + 1;
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
                nan_skips,
            };
            progress.line(&line);
            if let Some(m) = metrics.as_mut() {
                m.write(&line)?;
            }
            model.reset_sums(ctx)?;
            window = (Instant::now(), 0);
            window_start = step + 1;
        }

        // Checkpoint at a step boundary, after the GPU finished the step.
        let done = step + 1;
        let stop = opts.stop_requested() || opts.stop_after_steps == Some(done);
        let due = end_of_epoch || opts.checkpoint_every.is_some_and(|n| done % n == 0);
        let mut written = None;
        if let Some(dir) = run_dir.filter(|_| due || stop) {
            if let Some(idx) = pending.take() {
                ctx.wait("training step", idx)?;
            }
            let state = ctx.scoped(
                &format!("reading the model state back for the checkpoint of step {done}"),
                || model.read_state(ctx),
            )?;
            let mut bad = state.non_finite(&layer_names_all);
            if !state.loss_sums.iter().all(|v| v.is_finite()) {
                bad.insert(
                    0,
                    format!(
                        "the training loss of steps {}..={done} is {}",
                        window_start + 1,
                        state.loss_sums[0]
                    ),
                );
            }
            if !bad.is_empty() {
                return Err(non_finite_message(done, &bad, last_checkpoint.as_deref()));
            }
            let bytes = match metrics.as_mut() {
                Some(m) => m.sync()?,
                None => 0,
            };
            let path = checkpoint::save(
                dir,
                cfg,
                &sizes,
                &trainer_state!(done, bytes),
                &state,
                opts.keep_checkpoints,
                opts.stall_checkpoint_write == Some(done),
            )?;
            written = Some(path.clone());
            last_checkpoint = Some(path);
        }
        if stop {
            progress.finish();
            if let Some(idx) = pending.take() {
                ctx.wait("training step", idx)?;
            }
            return Ok(RunEnd::Stopped {
                step: done,
                checkpoint: written,
            });
        }
    }
    progress.finish();

    let final_active: Vec<usize> = model
        .read_masks(ctx)?
        .iter()
        .map(|m| count_active(m))
        .collect();
    let ever_active = net.ever_active(ctx)?;
    let total: usize = totals.iter().sum();
    // Dead hidden units: the MLP's (a model of layers reports none).
    let dead = match &net {
        Net::Model(_) => Vec::new(),
        _ => crate::cpu::mlp::dead_units(
            &sizes,
            &model.read_weights(ctx)?,
            &model.read_masks(ctx)?,
            &model.read_biases(ctx)?,
            &test.images,
            test.n,
        ),
    };
    let layers: Vec<LayerReport> = plan
        .iter()
        .zip(&final_active)
        .enumerate()
        .map(|(l, (p, &a))| LayerReport {
            name: p.name.clone(),
            shape: p.shape.clone(),
            sparsity: p.sparsity,
            actual_sparsity: 1.0 - a as f64 / p.total as f64,
            active: a,
            total: p.total,
            dead_units: dead.get(l).copied(),
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
        seconds: wall_before + t_start.elapsed().as_secs_f64(),
        density,
        train_flops_vs_dense: train_flops / dense_flops_ref,
        inference_flops_vs_dense: f_sparse(&final_active) / f_dense,
        itop_rate: ever_active as f64 / total as f64,
        mask_updates,
        nan_skips,
        adapter: ctx.info.name.clone(),
        layers,
        run_dir: run_dir.map(|d| d.display().to_string()),
        kernels: Decision {
            kernels: model.kernels(),
            ..decision
        },
        gpu_memory: GpuMemory::new(ctx, model.memory(), total),
    };
    if let Some(dir) = run_dir {
        model_file::save(ctx, model, cfg, &sizes, &dir.join("model.safetensors"))?;
        let json = serde_json::to_string_pretty(&summary)
            .map_err(|e| RiglError::invalid(format!("summary to JSON: {e}")))?;
        write_file(&dir.join("summary.json"), json.as_bytes())?;
    }
    Ok(RunEnd::Finished(Box::new(summary)))
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

struct MetricsWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// Bytes in the file.
    bytes: u64,
}

impl MetricsWriter {
    /// A new file, or (resuming) the existing one cut back to `resume_at` bytes and appended to.
    fn open(path: &Path, resume_at: Option<u64>) -> Result<Self> {
        let io = |source| RiglError::Io {
            path: path.display().to_string(),
            source,
        };
        let (file, bytes) = match resume_at {
            None => (std::fs::File::create(path).map_err(io)?, 0),
            Some(at) => {
                let kept = checkpoint::truncate_metrics(path, at)?;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io)?;
                (f, kept)
            }
        };
        Ok(MetricsWriter {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// Flushes and syncs the file (before a checkpoint records its length); returns the length.
    fn sync(&mut self) -> Result<u64> {
        use std::io::Write;
        let io = |source| RiglError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_data().map_err(io)?;
        Ok(self.bytes)
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
        self.bytes += json.len() as u64 + 1;
        self.file.flush().map_err(|source| RiglError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }
}

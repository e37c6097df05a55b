//! `rigl bench step`: the GPU time of one training step of a model, and of one mask-update step,
//! on the engine's own kernels (the same model the trainer builds).

use serde::Serialize;

use crate::error::{Result, RiglError};
use crate::gpu::ops::Dispatch;
use crate::gpu::profile;
use crate::gpu::GpuContext;
use crate::nn::choice::Decision;
use crate::sparse::schedule::drop_count;
use crate::sparse::update::{GrowRule, LayerCounts};
use crate::sparse::Method;

use super::net::{build, Built, Net};
use super::{plan_layers, GpuMemory, TrainConfig};

/// What `rigl bench step` reports.
#[derive(Clone, Debug, Serialize)]
pub struct StepBench {
    /// Method.
    pub method: String,
    /// Layer widths, input first.
    pub sizes: Vec<usize>,
    /// Samples per step.
    pub batch: usize,
    /// Global target sparsity.
    pub sparsity: f64,
    /// Kernels the model runs on and why.
    pub kernels: Decision,
    /// Median GPU time of a training step (forward, backward, optimizer), ms.
    pub step_ms: f64,
    /// Median GPU time of a mask-update step (forward, backward, the update, and the optimizer
    /// unless the method skips it there), ms; absent for methods without updates.
    pub update_step_ms: Option<f64>,
    /// batch / step time.
    pub samples_per_sec: f64,
    /// Dispatches in a training step.
    pub step_dispatches: usize,
    /// GPU memory of the model against the dense one.
    pub gpu_memory: GpuMemory,
    /// `timestamp` or `wall`.
    pub timing: &'static str,
    /// Timed repetitions.
    pub reps: usize,
    /// Adapter.
    pub adapter: String,
    /// Per dispatch of a training step (name, median ms), when asked for.
    pub profile: Vec<(String, f64)>,
    /// Per dispatch of the update step after its forward and backward (name, median ms), when
    /// asked for. Each is timed alone, repeated on the state the update left, so the figures show
    /// where the time goes rather than add up exactly.
    pub update_profile: Vec<(String, f64)>,
}

/// The model of a [`TrainConfig`] on random data, built once, running training steps on demand
/// (for criterion benches and other repeated timings).
pub struct StepRunner {
    built: Built,
    method: Method,
    sizes: Vec<usize>,
    total_weights: usize,
}

impl StepRunner {
    /// Builds the model `cfg` describes for inputs of `features` and `classes` and loads a
    /// random batch.
    pub fn new(
        ctx: &GpuContext,
        cfg: &TrainConfig,
        features: usize,
        classes: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        if features == 0 || classes < 2 {
            return Err(RiglError::invalid(format!(
                "need at least 1 feature and 2 classes, got {features} and {classes}"
            )));
        }
        let sizes = cfg.sizes(features, classes);
        let plan = plan_layers(cfg, &sizes)?;
        let built = build(
            ctx,
            cfg,
            &sizes,
            &plan,
            cfg.sgd(),
            cfg.kernels,
            crate::gpu::gemm::choose_variant(ctx)?,
            None,
        )?;
        let b = cfg.batch;
        let x: Vec<f32> = (0..features * b)
            .map(|i| ((i as u32).wrapping_mul(2654435761) >> 16) as f32 / 65536.0)
            .collect();
        let labels: Vec<u32> = (0..b as u32).map(|i| i % classes as u32).collect();
        built.net.net().set_batch(ctx, &x, &labels)?;
        Ok(StepRunner {
            built,
            method: cfg.method,
            sizes,
            total_weights: plan.iter().map(|p| p.total).sum(),
        })
    }

    /// The dispatches of a training step, without the optimizer.
    fn forward_backward(&self) -> Vec<&Dispatch> {
        let model = self.built.net.net();
        let mut ops: Vec<&Dispatch> = model.forward_ops();
        ops.extend(model.backward_ops());
        if let (Net::Masked(m), Method::Snfs) = (&self.built.net, self.method) {
            ops.push(m.ema_op());
        }
        ops
    }

    /// One training step (forward, backward, optimizer), submitted and waited for.
    pub fn step(&self, ctx: &GpuContext) -> Result<()> {
        let mut ops = self.forward_backward();
        ops.extend(self.built.net.net().sgd_ops());
        crate::gpu::ops::run(ctx, "training step", &ops)
    }
}

/// Times a training step and a mask-update step of the model `cfg` describes for inputs of
/// `features` and `classes` (random data; the drop fraction of an update is `cfg.alpha`).
pub fn bench_step(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    features: usize,
    classes: usize,
    warmup: usize,
    reps: usize,
    per_dispatch: bool,
) -> Result<StepBench> {
    let runner = StepRunner::new(ctx, cfg, features, classes)?;
    let Built {
        net,
        decision,
        rule,
        updater,
        masks,
    } = &runner.built;
    let model = net.net();
    let mut step = runner.forward_backward();
    let fwd_bwd = step.clone();
    step.extend(model.sgd_ops());
    // Wall clock for every model (submission included), so that dense, masked and sparse steps
    // are measured alike; lavapipe's timestamps are unreliable around texture reads.
    let (step_ms, timing) = profile::time_ops(ctx, &step, warmup, reps, true)?;
    let mut per_op = Vec::new();
    if per_dispatch {
        for op in &step {
            let (ms, _) = profile::time_ops(ctx, &[*op], warmup.min(1), reps, true)?;
            per_op.push((op.name.clone(), ms));
        }
    }

    let active: Vec<usize> = masks
        .iter()
        .map(|m| crate::sparse::init::count_active(m))
        .collect();
    let mut update_profile = Vec::new();
    let update_step_ms = match *rule {
        None => None,
        Some(rule) => {
            let counts: Vec<LayerCounts> = active
                .iter()
                .map(|&a| {
                    let d = drop_count(a, cfg.alpha);
                    LayerCounts {
                        k_keep: a - d,
                        k_grow: if rule == GrowRule::None { 0 } else { d },
                    }
                })
                .collect();
            let mut ops = fwd_bwd.clone();
            // As training orders them: the optimizer step (not RigL's) before the update.
            if cfg.method != Method::Rigl {
                ops.extend(model.sgd_ops());
            }
            let first_update_op = ops.len();
            ops.extend(super::net::update_ops(
                ctx,
                net,
                updater.as_ref(),
                0,
                &counts,
                rule,
            )?);
            let ms = profile::time_ops(ctx, &ops, warmup, reps, true)?.0;
            if per_dispatch {
                for op in &ops[first_update_op..] {
                    let (t, _) = profile::time_ops(ctx, &[*op], warmup.min(1), reps, true)?;
                    update_profile.push((op.name.clone(), t));
                }
            }
            Some(ms)
        }
    };
    let b = cfg.batch;
    Ok(StepBench {
        method: cfg.method.as_str().to_string(),
        sizes: runner.sizes.clone(),
        batch: b,
        sparsity: if cfg.method == Method::Dense {
            0.0
        } else {
            cfg.sparsity
        },
        kernels: Decision {
            kernels: model.kernels(),
            ..decision.clone()
        },
        step_ms,
        update_step_ms,
        samples_per_sec: b as f64 / (step_ms / 1e3),
        step_dispatches: step.len(),
        gpu_memory: GpuMemory::new(ctx, model.memory(), runner.total_weights),
        timing: timing.as_str(),
        reps: reps.max(1),
        adapter: ctx.info.name.clone(),
        profile: per_op,
        update_profile,
    })
}

/// What `rigl bench step --model` reports for a model of layers.
#[derive(Clone, Debug, Serialize)]
pub struct ModelStepBench {
    /// Model name.
    pub model: String,
    /// Samples per step.
    pub batch: usize,
    /// Global target sparsity (ERK) of the masks.
    pub sparsity: f64,
    /// Kernels: `masked` (masked-dense convolutions and GEMMs) or `sparse` (weight tensors
    /// compressed, each on the products the choice gave it).
    pub kernels: &'static str,
    /// Why: the trainer's kernel decision for this model and batch.
    pub reason: String,
    /// GPU bytes of the weights, gradients, momentum and masks or indexes (the run summary's
    /// figure).
    pub model_bytes: u64,
    /// The same for the dense model: 12 bytes (weight, gradient, momentum) per weight.
    pub dense_bytes: u64,
    /// Every buffer and texture rigl holds on the GPU (activations and scratch included).
    pub held_bytes: u64,
    /// Median time of a training step (forward, loss, backward, SGD), ms.
    pub step_ms: f64,
    /// batch / step time.
    pub samples_per_sec: f64,
    /// Dispatches in a step.
    pub step_dispatches: usize,
    /// Dense forward FLOPs per sample (2 per multiply-add, SPEC §8).
    pub dense_forward_flops: f64,
    /// `timestamp` or `wall`.
    pub timing: &'static str,
    /// Timed repetitions.
    pub reps: usize,
    /// Adapter.
    pub adapter: String,
    /// Per dispatch (name, ms, each timed alone once), when asked for.
    pub profile: Vec<(String, f64)>,
}

/// Times a training step of a model of layers on the kernels the trainer would choose with
/// `kernels` (`method_ok`: whether the method runs on the compressed path, and why not), its
/// masks drawn at `sparsity` with `distribution` (exact active counts per param) and He-normal
/// weights.
#[allow(clippy::too_many_arguments)]
pub fn bench_model_step(
    ctx: &GpuContext,
    spec: &crate::nn::spec::ModelSpec,
    batch: usize,
    sparsity: f64,
    distribution: crate::sparse::DistributionConfig,
    kernels: crate::nn::choice::KernelChoice,
    method_ok: std::result::Result<(), String>,
    warmup: usize,
    reps: usize,
    with_profile: bool,
) -> Result<ModelStepBench> {
    use crate::cpu::model::HostModel;
    use crate::nn::model::{GpuModel, RunMode};
    use crate::sparse::init::{init_layer, WeightInit};

    let layers = spec.weight_layers()?;
    let shapes: Vec<crate::sparse::LayerShape> = layers.iter().map(|l| l.layer.clone()).collect();
    let plan = crate::sparse::layer_sparsities(&shapes, &distribution)?;
    let mut masks = Vec::new();
    let mut init = |i: usize, shape: &[usize]| -> Vec<f32> {
        match init_layer(0, i as u64, shape, plan[i].active, WeightInit::HeNormal) {
            Ok(l) => {
                masks.push(l.mask);
                l.weights
            }
            Err(_) => vec![0.0; shape.iter().product()],
        }
    };
    let mut host = HostModel::new(spec.clone(), &mut init)?;
    if masks.len() != host.weights.len() {
        return Err(RiglError::invalid("could not draw every mask"));
    }
    for (w, m) in host.weights.iter_mut().zip(masks) {
        w.mask = m;
    }
    let shapes = crate::nn::choice::ParamShape::of_model(&host, batch)?;
    let decision = crate::nn::choice::decide_model(ctx, kernels, &shapes, batch, method_ok)?;
    let compressed = decision.kernels == "sparse";
    let opts = crate::nn::model::ModelOptions {
        compressed_conv: compressed,
        compressed_linear: compressed,
        ..crate::nn::model::ModelOptions::plain(ctx)?
    };
    let model = GpuModel::with_products(
        ctx,
        &host,
        batch,
        0,
        opts,
        &decision.dense_products(shapes.len()),
    )?;
    let input = spec.input_shape();
    let x: Vec<f32> = (0..input.len() * batch)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    model.input.write_f32(ctx, &x)?;
    model.set_mode(ctx, RunMode::Train { step: 1 })?;
    let sgd = model.sgd_ops(
        ctx,
        crate::gpu::ops::SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: true,
        },
    )?;
    let mut ops = model.step_ops();
    ops.extend(sgd.iter());
    let (step_ms, timing) = profile::time_ops(ctx, &ops, warmup, reps, true)?;
    let mut per_op = Vec::new();
    if with_profile {
        for op in &ops {
            let (ms, _) = profile::time_ops(ctx, &[op], 0, 3, true)?;
            per_op.push((op.name.clone(), ms));
            // The parts of a chained launch (a convolution's gathers and products), each alone.
            for b in op.before_launches() {
                let (ms, _) = profile::time_ops(ctx, &[b], 0, 3, true)?;
                per_op.push((format!("  part: {}", b.name), ms));
            }
        }
    }
    let dense: f64 = layers
        .iter()
        .map(|l| 2.0 * l.layer.shape.iter().product::<usize>() as f64 * l.positions() as f64)
        .sum();
    Ok(ModelStepBench {
        model: spec.name.clone(),
        batch,
        sparsity,
        kernels: if compressed { "sparse" } else { "masked" },
        reason: decision.reason,
        model_bytes: model.memory().weights_grads_momentum,
        dense_bytes: 12 * host.weights.iter().map(|w| w.w.len() as u64).sum::<u64>(),
        held_bytes: ctx.gpu_bytes_held(),
        step_ms,
        samples_per_sec: batch as f64 / (step_ms / 1000.0),
        step_dispatches: ops.len(),
        dense_forward_flops: dense,
        timing: timing.as_str(),
        reps: reps.max(1),
        adapter: ctx.info.name.clone(),
        profile: per_op,
    })
}

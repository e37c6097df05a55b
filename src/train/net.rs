//! Building the model of a run: initial weights and masks, the kernel choice, the network on the
//! GPU and its mask updater. Shared by the trainer and `rigl bench step`.

use crate::cpu::model::HostModel;
use crate::error::{Result, RiglError};
use crate::gpu::buffer::f32_bytes;
use crate::gpu::ops::{Dispatch, SgdConfig};
use crate::gpu::{GemmVariant, GpuContext, Tensor};
use crate::nn::choice::{self, Decision, KernelChoice};
use crate::nn::model::{GpuModel, ModelOptions};
use crate::nn::spec::ModelSpec;
use crate::nn::{Mlp, MlpConfig, Network, SparseMlp};
use crate::sparse::init::{count_active, init_layer};
use crate::sparse::plan::shape_text;
use crate::sparse::update::{GrowRule, LayerCounts, MaskUpdater};
use crate::sparse::{LayerSparsity, Method};

use super::TrainConfig;

/// The model a run trains: the MLP's masked-dense or compressed sparse layers, or a model of
/// layers (masked-dense).
pub(crate) enum Net {
    Masked(Box<Mlp>),
    Sparse(Box<SparseMlp>),
    Model(Box<GpuModel>),
}

impl Net {
    pub(crate) fn net(&self) -> &dyn Network {
        match self {
            Net::Masked(m) => m.as_ref(),
            Net::Sparse(s) => s.as_ref(),
            Net::Model(m) => m.as_ref(),
        }
    }

    /// The SNFS gradient EMA update of a masked-dense model.
    pub(crate) fn ema_op(&self) -> Option<&Dispatch> {
        match self {
            Net::Masked(m) => Some(m.ema_op()),
            Net::Model(m) => Some(m.ema_op()),
            Net::Sparse(_) => None,
        }
    }

    /// The gradients the optimizer reads, as a data-parallel run averages them over the ranks:
    /// the compressed model's slot gradients (its active weights only) and biases; the masked
    /// and dense models' dense weight gradients, biases, and batch-norm gamma and beta; a model
    /// of layers' flat dense gradients, the slot gradients of its compressed tensors, biases,
    /// and batch-norm gamma and beta.
    pub(crate) fn grad_tensors(&self) -> Vec<&Tensor> {
        match self {
            Net::Masked(m) => vec![&m.grad, &m.bgrad],
            Net::Sparse(s) => vec![&s.grad, &s.bgrad],
            Net::Model(m) => {
                let mut v = vec![&m.grad];
                v.extend(m.slots.as_ref().map(|s| &s.grad));
                v.extend(
                    m.params
                        .iter()
                        .filter_map(|p| p.bias.as_ref().map(|b| &b[1])),
                );
                v.extend(m.norms.iter().map(|n| &n.grad));
                v
            }
        }
    }

    /// New connections per layer made by the last mask update.
    pub(crate) fn read_new_connections(
        &self,
        ctx: &GpuContext,
        updater: Option<&MaskUpdater>,
    ) -> Result<usize> {
        let flat = match updater {
            Some(up) => up.read_new_connections(ctx)?.iter().sum(),
            None => 0,
        };
        Ok(match self {
            Net::Sparse(sp) => sp.read_new_connections(ctx)?.iter().sum(),
            Net::Model(m) if m.has_compressed() => flat + m.compressed_new_connections(ctx)?,
            _ => flat,
        })
    }

    /// Weights that were active at some point of the run (ITOP).
    pub(crate) fn ever_active(&self, ctx: &GpuContext) -> Result<usize> {
        Ok(match self {
            Net::Masked(m) => m
                .read_layers(ctx, &m.ever)?
                .iter()
                .map(|e| count_active(e))
                .sum(),
            Net::Model(m) => m
                .read_params(ctx, crate::nn::model::ParamTensor::Ever)?
                .iter()
                .map(|e| count_active(e))
                .sum(),
            Net::Sparse(sp) => sp.ever_active(ctx)?.iter().sum(),
        })
    }
}

/// Writes the per-layer counts of a mask update at `step` and returns its dispatches: the masked
/// model's updater followed by its ever-active record, or the compressed model's own update; a
/// model of layers with compressed kernels runs the updater over its flat params, then its
/// compressed kernels' update. The trainer and `rigl bench step` build update steps with it.
pub(crate) fn update_ops<'a>(
    ctx: &GpuContext,
    net: &'a Net,
    updater: Option<&'a MaskUpdater>,
    step: u32,
    counts: &[LayerCounts],
    rule: GrowRule,
) -> Result<Vec<&'a Dispatch>> {
    match (net, updater) {
        (Net::Masked(m), Some(up)) => {
            up.prepare(ctx, step, counts)?;
            let mut v = up.dispatches(rule);
            v.push(m.ever_op());
            Ok(v)
        }
        (Net::Model(m), up) if m.has_compressed() => {
            let mut v = Vec::new();
            if let Some(up) = up {
                up.prepare(ctx, step, &m.flat_counts(counts)?)?;
                v = up.dispatches(rule);
                v.push(m.ever_op());
            }
            m.prepare_compressed(ctx, step, counts)?;
            v.extend(m.compressed_update_ops(rule)?);
            Ok(v)
        }
        (Net::Model(m), Some(up)) => {
            up.prepare(ctx, step, counts)?;
            let mut v = up.dispatches(rule);
            v.push(m.ever_op());
            Ok(v)
        }
        (Net::Sparse(sp), _) => {
            sp.prepare_update(ctx, step, counts)?;
            sp.update_ops(rule)
        }
        (Net::Masked(_) | Net::Model(_), None) => {
            Err(RiglError::invalid("mask update without an updater"))
        }
    }
}

/// Why the compressed sparse path cannot run `method`, if it cannot.
pub fn sparse_method_support(method: Method) -> std::result::Result<(), String> {
    match method {
        Method::Static | Method::Set | Method::Rigl => Ok(()),
        Method::Dense => Err("dense training has no sparse layers".into()),
        Method::Snfs => Err("SNFS keeps a dense gradient average of every weight".into()),
        Method::Prune => Err("gradual pruning changes the active counts during the run".into()),
    }
}

/// A built model and what drives its mask updates.
pub(crate) struct Built {
    pub net: Net,
    pub decision: Decision,
    /// How the method grows (None: no mask updates).
    pub rule: Option<GrowRule>,
    /// The masked path's updater (the sparse model carries its own).
    pub updater: Option<MaskUpdater>,
    /// Initial masks.
    pub masks: Vec<Vec<f32>>,
}

/// Checks, before anything is allocated on the host, that every layer fits the device's
/// storage-binding limit: its dense weight matrix (the masked path holds it, the compressed path
/// materialises the dense gradient of that size at update steps) and the batch's activations.
/// A model too large must be a [`RiglError::TooLarge`] naming the layer, not a failed host
/// allocation of the initial weights.
fn check_fits(
    ctx: &GpuContext,
    batch: usize,
    sizes: &[usize],
    plan: &[LayerSparsity],
) -> Result<()> {
    for p in plan {
        let what = format!("layer {} ({}) weights", p.name, shape_text(&p.shape));
        ctx.check_storage_size(&what, f32_bytes(&p.shape))?;
    }
    if let Some(&width) = sizes.iter().max() {
        ctx.check_storage_size(
            &format!("activations of a batch of {batch} at width {width}"),
            f32_bytes(&[batch, width]),
        )?;
    }
    Ok(())
}

/// Initial weights and masks with exact active counts (prune and dense start dense), the kernel
/// choice, and the model loaded on the GPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    sizes: &[usize],
    plan: &[LayerSparsity],
    sgd: SgdConfig,
    kernels: KernelChoice,
    gemm_variant: GemmVariant,
    resumed_layers: Option<&[choice::LayerTiming]>,
) -> Result<Built> {
    if let Some(spec) = cfg.model_spec()? {
        return build_model(
            ctx,
            cfg,
            spec,
            plan,
            sgd,
            kernels,
            gemm_variant,
            resumed_layers,
        );
    }
    check_fits(ctx, cfg.batch, sizes, plan)?;
    let starts_dense = matches!(cfg.method, Method::Dense | Method::Prune);
    let mut weights = Vec::new();
    let mut masks = Vec::new();
    let mut biases = Vec::new();
    for (l, p) in plan.iter().enumerate() {
        let active = if starts_dense { p.total } else { p.active };
        let init = init_layer(cfg.seed, l as u64, &p.shape, active, cfg.init)?;
        weights.push(init.weights);
        masks.push(init.mask);
        biases.push(vec![0.0; sizes[l + 1]]);
    }
    let start_active: Vec<usize> = masks.iter().map(|m| count_active(m)).collect();
    let decision = choice::decide(
        ctx,
        kernels,
        sizes,
        &start_active,
        cfg.batch,
        sparse_method_support(cfg.method),
    )?;
    let mlp_cfg = MlpConfig {
        sizes: sizes.to_vec(),
        batch: cfg.batch,
        masked: !matches!(cfg.method, Method::Dense),
        label_smoothing: cfg.label_smoothing,
        sgd,
        gemm: gemm_variant,
    };
    let net = if decision.kernels == "sparse" {
        // Per layer: the sparse products or dense GEMMs, as measured (on resume, as the run
        // that is continued measured them).
        let n = sizes.len() - 1;
        let dense = match resumed_layers {
            Some(t) => choice::dense_layers(t, n),
            None => decision.dense_layers(n),
        };
        Net::Sparse(Box::new(SparseMlp::with_layer_kernels(
            ctx,
            mlp_cfg,
            &start_active,
            cfg.seed as u32,
            &dense,
        )?))
    } else {
        Net::Masked(Box::new(Mlp::new(ctx, mlp_cfg)?))
    };
    match &net {
        Net::Masked(m) => m.load(ctx, &weights, &masks, &biases)?,
        Net::Sparse(s) => s.load(ctx, &weights, &masks, &biases)?,
        Net::Model(_) => return Err(RiglError::invalid("an MLP built as a model of layers")),
    }
    let rule = grow_rule(cfg.method);
    let updater = match (&net, rule) {
        (Net::Masked(m), Some(_)) => Some(MaskUpdater::new(
            ctx,
            m.placements.clone(),
            &m.w,
            &m.mask,
            &m.mom,
            if cfg.method == Method::Snfs {
                &m.ema
            } else {
                &m.grad
            },
            cfg.seed as u32,
        )?),
        _ => None,
    };
    Ok(Built {
        net,
        decision,
        rule,
        updater,
        masks,
    })
}

/// How `method` grows connections (None: no mask updates).
fn grow_rule(method: Method) -> Option<GrowRule> {
    match method {
        Method::Rigl | Method::Snfs => Some(GrowRule::Score),
        Method::Set => Some(GrowRule::Random),
        Method::Prune => Some(GrowRule::None),
        Method::Dense | Method::Static => None,
    }
}

/// A model of layers: initial weights and masks per weight tensor as the MLP's (`init_layer`
/// with the tensor's index and its own shape, so kernel dims set the fans), biases zero, batch
/// norms at gamma 1, beta 0; on the GPU with the kernels [`choice::decide_model`] picks
/// (per tensor as timed, or as the continued run timed them), its mask updater over the flat
/// buffers (the compressed tensors carry their own).
#[allow(clippy::too_many_arguments)]
fn build_model(
    ctx: &GpuContext,
    cfg: &TrainConfig,
    spec: ModelSpec,
    plan: &[LayerSparsity],
    sgd: SgdConfig,
    kernels: KernelChoice,
    gemm_variant: GemmVariant,
    resumed_layers: Option<&[choice::LayerTiming]>,
) -> Result<Built> {
    if kernels == KernelChoice::Sparse {
        sparse_method_support(cfg.method).map_err(|why| {
            RiglError::invalid(format!(
                "--kernels sparse with model '{}' and --method {}: {why}",
                spec.name,
                cfg.method.as_str()
            ))
        })?;
    }
    for p in plan {
        let what = format!("layer {} ({}) weights", p.name, shape_text(&p.shape));
        ctx.check_storage_size(&what, f32_bytes(&p.shape))?;
    }
    let starts_dense = matches!(cfg.method, Method::Dense | Method::Prune);
    let mut host = HostModel::new(spec, &mut |_, shape| vec![0.0; shape.iter().product()])?;
    if host.weights.len() != plan.len() {
        return Err(RiglError::invalid(
            "the sparsity plan and the model's weight tensors differ",
        ));
    }
    let mut masks = Vec::with_capacity(plan.len());
    for (l, (p, hw)) in plan.iter().zip(host.weights.iter_mut()).enumerate() {
        let active = if starts_dense { p.total } else { p.active };
        let init = init_layer(cfg.seed, l as u64, &p.shape, active, cfg.init)?;
        hw.w = init.weights;
        hw.mask = init.mask.clone();
        masks.push(init.mask);
    }
    let shapes = choice::ParamShape::of_model(&host, cfg.batch)?;
    let decision = choice::decide_model(
        ctx,
        kernels,
        &shapes,
        cfg.batch,
        sparse_method_support(cfg.method),
    )?;
    let compressed = decision.kernels == "sparse";
    // Per tensor: compressed products or dense ones over its slots, as measured (on resume, as
    // the run that is continued measured them).
    let dense_products = match resumed_layers {
        Some(t) => choice::dense_products(t, shapes.len()),
        None => decision.dense_products(shapes.len()),
    };
    let model = GpuModel::with_products(
        ctx,
        &host,
        cfg.batch,
        cfg.seed as u32,
        ModelOptions {
            masked: cfg.method != Method::Dense,
            label_smoothing: cfg.label_smoothing,
            sgd,
            gemm: gemm_variant,
            compressed_conv: compressed,
            compressed_linear: compressed,
        },
        &dense_products,
    )?;
    let rule = grow_rule(cfg.method);
    // Over the flat buffers: every param, or those the compressed kernels leave there.
    let updater = match rule {
        Some(_) if !model.placements.is_empty() => Some(MaskUpdater::new(
            ctx,
            model.placements.clone(),
            &model.w,
            &model.mask,
            &model.mom,
            if cfg.method == Method::Snfs {
                &model.ema
            } else {
                &model.grad
            },
            cfg.seed as u32,
        )?),
        _ => None,
    };
    let decision = Decision {
        kernels: model.kernels(),
        ..decision
    };
    Ok(Built {
        net: Net::Model(Box::new(model)),
        decision,
        rule,
        updater,
        masks,
    })
}

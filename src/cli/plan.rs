//! `rigl plan`: per-layer sparsities, active counts, FLOPs and GPU memory of a model for a
//! method and a distribution, without training.

use clap::Args;
use rigl::sparse::schedule::{default_t_end, DEFAULT_DELTA_T};
use rigl::sparse::{Method, Plan, PlanConfig, PlanLayer, PruneSchedule};

use super::model::{ModelArgs, SparsityArgs};
use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sparsity: SparsityArgs,
    /// Training method: dense, static, set, snfs, rigl or prune.
    #[arg(long, default_value = "rigl")]
    method: String,
    /// Steps between mask updates (ΔT).
    #[arg(long, default_value_t = DEFAULT_DELTA_T)]
    delta_t: u64,
    /// Training steps (mask updates end at 3/4 of them; pruning FLOPs average over them).
    #[arg(long, default_value_t = 6000)]
    steps: u64,
    /// Pruning: first pruning step [default: steps/4].
    #[arg(long)]
    prune_start: Option<u64>,
    /// Pruning: last pruning step, where the target is reached [default: 3*steps/4].
    #[arg(long)]
    prune_end: Option<u64>,
    /// Pruning: steps between pruning steps [default: --delta-t].
    #[arg(long)]
    prune_every: Option<u64>,
    /// Pruning: sparsity at the first pruning step [default: 0].
    #[arg(long)]
    prune_initial: Option<f64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Bytes per f32 or u32 element.
const W: u64 = 4;

/// GPU bytes of one layer under three layouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LayerBytes {
    /// The masked-dense path (`--kernels masked`, and dense training): f32 weights, mask,
    /// momentum and dense gradient for every weight (16 B/weight).
    masked_dense: u64,
    /// The compressed sparse path (`--kernels sparse`): per active weight an f32 value, gradient
    /// and momentum and two u32 index words (flat position, forward order), plus u32 row offsets
    /// over the input and the output rows ([`rigl::sparse::csr::CsrIndex`]).
    csr: u64,
    /// The dense layer itself: f32 weights, gradient and momentum (12 B/weight).
    dense: u64,
}

fn layer_bytes(l: &PlanLayer, method: Method) -> LayerBytes {
    let n = l.total as u64;
    let a = if method == Method::Dense {
        n
    } else {
        l.active as u64
    };
    let outs = l.shape.last().copied().unwrap_or(1) as u64;
    let ins = n / outs.max(1);
    LayerBytes {
        masked_dense: 4 * W * n,
        csr: W * (3 * a + 2 * a + ins + 1 + outs + 1),
        dense: 3 * W * n,
    }
}

/// A byte count for people: B, KiB, MiB or GiB.
fn human(b: u64) -> String {
    let f = b as f64;
    if b < 1024 {
        format!("{b} B")
    } else if f < 1024.0 * 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else if f < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} MiB", f / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", f / (1024.0 * 1024.0 * 1024.0))
    }
}

const BYTES_NOTE: &str = "gpu_bytes: the masked-dense path (f32 weights, mask, momentum and \
dense gradient: 16 B per weight); gpu_bytes_compressed: the compressed sparse path, --kernels \
sparse (f32 value, gradient and momentum plus u32 flat position and forward-order slot per \
active weight: 20 B, and u32 row offsets over input and output rows); gpu_bytes_dense: the dense \
layer's weights, gradient and momentum (12 B per weight). Biases, activations and the scratch \
of mask updates are not counted.";

pub fn run(args: PlanArgs) -> CliResult {
    let layers = args.model.layers()?;
    let dist = args.sparsity.config()?;
    let method =
        Method::parse(&args.method).map_err(|e| CliError::usage(format!("--method: {e}")))?;
    if args.delta_t == 0 {
        return Err(CliError::usage("--delta-t must be at least 1"));
    }
    let prune_flags = args.prune_start.is_some()
        || args.prune_end.is_some()
        || args.prune_every.is_some()
        || args.prune_initial.is_some();
    let prune = if method == Method::Prune {
        let t1 = args.prune_end.unwrap_or_else(|| default_t_end(args.steps));
        let t0 = args.prune_start.unwrap_or((args.steps / 4).min(t1));
        Some(
            PruneSchedule::new(
                args.prune_initial.unwrap_or(0.0),
                dist.sparsity,
                t0,
                t1,
                args.prune_every.unwrap_or(args.delta_t),
            )
            .map_err(|e| CliError::usage(format!("pruning schedule: {e}")))?,
        )
    } else if prune_flags {
        return Err(CliError::usage(
            "--prune-start/--prune-end/--prune-every/--prune-initial apply only to --method prune",
        ));
    } else {
        None
    };
    let cfg = PlanConfig {
        distribution: dist,
        method,
        delta_t: args.delta_t,
        total_steps: args.steps,
        prune,
    };
    let plan = Plan::build(&layers, &cfg)?;
    let bytes: Vec<LayerBytes> = plan.layers.iter().map(|l| layer_bytes(l, method)).collect();
    let sum = bytes.iter().fold(LayerBytes::default(), |a, b| LayerBytes {
        masked_dense: a.masked_dense + b.masked_dense,
        csr: a.csr + b.csr,
        dense: a.dense + b.dense,
    });
    let t_end = default_t_end(args.steps);
    let updates = if method.drops_and_grows() && args.steps > 0 {
        // Update steps t = 0, ΔT, 2ΔT, ... with t <= t_end and t < steps.
        t_end.min(args.steps - 1) / args.delta_t + 1
    } else {
        0
    };

    if args.json {
        let mut v = serde_json::to_value(&plan)?;
        if let Some(ls) = v["layers"].as_array_mut() {
            for (l, b) in ls.iter_mut().zip(&bytes) {
                l["gpu_bytes"] = b.masked_dense.into();
                l["gpu_bytes_compressed"] = b.csr.into();
                l["gpu_bytes_dense"] = b.dense.into();
            }
        }
        v["gpu_bytes"] = sum.masked_dense.into();
        v["gpu_bytes_compressed"] = sum.csr.into();
        v["gpu_bytes_dense"] = sum.dense.into();
        v["gpu_bytes_note"] = BYTES_NOTE.into();
        v["delta_t"] = args.delta_t.into();
        v["steps"] = args.steps.into();
        if method.drops_and_grows() {
            v["t_end"] = t_end.into();
            v["mask_updates"] = updates.into();
        }
        if let Some(p) = prune {
            v["prune"] = serde_json::to_value(p)?;
        }
        println!("{v}");
        return Ok(());
    }

    print!("{}", plan.to_text());
    if method.drops_and_grows() {
        println!(
            "mask updates every {} steps up to step {t_end}: {updates} over {} steps",
            args.delta_t, args.steps
        );
    }
    if let Some(p) = prune {
        println!(
            "pruning from sparsity {} at step {} to the layer targets at step {}, every {} steps, \
             over {} steps",
            p.s_init, p.t0, p.t1, p.every, args.steps
        );
    }
    let name_w = plan
        .layers
        .iter()
        .map(|l| l.name.len())
        .chain([5])
        .max()
        .unwrap_or(5);
    println!("GPU memory (weights, gradients, momentum, mask or index):");
    println!(
        "{:<name_w$}  {:>14}  {:>14}  {:>14}",
        "layer", "masked", "sparse (CSR)", "dense"
    );
    for (l, b) in plan.layers.iter().zip(&bytes) {
        println!(
            "{:<name_w$}  {:>14}  {:>14}  {:>14}",
            l.name,
            human(b.masked_dense),
            human(b.csr),
            human(b.dense)
        );
    }
    println!(
        "{:<name_w$}  {:>14}  {:>14}  {:>14}",
        "all",
        human(sum.masked_dense),
        human(sum.csr),
        human(sum.dense)
    );
    println!(
        "masked: f32 weights, mask, momentum and gradient of every weight (16 B); sparse \
         (--kernels sparse): value, gradient, momentum and 2 index words per active weight \
         (20 B) plus row offsets; dense: weights, gradient, momentum (12 B)"
    );
    Ok(())
}

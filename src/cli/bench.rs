//! `rigl bench`: GPU time, GFLOP/s and GB/s of kernels on this adapter.

use clap::{Args, Subcommand, ValueEnum};
use rigl::cpu::mask_update::drop_count;
use rigl::gpu::buffer::f32_bytes;
use rigl::gpu::profile::Timing;
use rigl::gpu::{gemm, ops, profile, GemmOp, GemmShape, GemmVariant, GpuContext, Tensor};
use rigl::sparse::init::{dense_weights, init_layer, rng_for, WeightInit};
use rigl::sparse::layer_sparsities;
use rigl::sparse::update::{GrowRule, LayerCounts, LayerPlacement, MaskUpdater};

use super::model::{ModelArgs, SparsityArgs};
use super::{CliError, CliResult};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Dense GEMM C[M,N] = A[M,K]·B[K,N].
    Matmul(MatmulArgs),
    /// Exact top-k selection: the drop phase of a mask update on one layer.
    ///
    /// One layer of N weights, all active, keeps the K largest |w| and grows nothing
    /// (k_keep = K, k_grow = 0, GrowRule::None): the radix-select dispatches of the drop phase
    /// plus the mask-apply pass. Every repetition starts from the same all-active mask.
    Topk(TopkArgs),
    /// One mask update of every sparse layer of a model.
    ///
    /// Drop by |w|, then grow by |dense gradient| (rigl), at seeded random positions (set) or
    /// not at all (prune: one magnitude-pruning step dropping the same count). Masks are random
    /// with each layer's exact active count from the distribution; layers left dense are not
    /// updated. Every repetition starts from the same masks and weights.
    MaskUpdate(MaskUpdateBenchArgs),
    /// Sparse forward product (CSR SpMM) of one layer against the masked-dense GEMM.
    ///
    /// Useful GFLOP/s count only the active multiply-adds (2 · nnz · batch).
    Spmm(super::bench_sparse::SparseBenchArgs),
    /// Weight gradient at the active positions (SDDMM) against the dense weight-gradient GEMM.
    Sddmm(super::bench_sparse::SparseBenchArgs),
    /// One dense convolution: forward, input gradient and weight gradient, and the GEMM of the
    /// same work.
    Conv(super::bench_conv::ConvBenchArgs),
    /// A full training step (forward, backward, optimizer) and a mask-update step of a model.
    ///
    /// The model the trainer builds (same kernel choice), random data; median GPU times.
    Step(super::bench_sparse::StepBenchArgs),
}

/// Repetitions shared by the mask-update benches.
#[derive(Args, Debug)]
pub struct RepArgs {
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed repetitions (median reported); each starts from the same state.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Time by the wall clock (submission to completion) even when the adapter has timestamp
    /// queries, to compare with `rigl bench step`, which always does.
    #[arg(long)]
    wall: bool,
}

#[derive(Args, Debug)]
pub struct TopkArgs {
    /// Elements (one layer, all active).
    #[arg(long, default_value_t = 1 << 20)]
    n: usize,
    /// Elements kept (the K largest |w|), at most N.
    #[arg(long, default_value_t = 1 << 17)]
    k: usize,
    #[command(flatten)]
    rep: RepArgs,
}

/// Method of the mask-update bench.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMethod {
    /// Drop by |w|, grow by |dense gradient|.
    Rigl,
    /// Drop by |w|, grow at seeded random positions.
    Set,
    /// Drop by |w| only (one magnitude-pruning step dropping the same count).
    Prune,
}

impl BenchMethod {
    fn as_str(self) -> &'static str {
        match self {
            BenchMethod::Rigl => "rigl",
            BenchMethod::Set => "set",
            BenchMethod::Prune => "prune",
        }
    }
}

#[derive(Args, Debug)]
pub struct MaskUpdateBenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sparsity: SparsityArgs,
    /// Update rule.
    #[arg(long, value_enum, default_value_t = BenchMethod::Rigl)]
    method: BenchMethod,
    /// Fraction of each layer's active weights dropped (0.3: RigL's first update).
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    drop_fraction: f64,
    /// Seed of the random masks, weights and gradients (and of set's grow scores).
    #[arg(long, default_value_t = 0)]
    seed: u32,
    #[command(flatten)]
    rep: RepArgs,
}

#[derive(Args, Debug)]
pub struct MatmulArgs {
    /// Rows of C.
    #[arg(long, default_value_t = 1024)]
    m: usize,
    /// Columns of C.
    #[arg(long, default_value_t = 1024)]
    n: usize,
    /// Inner dimension.
    #[arg(long, default_value_t = 1024)]
    k: usize,
    /// Variant (rowblock, tiled, vec4, subgroup or texture); default: the one training would
    /// use for this shape on this adapter.
    #[arg(long)]
    variant: Option<String>,
    /// Transposed A (stored [K,M]).
    #[arg(long)]
    trans_a: bool,
    /// Transposed B (stored [N,K]).
    #[arg(long)]
    trans_b: bool,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> CliResult {
    match cmd {
        BenchCommand::Matmul(a) => matmul(a),
        BenchCommand::Topk(a) => topk(a),
        BenchCommand::MaskUpdate(a) => mask_update(a),
        BenchCommand::Spmm(a) => {
            super::bench_sparse::run(super::bench_sparse::SparseKernel::Spmm, a)
        }
        BenchCommand::Step(a) => super::bench_sparse::step(a),
        BenchCommand::Conv(a) => super::bench_conv::run(a),
        BenchCommand::Sddmm(a) => {
            super::bench_sparse::run(super::bench_sparse::SparseKernel::Sddmm, a)
        }
    }
}

/// The buffers of a mask update and the state every timed run starts from.
struct UpdateState {
    w: Tensor,
    mask: Tensor,
    mom: Tensor,
    score: Tensor,
    w0: Vec<f32>,
    mask0: Vec<f32>,
}

impl UpdateState {
    fn new(ctx: &GpuContext, w: Vec<f32>, mask: Vec<f32>, score: &[f32]) -> Result<Self, CliError> {
        Ok(UpdateState {
            w: Tensor::from_f32(ctx, "weights", &w)?,
            mask: Tensor::from_f32(ctx, "mask", &mask)?,
            mom: Tensor::zeros(ctx, "momentum", w.len())?,
            score: Tensor::from_f32(ctx, "grow score", score)?,
            w0: w,
            mask0: mask,
        })
    }

    /// Restores weights and mask (momentum stays zero: the update only zeroes it) and waits, so
    /// that the upload is not part of a timed run.
    fn reset(&self, ctx: &GpuContext) -> Result<(), CliError> {
        self.w.write_f32(ctx, &self.w0)?;
        self.mask.write_f32(ctx, &self.mask0)?;
        ctx.submit_and_wait("restoring the bench state", [])?;
        Ok(())
    }
}

/// Median GPU time (ms) of one update, each warm-up and timed run starting from `state`'s
/// initial weights and mask (an update changes the mask it reads).
fn time_update(
    ctx: &GpuContext,
    up: &MaskUpdater,
    state: &UpdateState,
    counts: &[LayerCounts],
    rule: GrowRule,
    rep: &RepArgs,
) -> Result<(f64, Timing), CliError> {
    up.prepare(ctx, 0, counts)?;
    let ops = up.dispatches(rule);
    for _ in 0..rep.warmup {
        state.reset(ctx)?;
        ops::run(ctx, "warm-up", &ops)?;
    }
    let mut times = Vec::with_capacity(rep.reps.max(1));
    let mut timing = Timing::Wall;
    for _ in 0..rep.reps.max(1) {
        state.reset(ctx)?;
        let (ms, t) = profile::time_ops(ctx, &ops, 0, 1, rep.wall)?;
        times.push(ms);
        timing = t;
    }
    Ok((profile::median(&mut times), timing))
}

fn topk(args: TopkArgs) -> CliResult {
    if args.n == 0 || args.k > args.n {
        return Err(CliError::usage(format!(
            "need 1 <= N and K <= N, got --n {} --k {}",
            args.n, args.k
        )));
    }
    let ctx = GpuContext::new()?;
    // Distinct-ish magnitudes from a hash; some ties, as real weights have.
    let w: Vec<f32> = (0..args.n as u32)
        .map(|i| ((i.wrapping_mul(2654435761) >> 12) as f32 / 1048576.0) - 0.5)
        .collect();
    let state = UpdateState::new(&ctx, w, vec![1.0; args.n], &vec![0.0; args.n])?;
    let place = vec![LayerPlacement {
        name: "topk".into(),
        offset: 0,
        n: args.n,
        id: 0,
    }];
    let up = MaskUpdater::new(
        &ctx,
        place,
        &state.w,
        &state.mask,
        &state.mom,
        &state.score,
        0,
    )?;
    let counts = [LayerCounts {
        k_keep: args.k,
        k_grow: 0,
    }];
    let rule = GrowRule::None;
    let (ms, timing) = time_update(&ctx, &up, &state, &counts, rule, &args.rep)?;
    let eps = args.n as f64 / (ms * 1e-3);
    let dispatches = up.dispatch_count(rule);
    if args.rep.json {
        println!(
            "{}",
            serde_json::json!({
                "kernel": "topk",
                "n": args.n, "k": args.k,
                "gpu_ms": ms, "elements_per_s": eps,
                "dispatches": dispatches,
                "timing": timing.as_str(), "reps": args.rep.reps.max(1),
                "adapter": ctx.info.name,
            })
        );
    } else {
        println!(
            "topk keep {} of {} on {}: {ms:.3} ms, {:.1} M elements/s, {dispatches} dispatches \
             [{} timing, median of {}]",
            args.k,
            args.n,
            ctx.info.name,
            eps / 1e6,
            timing.as_str(),
            args.rep.reps.max(1)
        );
    }
    Ok(())
}

fn mask_update(args: MaskUpdateBenchArgs) -> CliResult {
    if !(0.0..=1.0).contains(&args.drop_fraction) {
        return Err(CliError::usage(format!(
            "--drop-fraction must be in [0, 1], got {}",
            args.drop_fraction
        )));
    }
    let layers = args.model.layers()?;
    let dist = args.sparsity.config()?;
    let shapes: Vec<_> = layers.iter().map(|l| l.layer.clone()).collect();
    let sparsities = layer_sparsities(&shapes, &dist)?;
    // Layers kept dense have no mask to update.
    let sparse: Vec<_> = sparsities.iter().filter(|s| s.active < s.total).collect();
    if sparse.is_empty() {
        return Err(CliError::usage(
            "no sparse layer to update (every layer is dense at this sparsity)",
        ));
    }
    let seed = u64::from(args.seed);
    let (mut w, mut mask, mut grad) = (Vec::new(), Vec::new(), Vec::new());
    let mut place = Vec::with_capacity(sparse.len());
    let mut counts = Vec::with_capacity(sparse.len());
    for (i, s) in sparse.iter().enumerate() {
        let init = init_layer(seed, i as u64, &s.shape, s.active, WeightInit::HeNormal)?;
        let g = dense_weights(
            &s.shape,
            WeightInit::GlorotUniform,
            &mut rng_for(seed ^ 0x6772_6164, i as u64),
        )?;
        place.push(LayerPlacement {
            name: s.name.clone(),
            offset: w.len(),
            n: s.total,
            id: i as u32,
        });
        let n_drop = drop_count(s.active, args.drop_fraction as f32);
        counts.push(LayerCounts {
            k_keep: s.active - n_drop,
            k_grow: if args.method == BenchMethod::Prune {
                0
            } else {
                n_drop
            },
        });
        w.extend(init.weights);
        mask.extend(init.mask);
        grad.extend(g);
    }
    let ctx = GpuContext::new()?;
    let state = UpdateState::new(&ctx, w, mask, &grad)?;
    let up = MaskUpdater::new(
        &ctx,
        place.clone(),
        &state.w,
        &state.mask,
        &state.mom,
        &state.score,
        args.seed,
    )?;
    let rule = match args.method {
        BenchMethod::Rigl => GrowRule::Score,
        BenchMethod::Set => GrowRule::Random,
        BenchMethod::Prune => GrowRule::None,
    };
    let (ms, timing) = time_update(&ctx, &up, &state, &counts, rule, &args.rep)?;
    let elements: usize = place.iter().map(|p| p.n).sum();
    let active: usize = sparse.iter().map(|s| s.active).sum();
    let k_keep: usize = counts.iter().map(|c| c.k_keep).sum();
    let k_grow: usize = counts.iter().map(|c| c.k_grow).sum();
    let eps = elements as f64 / (ms * 1e-3);
    let dispatches = up.dispatch_count(rule);
    if args.rep.json {
        let per_layer: Vec<_> = place
            .iter()
            .zip(&sparse)
            .zip(&counts)
            .map(|((p, s), c)| {
                serde_json::json!({
                    "name": p.name, "shape": s.shape, "n": p.n, "active": s.active,
                    "k_keep": c.k_keep, "k_grow": c.k_grow,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "kernel": "mask-update",
                "method": args.method.as_str(),
                "distribution": dist.distribution.as_str(),
                "sparsity": dist.sparsity,
                "drop_fraction": args.drop_fraction,
                "sparse_layers": place.len(),
                "elements": elements, "active": active,
                "k_keep": k_keep, "k_grow": k_grow,
                "gpu_ms": ms, "elements_per_s": eps,
                "dispatches": dispatches,
                "timing": timing.as_str(), "reps": args.rep.reps.max(1),
                "adapter": ctx.info.name,
                "layers": per_layer,
            })
        );
    } else {
        println!(
            "mask-update {} ({} {:.2}, drop fraction {}) of {} sparse layers, {elements} \
             weights, {active} active (keep {k_keep}, grow {k_grow}) on {}: {ms:.3} ms, {:.1} M \
             elements/s, {dispatches} dispatches [{} timing, median of {}]",
            args.method.as_str(),
            dist.distribution.as_str(),
            dist.sparsity,
            args.drop_fraction,
            place.len(),
            ctx.info.name,
            eps / 1e6,
            timing.as_str(),
            args.rep.reps.max(1)
        );
    }
    Ok(())
}

fn matmul(args: MatmulArgs) -> CliResult {
    if args.m == 0 || args.n == 0 || args.k == 0 {
        return Err(CliError::usage("--m, --n and --k must be at least 1"));
    }
    let ctx = GpuContext::new()?;
    // The operands must fit the device before they are made on the host (or timed by `pick`).
    for (name, rows, cols) in [
        ("A", args.m, args.k),
        ("B", args.k, args.n),
        ("C", args.m, args.n),
    ] {
        ctx.check_storage_size(
            &format!("matmul operand {name} ({rows}x{cols})"),
            f32_bytes(&[rows, cols]),
        )?;
    }
    let shape = GemmShape {
        m: args.m,
        n: args.n,
        k: args.k,
        trans_a: args.trans_a,
        trans_b: args.trans_b,
    };
    // Without --variant: what training would run this shape with.
    let variant = match &args.variant {
        Some(v) => GemmVariant::parse(v)?,
        None => gemm::pick(&ctx, gemm::choose_variant(&ctx)?, &shape)?,
    };
    let fill = |len: usize, seed: u32| -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0
                    - 0.5
            })
            .collect()
    };
    let a = Tensor::from_f32(&ctx, "A", &fill(args.m * args.k, 1))?;
    let b = Tensor::from_f32(&ctx, "B", &fill(args.k * args.n, 2))?;
    let c = Tensor::zeros(&ctx, "C", args.m * args.n)?;
    let op = GemmOp::new(&ctx, shape, variant, &a, &b, &c, None, false)?;
    let (ms, timing) = profile::time_ops(&ctx, &[&op.dispatch], 2, args.reps, false)?;
    let gflops = shape.flops() / (ms * 1e6);
    let gbs = op.dispatch.bytes / (ms * 1e6);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "kernel": "matmul",
                "m": args.m, "n": args.n, "k": args.k,
                "trans_a": args.trans_a, "trans_b": args.trans_b,
                "gpu_ms": ms, "gflops": gflops, "gbps": gbs,
                "variant": variant.as_str(), "timing": timing.as_str(),
                "adapter": ctx.info.name,
            })
        );
    } else {
        println!(
            "matmul {}x{}x{} ({}) on {}: {ms:.3} ms, {gflops:.1} GFLOP/s, {gbs:.1} GB/s [{} timing, median of {}]",
            args.m,
            args.n,
            args.k,
            variant.as_str(),
            ctx.info.name,
            timing.as_str(),
            args.reps
        );
    }
    Ok(())
}

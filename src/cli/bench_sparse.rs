//! `rigl bench spmm|sddmm`: a compressed sparse product against the masked-dense GEMM of the same
//! problem on this adapter.

use clap::Args;
use rigl::gpu::profile;
use rigl::gpu::spmm::{self, SparseShape};
use rigl::gpu::{gemm, GemmOp, GemmShape, GpuContext, Tensor};
use rigl::sparse::active_count;
use rigl::sparse::csr::CsrIndex;
use rigl::sparse::init::{init_layer, WeightInit};

use super::dist::Ranks;
use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct SparseBenchArgs {
    /// Output neurons (rows of the sparse matrix).
    #[arg(long, default_value_t = 300)]
    rows: usize,
    /// Input features (columns of the sparse matrix).
    #[arg(long, default_value_t = 784)]
    cols: usize,
    /// Samples (a multiple of 4).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Share of zero weights, exact count (n - floor(s·n) active).
    #[arg(long, default_value_t = 0.9)]
    sparsity: f64,
    /// Seed of the random mask.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Which product is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseKernel {
    /// Forward product y = W x (and the masked GEMM Wᵀ-layout of the same).
    Spmm,
    /// Weight gradient at active positions (and the dense weight-gradient GEMM).
    Sddmm,
}

pub fn run(kernel: SparseKernel, args: SparseBenchArgs) -> CliResult {
    if args.rows == 0 || args.cols == 0 || args.batch == 0 {
        return Err(CliError::usage(
            "--rows, --cols and --batch must be at least 1",
        ));
    }
    if !spmm::batch_supported(args.batch) {
        return Err(CliError::usage(format!(
            "--batch {} is not a multiple of 4 (the sparse kernels load 4 samples at once)",
            args.batch
        )));
    }
    if !(0.0..1.0).contains(&args.sparsity) {
        return Err(CliError::usage(format!(
            "--sparsity {} is outside [0, 1)",
            args.sparsity
        )));
    }
    let ctx = GpuContext::new()?;
    spmm::support(&ctx).map_err(CliError::usage)?;
    let (in_dim, out_dim, b) = (args.cols, args.rows, args.batch);
    let n = in_dim * out_dim;
    let active = active_count(n, args.sparsity);
    let init = init_layer(
        args.seed,
        0,
        &[in_dim, out_dim],
        active,
        WeightInit::GlorotUniform,
    )?;
    let idx = CsrIndex::from_mask(in_dim, out_dim, &init.mask)?;
    let s = SparseShape {
        in_dim,
        out_dim,
        nnz: idx.nnz(),
        batch: b,
    };
    let fill = |len: usize, seed: u32| -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0
                    - 0.5
            })
            .collect()
    };
    let idx_t = Tensor::from_u32(&ctx, "index", &idx.to_words())?;
    let vals = Tensor::from_f32(&ctx, "values", &idx.gather(&init.weights))?;
    let w = Tensor::from_f32(&ctx, "dense weights", &init.weights)?;
    let mask = Tensor::from_f32(&ctx, "mask", &init.mask)?;
    let x = Tensor::from_f32(&ctx, "input", &fill(in_dim * b, 1))?;
    let xt = rigl::gpu::texture::Texture::from_f32(&ctx, "input", &fill(in_dim * b, 1), in_dim, b)?;
    let d = Tensor::from_f32(&ctx, "output gradient", &fill(out_dim * b, 2))?;
    let dt = rigl::gpu::texture::Texture::from_f32(
        &ctx,
        "output gradient",
        &fill(out_dim * b, 2),
        out_dim,
        b,
    )?;
    // The per-nonzero metadata the SpMM reads (written once per training step; timed in
    // `bench step`, not here).
    let fm = rigl::gpu::texture::meta_texture(&ctx, "forward metadata", s.nnz)?;
    let vt = rigl::gpu::texture::meta_texture(&ctx, "values", s.nnz)?;
    rigl::gpu::ops::run(
        &ctx,
        "metadata",
        &[&spmm::meta(&ctx, s, &idx_t, &vals, 0, &vt, &fm, None)?],
    )?;
    let fmeta = spmm::Metadata {
        index: &fm,
        values: &vt,
    };
    let y = Tensor::zeros(&ctx, "output", out_dim * b)?;
    let g = Tensor::zeros(&ctx, "sparse gradient", s.nnz.max(1))?;
    let gd = Tensor::zeros(&ctx, "dense gradient", n)?;
    let variant = gemm::choose_variant(&ctx)?;
    let (sparse_op, dense_op, dense_shape) = match kernel {
        SparseKernel::Spmm => {
            let shape = GemmShape {
                m: out_dim,
                n: b,
                k: in_dim,
                trans_a: true,
                trans_b: false,
            };
            let v = gemm::pick(&ctx, variant, &shape)?;
            (
                spmm::spmm(&ctx, s, &idx_t, &fmeta, &xt, &y, true)?,
                GemmOp::new(&ctx, shape, v, &w, &x, &y, Some(&mask), false)?,
                shape,
            )
        }
        SparseKernel::Sddmm => {
            let shape = GemmShape {
                m: in_dim,
                n: out_dim,
                k: b,
                trans_a: false,
                trans_b: true,
            };
            let v = gemm::pick(&ctx, variant, &shape)?;
            (
                spmm::sddmm(&ctx, s, &idx_t, &xt, &dt, &g)?,
                GemmOp::new(&ctx, shape, v, &x, &d, &gd, None, false)?,
                shape,
            )
        }
    };
    let (sparse_ms, timing) = profile::time_ops(&ctx, &[&sparse_op], args.warmup, args.reps, true)?;
    let (dense_ms, _) =
        profile::time_ops(&ctx, &[&dense_op.dispatch], args.warmup, args.reps, true)?;
    let useful = 2.0 * s.nnz as f64 * b as f64;
    let name = match kernel {
        SparseKernel::Spmm => "spmm",
        SparseKernel::Sddmm => "sddmm",
    };
    let gflops = useful / (sparse_ms * 1e6);
    let dense_gflops = dense_shape.flops() / (dense_ms * 1e6);
    let ratio = sparse_ms / dense_ms;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "kernel": name, "rows": out_dim, "cols": in_dim, "batch": b,
                "sparsity": args.sparsity, "nnz": s.nnz,
                "gpu_ms": sparse_ms, "useful_gflops": gflops,
                "masked_dense_ms": dense_ms, "masked_dense_gflops": dense_gflops,
                "ratio_vs_masked_dense": ratio,
                "timing": timing.as_str(), "reps": args.reps.max(1),
                "adapter": ctx.info.name,
            })
        );
    } else {
        println!(
            "{name} {out_dim}x{in_dim} at sparsity {:.3} ({} active), batch {b} on {}: {sparse_ms:.3} ms, \
             {gflops:.1} useful GFLOP/s; masked-dense {dense_ms:.3} ms ({dense_gflops:.1} GFLOP/s); \
             sparse/masked {ratio:.3}x [{} timing, median of {}]",
            args.sparsity,
            s.nnz,
            ctx.info.name,
            timing.as_str(),
            args.reps.max(1)
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct StepBenchArgs {
    /// A model of layers: lenet5, wrn-22-2 or resnet-50, on the kernels the trainer chooses
    /// (`sparse`: every weight tensor compressed; `auto`: compressed, each tensor's products
    /// timed both ways; `masked`: masked-dense); mlp (default) is the trainer's own MLP.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Hidden widths of the fully connected model, comma-separated.
    #[arg(long, default_value = "300,100")]
    hidden: String,
    /// Input features.
    #[arg(long, default_value_t = 784)]
    features: usize,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Global target sparsity.
    #[arg(long, default_value_t = 0.9)]
    sparsity: f64,
    /// dense, static, set, snfs, rigl or prune.
    #[arg(long, default_value = "rigl")]
    method: String,
    /// uniform, er or erk.
    #[arg(long, default_value = "erk")]
    distribution: String,
    /// auto, sparse or masked.
    #[arg(long, default_value = "auto")]
    kernels: String,
    /// Drop fraction of the timed mask update.
    #[arg(long, default_value_t = 0.3)]
    alpha: f32,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also time every dispatch of the training step, and of the mask update, on its own.
    #[arg(long)]
    profile: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// The step of a data-parallel run, as under `mpirun` (there it is the default): compute
    /// time, gradient exchange time and bytes exchanged per ordinary and per mask-update step,
    /// for the method and for the same model trained dense, through the trainer's own steps
    /// (ΔT 10, `--warmup` steps, then `--reps` steps timed). In one process it gives the
    /// baseline of one rank.
    #[arg(long)]
    exchange: bool,
}

pub fn step(args: StepBenchArgs) -> CliResult {
    let ranks = Ranks::start()?;
    if args.exchange || ranks.size() > 1 {
        let result = exchange_step(&args, &ranks);
        return ranks.finish(result, 0);
    }
    if let Some(name) = args
        .model
        .as_deref()
        .filter(|m| !m.eq_ignore_ascii_case("mlp"))
    {
        return model_step(&args, name);
    }
    let hidden = args
        .hidden
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| CliError::usage(format!("--hidden: '{s}' is not a width")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = rigl::train::TrainConfig {
        hidden,
        batch: args.batch,
        sparsity: args.sparsity,
        method: rigl::sparse::Method::parse(&args.method)?,
        distribution: rigl::sparse::Distribution::parse(&args.distribution)?,
        kernels: rigl::nn::choice::KernelChoice::parse(&args.kernels)?,
        alpha: args.alpha,
        ..Default::default()
    };
    cfg.validate()?;
    let ctx = GpuContext::new()?;
    let r = rigl::train::bench::bench_step(
        &ctx,
        &cfg,
        args.features,
        args.classes,
        args.warmup,
        args.reps,
        args.profile,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| CliError::usage(e.to_string()))?
        );
    } else {
        let upd = r
            .update_step_ms
            .map(|u| format!("{u:.3} ms"))
            .unwrap_or_else(|| "none".into());
        println!(
            "step {} {:?} at sparsity {:.3}, batch {} on {}: {} kernels ({}); step {:.3} ms \
             ({:.0} samples/s, {} dispatches), update step {upd}; GPU memory {} bytes ({:.3}x \
             dense) [{} timing, median of {}]",
            r.method,
            r.sizes,
            r.sparsity,
            r.batch,
            r.adapter,
            r.kernels.kernels,
            r.kernels.reason,
            r.step_ms,
            r.samples_per_sec,
            r.step_dispatches,
            r.gpu_memory.model_bytes,
            r.gpu_memory.ratio_vs_dense,
            r.timing,
            r.reps
        );
        for (name, ms) in &r.profile {
            println!("  {ms:9.3} ms  {name}");
        }
        if !r.update_profile.is_empty() {
            println!("update step, after forward and backward:");
            for (name, ms) in &r.update_profile {
                println!("  {ms:9.3} ms  {name}");
            }
        }
    }
    Ok(())
}

/// `rigl bench step --model NAME`: a model of layers on the kernels the trainer chooses.
fn model_step(args: &StepBenchArgs, name: &str) -> CliResult {
    let spec = rigl::nn::spec::ModelSpec::builtin(name, &[])
        .map_err(|e| CliError::usage(format!("--model: {e}")))?;
    let dist = rigl::sparse::Distribution::parse(&args.distribution)?;
    let method = rigl::sparse::Method::parse(&args.method)?;
    let sparsity = if method == rigl::sparse::Method::Dense {
        0.0
    } else {
        args.sparsity
    };
    let dc = rigl::sparse::DistributionConfig::new(dist, sparsity);
    let kernels = rigl::nn::choice::KernelChoice::parse(&args.kernels)
        .map_err(|e| CliError::usage(e.to_string()))?;
    if kernels == rigl::nn::choice::KernelChoice::Sparse && method == rigl::sparse::Method::Dense {
        return Err(CliError::usage(
            "--kernels sparse with --method dense: a dense model has nothing to compress",
        ));
    }
    let ctx = GpuContext::new()?;
    let r = rigl::train::bench::bench_model_step(
        &ctx,
        &spec,
        args.batch,
        sparsity,
        dc,
        kernels,
        rigl::train::sparse_method_support(method),
        args.warmup,
        args.reps,
        args.profile,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| CliError::usage(e.to_string()))?
        );
    } else {
        for (name, ms) in &r.profile {
            println!("  {ms:9.3} ms  {name}");
        }
        println!(
            "step {} at sparsity {:.3}, batch {} on {}: {} kernels ({}); step {:.3} ms ({:.0} \
             samples/s, {} dispatches; {:.1} MFLOPs dense forward per sample); weights, \
             gradients, momentum and masks/indexes {:.2} MiB ({:.3}x the dense model's), \
             {:.1} MiB held [{} timing, median of {}]",
            r.model,
            r.sparsity,
            r.batch,
            r.adapter,
            r.kernels,
            r.reason,
            r.step_ms,
            r.samples_per_sec,
            r.step_dispatches,
            r.dense_forward_flops / 1e6,
            r.model_bytes as f64 / 1048576.0,
            r.model_bytes as f64 / r.dense_bytes.max(1) as f64,
            r.held_bytes as f64 / 1048576.0,
            r.timing,
            r.reps
        );
    }
    Ok(())
}

/// `rigl bench step` of a data-parallel run: the method's step and the dense one's, on every
/// rank; rank 0 prints.
fn exchange_step(args: &StepBenchArgs, ranks: &Ranks) -> CliResult {
    let method = rigl::sparse::Method::parse(&args.method)?;
    let mut cfg = rigl::train::TrainConfig {
        batch: args.batch,
        sparsity: args.sparsity,
        method,
        distribution: rigl::sparse::Distribution::parse(&args.distribution)?,
        kernels: rigl::nn::choice::KernelChoice::parse(&args.kernels)?,
        alpha: args.alpha,
        delta_t: 10,
        ..Default::default()
    };
    super::train::apply_model_flags(&mut cfg, args.model.as_deref(), None)?;
    if cfg.model_spec()?.is_none() {
        cfg.hidden = parse_widths(&args.hidden)?;
    }
    cfg.validate()?;
    rigl::dist::shard_size(cfg.batch, ranks.size()).map_err(CliError::usage)?;
    let ctx = ranks.context()?;
    let mut results = Vec::new();
    let dense = rigl::sparse::Method::Dense;
    let methods = if method == dense {
        vec![dense]
    } else {
        vec![method, dense]
    };
    for m in methods {
        // The dense model has no sparse layers to choose kernels for.
        let kernels = match m {
            rigl::sparse::Method::Dense => rigl::nn::choice::KernelChoice::Auto,
            _ => cfg.kernels,
        };
        let c = rigl::train::TrainConfig {
            method: m,
            kernels,
            ..cfg.clone()
        };
        results.push(rigl::train::bench_dist::bench_distributed(
            &ctx,
            &c,
            args.features,
            args.classes,
            ranks.comm(),
            args.warmup,
            args.reps,
        )?);
    }
    if !ranks.is_writer() {
        return Ok(());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&results).map_err(|e| CliError::usage(e.to_string()))?
        );
        return Ok(());
    }
    let dense_bytes = results.last().map_or(0.0, |d| d.bytes_per_step);
    for r in &results {
        let upd = match (
            r.update_step_ms,
            r.update_exchange_ms,
            r.bytes_per_update_step,
        ) {
            (Some(s), Some(x), Some(b)) => format!(
                "; update step {s:.3} ms, exchange {x:.3} ms, {b:.0} bytes ({} steps)",
                r.update_steps
            ),
            _ => String::new(),
        };
        println!(
            "step {} ({} kernels), {} rank(s), batch {} in shards of {} on {}: step {:.3} ms = \
             compute {:.3} ms + exchange {:.3} ms; {:.0} bytes exchanged ({:.3}x dense) \
             [median of {}]{upd}",
            r.method,
            r.kernels,
            r.ranks,
            r.batch,
            r.shard,
            r.adapter,
            r.step_ms,
            r.compute_ms,
            r.exchange_ms,
            r.bytes_per_step,
            r.bytes_per_step / dense_bytes.max(1.0),
            r.steps
        );
    }
    Ok(())
}

/// `--hidden` widths.
fn parse_widths(hidden: &str) -> Result<Vec<usize>, CliError> {
    hidden
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| CliError::usage(format!("--hidden: '{s}' is not a width")))
        })
        .collect()
}

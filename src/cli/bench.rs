//! `rigl bench`: GPU time, GFLOP/s and GB/s of kernels on this adapter.

use clap::{Args, Subcommand};
use rigl::gpu::{gemm, profile, GemmOp, GemmShape, GemmVariant, GpuContext, Tensor};

use super::{CliError, CliResult};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Dense GEMM C[M,N] = A[M,K]·B[K,N].
    Matmul(MatmulArgs),
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
    /// Variant (rowblock or tiled); default: the one chosen for this adapter.
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
    }
}

fn matmul(args: MatmulArgs) -> CliResult {
    if args.m == 0 || args.n == 0 || args.k == 0 {
        return Err(CliError::usage("--m, --n and --k must be at least 1"));
    }
    let ctx = GpuContext::new()?;
    let variant = match &args.variant {
        Some(v) => GemmVariant::parse(v)?,
        None => gemm::choose_variant(&ctx)?,
    };
    let shape = GemmShape {
        m: args.m,
        n: args.n,
        k: args.k,
        trans_a: args.trans_a,
        trans_b: args.trans_b,
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

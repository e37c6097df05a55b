//! `rigl bench spmm|sddmm`: a compressed sparse product against the masked-dense GEMM of the same
//! problem on this adapter.

use clap::Args;
use rigl::gpu::profile::{self, Timing};
use rigl::gpu::spmm::{self, SparseShape};
use rigl::gpu::{gemm, GemmOp, GemmShape, GpuContext, Tensor};
use rigl::sparse::active_count;
use rigl::sparse::csr::CsrIndex;
use rigl::sparse::init::{init_layer, WeightInit};

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
    let d = Tensor::from_f32(&ctx, "output gradient", &fill(out_dim * b, 2))?;
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
            let v = variant.resolve(&ctx, &shape);
            (
                spmm::spmm(&ctx, s, &idx_t, &vals, &x, &y, true)?,
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
            let v = variant.resolve(&ctx, &shape);
            (
                spmm::sddmm(&ctx, s, &idx_t, &x, &d, &g)?,
                GemmOp::new(&ctx, shape, v, &x, &d, &gd, None, false)?,
                shape,
            )
        }
    };
    let (sparse_ms, timing) =
        profile::time_ops(&ctx, &[&sparse_op], args.warmup, args.reps, false)?;
    let (dense_ms, _) =
        profile::time_ops(&ctx, &[&dense_op.dispatch], args.warmup, args.reps, false)?;
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
            timing_str(timing),
            args.reps.max(1)
        );
    }
    Ok(())
}

fn timing_str(t: Timing) -> &'static str {
    t.as_str()
}

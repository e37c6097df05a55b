//! `rigl bench conv`: one convolution's forward, input gradient and weight gradient, dense, with
//! the GEMM of the same work beside it (`C[cout, N·Ho·Wo] = A[cout, k·k·cin] · B[k·k·cin,
//! N·Ho·Wo]`), so a convolution's GFLOP/s reads against the engine's plain product. With
//! `--sparsity`, the same three products of a kernel with that fraction of its weights inactive
//! (drawn at random), masked-dense and compressed ([`rigl::gpu::sparse_conv`]) side by side.

use clap::Args;

use super::{CliError, CliResult};
use rigl::cpu::conv::Window;
use rigl::gpu::buffer::f32_bytes;
use rigl::gpu::conv::{self, ConvGeom, ConvVariant};
use rigl::gpu::{gemm, profile, GemmOp, GemmShape, GpuContext, Tensor};
use rigl::nn::spec::Padding;

#[derive(Args, Debug)]
pub struct ConvBenchArgs {
    /// Input channels.
    #[arg(long, default_value_t = 64)]
    cin: usize,
    /// Output channels.
    #[arg(long, default_value_t = 64)]
    cout: usize,
    /// Kernel height and width.
    #[arg(long, default_value_t = 3)]
    kernel: usize,
    /// Stride.
    #[arg(long, default_value_t = 1)]
    stride: usize,
    /// Input height and width.
    #[arg(long, default_value_t = 16)]
    hw: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Padding: same or valid.
    #[arg(long, default_value = "same")]
    padding: String,
    /// Kernel form: direct or texture (default: what training picks for this shape).
    #[arg(long)]
    variant: Option<String>,
    /// Fraction of inactive weights (0 to 1): times the masked-dense and the compressed
    /// products of a random kernel with that many inactive.
    #[arg(long, default_value_t = 0.0)]
    sparsity: f64,
    /// Compressed kernels' form: subgroup or portable (default: subgroup where the adapter has
    /// subgroups).
    #[arg(long)]
    form: Option<String>,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn fill(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0 - 0.5
        })
        .collect()
}

pub fn run(args: ConvBenchArgs) -> CliResult {
    let padding = match args.padding.as_str() {
        "same" => Padding::Same,
        "valid" => Padding::Valid,
        other => {
            return Err(CliError::usage(format!(
                "--padding {other}: expected same or valid"
            )))
        }
    };
    if [
        args.cin,
        args.cout,
        args.kernel,
        args.stride,
        args.hw,
        args.batch,
    ]
    .contains(&0)
    {
        return Err(CliError::usage(
            "--cin, --cout, --kernel, --stride, --hw and --batch must be at least 1",
        ));
    }
    if !(0.0..1.0).contains(&args.sparsity) {
        return Err(CliError::usage(format!(
            "--sparsity {}: expected a fraction in [0, 1)",
            args.sparsity
        )));
    }
    let g = ConvGeom {
        window: Window {
            n: args.batch,
            h: args.hw,
            w: args.hw,
            k: args.kernel,
            stride: args.stride,
            padding,
        },
        cin: args.cin,
        cout: args.cout,
    };
    let (ho, wo) = g.out().map_err(CliError::usage)?;
    let ctx = GpuContext::new()?;
    let out_len = g.output_len()?;
    for (what, len) in [
        ("input", g.input_len()),
        ("output", out_len),
        ("weights", g.weight_len()),
    ] {
        ctx.check_storage_size(&format!("convolution {what}"), f32_bytes(&[len]))?;
    }
    let variant = match args.variant.as_deref() {
        None => ConvVariant::pick(&ctx, &g)?,
        Some("direct") => ConvVariant::Direct,
        Some("texture") => ConvVariant::Texture,
        Some(other) => {
            return Err(CliError::usage(format!(
                "--variant {other}: expected direct or texture"
            )))
        }
    };
    if !variant.supports(&ctx, &g) {
        return Err(CliError::usage(format!(
            "the {} form cannot run this convolution on {} (it needs N·Ho·Wo and N·H·W \
             multiples of 4 and subgroups)",
            variant.as_str(),
            ctx.info.name
        )));
    }
    let x = Tensor::from_f32(&ctx, "x", &fill(g.input_len(), 1))?;
    let w = Tensor::from_f32(&ctx, "w", &fill(g.weight_len(), 2))?;
    let dy = Tensor::from_f32(&ctx, "dy", &fill(out_len, 3))?;
    let y = Tensor::zeros(&ctx, "y", out_len)?;
    let dx = Tensor::zeros(&ctx, "dx", g.input_len())?;
    let dw = Tensor::zeros(&ctx, "dw", g.weight_len())?;
    let ops = [
        (
            "forward",
            conv::forward_with(&ctx, variant, g, &x, &w, None, None, &y)?,
        ),
        (
            "input_grad",
            conv::input_grad_with(&ctx, variant, g, &dy, &w, None, &dx, false)?,
        ),
        (
            "weight_grad",
            conv::weight_grad_with(&ctx, variant, g, &x, &dy, &dw, false)?,
        ),
    ];
    if args.sparsity > 0.0 {
        return sparse(&ctx, &args, g, variant, (&x, &w, &dy, &y, &dx, &dw));
    }
    let flops = g.flops();
    let mut rows = Vec::new();
    for (name, op) in &ops {
        let (ms, _) = profile::time_ops(&ctx, &[op], 1, args.reps, true)?;
        rows.push((name.to_string(), ms, flops / (ms * 1e6)));
    }
    // The plain product of the same work, as training would run that shape.
    let k = args.kernel * args.kernel * args.cin;
    let p = args.batch * ho * wo;
    let shape = GemmShape::nn(args.cout, p, k);
    // A problem whose B exceeds the device's largest buffer (the convolutions, which gather in
    // chunks, still run) reports the GEMM as not run, with the reason.
    let plain = || -> rigl::Result<(f64, &'static str)> {
        let gv = gemm::pick(&ctx, gemm::choose_variant(&ctx)?, &shape)?;
        let a = Tensor::from_f32(&ctx, "A", &fill(args.cout * k, 4))?;
        let b = Tensor::from_f32(&ctx, "B", &fill(k * p, 5))?;
        let c = Tensor::zeros(&ctx, "C", args.cout * p)?;
        let gop = GemmOp::new(&ctx, shape, gv, &a, &b, &c, None, false)?;
        let (gms, _) = profile::time_ops(&ctx, &[&gop.dispatch], 1, args.reps, true)?;
        Ok((gms, gv.as_str()))
    };
    let gemm_run = plain();
    if args.json {
        let gemm_json = match &gemm_run {
            Ok((gms, gv)) => serde_json::json!({"m": args.cout, "n": p, "k": k, "variant": gv,
                "gpu_ms": gms, "gflops": shape.flops() / (gms * 1e6)}),
            Err(e) => serde_json::json!({"m": args.cout, "n": p, "k": k, "not_run": e.to_string()}),
        };
        let kernels: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, ms, gf)| serde_json::json!({"kernel": n, "gpu_ms": ms, "gflops": gf}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "cin": args.cin, "cout": args.cout, "kernel": args.kernel,
                "stride": args.stride, "hw": args.hw, "batch": args.batch,
                "padding": args.padding, "variant": variant.as_str(),
                "flops": flops, "kernels": kernels,
                "gemm": gemm_json,
                "adapter": ctx.info.name, "timing": "wall", "reps": args.reps,
            })
        );
    } else {
        println!(
            "conv {k0}x{k0} {} -> {} at {}x{} stride {} {}, batch {} ({}) on {}: {:.2} GFLOP per product",
            args.cin,
            args.cout,
            args.hw,
            args.hw,
            args.stride,
            args.padding,
            args.batch,
            variant.as_str(),
            ctx.info.name,
            flops / 1e9,
            k0 = args.kernel,
        );
        for (n, ms, gf) in &rows {
            println!("  {n:<12} {ms:>10.3} ms  {gf:>7.1} GFLOP/s");
        }
        match &gemm_run {
            Ok((gms, gv)) => println!(
                "  {:<12} {gms:>10.3} ms  {:>7.1} GFLOP/s  (GEMM {}x{}x{}, {gv}, the same work)",
                "gemm",
                shape.flops() / (gms * 1e6),
                args.cout,
                p,
                k,
            ),
            Err(e) => println!(
                "  {:<12} not run (GEMM {}x{}x{}, the same work): {e}",
                "gemm", args.cout, p, k
            ),
        }
        println!("[wall timing, median of {}]", args.reps);
    }
    Ok(())
}

/// `--sparsity`: the masked-dense products and the compressed ones of the same random kernel.
fn sparse(
    ctx: &GpuContext,
    args: &ConvBenchArgs,
    g: ConvGeom,
    variant: ConvVariant,
    (x, w, dy, y, dx, dw): (&Tensor, &Tensor, &Tensor, &Tensor, &Tensor, &Tensor),
) -> CliResult {
    use rand::SeedableRng;
    use rigl::gpu::sparse_conv::{self as sc, Layout, Scratch, SparseConvForm};
    let form = match args.form.as_deref() {
        None => SparseConvForm::pick(ctx),
        Some("subgroup") => SparseConvForm::Subgroup,
        Some("portable") => SparseConvForm::Portable,
        Some(other) => {
            return Err(CliError::usage(format!(
                "--form {other}: expected subgroup or portable"
            )))
        }
    };
    sc::supports(ctx, &g, form).map_err(|e| {
        CliError::usage(format!(
            "the compressed {} kernels cannot run this convolution on {}: {e}",
            form.as_str(),
            ctx.info.name
        ))
    })?;
    let len = g.weight_len();
    let nnz = (((1.0 - args.sparsity) * len as f64).round() as usize).max(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut pos: Vec<u32> = rand::seq::index::sample(&mut rng, len, nnz)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    pos.sort_unstable();
    let k = g.window.k * g.window.k * g.cin;
    let index = rigl::sparse::csr::CsrIndex::from_positions(k, g.cout, pos);
    let mask = Tensor::from_f32(ctx, "mask", &index.mask())?;
    let idx = Tensor::from_u32(ctx, "index", &index.to_words())?;
    let vals = Tensor::from_f32(ctx, "values", &fill(nnz, 6))?;
    let grad = Tensor::zeros(ctx, "slot gradient", nnz)?;
    let lay = Layout::new(g)?;
    let scratch = Scratch::new(ctx, &[lay], nnz)?;
    let masked = [
        conv::forward_with(ctx, variant, g, x, w, Some(&mask), None, y)?,
        conv::input_grad_with(ctx, variant, g, dy, w, Some(&mask), dx, false)?,
        conv::weight_grad_with(ctx, variant, g, x, dy, dw, false)?,
    ];
    let compressed = [
        sc::forward(ctx, form, &lay, nnz, &idx, &vals, None, x, y, &scratch)?,
        sc::input_grad(ctx, form, &lay, nnz, &idx, &vals, dy, dx, false, &scratch)?,
        sc::weight_grad(ctx, form, &lay, nnz, &idx, x, dy, &grad, &scratch)?,
    ];
    let useful = sc::sparse_flops(&lay, nnz);
    let mut rows = Vec::new();
    for (name, (m, c)) in ["forward", "input_grad", "weight_grad"]
        .into_iter()
        .zip(masked.iter().zip(&compressed))
    {
        // Alternated, so drift in the machine's speed falls on both alike.
        let (mut mt, mut ct) = (Vec::new(), Vec::new());
        rigl::gpu::ops::run(ctx, "warm-up", &[m, c])?;
        for _ in 0..args.reps.max(1) {
            mt.push(profile::time_ops(ctx, &[m], 0, 1, true)?.0);
            ct.push(profile::time_ops(ctx, &[c], 0, 1, true)?.0);
        }
        rows.push((name, profile::median(&mut mt), profile::median(&mut ct)));
    }
    let density = nnz as f64 / len as f64;
    if args.json {
        let kernels: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, m, c)| {
                serde_json::json!({"kernel": n, "masked_ms": m, "compressed_ms": c,
                    "ratio": c / m, "useful_gflops": useful / (c * 1e6)})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "cin": args.cin, "cout": args.cout, "kernel": args.kernel,
                "stride": args.stride, "hw": args.hw, "batch": args.batch,
                "padding": args.padding, "sparsity": args.sparsity, "active": nnz,
                "density": density, "masked_variant": variant.as_str(),
                "compressed_form": form.as_str(), "useful_flops": useful,
                "batch_overhead": lay.batch_overhead(),
                "input_grad_overhead": lay.bwd_overhead(), "kernels": kernels,
                "adapter": ctx.info.name, "timing": "wall", "reps": args.reps.max(1),
            })
        );
    } else {
        println!(
            "conv {k0}x{k0} {} -> {} at {}x{} stride {} {}, batch {}, {nnz} of {len} weights \
             active ({:.1}%) on {}: {:.3} useful GFLOP per product",
            args.cin,
            args.cout,
            args.hw,
            args.hw,
            args.stride,
            args.padding,
            args.batch,
            100.0 * density,
            ctx.info.name,
            useful / 1e9,
            k0 = args.kernel,
        );
        println!(
            "  {:<12} {:>12} {:>14} {:>8} {:>16}",
            "product",
            format!("masked ({})", variant.as_str()),
            format!("compressed ({})", form.as_str()),
            "ratio",
            "useful GFLOP/s"
        );
        for (n, m, c) in &rows {
            println!(
                "  {n:<12} {m:>9.3} ms {c:>11.3} ms {:>7.2}x {:>16.1}",
                c / m,
                useful / (c * 1e6)
            );
        }
        println!(
            "[wall timing, median of {} alternated runs]",
            args.reps.max(1)
        );
    }
    Ok(())
}

//! `rigl bench conv`: one convolution's forward, input gradient and weight gradient, dense, with
//! the GEMM of the same work beside it (`C[cout, N·Ho·Wo] = A[cout, k·k·cin] · B[k·k·cin,
//! N·Ho·Wo]`), so a convolution's GFLOP/s reads against the engine's plain product.

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
    let gv = gemm::pick(&ctx, gemm::choose_variant(&ctx)?, &shape)?;
    let a = Tensor::from_f32(&ctx, "A", &fill(args.cout * k, 4))?;
    let b = Tensor::from_f32(&ctx, "B", &fill(k * p, 5))?;
    let c = Tensor::zeros(&ctx, "C", args.cout * p)?;
    let gop = GemmOp::new(&ctx, shape, gv, &a, &b, &c, None, false)?;
    let (gms, _) = profile::time_ops(&ctx, &[&gop.dispatch], 1, args.reps, true)?;
    let ggf = shape.flops() / (gms * 1e6);
    if args.json {
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
                "gemm": {"m": args.cout, "n": p, "k": k, "variant": gv.as_str(),
                         "gpu_ms": gms, "gflops": ggf},
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
        println!(
            "  {:<12} {gms:>10.3} ms  {ggf:>7.1} GFLOP/s  (GEMM {}x{}x{}, {}, the same work)",
            "gemm",
            args.cout,
            p,
            k,
            gv.as_str()
        );
        println!("[wall timing, median of {}]", args.reps);
    }
    Ok(())
}

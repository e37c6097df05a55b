//! `rigl info`: what the engine sees of the GPU.

use clap::Args;
use rigl::gpu::{gemm, GpuContext};

use super::CliResult;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> CliResult {
    let ctx = GpuContext::new()?;
    let variant = gemm::choose_variant(&ctx)?;
    let l = &ctx.limits;
    let feats = |f: wgpu::Features| ctx.features.contains(f);
    // The texture GEMM's tiles for convolution weight gradients and for the other products of
    // few columns (docs/performance.md).
    let (wgrad_tiles, few_column_tiles) = if gemm::narrow_tiles_supported(&ctx) {
        (
            "narrow (32 columns) up to 128 columns (576 where both operands are gathered), wide \
             (256) above",
            "tall (each subgroup its own rows of 32 columns) up to 128 columns",
        )
    } else {
        ("wide", "wide")
    };
    let report = serde_json::json!({
        "adapter": ctx.info.name,
        "backend": format!("{:?}", ctx.info.backend).to_lowercase(),
        "device_type": format!("{:?}", ctx.info.device_type),
        "driver": ctx.info.driver,
        "driver_info": ctx.info.driver_info,
        "features": {
            "timestamp_query": feats(wgpu::Features::TIMESTAMP_QUERY),
            "timestamp_query_inside_passes": feats(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            "subgroup": feats(wgpu::Features::SUBGROUP),
            "shader_f16": feats(wgpu::Features::SHADER_F16),
        },
        "limits": {
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_uniform_buffer_binding_size": l.max_uniform_buffer_binding_size,
            "max_texture_dimension_2d": l.max_texture_dimension_2d,
            "max_buffer_size": l.max_buffer_size,
            "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
            "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        },
        "subgroup_sizes": [ctx.info.subgroup_min_size, ctx.info.subgroup_max_size],
        "kernels": {
            "gemm": variant.as_str(),
            "conv_weight_grad_tiles": wgrad_tiles,
            "few_column_tiles": few_column_tiles,
        },
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!("adapter     {}", ctx.info.name);
    println!("backend     {:?}", ctx.info.backend);
    println!("device type {:?}", ctx.info.device_type);
    println!("driver      {} {}", ctx.info.driver, ctx.info.driver_info);
    println!("features    {}", report["features"]);
    println!("limits:");
    if let Some(obj) = report["limits"].as_object() {
        for (k, v) in obj {
            println!("  {k:<40} {v}");
        }
    }
    println!(
        "subgroups   {}..{} invocations",
        ctx.info.subgroup_min_size, ctx.info.subgroup_max_size
    );
    println!(
        "kernels     gemm={}; convolution weight-gradient tiles: {wgrad_tiles}; other products \
         of few columns: {few_column_tiles}",
        variant.as_str()
    );
    Ok(())
}

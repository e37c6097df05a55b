//! Activation textures: a feature-major activation `[rows, batch]` also held as a 2-D
//! `rgba32float` storage texture of `batch / 4` texels by `rows` (texel (b4, f) = samples
//! 4·b4 .. 4·b4 + 3 of feature f). The sparse products read their gathered operand from it: a
//! storage-texture load is a branch-free gather on lavapipe, where a storage-buffer load at a different
//! address per lane is a loop over the lanes (the 300x784 SpMM at batch 1000: 8.1 ms from buffers,
//! 4.8 ms from textures; docs/performance.md).

use std::sync::Arc;

use crate::error::{Result, RiglError};
use crate::gpu::context::Held;
use crate::gpu::GpuContext;

/// A `[rows, batch]` activation as an `rgba32float` storage texture.
#[derive(Debug, Clone)]
pub struct Texture {
    /// The texture.
    pub texture: wgpu::Texture,
    /// Its view.
    pub view: wgpu::TextureView,
    /// Features (texture height).
    pub rows: usize,
    /// Samples (4 per texel of width).
    pub batch: usize,
    /// Name for errors.
    pub label: String,
    /// This texture's share of [`GpuContext::gpu_bytes_held`].
    pub(crate) held: Arc<Held>,
}

impl Texture {
    /// An uninitialised activation texture; `batch` must be a multiple of 4.
    pub fn new(ctx: &GpuContext, label: &str, rows: usize, batch: usize) -> Result<Self> {
        if rows == 0 || batch == 0 || !batch.is_multiple_of(4) {
            return Err(RiglError::invalid(format!(
                "texture '{label}': {rows} rows of {batch} samples (need both positive, batch a \
                 multiple of 4)"
            )));
        }
        let max = ctx.limits.max_texture_dimension_2d as usize;
        if rows > max || batch / 4 > max {
            return Err(RiglError::TooLarge {
                what: format!("texture '{label}' ({rows} x {})", batch / 4),
                needed: rows.max(batch / 4) as u64,
                unit: "texels per side",
                limit: max as u64,
                limit_name: "max_texture_dimension_2d",
            });
        }
        let texture = ctx.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d {
                width: (batch / 4) as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        Ok(Texture {
            texture,
            view,
            rows,
            batch,
            label: label.to_string(),
            // 16 bytes a texel.
            held: ctx.hold(4 * (rows * batch) as u64),
        })
    }
}

impl Texture {
    /// A texture holding `data` (`[rows, batch]` feature-major), written through the queue.
    pub fn from_f32(
        ctx: &GpuContext,
        label: &str,
        data: &[f32],
        rows: usize,
        batch: usize,
    ) -> Result<Self> {
        if data.len() != rows * batch {
            return Err(RiglError::invalid(format!(
                "texture '{label}': {} values for {rows} rows of {batch} samples",
                data.len()
            )));
        }
        let t = Self::new(ctx, label, rows, batch)?;
        ctx.queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &t.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            bytemuck::cast_slice(data),
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some((batch * 4) as u32),
                rows_per_image: Some(rows as u32),
            },
            t.texture.size(),
        );
        Ok(t)
    }
}

/// Texels per row of a metadata texture (`META_WIDTH` in the shaders).
pub const META_WIDTH: usize = 4096;

/// Per-nonzero metadata of a sparse product as an `rg32uint` storage texture: texel j (at
/// `(j % META_WIDTH, j / META_WIDTH)`) = (column, value bits) of nonzero j in the order the
/// product walks them, rewritten before every forward pass (`csr_meta` in `shaders/csr.wgsl`).
pub fn meta_texture(ctx: &GpuContext, label: &str, n: usize) -> Result<Texture> {
    let rows = n.max(1).div_ceil(META_WIDTH);
    let max = ctx.limits.max_texture_dimension_2d as usize;
    if rows > max || META_WIDTH > max {
        return Err(RiglError::TooLarge {
            what: format!("metadata texture '{label}' of {n} nonzeros"),
            needed: rows as u64,
            unit: "texture rows",
            limit: max as u64,
            limit_name: "max_texture_dimension_2d",
        });
    }
    let texture = ctx.device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d {
            width: META_WIDTH as u32,
            height: rows as u32,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rg32Uint,
        usage: wgpu::TextureUsages::STORAGE_BINDING,
        view_formats: &[],
    });
    let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
    Ok(Texture {
        texture,
        view,
        rows,
        batch: 4 * META_WIDTH,
        label: label.to_string(),
        // 8 bytes a texel.
        held: ctx.hold(8 * (META_WIDTH * rows) as u64),
    })
}

/// Whether activation textures of `rows` x `batch` fit this device.
pub fn fits(ctx: &GpuContext, rows: usize, batch: usize) -> bool {
    let max = ctx.limits.max_texture_dimension_2d as usize;
    batch.is_multiple_of(4) && rows <= max && batch / 4 <= max
}

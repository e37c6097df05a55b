//! Storage buffers with their element count, upload and read-back.

use std::sync::Arc;

use crate::error::{Result, RiglError};
use crate::gpu::context::Held;
use crate::gpu::GpuContext;

/// A GPU storage buffer of 32-bit elements (f32 or u32).
#[derive(Debug, Clone)]
pub struct Tensor {
    /// The buffer (STORAGE | COPY_SRC | COPY_DST).
    pub buffer: wgpu::Buffer,
    /// Byte offset of element 0 in `buffer` (non-zero for a view made by [`Tensor::slice`]).
    pub offset: u64,
    /// Number of 32-bit elements.
    pub len: usize,
    /// Name used in errors.
    pub label: String,
    /// This buffer's share of [`GpuContext::gpu_bytes_held`] (none for a host's buffer).
    pub(crate) held: Option<Arc<Held>>,
}

fn usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

/// Bytes of an f32 array of dimensions `dims`, saturating at `u64::MAX`: a size whose byte
/// count overflows is then reported as too large by [`GpuContext::check_storage_size`] instead
/// of wrapping into a small one.
pub fn f32_bytes(dims: &[usize]) -> u64 {
    dims.iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX)
}

impl Tensor {
    /// A zero-filled buffer of `len` elements. A zero-length tensor still gets 4 bytes so it can
    /// be bound.
    pub fn zeros(ctx: &GpuContext, label: &str, len: usize) -> Result<Self> {
        let bytes = f32_bytes(&[len.max(1)]);
        ctx.check_storage_size(label, bytes)?;
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: usage(),
            mapped_at_creation: false,
        });
        Ok(Tensor {
            buffer,
            offset: 0,
            len,
            label: label.to_string(),
            held: Some(ctx.hold(bytes)),
        })
    }

    /// [`Tensor::zeros`] that a kernel may also bind as a uniform buffer (at most
    /// `max_uniform_buffer_binding_size` bytes): for small operands that every invocation reads
    /// at the same index, which software adapters then load once instead of once per lane.
    pub fn zeros_uniform(ctx: &GpuContext, label: &str, len: usize) -> Result<Self> {
        let bytes = f32_bytes(&[len.max(4).next_multiple_of(4)]);
        let limit = ctx.limits.max_uniform_buffer_binding_size;
        if bytes > limit {
            return Err(RiglError::TooLarge {
                what: label.to_string(),
                needed: bytes,
                unit: "bytes",
                limit,
                limit_name: "max_uniform_buffer_binding_size",
            });
        }
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: usage() | wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: false,
        });
        Ok(Tensor {
            buffer,
            offset: 0,
            len: (bytes / 4) as usize,
            label: label.to_string(),
            held: Some(ctx.hold(bytes)),
        })
    }

    /// A buffer holding `data`.
    pub fn from_f32(ctx: &GpuContext, label: &str, data: &[f32]) -> Result<Self> {
        let t = Self::zeros(ctx, label, data.len())?;
        if !data.is_empty() {
            ctx.queue
                .write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    /// A buffer of `len` elements all equal to `value`; the size is checked against the device
    /// before any host memory is taken for the data.
    pub fn filled(ctx: &GpuContext, label: &str, len: usize, value: f32) -> Result<Self> {
        let t = Self::zeros(ctx, label, len)?;
        if len > 0 && value != 0.0 {
            ctx.queue
                .write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(&vec![value; len]));
        }
        Ok(t)
    }

    /// A buffer holding `data` as u32.
    pub fn from_u32(ctx: &GpuContext, label: &str, data: &[u32]) -> Result<Self> {
        let t = Self::zeros(ctx, label, data.len())?;
        if !data.is_empty() {
            ctx.queue
                .write_buffer(&t.buffer, t.offset, bytemuck::cast_slice(data));
        }
        Ok(t)
    }

    /// Wraps `len` 32-bit elements of a caller's buffer starting at byte `offset` (embedding:
    /// rigl works on the host's own buffers without copying them into its own).
    ///
    /// Checks, each failing with [`RiglError::BadBuffer`] naming `label` and `role`: `offset` is
    /// a multiple of 4, `offset + 4 * len` fits in `buffer.size()`, and `buffer.usage()`
    /// contains `usage` (for example `COPY_SRC | COPY_DST` for a buffer rigl copies in and out,
    /// `STORAGE` for one it binds). Binding a view also needs `offset` to be a multiple of the
    /// device's `min_storage_buffer_offset_alignment`; that is checked where it is bound.
    pub fn from_buffer(
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
        label: &str,
        role: &str,
        usage: wgpu::BufferUsages,
    ) -> Result<Self> {
        let bad = |message: String| RiglError::BadBuffer {
            buffer: label.to_string(),
            role: role.to_string(),
            message,
        };
        if !offset.is_multiple_of(4) {
            return Err(bad(format!("offset {offset} is not a multiple of 4 bytes")));
        }
        let end = (len as u64)
            .checked_mul(4)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| bad(format!("{len} elements at offset {offset} overflow")))?;
        if end > buffer.size() {
            return Err(bad(format!(
                "needs bytes {offset}..{end} ({len} f32) but the buffer has {} bytes",
                buffer.size()
            )));
        }
        let missing = usage - buffer.usage();
        if !missing.is_empty() {
            return Err(bad(format!(
                "lacks usage flag(s) {missing:?} (it has {:?})",
                buffer.usage()
            )));
        }
        Ok(Tensor {
            buffer: buffer.clone(),
            offset,
            len,
            label: label.to_string(),
            held: None,
        })
    }

    /// Overwrites the contents from `data` (which must have `len` elements).
    pub fn write_f32(&self, ctx: &GpuContext, data: &[f32]) -> Result<()> {
        self.write_pod(ctx, data)
    }

    /// Overwrites the contents from u32 `data` (which must have `len` elements).
    pub fn write_u32(&self, ctx: &GpuContext, data: &[u32]) -> Result<()> {
        self.write_pod(ctx, data)
    }

    fn write_pod<T: bytemuck::Pod>(&self, ctx: &GpuContext, data: &[T]) -> Result<()> {
        if data.len() != self.len {
            return Err(RiglError::invalid(format!(
                "{}: writing {} values into a tensor of {}",
                self.label,
                data.len(),
                self.len
            )));
        }
        if !data.is_empty() {
            ctx.queue
                .write_buffer(&self.buffer, self.offset, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Size in bytes of the data (not of the padding).
    pub fn bytes(&self) -> u64 {
        (self.len * 4) as u64
    }

    /// A view of elements `start .. start + len`. `start * 4` must be a multiple of the device's
    /// `min_storage_buffer_offset_alignment` for the view to be bound.
    pub fn slice(&self, ctx: &GpuContext, start: usize, len: usize, label: &str) -> Result<Tensor> {
        let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment.max(4));
        let offset = self.offset + (start * 4) as u64;
        if start + len > self.len || !offset.is_multiple_of(align) {
            return Err(RiglError::invalid(format!(
                "{label}: view {start}..{} of '{}' ({} elements) is out of range or not aligned to {align} bytes",
                start + len,
                self.label,
                self.len
            )));
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            offset,
            len,
            label: label.to_string(),
            held: self.held.clone(),
        })
    }

    /// A view for copies only (reading back part of a tensor): any element offset, not bindable
    /// unless aligned.
    pub fn slice_unaligned(&self, start: usize, len: usize) -> Result<Tensor> {
        if start + len > self.len {
            return Err(RiglError::invalid(format!(
                "view {start}..{} of '{}' ({} elements) is out of range",
                start + len,
                self.label,
                self.len
            )));
        }
        Ok(Tensor {
            buffer: self.buffer.clone(),
            offset: self.offset + (start * 4) as u64,
            len,
            label: self.label.clone(),
            held: self.held.clone(),
        })
    }

    /// The binding of this tensor's elements.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.len.max(1) as u64 * 4),
        })
    }

    /// Reads the whole tensor back as f32 (waits for the GPU).
    pub fn read_f32(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let raw = read_bytes(ctx, &self.buffer, self.offset, self.bytes(), &self.label)?;
        Ok(bytemuck::cast_slice(&raw).to_vec())
    }

    /// Reads the whole tensor back as u32 (waits for the GPU).
    pub fn read_u32(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        let raw = read_bytes(ctx, &self.buffer, self.offset, self.bytes(), &self.label)?;
        Ok(bytemuck::cast_slice(&raw).to_vec())
    }
}

/// Reads several tensors back as u32 with one copy into one staging buffer and one wait.
pub fn read_many_u32(ctx: &GpuContext, tensors: &[Tensor], what: &str) -> Result<Vec<Vec<u32>>> {
    let parts: Vec<_> = tensors
        .iter()
        .map(|t| (&t.buffer, t.offset, t.bytes()))
        .collect();
    let raw = read_parts(ctx, &parts, what)?;
    let words: &[u32] = bytemuck::cast_slice(&raw);
    let mut out = Vec::with_capacity(tensors.len());
    let mut start = 0usize;
    for t in tensors {
        out.push(words[start..start + t.len].to_vec());
        start += t.len;
    }
    Ok(out)
}

/// Copies `bytes` bytes of `buffer` from `offset` into a staging buffer and maps it.
pub fn read_bytes(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
    what: &str,
) -> Result<Vec<u8>> {
    read_parts(ctx, &[(buffer, offset, bytes)], what)
}

/// Copies each (buffer, offset, bytes) part one after the other into one staging buffer, waits
/// once, and returns their bytes in that order.
fn read_parts(
    ctx: &GpuContext,
    parts: &[(&wgpu::Buffer, u64, u64)],
    what: &str,
) -> Result<Vec<u8>> {
    let total: u64 = parts.iter().map(|p| p.2).sum();
    if total == 0 {
        return Ok(Vec::new());
    }
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("rigl readback"),
        size: total,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    let mut at = 0u64;
    for &(buffer, offset, bytes) in parts {
        if bytes > 0 {
            enc.copy_buffer_to_buffer(buffer, offset, &staging, at, bytes);
        }
        at += bytes;
    }
    map_staging(ctx, &staging, enc, what)
}

/// Submits `enc` (its copies into `staging`), waits, maps `staging` and returns its bytes.
fn map_staging(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    enc: wgpu::CommandEncoder,
    what: &str,
) -> Result<Vec<u8>> {
    let idx = ctx.queue.submit([enc.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    ctx.wait(&format!("reading back {what}"), idx)?;
    rx.recv()
        .map_err(|_| RiglError::Gpu {
            what: format!("reading back {what}"),
            message: "map callback never ran".into(),
        })?
        .map_err(|e| RiglError::Gpu {
            what: format!("reading back {what}"),
            message: e.to_string(),
        })?;
    let view = staging.get_mapped_range(..).map_err(|e| RiglError::Gpu {
        what: format!("reading back {what}"),
        message: e.to_string(),
    })?;
    let out = view.to_vec();
    drop(view);
    staging.unmap();
    Ok(out)
}

/// Splits `workgroups` over the x and y dimensions within the device limit.
///
/// Kernels rebuild the linear index as `wid.x + wid.y * num_workgroups.x` and ignore the excess.
pub fn dispatch_dims(ctx: &GpuContext, workgroups: u64, what: &str) -> Result<(u32, u32)> {
    let max = u64::from(ctx.limits.max_compute_workgroups_per_dimension.max(1));
    if workgroups <= max {
        return Ok((workgroups.max(1) as u32, 1));
    }
    let y = workgroups.div_ceil(max);
    if y > max {
        return Err(RiglError::TooLarge {
            what: what.to_string(),
            needed: workgroups,
            unit: "workgroups",
            limit: max * max,
            limit_name: "max_compute_workgroups_per_dimension squared",
        });
    }
    Ok((max as u32, y as u32))
}

#[cfg(test)]
mod tests {
    use super::f32_bytes;

    #[test]
    fn f32_bytes_multiplies_and_saturates_instead_of_wrapping() {
        assert_eq!(f32_bytes(&[784, 300]), 784 * 300 * 4);
        assert_eq!(f32_bytes(&[7]), 28);
        assert_eq!(f32_bytes(&[]), 4);
        assert_eq!(f32_bytes(&[3, 0]), 0);
        // 2^32 * 2^32 * 4 wraps to 0 in u64 arithmetic; it must read as too large.
        assert_eq!(f32_bytes(&[1 << 32, 1 << 32]), u64::MAX);
        assert_eq!(f32_bytes(&[usize::MAX, 2]), u64::MAX);
    }
}

//! GPU timing: timestamp queries around a compute pass when the adapter has them, wall clock
//! around submit-and-wait otherwise. Reported times are medians after a warm-up.

use crate::error::{Result, RiglError};
use crate::gpu::buffer::read_bytes;
use crate::gpu::ops::Dispatch;
use crate::gpu::GpuContext;

/// How a time was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// GPU timestamp queries.
    Timestamp,
    /// Host wall clock around submit and wait.
    Wall,
}

impl Timing {
    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Timing::Timestamp => "timestamp",
            Timing::Wall => "wall",
        }
    }
}

/// Median of a list (0 for an empty one).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Times `ops` encoded in one compute pass: `warmup` untimed runs, then the median of `reps`, in ms.
pub fn time_ops(
    ctx: &GpuContext,
    ops: &[&Dispatch],
    warmup: usize,
    reps: usize,
    force_wall: bool,
) -> Result<(f64, Timing)> {
    for _ in 0..warmup {
        crate::gpu::ops::run(ctx, "warm-up", ops)?;
    }
    let reps = reps.max(1);
    // Lavapipe's pass timestamps come back far too short around dispatches that read storage
    // textures (a 300x784 SpMM timed at 0.05 ms against 4.3 ms by the wall clock), and for
    // other passes too once a process has run such kernels, so passes with textures, and every
    // pass once the process has built a texture kernel, are timed by the wall clock (which
    // includes the submission); the engine's own choices (GEMM autotune, kernel choice, `rigl
    // bench step`) always use the wall clock.
    let textures = ops.iter().any(|o| o.uses_textures)
        || crate::gpu::ops::TEXTURES_BUILT.load(std::sync::atomic::Ordering::Relaxed);
    let use_ts = ctx.has_timestamps() && !force_wall && !textures;
    let mut times = Vec::with_capacity(reps);
    if use_ts {
        let qs = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("rigl timing"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("rigl timing resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let period = f64::from(ctx.queue.get_timestamp_period());
        for _ in 0..reps {
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("timed"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("timed"),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &qs,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }),
                });
                for op in ops {
                    op.encode(&mut pass);
                }
            }
            enc.resolve_query_set(&qs, 0..2, &resolve, 0);
            ctx.submit_and_wait("timed run", [enc.finish()])?;
            let raw = read_bytes(ctx, &resolve, 0, 16, "timestamps")?;
            let ts: &[u64] = bytemuck::cast_slice(&raw);
            let ticks = ts[1].saturating_sub(ts[0]) as f64;
            times.push(ticks * period / 1e6);
        }
    } else {
        for _ in 0..reps {
            let t0 = std::time::Instant::now();
            crate::gpu::ops::run(ctx, "timed run", ops)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    if times.iter().any(|t| !t.is_finite()) {
        return Err(RiglError::Gpu {
            what: "timing".into(),
            message: "non-finite time".into(),
        });
    }
    Ok((
        median(&mut times),
        if use_ts {
            Timing::Timestamp
        } else {
            Timing::Wall
        },
    ))
}

//! A host program with its own wgpu device, its own two-layer model and its own dense WGSL
//! kernels, using rigl only as the sparse scheduler on its buffers (RigL: masks, the dense
//! gradient at update steps, drop/grow, zeroing new weights and the host's momentum).
//!
//! The task: regress a random linear teacher `t = Tᵀx` with `y = W2ᵀ relu(W1ᵀ x)` under MSE,
//! both weight matrices at 50% sparsity. The program asserts that the sparsity is exact (masks
//! hold exactly the scheduled counts, every weight outside them is zero) and that the loss falls.
//!
//! `cargo run --release --example embed_device` (run by `tests/embed_examples.rs`).

use rigl::embed::{BufferRegion, LayerBuffers, SchedulerConfig, SparseLayerSpec, SparseScheduler};
use rigl::gpu::GpuContext;
use rigl::sparse::{active_count, DropSchedule, Method, UpdateSchedule};

const IN: usize = 16;
const HID: usize = 32;
const OUT: usize = 4;
const BATCH: usize = 32;
const BATCHES: usize = 8;
const SPARSITY: f64 = 0.5;

/// The host's kernels: one small module per entry point, feature-major activations.
const HEADER: &str = "
struct Dims { n_in: u32, hid: u32, out: u32, batch: u32, lr: f32, mom: f32, p0: u32, p1: u32 }
@group(0) @binding(0) var<uniform> d: Dims;
";

const KERNELS: &[(&str, &str)] = &[
    // h = relu(W1ᵀ x)
    (
        "fwd1",
        "
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w1: array<f32>;
@group(0) @binding(3) var<storage, read_write> h: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let idx = g.x;
    if (idx >= d.hid * d.batch) { return; }
    let j = idx / d.batch; let b = idx % d.batch;
    var s = 0.0;
    for (var i = 0u; i < d.n_in; i++) { s += w1[i * d.hid + j] * x[i * d.batch + b]; }
    h[idx] = max(s, 0.0);
}",
    ),
    // y = W2ᵀ h, dy = 2 (y - t) / (out * batch), loss terms (y - t)²
    (
        "fwd2",
        "
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> w2: array<f32>;
@group(0) @binding(3) var<storage, read> t: array<f32>;
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let idx = g.x;
    if (idx >= d.out * d.batch) { return; }
    let k = idx / d.batch; let b = idx % d.batch;
    var s = 0.0;
    for (var j = 0u; j < d.hid; j++) { s += w2[j * d.out + k] * h[j * d.batch + b]; }
    let e = s - t[idx];
    dy[idx] = 2.0 * e / f32(d.out * d.batch);
    loss[idx] = e * e;
}",
    ),
    // g2 = h dyᵀ (dense)
    (
        "grad2",
        "
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> g2: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let idx = g.x;
    if (idx >= d.hid * d.out) { return; }
    let j = idx / d.out; let k = idx % d.out;
    var s = 0.0;
    for (var b = 0u; b < d.batch; b++) { s += h[j * d.batch + b] * dy[k * d.batch + b]; }
    g2[idx] = s;
}",
    ),
    // dh = relu'(h) ⊙ (W2 dy)
    (
        "back_h",
        "
@group(0) @binding(1) var<storage, read> w2: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> h: array<f32>;
@group(0) @binding(4) var<storage, read_write> dh: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let idx = g.x;
    if (idx >= d.hid * d.batch) { return; }
    let j = idx / d.batch; let b = idx % d.batch;
    var s = 0.0;
    for (var k = 0u; k < d.out; k++) { s += w2[j * d.out + k] * dy[k * d.batch + b]; }
    dh[idx] = select(0.0, s, h[idx] > 0.0);
}",
    ),
    // g1 = x dhᵀ (dense)
    (
        "grad1",
        "
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dh: array<f32>;
@group(0) @binding(3) var<storage, read_write> g1: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let idx = g.x;
    if (idx >= d.n_in * d.hid) { return; }
    let i = idx / d.hid; let j = idx % d.hid;
    var s = 0.0;
    for (var b = 0u; b < d.batch; b++) { s += x[i * d.batch + b] * dh[j * d.batch + b]; }
    g1[idx] = s;
}",
    ),
    // SGD with momentum on a whole buffer: m = mu m + g; w -= lr m
    (
        "sgd",
        "
@group(0) @binding(1) var<storage, read> gr: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;
    if (i >= arrayLength(&w)) { return; }
    m[i] = d.mom * m[i] + gr[i];
    w[i] = w[i] - d.lr * m[i];
}",
    ),
];

/// What a run measured.
pub struct Outcome {
    /// Mean loss over the first 20 steps.
    pub first_loss: f32,
    /// Mean loss over the last 20 steps.
    pub last_loss: f32,
}

/// Deterministic values in [-1, 1) (the host's own generator).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn read_f32(device: &wgpu::Device, queue: &wgpu::Queue, buf: &wgpu::Buffer) -> Vec<f32> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host readback"),
        size: buf.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &staging, 0, buf.size());
    let idx = queue.submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
    device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(idx),
            timeout: None,
        })
        .expect("poll");
    let out = bytemuck::cast_slice(&staging.get_mapped_range(..).expect("mapped")).to_vec();
    staging.unmap();
    out
}

/// Trains for `steps` steps and checks exact sparsity after every mask update and at the end.
pub fn run(steps: u64) -> Result<Outcome, Box<dyn std::error::Error>> {
    // 1. The host's own device.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host device"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;

    // 2. The host's buffers and kernels.
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = |label: &str, n: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (n * 4) as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    let (x, t) = (buffer("x", IN * BATCH), buffer("t", OUT * BATCH));
    let (w1, w2) = (buffer("w1", IN * HID), buffer("w2", HID * OUT));
    let (g1, g2) = (buffer("g1", IN * HID), buffer("g2", HID * OUT));
    let (m1, m2) = (buffer("m1", IN * HID), buffer("m2", HID * OUT));
    let (h, dh) = (buffer("h", HID * BATCH), buffer("dh", HID * BATCH));
    let (dy, loss) = (buffer("dy", OUT * BATCH), buffer("loss", OUT * BATCH));
    // Dense initial weights (uniform, Glorot-like scale); rigl masks them below.
    let init = |n_in: usize, n_out: usize, seed| -> Vec<f32> {
        let a = (6.0 / (n_in + n_out) as f32).sqrt();
        values(n_in * n_out, seed).iter().map(|v| v * a).collect()
    };
    queue.write_buffer(&w1, 0, bytemuck::cast_slice(&init(IN, HID, 1)));
    queue.write_buffer(&w2, 0, bytemuck::cast_slice(&init(HID, OUT, 2)));
    let dims: [u32; 8] = [
        IN as u32,
        HID as u32,
        OUT as u32,
        BATCH as u32,
        0.05f32.to_bits(),
        0.9f32.to_bits(),
        0,
        0,
    ];
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("dims"),
        size: 32,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&uniform, 0, bytemuck::cast_slice(&dims));
    let pipeline = |name: &str| {
        let body = KERNELS.iter().find(|(n, _)| *n == name).expect("kernel").1;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(format!("{HEADER}{body}").into()),
        });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let bind = |p: &wgpu::ComputePipeline, bufs: &[&wgpu::Buffer]| {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &p.get_bind_group_layout(0),
            entries: &entries,
        })
    };
    let groups = |n: usize| n.div_ceil(64) as u32;
    let mut steps_fwd_bwd = Vec::new();
    for (name, bufs, n) in [
        ("fwd1", vec![&x, &w1, &h], HID * BATCH),
        ("fwd2", vec![&h, &w2, &t, &dy, &loss], OUT * BATCH),
        ("grad2", vec![&h, &dy, &g2], HID * OUT),
        ("back_h", vec![&w2, &dy, &h, &dh], HID * BATCH),
        ("grad1", vec![&x, &dh, &g1], IN * HID),
    ] {
        let p = pipeline(name);
        let bg = bind(&p, &bufs);
        steps_fwd_bwd.push((p, bg, groups(n)));
    }
    let sgd = pipeline("sgd");
    let sgd_ops = [
        (bind(&sgd, &[&g1, &w1, &m1]), groups(IN * HID)),
        (bind(&sgd, &[&g2, &w2, &m2]), groups(HID * OUT)),
    ];

    // 3. rigl on the host's device and buffers: masks, schedule and updates only.
    let ctx = GpuContext::from_device(device.clone(), queue.clone(), adapter.get_info());
    let layers = vec![
        SparseLayerSpec::new("w1", &[IN, HID], SPARSITY),
        SparseLayerSpec::new("w2", &[HID, OUT], SPARSITY),
    ];
    let buffers = vec![
        LayerBuffers::new(BufferRegion::whole(&w1).named("w1"))
            .with_grad(BufferRegion::whole(&g1).named("g1"))
            .with_slot(BufferRegion::whole(&m1).named("m1")),
        LayerBuffers::new(BufferRegion::whole(&w2).named("w2"))
            .with_grad(BufferRegion::whole(&g2).named("g2"))
            .with_slot(BufferRegion::whole(&m2).named("m2")),
    ];
    let cfg = SchedulerConfig {
        method: Method::Rigl,
        schedule: UpdateSchedule::new(25, steps * 3 / 4, 0.3, DropSchedule::Cosine)?,
        seed: 7,
    };
    let mut sched = SparseScheduler::new(&ctx, cfg, layers.clone(), buffers)?;
    sched.apply_masks_now()?;

    // 4. The host's data: a random linear teacher.
    let teacher = values(IN * OUT, 3);
    let batches: Vec<(Vec<f32>, Vec<f32>)> = (0..BATCHES)
        .map(|i| {
            let xs = values(IN * BATCH, 100 + i as u32);
            let mut ts = vec![0.0f32; OUT * BATCH];
            for k in 0..OUT {
                for b in 0..BATCH {
                    ts[k * BATCH + b] = (0..IN)
                        .map(|i| 0.5 * teacher[i * OUT + k] * xs[i * BATCH + b])
                        .sum();
                }
            }
            (xs, ts)
        })
        .collect();

    // 5. The host's training loop.
    let mut losses = Vec::new();
    for step in 0..steps {
        let (xs, ts) = &batches[step as usize % BATCHES];
        queue.write_buffer(&x, 0, bytemuck::cast_slice(xs));
        queue.write_buffer(&t, 0, bytemuck::cast_slice(ts));
        let mut enc = device.create_command_encoder(&Default::default());
        {
            // These dense kernels always produce the dense gradient; a sparse host would
            // compute it only when sched.needs_dense_gradient(step).
            let mut pass = enc.begin_compute_pass(&Default::default());
            for (p, bg, n) in &steps_fwd_bwd {
                pass.set_pipeline(p);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(*n, 1, 1);
            }
        }
        if !sched.skips_optimizer(step) {
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&sgd);
                for (bg, n) in &sgd_ops {
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(*n, 1, 1);
                }
            }
            sched.apply_masks(&mut enc);
        }
        // After the optimizer step, as the official code orders them.
        let updated = sched.update(step, &mut enc)?;
        queue.submit([enc.finish()]);
        let l = read_f32(&device, &queue, &loss);
        losses.push(l.iter().sum::<f32>() / l.len() as f32);

        if updated.is_some() || step + 1 == steps {
            // Exact sparsity: the scheduled active counts, and zero weights outside the masks.
            let masks = sched.read_masks()?;
            for ((spec, mask), w) in layers.iter().zip(&masks).zip([&w1, &w2]) {
                let active = mask.iter().filter(|&&m| m == 1.0).count();
                assert_eq!(active, active_count(spec.len(), SPARSITY), "{}", spec.name);
                let w = read_f32(&device, &queue, w);
                let stray = w.iter().zip(mask).filter(|(w, m)| **m == 0.0 && **w != 0.0);
                assert_eq!(stray.count(), 0, "{}: weights outside the mask", spec.name);
            }
        }
    }
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    Ok(Outcome {
        first_loss: mean(&losses[..20]),
        last_loss: mean(&losses[losses.len() - 20..]),
    })
}

pub fn main() {
    let o = run(300).expect("embedded training");
    println!(
        "embed_device: loss {:.4} -> {:.4} (mean of the first and last 20 steps), sparsity exact",
        o.first_loss, o.last_loss
    );
    assert!(
        o.last_loss < 0.5 * o.first_loss,
        "the loss did not fall: {} -> {}",
        o.first_loss,
        o.last_loss
    );
}

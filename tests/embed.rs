//! rigl embedded in another trainer: the scheduler on the host's own buffers against rigl's own
//! training path (exact masks and weights), the CPU scheduler against the GPU one, state in and
//! out, and every caller mistake as a typed error.

mod common;

use common::{ctx, data};
use rigl::embed::{
    BufferRegion, CpuLayer, CpuScheduler, LayerBuffers, SchedulerConfig, SchedulerState,
    SparseLayerSpec, SparseScheduler,
};
use rigl::gpu::ops::{Dispatch, SgdConfig};
use rigl::gpu::{GemmVariant, GpuContext, Tensor};
use rigl::nn::{Mlp, MlpConfig};
use rigl::sparse::init::{dense_weights, init_layer, rng_for, WeightInit};
use rigl::sparse::update::{GrowRule, LayerCounts, MaskUpdater};
use rigl::sparse::{active_count, DropSchedule, Method, UpdateSchedule};
use rigl::RiglError;

const SIZES: [usize; 3] = [20, 24, 6];
const BATCH: usize = 16;
const SEED: u64 = 5;
const SPARSITY: f64 = 0.7;

fn schedule() -> UpdateSchedule {
    UpdateSchedule::new(3, 12, 0.3, DropSchedule::Cosine).unwrap()
}

fn specs() -> Vec<SparseLayerSpec> {
    (0..SIZES.len() - 1)
        .map(|l| SparseLayerSpec::new(format!("fc{}", l + 1), &[SIZES[l], SIZES[l + 1]], SPARSITY))
        .collect()
}

fn mlp(masked: bool) -> Mlp {
    Mlp::new(
        ctx(),
        MlpConfig {
            sizes: SIZES.to_vec(),
            batch: BATCH,
            masked,
            label_smoothing: 0.0,
            sgd: SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 1e-4,
                nesterov: true,
            },
            gemm: GemmVariant::RowBlock,
        },
    )
    .unwrap()
}

fn run(ctx: &GpuContext, label: &str, enc_fn: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
    enc_fn(&mut enc);
    ctx.submit_and_wait(label, [enc.finish()]).unwrap();
}

fn encode(enc: &mut wgpu::CommandEncoder, ops: &[&Dispatch]) {
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: None,
        timestamp_writes: None,
    });
    for op in ops {
        op.encode(&mut pass);
    }
}

/// The trainer's RigL path (Mlp + MaskUpdater, masked SGD, no optimizer step at update steps)
/// and a host that trains a *dense* Mlp with its own unmasked SGD and hands the sparsity to
/// `SparseScheduler` on its buffers: same seed, same batches, same masks and weights, bit for
/// bit, at every step.
#[test]
fn scheduler_on_host_buffers_matches_the_trainer_path() {
    let ctx = ctx();
    let cfg = SchedulerConfig {
        method: Method::Rigl,
        schedule: schedule(),
        seed: SEED,
    };
    let n_layers = SIZES.len() - 1;

    // rigl's own path, initialised as `rigl train` does.
    let rigl_model = mlp(true);
    let mut weights = Vec::new();
    let mut masks = Vec::new();
    let biases: Vec<Vec<f32>> = (0..n_layers)
        .map(|l| data(SIZES[l + 1], 90 + l as u32))
        .collect();
    for l in 0..n_layers {
        let shape = [SIZES[l], SIZES[l + 1]];
        let active = active_count(shape[0] * shape[1], SPARSITY);
        let init = init_layer(SEED, l as u64, &shape, active, WeightInit::GlorotUniform).unwrap();
        weights.push(init.weights);
        masks.push(init.mask);
    }
    rigl_model.load(ctx, &weights, &masks, &biases).unwrap();
    let updater = MaskUpdater::new(
        ctx,
        rigl_model.placements.clone(),
        &rigl_model.w,
        &rigl_model.mask,
        &rigl_model.mom,
        &rigl_model.grad,
        SEED as u32,
    )
    .unwrap();

    // The host: dense weights of its own, dense kernels, rigl only as the scheduler.
    let host = mlp(false);
    let dense: Vec<Vec<f32>> = (0..n_layers)
        .map(|l| {
            let shape = [SIZES[l], SIZES[l + 1]];
            dense_weights(
                &shape,
                WeightInit::GlorotUniform,
                &mut rng_for(SEED, 2 * l as u64 + 1),
            )
            .unwrap()
        })
        .collect();
    let ones: Vec<Vec<f32>> = dense.iter().map(|w| vec![1.0; w.len()]).collect();
    host.load(ctx, &dense, &ones, &biases).unwrap();
    let buffers: Vec<LayerBuffers> = host
        .placements
        .iter()
        .map(|p| {
            let at = |t: &Tensor| BufferRegion::at(&t.buffer, t.offset + 4 * p.offset as u64);
            LayerBuffers::new(at(&host.w))
                .with_grad(at(&host.grad))
                .with_slot(at(&host.mom))
        })
        .collect();
    let mut sched = SparseScheduler::new(ctx, cfg, specs(), buffers).unwrap();
    assert_eq!(
        sched.read_masks().unwrap(),
        masks,
        "same initial masks for the same seed"
    );
    sched.apply_masks_now().unwrap();
    assert_eq!(
        host.read_layers(ctx, &host.w).unwrap(),
        weights,
        "masked initial weights"
    );

    let total_steps = 16u64;
    let mut updates = 0;
    for step in 0..total_steps {
        let x = data(SIZES[0] * BATCH, 1000 + step as u32);
        let labels: Vec<u32> = (0..BATCH as u32)
            .map(|b| (b * 7 + step as u32) % SIZES[2] as u32)
            .collect();
        rigl_model.set_batch(ctx, &x, &labels).unwrap();
        host.set_batch(ctx, &x, &labels).unwrap();

        // rigl's trainer step.
        let mut ops = rigl_model.forward_ops();
        ops.extend(rigl_model.backward_ops());
        let is_update = cfg.schedule.is_update_step(step);
        if is_update {
            let df = cfg.schedule.drop_fraction(step);
            let counts: Vec<LayerCounts> = sched
                .active_counts()
                .iter()
                .map(|&a| {
                    let d = rigl::sparse::schedule::drop_count(a, df);
                    LayerCounts {
                        k_keep: a - d,
                        k_grow: d,
                    }
                })
                .collect();
            updater.prepare(ctx, step as u32, &counts).unwrap();
            ops.extend(updater.dispatches(GrowRule::Score));
        } else {
            ops.extend(rigl_model.sgd_ops());
        }
        run(ctx, "rigl step", |enc| encode(enc, &ops));

        // The host's step.
        assert_eq!(sched.is_update_step(step), is_update);
        assert_eq!(sched.needs_dense_gradient(step), is_update);
        assert_eq!(sched.skips_optimizer(step), is_update);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut host_ops = host.forward_ops();
        host_ops.extend(host.backward_ops());
        if !sched.skips_optimizer(step) {
            host_ops.extend(host.sgd_ops());
        }
        encode(&mut enc, &host_ops);
        match sched.update(step, &mut enc).unwrap() {
            Some(info) => {
                updates += 1;
                assert_eq!(info.drop_fraction, cfg.schedule.drop_fraction(step));
                // The cosine drop fraction reaches 0 at t_end = 12.
                assert_eq!(info.dropped.iter().all(|&d| d > 0), step < 12, "{info:?}");
            }
            None => sched.apply_masks(&mut enc),
        }
        ctx.submit_and_wait("host step", [enc.finish()]).unwrap();

        let want_masks = rigl_model.read_layers(ctx, &rigl_model.mask).unwrap();
        assert_eq!(
            sched.read_masks().unwrap(),
            want_masks,
            "masks at step {step}"
        );
        assert_eq!(
            host.read_layers(ctx, &host.w).unwrap(),
            rigl_model.read_layers(ctx, &rigl_model.w).unwrap(),
            "weights at step {step}"
        );
        assert_eq!(
            host.read_layers(ctx, &host.mom).unwrap(),
            rigl_model.read_layers(ctx, &rigl_model.mom).unwrap(),
            "momentum at step {step}"
        );
        assert_eq!(
            host.read_biases(ctx).unwrap(),
            rigl_model.read_biases(ctx).unwrap(),
            "biases at step {step}"
        );
        for (m, spec) in want_masks.iter().zip(specs()) {
            let want = active_count(spec.len(), SPARSITY);
            assert_eq!(
                m.iter().filter(|&&v| v == 1.0).count(),
                want,
                "exact sparsity"
            );
        }
    }
    assert_eq!(updates, 5, "updates at steps 0, 3, 6, 9, 12");
    assert_ne!(sched.read_masks().unwrap(), masks, "the masks moved");
}

/// Host state of a two-layer model for the CPU-vs-GPU comparison.
struct HostState {
    w: Vec<Vec<f32>>,
    g: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

fn host_state(specs: &[SparseLayerSpec], seed: u32) -> HostState {
    let f = |k: u32| -> Vec<Vec<f32>> {
        specs
            .iter()
            .enumerate()
            .map(|(l, s)| data(s.len(), seed * 100 + k * 10 + l as u32))
            .collect()
    };
    HostState {
        w: f(1),
        g: f(2),
        m: f(3),
        v: f(4),
    }
}

/// The GPU scheduler on per-layer host buffers (weights and both slots in one buffer at odd
/// offsets, gradients in buffers of their own) against the CPU scheduler on slices, over several
/// updates with fresh weights and gradients each time: exact masks, weights and both slots.
#[test]
fn gpu_scheduler_equals_cpu_scheduler() {
    let ctx = ctx();
    let specs = vec![
        SparseLayerSpec::new("a", &[37, 11], 0.8),
        SparseLayerSpec::new("b", &[64, 5], 0.5),
        SparseLayerSpec::new("c", &[300], 0.9),
        // A convolution kernel [kh, kw, cin, cout]: flat over its shape like any other.
        SparseLayerSpec::new("conv", &[3, 3, 5, 7], 0.75),
    ];
    for method in [Method::Rigl, Method::Set] {
        let cfg = SchedulerConfig {
            method,
            schedule: UpdateSchedule::new(2, 10, 0.5, DropSchedule::Constant).unwrap(),
            seed: 77,
        };
        let mut cpu = CpuScheduler::new(cfg, specs.clone()).unwrap();
        // One host buffer holds every layer's weights, momentum and second moment, at
        // 4-byte-aligned (not 256-byte-aligned) offsets: 12 bytes of other data first.
        let total: usize = specs.iter().map(|s| s.len()).sum();
        let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let big = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host state"),
            size: (12 + 3 * total * 4) as u64,
            usage,
            mapped_at_creation: false,
        });
        let grads: Vec<wgpu::Buffer> = specs
            .iter()
            .map(|s| {
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("grad"),
                    size: (s.len() * 4) as u64,
                    usage,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let mut offsets = Vec::new();
        let mut off = 12u64;
        for s in &specs {
            let o = [off, off + 4 * total as u64, off + 8 * total as u64];
            offsets.push(o);
            off += 4 * s.len() as u64;
        }
        let buffers = offsets
            .iter()
            .zip(&grads)
            .map(|(o, g)| {
                LayerBuffers::new(BufferRegion::at(&big, o[0]).named("host state"))
                    .with_grad(BufferRegion::whole(g))
                    .with_slot(BufferRegion::at(&big, o[1]))
                    .with_slot(BufferRegion::at(&big, o[2]))
            })
            .collect();
        let mut gpu = SparseScheduler::new(ctx, cfg, specs.clone(), buffers).unwrap();
        assert_eq!(gpu.read_masks().unwrap(), cpu.masks());
        for step in 0..9u64 {
            let mut h = host_state(&specs, step as u32 + 1);
            for (l, o) in offsets.iter().enumerate() {
                for (k, t) in [&h.w[l], &h.m[l], &h.v[l]].into_iter().enumerate() {
                    ctx.queue.write_buffer(&big, o[k], bytemuck::cast_slice(t));
                }
                ctx.queue
                    .write_buffer(&grads[l], 0, bytemuck::cast_slice(&h.g[l]));
            }
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            let got = gpu.update(step, &mut enc).unwrap();
            if got.is_none() {
                gpu.apply_masks(&mut enc);
            }
            ctx.submit_and_wait("update", [enc.finish()]).unwrap();
            let mut layers: Vec<CpuLayer> = Vec::new();
            for (((w, g), m), v) in
                h.w.iter_mut()
                    .zip(&h.g)
                    .zip(h.m.iter_mut())
                    .zip(h.v.iter_mut())
            {
                layers.push(CpuLayer::new(w).with_grad(g).with_slot(m).with_slot(v));
            }
            let want = cpu.update(step, &mut layers).unwrap();
            if want.is_none() {
                cpu.apply_masks(&mut layers).unwrap();
            }
            assert_eq!(got, want, "{method} step {step}");
            let back = rigl::gpu::buffer::read_bytes(ctx, &big, 0, big.size(), "host").unwrap();
            let back: &[f32] = bytemuck::cast_slice(&back[12..]);
            let gm = gpu.read_masks().unwrap();
            for (l, s) in specs.iter().enumerate() {
                let base = (offsets[l][0] - 12) as usize / 4;
                let at = |k: usize| &back[base + k * total..base + k * total + s.len()];
                let what = format!("{method} step {step} layer {}", s.name);
                assert_eq!(gm[l], cpu.masks()[l], "{what}: mask");
                assert_eq!(at(0), &h.w[l][..], "{what}: weights");
                assert_eq!(at(1), &h.m[l][..], "{what}: slot 0");
                assert_eq!(at(2), &h.v[l][..], "{what}: slot 1");
                let active = gm[l].iter().filter(|&&v| v == 1.0).count();
                assert_eq!(
                    active,
                    active_count(s.len(), s.sparsity),
                    "{what}: sparsity"
                );
            }
        }
    }
}

/// State out of the GPU scheduler, through bytes and a file, into a CPU scheduler; a restored
/// scheduler continues exactly as one that never stopped.
#[test]
fn state_round_trips_and_continues_identically() {
    let specs = vec![
        SparseLayerSpec::new("fc1", &[30, 20], 0.9),
        SparseLayerSpec::new("fc2", &[20, 3], 0.5),
    ];
    let cfg = SchedulerConfig {
        method: Method::Set,
        schedule: UpdateSchedule::new(1, 100, 0.3, DropSchedule::Cosine).unwrap(),
        seed: 3,
    };
    let mut a = CpuScheduler::new(cfg, specs.clone()).unwrap();
    let mut h = host_state(&specs, 9);
    let step_with = |s: &mut CpuScheduler, h: &mut HostState, step: u64| {
        let mut layers: Vec<CpuLayer> =
            h.w.iter_mut()
                .zip(h.m.iter_mut())
                .map(|(w, m)| CpuLayer::new(w).with_slot(m))
                .collect();
        s.update(step, &mut layers).unwrap();
    };
    for step in 0..4 {
        step_with(&mut a, &mut h, step);
    }
    let state = a.state();
    assert_eq!(state.step, 4);
    let bytes = state.to_bytes().unwrap();
    assert_eq!(SchedulerState::from_bytes(&bytes).unwrap(), state);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sched.safetensors");
    state.save(&path).unwrap();
    let loaded = SchedulerState::load(&path).unwrap();
    assert_eq!(loaded, state);

    // A fresh scheduler (another seed at first) restored from the file continues identically.
    let mut b = CpuScheduler::new(SchedulerConfig { seed: 1, ..cfg }, specs.clone()).unwrap();
    b.restore(&loaded).unwrap();
    assert_eq!(b.masks(), a.masks());
    let mut h2 = HostState {
        w: h.w.clone(),
        g: h.g.clone(),
        m: h.m.clone(),
        v: h.v.clone(),
    };
    for step in 4..7 {
        step_with(&mut a, &mut h, step);
        step_with(&mut b, &mut h2, step);
        assert_eq!(a.masks(), b.masks(), "step {step}");
        assert_eq!(h.w, h2.w);
    }

    // Into a GPU scheduler too.
    let ctx = ctx();
    let bufs: Vec<LayerBuffers> = specs
        .iter()
        .map(|s| {
            let t = Tensor::zeros(ctx, "w", s.len()).unwrap();
            LayerBuffers::new(BufferRegion::whole(&t.buffer))
        })
        .collect();
    let mut g = SparseScheduler::new(ctx, cfg, specs.clone(), bufs).unwrap();
    g.restore(&a.state()).unwrap();
    assert_eq!(g.read_masks().unwrap(), a.masks());
    assert_eq!(g.state().unwrap(), a.state());

    // Bad input is a typed error naming the problem.
    let err = SchedulerState::from_bytes(b"not safetensors").unwrap_err();
    assert!(matches!(err, RiglError::BadFile { .. }), "{err}");
    let mut other = state.clone();
    other.layers[1].name = "fc9".into();
    let err = b.restore(&other).unwrap_err().to_string();
    assert!(err.contains("fc9"), "{err}");
}

fn expect_bad_buffer(r: rigl::Result<SparseScheduler>, role: &str, msg: &str) {
    match r {
        Err(RiglError::BadBuffer {
            role: r, message, ..
        }) => {
            assert!(r.contains(role), "{r}");
            assert!(message.contains(msg), "{message}");
        }
        other => panic!("expected a BadBuffer error about {role}, got {other:?}"),
    }
}

/// Caller mistakes are typed errors that name the buffer, the layer or the limit.
#[test]
fn caller_mistakes_are_errors() {
    let ctx = ctx();
    let specs = vec![SparseLayerSpec::new("fc1", &[8, 8], 0.5)];
    let cfg = SchedulerConfig {
        method: Method::Rigl,
        schedule: schedule(),
        seed: 0,
    };
    let buf = |size: u64, usage: wgpu::BufferUsages| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let ok = buf(256, copy);
    let grad = LayerBuffers::new(BufferRegion::whole(&ok)).with_grad(BufferRegion::whole(&ok));
    let make = |b: LayerBuffers| SparseScheduler::new(ctx, cfg, specs.clone(), vec![b]);

    let small = buf(128, copy);
    expect_bad_buffer(
        make(LayerBuffers::new(BufferRegion::whole(&small)).with_grad(BufferRegion::whole(&ok))),
        "weights of layer fc1",
        "has 128 bytes",
    );
    let read_only = buf(256, wgpu::BufferUsages::COPY_SRC);
    expect_bad_buffer(
        make(
            LayerBuffers::new(BufferRegion::whole(&read_only)).with_grad(BufferRegion::whole(&ok)),
        ),
        "weights of layer fc1",
        "COPY_DST",
    );
    expect_bad_buffer(
        make(grad.clone().with_slot(BufferRegion::at(&ok, 2))),
        "optimizer slot 0 of layer fc1",
        "multiple of 4",
    );
    let no_copy = buf(256, wgpu::BufferUsages::STORAGE);
    expect_bad_buffer(
        make(LayerBuffers::new(BufferRegion::whole(&ok)).with_grad(BufferRegion::whole(&no_copy))),
        "gradient of layer fc1",
        "COPY_SRC",
    );
    let err = make(LayerBuffers::new(BufferRegion::whole(&ok)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fc1") && err.contains("gradient"), "{err}");
    let err = SparseScheduler::new(ctx, cfg, specs.clone(), vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 layer buffers for 1 layers"), "{err}");
    let err = SparseScheduler::new(
        ctx,
        SchedulerConfig {
            method: Method::Prune,
            ..cfg
        },
        specs.clone(),
        vec![grad.clone()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("prune"), "{err}");
    let bad_sparsity = vec![SparseLayerSpec::new("fc1", &[8, 8], 1.0)];
    let err = CpuScheduler::new(cfg, bad_sparsity)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fc1") && err.contains("sparsity"), "{err}");

    // CPU: wrong lengths and a missing gradient name the layer, and change nothing.
    let mut cpu = CpuScheduler::new(cfg, specs.clone()).unwrap();
    let before = cpu.masks().to_vec();
    let mut w = vec![1.0f32; 63];
    let err = cpu
        .update(0, &mut [CpuLayer::new(&mut w)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer fc1: weights has 63 values"), "{err}");
    let mut w = vec![1.0f32; 64];
    let err = cpu
        .update(0, &mut [CpuLayer::new(&mut w)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fc1") && err.contains("dense gradient"),
        "{err}"
    );
    assert_eq!(cpu.masks(), &before[..]);

    // A host device created with WebGL2-level limits (4 storage buffers per stage) is refused
    // with an error naming the limit, not a panic inside wgpu.
    let small_ctx = pollster::block_on(async {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .unwrap();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                required_limits: wgpu::Limits::downlevel_webgl2_defaults(),
                ..Default::default()
            })
            .await
            .unwrap();
        GpuContext::from_device(device, queue, adapter.get_info())
    });
    assert!(!small_ctx.owned);
    let b = small_ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: copy,
        mapped_at_creation: false,
    });
    let lb = LayerBuffers::new(BufferRegion::whole(&b)).with_grad(BufferRegion::whole(&b));
    match SparseScheduler::new(&small_ctx, cfg, specs.clone(), vec![lb]) {
        Err(RiglError::TooLarge { limit_name, .. }) => {
            assert_eq!(limit_name, "max_storage_buffers_per_shader_stage")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

/// The whole-layer API: forward and backward against the CPU twins, the mask update at an
/// update step against the CPU mask update (exact), SGD on the other steps, and the layer's
/// initial state equal to the trainer's for the same seed and layer index.
#[test]
fn sparse_linear_layer_matches_cpu_twins() {
    use rigl::cpu::dense;
    use rigl::embed::{LinearIo, SparseLinear, SparseLinearConfig};
    use rigl::gpu::GemmShape;
    let ctx = ctx();
    let (fin, fout, b) = (13usize, 7usize, 5usize);
    let sched = SchedulerConfig {
        method: Method::Rigl,
        schedule: UpdateSchedule::new(2, 10, 0.3, DropSchedule::Cosine).unwrap(),
        seed: 4,
    };
    let mut cfg = SparseLinearConfig::new("fc", fin, fout, b, 0.6, sched);
    cfg.relu = true;
    cfg.layer_index = 1;
    let io = LinearIo::allocate(ctx, fin, fout, b, true).unwrap();
    let mut layer = SparseLinear::new(ctx, cfg.clone(), io.clone()).unwrap();
    let active = active_count(fin * fout, 0.6);
    assert_eq!(layer.active(), active);
    let init = init_layer(4, 1, &[fin, fout], active, WeightInit::GlorotUniform).unwrap();
    let mask0 = layer.read_mask(ctx).unwrap();
    let w0 = layer.read_weights(ctx).unwrap();
    assert_eq!(mask0, init.mask, "the trainer's initial mask");
    assert_eq!(w0, init.weights, "the trainer's initial weights");
    let bias = data(fout, 3);
    layer.load(ctx, &w0, &bias).unwrap();

    let fwd_bwd = |layer: &SparseLinear, step: u32| {
        let x = data(fin * b, 10 + step);
        let dy = data(fout * b, 20 + step);
        io.x.write_f32(ctx, &x).unwrap();
        io.dy.write_f32(ctx, &dy).unwrap();
        run(ctx, "layer", |enc| {
            let mut pass = enc.begin_compute_pass(&Default::default());
            layer.encode_forward(&mut pass);
            layer.encode_backward(&mut pass);
        });
        (x, dy)
    };
    let (x, dy) = fwd_bwd(&layer, 0);
    // CPU twin of forward and backward.
    let mut y = vec![0.0f32; fout * b];
    let fwd = GemmShape {
        m: fout,
        n: b,
        k: fin,
        trans_a: true,
        trans_b: false,
    };
    dense::gemm(fwd, &w0, &x, &mut y, Some(&mask0), false);
    for f in 0..fout {
        for s in 0..b {
            y[f * b + s] = (y[f * b + s] + bias[f]).max(0.0);
        }
    }
    common::assert_close("y", &io.y.read_f32(ctx).unwrap(), &y, 1e-5, 1e-4);
    let dz: Vec<f32> = dy
        .iter()
        .zip(&y)
        .map(|(d, y)| if *y > 0.0 { *d } else { 0.0 })
        .collect();
    let db: Vec<f32> = (0..fout)
        .map(|f| dz[f * b..(f + 1) * b].iter().sum())
        .collect();
    let mut dw = vec![0.0f32; fin * fout];
    let gshape = GemmShape {
        m: fin,
        n: fout,
        k: b,
        trans_a: false,
        trans_b: true,
    };
    dense::gemm(gshape, &x, &dz, &mut dw, None, false);
    let mut dx = vec![0.0f32; fin * b];
    dense::gemm(
        GemmShape::nn(fin, b, fout),
        &w0,
        &dz,
        &mut dx,
        Some(&mask0),
        false,
    );
    common::assert_close(
        "db",
        &layer.read_bias_gradient(ctx).unwrap(),
        &db,
        1e-5,
        1e-4,
    );
    let grad = layer.read_weight_gradient(ctx).unwrap();
    common::assert_close("dW", &grad, &dw, 1e-5, 1e-4);
    let dx_gpu = io.dx.as_ref().unwrap().read_f32(ctx).unwrap();
    common::assert_close("dx", &dx_gpu, &dx, 1e-5, 1e-4);

    // Step 0 is an update step: RigL's update, exactly the CPU twin's, and no SGD.
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let info = layer.encode_step(ctx, 0, &mut enc).unwrap().unwrap();
    ctx.submit_and_wait("step 0", [enc.finish()]).unwrap();
    let (mut w_cpu, mut m_cpu, mut mask_cpu) =
        (w0.clone(), vec![0.0f32; fin * fout], mask0.clone());
    let stats = rigl::cpu::mask_update::rigl_update(
        &mut w_cpu,
        &mut [&mut m_cpu[..]],
        &mut mask_cpu,
        &grad,
        info.drop_fraction,
    )
    .unwrap();
    assert_eq!(info.dropped, vec![stats.n_drop]);
    assert!(stats.n_drop > 0);
    assert_eq!(layer.read_mask(ctx).unwrap(), mask_cpu);
    assert_eq!(layer.read_weights(ctx).unwrap(), w_cpu);
    assert_eq!(
        layer.read_bias(ctx).unwrap(),
        bias,
        "no optimizer step at a RigL update"
    );

    // Step 1: SGD on the active weights, as the CPU twin, with a new optimizer from set_sgd
    // (Nesterov switched on: a pipeline constant, so the kernels are rebuilt).
    let sgd = SgdConfig {
        lr: 0.05,
        momentum: 0.8,
        weight_decay: 1e-2,
        nesterov: !cfg.sgd.nesterov,
    };
    layer.set_sgd(ctx, sgd).unwrap();
    assert_eq!(layer.config().sgd, sgd);
    fwd_bwd(&layer, 1);
    let grad = layer.read_weight_gradient(ctx).unwrap();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    assert!(layer.encode_step(ctx, 1, &mut enc).unwrap().is_none());
    ctx.submit_and_wait("step 1", [enc.finish()]).unwrap();
    dense::sgd(&grad, &mut w_cpu, &mut m_cpu, Some(&mask_cpu), sgd);
    common::assert_close(
        "w after SGD",
        &layer.read_weights(ctx).unwrap(),
        &w_cpu,
        1e-6,
        1e-5,
    );
    let mask1 = layer.read_mask(ctx).unwrap();
    assert_eq!(mask1.iter().filter(|&&v| v == 1.0).count(), active);

    // A caller's activation buffer without STORAGE is refused, naming its role.
    let plain = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (fin * b * 4) as u64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut bad_io = io.clone();
    bad_io.x = Tensor::from_buffer(
        &plain,
        0,
        fin * b,
        "host x",
        "x",
        wgpu::BufferUsages::empty(),
    )
    .unwrap();
    match SparseLinear::new(ctx, cfg.clone(), bad_io) {
        Err(RiglError::BadBuffer { role, message, .. }) => {
            assert_eq!(role, "input of layer fc");
            assert!(message.contains("STORAGE"), "{message}");
        }
        other => panic!("expected BadBuffer, got {other:?}"),
    }
    // x and y as views of one buffer (one dispatch reads one and writes the other, which wgpu
    // forbids): refused, not a panic at encoding.
    let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment.max(4));
    let off = (4 * (fin * b) as u64).div_ceil(align) * align;
    let shared = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: off + (4 * fout * b) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let view = |o: u64, len: usize| {
        Tensor::from_buffer(&shared, o, len, "host", "host", wgpu::BufferUsages::STORAGE).unwrap()
    };
    let mut bad_io = io.clone();
    bad_io.x = view(0, fin * b);
    bad_io.y = view(off, fout * b);
    match SparseLinear::new(ctx, cfg, bad_io) {
        Err(RiglError::BadBuffer { role, message, .. }) => {
            assert_eq!(role, "output of layer fc");
            assert!(message.contains("same wgpu buffer"), "{message}");
        }
        other => panic!("expected BadBuffer, got {other:?}"),
    }
}

/// A host's convolution kernels get the sparsities `rigl train` would give them: the 22 masked
/// layers of WRN-22-2 (4-D kernels and the dense logits layer) distributed by ERK reproduce the
/// official implementation's per-layer values; and a scheduler over 4-D kernels saves their
/// masks with their 4-D shapes.
#[test]
fn distribute_gives_4d_kernels_the_official_erk_sparsities() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/erk_wrn22_2.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let layers: Vec<(String, Vec<usize>)> = doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let shape = l["shape"].as_array().unwrap();
            (
                l["name"].as_str().unwrap().to_string(),
                shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            )
        })
        .collect();
    let named: Vec<(&str, &[usize])> = layers
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    assert!(named.iter().filter(|(_, s)| s.len() == 4).count() >= 20);
    for s in [0.8, 0.9, 0.95] {
        let cfg = rigl::sparse::DistributionConfig::new(rigl::sparse::Distribution::Erk, s);
        let specs = SparseLayerSpec::distribute(&named, &cfg).unwrap();
        let want = &doc["results"][format!("wrn22_2/erdos_renyi_kernel/S={s}")]["per_layer"];
        for spec in &specs {
            let w = want[&spec.name].as_f64().unwrap();
            assert!(
                (spec.sparsity - w).abs() <= 1e-6,
                "S={s} {}: {} vs {w}",
                spec.name,
                spec.sparsity
            );
        }
        let cfg = SchedulerConfig::rigl(100, 3);
        let sched = CpuScheduler::new(cfg, specs.clone()).unwrap();
        let state = sched.state();
        let back = SchedulerState::from_bytes(&state.to_bytes().unwrap()).unwrap();
        for (l, spec) in back.layers.iter().zip(&specs) {
            assert_eq!(l.shape, spec.shape, "{}", spec.name);
            let active = l.mask.iter().filter(|&&m| m == 1).count();
            assert_eq!(
                active,
                active_count(spec.len(), spec.sparsity),
                "{}",
                spec.name
            );
        }
    }
}

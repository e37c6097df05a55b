//! `embed::SparseConv2d`, the whole sparse convolution layer, against independent references:
//! forward, weight, input and bias gradients and ReLU against the CPU twin of the convolution
//! (`rigl::cpu::conv`) on odd shapes in both kernel forms; the SGD step against the CPU SGD; a
//! RigL update against the CPU mask update (exact); caller-owned buffers giving the same bits as
//! rigl's; and caller mistakes as typed errors.

mod common;

use common::{assert_close, ctx, data};
use rigl::cpu::conv as cpu;
use rigl::cpu::dense;
use rigl::embed::{ConvIo, SchedulerConfig, SparseConv2d, SparseConv2dConfig};
use rigl::gpu::conv::ConvVariant;
use rigl::gpu::ops::SgdConfig;
use rigl::gpu::{GpuContext, Tensor};
use rigl::shape::{Padding, Window};
use rigl::sparse::init::{init_layer, WeightInit};
use rigl::sparse::{active_count, DropSchedule, Method, UpdateSchedule};
use rigl::RiglError;

fn sched(method: Method, seed: u64) -> SchedulerConfig {
    SchedulerConfig {
        method,
        schedule: UpdateSchedule::new(2, 10, 0.3, DropSchedule::Cosine).unwrap(),
        seed,
    }
}

fn window(cfg: &SparseConv2dConfig) -> Window {
    Window {
        n: cfg.batch,
        h: cfg.height,
        w: cfg.width,
        k: cfg.kernel,
        stride: cfg.stride,
        padding: cfg.padding,
    }
}

/// Records forward and backward and waits for them.
fn fwd_bwd(ctx: &GpuContext, layer: &SparseConv2d) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        layer.encode_forward(&mut pass);
        layer.encode_backward(&mut pass);
    }
    ctx.submit_and_wait("conv layer", [enc.finish()]).unwrap();
}

/// Records the end of step `step` and waits for it.
fn step(
    ctx: &GpuContext,
    layer: &mut SparseConv2d,
    step: u64,
) -> Option<rigl::embed::MaskUpdateInfo> {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let info = layer.encode_step(ctx, step, &mut enc).unwrap();
    ctx.submit_and_wait("conv layer step", [enc.finish()])
        .unwrap();
    info
}

/// Forward, backward (ReLU, bias, weight and input gradients) against the CPU twin on odd
/// shapes: kernels 1, 3 and 5, strides 1 and 2, both paddings, batch 1, one input channel, with
/// and without ReLU, in every kernel form the device runs; the initial state is the trainer's.
#[test]
fn forward_and_backward_match_the_cpu_twin() {
    let ctx = ctx();
    // (batch, height, width, cin, cout, kernel, stride, padding, relu)
    let cases = [
        (1, 7, 5, 1, 3, 3, 1, Padding::Same, true),
        (2, 6, 6, 3, 4, 1, 2, Padding::Valid, false),
        (3, 9, 7, 2, 5, 5, 2, Padding::Same, true),
        (4, 7, 5, 3, 5, 3, 2, Padding::Valid, true),
        (4, 8, 8, 1, 6, 5, 1, Padding::Valid, false),
        (1, 5, 6, 2, 2, 5, 1, Padding::Same, false),
        (4, 6, 5, 2, 3, 1, 1, Padding::Same, true),
    ];
    let mut forms_run = [0usize; 2];
    for (i, &(n, h, w, cin, cout, k, stride, padding, relu)) in cases.iter().enumerate() {
        for (f, form) in [ConvVariant::Direct, ConvVariant::Texture]
            .into_iter()
            .enumerate()
        {
            let s = (10 * i + f) as u32;
            let mut cfg = SparseConv2dConfig::new(
                format!("conv{i}"),
                cin,
                cout,
                k,
                h,
                w,
                n,
                0.5,
                sched(Method::Rigl, 7),
            );
            cfg.stride = stride;
            cfg.padding = padding;
            cfg.relu = relu;
            cfg.layer_index = i as u64;
            cfg.conv = Some(form);
            let g = window(&cfg);
            let what = format!("{form:?} {g:?} cin {cin} cout {cout} relu {relu}");
            let io = ConvIo::allocate(ctx, &cfg, true).unwrap();
            let layer = match SparseConv2d::new(ctx, cfg.clone(), io.clone()) {
                Ok(l) => l,
                Err(RiglError::InvalidArgument(m)) if form == ConvVariant::Texture => {
                    assert!(m.contains("cannot run"), "{what}: {m}");
                    continue;
                }
                Err(e) => panic!("{what}: {e}"),
            };
            forms_run[f] += 1;
            let (ho, wo) = layer.output_hw();
            assert_eq!(
                (Some(ho), Some(wo)),
                (padding.out(h, k, stride), padding.out(w, k, stride)),
                "{what}"
            );
            assert_eq!(cfg.output_hw().unwrap(), (ho, wo));

            // The trainer's initial state for this seed and layer index.
            let shape = [k, k, cin, cout];
            let active = active_count(k * k * cin * cout, 0.5);
            assert_eq!(layer.active(), active, "{what}");
            let init = init_layer(7, i as u64, &shape, active, WeightInit::HeNormal).unwrap();
            let mask = layer.read_mask(ctx).unwrap();
            assert_eq!(mask, init.mask, "{what}: initial mask");
            assert_eq!(layer.read_weights(ctx).unwrap(), init.weights, "{what}");

            let wv = data(k * k * cin * cout, 100 + s);
            let bias = data(cout, 200 + s);
            layer.load(ctx, &wv, &bias).unwrap();
            let x = data(cin * n * h * w, 300 + s);
            let dy = data(cout * n * ho * wo, 400 + s);
            io.x.write_f32(ctx, &x).unwrap();
            io.dy.write_f32(ctx, &dy).unwrap();
            fwd_bwd(ctx, &layer);

            let mut y = cpu::conv2d_forward(&x, &wv, Some(&mask), Some(&bias), g, cin, cout);
            if relu {
                y.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let taps = (k * k * cin) as f32;
            let y_gpu = io.y.read_f32(ctx).unwrap();
            assert_close(&format!("y {what}"), &y_gpu, &y, 1e-5 * taps, 1e-5);
            // ReLU's derivative from the GPU's own output (a CPU value within rounding of 0
            // could fall on the other side).
            let dz: Vec<f32> = if relu {
                dy.iter()
                    .zip(&y_gpu)
                    .map(|(d, y)| if *y > 0.0 { *d } else { 0.0 })
                    .collect()
            } else {
                dy.clone()
            };
            let terms = (n * ho * wo) as f32;
            assert_close(
                &format!("dy after ReLU backward {what}"),
                &io.dy.read_f32(ctx).unwrap(),
                &dz,
                0.0,
                0.0,
            );
            assert_close(
                &format!("db {what}"),
                &layer.read_bias_gradient(ctx).unwrap(),
                &cpu::channel_sums(&dz, cout),
                1e-5 * terms,
                1e-5,
            );
            assert_close(
                &format!("dW {what}"),
                &layer.read_weight_gradient(ctx).unwrap(),
                &cpu::conv2d_weight_grad(&dz, &x, g, cin, cout),
                1e-5 * terms,
                1e-5,
            );
            let dx = io.dx.as_ref().unwrap().read_f32(ctx).unwrap();
            assert_close(
                &format!("dx {what}"),
                &dx,
                &cpu::conv2d_input_grad(&dz, &wv, Some(&mask), g, cin, cout),
                1e-5 * (k * k * cout) as f32,
                1e-5,
            );
        }
    }
    assert_eq!(forms_run[0], cases.len(), "the direct form runs every case");
    // The texture form needs subgroups; where the device has them it ran some of the cases.
    let texture_ok = cases
        .iter()
        .any(|&(n, h, w, cin, cout, k, stride, padding, _)| {
            let g = rigl::gpu::conv::ConvGeom {
                window: Window {
                    n,
                    h,
                    w,
                    k,
                    stride,
                    padding,
                },
                cin,
                cout,
            };
            ConvVariant::Texture.supports(ctx, &g)
        });
    assert_eq!(forms_run[1] > 0, texture_ok);
}

/// The step: at a RigL update step the mask update (exactly the CPU twin's: same count, a
/// changed mask, grown weights zero) and no SGD; on the other steps SGD with momentum on the
/// active weights and the bias (weight decay on the weights only), as the CPU SGD; `set_sgd`
/// taking effect; a static layer never changing its mask.
#[test]
fn sgd_step_and_rigl_update_match_the_cpu_twins() {
    let ctx = ctx();
    let (n, h, w, cin, cout, k) = (2, 6, 5, 3, 4, 3);
    let mut cfg = SparseConv2dConfig::new("c", cin, cout, k, h, w, n, 0.7, sched(Method::Rigl, 3));
    cfg.relu = true;
    cfg.init = WeightInit::GlorotUniform;
    cfg.layer_index = 2;
    let io = ConvIo::allocate(ctx, &cfg, false).unwrap();
    let mut layer = SparseConv2d::new(ctx, cfg.clone(), io.clone()).unwrap();
    let nw = k * k * cin * cout;
    let active = active_count(nw, 0.7);
    let init = init_layer(3, 2, &[k, k, cin, cout], active, WeightInit::GlorotUniform).unwrap();
    let mask0 = layer.read_mask(ctx).unwrap();
    let w0 = layer.read_weights(ctx).unwrap();
    assert_eq!(mask0, init.mask);
    assert_eq!(w0, init.weights);
    let bias0 = data(cout, 1);
    layer.load(ctx, &w0, &bias0).unwrap();
    let (ho, wo) = layer.output_hw();
    let feed = |s: u32| {
        io.x.write_f32(ctx, &data(cin * n * h * w, 10 + s)).unwrap();
        io.dy
            .write_f32(ctx, &data(cout * n * ho * wo, 20 + s))
            .unwrap();
    };

    // Step 0 is an update step: RigL's update, exactly the CPU twin's, and no SGD.
    feed(0);
    fwd_bwd(ctx, &layer);
    let grad = layer.read_weight_gradient(ctx).unwrap();
    let info = step(ctx, &mut layer, 0).expect("step 0 is an update step");
    let (mut w_cpu, mut m_cpu, mut mask_cpu) = (w0.clone(), vec![0.0f32; nw], mask0.clone());
    let stats = rigl::cpu::mask_update::rigl_update(
        &mut w_cpu,
        &mut [&mut m_cpu[..]],
        &mut mask_cpu,
        &grad,
        info.drop_fraction,
    )
    .unwrap();
    assert_eq!(info.step, 0);
    assert_eq!(info.dropped, vec![stats.n_drop]);
    assert!(stats.n_drop > 0);
    let mask1 = layer.read_mask(ctx).unwrap();
    let w1 = layer.read_weights(ctx).unwrap();
    assert_eq!(mask1, mask_cpu, "the CPU twin's mask");
    assert_eq!(w1, w_cpu, "the CPU twin's weights");
    assert_ne!(mask1, mask0, "the update changed the mask");
    assert_eq!(mask1.iter().filter(|&&m| m == 1.0).count(), active);
    assert_eq!(layer.active(), active);
    for i in 0..nw {
        if mask1[i] == 1.0 && mask0[i] == 0.0 {
            assert_eq!(w1[i], 0.0, "grown weight {i} starts at zero");
        }
        if mask1[i] == 0.0 {
            assert_eq!(w1[i], 0.0, "weight {i} outside the mask");
        }
    }
    assert_eq!(
        layer.read_bias(ctx).unwrap(),
        bias0,
        "no SGD at a RigL update"
    );
    assert_eq!(layer.read_momentum(ctx).unwrap(), m_cpu);

    // Step 1: SGD on the active weights and the bias, with a new optimizer from set_sgd.
    let sgd = SgdConfig {
        lr: 0.05,
        momentum: 0.8,
        weight_decay: 1e-2,
        nesterov: true,
    };
    layer.set_sgd(ctx, sgd).unwrap();
    assert_eq!(layer.config().sgd, sgd);
    feed(1);
    fwd_bwd(ctx, &layer);
    let grad = layer.read_weight_gradient(ctx).unwrap();
    let bgrad = layer.read_bias_gradient(ctx).unwrap();
    assert!(step(ctx, &mut layer, 1).is_none());
    dense::sgd(&grad, &mut w_cpu, &mut m_cpu, Some(&mask_cpu), sgd);
    let (mut b_cpu, mut bm_cpu) = (bias0.clone(), vec![0.0f32; cout]);
    let bias_sgd = SgdConfig {
        weight_decay: 0.0,
        ..sgd
    };
    dense::sgd(&bgrad, &mut b_cpu, &mut bm_cpu, None, bias_sgd);
    let w2 = layer.read_weights(ctx).unwrap();
    assert_close("w after SGD", &w2, &w_cpu, 1e-6, 1e-5);
    assert_close(
        "momentum after SGD",
        &layer.read_momentum(ctx).unwrap(),
        &m_cpu,
        1e-6,
        1e-5,
    );
    assert_close(
        "bias after SGD",
        &layer.read_bias(ctx).unwrap(),
        &b_cpu,
        1e-6,
        1e-5,
    );
    assert_ne!(w2, w1, "SGD moved the weights");
    assert_eq!(layer.read_mask(ctx).unwrap(), mask1, "no update at step 1");

    // A static layer steps but never changes its mask.
    let mut st = SparseConv2dConfig::new("s", cin, cout, k, h, w, n, 0.7, sched(Method::Static, 3));
    st.padding = Padding::Valid;
    let io = ConvIo::allocate(ctx, &st, true).unwrap();
    let mut layer = SparseConv2d::new(ctx, st, io.clone()).unwrap();
    let mask0 = layer.read_mask(ctx).unwrap();
    let w0 = layer.read_weights(ctx).unwrap();
    io.x.write_f32(ctx, &data(cin * n * h * w, 5)).unwrap();
    let (ho, wo) = layer.output_hw();
    io.dy.write_f32(ctx, &data(cout * n * ho * wo, 6)).unwrap();
    fwd_bwd(ctx, &layer);
    assert!(step(ctx, &mut layer, 0).is_none(), "static: no update");
    assert_eq!(layer.read_mask(ctx).unwrap(), mask0);
    assert_ne!(
        layer.read_weights(ctx).unwrap(),
        w0,
        "static: SGD at step 0"
    );
}

/// A caller's buffers, views into one buffer at the device's binding alignment: the layer on them
/// gives the same bits as the same layer on rigl's buffers, over update and SGD steps.
#[test]
fn caller_buffers_give_the_same_bits() {
    let ctx = ctx();
    let (n, h, w, cin, cout, k) = (4, 7, 6, 2, 4, 3);
    let mut cfg = SparseConv2dConfig::new("c", cin, cout, k, h, w, n, 0.6, sched(Method::Rigl, 9));
    cfg.relu = true;
    cfg.stride = 2;
    let ours = ConvIo::allocate(ctx, &cfg, true).unwrap();
    let mut a = SparseConv2d::new(ctx, cfg.clone(), ours.clone()).unwrap();

    let (n_in, n_out) = (cfg.input_len().unwrap(), cfg.output_len().unwrap());
    let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment.max(4));
    let at = |bytes: u64| bytes.div_ceil(align) * align;
    // Two host buffers, each holding two activations no dispatch writes while reading the other:
    // x and dy (both read by the weight gradient), y and dx.
    let arena = |label: &str, bytes: u64| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let off_dy = at(4 * n_in as u64);
    let off_dx = at(4 * n_out as u64);
    let reads = arena("host x and dy", off_dy + 4 * n_out as u64);
    let writes = arena("host y and dx", off_dx + 4 * n_in as u64);
    let view = |b: &wgpu::Buffer, off: u64, len: usize, label: &str| {
        Tensor::from_buffer(b, off, len, label, label, wgpu::BufferUsages::STORAGE).unwrap()
    };
    let theirs = ConvIo {
        x: view(&reads, 0, n_in, "host x"),
        y: view(&writes, 0, n_out, "host y"),
        dy: view(&reads, off_dy, n_out, "host dy"),
        dx: Some(view(&writes, off_dx, n_in, "host dx")),
    };
    let mut b = SparseConv2d::new(ctx, cfg.clone(), theirs.clone()).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<u32>>();
    for s in 0..4u64 {
        let x = data(n_in, 30 + s as u32);
        let dy = data(n_out, 40 + s as u32);
        for io in [&ours, &theirs] {
            io.x.write_f32(ctx, &x).unwrap();
            io.dy.write_f32(ctx, &dy).unwrap();
        }
        fwd_bwd(ctx, &a);
        fwd_bwd(ctx, &b);
        let what = format!("step {s}");
        assert_eq!(
            bits(ours.y.read_f32(ctx).unwrap()),
            bits(theirs.y.read_f32(ctx).unwrap()),
            "y {what}"
        );
        assert_eq!(
            bits(ours.dx.as_ref().unwrap().read_f32(ctx).unwrap()),
            bits(theirs.dx.as_ref().unwrap().read_f32(ctx).unwrap()),
            "dx {what}"
        );
        assert_eq!(
            bits(a.read_weight_gradient(ctx).unwrap()),
            bits(b.read_weight_gradient(ctx).unwrap()),
            "dW {what}"
        );
        assert_eq!(
            bits(a.read_bias_gradient(ctx).unwrap()),
            bits(b.read_bias_gradient(ctx).unwrap()),
            "db {what}"
        );
        let ia = step(ctx, &mut a, s);
        let ib = step(ctx, &mut b, s);
        assert_eq!(ia, ib, "{what}");
        assert_eq!(ia.is_some(), s % 2 == 0, "{what}: updates every 2 steps");
        assert_eq!(
            a.read_mask(ctx).unwrap(),
            b.read_mask(ctx).unwrap(),
            "{what}"
        );
        assert_eq!(
            bits(a.read_weights(ctx).unwrap()),
            bits(b.read_weights(ctx).unwrap()),
            "weights {what}"
        );
        assert_eq!(
            bits(a.read_bias(ctx).unwrap()),
            bits(b.read_bias(ctx).unwrap()),
            "bias {what}"
        );
    }
    assert_eq!(b.io().dy.offset, off_dy);
}

fn expect_bad_buffer(r: rigl::Result<SparseConv2d>, role: &str, msg: &str) {
    match r {
        Err(RiglError::BadBuffer {
            role: r, message, ..
        }) => {
            assert_eq!(r, role);
            assert!(message.contains(msg), "{message}");
        }
        other => panic!("expected a BadBuffer error about {role}, got {other:?}"),
    }
}

/// Caller mistakes are typed errors naming the buffer's role or the layer, never a panic: a
/// buffer too short, without STORAGE or at a misaligned offset; a configuration without a
/// dimension or whose valid window does not fit; weights of the wrong length.
#[test]
fn caller_mistakes_are_typed_errors() {
    let ctx = ctx();
    let cfg = SparseConv2dConfig::new("c1", 2, 3, 3, 5, 5, 2, 0.5, sched(Method::Rigl, 0));
    let io = ConvIo::allocate(ctx, &cfg, true).unwrap();
    let (n_in, n_out) = (cfg.input_len().unwrap(), cfg.output_len().unwrap());
    let buf = |bytes: u64, usage: wgpu::BufferUsages| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let all =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment.max(4));
    let host = |b: &wgpu::Buffer, off: u64, len: usize| {
        Tensor::from_buffer(b, off, len, "host", "host", wgpu::BufferUsages::empty()).unwrap()
    };

    // Too short: one element less than the input needs.
    let short = buf(4 * n_in as u64, all);
    let mut bad = io.clone();
    bad.x = host(&short, 0, n_in - 1);
    expect_bad_buffer(
        SparseConv2d::new(ctx, cfg.clone(), bad),
        "input of layer c1",
        &format!("has {} elements, needs {n_in}", n_in - 1),
    );
    // Without STORAGE.
    let plain = buf(4 * n_out as u64, wgpu::BufferUsages::COPY_DST);
    let mut bad = io.clone();
    bad.dy = host(&plain, 0, n_out);
    expect_bad_buffer(
        SparseConv2d::new(ctx, cfg.clone(), bad),
        "output gradient of layer c1",
        "STORAGE",
    );
    // A dx too short is named as the input gradient.
    let mut bad = io.clone();
    bad.dx = Some(host(&short, 0, n_in - 2));
    expect_bad_buffer(
        SparseConv2d::new(ctx, cfg.clone(), bad),
        "input gradient of layer c1",
        "elements",
    );
    // An offset the device cannot bind.
    if align > 4 {
        let big = buf(4 * n_out as u64 + align, all);
        let mut bad = io.clone();
        bad.y = host(&big, 4, n_out);
        expect_bad_buffer(
            SparseConv2d::new(ctx, cfg.clone(), bad),
            "output of layer c1",
            "min_storage_buffer_offset_alignment",
        );
    }

    // x and y (read and written by one dispatch) in one buffer: refused, not a wgpu panic.
    let n_max = n_in.max(n_out);
    let off = (4 * n_max as u64).div_ceil(align) * align;
    let shared = buf(off + 4 * n_max as u64, all);
    let mut bad = io.clone();
    bad.x = host(&shared, 0, n_in);
    bad.y = host(&shared, off, n_out);
    expect_bad_buffer(
        SparseConv2d::new(ctx, cfg.clone(), bad),
        "output of layer c1",
        "same wgpu buffer as the input of layer c1",
    );
    let mut bad = io.clone();
    bad.dy = host(&shared, 0, n_out);
    bad.dx = Some(host(&shared, off, n_in));
    expect_bad_buffer(
        SparseConv2d::new(ctx, cfg.clone(), bad),
        "input gradient of layer c1",
        "same wgpu buffer as the output gradient",
    );

    // Configuration mistakes.
    let invalid = |c: SparseConv2dConfig, what: &str| {
        match SparseConv2d::new(ctx, c.clone(), io.clone()) {
            Err(RiglError::InvalidArgument(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("expected InvalidArgument about {what}, got {other:?}"),
        }
        assert!(ConvIo::allocate(ctx, &c, false).is_err());
    };
    let mut c = cfg.clone();
    c.in_channels = 0;
    invalid(c, "in_channels must be positive");
    let mut c = cfg.clone();
    c.stride = 0;
    invalid(c, "stride must be positive");
    let mut c = cfg.clone();
    c.height = 0;
    invalid(c, "height must be positive");
    let mut c = cfg.clone();
    c.kernel = 7;
    c.padding = Padding::Valid;
    invalid(c, "does not fit");
    let mut c = cfg.clone();
    c.sparsity = 1.0;
    match SparseConv2d::new(ctx, c, io.clone()) {
        Err(RiglError::InvalidArgument(m)) => assert!(m.contains("sparsity"), "{m}"),
        other => panic!("expected InvalidArgument about the sparsity, got {other:?}"),
    }
    let mut c = cfg.clone();
    c.height = 1 << 20;
    c.width = 1 << 20;
    assert!(c.geom().is_err(), "tensors past u32 indexing");

    // Weights of the wrong length are refused and leave the layer as it was.
    let layer = SparseConv2d::new(ctx, cfg.clone(), io.clone()).unwrap();
    let w = layer.read_weights(ctx).unwrap();
    let err = layer.load(ctx, &w[1..], &[0.0; 3]).unwrap_err().to_string();
    assert!(err.contains("c1"), "{err}");
    assert!(layer.load(ctx, &w, &[0.0; 2]).is_err());
    assert_eq!(layer.read_weights(ctx).unwrap(), w);
}

//! The compressed sparse convolution kernels (`src/gpu/sparse_conv.rs`) against their CPU twin,
//! the dense convolution of the weights scattered from the slots (`src/cpu/conv.rs`), in both
//! forms (subgroup broadcast and portable): odd sizes, kernels 1/3/5/7, strides 1 and 2, both
//! paddings, batch 1, one input channel, empty and full output rows, one active weight, with and
//! without bias, accumulating input gradients.

mod common;

use common::{assert_close, ctx, data, mask};
use rigl::cpu::conv::{self as cpu, Window};
use rigl::gpu::conv::ConvGeom;
use rigl::gpu::image;
use rigl::gpu::sparse_conv::{self as sc, Layout, Scratch, SparseConvForm};
use rigl::gpu::texture::Texture;
use rigl::gpu::{ops, spmm, GpuContext, Tensor};
use rigl::nn::spec::Padding;
use rigl::sparse::csr::CsrIndex;

fn cases() -> Vec<ConvGeom> {
    let mut out = Vec::new();
    for (n, h, w, cin, cout) in [
        (1, 7, 5, 1, 3),
        (3, 9, 11, 4, 5),
        (2, 6, 6, 3, 8),
        (4, 10, 7, 5, 6),
    ] {
        for k in [1, 3, 5, 7] {
            for stride in [1, 2] {
                for padding in [Padding::Same, Padding::Valid] {
                    let window = Window {
                        n,
                        h,
                        w,
                        k,
                        stride,
                        padding,
                    };
                    if window.out().is_some() {
                        out.push(ConvGeom { window, cin, cout });
                    }
                }
            }
        }
    }
    out
}

fn name(g: &ConvGeom) -> String {
    let w = g.window;
    format!(
        "n{} {}x{} cin{} cout{} k{} s{} {:?}",
        w.n, w.h, w.w, g.cin, g.cout, w.k, w.stride, w.padding
    )
}

/// The masks a case runs: random at 30%, random with output channel 0 empty and channel 1
/// full, and one active weight.
fn masks(g: &ConvGeom, seed: u32) -> Vec<(&'static str, Vec<f32>)> {
    let len = g.weight_len();
    let cout = g.cout;
    let random = mask(len, 0.3, seed);
    let mut rows = random.clone();
    for (q, v) in rows.iter_mut().enumerate() {
        match q % cout {
            0 => *v = 0.0,
            1 => *v = 1.0,
            _ => {}
        }
    }
    let mut one = vec![0.0; len];
    one[(seed as usize * 7919) % len] = 1.0;
    let mut v = vec![("random 30%", random), ("one weight", one)];
    if cout > 1 {
        v.push(("empty and full rows", rows));
    }
    v
}

struct Case {
    g: ConvGeom,
    idx: CsrIndex,
    w: Vec<f32>,
    dense_w: Vec<f32>,
}

fn case(g: ConvGeom, m: &[f32], seed: u32) -> Case {
    let in_dim = g.window.k * g.window.k * g.cin;
    let idx = CsrIndex::from_mask(in_dim, g.cout, m).unwrap();
    let w = data(idx.nnz(), seed);
    let dense_w = idx.scatter(&w);
    Case { g, idx, w, dense_w }
}

fn forms(ctx: &GpuContext) -> Vec<SparseConvForm> {
    let f: Vec<_> = SparseConvForm::ALL
        .into_iter()
        .filter(|f| f.supported(ctx).is_ok())
        .collect();
    assert!(
        f.contains(&SparseConvForm::Portable),
        "the portable form must run everywhere"
    );
    f
}

/// Runs `check` on every (form, case, mask).
fn each(mut check: impl FnMut(&GpuContext, SparseConvForm, &Case, &str, u32)) {
    let ctx = ctx();
    let mut runs = 0;
    for form in forms(ctx) {
        for (i, g) in cases().into_iter().enumerate() {
            if let Err(e) = sc::supports(ctx, &g, form) {
                panic!("{} cannot run {}: {e}", form.as_str(), name(&g));
            }
            for (j, (what, m)) in masks(&g, i as u32).into_iter().enumerate() {
                if m.iter().all(|&v| v == 0.0) {
                    continue;
                }
                let s = (100 * i + j) as u32;
                let c = case(g, &m, s);
                check(ctx, form, &c, what, s);
                runs += 1;
            }
        }
    }
    assert!(runs > 100, "only {runs} runs");
}

fn setup(ctx: &GpuContext, c: &Case) -> (Layout, Scratch, Tensor, Tensor) {
    let lay = Layout::new(c.g).unwrap();
    let scratch = Scratch::new(ctx, &[lay], c.idx.nnz()).unwrap();
    let idx = Tensor::from_u32(ctx, "index", &c.idx.to_words()).unwrap();
    let vals = Tensor::from_f32(ctx, "values", &c.w).unwrap();
    (lay, scratch, idx, vals)
}

#[test]
fn forward_equals_the_twin() {
    each(|ctx, form, c, what, s| {
        let g = c.g;
        let (lay, scratch, idx, vals) = setup(ctx, c);
        let x = data(g.input_len(), 10 + s);
        let b = data(g.cout, 20 + s);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tb = Tensor::from_f32(ctx, "bias", &b).unwrap();
        let ty = Tensor::filled(ctx, "y", g.output_len().unwrap(), f32::NAN).unwrap();
        for biased in [false, true] {
            let op = sc::forward(
                ctx,
                form,
                &lay,
                c.idx.nnz(),
                &idx,
                &vals,
                biased.then_some(&tb),
                &tx,
                &ty,
                &scratch,
            )
            .unwrap();
            ops::run(ctx, "sparse conv forward", &[&op]).unwrap();
            let want = cpu::conv2d_forward(
                &x,
                &c.dense_w,
                None,
                biased.then_some(&b[..]),
                g.window,
                g.cin,
                g.cout,
            );
            assert_close(
                &format!(
                    "{} forward {} {what} bias {biased}",
                    form.as_str(),
                    name(&g)
                ),
                &ty.read_f32(ctx).unwrap(),
                &want,
                1e-5,
                1e-4,
            );
        }
    });
}

#[test]
fn input_grad_equals_the_twin() {
    each(|ctx, form, c, what, s| {
        let g = c.g;
        let (lay, scratch, idx, vals) = setup(ctx, c);
        let dy = data(g.output_len().unwrap(), 30 + s);
        let prior = data(g.input_len(), 40 + s);
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        let want = cpu::conv2d_input_grad(&dy, &c.dense_w, None, g.window, g.cin, g.cout);
        for accumulate in [false, true] {
            // Overwriting must write every element (NaN would survive otherwise).
            let start = if accumulate {
                prior.clone()
            } else {
                vec![f32::NAN; g.input_len()]
            };
            let tdx = Tensor::from_f32(ctx, "dx", &start).unwrap();
            let op = sc::input_grad(
                ctx,
                form,
                &lay,
                c.idx.nnz(),
                &idx,
                &vals,
                &tdy,
                &tdx,
                accumulate,
                &scratch,
            )
            .unwrap();
            ops::run(ctx, "sparse conv input grad", &[&op]).unwrap();
            let expect: Vec<f32> = if accumulate {
                want.iter().zip(&prior).map(|(a, b)| a + b).collect()
            } else {
                want.clone()
            };
            assert_close(
                &format!(
                    "{} input grad {} {what} accumulate {accumulate}",
                    form.as_str(),
                    name(&g)
                ),
                &tdx.read_f32(ctx).unwrap(),
                &expect,
                1e-5,
                1e-4,
            );
        }
    });
}

#[test]
fn weight_grad_equals_the_twin_at_the_slots() {
    each(|ctx, form, c, what, s| {
        let g = c.g;
        let (lay, scratch, idx, _) = setup(ctx, c);
        let x = data(g.input_len(), 50 + s);
        let dy = data(g.output_len().unwrap(), 60 + s);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        let tg = Tensor::filled(ctx, "grad", c.idx.nnz(), f32::NAN).unwrap();
        let op =
            sc::weight_grad(ctx, form, &lay, c.idx.nnz(), &idx, &tx, &tdy, &tg, &scratch).unwrap();
        ops::run(ctx, "sparse conv weight grad", &[&op]).unwrap();
        let dense = cpu::conv2d_weight_grad(&dy, &x, g.window, g.cin, g.cout);
        assert_close(
            &format!("{} weight grad {} {what}", form.as_str(), name(&g)),
            &tg.read_f32(ctx).unwrap(),
            &c.idx.gather(&dense),
            1e-4,
            1e-4,
        );
    });
}

/// One scratch serves layers of different shapes in turn (the model shares it), and a layer
/// larger than it is refused with the sizes named, and one made for a single geometry refuses
/// any other.
#[test]
fn shared_scratch_serves_every_layer_and_refuses_a_larger_one() {
    let ctx = ctx();
    let form = SparseConvForm::pick(ctx);
    let gs: Vec<ConvGeom> = cases().into_iter().step_by(7).collect();
    let lays: Vec<Layout> = gs.iter().map(|g| Layout::new(*g).unwrap()).collect();
    let cs: Vec<Case> = gs
        .iter()
        .enumerate()
        .map(|(i, g)| case(*g, &mask(g.weight_len(), 0.5, 900 + i as u32), 7 + i as u32))
        .collect();
    let max_nnz = cs.iter().map(|c| c.idx.nnz()).max().unwrap();
    let scratch = Scratch::new(ctx, &lays, max_nnz).unwrap();
    let mut ops_list = Vec::new();
    let mut outs = Vec::new();
    for (i, (c, lay)) in cs.iter().zip(&lays).enumerate() {
        let x = data(c.g.input_len(), 70 + i as u32);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let ty = Tensor::zeros(ctx, "y", c.g.output_len().unwrap()).unwrap();
        let idx = Tensor::from_u32(ctx, "index", &c.idx.to_words()).unwrap();
        let vals = Tensor::from_f32(ctx, "values", &c.w).unwrap();
        ops_list.push(
            sc::forward(
                ctx,
                form,
                lay,
                c.idx.nnz(),
                &idx,
                &vals,
                None,
                &tx,
                &ty,
                &scratch,
            )
            .unwrap(),
        );
        outs.push((x, ty));
    }
    let refs: Vec<_> = ops_list.iter().collect();
    ops::run(ctx, "sparse conv forwards", &refs).unwrap();
    for (c, (x, ty)) in cs.iter().zip(&outs) {
        let want = cpu::conv2d_forward(x, &c.dense_w, None, None, c.g.window, c.g.cin, c.g.cout);
        assert_close(&name(&c.g), &ty.read_f32(ctx).unwrap(), &want, 1e-5, 1e-4);
    }
    // A layer bigger than the scratch.
    let big = ConvGeom {
        window: Window {
            n: 16,
            h: 32,
            w: 32,
            k: 3,
            stride: 1,
            padding: Padding::Same,
        },
        cin: 16,
        cout: 16,
    };
    let c = case(big, &mask(big.weight_len(), 0.5, 1), 1);
    let lay = Layout::new(big).unwrap();
    let idx = Tensor::from_u32(ctx, "index", &c.idx.to_words()).unwrap();
    let vals = Tensor::from_f32(ctx, "values", &c.w).unwrap();
    let tx = Tensor::zeros(ctx, "x", big.input_len()).unwrap();
    let ty = Tensor::zeros(ctx, "y", big.output_len().unwrap()).unwrap();
    let err = sc::forward(
        ctx,
        form,
        &lay,
        c.idx.nnz(),
        &idx,
        &vals,
        None,
        &tx,
        &ty,
        &scratch,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("scratch") && err.contains("needs"), "{err}");
    // A scratch made for one geometry writes only its output gradients' data (the padding stays
    // zero), so it refuses any other geometry, even one it would hold.
    let solo = Scratch::new(ctx, &[lay], c.idx.nnz()).unwrap();
    let (small, small_lay) = (&cs[0], &lays[0]);
    let idx = Tensor::from_u32(ctx, "index", &small.idx.to_words()).unwrap();
    let vals = Tensor::from_f32(ctx, "values", &small.w).unwrap();
    let tx = Tensor::zeros(ctx, "x", small.g.input_len()).unwrap();
    let ty = Tensor::zeros(ctx, "y", small.g.output_len().unwrap()).unwrap();
    let err = sc::forward(
        ctx,
        form,
        small_lay,
        small.idx.nnz(),
        &idx,
        &vals,
        None,
        &tx,
        &ty,
        &solo,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("alone"), "{err}");
}

/// `rigl bench conv --sparsity` times both paths of one random kernel with exactly that many
/// inactive weights, and refuses a sparsity outside [0, 1).
#[test]
fn bench_conv_times_both_paths_of_an_exact_kernel() {
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rigl"))
            .env("NODEVICE_SELECT", "1")
            .args([
                "bench", "conv", "--cin", "6", "--cout", "5", "--kernel", "3",
            ])
            .args(["--hw", "7", "--batch", "2", "--reps", "1", "--json"])
            .args(extra)
            .output()
            .expect("rigl runs")
    };
    let out = run(&["--sparsity", "0.75", "--stride", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let weights = 3 * 3 * 6 * 5;
    assert_eq!(v["active"], (weights as f64 * 0.25).round() as u64);
    let kernels = v["kernels"].as_array().expect("kernels");
    let names: Vec<&str> = kernels
        .iter()
        .filter_map(|k| k["kernel"].as_str())
        .collect();
    assert_eq!(names, ["forward", "input_grad", "weight_grad"]);
    for k in kernels {
        for f in ["masked_ms", "compressed_ms", "ratio"] {
            let x = k[f].as_f64().expect(f);
            assert!(x.is_finite() && x > 0.0, "{f} = {x}");
        }
    }
    let out = run(&["--sparsity", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sparsity 1.5"));
}

/// The input gradient computes the positions of each stride phase's input pixels only: all of
/// the input and nothing else at stride 1 (before, a 3x3 same convolution's rows carried a
/// padding column, 72 of 64 positions), the largest phase's count for every phase at stride 2;
/// images come in groups of 4. `input_grad_equals_the_twin` checks the products on every case.
#[test]
fn input_gradients_compute_the_input_positions_only() {
    let geom = |n, hw, k, stride, padding, cin, cout| ConvGeom {
        window: Window {
            n,
            h: hw,
            w: hw,
            k,
            stride,
            padding,
        },
        cin,
        cout,
    };
    let lenet_conv2 = Layout::new(geom(100, 12, 5, 1, Padding::Valid, 20, 50)).unwrap();
    assert_eq!(lenet_conv2.bwd_overhead(), 1.0);
    assert_eq!(lenet_conv2.batch_overhead(), 1.0);
    let same_3x3 = Layout::new(geom(128, 8, 3, 1, Padding::Same, 128, 128)).unwrap();
    assert_eq!(same_3x3.bwd_overhead(), 1.0);
    let valid_7x7 = Layout::new(geom(2, 12, 7, 1, Padding::Valid, 3, 4)).unwrap();
    assert_eq!(valid_7x7.bwd_overhead(), 1.0);
    assert_eq!(valid_7x7.batch_overhead(), 2.0);
    // 7 rows at stride 2: phases of 4 and 3 pixels (valid) or 4 and 4 (same), per axis.
    let valid_s2 = Layout::new(geom(3, 7, 1, 2, Padding::Valid, 2, 2)).unwrap();
    assert_eq!(valid_s2.bwd_overhead(), 4.0 * 16.0 / 49.0);
    let same_s2 = Layout::new(geom(3, 7, 3, 2, Padding::Same, 2, 2)).unwrap();
    assert_eq!(same_s2.bwd_overhead(), 4.0 * 16.0 / 49.0);
    assert_eq!(same_s2.batch_overhead(), 4.0 / 3.0);
}

/// The input gradient walks only the kernel rows that read the output gradient where many read
/// only its padding: LeNet-5's valid `conv2` (a third of its input rows' kernel rows), not a
/// 3x3 `same` convolution of 32 rows (2 in 96), nor at stride 2. (That the walk gives the
/// twin's input gradient is in `input_grad_equals_the_twin`, whose valid cases take it.)
#[test]
fn the_input_gradient_skips_kernel_rows_where_many_read_padding() {
    let geom = |h: usize, k: usize, stride: usize, padding: Padding, cin: usize, cout: usize| {
        let window = Window {
            n: 100,
            h,
            w: h,
            k,
            stride,
            padding,
        };
        Layout::new(ConvGeom { window, cin, cout }).unwrap()
    };
    assert!(geom(12, 5, 1, Padding::Valid, 20, 50).bwd_skips_rows());
    assert!(!geom(32, 3, 1, Padding::Same, 32, 32).bwd_skips_rows());
    assert!(!geom(12, 5, 2, Padding::Valid, 20, 50).bwd_skips_rows());
    assert!(!geom(8, 1, 1, Padding::Same, 16, 16).bwd_skips_rows());
}

/// A max pooling's backward written straight into a compressed convolution's output-gradient
/// planes (`pooled_dy_planes`, for a pooling after the convolution with its ReLU fused) gives the
/// weight and input gradients of the output gradient that the pooling's backward forms on the
/// CPU: both pooled layouts, batches of 3 and 5 (image groups cut short), windows of 2 and 3,
/// outputs where the ReLU passed nothing (no argmax). The convolution's own output gradient is
/// NaN, so a product that still read it would fail. It declines where it cannot stand in:
/// overlapping, padded or strided-apart windows, rows left over, a scratch of two geometries.
#[test]
fn a_max_pooling_writes_the_output_gradient_planes() {
    let ctx = ctx();
    let form = forms(ctx)[0];
    for (n, h, cin, cout, k, pk) in [
        (5, 12, 3, 4, 5, 2),
        (4, 10, 2, 3, 3, 2),
        (3, 11, 2, 5, 3, 3),
    ] {
        let window = Window {
            n,
            h,
            w: h,
            k,
            stride: 1,
            padding: Padding::Valid,
        };
        let g = ConvGeom { window, cin, cout };
        let (hc, wc) = g.out().unwrap();
        let c = case(g, &mask(g.weight_len(), 0.4, 7), 11);
        let (lay, scratch, idx, vals) = setup(ctx, &c);
        let nnz = c.idx.nnz();
        let pool = Window {
            n,
            h: hc,
            w: wc,
            k: pk,
            stride: pk,
            padding: Padding::Valid,
        };
        let (pho, pwo) = pool.out().unwrap();
        // The convolution's output, its ReLU's pooling: no argmax where the maximum is <= 0
        // (values shifted down, so that some windows have none).
        let shifted: Vec<f32> = data(g.output_len().unwrap(), 21)
            .iter()
            .map(|v| v - 0.7)
            .collect();
        let (pooled, mut arg) = cpu::max_pool_forward(&shifted, cout, pool);
        for (v, a) in pooled.iter().zip(arg.iter_mut()) {
            if *v <= 0.0 {
                *a = u32::MAX;
            }
        }
        assert!(arg.contains(&u32::MAX) && arg.iter().any(|&a| a != u32::MAX));
        let gp = data(pooled.len(), 22);
        let (g_live, a_live): (Vec<f32>, Vec<u32>) = gp
            .iter()
            .zip(&arg)
            .filter(|(_, &a)| a != u32::MAX)
            .map(|(&v, &a)| (v, a))
            .unzip();
        let dy = cpu::max_pool_backward(&g_live, &a_live, g.output_len().unwrap());
        let x = data(g.input_len(), 23);
        let want_dw = c
            .idx
            .gather(&cpu::conv2d_weight_grad(&dy, &x, window, cin, cout));
        let want_dx = cpu::conv2d_input_grad(&dy, &c.dense_w, None, window, cin, cout);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let nan_dy = Tensor::filled(ctx, "dy", g.output_len().unwrap(), f32::NAN).unwrap();
        for flat in [false, true] {
            // Flattened: [cout * pho * pwo, N], output (channel, window) of image i at its row.
            let order: Vec<usize> = if flat {
                (0..cout * pho * pwo)
                    .flat_map(|f| {
                        (0..n)
                            .map(move |i| ((f / (pho * pwo)) * n + i) * pho * pwo + f % (pho * pwo))
                    })
                    .collect()
            } else {
                (0..gp.len()).collect()
            };
            let tgp = Tensor::from_f32(
                ctx,
                "pooled grad",
                &order.iter().map(|&o| gp[o]).collect::<Vec<_>>(),
            )
            .unwrap();
            let targ = Tensor::from_u32(
                ctx,
                "argmax",
                &order.iter().map(|&o| arg[o]).collect::<Vec<_>>(),
            )
            .unwrap();
            let planes = sc::pooled_dy_planes(ctx, &lay, &tgp, &targ, pool, flat, &scratch)
                .unwrap()
                .expect("windows that tile the output, a scratch of one geometry");
            let tg = Tensor::filled(ctx, "grad", nnz, f32::NAN).unwrap();
            let tdx = Tensor::filled(ctx, "dx", g.input_len(), f32::NAN).unwrap();
            let dw = sc::weight_grad(ctx, form, &lay, nnz, &idx, &tx, &nan_dy, &tg, &scratch)
                .unwrap()
                .without_before(&["dy_planes"]);
            let dx = sc::input_grad(
                ctx, form, &lay, nnz, &idx, &vals, &nan_dy, &tdx, false, &scratch,
            )
            .unwrap()
            .without_before(&["dy_planes"]);
            ops::run(ctx, "pooled planes", &[&planes, &dw, &dx]).unwrap();
            let what = format!("{} pooled {pk}x{pk} flat {flat}", name(&g));
            assert_close(
                &format!("{what} weight grad"),
                &tg.read_f32(ctx).unwrap(),
                &want_dw,
                1e-4,
                1e-4,
            );
            assert_close(
                &format!("{what} input grad"),
                &tdx.read_f32(ctx).unwrap(),
                &want_dx,
                1e-5,
                1e-4,
            );
        }
        // Where it declines.
        let tgp = Tensor::zeros(ctx, "pooled grad", pooled.len()).unwrap();
        let targ = Tensor::zeros(ctx, "argmax", pooled.len()).unwrap();
        let declines = |p: Window, s: &Scratch| {
            sc::pooled_dy_planes(ctx, &lay, &tgp, &targ, p, false, s)
                .unwrap()
                .is_none()
        };
        let other = Layout::new(ConvGeom {
            cout: cout + 1,
            ..g
        })
        .unwrap();
        let shared = Scratch::new(ctx, &[lay, other], nnz.max(other.geom.weight_len())).unwrap();
        assert!(declines(pool, &shared), "{}: a shared scratch", name(&g));
        for (pk2, stride, padding) in [
            (pk + 1, pk, Padding::Valid),
            (pk, pk + 1, Padding::Valid),
            (pk + 1, pk + 1, Padding::Same),
        ] {
            let p = Window {
                k: pk2,
                stride,
                padding,
                ..pool
            };
            assert!(
                declines(p, &scratch),
                "{}: pooling {pk2} stride {stride} {padding:?}",
                name(&g)
            );
        }
    }
}

/// The forward product with the 2x2 max pooling of its ReLU (`forward_pooled`: the pooling
/// flattened and into a linear layer's texture, the convolution's output never stored) writes
/// what the product then `max_pool_into` write, bit for bit (the same sums in the same order),
/// and that pooling of the CPU twin's convolution to tolerance: both forms, with and without
/// bias, odd image-group counts (the last pair of groups half empty), stride 2, windows without
/// a positive value (no argmax). It declines other windows, windows that leave rows over, and
/// batches not a multiple of 4.
#[test]
fn the_forward_product_pools_its_relu_itself() {
    let ctx = ctx();
    let mut checked = 0;
    for (n, h, cin, cout, k, stride, padding) in [
        (4, 12, 3, 5, 5, 1, Padding::Valid),
        (12, 10, 2, 3, 3, 1, Padding::Valid),
        (8, 16, 2, 4, 3, 2, Padding::Same),
    ] {
        let window = Window {
            n,
            h,
            w: h,
            k,
            stride,
            padding,
        };
        let g = ConvGeom { window, cin, cout };
        let (ho, wo) = g.out().unwrap();
        let pool = Window {
            n,
            h: ho,
            w: wo,
            k: 2,
            stride: 2,
            padding: Padding::Valid,
        };
        let (pho, pwo) = pool.out().unwrap();
        let c = case(g, &mask(g.weight_len(), 0.5, 3), 5);
        let (lay, scratch, idx, vals) = setup(ctx, &c);
        let nnz = c.idx.nnz();
        let x = data(g.input_len(), 31);
        // Biases low enough that some windows have no positive value.
        let b: Vec<f32> = data(cout, 32).iter().map(|v| v - 1.5).collect();
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tb = Tensor::from_f32(ctx, "bias", &b).unwrap();
        let len = cout * n * pho * pwo;
        let shape = rigl::gpu::image::ImageShape {
            c: cout,
            n,
            h: ho,
            w: wo,
        };
        for form in forms(ctx) {
            for biased in [false, true] {
                let bias = biased.then_some(&tb);
                let what = format!("{} {} bias {biased}", form.as_str(), name(&g));
                // The product, then the pooling.
                let ty = Tensor::filled(ctx, "y", g.output_len().unwrap(), f32::NAN).unwrap();
                let (p1, a1) = (
                    Tensor::filled(ctx, "pooled", len, f32::NAN).unwrap(),
                    Tensor::filled(ctx, "arg", len, f32::NAN).unwrap(),
                );
                let t1 = Texture::new(ctx, "pooled texture", len / n, n).unwrap();
                let unfused = [
                    sc::forward(ctx, form, &lay, nnz, &idx, &vals, bias, &tx, &ty, &scratch)
                        .unwrap(),
                    image::max_pool_into(
                        ctx,
                        shape,
                        pool,
                        &ty,
                        &p1,
                        &a1,
                        true,
                        image::PoolLayout::Flat,
                        Some(&t1),
                    )
                    .unwrap(),
                ];
                ops::run(ctx, "product, pooling", &[&unfused[0], &unfused[1]]).unwrap();
                // Both at once.
                let (p2, a2) = (
                    Tensor::filled(ctx, "pooled", len, f32::NAN).unwrap(),
                    Tensor::filled(ctx, "arg", len, f32::NAN).unwrap(),
                );
                let t2 = Texture::new(ctx, "pooled texture", len / n, n).unwrap();
                let fused = sc::forward_pooled(
                    ctx,
                    form,
                    &lay,
                    nnz,
                    &idx,
                    &vals,
                    bias,
                    &tx,
                    pool,
                    (&p2, &a2, &t2),
                    &scratch,
                )
                .unwrap()
                .expect("2x2 windows tiling the output, a batch of 4s");
                ops::run(ctx, "pooled product", &[&fused]).unwrap();
                let back = |t: &Texture| {
                    let b = Tensor::filled(ctx, "back", len, f32::NAN).unwrap();
                    ops::run(ctx, "unpack", &[&spmm::unpack(ctx, t, &b).unwrap()]).unwrap();
                    b.read_f32(ctx).unwrap()
                };
                let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let want = p1.read_f32(ctx).unwrap();
                assert_eq!(
                    bits(p2.read_f32(ctx).unwrap()),
                    bits(want.clone()),
                    "{what} pooled"
                );
                assert_eq!(
                    a2.read_u32(ctx).unwrap(),
                    a1.read_u32(ctx).unwrap(),
                    "{what} argmax"
                );
                assert_eq!(bits(back(&t2)), bits(back(&t1)), "{what} texture");
                let args = a2.read_u32(ctx).unwrap();
                assert!(
                    args.contains(&u32::MAX) && args.iter().any(|&a| a != u32::MAX),
                    "{what}"
                );
                // The CPU twin's convolution, ReLU, pooling, flattened.
                let y = cpu::conv2d_forward(
                    &x,
                    &c.dense_w,
                    None,
                    biased.then_some(&b[..]),
                    window,
                    cin,
                    cout,
                );
                let r: Vec<f32> = y.iter().map(|v| v.max(0.0)).collect();
                let (py, _) = cpu::max_pool_forward(&r, cout, pool);
                let twin = cpu::flatten(&py, cout, n, pho * pwo);
                assert_close(
                    &format!("{what} against the twin"),
                    &want,
                    &twin,
                    1e-5,
                    1e-4,
                );
                checked += 1;
            }
        }
        // Where it declines.
        let (p, a) = (
            Tensor::zeros(ctx, "p", len).unwrap(),
            Tensor::zeros(ctx, "a", len).unwrap(),
        );
        let t = Texture::new(ctx, "t", len / n, n).unwrap();
        for other in [
            Window {
                k: 3,
                stride: 3,
                ..pool
            },
            Window {
                k: 3,
                stride: 2,
                ..pool
            },
            Window {
                k: 2,
                stride: 2,
                h: ho - 1,
                ..pool
            },
        ] {
            let declined = sc::forward_pooled(
                ctx,
                forms(ctx)[0],
                &lay,
                nnz,
                &idx,
                &vals,
                None,
                &tx,
                other,
                (&p, &a, &t),
                &scratch,
            );
            assert!(
                declined.as_ref().is_ok_and(|d| d.is_none()),
                "{}: {other:?}",
                name(&g)
            );
        }
    }
    assert_eq!(checked, 3 * 2 * forms(ctx).len());
    // A batch not a multiple of 4.
    let window = Window {
        n: 6,
        h: 10,
        w: 10,
        k: 3,
        stride: 1,
        padding: Padding::Valid,
    };
    let g = ConvGeom {
        window,
        cin: 2,
        cout: 3,
    };
    let c = case(g, &mask(g.weight_len(), 0.5, 3), 5);
    let (lay, scratch, idx, vals) = setup(ctx, &c);
    let pool = Window {
        n: 6,
        h: 8,
        w: 8,
        k: 2,
        stride: 2,
        padding: Padding::Valid,
    };
    let len = 3 * 6 * 16;
    let (p, a) = (
        Tensor::zeros(ctx, "p", len).unwrap(),
        Tensor::zeros(ctx, "a", len).unwrap(),
    );
    // (No texture holds 6 images; one of 8 stands in, never written.)
    let t = Texture::new(ctx, "t", len / 6, 8).unwrap();
    let tx = Tensor::zeros(ctx, "x", g.input_len()).unwrap();
    let declined = sc::forward_pooled(
        ctx,
        forms(ctx)[0],
        &lay,
        c.idx.nnz(),
        &idx,
        &vals,
        None,
        &tx,
        pool,
        (&p, &a, &t),
        &scratch,
    );
    assert!(declined.is_ok_and(|d| d.is_none()));
}

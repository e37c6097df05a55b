//! Every dense kernel against its CPU twin, on shapes that are not multiples of any tile size,
//! batch 1, a 1x1 layer, empty and full masks.

mod common;

use common::{assert_close, ctx, data, mask};
use rigl::cpu::dense as cpu;
use rigl::gpu::ops::{self, SgdConfig};
use rigl::gpu::{gemm, GemmOp, GemmShape, GemmVariant, Tensor};

fn check_gemm(variant: GemmVariant, shape: GemmShape, masked: bool, accumulate: bool) {
    let ctx = ctx();
    let GemmShape { m, n, k, .. } = shape;
    let a = data(m * k, 1 + m as u32);
    let b = data(k * n, 2 + n as u32);
    let c0 = data(m * n, 3);
    let mk = mask(m * k, 0.3, 4);
    let ta = Tensor::from_f32(ctx, "a", &a).unwrap();
    let tb = Tensor::from_f32(ctx, "b", &b).unwrap();
    let tc = Tensor::from_f32(ctx, "c", &c0).unwrap();
    let tm = Tensor::from_f32(ctx, "mask", &mk).unwrap();
    let op = GemmOp::new(
        ctx,
        shape,
        variant,
        &ta,
        &tb,
        &tc,
        masked.then_some(&tm),
        accumulate,
    )
    .unwrap();
    ops::run(ctx, "gemm test", &[&op.dispatch]).unwrap();
    let got = tc.read_f32(ctx).unwrap();
    let mut want = c0.clone();
    cpu::gemm(
        shape,
        &a,
        &b,
        &mut want,
        masked.then_some(&mk[..]),
        accumulate,
    );
    let what = format!(
        "{} {m}x{n}x{k} ta={} tb={} masked={masked} acc={accumulate}",
        variant.as_str(),
        shape.trans_a,
        shape.trans_b
    );
    assert_close(&what, &got, &want, 1e-4 * (k as f32).sqrt().max(1.0), 1e-4);
}

fn shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (1, 1, 1),
        (1, 7, 3),
        (37, 53, 29),
        (65, 129, 17),
        (10, 100, 300),
        (40, 36, 44),
        (300, 100, 784),
        // Few columns: rowblock runs the transpose.
        (500, 10, 100),
        (129, 7, 33),
    ]
}

#[test]
fn gemm_all_variants_match_cpu() {
    let ctx = ctx();
    for variant in GemmVariant::ALL {
        for (m, n, k) in shapes() {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true)] {
                let shape = GemmShape {
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                };
                if !variant.supports(ctx, &shape) {
                    continue;
                }
                check_gemm(variant, shape, false, false);
            }
        }
    }
}

#[test]
fn gemm_masked_and_accumulate_match_cpu() {
    let ctx = ctx();
    for variant in GemmVariant::ALL {
        for (m, n, k) in [(37, 53, 29), (40, 36, 44), (130, 9, 31)] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true)] {
                let shape = GemmShape {
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                };
                if variant.supports(ctx, &shape) {
                    check_gemm(variant, shape, true, false);
                    check_gemm(variant, shape, false, true);
                }
            }
        }
    }
}

#[test]
fn gemm_splits_more_than_65535_workgroups() {
    // 8-row tiles: 70_000 tiles exceed one dispatch dimension and are folded into y.
    let (m, n, k) = (8 * 70_000, 1, 1);
    let ctx = ctx();
    let a = data(m, 21);
    let b = vec![2.0f32];
    let ta = Tensor::from_f32(ctx, "a", &a).unwrap();
    let tb = Tensor::from_f32(ctx, "b", &b).unwrap();
    let tc = Tensor::zeros(ctx, "c", m).unwrap();
    let op = GemmOp::new(
        ctx,
        GemmShape::nn(m, n, k),
        GemmVariant::RowBlock,
        &ta,
        &tb,
        &tc,
        None,
        false,
    )
    .unwrap();
    ops::run(ctx, "split", &[&op.dispatch]).unwrap();
    let want: Vec<f32> = a.iter().map(|v| v * 2.0).collect();
    assert_eq!(tc.read_f32(ctx).unwrap(), want);
}

#[test]
fn too_large_buffer_is_an_error_naming_it() {
    let ctx = ctx();
    let len = (ctx.limits.max_storage_buffer_binding_size / 4 + 1) as usize;
    let err = Tensor::zeros(ctx, "layer fc1 weights", len)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer fc1 weights needs"), "{err}");
    assert!(err.contains("max_storage_buffer_binding_size"), "{err}");
}

#[test]
fn gemm_resolve_always_supports() {
    let ctx = ctx();
    for (m, n, k) in shapes() {
        for v in GemmVariant::ALL {
            let s = GemmShape {
                m,
                n,
                k,
                trans_a: true,
                trans_b: false,
            };
            assert!(v.resolve(ctx, &s).supports(ctx, &s));
        }
    }
}

#[test]
fn gemm_texture_falls_back_past_the_texture_limit_and_runs_tall_products() {
    let ctx = ctx();
    let max = ctx.limits.max_texture_dimension_2d as usize;
    // op(A) would be a texture of max + 4 rows: too tall, so `texture` resolves to `subgroup`
    // where subgroups exist, and still computes the product.
    let tall = GemmShape::nn(max + 4, 4, 4);
    assert!(!GemmVariant::Texture.supports(ctx, &tall));
    let v = GemmVariant::Texture.resolve(ctx, &tall);
    assert!(v.supports(ctx, &tall));
    if GemmVariant::Subgroup.supports(ctx, &tall) {
        assert_eq!(v, GemmVariant::Subgroup);
    }
    check_gemm(v, tall, false, false);
    // At the limit it runs from textures: many row tiles, the last one partial, and every
    // layout the trainer uses, masked and not.
    if GemmVariant::Texture.supports(ctx, &GemmShape::nn(4, 4, 4)) {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true)] {
            let s = GemmShape {
                m: 1028,
                n: 264,
                k: 12,
                trans_a,
                trans_b,
            };
            assert!(GemmVariant::Texture.supports(ctx, &s));
            check_gemm(GemmVariant::Texture, s, trans_a, false);
        }
    }
}

/// `gemm::pick` chooses between `subgroup` and `texture` per shape by timing, which is only
/// safe because the two give the same bits: check that on the trainer's layouts, masked or not.
#[test]
fn gemm_subgroup_and_texture_agree_bit_for_bit_and_pick_is_stable() {
    let ctx = ctx();
    let pair = [GemmVariant::Subgroup, GemmVariant::Texture];
    let mut compared = 0;
    // The texture kernel's tiles as `gemm_tex.wgsl` takes them on lavapipe: tall (at most 128
    // columns) over 1, 2 or 3 row blocks of 256, with the last block's surplus subgroups idle;
    // fewer rows per invocation below 32 rows (8, 16, 24), wide and tall.
    for (m, n, k) in [
        (300, 100, 784),
        (784, 100, 300),
        (100, 1000, 300),
        (40, 36, 44),
        (600, 100, 40),
        (20, 100, 300),
        (24, 200, 44),
        (16, 64, 100),
        (5, 260, 12),
    ] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true)] {
            let shape = GemmShape {
                m,
                n,
                k,
                trans_a,
                trans_b,
            };
            if !pair.iter().all(|v| v.supports(ctx, &shape)) {
                continue;
            }
            let a = Tensor::from_f32(ctx, "a", &data(m * k, 5 + m as u32)).unwrap();
            let b = Tensor::from_f32(ctx, "b", &data(k * n, 6 + n as u32)).unwrap();
            let mk = Tensor::from_f32(ctx, "mask", &mask(m * k, 0.2, 7)).unwrap();
            let run = |v: GemmVariant| {
                let c = Tensor::zeros(ctx, "c", m * n).unwrap();
                let op = GemmOp::new(ctx, shape, v, &a, &b, &c, Some(&mk), false).unwrap();
                ops::run(ctx, "pair", &[&op.dispatch]).unwrap();
                c.read_f32(ctx).unwrap()
            };
            let (x, y) = (run(pair[0]), run(pair[1]));
            let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(
                same,
                "{m}x{n}x{k} ta={trans_a} tb={trans_b}: results differ"
            );
            compared += 1;
            if std::env::var_os(gemm::GEMM_ENV).is_some() {
                continue; // a forced variant is only resolved
            }
            let picked = gemm::pick(ctx, GemmVariant::Texture, &shape).unwrap();
            assert!(pair.contains(&picked) && picked.supports(ctx, &shape));
            assert_eq!(
                gemm::pick(ctx, GemmVariant::Subgroup, &shape).unwrap(),
                picked
            );
        }
    }
    if pair
        .iter()
        .all(|v| v.supports(ctx, &GemmShape::nn(4, 4, 4)))
    {
        assert!(compared >= 20, "only {compared} layouts compared");
    }
    if std::env::var_os(gemm::GEMM_ENV).is_some() {
        return;
    }
    // Outside the pair, pick only resolves.
    let odd = GemmShape::nn(37, 53, 29);
    assert_eq!(
        gemm::pick(ctx, GemmVariant::RowBlock, &odd).unwrap(),
        GemmVariant::RowBlock
    );
    let p = gemm::pick(ctx, GemmVariant::Texture, &odd).unwrap();
    assert!(p.supports(ctx, &odd));
}

/// Encodes `op` the way a caller holding only a compute pass does (every operand packed by a
/// kernel), submits and waits.
fn run_in_one_pass(op: &rigl::gpu::ops::Dispatch) {
    let ctx = ctx();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        op.encode(&mut pass);
    }
    ctx.submit_and_wait("one pass", [enc.finish()]).unwrap();
}

/// Where an operand of a `texture` GEMM is only moved into its texture (no transpose, no
/// mask, rows of a multiple of 64 floats), `ops::run` copies it instead of packing it: the copy
/// must give exactly the packed product, from views that do not start at the buffer's start,
/// and see what an earlier launch of the same submission wrote.
#[test]
fn gemm_texture_copies_its_plain_operands_and_matches_the_packs() {
    let ctx = ctx();
    if !GemmVariant::Texture.supports(ctx, &GemmShape::nn(4, 4, 4)) {
        return;
    }
    let align = (ctx.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
    // (m, n, k, trans_a, masked, copies): A copies when k % 64 == 0 and op(A) is A unmasked;
    // B when n % 64 == 0.
    for (m, n, k, trans_a, masked, copies) in [
        (37, 64, 128, false, false, 2),
        (1, 64, 64, false, false, 2),
        (40, 64, 100, false, false, 1),
        (40, 100, 64, false, false, 1),
        (36, 128, 64, true, false, 1),
        (37, 128, 64, false, true, 1),
        (40, 36, 44, false, false, 0),
    ] {
        let shape = GemmShape {
            m,
            n,
            k,
            trans_a,
            trans_b: false,
        };
        let what = format!("{m}x{n}x{k} ta={trans_a} masked={masked}");
        let a = data(m * k, 11 + m as u32);
        let b = data(k * n, 12 + n as u32);
        let mk = mask(m * k, 0.4, 13);
        // Each operand a view `align` elements into a larger buffer.
        let view = |x: &[f32], label: &str| {
            let mut v = vec![7.0; align];
            v.extend_from_slice(x);
            let t = Tensor::from_f32(ctx, label, &v).unwrap();
            t.slice(ctx, align, x.len(), label).unwrap()
        };
        let (ta, tb, tm) = (view(&a, "a"), view(&b, "b"), view(&mk, "mask"));
        let mut want = vec![0.0; m * n];
        cpu::gemm(shape, &a, &b, &mut want, masked.then_some(&mk[..]), false);
        let mut results = Vec::new();
        for one_pass in [false, true] {
            let c = Tensor::zeros(ctx, "c", m * n).unwrap();
            let op = GemmOp::new(
                ctx,
                shape,
                GemmVariant::Texture,
                &ta,
                &tb,
                &c,
                masked.then_some(&tm),
                false,
            )
            .unwrap();
            assert_eq!(op.dispatch.has_copies(), copies > 0, "{what}");
            let name = &op.dispatch.name;
            assert_eq!(
                name.contains(&format!("{copies} as copies")),
                copies > 0,
                "{what}: {name}"
            );
            if one_pass {
                run_in_one_pass(&op.dispatch);
            } else {
                ops::run(ctx, "copies", &[&op.dispatch]).unwrap();
            }
            let got = c.read_f32(ctx).unwrap();
            assert_close(&what, &got, &want, 1e-4 * (k as f32).sqrt(), 1e-4);
            results.push(got);
        }
        let same = results[0]
            .iter()
            .zip(&results[1])
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{what}: copied and packed operands give other bits");
    }

    // A product whose A is written by the launch before it, in the same submission: the copy
    // must come after that launch, not at the start of the command buffer.
    let (m, n, k, j) = (20, 64, 64, 12);
    let x = data(m * j, 21);
    let w = data(j * k, 22);
    let b = data(k * n, 23);
    let (tx, tw, tb) = (
        Tensor::from_f32(ctx, "x", &x).unwrap(),
        Tensor::from_f32(ctx, "w", &w).unwrap(),
        Tensor::from_f32(ctx, "b", &b).unwrap(),
    );
    let h = Tensor::from_f32(ctx, "h", &vec![-3.0; m * k]).unwrap();
    let out = Tensor::zeros(ctx, "out", m * n).unwrap();
    let first = GemmShape::nn(m, k, j);
    let second = GemmShape::nn(m, n, k);
    let op1 = GemmOp::new(ctx, first, GemmVariant::RowBlock, &tx, &tw, &h, None, false).unwrap();
    let op2 = GemmOp::new(
        ctx,
        second,
        GemmVariant::Texture,
        &h,
        &tb,
        &out,
        None,
        false,
    )
    .unwrap();
    assert!(op2.dispatch.has_copies());
    ops::run(ctx, "chain", &[&op1.dispatch, &op2.dispatch]).unwrap();
    let mut hw = vec![0.0; m * k];
    cpu::gemm(first, &x, &w, &mut hw, None, false);
    let mut want = vec![0.0; m * n];
    cpu::gemm(second, &hw, &b, &mut want, None, false);
    let got = out.read_f32(ctx).unwrap();
    assert_close("chained product", &got, &want, 1e-3, 1e-4);
}

#[test]
fn gemm_rejects_short_buffers() {
    let ctx = ctx();
    let a = Tensor::zeros(ctx, "a", 5).unwrap();
    let b = Tensor::zeros(ctx, "b", 6).unwrap();
    let c = Tensor::zeros(ctx, "c", 6).unwrap();
    let err = GemmOp::new(
        ctx,
        GemmShape::nn(2, 3, 3),
        GemmVariant::RowBlock,
        &a,
        &b,
        &c,
        None,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("A ('a') has 5 elements, needs 6"), "{err}");
}

#[test]
fn bias_act_and_relu_bwd_match_cpu() {
    let ctx = ctx();
    for (features, batch) in [(1, 1), (3, 1), (300, 7), (10, 1000)] {
        for relu in [false, true] {
            let bias = data(features, 9);
            let z = data(features * batch, 10);
            let tb = Tensor::from_f32(ctx, "bias", &bias).unwrap();
            let tz = Tensor::from_f32(ctx, "z", &z).unwrap();
            let op = ops::bias_act(ctx, &tb, &tz, features, batch, relu).unwrap();
            ops::run(ctx, "bias_act", &[&op]).unwrap();
            let mut want = z.clone();
            cpu::bias_act(&bias, &mut want, features, batch, relu);
            let got = tz.read_f32(ctx).unwrap();
            assert_close("bias_act", &got, &want, 1e-6, 1e-6);

            let g = data(features * batch, 11);
            let tg = Tensor::from_f32(ctx, "g", &g).unwrap();
            let op = ops::relu_bwd(ctx, &tz, &tg, features * batch).unwrap();
            ops::run(ctx, "relu_bwd", &[&op]).unwrap();
            let mut want_g = g.clone();
            cpu::relu_bwd(&want, &mut want_g);
            assert_eq!(tg.read_f32(ctx).unwrap(), want_g, "relu_bwd is exact");
        }
    }
}

#[test]
fn segment_sum_matches_cpu() {
    let ctx = ctx();
    // 8191 is one short of the chunked form; 8192, 12289 (a short last chunk) and 57600 (a
    // convolution's bias gradient) sum chunks first.
    let cases = [
        (1, 1),
        (1, 1000),
        (300, 100),
        (7, 65),
        (2, 0),
        (3, 8191),
        (1, 8192),
        (5, 12289),
        (20, 57600),
    ];
    for (segments, len) in cases {
        let x = data(segments * len, 12);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let out = Tensor::from_f32(ctx, "out", &vec![f32::NAN; segments]).unwrap();
        let op = ops::segment_sum(ctx, &tx, &out, segments, len, false).unwrap();
        ops::run(ctx, "segment_sum", &[&op]).unwrap();
        let want = cpu::segment_sum(&x, segments, len);
        let what = format!("segment_sum {segments}x{len}");
        assert_close(&what, &out.read_f32(ctx).unwrap(), &want, 1e-4, 1e-5);
        // Accumulating adds onto what is there.
        let start = data(segments, 13);
        let acc = Tensor::from_f32(ctx, "acc", &start).unwrap();
        let op = ops::segment_sum(ctx, &tx, &acc, segments, len, true).unwrap();
        ops::run(ctx, "segment_sum", &[&op]).unwrap();
        let want: Vec<f32> = want.iter().zip(&start).map(|(w, s)| w + s).collect();
        assert_close(
            &format!("{what} accumulated"),
            &acc.read_f32(ctx).unwrap(),
            &want,
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn softmax_xent_matches_cpu() {
    let ctx = ctx();
    for (classes, batch, smoothing) in [(1, 1, 0.0), (10, 1, 0.0), (10, 257, 0.1), (3, 1000, 0.0)] {
        let logits: Vec<f32> = data(classes * batch, 13).iter().map(|v| v * 8.0).collect();
        let labels: Vec<u32> = (0..batch).map(|b| (b * 7 % classes) as u32).collect();
        let tl = Tensor::from_f32(ctx, "logits", &logits).unwrap();
        let ty = Tensor::from_u32(ctx, "labels", &labels).unwrap();
        let tg = Tensor::zeros(ctx, "dlogits", classes * batch).unwrap();
        let ts = Tensor::zeros(ctx, "stats", 2 * batch).unwrap();
        let scale = 1.0 / batch as f32;
        let op =
            ops::softmax_xent(ctx, &tl, &ty, &tg, &ts, classes, batch, smoothing, scale).unwrap();
        ops::run(ctx, "xent", &[&op]).unwrap();
        let mut want_g = vec![0.0; classes * batch];
        let (loss, correct) = cpu::softmax_xent(
            &logits,
            &labels,
            &mut want_g,
            classes,
            batch,
            smoothing,
            scale,
        );
        let stats = ts.read_f32(ctx).unwrap();
        assert_close("xent loss", &stats[..batch], &loss, 1e-5, 1e-5);
        assert_eq!(&stats[batch..], &correct[..], "correct flags are exact");
        assert_close("xent grad", &tg.read_f32(ctx).unwrap(), &want_g, 1e-6, 1e-5);
    }
}

/// One masked SGD run of two steps over `n` weights (the first `n` of the 1001 values each seed
/// gives, so runs of different `n` share their prefix): (w, m) read back and the CPU's.
#[allow(clippy::type_complexity)]
fn sgd_twice(
    n: usize,
    cfg: SgdConfig,
    density: f32,
) -> ((Vec<f32>, Vec<f32>), (Vec<f32>, Vec<f32>), Vec<f32>) {
    let ctx = ctx();
    let mk = mask(1001, density, 5)[..n].to_vec();
    let w0: Vec<f32> = data(1001, 6).iter().zip(&mk).map(|(w, m)| w * m).collect();
    let m0: Vec<f32> = data(1001, 7).iter().zip(&mk).map(|(w, m)| w * m).collect();
    let g = data(1001, 8)[..n].to_vec();
    let (tw, tm, tg, tk) = (
        Tensor::from_f32(ctx, "w", &w0).unwrap(),
        Tensor::from_f32(ctx, "m", &m0).unwrap(),
        Tensor::from_f32(ctx, "g", &g).unwrap(),
        Tensor::from_f32(ctx, "mask", &mk).unwrap(),
    );
    let op = ops::sgd(ctx, &tg, &tw, &tm, Some(&tk), n, cfg).unwrap();
    // Two steps: momentum must carry over.
    ops::run(ctx, "sgd", &[&op, &op]).unwrap();
    let (mut w, mut m) = (w0.clone(), m0.clone());
    cpu::sgd(&g, &mut w, &mut m, Some(&mk), cfg);
    cpu::sgd(&g, &mut w, &mut m, Some(&mk), cfg);
    (
        (tw.read_f32(ctx).unwrap(), tm.read_f32(ctx).unwrap()),
        (w, m),
        mk,
    )
}

#[test]
fn sgd_matches_cpu_and_keeps_masked_zero() {
    for nesterov in [false, true] {
        for density in [0.0f32, 0.3, 1.0] {
            let cfg = SgdConfig {
                lr: 0.2,
                momentum: 0.9,
                weight_decay: 1e-4,
                nesterov,
            };
            // 1001 weights run the scalar form, 1000 the vec4 form (`sgd_update_v4`): both
            // equal the CPU's, keep masked positions at zero, and agree to the bit.
            let ((sw, sm), (w1, m1), mk1) = sgd_twice(1001, cfg, density);
            let ((gw, gm), (w, m), mk) = sgd_twice(1000, cfg, density);
            assert_close("sgd w", &sw, &w1, 1e-6, 1e-5);
            assert_close("sgd m", &sm, &m1, 1e-6, 1e-5);
            assert_close("sgd_v4 w", &gw, &w, 1e-6, 1e-5);
            assert_close("sgd_v4 m", &gm, &m, 1e-6, 1e-5);
            for i in 0..1001 {
                if mk1[i] == 0.0 {
                    assert_eq!((sw[i], sm[i]), (0.0, 0.0), "masked position {i} stays zero");
                }
            }
            for i in 0..1000 {
                assert_eq!(
                    gw[i].to_bits(),
                    sw[i].to_bits(),
                    "w {i}: vec4 and scalar forms"
                );
                assert_eq!(
                    gm[i].to_bits(),
                    sm[i].to_bits(),
                    "m {i}: vec4 and scalar forms"
                );
                if mk[i] == 0.0 {
                    assert_eq!(
                        (gw[i], gm[i]),
                        (0.0, 0.0),
                        "vec4: masked position {i} stays zero"
                    );
                }
            }
        }
    }
    let ctx = ctx();
    let n = 1001;
    // Unmasked (dense layer) path.
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };
    let w0 = data(n, 1);
    let g = data(n, 2);
    let tw = Tensor::from_f32(ctx, "w", &w0).unwrap();
    let tm = Tensor::zeros(ctx, "m", n).unwrap();
    let tg = Tensor::from_f32(ctx, "g", &g).unwrap();
    let op = ops::sgd(ctx, &tg, &tw, &tm, None, n, cfg).unwrap();
    ops::run(ctx, "sgd", &[&op]).unwrap();
    let want: Vec<f32> = w0.iter().zip(&g).map(|(w, g)| w - 0.1 * g).collect();
    assert_close("plain sgd", &tw.read_f32(ctx).unwrap(), &want, 1e-7, 1e-6);
    // And its vec4 form over the first 1000 (the 1001st stays as it was).
    let tw = Tensor::from_f32(ctx, "w", &w0).unwrap();
    let op = ops::sgd(ctx, &tg, &tw, &tm, None, 1000, cfg).unwrap();
    ops::run(ctx, "sgd", &[&op]).unwrap();
    let got = tw.read_f32(ctx).unwrap();
    assert_close("plain sgd_v4", &got[..1000], &want[..1000], 1e-7, 1e-6);
    assert_eq!(got[1000], w0[1000], "past n untouched");
}

#[test]
fn ema_and_max_into_match_cpu() {
    let ctx = ctx();
    let n = 777;
    let g = data(n, 31);
    let e0 = data(n, 32);
    let tg = Tensor::from_f32(ctx, "g", &g).unwrap();
    let te = Tensor::from_f32(ctx, "ema", &e0).unwrap();
    let op = ops::ema(ctx, &tg, &te, n, 0.9).unwrap();
    ops::run(ctx, "ema", &[&op, &op]).unwrap();
    let mut want = e0.clone();
    rigl::cpu::mask_update::ema_update(&mut want, &g, 0.9).unwrap();
    rigl::cpu::mask_update::ema_update(&mut want, &g, 0.9).unwrap();
    assert_close("ema", &te.read_f32(ctx).unwrap(), &want, 1e-7, 1e-6);

    let m = mask(n, 0.3, 33);
    let acc0 = mask(n, 0.5, 34);
    let tm = Tensor::from_f32(ctx, "m", &m).unwrap();
    let ta = Tensor::from_f32(ctx, "acc", &acc0).unwrap();
    let op = ops::max_into(ctx, &tm, &ta, n).unwrap();
    ops::run(ctx, "max_into", &[&op]).unwrap();
    let want: Vec<f32> = acc0.iter().zip(&m).map(|(a, b)| a.max(*b)).collect();
    assert_eq!(ta.read_f32(ctx).unwrap(), want);
}

#[test]
fn xent_padding_columns_are_inert() {
    let ctx = ctx();
    let (classes, batch, valid) = (10, 64, 37);
    let logits = data(classes * batch, 41);
    let labels: Vec<u32> = (0..batch).map(|b| (b % classes) as u32).collect();
    let tl = Tensor::from_f32(ctx, "logits", &logits).unwrap();
    let ty = Tensor::from_u32(ctx, "labels", &labels).unwrap();
    let tg = Tensor::zeros(ctx, "dlogits", classes * batch).unwrap();
    let ts = Tensor::zeros(ctx, "stats", 2 * batch).unwrap();
    let op = ops::softmax_xent(ctx, &tl, &ty, &tg, &ts, classes, batch, 0.0, 1.0).unwrap();
    ops::set_xent_valid(ctx, &op, classes, batch, valid, 0.0, 1.0 / valid as f32);
    ops::run(ctx, "xent", &[&op]).unwrap();
    let stats = ts.read_f32(ctx).unwrap();
    let grad = tg.read_f32(ctx).unwrap();
    // Reference: the first `valid` columns alone.
    let sub: Vec<f32> = (0..classes)
        .flat_map(|c| logits[c * batch..c * batch + valid].to_vec())
        .collect();
    let mut want_g = vec![0.0; classes * valid];
    let (loss, _) = cpu::softmax_xent(
        &sub,
        &labels[..valid],
        &mut want_g,
        classes,
        valid,
        0.0,
        1.0 / valid as f32,
    );
    assert_close("loss", &stats[..valid], &loss, 1e-5, 1e-5);
    assert!(stats[valid..batch].iter().all(|&v| v == 0.0));
    for c in 0..classes {
        assert_close(
            "grad",
            &grad[c * batch..c * batch + valid],
            &want_g[c * valid..(c + 1) * valid],
            1e-6,
            1e-5,
        );
        assert!(grad[c * batch + valid..(c + 1) * batch]
            .iter()
            .all(|&v| v == 0.0));
    }
}

//! The image-layer kernels (`shaders/image.wgsl`) against their CPU twins: batch norm forward in
//! both modes with its running statistics and backward; max pooling (argmax and gradient) and
//! average pooling on both paddings, windows that overhang the image, batch 1 and one channel;
//! global average pooling, flatten both ways, dropout (the exact keep mask) and the residual add;
//! and the fused kernels against the unfused twins composed: batch norm with a ReLU and/or a
//! dropout after it (forward and backward, with and without a residual gradient added into dx),
//! and max pooling of relu(x). Fused outputs start as NaN, so an element left unwritten fails.

mod common;

use common::{assert_close, ctx, data};
use rigl::cpu::conv::{self as cpu, Window};
use rigl::gpu::image::{self, BnGrad, DropoutKey, Epilogue, ImageShape};
use rigl::gpu::texture::Texture;
use rigl::gpu::{ops, spmm, Tensor};
use rigl::nn::spec::Padding;

fn shapes() -> Vec<ImageShape> {
    [(1, 1, 5, 7), (3, 2, 6, 6), (5, 3, 9, 4), (2, 4, 1, 1)]
        .into_iter()
        .map(|(c, n, h, w)| ImageShape { c, n, h, w })
        .collect()
}

fn interleave(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).flat_map(|(x, y)| [*x, *y]).collect()
}

#[test]
fn batch_norm_equals_the_twin() {
    let ctx = ctx();
    for (i, s) in shapes().into_iter().enumerate() {
        let seed = 10 * i as u32;
        let x: Vec<f32> = data(s.len(), seed).iter().map(|v| 3.0 * v + 0.5).collect();
        let gamma: Vec<f32> = data(s.c, seed + 1).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = data(s.c, seed + 2);
        let mean0 = data(s.c, seed + 3);
        let var0: Vec<f32> = data(s.c, seed + 4).iter().map(|v| 1.0 + 0.5 * v).collect();
        let dy = data(s.len(), seed + 5);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tgb = Tensor::from_f32(ctx, "gamma beta", &interleave(&gamma, &beta)).unwrap();
        let tstats = Tensor::zeros(ctx, "stats", 4 * s.c).unwrap();
        let trun = Tensor::from_f32(ctx, "running", &interleave(&mean0, &var0)).unwrap();
        let ty = Tensor::zeros(ctx, "y", s.len()).unwrap();
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        let tg = Tensor::zeros(ctx, "grads", 2 * s.c).unwrap();
        let what = format!("{s:?}");

        // Evaluation: the running statistics, untouched.
        let eval = [
            image::bn_stats(ctx, s, &tx, &tstats, &trun, false).unwrap(),
            image::bn_apply(ctx, s, &tx, &tgb, &ty, &tstats, Epilogue::default()).unwrap(),
        ];
        ops::run(ctx, "bn eval", &[&eval[0], &eval[1]]).unwrap();
        let want = cpu::batch_norm_eval(&x, &gamma, &beta, &mean0, &var0);
        assert_close(
            &format!("eval {what}"),
            &ty.read_f32(ctx).unwrap(),
            &want,
            1e-5,
            1e-5,
        );

        // Training: batch statistics, the running ones moved, then the backward pass.
        let train = [
            image::bn_stats(ctx, s, &tx, &tstats, &trun, true).unwrap(),
            image::bn_apply(ctx, s, &tx, &tgb, &ty, &tstats, Epilogue::default()).unwrap(),
        ];
        let tdx = Tensor::from_f32(ctx, "dx", &vec![f32::NAN; s.len()]).unwrap();
        let grad = BnGrad {
            x: &tx,
            gamma_beta: &tgb,
            stats: &tstats,
            dy: &tdy,
            grads: &tg,
            dx: Some(&tdx),
            plus: None,
        };
        let bwd = image::bn_backward(ctx, s, grad, Epilogue::default()).unwrap();
        assert_eq!(bwd.len(), 2);
        ops::run(ctx, "bn train", &[&train[0], &train[1], &bwd[0], &bwd[1]]).unwrap();
        let (mut mean, mut var) = (mean0.clone(), var0.clone());
        let (want_y, saved) = cpu::batch_norm_train(&x, &gamma, &beta, &mut mean, &mut var);
        let (want_dx, dgamma, dbeta) = cpu::batch_norm_backward(&dy, &gamma, &saved);
        let m = (s.n * s.h * s.w) as f32;
        assert_close(
            &format!("train {what}"),
            &ty.read_f32(ctx).unwrap(),
            &want_y,
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("running {what}"),
            &trun.read_f32(ctx).unwrap(),
            &interleave(&mean, &var),
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("dgamma dbeta {what}"),
            &tg.read_f32(ctx).unwrap(),
            &interleave(&dgamma, &dbeta),
            1e-5 * m,
            1e-4,
        );
        assert_close(
            &format!("dx {what}"),
            &tdx.read_f32(ctx).unwrap(),
            &want_dx,
            1e-4,
            1e-3,
        );
        assert_eq!(tdy.read_f32(ctx).unwrap(), dy, "dy is only read {what}");
    }
}

/// Odd shapes for the fused kernels: batch 1, one channel, odd sizes, several channels, and
/// channels longer than one workgroup's run (`RUN * WG` = 2048 elements) with a partial last.
fn fused_shapes() -> Vec<ImageShape> {
    [
        (1, 1, 5, 7),
        (3, 2, 6, 6),
        (5, 3, 9, 4),
        (2, 4, 1, 1),
        (3, 2, 37, 29),
        (1, 1, 64, 32),
    ]
    .into_iter()
    .map(|(c, n, h, w)| ImageShape { c, n, h, w })
    .collect()
}

fn nan(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

#[test]
fn fused_batch_norm_equals_the_composed_twins() {
    let ctx = ctx();
    let mut checked = 0;
    for (i, s) in fused_shapes().into_iter().enumerate() {
        for (j, (relu, drop, plus)) in [
            (true, false, false),
            (true, true, false),
            (false, true, false),
            (true, false, true),
            (true, true, true),
            (false, false, true),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 500 + 20 * i as u32 + j as u32;
            // The last case far from zero: the statistics must not lose the variance.
            let offset = if j == 5 { 40.0 } else { -0.3 };
            let x: Vec<f32> = data(s.len(), seed)
                .iter()
                .map(|v| 2.0 * v + offset)
                .collect();
            let gamma: Vec<f32> = data(s.c, seed + 1).iter().map(|v| 1.0 + 0.5 * v).collect();
            let beta: Vec<f32> = data(s.c, seed + 2).iter().map(|v| 0.5 * v).collect();
            let running = interleave(&vec![0.0; s.c], &vec![1.0; s.c]);
            let dy = data(s.len(), seed + 3);
            let extra = data(s.len(), seed + 4);
            let dropout = drop.then_some(DropoutKey {
                seed: 7,
                step: 42 + j as u32,
                layer: 3,
                rate: 0.3,
            });
            let epi = Epilogue { relu, dropout };
            let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
            let tgb = Tensor::from_f32(ctx, "gamma beta", &interleave(&gamma, &beta)).unwrap();
            let tstats = Tensor::from_f32(ctx, "stats", &nan(4 * s.c)).unwrap();
            let trun = Tensor::from_f32(ctx, "running", &running).unwrap();
            let ty = Tensor::from_f32(ctx, "y", &nan(s.len())).unwrap();
            let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
            let textra = Tensor::from_f32(ctx, "extra", &extra).unwrap();
            let tg = Tensor::from_f32(ctx, "grads", &nan(2 * s.c)).unwrap();
            let tdx = Tensor::from_f32(ctx, "dx", &nan(s.len())).unwrap();
            let grad = BnGrad {
                x: &tx,
                gamma_beta: &tgb,
                stats: &tstats,
                dy: &tdy,
                grads: &tg,
                dx: Some(&tdx),
                plus: plus.then_some(&textra),
            };
            let mut all = vec![
                image::bn_stats(ctx, s, &tx, &tstats, &trun, true).unwrap(),
                image::bn_apply(ctx, s, &tx, &tgb, &ty, &tstats, epi).unwrap(),
            ];
            all.extend(image::bn_backward(ctx, s, grad, epi).unwrap());
            let refs: Vec<&ops::Dispatch> = all.iter().collect();
            ops::run(ctx, "fused bn", &refs).unwrap();

            // The twins composed: batch norm, ReLU, dropout; backward in reverse.
            let (mut mean, mut var) = (vec![0.0; s.c], vec![1.0; s.c]);
            let (z, saved) = cpu::batch_norm_train(&x, &gamma, &beta, &mut mean, &mut var);
            let r: Vec<f32> = if relu {
                z.iter().map(|v| v.max(0.0)).collect()
            } else {
                z.clone()
            };
            let keep = match dropout {
                Some(k) => cpu::dropout_mask(k.seed, k.step, k.layer, s.len(), k.rate),
                None => vec![1.0; s.len()],
            };
            let want_y: Vec<f32> = r.iter().zip(&keep).map(|(a, k)| a * k).collect();
            let dz: Vec<f32> = dy
                .iter()
                .zip(&keep)
                .zip(&r)
                .map(|((d, k), rv)| if !relu || *rv > 0.0 { d * k } else { 0.0 })
                .collect();
            let (mut want_dx, dgamma, dbeta) = cpu::batch_norm_backward(&dz, &gamma, &saved);
            if plus {
                for (d, e) in want_dx.iter_mut().zip(&extra) {
                    *d += e;
                }
            }
            let what = format!("{s:?} relu {relu} dropout {drop} plus {plus}");
            let m = (s.n * s.h * s.w) as f32;
            assert_close(
                &format!("y {what}"),
                &ty.read_f32(ctx).unwrap(),
                &want_y,
                1e-4,
                1e-4,
            );
            assert_close(
                &format!("running {what}"),
                &trun.read_f32(ctx).unwrap(),
                &interleave(&mean, &var),
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("dgamma dbeta {what}"),
                &tg.read_f32(ctx).unwrap(),
                &interleave(&dgamma, &dbeta),
                1e-5 * m,
                1e-4,
            );
            assert_close(
                &format!("dx {what}"),
                &tdx.read_f32(ctx).unwrap(),
                &want_dx,
                1e-4,
                1e-3,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn a_batch_norm_backward_without_dx_writes_the_parameter_gradients_only() {
    let ctx = ctx();
    let s = ImageShape {
        c: 2,
        n: 1,
        h: 3,
        w: 5,
    };
    let t = Tensor::zeros(ctx, "t", s.len()).unwrap();
    let gb = Tensor::zeros(ctx, "gb", 2 * s.c).unwrap();
    let stats = Tensor::zeros(ctx, "stats", 4 * s.c).unwrap();
    let mut grad = BnGrad {
        x: &t,
        gamma_beta: &gb,
        stats: &stats,
        dy: &t,
        grads: &gb,
        dx: None,
        plus: None,
    };
    assert_eq!(
        image::bn_backward(ctx, s, grad, Epilogue::default())
            .unwrap()
            .len(),
        1
    );
    // Something to add into a gradient nobody writes is refused.
    grad.plus = Some(&t);
    assert!(image::bn_backward(ctx, s, grad, Epilogue::default()).is_err());
    let bad = Epilogue {
        relu: true,
        dropout: Some(DropoutKey {
            seed: 1,
            step: 1,
            layer: 0,
            rate: 1.0,
        }),
    };
    grad.plus = None;
    assert!(image::bn_backward(ctx, s, grad, bad).is_err());
}

#[test]
fn relu_max_pooling_equals_the_composed_twins() {
    let ctx = ctx();
    let mut checked = 0;
    // The last shape pools channels of 8,192 outputs and more: chunked bias sums.
    let long = ImageShape {
        c: 2,
        n: 9,
        h: 64,
        w: 64,
    };
    for (i, s) in fused_shapes().into_iter().chain([long]).enumerate() {
        for (j, g) in windows(s).into_iter().enumerate() {
            let seed = 2000 + 100 * i as u32 + j as u32;
            // Ties, zeros and windows with nothing positive.
            let x: Vec<f32> = data(s.len(), seed)
                .iter()
                .map(|v| (v * 4.0 - 1.0).round())
                .collect();
            let (ho, wo) = g.out().unwrap();
            let o = ImageShape { h: ho, w: wo, ..s };
            let dy = data(o.len(), seed + 7);
            let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
            let ty = Tensor::from_f32(ctx, "y", &nan(o.len())).unwrap();
            let targ = Tensor::from_f32(ctx, "arg", &nan(o.len())).unwrap();
            let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
            let tdx = Tensor::from_f32(ctx, "dx", &nan(s.len())).unwrap();
            let ops_ = [
                image::max_pool_relu(ctx, s, g, &tx, &ty, &targ).unwrap(),
                image::max_pool_backward(ctx, s, g, &tdy, &tdx, &targ).unwrap(),
            ];
            ops::run(ctx, "relu max pool", &[&ops_[0], &ops_[1]]).unwrap();
            let r: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
            let (want_y, arg) = cpu::max_pool_forward(&r, s.c, g);
            let pooled_dx = cpu::max_pool_backward(&dy, &arg, s.len());
            let want_dx: Vec<f32> = pooled_dx
                .iter()
                .zip(&r)
                .map(|(d, rv)| if *rv > 0.0 { *d } else { 0.0 })
                .collect();
            let what = format!("{s:?} {g:?}");
            assert_eq!(ty.read_f32(ctx).unwrap(), want_y, "relu max {what}");
            // The sum of the pooling's output gradient where it has an argmax is the sum of its
            // input gradient, per channel (a convolution's bias gradient before the pooling).
            let (segments, len) = (s.c, s.n * ho * wo);
            let tsum = Tensor::from_f32(ctx, "sum", &nan(segments)).unwrap();
            let op = ops::segment_sum_pooled(ctx, &tdy, &targ, &tsum, segments, len).unwrap();
            ops::run(ctx, "pooled sum", &[&op]).unwrap();
            assert_close(
                &format!("pooled bias gradient {what}"),
                &tsum.read_f32(ctx).unwrap(),
                &rigl::cpu::dense::segment_sum(&want_dx, segments, s.n * s.h * s.w),
                1e-4,
                1e-5,
            );
            assert_close(
                &format!("relu max dx {what}"),
                &tdx.read_f32(ctx).unwrap(),
                &want_dx,
                1e-6,
                1e-6,
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn max_pooling_into_the_flattened_layout_equals_pooling_then_flatten() {
    // A flatten after a max pooling, fused: the output, the argmax and the output gradient in
    // the flattened [C*HO*WO, N] layout, the input gradient in the images' layout.
    let ctx = ctx();
    let (mut checked, mut textured) = (0, 0);
    let batch8 = ImageShape {
        c: 4,
        n: 8,
        h: 10,
        w: 9,
    };
    for (i, s) in fused_shapes().into_iter().chain([batch8]).enumerate() {
        for (j, g) in windows(s).into_iter().enumerate() {
            for relu in [false, true] {
                let seed = 3000 + 100 * i as u32 + 2 * j as u32 + u32::from(relu);
                let x: Vec<f32> = data(s.len(), seed)
                    .iter()
                    .map(|v| (v * 4.0 - 1.0).round())
                    .collect();
                let (ho, wo) = g.out().unwrap();
                let o = ImageShape { h: ho, w: wo, ..s };
                let hw = ho * wo;
                let dy_flat = data(o.len(), seed + 7);
                let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
                let ty = Tensor::from_f32(ctx, "y", &nan(o.len())).unwrap();
                let targ = Tensor::from_f32(ctx, "arg", &nan(o.len())).unwrap();
                let tdy = Tensor::from_f32(ctx, "dy", &dy_flat).unwrap();
                let tdx = Tensor::from_f32(ctx, "dx", &nan(s.len())).unwrap();
                let flat = image::PoolLayout::Flat;
                // Batches of a multiple of 4 images: also into the texture a compressed linear
                // layer reads (read back through a buffer).
                let tex =
                    s.n.is_multiple_of(4)
                        .then(|| Texture::new(ctx, "pooled texture", s.c * hw, s.n).unwrap());
                let ops_ = [
                    image::max_pool_into(ctx, s, g, &tx, &ty, &targ, relu, flat, tex.as_ref())
                        .unwrap(),
                    image::max_pool_backward_from(ctx, s, g, &tdy, &tdx, &targ, flat).unwrap(),
                ];
                ops::run(ctx, "max pool flat", &[&ops_[0], &ops_[1]]).unwrap();
                let r: Vec<f32> = x
                    .iter()
                    .map(|v| if relu { v.max(0.0) } else { *v })
                    .collect();
                let (want_y, arg) = cpu::max_pool_forward(&r, s.c, g);
                let dy = cpu::unflatten(&dy_flat, s.c, s.n, hw);
                let want_dx: Vec<f32> = cpu::max_pool_backward(&dy, &arg, s.len())
                    .iter()
                    .zip(&r)
                    .map(|(d, rv)| if !relu || *rv > 0.0 { *d } else { 0.0 })
                    .collect();
                let what = format!("{s:?} {g:?} relu {relu}");
                let want_flat = cpu::flatten(&want_y, s.c, s.n, hw);
                assert_eq!(ty.read_f32(ctx).unwrap(), want_flat, "flat max {what}");
                if let Some(t) = &tex {
                    let back = Tensor::from_f32(ctx, "back", &nan(o.len())).unwrap();
                    let op = spmm::unpack(ctx, t, &back).unwrap();
                    ops::run(ctx, "unpack", &[&op]).unwrap();
                    assert_eq!(back.read_f32(ctx).unwrap(), want_flat, "texture {what}");
                    textured += 1;
                }
                assert_close(
                    &format!("flat max dx {what}"),
                    &tdx.read_f32(ctx).unwrap(),
                    &want_dx,
                    1e-6,
                    1e-6,
                );
                // A channel's outputs are contiguous in either layout: the pooled bias
                // gradient reads the flattened ones as they are.
                let tsum = Tensor::from_f32(ctx, "sum", &nan(s.c)).unwrap();
                let op = ops::segment_sum_pooled(ctx, &tdy, &targ, &tsum, s.c, s.n * hw).unwrap();
                ops::run(ctx, "pooled sum", &[&op]).unwrap();
                assert_close(
                    &format!("flat pooled bias gradient {what}"),
                    &tsum.read_f32(ctx).unwrap(),
                    &rigl::cpu::dense::segment_sum(&want_dx, s.c, s.n * s.h * s.w),
                    1e-4,
                    1e-5,
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "{checked}");
    assert!(textured >= 10, "{textured}");
}

fn windows(s: ImageShape) -> Vec<Window> {
    let mut out = Vec::new();
    for k in [1, 2, 3] {
        for stride in [1, 2, 3] {
            for padding in [Padding::Same, Padding::Valid] {
                let g = Window {
                    n: s.n,
                    h: s.h,
                    w: s.w,
                    k,
                    stride,
                    padding,
                };
                if g.out().is_some() {
                    out.push(g);
                }
            }
        }
    }
    out
}

#[test]
fn pooling_equals_the_twin() {
    let ctx = ctx();
    let mut checked = 0;
    for (i, s) in shapes().into_iter().enumerate() {
        for (j, g) in windows(s).into_iter().enumerate() {
            let seed = 100 * i as u32 + j as u32;
            // Repeated values make ties for the argmax.
            let x: Vec<f32> = data(s.len(), seed)
                .iter()
                .map(|v| (v * 4.0).round())
                .collect();
            let (ho, wo) = g.out().unwrap();
            let o = ImageShape { h: ho, w: wo, ..s };
            let dy = data(o.len(), seed + 7);
            let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
            let ty = Tensor::zeros(ctx, "y", o.len()).unwrap();
            let targ = Tensor::zeros(ctx, "arg", o.len()).unwrap();
            let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
            // NaN: the scatter form (stride >= window) must write every input, the gaps too.
            let tdx = Tensor::from_f32(ctx, "dx", &vec![f32::NAN; s.len()]).unwrap();
            let what = format!("{s:?} {g:?}");

            let ops_ = [
                image::max_pool(ctx, s, g, &tx, &ty, &targ).unwrap(),
                image::max_pool_backward(ctx, s, g, &tdy, &tdx, &targ).unwrap(),
            ];
            ops::run(ctx, "max pool", &[&ops_[0], &ops_[1]]).unwrap();
            let (want_y, want_arg) = cpu::max_pool_forward(&x, s.c, g);
            assert_eq!(ty.read_f32(ctx).unwrap(), want_y, "max {what}");
            assert_eq!(targ.read_u32(ctx).unwrap(), want_arg, "argmax {what}");
            let want_dx = cpu::max_pool_backward(&dy, &want_arg, s.len());
            assert_close(
                &format!("max dx {what}"),
                &tdx.read_f32(ctx).unwrap(),
                &want_dx,
                1e-6,
                1e-6,
            );

            let ops_ = [
                image::avg_pool(ctx, s, g, &tx, &ty, false).unwrap(),
                image::avg_pool(ctx, s, g, &tdy, &tdx, true).unwrap(),
            ];
            ops::run(ctx, "avg pool", &[&ops_[0], &ops_[1]]).unwrap();
            let want_y = cpu::avg_pool_forward(&x, s.c, g);
            let want_dx = cpu::avg_pool_backward(&dy, s.c, g);
            assert_close(
                &format!("avg {what}"),
                &ty.read_f32(ctx).unwrap(),
                &want_y,
                1e-6,
                1e-6,
            );
            assert_close(
                &format!("avg dx {what}"),
                &tdx.read_f32(ctx).unwrap(),
                &want_dx,
                1e-6,
                1e-5,
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
}

#[test]
fn global_pool_flatten_dropout_and_add_equal_the_twin() {
    let ctx = ctx();
    for (i, s) in shapes().into_iter().enumerate() {
        let seed = 1000 + 10 * i as u32;
        let hw = s.h * s.w;
        let x = data(s.len(), seed);
        let dy = data(s.c * s.n, seed + 1);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tp = Tensor::zeros(ctx, "pooled", s.c * s.n).unwrap();
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        let tdx = Tensor::zeros(ctx, "dx", s.len()).unwrap();
        let tf = Tensor::zeros(ctx, "flat", s.len()).unwrap();
        let tb = Tensor::zeros(ctx, "back", s.len()).unwrap();
        let td = Tensor::zeros(ctx, "dropped", s.len()).unwrap();
        let tsum = Tensor::from_f32(ctx, "sum", &dy.repeat(hw)).unwrap();
        let ops_ = [
            image::global_avg_pool(ctx, s, &tx, &tp, false).unwrap(),
            image::global_avg_pool(ctx, s, &tdy, &tdx, true).unwrap(),
            image::flatten(ctx, s, &tx, &tf, false).unwrap(),
            image::flatten(ctx, s, &tf, &tb, true).unwrap(),
            image::dropout(ctx, &tx, &td, s.len(), 7, 42, 3, 0.3).unwrap(),
            image::add(ctx, &tx, &tsum, s.len()).unwrap(),
        ];
        let refs: Vec<&ops::Dispatch> = ops_.iter().collect();
        ops::run(ctx, "image ops", &refs).unwrap();
        let what = format!("{s:?}");
        let gap = cpu::global_avg_pool(&x, s.c, s.n, hw);
        assert_close(
            &format!("gap {what}"),
            &tp.read_f32(ctx).unwrap(),
            &gap,
            1e-6,
            1e-5,
        );
        let gap_dx = cpu::global_avg_pool_backward(&dy, hw);
        assert_close(
            &format!("gap dx {what}"),
            &tdx.read_f32(ctx).unwrap(),
            &gap_dx,
            1e-7,
            1e-6,
        );
        assert_eq!(
            tf.read_f32(ctx).unwrap(),
            cpu::flatten(&x, s.c, s.n, hw),
            "flatten {what}"
        );
        assert_eq!(tb.read_f32(ctx).unwrap(), x, "unflatten {what}");
        let keep = cpu::dropout_mask(7, 42, 3, s.len(), 0.3);
        let want: Vec<f32> = x.iter().zip(&keep).map(|(a, k)| a * k).collect();
        assert_eq!(td.read_f32(ctx).unwrap(), want, "dropout {what}");
        let sum: Vec<f32> = dy.repeat(hw).iter().zip(&x).map(|(a, b)| a + b).collect();
        assert_eq!(tsum.read_f32(ctx).unwrap(), sum, "add {what}");
    }
}

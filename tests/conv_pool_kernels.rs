//! The fused first convolution, ReLU and max pooling (`shaders/conv_pool.wgsl`) against the
//! CPU twin of the three layers in a row: odd sizes, batch 1, one and three input channels,
//! kernels 1/3/5, strides 1 and 2, both paddings of both windows, overlapping and
//! non-overlapping pooling, with and without mask and bias, the input read from the buffer and
//! from its texture copy.

mod common;

use common::{assert_close, ctx, data, mask};
use rigl::cpu::conv::{self as cpu, Window};
use rigl::gpu::conv::ConvGeom;
use rigl::gpu::conv_pool::{self, ConvPoolGeom};
use rigl::gpu::{ops, Tensor};
use rigl::nn::spec::Padding;

const NO_ARG: u32 = u32::MAX;

fn cases() -> Vec<ConvPoolGeom> {
    let mut out = Vec::new();
    for (n, h, w, cin, cout) in [(1, 9, 7, 1, 3), (3, 12, 11, 1, 5), (2, 8, 9, 3, 4)] {
        for k in [1, 3, 5] {
            for stride in [1, 2] {
                for padding in [Padding::Valid, Padding::Same] {
                    let window = Window {
                        n,
                        h,
                        w,
                        k,
                        stride,
                        padding,
                    };
                    if window.out().is_none() {
                        continue;
                    }
                    let conv = ConvGeom { window, cin, cout };
                    for (size, pstride, ppad) in [
                        (2, 2, Padding::Valid),
                        (2, 2, Padding::Same),
                        (3, 2, Padding::Same),
                        (2, 1, Padding::Valid),
                    ] {
                        if let Ok(g) = ConvPoolGeom::new(conv, pooling(conv, size, pstride, ppad)) {
                            if g.fits() {
                                out.push(g);
                                // The shader's generic loops, on a sample of the cases.
                                if out.len() % 5 == 0 {
                                    out.push(g.generic());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A `size`x`size` pooling window of `stride` and `padding` over `conv`'s output.
fn pooling(conv: ConvGeom, size: usize, stride: usize, padding: Padding) -> Window {
    let (h, w) = conv.out().unwrap_or((0, 0));
    Window {
        n: conv.window.n,
        h,
        w,
        k: size,
        stride,
        padding,
    }
}

fn name(g: &ConvPoolGeom) -> String {
    let c = g.conv.window;
    format!(
        "{}n{} {}x{} cin{} cout{} k{} s{} {:?}, pool {} s{} {:?}",
        if *g == g.generic() { "generic " } else { "" },
        c.n,
        c.h,
        c.w,
        g.conv.cin,
        g.conv.cout,
        c.k,
        c.stride,
        c.padding,
        g.pool.k,
        g.pool.stride,
        g.pool.padding
    )
}

#[test]
fn the_fused_layer_equals_convolution_relu_and_pooling_on_the_twin() {
    let ctx = ctx();
    let cases = cases();
    assert!(cases.len() > 40, "{} cases", cases.len());
    for (i, g) in cases.iter().enumerate() {
        let c = g.conv;
        let s = i as u32;
        let x = data(c.input_len(), 10 + s);
        let w = data(c.weight_len(), 20 + s);
        let m = mask(c.weight_len(), 0.6, 30 + s);
        let b = data(c.cout, 40 + s);
        let dy = data(g.output_len(), 50 + s);
        let t = |what: &str, v: &[f32]| Tensor::from_f32(ctx, what, v).unwrap();
        let (tx, tw, tm, tb, tdy) = (t("x", &x), t("w", &w), t("m", &m), t("b", &b), t("dy", &dy));
        let ty = Tensor::zeros(ctx, "y", g.output_len()).unwrap();
        let targ = Tensor::zeros(ctx, "arg", g.output_len()).unwrap();
        let tdw = Tensor::zeros(ctx, "dw", c.weight_len()).unwrap();
        let tdb = Tensor::zeros(ctx, "db", c.cout).unwrap();
        let (xt, copy) = conv_pool::input_texture(ctx, g, &tx)
            .unwrap()
            .expect("a texture of a small input fits");
        for (masked, biased, tex) in [
            (false, false, false),
            (true, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            let what = format!("{} masked={masked} bias={biased} texture={tex}", name(g));
            let xt = tex.then_some(&xt);
            let fwd = conv_pool::forward(
                ctx,
                g,
                &tx,
                xt,
                &tw,
                masked.then_some(&tm),
                biased.then_some(&tb),
                &ty,
                &targ,
            )
            .unwrap();
            let bwd =
                conv_pool::weight_grad(ctx, g, &tx, xt, &tdy, &targ, &tdw, biased.then_some(&tdb))
                    .unwrap();
            ops::run(ctx, "fused convolution", &[&copy, &fwd, &bwd]).unwrap();

            // The twin: convolution, ReLU, max pooling.
            let conv = cpu::conv2d_forward(
                &x,
                &w,
                masked.then_some(&m[..]),
                biased.then_some(&b[..]),
                c.window,
                c.cin,
                c.cout,
            );
            let relu: Vec<f32> = conv.iter().map(|v| v.max(0.0)).collect();
            let (want_y, want_arg) = cpu::max_pool_forward(&relu, c.cout, g.pool);
            let taps = g.taps() as f32;
            let tol = 1e-5 * taps;
            assert_close(
                &format!("{what}: output"),
                &ty.read_f32(ctx).unwrap(),
                &want_y,
                tol,
                1e-5,
            );

            // The argmax: the twin's wherever the maximum is positive (or a position of the
            // same value: a near tie summed in another order), none elsewhere.
            let arg = targ.read_u32(ctx).unwrap();
            for (o, (&a, &wa)) in arg.iter().zip(&want_arg).enumerate() {
                if want_y[o] > tol {
                    assert!(a != NO_ARG, "{what}: output {o} has no argmax, want {wa}");
                    assert!(
                        a == wa || (conv[a as usize] - conv[wa as usize]).abs() <= tol,
                        "{what}: output {o}: argmax {a}, want {wa}"
                    );
                } else if want_y[o] <= 0.0 {
                    assert_eq!(
                        a, NO_ARG,
                        "{what}: output {o}: argmax of a non-positive maximum"
                    );
                }
            }

            // Backward through the twin's pooling and ReLU (over the kernel's argmax, so that a
            // near tie cannot move the gradient), then its weight gradient and channel sums.
            let mut dconv = vec![0.0f32; conv.len()];
            for (&a, &d) in arg.iter().zip(&dy) {
                if a != NO_ARG {
                    assert!(
                        conv[a as usize] > -tol,
                        "{what}: argmax at a negative output"
                    );
                    dconv[a as usize] += d;
                }
            }
            let want_dw = cpu::conv2d_weight_grad(&dconv, &x, c.window, c.cin, c.cout);
            let positions = (g.output_len() / c.cout) as f32;
            assert_close(
                &format!("{what}: weight gradient"),
                &tdw.read_f32(ctx).unwrap(),
                &want_dw,
                1e-5 * positions,
                1e-4,
            );
            if biased {
                let want_db = cpu::channel_sums(&dconv, c.cout);
                assert_close(
                    &format!("{what}: bias gradient"),
                    &tdb.read_f32(ctx).unwrap(),
                    &want_db,
                    1e-5 * positions,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn a_layer_too_large_for_registers_is_refused_with_a_reason() {
    let ctx = ctx();
    let window = Window {
        n: 1,
        h: 16,
        w: 16,
        k: 5,
        stride: 1,
        padding: Padding::Valid,
    };
    let conv = ConvGeom {
        window,
        cin: 3,
        cout: 4,
    };
    let g = ConvPoolGeom::new(conv, pooling(conv, 2, 2, Padding::Valid)).unwrap();
    assert!(!g.fits(), "3 channels of 6x6: 108 values");
    let t = |len| Tensor::zeros(ctx, "t", len).unwrap();
    let err = conv_pool::forward(
        ctx,
        &g,
        &t(g.conv.input_len()),
        None,
        &t(g.conv.weight_len()),
        None,
        None,
        &t(g.output_len()),
        &t(g.output_len()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at most 64 input values"), "{err}");
    // A pooling window larger than the convolution's output is an error too, and so is one
    // over another shape than the convolution's output.
    assert!(ConvPoolGeom::new(conv, pooling(conv, 13, 2, Padding::Valid)).is_err());
    let elsewhere = Window {
        h: 11,
        ..pooling(conv, 2, 2, Padding::Valid)
    };
    assert!(ConvPoolGeom::new(conv, elsewhere).is_err());
}

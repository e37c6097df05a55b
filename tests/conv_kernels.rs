//! The convolution kernels (`shaders/conv.wgsl`) against their CPU twins: odd sizes, kernels
//! 1/3/5/7, strides 1 and 2, both paddings, batch 1, one input channel, with and without mask and
//! bias, accumulating gradients.

mod common;

use common::{assert_close, ctx, data, mask};
use rigl::cpu::conv::{self as cpu, Window};
use rigl::gpu::conv::{self, ConvGeom};
use rigl::gpu::{ops, Tensor};
use rigl::nn::spec::Padding;

fn cases() -> Vec<ConvGeom> {
    let mut out = Vec::new();
    for (n, h, w, cin, cout) in [(1, 7, 5, 1, 3), (3, 9, 11, 4, 5), (2, 6, 6, 3, 8)] {
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

#[test]
fn forward_equals_the_twin() {
    let ctx = ctx();
    for (i, g) in cases().into_iter().enumerate() {
        let s = i as u32;
        let x = data(g.input_len(), 10 + s);
        let w = data(g.weight_len(), 20 + s);
        let m = mask(g.weight_len(), 0.6, 30 + s);
        let b = data(g.cout, 40 + s);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tw = Tensor::from_f32(ctx, "w", &w).unwrap();
        let tm = Tensor::from_f32(ctx, "mask", &m).unwrap();
        let tb = Tensor::from_f32(ctx, "bias", &b).unwrap();
        let ty = Tensor::zeros(ctx, "y", g.output_len().unwrap()).unwrap();
        for (masked, biased) in [(false, false), (true, true)] {
            let op = conv::forward(
                ctx,
                g,
                &tx,
                &tw,
                masked.then_some(&tm),
                biased.then_some(&tb),
                &ty,
            )
            .unwrap();
            ops::run(ctx, "conv forward", &[&op]).unwrap();
            let want = cpu::conv2d_forward(
                &x,
                &w,
                masked.then_some(&m[..]),
                biased.then_some(&b[..]),
                g.window,
                g.cin,
                g.cout,
            );
            let taps = (g.window.k * g.window.k * g.cin) as f32;
            let what = format!("forward {} masked={masked}", name(&g));
            assert_close(&what, &ty.read_f32(ctx).unwrap(), &want, 1e-5 * taps, 1e-5);
        }
    }
}

#[test]
fn gradients_equal_the_twin() {
    let ctx = ctx();
    for (i, g) in cases().into_iter().enumerate() {
        let s = i as u32;
        let x = data(g.input_len(), 50 + s);
        let w = data(g.weight_len(), 60 + s);
        let m = mask(g.weight_len(), 0.5, 70 + s);
        let dy = data(g.output_len().unwrap(), 80 + s);
        let dx0 = data(g.input_len(), 90 + s);
        let dw0 = data(g.weight_len(), 100 + s);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tw = Tensor::from_f32(ctx, "w", &w).unwrap();
        let tm = Tensor::from_f32(ctx, "mask", &m).unwrap();
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        for accumulate in [false, true] {
            let tdx = Tensor::from_f32(ctx, "dx", &dx0).unwrap();
            let tdw = Tensor::from_f32(ctx, "dw", &dw0).unwrap();
            let ops_ = [
                conv::input_grad(ctx, g, &tdy, &tw, Some(&tm), &tdx, accumulate).unwrap(),
                conv::weight_grad(ctx, g, &tx, &tdy, &tdw, accumulate).unwrap(),
            ];
            ops::run(ctx, "conv gradients", &[&ops_[0], &ops_[1]]).unwrap();
            let mut want_dx = cpu::conv2d_input_grad(&dy, &w, Some(&m), g.window, g.cin, g.cout);
            let mut want_dw = cpu::conv2d_weight_grad(&dy, &x, g.window, g.cin, g.cout);
            if accumulate {
                want_dx.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
                want_dw.iter_mut().zip(&dw0).for_each(|(a, b)| *a += b);
            }
            let (ho, wo) = g.out().unwrap();
            let what = format!("{} accumulate={accumulate}", name(&g));
            let taps = (g.window.k * g.window.k * g.cout) as f32;
            assert_close(
                &format!("input gradient {what}"),
                &tdx.read_f32(ctx).unwrap(),
                &want_dx,
                1e-5 * taps,
                1e-5,
            );
            let terms = (g.window.n * ho * wo) as f32;
            assert_close(
                &format!("weight gradient {what}"),
                &tdw.read_f32(ctx).unwrap(),
                &want_dw,
                1e-5 * terms,
                1e-5,
            );
        }
    }
}

#[test]
fn a_window_that_does_not_fit_is_an_error() {
    let ctx = ctx();
    let g = ConvGeom {
        window: Window {
            n: 1,
            h: 3,
            w: 3,
            k: 5,
            stride: 1,
            padding: Padding::Valid,
        },
        cin: 1,
        cout: 1,
    };
    let t = Tensor::zeros(ctx, "t", 25).unwrap();
    let e = conv::forward(ctx, g, &t, &t, None, None, &t).unwrap_err();
    assert!(e.to_string().contains("5x5 valid convolution"), "{e}");
}

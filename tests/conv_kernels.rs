//! The convolution kernels against their CPU twins, in both forms (the direct kernels of
//! `shaders/conv.wgsl` and the texture GEMMs of `src/gpu/conv_tex.rs`): odd sizes, kernels
//! 1/3/5/7, strides 1 and 2, both paddings, batch 1, one input channel, with and without mask and
//! bias, accumulating gradients; the texture form also in many small chunks and splits.

mod common;

use common::{assert_close, ctx, data, mask};
use rigl::cpu::conv::{self as cpu, Window};
use rigl::gpu::conv::{self, ConvGeom, ConvVariant};
use rigl::gpu::ops::Dispatch;
use rigl::gpu::{conv_tex, ops, GpuContext, Tensor};
use rigl::nn::spec::Padding;

fn cases() -> Vec<ConvGeom> {
    let mut out = Vec::new();
    // The texture form needs positions in multiples of 4: it runs the cases with 4 images and
    // those whose sizes happen to allow it.
    for (n, h, w, cin, cout) in [
        (1, 7, 5, 1, 3),
        (3, 9, 11, 4, 5),
        (2, 6, 6, 3, 8),
        (4, 7, 5, 3, 5),
        (4, 9, 7, 1, 6),
        // Rows of whole texels (widths of 4, 8 and 12) and input channels in fours, where the
        // texture GEMM gathers its operands itself (stride 1: the forward's and the transposed
        // input gradient's patches, each texel two source texels at any shift; any stride: both
        // operands of the weight gradient).
        (2, 5, 8, 4, 4),
        (1, 4, 12, 8, 3),
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

/// How a test builds the three products: a form with the default chunks, or the texture form
/// in chunks of at most `chunk_bytes`.
#[derive(Clone, Copy, Debug)]
enum Form {
    Variant(ConvVariant),
    TextureChunks(usize),
}

impl Form {
    fn supports(&self, ctx: &GpuContext, g: &ConvGeom) -> bool {
        match self {
            Form::Variant(v) => v.supports(ctx, g),
            Form::TextureChunks(_) => ConvVariant::Texture.supports(ctx, g),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        ctx: &GpuContext,
        g: ConvGeom,
        x: &Tensor,
        w: &Tensor,
        m: Option<&Tensor>,
        b: Option<&Tensor>,
        y: &Tensor,
    ) -> Dispatch {
        match *self {
            Form::Variant(v) => conv::forward_with(ctx, v, g, x, w, m, b, y),
            Form::TextureChunks(c) => conv_tex::forward(ctx, g, x, w, m, b, y, c),
        }
        .unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    fn input_grad(
        &self,
        ctx: &GpuContext,
        g: ConvGeom,
        dy: &Tensor,
        w: &Tensor,
        m: Option<&Tensor>,
        dx: &Tensor,
        acc: bool,
    ) -> Dispatch {
        match *self {
            Form::Variant(v) => conv::input_grad_with(ctx, v, g, dy, w, m, dx, acc),
            Form::TextureChunks(c) => {
                conv_tex::input_grad(ctx, g, dy, w, m, dx, acc, c, conv_tex::DgradForm::Auto)
            }
        }
        .unwrap()
    }

    fn weight_grad(
        &self,
        ctx: &GpuContext,
        g: ConvGeom,
        x: &Tensor,
        dy: &Tensor,
        dw: &Tensor,
        acc: bool,
    ) -> Dispatch {
        match *self {
            Form::Variant(v) => conv::weight_grad_with(ctx, v, g, x, dy, dw, acc),
            Form::TextureChunks(c) => {
                conv_tex::weight_grad(ctx, g, x, dy, dw, acc, c, conv_tex::WgradTiles::Auto)
            }
        }
        .unwrap()
    }
}

const FORMS: [Form; 2] = [
    Form::Variant(ConvVariant::Direct),
    Form::Variant(ConvVariant::Texture),
];

/// Cases with more positions than one small chunk holds, for the texture form in chunks of
/// 2 KiB (256 positions): several chunks, a short last one, and split reductions.
fn chunked_cases() -> Vec<ConvGeom> {
    let mut out = Vec::new();
    for (n, h, w, cin, cout, k, stride, padding) in [
        (8, 12, 12, 3, 6, 3, 1, Padding::Same),
        (12, 11, 9, 2, 5, 5, 2, Padding::Same),
        (4, 20, 18, 5, 7, 3, 1, Padding::Valid),
    ] {
        let window = Window {
            n,
            h,
            w,
            k,
            stride,
            padding,
        };
        out.push(ConvGeom { window, cin, cout });
    }
    out
}

/// Every (form, case) pair the tests run: both forms on the small cases, the texture form in
/// small chunks on the chunked ones. Each form must have run somewhere.
fn runs(ctx: &GpuContext) -> Vec<(Form, ConvGeom)> {
    let mut out = Vec::new();
    for form in FORMS {
        let before = out.len();
        out.extend(
            cases()
                .into_iter()
                .filter(|g| form.supports(ctx, g))
                .map(|g| (form, g)),
        );
        assert!(
            out.len() > before + 10,
            "{form:?} ran only {} cases",
            out.len() - before
        );
    }
    for g in chunked_cases() {
        assert!(ConvVariant::Texture.supports(ctx, &g), "{}", name(&g));
        out.push((Form::TextureChunks(2048), g));
    }
    out
}

#[test]
fn forward_equals_the_twin() {
    let ctx = ctx();
    for (i, (form, g)) in runs(ctx).into_iter().enumerate() {
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
        for (masked, biased) in [(false, false), (true, true), (true, false)] {
            let op = form.forward(
                ctx,
                g,
                &tx,
                &tw,
                masked.then_some(&tm),
                biased.then_some(&tb),
                &ty,
            );
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
            let what = format!(
                "{form:?} forward {} masked={masked} bias={biased}",
                name(&g)
            );
            assert_close(&what, &ty.read_f32(ctx).unwrap(), &want, 1e-5 * taps, 1e-5);
        }
    }
}

#[test]
fn gradients_equal_the_twin() {
    let ctx = ctx();
    for (i, (form, g)) in runs(ctx).into_iter().enumerate() {
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
                form.input_grad(ctx, g, &tdy, &tw, Some(&tm), &tdx, accumulate),
                form.weight_grad(ctx, g, &tx, &tdy, &tdw, accumulate),
            ];
            ops::run(ctx, "conv gradients", &[&ops_[0], &ops_[1]]).unwrap();
            let mut want_dx = cpu::conv2d_input_grad(&dy, &w, Some(&m), g.window, g.cin, g.cout);
            let mut want_dw = cpu::conv2d_weight_grad(&dy, &x, g.window, g.cin, g.cout);
            if accumulate {
                want_dx.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
                want_dw.iter_mut().zip(&dw0).for_each(|(a, b)| *a += b);
            }
            let (ho, wo) = g.out().unwrap();
            let what = format!("{form:?} {} accumulate={accumulate}", name(&g));
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

/// The weight gradient on both tiles of the texture product (`WgradTiles`): the wide tiles
/// every adapter runs and the narrow ones (32 columns, k split 8 ways per workgroup) that
/// training takes on adapters with subgroups of 8 where the columns fit them better. Every
/// texture case, the chunked ones in small chunks (several splits, short and empty parts of a
/// split), and wider ones: several column and row tiles.
#[test]
fn weight_gradients_equal_the_twin_on_both_tiles() {
    use conv_tex::WgradTiles;
    let ctx = ctx();
    let narrow_ok = rigl::gpu::gemm::narrow_tiles_supported(ctx);
    let mut runs: Vec<(ConvGeom, usize)> = cases()
        .into_iter()
        .filter(|g| ConvVariant::Texture.supports(ctx, g))
        .map(|g| (g, 32 << 20))
        .collect();
    runs.extend(chunked_cases().into_iter().map(|g| (g, 2048)));
    for (n, h, w, cin, cout, k) in [(8, 12, 12, 5, 40, 5), (4, 10, 10, 16, 33, 3)] {
        let window = Window {
            n,
            h,
            w,
            k,
            stride: 1,
            padding: Padding::Same,
        };
        runs.push((ConvGeom { window, cin, cout }, 32 << 20));
        runs.push((ConvGeom { window, cin, cout }, 4096));
    }
    let mut narrow_runs = 0;
    for (i, (g, chunk)) in runs.into_iter().enumerate() {
        let s = i as u32;
        let x = data(g.input_len(), 150 + s);
        let dy = data(g.output_len().unwrap(), 160 + s);
        let dw0 = data(g.weight_len(), 170 + s);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        let (ho, wo) = g.out().unwrap();
        let terms = (g.window.n * ho * wo) as f32;
        for tiles in [WgradTiles::Wide, WgradTiles::Narrow] {
            if tiles == WgradTiles::Narrow && !narrow_ok {
                continue;
            }
            for accumulate in [false, true] {
                let tdw = Tensor::from_f32(ctx, "dw", &dw0).unwrap();
                let op = conv_tex::weight_grad(ctx, g, &tx, &tdy, &tdw, accumulate, chunk, tiles)
                    .unwrap();
                ops::run(ctx, "conv weight gradient", &[&op]).unwrap();
                let mut want = cpu::conv2d_weight_grad(&dy, &x, g.window, g.cin, g.cout);
                if accumulate {
                    want.iter_mut().zip(&dw0).for_each(|(a, b)| *a += b);
                }
                assert_close(
                    &format!(
                        "weight gradient {tiles:?} chunk {chunk} {} accumulate={accumulate}",
                        name(&g)
                    ),
                    &tdw.read_f32(ctx).unwrap(),
                    &want,
                    1e-5 * terms,
                    1e-5,
                );
                narrow_runs += usize::from(tiles == WgradTiles::Narrow);
            }
        }
    }
    if narrow_ok {
        assert!(narrow_runs > 40, "narrow tiles ran {narrow_runs} times");
    } else {
        eprintln!(
            "{}: subgroups of {}..{} invocations, narrow tiles not tested (never picked here)",
            ctx.info.name, ctx.info.subgroup_min_size, ctx.info.subgroup_max_size
        );
    }
}

/// The input gradient in both forms of the texture path (`DgradForm`): the transposed
/// convolution every case runs and col2im (a product of the forward's size, then each input
/// summing its taps), which training takes for valid, strided and 1x1 convolutions. Every
/// texture case at the default chunk, the chunked ones in small chunks (col2im in chunks of
/// whole images: 2 KiB gives one image, and 8 + 4 images where positions per image are not
/// multiples of 4; 96 KiB gives 5 + 3 images, and one image of the valid case, which 2 KiB
/// cannot hold), and LeNet-5's `conv2` shape.
#[test]
fn input_gradients_equal_the_twin_in_both_forms() {
    use conv_tex::DgradForm;
    let ctx = ctx();
    let mut runs: Vec<(ConvGeom, usize)> = cases()
        .into_iter()
        .filter(|g| ConvVariant::Texture.supports(ctx, g))
        .map(|g| (g, 32 << 20))
        .collect();
    runs.extend(chunked_cases().into_iter().map(|g| (g, 2048)));
    runs.extend(chunked_cases().into_iter().map(|g| (g, 96 << 10)));
    let lenet_conv2 = ConvGeom {
        window: Window {
            n: 4,
            h: 12,
            w: 12,
            k: 5,
            stride: 1,
            padding: Padding::Valid,
        },
        cin: 20,
        cout: 50,
    };
    runs.push((lenet_conv2, 32 << 20));
    runs.push((lenet_conv2, 2048));
    // The transposed form row by row over blocks of 8 images (rows of 3 texels): two whole
    // blocks and a last one of 4 images.
    let mut blocks = lenet_conv2;
    blocks.window.n = 20;
    runs.push((blocks, 32 << 20));
    let (mut col2im_runs, mut chunked) = (0, 0);
    for (i, (g, chunk)) in runs.into_iter().enumerate() {
        let s = i as u32;
        let w = data(g.weight_len(), 200 + s);
        let m = mask(g.weight_len(), 0.5, 210 + s);
        let dy = data(g.output_len().unwrap(), 220 + s);
        let dx0 = data(g.input_len(), 230 + s);
        let tw = Tensor::from_f32(ctx, "w", &w).unwrap();
        let tm = Tensor::from_f32(ctx, "mask", &m).unwrap();
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        let taps = (g.window.k * g.window.k * g.cout) as f32;
        let fits = conv_tex::col2im_fits(ctx, &g, chunk);
        for form in [DgradForm::Transposed, DgradForm::Col2im] {
            if form == DgradForm::Col2im && !fits {
                let t = Tensor::zeros(ctx, "dx", g.input_len()).unwrap();
                let e = conv_tex::input_grad(ctx, g, &tdy, &tw, None, &t, false, chunk, form)
                    .unwrap_err();
                assert!(e.to_string().contains("col2im"), "{e}");
                continue;
            }
            for (masked, accumulate) in [(true, false), (false, true)] {
                let tdx = Tensor::from_f32(ctx, "dx", &dx0).unwrap();
                let mk = masked.then_some(&tm);
                let op = conv_tex::input_grad(ctx, g, &tdy, &tw, mk, &tdx, accumulate, chunk, form)
                    .unwrap();
                ops::run(ctx, "conv input gradient", &[&op]).unwrap();
                let mk = masked.then_some(&m[..]);
                let mut want = cpu::conv2d_input_grad(&dy, &w, mk, g.window, g.cin, g.cout);
                if accumulate {
                    want.iter_mut().zip(&dx0).for_each(|(a, b)| *a += b);
                }
                assert_close(
                    &format!(
                        "input gradient {form:?} chunk {chunk} {} masked={masked} \
                         accumulate={accumulate}",
                        name(&g)
                    ),
                    &tdx.read_f32(ctx).unwrap(),
                    &want,
                    1e-5 * taps,
                    1e-5,
                );
                if form == DgradForm::Col2im {
                    col2im_runs += 1;
                    chunked += usize::from(chunk < 32 << 20);
                }
            }
        }
    }
    assert!(col2im_runs > 60, "col2im ran {col2im_runs} times");
    assert!(chunked >= 10, "col2im ran {chunked} times in small chunks");
}

/// The weight gradient's copy of `dy` serves the input gradient after it (a layer's backward
/// copies `dy` once): the input gradient then has no copy of its own and its result is bit for
/// bit the one it computes alone; the copy of another output gradient is refused.
#[test]
fn the_input_gradient_reads_the_weight_gradients_copy_of_dy() {
    use conv_tex::{DgradForm, WgradTiles};
    let ctx = ctx();
    let chunk = 32 << 20;
    let mut shared_runs = 0;
    for (i, g) in cases()
        .into_iter()
        .filter(|g| ConvVariant::Texture.supports(ctx, g))
        .enumerate()
    {
        let s = i as u32;
        let x = data(g.input_len(), 300 + s);
        let w = data(g.weight_len(), 310 + s);
        let dy = data(g.output_len().unwrap(), 320 + s);
        let tx = Tensor::from_f32(ctx, "x", &x).unwrap();
        let tw = Tensor::from_f32(ctx, "w", &w).unwrap();
        let tdy = Tensor::from_f32(ctx, "dy", &dy).unwrap();
        let tdw = Tensor::zeros(ctx, "dw", g.weight_len()).unwrap();
        let (wgrad, rows) =
            conv_tex::weight_grad_sharing(ctx, g, &tx, &tdy, &tdw, false, chunk, WgradTiles::Auto)
                .unwrap();
        let Some(rows) = rows else {
            continue;
        };
        let alone = Tensor::from_f32(ctx, "dx alone", &vec![f32::NAN; g.input_len()]).unwrap();
        let op = conv_tex::input_grad(
            ctx,
            g,
            &tdy,
            &tw,
            None,
            &alone,
            false,
            chunk,
            DgradForm::Auto,
        )
        .unwrap();
        ops::run(ctx, "input gradient alone", &[&op]).unwrap();
        let tdx = Tensor::from_f32(ctx, "dx", &vec![f32::NAN; g.input_len()]).unwrap();
        let reading = |dy: &Tensor| {
            conv_tex::input_grad_sharing(
                ctx,
                g,
                dy,
                &tw,
                None,
                &tdx,
                false,
                chunk,
                DgradForm::Auto,
                Some(&rows),
            )
        };
        let shared = reading(&tdy).unwrap();
        let copies = |d: &Dispatch| {
            d.before_launches()
                .iter()
                .filter(|b| b.name.contains("act_to_tex"))
                .count()
        };
        let what = name(&g);
        assert_eq!(
            copies(&wgrad),
            2,
            "{what}: the weight gradient copies dy and x"
        );
        if copies(&op) == 1 {
            assert_eq!(
                copies(&shared),
                0,
                "{what}: the input gradient copies dy again"
            );
            shared_runs += 1;
        }
        ops::run(ctx, "both gradients", &[&wgrad, &shared]).unwrap();
        assert_eq!(
            tdx.read_f32(ctx).unwrap(),
            alone.read_f32(ctx).unwrap(),
            "{what}"
        );
        // Another output gradient of the same shape: refused.
        let other = Tensor::from_f32(ctx, "another dy", &dy).unwrap();
        let e = reading(&other).unwrap_err();
        assert!(e.to_string().contains("another output gradient"), "{e}");
    }
    assert!(shared_runs >= 8, "{shared_runs} runs shared the copy");
}

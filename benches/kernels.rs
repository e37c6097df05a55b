//! Criterion benches of the kernels; each iteration submits and waits for GPU completion.
//! Run with `cargo bench --bench kernels`. Needs a GPU adapter (lavapipe works).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rigl::gpu::{gemm, ops, GemmOp, GemmShape, GpuContext, Tensor};

fn matmul(c: &mut Criterion) {
    let ctx = match GpuContext::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping GPU benches: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10);
    for s in [256usize, 1024] {
        let shape = GemmShape::nn(s, s, s);
        let variant = match gemm::choose_variant(&ctx).and_then(|v| gemm::pick(&ctx, v, &shape)) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let (a, b, out) = match (
            Tensor::from_f32(&ctx, "A", &vec![0.5; s * s]),
            Tensor::from_f32(&ctx, "B", &vec![0.25; s * s]),
            Tensor::zeros(&ctx, "C", s * s),
        ) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return,
        };
        let Ok(op) = GemmOp::new(&ctx, shape, variant, &a, &b, &out, None, false) else {
            return;
        };
        group.throughput(Throughput::Elements((2 * s * s * s) as u64));
        group.bench_function(format!("{s}x{s}x{s} {}", variant.as_str()), |bch| {
            bch.iter(|| ops::run(&ctx, "bench", &[&op.dispatch]))
        });
    }
    group.finish();
}

/// The sparse products of the 300x784 layer at 90% sparsity, batch 1000 (as `rigl bench
/// spmm|sddmm` with their defaults), and the default model's training step, sparse and dense.
fn sparse(c: &mut Criterion) {
    use rigl::gpu::spmm::{self, Metadata, SparseShape};
    use rigl::gpu::texture::{meta_texture, Texture};
    use rigl::sparse::csr::CsrIndex;
    use rigl::sparse::init::{init_layer, WeightInit};
    let Ok(ctx) = GpuContext::new() else {
        eprintln!("skipping GPU benches: no adapter");
        return;
    };
    if let Err(e) = spmm::support(&ctx) {
        eprintln!("skipping sparse benches: {e}");
        return;
    }
    let (i, o, b) = (784usize, 300usize, 1000usize);
    let nnz = i * o - (0.9 * (i * o) as f64) as usize;
    let setup = || -> rigl::error::Result<_> {
        let init = init_layer(0, 0, &[i, o], nnz, WeightInit::GlorotUniform)?;
        let idx = CsrIndex::from_mask(i, o, &init.mask)?;
        let s = SparseShape {
            in_dim: i,
            out_dim: o,
            nnz,
            batch: b,
        };
        let idx_t = Tensor::from_u32(&ctx, "index", &idx.to_words())?;
        let vals = Tensor::from_f32(&ctx, "values", &idx.gather(&init.weights))?;
        let fm = meta_texture(&ctx, "metadata", nnz)?;
        let vt = meta_texture(&ctx, "values", nnz)?;
        let x = Texture::from_f32(&ctx, "x", &vec![0.5; i * b], i, b)?;
        let d = Texture::from_f32(&ctx, "d", &vec![0.25; o * b], o, b)?;
        let y = Tensor::zeros(&ctx, "y", o * b)?;
        let g = Tensor::zeros(&ctx, "g", nnz)?;
        ops::run(
            &ctx,
            "metadata",
            &[&spmm::meta(&ctx, s, &idx_t, &vals, 0, &vt, &fm, None)?],
        )?;
        let meta = Metadata {
            index: &fm,
            values: &vt,
        };
        let f = spmm::spmm(&ctx, s, &idx_t, &meta, &x, &y, true)?;
        let sd = spmm::sddmm(&ctx, s, &idx_t, &x, &d, &g)?;
        Ok((f, sd))
    };
    let Ok((f, sd)) = setup() else {
        eprintln!("skipping sparse benches: setup failed");
        return;
    };
    let mut group = c.benchmark_group("sparse");
    group.sample_size(10);
    group.throughput(Throughput::Elements((2 * nnz * b) as u64));
    group.bench_function("spmm 300x784 90% batch 1000", |bch| {
        bch.iter(|| ops::run(&ctx, "bench", &[&f]))
    });
    group.bench_function("sddmm 300x784 90% batch 1000", |bch| {
        bch.iter(|| ops::run(&ctx, "bench", &[&sd]))
    });
    group.finish();

    // The default model's training step at batch 1000, compressed sparse at 90% and dense.
    let mut group = c.benchmark_group("step");
    group.sample_size(10);
    for (method, kernels) in [
        (
            rigl::sparse::Method::Rigl,
            rigl::nn::choice::KernelChoice::Sparse,
        ),
        (
            rigl::sparse::Method::Dense,
            rigl::nn::choice::KernelChoice::Auto,
        ),
    ] {
        let cfg = rigl::train::TrainConfig {
            batch: 1000,
            method,
            kernels,
            ..Default::default()
        };
        let Ok(runner) = rigl::train::bench::StepRunner::new(&ctx, &cfg, 784, 10) else {
            eprintln!("skipping the {} step bench", method.as_str());
            continue;
        };
        group.bench_function(
            format!("{} 784-300-100-10 batch 1000", method.as_str()),
            |bch| bch.iter(|| runner.step(&ctx)),
        );
    }
    group.finish();
}

/// The three products of a 3x3 64-to-64 convolution at 16x16 (WRN-22-2's second group), batch
/// 32, with 90% of the kernel inactive: compressed (`gpu::sparse_conv`) against masked-dense
/// (`gpu::conv`), as `rigl bench conv --cin 64 --cout 64 --hw 16 --batch 32 --sparsity 0.9`.
fn sparse_conv(c: &mut Criterion) {
    use rigl::gpu::conv::{self, ConvGeom};
    use rigl::gpu::sparse_conv::{self as sc, Layout, Scratch, SparseConvForm};
    use rigl::shape::{Padding, Window};
    use rigl::sparse::csr::CsrIndex;
    use rigl::sparse::init::{init_layer, WeightInit};
    let Ok(ctx) = GpuContext::new() else {
        eprintln!("skipping GPU benches: no adapter");
        return;
    };
    let g = ConvGeom {
        window: Window {
            n: 32,
            h: 16,
            w: 16,
            k: 3,
            stride: 1,
            padding: Padding::Same,
        },
        cin: 64,
        cout: 64,
    };
    let form = SparseConvForm::pick(&ctx);
    let (rows, cols) = (9 * g.cin, g.cout);
    let nnz = rows * cols / 10;
    let setup = || -> rigl::error::Result<_> {
        sc::supports(&ctx, &g, form).map_err(rigl::error::RiglError::invalid)?;
        let init = init_layer(0, 0, &[rows, cols], nnz, WeightInit::GlorotUniform)?;
        let idx = CsrIndex::from_mask(rows, cols, &init.mask)?;
        let (ho, wo) = g.out()?;
        let n_in = g.cin * g.window.n * g.window.h * g.window.w;
        let n_out = cols * g.window.n * ho * wo;
        let t = |label: &str, v: Vec<f32>| Tensor::from_f32(&ctx, label, &v);
        let idx_t = Tensor::from_u32(&ctx, "index", &idx.to_words())?;
        let vals = t("values", idx.gather(&init.weights))?;
        let (w, mask) = (t("w", init.weights)?, t("mask", init.mask)?);
        let (x, dy) = (t("x", vec![0.5; n_in])?, t("dy", vec![0.25; n_out])?);
        let (y, dx) = (
            Tensor::zeros(&ctx, "y", n_out)?,
            Tensor::zeros(&ctx, "dx", n_in)?,
        );
        let (gs, gd) = (
            Tensor::zeros(&ctx, "slot gradient", nnz)?,
            Tensor::zeros(&ctx, "dense gradient", rows * cols)?,
        );
        let lay = Layout::new(g)?;
        let scratch = Scratch::new(&ctx, &[lay], nnz)?;
        Ok([
            (
                "forward",
                sc::forward(&ctx, form, &lay, nnz, &idx_t, &vals, None, &x, &y, &scratch)?,
                conv::forward(&ctx, g, &x, &w, Some(&mask), None, &y)?,
            ),
            (
                "input grad",
                sc::input_grad(
                    &ctx, form, &lay, nnz, &idx_t, &vals, &dy, &dx, false, &scratch,
                )?,
                conv::input_grad(&ctx, g, &dy, &w, Some(&mask), &dx, false)?,
            ),
            (
                "weight grad",
                sc::weight_grad(&ctx, form, &lay, nnz, &idx_t, &x, &dy, &gs, &scratch)?,
                conv::weight_grad(&ctx, g, &x, &dy, &gd, false)?,
            ),
        ])
    };
    let products = match setup() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping sparse convolution benches: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group("sparse_conv 3x3 64-64 16x16 batch 32 90%");
    group.sample_size(10);
    for (name, compressed, masked) in &products {
        group.bench_function(format!("{name} compressed"), |bch| {
            bch.iter(|| ops::run(&ctx, "bench", &[compressed]))
        });
        group.bench_function(format!("{name} masked"), |bch| {
            bch.iter(|| ops::run(&ctx, "bench", &[masked]))
        });
    }
    group.finish();
}

criterion_group!(benches, matmul, sparse, sparse_conv);
criterion_main!(benches);

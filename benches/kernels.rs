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
        let variant = match gemm::choose_variant(&ctx) {
            Ok(v) => v.resolve(&ctx, &shape),
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

criterion_group!(benches, matmul);
criterion_main!(benches);

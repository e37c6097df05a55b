//! `GpuContext::gpu_bytes_held` against the sizes the shapes imply: buffers, views, textures,
//! a texture GEMM's packed operand copies, and a whole model, each given back when dropped.
//! One context of its own (the counter is per context, and other test binaries' contexts would
//! not disturb it, but the tests of one binary share theirs).

use rigl::gpu::ops::SgdConfig;
use rigl::gpu::texture::Texture;
use rigl::gpu::{GemmOp, GemmShape, GemmVariant, GpuContext, Tensor};
use rigl::nn::mlp::{Mlp, MlpConfig};

#[test]
fn held_bytes_follow_allocations_and_drops() {
    let ctx = GpuContext::new().expect("GPU tests need an adapter");
    let base = ctx.gpu_bytes_held();

    // A buffer of 1000 f32; a view shares it and keeps it alive.
    let t = Tensor::zeros(&ctx, "t", 1000).unwrap();
    assert_eq!(ctx.gpu_bytes_held() - base, 4000);
    let view = t.slice(&ctx, 0, 256, "view").unwrap();
    assert_eq!(ctx.gpu_bytes_held() - base, 4000);
    drop(t);
    assert_eq!(
        ctx.gpu_bytes_held() - base,
        4000,
        "the view still holds the buffer"
    );
    drop(view);
    assert_eq!(ctx.gpu_bytes_held(), base);

    // A texture of 8 rows by 16 samples: 4 texels a row, 16 bytes a texel.
    let x = Texture::new(&ctx, "x", 8, 16).unwrap();
    assert_eq!(ctx.gpu_bytes_held() - base, 512);
    drop(x);
    assert_eq!(ctx.gpu_bytes_held(), base);

    // A texture GEMM at 64^3 holds its two packed operands: rows of 64 floats padded to 80 (5
    // lines of 64 bytes, an odd number), so 64 x 80 x 4 bytes each; and three parameter blocks
    // (the GEMM's 32 bytes, 16 for each pack).
    let shape = GemmShape::nn(64, 64, 64);
    if GemmVariant::Texture.supports(&ctx, &shape) {
        let a = Tensor::zeros(&ctx, "a", 64 * 64).unwrap();
        let b = Tensor::zeros(&ctx, "b", 64 * 64).unwrap();
        let c = Tensor::zeros(&ctx, "c", 64 * 64).unwrap();
        let before = ctx.gpu_bytes_held();
        let op = GemmOp::new(&ctx, shape, GemmVariant::Texture, &a, &b, &c, None, false).unwrap();
        assert_eq!(op.variant, GemmVariant::Texture);
        assert_eq!(ctx.gpu_bytes_held() - before, 2 * 64 * 80 * 4 + 32 + 2 * 16);
        drop(op);
        assert_eq!(ctx.gpu_bytes_held(), before);
        drop((a, b, c));
        assert_eq!(ctx.gpu_bytes_held(), base);
    }

    // A dense LeNet-300-100 at batch 100 holds at least its weights, masks, momentum and
    // gradients (16 bytes a weight) and its activations (input, and per layer outputs and their
    // gradients); everything goes back when the model is dropped.
    let sizes = vec![784, 300, 100, 10];
    let batch = 100;
    let model = Mlp::new(
        &ctx,
        MlpConfig {
            sizes: sizes.clone(),
            batch,
            masked: false,
            label_smoothing: 0.0,
            sgd: SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            },
            gemm: GemmVariant::Subgroup.resolve(&ctx, &shape),
        },
    )
    .unwrap();
    let weights: usize = sizes.windows(2).map(|w| w[0] * w[1]).sum();
    let activations: usize = sizes[0] * batch + 2 * sizes[1..].iter().sum::<usize>() * batch;
    let held = ctx.gpu_bytes_held() - base;
    let lower = (16 * weights + 4 * activations) as u64;
    assert!(
        held >= lower,
        "held {held} bytes, less than weights and activations ({lower})"
    );
    assert!(held >= model.memory().weights_grads_momentum);
    drop(model);
    assert_eq!(ctx.gpu_bytes_held(), base);
}

//! A whole training step of convolutional models on the GPU (`nn::model::GpuModel`, masked
//! dense) against the CPU twin (`cpu::model::HostModel`): the loss, every parameter gradient
//! (weights at every position, biases, batch-norm scales and shifts), the running statistics,
//! and the weights after an SGD step, for LeNet-5 and two small residual nets (projection and
//! identity shortcuts, dropout, pooling on both paddings), at batch 1 and 3; and the same step
//! with the convolutions, and the linear layers, on the compressed sparse kernels (gradients and
//! weights at the slots; after the optimizer, the forward pass equals that of a model loaded
//! from the state read back), and with compressed params on the dense products over their
//! scattered slots (what `--kernels auto` picks where those measure faster); and which passes
//! the builder's fusion leaves in a step.

mod common;

use common::nets::{model, pooled_net, residual_net};
use common::{assert_close, ctx, data};
use rigl::cpu::dense::sgd;
use rigl::cpu::model::{HostModel, Mode};
use rigl::gpu::ops::{self, SgdConfig};
use rigl::gpu::Tensor;
use rigl::nn::model::{CompressedKind, DenseProducts, GpuModel, ModelOptions, RunMode};
use rigl::nn::spec::ModelSpec;
use rigl::sparse::csr::CsrIndex;

const SEED: u32 = 5;
const STEP: u32 = 17;

fn check(host: HostModel, n: usize, what: &str) {
    check_with(host, n, what, false, false)
}

fn check_with(
    host: HostModel,
    n: usize,
    what: &str,
    compressed_conv: bool,
    compressed_linear: bool,
) {
    check_paths(host, n, what, compressed_conv, compressed_linear, &[])
}

/// The slots of a param's mask (compressed params) or every position.
fn at_slots(host: &HostModel, i: usize, compressed: bool, dense: &[f32]) -> Vec<f32> {
    let w = &host.weights[i];
    if !compressed {
        return dense.to_vec();
    }
    let cout = *w.shape.last().expect("shape");
    CsrIndex::from_mask(w.mask.len() / cout, cout, &w.mask)
        .expect("index")
        .gather(dense)
}

/// The step of [`check`] with compressed params, the products `dense_products[i]` names dense
/// over their scattered slots.
fn check_paths(
    mut host: HostModel,
    n: usize,
    what: &str,
    compressed_conv: bool,
    compressed_linear: bool,
    dense_products: &[DenseProducts],
) {
    let ctx = ctx();
    let input = host.spec.input_shape();
    let x = data(input.len() * n, 77);
    let labels: Vec<u32> = (0..n as u32).map(|i| (3 * i + 1) % 10 % 3).collect();
    let opts = ModelOptions {
        compressed_conv,
        compressed_linear,
        ..ModelOptions::plain(ctx).expect("options")
    };
    let gpu =
        GpuModel::with_products(ctx, &host, n, SEED, opts, dense_products).expect("GPU model");
    let count = |linear: bool| {
        gpu.compressed
            .iter()
            .flatten()
            .filter(|c| matches!(c.kind, CompressedKind::Linear(_)) == linear)
            .count()
    };
    if compressed_conv {
        assert!(count(false) > 0, "{what}: no compressed convolution");
    }
    // Linear layers compress where the adapter runs the sparse matrix kernels (subgroups, a
    // batch that is a multiple of 4).
    if compressed_linear && rigl::nn::model::linear_support(ctx, n).is_ok() {
        assert!(count(true) > 0, "{what}: no compressed linear layer");
    }
    // A param's gradient and weights: its slots when compressed.
    let slot_grad = |i: usize| -> &Tensor {
        match (&gpu.compressed[i], &gpu.params[i].flat) {
            (Some(c), _) => &c.grad,
            (None, Some(f)) => &f.grad,
            (None, None) => panic!("param {i} has no storage"),
        }
    };
    let slot_w = |i: usize| -> &Tensor {
        match (&gpu.compressed[i], &gpu.params[i].flat) {
            (Some(c), _) => &c.vals,
            (None, Some(f)) => &f.w,
            (None, None) => panic!("param {i} has no storage"),
        }
    };
    gpu.input.write_f32(ctx, &x).expect("input");
    ctx.queue.write_buffer(
        &gpu.labels.buffer,
        gpu.labels.offset,
        bytemuck::cast_slice(&labels),
    );
    gpu.set_mode(ctx, RunMode::Train { step: STEP })
        .expect("mode");
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: true,
    };
    let sgd_ops = gpu.sgd_ops(ctx, cfg).expect("sgd");
    let mut step = gpu.step_ops();
    let grads_only = step.len();
    step.extend(sgd_ops.iter());
    // Gradients first (read before the optimizer), then the optimizer.
    ops::run(ctx, "step", &step[..grads_only]).expect("step");
    let want = host
        .step(
            &x,
            &labels,
            n,
            Mode::Train {
                seed: SEED,
                step: STEP,
            },
            0.0,
        )
        .expect("host step");
    let (loss, correct) = gpu.read_loss(ctx).expect("loss");
    assert!(
        (loss - want.loss).abs() <= 1e-4 * want.loss.abs().max(1.0),
        "{what}: loss {loss} vs {}",
        want.loss
    );
    assert_eq!(correct, want.correct, "{what}: correct");
    for (i, p) in gpu.params.iter().enumerate() {
        let g = slot_grad(i).read_f32(ctx).expect("grad");
        let c = gpu.compressed[i].is_some();
        let scale = want.grads.w[i]
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(1e-3);
        assert_close(
            &format!("{what}: {} gradient", p.name),
            &g,
            &at_slots(&host, i, c, &want.grads.w[i]),
            2e-4 * scale,
            2e-3,
        );
        if let (Some([_, gb, _]), Some(wb)) = (&p.bias, &want.grads.bias[i]) {
            let scale = wb.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
            assert_close(
                &format!("{what}: {} bias gradient", p.name),
                &gb.read_f32(ctx).expect("bias"),
                wb,
                2e-4 * scale,
                2e-3,
            );
        }
    }
    for (i, b) in gpu.norms.iter().enumerate() {
        let g = b.grad.read_f32(ctx).expect("bn grad");
        let w: Vec<f32> = want.grads.gamma[i]
            .iter()
            .zip(&want.grads.beta[i])
            .flat_map(|(a, b)| [*a, *b])
            .collect();
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        assert_close(
            &format!("{what}: batch norm {i} gradient"),
            &g,
            &w,
            2e-4 * scale,
            2e-3,
        );
        let run = b.running.read_f32(ctx).expect("running");
        let h = &host.norms[i];
        let w: Vec<f32> = h
            .mean
            .iter()
            .zip(&h.var)
            .flat_map(|(a, b)| [*a, *b])
            .collect();
        assert_close(
            &format!("{what}: batch norm {i} running statistics"),
            &run,
            &w,
            1e-5,
            1e-4,
        );
    }
    // The optimizer step on both sides.
    let sgd_refs: Vec<&ops::Dispatch> = sgd_ops.iter().collect();
    ops::run(ctx, "sgd", &sgd_refs).expect("sgd");
    for (i, p) in gpu.params.iter().enumerate() {
        let hw = &mut host.weights[i];
        let mut mom = vec![0.0; hw.w.len()];
        sgd(&want.grads.w[i], &mut hw.w, &mut mom, Some(&hw.mask), cfg);
        let scale = hw.w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        let c = gpu.compressed[i].is_some();
        let want_w = at_slots(&host, i, c, &host.weights[i].w);
        assert_close(
            &format!("{what}: {} after SGD", p.name),
            &slot_w(i).read_f32(ctx).expect("w"),
            &want_w,
            1e-5 * scale,
            1e-4,
        );
    }
    // After the optimizer, a forward pass reads the stepped weights (the compressed linear
    // layers through the value texture the optimizer writes): it equals that of a model built
    // from the same host and loaded with the state read back.
    let state = gpu.read_state(ctx).expect("state");
    let again =
        GpuModel::with_products(ctx, &host, n, SEED, opts, dense_products).expect("second model");
    again.load_state(ctx, &state).expect("load state");
    let mut logits = Vec::new();
    for m in [&gpu, &again] {
        m.input.write_f32(ctx, &x).expect("input");
        m.set_mode(ctx, RunMode::Eval).expect("mode");
        ops::run(ctx, "forward", &m.forward_ops()).expect("forward");
        logits.push(m.logits.read_f32(ctx).expect("logits"));
    }
    assert_eq!(
        logits[0], logits[1],
        "{what}: forward after the optimizer step"
    );
}

#[test]
fn residual_nets_step_like_the_twin() {
    check(model(residual_net(), 1), 3, "residual batch 3");
    check(model(residual_net(), 2), 1, "residual batch 1");
    check(model(pooled_net(), 3), 3, "pooled batch 3");
}

#[test]
fn lenet5_steps_like_the_twin() {
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    check(model(spec, 4), 2, "lenet5 batch 2");
}

#[test]
fn compressed_convolutions_step_like_the_twin() {
    check_with(
        model(residual_net(), 1),
        3,
        "compressed residual batch 3",
        true,
        false,
    );
    check_with(
        model(pooled_net(), 3),
        1,
        "compressed pooled batch 1",
        true,
        false,
    );
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    check_with(model(spec, 4), 2, "compressed lenet5 batch 2", true, false);
}

#[test]
fn compressed_linear_layers_step_like_the_twin() {
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    check_with(model(spec, 4), 4, "compressed lenet5 batch 4", true, true);
    check_with(
        model(residual_net(), 1),
        4,
        "compressed residual batch 4",
        true,
        true,
    );
    check_with(
        model(pooled_net(), 3),
        8,
        "linear only, pooled batch 8",
        false,
        true,
    );
}

#[test]
fn dense_products_over_compressed_slots_step_like_the_twin() {
    // Every other weight tensor on the dense products over its slots, the rest compressed.
    let alternate: Vec<DenseProducts> = (0..16).map(|i| DenseProducts::all(i % 2 == 0)).collect();
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    check_paths(
        model(spec, 4),
        4,
        "lenet5 mixed products",
        true,
        true,
        &alternate,
    );
    let all = vec![DenseProducts::all(true); 16];
    check_paths(
        model(residual_net(), 1),
        4,
        "residual dense products",
        true,
        true,
        &all,
    );
    check_paths(
        model(residual_net(), 2),
        3,
        "residual mixed products batch 3",
        true,
        false,
        &alternate[1..],
    );
    // fc1 on the compressed kernels with its ReLU fused, fc2 dense over its slots: fc1 applies
    // the ReLU's backward to the gradient fc2 writes.
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    check_paths(
        model(spec, 5),
        4,
        "lenet5 fc1 compressed, fc2 dense products",
        true,
        true,
        &alternate[1..],
    );
}

/// Per convolution, one of the eight ways its three products can run (the i-th tensor's bits
/// i, i+1, i+2 of a counter from `start`); linear layers all one way.
fn per_product(host: &HostModel, start: usize) -> Vec<DenseProducts> {
    host.weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let c = start + i;
            if w.shape.len() == 4 {
                DenseProducts {
                    forward: c & 1 != 0,
                    weight_grad: c & 2 != 0,
                    input_grad: c & 4 != 0,
                }
            } else {
                DenseProducts::all(c.is_multiple_of(2))
            }
        })
        .collect()
}

#[test]
fn convolution_products_mixed_within_a_tensor_step_like_the_twin() {
    // Every combination of the three products across the runs: forward dense with the
    // gradients compressed, and so on, the dense ones over the scattered slots.
    for start in [1, 2, 5] {
        let host = model(residual_net(), 1);
        let paths = per_product(&host, start);
        check_paths(
            host,
            3,
            &format!("residual per product {start}"),
            true,
            true,
            &paths,
        );
        let host = model(ModelSpec::builtin("lenet5", &[]).expect("lenet5"), 4);
        let paths = per_product(&host, start);
        check_paths(
            host,
            4,
            &format!("lenet5 per product {start}"),
            true,
            true,
            &paths,
        );
    }
}

#[test]
fn a_linear_layer_with_mixed_products_is_refused() {
    let ctx = ctx();
    let host = model(ModelSpec::builtin("lenet5", &[]).expect("lenet5"), 4);
    if rigl::nn::model::linear_support(ctx, 4).is_err() {
        return; // linear layers stay masked-dense here: there is nothing to mix
    }
    let opts = ModelOptions {
        compressed_conv: true,
        compressed_linear: true,
        ..ModelOptions::plain(ctx).expect("options")
    };
    let mut paths = vec![DenseProducts::default(); 4];
    paths[2].forward = true; // fc3
    let err = GpuModel::with_products(ctx, &host, 4, SEED, opts, &paths)
        .err()
        .expect("a mixed linear layer is an error");
    assert!(err.to_string().contains("fc3"), "{err}");
}

#[test]
fn evaluation_mode_uses_the_running_statistics() {
    let ctx = ctx();
    let mut host = model(pooled_net(), 6);
    let n = 2;
    let x = data(36 * n, 5);
    let gpu = GpuModel::new(ctx, &host, n, SEED).expect("GPU model");
    gpu.input.write_f32(ctx, &x).expect("input");
    gpu.set_mode(ctx, RunMode::Eval).expect("mode");
    ops::run(ctx, "eval", &gpu.forward_ops()).expect("forward");
    let want = host.forward(&x, n, Mode::Eval).expect("host");
    let got = gpu.logits.read_f32(ctx).expect("logits");
    assert_close("eval logits", &got, &want, 1e-4, 1e-3);
}

/// How many dispatches of each image kernel a step of `host` at batch `n` runs.
fn image_kernels(host: &HostModel, n: usize) -> std::collections::BTreeMap<String, usize> {
    let ctx = ctx();
    let gpu = GpuModel::new(ctx, host, n, SEED).expect("GPU model");
    let mut out = std::collections::BTreeMap::new();
    for d in gpu.step_ops() {
        if let Some(entry) = d.name.strip_prefix("image.wgsl:") {
            *out.entry(entry.to_string()).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn the_builder_fuses_the_elementwise_passes_of_any_model() {
    // A pass in either form (the per-element ones have vec4 forms, `_v4`, for runs of whole
    // vec4s).
    let count = |m: &std::collections::BTreeMap<String, usize>, k: &str| {
        m.get(k).unwrap_or(&0) + m.get(&format!("{k}_v4")).unwrap_or(&0)
    };
    // A model of layers not built in: conv, ReLU, max pool (fused); batch norm + ReLU in a
    // block's pre and body (fused); a block with an empty pre whose body starts with batch norm +
    // ReLU (the identity shortcut's gradient added in that batch norm's backward).
    let k = image_kernels(&model(residual_net(), 1), 1);
    for gone in ["relu", "relu_bwd_to", "dropout"] {
        assert_eq!(count(&k, gone), 0, "{gone}: {k:?}");
    }
    // The one copy left is the projection shortcut's output gradient.
    assert_eq!(count(&k, "copy"), 1, "{k:?}");
    assert_eq!(count(&k, "bn_apply"), 3, "{k:?}");
    assert_eq!(count(&k, "bn_bwd_apply"), 3, "{k:?}");
    // Two residual adds forward; backward only the projection block's (its body starts with a
    // convolution).
    assert_eq!(count(&k, "add"), 3, "{k:?}");
    // Batch norm, ReLU, dropout: one pass each way besides the statistics and the reduction.
    let k = image_kernels(&model(pooled_net(), 1), 1);
    for gone in ["relu", "relu_bwd_to", "copy", "dropout"] {
        assert_eq!(count(&k, gone), 0, "{gone}: {k:?}");
    }
    // LeNet-5: only the fully connected ReLU is left; conv1, its ReLU and its pooling are one
    // layer (shaders/conv_pool.wgsl), conv2's ReLU runs in its pooling.
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    let k = image_kernels(&model(spec, 4), 1);
    assert_eq!(count(&k, "relu"), 1, "{k:?}");
    assert_eq!(count(&k, "relu_bwd_to"), 1, "{k:?}");
    assert_eq!(count(&k, "max_pool_fwd"), 1, "{k:?}");
    // The flatten after conv2's pooling runs in the pooling's passes.
    assert_eq!(count(&k, "flatten"), 0, "{k:?}");
    // Its 2x2 windows do not overlap: the backward is the scatter form.
    assert_eq!(count(&k, "max_pool_bwd_cells"), 1, "{k:?}");
}

#[test]
fn the_builder_leaves_out_passes_whose_work_is_done() {
    // LeNet-5 with compressed convolutions: conv -> ReLU -> max pool twice.
    let ctx = ctx();
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    let host = model(spec, 4);
    let opts = ModelOptions {
        compressed_conv: true,
        ..ModelOptions::plain(ctx).expect("options")
    };
    let gpu = GpuModel::with_products(ctx, &host, 2, SEED, opts, &[]).expect("GPU model");
    let names: Vec<&str> = gpu.step_ops().iter().map(|d| d.name.as_str()).collect();
    let count = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count();
    // conv1, its ReLU and its pooling are one layer, dense over conv1's slots: scattered
    // before its forward, its weight and bias gradients from the pooled gradient at the
    // argmaxes, gathered back into the slots.
    for (kernel, times) in [
        ("slots.wgsl:slots_scatter", 1),
        ("conv_pool.wgsl:conv_pool_fwd", 1),
        ("conv_pool.wgsl:conv_pool_wsum (+1 before)", 1),
        ("slots.wgsl:slots_gather", 1),
    ] {
        assert_eq!(count(kernel), times, "{kernel}: {names:?}");
    }
    // conv2's bias gradient sums the pooling's output gradient at its argmaxes.
    assert_eq!(count("reduce.wgsl:segment_sum_arg"), 1, "{names:?}");
    // conv2's pooling writes conv2's output-gradient planes from its own output gradient and
    // argmax (conv2 is the only layer on the scratch and the 2x2 windows tile its output):
    // nothing writes conv2's output gradient itself, nothing copies it.
    assert_eq!(count("sconv_src.wgsl:pool_dy_planes"), 1, "{names:?}");
    assert_eq!(count("image.wgsl:max_pool_bwd"), 0, "{names:?}");
    // conv2 runs its forward last and its weight gradient first: the scratch still holds its
    // input's planes and metadata; the pooling's backward just wrote the output gradient's.
    let wgrads: Vec<&&str> = names
        .iter()
        .filter(|n| n.starts_with("sconv_sddmm.wgsl:sddmm"))
        .collect();
    assert_eq!(wgrads, [&"sconv_sddmm.wgsl:sddmm"], "{names:?}");
    let ops = gpu.step_ops();
    let pooled = ops
        .iter()
        .position(|d| d.name == "sconv_src.wgsl:pool_dy_planes")
        .expect("conv2's pooling backward");
    assert_eq!(
        ops[pooled + 1].name,
        "reduce.wgsl:segment_sum_arg",
        "{names:?}"
    );
    assert!(ops[pooled + 2].name.starts_with("sconv_sddmm"), "{names:?}");
    // Its input gradient, right after, reads the output gradient's planes the pooling wrote.
    let at = ops
        .iter()
        .position(|d| d.name.starts_with("sconv_sddmm"))
        .expect("conv2's weight gradient");
    let conv2_dgrad = ops[at + 1];
    assert!(
        conv2_dgrad.name.starts_with("sconv.wgsl:spconv"),
        "{names:?}"
    );
    let parts: Vec<&str> = conv2_dgrad
        .before_launches()
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(
        parts,
        ["sconv_meta.wgsl:bwd_rows", "sconv_meta.wgsl:meta_bwd"],
        "{names:?}"
    );
}

#[test]
fn compressed_linear_layers_take_their_relu_and_textures_from_each_other() {
    // LeNet-5's fc1 -> ReLU -> fc2, both compressed: fc1's product applies the bias and the ReLU
    // and writes fc2's input texture; fc2's input gradient applies the ReLU's backward and
    // writes fc1's output-gradient texture; the pooling before fc1 (its flatten fused) writes
    // fc1's input texture, and runs in conv2's compressed forward product (conv2's output is
    // never stored). Left: fc2's output gradient into a texture.
    let ctx = ctx();
    let spec = ModelSpec::builtin("lenet5", &[]).expect("lenet5");
    let host = model(spec, 4);
    let opts = ModelOptions {
        compressed_conv: true,
        compressed_linear: true,
        ..ModelOptions::plain(ctx).expect("options")
    };
    let gpu = GpuModel::with_products(ctx, &host, 4, SEED, opts, &[]).expect("GPU model");
    let names: Vec<&str> = gpu.step_ops().iter().map(|d| d.name.as_str()).collect();
    let count = |name: &str| names.iter().filter(|n| **n == name).count();
    assert_eq!(count("image.wgsl:relu"), 0, "{names:?}");
    assert_eq!(count("image.wgsl:relu_bwd_to"), 0, "{names:?}");
    assert_eq!(count("sparse_act.wgsl:pack"), 1, "{names:?}");
    assert_eq!(count("sparse_act.wgsl:relu_bwd_pack"), 0, "{names:?}");
    assert_eq!(count("image.wgsl:max_pool_fwd_tex"), 0, "{names:?}");
    assert_eq!(count("sconv.wgsl:spconv_pool (+2 before)"), 1, "{names:?}");
    // conv2's weight gradient still finds its input's planes and metadata in place.
    assert_eq!(count("sconv_sddmm.wgsl:sddmm"), 1, "{names:?}");
    assert_eq!(count("image.wgsl:flatten"), 0, "{names:?}");
    // conv2's forward on the dense products: the pooling runs after it, into the texture.
    let mut paths = vec![DenseProducts::all(false); 4];
    paths[1].forward = true;
    let gpu = GpuModel::with_products(ctx, &host, 4, SEED, opts, &paths).expect("GPU model");
    let names: Vec<&str> = gpu.step_ops().iter().map(|d| d.name.as_str()).collect();
    let count = |name: &str| names.iter().filter(|n| n.starts_with(name)).count();
    assert_eq!(count("image.wgsl:max_pool_fwd_tex"), 1, "{names:?}");
    assert_eq!(count("sconv.wgsl:spconv_pool"), 0, "{names:?}");
    // fc2 on the dense products: fc1 masks fc2's gradient itself, in its texture copy.
    let mut paths = vec![DenseProducts::all(false); 4];
    paths[3] = DenseProducts::all(true);
    let gpu = GpuModel::with_products(ctx, &host, 4, SEED, opts, &paths).expect("GPU model");
    let names: Vec<&str> = gpu.step_ops().iter().map(|d| d.name.as_str()).collect();
    let count = |name: &str| names.iter().filter(|n| **n == name).count();
    assert_eq!(count("image.wgsl:relu"), 0, "{names:?}");
    assert_eq!(count("sparse_act.wgsl:relu_bwd_pack"), 1, "{names:?}");
}

//! The GPU MLP's training step against its CPU twin (cpu::mlp), including masks.

mod common;

use common::{assert_close, ctx, data, mask};
use rigl::cpu::mlp::HostMlp;
use rigl::gpu::ops::{self, SgdConfig};
use rigl::gpu::GemmVariant;
use rigl::nn::{Mlp, MlpConfig};

fn host(sizes: &[usize], density: f32) -> HostMlp {
    let n = sizes.len() - 1;
    let mut h = HostMlp {
        sizes: sizes.to_vec(),
        w: vec![],
        mask: vec![],
        b: vec![],
        mw: vec![],
        mb: vec![],
    };
    for l in 0..n {
        let len = sizes[l] * sizes[l + 1];
        let m = mask(len, density, 50 + l as u32);
        let w: Vec<f32> = data(len, 60 + l as u32)
            .iter()
            .zip(&m)
            .map(|(v, k)| v * 0.3 * k)
            .collect();
        h.w.push(w);
        h.mask.push(m);
        h.b.push(
            data(sizes[l + 1], 70 + l as u32)
                .iter()
                .map(|v| v * 0.1)
                .collect(),
        );
        h.mw.push(vec![0.0; len]);
        h.mb.push(vec![0.0; sizes[l + 1]]);
    }
    h
}

#[test]
#[allow(clippy::needless_range_loop)]
fn training_steps_match_cpu_twin() {
    let ctx = ctx();
    let sgd = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: true,
    };
    for (sizes, batch, density, variant) in [
        (vec![13, 7, 5], 3, 0.5, GemmVariant::RowBlock),
        (vec![784, 300, 100, 10], 20, 0.1, GemmVariant::Subgroup),
        (vec![20, 36, 4], 8, 1.0, GemmVariant::Vec4),
        (vec![1, 1], 1, 1.0, GemmVariant::Tiled),
    ] {
        let mut h = host(&sizes, density);
        let model = Mlp::new(
            ctx,
            MlpConfig {
                sizes: sizes.clone(),
                batch,
                masked: true,
                label_smoothing: 0.1,
                sgd,
                gemm: variant,
            },
        )
        .unwrap();
        model.load(ctx, &h.w, &h.mask, &h.b).unwrap();
        let classes = *sizes.last().unwrap();
        for step in 0..3u32 {
            let x: Vec<f32> = data(sizes[0] * batch, 80 + step)
                .iter()
                .map(|v| v.abs())
                .collect();
            let labels: Vec<u32> = (0..batch)
                .map(|b| (b as u32 + step) % classes as u32)
                .collect();
            model.set_batch(ctx, &x, &labels).unwrap();
            model.reset_sums(ctx).unwrap();
            let mut all = model.forward_ops();
            all.extend(model.backward_ops());
            all.extend(model.sgd_ops());
            ops::run(ctx, "step", &all).unwrap();
            let r = h.grads(&x, &labels, batch, 0.1);
            let (loss, correct) = model.read_sums(ctx).unwrap();
            let what = format!("{sizes:?} step {step}");
            assert!(
                (loss as f32 - r.loss_sum).abs() <= 1e-4 * r.loss_sum.abs().max(1.0),
                "{what}: loss {loss} vs {}",
                r.loss_sum
            );
            assert_eq!(correct as f32, r.correct, "{what}: correct");
            let gw = model.read_layers(ctx, &model.grad).unwrap();
            for (l, (g, want)) in gw.iter().zip(&r.gw).enumerate() {
                assert_close(&format!("{what} grad {l}"), g, want, 1e-5, 1e-3);
            }
            h.apply_sgd(&r, sgd);
            let w = model.read_layers(ctx, &model.w).unwrap();
            let b = model.read_biases(ctx).unwrap();
            for l in 0..w.len() {
                assert_close(&format!("{what} w {l}"), &w[l], &h.w[l], 1e-5, 1e-3);
                assert_close(&format!("{what} b {l}"), &b[l], &h.b[l], 1e-5, 1e-3);
                for (i, m) in h.mask[l].iter().enumerate() {
                    if *m == 0.0 {
                        assert_eq!(w[l][i], 0.0, "{what}: masked weight {i} stays zero");
                    }
                }
            }
        }
    }
}

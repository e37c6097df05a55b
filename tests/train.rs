//! Short end-to-end training runs on the synthetic task: every method learns, sparsity stays
//! exact, and the FLOPs accounting matches SPEC §6 computed by hand.

mod common;

use common::ctx;
use rigl::data::Dataset;
use rigl::sparse::Method;
use rigl::train::{self, NoProgress, TrainConfig};

fn small_data() -> rigl::data::TrainTest {
    // 500 test samples: the last evaluation batch of 64 is partial (padded).
    Dataset::synthetic(2048, 500, 64, 10, 3).unwrap()
}

fn cfg(method: Method) -> TrainConfig {
    TrainConfig {
        dataset: "synthetic".into(),
        hidden: vec![48, 32],
        method,
        sparsity: 0.8,
        batch: 64,
        epochs: 3,
        lr: 0.1,
        delta_t: 8,
        log_every: 16,
        ..TrainConfig::default()
    }
}

#[test]
fn every_method_learns_with_exact_sparsity() {
    let ctx = ctx();
    let data = small_data();
    for method in [
        Method::Dense,
        Method::Static,
        Method::Set,
        Method::Snfs,
        Method::Rigl,
        Method::Prune,
    ] {
        let c = cfg(method);
        let dir = tempfile::tempdir().unwrap();
        let s = train::train(
            ctx,
            &c,
            &data.train,
            &data.test,
            Some(dir.path()),
            &mut NoProgress,
        )
        .unwrap();
        let what = method.as_str();
        assert!(
            s.test_accuracy > 0.6,
            "{what}: accuracy {} (chance 0.1)",
            s.test_accuracy
        );
        assert!(
            s.final_train_loss < 2.0,
            "{what}: loss {}",
            s.final_train_loss
        );
        let plan = train::plan_layers(&c, &[64, 48, 32, 10]).unwrap();
        for (l, p) in s.layers.iter().zip(&plan) {
            let want = if method == Method::Dense {
                p.total
            } else {
                p.active
            };
            assert_eq!(l.active, want, "{what}: {} active count", l.name);
        }
        // The run directory holds what the issue promises.
        for f in [
            "config.toml",
            "metrics.jsonl",
            "summary.json",
            "model.safetensors",
        ] {
            assert!(dir.path().join(f).exists(), "{what}: {f}");
        }
        let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let train_losses: Vec<f64> = lines
            .iter()
            .filter(|l| l["kind"] == "train")
            .map(|l| l["loss"].as_f64().unwrap())
            .collect();
        assert!(
            train_losses.last().unwrap() < &(train_losses[0] * 0.8),
            "{what}: loss falls: {train_losses:?}"
        );
        assert_eq!(lines.iter().filter(|l| l["kind"] == "eval").count(), 3);
    }
}

#[test]
fn flops_and_update_counts_match_spec() {
    let ctx = ctx();
    let data = small_data();
    // 2048 / 64 = 32 steps per epoch, 3 epochs = 96 steps; ΔT = 8, t_end = 72:
    // updates at 0, 8, ..., 72 = 10 steps.
    let c = cfg(Method::Rigl);
    let s = train::train(ctx, &c, &data.train, &data.test, None, &mut NoProgress).unwrap();
    assert_eq!(s.steps, 96);
    assert_eq!(s.mask_updates, 10);
    let fs: f64 = s.layers.iter().map(|l| 2.0 * l.active as f64).sum();
    let fd: f64 = s.layers.iter().map(|l| 2.0 * l.total as f64).sum();
    let want = (86.0 * 3.0 * fs + 10.0 * (2.0 * fs + fd)) / (96.0 * 3.0 * fd);
    assert!(
        (s.train_flops_vs_dense - want).abs() < 1e-12,
        "{} vs {want}",
        s.train_flops_vs_dense
    );
    assert!((s.inference_flops_vs_dense - fs / fd).abs() < 1e-12);
    assert!(
        s.itop_rate > s.density,
        "RigL explores: ITOP {} > density {}",
        s.itop_rate,
        s.density
    );

    // Static: no updates, 3 f_S every step; ITOP equals the density.
    let s = train::train(
        ctx,
        &cfg(Method::Static),
        &data.train,
        &data.test,
        None,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(s.mask_updates, 0);
    let fs: f64 = s.layers.iter().map(|l| 2.0 * l.active as f64).sum();
    assert!((s.train_flops_vs_dense - fs / fd).abs() < 1e-12);
    assert!((s.itop_rate - s.density).abs() < 1e-12);

    // SNFS: 2 f_S + f_D every step.
    let s = train::train(
        ctx,
        &cfg(Method::Snfs),
        &data.train,
        &data.test,
        None,
        &mut NoProgress,
    )
    .unwrap();
    let fs: f64 = s.layers.iter().map(|l| 2.0 * l.active as f64).sum();
    assert!((s.train_flops_vs_dense - (2.0 * fs + fd) / (3.0 * fd)).abs() < 1e-12);
}

#[test]
fn same_seed_same_result() {
    let ctx = ctx();
    let data = small_data();
    let mut c = cfg(Method::Set);
    c.epochs = 1;
    let a = train::train(ctx, &c, &data.train, &data.test, None, &mut NoProgress).unwrap();
    let b = train::train(ctx, &c, &data.train, &data.test, None, &mut NoProgress).unwrap();
    assert_eq!(a.test_accuracy, b.test_accuracy);
    assert_eq!(a.final_train_loss, b.final_train_loss);
    assert_eq!(a.itop_rate, b.itop_rate);
}

#[test]
fn sparse_and_masked_kernels_train_the_same_model() {
    use rigl::nn::choice::KernelChoice;
    let ctx = ctx();
    let data = small_data();
    for method in [Method::Rigl, Method::Set, Method::Static] {
        let mut runs = Vec::new();
        for kernels in [KernelChoice::Masked, KernelChoice::Sparse] {
            let c = TrainConfig {
                epochs: 1,
                kernels,
                ..cfg(method)
            };
            let dir = tempfile::tempdir().unwrap();
            let s = train::train(
                ctx,
                &c,
                &data.train,
                &data.test,
                Some(dir.path()),
                &mut NoProgress,
            )
            .unwrap();
            assert_eq!(s.kernels.kernels, kernels.as_str());
            let file = train::model_file::read(&dir.path().join("model.safetensors")).unwrap();
            runs.push((s, file));
        }
        let what = method.as_str();
        let ((sm, fm), (ss, fs)) = (&runs[0], &runs[1]);
        assert!(sm.mask_updates > 0 || method == Method::Static);
        for l in 0..fm.masks.len() {
            let diff: Vec<usize> = (0..fm.masks[l].len())
                .filter(|&i| fm.masks[l][i] != fs.masks[l][i])
                .collect();
            assert!(
                diff.is_empty(),
                "{what}: layer {l}: masks differ at {} positions, first {:?}; weights there \
                 masked {:?} sparse {:?}",
                diff.len(),
                &diff[..diff.len().min(4)],
                diff.iter()
                    .take(4)
                    .map(|&i| fm.weights[l][i])
                    .collect::<Vec<_>>(),
                diff.iter()
                    .take(4)
                    .map(|&i| fs.weights[l][i])
                    .collect::<Vec<_>>()
            );
        }
        for l in 0..fm.weights.len() {
            common::assert_close(
                &format!("{what}: layer {l} weights"),
                &fs.weights[l],
                &fm.weights[l],
                1e-4,
                1e-3,
            );
        }
        assert!(
            (ss.test_accuracy - sm.test_accuracy).abs() < 0.01,
            "{what}: accuracy {} sparse vs {} masked",
            ss.test_accuracy,
            sm.test_accuracy
        );
        assert_eq!(ss.itop_rate, sm.itop_rate, "{what}: ITOP rate");
        // Memory of the compressed model against the masked one at 80% sparsity.
        assert!(
            ss.gpu_memory.ratio_vs_dense < 0.5 && sm.gpu_memory.ratio_vs_dense > 1.0,
            "{what}: memory ratios {} sparse, {} masked",
            ss.gpu_memory.ratio_vs_dense,
            sm.gpu_memory.ratio_vs_dense
        );
    }
}

#[test]
fn kernel_choice_errors_and_fallbacks_name_the_reason() {
    use rigl::nn::choice::KernelChoice;
    let ctx = ctx();
    let data = small_data();
    let c = TrainConfig {
        epochs: 1,
        kernels: KernelChoice::Sparse,
        ..cfg(Method::Snfs)
    };
    let err = train::train(ctx, &c, &data.train, &data.test, None, &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--kernels sparse") && err.contains("SNFS"),
        "{err}"
    );
    let c = TrainConfig {
        epochs: 1,
        batch: 62,
        kernels: KernelChoice::Auto,
        ..cfg(Method::Rigl)
    };
    let s = train::train(ctx, &c, &data.train, &data.test, None, &mut NoProgress).unwrap();
    assert_eq!(s.kernels.kernels, "masked");
    assert!(
        s.kernels.reason.contains("multiple of 4"),
        "{}",
        s.kernels.reason
    );
}

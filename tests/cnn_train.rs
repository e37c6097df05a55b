//! Models of layers through the trainer (`train_with`): LeNet-5 with RigL at 90% keeps exact
//! per-layer active counts and learns, its first step equals the CPU twin's, a residual model
//! file with batch norm and dropout resumes bit for bit mid-epoch, and `rigl eval` of a CNN run
//! gives the run's final test accuracy; the same model file with its convolutions compressed
//! (`--kernels sparse`) keeps the masked path's masks through RigL and SET updates, its weights to
//! float tolerance, and resumes bit for bit.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_close, ctx};
use rigl::cpu::dense::sgd;
use rigl::cpu::model::{HostModel, Mode};
use rigl::data::{Batcher, Dataset};
use rigl::nn::model::features_to_images;
use rigl::nn::spec::ModelSpec;
use rigl::sparse::init::count_active;
use rigl::sparse::Method;
use rigl::train::checkpoint::{self, RunOptions};
use rigl::train::{self, model_file, NoProgress, RunEnd, TrainConfig};

fn lenet_cfg(method: Method) -> TrainConfig {
    TrainConfig {
        dataset: "synthetic".into(),
        model: Some("lenet5".into()),
        method,
        sparsity: 0.9,
        batch: 8,
        epochs: 2,
        lr: 0.05,
        delta_t: 4,
        log_every: 4,
        kernels: rigl::nn::choice::KernelChoice::Masked,
        ..TrainConfig::default()
    }
}

fn train_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("samples_per_sec");
            v
        })
        .collect()
}

#[test]
fn lenet5_rigl_keeps_exact_counts_and_learns() {
    let ctx = ctx();
    // 16 training samples seen 8 times: the loss must fall.
    let data = Dataset::synthetic(16, 16, 784, 10, 3).unwrap();
    let cfg = TrainConfig {
        lr: 0.1,
        lr_schedule: train::LrSchedule::Constant,
        epochs: 8,
        ..lenet_cfg(Method::Rigl)
    };
    let dir = tempfile::tempdir().unwrap();
    let s = train::train(
        ctx,
        &cfg,
        &data.train,
        &data.test,
        Some(dir.path()),
        &mut NoProgress,
    )
    .unwrap();
    let plan = train::plan_layers(&cfg, &[784, 10]).unwrap();
    let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["conv1", "conv2", "fc3", "fc4"]);
    assert_eq!(s.mask_updates, 4, "updates at steps 0, 4, 8 and 12");
    let file = model_file::read(&dir.path().join("model.safetensors")).unwrap();
    for ((p, l), m) in plan.iter().zip(&s.layers).zip(&file.masks) {
        assert_eq!(l.active, p.active, "{}: summary active count", p.name);
        assert_eq!(count_active(m), p.active, "{}: mask active count", p.name);
    }
    // ERK at 90%: conv1 (500 weights) comes out dense, the large layers sparse.
    assert_eq!(plan[0].active, plan[0].total);
    assert!(
        plan[2].active * 5 < plan[2].total,
        "fc3 is sparse: {:?}",
        plan[2]
    );
    assert!((s.density - 0.1).abs() < 1e-3, "density {}", s.density);
    assert_eq!(file.weights[0].len(), 5 * 5 * 20);
    let lines = train_lines(dir.path());
    let train: Vec<f64> = lines
        .iter()
        .filter(|l| l["kind"] == "train")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(train.len(), 8, "{lines:?}");
    // Slowly on this task (a mask update every 4th step spends its batch): the last two
    // windows' mean below the first two's.
    assert!(
        train[6] + train[7] < train[0] + train[1] - 0.04,
        "the training loss falls: {train:?} (chance 2.30)"
    );
    // FLOPs: LeNet-5's convolutions dominate; the dense reference counts each weight at every
    // output position, so a 90% sparse run costs well under half of dense.
    assert!(
        s.train_flops_vs_dense > 0.05 && s.train_flops_vs_dense < 0.5,
        "{}",
        s.train_flops_vs_dense
    );
}

#[test]
fn lenet5_first_step_equals_the_cpu_twin() {
    let ctx = ctx();
    let data = Dataset::synthetic(32, 16, 784, 10, 4).unwrap();
    let cfg = lenet_cfg(Method::Static);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        stop_after_steps: Some(1),
        ..RunOptions::default()
    };
    let end = train::train_with(
        ctx,
        &cfg,
        &data.train,
        &data.test,
        Some(dir.path()),
        &mut NoProgress,
        &opts,
    )
    .unwrap();
    assert!(matches!(end, RunEnd::Stopped { step: 1, .. }), "{end:?}");
    let ck = |step: u64| {
        checkpoint::read(
            &dir.path()
                .join(checkpoint::CHECKPOINT_DIR)
                .join(checkpoint::file_name(step)),
        )
        .unwrap()
    };
    let (before, after) = (ck(0), ck(1));
    let spec = ModelSpec::builtin("lenet5", &[]).unwrap();
    let mut host = HostModel::new(spec, &mut |_, s| vec![0.0; s.iter().product()]).unwrap();
    for (i, hw) in host.weights.iter_mut().enumerate() {
        hw.w = before.model.weights[i].clone();
        hw.mask = before.model.masks[i].clone();
    }
    let n = cfg.batch;
    let mut batcher = Batcher::for_training(data.train.n, n, cfg.seed).unwrap();
    let (mut x, mut labels) = (vec![0.0f32; 784 * n], vec![0u32; n]);
    batcher
        .next_batch(&data.train, &mut x, &mut labels)
        .unwrap();
    let x = features_to_images(&x, 1, 784, n);
    let step = host
        .step(
            &x,
            &labels,
            n,
            Mode::Train {
                seed: cfg.seed as u32,
                step: 0,
            },
            0.0,
        )
        .unwrap();
    let steps_per_epoch = (data.train.n / n) as u64;
    let sgd_cfg = rigl::gpu::ops::SgdConfig {
        lr: cfg.lr_at(0, steps_per_epoch * cfg.epochs as u64, steps_per_epoch),
        ..cfg.sgd()
    };
    for (i, hw) in host.weights.iter_mut().enumerate() {
        let mut mom = vec![0.0; hw.w.len()];
        sgd(
            &step.grads.w[i],
            &mut hw.w,
            &mut mom,
            Some(&hw.mask),
            sgd_cfg,
        );
        let scale = hw.w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(
            &format!("{} after the first step", hw.name),
            &after.model.weights[i],
            &hw.w,
            1e-5 * scale,
            1e-4,
        );
        assert_ne!(
            after.model.weights[i], before.model.weights[i],
            "{}",
            hw.name
        );
        assert_eq!(after.model.masks[i], before.model.masks[i], "static masks");
    }
    let loss = after.model.loss_sums[0] / n as f32;
    assert!((loss - step.loss).abs() < 1e-4, "{loss} vs {}", step.loss);
}

const TINY_RESNET: &str = r#"
name = "tiny-resnet"
input = [1, 8, 8]

[[layer]]
type = "conv2d"
name = "conv0"
out = 4
kernel = 3

[[layer]]
type = "residual"
shortcut_from = "pre"
pre = [{ type = "batch_norm" }, { type = "relu" }]
body = [
  { type = "conv2d", name = "c1", out = 4, kernel = 3 },
  { type = "batch_norm" }, { type = "relu" },
  { type = "dropout", rate = 0.3 },
  { type = "conv2d", name = "c2", out = 4, kernel = 3 },
]

[[layer]]
type = "batch_norm"

[[layer]]
type = "relu"

[[layer]]
type = "global_avg_pool"

[[layer]]
type = "flatten"

[[layer]]
type = "linear"
name = "logits"
out = 10
"#;

#[test]
fn residual_model_file_resumes_bit_for_bit_mid_epoch() {
    let ctx = ctx();
    let data = Dataset::synthetic(48, 16, 64, 10, 5).unwrap();
    for method in [Method::Rigl, Method::Snfs] {
        let cfg = TrainConfig {
            dataset: "synthetic".into(),
            model_toml: Some(TINY_RESNET.into()),
            method,
            sparsity: 0.5,
            batch: 8,
            epochs: 2,
            lr: 0.1,
            delta_t: 2,
            log_every: 2,
            kernels: rigl::nn::choice::KernelChoice::Masked,
            ..TrainConfig::default()
        };
        let run = |dir: &Path, opts: &RunOptions| {
            train::train_with(
                ctx,
                &cfg,
                &data.train,
                &data.test,
                Some(dir),
                &mut NoProgress,
                opts,
            )
            .unwrap()
        };
        let a = tempfile::tempdir().unwrap();
        assert!(matches!(
            run(a.path(), &RunOptions::default()),
            RunEnd::Finished(_)
        ));
        let b = tempfile::tempdir().unwrap();
        let stop = RunOptions {
            stop_after_steps: Some(5),
            ..RunOptions::default()
        };
        assert!(matches!(
            run(b.path(), &stop),
            RunEnd::Stopped { step: 5, .. }
        ));
        let ck = checkpoint::find(b.path()).unwrap().checkpoint;
        assert_eq!(ck.trainer.step, 5);
        assert_eq!(ck.model.norms.len(), 3, "three batch norms saved");
        assert!(ck.model.norms[0].mean.iter().any(|&m| m != 0.0));
        let resume = RunOptions {
            resume: Some(ck),
            ..RunOptions::default()
        };
        assert!(matches!(run(b.path(), &resume), RunEnd::Finished(_)));
        let what = method.as_str();
        let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert!(
            bytes(a.path()) == bytes(b.path()),
            "{what}: model.safetensors differs after the resume"
        );
        assert_eq!(train_lines(a.path()), train_lines(b.path()), "{what}");
        let file = model_file::read(&a.path().join("model.safetensors")).unwrap();
        assert_eq!(file.norms.len(), 3);
        assert_eq!(file.weights.len(), 3 + 1);
    }
}

fn idx(path: &Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

fn write_images(dir: &Path, name: &str, n: u32) {
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let pixels: Vec<u8> = (0..n * 784)
        .map(|i| {
            let (s, p) = (i / 784, i % 784);
            if (p / 28) % 10 == s % 10 {
                200
            } else {
                (p * 7 % 31) as u8
            }
        })
        .collect();
    idx(
        &dir.join(format!("{name}-images")),
        0x803,
        &[n, 28, 28],
        &pixels,
    );
    idx(&dir.join(format!("{name}-labels")), 0x801, &[n], &labels);
}

fn rigl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rigl"));
    c.env("NODEVICE_SELECT", "1");
    c
}

fn data_flags(c: &mut Command, dir: &Path) {
    for (flag, file) in [
        ("--train-images", "train-images"),
        ("--train-labels", "train-labels"),
        ("--test-images", "test-images"),
        ("--test-labels", "test-labels"),
    ] {
        c.arg(flag).arg(dir.join(file));
    }
}

#[test]
fn cli_trains_and_evaluates_lenet5() {
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path(), "train", 16);
    write_images(dir.path(), "test", 16);
    let run = dir.path().join("run");
    let mut c = rigl();
    c.args([
        "train", "--model", "lenet5", "--batch", "8", "--epochs", "1",
    ])
    .args(["--delta-t", "1", "--json", "--out"])
    .arg(&run);
    data_flags(&mut c, dir.path());
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // `auto` timed every weight tensor's products both ways and kept the faster per tensor.
    let reason = s["kernels"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("auto: the weight tensors' products take"),
        "{reason}"
    );
    assert_eq!(s["kernels"]["layers"].as_array().map(Vec::len), Some(4));
    assert_eq!(s["layers"][0]["shape"], serde_json::json!([5, 5, 1, 20]));
    let out = rigl()
        .args(["eval", "--batch", "8", "--json", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["test_accuracy"], s["test_accuracy"], "{e} vs {s}");
    let (a, b) = (
        e["test_loss"].as_f64().unwrap(),
        s["test_loss"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");

    // A model whose input does not match the data, and sparse kernels for a CNN: bad input.
    let mut c = rigl();
    c.args(["train", "--model", "resnet-50", "--batch", "8", "--out"])
        .arg(dir.path().join("r50"));
    data_flags(&mut c, dir.path());
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("150528") && err.contains("784"), "{err}");
    // Compressed convolutions run static, SET and RigL only.
    let mut c = rigl();
    c.args([
        "train",
        "--model",
        "lenet5",
        "--kernels",
        "sparse",
        "--method",
        "snfs",
        "--out",
    ])
    .arg(dir.path().join("sp"));
    data_flags(&mut c, dir.path());
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--kernels sparse") && err.contains("SNFS"),
        "{err}"
    );
}

/// LeNet-5's shape in small: a first convolution fused with its ReLU and pooling, then a
/// compressed convolution whose 2x2 pooling writes its output-gradient planes.
const TINY_LENET: &str = r#"
name = "tiny-lenet"
input = [1, 12, 12]

[[layer]]
type = "conv2d"
name = "conv1"
out = 4
kernel = 5
padding = "valid"
bias = true

[[layer]]
type = "relu"

[[layer]]
type = "max_pool"
size = 2

[[layer]]
type = "conv2d"
name = "conv2"
out = 6
kernel = 3
bias = true

[[layer]]
type = "relu"

[[layer]]
type = "max_pool"
size = 2

[[layer]]
type = "flatten"

[[layer]]
type = "linear"
name = "fc"
out = 10
"#;

/// The same with a 3x3 `conv1` of 8 channels on 10x10 images and a wider `conv2`: at 50% ERK
/// keeps every weight of `conv1` (and of `fc`).
fn tiny_lenet_wide() -> String {
    TINY_LENET
        .replace("[1, 12, 12]", "[1, 10, 10]")
        .replace("out = 4\nkernel = 5", "out = 8\nkernel = 3")
        .replace("out = 6\nkernel = 3", "out = 24\nkernel = 3")
}

/// RigL on the compressed kernels of a LeNet-shaped net, where conv2's forward product pools
/// its ReLU itself, its pooling writes conv2's output-gradient planes and the mask update's
/// dense gradient runs the pooling's backward itself; with `conv1` sparse, and with every
/// weight of it active (ERK's choice; still compressed, its kernels then read and write its
/// slots in place): the same masks as the masked path through every update, the weights to
/// tolerance.
#[test]
fn a_pooled_compressed_convolution_updates_its_mask_like_the_masked_path() {
    pooled_net_like_the_masked_path(TINY_LENET, 144, false);
    pooled_net_like_the_masked_path(&tiny_lenet_wide(), 100, true);
}

fn pooled_net_like_the_masked_path(toml: &str, features: usize, conv1_full: bool) {
    let ctx = ctx();
    let data = Dataset::synthetic(48, 16, features, 10, 5).unwrap();
    let cfg = |kernels| TrainConfig {
        dataset: "synthetic".into(),
        model_toml: Some(toml.into()),
        method: Method::Rigl,
        sparsity: 0.5,
        batch: 8,
        epochs: 3,
        lr: 0.1,
        delta_t: 2,
        log_every: 2,
        kernels,
        ..TrainConfig::default()
    };
    let run = |cfg: &TrainConfig, dir: &Path| {
        train::train_with(
            ctx,
            cfg,
            &data.train,
            &data.test,
            Some(dir),
            &mut NoProgress,
            &RunOptions::default(),
        )
        .unwrap()
    };
    let a = tempfile::tempdir().unwrap();
    let m = tempfile::tempdir().unwrap();
    assert!(matches!(
        run(&cfg(rigl::nn::choice::KernelChoice::Sparse), a.path()),
        RunEnd::Finished(_)
    ));
    assert!(matches!(
        run(&cfg(rigl::nn::choice::KernelChoice::Masked), m.path()),
        RunEnd::Finished(_)
    ));
    let fa = model_file::read(&a.path().join("model.safetensors")).unwrap();
    let fm = model_file::read(&m.path().join("model.safetensors")).unwrap();
    // The updates moved connections, the same number on both paths at every log line.
    let logged = |dir: &Path| -> Vec<u64> {
        train_lines(dir)
            .iter()
            .filter_map(|l| l["mask_changes"].as_u64())
            .collect()
    };
    assert!(logged(a.path()).iter().sum::<u64>() > 0, "no mask changed");
    assert_eq!(logged(a.path()), logged(m.path()), "new connections");
    assert_eq!(
        fa.masks[0].iter().all(|&v| v != 0.0),
        conv1_full,
        "conv1's mask"
    );
    for (l, ((ma, mm), (wa, wm))) in fa
        .masks
        .iter()
        .zip(&fm.masks)
        .zip(fa.weights.iter().zip(&fm.weights))
        .enumerate()
    {
        let what = format!("conv1 full {conv1_full}, layer {l}");
        assert_eq!(ma, mm, "{what}: masks differ between the paths");
        let scale = wm.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-3);
        assert_close(&format!("{what} weights"), wa, wm, 1e-4 * scale, 1e-3);
    }
}

#[test]
fn compressed_convolutions_train_like_the_masked_path_and_resume_exactly() {
    let ctx = ctx();
    let data = Dataset::synthetic(48, 16, 64, 10, 5).unwrap();
    for method in [Method::Rigl, Method::Set] {
        let cfg = |kernels| TrainConfig {
            dataset: "synthetic".into(),
            model_toml: Some(TINY_RESNET.into()),
            method,
            sparsity: 0.5,
            batch: 8,
            epochs: 2,
            lr: 0.1,
            delta_t: 2,
            log_every: 2,
            kernels,
            ..TrainConfig::default()
        };
        let run = |cfg: &TrainConfig, dir: &Path, opts: &RunOptions| {
            train::train_with(
                ctx,
                cfg,
                &data.train,
                &data.test,
                Some(dir),
                &mut NoProgress,
                opts,
            )
            .unwrap()
        };
        let what = method.as_str();
        let sparse = cfg(rigl::nn::choice::KernelChoice::Sparse);
        let masked = cfg(rigl::nn::choice::KernelChoice::Masked);
        let a = tempfile::tempdir().unwrap();
        let m = tempfile::tempdir().unwrap();
        assert!(matches!(
            run(&sparse, a.path(), &RunOptions::default()),
            RunEnd::Finished(_)
        ));
        assert!(matches!(
            run(&masked, m.path(), &RunOptions::default()),
            RunEnd::Finished(_)
        ));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(a.path().join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["kernels"]["kernels"], "sparse", "{what}");
        // Batch 8 on an adapter with subgroups: the linear layer is compressed too.
        if rigl::nn::model::linear_support(ctx, 8).is_ok() {
            assert_eq!(
                summary["kernels"]["reason"],
                "--kernels sparse: convolutions and linear layers compressed",
                "{what}"
            );
        }
        // The updates changed the masks, and both paths chose the same connections: the
        // new-connection counts they logged (read from the compressed tensors' statistics and
        // from the masked updater's) agree line by line.
        let logged = |dir: &std::path::Path| -> Vec<u64> {
            train_lines(dir)
                .iter()
                .filter_map(|l| l["mask_changes"].as_u64())
                .collect()
        };
        let changes: u64 = logged(a.path()).iter().sum();
        assert!(changes > 0, "{what}: no mask changed");
        assert_eq!(
            logged(a.path()),
            logged(m.path()),
            "{what}: new connections"
        );
        let fa = model_file::read(&a.path().join("model.safetensors")).unwrap();
        let fm = model_file::read(&m.path().join("model.safetensors")).unwrap();
        for (l, ((ma, mm), (wa, wm))) in fa
            .masks
            .iter()
            .zip(&fm.masks)
            .zip(fa.weights.iter().zip(&fm.weights))
            .enumerate()
        {
            assert_eq!(ma, mm, "{what}: layer {l} masks differ between the paths");
            let scale = wm.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-3);
            assert_close(
                &format!("{what}: layer {l} weights"),
                wa,
                wm,
                1e-4 * scale,
                1e-3,
            );
        }
        // Stopped mid-run and resumed: the same bytes as the uninterrupted run.
        let b = tempfile::tempdir().unwrap();
        let stop = RunOptions {
            stop_after_steps: Some(5),
            ..RunOptions::default()
        };
        assert!(matches!(
            run(&sparse, b.path(), &stop),
            RunEnd::Stopped { step: 5, .. }
        ));
        let ck = checkpoint::find(b.path()).unwrap().checkpoint;
        let resume = RunOptions {
            resume: Some(ck),
            ..RunOptions::default()
        };
        assert!(matches!(
            run(&sparse, b.path(), &resume),
            RunEnd::Finished(_)
        ));
        let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert!(
            bytes(a.path()) == bytes(b.path()),
            "{what}: model.safetensors differs after the resume"
        );
        assert_eq!(train_lines(a.path()), train_lines(b.path()), "{what}");
    }
}

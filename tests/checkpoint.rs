//! Checkpoints and exact resume through the library: a run stopped at any step and resumed ends
//! bit for bit where the run that was never stopped ends (weights, masks, optimizer state, EMA,
//! ever-active map, trainer counters, metrics, summary); damaged checkpoints are refused naming
//! the file; a resume with another model shape or method is refused naming the difference.

mod common;

use std::path::Path;

use common::ctx;
use rigl::data::{Dataset, TrainTest};
use rigl::nn::choice::KernelChoice;
use rigl::sparse::Method;
use rigl::train::checkpoint::{self, Checkpoint, TrainerState};
use rigl::train::{self, model_file, NoProgress, RunEnd, RunOptions, TrainConfig};
use rigl::RiglError;

fn data() -> TrainTest {
    // 1024 / 64 = 16 steps per epoch.
    Dataset::synthetic(1024, 200, 64, 10, 5).unwrap()
}

/// 3 epochs = 48 steps; ΔT = 8 and t_end = 36: mask updates at steps 0, 8, 16, 24, 32. Metrics
/// every 5 steps, so checkpoints fall inside logging windows.
fn cfg(method: Method) -> TrainConfig {
    TrainConfig {
        dataset: "synthetic".into(),
        hidden: vec![24, 16],
        method,
        sparsity: 0.8,
        batch: 64,
        epochs: 3,
        lr: 0.1,
        delta_t: 8,
        log_every: 5,
        ..TrainConfig::default()
    }
}

fn run(c: &TrainConfig, d: &TrainTest, dir: &Path, opts: &RunOptions) -> RunEnd {
    train::train_with(
        ctx(),
        c,
        &d.train,
        &d.test,
        Some(dir),
        &mut NoProgress,
        opts,
    )
    .unwrap()
}

fn last_checkpoint(dir: &Path) -> Checkpoint {
    let found = checkpoint::find(dir).unwrap();
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    found.checkpoint
}

/// The trainer state without its timing-only fields (the length of metrics.jsonl depends on the
/// digits of its samples/s values).
fn untimed(t: &TrainerState) -> TrainerState {
    TrainerState {
        train_seconds: 0.0,
        wall_seconds: 0.0,
        metrics_bytes: 0,
        ..t.clone()
    }
}

fn bits(layers: &[Vec<f32>]) -> Vec<Vec<u32>> {
    layers
        .iter()
        .map(|l| l.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// metrics.jsonl without the timing field `samples_per_sec`.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
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

/// summary.json without its timing fields, run directory and `gpu_memory.held_bytes` (what the
/// whole context holds: here every test of this binary shares one).
fn summary(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    for k in ["samples_per_sec", "seconds", "run_dir"] {
        v.as_object_mut().unwrap().remove(k);
    }
    let held = v["gpu_memory"]
        .as_object_mut()
        .unwrap()
        .remove("held_bytes");
    assert!(held.and_then(|h| h.as_u64()).is_some_and(|h| h > 0));
    v
}

fn assert_same_run(what: &str, a: &Path, b: &Path) {
    let (ca, cb) = (last_checkpoint(a), last_checkpoint(b));
    assert_eq!(ca.trainer.step, 48, "{what}");
    assert_eq!(cb.trainer.step, 48, "{what}");
    for ((name, la), (_, lb)) in ca.model.tensors().iter().zip(cb.model.tensors().iter()) {
        assert_eq!(bits(la), bits(lb), "{what}: {name} differs");
    }
    assert_eq!(
        ca.model.loss_sums.map(f32::to_bits),
        cb.model.loss_sums.map(f32::to_bits),
        "{what}: loss sums"
    );
    assert_eq!(
        untimed(&ca.trainer),
        untimed(&cb.trainer),
        "{what}: trainer"
    );
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), 3 * 4 + 3, "{what}: metrics lines");
    assert_eq!(ma, mb, "{what}: metrics.jsonl");
    assert_eq!(summary(a), summary(b), "{what}: summary.json");
    let (fa, fb) = (
        model_file::read(&a.join("model.safetensors")).unwrap(),
        model_file::read(&b.join("model.safetensors")).unwrap(),
    );
    assert_eq!(
        bits(&fa.weights),
        bits(&fb.weights),
        "{what}: model weights"
    );
    assert_eq!(fa.masks, fb.masks, "{what}: model masks");
    assert_eq!(bits(&fa.biases), bits(&fb.biases), "{what}: model biases");
}

/// Stops at each of `stops` (steps done) and resumes to the end; every resumed run must equal the
/// uninterrupted one. The last case stops twice.
fn stop_and_resume(method: Method) {
    let d = data();
    let c = cfg(method);
    let root = tempfile::tempdir().unwrap();
    let full = root.path().join("full");
    assert!(matches!(
        run(&c, &d, &full, &RunOptions::default()),
        RunEnd::Finished(_)
    ));
    let full_ck = last_checkpoint(&full);
    if method != Method::Snfs {
        // (Only SNFS keeps an EMA: make sure the comparison of the others is not vacuous.)
        assert!(full_ck.model.ema.iter().flatten().all(|&v| v == 0.0));
    } else {
        assert!(full_ck.model.ema.iter().flatten().any(|&v| v != 0.0));
    }
    assert_eq!(full_ck.trainer.mask_updates, 5);
    assert!(full_ck.model.momentum.iter().flatten().any(|&v| v != 0.0));
    // 7: just before the update at step 8; 9: just after it; 13: inside the epoch and inside a
    // metrics window; 16: the end of the first epoch (and just before the update at 16);
    // [9, 30]: stopped twice.
    for stops in [vec![7], vec![9], vec![13], vec![16], vec![9, 30]] {
        let what = format!("{} stopped at {stops:?}", method.as_str());
        let dir = root.path().join(format!("stop{stops:?}"));
        let mut resume = None;
        for &s in &stops {
            let opts = RunOptions {
                stop_after_steps: Some(s),
                resume: resume.take(),
                ..RunOptions::default()
            };
            match run(&c, &d, &dir, &opts) {
                RunEnd::Stopped { step, checkpoint } => {
                    assert_eq!(step, s, "{what}");
                    let p = checkpoint.unwrap();
                    assert_eq!(p, dir.join("checkpoints").join(checkpoint::file_name(s)));
                }
                RunEnd::Finished(_) => panic!("{what}: did not stop"),
            }
            let ck = last_checkpoint(&dir);
            assert_eq!(ck.trainer.step, s, "{what}");
            assert_eq!(
                (ck.trainer.cursor_epoch, ck.trainer.cursor_batch),
                (s / 16, (s % 16) as usize),
                "{what}: data cursor"
            );
            resume = Some(ck);
        }
        let opts = RunOptions {
            resume,
            ..RunOptions::default()
        };
        assert!(matches!(run(&c, &d, &dir, &opts), RunEnd::Finished(_)));
        assert_same_run(&what, &full, &dir);
    }
}

#[test]
fn resume_is_bit_identical_rigl() {
    stop_and_resume(Method::Rigl);
}

#[test]
fn resume_is_bit_identical_set() {
    stop_and_resume(Method::Set);
}

#[test]
fn resume_is_bit_identical_snfs() {
    stop_and_resume(Method::Snfs);
}

#[test]
fn resume_is_bit_identical_on_compressed_sparse_layers() {
    // The sparse path keeps values and momentum per slot and rebuilds its index at every update;
    // a resume rebuilds it from the mask and must continue bit for bit.
    let d = data();
    for method in [Method::Rigl, Method::Set] {
        let c = TrainConfig {
            kernels: KernelChoice::Sparse,
            ..cfg(method)
        };
        let root = tempfile::tempdir().unwrap();
        let (full, dir) = (root.path().join("full"), root.path().join("stopped"));
        run(&c, &d, &full, &RunOptions::default());
        assert_eq!(last_checkpoint(&full).trainer.kernels, "sparse");
        for stop in [9, 13] {
            let opts = RunOptions {
                stop_after_steps: Some(stop),
                resume: (stop == 13).then(|| last_checkpoint(&dir)),
                ..RunOptions::default()
            };
            assert!(matches!(run(&c, &d, &dir, &opts), RunEnd::Stopped { .. }));
        }
        let opts = RunOptions {
            resume: Some(last_checkpoint(&dir)),
            ..RunOptions::default()
        };
        run(&c, &d, &dir, &opts);
        assert_same_run(&format!("sparse {}", method.as_str()), &full, &dir);
    }
}

#[test]
fn resume_is_bit_identical_dense_static_prune() {
    let d = data();
    for method in [Method::Dense, Method::Static, Method::Prune] {
        let c = TrainConfig {
            prune_every: 4,
            ..cfg(method)
        };
        let root = tempfile::tempdir().unwrap();
        let (full, dir) = (root.path().join("full"), root.path().join("stopped"));
        run(&c, &d, &full, &RunOptions::default());
        let opts = RunOptions {
            stop_after_steps: Some(13),
            ..RunOptions::default()
        };
        assert!(matches!(run(&c, &d, &dir, &opts), RunEnd::Stopped { .. }));
        let opts = RunOptions {
            resume: Some(last_checkpoint(&dir)),
            ..RunOptions::default()
        };
        run(&c, &d, &dir, &opts);
        let what = format!("{} stopped at 13", method.as_str());
        if method == Method::Prune {
            let s = summary(&full);
            assert!(s["mask_updates"].as_u64().unwrap() > 3, "{what}: {s}");
        }
        assert_same_run(&what, &full, &dir);
    }
}

#[test]
fn checkpoint_every_and_keep_last_k() {
    let d = data();
    let c = cfg(Method::Rigl);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        checkpoint_every: Some(5),
        keep_checkpoints: 4,
        ..RunOptions::default()
    };
    run(&c, &d, dir.path(), &opts);
    // Written at 0, 5, 10, 15, 16, 20, ..., 45, 48; the last 4 kept.
    let steps: Vec<u64> = checkpoint::list(&dir.path().join("checkpoints"))
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![35, 40, 45, 48]);
    let ck = last_checkpoint(dir.path());
    assert_eq!(ck.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(ck.config, c);
    assert_eq!(ck.sizes, vec![64, 24, 16, 10]);
}

#[test]
fn damaged_checkpoints_are_refused_and_resume_falls_back() {
    let d = data();
    let c = cfg(Method::Rigl);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        stop_after_steps: Some(6),
        checkpoint_every: Some(3),
        ..RunOptions::default()
    };
    run(&c, &d, dir.path(), &opts);
    let ckdir = dir.path().join("checkpoints");
    let newest = ckdir.join(checkpoint::file_name(6));
    let good = std::fs::read(&newest).unwrap();
    assert!(checkpoint::read(&newest).is_ok());

    // Cut at every eighth of its length (0 bytes included): refused, naming the file.
    for k in 0..8 {
        let cut = good.len() * k / 8;
        std::fs::write(&newest, &good[..cut]).unwrap();
        match checkpoint::read(&newest) {
            Err(RiglError::BadFile { path, message }) => {
                assert_eq!(path, newest.display().to_string(), "cut at {k}/8");
                assert!(
                    message.contains("truncated or corrupt"),
                    "cut at {k}/8: {message}"
                );
            }
            other => panic!("cut at {k}/8 ({cut} bytes): {other:?}"),
        }
        // --resume RUN_DIR falls back to the newest good one and says which it skipped.
        let found = checkpoint::find(dir.path()).unwrap();
        assert_eq!(found.checkpoint.trainer.step, 3, "cut at {k}/8");
        assert_eq!(found.skipped.len(), 1);
        assert!(found.skipped[0]
            .to_string()
            .contains(&newest.display().to_string()));
    }
    // One flipped bit in the tensor data (the last byte) or in the header: the checksum or the
    // parser catches it.
    for at in [good.len() - 1, good.len() / 2, 20] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&newest, &bad).unwrap();
        let err = checkpoint::read(&newest).unwrap_err().to_string();
        assert!(err.contains(&newest.display().to_string()), "{err}");
        assert!(
            err.contains("checksum") || err.contains("truncated or corrupt"),
            "byte {at}: {err}"
        );
    }
    // A file given explicitly is not silently replaced by another.
    assert!(checkpoint::find(&newest).is_err());
    // Nothing readable at all: an error naming the directory and every failure.
    for (_, p) in checkpoint::list(&ckdir).unwrap() {
        std::fs::write(&p, b"rubbish").unwrap();
    }
    let err = checkpoint::find(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("no readable checkpoint") && err.contains("ckpt-000000003"),
        "{err}"
    );
}

#[test]
fn resume_with_another_shape_or_method_is_refused() {
    let d = data();
    let c = cfg(Method::Rigl);
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        stop_after_steps: Some(4),
        ..RunOptions::default()
    };
    run(&c, &d, dir.path(), &opts);
    let ck = last_checkpoint(dir.path());
    let ck_bytes = std::fs::read(&ck.path).unwrap();
    let attempt = |c2: TrainConfig| {
        let opts = RunOptions {
            resume: Some(ck.clone()),
            ..RunOptions::default()
        };
        train::train_with(
            ctx(),
            &c2,
            &d.train,
            &d.test,
            Some(dir.path()),
            &mut NoProgress,
            &opts,
        )
        .unwrap_err()
        .to_string()
    };
    let err = attempt(TrainConfig {
        hidden: vec![24],
        ..c.clone()
    });
    assert!(
        err.contains("model shape") && err.contains("[64, 24, 16, 10]") && err.contains("hidden"),
        "{err}"
    );
    let err = attempt(TrainConfig {
        method: Method::Set,
        ..c.clone()
    });
    assert!(
        err.contains("method") && err.contains("\"rigl\"") && err.contains("\"set\""),
        "{err}"
    );
    let err = attempt(TrainConfig {
        sparsity: 0.5,
        ..c.clone()
    });
    assert!(err.contains("sparsity"), "{err}");
    // The refused attempts changed nothing: the same checkpoint still resumes.
    let again = last_checkpoint(dir.path());
    assert_eq!(again.path, ck.path);
    assert!(std::fs::read(&again.path).unwrap() == ck_bytes);
    // Settings that do not change the model are allowed, and reported.
    let soft = checkpoint::compare(
        &ck,
        &TrainConfig {
            lr: 0.05,
            ..c.clone()
        },
        &ck.sizes,
        16,
    )
    .unwrap();
    assert_eq!(soft.len(), 1, "{soft:?}");
    assert!(soft[0].starts_with("lr:"), "{soft:?}");
}

#[test]
fn skip_policy_changes_nothing_while_the_loss_is_finite() {
    // --on-nan skip splits each step in two submissions and reads the loss in between; without a
    // non-finite loss the run must equal the default one bit for bit, resumed or not.
    let d = data();
    let c = cfg(Method::Snfs);
    let root = tempfile::tempdir().unwrap();
    let plain = root.path().join("plain");
    run(&c, &d, &plain, &RunOptions::default());
    let skip = root.path().join("skip");
    let opts = RunOptions {
        on_nan: train::NanPolicy::Skip,
        stop_after_steps: Some(11),
        ..RunOptions::default()
    };
    assert!(matches!(run(&c, &d, &skip, &opts), RunEnd::Stopped { .. }));
    let ck = last_checkpoint(&skip);
    assert!(ck.trainer.on_nan_skip);
    let opts = RunOptions {
        on_nan: train::NanPolicy::Skip,
        resume: Some(ck),
        ..RunOptions::default()
    };
    assert!(matches!(run(&c, &d, &skip, &opts), RunEnd::Finished(_)));
    let (a, b) = (last_checkpoint(&plain), last_checkpoint(&skip));
    assert_eq!(b.trainer.nan_skips, 0);
    for ((name, la), (_, lb)) in a.model.tensors().iter().zip(b.model.tensors().iter()) {
        assert_eq!(bits(la), bits(lb), "{name} differs");
    }
    assert_eq!(metrics(&plain), metrics(&skip));
}

#[test]
fn gpu_errors_come_back_naming_what_was_done() {
    // A buffer beyond the device's limit is a validation error: inside `scoped` it is an error
    // naming the work, not a panic in wgpu's uncaptured-error handler.
    let ctx = ctx();
    let err = ctx
        .scoped("allocating an impossible buffer", || {
            let _b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("too big"),
                size: ctx.limits.max_buffer_size.saturating_add(4096) & !3,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            Ok(())
        })
        .unwrap_err();
    match err {
        RiglError::Gpu { what, message } => {
            assert_eq!(what, "allocating an impossible buffer");
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // The device is still usable afterwards.
    assert!(ctx.scoped("nothing", || Ok(1)).is_ok());
}

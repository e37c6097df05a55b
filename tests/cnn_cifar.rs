//! `rigl train --model wrn-22-2 --dataset cifar10` end to end on CIFAR-format files written here,
//! with the official augmentation (on by default for cifar10): a run stopped mid-epoch and
//! resumed ends in the same bytes as one never stopped, and `rigl eval` of it gives the run's
//! final test accuracy.

use std::path::Path;
use std::process::Command;

use rigl::data::write_cifar10_dir;

fn rigl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rigl"));
    c.env("NODEVICE_SELECT", "1");
    c
}

/// The training lines of a run's metrics, without the throughput (which differs by run).
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

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn wrn_on_cifar_files_resumes_bit_for_bit_mid_epoch() {
    let data = tempfile::tempdir().unwrap();
    // 5 files of 4 training images (20: 5 steps of 4 per epoch) and 8 test images.
    write_cifar10_dir(data.path(), 4, 8, 7).unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let o = rigl()
            .args([
                "train",
                "--model",
                "wrn-22-2",
                "--dataset",
                "cifar10",
                "--data-dir",
            ])
            .arg(data.path())
            .args([
                "--batch",
                "4",
                "--epochs",
                "2",
                "--method",
                "rigl",
                "--sparsity",
                "0.9",
                "--first-layer-dense",
                "true",
                "--delta-t",
                "2",
                "--log-every",
                "1",
                "--out",
            ])
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let a = tempfile::tempdir().unwrap();
    let (code, err) = train(a.path(), &[]);
    assert_eq!(code, Some(0), "{err}");
    let b = tempfile::tempdir().unwrap();
    let (code, err) = train(b.path(), &["--stop-after-steps", "7"]);
    assert_eq!(code, Some(130), "stopped run: {err}");
    let o = rigl()
        .args(["train", "--resume"])
        .arg(b.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "resume: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(
        bytes(a.path()) == bytes(b.path()),
        "model.safetensors differs after the resume"
    );
    assert_eq!(train_lines(a.path()), train_lines(b.path()));
    let s = summary(a.path());
    assert_eq!(s["steps"], 10, "{s}");
    // The weights of every layer are in the file with their 4-D kernel shapes.
    let file = rigl::train::model_file::read(&a.path().join("model.safetensors")).unwrap();
    // conv0, 18 convolutions in the blocks, the 3 projection shortcuts and the logits layer.
    assert_eq!(file.weights.len(), 23);
    assert!(!file.norms.is_empty());

    let o = rigl()
        .args(["eval", "--checkpoint"])
        .arg(a.path())
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (got, want) = (
        e["test_accuracy"].as_f64().unwrap(),
        s["test_accuracy"].as_f64().unwrap(),
    );
    assert_eq!(got, want, "eval {e} against the summary {s}");
}

#[test]
fn a_cifar_file_that_is_cut_short_stops_the_run_naming_it() {
    let data = tempfile::tempdir().unwrap();
    write_cifar10_dir(data.path(), 2, 2, 1).unwrap();
    let f = data.path().join("data_batch_3.bin");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::write(&f, &std::fs::read(&f).unwrap()[..len as usize - 10]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = rigl()
        .args([
            "train",
            "--model",
            "wrn-22-2",
            "--dataset",
            "cifar10",
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("data_batch_3.bin"), "{err}");
}

//! `rigl train`, `rigl eval` and `rigl report` through the binary: JSON summary keys, run
//! directory, evaluation of the saved model, the report, and bad data paths (exit code 2).

use std::process::Command;

fn rigl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rigl"));
    c.env("NODEVICE_SELECT", "1");
    c
}

#[test]
fn train_eval_report_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = rigl()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
            "--hidden",
            "32",
        ])
        .args(["--sparsity", "0.8", "--delta-t", "20", "--json", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "test_accuracy",
        "final_train_loss",
        "epochs",
        "steps",
        "samples_per_sec",
        "density",
        "train_flops_vs_dense",
        "inference_flops_vs_dense",
        "itop_rate",
        "layers",
    ] {
        assert!(!s[key].is_null(), "summary lacks {key}: {s}");
    }
    let acc = s["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.5, "accuracy {acc}");
    assert!((s["density"].as_f64().unwrap() - 0.2).abs() < 1e-3);
    for l in s["layers"].as_array().unwrap() {
        for key in ["name", "shape", "sparsity", "active"] {
            assert!(!l[key].is_null(), "layer lacks {key}");
        }
    }

    // The saved model evaluates to the same test accuracy.
    let out = rigl()
        .args(["eval", "--json", "--batch", "100", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (e["test_accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
        "{e} vs {acc}"
    );

    let svg = dir.path().join("r.svg");
    let out = rigl()
        .arg("report")
        .arg(&run)
        .arg("--out")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| run | method |"), "{table}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}

#[test]
fn bad_data_paths_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(&bad, b"not an idx file at all").unwrap();
    for args in [
        vec!["--data-dir", "/nonexistent/rigl-data"],
        vec![
            "--train-images",
            bad.to_str().unwrap(),
            "--train-labels",
            bad.to_str().unwrap(),
            "--test-images",
            bad.to_str().unwrap(),
            "--test-labels",
            bad.to_str().unwrap(),
        ],
        vec!["--dataset", "cifar"],
        vec!["--sparsity", "1.5", "--dataset", "synthetic"],
    ] {
        let out = rigl().arg("train").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("rigl: error:"), "{err}");
    }
}

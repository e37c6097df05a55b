//! Kernel choices made by timing, through the binary: the on-disk tuning cache decides them for
//! every run on a machine, each run records them in `kernels.json`, and `--kernels-from`
//! replays another run's, bit for bit.

use std::path::Path;
use std::process::{Command, Output};

use rigl::train::model_file;

fn rigl(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rigl"));
    c.env("NODEVICE_SELECT", "1").env("RIGL_CACHE_DIR", cache);
    c.env_remove("RIGL_GEMM");
    c
}

/// A small sparse run: synthetic data, 784-16-10, batch 256, mask updates every 4 steps.
fn train(cache: &Path, out: &Path, extra: &[&str]) -> Output {
    rigl(cache)
        .args(["train", "--dataset", "synthetic", "--hidden", "16"])
        .args(["--batch", "256", "--epochs", "1", "--delta-t", "4"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .expect("rigl runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn weight_bits(run: &Path) -> Vec<Vec<u32>> {
    let m = model_file::read(&run.join("model.safetensors")).expect("model file");
    m.weights
        .iter()
        .chain(&m.biases)
        .map(|l| l.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn the_tuning_cache_decides_and_kernels_from_replays_a_run() {
    let root = tempfile::tempdir().expect("tempdir");
    let cache = root.path().join("cache");

    // A first run measures, writes the cache and records what it used.
    let a = root.path().join("a");
    let o = train(&cache, &a, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tuning_file = cache.join("tuning.json");
    let tuning = json(&tuning_file);
    let entries = tuning.as_object().expect("an object");
    let (variant_key, measured) = entries
        .iter()
        .find(|(k, _)| k.starts_with("gemm variant|"))
        .expect("the GEMM variant is in the cache");
    let rec_a = json(&a.join("kernels.json"));
    assert_eq!(&rec_a["gemm"], measured, "the run used the cached variant");
    assert_eq!(rec_a["layers"].as_array().map(Vec::len), Some(2), "{rec_a}");

    // Another variant in the cache: the next run takes it without measuring.
    let other = if measured == "rowblock" {
        "tiled"
    } else {
        "rowblock"
    };
    let mut edited = entries.clone();
    edited.insert(variant_key.clone(), serde_json::json!(other));
    std::fs::write(
        &tuning_file,
        serde_json::to_string(&edited).expect("serialises"),
    )
    .expect("cache written");
    let b = root.path().join("b");
    let o = train(&cache, &b, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec_b = json(&b.join("kernels.json"));
    assert_eq!(rec_b["gemm"], other, "{rec_b}");

    // A run with an empty cache replaying b makes b's choices, measures nothing, and ends in
    // b's bits.
    let empty = root.path().join("empty-cache");
    let c = root.path().join("c");
    let b_dir = b.to_string_lossy().into_owned();
    let o = train(&empty, &c, &["--kernels-from", &b_dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rec_c = json(&c.join("kernels.json"));
    for key in ["gemm", "kernels", "layers", "reason"] {
        assert_eq!(rec_c[key], rec_b[key], "{key}");
    }
    assert!(
        !empty.join("tuning.json").exists(),
        "a replayed run measures nothing"
    );
    assert_eq!(weight_bits(&c), weight_bits(&b));
    let summary = json(&c.join("summary.json"));
    assert_eq!(summary["kernels"]["kernels"], rec_b["kernels"]);
}

#[test]
fn kernels_from_refuses_a_missing_record_and_a_second_kernel_setting() {
    let root = tempfile::tempdir().expect("tempdir");
    let cache = root.path().join("cache");
    let missing = root.path().join("no-such-run");
    let missing_arg = missing.to_string_lossy().into_owned();
    let o = train(
        &cache,
        &root.path().join("x"),
        &["--kernels-from", &missing_arg],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-run"), "{err}");

    let o = train(
        &cache,
        &root.path().join("y"),
        &["--kernels-from", &missing_arg, "--kernels", "sparse"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--kernels"), "{err}");
}

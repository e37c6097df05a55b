//! A bad environment through the binary: no Vulkan driver, an unknown `RIGL_ADAPTER`, and
//! problems too large for the device's limits each end in one clear error line and a non-zero
//! exit, never a panic or a failed host allocation (which aborts with a backtrace).

use std::process::{Command, Output};

fn rigl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rigl"));
    c.env("NODEVICE_SELECT", "1").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("rigl runs")
}

/// The run failed with a non-zero exit and a `rigl: error:` line holding every one of `needles`,
/// with no panic or allocation failure on stderr.
fn assert_clear_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure: {err}");
    assert!(out.status.code().is_some(), "killed by a signal: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("rigl: error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for n in needles {
        assert!(line.contains(n), "'{n}' missing from: {line}");
    }
    for bad in ["panicked", "memory allocation", "backtrace"] {
        assert!(!err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn no_vulkan_driver_says_how_to_install_one() {
    let out = rigl(
        &["info"],
        &[
            ("WGPU_BACKEND", "vulkan"),
            ("VK_ICD_FILENAMES", "/nonexistent/rigl-no-driver.json"),
            ("VK_DRIVER_FILES", "/nonexistent/rigl-no-driver.json"),
        ],
    );
    assert_clear_error(
        &out,
        &[
            "no GPU adapter found",
            "apt-get install mesa-vulkan-drivers",
        ],
    );
}

/// `rigl info --json`, parsed.
fn info() -> serde_json::Value {
    let out = rigl(&["info", "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json")
}

#[test]
fn unknown_adapter_lists_the_adapters_found() {
    let out = rigl(&["info"], &[("RIGL_ADAPTER", "no-such-adapter-xyz")]);
    assert_clear_error(
        &out,
        &["RIGL_ADAPTER='no-such-adapter-xyz'", "adapters found:"],
    );
    // The list names the adapter `rigl info` picks without the override.
    let v = info();
    let name = v["adapter"].as_str().expect("adapter name");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(name), "'{name}' not listed: {err}");
}

#[test]
fn products_and_models_too_large_for_the_device_name_what_and_sizes() {
    let v = info();
    let limit = ["max_storage_buffer_binding_size", "max_buffer_size"]
        .iter()
        .map(|k| v["limits"][k].as_u64().expect("limit"))
        .min()
        .expect("two limits");
    // 100000² floats (40 GB) per operand: past any device's binding limit, and refused before
    // any host memory is taken for them.
    let out = rigl(
        &[
            "bench", "matmul", "--m", "100000", "--n", "100000", "--k", "100000",
        ],
        &[],
    );
    assert_clear_error(
        &out,
        &[
            "operand A (100000x100000)",
            "40000000000 bytes",
            &limit.to_string(),
        ],
    );
    // One hidden layer just too wide for the limit: fc1 (784 inputs) does not fit, and the
    // error names it before the initial weights are made on the host.
    let width = limit / (784 * 4) + 1;
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = rigl(
        &[
            "train",
            "--dataset",
            "synthetic",
            "--hidden",
            &width.to_string(),
            "--epochs",
            "1",
            "--out",
            run.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    let needed = (784 * width * 4).to_string();
    assert_clear_error(&out, &[&format!("layer fc1 (784x{width})"), &needed]);
    assert!(
        !run.exists(),
        "a run directory was left behind for a model that cannot run"
    );
}

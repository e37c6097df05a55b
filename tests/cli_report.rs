//! `rigl report` through the binary on hand-made run directories (no training, no GPU): the
//! per-group table, and the SVG and PNG it writes.

use std::path::Path;
use std::process::Command;

fn rigl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rigl"));
    c.env("NODEVICE_SELECT", "1");
    c
}

/// A finished run: config.toml, summary.json and metrics.jsonl with train lines at steps 10 and
/// 20 and eval lines at 10 and 20 (FLOPs at `flops` of dense).
fn write_run(dir: &Path, method: &str, sparsity: f64, seed: u64, acc: f64, flops: f64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "dataset = \"synthetic\"\nmethod = \"{method}\"\nsparsity = {sparsity}\nseed = {seed}\n"
        ),
    )
    .unwrap();
    let density = if method == "dense" {
        1.0
    } else {
        1.0 - sparsity
    };
    let summary = serde_json::json!({
        "method": method, "density": density, "test_accuracy": acc,
        "final_train_loss": 0.5, "train_flops_vs_dense": flops,
        "inference_flops_vs_dense": density, "itop_rate": 0.5,
        "samples_per_sec": 1000.0, "steps": 20, "layers": [],
    });
    std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    let mut m = String::new();
    for (step, loss, a) in [(10, 1.5, acc - 0.1), (20, 0.5, acc)] {
        m += &format!(
            "{{\"kind\":\"train\",\"step\":{step},\"loss\":{loss},\"accuracy\":0.5,\"train_flops_vs_dense\":{flops}}}\n"
        );
        m += &format!(
            "{{\"kind\":\"eval\",\"step\":{step},\"loss\":{loss},\"accuracy\":{a},\"train_flops_vs_dense\":{flops}}}\n"
        );
    }
    std::fs::write(dir.join("metrics.jsonl"), m).unwrap();
}

fn runs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    for (seed, acc) in [(0, 0.80), (1, 0.90)] {
        for (method, sparsity, flops) in [("rigl", 0.9, 0.1), ("dense", 0.9, 1.0)] {
            let d = root.join(format!("{method}-{seed}"));
            write_run(&d, method, sparsity, seed, acc, flops);
            dirs.push(d);
        }
    }
    dirs
}

#[test]
fn png_and_svg_with_group_rows() {
    let root = tempfile::tempdir().unwrap();
    let dirs = runs(root.path());
    let png = root.path().join("fig.png");
    let out = rigl()
        .arg("report")
        .args(&dirs)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let table = String::from_utf8_lossy(&out.stdout);
    // One row per group (dense's sparsity 0.9 in its config is no sparsity), mean ± sample sd.
    assert!(
        table.contains("| dense | 2 | 0, 1 | 1.000 | 85.00% ± 7.07 | 80.00–90.00% |"),
        "{table}"
    );
    assert!(
        table.contains("| rigl 90% | 2 | 0, 1 | 0.100 | 85.00% ± 7.07 | 80.00–90.00% |"),
        "{table}"
    );
    // The per-run rows are still there.
    assert!(table.contains("| run | method |"), "{table}");
    assert_eq!(table.matches(" rigl | 0.100 |").count(), 2, "{table}");

    // The SVG beside the PNG, with the legend's entries.
    let svg = std::fs::read_to_string(root.path().join("fig.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    for text in [
        "rigl 90%",
        "dense",
        "4 runs in 2 groups",
        "mean over 2 seeds",
    ] {
        assert!(svg.contains(text), "SVG lacks {text}");
    }
    // The PNG decodes, at the figure's size, and is not blank.
    let file = std::io::BufReader::new(std::fs::File::open(&png).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1600, 1200));
    let px = &buf[..info.buffer_size()];
    let dark = px.iter().filter(|&&b| b < 100).count();
    assert!(
        dark > 10_000,
        "only {dark} dark bytes: is the figure drawn?"
    );
    assert!(px.iter().filter(|&&b| b == 255).count() > px.len() / 2);
}

#[test]
fn svg_out_writes_no_png() {
    let root = tempfile::tempdir().unwrap();
    let dirs = runs(root.path());
    let svg = root.path().join("fig.svg");
    let out = rigl()
        .arg("report")
        .args(&dirs)
        .arg("--out")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&svg).unwrap().len() > 1000);
    assert!(!root.path().join("fig.png").exists());
}

#[test]
fn bad_metrics_line_names_the_file() {
    let root = tempfile::tempdir().unwrap();
    let dirs = runs(root.path());
    let metrics = dirs[0].join("metrics.jsonl");
    std::fs::write(&metrics, "{\"kind\":\"train\",\"loss\":1.0}\n").unwrap();
    let out = rigl()
        .arg("report")
        .args(&dirs)
        .arg("--out")
        .arg(root.path().join("fig.svg"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{} line 1", metrics.display())),
        "{err}"
    );
}

//! Checkpoints through the binary: a process killed while writing a checkpoint resumes from the
//! previous one and ends where an uninterrupted run ends; a blown-up run exits 1 leaving a
//! loadable checkpoint (or skips the bad batches with `--on-nan skip`); SIGINT and SIGTERM stop
//! with a checkpoint and exit 130; a resume with another shape or method exits 2 naming it, and
//! one past a truncated checkpoint falls back to the previous, saying so.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rigl::train::{checkpoint, model_file};

fn rigl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rigl"));
    c.env("NODEVICE_SELECT", "1");
    c
}

/// A small run: synthetic data (8192 training samples), 784-16-10, batch 256 = 32 steps per
/// epoch, mask updates every 4 steps, metrics every 5.
const SMALL: &[&str] = &[
    "train",
    "--dataset",
    "synthetic",
    "--hidden",
    "16",
    "--batch",
    "256",
    "--delta-t",
    "4",
    "--log-every",
    "5",
];

fn train(args: &[&str], out: &Path) -> Output {
    rigl()
        .args(SMALL)
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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

fn bits(layers: &[Vec<f32>]) -> Vec<Vec<u32>> {
    layers
        .iter()
        .map(|l| l.iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn assert_same_model(a: &Path, b: &Path) {
    let fa = model_file::read(&a.join("model.safetensors")).unwrap();
    let fb = model_file::read(&b.join("model.safetensors")).unwrap();
    assert_eq!(bits(&fa.weights), bits(&fb.weights), "weights");
    assert_eq!(fa.masks, fb.masks, "masks");
    assert_eq!(bits(&fa.biases), bits(&fb.biases), "biases");
    assert_eq!(metrics(a), metrics(b), "metrics.jsonl");
}

fn steps(dir: &Path) -> Vec<u64> {
    checkpoint::list(&dir.join("checkpoints"))
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

#[test]
fn killed_mid_write_resumes_from_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let full = root.path().join("full");
    let o = train(&["--epochs", "1", "--checkpoint-every", "4"], &full);
    assert!(o.status.success(), "{}", stderr(&o));

    // The child stalls half-way through writing the checkpoint of step 12; kill -9 it there.
    // It replays the full run's kernel choices, so both sum in the same order whatever the
    // tuning cache holds (the resume then keeps the checkpoint's).
    let run = root.path().join("killed");
    let mut child = rigl()
        .args(SMALL)
        .args(["--epochs", "1", "--checkpoint-every", "4"])
        .args(["--test-stall-checkpoint-write", "12", "--kernels-from"])
        .arg(&full)
        .arg("--out")
        .arg(&run)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(err).lines() {
        let line = line.unwrap();
        let stalled = line.contains("stalled");
        seen.push(line);
        if stalled {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("stalled")),
        "the child never reached the stall: {seen:?}"
    );
    let tmp = run.join("checkpoints/.ckpt-000000012.safetensors.tmp");
    let written = std::fs::metadata(&tmp).unwrap().len();
    assert!(written > 0, "a partial temporary file");
    assert_eq!(
        steps(&run),
        vec![0, 4, 8],
        "the killed write left no checkpoint"
    );

    let o = rigl()
        .args(["train", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ckpt-000000008.safetensors at step 8 of 32"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.exists(), "the stale temporary file is removed");
    assert_same_model(&full, &run);
    assert_eq!(steps(&run), vec![24, 28, 32]);
}

#[test]
fn non_finite_loss_exits_1_with_a_loadable_checkpoint_or_is_skipped() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("nan");
    let o = train(&["--epochs", "1", "--lr", "1e30"], &run);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("rigl: error: training stopped at step 5:"),
        "{err}"
    );
    assert!(
        last.contains("the training loss of steps 1..=5 is NaN")
            && last.contains("fc1 weight:")
            && last.contains("ckpt-000000000.safetensors"),
        "{err}"
    );
    assert!(!run.join("model.safetensors").exists());
    // The last good checkpoint loads, holds finite values, and evaluates.
    let ck = checkpoint::find(&run).unwrap().checkpoint;
    assert_eq!(ck.trainer.step, 0);
    assert!(ck
        .model
        .non_finite(&["fc1".into(), "fc2".into()])
        .is_empty());
    let o = rigl()
        .args(["eval", "--json", "--checkpoint"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(e["test_accuracy"].as_f64().unwrap() >= 0.0);

    // --on-nan skip: the run goes on, counting the skipped batches.
    let run = root.path().join("skip");
    let o = train(
        &[
            "--epochs", "1", "--lr", "1e30", "--on-nan", "skip", "--json",
        ],
        &run,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let skips = s["nan_skips"].as_u64().unwrap();
    assert!(skips > 0 && skips < 32, "{s}");
    let lines = metrics(&run);
    let counted: Vec<u64> = lines
        .iter()
        .map(|l| l["nan_skips"].as_u64().unwrap())
        .collect();
    assert_eq!(*counted.last().unwrap(), skips);
    assert!(counted.windows(2).all(|w| w[0] <= w[1]), "{counted:?}");
}

#[cfg(unix)]
#[test]
fn sigint_and_sigterm_stop_with_a_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    for sig in ["-INT", "-TERM"] {
        let run = root.path().join(sig);
        let mut child = rigl()
            .args([
                "train",
                "--dataset",
                "synthetic",
                "--hidden",
                "16",
                "--batch",
                "256",
            ])
            .args(["--epochs", "100", "--log-every", "1", "--out"])
            .arg(&run)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && !line.contains("step      3 ") {
            line.clear();
        }
        assert!(line.contains("step      3 "), "{sig}: no progress line");
        let k = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(k.success());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{sig}: {rest}");
        let stopped = rest
            .lines()
            .find(|l| l.starts_with("rigl: stopped after step "))
            .unwrap_or_else(|| panic!("{sig}: {rest}"));
        let step: u64 = stopped["rigl: stopped after step ".len()..]
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rest.contains(&format!(
            "resume with: rigl train --resume {}",
            run.display()
        )));
        let ck = checkpoint::find(&run).unwrap().checkpoint;
        assert_eq!(ck.trainer.step, step, "{sig}");
        assert!((3..3200).contains(&step), "{sig}: {step}");
    }
}

#[test]
fn resume_refuses_another_shape_or_method_and_falls_back_past_a_damaged_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let full = root.path().join("full");
    let o = train(&["--epochs", "1"], &full);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = root.path().join("run");
    let full_dir = full.to_string_lossy().into_owned();
    let o = train(
        &[
            "--epochs",
            "1",
            "--checkpoint-every",
            "5",
            "--stop-after-steps",
            "13",
            "--kernels-from",
            &full_dir,
        ],
        &run,
    );
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_eq!(steps(&run), vec![5, 10, 13]);

    for (args, names) in [
        (
            vec!["--hidden", "8"],
            vec!["model shape", "hidden: [16] in the checkpoint, [8] now"],
        ),
        (
            vec!["--method", "set"],
            vec!["method: \"rigl\" in the checkpoint, \"set\" now"],
        ),
    ] {
        let o = rigl()
            .args(["train", "--resume"])
            .arg(&run)
            .args(&args)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        for n in names {
            assert!(err.contains(n), "{args:?}: {err}");
        }
    }

    // The newest checkpoint cut short: the resume says so and continues from the one before.
    let newest = run.join("checkpoints").join(checkpoint::file_name(13));
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let o = rigl()
        .args(["train", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("skipping") && err.contains("ckpt-000000013.safetensors"),
        "{err}"
    );
    assert!(
        err.contains("falling back to the newest good checkpoint")
            && err.contains("ckpt-000000010.safetensors"),
        "{err}"
    );
    assert!(
        err.contains("removed") && err.contains("ckpt-000000013"),
        "{err}"
    );
    assert_same_model(&full, &run);
    // The resumed run keeps --checkpoint-every 5.
    assert_eq!(steps(&run), vec![25, 30, 32]);

    // report reads a checkpoint file as well as finished runs.
    let ck = run.join("checkpoints").join(checkpoint::file_name(32));
    let o = rigl()
        .arg("report")
        .arg(&full)
        .arg(&ck)
        .arg("--out")
        .arg(root.path().join("r.svg"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(step 32 of 32)"));
}

//! Data-parallel training under `mpirun` (built with `--features mpi`; needs Open MPI's
//! `mpirun`): 2 ranks at half the batch each against 1 rank at the whole batch, a rank killed,
//! SIGTERM to `mpirun`, and a batch that does not split.
#![cfg(feature = "mpi")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use safetensors::{Dtype, SafeTensors};

const RIGL: &str = env!("CARGO_BIN_EXE_rigl");

fn env(c: &mut Command) -> &mut Command {
    c.env("NODEVICE_SELECT", "1")
        .env("RUST_BACKTRACE", "0")
        // No signals of a terminal, no progress bar.
        .stdin(Stdio::null())
}

/// `rigl ARGS` as one process.
fn rigl(args: &[&str]) -> Output {
    env(&mut Command::new(RIGL))
        .args(args)
        .output()
        .expect("running rigl")
}

/// `mpirun -np N rigl ARGS` (as root too, more ranks than cores allowed).
fn mpirun(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &n.to_string(),
        RIGL,
    ]);
    env(&mut c);
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every tensor of a safetensors file: u8 tensors (masks) as bytes, f32 ones as values.
enum T {
    Bytes(Vec<u8>),
    F32(Vec<f32>),
}

fn tensors(path: &Path) -> BTreeMap<String, T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = match v.dtype() {
                Dtype::F32 => T::F32(
                    v.data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                _ => T::Bytes(v.data().to_vec()),
            };
            (name, t)
        })
        .collect()
}

/// Largest magnitude of a tensor.
fn scale(t: Option<&T>) -> f64 {
    match t {
        Some(T::F32(x)) => x.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs()))),
        _ => 0.0,
    }
}

/// Masks (and every other integer tensor) equal; weights within `rtol` of the reference
/// tensor's largest magnitude, biases within `rtol` of their layer's (a bias starts at 0 and
/// stays far smaller than its weights: its few sum-order ulps are measured on the layer's
/// scale); returns the largest relative difference seen.
fn assert_close(what: &str, reference: &Path, other: &Path, rtol: f64) -> f64 {
    let (a, b) = (tensors(reference), tensors(other));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: tensor names"
    );
    let mut worst = 0.0f64;
    let mut sparse = false;
    for (name, ta) in &a {
        match (ta, &b[name]) {
            (T::Bytes(x), T::Bytes(y)) => {
                sparse |= name.ends_with(".mask") && x.contains(&0);
                assert!(x == y, "{what}: {name} differs between 1 and 2 ranks");
            }
            (T::F32(x), T::F32(y)) if name.ends_with(".weight") || name.ends_with(".bias") => {
                let layer = name.trim_end_matches(".weight").trim_end_matches(".bias");
                let scale = scale(Some(ta)).max(scale(a.get(&format!("{layer}.weight"))));
                let diff = x
                    .iter()
                    .zip(y)
                    .fold(0.0f64, |m, (p, q)| m.max(f64::from((p - q).abs())));
                let rel = diff / scale.max(1e-30);
                assert!(
                    rel <= rtol,
                    "{what}: {name} differs by {rel:e} (relative) between 1 and 2 ranks"
                );
                worst = worst.max(rel);
            }
            _ => {}
        }
    }
    assert!(sparse, "{what}: no sparse mask in {}", reference.display());
    worst
}

fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    v.sort();
    v
}

/// One rank at global batch 64 and two ranks at 32 each, `epochs` epochs of `per_epoch` steps
/// with a mask update every 25 and a checkpoint after every 25 (each holds the masks of the
/// update before it): masks equal at every update and at the end, weights within 1e-5
/// relative.
fn one_rank_against_two(what: &str, extra: &[&str], epochs: usize, per_epoch: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let samples = (64 * per_epoch).to_string();
    let epochs_arg = epochs.to_string();
    let steps = epochs * per_epoch;
    let mut args = vec![
        "train",
        "--dataset",
        "synthetic",
        "--batch",
        "64",
        "--epochs",
        &epochs_arg,
        "--train-samples",
        &samples,
        "--test-samples",
        "256",
        "--delta-t",
        "25",
        "--checkpoint-every",
        "25",
        "--keep-checkpoints",
        "100",
        "--json",
    ];
    args.extend_from_slice(extra);
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    let o = rigl(&[&args[..], &["--out", one.to_str().unwrap_or_default()]].concat());
    assert!(o.status.success(), "{what}, 1 rank: {}", text(&o));
    let o = mpirun(2)
        .args(&args)
        .args(["--out", two.to_str().unwrap_or_default()])
        .output()
        .expect("mpirun");
    assert!(o.status.success(), "{what}, 2 ranks: {}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(summary["distributed"]["ranks"], 2, "{}", text(&o));
    assert_eq!(summary["distributed"]["shard"], 32, "{}", text(&o));
    assert!(summary["distributed"]["update_steps"].as_u64() > Some(0));
    // The 2-rank run reports one summary (rank 0's).
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    let (c1, c2) = (checkpoints(&one), checkpoints(&two));
    let names = |v: &[PathBuf]| -> Vec<_> {
        v.iter()
            .map(|p| p.file_name().map(|n| n.to_owned()))
            .collect()
    };
    assert_eq!(names(&c1), names(&c2), "{what}: checkpoints written");
    assert_eq!(c1.len(), steps / 25 + 1, "{what}: {c1:?}");
    let mut worst = 0.0f64;
    for (a, b) in c1.iter().zip(&c2) {
        worst = worst.max(assert_close(what, a, b, 1e-5));
    }
    worst = worst.max(assert_close(
        what,
        &one.join("model.safetensors"),
        &two.join("model.safetensors"),
        1e-5,
    ));
    eprintln!("{what}: largest relative weight difference {worst:e}");
    // Rank 1 wrote nothing of its own: one metrics file, one summary.
    assert!(two.join("summary.json").is_file() && two.join("metrics.jsonl").is_file());
}

#[test]
fn two_ranks_at_half_the_batch_train_as_one_rank_compressed() {
    one_rank_against_two("compressed rigl", &["--kernels", "sparse"], 2, 100);
}

#[test]
fn two_ranks_at_half_the_batch_train_as_one_rank_masked_snfs() {
    one_rank_against_two(
        "masked snfs",
        &[
            "--kernels",
            "masked",
            "--method",
            "snfs",
            "--hidden",
            "64,32",
        ],
        2,
        100,
    );
}

#[test]
fn two_ranks_at_half_the_batch_train_as_one_rank_lenet5() {
    one_rank_against_two(
        "lenet5 rigl",
        &["--model", "lenet5", "--kernels", "masked"],
        1,
        50,
    );
}

#[test]
fn two_ranks_at_half_the_batch_train_as_one_rank_lenet5_compressed() {
    // Every weight tensor compressed: slot gradients exchanged, and at each RigL update every
    // tensor's dense gradient averaged before its grow selection.
    one_rank_against_two(
        "lenet5 compressed rigl",
        &["--model", "lenet5", "--kernels", "sparse"],
        1,
        50,
    );
}

#[test]
fn a_batch_that_does_not_split_names_both_numbers() {
    let o = mpirun(2)
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--batch",
            "63",
            "--epochs",
            "1",
        ])
        .output()
        .expect("mpirun");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("global batch of 63") && err.contains("2 equal shards"),
        "{}",
        text(&o)
    );
}

/// Pids of the ranks `mpirun` (pid `parent`) started, by rank.
fn ranks_of(parent: u32) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for var in environ.split(|&b| b == 0) {
            if let Some(r) = var.strip_prefix(b"OMPI_COMM_WORLD_RANK=") {
                if let Some(r) = std::str::from_utf8(r).ok().and_then(|r| r.parse().ok()) {
                    out.insert(r, pid);
                }
            }
        }
    }
    out
}

/// A long 2-rank run writing a checkpoint every 10 steps, once it has written two.
fn long_run(dir: &Path) -> Child {
    let child = mpirun(2)
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--batch",
            "64",
            "--epochs",
            "50",
            "--kernels",
            "sparse",
            "--checkpoint-every",
            "10",
            "--out",
            dir.to_str().unwrap_or_default(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    let t = Instant::now();
    while checkpoints(dir).len() < 3 {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoints");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// Waits for `child` at most `limit`; its output, or a panic (after killing it).
fn wait_at_most(mut child: Child, limit: Duration) -> (Output, Duration) {
    let t = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let o = child.wait_with_output().expect("output");
            return (o, t.elapsed());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().expect("output");
            panic!("mpirun still running after {limit:?}: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_rank_ends_the_run_within_seconds_and_the_last_checkpoint_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let child = long_run(&dir);
    let ranks = ranks_of(child.id());
    let victim = ranks.get(&1).copied();
    assert!(victim.is_some(), "rank 1 not found among {ranks:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &victim.unwrap_or_default().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (o, took) = wait_at_most(child, Duration::from_secs(10));
    assert!(!o.status.success(), "{}", text(&o));
    eprintln!("mpirun ended {took:?} after rank 1 was killed");
    let found = rigl::train::checkpoint::find(&dir).expect("the last checkpoint loads");
    assert!(found.checkpoint.trainer.step >= 20);
    // And training continues from it (2 ranks, 5 more steps).
    let step = found.checkpoint.trainer.step;
    let stop = (step + 5).to_string();
    let o = mpirun(2)
        .args(["train", "--resume", dir.to_str().unwrap_or_default()])
        .args(["--stop-after-steps", &stop])
        .output()
        .expect("mpirun");
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(dir
        .join("checkpoints")
        .join(rigl::train::checkpoint::file_name(step + 5))
        .is_file());
}

#[test]
fn sigterm_to_mpirun_stops_every_rank_at_one_step_with_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let child = long_run(&dir);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let (o, _) = wait_at_most(child, Duration::from_secs(30));
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let step: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("rigl: stopped after step "))
        .and_then(|r| r.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no stop line: {}", text(&o)));
    let found = rigl::train::checkpoint::find(&dir).expect("the checkpoint loads");
    assert_eq!(found.checkpoint.trainer.step, step, "{}", text(&o));
}

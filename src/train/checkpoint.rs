//! Checkpoints: the complete state of a training run in one safetensors file, written atomically,
//! checksummed, and read back for an exact resume.
//!
//! A checkpoint `RUN_DIR/checkpoints/ckpt-<step>.safetensors` holds, per layer `fcN`:
//! `fcN.weight`, `fcN.mask` (u8), `fcN.bias` (the names and shapes of `model.safetensors`, so
//! `rigl eval` reads either), and `fcN.momentum`, `fcN.bias_momentum`, `fcN.ema` (f32) and
//! `fcN.ever` (u8), plus `trainer.loss_sums` (f32 `[2]`). Metadata: `rigl.kind = checkpoint`,
//! `rigl.version`, `rigl.sizes`, `rigl.config` (the effective TOML), `rigl.step`, `rigl.method`,
//! `rigl.trainer` (the [`TrainerState`] as JSON, floats as their bit patterns) and
//! A model of layers (`--model lenet5`, `--model-file`) stores its weight tensors the same way
//! under their layer names with their own shapes (`conv1.weight` `[5, 5, 1, 20]`; no bias
//! tensors for a layer without a bias), and every batch norm as `bnN.gamma`, `bnN.beta`,
//! `bnN.gamma_momentum`, `bnN.beta_momentum`, `bnN.running_mean`, `bnN.running_var` (walk
//! order, from 1); its `rigl.sizes` is `[features, classes]` and its shapes come from the model
//! recorded in `rigl.config`.
//!
//! `rigl.checksum`: CRC-32 of every other metadata entry and of every tensor's name, dtype, shape
//! and bytes, so truncation and corruption are both detected on load.
//!
//! Random streams need no saved generator state: the data order of epoch `e` comes from a
//! ChaCha8 generator keyed by `(seed, e)` (its position is the batch cursor), SET draws from a
//! counter-based hash of `(seed, step, layer, index)`, and initialisation happens only at step 0.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RiglError};
use crate::nn::state::norm_name;
pub use crate::nn::ModelState;
use crate::nn::NormState;
use crate::sparse::init::{mask_from_u8, mask_to_u8};
use crate::train::TrainConfig;

/// Subdirectory of a run directory that holds its checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// What to do when the training loss turns non-finite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NanPolicy {
    /// Stop with [`RiglError::NonFinite`], keeping the last good checkpoint (default).
    #[default]
    Stop,
    /// Skip the batch (no optimizer step, no mask update) and count it in the metrics. Every step
    /// then waits for its own loss before updating the weights, which costs throughput.
    Skip,
}

impl NanPolicy {
    /// Parses `stop` or `skip`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "stop" => Ok(NanPolicy::Stop),
            "skip" => Ok(NanPolicy::Skip),
            o => Err(RiglError::invalid(format!(
                "unknown --on-nan policy '{o}' (expected stop or skip)"
            ))),
        }
    }
}

/// How a run is checkpointed, resumed and stopped (the run-control side of `rigl train`; what is
/// trained is the [`TrainConfig`]).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Write a checkpoint every this many steps (besides step 0 and each epoch's end).
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept in the run directory (the oldest are deleted); at least 1.
    pub keep_checkpoints: usize,
    /// Continue from this checkpoint.
    pub resume: Option<Checkpoint>,
    /// Non-finite loss policy.
    pub on_nan: NanPolicy,
    /// Set (by a signal handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop with a checkpoint once this many steps are done (simulates an interruption).
    pub stop_after_steps: Option<u64>,
    /// Testing only: when writing the checkpoint of this step, write half the file, then wait
    /// forever (a test kills the process there to check that the previous checkpoint survives).
    pub stall_checkpoint_write: Option<u64>,
    /// Replay another run's kernel choices (`--kernels-from`) instead of the tuning cache's.
    pub kernels_from: Option<crate::train::kernels::KernelRecord>,
    /// The ranks of a data-parallel run (SPEC §9): with two or more, each rank trains on its
    /// shard of every global batch and the gradients are averaged over the ranks; rank 0 alone
    /// writes the run directory and evaluates. `None` (or one rank): a run of one process.
    pub comm: Option<std::rc::Rc<dyn crate::dist::Collective>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            checkpoint_every: None,
            keep_checkpoints: 3,
            resume: None,
            on_nan: NanPolicy::Stop,
            stop: None,
            stop_after_steps: None,
            stall_checkpoint_write: None,
            kernels_from: None,
            comm: None,
        }
    }
}

impl RunOptions {
    /// True when a stop was requested by the flag.
    pub fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }
}

/// The trainer's side of a checkpoint: the schedule position, counters and running metrics.
/// Floats are stored as their bit patterns, so a resumed run continues with identical values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps done (the next step to run).
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Data-order cursor: epoch of the next batch.
    pub cursor_epoch: u64,
    /// Data-order cursor: index of the next batch within its epoch.
    pub cursor_batch: usize,
    /// Mask updates (and pruning steps) done.
    pub mask_updates: u64,
    /// Step of the last mask update, if any.
    pub last_update_step: Option<u64>,
    /// Drop fraction of the last mask update.
    #[serde(with = "f32_bits")]
    pub last_drop_fraction: f32,
    /// New connections of the last mask update.
    pub last_changes: usize,
    /// Active weights per layer.
    pub active: Vec<usize>,
    /// Training FLOPs so far.
    #[serde(with = "f64_bits")]
    pub train_flops: f64,
    /// Dense training FLOPs of the same steps.
    #[serde(with = "f64_bits")]
    pub dense_flops: f64,
    /// Samples in the current metrics window.
    pub window_samples: u64,
    /// First step of the current metrics window.
    pub window_start: u64,
    /// Loss sum of the epoch so far (logged windows).
    #[serde(with = "f64_bits")]
    pub epoch_loss_sum: f64,
    /// Samples of the epoch so far (logged windows).
    pub epoch_loss_samples: u64,
    /// Last test (loss, accuracy).
    #[serde(with = "f64_bits")]
    pub last_eval_loss: f64,
    /// Last test accuracy.
    #[serde(with = "f64_bits")]
    pub last_eval_accuracy: f64,
    /// Mean training loss of the last finished epoch.
    #[serde(with = "f64_bits")]
    pub final_train_loss: f64,
    /// Batches skipped for a non-finite loss (`--on-nan skip`).
    pub nan_skips: u64,
    /// Training seconds so far (timing only).
    #[serde(with = "f64_bits")]
    pub train_seconds: f64,
    /// Wall seconds so far (timing only).
    #[serde(with = "f64_bits")]
    pub wall_seconds: f64,
    /// Bytes of `metrics.jsonl` at the checkpoint (a resumed run truncates the file there).
    pub metrics_bytes: u64,
    /// GEMM variant the run used (a resumed run uses the same, for identical sums).
    pub gemm: String,
    /// Kernels the run used, `masked` or `sparse` (a resumed run uses the same).
    pub kernels: String,
    /// Why those kernels (as the run's summary reports it).
    pub kernels_reason: String,
    /// The timings the kernel choice measured, if it did.
    pub kernels_layers: Vec<crate::nn::choice::LayerTiming>,
    /// The GEMM variant of every product shape (absent in checkpoints of older versions).
    #[serde(default)]
    pub gemm_picks: Vec<crate::train::kernels::GemmPick>,
    /// The run's `--checkpoint-every` (a resumed run keeps it unless told otherwise).
    pub checkpoint_every: Option<u64>,
    /// The run's `--keep-checkpoints`.
    pub keep_checkpoints: usize,
    /// The run skipped batches with a non-finite loss (`--on-nan skip`).
    pub on_nan_skip: bool,
    /// Adapter the run used.
    pub adapter: String,
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

mod f32_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f32, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u32(v.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
        u32::deserialize(d).map(f32::from_bits)
    }
}

/// A checkpoint read back from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// Engine version that wrote it.
    pub version: String,
    /// Layer widths, input first.
    pub sizes: Vec<usize>,
    /// The effective configuration of the run.
    pub config: TrainConfig,
    /// Trainer state.
    pub trainer: TrainerState,
    /// Model state.
    pub model: ModelState,
}

fn bad(path: &Path, message: impl Into<String>) -> RiglError {
    RiglError::BadFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RiglError + '_ {
    move |source| RiglError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// File name of the checkpoint of `step`.
pub fn file_name(step: u64) -> String {
    format!("ckpt-{step:09}.safetensors")
}

/// The step of a checkpoint file name, if it is one.
pub fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// The run directory a checkpoint file belongs to (`RUN/checkpoints/ckpt-*.safetensors`).
pub fn run_dir_of(checkpoint: &Path) -> PathBuf {
    let parent = checkpoint.parent().unwrap_or(Path::new("."));
    if parent.file_name().is_some_and(|n| n == CHECKPOINT_DIR) {
        parent.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

/// CRC-32 over the metadata (sorted, without `rigl.checksum`) and every tensor (sorted by name:
/// name, dtype, shape, bytes).
fn checksum<'a>(
    meta: &HashMap<String, String>,
    tensors: impl Iterator<Item = (String, Dtype, Vec<usize>, &'a [u8])>,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != "rigl.checksum").collect();
    keys.sort();
    for k in keys {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(meta[k].as_bytes());
        h.update(&[0]);
    }
    let mut ts: Vec<_> = tensors.collect();
    ts.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, dtype, shape, data) in ts {
        h.update(name.as_bytes());
        h.update(format!("{dtype:?}{shape:?}").as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize()
}

/// Serializes a checkpoint to bytes.
pub fn to_bytes(
    cfg: &TrainConfig,
    sizes: &[usize],
    trainer: &TrainerState,
    state: &ModelState,
) -> Result<Vec<u8>> {
    let layout = cfg.layout(sizes)?;
    let n_layers = layout.params.len();
    for (what, layers) in state.tensors() {
        if layers.len() != n_layers {
            return Err(RiglError::invalid(format!(
                "checkpoint: {} {what} layers for {n_layers} layers",
                layers.len()
            )));
        }
    }
    if state.norms.len() != layout.norms.len() {
        return Err(RiglError::invalid(format!(
            "checkpoint: {} batch norms for a model with {}",
            state.norms.len(),
            layout.norms.len()
        )));
    }
    // Owned bytes first (views borrow them).
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (l, p) in layout.params.iter().enumerate() {
        let name = &p.name;
        for (what, layers) in state.tensors() {
            let v = &layers[l];
            let bias_like = what.starts_with("bias");
            let shape = match (bias_like, p.bias) {
                (true, Some(b)) => vec![b],
                (true, None) => continue,
                (false, _) => p.shape.clone(),
            };
            if v.len() != shape.iter().product::<usize>() {
                return Err(RiglError::invalid(format!(
                    "checkpoint: {name}.{what} has {} values, expected {shape:?}",
                    v.len()
                )));
            }
            let (dtype, bytes) = if what == "mask" || what == "ever" {
                (Dtype::U8, mask_to_u8(v))
            } else {
                (Dtype::F32, bytemuck::cast_slice(v).to_vec())
            };
            owned.push((format!("{name}.{what}"), dtype, shape, bytes));
        }
    }
    for (i, (n, &c)) in state.norms.iter().zip(&layout.norms).enumerate() {
        for (what, v) in n.tensors() {
            if v.len() != c {
                return Err(RiglError::invalid(format!(
                    "checkpoint: {}.{what} has {} values, expected {c}",
                    norm_name(i),
                    v.len()
                )));
            }
            owned.push((
                format!("{}.{what}", norm_name(i)),
                Dtype::F32,
                vec![c],
                bytemuck::cast_slice(v).to_vec(),
            ));
        }
    }
    owned.push((
        "trainer.loss_sums".into(),
        Dtype::F32,
        vec![2],
        bytemuck::cast_slice(&state.loss_sums).to_vec(),
    ));
    let mut meta = HashMap::new();
    meta.insert("rigl.kind".to_string(), "checkpoint".to_string());
    meta.insert(
        "rigl.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    meta.insert(
        "rigl.sizes".to_string(),
        serde_json::to_string(sizes).map_err(|e| RiglError::invalid(e.to_string()))?,
    );
    meta.insert("rigl.config".to_string(), cfg.to_toml()?);
    meta.insert("rigl.step".to_string(), trainer.step.to_string());
    meta.insert("rigl.method".to_string(), cfg.method.as_str().to_string());
    meta.insert(
        "rigl.trainer".to_string(),
        serde_json::to_string(trainer)
            .map_err(|e| RiglError::invalid(format!("trainer state to JSON: {e}")))?,
    );
    let sum = checksum(
        &meta,
        owned
            .iter()
            .map(|(n, d, s, b)| (n.clone(), *d, s.clone(), b.as_slice())),
    );
    meta.insert("rigl.checksum".to_string(), format!("crc32:{sum:08x}"));
    let mut views = Vec::new();
    for (n, d, s, b) in &owned {
        let v = TensorView::new(*d, s.clone(), b)
            .map_err(|e| RiglError::invalid(format!("checkpoint tensor {n}: {e}")))?;
        views.push((n.clone(), v));
    }
    crate::canonical::safetensors_bytes(
        safetensors::serialize(views, Some(meta))
            .map_err(|e| RiglError::invalid(format!("checkpoint serialization: {e}")))?,
    )
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, renamed
/// over `path`, then the directory synced. A crash at any moment leaves either the old file (or
/// none) or the complete new one; at worst a stray temporary file. `stall` (testing only) writes
/// half the temporary file and then blocks forever.
pub fn write_atomic(path: &Path, bytes: &[u8], stall: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        if stall {
            f.write_all(&bytes[..bytes.len() / 2])
                .map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            eprintln!(
                "rigl: test hook: checkpoint write of {} stalled",
                path.display()
            );
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir).map_err(io_err(dir))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    // Windows has no directory handle to flush; the rename itself is durable with the file.
    Ok(())
}

/// Writes a checkpoint of `trainer.step` into `run_dir/checkpoints/`, then deletes the oldest
/// beyond `keep`. Returns its path.
pub fn save(
    run_dir: &Path,
    cfg: &TrainConfig,
    sizes: &[usize],
    trainer: &TrainerState,
    state: &ModelState,
    keep: usize,
    stall: bool,
) -> Result<PathBuf> {
    let dir = run_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(file_name(trainer.step));
    let bytes = to_bytes(cfg, sizes, trainer, state)?;
    write_atomic(&path, &bytes, stall)?;
    for (_, old) in list(&dir)?.into_iter().rev().skip(keep.max(1)) {
        std::fs::remove_file(&old).map_err(io_err(&old))?;
    }
    Ok(path)
}

/// The checkpoints in a directory, oldest first, as (step, path). Temporary files of interrupted
/// writes are not listed.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = step_of(&name) {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Deletes temporary files left by interrupted checkpoint writes in `run_dir/checkpoints`.
pub fn remove_stale_temporaries(run_dir: &Path) -> Result<()> {
    let dir = run_dir.join(CHECKPOINT_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".ckpt-") && name.ends_with(".tmp") {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// Deletes the checkpoints of `run_dir` taken after `step` (a run resumed from `step` writes its
/// own; keeping the old ones would let a later resume pick a state from the abandoned future).
/// Returns the deleted paths.
pub fn remove_newer(run_dir: &Path, step: u64) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (s, p) in list(&run_dir.join(CHECKPOINT_DIR))? {
        if s > step {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Whether a file is a rigl checkpoint (rather than a final model file), by its metadata. Files
/// that cannot be parsed count as checkpoints when their name says so.
pub fn is_checkpoint(path: &Path) -> bool {
    if path
        .file_name()
        .is_some_and(|n| step_of(&n.to_string_lossy()).is_some())
    {
        return true;
    }
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    SafeTensors::read_metadata(&bytes).is_ok_and(|(_, h)| {
        h.metadata()
            .as_ref()
            .and_then(|m| m.get("rigl.kind"))
            .is_some_and(|k| k == "checkpoint")
    })
}

/// Reads and verifies a checkpoint: a truncated or corrupt file is a [`RiglError::BadFile`]
/// naming it.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    from_bytes(path, &bytes)
}

/// Parses and verifies checkpoint bytes read from `path`.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
    let corrupt = |e: &dyn std::fmt::Display| {
        bad(
            path,
            format!(
                "truncated or corrupt checkpoint ({} bytes): {e}",
                bytes.len()
            ),
        )
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(&e))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(&e))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("rigl.kind").map(String::as_str) != Some("checkpoint") {
        return Err(bad(
            path,
            "not a rigl checkpoint (no rigl.kind = checkpoint)",
        ));
    }
    let stored = meta
        .get("rigl.checksum")
        .ok_or_else(|| bad(path, "checkpoint has no rigl.checksum"))?;
    let computed = format!(
        "crc32:{:08x}",
        checksum(
            &meta,
            st.tensors()
                .into_iter()
                .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data()))
        )
    );
    if *stored != computed {
        return Err(bad(
            path,
            format!("corrupt checkpoint: checksum {computed} differs from the stored {stored}"),
        ));
    }
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(path, format!("checkpoint metadata {k} is missing")))
    };
    let sizes: Vec<usize> = serde_json::from_str(get("rigl.sizes")?)
        .map_err(|e| bad(path, format!("rigl.sizes: {e}")))?;
    if sizes.len() < 2 || sizes.contains(&0) {
        return Err(bad(path, format!("invalid layer widths {sizes:?}")));
    }
    let config: TrainConfig =
        toml::from_str(get("rigl.config")?).map_err(|e| bad(path, format!("rigl.config: {e}")))?;
    let trainer: TrainerState = serde_json::from_str(get("rigl.trainer")?)
        .map_err(|e| bad(path, format!("rigl.trainer: {e}")))?;
    let layout = config
        .layout(&sizes)
        .map_err(|e| bad(path, e.to_string()))?;
    let mut model = ModelState::default();
    let tensor = |key: String, dtype: Dtype, shape: Vec<usize>| -> Result<Vec<f32>> {
        let t = st
            .tensor(&key)
            .map_err(|_| bad(path, format!("tensor {key} is missing")))?;
        if t.dtype() != dtype || t.shape() != shape.as_slice() {
            return Err(bad(
                path,
                format!(
                    "tensor {key} is {:?} {:?}, expected {dtype:?} {shape:?}",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        Ok(match dtype {
            Dtype::U8 => mask_from_u8(t.data()),
            _ => f32s(t.data()),
        })
    };
    for p in &layout.params {
        let name = &p.name;
        let w = |what: &str, dtype: Dtype| tensor(format!("{name}.{what}"), dtype, p.shape.clone());
        let b = |what: &str| match p.bias {
            Some(n) => tensor(format!("{name}.{what}"), Dtype::F32, vec![n]),
            None => Ok(Vec::new()),
        };
        model.weights.push(w("weight", Dtype::F32)?);
        model.masks.push(w("mask", Dtype::U8)?);
        model.momentum.push(w("momentum", Dtype::F32)?);
        model.biases.push(b("bias")?);
        model.bias_momentum.push(b("bias_momentum")?);
        model.ema.push(w("ema", Dtype::F32)?);
        model.ever.push(w("ever", Dtype::U8)?);
    }
    for (i, &c) in layout.norms.iter().enumerate() {
        let get = |what: &str| tensor(format!("{}.{what}", norm_name(i)), Dtype::F32, vec![c]);
        model.norms.push(NormState {
            gamma: get("gamma")?,
            beta: get("beta")?,
            gamma_momentum: get("gamma_momentum")?,
            beta_momentum: get("beta_momentum")?,
            mean: get("running_mean")?,
            var: get("running_var")?,
        });
    }
    let sums = st
        .tensor("trainer.loss_sums")
        .map_err(|_| bad(path, "tensor trainer.loss_sums is missing"))?;
    let sums = f32s(sums.data());
    if sums.len() != 2 {
        return Err(bad(path, "trainer.loss_sums must hold 2 values"));
    }
    model.loss_sums = [sums[0], sums[1]];
    Ok(Checkpoint {
        path: path.to_path_buf(),
        version: get("rigl.version")?.clone(),
        sizes,
        config,
        trainer,
        model,
    })
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A checkpoint found for `--resume`, with the newer ones that were skipped as unreadable.
#[derive(Debug)]
pub struct Found {
    /// The newest good checkpoint.
    pub checkpoint: Checkpoint,
    /// Newer checkpoints that failed to load, newest first, with why.
    pub skipped: Vec<RiglError>,
}

/// Finds the checkpoint to resume from: `path` itself when it is a file (an error when it is
/// unreadable), else the newest good checkpoint of the run directory `path` (or of `path` as a
/// checkpoints directory), falling back past corrupt ones.
pub fn find(path: &Path) -> Result<Found> {
    if path.is_file() {
        return Ok(Found {
            checkpoint: read(path)?,
            skipped: Vec::new(),
        });
    }
    if !path.is_dir() {
        return Err(bad(path, "no such checkpoint file or run directory"));
    }
    let dir = if path.join(CHECKPOINT_DIR).is_dir() {
        path.join(CHECKPOINT_DIR)
    } else {
        path.to_path_buf()
    };
    let mut skipped = Vec::new();
    for (_, p) in list(&dir)?.into_iter().rev() {
        match read(&p) {
            Ok(checkpoint) => {
                return Ok(Found {
                    checkpoint,
                    skipped,
                })
            }
            Err(e) => skipped.push(e),
        }
    }
    let why = if skipped.is_empty() {
        "no checkpoints in it".to_string()
    } else {
        let list: Vec<String> = skipped.iter().map(|e| e.to_string()).collect();
        format!("no readable checkpoint ({})", list.join("; "))
    };
    Err(bad(&dir, why))
}

/// Settings that define the model, its sparsity or the order of the data: a resume refuses a
/// checkpoint whose value differs.
pub const FIXED_SETTINGS: &[&str] = &[
    "model",
    "model_toml",
    "method",
    "hidden",
    "sparsity",
    "distribution",
    "first_layer_dense",
    "last_layer_dense",
    "erk_power_scale",
    "batch",
    "seed",
];

/// Compares a checkpoint with the configuration of the run resuming from it. A different model
/// shape, step count per epoch or any of [`FIXED_SETTINGS`] is an error naming each difference;
/// other differences (learning rate, epochs, ...) come back as `setting: old -> new` lines,
/// allowed but making the run differ from one never stopped.
pub fn compare(
    ckpt: &Checkpoint,
    cfg: &TrainConfig,
    sizes: &[usize],
    steps_per_epoch: u64,
) -> Result<Vec<String>> {
    let mut hard = Vec::new();
    if ckpt.sizes != sizes {
        hard.push(format!(
            "model shape: layer widths {:?} in the checkpoint, {sizes:?} in the configuration",
            ckpt.sizes
        ));
    }
    if ckpt.trainer.steps_per_epoch != steps_per_epoch {
        hard.push(format!(
            "steps per epoch: {} in the checkpoint, {steps_per_epoch} with this data and batch",
            ckpt.trainer.steps_per_epoch
        ));
    }
    let table = |c: &TrainConfig| -> Result<toml::Table> {
        toml::from_str(&c.to_toml()?).map_err(|e| RiglError::invalid(format!("config: {e}")))
    };
    let (old, new) = (table(&ckpt.config)?, table(cfg)?);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut soft = Vec::new();
    for k in keys {
        let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        let (a, b) = (old.get(k), new.get(k));
        if a != b {
            let line = format!("{k}: {} in the checkpoint, {} now", show(a), show(b));
            if FIXED_SETTINGS.contains(&k.as_str()) {
                hard.push(line);
            } else {
                soft.push(line);
            }
        }
    }
    if hard.is_empty() {
        Ok(soft)
    } else {
        Err(RiglError::invalid(format!(
            "cannot resume from {}: it differs from the configuration in {}",
            ckpt.path.display(),
            hard.join("; ")
        )))
    }
}

/// Removes the lines a resumed run will write again: truncates `metrics.jsonl` to the length it
/// had at the checkpoint. A file shorter than that (its tail lost in a crash) is kept as it is.
pub fn truncate_metrics(path: &Path, bytes: u64) -> Result<u64> {
    let f = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(path)(e)),
    };
    let len = f.metadata().map_err(io_err(path))?.len();
    if len > bytes {
        f.set_len(bytes).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(len.min(bytes))
}

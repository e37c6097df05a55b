//! The on-disk tuning cache: every kernel choice rigl makes by timing (the GEMM variant of an
//! adapter, the per-shape `subgroup`/`texture` pick, the compressed-or-masked path of a layer) is
//! made once per adapter, driver, kernel sources and shape, and kept in
//! `$RIGL_CACHE_DIR/tuning.json` (else `$XDG_CACHE_HOME/rigl`, `$HOME/.cache/rigl` or
//! `%LOCALAPPDATA%\rigl`). So every run on a machine makes the same choices, sums in the same
//! order, and the same command gives the same bits whatever else the machine is doing.
//!
//! Two processes that measure the same entry at once agree all the same: the file is rewritten
//! under an exclusive lock (`tuning.lock`), and the first entry written wins; a process whose
//! measurement lost takes the entry on disk instead of its own. A cache that cannot be read or
//! written (no home directory, a read-only disk) only costs a measurement per process: the
//! choices are then kept in memory alone, and a run records them in its `kernels.json` (see
//! [`crate::train::kernels`]) so another run can replay them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Result, RiglError};
use crate::gpu::GpuContext;

/// File name of the cache in the cache directory.
pub const FILE: &str = "tuning.json";

static MEMO: Mutex<BTreeMap<String, serde_json::Value>> = Mutex::new(BTreeMap::new());

/// The cache directory (`$RIGL_CACHE_DIR`, `$XDG_CACHE_HOME/rigl`, `$HOME/.cache/rigl` or
/// `%LOCALAPPDATA%\rigl`), if any of them is set.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("RIGL_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("rigl")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("rigl")))
        .or_else(|| env("LOCALAPPDATA").map(|d| d.join("rigl")))
}

/// What identifies an adapter's timings: its name, driver, backend and the kernels' sources.
pub fn device_key(ctx: &GpuContext) -> String {
    format!(
        "{}|{}|{:?}|kernels {}",
        ctx.info.name,
        ctx.info.driver_info,
        ctx.info.backend,
        crate::gpu::shaders::fingerprint()
    )
}

fn read_disk(file: &std::path::Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn decode<T: DeserializeOwned>(v: &serde_json::Value) -> Option<T> {
    serde_json::from_value(v.clone()).ok()
}

/// The entry `key`: from memory, else from disk, else `measure()`d and written, unless another
/// process wrote the entry meanwhile (then that one is returned: the first written wins).
/// `measure` runs without any lock held, so it may itself look up other entries.
pub fn get_or_measure<T, F>(key: &str, measure: F) -> Result<T>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T>,
{
    let memo = |f: &mut dyn FnMut(&mut BTreeMap<String, serde_json::Value>)| {
        MEMO.lock()
            .map(|mut m| f(&mut m))
            .map_err(|_| RiglError::invalid("tuning cache poisoned"))
    };
    let mut found = None;
    memo(&mut |m| found = m.get(key).and_then(decode::<T>))?;
    if let Some(v) = found {
        return Ok(v);
    }
    let file = cache_dir().map(|d| d.join(FILE));
    if let Some(v) = file
        .as_deref()
        .and_then(|f| read_disk(f).get(key).and_then(decode::<T>))
    {
        let value = serde_json::to_value(&v).ok();
        memo(&mut |m| {
            if let Some(value) = &value {
                m.insert(key.to_string(), value.clone());
            }
        })?;
        return Ok(v);
    }
    let measured = measure()?;
    let mut value = serde_json::to_value(&measured)
        .map_err(|e| RiglError::invalid(format!("tuning entry {key}: {e}")))?;
    if let Some(winner) = file.as_deref().and_then(|f| write_first(f, key, &value)) {
        value = winner;
    }
    let out = decode::<T>(&value).unwrap_or(measured);
    memo(&mut |m| {
        m.insert(key.to_string(), value.clone());
    })?;
    Ok(out)
}

/// Under the cache's lock: the entry already on disk if there is one, else writes `value`
/// (atomically: a temporary file renamed over the old one) and returns `None`. Best effort: any
/// I/O failure returns `None` and leaves the file as it was.
fn write_first(
    file: &std::path::Path,
    key: &str,
    value: &serde_json::Value,
) -> Option<serde_json::Value> {
    let dir = file.parent()?;
    std::fs::create_dir_all(dir).ok()?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("tuning.lock"))
        .ok()?;
    lock.lock().ok()?;
    let mut map = read_disk(file);
    if let Some(existing) = map.get(key) {
        return Some(existing.clone());
    }
    map.insert(key.to_string(), value.clone());
    let text = serde_json::to_string_pretty(&map).ok()?;
    let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
    if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    // The lock is released when `lock` is dropped.
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_entry_written_wins() {
        let dir = std::env::temp_dir().join(format!("rigl-tuning-test-{}", std::process::id()));
        let file = dir.join(FILE);
        let _ = std::fs::remove_dir_all(&dir);
        let a = serde_json::json!("texture");
        let b = serde_json::json!("subgroup");
        assert_eq!(write_first(&file, "k", &a), None);
        // A second writer of the same key gets the first one's value, and the file keeps it.
        assert_eq!(write_first(&file, "k", &b), Some(a.clone()));
        assert_eq!(read_disk(&file).get("k"), Some(&a));
        // Other keys are added beside it.
        assert_eq!(write_first(&file, "j", &b), None);
        let map = read_disk(&file);
        assert_eq!((map.get("k"), map.get("j")), (Some(&a), Some(&b)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Reading (and writing small synthetic stand-ins for) the binary version of CIFAR-10.
//!
//! A CIFAR-10 directory holds `data_batch_1.bin` .. `data_batch_5.bin` (training) and
//! `test_batch.bin` (test). Each file is a sequence of 3073-byte records: one label byte (0..9)
//! and 3072 pixel bytes, the red, green and blue 32x32 planes in turn, each row-major, which is
//! already the engine's channel-major layout (feature `(c * 32 + y) * 32 + x`).
//!
//! Every malformed file is a [`RiglError`] naming the file and what is wrong with it: missing or
//! unreadable ([`RiglError::Io`]), empty, a size that is not a whole number of records, or a label
//! of 10 or more ([`RiglError::BadFile`], with the size or the record index).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::augment::per_image_standardize;
use super::{below, Dataset, TrainTest};
use crate::error::{Result, RiglError};

/// Number of classes of CIFAR-10.
pub const CIFAR10_CLASSES: usize = 10;
/// Channels of a CIFAR-10 image.
pub const CIFAR10_CHANNELS: usize = 3;
/// Rows (and columns) of a CIFAR-10 image.
pub const CIFAR10_SIDE: usize = 32;
/// Values per CIFAR-10 image (3 x 32 x 32).
pub const CIFAR10_FEATURES: usize = CIFAR10_CHANNELS * CIFAR10_SIDE * CIFAR10_SIDE;
/// Bytes per record of a CIFAR-10 batch file: one label byte and the pixels.
pub const CIFAR10_RECORD_BYTES: usize = 1 + CIFAR10_FEATURES;
/// The training batch files, in the order their records are concatenated.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";
/// The subdirectory the official archive `cifar-10-binary.tar.gz` unpacks into.
pub const CIFAR10_ARCHIVE_DIR: &str = "cifar-10-batches-bin";

const CIFAR10_HINT: &str = "a CIFAR-10 directory holds data_batch_1.bin .. data_batch_5.bin and \
     test_batch.bin (the binary version, cifar-10-binary.tar.gz)";

fn bad(path: &Path, message: impl Into<String>) -> RiglError {
    RiglError::BadFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn io_error(path: &Path, source: io::Error) -> RiglError {
    RiglError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Appends the records of one batch file to `images` (as `byte / 255`) and `labels`.
fn read_batch_file(path: &Path, images: &mut Vec<f32>, labels: &mut Vec<u32>) -> Result<()> {
    let bytes = fs::read(path).map_err(|e| {
        io_error(
            path,
            io::Error::new(
                e.kind(),
                format!("cannot read this CIFAR-10 batch file ({e}); {CIFAR10_HINT}"),
            ),
        )
    })?;
    if bytes.is_empty() {
        return Err(bad(
            path,
            format!(
                "is empty (a CIFAR-10 batch file holds records of {CIFAR10_RECORD_BYTES} bytes)"
            ),
        ));
    }
    if bytes.len() % CIFAR10_RECORD_BYTES != 0 {
        return Err(bad(
            path,
            format!(
                "has {} bytes, not a whole number of {CIFAR10_RECORD_BYTES}-byte records (1 label \
                 byte + {CIFAR10_FEATURES} pixel bytes): {} records and {} bytes left over; \
                 truncated, or not the binary version of CIFAR-10?",
                bytes.len(),
                bytes.len() / CIFAR10_RECORD_BYTES,
                bytes.len() % CIFAR10_RECORD_BYTES
            ),
        ));
    }
    let records = bytes.len() / CIFAR10_RECORD_BYTES;
    images.reserve(records * CIFAR10_FEATURES);
    labels.reserve(records);
    for (i, record) in bytes.chunks_exact(CIFAR10_RECORD_BYTES).enumerate() {
        let label = record[0];
        if usize::from(label) >= CIFAR10_CLASSES {
            return Err(bad(
                path,
                format!(
                    "record {i} (byte offset {}) has label {label}; CIFAR-10 labels are 0..{}",
                    i * CIFAR10_RECORD_BYTES,
                    CIFAR10_CLASSES - 1
                ),
            ));
        }
        labels.push(u32::from(label));
        images.extend(record[1..].iter().map(|&p| f32::from(p) / 255.0));
    }
    Ok(())
}

/// Reads batch files into one dataset and standardises every image.
fn read_set(paths: &[PathBuf]) -> Result<Dataset> {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for path in paths {
        read_batch_file(path, &mut images, &mut labels)?;
    }
    for sample in images.chunks_exact_mut(CIFAR10_FEATURES) {
        per_image_standardize(sample);
    }
    Dataset::new(images, labels, CIFAR10_FEATURES, CIFAR10_CLASSES)
}

/// The directory actually holding the batch files: `dir` itself, or its
/// [`CIFAR10_ARCHIVE_DIR`] subdirectory when only that holds them (the official archive unpacked
/// into `dir`).
fn batch_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(CIFAR10_ARCHIVE_DIR);
    if !dir.join(CIFAR10_TRAIN_FILES[0]).exists() && nested.join(CIFAR10_TRAIN_FILES[0]).is_file() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Reads the binary version of CIFAR-10 from `dir`: the five training batch files
/// ([`CIFAR10_TRAIN_FILES`], concatenated in order) and [`CIFAR10_TEST_FILE`]. When `dir` lacks
/// them but its subdirectory [`CIFAR10_ARCHIVE_DIR`] has them, they are read from there.
///
/// Pixels become `byte / 255` in `[0, 1]`, sample-major with the file's channel-major order
/// ([`CIFAR10_FEATURES`] = 3072 values per sample), with [`CIFAR10_CLASSES`] classes; then every
/// image of both sets is standardised on its own ([`per_image_standardize`]).
///
/// Errors: [`RiglError::Io`] naming the directory when it does not exist, or a file when it is
/// missing or unreadable; [`RiglError::BadFile`] naming a file that is empty, whose size is not a
/// multiple of [`CIFAR10_RECORD_BYTES`] (with the size), or with a label of 10 or more (with the
/// record index within that file).
pub fn read_cifar10(dir: &Path) -> Result<TrainTest> {
    if !dir.is_dir() {
        return Err(io_error(
            dir,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no such CIFAR-10 data directory; {CIFAR10_HINT}"),
            ),
        ));
    }
    let dir = batch_dir(dir);
    let train: Vec<PathBuf> = CIFAR10_TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
    // Check the test file exists before reading 150 MB of training data.
    let test = dir.join(CIFAR10_TEST_FILE);
    if let Some(missing) = train.iter().chain([&test]).find(|p| !p.exists()) {
        return Err(io_error(
            missing,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("missing CIFAR-10 batch file; {CIFAR10_HINT}"),
            ),
        ));
    }
    Ok(TrainTest {
        train: read_set(&train)?,
        test: read_set(&[test])?,
    })
}

/// Noise (standard deviation, in pixel units of 255) of [`write_cifar10_dir`]'s images.
pub const SYNTHETIC_CIFAR_NOISE: f32 = 40.0;

/// The pixel bytes of one synthetic image of `class` (see [`write_cifar10_dir`]).
fn synthetic_image(class: usize, rng: &mut ChaCha8Rng, out: &mut Vec<u8>) {
    // Class k: a colour (which channels are bright) and stripes of one orientation; the
    // stripes' phase varies by up to a quarter period either way, the brightness per sample.
    const COLOURS: [[f32; 3]; 5] = [
        [1.0, 0.3, 0.3],
        [0.3, 1.0, 0.3],
        [0.3, 0.3, 1.0],
        [1.0, 1.0, 0.3],
        [0.3, 1.0, 1.0],
    ];
    const FREQUENCIES: [(f32, f32); 2] = [(3.0, 0.0), (0.0, 3.0)];
    let colour = COLOURS[class % COLOURS.len()];
    let (fy, fx) = FREQUENCIES[(class / COLOURS.len()) % FREQUENCIES.len()];
    let phase = std::f32::consts::FRAC_PI_2 * (2.0 * rng.random::<f32>() - 1.0);
    let brightness = 0.6 + 0.4 * rng.random::<f32>();
    let side = CIFAR10_SIDE as f32;
    for weight in colour {
        for y in 0..CIFAR10_SIDE {
            for x in 0..CIFAR10_SIDE {
                let angle = std::f32::consts::TAU * (fy * y as f32 + fx * x as f32) / side + phase;
                let stripe = 0.5 + 0.5 * angle.sin();
                // Uniform noise with the given standard deviation (sqrt(3) * sd half-width).
                let noise = SYNTHETIC_CIFAR_NOISE * 3f32.sqrt() * (2.0 * rng.random::<f32>() - 1.0);
                let v = 30.0 + 200.0 * brightness * weight * stripe + noise;
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
}

/// The bytes of a batch file of `n` synthetic records drawn from `rng`.
fn synthetic_batch(n: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n * CIFAR10_RECORD_BYTES);
    for _ in 0..n {
        let class = below(rng, CIFAR10_CLASSES);
        bytes.push(class as u8);
        synthetic_image(class, rng, &mut bytes);
    }
    bytes
}

/// Writes a small valid CIFAR-10 directory into `dir` (created if needed): the five training
/// batch files with `train_per_file` records each and `test_batch.bin` with `test` records, of a
/// learnable synthetic task, for tests and for machines without the data set.
///
/// Class `k` has a colour (`k % 5`: red, green, blue, yellow or cyan channels bright) and stripes
/// (horizontal for `k < 5`, vertical otherwise, three periods per image) with a phase uniform
/// within a quarter period of 0 and a random brightness per image, plus uniform noise of
/// standard deviation [`SYNTHETIC_CIFAR_NOISE`] pixel levels. Labels are uniform at random. Even
/// a nearest-class-mean classifier separates the classes after per-image standardisation; random
/// crops (which shift the stripes by up to 4 of their 10.7 pixels) make it harder for it, not for
/// a small CNN. Everything derives from `seed` through
/// [`ChaCha8Rng`] (stream `i` for training file `i`, 1..=5, and stream 0 for the test file), so
/// the output is deterministic and the test file does not depend on `train_per_file`.
///
/// Errors: [`RiglError::InvalidArgument`] when `train_per_file` or `test` is zero;
/// [`RiglError::Io`] naming the directory or a file that cannot be created or written.
pub fn write_cifar10_dir(dir: &Path, train_per_file: usize, test: usize, seed: u64) -> Result<()> {
    if train_per_file == 0 || test == 0 {
        return Err(RiglError::invalid(format!(
            "a CIFAR-10 directory needs at least one record per file (got {train_per_file} per \
             training file and {test} test records)"
        )));
    }
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let rng = |stream: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        rng
    };
    for (i, name) in CIFAR10_TRAIN_FILES.iter().enumerate() {
        let path = dir.join(name);
        let bytes = synthetic_batch(train_per_file, &mut rng(i as u64 + 1));
        fs::write(&path, bytes).map_err(|e| io_error(&path, e))?;
    }
    let path = dir.join(CIFAR10_TEST_FILE);
    fs::write(&path, synthetic_batch(test, &mut rng(0))).map_err(|e| io_error(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_dir_is_deterministic_and_loads() {
        let a = tempfile::tempdir().expect("temp dir");
        let b = tempfile::tempdir().expect("temp dir");
        write_cifar10_dir(a.path(), 7, 5, 3).expect("write");
        write_cifar10_dir(b.path(), 7, 5, 3).expect("write");
        for name in CIFAR10_TRAIN_FILES.iter().chain([&CIFAR10_TEST_FILE]) {
            let x = fs::read(a.path().join(name)).expect("read");
            assert_eq!(x, fs::read(b.path().join(name)).expect("read"), "{name}");
        }
        let tt = read_cifar10(a.path()).expect("load");
        assert_eq!((tt.train.n, tt.test.n), (35, 5));
        assert_eq!(tt.train.features, CIFAR10_FEATURES);
        assert_eq!(tt.train.classes, CIFAR10_CLASSES);
        // The official archive's layout is found one level down.
        let parent = tempfile::tempdir().expect("temp dir");
        write_cifar10_dir(&parent.path().join(CIFAR10_ARCHIVE_DIR), 7, 5, 3).expect("write");
        assert_eq!(read_cifar10(parent.path()).expect("load nested"), tt);
    }

    #[test]
    fn zero_records_are_rejected() {
        let d = tempfile::tempdir().expect("temp dir");
        assert!(write_cifar10_dir(d.path(), 0, 5, 0).is_err());
        assert!(write_cifar10_dir(d.path(), 5, 0, 0).is_err());
    }
}

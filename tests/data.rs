//! Data layer tests (no GPU): the IDX reader on good and malformed files (gzip and raw), data
//! sources, the real Fashion-MNIST when installed, the synthetic task and the batcher.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flate2::write::GzEncoder;
use flate2::Compression;
use rigl::data::{
    read_idx_images, read_idx_labels, Batcher, Cursor, DataSource, Dataset, IdxFiles,
    Standardization, SyntheticSpec, DEFAULT_DATA_DIR, PAD_LABEL,
};
use rigl::RiglError;
use tempfile::TempDir;

const IMAGES: u32 = 0x0803;
const LABELS: u32 = 0x0801;

/// The bytes of an IDX file: magic, big-endian dimensions, data.
fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write temp file");
    path
}

/// 3 images of 2 x 3 pixels with values `i * 6 + k` (and 255 in the last pixel).
fn image_data() -> Vec<u8> {
    let mut px: Vec<u8> = (0..18).collect();
    px[17] = 255;
    px
}

/// Writes a valid 3-image set (images and labels 0, 2, 1) as `PREFIX-images` and `PREFIX-labels`.
fn good_pair(dir: &Path, prefix: &str, compress: bool) -> (PathBuf, PathBuf) {
    let maybe = |b: Vec<u8>| if compress { gzip(&b) } else { b };
    let images = write(
        dir,
        &format!("{prefix}-images"),
        &maybe(idx_bytes(IMAGES, &[3, 2, 3], &image_data())),
    );
    let labels = write(
        dir,
        &format!("{prefix}-labels"),
        &maybe(idx_bytes(LABELS, &[3], &[0, 2, 1])),
    );
    (images, labels)
}

/// The error message, asserting it is a `BadFile` about `path`.
fn bad_file_message(err: RiglError, path: &Path) -> String {
    let text = err.to_string();
    match &err {
        RiglError::BadFile { path: p, .. } => assert_eq!(p, &path.display().to_string(), "{text}"),
        other => panic!("expected BadFile for {}, got {other:?}", path.display()),
    }
    assert!(text.contains(&path.display().to_string()), "{text}");
    text
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "'{text}' should contain '{part}'");
    }
}

#[test]
fn idx_good_files_raw_and_gzip_load_the_same() {
    let dir = TempDir::new().unwrap();
    let (raw_i, raw_l) = good_pair(dir.path(), "raw", false);
    let (gz_i, gz_l) = good_pair(dir.path(), "gz", true);
    let raw = Dataset::from_idx(&raw_i, &raw_l, 3).unwrap();
    let gz = Dataset::from_idx(&gz_i, &gz_l, 3).unwrap();
    assert_eq!(raw, gz);
    assert_eq!((raw.n, raw.features, raw.classes), (3, 6, 3));
    assert_eq!(raw.labels, vec![0, 2, 1]);
    let expected: Vec<f32> = image_data().iter().map(|&p| p as f32 / 255.0).collect();
    assert_eq!(raw.images, expected);
    assert_eq!(raw.images[17], 1.0);
    assert_eq!(raw.sample(1), &expected[6..12]);
    assert_eq!(raw.class_counts(), vec![1, 1, 1]);

    let img = read_idx_images(&gz_i).unwrap();
    assert_eq!((img.n, img.rows, img.cols, img.features()), (3, 2, 3, 6));
    assert_eq!(img.pixels, image_data());
    assert_eq!(read_idx_labels(&raw_l).unwrap(), vec![0, 2, 1]);
}

#[test]
fn idx_compression_is_detected_from_content_not_name() {
    let dir = TempDir::new().unwrap();
    let body = idx_bytes(IMAGES, &[3, 2, 3], &image_data());
    let raw_named_gz = write(dir.path(), "raw.gz", &body);
    let gz_named_raw = write(dir.path(), "gz-idx3-ubyte", &gzip(&body));
    assert_eq!(read_idx_images(&raw_named_gz).unwrap().pixels, image_data());
    assert_eq!(read_idx_images(&gz_named_raw).unwrap().pixels, image_data());
}

#[test]
fn idx_multi_member_gzip_is_read_whole() {
    let dir = TempDir::new().unwrap();
    let body = idx_bytes(IMAGES, &[3, 2, 3], &image_data());
    let mut two = gzip(&body[..10]);
    two.extend(gzip(&body[10..]));
    let path = write(dir.path(), "two-members", &two);
    assert_eq!(read_idx_images(&path).unwrap().pixels, image_data());
}

#[test]
fn idx_wrong_magic_says_found_and_expected() {
    let dir = TempDir::new().unwrap();
    for compress in [false, true] {
        let (images, labels) = good_pair(dir.path(), &format!("m{compress}"), compress);
        // Files swapped: the labels file where images are expected, and the reverse.
        let text = bad_file_message(read_idx_images(&labels).unwrap_err(), &labels);
        assert_contains(
            &text,
            &[
                "wrong magic number 0x00000801",
                "expected 0x00000803",
                "label",
            ],
        );
        let text = bad_file_message(Dataset::from_idx(&images, &images, 3).unwrap_err(), &images);
        assert_contains(
            &text,
            &["wrong magic number 0x00000803", "expected 0x00000801"],
        );
    }
    let junk = write(dir.path(), "junk", b"PK\x03\x04 not an idx file at all");
    let text = bad_file_message(read_idx_images(&junk).unwrap_err(), &junk);
    assert_contains(
        &text,
        &["wrong magic number 0x504b0304", "expected 0x00000803"],
    );
}

#[test]
fn idx_truncated_header_says_expected_and_found_bytes() {
    let dir = TempDir::new().unwrap();
    let short_magic = write(dir.path(), "short-magic", &[0, 0]);
    let text = bad_file_message(read_idx_images(&short_magic).unwrap_err(), &short_magic);
    assert_contains(&text, &["truncated header", "expected 4 bytes", "found 2"]);

    let empty = write(dir.path(), "empty", &[]);
    let text = bad_file_message(read_idx_labels(&empty).unwrap_err(), &empty);
    assert_contains(&text, &["truncated header", "found 0"]);

    // Magic and one and a half of the three dimensions: 10 of 16 header bytes.
    let full = idx_bytes(IMAGES, &[3, 2, 3], &[]);
    for (name, bytes) in [
        ("short-dims", full[..10].to_vec()),
        ("short-dims-gz", gzip(&full[..10])),
    ] {
        let path = write(dir.path(), name, &bytes);
        let text = bad_file_message(read_idx_images(&path).unwrap_err(), &path);
        assert_contains(
            &text,
            &["truncated header", "expected 16 bytes", "found 10"],
        );
    }
}

#[test]
fn idx_truncated_data_says_expected_and_found_bytes() {
    let dir = TempDir::new().unwrap();
    let body = idx_bytes(IMAGES, &[3, 2, 3], &image_data()[..10]);
    for (name, bytes) in [("short-data", body.clone()), ("short-data-gz", gzip(&body))] {
        let path = write(dir.path(), name, &bytes);
        let text = bad_file_message(read_idx_images(&path).unwrap_err(), &path);
        assert_contains(
            &text,
            &["truncated data", "3 x 2 x 3", "need 18 bytes", "found 10"],
        );
    }
    let labels = write(
        dir.path(),
        "short-labels",
        &idx_bytes(LABELS, &[5], &[1, 2]),
    );
    let text = bad_file_message(read_idx_labels(&labels).unwrap_err(), &labels);
    assert_contains(&text, &["truncated data", "need 5 bytes", "found 2"]);
}

#[test]
fn idx_trailing_bytes_are_an_error() {
    let dir = TempDir::new().unwrap();
    let mut body = idx_bytes(IMAGES, &[3, 2, 3], &image_data());
    body.extend_from_slice(&[7, 7, 7]);
    for (name, bytes) in [("trailing", body.clone()), ("trailing-gz", gzip(&body))] {
        let path = write(dir.path(), name, &bytes);
        let text = bad_file_message(read_idx_images(&path).unwrap_err(), &path);
        assert_contains(&text, &["3 unexpected trailing bytes", "18 bytes of data"]);
    }
}

#[test]
fn idx_bad_gzip_stream_is_named() {
    let dir = TempDir::new().unwrap();
    let garbage = write(
        dir.path(),
        "garbage.gz",
        &[
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff, 0x12, 0x34,
        ],
    );
    let text = bad_file_message(read_idx_images(&garbage).unwrap_err(), &garbage);
    assert_contains(&text, &["bad gzip stream"]);

    // A valid stream cut in the middle.
    let big: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let whole = gzip(&idx_bytes(IMAGES, &[10, 20, 20], &big));
    let cut = write(dir.path(), "cut.gz", &whole[..whole.len() / 2]);
    let text = bad_file_message(read_idx_images(&cut).unwrap_err(), &cut);
    assert_contains(&text, &["bad gzip stream"]);

    // A stream whose CRC does not match.
    let mut corrupt = gzip(&idx_bytes(IMAGES, &[3, 2, 3], &image_data()));
    let crc_at = corrupt.len() - 8;
    corrupt[crc_at] ^= 0xff;
    let crc = write(dir.path(), "crc.gz", &corrupt);
    let text = bad_file_message(read_idx_images(&crc).unwrap_err(), &crc);
    assert_contains(&text, &["bad gzip stream"]);

    // Garbage after a complete gzip member.
    let mut tail = gzip(&idx_bytes(IMAGES, &[3, 2, 3], &image_data()));
    tail.extend_from_slice(b"garbage");
    let tail = write(dir.path(), "tail.gz", &tail);
    let text = bad_file_message(read_idx_images(&tail).unwrap_err(), &tail);
    assert_contains(&text, &["bad gzip stream"]);
}

#[test]
fn idx_count_mismatch_names_both_files_and_counts() {
    let dir = TempDir::new().unwrap();
    let (images, _) = good_pair(dir.path(), "a", true);
    let labels = write(
        dir.path(),
        "four-labels",
        &idx_bytes(LABELS, &[4], &[0, 1, 2, 0]),
    );
    let err = Dataset::from_idx(&images, &labels, 3).unwrap_err();
    let text = bad_file_message(err, &labels);
    assert_contains(
        &text,
        &[
            &images.display().to_string(),
            "has 4 labels",
            "has 3 images",
        ],
    );
}

#[test]
fn idx_label_out_of_range_names_index_and_value() {
    let dir = TempDir::new().unwrap();
    let (images, _) = good_pair(dir.path(), "a", false);
    let labels = write(
        dir.path(),
        "bad-label",
        &idx_bytes(LABELS, &[3], &[0, 1, 10]),
    );
    let text = bad_file_message(
        Dataset::from_idx(&images, &labels, 10).unwrap_err(),
        &labels,
    );
    assert_contains(&text, &["label 10 at index 2", "class count 10"]);
    // The same file is fine with more classes; zero classes is an argument error.
    assert_eq!(
        Dataset::from_idx(&images, &labels, 11).unwrap().labels,
        vec![0, 1, 10]
    );
    assert!(matches!(
        Dataset::from_idx(&images, &labels, 0),
        Err(RiglError::InvalidArgument(_))
    ));
}

#[test]
fn idx_zero_and_unreasonable_dimensions() {
    let dir = TempDir::new().unwrap();
    let zero = write(
        dir.path(),
        "zero",
        &gzip(&idx_bytes(IMAGES, &[0, 28, 28], &[])),
    );
    let text = bad_file_message(read_idx_images(&zero).unwrap_err(), &zero);
    assert_contains(&text, &["zero images"]);

    let zero_rows = write(
        dir.path(),
        "zero-rows",
        &idx_bytes(IMAGES, &[5, 0, 28], &[]),
    );
    let text = bad_file_message(read_idx_images(&zero_rows).unwrap_err(), &zero_rows);
    assert_contains(&text, &["zero-sized images", "0 rows x 28 columns"]);

    let no_labels = write(dir.path(), "no-labels", &idx_bytes(LABELS, &[0], &[]));
    let text = bad_file_message(read_idx_labels(&no_labels).unwrap_err(), &no_labels);
    assert_contains(&text, &["zero labels"]);

    // 65536 x 65536 x 1 bytes = 2^32: refused from the header alone, nothing allocated.
    let huge = write(
        dir.path(),
        "huge",
        &idx_bytes(IMAGES, &[65536, 65536, 1], &[1, 2, 3]),
    );
    let text = bad_file_message(read_idx_images(&huge).unwrap_err(), &huge);
    assert_contains(&text, &["unreasonable dimensions 65536 x 65536 x 1"]);
    let max = u32::MAX;
    let overflow = write(
        dir.path(),
        "overflow",
        &gzip(&idx_bytes(IMAGES, &[max, max, max], &[])),
    );
    let text = bad_file_message(read_idx_images(&overflow).unwrap_err(), &overflow);
    assert_contains(&text, &["unreasonable dimensions"]);

    // Just under the limit, but the file holds almost nothing: a truncation error, quickly.
    let liar = write(
        dir.path(),
        "liar",
        &idx_bytes(IMAGES, &[32768, 256, 256], &[0; 100]),
    );
    let text = bad_file_message(read_idx_images(&liar).unwrap_err(), &liar);
    assert_contains(
        &text,
        &["truncated data", "need 2147483648 bytes", "found 100"],
    );
}

#[test]
fn idx_missing_file_is_an_io_error_naming_it() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope-idx3-ubyte.gz");
    let err = read_idx_images(&missing).unwrap_err();
    assert!(matches!(err, RiglError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()));
}

/// Writes the four standard names (gzip or raw) of a small split into `dir`.
fn write_split(dir: &Path, compress: bool) {
    let suffix = if compress { ".gz" } else { "" };
    let maybe = |b: Vec<u8>| if compress { gzip(&b) } else { b };
    let train_px: Vec<u8> = (0..5 * 4).map(|i| i as u8 * 10).collect();
    write(
        dir,
        &format!("train-images-idx3-ubyte{suffix}"),
        &maybe(idx_bytes(IMAGES, &[5, 2, 2], &train_px)),
    );
    write(
        dir,
        &format!("train-labels-idx1-ubyte{suffix}"),
        &maybe(idx_bytes(LABELS, &[5], &[0, 1, 9, 3, 4])),
    );
    write(
        dir,
        &format!("t10k-images-idx3-ubyte{suffix}"),
        &maybe(idx_bytes(IMAGES, &[2, 2, 2], &[0, 255, 0, 255, 1, 2, 3, 4])),
    );
    write(
        dir,
        &format!("t10k-labels-idx1-ubyte{suffix}"),
        &maybe(idx_bytes(LABELS, &[2], &[7, 8])),
    );
}

#[test]
fn data_dir_accepts_gz_and_plain_names() {
    for compress in [true, false] {
        let dir = TempDir::new().unwrap();
        write_split(dir.path(), compress);
        let files = IdxFiles::in_dir(dir.path()).unwrap();
        assert_eq!(
            files.train_images.extension().is_some_and(|e| e == "gz"),
            compress
        );
        let split = DataSource::Dir(dir.path().to_path_buf()).load().unwrap();
        assert_eq!((split.train.n, split.test.n), (5, 2));
        assert_eq!((split.train.features, split.test.features), (4, 4));
        assert_eq!(split.train.classes, 10);
        assert_eq!(split.train.labels, vec![0, 1, 9, 3, 4]);
        assert_eq!(split.test.images[1], 1.0);
        assert_eq!(split.train.images[1], 10.0 / 255.0);
        let again = DataSource::Files(files).load().unwrap();
        assert_eq!(again, split);
    }
}

#[test]
fn data_dir_missing_pieces_are_named() {
    let dir = TempDir::new().unwrap();
    write_split(dir.path(), true);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let err = DataSource::Dir(dir.path().to_path_buf())
        .load()
        .unwrap_err();
    assert!(matches!(err, RiglError::Io { .. }), "{err:?}");
    assert_contains(
        &err.to_string(),
        &["t10k-labels-idx1-ubyte.gz nor t10k-labels-idx1-ubyte"],
    );

    let gone = dir.path().join("no-such-dir");
    let err = DataSource::Dir(gone.clone()).load().unwrap_err();
    assert_contains(
        &err.to_string(),
        &[&gone.display().to_string(), "no such data directory"],
    );
}

#[test]
fn data_test_images_must_match_training_size() {
    let dir = TempDir::new().unwrap();
    write_split(dir.path(), false);
    let test_images = dir.path().join("t10k-images-idx3-ubyte");
    std::fs::write(&test_images, idx_bytes(IMAGES, &[2, 1, 3], &[0; 6])).unwrap();
    let err = DataSource::Dir(dir.path().to_path_buf())
        .load()
        .unwrap_err();
    let text = bad_file_message(err, &test_images);
    assert_contains(&text, &["3 pixels", "have 4"]);
}

#[test]
fn data_source_from_flags() {
    let spec = SyntheticSpec::default();
    assert_eq!(
        DataSource::from_flags("fashion-mnist", None, spec).unwrap(),
        DataSource::FashionMnist
    );
    assert_eq!(
        DataSource::from_flags("fashion-mnist", Some(Path::new("/d")), spec).unwrap(),
        DataSource::Dir(PathBuf::from("/d"))
    );
    assert_eq!(
        DataSource::from_flags("synthetic", None, spec).unwrap(),
        DataSource::Synthetic(spec)
    );
    assert!(DataSource::from_flags("synthetic", Some(Path::new("/d")), spec).is_err());
    assert!(DataSource::from_flags("cifar", None, spec).is_err());
    assert_eq!(DataSource::default(), DataSource::FashionMnist);
}

#[test]
fn fashion_mnist_default_dir() {
    if !Path::new(DEFAULT_DATA_DIR).is_dir() {
        let err = DataSource::FashionMnist.load().unwrap_err();
        assert_contains(
            &err.to_string(),
            &[
                DEFAULT_DATA_DIR,
                "apt-get install dataset-fashion-mnist",
                "--data-dir",
                "--dataset synthetic",
            ],
        );
        println!("note: {DEFAULT_DATA_DIR} is missing; skipped the Fashion-MNIST smoke test");
        return;
    }
    let start = Instant::now();
    let split = DataSource::FashionMnist.load().unwrap();
    println!("loaded Fashion-MNIST in {:?}", start.elapsed());
    for (set, n) in [(&split.train, 60000), (&split.test, 10000)] {
        assert_eq!((set.n, set.features, set.classes), (n, 784, 10));
        assert_eq!((set.images.len(), set.labels.len()), (n * 784, n));
        assert!(set.labels.iter().all(|&l| l < 10));
        assert!(set.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert_eq!(set.images.iter().cloned().fold(0.0, f32::max), 1.0);
        assert_eq!(set.images.iter().cloned().fold(1.0, f32::min), 0.0);
        // Fashion-MNIST is balanced: 6000 / 1000 of each class.
        assert_eq!(set.class_counts(), vec![n / 10; 10]);
    }
    let s = Standardization::fit(&split.train);
    // The usual Fashion-MNIST statistics.
    assert!(
        (s.mean - 0.2860).abs() < 1e-3 && (s.std - 0.3530).abs() < 1e-3,
        "{s:?}"
    );
}

#[test]
fn standardization_uses_training_statistics() {
    let mut split = Dataset::synthetic(500, 100, 20, 4, 3).unwrap();
    let raw_test = split.test.clone();
    let s = split.standardize();
    let n = split.train.images.len() as f64;
    let mean = split.train.images.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = split
        .train
        .images
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(
        mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
        "{mean} {var}"
    );
    for (t, r) in split.test.images.iter().zip(&raw_test.images) {
        assert!((t - (r - s.mean) / s.std).abs() < 1e-6);
    }
    // Constant inputs are centred, not divided by zero.
    let flat = Dataset::new(vec![0.5; 6], vec![0, 1], 3, 2).unwrap();
    let fs = Standardization::fit(&flat);
    assert_eq!((fs.mean, fs.std), (0.5, 1.0));
}

#[test]
fn dataset_new_checks_invariants() {
    assert!(Dataset::new(vec![0.0; 6], vec![0, 1], 3, 2).is_ok());
    assert!(Dataset::new(vec![0.0; 5], vec![0, 1], 3, 2).is_err());
    assert!(Dataset::new(vec![0.0; 6], vec![0, 2], 3, 2).is_err());
    assert!(Dataset::new(vec![], vec![], 3, 2).is_err());
    assert!(Dataset::new(vec![0.0; 6], vec![0, 1], 3, 0).is_err());
}

#[test]
fn synthetic_is_deterministic_balanced_and_bounded() {
    let a = Dataset::synthetic(1003, 207, 64, 10, 42).unwrap();
    let b = Dataset::synthetic(1003, 207, 64, 10, 42).unwrap();
    assert_eq!(a, b);
    let c = Dataset::synthetic(1003, 207, 64, 10, 43).unwrap();
    assert_ne!(a.train.images, c.train.images);
    // The test set does not depend on the training set's size.
    let d = Dataset::synthetic(10, 207, 64, 10, 42).unwrap();
    assert_eq!(d.test, a.test);
    for (set, n) in [(&a.train, 1003), (&a.test, 207)] {
        assert_eq!((set.n, set.features, set.classes), (n, 64, 10));
        assert!(set.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
        let counts = set.class_counts();
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "{counts:?}");
        // Shuffled, not in class order.
        assert_ne!(set.labels[..10], (0..10).collect::<Vec<u32>>()[..]);
    }
    assert!(Dataset::synthetic(0, 10, 64, 10, 0).is_err());
    assert!(Dataset::synthetic(10, 10, 0, 10, 0).is_err());
    assert!(Dataset::synthetic(10, 10, 64, 0, 0).is_err());
}

/// Accuracy on `test` of the nearest class mean of `train`.
fn nearest_centroid_accuracy(train: &Dataset, test: &Dataset) -> f64 {
    let f = train.features;
    let mut means = vec![0.0f64; train.classes * f];
    let counts = train.class_counts();
    for i in 0..train.n {
        let c = train.labels[i] as usize;
        for (m, &v) in means[c * f..][..f].iter_mut().zip(train.sample(i)) {
            *m += v as f64 / counts[c] as f64;
        }
    }
    let correct = (0..test.n)
        .filter(|&i| {
            let x = test.sample(i);
            let dist = |c: usize| -> f64 {
                means[c * f..][..f]
                    .iter()
                    .zip(x)
                    .map(|(m, &v)| (m - v as f64).powi(2))
                    .sum()
            };
            let best = (0..test.classes)
                .min_by(|&a, &b| dist(a).total_cmp(&dist(b)))
                .unwrap();
            best == test.labels[i] as usize
        })
        .count();
    correct as f64 / test.n as f64
}

#[test]
fn synthetic_is_learnable_but_not_trivial() {
    // A linear classifier (nearest class mean) does well above chance (10%) but cannot
    // separate the blends past the midpoint (about 9% of samples), whatever the number of
    // features and even from few samples.
    for (n_train, features, seed) in [(4000, 784, 0), (4000, 100, 1), (200, 784, 2)] {
        let split = Dataset::synthetic(n_train, 2000, features, 10, seed).unwrap();
        let acc = nearest_centroid_accuracy(&split.train, &split.test);
        println!("{n_train} samples of {features} features: nearest class mean {acc}");
        assert!((0.85..0.95).contains(&acc), "{features} features: {acc}");
    }
}

/// Every (epoch, batch) of `batcher` as sample-index lists.
fn epoch_batches(batcher: &mut Batcher, epoch: u64) -> Vec<Vec<u32>> {
    (0..batcher.batches_per_epoch())
        .map(|i| batcher.batch_indices(epoch, i).to_vec())
        .collect()
}

#[test]
fn batcher_training_visits_each_sample_once_per_epoch() {
    // 100 samples, batches of 10: every sample exactly once.
    let mut batcher = Batcher::for_training(100, 10, 7).unwrap();
    assert_eq!(batcher.batches_per_epoch(), 10);
    let mut orders = Vec::new();
    for epoch in 0..4 {
        let order: Vec<u32> = epoch_batches(&mut batcher, epoch).concat();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        assert_eq!(order, batcher.epoch_order(epoch));
        orders.push(order);
    }
    for i in 0..orders.len() {
        for j in i + 1..orders.len() {
            assert_ne!(orders[i], orders[j], "epochs {i} and {j}");
        }
    }

    // 103 samples: the last partial batch is dropped; 100 distinct samples per epoch.
    let mut batcher = Batcher::for_training(103, 10, 7).unwrap();
    assert_eq!(
        (batcher.batches_per_epoch(), batcher.samples_per_epoch()),
        (10, 100)
    );
    for epoch in 0..3 {
        let seen: Vec<u32> = epoch_batches(&mut batcher, epoch).concat();
        assert_eq!(seen.len(), 100);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 100);
        assert!(seen.iter().all(|&s| s < 103));
    }
}

#[test]
fn batcher_order_depends_only_on_seed_and_epoch() {
    let mut a = Batcher::for_training(1000, 32, 11).unwrap();
    let mut b = Batcher::for_training(1000, 32, 11).unwrap();
    // b jumps straight to epoch 5, without going through the earlier ones.
    let late = epoch_batches(&mut b, 5);
    for epoch in 0..=5 {
        let batches = epoch_batches(&mut a, epoch);
        if epoch == 5 {
            assert_eq!(batches, late);
        }
    }
    let mut other_seed = Batcher::for_training(1000, 32, 12).unwrap();
    assert_ne!(epoch_batches(&mut other_seed, 5), late);
    assert_eq!(
        Batcher::for_training(1000, 32, 11).unwrap().epoch_order(5),
        a.epoch_order(5)
    );
}

#[test]
fn batcher_fills_feature_major_batches() {
    let split = Dataset::synthetic(50, 10, 13, 3, 5).unwrap();
    let data = &split.train;
    let b_cap = 8;
    let mut batcher = Batcher::for_training(data.n, b_cap, 99).unwrap();
    let mut x = vec![f32::NAN; data.features * b_cap];
    let mut labels = vec![u32::MAX - 1; b_cap];
    for epoch in 0..2 {
        for i in 0..batcher.batches_per_epoch() {
            let len = batcher
                .fill_batch(data, epoch, i, &mut x, &mut labels)
                .unwrap();
            assert_eq!(len, b_cap);
            let indices = batcher.batch_indices(epoch, i).to_vec();
            for (b, &s) in indices.iter().enumerate() {
                assert_eq!(labels[b], data.labels[s as usize]);
                for f in 0..data.features {
                    assert_eq!(
                        x[f * b_cap + b],
                        data.images[s as usize * data.features + f],
                        "epoch {epoch} batch {i} column {b} feature {f}"
                    );
                }
            }
        }
    }
}

#[test]
fn batcher_evaluation_keeps_a_partial_last_batch() {
    let split = Dataset::synthetic(10, 10, 3, 2, 1).unwrap();
    let data = &split.test;
    let mut batcher = Batcher::for_evaluation(10, 4).unwrap();
    assert_eq!(batcher.batches_per_epoch(), 3);
    assert_eq!(
        (0..4).map(|i| batcher.batch_len(i)).collect::<Vec<_>>(),
        vec![4, 4, 2, 0]
    );
    let mut x = vec![f32::NAN; 3 * 4];
    let mut labels = vec![0; 4];
    let mut seen = Vec::new();
    for i in 0..3 {
        let info = batcher.next_batch(data, &mut x, &mut labels).unwrap();
        assert_eq!((info.epoch, info.batch), (0, i));
        for b in 0..info.len {
            let s = i * 4 + b; // evaluation keeps the dataset's order
            seen.push(s);
            assert_eq!(labels[b], data.labels[s]);
            for f in 0..3 {
                assert_eq!(x[f * 4 + b], data.images[s * 3 + f]);
            }
        }
        if i == 2 {
            assert_eq!(info.len, 2);
            assert_eq!(&labels[2..], &[PAD_LABEL, PAD_LABEL]);
            for f in 0..3 {
                assert_eq!(&x[f * 4 + 2..f * 4 + 4], &[0.0, 0.0]);
            }
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(batcher.cursor(), Cursor { epoch: 1, batch: 0 });
    // The second epoch is in the same order.
    assert_eq!(batcher.batch_indices(1, 0), &[0, 1, 2, 3]);
}

#[test]
fn batcher_cursor_resumes_mid_epoch() {
    let split = Dataset::synthetic(70, 10, 5, 3, 2).unwrap();
    let data = &split.train;
    let b_cap = 16; // 4 full batches per epoch, 6 samples dropped
    let mut x = vec![0.0; 5 * b_cap];
    let mut labels = vec![0; b_cap];
    let mut run = Batcher::for_training(70, b_cap, 3).unwrap();
    let mut stream = Vec::new();
    for _ in 0..11 {
        let info = run.next_batch(data, &mut x, &mut labels).unwrap();
        stream.push((info, x.clone(), labels.clone()));
    }
    assert_eq!(run.cursor(), Cursor { epoch: 2, batch: 3 });
    assert_eq!(stream[4].0.epoch, 1);
    assert_eq!(stream[4].0.batch, 0);

    // Resume from a checkpoint taken after 6 batches (epoch 1, batch 2).
    let mut resumed = Batcher::for_training(70, b_cap, 3).unwrap();
    resumed.set_cursor(Cursor { epoch: 1, batch: 2 }).unwrap();
    for expected in &stream[6..] {
        let info = resumed.next_batch(data, &mut x, &mut labels).unwrap();
        assert_eq!(
            (&info, &x, &labels),
            (&expected.0, &expected.1, &expected.2)
        );
    }
    // The end of an epoch is the start of the next; past it is an error.
    resumed.set_cursor(Cursor { epoch: 3, batch: 4 }).unwrap();
    assert_eq!(resumed.cursor(), Cursor { epoch: 4, batch: 0 });
    assert!(resumed.set_cursor(Cursor { epoch: 3, batch: 5 }).is_err());
}

#[test]
fn batcher_rejects_bad_arguments() {
    let split = Dataset::synthetic(20, 10, 4, 2, 0).unwrap();
    assert!(Batcher::for_training(0, 4, 0).is_err());
    assert!(Batcher::for_training(20, 0, 0).is_err());
    assert!(Batcher::for_training(3, 4, 0).is_err()); // no full batch
    assert!(Batcher::for_evaluation(3, 4).is_ok());
    let mut batcher = Batcher::for_training(20, 4, 0).unwrap();
    let mut x = vec![0.0; 4 * 4];
    let mut labels = vec![0; 4];
    assert!(batcher
        .fill_batch(&split.train, 0, 5, &mut x, &mut labels)
        .is_err());
    assert!(batcher
        .fill_batch(&split.test, 0, 0, &mut x, &mut labels)
        .is_err());
    assert!(batcher
        .fill_batch(&split.train, 0, 0, &mut x[..15], &mut labels)
        .is_err());
    assert!(batcher
        .fill_batch(&split.train, 0, 0, &mut x, &mut labels[..3])
        .is_err());
    assert_eq!(
        batcher
            .fill_batch(&split.train, 0, 4, &mut x, &mut labels)
            .unwrap(),
        4
    );
}

//! CIFAR-10 data tests (no GPU): the binary-format reader on the synthetic directory and on
//! malformed files, the `cifar10` data source, and augmentation inside the batcher.

use std::fs;
use std::path::{Path, PathBuf};

use rigl::data::cifar::{CIFAR10_RECORD_BYTES, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES};
use rigl::data::{
    read_cifar10, write_cifar10_dir, Augment, Batcher, Cursor, DataSource, Dataset, SyntheticSpec,
    CIFAR10_CLASSES, CIFAR10_FEATURES,
};
use rigl::RiglError;
use tempfile::TempDir;

fn synthetic_dir(train_per_file: usize, test: usize, seed: u64) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_cifar10_dir(dir.path(), train_per_file, test, seed).expect("write CIFAR-10 dir");
    dir
}

/// Per-image standardisation computed here from raw bytes, independently of the library.
fn standardized(pixels: &[u8]) -> Vec<f64> {
    let x: Vec<f64> = pixels.iter().map(|&p| f64::from(p) / 255.0).collect();
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let div = var.sqrt().max(1.0 / n.sqrt());
    x.iter().map(|v| (v - mean) / div).collect()
}

#[test]
fn round_trip_through_the_synthetic_dir() {
    let (per_file, n_test) = (4, 3);
    let dir = synthetic_dir(per_file, n_test, 11);
    let tt = read_cifar10(dir.path()).unwrap();
    assert_eq!(tt.train.n, 5 * per_file);
    assert_eq!(tt.test.n, n_test);
    for set in [&tt.train, &tt.test] {
        assert_eq!(set.features, 3072);
        assert_eq!(set.classes, 10);
        assert_eq!(set.images.len(), set.n * 3072);
    }
    // The raw bytes, files in order.
    let raw: Vec<Vec<u8>> = CIFAR10_TRAIN_FILES
        .iter()
        .map(|f| fs::read(dir.path().join(f)).unwrap())
        .collect();
    let train_records: Vec<&[u8]> = raw.iter().flat_map(|b| b.chunks_exact(3073)).collect();
    let test_raw = fs::read(dir.path().join("test_batch.bin")).unwrap();
    let test_records: Vec<&[u8]> = test_raw.chunks_exact(3073).collect();
    assert_eq!(train_records.len(), tt.train.n);
    assert_eq!(test_records.len(), tt.test.n);
    for (set, records) in [(&tt.train, &train_records), (&tt.test, &test_records)] {
        let labels: Vec<u32> = records.iter().map(|r| u32::from(r[0])).collect();
        assert_eq!(set.labels, labels);
    }
    // Standardised pixels of a few records: the first, one in the third file, the last, and a
    // test record.
    for (set, records, i) in [
        (&tt.train, &train_records, 0),
        (&tt.train, &train_records, 2 * per_file + 1),
        (&tt.train, &train_records, 5 * per_file - 1),
        (&tt.test, &test_records, 2),
    ] {
        let want = standardized(&records[i][1..]);
        let got = set.sample(i);
        for (f, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() < 1e-5,
                "record {i} feature {f}: {g} vs {w}"
            );
        }
        // Channel-major: feature (c * 32 + y) * 32 + x is byte 1 + that of the record, so the
        // order of values is the file's (spot check through a monotone map).
        let (a, b) = (records[i][1 + 5], records[i][1 + 2048 + 40]);
        assert_eq!(a.cmp(&b), got[5].partial_cmp(&got[2048 + 40]).unwrap());
    }
}

#[test]
fn synthetic_task_is_learnable_by_class_means() {
    let dir = synthetic_dir(100, 200, 5);
    let tt = read_cifar10(dir.path()).unwrap();
    let counts = tt.train.class_counts();
    assert!(
        counts.iter().all(|&c| c >= 20),
        "every class is present: {counts:?}"
    );
    let mut means = vec![0.0f64; CIFAR10_CLASSES * CIFAR10_FEATURES];
    for i in 0..tt.train.n {
        let l = tt.train.labels[i] as usize;
        for (m, &v) in means[l * CIFAR10_FEATURES..][..CIFAR10_FEATURES]
            .iter_mut()
            .zip(tt.train.sample(i))
        {
            *m += f64::from(v) / counts[l] as f64;
        }
    }
    let correct = (0..tt.test.n)
        .filter(|&i| {
            let x = tt.test.sample(i);
            let dist = |k: usize| -> f64 {
                means[k * CIFAR10_FEATURES..][..CIFAR10_FEATURES]
                    .iter()
                    .zip(x)
                    .map(|(m, &v)| (m - f64::from(v)).powi(2))
                    .sum()
            };
            let best = (0..CIFAR10_CLASSES)
                .min_by(|&a, &b| dist(a).total_cmp(&dist(b)))
                .unwrap();
            best == tt.test.labels[i] as usize
        })
        .count();
    assert!(
        correct * 10 >= tt.test.n * 9,
        "nearest class mean: {correct} of {} correct",
        tt.test.n
    );
}

/// The message of `err`, checked to name `file`.
fn message_naming(err: RiglError, file: &Path) -> String {
    let text = err.to_string();
    assert!(
        text.contains(&file.display().to_string()),
        "'{text}' should name {}",
        file.display()
    );
    text
}

#[test]
fn missing_file_is_named() {
    let dir = synthetic_dir(2, 2, 0);
    let path = dir.path().join("data_batch_3.bin");
    fs::remove_file(&path).unwrap();
    let err = read_cifar10(dir.path()).unwrap_err();
    assert!(matches!(err, RiglError::Io { .. }), "{err:?}");
    let text = message_naming(err, &path);
    assert!(text.contains("missing"), "{text}");

    let test = dir.path().join(CIFAR10_TEST_FILE);
    write_cifar10_dir(dir.path(), 2, 2, 0).unwrap();
    fs::remove_file(&test).unwrap();
    message_naming(read_cifar10(dir.path()).unwrap_err(), &test);

    let gone = dir.path().join("no-such-dir");
    let err = read_cifar10(&gone).unwrap_err();
    assert!(matches!(err, RiglError::Io { .. }), "{err:?}");
    let text = message_naming(err, &gone);
    assert!(text.contains("data_batch_1.bin"), "{text}");
}

#[test]
fn truncated_file_is_named_with_its_size() {
    let dir = synthetic_dir(3, 2, 0);
    let path = dir.path().join("data_batch_4.bin");
    let bytes = fs::read(&path).unwrap();
    let cut = bytes.len() - 100;
    fs::write(&path, &bytes[..cut]).unwrap();
    let err = read_cifar10(dir.path()).unwrap_err();
    assert!(matches!(err, RiglError::BadFile { .. }), "{err:?}");
    let text = message_naming(err, &path);
    assert!(text.contains(&cut.to_string()), "{text}");
    assert!(text.contains("3073"), "{text}");
}

#[test]
fn bad_label_is_named_with_its_record() {
    let dir = synthetic_dir(4, 5, 0);
    let path = dir.path().join(CIFAR10_TEST_FILE);
    let mut bytes = fs::read(&path).unwrap();
    bytes[3 * CIFAR10_RECORD_BYTES] = 10;
    fs::write(&path, &bytes).unwrap();
    let err = read_cifar10(dir.path()).unwrap_err();
    assert!(matches!(err, RiglError::BadFile { .. }), "{err:?}");
    let text = message_naming(err, &path);
    assert!(text.contains("record 3"), "{text}");
    assert!(text.contains("label 10"), "{text}");

    // 255 in a training file.
    write_cifar10_dir(dir.path(), 4, 5, 0).unwrap();
    let path = dir.path().join("data_batch_1.bin");
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] = 255;
    fs::write(&path, &bytes).unwrap();
    let text = message_naming(read_cifar10(dir.path()).unwrap_err(), &path);
    assert!(text.contains("record 0"), "{text}");
}

#[test]
fn empty_file_is_named() {
    let dir = synthetic_dir(2, 2, 0);
    let path = dir.path().join("data_batch_5.bin");
    fs::write(&path, b"").unwrap();
    let err = read_cifar10(dir.path()).unwrap_err();
    assert!(matches!(err, RiglError::BadFile { .. }), "{err:?}");
    let text = message_naming(err, &path);
    assert!(text.contains("empty"), "{text}");
}

#[test]
fn cifar10_data_source() {
    let spec = SyntheticSpec::default();
    let dir = synthetic_dir(2, 3, 1);
    let source = DataSource::from_flags("cifar10", Some(dir.path()), spec).unwrap();
    assert_eq!(
        source,
        DataSource::Cifar10 {
            dir: dir.path().to_path_buf()
        }
    );
    assert_eq!(source.load().unwrap(), read_cifar10(dir.path()).unwrap());
    let text = source.describe();
    assert!(text.contains("CIFAR-10"), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");

    let err = DataSource::from_flags("cifar10", None, spec).unwrap_err();
    assert!(matches!(err, RiglError::InvalidArgument(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("cifar10") && text.contains("--data-dir"),
        "{text}"
    );
    let text = DataSource::from_flags("cifar100", None, spec)
        .unwrap_err()
        .to_string();
    assert!(text.contains("cifar10 or synthetic"), "{text}");
    let missing = PathBuf::from("/nonexistent/rigl/cifar");
    let err = DataSource::Cifar10 {
        dir: missing.clone(),
    }
    .load()
    .unwrap_err();
    message_naming(err, &missing);
}

/// A dataset of `n` 3x32x32 images with distinct values, so any misplaced pixel shows.
fn distinct_images(n: usize) -> Dataset {
    let images = (0..n * CIFAR10_FEATURES).map(|v| v as f32).collect();
    let labels = (0..n).map(|i| (i % CIFAR10_CLASSES) as u32).collect();
    Dataset::new(images, labels, CIFAR10_FEATURES, CIFAR10_CLASSES).unwrap()
}

#[test]
fn augmented_batch_equals_per_sample_apply() {
    let (n, b_cap, seed) = (23, 8, 99);
    let data = distinct_images(n);
    let aug = Augment::cifar10();
    let mut plain = Batcher::for_training(n, b_cap, seed).unwrap();
    let mut batcher = Batcher::for_training(n, b_cap, seed)
        .unwrap()
        .with_augment(aug)
        .unwrap();
    assert_eq!(batcher.augment(), Some(&aug));
    assert_eq!(plain.augment(), None);
    let mut x = vec![0.0; CIFAR10_FEATURES * b_cap];
    let mut labels = vec![0; b_cap];
    let mut one = vec![0.0; CIFAR10_FEATURES];
    let mut changed = 0;
    for epoch in [0, 3] {
        for batch in 0..batcher.batches_per_epoch() {
            let len = batcher
                .fill_batch(&data, epoch, batch, &mut x, &mut labels)
                .unwrap();
            assert_eq!(len, b_cap);
            let indices = plain.batch_indices(epoch, batch).to_vec();
            for (b, &s) in indices.iter().enumerate() {
                aug.apply(data.sample(s as usize), &mut one, seed, epoch, u64::from(s));
                for (f, &v) in one.iter().enumerate() {
                    assert_eq!(x[f * b_cap + b], v, "epoch {epoch} batch {batch} slot {b}");
                }
                assert_eq!(labels[b], data.labels[s as usize]);
                changed += usize::from(one != data.sample(s as usize));
            }
        }
    }
    // Most samples are moved (only the centred unflipped crop, 1 of 162, leaves them as they are).
    assert!(changed > 30, "{changed} samples changed");
}

#[test]
fn augmented_batches_resume_exactly() {
    let (n, b_cap, seed) = (20, 4, 7);
    let data = distinct_images(n);
    let make = || {
        Batcher::for_training(n, b_cap, seed)
            .unwrap()
            .with_augment(Augment::cifar10())
            .unwrap()
    };
    let mut run = make();
    let mut x = vec![0.0; CIFAR10_FEATURES * b_cap];
    let mut labels = vec![0; b_cap];
    let mut batches = Vec::new();
    for _ in 0..12 {
        let info = run.next_batch(&data, &mut x, &mut labels).unwrap();
        batches.push((info, x.clone(), labels.clone()));
    }
    // Resume from the cursor after batch 6 (second epoch).
    let mut resumed = make();
    let info = batches[6].0;
    resumed
        .set_cursor(Cursor {
            epoch: info.epoch,
            batch: info.batch,
        })
        .unwrap();
    for (info, want_x, want_labels) in &batches[6..] {
        let got = resumed.next_batch(&data, &mut x, &mut labels).unwrap();
        assert_eq!(&got, info);
        assert_eq!(&x, want_x);
        assert_eq!(&labels, want_labels);
    }
}

#[test]
fn augmentation_must_fit_the_samples() {
    let data = distinct_images(4);
    let mut batcher = Batcher::for_training(4, 2, 0)
        .unwrap()
        .with_augment(Augment::new(1, 28, 28))
        .unwrap();
    let mut x = vec![0.0; CIFAR10_FEATURES * 2];
    let mut labels = vec![0; 2];
    let err = batcher
        .fill_batch(&data, 0, 0, &mut x, &mut labels)
        .unwrap_err();
    assert!(err.to_string().contains("3072"), "{err}");
    // Padding that reflection cannot reach is refused up front.
    let too_much = Augment {
        pad: 32,
        ..Augment::cifar10()
    };
    assert!(Batcher::for_training(4, 2, 0)
        .unwrap()
        .with_augment(too_much)
        .is_err());
}

/// An evaluation batcher over augmentable images still returns the images as they are.
#[test]
fn evaluation_batches_are_not_augmented() {
    let data = distinct_images(5);
    let mut batcher = Batcher::for_evaluation(5, 2).unwrap();
    assert_eq!(batcher.augment(), None);
    let mut x = vec![0.0; CIFAR10_FEATURES * 2];
    let mut labels = vec![0; 2];
    batcher
        .fill_batch(&data, 4, 1, &mut x, &mut labels)
        .unwrap();
    for b in 0..2 {
        for f in 0..CIFAR10_FEATURES {
            assert_eq!(x[f * 2 + b], data.sample(2 + b)[f]);
        }
    }
}

//! Data: the IDX reader, datasets on the host, the built-in synthetic task and batching.
//!
//! A [`Dataset`] keeps its inputs sample-major on the host (`images[i * features + f]`); the
//! [`Batcher`] gathers mini-batches into the engine's feature-major layout (`[features, B]`:
//! element `(f, b)` at `f * B + b`) in buffers the caller allocates once. Train and test sets come
//! from a [`DataSource`]: Debian's Fashion-MNIST (`dataset-fashion-mnist`), a directory or four
//! files in the MNIST IDX format, the binary version of CIFAR-10, or the synthetic task.
//! Image augmentation (reflection padding, random crops and flips, see [`Augment`]) is applied
//! by the [`Batcher`] while it gathers training batches, when asked to.

pub mod augment;
pub mod batch;
pub mod cifar;
pub mod idx;
pub mod source;
pub mod synthetic;

use std::path::Path;

use rand::RngCore;

pub use augment::{per_image_standardize, Augment, Choice};
pub use batch::{BatchInfo, Batcher, Cursor, PAD_LABEL};
pub use cifar::{read_cifar10, write_cifar10_dir, CIFAR10_CLASSES, CIFAR10_FEATURES};
pub use idx::{read_idx_images, read_idx_labels, IdxImages};
pub use source::{DataSource, IdxFiles, SyntheticSpec, DEFAULT_DATA_DIR, FASHION_MNIST_CLASSES};

use crate::error::{Result, RiglError};

/// A labelled classification dataset on the host.
///
/// Invariants (checked by every constructor): `n >= 1`, `features >= 1`, `classes >= 1`,
/// `images.len() == n * features`, `labels.len() == n`, every label `< classes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `n * features` inputs, sample-major: sample `i`'s feature `f` at `i * features + f`.
    pub images: Vec<f32>,
    /// `n` class labels, each below `classes`.
    pub labels: Vec<u32>,
    /// Number of samples.
    pub n: usize,
    /// Inputs per sample.
    pub features: usize,
    /// Number of classes.
    pub classes: usize,
}

/// A training set and a test set with the same features and classes.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTest {
    /// The training set.
    pub train: Dataset,
    /// The test set.
    pub test: Dataset,
}

/// A per-dataset affine standardisation `x -> (x - mean) / std`, with one mean and one standard
/// deviation over all inputs of a training set (as the usual MNIST normalisation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standardization {
    /// Mean of all inputs.
    pub mean: f32,
    /// Standard deviation of all inputs (1 when they are all equal, so that applying it only
    /// centres them).
    pub std: f32,
}

/// A uniform index in `0..n` (`n >= 1`) by multiply-shift of one `u64`, independent of the
/// range-sampling algorithms of `rand` (which may change between its versions).
pub(crate) fn below(rng: &mut impl RngCore, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

impl Dataset {
    /// A dataset from sample-major `images` and `labels`; `n` is `labels.len()`.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when an invariant of [`Dataset`] does not hold.
    pub fn new(
        images: Vec<f32>,
        labels: Vec<u32>,
        features: usize,
        classes: usize,
    ) -> Result<Dataset> {
        let n = labels.len();
        if n == 0 || features == 0 || classes == 0 {
            return Err(RiglError::invalid(format!(
                "a dataset needs at least one sample, feature and class (got {n} samples, \
                 {features} features, {classes} classes)"
            )));
        }
        if n.checked_mul(features) != Some(images.len()) {
            return Err(RiglError::invalid(format!(
                "{} input values are not {n} samples x {features} features",
                images.len()
            )));
        }
        if let Some((i, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(RiglError::invalid(format!(
                "label {label} of sample {i} is not below the class count {classes}"
            )));
        }
        Ok(Dataset {
            images,
            labels,
            n,
            features,
            classes,
        })
    }

    /// Loads an IDX image file and an IDX label file (each gzip-compressed or raw), scaling
    /// pixels to `[0, 1]` (`u8 / 255`). `features` is `rows * cols`.
    ///
    /// Errors: [`RiglError::Io`] when a file cannot be read; [`RiglError::BadFile`] when a file
    /// is malformed (see [`idx`]), when the counts of images and labels differ (naming both
    /// files), or when a label is not below `classes` (naming its index and value);
    /// [`RiglError::InvalidArgument`] when `classes` is zero.
    pub fn from_idx(
        images_path: impl AsRef<Path>,
        labels_path: impl AsRef<Path>,
        classes: usize,
    ) -> Result<Dataset> {
        let (images_path, labels_path) = (images_path.as_ref(), labels_path.as_ref());
        if classes == 0 {
            return Err(RiglError::invalid("the class count must be at least 1"));
        }
        let images = read_idx_images(images_path)?;
        let labels = read_idx_labels(labels_path)?;
        if images.n != labels.len() {
            return Err(RiglError::BadFile {
                path: labels_path.display().to_string(),
                message: format!(
                    "has {} labels but the image file {} has {} images",
                    labels.len(),
                    images_path.display(),
                    images.n
                ),
            });
        }
        if let Some((i, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(RiglError::BadFile {
                path: labels_path.display().to_string(),
                message: format!(
                    "label {label} at index {i} is not below the class count {classes}"
                ),
            });
        }
        Ok(Dataset {
            features: images.features(),
            n: images.n,
            images: images
                .pixels
                .iter()
                .map(|&p| f32::from(p) / 255.0)
                .collect(),
            labels: labels.into_iter().map(u32::from).collect(),
            classes,
        })
    }

    /// Keeps the first `n` samples (all of them when there are fewer; at least one).
    pub fn truncate(&mut self, n: usize) {
        let n = n.clamp(1, self.n);
        self.images.truncate(n * self.features);
        self.labels.truncate(n);
        self.n = n;
    }

    /// The inputs of sample `i` (`features` values). Panics when `i >= n`, like slice indexing.
    pub fn sample(&self, i: usize) -> &[f32] {
        &self.images[i * self.features..][..self.features]
    }

    /// How many samples each class has (`classes` counts).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

impl Standardization {
    /// The mean and standard deviation (population) of all inputs of `train`, computed in `f64`.
    pub fn fit(train: &Dataset) -> Standardization {
        let count = train.images.len().max(1) as f64;
        let mean = train.images.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
        let var = train
            .images
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / count;
        let std = var.sqrt();
        Standardization {
            mean: mean as f32,
            std: if std > 1e-12 { std as f32 } else { 1.0 },
        }
    }

    /// Applies `x -> (x - mean) / std` to every input of `data`.
    pub fn apply(&self, data: &mut Dataset) {
        let inv = 1.0 / self.std;
        for v in &mut data.images {
            *v = (*v - self.mean) * inv;
        }
    }
}

impl TrainTest {
    /// Standardises both sets with the statistics of the training set; returns them (to record
    /// with a model, so inference inputs can be treated the same way).
    pub fn standardize(&mut self) -> Standardization {
        let s = Standardization::fit(&self.train);
        s.apply(&mut self.train);
        s.apply(&mut self.test);
        s
    }
}

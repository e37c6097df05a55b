//! Where train and test sets come from: Debian's Fashion-MNIST, a directory or four files in the
//! IDX format, a directory of the binary version of CIFAR-10, or the built-in synthetic task.

use std::io;
use std::path::{Path, PathBuf};

use super::cifar::read_cifar10;
use super::{Dataset, TrainTest};
use crate::error::{Result, RiglError};

/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Number of classes of (Fashion-)MNIST, used for every IDX source.
pub const FASHION_MNIST_CLASSES: usize = 10;

/// The four file names (without `.gz`) looked for in a data directory: training images and
/// labels, test images and labels.
pub const IDX_FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

const INSTALL_HINT: &str = "install Fashion-MNIST with `sudo apt-get install \
     dataset-fashion-mnist`, or pass --data-dir DIR (a directory with the four MNIST IDX files), \
     or use --dataset synthetic";

/// The four IDX files of a train/test split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxFiles {
    /// Training images (`0x00000803`).
    pub train_images: PathBuf,
    /// Training labels (`0x00000801`).
    pub train_labels: PathBuf,
    /// Test images.
    pub test_images: PathBuf,
    /// Test labels.
    pub test_labels: PathBuf,
}

/// Parameters of [`Dataset::synthetic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Training samples.
    pub n_train: usize,
    /// Test samples.
    pub n_test: usize,
    /// Inputs per sample.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// Seed of everything.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    /// 8192 training and 2048 test samples shaped like Fashion-MNIST (784 features, 10 classes),
    /// seed 0.
    fn default() -> Self {
        SyntheticSpec {
            n_train: 8192,
            n_test: 2048,
            features: 784,
            classes: FASHION_MNIST_CLASSES,
            seed: 0,
        }
    }
}

/// Where to load a train/test split from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataSource {
    /// Fashion-MNIST in [`DEFAULT_DATA_DIR`].
    #[default]
    FashionMnist,
    /// The four [`IDX_FILE_NAMES`] (each with or without `.gz`) in a directory.
    Dir(PathBuf),
    /// Four explicit IDX files.
    Files(IdxFiles),
    /// The built-in synthetic task.
    Synthetic(SyntheticSpec),
    /// The binary version of CIFAR-10 in a directory (see [`read_cifar10`]): 3 x 32 x 32
    /// channel-major images, each standardised on its own, 10 classes.
    Cifar10 {
        /// The directory with `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`.
        dir: PathBuf,
    },
}

fn not_found(path: &Path, message: String) -> RiglError {
    RiglError::Io {
        path: path.display().to_string(),
        source: io::Error::new(io::ErrorKind::NotFound, message),
    }
}

impl IdxFiles {
    /// The four [`IDX_FILE_NAMES`] in `dir`, each as `NAME.gz` or else `NAME`.
    ///
    /// Errors: [`RiglError::Io`] (not found) naming the directory when it does not exist, or
    /// the file when neither name exists.
    pub fn in_dir(dir: impl AsRef<Path>) -> Result<IdxFiles> {
        find_in_dir(dir.as_ref(), None)
    }

    /// Loads both sets with `classes` classes (see [`Dataset::from_idx`]), checking that the test
    /// images have the training images' size.
    pub fn load(&self, classes: usize) -> Result<TrainTest> {
        let train = Dataset::from_idx(&self.train_images, &self.train_labels, classes)?;
        let test = Dataset::from_idx(&self.test_images, &self.test_labels, classes)?;
        if test.features != train.features {
            return Err(RiglError::BadFile {
                path: self.test_images.display().to_string(),
                message: format!(
                    "has images of {} pixels but the training images {} have {}",
                    test.features,
                    self.train_images.display(),
                    train.features
                ),
            });
        }
        Ok(TrainTest { train, test })
    }
}

fn find_in_dir(dir: &Path, hint: Option<&str>) -> Result<IdxFiles> {
    let suffix = hint.map(|h| format!("; {h}")).unwrap_or_default();
    if !dir.is_dir() {
        return Err(not_found(dir, format!("no such data directory{suffix}")));
    }
    let find = |name: &str| -> Result<PathBuf> {
        let gz = dir.join(format!("{name}.gz"));
        if gz.is_file() {
            return Ok(gz);
        }
        let raw = dir.join(name);
        if raw.is_file() {
            return Ok(raw);
        }
        Err(not_found(
            &raw,
            format!("neither {name}.gz nor {name} is in the data directory{suffix}"),
        ))
    };
    Ok(IdxFiles {
        train_images: find(IDX_FILE_NAMES[0])?,
        train_labels: find(IDX_FILE_NAMES[1])?,
        test_images: find(IDX_FILE_NAMES[2])?,
        test_labels: find(IDX_FILE_NAMES[3])?,
    })
}

impl DataSource {
    /// The source selected by command-line flags: `dataset` is `fashion-mnist` (from
    /// `data_dir`, or [`DEFAULT_DATA_DIR`] when none), `idx` (from `data_dir`), `cifar10` (from
    /// `data_dir`) or `synthetic` (shaped by `synthetic`).
    ///
    /// Errors: [`RiglError::InvalidArgument`] for another dataset name, `idx` or `cifar10`
    /// without a data directory, or a data directory given with `synthetic`.
    pub fn from_flags(
        dataset: &str,
        data_dir: Option<&Path>,
        synthetic: SyntheticSpec,
    ) -> Result<DataSource> {
        match (dataset, data_dir) {
            ("fashion-mnist" | "idx", Some(dir)) => Ok(DataSource::Dir(dir.to_path_buf())),
            ("fashion-mnist", None) => Ok(DataSource::FashionMnist),
            ("idx", None) => Err(RiglError::invalid("--dataset idx needs --data-dir DIR")),
            ("cifar10", Some(dir)) => Ok(DataSource::Cifar10 {
                dir: dir.to_path_buf(),
            }),
            ("cifar10", None) => Err(RiglError::invalid(
                "--dataset cifar10 needs --data-dir DIR, a directory with data_batch_1.bin .. \
                 data_batch_5.bin and test_batch.bin (the binary version of CIFAR-10)",
            )),
            ("synthetic", None) => Ok(DataSource::Synthetic(synthetic)),
            ("synthetic", Some(dir)) => Err(RiglError::invalid(format!(
                "--data-dir {} makes no sense with --dataset synthetic",
                dir.display()
            ))),
            (other, _) => Err(RiglError::invalid(format!(
                "unknown dataset '{other}' (expected fashion-mnist, idx, cifar10 or synthetic)"
            ))),
        }
    }

    /// Loads the training and test sets. IDX sources have [`FASHION_MNIST_CLASSES`] classes.
    ///
    /// Errors: as [`IdxFiles::in_dir`], [`IdxFiles::load`], [`read_cifar10`] and
    /// [`Dataset::synthetic`]; when
    /// [`DEFAULT_DATA_DIR`] or one of its files is missing, the message says to install
    /// `dataset-fashion-mnist` or to pass `--data-dir` or `--dataset synthetic`.
    pub fn load(&self) -> Result<TrainTest> {
        match self {
            DataSource::FashionMnist => {
                find_in_dir(Path::new(DEFAULT_DATA_DIR), Some(INSTALL_HINT))?
                    .load(FASHION_MNIST_CLASSES)
            }
            DataSource::Dir(dir) => IdxFiles::in_dir(dir)?.load(FASHION_MNIST_CLASSES),
            DataSource::Files(files) => files.load(FASHION_MNIST_CLASSES),
            DataSource::Synthetic(s) => {
                Dataset::synthetic(s.n_train, s.n_test, s.features, s.classes, s.seed)
            }
            DataSource::Cifar10 { dir } => read_cifar10(dir),
        }
    }

    /// A short description for logs (`synthetic (8192 train, ...)`, a directory, ...).
    pub fn describe(&self) -> String {
        match self {
            DataSource::FashionMnist => format!("Fashion-MNIST in {DEFAULT_DATA_DIR}"),
            DataSource::Dir(dir) => format!("IDX files in {}", dir.display()),
            DataSource::Files(f) => format!(
                "IDX files {}, {}, {}, {}",
                f.train_images.display(),
                f.train_labels.display(),
                f.test_images.display(),
                f.test_labels.display()
            ),
            DataSource::Synthetic(s) => format!(
                "synthetic ({} train, {} test, {} features, {} classes, seed {})",
                s.n_train, s.n_test, s.features, s.classes, s.seed
            ),
            DataSource::Cifar10 { dir } => format!(
                "CIFAR-10 (binary version, 3x32x32 images standardised per image) in {}",
                dir.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default directory is present on some machines, so its hint is tested on a stand-in.
    #[test]
    fn missing_default_dir_says_how_to_get_data() {
        let dir = Path::new("/nonexistent/rigl/fashion-mnist");
        let text = find_in_dir(dir, Some(INSTALL_HINT))
            .unwrap_err()
            .to_string();
        for part in [
            "/nonexistent/rigl/fashion-mnist",
            "apt-get install dataset-fashion-mnist",
            "--data-dir DIR",
            "--dataset synthetic",
        ] {
            assert!(text.contains(part), "'{text}' should contain '{part}'");
        }
    }
}

//! A small built-in classification task for machines without a dataset, and for tests.
//!
//! Each class `c` has a prototype `p_c = 0.5 + a * s_c`, with `s_c` a random sign vector; a
//! sample of class `c` is `clamp(p_c + N(0, sigma^2 I), 0, 1)`. Two prototypes lie about
//! `a * sqrt(2 * features)` apart, and `a` is chosen so that this distance is
//! `2 * SEPARATION * sigma` whatever the number of features: the classes overlap a little (the
//! best possible accuracy with 10 classes is about 95%), so a linear classifier or a small MLP
//! gets well above chance within an epoch but cannot reach 100%.
//!
//! Everything derives from the seed through [`ChaCha8Rng`]: the prototypes from stream 0, the
//! training set from stream 1 and the test set from stream 2 of `ChaCha8Rng::seed_from_u64(seed)`,
//! so the test set does not depend on the size of the training set. Labels are balanced (class
//! counts differ by at most one) and shuffled.
//!
//! With very few features (`2^features` not much above `classes`) two classes can draw the same
//! sign vector and become indistinguishable; use a few dozen features or more.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{below, Dataset, TrainTest};
use crate::error::{Result, RiglError};

/// Noise standard deviation per feature (before clamping).
pub const SYNTHETIC_NOISE_STD: f32 = 0.25;
/// Half the distance between two class prototypes, in units of the noise standard deviation.
pub const SYNTHETIC_SEPARATION: f32 = 2.5;

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A standard normal sample (Box–Muller; one of the pair is discarded for simplicity).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    // 1 - U lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn samples(
    prototypes: &[f32],
    n: usize,
    features: usize,
    classes: usize,
    mut rng: ChaCha8Rng,
) -> Result<Dataset> {
    let mut labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    for i in (1..n).rev() {
        labels.swap(i, below(&mut rng, i + 1));
    }
    let mut images = Vec::with_capacity(n * features);
    for &label in &labels {
        let p = &prototypes[label as usize * features..][..features];
        images.extend(
            p.iter()
                .map(|&v| (v + SYNTHETIC_NOISE_STD * normal(&mut rng)).clamp(0.0, 1.0)),
        );
    }
    Dataset::new(images, labels, features, classes)
}

impl Dataset {
    /// The built-in synthetic task (see the [module documentation](crate::data::synthetic)):
    /// `n_train` training and `n_test` test samples of `features` values in `[0, 1]` and
    /// `classes` balanced classes, deterministic from `seed`.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when a count is zero or the data would not fit in
    /// memory (`n * features` overflows).
    pub fn synthetic(
        n_train: usize,
        n_test: usize,
        features: usize,
        classes: usize,
        seed: u64,
    ) -> Result<TrainTest> {
        if n_train == 0 || n_test == 0 || features == 0 || classes == 0 {
            return Err(RiglError::invalid(format!(
                "synthetic data needs at least one training sample, test sample, feature and \
                 class (got n_train {n_train}, n_test {n_test}, features {features}, classes {classes})"
            )));
        }
        for n in [n_train, n_test, classes] {
            if n.checked_mul(features).is_none() || n > u32::MAX as usize {
                return Err(RiglError::invalid(format!(
                    "synthetic data of {n} x {features} values is too large"
                )));
            }
        }
        let amplitude = SYNTHETIC_SEPARATION * SYNTHETIC_NOISE_STD / (features as f32 / 2.0).sqrt();
        let mut proto_rng = rng(seed, 0);
        let prototypes: Vec<f32> = (0..classes * features)
            .map(|_| {
                let sign = if proto_rng.next_u32() & 1 == 0 {
                    -1.0
                } else {
                    1.0
                };
                (0.5 + amplitude * sign).clamp(0.0, 1.0)
            })
            .collect();
        Ok(TrainTest {
            train: samples(&prototypes, n_train, features, classes, rng(seed, 1))?,
            test: samples(&prototypes, n_test, features, classes, rng(seed, 2))?,
        })
    }
}

//! A small built-in classification task for machines without a dataset, and for tests.
//!
//! Each class `c` has a random prototype `p_c` with features uniform in `[0, 1]`. A sample of
//! class `c` blends in a random other class `c'`:
//! `clamp((1 - t) p_c + t p_c' + N(0, SYNTHETIC_NOISE_STD^2 I), 0, 1)` with `t` uniform in
//! `[0, SYNTHETIC_MAX_BLEND]`. Prototypes are far apart compared to the noise, so a linear
//! classifier or a small MLP learns the task within an epoch; but the samples with `t > 1/2`
//! (about 9%) look more like `c'` than `c`, so no classifier gets much above 91%.
//!
//! Everything derives from the seed through [`ChaCha8Rng`]: the prototypes from stream 0, the
//! training set from stream 1 and the test set from stream 2 of `ChaCha8Rng::seed_from_u64(seed)`,
//! so the test set does not depend on the size of the training set. Labels are balanced (class
//! counts differ by at most one) and shuffled.
//!
//! With very few features (a handful) the prototypes of two classes can lie close together and
//! the task gets harder; use a few dozen features or more.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{below, Dataset, TrainTest};
use crate::error::{Result, RiglError};

/// Noise standard deviation per feature (before clamping).
pub const SYNTHETIC_NOISE_STD: f32 = 0.2;
/// Largest weight of the other class's prototype in a sample.
pub const SYNTHETIC_MAX_BLEND: f32 = 0.55;

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Standard normal samples by Box–Muller, both values of each pair used.
struct Normal {
    spare: Option<f32>,
}

impl Normal {
    fn sample(&mut self, rng: &mut ChaCha8Rng) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - U lies in (0, 1], so the logarithm is finite.
        let r = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * rng.random::<f64>()).sin_cos();
        self.spare = Some((r * sin) as f32);
        (r * cos) as f32
    }
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
    let mut normal = Normal { spare: None };
    for &label in &labels {
        let c = label as usize;
        let t = SYNTHETIC_MAX_BLEND * rng.random::<f32>();
        // Another class (itself when there is only one, which makes the blend a no-op).
        let other = if classes > 1 {
            let o = below(&mut rng, classes - 1);
            o + usize::from(o >= c)
        } else {
            c
        };
        let own = &prototypes[c * features..][..features];
        let mixed = &prototypes[other * features..][..features];
        images.extend(own.iter().zip(mixed).map(|(&p, &q)| {
            ((1.0 - t) * p + t * q + SYNTHETIC_NOISE_STD * normal.sample(&mut rng)).clamp(0.0, 1.0)
        }));
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
        let mut proto_rng = rng(seed, 0);
        let prototypes: Vec<f32> = (0..classes * features)
            .map(|_| proto_rng.random::<f32>())
            .collect();
        Ok(TrainTest {
            train: samples(&prototypes, n_train, features, classes, rng(seed, 1))?,
            test: samples(&prototypes, n_test, features, classes, rng(seed, 2))?,
        })
    }
}

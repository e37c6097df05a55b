//! Image preprocessing and augmentation of the CIFAR-10 reference setting: per-image
//! standardisation, and reflection padding, a random crop and a random left-right flip.
//!
//! Images are channel-major per sample, as everywhere in the engine: feature `(c * H + y) * W + x`
//! holds channel `c`, row `y`, column `x`.
//!
//! The random choices of [`Augment::apply`] come from a counter-based hash of
//! `(seed, epoch, sample)` ([`augment_hash`]), not from a stateful generator: the choice for a
//! sample in an epoch is a pure function of those three numbers, so a run resumed from a
//! checkpoint mid-epoch (or a batch recomputed out of order) sees exactly the same pixels.

use crate::error::{Result, RiglError};

/// Standardises one sample in place as TensorFlow's `tf.image.per_image_standardization`:
/// `x -> (x - mean) / max(std, 1 / sqrt(N))` over the sample's `N` values, where `std` is the
/// population standard deviation. The `1 / sqrt(N)` floor keeps a constant (or nearly constant)
/// image finite: it is only centred and scaled by `sqrt(N)`.
///
/// The mean and variance are computed in `f64` (two passes), so the result is within `f32`
/// rounding of TensorFlow's. An empty sample is left as it is.
pub fn per_image_standardize(sample: &mut [f32]) {
    if sample.is_empty() {
        return;
    }
    let n = sample.len() as f64;
    let mean = sample.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = sample
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let scale = 1.0 / var.sqrt().max(1.0 / n.sqrt());
    for v in sample {
        *v = ((f64::from(*v) - mean) * scale) as f32;
    }
}

/// Golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// Separates the augmentation's hash from any other use of the same seed ("rigl aug" in ASCII).
const AUGMENT_DOMAIN: u64 = 0x7269_676c_2061_7567;

/// One step of SplitMix64: adds the golden-ratio increment and applies its finaliser (a
/// bijection of `u64` with full avalanche).
///
/// Hand-rolled rather than taken from `rand`: the augmentation needs a stateless hash of three
/// counters whose output is fixed forever (a checkpoint resumed by a later build must see the same
/// crops), and these five lines are the whole algorithm, with no version of a crate to track.
pub fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit hash from which [`Augment::apply`] draws a sample's choices:
///
/// ```text
/// h = splitmix64(splitmix64(splitmix64(seed ^ AUGMENT_DOMAIN) ^ epoch) ^ sample)
/// ```
///
/// with `AUGMENT_DOMAIN = 0x7269676c20617567` ("rigl aug"). Each step is a bijection of its
/// argument, so for a fixed seed two epochs never share the intermediate value, and for a fixed
/// `(seed, epoch)` two samples never share `h`.
pub fn augment_hash(seed: u64, epoch: u64, sample: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ AUGMENT_DOMAIN) ^ epoch) ^ sample)
}

/// A uniform value in `0..n` from the high bits of `r` (multiply-shift; the bias is below
/// `n / 2^64`).
fn below(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}

/// The choices of one augmented sample: crop offsets into the padded image and whether to flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Choice {
    /// Row of the crop's top-left corner in the padded image, in `0..=2 * pad`.
    pub dy: usize,
    /// Column of the crop's top-left corner in the padded image, in `0..=2 * pad`.
    pub dx: usize,
    /// Whether the crop is flipped left-right.
    pub flip: bool,
}

/// Reflection padding, random crop and random left-right flip of `c x h x w` channel-major
/// images (the CIFAR-10 reference augmentation with `pad: 4, flip: true`).
///
/// The padding reflects without repeating the edge (`tf.pad(mode='REFLECT')`, numpy's `reflect`):
/// padded row `-1` is row `1`, row `h` is row `h - 2`. It needs `pad < h` and `pad < w`
/// ([`Augment::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Augment {
    /// Channels.
    pub c: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Pixels of reflection padding on each side before cropping back to `h x w` (0: no crop).
    pub pad: usize,
    /// Whether to flip left-right with probability 1/2.
    pub flip: bool,
}

/// Reflects a padded coordinate `i` (may be negative or `>= n`, by less than `n`) into `0..n`
/// without repeating the edge.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    r as usize
}

impl Augment {
    /// The CIFAR-10 reference setting for `c x h x w` images: padding 4, random flips.
    pub fn new(c: usize, h: usize, w: usize) -> Augment {
        Augment {
            c,
            h,
            w,
            pad: 4,
            flip: true,
        }
    }

    /// The CIFAR-10 reference setting for 3 x 32 x 32 images.
    pub fn cifar10() -> Augment {
        Augment::new(3, 32, 32)
    }

    /// Values per image (`c * h * w`).
    pub fn features(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Checks that the shape is usable: no zero dimension, `pad < h` and `pad < w` (reflection
    /// does not repeat the edge, so it reaches at most `h - 1` rows out), and, when `features`
    /// is given, that images have `c * h * w` values.
    ///
    /// Errors: [`RiglError::InvalidArgument`] saying which condition fails.
    pub fn check(&self, features: Option<usize>) -> Result<()> {
        let Augment { c, h, w, pad, .. } = *self;
        if c == 0 || h == 0 || w == 0 {
            return Err(RiglError::invalid(format!(
                "augmentation of {c} x {h} x {w} images: every dimension must be at least 1"
            )));
        }
        if pad >= h || pad >= w {
            return Err(RiglError::invalid(format!(
                "reflection padding of {pad} needs images larger than {pad} x {pad} (got {h} x {w})"
            )));
        }
        let size = c.checked_mul(h).and_then(|v| v.checked_mul(w));
        if let Some(f) = features {
            if size != Some(f) {
                return Err(RiglError::invalid(format!(
                    "augmentation of {c} x {h} x {w} images does not fit samples of {f} features"
                )));
            }
        }
        Ok(())
    }

    /// The choices for sample `sample` in epoch `epoch` of a run seeded with `seed`.
    ///
    /// From `h = augment_hash(seed, epoch, sample)` ([`augment_hash`]), `r1 = splitmix64(h)`
    /// and `r2 = splitmix64(r1)`: `dy = (h * (2 pad + 1)) >> 64`, `dx = (r1 * (2 pad + 1)) >> 64`
    /// (128-bit products), and `flip` is the top bit of `r2` when [`flip`](Self::flip) is set
    /// (never flipped otherwise).
    pub fn choice(&self, seed: u64, epoch: u64, sample: u64) -> Choice {
        let h = augment_hash(seed, epoch, sample);
        let r1 = splitmix64(h);
        let r2 = splitmix64(r1);
        let span = 2 * self.pad as u64 + 1;
        Choice {
            dy: below(h, span) as usize,
            dx: below(r1, span) as usize,
            flip: self.flip && (r2 >> 63) == 1,
        }
    }

    /// Augments one image: `dst` is the `h x w` crop at offset `(choice.dy, choice.dx)` of `src`
    /// reflection-padded by `pad`, flipped left-right when `choice.flip`. Per channel,
    /// `dst[y][x] = padded[y + dy][x' + dx]` with `x' = w - 1 - x` when flipping and `x`
    /// otherwise, and `padded[i][j] = src[reflect(i - pad)][reflect(j - pad)]`.
    ///
    /// Panics when `src` or `dst` does not hold `c * h * w` values, when an offset exceeds
    /// `2 * pad`, or when `pad >= h` or `pad >= w` (see [`check`](Self::check)).
    pub fn pad_crop_flip(&self, src: &[f32], dst: &mut [f32], choice: Choice) {
        let Augment { c, h, w, pad, .. } = *self;
        let size = self.features();
        assert!(
            src.len() == size && dst.len() == size,
            "augmentation of {c} x {h} x {w} images got {} -> {} values",
            src.len(),
            dst.len()
        );
        assert!(pad < h && pad < w, "padding {pad} too large for {h} x {w}");
        assert!(
            choice.dy <= 2 * pad && choice.dx <= 2 * pad,
            "crop offset ({}, {}) past 2 * pad = {}",
            choice.dy,
            choice.dx,
            2 * pad
        );
        let (dy, dx, pad) = (choice.dy as isize, choice.dx as isize, pad as isize);
        // The source column of every output column is the same in every row and channel.
        let cols: Vec<usize> = (0..w)
            .map(|x| {
                let x = if choice.flip { w - 1 - x } else { x };
                reflect(x as isize + dx - pad, w)
            })
            .collect();
        for ch in 0..c {
            let plane = &src[ch * h * w..][..h * w];
            let out = &mut dst[ch * h * w..][..h * w];
            for (y, out_row) in out.chunks_exact_mut(w).enumerate() {
                let row = &plane[reflect(y as isize + dy - pad, h) * w..][..w];
                for (o, &sx) in out_row.iter_mut().zip(&cols) {
                    *o = row[sx];
                }
            }
        }
    }

    /// Augments one image with the choices of [`choice`](Self::choice)`(seed, epoch, sample)`
    /// (see [`pad_crop_flip`](Self::pad_crop_flip)). `sample` is the sample's index in its
    /// dataset and `epoch` the epoch of the batch it is drawn into.
    ///
    /// Panics as [`pad_crop_flip`](Self::pad_crop_flip).
    pub fn apply(&self, src: &[f32], dst: &mut [f32], seed: u64, epoch: u64, sample: u64) {
        self.pad_crop_flip(src, dst, self.choice(seed, epoch, sample));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() < 1e-5,
                "value {i}: {x} vs {y} ({a:?} vs {b:?})"
            );
        }
    }

    #[test]
    fn standardize_matches_hand_computed_values() {
        // mean 2.5, population variance 1.25, std sqrt(1.25) = 1.1180340 > 1/sqrt(4) = 0.5.
        let mut v = [1.0, 2.0, 3.0, 4.0];
        per_image_standardize(&mut v);
        let s = 1.25f64.sqrt();
        let want: Vec<f32> = [-1.5, -0.5, 0.5, 1.5]
            .iter()
            .map(|d| (d / s) as f32)
            .collect();
        close(&v, &want);
        // [0, 0, 0, 1]: mean 0.25, variance 0.1875, std 0.4330127 < 0.5, so the floor applies.
        let mut v = [0.0, 0.0, 0.0, 1.0];
        per_image_standardize(&mut v);
        close(&v, &[-0.5, -0.5, -0.5, 1.5]);
    }

    #[test]
    fn standardize_constant_image_uses_the_floor() {
        // std 0, so the divisor is 1/sqrt(9) = 1/3: (0.7 - 0.7) * 3 = 0 everywhere.
        let mut v = [0.7f32; 9];
        per_image_standardize(&mut v);
        close(&v, &[0.0; 9]);
        // One value off: mean 0.1, variance (0.64 + 8 * 0.01) / 9 = 0.08, std 0.2828 < 1/3, so
        // the result is (x - 0.1) * 3.
        let mut v = [0.0f32; 9];
        v[4] = 0.9;
        per_image_standardize(&mut v);
        let mut want = [-0.3f32; 9];
        want[4] = 2.4;
        close(&v, &want);
        let mut empty: [f32; 0] = [];
        per_image_standardize(&mut empty);
    }

    #[test]
    fn standardized_image_has_zero_mean_unit_std() {
        let mut v: Vec<f32> = (0..3072).map(|i| ((i * 37) % 255) as f32 / 255.0).collect();
        per_image_standardize(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 1e-6, "{mean}");
        assert!((var - 1.0).abs() < 1e-5, "{var}");
    }

    #[test]
    fn reflect_does_not_repeat_the_edge() {
        let got: Vec<usize> = (-2..6).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [2, 1, 0, 1, 2, 3, 2, 1]);
    }

    fn one_channel(h: usize, w: usize, pad: usize) -> Augment {
        Augment {
            c: 1,
            h,
            w,
            pad,
            flip: true,
        }
    }

    fn crop(a: &Augment, src: &[f32], dy: usize, dx: usize, flip: bool) -> Vec<f32> {
        let mut dst = vec![f32::NAN; src.len()];
        a.pad_crop_flip(src, &mut dst, Choice { dy, dx, flip });
        dst
    }

    /// 1x3x3 image, pad 1. numpy.pad(x, 1, mode='reflect') of
    /// ```text
    /// 1 2 3
    /// 4 5 6
    /// 7 8 9
    /// ```
    /// is
    /// ```text
    /// 5 4 5 6 5
    /// 2 1 2 3 2
    /// 5 4 5 6 5
    /// 8 7 8 9 8
    /// 5 4 5 6 5
    /// ```
    #[test]
    fn pad_one_on_3x3() {
        let a = one_channel(3, 3, 1);
        let src = [1., 2., 3., 4., 5., 6., 7., 8., 9.];
        // The centre crop is the image itself.
        assert_eq!(crop(&a, &src, 1, 1, false), src);
        assert_eq!(
            crop(&a, &src, 0, 0, false),
            [5., 4., 5., 2., 1., 2., 5., 4., 5.]
        );
        assert_eq!(
            crop(&a, &src, 2, 2, false),
            [5., 6., 5., 8., 9., 8., 5., 6., 5.]
        );
        assert_eq!(
            crop(&a, &src, 0, 2, false),
            [5., 6., 5., 2., 3., 2., 5., 6., 5.]
        );
        // Flipping mirrors the crop's columns.
        assert_eq!(
            crop(&a, &src, 1, 1, true),
            [3., 2., 1., 6., 5., 4., 9., 8., 7.]
        );
        assert_eq!(
            crop(&a, &src, 0, 0, true),
            [5., 4., 5., 2., 1., 2., 5., 4., 5.]
        );
        assert_eq!(
            crop(&a, &src, 2, 1, true),
            [6., 5., 4., 9., 8., 7., 6., 5., 4.]
        );
    }

    /// 1x4x4 image, pad 2. numpy.pad(x, 2, mode='reflect') of
    /// ```text
    ///  0  1  2  3
    ///  4  5  6  7
    ///  8  9 10 11
    /// 12 13 14 15
    /// ```
    /// is
    /// ```text
    /// 10  9  8  9 10 11 10  9
    ///  6  5  4  5  6  7  6  5
    ///  2  1  0  1  2  3  2  1
    ///  6  5  4  5  6  7  6  5
    /// 10  9  8  9 10 11 10  9
    /// 14 13 12 13 14 15 14 13
    /// 10  9  8  9 10 11 10  9
    ///  6  5  4  5  6  7  6  5
    /// ```
    #[test]
    fn pad_two_on_4x4() {
        let a = one_channel(4, 4, 2);
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(crop(&a, &src, 2, 2, false), src);
        assert_eq!(
            crop(&a, &src, 0, 0, false),
            [10., 9., 8., 9., 6., 5., 4., 5., 2., 1., 0., 1., 6., 5., 4., 5.]
        );
        assert_eq!(
            crop(&a, &src, 4, 4, false),
            [10., 11., 10., 9., 14., 15., 14., 13., 10., 11., 10., 9., 6., 7., 6., 5.]
        );
        assert_eq!(
            crop(&a, &src, 1, 3, false),
            [5., 6., 7., 6., 1., 2., 3., 2., 5., 6., 7., 6., 9., 10., 11., 10.]
        );
        assert_eq!(
            crop(&a, &src, 3, 1, true),
            [6., 5., 4., 5., 10., 9., 8., 9., 14., 13., 12., 13., 10., 9., 8., 9.]
        );
    }

    /// Channels are cropped and flipped alike, each from its own plane.
    #[test]
    fn channels_move_together() {
        let a = Augment {
            c: 2,
            h: 3,
            w: 3,
            pad: 1,
            flip: true,
        };
        let plane: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let src: Vec<f32> = plane
            .iter()
            .copied()
            .chain(plane.iter().map(|v| v + 100.0))
            .collect();
        let out = crop(&a, &src, 2, 1, true);
        let first = [6., 5., 4., 9., 8., 7., 6., 5., 4.];
        assert_eq!(out[..9], first);
        let second: Vec<f32> = first.iter().map(|v| v + 100.0).collect();
        assert_eq!(out[9..], second[..]);
    }

    #[test]
    fn apply_is_deterministic_and_varies_with_epoch() {
        let a = Augment::cifar10();
        let src: Vec<f32> = (0..a.features()).map(|i| (i % 97) as f32).collect();
        let (mut x, mut y) = (vec![0.0; src.len()], vec![0.0; src.len()]);
        a.apply(&src, &mut x, 7, 3, 11);
        a.apply(&src, &mut y, 7, 3, 11);
        assert_eq!(x, y);
        let c = a.choice(7, 3, 11);
        assert_eq!(x, crop(&a, &src, c.dy, c.dx, c.flip));
        // Another epoch (or seed) changes the choice of most samples: 162 possible choices, so
        // a collision has probability 1/162 per sample.
        let n = 1000;
        let same_epoch = (0..n)
            .filter(|&s| a.choice(7, 3, s) == a.choice(7, 4, s))
            .count();
        let same_seed = (0..n)
            .filter(|&s| a.choice(7, 3, s) == a.choice(8, 3, s))
            .count();
        assert!(
            same_epoch < 30,
            "{same_epoch} of {n} unchanged across epochs"
        );
        assert!(same_seed < 30, "{same_seed} of {n} unchanged across seeds");
        // Without flipping enabled, nothing is flipped.
        let no_flip = Augment { flip: false, ..a };
        assert!((0..n).all(|s| !no_flip.choice(7, 3, s).flip));
        // Without padding, the only crop is the image itself.
        let no_pad = Augment { pad: 0, ..no_flip };
        no_pad.apply(&src, &mut x, 7, 3, 11);
        assert_eq!(x, src);
    }

    /// Over 10,000 samples each of the 81 offsets and both flips appear with frequencies
    /// near uniform, and the row and column offsets are independent enough that every pair shows.
    #[test]
    fn choices_are_roughly_uniform() {
        let a = Augment::cifar10();
        let n = 10_000u64;
        let mut offsets = [[0usize; 9]; 9];
        let mut flips = 0usize;
        for s in 0..n {
            let c = a.choice(42, 5, s);
            offsets[c.dy][c.dx] += 1;
            flips += usize::from(c.flip);
        }
        // Expected 10000 / 81 = 123.5 per offset, standard deviation about 11; 60..190 is about
        // six standard deviations either way.
        for (dy, row) in offsets.iter().enumerate() {
            for (dx, &count) in row.iter().enumerate() {
                assert!(
                    (60..=190).contains(&count),
                    "offset ({dy}, {dx}) drawn {count} times of {n}"
                );
            }
        }
        // Expected 5000, standard deviation 50.
        assert!((4700..=5300).contains(&flips), "{flips} flips of {n}");
        // Marginals: 10000 / 9 = 1111 each, standard deviation about 31.
        for d in 0..9 {
            let rows: usize = offsets[d].iter().sum();
            let cols: usize = offsets.iter().map(|r| r[d]).sum();
            assert!((950..=1280).contains(&rows), "dy {d}: {rows}");
            assert!((950..=1280).contains(&cols), "dx {d}: {cols}");
        }
    }

    #[test]
    fn check_rejects_bad_shapes() {
        assert!(Augment::cifar10().check(Some(3072)).is_ok());
        assert!(Augment::cifar10().check(None).is_ok());
        let text = Augment::cifar10().check(Some(784)).unwrap_err().to_string();
        assert!(text.contains("784"), "{text}");
        assert!(Augment::new(3, 4, 32).check(None).is_err());
        assert!(Augment::new(0, 32, 32).check(None).is_err());
        assert!(Augment::new(1, 5, 5).check(Some(25)).is_ok());
    }

    #[test]
    fn splitmix64_known_values() {
        // The first outputs of SplitMix64 seeded with 0 (state advanced by GAMMA per call), as
        // in the reference implementation by Sebastiano Vigna.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(GAMMA), 0x6E78_9E6A_A1B9_65F4);
    }
}

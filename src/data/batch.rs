//! Batching: per-epoch shuffled (or ordered) mini-batches gathered into feature-major buffers.
//!
//! The order of epoch `e` is a Fisher–Yates permutation drawn from a [`ChaCha8Rng`] keyed by
//! `(seed, e)` alone, so any epoch's order can be recomputed without replaying earlier epochs:
//! a trainer resumes mid-epoch from a saved [`Cursor`]. Random indices come from a
//! multiply-shift of `next_u64` rather than `rand`'s range sampling, so orders stay the same
//! across `rand` versions.
//!
//! A training batcher may also augment images as it gathers them ([`Batcher::with_augment`]):
//! sample `s` of epoch `e` goes through [`Augment::apply`] with `(seed, e, s)`, the batcher's seed
//! and the sample's index in the dataset, so augmented batches are as reproducible and resumable
//! as the order.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::Augment;
use super::{below, Dataset};
use crate::error::{Result, RiglError};

/// Label written into the unused slots of a partial batch; never a valid class.
pub const PAD_LABEL: u32 = u32::MAX;

/// A position in the stream of batches: the next batch to be produced is batch `batch` of
/// epoch `epoch`. Saved in checkpoints to resume exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cursor {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Batch index within the epoch, from 0.
    pub batch: usize,
}

/// What [`Batcher::next_batch`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Epoch of the batch.
    pub epoch: u64,
    /// Index of the batch within its epoch.
    pub batch: usize,
    /// Number of real samples in it (the batch size, or fewer for a final partial batch).
    pub len: usize,
}

/// Produces mini-batches of a dataset of `n` samples into caller-provided buffers.
///
/// Batch `i` of an epoch holds the samples at positions `i * B .. (i + 1) * B` of that epoch's
/// order. With `drop_last`, only full batches are produced (`n / B` per epoch); without it, a
/// final partial batch of `n % B` samples is produced too.
#[derive(Debug, Clone)]
pub struct Batcher {
    n: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    drop_last: bool,
    cursor: Cursor,
    /// The order of epoch `order_epoch` (identity when not shuffling).
    order: Vec<u32>,
    order_epoch: Option<u64>,
    /// Augmentation applied to every sample gathered, if any.
    augment: Option<Augment>,
    /// One augmented sample (`features` values) while gathering with `augment`.
    scratch: Vec<f32>,
}

impl Batcher {
    /// A training batcher: shuffled every epoch from `seed`, last partial batch dropped.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when `n` or `batch_size` is zero, `n` exceeds
    /// `u32::MAX`, or `n < batch_size` (no full batch).
    pub fn for_training(n: usize, batch_size: usize, seed: u64) -> Result<Batcher> {
        Batcher::new(n, batch_size, seed, true, true)
    }

    /// An evaluation batcher: samples in order, every sample used, the last batch partial when
    /// `batch_size` does not divide `n`.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when `n` or `batch_size` is zero or `n` exceeds
    /// `u32::MAX`.
    pub fn for_evaluation(n: usize, batch_size: usize) -> Result<Batcher> {
        Batcher::new(n, batch_size, 0, false, false)
    }

    /// A batcher with every option explicit: per-epoch shuffling from `seed` when `shuffle`,
    /// and whether to drop the last partial batch.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when `n` or `batch_size` is zero, `n` exceeds
    /// `u32::MAX`, or an epoch would have no batch (`drop_last` and `n < batch_size`).
    pub fn new(
        n: usize,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        drop_last: bool,
    ) -> Result<Batcher> {
        if n == 0 || batch_size == 0 {
            return Err(RiglError::invalid(format!(
                "a batcher needs at least one sample and a batch size of at least one (got {n} \
                 samples, batch size {batch_size})"
            )));
        }
        if n > u32::MAX as usize {
            return Err(RiglError::invalid(format!(
                "{n} samples are more than a batcher indexes ({})",
                u32::MAX
            )));
        }
        if drop_last && n < batch_size {
            return Err(RiglError::invalid(format!(
                "{n} samples make no full batch of {batch_size}, and the last partial batch is \
                 dropped"
            )));
        }
        Ok(Batcher {
            n,
            batch_size,
            seed,
            shuffle,
            drop_last,
            cursor: Cursor::default(),
            order: Vec::new(),
            order_epoch: None,
            augment: None,
            scratch: Vec::new(),
        })
    }

    /// This batcher, augmenting every sample it gathers with `augment`: in
    /// [`fill_batch`](Self::fill_batch), sample `s` (its index in the dataset) of a batch of epoch
    /// `e` is written as [`Augment::apply`]`(sample, _, seed, e, s)` with the batcher's `seed`.
    /// Meant for training batchers; evaluation batchers are not given one.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when `augment`'s shape is unusable
    /// ([`Augment::check`]). That the dataset's samples have its `c * h * w` values is checked by
    /// each [`fill_batch`](Self::fill_batch).
    pub fn with_augment(mut self, augment: Augment) -> Result<Batcher> {
        augment.check(None)?;
        self.augment = Some(augment);
        Ok(self)
    }

    /// The augmentation applied while gathering, if any.
    pub fn augment(&self) -> Option<&Augment> {
        self.augment.as_ref()
    }

    /// Number of samples batched.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The batch size `B` (capacity of every batch).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Whether the order is shuffled each epoch.
    pub fn shuffles(&self) -> bool {
        self.shuffle
    }

    /// Whether the last partial batch of an epoch is dropped.
    pub fn drops_last(&self) -> bool {
        self.drop_last
    }

    /// Batches per epoch: `n / B` when dropping the last partial batch, `ceil(n / B)` otherwise.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    /// Samples used per epoch (`batches_per_epoch * B` when dropping, `n` otherwise).
    pub fn samples_per_epoch(&self) -> usize {
        if self.drop_last {
            self.batches_per_epoch() * self.batch_size
        } else {
            self.n
        }
    }

    /// Number of real samples in batch `batch` of any epoch (0 past the end of the epoch).
    pub fn batch_len(&self, batch: usize) -> usize {
        if batch >= self.batches_per_epoch() {
            return 0;
        }
        (self.n - batch * self.batch_size).min(self.batch_size)
    }

    /// The order in which epoch `epoch` visits the samples: a permutation of `0..n` (the
    /// identity when not shuffling). Depends only on `(seed, epoch)`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.n as u32).collect();
        if self.shuffle {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&self.seed.to_le_bytes());
            key[8..16].copy_from_slice(&epoch.to_le_bytes());
            key[16..32].copy_from_slice(b"rigl data batch\0");
            let mut rng = ChaCha8Rng::from_seed(key);
            for i in (1..order.len()).rev() {
                order.swap(i, below(&mut rng, i + 1));
            }
        }
        order
    }

    /// The sample indices of batch `batch` of epoch `epoch`, in batch order.
    pub fn batch_indices(&mut self, epoch: u64, batch: usize) -> &[u32] {
        self.ensure_order(epoch);
        let start = batch.saturating_mul(self.batch_size).min(self.n);
        let len = self.batch_len(batch);
        &self.order[start..start + len]
    }

    fn ensure_order(&mut self, epoch: u64) {
        if self.order_epoch != Some(epoch) && (self.shuffle || self.order_epoch.is_none()) {
            self.order = self.epoch_order(epoch);
        }
        self.order_epoch = Some(epoch);
    }

    /// Writes batch `batch` of epoch `epoch` of `data` into `x`, feature-major (`[features, B]`:
    /// sample `b`'s feature `f` at `x[f * B + b]`), and its labels into `labels`; returns the
    /// number of real samples. In a partial batch the unused columns of `x` are zero and the
    /// unused labels are [`PAD_LABEL`]. Does not move the cursor. With an augmentation
    /// ([`with_augment`](Self::with_augment)), each sample is written augmented.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when `data` does not have `n` samples, `x` is not
    /// `features * B` long, `labels` is not `B` long, `batch` is past the end of the epoch, or
    /// the augmentation's image size is not `features`.
    pub fn fill_batch(
        &mut self,
        data: &Dataset,
        epoch: u64,
        batch: usize,
        x: &mut [f32],
        labels: &mut [u32],
    ) -> Result<usize> {
        let (b_cap, features) = (self.batch_size, data.features);
        if data.n != self.n {
            return Err(RiglError::invalid(format!(
                "the batcher was made for {} samples but the dataset has {}",
                self.n, data.n
            )));
        }
        if data.labels.len() != data.n || Some(data.images.len()) != data.n.checked_mul(features) {
            return Err(RiglError::invalid(format!(
                "the dataset's {} inputs and {} labels do not match its {} samples of {features} \
                 features",
                data.images.len(),
                data.labels.len(),
                data.n
            )));
        }
        if x.len() != features * b_cap || labels.len() != b_cap {
            return Err(RiglError::invalid(format!(
                "batch buffers must hold {features} x {b_cap} inputs and {b_cap} labels, got {} \
                 and {}",
                x.len(),
                labels.len()
            )));
        }
        if batch >= self.batches_per_epoch() {
            return Err(RiglError::invalid(format!(
                "batch {batch} is past the end of an epoch of {} batches",
                self.batches_per_epoch()
            )));
        }
        if let Some(a) = &self.augment {
            a.check(Some(features))?;
            self.scratch.resize(features, 0.0);
        }
        self.ensure_order(epoch);
        let start = batch * b_cap;
        let len = self.batch_len(batch);
        let indices = &self.order[start..start + len];
        for (b, &s) in indices.iter().enumerate() {
            let mut sample = &data.images[s as usize * features..][..features];
            if let Some(a) = &self.augment {
                a.apply(sample, &mut self.scratch, self.seed, epoch, u64::from(s));
                sample = &self.scratch;
            }
            for (f, &v) in sample.iter().enumerate() {
                x[f * b_cap + b] = v;
            }
            labels[b] = data.labels[s as usize];
        }
        if len < b_cap {
            for row in x.chunks_exact_mut(b_cap) {
                row[len..].fill(0.0);
            }
            labels[len..].fill(PAD_LABEL);
        }
        Ok(len)
    }

    /// The next batch to be produced.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Moves to `cursor` (for resuming from a checkpoint). A batch index equal to
    /// [`batches_per_epoch`](Self::batches_per_epoch) means the start of the next epoch.
    ///
    /// Errors: [`RiglError::InvalidArgument`] when the batch index is past the end of an epoch.
    pub fn set_cursor(&mut self, cursor: Cursor) -> Result<()> {
        let per_epoch = self.batches_per_epoch();
        self.cursor = match cursor.batch.cmp(&per_epoch) {
            std::cmp::Ordering::Less => cursor,
            std::cmp::Ordering::Equal => Cursor {
                epoch: cursor.epoch.checked_add(1).ok_or_else(|| {
                    RiglError::invalid("the cursor's epoch is the last representable one")
                })?,
                batch: 0,
            },
            std::cmp::Ordering::Greater => {
                return Err(RiglError::invalid(format!(
                    "cursor batch {} is past the end of an epoch of {per_epoch} batches",
                    cursor.batch
                )))
            }
        };
        Ok(())
    }

    /// Fills the batch at the cursor (as [`fill_batch`](Self::fill_batch)), then advances the
    /// cursor, into the next epoch after the last batch.
    pub fn next_batch(
        &mut self,
        data: &Dataset,
        x: &mut [f32],
        labels: &mut [u32],
    ) -> Result<BatchInfo> {
        let Cursor { epoch, batch } = self.cursor;
        let len = self.fill_batch(data, epoch, batch, x, labels)?;
        self.set_cursor(Cursor {
            epoch,
            batch: batch + 1,
        })?;
        Ok(BatchInfo { epoch, batch, len })
    }
}

//! Mini-batches: [`Split::batches`], [`BatchOptions`], [`LastBatch`].

use ndarray::{Array4, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::idx::pixels_to_unit;
use super::{DataError, Split};

/// What to do with the last batch when the number of examples is not a
/// multiple of the batch size (60,000 examples in batches of 256 leave 96).
///
/// **Batch normalization and small last batches.** In training mode a
/// batch-norm layer normalizes with the statistics of the current batch. A
/// fully connected layer given a batch of one example would see variance 0
/// and turn every value into 0, so this crate's batch-norm layers refuse such
/// a batch in training with an error (as PyTorch does); a batch of two or
/// three gives very noisy statistics. [`LastBatch::Keep`] yields such a batch
/// if the numbers happen to produce one; training code that uses batch norm
/// should prefer [`LastBatch::DropIfSmallerThan`] (e.g. `2`, or half the
/// batch size) or [`LastBatch::Drop`]. [`crate::train::train`] uses
/// `DropIfSmallerThan(2)`, which keeps d2l's final batch of 96.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastBatch {
    /// Yield the last batch even if it is smaller, even if it has a single
    /// example. Every selected example is seen once per epoch. (Default, as
    /// in most textbooks' loaders.)
    #[default]
    Keep,
    /// Never yield a batch smaller than the batch size; up to
    /// `batch_size - 1` examples are skipped per epoch (different ones each
    /// epoch when shuffling).
    Drop,
    /// Yield the last batch only if it has at least this many examples.
    /// `DropIfSmallerThan(2)` removes exactly the batch-of-one case.
    DropIfSmallerThan(usize),
}

/// How to cut a [`Split`] into mini-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOptions {
    /// Shuffle with this seed (a different order each epoch), or keep the
    /// file order when `None`.
    pub shuffle_seed: Option<u64>,
    /// The epoch number; with a seed, `(seed, epoch)` determines the order.
    pub epoch: u64,
    /// Use only the first `n` examples of the split (before shuffling).
    pub limit: Option<usize>,
    /// What to do with a last, smaller batch.
    pub last_batch: LastBatch,
}

impl BatchOptions {
    /// Shuffled batches for `epoch`, with the last batch kept.
    pub fn shuffled(seed: u64, epoch: u64) -> Self {
        BatchOptions {
            shuffle_seed: Some(seed),
            epoch,
            ..BatchOptions::default()
        }
    }

    /// The order in which [`Split::batches`] visits the first `n` examples
    /// (before the last-batch policy): `0..n`, shuffled if a seed is set.
    /// Handy for replaying exactly the same epoch elsewhere.
    pub fn order(&self, n: usize) -> Vec<usize> {
        epoch_order(n, self)
    }
}

/// One mini-batch: copies of the selected images and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Images, shape `(batch, 1, 28, 28)`, values in `[0, 1]`.
    pub images: Array4<f32>,
    /// Class of each image, `0..10`, as `usize` for direct use as an index.
    pub labels: Vec<usize>,
}

impl Batch {
    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty (never the case for yielded batches).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Iterator over the mini-batches of a [`Split`]; see [`Split::batches`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    split: &'a Split,
    order: Vec<usize>,
    batch_size: usize,
    next_start: usize,
    end: usize,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next_start >= self.end {
            return None;
        }
        let stop = (self.next_start + self.batch_size).min(self.end);
        let indices = &self.order[self.next_start..stop];
        self.next_start = stop;
        Some(gather(self.split, indices))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = (self.end - self.next_start).div_ceil(self.batch_size);
        (remaining, Some(remaining))
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// Copies the examples at `indices` into a new batch.
fn gather(split: &Split, indices: &[usize]) -> Batch {
    Batch {
        images: pixels_to_unit(&split.pixels.select(Axis(0), indices)),
        labels: indices
            .iter()
            .map(|&i| usize::from(split.labels[i]))
            .collect(),
    }
}

/// The seed of the shuffle for one epoch.
///
/// `(seed, epoch)` is hashed with two rounds of SplitMix64, so every epoch
/// gets its own seed and, importantly, no epoch's shuffle reuses the random
/// stream of `StdRng::seed_from_u64(seed)` — the stream the training code
/// draws the initial weights from with the same seed.
fn epoch_seed(seed: u64, epoch: u64) -> u64 {
    splitmix64(splitmix64(seed ^ 0x0005_EED0_FDA7_A5E7) ^ epoch)
}

/// One step of the SplitMix64 generator: a fast, well-mixing 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The example indices of one epoch: `0..n`, shuffled if a seed is given.
///
/// The order is reproducible for a given `(seed, epoch)` and a given version
/// of `rand` (its `StdRng` algorithm may change between major versions).
fn epoch_order(n: usize, options: &BatchOptions) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(seed) = options.shuffle_seed {
        let mut rng = StdRng::seed_from_u64(epoch_seed(seed, options.epoch));
        order.shuffle(&mut rng);
    }
    order
}

/// How many of `n` examples are used once the last-batch policy is applied.
fn used_examples(n: usize, batch_size: usize, last_batch: LastBatch) -> usize {
    let remainder = n % batch_size;
    let drop_remainder = match last_batch {
        LastBatch::Keep => false,
        LastBatch::Drop => true,
        LastBatch::DropIfSmallerThan(min) => remainder < min,
    };
    if drop_remainder { n - remainder } else { n }
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// A new split with the first `n` examples (all of them if `n` is larger).
    pub fn head(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            pixels: self.pixels.slice_axis(Axis(0), (0..n).into()).to_owned(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// All the images as the network sees them: `f32` in `[0, 1]`, shape
    /// `(n, 1, 28, 28)`. This allocates four bytes per pixel (31 MB for the
    /// test set); training and evaluation convert one mini-batch at a time
    /// instead ([`Split::batches`]).
    pub fn images(&self) -> Array4<f32> {
        pixels_to_unit(&self.pixels)
    }

    /// Iterates over mini-batches of `batch_size` examples.
    ///
    /// * With [`BatchOptions::shuffle_seed`] the examples are visited in a
    ///   random order determined by `(seed, epoch)`: the same pair always
    ///   gives the same batches, another epoch gives another order.
    /// * [`BatchOptions::limit`] restricts the epoch to the first `n`
    ///   examples, which are then shuffled among themselves.
    /// * All batches have `batch_size` examples except possibly the last,
    ///   which [`BatchOptions::last_batch`] keeps or drops. With
    ///   [`LastBatch::Keep`] **the last batch can have a single example**,
    ///   which breaks batch normalization in training mode; see
    ///   [`LastBatch`].
    ///
    /// Each batch is a copy (a gather of the selected rows), so it can be
    /// modified or moved freely. The iterator knows its length
    /// ([`ExactSizeIterator`]), equal to [`Split::num_batches`].
    ///
    /// # Errors
    ///
    /// [`DataError::ZeroBatchSize`] if `batch_size` is 0, and
    /// [`DataError::InconsistentSplit`] if the split has a different number
    /// of images and labels.
    pub fn batches(
        &self,
        batch_size: usize,
        options: &BatchOptions,
    ) -> Result<Batches<'_>, DataError> {
        self.check_batchable(batch_size)?;
        let n = self.limited_len(options.limit);
        Ok(Batches {
            split: self,
            order: epoch_order(n, options),
            batch_size,
            next_start: 0,
            end: used_examples(n, batch_size, options.last_batch),
        })
    }

    /// The number of batches [`Split::batches`] yields with these arguments.
    ///
    /// # Errors
    ///
    /// The same as [`Split::batches`].
    pub fn num_batches(
        &self,
        batch_size: usize,
        options: &BatchOptions,
    ) -> Result<usize, DataError> {
        self.check_batchable(batch_size)?;
        let n = self.limited_len(options.limit);
        Ok(used_examples(n, batch_size, options.last_batch).div_ceil(batch_size))
    }

    /// The number of examples considered when only the first `limit` are used.
    fn limited_len(&self, limit: Option<usize>) -> usize {
        limit.map_or(self.len(), |limit| limit.min(self.len()))
    }

    /// Rejects a zero batch size and a split whose fields disagree.
    fn check_batchable(&self, batch_size: usize) -> Result<(), DataError> {
        if batch_size == 0 {
            return Err(DataError::ZeroBatchSize);
        }
        let images = self.pixels.len_of(Axis(0));
        if images != self.labels.len() {
            return Err(DataError::InconsistentSplit {
                images,
                labels: self.labels.len(),
            });
        }
        Ok(())
    }
}

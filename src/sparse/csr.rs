//! The compressed form of a sparse layer `[in, out]` (weights `w[c * out + r]`, input c, output r):
//! one slot per active weight, slots in increasing flat position, and two row indexes.
//!
//! ```text
//! pos[nnz]         flat position c * out + r of each slot (increasing)
//! fwd_slot[nnz]    the slots ordered by output row r, then input c   (forward product, SDDMM)
//! in_ptr[in + 1]   slots of input row c: in_ptr[c] .. in_ptr[c + 1]  (input-gradient product)
//! out_ptr[out + 1] entries of output row r in fwd_slot: out_ptr[r] .. out_ptr[r + 1]
//! ```
//! On the GPU the four arrays live back to back in one u32 buffer in that order
//! ([`CsrIndex::to_words`]). Values, momentum and the gradient are per slot. The slot order is the
//! flat order, so ties in the drop phase break to the lower flat index exactly as in the masked
//! layout, and the masks of both paths stay identical. The index is built here from a mask at
//! load time and rebuilt on the GPU at every mask update (`shaders/csr.wgsl`); this builder is
//! also the CPU twin of that rebuild.

use crate::error::{Result, RiglError};

/// The index of one compressed sparse layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrIndex {
    /// Input width (rows of the weight matrix `[in, out]`).
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// Flat position of each slot, increasing.
    pub pos: Vec<u32>,
    /// Slots ordered by output row, then input.
    pub fwd_slot: Vec<u32>,
    /// Slot ranges per input row.
    pub in_ptr: Vec<u32>,
    /// Ranges of `fwd_slot` per output row.
    pub out_ptr: Vec<u32>,
}

impl CsrIndex {
    /// u32 words of the GPU layout of a layer with `nnz` slots.
    pub fn words_len(in_dim: usize, out_dim: usize, nnz: usize) -> usize {
        2 * nnz + in_dim + out_dim + 2
    }

    /// Builds the index of the nonzeros of a 0/1 `mask` `[in, out]`.
    pub fn from_mask(in_dim: usize, out_dim: usize, mask: &[f32]) -> Result<Self> {
        let n = in_dim * out_dim;
        if mask.len() != n {
            return Err(RiglError::invalid(format!(
                "mask of {} values for a {in_dim}x{out_dim} layer",
                mask.len()
            )));
        }
        if n > u32::MAX as usize {
            return Err(RiglError::invalid(format!(
                "a {in_dim}x{out_dim} layer has more than 2^32 weights"
            )));
        }
        let pos: Vec<u32> = (0..n as u32).filter(|&q| mask[q as usize] != 0.0).collect();
        Ok(Self::from_positions(in_dim, out_dim, pos))
    }

    /// Builds the index from increasing flat positions.
    pub fn from_positions(in_dim: usize, out_dim: usize, pos: Vec<u32>) -> Self {
        let mut in_ptr = vec![0u32; in_dim + 1];
        let mut out_cnt = vec![0u32; out_dim + 1];
        for &q in &pos {
            in_ptr[q as usize / out_dim + 1] += 1;
            out_cnt[q as usize % out_dim + 1] += 1;
        }
        for c in 0..in_dim {
            in_ptr[c + 1] += in_ptr[c];
        }
        for r in 0..out_dim {
            out_cnt[r + 1] += out_cnt[r];
        }
        let out_ptr = out_cnt.clone();
        let mut next = out_cnt;
        let mut fwd_slot = vec![0u32; pos.len()];
        // Slots are visited in flat order, i.e. by input row: each output row gets its inputs
        // in increasing order.
        for (s, &q) in pos.iter().enumerate() {
            let r = q as usize % out_dim;
            fwd_slot[next[r] as usize] = s as u32;
            next[r] += 1;
        }
        CsrIndex {
            in_dim,
            out_dim,
            pos,
            fwd_slot,
            in_ptr,
            out_ptr,
        }
    }

    /// Active weights.
    pub fn nnz(&self) -> usize {
        self.pos.len()
    }

    /// The GPU layout: pos, fwd_slot, in_ptr, out_ptr back to back.
    pub fn to_words(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(Self::words_len(self.in_dim, self.out_dim, self.nnz()));
        v.extend(&self.pos);
        v.extend(&self.fwd_slot);
        v.extend(&self.in_ptr);
        v.extend(&self.out_ptr);
        v
    }

    /// Reads the GPU layout back (`words` may be longer: alignment padding).
    pub fn from_words(in_dim: usize, out_dim: usize, nnz: usize, words: &[u32]) -> Result<Self> {
        let need = Self::words_len(in_dim, out_dim, nnz);
        if words.len() < need {
            return Err(RiglError::invalid(format!(
                "sparse index of {} words, a {in_dim}x{out_dim} layer with {nnz} slots needs {need}",
                words.len()
            )));
        }
        let (pos, rest) = words.split_at(nnz);
        let (fwd_slot, rest) = rest.split_at(nnz);
        let (in_ptr, rest) = rest.split_at(in_dim + 1);
        let out_ptr = &rest[..out_dim + 1];
        Ok(CsrIndex {
            in_dim,
            out_dim,
            pos: pos.to_vec(),
            fwd_slot: fwd_slot.to_vec(),
            in_ptr: in_ptr.to_vec(),
            out_ptr: out_ptr.to_vec(),
        })
    }

    /// The dense 0/1 mask `[in, out]`.
    pub fn mask(&self) -> Vec<f32> {
        let mut m = vec![0.0; self.in_dim * self.out_dim];
        for &q in &self.pos {
            m[q as usize] = 1.0;
        }
        m
    }

    /// Values of a dense `[in, out]` array at the slots.
    pub fn gather(&self, dense: &[f32]) -> Vec<f32> {
        self.pos.iter().map(|&q| dense[q as usize]).collect()
    }

    /// A dense `[in, out]` array with `vals` at the slots and zeros elsewhere.
    pub fn scatter(&self, vals: &[f32]) -> Vec<f32> {
        let mut d = vec![0.0; self.in_dim * self.out_dim];
        for (&q, &v) in self.pos.iter().zip(vals) {
            d[q as usize] = v;
        }
        d
    }
}

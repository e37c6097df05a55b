//! Image geometry shared by every floor: the padding of a convolution or pooling window
//! (TensorFlow's `SAME` and `VALID`) and the window over a batch of images.

use serde::{Deserialize, Serialize};

/// Padding of a convolution or a pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// TensorFlow's `SAME`: output `ceil(H / stride)`, the extra pad at the bottom/right.
    #[default]
    Same,
    /// No padding: output `floor((H - k) / stride) + 1`.
    Valid,
}

impl Padding {
    /// Output size of a window of `k` at `stride` over `h`, or `None` when it does not fit.
    pub fn out(self, h: usize, k: usize, stride: usize) -> Option<usize> {
        match self {
            Padding::Same => Some(h.div_ceil(stride)),
            Padding::Valid => (h >= k).then(|| (h - k) / stride + 1),
        }
    }

    /// Padding before the first row (top or left) for `Same`, 0 for `Valid`.
    pub fn before(self, h: usize, k: usize, stride: usize) -> usize {
        match self {
            Padding::Valid => 0,
            Padding::Same => {
                let out = h.div_ceil(stride);
                ((out - 1) * stride + k).saturating_sub(h) / 2
            }
        }
    }
}

/// The geometry of a convolution or pooling window over a batch of images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Batch size.
    pub n: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window height and width (square).
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: Padding,
}

impl Window {
    /// Output height and width (`None` when a valid window does not fit).
    pub fn out(&self) -> Option<(usize, usize)> {
        Some((
            self.padding.out(self.h, self.k, self.stride)?,
            self.padding.out(self.w, self.k, self.stride)?,
        ))
    }

    /// Padding before the first row and column.
    pub fn pad(&self) -> (usize, usize) {
        (
            self.padding.before(self.h, self.k, self.stride),
            self.padding.before(self.w, self.k, self.stride),
        )
    }

    /// The input position `(iy, ix)` that window tap `(ky, kx)` of output `(oy, ox)` reads, if it
    /// is inside the image (not padding).
    #[inline]
    pub fn tap(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let (pt, pl) = self.pad();
        let iy = (oy * self.stride + ky).checked_sub(pt)?;
        let ix = (ox * self.stride + kx).checked_sub(pl)?;
        (iy < self.h && ix < self.w).then_some((iy, ix))
    }
}

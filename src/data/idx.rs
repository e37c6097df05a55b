//! Reading MNIST-format IDX files (images and labels), gzip-compressed or raw.
//!
//! An IDX file is a 4-byte magic number `0x00 0x00 TYPE NDIM`, then `NDIM` big-endian `u32`
//! dimension sizes, then the elements in C order. Only unsigned bytes (`TYPE = 0x08`) are read:
//! images are `0x00000803` (`n x rows x cols`), labels `0x00000801` (`n`).
//!
//! Compression is detected from the gzip magic bytes `1f 8b`, never from the file name.
//! The header is checked before any data is read, so a bogus header cannot make the reader
//! allocate gigabytes, and every problem (wrong magic, truncated header or data, trailing bytes,
//! a bad gzip stream, zero or unreasonable dimensions) is a [`RiglError::BadFile`] naming the file
//! and what is wrong. A file either loads completely or not at all.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use crate::error::{Result, RiglError};

/// Magic number of an IDX image file: unsigned bytes, 3 dimensions.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX label file: unsigned bytes, 1 dimension.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest element payload accepted, in bytes (2^31).
pub const MAX_IDX_BYTES: u64 = 1 << 31;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// At most this many trailing bytes are counted for the error message.
const TRAILING_COUNT_LIMIT: u64 = 1 << 20;

/// The contents of an IDX image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub n: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `n * rows * cols` pixels, image-major, each image row-major.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Pixels per image (`rows * cols`).
    pub fn features(&self) -> usize {
        self.rows * self.cols
    }
}

/// Reads an IDX image file (magic `0x00000803`), gzip-compressed or raw.
///
/// Errors: [`RiglError::Io`] when the file cannot be opened or read, [`RiglError::BadFile`] when
/// it is malformed (including zero images or zero-sized images).
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    let (dims, pixels) = read_idx(path, IDX_IMAGES_MAGIC)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if n == 0 {
        return Err(bad(path, "contains zero images"));
    }
    if rows == 0 || cols == 0 {
        return Err(bad(
            path,
            format!("has zero-sized images ({rows} rows x {cols} columns)"),
        ));
    }
    Ok(IdxImages {
        n,
        rows,
        cols,
        pixels,
    })
}

/// Reads an IDX label file (magic `0x00000801`), gzip-compressed or raw.
///
/// Errors as for [`read_idx_images`]; a file with zero labels is a [`RiglError::BadFile`].
/// Label values are not checked here (see [`crate::data::Dataset::from_idx`]).
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let (_, labels) = read_idx(path, IDX_LABELS_MAGIC)?;
    if labels.is_empty() {
        return Err(bad(path, "contains zero labels"));
    }
    Ok(labels)
}

fn bad(path: &Path, message: impl Into<String>) -> RiglError {
    RiglError::BadFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn describe_magic(magic: u32) -> &'static str {
    match magic {
        IDX_IMAGES_MAGIC => "IDX images: unsigned bytes, 3 dimensions",
        IDX_LABELS_MAGIC => "IDX labels: unsigned bytes, 1 dimension",
        _ => "not an unsigned-byte IDX file this reader knows",
    }
}

/// A reader over the file's (decompressed) bytes that turns read failures into typed errors.
struct Source<'a> {
    path: &'a Path,
    gzip: bool,
    inner: Box<dyn Read + 'a>,
}

impl Source<'_> {
    fn error(&self, e: io::Error) -> RiglError {
        // A corrupt or cut-off compressed stream shows up as one of these kinds; anything else is
        // a real I/O failure on the file.
        let stream_problem = matches!(
            e.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
        );
        if self.gzip && stream_problem {
            bad(self.path, format!("bad gzip stream: {e}"))
        } else {
            RiglError::Io {
                path: self.path.display().to_string(),
                source: e,
            }
        }
    }

    /// Reads until `buf` is full or the stream ends; returns how many bytes were read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(filled)
    }

    /// Reads up to `len` bytes into a new vector, growing it as data arrives.
    fn read_vec(&mut self, len: u64, capacity_hint: usize) -> Result<Vec<u8>> {
        let mut data = Vec::with_capacity(capacity_hint);
        let mut limited = (&mut self.inner).take(len);
        loop {
            match limited.read_to_end(&mut data) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(data)
    }

    /// Counts the bytes left in the stream, up to `limit`.
    fn count_rest(&mut self, limit: u64) -> Result<u64> {
        let mut limited = (&mut self.inner).take(limit);
        io::copy(&mut limited, &mut io::sink()).map_err(|e| self.error(e))
    }
}

/// Reads a whole unsigned-byte IDX file with magic `expected_magic`: its dimensions and data.
fn read_idx(path: &Path, expected_magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let io_err = |source| RiglError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map(|m| m.len()).ok();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let gzip = reader.fill_buf().map_err(io_err)?.starts_with(&GZIP_MAGIC);
    let inner: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut src = Source { path, gzip, inner };

    let mut magic_bytes = [0u8; 4];
    let got = src.read_full(&mut magic_bytes)?;
    if got < 4 {
        return Err(bad(
            path,
            format!("truncated header: expected 4 bytes of magic number, found {got}"),
        ));
    }
    let magic = u32::from_be_bytes(magic_bytes);
    if magic != expected_magic {
        let mut msg = format!(
            "wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} ({})",
            describe_magic(expected_magic)
        );
        if matches!(magic, IDX_IMAGES_MAGIC | IDX_LABELS_MAGIC) {
            msg.push_str(&format!(
                "; this looks like a file of {}",
                describe_magic(magic)
            ));
        }
        return Err(bad(path, msg));
    }

    let ndim = (expected_magic & 0xff) as usize;
    let mut dim_bytes = vec![0u8; 4 * ndim];
    let got = src.read_full(&mut dim_bytes)?;
    if got < dim_bytes.len() {
        return Err(bad(
            path,
            format!(
                "truncated header: expected {} bytes (magic number and {ndim} dimension sizes), found {}",
                4 + dim_bytes.len(),
                4 + got
            ),
        ));
    }
    let dims: Vec<u64> = dim_bytes
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let shape = dims
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" x ");
    let total = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&t| t <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            bad(
                path,
                format!("unreasonable dimensions {shape}: more than {MAX_IDX_BYTES} bytes of data"),
            )
        })?;

    let header_len = 4 + 4 * ndim as u64;
    // The hint never exceeds what a raw file can hold, so a lying header allocates nothing big.
    let hint = match (gzip, file_len) {
        (false, Some(len)) => total.min(len.saturating_sub(header_len)),
        _ => total.min(1 << 26),
    };
    let data = src.read_vec(total, hint as usize)?;
    if (data.len() as u64) < total {
        return Err(bad(
            path,
            format!(
                "truncated data: dimensions {shape} need {total} bytes after the {header_len}-byte header, found {}",
                data.len()
            ),
        ));
    }
    let trailing = src.count_rest(TRAILING_COUNT_LIMIT)?;
    if trailing > 0 {
        let amount = if trailing >= TRAILING_COUNT_LIMIT {
            format!("at least {trailing}")
        } else {
            trailing.to_string()
        };
        return Err(bad(
            path,
            format!(
                "{amount} unexpected trailing bytes after the {total} bytes of data (dimensions {shape})"
            ),
        ));
    }
    let dims = dims.into_iter().map(|d| d as usize).collect();
    Ok((dims, data))
}

//! NumPy `.npy` reading and writing and `.npz` reading and writing, without NumPy.
//!
//! Reading accepts format versions 1.0, 2.0 and 3.0, C order, any number of dimensions, and the
//! little-endian dtypes `<f4`, `<f8`, `<i4`, `<i8`, `|u1` and `|b1` (bytes 0/1). Anything else
//! (Fortran order, big-endian or other dtypes, truncated or trailing data) is a
//! [`RiglError::BadFile`] naming the path and the problem.
//!
//! Writing produces version 1.0 headers (2.0 if the header would not fit), padded to 64 bytes as
//! NumPy does, and `.npz` archives of STORED (uncompressed) entries named `NAME.npy`, with CRC-32
//! from `flate2`, a fixed 1980-01-01 timestamp (so output is deterministic), no zip64 (entries
//! and archive below 4 GiB, fewer than 65 535 entries). The archive is written to a temporary
//! file in the destination's directory and renamed over the destination only once complete, so
//! a failure leaves no partial output.
//!
//! Reading `.npz` ([`read_npz`]) accepts what `numpy.savez` and `numpy.savez_compressed` write:
//! STORED or DEFLATE entries, each a `.npy` file, without zip64 or encryption.
//!
//! Why by hand and not `npyz` (0.9, feature `npz`), measured by porting this file onto it: the
//! port kept only 55 of 763 lines out, because npyz lacks what `rigl mask-update` promises its
//! users: one-line header errors naming the problem (npyz reports a multi-line Python-literal
//! parser trace or "dict is missing key"), refusing unknown header keys (NumPy does, npyz
//! ignores them), Python 2 `3L` dimensions (NumPy reads them, npyz refuses), headers over
//! 64 KiB (npyz panics), an atomic `.npz` write (its writer truncates the destination first),
//! and per-entry size checks (its zip reader checks none). The `npz` feature also pulls 50 crates
//! into the build, among them C builds of zstd and bzip2 (2.5 minutes more of a clean build
//! here, and a C compiler), for nothing the port used but the zip reader.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, RiglError};

/// The element data of an array, in C order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`.
    F32(Vec<f32>),
    /// `<f8`.
    F64(Vec<f64>),
    /// `<i4`.
    I32(Vec<i32>),
    /// `<i8`.
    I64(Vec<i64>),
    /// `|u1`.
    U8(Vec<u8>),
    /// `|b1`.
    Bool(Vec<bool>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// NumPy's `descr` of the dtype (`<f4`, `|u1`, ...).
    pub fn descr(&self) -> &'static str {
        self.as_ref().descr()
    }

    /// A borrowed view of the data.
    pub fn as_ref(&self) -> NpyDataRef<'_> {
        match self {
            NpyData::F32(v) => NpyDataRef::F32(v),
            NpyData::F64(v) => NpyDataRef::F64(v),
            NpyData::I32(v) => NpyDataRef::I32(v),
            NpyData::I64(v) => NpyDataRef::I64(v),
            NpyData::U8(v) => NpyDataRef::U8(v),
            NpyData::Bool(v) => NpyDataRef::Bool(v),
        }
    }
}

/// Borrowed element data, for writing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NpyDataRef<'a> {
    /// `<f4`.
    F32(&'a [f32]),
    /// `<f8`.
    F64(&'a [f64]),
    /// `<i4`.
    I32(&'a [i32]),
    /// `<i8`.
    I64(&'a [i64]),
    /// `|u1`.
    U8(&'a [u8]),
    /// `|b1`.
    Bool(&'a [bool]),
}

impl NpyDataRef<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyDataRef::F32(v) => v.len(),
            NpyDataRef::F64(v) => v.len(),
            NpyDataRef::I32(v) => v.len(),
            NpyDataRef::I64(v) => v.len(),
            NpyDataRef::U8(v) => v.len(),
            NpyDataRef::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// NumPy's `descr` of the dtype.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyDataRef::F32(_) => "<f4",
            NpyDataRef::F64(_) => "<f8",
            NpyDataRef::I32(_) => "<i4",
            NpyDataRef::I64(_) => "<i8",
            NpyDataRef::U8(_) => "|u1",
            NpyDataRef::Bool(_) => "|b1",
        }
    }

    fn write_le(&self, out: &mut Vec<u8>) {
        match self {
            NpyDataRef::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            NpyDataRef::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            NpyDataRef::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            NpyDataRef::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
            NpyDataRef::U8(v) => out.extend_from_slice(v),
            NpyDataRef::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        }
    }
}

/// An n-dimensional array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// Elements in C order; `data.len() == shape.iter().product()`.
    pub data: NpyData,
}

impl NpyArray {
    /// A borrowed view, for writing.
    pub fn view(&self) -> NpyView<'_> {
        NpyView {
            shape: &self.shape,
            data: self.data.as_ref(),
        }
    }
}

/// A borrowed array, for writing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NpyView<'a> {
    /// Dimensions (empty for a scalar).
    pub shape: &'a [usize],
    /// Elements in C order.
    pub data: NpyDataRef<'a>,
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";

fn bad(path: &str, message: impl Into<String>) -> RiglError {
    RiglError::BadFile {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Reads a `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| RiglError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_npy(&bytes, &path.display().to_string())
}

/// Parses the bytes of a `.npy` file; `path` names it in errors.
pub fn parse_npy(bytes: &[u8], path: &str) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "not a .npy file (missing \\x93NUMPY magic)"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(path, "truncated .npy header"));
            }
            let l = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (l as usize, 12)
        }
        _ => {
            return Err(bad(
                path,
                format!("unsupported .npy format version {major}.{minor}"),
            ))
        }
    };
    if minor != 0 {
        return Err(bad(
            path,
            format!("unsupported .npy format version {major}.{minor}"),
        ));
    }
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(path, "truncated .npy header"))?;
    let header = &bytes[start..end];
    let header = if major == 3 {
        std::str::from_utf8(header)
            .map_err(|_| bad(path, "the .npy header is not valid UTF-8"))?
            .to_string()
    } else {
        // Versions 1 and 2 are latin-1.
        header.iter().map(|&b| char::from(b)).collect()
    };
    let h = parse_header(&header).map_err(|m| bad(path, format!("bad .npy header: {m}")))?;
    if h.fortran_order {
        return Err(bad(
            path,
            "Fortran-order arrays are not supported (save with C order)",
        ));
    }
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, format!("shape {:?} overflows", h.shape)))?;
    let item = match h.descr.as_str() {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "|b1" => 1,
        d => {
            let why = if d.starts_with('>') {
                "big-endian data is not supported"
            } else {
                "unsupported dtype"
            };
            return Err(bad(
                path,
                format!("{why}: '{d}' (supported: <f4, <f8, <i4, <i8, |u1, |b1)"),
            ));
        }
    };
    let data = &bytes[end..];
    let want = count
        .checked_mul(item)
        .ok_or_else(|| bad(path, format!("shape {:?} overflows", h.shape)))?;
    if data.len() != want {
        return Err(bad(
            path,
            format!(
                "shape {:?} of {} needs {want} data bytes, the file has {}",
                h.shape,
                h.descr,
                data.len()
            ),
        ));
    }
    let data = match h.descr.as_str() {
        "<f4" => NpyData::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "<i4" => NpyData::I32(
            data.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "<f8" => NpyData::F64(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        "<i8" => NpyData::I64(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        "|u1" => NpyData::U8(data.to_vec()),
        _ => {
            if let Some(i) = data.iter().position(|&b| b > 1) {
                return Err(bad(
                    path,
                    format!("bool element {i} has byte {}, expected 0 or 1", data[i]),
                ));
            }
            NpyData::Bool(data.iter().map(|&b| b == 1).collect())
        }
    };
    Ok(NpyArray {
        shape: h.shape,
        data,
    })
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A minimal parser of the Python dict literal of a `.npy` header.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] as char).is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let q = self.peek().ok_or("unexpected end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a string at byte {}", self.i));
        }
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err("unterminated string".into());
        }
        let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(v)
    }

    fn word(&mut self) -> String {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && ((self.s[self.i] as char).is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn shape(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.eat(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.peek() == Some(b')') {
                self.i += 1;
                return Ok(dims);
            }
            let w = self.word();
            // NumPy may write `3L` (Python 2).
            let w = w.strip_suffix('L').unwrap_or(&w);
            dims.push(
                w.parse::<usize>()
                    .map_err(|_| format!("bad shape dimension '{w}'"))?,
            );
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b')') => {}
                _ => return Err("expected ',' or ')' in shape".into()),
            }
        }
    }
}

fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let mut lx = Lexer {
        s: text.as_bytes(),
        i: 0,
    };
    lx.eat(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if lx.peek() == Some(b'}') {
            break;
        }
        let key = lx.string()?;
        lx.eat(b':')?;
        match key.as_str() {
            "descr" => {
                if lx.peek() != Some(b'\'') && lx.peek() != Some(b'"') {
                    return Err("structured dtypes are not supported".into());
                }
                descr = Some(lx.string()?);
            }
            "fortran_order" => {
                fortran = Some(match lx.word().as_str() {
                    "True" => true,
                    "False" => false,
                    w => return Err(format!("fortran_order must be True or False, got '{w}'")),
                })
            }
            "shape" => shape = Some(lx.shape()?),
            k => return Err(format!("unexpected key '{k}'")),
        }
        match lx.peek() {
            Some(b',') => lx.i += 1,
            Some(b'}') => {}
            _ => return Err("expected ',' or '}' after a value".into()),
        }
    }
    Ok(Header {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran.ok_or("missing 'fortran_order'")?,
        shape: shape.ok_or("missing 'shape'")?,
    })
}

/// The bytes of a `.npy` file holding `array` (errors if the shape does not match the data).
pub fn npy_bytes(array: NpyView<'_>) -> Result<Vec<u8>> {
    let count = array
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| RiglError::invalid(format!("shape {:?} overflows", array.shape)))?;
    if count != array.data.len() {
        return Err(RiglError::invalid(format!(
            "shape {:?} has {count} elements but the data {}",
            array.shape,
            array.data.len()
        )));
    }
    let shape = shape_string(array.shape);
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        array.data.descr()
    );
    // Pad with spaces and end with '\n' so that the data starts at a multiple of 64.
    let (version, prefix) = if dict.len() + 1 + 10 <= usize::from(u16::MAX) {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let header_len = total - prefix;
    let mut out = Vec::with_capacity(total + count * 8);
    out.extend_from_slice(MAGIC);
    out.extend([version, 0]);
    if version == 1 {
        out.extend((header_len as u16).to_le_bytes());
    } else {
        let l = u32::try_from(header_len).map_err(|_| RiglError::invalid("npy header too long"))?;
        out.extend(l.to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    array.data.write_le(&mut out);
    Ok(out)
}

/// Writes `array` to a `.npy` file (temporary file then rename, like [`write_npz`]).
pub fn write_npy(path: impl AsRef<Path>, array: NpyView<'_>) -> Result<()> {
    let bytes = npy_bytes(array)?;
    write_atomically(path.as_ref(), |f| f.write_all(&bytes))
}

/// Writes a `.npz` archive (uncompressed, as `numpy.savez`) with one `NAME.npy` entry per
/// `(NAME, array)`; `np.load(path)[NAME]` reads it back. Names must be non-empty, unique, and
/// free of `/`, `\` and NUL; a name already ending in `.npy` is kept as is.
pub fn write_npz(path: impl AsRef<Path>, entries: &[(&str, NpyView<'_>)]) -> Result<()> {
    let path = path.as_ref();
    if entries.len() >= usize::from(u16::MAX) {
        return Err(RiglError::invalid(format!(
            "{}: {} entries is too many for a zip without zip64",
            path.display(),
            entries.len()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut files = Vec::with_capacity(entries.len());
    for (name, array) in entries {
        if name.is_empty() || name.contains(['/', '\\', '\0']) {
            return Err(RiglError::invalid(format!(
                "{}: bad npz entry name '{name}'",
                path.display()
            )));
        }
        let fname = if name.ends_with(".npy") {
            name.to_string()
        } else {
            format!("{name}.npy")
        };
        if !names.insert(fname.clone()) {
            return Err(RiglError::invalid(format!(
                "{}: duplicate npz entry '{fname}'",
                path.display()
            )));
        }
        if fname.len() > usize::from(u16::MAX) {
            return Err(RiglError::invalid(format!(
                "{}: npz entry name too long",
                path.display()
            )));
        }
        let data = npy_bytes(*array)?;
        if u32::try_from(data.len()).is_err() {
            return Err(RiglError::invalid(format!(
                "{}: entry '{fname}' is over 4 GiB (zip64 is not supported)",
                path.display()
            )));
        }
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        files.push((fname, crc.sum(), data));
    }
    let archive = zip_stored(&files).ok_or_else(|| {
        RiglError::invalid(format!(
            "{}: archive over 4 GiB (zip64 is not supported)",
            path.display()
        ))
    })?;
    write_atomically(path, |f| f.write_all(&archive))
}

/// Reads a `.npz` archive (from `numpy.savez`, `numpy.savez_compressed` or [`write_npz`]): every
/// entry as `(NAME, array)` with the `.npy` suffix removed, in archive order.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, NpyArray)>> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| RiglError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_npz(&bytes, &path.display().to_string())
}

/// Parses the bytes of a `.npz` archive (see [`read_npz`]); `path` names it in errors. Entries
/// are located through the central directory, checked against their CRC-32, and parsed with
/// [`parse_npy`] (errors name `path:ENTRY`).
pub fn parse_npz(bytes: &[u8], path: &str) -> Result<Vec<(String, NpyArray)>> {
    let truncated = || bad(path, "truncated or corrupt .npz (zip) archive");
    let u16_at = |p: usize| -> Result<usize> {
        let b = bytes.get(p..p + 2).ok_or_else(truncated)?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |p: usize| -> Result<u32> {
        let b = bytes.get(p..p + 4).ok_or_else(truncated)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // The end-of-central-directory record is the last 22 bytes plus a comment of up to 64 KiB.
    let last = bytes
        .len()
        .checked_sub(22)
        .ok_or_else(|| bad(path, "not a .npz file (too short for a zip archive)"))?;
    let first = last.saturating_sub(usize::from(u16::MAX));
    let eocd = (first..=last)
        .rev()
        .find(|&p| bytes[p..p + 4] == 0x0605_4b50u32.to_le_bytes())
        .ok_or_else(|| bad(path, "not a .npz file (no zip end-of-directory record)"))?;
    let n = u16_at(eocd + 10)?;
    let cd_off = u32_at(eocd + 16)?;
    if n == usize::from(u16::MAX) || cd_off == u32::MAX {
        return Err(bad(path, "zip64 archives are not supported"));
    }
    let mut p = cd_off as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if u32_at(p)? != 0x0201_4b50 {
            return Err(truncated());
        }
        let flags = u16_at(p + 8)?;
        let method = u16_at(p + 10)?;
        let crc = u32_at(p + 16)?;
        let csize = u32_at(p + 20)? as usize;
        let usize_ = u32_at(p + 24)? as usize;
        let (nl, xl, cl) = (u16_at(p + 28)?, u16_at(p + 30)?, u16_at(p + 32)?);
        let local = u32_at(p + 42)? as usize;
        let raw_name = bytes.get(p + 46..p + 46 + nl).ok_or_else(truncated)?;
        let name = String::from_utf8_lossy(raw_name).into_owned();
        p += 46 + nl + xl + cl;
        if flags & 1 != 0 {
            return Err(bad(path, format!("entry '{name}' is encrypted")));
        }
        if u32_at(local)? != 0x0403_4b50 {
            return Err(truncated());
        }
        let start = local + 30 + u16_at(local + 26)? + u16_at(local + 28)?;
        let stored = bytes.get(start..start + csize).ok_or_else(truncated)?;
        let data = match method {
            0 => stored.to_vec(),
            8 => {
                use std::io::Read;
                let mut v = Vec::with_capacity(usize_);
                flate2::read::DeflateDecoder::new(stored)
                    .take(usize_ as u64 + 1)
                    .read_to_end(&mut v)
                    .map_err(|e| bad(path, format!("entry '{name}': bad deflate data: {e}")))?;
                v
            }
            m => {
                return Err(bad(
                    path,
                    format!("entry '{name}': unsupported zip compression method {m}"),
                ))
            }
        };
        if data.len() != usize_ {
            return Err(bad(
                path,
                format!(
                    "entry '{name}': {} bytes, the directory says {usize_}",
                    data.len()
                ),
            ));
        }
        let mut c = flate2::Crc::new();
        c.update(&data);
        if c.sum() != crc {
            return Err(bad(path, format!("entry '{name}': CRC-32 mismatch")));
        }
        let key = name
            .strip_suffix(".npy")
            .ok_or_else(|| bad(path, format!("entry '{name}' is not a .npy array")))?
            .to_string();
        let array = parse_npy(&data, &format!("{path}:{name}"))?;
        out.push((key, array));
    }
    Ok(out)
}

/// DOS date of 1980-01-01 (time 00:00:00 is 0).
const DOS_DATE: u16 = (1 << 5) | 1;

/// A zip archive of STORED entries `(name, crc32, bytes)`; `None` if an offset exceeds u32.
fn zip_stored(files: &[(String, u32, Vec<u8>)]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, crc, data) in files {
        let offset = u32::try_from(out.len()).ok()?;
        let size = u32::try_from(data.len()).ok()?;
        let name_len = u16::try_from(name.len()).ok()?;
        let flags: u16 = if name.is_ascii() { 0 } else { 1 << 11 };
        // Local file header.
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(20u16.to_le_bytes()); // version needed
        out.extend(flags.to_le_bytes());
        out.extend(0u16.to_le_bytes()); // STORED
        out.extend(0u16.to_le_bytes()); // time
        out.extend(DOS_DATE.to_le_bytes());
        out.extend(crc.to_le_bytes());
        out.extend(size.to_le_bytes()); // compressed
        out.extend(size.to_le_bytes()); // uncompressed
        out.extend(name_len.to_le_bytes());
        out.extend(0u16.to_le_bytes()); // extra
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        // Central directory header.
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // version made by
        central.extend(20u16.to_le_bytes()); // version needed
        central.extend(flags.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(DOS_DATE.to_le_bytes());
        central.extend(crc.to_le_bytes());
        central.extend(size.to_le_bytes());
        central.extend(size.to_le_bytes());
        central.extend(name_len.to_le_bytes());
        central.extend(0u16.to_le_bytes()); // extra
        central.extend(0u16.to_le_bytes()); // comment
        central.extend(0u16.to_le_bytes()); // disk number start
        central.extend(0u16.to_le_bytes()); // internal attributes
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend(offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32::try_from(out.len()).ok()?;
    let cd_size = u32::try_from(central.len()).ok()?;
    let n = u16::try_from(files.len()).ok()?;
    out.extend_from_slice(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // this disk
    out.extend(0u16.to_le_bytes()); // disk with the central directory
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend(cd_size.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // comment length
    u32::try_from(out.len()).ok()?;
    Some(out)
}

/// Writes through `write` into a new temporary file next to `path`, syncs it and renames it to
/// `path`; on any failure the temporary file is removed and `path` is untouched.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let io_err = |p: &Path, source| RiglError::Io {
        path: p.display().to_string(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| RiglError::invalid(format!("{}: not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (tmp, mut file) = loop {
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(path, e)),
        }
    };
    let written = write(&mut file).and_then(|()| file.sync_all());
    // Close before renaming or removing (needed on Windows).
    drop(file);
    let result = written.and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// A shape as a Python tuple, the way numpy writes it: `()`, `(3,)`, `(2, 5)`.
pub fn shape_string(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        ds => format!(
            "({})",
            ds.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

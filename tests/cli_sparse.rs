//! The sparse commands of the `rigl` binary, run as a user would: `mask-update` (GPU and CPU
//! against each other and the reference vectors, bad input), `plan` and `bench topk` /
//! `bench mask-update` (JSON output), plus `npy::read_npz`, which the tests use to read the
//! output back.

use std::io::Write as _;

use rigl::npy::{self, NpyArray, NpyData, NpyDataRef, NpyView};
use rigl::RiglError;

// ------------------------------------------------------------------------------- read_npz

/// A zip of DEFLATE entries, as `numpy.savez_compressed` writes.
fn deflated_zip(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).expect("deflate");
        let comp = enc.finish().expect("deflate");
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let fixed = |v: &mut Vec<u8>| {
            v.extend(20u16.to_le_bytes());
            v.extend(0u16.to_le_bytes());
            v.extend(8u16.to_le_bytes());
            v.extend([0u8; 4]);
            v.extend(crc.sum().to_le_bytes());
            v.extend((comp.len() as u32).to_le_bytes());
            v.extend((data.len() as u32).to_le_bytes());
            v.extend((name.len() as u16).to_le_bytes());
            v.extend(0u16.to_le_bytes());
        };
        out.extend(0x0403_4b50u32.to_le_bytes());
        fixed(&mut out);
        out.extend(name.as_bytes());
        out.extend(&comp);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        fixed(&mut central);
        central.extend([0u8; 10]); // comment length, disk, attributes
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_off.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn bad_npz(bytes: &[u8]) -> String {
    match npy::parse_npz(bytes, "x.npz") {
        Err(RiglError::BadFile { path, message }) => {
            assert_eq!(path, "x.npz");
            message
        }
        other => panic!("expected BadFile, got {other:?}"),
    }
}

#[test]
fn read_npz_round_trips_stored_and_deflated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("a.npz");
    let mask: Vec<u8> = vec![1, 0, 1, 1, 0, 0];
    let w: Vec<f32> = vec![0.5, 0.0, -2.0, 1.0, 0.0, 0.0];
    npy::write_npz(
        &p,
        &[
            (
                "mask",
                NpyView {
                    shape: &[2, 3],
                    data: NpyDataRef::U8(&mask),
                },
            ),
            (
                "weights",
                NpyView {
                    shape: &[6],
                    data: NpyDataRef::F32(&w),
                },
            ),
        ],
    )
    .expect("write");
    let got = npy::read_npz(&p).expect("read");
    assert_eq!(
        got,
        vec![
            (
                "mask".to_string(),
                NpyArray {
                    shape: vec![2, 3],
                    data: NpyData::U8(mask.clone())
                }
            ),
            (
                "weights".to_string(),
                NpyArray {
                    shape: vec![6],
                    data: NpyData::F32(w.clone())
                }
            ),
        ]
    );

    // DEFLATE entries (numpy.savez_compressed), with a trailing zip comment.
    let big: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
    let e1 = npy::npy_bytes(NpyView {
        shape: &[10, 100],
        data: NpyDataRef::F32(&big),
    })
    .expect("npy");
    let e2 = npy::npy_bytes(NpyView {
        shape: &[3],
        data: NpyDataRef::Bool(&[true, false, true]),
    })
    .expect("npy");
    let mut zip = deflated_zip(&[("big.npy", e1), ("flags.npy", e2)]);
    let n = zip.len();
    zip[n - 2..].copy_from_slice(&5u16.to_le_bytes());
    zip.extend(b"hello");
    let got = npy::parse_npz(&zip, "c.npz").expect("deflated");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "big");
    assert_eq!(got[0].1.shape, vec![10, 100]);
    assert_eq!(got[0].1.data, NpyData::F32(big));
    assert_eq!(got[1].0, "flags");
    assert_eq!(got[1].1.data, NpyData::Bool(vec![true, false, true]));

    // Errors name the file and the problem; nothing panics on damaged input.
    assert!(bad_npz(b"PK").contains("not a .npz"));
    assert!(bad_npz(&[0u8; 100]).contains("no zip end-of-directory"));
    let stored = std::fs::read(&p).expect("read");
    let mut flipped = stored.clone();
    let last_data = stored.len() - 200; // inside the weights entry's data
    flipped[last_data] ^= 0xff;
    let m = bad_npz(&flipped);
    assert!(m.contains("CRC") || m.contains("corrupt"), "{m}");
    for cut in [10, stored.len() / 2, stored.len() - 30] {
        let mut t = stored[..cut].to_vec();
        t.extend(&stored[stored.len() - 22..]);
        let _ = npy::parse_npz(&t, "t.npz").expect_err("truncated archive");
    }
    match npy::read_npz(dir.path().join("missing.npz")) {
        Err(RiglError::Io { path, .. }) => assert!(path.ends_with("missing.npz")),
        other => panic!("expected Io, got {other:?}"),
    }
}

/// `numpy.savez(f, mask=np.array([[1,0,1],[0,1,1]], np.uint8), w=np.arange(4, dtype=np.float32)
/// - 1.5)` (NumPy 2.4), as hex.
const NUMPY_SAVEZ: &str = "\
    504b03042d00000000000000210080450253ffffffffffffffff080014006d61736b2e6e7079010010008600\
    0000000000008600000000000000934e554d5059010076007b276465736372273a20277c7531272c2027666f\
    727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2033292c207d2020202020\
    2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020\
    2020202020202020200a010001000101504b03042d000000000000002100fabc51b9ffffffffffffffff0500\
    1400772e6e70790100100090000000000000009000000000000000934e554d5059010076007b276465736372\
    273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028\
    342c292c207d2020202020202020202020202020202020202020202020202020202020202020202020202020\
    202020202020202020202020202020202020202020200a0000c0bf000000bf0000003f0000c03f504b01022d\
    032d0000000000000021008045025386000000860000000800000000000000000000008001000000006d6173\
    6b2e6e7079504b01022d032d000000000000002100fabc51b990000000900000000500000000000000000000\
    008001c0000000772e6e7079504b0506000000000200020069000000870100000000";

/// The same arrays through `numpy.savez_compressed`.
const NUMPY_SAVEZ_COMPRESSED: &str = "\
    504b03042d00000008000000210080450253ffffffffffffffff080014006d61736b2e6e7079010010008600\
    0000000000004b000000000000009bec17ea1b10c9c850c650ad9e925a9c5ca46ea5a05e536aa8aea3a09e96\
    5f54529498179f5f94920a12774bcc294e058a17672416a402f91a463a0ac69a3a0ab50a64032e4606206404\
    00504b03042d000000080000002100fabc51b9ffffffffffffffff05001400772e6e70790100100090000000\
    0000000051000000000000009bec17ea1b10c9c850c650ad9e925a9c5ca46ea5a06e9366a2aea3a09e965f54\
    529498179f5f94920a12774bcc294e058a17672416a402f91a263a9a3a0ab50a14002e068603fb19181840d8\
    1ec8b60700504b01022d032d000000080000002100804502534b000000860000000800000000000000000000\
    008001000000006d61736b2e6e7079504b01022d032d000000080000002100fabc51b9510000009000000005\
    0000000000000000000000800185000000772e6e7079504b05060000000002000200690000000d0100000000";

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn read_npz_reads_numpy_output() {
    for (what, hex) in [
        ("savez", NUMPY_SAVEZ),
        ("savez_compressed", NUMPY_SAVEZ_COMPRESSED),
    ] {
        let got = npy::parse_npz(&unhex(hex), what).expect(what);
        assert_eq!(got.len(), 2, "{what}");
        assert_eq!(got[0].0, "mask");
        assert_eq!(got[0].1.shape, vec![2, 3]);
        assert_eq!(got[0].1.data, NpyData::U8(vec![1, 0, 1, 0, 1, 1]));
        assert_eq!(got[1].0, "w");
        assert_eq!(got[1].1.shape, vec![4]);
        assert_eq!(got[1].1.data, NpyData::F32(vec![-1.5, -0.5, 0.5, 1.5]));
    }
}

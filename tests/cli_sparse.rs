//! The sparse commands of the `rigl` binary, run as a user would: `mask-update` (GPU and CPU
//! against each other and the reference vectors, bad input), `plan` and `bench topk` /
//! `bench mask-update` (JSON output), plus `npy::read_npz`, which the tests use to read the
//! output back.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rigl::npy::{self, NpyArray, NpyData, NpyDataRef, NpyView};
use rigl::sparse::{layer_sparsities, Distribution, DistributionConfig, LayerShape};
use rigl::RiglError;

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rigl_update_cases.json"
);

/// Runs the binary with `args`.
fn rigl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rigl"))
        .args(args)
        .output()
        .expect("the rigl binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn save(path: &Path, shape: &[usize], data: NpyDataRef<'_>) {
    npy::write_npy(path, NpyView { shape, data }).expect("write .npy");
}

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

// ---------------------------------------------------------------------------- mask-update

/// One reference case (SPEC §4 vectors).
struct Case {
    shape: Vec<usize>,
    drop_fraction: f64,
    weights: Vec<f32>,
    grads: Vec<f32>,
    mask: Vec<f32>,
    expected_mask: Vec<f32>,
    expected_weights: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(REFERENCE)
        .expect("tests/fixtures/rigl_update_cases.json is in the repository");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let f32s = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    };
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            shape: c["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect(),
            drop_fraction: c["drop_fraction"].as_f64().expect("drop_fraction"),
            weights: f32s(&c["weights"]),
            grads: f32s(&c["grads"]),
            mask: f32s(&c["mask"]),
            expected_mask: f32s(&c["expected_mask"]),
            expected_weights: f32s(&c["expected_weights"]),
        })
        .collect()
}

/// Writes a case's inputs (mask as bool) into `dir`; returns (weights, grads, mask) paths.
fn write_case(dir: &Path, c: &Case) -> (PathBuf, PathBuf, PathBuf) {
    let (w, g, m) = (dir.join("w.npy"), dir.join("g.npy"), dir.join("m.npy"));
    save(&w, &c.shape, NpyDataRef::F32(&c.weights));
    save(&g, &c.shape, NpyDataRef::F32(&c.grads));
    let bits: Vec<bool> = c.mask.iter().map(|&v| v == 1.0).collect();
    save(&m, &c.shape, NpyDataRef::Bool(&bits));
    (w, g, m)
}

/// Reads a mask-update output: (mask, weights), checking names, dtypes and shape.
fn read_output(path: &Path, shape: &[usize]) -> (Vec<u8>, Vec<f32>) {
    let entries = npy::read_npz(path).expect("output .npz");
    assert_eq!(entries.len(), 2);
    let (mut mask, mut w) = (None, None);
    for (name, a) in entries {
        assert_eq!(a.shape, shape, "{name} keeps the input shape");
        match (name.as_str(), a.data) {
            ("mask", NpyData::U8(v)) => mask = Some(v),
            ("weights", NpyData::F32(v)) => w = Some(v),
            (n, d) => panic!("unexpected entry {n} of dtype {}", d.descr()),
        }
    }
    (mask.expect("mask entry"), w.expect("weights entry"))
}

#[test]
fn mask_update_gpu_and_cpu_match_the_reference_cases() {
    let all = cases();
    // A small 2-D case, a large one with half dropped, and one with an odd f32 drop fraction.
    for idx in [0usize, 4, 1] {
        let c = &all[idx];
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, g, m) = write_case(dir.path(), c);
        let df = c.drop_fraction.to_string();
        let mut outs = Vec::new();
        for cpu in [false, true] {
            let out = dir.path().join(if cpu { "cpu.npz" } else { "gpu.npz" });
            let mut args = vec![
                "mask-update",
                "--weights",
                s(&w),
                "--grads",
                s(&g),
                "--mask",
                s(&m),
                "--drop-fraction",
                &df,
                "--out",
                s(&out),
            ];
            if cpu {
                args.push("--cpu");
            }
            let text = ok(&rigl(&args));
            assert!(text.contains("dropped"), "summary line: {text}");
            assert_eq!(text.lines().count(), 1, "one summary line: {text}");
            outs.push(out);
        }
        let gpu = std::fs::read(&outs[0]).expect("gpu output");
        let cpu = std::fs::read(&outs[1]).expect("cpu output");
        assert_eq!(gpu, cpu, "case {idx}: GPU and --cpu files are identical");
        let (mask, weights) = read_output(&outs[0], &c.shape);
        let want_mask: Vec<u8> = c.expected_mask.iter().map(|&v| v as u8).collect();
        assert_eq!(mask, want_mask, "case {idx}: mask");
        assert_eq!(weights, c.expected_weights, "case {idx}: weights");
    }
}

#[test]
fn mask_update_accepts_every_mask_dtype_1d_and_set() {
    let c = &cases()[2];
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let n = c.weights.len();
    // 1-D inputs give the same update as the 2-D ones (flat row-major order).
    save(&d.join("w.npy"), &[n], NpyDataRef::F32(&c.weights));
    save(&d.join("g.npy"), &[n], NpyDataRef::F32(&c.grads));
    let f64s: Vec<f64> = c.mask.iter().map(|&v| f64::from(v)).collect();
    let u8s: Vec<u8> = c.mask.iter().map(|&v| v as u8).collect();
    let bools: Vec<bool> = c.mask.iter().map(|&v| v == 1.0).collect();
    save(&d.join("m_f32.npy"), &[n], NpyDataRef::F32(&c.mask));
    save(&d.join("m_f64.npy"), &[n], NpyDataRef::F64(&f64s));
    save(&d.join("m_u8.npy"), &[n], NpyDataRef::U8(&u8s));
    save(&d.join("m_bool.npy"), &[n], NpyDataRef::Bool(&bools));
    let df = c.drop_fraction.to_string();
    let mut first: Option<Vec<u8>> = None;
    for m in ["m_f32", "m_f64", "m_u8", "m_bool"] {
        let out = d.join(format!("{m}.npz"));
        ok(&rigl(&[
            "mask-update",
            "--weights",
            s(&d.join("w.npy")),
            "--grads",
            s(&d.join("g.npy")),
            "--mask",
            s(&d.join(format!("{m}.npy"))),
            "--drop-fraction",
            &df,
            "--out",
            s(&out),
            "--quiet",
        ]));
        let bytes = std::fs::read(&out).expect("output");
        match &first {
            None => {
                let (mask, w) = read_output(&out, &[n]);
                let want: Vec<u8> = c.expected_mask.iter().map(|&v| v as u8).collect();
                assert_eq!(mask, want);
                assert_eq!(w, c.expected_weights);
                first = Some(bytes);
            }
            Some(f) => assert_eq!(&bytes, f, "mask dtype {m} gives the same file"),
        }
    }

    // SET: no gradient needed; GPU and CPU agree; the seed changes the result.
    let mut set_out = Vec::new();
    let (wp, mp) = (d.join("w.npy"), d.join("m_u8.npy"));
    for (seed, cpu) in [("7", false), ("7", true), ("8", false)] {
        let out = d.join(format!("set_{seed}_{cpu}.npz"));
        let mut args = vec![
            "mask-update",
            "--method",
            "set",
            "--weights",
            s(&wp),
            "--mask",
            s(&mp),
            "--drop-fraction",
            "0.5",
            "--seed",
            seed,
            "--step",
            "300",
            "--out",
            s(&out),
        ];
        if cpu {
            args.push("--cpu");
        }
        let text = ok(&rigl(&args));
        assert!(text.starts_with("set update"), "{text}");
        let (mask, _) = read_output(&out, &[n]);
        assert_eq!(
            mask.iter().filter(|&&v| v == 1).count(),
            u8s.iter().filter(|&&v| v == 1).count(),
            "SET keeps the active count"
        );
        set_out.push(std::fs::read(&out).expect("output"));
    }
    assert_eq!(set_out[0], set_out[1], "SET: GPU and --cpu identical");
    assert_ne!(set_out[0], set_out[2], "SET: another seed grows elsewhere");
}

#[test]
fn mask_update_bad_input_exits_2_naming_the_file() {
    let c = &cases()[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (w, g, m) = write_case(d, c);
    let n = c.weights.len();
    let p = |name: &str| d.join(name);
    let w64: Vec<f64> = c.weights.iter().map(|&v| f64::from(v)).collect();
    save(&p("w_f64.npy"), &c.shape, NpyDataRef::F64(&w64));
    let i64s: Vec<i64> = c.mask.iter().map(|&v| v as i64).collect();
    save(&p("m_i64.npy"), &c.shape, NpyDataRef::I64(&i64s));
    let mut half = c.mask.clone();
    half[5] = 0.5;
    save(&p("m_half.npy"), &c.shape, NpyDataRef::F32(&half));
    let mut two: Vec<u8> = c.mask.iter().map(|&v| v as u8).collect();
    two[4] = 2;
    save(&p("m_two.npy"), &c.shape, NpyDataRef::U8(&two));
    let mut nan = c.mask.clone();
    nan[0] = f32::NAN;
    save(&p("m_nan.npy"), &c.shape, NpyDataRef::F32(&nan));
    save(
        &p("w_3d.npy"),
        &[1, c.shape[0], c.shape[1]],
        NpyDataRef::F32(&c.weights),
    );
    save(&p("w_0d.npy"), &[], NpyDataRef::F32(&[1.0]));
    save(&p("w_empty.npy"), &[0, 3], NpyDataRef::F32(&[]));
    save(&p("g_flat.npy"), &[n], NpyDataRef::F32(&c.grads));
    save(
        &p("m_t.npy"),
        &[c.shape[1], c.shape[0]],
        NpyDataRef::F32(&c.mask),
    );
    std::fs::write(p("junk.npy"), b"not numpy at all").expect("write");

    let out = p("out.npz");
    let (ws, gs, ms) = (s(&w), s(&g), s(&m));
    // (weights, grads, mask, drop fraction, the text the one-line message must contain)
    let bad: Vec<(String, String, String, &str, String)> = vec![
        (
            "missing.npy".into(),
            gs.into(),
            ms.into(),
            "0.3",
            "missing.npy".into(),
        ),
        (
            ws.into(),
            gs.into(),
            "missing_mask.npy".into(),
            "0.3",
            "missing_mask.npy".into(),
        ),
        (
            s(&p("w_f64.npy")).into(),
            gs.into(),
            ms.into(),
            "0.3",
            "w_f64.npy".into(),
        ),
        (
            ws.into(),
            gs.into(),
            s(&p("m_i64.npy")).into(),
            "0.3",
            "m_i64.npy".into(),
        ),
        (
            ws.into(),
            gs.into(),
            s(&p("m_half.npy")).into(),
            "0.3",
            "m_half.npy".into(),
        ),
        (
            ws.into(),
            gs.into(),
            s(&p("m_two.npy")).into(),
            "0.3",
            "m_two.npy".into(),
        ),
        (
            ws.into(),
            gs.into(),
            s(&p("m_nan.npy")).into(),
            "0.3",
            "m_nan.npy".into(),
        ),
        (
            s(&p("w_3d.npy")).into(),
            gs.into(),
            ms.into(),
            "0.3",
            "w_3d.npy".into(),
        ),
        (
            s(&p("w_0d.npy")).into(),
            gs.into(),
            ms.into(),
            "0.3",
            "w_0d.npy".into(),
        ),
        (
            s(&p("w_empty.npy")).into(),
            gs.into(),
            ms.into(),
            "0.3",
            "w_empty.npy".into(),
        ),
        (
            ws.into(),
            s(&p("g_flat.npy")).into(),
            ms.into(),
            "0.3",
            "g_flat.npy".into(),
        ),
        (
            ws.into(),
            gs.into(),
            s(&p("m_t.npy")).into(),
            "0.3",
            "m_t.npy".into(),
        ),
        (
            ws.into(),
            s(&p("junk.npy")).into(),
            ms.into(),
            "0.3",
            "junk.npy".into(),
        ),
        (
            ws.into(),
            gs.into(),
            ms.into(),
            "1.5",
            "--drop-fraction".into(),
        ),
        (
            ws.into(),
            gs.into(),
            ms.into(),
            "-0.1",
            "--drop-fraction".into(),
        ),
        (
            ws.into(),
            gs.into(),
            ms.into(),
            "NaN",
            "--drop-fraction".into(),
        ),
    ];
    for cpu in [false, true] {
        for (wp, gp, mp, df, needle) in &bad {
            let mut args = vec![
                "mask-update",
                "--weights",
                wp,
                "--grads",
                gp,
                "--mask",
                mp,
                "--drop-fraction",
                df,
                "--out",
                s(&out),
            ];
            if cpu {
                args.push("--cpu");
            }
            let o = rigl(&args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(needle.as_str()),
                "{args:?}: '{err}' names {needle}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            assert!(err.starts_with("rigl: error: "), "{err}");
            assert!(!out.exists(), "{args:?}: no output file");
        }
    }
    // The messages say what is wrong.
    let msg = |wp: &str, mp: &str| {
        stderr(&rigl(&[
            "mask-update",
            "--weights",
            wp,
            "--grads",
            gs,
            "--mask",
            mp,
            "--drop-fraction",
            "0.3",
            "--out",
            s(&out),
        ]))
    };
    assert!(msg(s(&p("w_f64.npy")), ms).contains("float32"));
    assert!(msg(ws, s(&p("m_half.npy"))).contains("element [1, 2] is 0.5"));
    assert!(msg(s(&p("w_3d.npy")), ms).contains("3-D"));
    assert!(msg(ws, s(&p("m_t.npy"))).contains("does not match"));

    // rigl needs a gradient; a missing output directory is bad input too.
    let o = rigl(&[
        "mask-update",
        "--weights",
        ws,
        "--mask",
        ms,
        "--drop-fraction",
        "0.3",
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--grads"));
    let nowhere = p("no/such/dir/out.npz");
    let o = rigl(&[
        "mask-update",
        "--weights",
        ws,
        "--grads",
        gs,
        "--mask",
        ms,
        "--drop-fraction",
        "0.3",
        "--out",
        s(&nowhere),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("out.npz"));
    assert!(!nowhere.exists());
    // Nothing but our inputs in the directory: no output, no temporary file.
    let names: Vec<String> = std::fs::read_dir(d)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(".npy")),
        "only inputs remain: {names:?}"
    );
}

// ----------------------------------------------------------------------------------- plan

fn json(o: &Output) -> serde_json::Value {
    let text = ok(o);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("JSON ({e}): {text}"))
}

#[test]
fn plan_json_lenet_erk_matches_the_library() {
    let v = json(&rigl(&["plan", "--json"]));
    let shapes = [
        LayerShape::new("fc1", &[784, 300]),
        LayerShape::new("fc2", &[300, 100]),
        LayerShape::new("fc3", &[100, 10]),
    ];
    let want = layer_sparsities(&shapes, &DistributionConfig::new(Distribution::Erk, 0.9))
        .expect("sparsities");
    let layers = v["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 3);
    let mut bytes = 0;
    for (l, w) in layers.iter().zip(&want) {
        assert_eq!(l["name"], w.name.as_str());
        assert_eq!(l["shape"], serde_json::json!(w.shape));
        assert_eq!(l["active"].as_u64(), Some(w.active as u64), "{}", w.name);
        assert_eq!(l["sparsity"].as_f64(), Some(w.sparsity), "{}", w.name);
        // Masked-dense storage: f32 weights, mask, momentum and gradient.
        assert_eq!(l["gpu_bytes"].as_u64(), Some(16 * w.total as u64));
        // Compressed: value, gradient, momentum and two index words per active weight, and
        // row offsets over inputs and outputs: what the sparse model allocates for the layer.
        let csr = l["gpu_bytes_compressed"].as_u64().expect("compressed");
        let words = rigl::sparse::csr::CsrIndex::words_len(w.shape[0], w.shape[1], w.active);
        assert_eq!(csr, 4 * (3 * w.active + words) as u64, "{}", w.name);
        assert_eq!(l["gpu_bytes_dense"].as_u64(), Some(12 * w.total as u64));
        bytes += csr;
    }
    assert_eq!(v["gpu_bytes_compressed"].as_u64(), Some(bytes));
    assert!(v["gpu_bytes_note"]
        .as_str()
        .is_some_and(|n| n.contains("compressed sparse path")));
    let density = v["density"].as_f64().expect("density");
    assert!((density - 0.1).abs() < 1e-3, "density {density}");
    let inf = v["inference_flops_vs_dense"].as_f64().expect("inference");
    let train = v["train_flops_vs_dense"].as_f64().expect("train");
    assert!(
        (inf - density).abs() < 1e-12,
        "dense layers: FLOPs follow weights"
    );
    assert!(
        train > inf && train < 0.2,
        "RigL adds a dense gradient every ΔT: {train}"
    );
    assert_eq!(v["method"], "rigl");
    assert_eq!(v["distribution"], "erk");

    // The text form has the same numbers.
    let text = ok(&rigl(&["plan"]));
    for w in &want {
        assert!(
            text.contains(&w.name) && text.contains(&w.active.to_string()),
            "{text}"
        );
    }
    assert!(text.contains("density 0.1000"), "{text}");
    assert!(text.contains("sparse (CSR)"), "{text}");
}

#[test]
fn plan_options_and_errors() {
    // --layers names layers by kind and position; uniform keeps the first layer dense.
    let v = json(&rigl(&[
        "plan",
        "--layers",
        "conv:3x3x3x16@32x32,dense:1024x10",
        "--distribution",
        "uniform",
        "--sparsity",
        "0.5",
        "--json",
    ]));
    let l = v["layers"].as_array().expect("layers");
    assert_eq!(l[0]["name"], "conv0");
    assert_eq!(l[0]["sparsity"].as_f64(), Some(0.0));
    assert_eq!(l[1]["name"], "dense1");
    assert_eq!(l[1]["active"].as_u64(), Some(5120));
    // Custom sparsities, a forced-dense last layer, the model flags.
    let v = json(&rigl(&[
        "plan",
        "--input",
        "20",
        "--hidden",
        "30",
        "--classes",
        "4",
        "--custom",
        "fc1=0.75",
        "--last-layer-dense",
        "--json",
    ]));
    let l = v["layers"].as_array().expect("layers");
    assert_eq!(l.len(), 2);
    assert_eq!(l[0]["active"].as_u64(), Some(150));
    assert_eq!(l[1]["sparsity"].as_f64(), Some(0.0));
    // Pruning: FLOPs average the schedule; dense: everything 1.
    let v = json(&rigl(&[
        "plan",
        "--method",
        "prune",
        "--prune-start",
        "0",
        "--json",
    ]));
    let train = v["train_flops_vs_dense"].as_f64().expect("train");
    assert!(train > 0.1 && train < 1.0, "{train}");
    assert_eq!(v["prune"]["t0"].as_u64(), Some(0));
    let v = json(&rigl(&["plan", "--method", "dense", "--json"]));
    assert_eq!(v["train_flops_vs_dense"].as_f64(), Some(1.0));
    assert_eq!(
        v["gpu_bytes_dense"].as_u64(),
        Some(12 * (784 * 300 + 300 * 100 + 100 * 10))
    );

    for bad in [
        &["--layers", "dense:784"][..],
        &["--layers", "dense:784x0"],
        &["--layers", "lstm:4x4"],
        &["--layers", "dense:4x4,,dense:4x2"],
        &["--layers", ""],
        &["--layers", "dense:4x4@2x2"],
        &["--hidden", "300,x"],
        &["--sparsity", "1.0"],
        &["--sparsity", "nan"],
        &["--distribution", "gaussian"],
        &["--method", "lottery"],
        &["--custom", "fc9=0.5"],
        &["--custom", "fc1"],
        &["--prune-start", "10"],
        &["--delta-t", "0"],
        &[
            "--method",
            "prune",
            "--prune-start",
            "5000",
            "--prune-end",
            "100",
        ],
    ] {
        let mut args = vec!["plan"];
        args.extend_from_slice(bad);
        let o = rigl(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(
            stderr(&o).starts_with("rigl: error: "),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

// ---------------------------------------------------------------------------------- bench

#[test]
fn bench_topk_and_mask_update_json() {
    let v = json(&rigl(&[
        "bench", "topk", "--n", "5000", "--k", "700", "--warmup", "1", "--reps", "3", "--json",
    ]));
    assert_eq!(v["kernel"], "topk");
    assert_eq!(v["n"].as_u64(), Some(5000));
    assert_eq!(v["k"].as_u64(), Some(700));
    assert!(v["gpu_ms"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    assert!(v["elements_per_s"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    assert!(
        matches!(v["timing"].as_str(), Some("timestamp" | "wall")),
        "{v}"
    );
    assert!(v["dispatches"].as_u64().is_some_and(|d| d > 1), "{v}");

    let mut dispatches = Vec::new();
    for method in ["rigl", "set", "prune"] {
        let v = json(&rigl(&[
            "bench",
            "mask-update",
            "--layers",
            "dense:64x48,conv:3x3x4x8@6x6,dense:48x10",
            "--sparsity",
            "0.8",
            "--method",
            method,
            "--warmup",
            "1",
            "--reps",
            "2",
            "--json",
        ]));
        assert_eq!(v["kernel"], "mask-update");
        assert_eq!(v["method"], method);
        assert!(v["gpu_ms"].as_f64().is_some_and(|t| t > 0.0), "{v}");
        assert!(
            matches!(v["timing"].as_str(), Some("timestamp" | "wall")),
            "{v}"
        );
        assert_eq!(v["elements"].as_u64(), Some(64 * 48 + 288 + 480));
        let layers = v["layers"].as_array().expect("layers");
        let grow: u64 = layers
            .iter()
            .map(|l| l["k_grow"].as_u64().expect("k"))
            .sum();
        assert_eq!(v["k_grow"].as_u64(), Some(grow));
        assert_eq!(grow == 0, method == "prune", "{v}");
        dispatches.push(v["dispatches"].as_u64().expect("dispatches"));
    }
    assert_eq!(
        dispatches[0], dispatches[1],
        "rigl and set: same dispatches"
    );
    assert!(dispatches[2] < dispatches[0], "prune skips the grow phase");

    // Bad sizes are bad input.
    let o = rigl(&["bench", "topk", "--n", "10", "--k", "11"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = rigl(&["bench", "mask-update", "--layers", "dense:4", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

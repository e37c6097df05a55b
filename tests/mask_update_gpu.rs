//! The GPU mask update (shaders/select.wgsl via sparse::update) against the CPU twin and the
//! public reference vectors: masks and weights must be exactly equal.

mod common;

use common::{ctx, data};
use rigl::cpu::mask_update::{drop_count, prune_update, rigl_update, set_update, top_k_indices};
use rigl::gpu::Tensor;
use rigl::sparse::update::{GrowRule, LayerCounts, LayerPlacement, MaskUpdater};

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rigl_update_cases.json"
);

/// One layer's state for a test.
#[derive(Clone, Debug)]
struct Layer {
    w: Vec<f32>,
    m: Vec<f32>,
    mask: Vec<f32>,
    score: Vec<f32>,
}

fn active(mask: &[f32]) -> usize {
    mask.iter().filter(|&&v| v == 1.0).count()
}

/// The layers placed back to back at 64-aligned offsets, and the flat length.
fn placements(layers: &[Layer]) -> (Vec<LayerPlacement>, usize) {
    let mut place = Vec::new();
    let mut off = 0;
    for (i, l) in layers.iter().enumerate() {
        place.push(LayerPlacement {
            name: format!("l{i}"),
            offset: off,
            n: l.w.len(),
            id: i as u32,
        });
        off += l.w.len().div_ceil(64) * 64;
    }
    (place, off.max(1))
}

/// One field of every layer in a flat buffer laid out by `place`.
fn flatten(
    layers: &[Layer],
    place: &[LayerPlacement],
    total: usize,
    f: &dyn Fn(&Layer) -> &Vec<f32>,
) -> Vec<f32> {
    let mut v = vec![0.0f32; total];
    for (l, p) in layers.iter().zip(place) {
        v[p.offset..p.offset + p.n].copy_from_slice(f(l));
    }
    v
}

/// Runs one GPU update over all `layers` (placed at 64-aligned offsets) and returns the new
/// (weights, momentum, mask) per layer.
fn gpu_update(
    layers: &[Layer],
    rule: GrowRule,
    counts: &[LayerCounts],
    seed: u32,
    step: u32,
) -> Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let ctx = ctx();
    let (place, total) = placements(layers);
    let flat = |f: &dyn Fn(&Layer) -> &Vec<f32>| flatten(layers, &place, total, f);
    let tw = Tensor::from_f32(ctx, "w", &flat(&|l| &l.w)).unwrap();
    let tm = Tensor::from_f32(ctx, "m", &flat(&|l| &l.m)).unwrap();
    let tk = Tensor::from_f32(ctx, "mask", &flat(&|l| &l.mask)).unwrap();
    let ts = Tensor::from_f32(ctx, "score", &flat(&|l| &l.score)).unwrap();
    let up = MaskUpdater::new(ctx, place.clone(), &tw, &tk, &tm, &ts, seed).unwrap();
    up.run(ctx, step, counts, rule).unwrap();
    let new_conn = up.read_new_connections(ctx).unwrap();
    let (w, m, k) = (
        tw.read_f32(ctx).unwrap(),
        tm.read_f32(ctx).unwrap(),
        tk.read_f32(ctx).unwrap(),
    );
    place
        .iter()
        .zip(layers)
        .zip(new_conn)
        .map(|((p, l), nc)| {
            let r = p.offset..p.offset + p.n;
            let new_mask = &k[r.clone()];
            let expect_new = (0..p.n)
                .filter(|&i| new_mask[i] == 1.0 && l.mask[i] == 0.0)
                .count();
            assert_eq!(nc, expect_new, "new-connection counter of {}", p.name);
            (
                w[r.clone()].to_vec(),
                m[r.clone()].to_vec(),
                new_mask.to_vec(),
            )
        })
        .collect()
}

fn counts(l: &Layer, rule: GrowRule, drop_fraction: f32) -> LayerCounts {
    let n_active = active(&l.mask);
    let n_drop = drop_count(n_active, drop_fraction);
    match rule {
        GrowRule::None => LayerCounts {
            k_keep: n_active - n_drop,
            k_grow: 0,
        },
        _ => LayerCounts {
            k_keep: n_active - n_drop,
            k_grow: n_drop,
        },
    }
}

fn cpu_update(l: &Layer, rule: GrowRule, df: f32, seed: u32, step: u32, id: u32) -> Layer {
    let mut o = l.clone();
    {
        let mut slots: Vec<&mut [f32]> = vec![&mut o.m[..]];
        match rule {
            GrowRule::Score => {
                rigl_update(&mut o.w, &mut slots, &mut o.mask, &l.score, df).unwrap();
            }
            GrowRule::Random => {
                set_update(&mut o.w, &mut slots, &mut o.mask, seed, step, id, df).unwrap();
            }
            GrowRule::None => {
                let target = active(&l.mask) - drop_count(active(&l.mask), df);
                prune_update(&mut o.w, &mut slots, &mut o.mask, target).unwrap();
            }
        }
    }
    o
}

fn random_layer(n: usize, density: f32, seed: u32, ties: bool) -> Layer {
    let mask: Vec<f32> = data(n, seed)
        .iter()
        .map(|v| if (v + 1.0) * 0.5 < density { 1.0 } else { 0.0 })
        .collect();
    let quant = |v: f32| if ties { (v * 2.0).round() / 2.0 } else { v };
    let w: Vec<f32> = data(n, seed + 1)
        .iter()
        .zip(&mask)
        .map(|(v, k)| quant(*v) * k)
        .collect();
    let m: Vec<f32> = data(n, seed + 2)
        .iter()
        .zip(&mask)
        .map(|(v, k)| v * k)
        .collect();
    let score: Vec<f32> = data(n, seed + 3).iter().map(|v| quant(*v)).collect();
    Layer { w, m, mask, score }
}

fn assert_same(what: &str, got: &(Vec<f32>, Vec<f32>, Vec<f32>), want: &Layer) {
    assert_eq!(got.2, want.mask, "{what}: mask");
    assert_eq!(got.0, want.w, "{what}: weights");
    assert_eq!(got.1, want.m, "{what}: momentum");
}

#[test]
fn reference_cases_match_exactly() {
    let text = std::fs::read_to_string(REFERENCE)
        .expect("tests/fixtures/rigl_update_cases.json is in the repository");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 30);
    let f32s = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    // All 30 cases in one update, as the layers of one model.
    let mut layers = Vec::new();
    let mut cnts = Vec::new();
    for c in cases {
        let df = c["drop_fraction"].as_f64().unwrap() as f32;
        let w = f32s(&c["weights"]);
        let l = Layer {
            m: w.iter().map(|v| v * 0.5).collect(),
            w,
            mask: f32s(&c["mask"]),
            score: f32s(&c["grads"]),
        };
        let k = counts(&l, GrowRule::Score, df);
        assert_eq!(k.k_grow as u64, c["n_drop"].as_u64().unwrap());
        cnts.push(k);
        layers.push(l);
    }
    let got = gpu_update(&layers, GrowRule::Score, &cnts, 0, 0);
    for (i, (c, g)) in cases.iter().zip(&got).enumerate() {
        assert_eq!(g.2, f32s(&c["expected_mask"]), "case {i}: mask");
        assert_eq!(g.0, f32s(&c["expected_weights"]), "case {i}: weights");
        let new = f32s(&c["expected_new_connections"]);
        for (j, &n) in new.iter().enumerate() {
            if n == 1.0 {
                assert_eq!(g.1[j], 0.0, "case {i}: momentum of new connection {j}");
            }
        }
    }
}

#[test]
fn rigl_set_prune_match_cpu_on_many_layers() {
    let shapes = [
        (1usize, 0.5f32, false),
        (17 * 3, 0.3, false),
        (255, 0.9, true),
        (256, 0.1, true),
        (257, 0.5, false),
        (784 * 30, 0.1, false),
        (1000, 0.05, true),
        (3000, 0.5, true),
    ];
    for rule in [GrowRule::Score, GrowRule::Random, GrowRule::None] {
        for (df, step) in [(0.3f32, 100u32), (0.0, 0), (1.0, 7), (0.137, 1234)] {
            let layers: Vec<Layer> = shapes
                .iter()
                .enumerate()
                .map(|(i, &(n, d, t))| random_layer(n, d, 100 + i as u32 * 10, t))
                .collect();
            let cnts: Vec<LayerCounts> = layers.iter().map(|l| counts(l, rule, df)).collect();
            let got = gpu_update(&layers, rule, &cnts, 42, step);
            for (i, (l, g)) in layers.iter().zip(&got).enumerate() {
                let want = cpu_update(l, rule, df, 42, step, i as u32);
                assert_same(&format!("{rule:?} df={df} layer {i}"), g, &want);
                if rule != GrowRule::None {
                    assert_eq!(active(&g.2), active(&l.mask), "active count is unchanged");
                }
            }
        }
    }
}

#[test]
fn all_scores_equal_breaks_ties_by_index() {
    let n = 1500;
    let l = Layer {
        w: (0..n).map(|i| if i % 2 == 0 { 0.5 } else { 0.0 }).collect(),
        m: vec![0.0; n],
        mask: (0..n).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect(),
        score: vec![1.0; n],
    };
    let c = counts(&l, GrowRule::Score, 0.5);
    let got = gpu_update(std::slice::from_ref(&l), GrowRule::Score, &[c], 0, 0);
    let want = cpu_update(&l, GrowRule::Score, 0.5, 0, 0, 0);
    assert_same("all ties", &got[0], &want);
    // Kept: the first 375 active (even) positions; grown: the lowest-index others.
    let kept: Vec<usize> = (0..n)
        .filter(|&i| got[0].2[i] == 1.0 && i % 2 == 0)
        .collect();
    assert_eq!(kept, (0..375).map(|j| 2 * j).collect::<Vec<_>>());
}

#[test]
fn set_differs_by_seed_and_step_but_is_reproducible() {
    let l = random_layer(4000, 0.2, 7, false);
    let c = counts(&l, GrowRule::Random, 0.3);
    let a = gpu_update(std::slice::from_ref(&l), GrowRule::Random, &[c], 1, 100);
    let b = gpu_update(std::slice::from_ref(&l), GrowRule::Random, &[c], 1, 100);
    let d = gpu_update(std::slice::from_ref(&l), GrowRule::Random, &[c], 2, 100);
    let e = gpu_update(std::slice::from_ref(&l), GrowRule::Random, &[c], 1, 200);
    assert_eq!(a[0].2, b[0].2);
    assert_ne!(a[0].2, d[0].2);
    assert_ne!(a[0].2, e[0].2);
}

#[test]
fn bad_counts_are_errors() {
    let ctx = ctx();
    let t = Tensor::zeros(ctx, "t", 10).unwrap();
    let place = vec![LayerPlacement {
        name: "fc".into(),
        offset: 0,
        n: 10,
        id: 0,
    }];
    let up = MaskUpdater::new(ctx, place, &t, &t, &t, &t, 0).unwrap();
    let err = up
        .run(
            ctx,
            0,
            &[LayerCounts {
                k_keep: 8,
                k_grow: 5,
            }],
            GrowRule::Score,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer fc"), "{err}");
    let short = Tensor::zeros(ctx, "short", 5).unwrap();
    let place = vec![LayerPlacement {
        name: "fc".into(),
        offset: 0,
        n: 10,
        id: 0,
    }];
    let err = MaskUpdater::new(ctx, place, &t, &short, &t, &t, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("'short' has 5 elements"), "{err}");
}

/// One updater reused across a chain of updates (as in training), with new scores and weights in
/// between and drop fractions of 0 (nothing selected: digit sets left from an earlier update
/// must not leak into a later one), against the CPU twin applied to the same chain.
#[test]
fn one_updater_over_a_chain_of_updates_matches_cpu() {
    let ctx = ctx();
    let shapes = [
        (300usize, 0.3f32, true),
        (784 * 40, 0.1, false),
        (1000, 0.05, true),
    ];
    let mut layers: Vec<Layer> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(n, d, t))| random_layer(n, d, 500 + 10 * i as u32, t))
        .collect();
    let (place, total) = placements(&layers);
    let flat =
        |layers: &[Layer], f: &dyn Fn(&Layer) -> &Vec<f32>| flatten(layers, &place, total, f);
    let tw = Tensor::from_f32(ctx, "w", &flat(&layers, &|l| &l.w)).unwrap();
    let tm = Tensor::from_f32(ctx, "m", &flat(&layers, &|l| &l.m)).unwrap();
    let tk = Tensor::from_f32(ctx, "mask", &flat(&layers, &|l| &l.mask)).unwrap();
    let ts = Tensor::from_f32(ctx, "score", &flat(&layers, &|l| &l.score)).unwrap();
    let up = MaskUpdater::new(ctx, place.clone(), &tw, &tk, &tm, &ts, 9).unwrap();
    let chain = [
        (GrowRule::Score, 0.3f32),
        (GrowRule::Score, 0.0),
        (GrowRule::Random, 0.2),
        (GrowRule::Score, 0.05),
        (GrowRule::None, 0.0),
        (GrowRule::Random, 0.0),
        (GrowRule::Score, 1.0),
        (GrowRule::None, 0.25),
        (GrowRule::Score, 0.3),
    ];
    for (u, &(rule, df)) in chain.iter().enumerate() {
        let step = 100 * u as u32;
        // New weights on the active positions and new scores everywhere, as training makes.
        for (i, l) in layers.iter_mut().enumerate() {
            let fresh = random_layer(l.w.len(), 0.5, 900 + 31 * u as u32 + i as u32, i != 1);
            for j in 0..l.w.len() {
                l.w[j] = fresh.w[j].abs().max(0.25) * l.mask[j];
            }
            l.score = fresh.score;
        }
        tw.write_f32(ctx, &flat(&layers, &|l| &l.w)).unwrap();
        ts.write_f32(ctx, &flat(&layers, &|l| &l.score)).unwrap();
        let cnts: Vec<LayerCounts> = layers.iter().map(|l| counts(l, rule, df)).collect();
        up.run(ctx, step, &cnts, rule).unwrap();
        let (w, m, k) = (
            tw.read_f32(ctx).unwrap(),
            tm.read_f32(ctx).unwrap(),
            tk.read_f32(ctx).unwrap(),
        );
        for (i, p) in place.iter().enumerate() {
            let want = cpu_update(&layers[i], rule, df, 9, step, i as u32);
            let r = p.offset..p.offset + p.n;
            let got = (w[r.clone()].to_vec(), m[r.clone()].to_vec(), k[r].to_vec());
            assert_same(
                &format!("update {u} ({rule:?}, df={df}) layer {i}"),
                &got,
                &want,
            );
            layers[i] = want;
        }
    }
}

/// The exact top-k of |score| among the eligible positions, ties to the lower index, by the CPU
/// twin's ranking (`top_k_indices` over the eligible positions' |score|, in index order).
fn top_k(score: &[f32], eligible: &[bool], k: usize) -> Vec<bool> {
    let cand: Vec<usize> = (0..score.len()).filter(|&i| eligible[i]).collect();
    let abs: Vec<f32> = cand.iter().map(|&i| score[i].abs()).collect();
    let mut out = vec![false; score.len()];
    for j in top_k_indices(&abs, k) {
        out[cand[j]] = true;
    }
    out
}

/// The phases the compressed model uses on their own: the grow phase over a dense score with
/// the caller's selection (bit 0 = not eligible), run repeatedly with new scores on one updater,
/// and the drop phase over compressed values (every element eligible).
#[test]
fn grow_and_drop_phases_alone_match_the_reference() {
    let ctx = ctx();
    let n = 784 * 300;
    let score_t = Tensor::zeros(ctx, "score", n).unwrap();
    let sel_t = Tensor::zeros(ctx, "sel", n).unwrap();
    let place = LayerPlacement {
        name: "fc1".into(),
        offset: 0,
        n,
        id: 0,
    };
    let grow = MaskUpdater::for_dense_grow(ctx, place.clone(), &score_t, &sel_t, 3).unwrap();
    for round in 0..6u32 {
        let ties = round % 2 == 1;
        let l = random_layer(n, 0.02, 40 + round, ties);
        let kept: Vec<bool> = l.mask.iter().map(|&m| m == 1.0).collect();
        let k = [7000usize, 1, 0, 2000, 50_000, 0][round as usize];
        score_t.write_f32(ctx, &l.score).unwrap();
        // Selection words: bit 0 for the kept positions (written as the f32 of those bits).
        let sel: Vec<f32> = kept.iter().map(|&k| f32::from_bits(u32::from(k))).collect();
        sel_t.write_f32(ctx, &sel).unwrap();
        grow.prepare(
            ctx,
            round,
            &[LayerCounts {
                k_keep: 0,
                k_grow: k,
            }],
        )
        .unwrap();
        rigl::gpu::ops::run(ctx, "grow", &grow.grow_dispatches(GrowRule::Score)).unwrap();
        let got: Vec<bool> = sel_t
            .read_u32(ctx)
            .unwrap()
            .iter()
            .map(|s| s & 2 != 0)
            .collect();
        let eligible: Vec<bool> = kept.iter().map(|k| !k).collect();
        let want = top_k(&l.score, &eligible, k);
        let wrong = (0..n).filter(|&i| got[i] != want[i]).count();
        assert_eq!(
            wrong, 0,
            "grow round {round} (k = {k}, ties {ties}): {wrong} positions differ"
        );
    }
    // Drop over compressed values of two layers back to back.
    let sizes = [23_000usize, 3000];
    let vals: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &m)| random_layer(m, 1.0, 70 + i as u32, i == 1).w)
        .collect();
    let flat: Vec<f32> = vals.concat();
    let vt = Tensor::from_f32(ctx, "vals", &flat).unwrap();
    let layers = vec![
        LayerPlacement {
            name: "a".into(),
            offset: 0,
            n: sizes[0],
            id: 0,
        },
        LayerPlacement {
            name: "b".into(),
            offset: sizes[0],
            n: sizes[1],
            id: 1,
        },
    ];
    let drop = MaskUpdater::for_compressed_drop(ctx, layers, &vt, 5).unwrap();
    for keep in [[16_100usize, 2100], [0, 3000], [23_000, 1]] {
        drop.prepare(
            ctx,
            0,
            &[
                LayerCounts {
                    k_keep: keep[0],
                    k_grow: 0,
                },
                LayerCounts {
                    k_keep: keep[1],
                    k_grow: 0,
                },
            ],
        )
        .unwrap();
        rigl::gpu::ops::run(ctx, "drop", &drop.drop_dispatches()).unwrap();
        let got = drop.selection().read_u32(ctx).unwrap();
        for (l, v) in vals.iter().enumerate() {
            let want = top_k(v, &vec![true; v.len()], keep[l]);
            let off = if l == 0 { 0 } else { sizes[0] };
            let wrong = (0..v.len())
                .filter(|&i| (got[off + i] & 1 != 0) != want[i])
                .count();
            assert_eq!(
                wrong, 0,
                "drop layer {l} keeping {}: {wrong} differ",
                keep[l]
            );
        }
    }
}

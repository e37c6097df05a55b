//! CPU-only tests of the sparse machinery: distributions against the official ERK values, the
//! mask update against the reference vectors of `reference/rigl_update.py`, schedules, SET
//! hashing, sparse init, FLOPs accounting, plans and `.npy`/`.npz` I/O.

use std::collections::BTreeMap;

use rigl::cpu::mask_update::{
    drop_count, ema_update, prune_update, rigl_update, set_score, set_update, snfs_update,
    top_k_indices, top_k_indices_u32, Method,
};
use rigl::npy::{self, NpyData, NpyDataRef, NpyView};
use rigl::sparse::distribution::{
    active_count, layer_sparsities, Distribution, DistributionConfig, LayerShape,
};
use rigl::sparse::flops::{
    dense_layer_flops, inference_flops_vs_dense, train_flops_vs_dense, LayerCost, TrainFlopsConfig,
};
use rigl::sparse::init::{
    count_active, fans, indices_to_mask, init_layer, mask_from_u8, mask_to_indices, mask_to_u8,
    random_mask, rng_for, WeightInit,
};
use rigl::sparse::plan::{parse_layers, LayerKind, Plan, PlanConfig};
use rigl::sparse::schedule::{cosine_drop_fraction, DropSchedule, PruneSchedule, UpdateSchedule};
use rigl::RiglError;
use serde_json::Value;

const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rigl_update_cases.json"
);
const ERK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/erk_wrn22_2.json"
);

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("valid JSON")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

fn lenet() -> Vec<LayerShape> {
    vec![
        LayerShape::new("fc1", &[784, 300]),
        LayerShape::new("fc2", &[300, 100]),
        LayerShape::new("fc3", &[100, 10]),
    ]
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T, RiglError>) -> String {
    match r {
        Err(RiglError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

// ---------------------------------------------------------------- mask update: reference cases

#[test]
fn rigl_update_matches_all_reference_cases() {
    let doc = load(CASES);
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 30);
    for (ci, c) in cases.iter().enumerate() {
        let shape = usizes(&c["shape"]);
        let n = shape[0] * shape[1];
        let mut w = f32s(&c["weights"]);
        let grads = f32s(&c["grads"]);
        let mut mask = f32s(&c["mask"]);
        let mask_before = mask.clone();
        let df = c["drop_fraction"].as_f64().expect("df") as f32;
        let exp_mask = f32s(&c["expected_mask"]);
        let exp_w = f32s(&c["expected_weights"]);
        let exp_new = usizes(&c["expected_new_connections"]);
        let n_drop = c["n_drop"].as_u64().expect("n_drop") as usize;
        assert_eq!(w.len(), n);

        // Two optimizer slots with distinct non-zero values everywhere.
        let mut m1: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
        let mut m2: Vec<f32> = (0..n).map(|i| -0.5 - i as f32).collect();
        let (m1_before, m2_before) = (m1.clone(), m2.clone());
        let stats = {
            let mut slots: [&mut [f32]; 2] = [&mut m1, &mut m2];
            rigl_update(&mut w, &mut slots, &mut mask, &grads, df).expect("update")
        };

        assert_eq!(mask, exp_mask, "case {ci}: mask");
        for i in 0..n {
            assert_eq!(w[i].to_bits(), exp_w[i].to_bits(), "case {ci}: weight {i}");
        }
        assert_eq!(stats.n_drop, n_drop, "case {ci}: n_drop");
        assert_eq!(
            stats.n_grown_new,
            exp_new.iter().sum::<usize>(),
            "case {ci}: new connections"
        );
        let n_active = mask_before.iter().filter(|&&m| m == 1.0).count();
        assert_eq!(stats.n_active, n_active);
        assert_eq!(stats.n_active_after, n_active, "case {ci}: count preserved");
        assert_eq!(stats.n_grown_new + stats.n_regrown, n_drop);
        for i in 0..n {
            let keep_slot = exp_mask[i] == 1.0 && exp_new[i] == 0;
            let (e1, e2) = if keep_slot {
                (m1_before[i], m2_before[i])
            } else {
                (0.0, 0.0)
            };
            assert_eq!((m1[i], m2[i]), (e1, e2), "case {ci}: slots at {i}");
            if exp_new[i] == 1 {
                assert_eq!(mask_before[i], 0.0);
            }
        }
    }
}

#[test]
fn rigl_update_rejects_bad_input_without_changes() {
    let mut w = vec![1.0, 2.0, 3.0];
    let mut mask = vec![1.0, 0.0, 1.0];
    let g = vec![0.0; 3];
    let mut slot = vec![0.5; 2];
    is_invalid(rigl_update(&mut w, &mut [&mut slot], &mut mask, &g, 0.5));
    is_invalid(rigl_update(&mut w, &mut [], &mut mask, &g[..2], 0.5));
    let mut bad_mask = vec![1.0, 0.5, 0.0];
    is_invalid(rigl_update(&mut w, &mut [], &mut bad_mask, &g, 0.5));
    let mut short = vec![1.0, 2.0];
    is_invalid(rigl_update(&mut short, &mut [], &mut mask, &g, 0.5));
    assert_eq!(w, vec![1.0, 2.0, 3.0]);
    assert_eq!(mask, vec![1.0, 0.0, 1.0]);
}

#[test]
fn rigl_update_edge_cases() {
    // Empty layer, empty mask, full mask, drop fraction 0 and 1.
    let mut w: Vec<f32> = vec![];
    let mut m: Vec<f32> = vec![];
    let s = rigl_update(&mut w, &mut [], &mut m, &[], 0.3).expect("empty");
    assert_eq!((s.n_active, s.n_drop), (0, 0));

    let mut w = vec![0.0f32; 4];
    let mut m = vec![0.0f32; 4];
    let s = rigl_update(&mut w, &mut [], &mut m, &[1.0, 2.0, 3.0, 4.0], 0.5).expect("none");
    assert_eq!((s.n_active, s.n_drop, s.n_active_after), (0, 0, 0));
    assert_eq!(m, vec![0.0; 4]);

    // Full mask: nothing outside can grow but dropped ones regrow in place.
    let mut w = vec![0.1f32, -0.4, 0.3, 0.2];
    let mut m = vec![1.0f32; 4];
    let s = rigl_update(&mut w, &mut [], &mut m, &[9.0; 4], 0.5).expect("full");
    assert_eq!((s.n_drop, s.n_grown_new, s.n_regrown), (2, 0, 2));
    assert_eq!(m, vec![1.0; 4]);
    assert_eq!(w, vec![0.1, -0.4, 0.3, 0.2]);

    // Drop fraction 1: every active position is a candidate again; grow picks by |grad|.
    let mut w = vec![0.5f32, 0.0, -0.7, 0.0];
    let mut m = vec![1.0f32, 0.0, 1.0, 0.0];
    let s = rigl_update(&mut w, &mut [], &mut m, &[0.1, -3.0, 0.2, 0.0], 1.0).expect("all");
    assert_eq!(s.n_drop, 2);
    assert_eq!(m, vec![0.0, 1.0, 1.0, 0.0]);
    assert_eq!(w, vec![0.0, 0.0, -0.7, 0.0]);

    // Drop fraction 0: nothing changes, stale values behind the mask are cleared.
    let mut w = vec![0.5f32, 9.0];
    let mut m = vec![1.0f32, 0.0];
    rigl_update(&mut w, &mut [], &mut m, &[0.0, 5.0], 0.0).expect("zero");
    assert_eq!((w, m), (vec![0.5, 0.0], vec![1.0, 0.0]));
}

#[test]
fn rigl_update_nan_scores_rank_lowest() {
    // NaN weight is dropped first; NaN gradient is grown last.
    let mut w = vec![f32::NAN, 0.5, 0.25, 0.0, 0.0, 0.0];
    let mut m = vec![1.0f32, 1.0, 1.0, 0.0, 0.0, 0.0];
    let g = vec![0.0, 0.0, 0.0, f32::NAN, 0.0, 1.0];
    let s = rigl_update(&mut w, &mut [], &mut m, &g, 0.34).expect("nan");
    assert_eq!(s.n_drop, 1);
    assert_eq!(m, vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    assert_eq!(w[0], 0.0);
}

// ---------------------------------------------------------------- top-k

/// Independent reference: full sort by (score desc with NaN as -inf, index asc).
fn naive_top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    idx.sort_by(|&a, &b| {
        key(scores[b])
            .partial_cmp(&key(scores[a]))
            .expect("no NaN")
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

#[test]
fn top_k_edge_cases_and_ties() {
    let s = [1.0f32, 3.0, 3.0, 1.0, 3.0, 0.0];
    assert!(top_k_indices(&s, 0).is_empty());
    assert_eq!(top_k_indices(&s, 2), vec![1, 2]);
    assert_eq!(top_k_indices(&s, 4), vec![1, 2, 4, 0]);
    assert_eq!(top_k_indices(&s, 6), vec![1, 2, 4, 0, 3, 5]);
    assert_eq!(top_k_indices(&s, 100), vec![1, 2, 4, 0, 3, 5]);
    assert!(top_k_indices(&[], 3).is_empty());
    // All equal: the lowest indices.
    assert_eq!(top_k_indices(&[7.0; 9], 4), vec![0, 1, 2, 3]);
    // NaN ranks as -inf (ties with it by index), -0.0 ties with +0.0.
    let s = [f32::NAN, f32::NEG_INFINITY, 0.0, -0.0, f32::INFINITY];
    assert_eq!(top_k_indices(&s, 5), vec![4, 2, 3, 0, 1]);
    // u32 scores.
    assert_eq!(top_k_indices_u32(&[5, 9, 9, u32::MAX, 0], 3), vec![3, 1, 2]);
    assert!(top_k_indices_u32(&[5, 9], 0).is_empty());
}

#[test]
fn top_k_matches_full_sort_on_many_ties() {
    let mut rng = rng_for(7, 0);
    use rand::Rng;
    for trial in 0..50 {
        let n = rng.random_range(1..400usize);
        let levels = rng.random_range(1..6u32);
        let s: Vec<f32> = (0..n)
            .map(|_| match rng.random_range(0..20u32) {
                0 => f32::NAN,
                1 => -0.0,
                _ => rng.random_range(0..levels) as f32 * 0.5,
            })
            .collect();
        for k in [0, 1, n / 3, n / 2, n.saturating_sub(1), n] {
            assert_eq!(
                top_k_indices(&s, k),
                naive_top_k(&s, k),
                "trial {trial} n {n} k {k}"
            );
        }
    }
}

// ---------------------------------------------------------------- SET, SNFS, prune

#[test]
fn set_score_golden_values() {
    // From an independent Python implementation of the documented hash.
    assert_eq!(set_score(0, 0, 0, 0), 0x37dd_7702);
    assert_eq!(set_score(1, 0, 0, 0), 0x1e10_cf35);
    assert_eq!(set_score(42, 100, 3, 7), 0x5334_528a);
    assert_eq!(
        set_score(u32::MAX, u32::MAX, u32::MAX, u32::MAX),
        0x839c_de85
    );
    assert_eq!(set_score(7, 200, 1, 123_456), 0x9acb_d2c5);
}

fn set_layer(n: usize, active: usize) -> (Vec<f32>, Vec<f32>) {
    let init = init_layer(3, 0, &[n, 1], active, WeightInit::HeNormal).expect("init");
    (init.weights, init.mask)
}

#[test]
fn set_update_is_reproducible_and_exact() {
    let (w0, m0) = set_layer(500, 120);
    let run = |seed: u32| {
        let (mut w, mut m) = (w0.clone(), m0.clone());
        let mut mom = vec![1.0f32; 500];
        let s = set_update(&mut w, &mut [&mut mom], &mut m, seed, 300, 2, 0.3).expect("set");
        (w, m, mom, s)
    };
    let (wa, ma, moma, sa) = run(11);
    let (wb, mb, momb, sb) = run(11);
    assert_eq!((&wa, &ma, &moma, sa), (&wb, &mb, &momb, sb));
    let (_, mc, _, _) = run(12);
    assert_ne!(ma, mc, "different seeds give different masks");

    assert_eq!(sa.n_drop, drop_count(120, 0.3));
    assert_eq!(sa.n_drop, 36);
    assert_eq!(count_active(&ma), 120);

    // Independent check: kept = top-84 |w| among active; grown = top-36 set_score outside kept.
    let mut act: Vec<usize> = mask_to_indices(&m0);
    act.sort_by(|&a, &b| w0[b].abs().partial_cmp(&w0[a].abs()).expect("finite"));
    let kept: Vec<usize> = act[..84].to_vec();
    let mut cand: Vec<usize> = (0..500).filter(|i| !kept.contains(i)).collect();
    cand.sort_by_key(|&i| std::cmp::Reverse(set_score(11, 300, 2, i as u32)));
    let mut expect: Vec<usize> = kept.iter().chain(&cand[..36]).copied().collect();
    expect.sort_unstable();
    assert_eq!(mask_to_indices(&ma), expect);
    for i in 0..500 {
        let was = m0[i] == 1.0;
        if ma[i] == 1.0 && was {
            assert_eq!((wa[i], moma[i]), (w0[i], 1.0));
        } else {
            assert_eq!((wa[i], moma[i]), (0.0, 0.0));
        }
    }
}

#[test]
fn snfs_ema_and_update() {
    let mut ema = vec![0.0f32, 1.0, 2.0];
    ema_update(&mut ema, &[1.0, 1.0, -2.0], 0.9).expect("ema");
    // (1 - 0.9) in f32 is 0.100000024; ema -= 0.100000024 * (ema - g).
    assert_eq!(ema[0], 0.100_000_024);
    assert_eq!(ema[1], 1.0);
    assert_eq!(ema[2], 2.0f32 - 0.100_000_024f32 * 4.0);
    is_invalid(ema_update(&mut ema, &[1.0], 0.9));

    // SNFS grows where |ema| is largest, exactly like RigL with the EMA as its score.
    let mut w = vec![0.9f32, 0.1, 0.0, 0.0, 0.5];
    let mut m = vec![1.0f32, 1.0, 0.0, 0.0, 1.0];
    let ema = vec![0.0f32, 0.0, -0.3, 0.2, 0.0];
    let s = snfs_update(&mut w, &mut [], &mut m, &ema, 0.34).expect("snfs");
    assert_eq!(s.n_drop, 1);
    assert_eq!(m, vec![1.0, 0.0, 1.0, 0.0, 1.0]);
    assert_eq!(w, vec![0.9, 0.0, 0.0, 0.0, 0.5]);
}

#[test]
fn prune_update_keeps_largest_with_ties_to_lower_index() {
    let mut w = vec![0.5f32, -0.5, 0.1, 0.0, 0.5, -0.9];
    let mut m = vec![1.0f32, 1.0, 1.0, 0.0, 1.0, 1.0];
    let mut mom = vec![1.0f32; 6];
    let s = prune_update(&mut w, &mut [&mut mom], &mut m, 3).expect("prune");
    assert_eq!((s.n_active, s.n_drop, s.n_active_after), (5, 2, 3));
    assert_eq!(m, vec![1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(w, vec![0.5, -0.5, 0.0, 0.0, 0.0, -0.9]);
    assert_eq!(mom, vec![1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    // A target above the active count changes nothing.
    let s = prune_update(&mut w, &mut [&mut mom], &mut m, 10).expect("noop");
    assert_eq!((s.n_drop, s.n_active_after), (0, 3));
}

#[test]
fn method_names_round_trip() {
    for m in [
        Method::Dense,
        Method::Static,
        Method::Set,
        Method::Snfs,
        Method::Rigl,
        Method::Prune,
    ] {
        assert_eq!(Method::parse(m.as_str()).expect("parse"), m);
    }
    assert_eq!(Method::parse(" RigL ").expect("case"), Method::Rigl);
    is_invalid(Method::parse("lottery"));
    for d in [Distribution::Uniform, Distribution::Er, Distribution::Erk] {
        assert_eq!(Distribution::parse(d.as_str()).expect("parse"), d);
    }
    assert_eq!(
        Distribution::parse("erdos_renyi_kernel").expect("official"),
        Distribution::Erk
    );
    is_invalid(Distribution::parse("normal"));
}

// ---------------------------------------------------------------- distributions

fn wrn_layers(doc: &Value) -> Vec<LayerShape> {
    doc["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| LayerShape::new(l["name"].as_str().expect("name"), &usizes(&l["shape"])))
        .collect()
}

#[test]
fn erk_and_er_match_official_wrn22_2() {
    let doc = load(ERK);
    let layers = wrn_layers(&doc);
    assert_eq!(layers.len(), 22);
    let mut checked = 0;
    for (dist, key) in [
        (Distribution::Erk, "erdos_renyi_kernel"),
        (Distribution::Er, "erdos_renyi"),
    ] {
        for s in ["0.8", "0.9", "0.95"] {
            let r = &doc["results"][format!("wrn22_2/{key}/S={s}")];
            let sparsity: f64 = s.parse().expect("S");
            // The JSON's layers are exactly the masked ones: all in the budget.
            let mut cfg = DistributionConfig::new(dist, sparsity);
            cfg.first_layer_dense = Some(false);
            let out = layer_sparsities(&layers, &cfg).expect("solve");
            let forced: Vec<&str> = out
                .iter()
                .filter(|l| l.sparsity == 0.0)
                .map(|l| l.name.as_str())
                .collect();
            let want: Vec<&str> = r["forced_dense"]
                .as_array()
                .expect("forced")
                .iter()
                .map(|v| v.as_str().expect("name"))
                .collect();
            assert_eq!(forced, want, "{key} S={s}: forced dense");
            for l in &out {
                let official = r["per_layer"][&l.name].as_f64().expect("value");
                assert!(
                    (l.sparsity - official).abs() <= 1e-6,
                    "{key} S={s} {}: {} vs {official}",
                    l.name,
                    l.sparsity
                );
                assert_eq!(
                    l.active,
                    l.total - (l.sparsity * l.total as f64).floor() as usize
                );
            }
            let active: usize = out.iter().map(|l| l.active).sum();
            let total: usize = out.iter().map(|l| l.total).sum();
            let density = active as f64 / total as f64;
            let official = r["global_density"].as_f64().expect("density");
            assert!(
                (density - official).abs() < 1e-15,
                "{density} vs {official}"
            );
            // Same budget as uniform, within the floor of each layer.
            let uniform: usize = out.iter().map(|l| active_count(l.total, sparsity)).sum();
            assert!(
                active.abs_diff(uniform) <= out.len(),
                "{active} vs {uniform}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn first_layer_dense_is_left_out_of_the_budget() {
    // WRN's first conv is unmasked in the official code: adding it as a forced-dense first layer
    // must reproduce the same values for the others.
    let doc = load(ERK);
    let mut layers = vec![LayerShape::new("conv0", &[3, 3, 3, 16])];
    layers.extend(wrn_layers(&doc));
    let mut cfg = DistributionConfig::new(Distribution::Erk, 0.9);
    cfg.first_layer_dense = Some(true);
    let out = layer_sparsities(&layers, &cfg).expect("solve");
    assert_eq!(out[0].sparsity, 0.0);
    assert_eq!(out[0].active, 432);
    let r = &doc["results"]["wrn22_2/erdos_renyi_kernel/S=0.9"]["per_layer"];
    for l in &out[1..] {
        assert!((l.sparsity - r[&l.name].as_f64().expect("v")).abs() <= 1e-6);
    }
    // The same through a custom sparsity of 0.
    let mut cfg2 = DistributionConfig::new(Distribution::Erk, 0.9);
    cfg2.custom.insert("conv0".into(), 0.0);
    assert_eq!(layer_sparsities(&layers, &cfg2).expect("custom"), out);
}

#[test]
fn distribution_defaults_and_options() {
    let layers = lenet();
    // Uniform keeps the first layer dense by default.
    let u = layer_sparsities(
        &layers,
        &DistributionConfig::new(Distribution::Uniform, 0.9),
    )
    .expect("uniform");
    let s: Vec<f64> = u.iter().map(|l| l.sparsity).collect();
    assert_eq!(s, vec![0.0, 0.9, 0.9]);
    assert_eq!(
        u.iter().map(|l| l.active).collect::<Vec<_>>(),
        vec![235_200, 3000, 100]
    );
    // ERK puts every layer in the budget by default (the first one included).
    let cfg = DistributionConfig::new(Distribution::Erk, 0.9);
    assert!(!cfg.first_layer_dense_resolved() && !cfg.last_layer_dense_resolved());
    let e = layer_sparsities(&layers, &cfg).expect("erk");
    let total_active: usize = e.iter().map(|l| l.active).sum();
    assert!(total_active.abs_diff(23_520 + 3000 + 100) <= 3);
    // By hand: raw = 1084/235200, 400/30000, 110/1000, so divisor = 1084 + 400 + 110 and
    // eps = 26620 / 1594; fc3 has 0.11 * eps > 1 and is forced dense. Again without it:
    // rhs = 23520 + 3000 - 900 (fc3's zeros) = 25620, eps = 25620 / 1484, max 0.0133 * eps < 1.
    let eps = 25_620.0 / 1484.0;
    let want = [
        1.0 - eps * (1084.0 / 235_200.0),
        1.0 - eps * (400.0 / 30_000.0),
        0.0,
    ];
    for (l, w) in e.iter().zip(want) {
        assert!(
            (l.sparsity - w).abs() < 1e-12,
            "{} {} {w}",
            l.name,
            l.sparsity
        );
    }
    assert_eq!(e[2].sparsity, 0.0);
    // Last layer dense, custom value.
    let mut cfg = DistributionConfig::new(Distribution::Uniform, 0.5);
    cfg.first_layer_dense = Some(false);
    cfg.last_layer_dense = Some(true);
    cfg.custom = BTreeMap::from([("fc2".to_string(), 0.75)]);
    let s: Vec<f64> = layer_sparsities(&layers, &cfg)
        .expect("opts")
        .iter()
        .map(|l| l.sparsity)
        .collect();
    assert_eq!(s, vec![0.5, 0.75, 0.0]);
    // A custom entry wins over the uniform default of first-layer-dense.
    let mut cfg = DistributionConfig::new(Distribution::Uniform, 0.5);
    cfg.custom.insert("fc1".into(), 0.25);
    assert_eq!(
        layer_sparsities(&layers, &cfg).expect("c")[0].sparsity,
        0.25
    );
    // ...but not over an explicit Some(true).
    cfg.first_layer_dense = Some(true);
    is_invalid(layer_sparsities(&layers, &cfg));
    // ERK power scale 0 makes every raw score 1: uniform density over the budget.
    let mut cfg = DistributionConfig::new(Distribution::Erk, 0.5);
    cfg.erk_power_scale = 0.0;
    for l in layer_sparsities(&layers, &cfg).expect("p0") {
        assert!((l.sparsity - 0.5).abs() < 1e-12);
    }
}

#[test]
fn distribution_degenerate_cases() {
    let layers = lenet();
    for d in [Distribution::Uniform, Distribution::Er, Distribution::Erk] {
        // S = 0: everything dense.
        for l in layer_sparsities(&layers, &DistributionConfig::new(d, 0.0)).expect("s0") {
            assert!(l.sparsity.abs() < 1e-12, "{d} {}: {}", l.name, l.sparsity);
            assert_eq!(l.active, l.total);
        }
        // Single layer: ER/ERK give it the uniform budget, 4608 - floor(0.8 * 4608) = 922
        // weights (sparsity 1 - 922/4608, not exactly S); uniform gives S itself.
        let one = vec![LayerShape::new("only", &[3, 3, 16, 32])];
        let mut cfg = DistributionConfig::new(d, 0.8);
        cfg.first_layer_dense = Some(false);
        let out = layer_sparsities(&one, &cfg).expect("single");
        let want = if d == Distribution::Uniform {
            0.8
        } else {
            1.0 - 922.0 / 4608.0
        };
        assert!(
            (out[0].sparsity - want).abs() < 1e-12,
            "{d}: {}",
            out[0].sparsity
        );
        assert!(out[0].active.abs_diff(922) <= 1);
        // S = 0.999: valid sparsities, budget kept.
        let mut cfg = DistributionConfig::new(d, 0.999);
        cfg.first_layer_dense = Some(false);
        let out = layer_sparsities(&layers, &cfg).expect("0.999");
        let uniform: usize = out.iter().map(|l| active_count(l.total, 0.999)).sum();
        let active: usize = out.iter().map(|l| l.active).sum();
        assert!(active.abs_diff(uniform) <= out.len());
        assert!(out.iter().all(|l| (0.0..1.0).contains(&l.sparsity)));
    }
    // A layer forced dense by ERK when its raw score is the largest: a tiny last layer.
    let layers = vec![
        LayerShape::new("big", &[1000, 1000]),
        LayerShape::new("tiny", &[2, 2]),
    ];
    let out =
        layer_sparsities(&layers, &DistributionConfig::new(Distribution::Erk, 0.5)).expect("f");
    assert_eq!(out[1].sparsity, 0.0);
    // Uniform budget 500000 + 2 ones; the forced layer takes 4, the big one the rest.
    assert!(out[0].active.abs_diff(499_998) <= 1, "{}", out[0].active);
}

#[test]
fn distribution_errors() {
    let layers = lenet();
    for s in [1.0, -0.1, f64::NAN, 1.5] {
        is_invalid(layer_sparsities(
            &layers,
            &DistributionConfig::new(Distribution::Erk, s),
        ));
    }
    is_invalid(layer_sparsities(
        &[],
        &DistributionConfig::new(Distribution::Erk, 0.5),
    ));
    let mut cfg = DistributionConfig::new(Distribution::Erk, 0.5);
    cfg.custom.insert("nope".into(), 0.5);
    assert!(is_invalid(layer_sparsities(&layers, &cfg)).contains("nope"));
    for v in [1.0, -0.5, f64::NAN] {
        let mut cfg = DistributionConfig::new(Distribution::Erk, 0.5);
        cfg.custom.insert("fc2".into(), v);
        is_invalid(layer_sparsities(&layers, &cfg));
    }
    let mut cfg = DistributionConfig::new(Distribution::Erk, 0.5);
    cfg.erk_power_scale = -1.0;
    is_invalid(layer_sparsities(&layers, &cfg));
    let cfg = DistributionConfig::new(Distribution::Erk, 0.5);
    let dup = vec![LayerShape::new("a", &[2, 2]), LayerShape::new("a", &[3, 3])];
    is_invalid(layer_sparsities(&dup, &cfg));
    is_invalid(layer_sparsities(&[LayerShape::new("z", &[0, 3])], &cfg));
    is_invalid(layer_sparsities(&[LayerShape::new("v", &[5])], &cfg));
}

#[test]
fn active_count_uses_the_f64_floor() {
    assert_eq!(active_count(100, 0.29), 72); // 0.29 * 100 = 28.999999999999996
    assert_eq!(active_count(235_200, 0.9), 23_520);
    assert_eq!(active_count(10, 0.0), 10);
    assert_eq!(active_count(10, 0.999), 1);
    assert_eq!(active_count(0, 0.5), 0);
}

// ---------------------------------------------------------------- schedules

#[test]
fn update_schedule_steps_and_cosine_fraction() {
    let s = UpdateSchedule::new(100, 750, 0.3, DropSchedule::Cosine).expect("sched");
    assert!(s.is_update_step(0));
    assert!(s.is_update_step(100));
    assert!(!s.is_update_step(150));
    assert!(s.is_update_step(700));
    assert!(!s.is_update_step(800));
    let s2 = UpdateSchedule::new(100, 800, 0.3, DropSchedule::Cosine).expect("sched");
    assert!(s2.is_update_step(800));

    let s = UpdateSchedule::new(100, 1000, 0.3, DropSchedule::Cosine).expect("sched");
    // By hand in f32, t_end 1000, alpha 0.3: t = 0: (0.3 * 0.5) * (1 + 1) = 0x3e99999a (0.3f32);
    // t = 500: pi_f32 * 0.5 = 1.5707964, cos = -4.371139e-8, 1 + cos rounds to 0.99999994,
    // 0.15f32 * 0.99999994 = 0x3e199999; t >= t_end: 1 + cos(pi_f32) = 1 + (-1) = 0.
    for (t, bits) in [
        (0u64, 0x3e99_999au32),
        (500, 0x3e19_9999),
        (1000, 0),
        (1500, 0),
    ] {
        assert_eq!(s.drop_fraction(t).to_bits(), bits, "step {t}");
    }
    // Other steps depend on the platform's f32 cos in the last bit. Reference: the same f32
    // formula with a correctly rounded cos (Python `math.cos` on the f32 argument, rounded to
    // f32); glibc's cosf gives these bits, other libms agree to 1 ulp of cos (< 3e-8 here).
    let want: [(u64, u32); 7] = [
        (1, 0x3e99_9981),
        (100, 0x3e95_d755),
        (250, 0x3e83_1b16),
        (333, 0x3e66_8a0c),
        (700, 0x3d7d_43c9),
        (750, 0x3d33_f420),
        (999, 0x3547_3334),
    ];
    for (t, bits) in want {
        assert!(
            (s.drop_fraction(t) - f32::from_bits(bits)).abs() < 3e-8,
            "step {t}: {} vs {}",
            s.drop_fraction(t),
            f32::from_bits(bits)
        );
    }
    assert!((cosine_drop_fraction(37, 0.5, 75) - f32::from_bits(0x3e82_ae3d)).abs() < 3e-8);
    // Every step against the same formula with cos taken in f64 and rounded to f32.
    for t in 0..=1000u64 {
        let r = t as f32 / 1000.0f32;
        let c = (f64::from(std::f32::consts::PI * r)).cos() as f32;
        let want = 0.3f32 * 0.5f32 * (1.0f32 + c);
        assert!((s.drop_fraction(t) - want).abs() < 3e-8, "step {t}");
    }
    // numpy's float32 cos (used by rigl_update.py) is not correctly rounded either (1 ulp off
    // for ~18% of these arguments): its step 700 is 0x3d7d43c7. Within 3e-8 as well.
    for (t, np_bits) in [
        (500u64, 0x3e19_9999u32),
        (700, 0x3d7d_43c7),
        (999, 0x3547_3334),
    ] {
        assert!((s.drop_fraction(t) - f32::from_bits(np_bits)).abs() < 3e-8);
    }
    // By hand: at t = 0, (0.3 * 0.5) * (1 + 1) = 0.3f32; at t_end, 1 + cos(pi_f32) = 0.
    assert_eq!(s.drop_fraction(0), 0.3f32);
    let c = UpdateSchedule::new(100, 1000, 0.3, DropSchedule::Constant).expect("c");
    assert_eq!(c.drop_fraction(999), 0.3f32);

    let d = UpdateSchedule::with_defaults(10_000);
    assert_eq!((d.delta_t, d.t_end, d.alpha), (100, 7500, 0.3));
    assert_eq!(d.drop_schedule, DropSchedule::Cosine);
    assert_eq!(UpdateSchedule::with_defaults(1001).t_end, 750);

    is_invalid(UpdateSchedule::new(0, 10, 0.3, DropSchedule::Cosine));
    is_invalid(UpdateSchedule::new(10, 10, 1.5, DropSchedule::Cosine));
    let bad = UpdateSchedule {
        delta_t: 0,
        ..UpdateSchedule::with_defaults(100)
    };
    assert!(!bad.is_update_step(0));
    assert_eq!(
        DropSchedule::parse("constant").expect("p"),
        DropSchedule::Constant
    );
}

#[test]
fn drop_count_in_f32() {
    assert_eq!(drop_count(100, 0.3), 30);
    assert_eq!(drop_count(10, 0.3), 3);
    assert_eq!(drop_count(7, 0.5), 3);
    assert_eq!(drop_count(0, 0.5), 0);
    assert_eq!(drop_count(5, 1.0), 5);
    assert_eq!(drop_count(5, 2.0), 5);
    assert_eq!(drop_count(5, f32::NAN), 0);
    assert_eq!(drop_count(5, -0.5), 0);
    // f32(16777217) rounds to 16777216.
    assert_eq!(drop_count(16_777_217, 1.0), 16_777_216);
}

#[test]
fn prune_schedule_cubic() {
    let p = PruneSchedule::new(0.0, 0.9, 100, 1100, 100).expect("prune");
    assert_eq!(p.sparsity_at(0), 0.0);
    assert_eq!(p.sparsity_at(100), 0.0);
    // Midway: 0.9 - 0.9 * 0.5^3 = 0.7875; a quarter: 0.9 - 0.9 * 0.75^3 = 0.5203125.
    assert!((p.sparsity_at(600) - 0.7875).abs() < 1e-15);
    assert!((p.sparsity_at(350) - 0.520_312_5).abs() < 1e-15);
    assert_eq!(p.sparsity_at(1100), 0.9);
    assert_eq!(p.sparsity_at(5000), 0.9);
    assert!(p.is_prune_step(100) && p.is_prune_step(600) && p.is_prune_step(1100));
    assert!(!p.is_prune_step(0) && !p.is_prune_step(650) && !p.is_prune_step(1200));
    // t1 is always a pruning step.
    let q = PruneSchedule::new(0.1, 0.5, 0, 250, 100).expect("q");
    assert!(q.is_prune_step(200) && q.is_prune_step(250) && !q.is_prune_step(300));
    assert!((q.sparsity_at(0) - 0.1).abs() < 1e-15);
    // A layer whose own final sparsity is below s_init never exceeds it.
    assert_eq!(q.sparsity_at_with_final(0, 0.0), 0.0);
    is_invalid(PruneSchedule::new(0.0, 1.0, 0, 10, 1));
    is_invalid(PruneSchedule::new(0.0, 0.5, 10, 5, 1));
    is_invalid(PruneSchedule::new(0.0, 0.5, 0, 10, 0));
}

// ---------------------------------------------------------------- init

#[test]
fn sparse_init_exact_count_and_reproducible() {
    let a = init_layer(42, 3, &[3, 3, 16, 32], 500, WeightInit::HeNormal).expect("a");
    let b = init_layer(42, 3, &[3, 3, 16, 32], 500, WeightInit::HeNormal).expect("b");
    assert_eq!(a, b);
    assert_eq!(a.mask.len(), 4608);
    assert_eq!(count_active(&a.mask), 500);
    assert!(a.mask.iter().all(|&m| m == 0.0 || m == 1.0));
    for (w, m) in a.weights.iter().zip(&a.mask) {
        if *m == 0.0 {
            assert_eq!(w.to_bits(), 0);
        } else {
            assert!(*w != 0.0 && w.is_finite());
        }
    }
    let c = init_layer(43, 3, &[3, 3, 16, 32], 500, WeightInit::HeNormal).expect("c");
    assert_ne!(a.mask, c.mask);
    let d = init_layer(42, 4, &[3, 3, 16, 32], 500, WeightInit::HeNormal).expect("d");
    assert_ne!(a.mask, d.mask);
    // The dense weights do not depend on the sparsity: where both masks are on, equal.
    let e = init_layer(42, 3, &[3, 3, 16, 32], 4000, WeightInit::HeNormal).expect("e");
    assert_eq!(count_active(&e.mask), 4000);
    let mut both = 0;
    for i in 0..4608 {
        if a.mask[i] == 1.0 && e.mask[i] == 1.0 {
            assert_eq!(a.weights[i], e.weights[i]);
            both += 1;
        }
    }
    assert!(both > 0);
    // Extremes.
    let full = init_layer(1, 0, &[4, 5], 20, WeightInit::GlorotUniform).expect("full");
    assert_eq!(count_active(&full.mask), 20);
    let none = init_layer(1, 0, &[4, 5], 0, WeightInit::GlorotUniform).expect("none");
    assert!(none.weights.iter().all(|&w| w == 0.0));
    is_invalid(init_layer(1, 0, &[4, 5], 21, WeightInit::HeNormal));
    is_invalid(init_layer(1, 0, &[0, 5], 0, WeightInit::HeNormal));
}

#[test]
fn weight_init_scales_from_dense_fans() {
    assert_eq!(fans(&[784, 300]).expect("fc"), (784, 300));
    assert_eq!(fans(&[3, 3, 16, 32]).expect("conv"), (144, 288));
    // He normal: variance 2 / fan_in regardless of the mask.
    let he = init_layer(5, 0, &[400, 500], 200_000, WeightInit::HeNormal).expect("he");
    let n = he.weights.len() as f64;
    let mean = he.weights.iter().map(|&w| w as f64).sum::<f64>() / n;
    let var = he
        .weights
        .iter()
        .map(|&w| (w as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(mean.abs() < 0.002, "mean {mean}");
    assert!((var / (2.0 / 400.0) - 1.0).abs() < 0.02, "var {var}");
    // Glorot uniform: within sqrt(6 / (fan_in + fan_out)), variance limit^2 / 3.
    let g = init_layer(5, 0, &[400, 500], 200_000, WeightInit::GlorotUniform).expect("g");
    let limit = (6.0f64 / 900.0).sqrt();
    assert!(g.weights.iter().all(|&w| (w as f64).abs() <= limit));
    let var = g.weights.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() / n;
    assert!(
        (var / (limit * limit / 3.0) - 1.0).abs() < 0.02,
        "var {var}"
    );
}

#[test]
fn mask_helpers() {
    let m = indices_to_mask(5, &[4, 1]).expect("mask");
    assert_eq!(m, vec![0.0, 1.0, 0.0, 0.0, 1.0]);
    assert_eq!(mask_to_indices(&m), vec![1, 4]);
    assert_eq!(mask_to_u8(&m), vec![0, 1, 0, 0, 1]);
    assert_eq!(mask_from_u8(&[0, 1, 0, 0, 1]), m);
    is_invalid(indices_to_mask(3, &[3]));
    let mut rng = rng_for(1, 1);
    assert_eq!(
        count_active(&random_mask(10, 10, &mut rng).expect("all")),
        10
    );
}

// ---------------------------------------------------------------- FLOPs

fn lenet_costs(sparsity: f64) -> Vec<LayerCost> {
    [[784usize, 300], [300, 100], [100, 10]]
        .iter()
        .map(|s| LayerCost::new(s, sparsity, 1).expect("cost"))
        .collect()
}

fn cfg(delta_t: u64, total: u64, prune: Option<PruneSchedule>) -> TrainFlopsConfig {
    TrainFlopsConfig {
        delta_t,
        total_steps: total,
        prune,
    }
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
}

#[test]
fn lenet_flops_hand_computed() {
    // f_D = 2 * (235200 + 30000 + 1000) = 532400; at 90%: 23520 + 3000 + 100 active, f_S = 53240.
    assert_eq!(dense_layer_flops(&[784, 300], 1).expect("fc"), 470_400.0);
    assert_eq!(
        dense_layer_flops(&[3, 3, 16, 32], 64).expect("conv"),
        2.0 * 4608.0 * 64.0
    );
    let l = lenet_costs(0.9);
    let c = cfg(100, 1000, None);
    close(
        inference_flops_vs_dense(Method::Rigl, &l).expect("inf"),
        0.1,
    );
    close(
        inference_flops_vs_dense(Method::Dense, &l).expect("inf"),
        1.0,
    );
    close(train_flops_vs_dense(Method::Dense, &l, &c).expect("d"), 1.0);
    close(
        train_flops_vs_dense(Method::Static, &l, &c).expect("s"),
        0.1,
    );
    close(train_flops_vs_dense(Method::Set, &l, &c).expect("set"), 0.1);
    // SNFS: (2 * 53240 + 532400) / (3 * 532400) = 0.4.
    close(
        train_flops_vs_dense(Method::Snfs, &l, &c).expect("snfs"),
        0.4,
    );
    // RigL, ΔT = 100: (3 * 0.1 * 100 + 2 * 0.1 + 1) / 101 / 3 = 31.2 / 303.
    close(
        train_flops_vs_dense(Method::Rigl, &l, &c).expect("rigl"),
        31.2 / 303.0,
    );
    // Pruning 0 -> 0.9 over steps 0..=2 every step, 4 steps: active 266200 (t=0, s=0),
    // 56568 (t=1, s=0.7875: 49980 + 6375 + 213), 26620, 26620.
    let p = PruneSchedule::new(0.0, 0.9, 0, 2, 1).expect("p");
    close(
        train_flops_vs_dense(Method::Prune, &l, &cfg(100, 4, Some(p))).expect("prune"),
        (266_200.0 + 56_568.0 + 26_620.0 + 26_620.0) / 4.0 / 266_200.0,
    );
    // t0 = 1, t1 = 4, every 2, 6 steps: dense at 0..=2 (pruned to s=0 at 1), s(3) = 0.8666..
    // (31360 + 4000 + 134 = 35494 active) at 3, 0.9 from 4.
    let p = PruneSchedule::new(0.0, 0.9, 1, 4, 2).expect("p");
    close(
        train_flops_vs_dense(Method::Prune, &l, &cfg(100, 6, Some(p))).expect("prune"),
        147_889.0 / 266_200.0,
    );
    is_invalid(train_flops_vs_dense(Method::Prune, &l, &c));
    is_invalid(train_flops_vs_dense(Method::Rigl, &l, &cfg(0, 10, None)));
    is_invalid(inference_flops_vs_dense(Method::Rigl, &[]));
}

#[test]
fn uniform_flops_ratios_are_exact() {
    // 75% of every layer (sizes divisible by 4, conv with spatial size): f_S = f_D / 4 exactly.
    let layers = vec![
        LayerCost::new(&[3, 3, 16, 32], 0.75, 64).expect("c"),
        LayerCost::new(&[512, 128], 0.75, 1).expect("d"),
        LayerCost::new(&[128, 12], 0.75, 1).expect("o"),
    ];
    let c = cfg(50, 1000, None);
    assert_eq!(
        inference_flops_vs_dense(Method::Static, &layers).expect("i"),
        0.25
    );
    assert_eq!(
        train_flops_vs_dense(Method::Static, &layers, &c).expect("s"),
        0.25
    );
    assert_eq!(
        train_flops_vs_dense(Method::Snfs, &layers, &c).expect("n"),
        0.5
    );
    close(
        train_flops_vs_dense(Method::Rigl, &layers, &c).expect("r"),
        (3.0 * 0.25 * 50.0 + 2.0 * 0.25 + 1.0) / 51.0 / 3.0,
    );
}

// ---------------------------------------------------------------- plans

#[test]
fn parse_layers_and_errors() {
    let l = parse_layers("dense:784x300, dense:300x100,conv:3x3x16x32@8x8").expect("parse");
    assert_eq!(l.len(), 3);
    assert_eq!(l[0].layer.name, "dense0");
    assert_eq!(l[1].layer.name, "dense1");
    assert_eq!(l[2].layer.name, "conv2");
    assert_eq!(l[2].kind, LayerKind::Conv);
    assert_eq!(l[2].layer.shape, vec![3, 3, 16, 32]);
    assert_eq!(l[2].out_hw, (8, 8));
    assert_eq!(l[0].out_hw, (1, 1));
    assert_eq!(parse_layers("conv:1x1x4x4").expect("c")[0].out_hw, (1, 1));
    for bad in [
        "",
        "  ",
        "dense:784x300,,dense:3x3",
        "dense784x300",
        "lstm:3x3",
        "dense:784",
        "dense:784x300x2",
        "dense:784x0",
        "dense:784x-3",
        "dense:784xabc",
        "conv:3x3x16",
        "conv:3x3x16x32@8",
        "conv:3x3x16x32@8x0",
        "dense:10x10@2x2",
    ] {
        is_invalid(parse_layers(bad));
    }
}

#[test]
fn plan_for_lenet() {
    let layers = parse_layers("dense:784x300,dense:300x100,dense:100x10").expect("parse");
    let mut dist = DistributionConfig::new(Distribution::Uniform, 0.9);
    dist.first_layer_dense = Some(false);
    let pc = PlanConfig {
        distribution: dist,
        method: Method::Rigl,
        delta_t: 100,
        total_steps: 10_000,
        prune: None,
    };
    let plan = Plan::build(&layers, &pc).expect("plan");
    assert_eq!(plan.active, 26_620);
    assert_eq!(plan.total, 266_200);
    close(plan.density, 0.1);
    close(plan.inference_flops_vs_dense, 0.1);
    close(plan.train_flops_vs_dense, 31.2 / 303.0);
    let text = plan.to_text();
    assert!(text.contains("dense0") && text.contains("784x300") && text.contains("23520"));
    let json = serde_json::to_value(&plan).expect("json");
    assert_eq!(json["layers"][1]["name"], "dense1");
    assert_eq!(json["layers"][1]["active"], 3000);
    assert!(json["train_flops_vs_dense"].is_f64());

    // Dense ignores the distribution.
    let dense = Plan::build(
        &layers,
        &PlanConfig {
            method: Method::Dense,
            ..pc.clone()
        },
    )
    .expect("dense");
    assert_eq!(dense.active, 266_200);
    assert_eq!(dense.train_flops_vs_dense, 1.0);
    // Pruning needs a schedule.
    is_invalid(Plan::build(
        &layers,
        &PlanConfig {
            method: Method::Prune,
            ..pc.clone()
        },
    ));
    is_invalid(Plan::build(&[], &pc));
}

// ---------------------------------------------------------------- npy / npz

fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(data);
    b
}

fn npy_v23(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    h.push('\n');
    let mut b = vec![0x93, b'N', b'U', b'M', b'P', b'Y', major, 0];
    b.extend((h.len() as u32).to_le_bytes());
    b.extend(h.as_bytes());
    b.extend(data);
    b
}

fn bad_file(r: Result<npy::NpyArray, RiglError>) -> String {
    match r {
        Err(RiglError::BadFile { path, message }) => {
            assert_eq!(path, "x.npy");
            message
        }
        other => panic!("expected BadFile, got {other:?}"),
    }
}

#[test]
fn npy_parse_hand_built() {
    let f: Vec<u8> = [1.5f32, -2.0, 0.25, 3.0, 4.0, 5.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let a = npy::parse_npy(
        &npy_v1(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &f,
        ),
        "x.npy",
    )
    .expect("f4");
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, NpyData::F32(vec![1.5, -2.0, 0.25, 3.0, 4.0, 5.0]));

    let a = npy::parse_npy(
        &npy_v23(
            2,
            "{'shape': (4,), 'fortran_order': False, 'descr': '|u1'}",
            &[0, 7, 255, 1],
        ),
        "x.npy",
    )
    .expect("u1");
    assert_eq!(
        (a.shape, a.data),
        (vec![4], NpyData::U8(vec![0, 7, 255, 1]))
    );

    let a = npy::parse_npy(
        &npy_v23(
            3,
            "{\"descr\": \"|b1\", \"fortran_order\": False, \"shape\": (3,)}",
            &[1, 0, 1],
        ),
        "x.npy",
    )
    .expect("b1");
    assert_eq!(a.data, NpyData::Bool(vec![true, false, true]));

    let d: Vec<u8> = [0.1f64, -7.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let a = npy::parse_npy(
        &npy_v1(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }",
            &d,
        ),
        "x.npy",
    )
    .expect("f8");
    assert_eq!(a.data, NpyData::F64(vec![0.1, -7.0]));

    let a = npy::parse_npy(
        &npy_v1(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }",
            &[],
        ),
        "x.npy",
    )
    .expect("empty");
    assert_eq!((a.shape, a.data), (vec![0], NpyData::F32(vec![])));
}

#[test]
fn npy_parse_errors() {
    let f4 = |dict: &str, n: usize| npy_v1(dict, &vec![0u8; n]);
    let ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    assert!(bad_file(npy::parse_npy(b"\x93NUMPX\x01\x00\x00\x00", "x.npy")).contains("magic"));
    assert!(bad_file(npy::parse_npy(b"\x93NU", "x.npy")).contains("magic"));
    let mut v4 = f4(ok, 8);
    v4[6] = 4;
    assert!(bad_file(npy::parse_npy(&v4, "x.npy")).contains("version"));
    assert!(bad_file(npy::parse_npy(
        &f4(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            16
        ),
        "x.npy"
    ))
    .contains("Fortran"));
    assert!(bad_file(npy::parse_npy(
        &f4(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
            8
        ),
        "x.npy"
    ))
    .contains("big-endian"));
    assert!(bad_file(npy::parse_npy(
        &f4(
            "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }",
            4
        ),
        "x.npy"
    ))
    .contains("<i2"));
    assert!(bad_file(npy::parse_npy(&f4(ok, 7), "x.npy")).contains("needs 8"));
    assert!(bad_file(npy::parse_npy(&f4(ok, 9), "x.npy")).contains("needs 8"));
    assert!(bad_file(npy::parse_npy(
        &npy_v1(
            "{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }",
            &[1, 2]
        ),
        "x.npy"
    ))
    .contains("bool"));
    assert!(bad_file(npy::parse_npy(
        &f4("{'descr': '<f4', 'shape': (2,), }", 8),
        "x.npy"
    ))
    .contains("fortran_order"));
    assert!(bad_file(npy::parse_npy(
        &f4(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,x), }",
            8
        ),
        "x.npy"
    ))
    .contains("shape"));
    let mut trunc = f4(ok, 8);
    trunc[8] = 0xff; // header length beyond the file
    assert!(bad_file(npy::parse_npy(&trunc, "x.npy")).contains("truncated"));
    match npy::read_npy("/nonexistent/dir/x.npy") {
        Err(RiglError::Io { path, .. }) => assert!(path.contains("x.npy")),
        other => panic!("expected Io, got {other:?}"),
    }
}

/// Bitwise CRC-32 (IEEE), independent of flate2.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn u16_at(b: &[u8], i: usize) -> usize {
    usize::from(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn u32_at(b: &[u8], i: usize) -> usize {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
}

/// A tiny zip reader for STORED archives: checks EOCD, central directory and local headers
/// against each other and the CRCs, and returns (name, bytes) in order.
fn read_stored_zip(b: &[u8]) -> Vec<(String, Vec<u8>)> {
    let eocd = b.len() - 22;
    assert_eq!(u32_at(b, eocd), 0x0605_4b50, "EOCD signature");
    let n = u16_at(b, eocd + 10);
    assert_eq!(u16_at(b, eocd + 8), n);
    let (cd_size, cd_off) = (u32_at(b, eocd + 12), u32_at(b, eocd + 16));
    assert_eq!(cd_off + cd_size, eocd, "central directory ends at EOCD");
    let mut out = Vec::new();
    let mut p = cd_off;
    for _ in 0..n {
        assert_eq!(u32_at(b, p), 0x0201_4b50, "central header signature");
        assert_eq!(u16_at(b, p + 10), 0, "STORED");
        let crc = u32_at(b, p + 16);
        let (csize, usize_) = (u32_at(b, p + 20), u32_at(b, p + 24));
        assert_eq!(csize, usize_);
        let (nl, xl, cl) = (u16_at(b, p + 28), u16_at(b, p + 30), u16_at(b, p + 32));
        let local = u32_at(b, p + 42);
        let name = String::from_utf8(b[p + 46..p + 46 + nl].to_vec()).expect("utf8");
        // Local header agrees.
        assert_eq!(u32_at(b, local), 0x0403_4b50, "local header signature");
        assert_eq!(u16_at(b, local + 8), 0);
        assert_eq!(u32_at(b, local + 14), crc);
        assert_eq!(u32_at(b, local + 18), csize);
        assert_eq!(u32_at(b, local + 22), usize_);
        let (lnl, lxl) = (u16_at(b, local + 26), u16_at(b, local + 28));
        assert_eq!(&b[local + 30..local + 30 + lnl], name.as_bytes());
        let start = local + 30 + lnl + lxl;
        let data = b[start..start + csize].to_vec();
        assert_eq!(crc32(&data), crc as u32, "CRC of {name}");
        out.push((name, data));
        p += 46 + nl + xl + cl;
    }
    assert_eq!(p, eocd);
    out
}

#[test]
fn npz_round_trip_and_atomic_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("masks.npz");
    let mask: Vec<u8> = vec![1, 0, 0, 1, 1, 0];
    let w: Vec<f32> = vec![0.5, 0.0, 0.0, -1.25, 3.0, 0.0];
    npy::write_npz(
        &path,
        &[
            (
                "dense0_mask",
                NpyView {
                    shape: &[2, 3],
                    data: NpyDataRef::U8(&mask),
                },
            ),
            (
                "dense0_w",
                NpyView {
                    shape: &[6],
                    data: NpyDataRef::F32(&w),
                },
            ),
        ],
    )
    .expect("write");
    let bytes = std::fs::read(&path).expect("read");
    let entries = read_stored_zip(&bytes);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].0, "dense0_mask.npy");
    assert_eq!(entries[1].0, "dense0_w.npy");
    for (_, data) in &entries {
        // npy data starts at a multiple of 64, header ends with '\n'.
        let hl = u16_at(data, 8);
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(data[10 + hl - 1], b'\n');
    }
    let m = npy::parse_npy(&entries[0].1, "m").expect("mask");
    assert_eq!((m.shape, m.data), (vec![2, 3], NpyData::U8(mask.clone())));
    let a = npy::parse_npy(&entries[1].1, "w").expect("w");
    assert_eq!((a.shape, a.data), (vec![6], NpyData::F32(w.clone())));
    // Deterministic output.
    let path2 = dir.path().join("again.npz");
    npy::write_npz(
        &path2,
        &[
            ("dense0_mask", m_view(&mask)),
            (
                "dense0_w",
                NpyView {
                    shape: &[6],
                    data: NpyDataRef::F32(&w),
                },
            ),
        ],
    )
    .expect("again");
    assert_eq!(std::fs::read(&path2).expect("r"), bytes);

    // Failure leaves the old file untouched and no temporary behind.
    let before = std::fs::read_dir(dir.path()).expect("ls").count();
    is_invalid(npy::write_npz(
        &path,
        &[(
            "bad",
            NpyView {
                shape: &[5],
                data: NpyDataRef::F32(&w),
            },
        )],
    ));
    is_invalid(npy::write_npz(
        &path,
        &[("a", m_view(&mask)), ("a", m_view(&mask))],
    ));
    is_invalid(npy::write_npz(&path, &[("x/y", m_view(&mask))]));
    assert_eq!(std::fs::read(&path).expect("r"), bytes);
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), before);
    let missing = dir.path().join("no/such/dir/out.npz");
    match npy::write_npz(&missing, &[("m", m_view(&mask))]) {
        Err(RiglError::Io { .. }) => {}
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(!missing.exists());

    // An empty archive is valid.
    let empty = dir.path().join("empty.npz");
    npy::write_npz(&empty, &[]).expect("empty");
    assert!(read_stored_zip(&std::fs::read(&empty).expect("r")).is_empty());

    // write_npy / read_npy round trip, bool and f64 too.
    let p = dir.path().join("b.npy");
    npy::write_npy(
        &p,
        NpyView {
            shape: &[],
            data: NpyDataRef::F64(&[2.5]),
        },
    )
    .expect("scalar");
    let s = npy::read_npy(&p).expect("read");
    assert_eq!((s.shape, s.data), (vec![], NpyData::F64(vec![2.5])));
    npy::write_npy(
        &p,
        NpyView {
            shape: &[1, 2],
            data: NpyDataRef::Bool(&[true, false]),
        },
    )
    .expect("bool");
    let s = npy::read_npy(&p).expect("read");
    assert_eq!(s.data, NpyData::Bool(vec![true, false]));
}

fn m_view(mask: &[u8]) -> NpyView<'_> {
    NpyView {
        shape: &[2, 3],
        data: NpyDataRef::U8(mask),
    }
}

//! The compressed sparse model against the masked-dense model (the reference path): training
//! steps agree to float tolerance, mask updates (RigL, SET) give the same masks bit for bit, and
//! the indexes rebuilt on the GPU equal the CPU builder's.

mod common;

use common::{assert_close, ctx, data};
use rigl::gpu::ops::{run, Dispatch, SgdConfig};
use rigl::gpu::{gemm, GpuContext};
use rigl::nn::{Mlp, MlpConfig, SparseMlp};
use rigl::sparse::csr::CsrIndex;
use rigl::sparse::init::{init_layer, WeightInit};
use rigl::sparse::update::{GrowRule, LayerCounts, MaskUpdater};

const SIZES: [usize; 4] = [37, 24, 13, 5];
const BATCH: usize = 16;

struct Pair {
    masked: Mlp,
    sparse: SparseMlp,
    updater: MaskUpdater,
    active: Vec<usize>,
}

fn pair(ctx: &GpuContext, density: f64, seed: u64) -> Pair {
    pair_with(ctx, density, seed, &[false, false, false])
}

/// `dense[l]`: layer l of the compressed model runs on dense GEMMs (the per-layer choice).
fn pair_with(ctx: &GpuContext, density: f64, seed: u64, dense: &[bool]) -> Pair {
    let cfg = MlpConfig {
        sizes: SIZES.to_vec(),
        batch: BATCH,
        masked: true,
        label_smoothing: 0.0,
        sgd: SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-3,
            nesterov: true,
        },
        gemm: gemm::choose_variant(ctx).unwrap(),
    };
    let mut weights = vec![];
    let mut masks = vec![];
    let mut biases = vec![];
    let mut active = vec![];
    for l in 0..SIZES.len() - 1 {
        let n = SIZES[l] * SIZES[l + 1];
        // The last layer fully dense, as ERK makes small layers.
        let a = if l == SIZES.len() - 2 {
            n
        } else {
            ((n as f64) * density) as usize
        };
        let init = init_layer(
            seed,
            l as u64,
            &[SIZES[l], SIZES[l + 1]],
            a,
            WeightInit::GlorotUniform,
        )
        .unwrap();
        weights.push(init.weights);
        masks.push(init.mask);
        biases.push(
            data(SIZES[l + 1], 40 + l as u32)
                .iter()
                .map(|v| v * 0.1)
                .collect(),
        );
        active.push(a);
    }
    let masked = Mlp::new(ctx, cfg.clone()).unwrap();
    masked.load(ctx, &weights, &masks, &biases).unwrap();
    let sparse = SparseMlp::with_layer_kernels(ctx, cfg, &active, 7, dense).unwrap();
    sparse.load(ctx, &weights, &masks, &biases).unwrap();
    let updater = MaskUpdater::new(
        ctx,
        masked.placements.clone(),
        &masked.w,
        &masked.mask,
        &masked.mom,
        &masked.grad,
        7,
    )
    .unwrap();
    Pair {
        masked,
        sparse,
        updater,
        active,
    }
}

fn batch(step: u32) -> (Vec<f32>, Vec<u32>) {
    let x = data(SIZES[0] * BATCH, 100 + step);
    let labels = (0..BATCH as u32)
        .map(|i| (i * 7 + step) % SIZES[3] as u32)
        .collect();
    (x, labels)
}

fn step(ctx: &GpuContext, p: &Pair, s: u32, update: Option<GrowRule>, drop_fraction: f64) {
    let (x, labels) = batch(s);
    p.masked.set_batch(ctx, &x, &labels).unwrap();
    p.sparse.set_batch(ctx, &x, &labels).unwrap();
    let mut m: Vec<&Dispatch> = p.masked.forward_ops();
    m.extend(p.masked.backward_ops());
    let mut sp: Vec<&Dispatch> = p.sparse.forward_ops();
    sp.extend(p.sparse.backward_ops());
    match update {
        Some(rule) => {
            let counts: Vec<LayerCounts> = p
                .active
                .iter()
                .map(|&a| {
                    let d = rigl::sparse::schedule::drop_count(a, drop_fraction as f32);
                    LayerCounts {
                        k_keep: a - d,
                        k_grow: d,
                    }
                })
                .collect();
            p.updater.prepare(ctx, s, &counts).unwrap();
            m.extend(p.updater.dispatches(rule));
            p.sparse.prepare_update(ctx, s, &counts).unwrap();
            sp.extend(p.sparse.update_ops(rule).unwrap());
        }
        None => {
            m.extend(p.masked.sgd_ops());
            sp.extend(p.sparse.sgd_ops());
        }
    }
    run(ctx, "masked step", &m).unwrap();
    run(ctx, "sparse step", &sp).unwrap();
}

fn compare(ctx: &GpuContext, p: &Pair, what: &str) {
    let mw = p.masked.read_layers(ctx, &p.masked.w).unwrap();
    let mm = p.masked.read_layers(ctx, &p.masked.mask).unwrap();
    let mmom = p.masked.read_layers(ctx, &p.masked.mom).unwrap();
    let sw = p.sparse.read_dense(ctx, &p.sparse.vals).unwrap();
    let sm = p.sparse.read_masks(ctx).unwrap();
    let smom = p.sparse.read_dense(ctx, &p.sparse.mom).unwrap();
    let idx = p.sparse.read_indexes(ctx).unwrap();
    for l in 0..mw.len() {
        assert_eq!(sm[l], mm[l], "{what}: layer {l} masks differ");
        assert_close(
            &format!("{what}: layer {l} weights"),
            &sw[l],
            &mw[l],
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{what}: layer {l} momentum"),
            &smom[l],
            &mmom[l],
            1e-5,
            1e-4,
        );
        let want = CsrIndex::from_mask(SIZES[l], SIZES[l + 1], &mm[l]).unwrap();
        assert_eq!(
            idx[l], want,
            "{what}: layer {l} index differs from the CPU builder's"
        );
        assert_eq!(idx[l].nnz(), p.active[l], "{what}: layer {l} active count");
    }
    assert_close(
        &format!("{what}: biases"),
        &p.sparse.read_biases(ctx).unwrap().concat(),
        &p.masked.read_biases(ctx).unwrap().concat(),
        1e-5,
        1e-4,
    );
    let (ls, cs) = p.sparse.read_sums(ctx).unwrap();
    let (lm, cm) = p.masked.read_sums(ctx).unwrap();
    assert!(
        (ls - lm).abs() <= 1e-4 * lm.abs().max(1.0),
        "{what}: loss {ls} vs {lm}"
    );
    assert_eq!(cs, cm, "{what}: correct counts");
}

#[test]
fn sparse_training_steps_match_the_masked_path() {
    let ctx = ctx();
    let p = pair(ctx, 0.2, 1);
    compare(ctx, &p, "after load");
    for s in 0..4 {
        step(ctx, &p, s, None, 0.0);
        compare(ctx, &p, &format!("step {s}"));
    }
}

#[test]
fn sparse_mask_updates_match_the_masked_path() {
    let ctx = ctx();
    for (rule, name) in [(GrowRule::Score, "rigl"), (GrowRule::Random, "set")] {
        let p = pair(ctx, 0.25, 2);
        step(ctx, &p, 0, None, 0.0);
        step(ctx, &p, 1, Some(rule), 0.3);
        compare(ctx, &p, &format!("{name}: after the first update"));
        let new_m = p.updater.read_new_connections(ctx).unwrap();
        let new_s = p.sparse.read_new_connections(ctx).unwrap();
        assert_eq!(new_s, new_m, "{name}: new connections per layer");
        assert!(new_s[0] > 0, "{name}: the update changed nothing");
        step(ctx, &p, 2, None, 0.0);
        step(ctx, &p, 3, Some(rule), 0.5);
        step(ctx, &p, 4, None, 0.0);
        compare(ctx, &p, &format!("{name}: after the second update"));
        // Ever-active counts: the masked path's max-into map against the sparse bitmap.
        let ever = p.sparse.ever_active(ctx).unwrap();
        assert!(
            ever[0] >= p.active[0] + new_s[0],
            "{name}: ever-active {ever:?}"
        );
    }
}

#[test]
fn sparse_model_refuses_wrong_active_counts_and_batches() {
    let ctx = ctx();
    let mut cfg = MlpConfig {
        sizes: vec![8, 4],
        batch: 6,
        masked: true,
        label_smoothing: 0.0,
        sgd: SgdConfig {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        gemm: gemm::choose_variant(ctx).unwrap(),
    };
    let err = SparseMlp::new(ctx, cfg.clone(), &[10], 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("multiple of 4"), "{err}");
    cfg.batch = 8;
    let err = SparseMlp::new(ctx, cfg.clone(), &[40], 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("40 active weights of 32"), "{err}");
    let m = SparseMlp::new(ctx, cfg, &[10], 0).unwrap();
    let err = m
        .load(ctx, &[vec![0.0; 32]], &[vec![1.0; 32]], &[vec![0.0; 4]])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("32 active weights") && err.contains("holds 10"),
        "{err}"
    );
}

#[test]
fn mixed_layer_kernels_match_the_masked_path() {
    let ctx = ctx();
    for dense in [
        [false, true, false],
        [true, false, true],
        [true, true, true],
    ] {
        for (rule, name) in [(GrowRule::Score, "rigl"), (GrowRule::Random, "set")] {
            let p = pair_with(ctx, 0.25, 3, &dense);
            let what = format!("{name}, dense-GEMM layers {dense:?}");
            step(ctx, &p, 0, None, 0.0);
            compare(ctx, &p, &format!("{what}: step"));
            step(ctx, &p, 1, Some(rule), 0.3);
            compare(ctx, &p, &format!("{what}: update"));
            step(ctx, &p, 2, None, 0.0);
            step(ctx, &p, 3, Some(rule), 0.5);
            step(ctx, &p, 4, None, 0.0);
            compare(ctx, &p, &format!("{what}: second update"));
        }
    }
}

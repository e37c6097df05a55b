//! Model specifications (SPEC §8): the built-in models' layers and shapes, a TOML model file, and
//! `rigl plan --model` against the official ERK values of WRN-22-2 and ResNet-50's size.

use std::process::Command;

use rigl::nn::spec::{ModelSpec, Padding, Shape};
use rigl::sparse::LayerKind;
use serde_json::Value;

const ERK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/erk_wrn22_2.json"
);

fn plan_json(args: &[&str]) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_rigl"))
        .arg("plan")
        .args(args)
        .arg("--json")
        .output()
        .expect("rigl runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

#[test]
fn plan_of_wrn_22_2_reproduces_the_official_erk_sparsities() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(ERK).expect("fixture")).expect("JSON");
    for s in ["0.8", "0.9", "0.95"] {
        let want = &doc["results"][format!("wrn22_2/erdos_renyi_kernel/S={s}")]["per_layer"];
        let plan = plan_json(&[
            "--model",
            "wrn-22-2",
            "--distribution",
            "erk",
            "--first-layer-dense",
            "--sparsity",
            s,
        ]);
        let layers = plan["layers"].as_array().expect("layers");
        // conv0 (the dense first convolution, outside the budget, as in the official setting),
        // then the 22 masked layers of the fixture, in its order.
        assert_eq!(layers.len(), 23, "{s}");
        assert_eq!(layers[0]["name"], "conv0");
        assert_eq!(layers[0]["sparsity"].as_f64(), Some(0.0));
        let fixture_layers = doc["layers"].as_array().expect("layers");
        for (l, f) in layers[1..].iter().zip(fixture_layers) {
            assert_eq!(l["name"], f["name"], "S={s}: order");
            assert_eq!(l["shape"], f["shape"], "S={s}: shape of {}", l["name"]);
            let name = l["name"].as_str().expect("name");
            let got = l["sparsity"].as_f64().expect("sparsity");
            let w = want[name].as_f64().expect("official value");
            assert!((got - w).abs() <= 1e-6, "S={s} {name}: {got} vs {w}");
        }
    }
}

#[test]
fn resnet_50_has_25_5m_weights_and_the_papers_flops() {
    // torchvision's resnet50 has 25,557,032 parameters; less its batch-norm scales and shifts
    // (2 x 26,560 channels) and the fc bias (1,000): 25,502,912 weights.
    let plan = plan_json(&["--model", "resnet-50", "--distribution", "erk"]);
    assert_eq!(plan["total"].as_u64(), Some(25_502_912));
    assert_eq!(plan["layers"].as_array().map(Vec::len), Some(54));
    // SPEC §6: ResNet-50 at 90%, ERK: about 0.24x inference FLOPs; uniform 0.10x.
    let inf = plan["inference_flops_vs_dense"].as_f64().expect("flops");
    assert!((inf - 0.24).abs() < 0.005, "ERK inference {inf}");
    let uni = plan_json(&[
        "--model",
        "resnet-50",
        "--distribution",
        "uniform",
        "--first-layer-dense=false",
    ]);
    let inf = uni["inference_flops_vs_dense"].as_f64().expect("flops");
    assert!((inf - 0.10).abs() < 0.001, "uniform inference {inf}");
    // Dense forward FLOPs: about 4.1 GFLOP multiply-adds, 8.2e9 FLOPs at 2 per multiply-add.
    let f = plan["dense_forward_flops"].as_f64().expect("flops");
    assert!((8.0e9..8.4e9).contains(&f), "{f}");
}

#[test]
fn builtin_models_infer_their_shapes() {
    let (out, w) = ModelSpec::builtin("lenet5", &[])
        .expect("lenet5")
        .infer()
        .expect("shapes");
    assert_eq!(out, Shape { c: 10, h: 1, w: 1 });
    let shapes: Vec<(&str, Vec<usize>, (usize, usize))> = w
        .iter()
        .map(|l| {
            (
                l.spec.layer.name.as_str(),
                l.spec.layer.shape.clone(),
                l.spec.out_hw,
            )
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("conv1", vec![5, 5, 1, 20], (24, 24)),
            ("conv2", vec![5, 5, 20, 50], (8, 8)),
            ("fc3", vec![800, 500], (1, 1)),
            ("fc4", vec![500, 10], (1, 1)),
        ]
    );
    let (_, w) = ModelSpec::builtin("wrn-22-2", &[])
        .expect("wrn")
        .infer()
        .expect("shapes");
    let hw: Vec<(usize, usize)> = w.iter().map(|l| l.spec.out_hw).collect();
    assert_eq!(hw[0], (32, 32));
    assert_eq!(
        hw[hw.len() - 2],
        (8, 8),
        "the last convolution works on 8x8"
    );
    let mlp = ModelSpec::builtin("mlp", &[300, 100]).expect("mlp");
    let kinds: Vec<LayerKind> = mlp
        .weight_layers()
        .expect("shapes")
        .iter()
        .map(|l| l.kind)
        .collect();
    assert_eq!(kinds, vec![LayerKind::Dense; 3]);
    assert!(ModelSpec::builtin("vgg", &[]).is_err());
    assert_eq!(Padding::Same.out(8, 3, 2), Some(4));
}

const SMALL_RESNET: &str = r#"
name = "small-resnet"
input = [3, 32, 32]

[[layer]]
type = "conv2d"
name = "conv0"
out = 16
kernel = 3

[[layer]]
type = "residual"
shortcut_from = "pre"
pre = [{ type = "batch_norm" }, { type = "relu" }]
body = [
  { type = "conv2d", name = "b0_c1", out = 32, kernel = 3, stride = 2 },
  { type = "batch_norm" }, { type = "relu" },
  { type = "conv2d", name = "b0_c2", out = 32, kernel = 3 },
]
shortcut = [{ type = "conv2d", name = "b0_skip", out = 32, kernel = 1, stride = 2 }]

[[layer]]
type = "global_avg_pool"

[[layer]]
type = "flatten"

[[layer]]
type = "linear"
name = "logits"
out = 10
"#;

#[test]
fn the_model_file_of_the_docs_is_valid() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/models.md"))
        .expect("docs/models.md");
    let start = doc.find("```toml\n").expect("a TOML example") + 8;
    let end = start + doc[start..].find("```").expect("its end");
    let spec: ModelSpec = toml::from_str(&doc[start..end]).expect("the example parses");
    let (out, weights) = spec.infer().expect("its shapes fit");
    assert_eq!(out, Shape { c: 10, h: 1, w: 1 });
    assert_eq!(weights.len(), 5);
}

#[test]
fn a_model_file_is_read_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("net.toml");
    std::fs::write(&good, SMALL_RESNET).expect("write");
    let spec = ModelSpec::from_toml_file(&good).expect("a good file");
    let names: Vec<String> = spec
        .weight_layers()
        .expect("shapes")
        .into_iter()
        .map(|l| l.layer.name)
        .collect();
    assert_eq!(names, ["conv0", "b0_skip", "b0_c1", "b0_c2", "logits"]);
    let plan = plan_json(&["--model-file", good.to_str().expect("utf-8")]);
    assert_eq!(plan["layers"].as_array().map(Vec::len), Some(5));

    // Each mistake is one line naming the file and what is wrong, exit code 2.
    for (text, says) in [
        (
            SMALL_RESNET.replace("stride = 2 }]", "stride = 1 }]"),
            "shortcut",
        ),
        (
            SMALL_RESNET
                .replace("\"flatten\"", "\"relu\"")
                .replace("\"global_avg_pool\"", "\"batch_norm\""),
            "flat input",
        ),
        (
            SMALL_RESNET.replace("\"global_avg_pool\"", "\"softmax\""),
            "softmax",
        ),
        (
            SMALL_RESNET.replace("name = \"logits\"", "name = \"conv0\""),
            "conv0",
        ),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, &text).expect("write");
        let o = Command::new(env!("CARGO_BIN_EXE_rigl"))
            .args(["plan", "--model-file"])
            .arg(&bad)
            .output()
            .expect("rigl runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{says}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("bad.toml") && err.contains(says),
            "{says}: {err}"
        );
    }
}

//! Small convolutional models shared by the CPU-twin and GPU tests.

use rigl::cpu::model::HostModel;
use rigl::nn::spec::{Layer, ModelSpec, Padding, ShortcutFrom};

fn conv(out: usize, kernel: usize, stride: usize, padding: Padding, bias: bool) -> Layer {
    Layer::Conv2d {
        name: None,
        out,
        kernel,
        stride,
        padding,
        bias,
    }
}

/// 2x7x7 input; valid and same convolutions, stride 2, a projection block and an identity
/// block, max and average pooling (same padding, so windows hang over the edge), flatten.
pub fn residual_net() -> ModelSpec {
    ModelSpec {
        name: "fd-residual".into(),
        input: [2, 7, 7],
        layers: vec![
            conv(3, 3, 1, Padding::Valid, true),
            Layer::Relu,
            Layer::MaxPool {
                size: 2,
                stride: Some(1),
                padding: Padding::Valid,
            },
            Layer::Residual {
                pre: vec![Layer::BatchNorm, Layer::Relu],
                body: vec![
                    conv(4, 3, 2, Padding::Same, false),
                    Layer::BatchNorm,
                    Layer::Relu,
                    conv(4, 3, 1, Padding::Same, false),
                ],
                shortcut: vec![conv(4, 1, 2, Padding::Same, false)],
                shortcut_from: ShortcutFrom::Pre,
            },
            Layer::AvgPool {
                size: 3,
                stride: Some(1),
                padding: Padding::Same,
            },
            Layer::Residual {
                pre: vec![],
                body: vec![
                    Layer::BatchNorm,
                    Layer::Relu,
                    conv(4, 3, 1, Padding::Same, false),
                ],
                shortcut: vec![],
                shortcut_from: ShortcutFrom::Input,
            },
            Layer::Flatten,
            Layer::Linear {
                name: None,
                out: 3,
                bias: true,
            },
        ],
    }
}

/// 1x6x6 input, one input channel; a 5x5 same convolution, dropout, global average pooling.
pub fn pooled_net() -> ModelSpec {
    ModelSpec {
        name: "fd-pooled".into(),
        input: [1, 6, 6],
        layers: vec![
            conv(5, 5, 1, Padding::Same, true),
            Layer::BatchNorm,
            Layer::Relu,
            Layer::Dropout { rate: 0.3 },
            conv(4, 3, 2, Padding::Valid, false),
            Layer::GlobalAvgPool,
            Layer::Flatten,
            Layer::Linear {
                name: None,
                out: 3,
                bias: true,
            },
        ],
    }
}

pub fn model(spec: ModelSpec, seed: u32) -> HostModel {
    let mut init = |i: usize, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape[..shape.len() - 1].iter().product();
        let scale = (2.0 / fan_in as f32).sqrt();
        super::data(n, seed + i as u32)
            .into_iter()
            .map(|v| v * scale)
            .collect()
    };
    let mut m = HostModel::new(spec, &mut init).expect("model");
    // Masks with holes, and nonzero biases, batch-norm scales and shifts.
    for (i, w) in m.weights.iter_mut().enumerate() {
        w.mask = super::mask(w.w.len(), 0.7, 100 + i as u32);
        if let Some(b) = w.bias.as_mut() {
            *b = super::data(b.len(), 200 + i as u32);
        }
    }
    for (i, b) in m.norms.iter_mut().enumerate() {
        b.gamma = super::data(b.gamma.len(), 300 + i as u32)
            .into_iter()
            .map(|v| 1.0 + 0.3 * v)
            .collect();
        b.beta = super::data(b.beta.len(), 400 + i as u32);
    }
    m
}

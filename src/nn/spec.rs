//! Model specifications: a model is a list of layers (SPEC §8). The built-in models (`mlp`,
//! `lenet5`, `wrn-22-2`, `resnet-50`) and a user's TOML model file both become a [`ModelSpec`],
//! whose shapes are inferred once ([`ModelSpec::infer`]) and whose weight tensors are listed in
//! order ([`ModelSpec::weight_layers`]) for the sparsity plan, ERK, FLOPs and memory.
//!
//! A model file:
//! ```toml
//! name = "small-resnet"
//! input = [3, 32, 32]        # channels, height, width (a flat input: [features, 1, 1])
//!
//! [[layer]]
//! type = "conv2d"            # out, kernel, stride (1), padding ("same" | "valid"), bias (false)
//! name = "conv0"
//! out = 16
//! kernel = 3
//!
//! [[layer]]
//! type = "residual"          # pre (shared), body, shortcut (empty: identity), shortcut_from
//! shortcut_from = "pre"      # "input" (default) or "pre": where the shortcut branches off
//! pre = [{ type = "batch_norm" }, { type = "relu" }]
//! body = [
//!   { type = "conv2d", name = "b0_c1", out = 32, kernel = 3, stride = 2 },
//!   { type = "batch_norm" }, { type = "relu" },
//!   { type = "conv2d", name = "b0_c2", out = 32, kernel = 3 },
//! ]
//! shortcut = [{ type = "conv2d", name = "b0_skip", out = 32, kernel = 1, stride = 2 }]
//!
//! [[layer]]
//! type = "global_avg_pool"
//!
//! [[layer]]
//! type = "flatten"
//!
//! [[layer]]
//! type = "linear"            # out, bias (true)
//! name = "logits"
//! out = 10
//! ```
//! Other layer types: `batch_norm`, `relu`, `max_pool` and `avg_pool` (`size`, `stride` (=
//! size), `padding` ("valid")), `dropout` (`rate`). Weight layers without a name are named by
//! kind and position (`conv1`, `fc2`, ...).

use serde::{Deserialize, Serialize};

use crate::error::{Result, RiglError};
pub use crate::shape::Padding;
use crate::shape::Window;
use crate::sparse::{LayerKind, LayerShape, LayerSpec};

/// Where a residual block's shortcut branches off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutFrom {
    /// The block's input (identity blocks; post-activation ResNets).
    #[default]
    Input,
    /// The output of the block's shared `pre` layers (pre-activation projection blocks).
    Pre,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

/// One layer of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// Fully connected `[in, out]` on a flat input.
    Linear {
        /// Weight tensor name.
        #[serde(default)]
        name: Option<String>,
        /// Output features.
        out: usize,
        /// With a bias.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// 2-D convolution, weights `[kernel, kernel, cin, out]`.
    Conv2d {
        /// Weight tensor name.
        #[serde(default)]
        name: Option<String>,
        /// Output channels.
        out: usize,
        /// Kernel height and width.
        kernel: usize,
        /// Stride.
        #[serde(default = "one")]
        stride: usize,
        /// Padding.
        #[serde(default)]
        padding: Padding,
        /// With a bias (none when a batch norm follows).
        #[serde(default)]
        bias: bool,
    },
    /// Batch normalisation over channels (gamma and beta trained, running statistics).
    BatchNorm,
    /// ReLU.
    Relu,
    /// Max pooling.
    MaxPool {
        /// Window.
        size: usize,
        /// Stride (default: the window).
        #[serde(default)]
        stride: Option<usize>,
        /// Padding (default valid).
        #[serde(default = "valid")]
        padding: Padding,
    },
    /// Average pooling.
    AvgPool {
        /// Window.
        size: usize,
        /// Stride (default: the window).
        #[serde(default)]
        stride: Option<usize>,
        /// Padding (default valid).
        #[serde(default = "valid")]
        padding: Padding,
    },
    /// Mean over the spatial positions: `[C, H, W]` to `[C, 1, 1]`.
    GlobalAvgPool,
    /// `[C, H, W]` to `[C*H*W, 1, 1]`.
    Flatten,
    /// Dropout (training only).
    Dropout {
        /// Probability of dropping a unit.
        rate: f32,
    },
    /// Residual block: `pre` (applied to the input), `body` (on `pre`'s output), and the
    /// shortcut (on the input or on `pre`'s output; empty: identity), added.
    Residual {
        /// Layers shared by the body and (with `shortcut_from = "pre"`) the shortcut.
        #[serde(default)]
        pre: Vec<Layer>,
        /// The residual branch.
        body: Vec<Layer>,
        /// The shortcut's layers (empty: identity).
        #[serde(default)]
        shortcut: Vec<Layer>,
        /// Where the shortcut starts.
        #[serde(default)]
        shortcut_from: ShortcutFrom,
    },
}

fn valid() -> Padding {
    Padding::Valid
}

impl Layer {
    /// The window of a pooling layer over an input of shape `s` in a batch of `n`, or `None` for
    /// the other layers.
    pub fn pool_window(&self, s: Shape, n: usize) -> Option<Window> {
        match self {
            Layer::MaxPool {
                size,
                stride,
                padding,
            }
            | Layer::AvgPool {
                size,
                stride,
                padding,
            } => Some(Window {
                n,
                h: s.h,
                w: s.w,
                k: *size,
                stride: stride.unwrap_or(*size),
                padding: *padding,
            }),
            _ => None,
        }
    }
}

/// The shape of an activation per sample: channels, height, width (flat: `[features, 1, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Channels (features of a flat activation).
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Shape {
    /// `c*h*w`.
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// True when any dimension is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn text(&self) -> String {
        format!("{}x{}x{}", self.c, self.h, self.w)
    }
}

/// A model: its input shape and its layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Name (reports, run summaries).
    pub name: String,
    /// Input `[channels, height, width]`.
    pub input: [usize; 3],
    /// Layers in order.
    #[serde(rename = "layer")]
    pub layers: Vec<Layer>,
}

/// A weight tensor of a model, with where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightLayer {
    /// Name, kind, shape and output positions, as the sparsity plan takes them.
    pub spec: LayerSpec,
    /// Input activation shape of the layer.
    pub input: Shape,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Stride and padding (a linear layer: 1 and valid).
    pub stride: usize,
    /// Padding of a convolution.
    pub padding: Padding,
}

impl WeightLayer {
    /// A convolution's geometry over `n` images (`None` for a linear layer).
    pub fn conv_geom(&self, n: usize) -> Option<crate::gpu::conv::ConvGeom> {
        let s = &self.spec.layer.shape;
        (s.len() == 4).then(|| crate::gpu::conv::ConvGeom {
            window: crate::shape::Window {
                n,
                h: self.input.h,
                w: self.input.w,
                k: s[0],
                stride: self.stride,
                padding: self.padding,
            },
            cin: s[2],
            cout: s[3],
        })
    }
}

/// Walks layers, inferring shapes and collecting weight tensors.
struct Walker {
    weights: Vec<WeightLayer>,
    /// Channels of each batch norm, in walk order.
    norms: Vec<usize>,
    counter: usize,
}

impl Walker {
    fn name(&mut self, given: &Option<String>, prefix: &str) -> String {
        self.counter += 1;
        given
            .clone()
            .unwrap_or_else(|| format!("{prefix}{}", self.counter))
    }

    fn walk(&mut self, layers: &[Layer], mut s: Shape, at: &str) -> Result<Shape> {
        for (i, layer) in layers.iter().enumerate() {
            let here = format!("{at}layer {i}");
            s = self.layer(layer, s, &here)?;
            if s.is_empty() {
                return Err(RiglError::invalid(format!(
                    "{here}: the activation shrinks to nothing ({})",
                    s.text()
                )));
            }
        }
        Ok(s)
    }

    fn layer(&mut self, layer: &Layer, s: Shape, here: &str) -> Result<Shape> {
        let bad = |m: String| RiglError::invalid(format!("{here}: {m}"));
        match layer {
            Layer::Linear { name, out, bias } => {
                if s.h != 1 || s.w != 1 {
                    return Err(bad(format!(
                        "a linear layer needs a flat input, got {} (add a flatten or \
                         global_avg_pool layer before it)",
                        s.text()
                    )));
                }
                if *out == 0 {
                    return Err(bad("a linear layer needs out >= 1".into()));
                }
                let name = self.name(name, "fc");
                self.weights.push(WeightLayer {
                    spec: LayerSpec {
                        kind: LayerKind::Dense,
                        layer: LayerShape::new(name, &[s.c, *out]),
                        out_hw: (1, 1),
                    },
                    input: s,
                    bias: *bias,
                    stride: 1,
                    padding: Padding::Valid,
                });
                Ok(Shape {
                    c: *out,
                    h: 1,
                    w: 1,
                })
            }
            Layer::Conv2d {
                name,
                out,
                kernel,
                stride,
                padding,
                bias,
            } => {
                if *out == 0 || *kernel == 0 || *stride == 0 {
                    return Err(bad(
                        "a conv2d layer needs out, kernel and stride >= 1".into()
                    ));
                }
                let (h, w) = match (
                    padding.out(s.h, *kernel, *stride),
                    padding.out(s.w, *kernel, *stride),
                ) {
                    (Some(h), Some(w)) => (h, w),
                    _ => {
                        return Err(bad(format!(
                            "a {kernel}x{kernel} valid convolution does not fit the input {}",
                            s.text()
                        )))
                    }
                };
                let name = self.name(name, "conv");
                self.weights.push(WeightLayer {
                    spec: LayerSpec {
                        kind: LayerKind::Conv,
                        layer: LayerShape::new(name, &[*kernel, *kernel, s.c, *out]),
                        out_hw: (h, w),
                    },
                    input: s,
                    bias: *bias,
                    stride: *stride,
                    padding: *padding,
                });
                Ok(Shape { c: *out, h, w })
            }
            Layer::BatchNorm => {
                self.norms.push(s.c);
                Ok(s)
            }
            Layer::Relu => Ok(s),
            Layer::Dropout { rate } => {
                if !(0.0..1.0).contains(rate) {
                    return Err(bad(format!("dropout rate must be in [0, 1), got {rate}")));
                }
                Ok(s)
            }
            Layer::MaxPool { size, stride, .. } | Layer::AvgPool { size, stride, .. } => {
                if *size == 0 || *stride == Some(0) {
                    return Err(bad("a pooling layer needs size and stride >= 1".into()));
                }
                match layer.pool_window(s, 1).and_then(|g| g.out()) {
                    Some((h, w)) => Ok(Shape { c: s.c, h, w }),
                    None => Err(bad(format!(
                        "a {size}x{size} pooling window does not fit the input {}",
                        s.text()
                    ))),
                }
            }
            Layer::GlobalAvgPool => Ok(Shape { c: s.c, h: 1, w: 1 }),
            Layer::Flatten => Ok(Shape {
                c: s.len(),
                h: 1,
                w: 1,
            }),
            Layer::Residual {
                pre,
                body,
                shortcut,
                shortcut_from,
            } => {
                let p = self.walk(pre, s, &format!("{here}: pre: "))?;
                let from = match shortcut_from {
                    ShortcutFrom::Input => s,
                    ShortcutFrom::Pre => p,
                };
                // The shortcut's weights are listed before the body's (as the official
                // WRN's `skip`, `c1`, `c2`).
                let short = self.walk(shortcut, from, &format!("{here}: shortcut: "))?;
                let out = self.walk(body, p, &format!("{here}: body: "))?;
                if short != out {
                    return Err(bad(format!(
                        "the body gives {} but the shortcut {} (a projection shortcut makes \
                         them equal)",
                        out.text(),
                        short.text()
                    )));
                }
                Ok(out)
            }
        }
    }
}

impl ModelSpec {
    /// The input shape.
    pub fn input_shape(&self) -> Shape {
        Shape {
            c: self.input[0],
            h: self.input[1],
            w: self.input[2],
        }
    }

    /// Checks every shape and returns the output shape and the weight tensors in order. Errors
    /// name the layer (`layer 3: body: layer 1: ...`).
    pub fn infer(&self) -> Result<(Shape, Vec<WeightLayer>)> {
        let (out, w) = self.walk()?;
        Ok((out, w.weights))
    }

    /// The channels of every batch norm, in walk order (a residual block's `pre`, then its
    /// shortcut, then its body).
    pub fn norm_channels(&self) -> Result<Vec<usize>> {
        Ok(self.walk()?.1.norms)
    }

    fn walk(&self) -> Result<(Shape, Walker)> {
        let input = self.input_shape();
        if input.is_empty() {
            return Err(RiglError::invalid(format!(
                "model '{}': input {} has a zero dimension",
                self.name,
                input.text()
            )));
        }
        let mut w = Walker {
            weights: Vec::new(),
            norms: Vec::new(),
            counter: 0,
        };
        let out = w
            .walk(&self.layers, input, "")
            .map_err(|e| RiglError::invalid(format!("model '{}': {e}", self.name)))?;
        let mut names: Vec<&str> = w
            .weights
            .iter()
            .map(|l| l.spec.layer.name.as_str())
            .collect();
        names.sort_unstable();
        if let Some(d) = names.windows(2).find(|p| p[0] == p[1]) {
            return Err(RiglError::invalid(format!(
                "model '{}': two weight layers are named '{}'",
                self.name, d[0]
            )));
        }
        Ok((out, w))
    }

    /// The weight tensors as the sparsity plan takes them.
    pub fn weight_layers(&self) -> Result<Vec<LayerSpec>> {
        Ok(self.infer()?.1.into_iter().map(|l| l.spec).collect())
    }

    /// Reads a TOML model file; errors name the file.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| RiglError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses the text of a model file and checks its shapes; errors name `origin`.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let spec: ModelSpec = toml::from_str(text).map_err(|e| RiglError::BadFile {
            path: origin.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        spec.infer().map_err(|e| RiglError::BadFile {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        Ok(spec)
    }

    /// A built-in model by name: `mlp` (with `hidden` widths, 784 inputs, 10 classes),
    /// `lenet5`, `wrn-22-2` or `resnet-50`.
    pub fn builtin(name: &str, hidden: &[usize]) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "mlp" => Ok(mlp(784, hidden, 10)),
            "lenet5" | "lenet-5" => Ok(lenet5()),
            "wrn-22-2" | "wrn22-2" | "wrn_22_2" => Ok(wide_resnet(22, 2, 10)),
            "resnet-50" | "resnet50" => Ok(resnet50(1000)),
            other => Err(RiglError::invalid(format!(
                "unknown model '{other}' (expected mlp, lenet5, wrn-22-2 or resnet-50)"
            ))),
        }
    }
}

fn linear(name: &str, out: usize) -> Layer {
    Layer::Linear {
        name: Some(name.into()),
        out,
        bias: true,
    }
}

fn conv(name: String, out: usize, kernel: usize, stride: usize, padding: Padding) -> Layer {
    Layer::Conv2d {
        name: Some(name),
        out,
        kernel,
        stride,
        padding,
        bias: false,
    }
}

/// A multi-layer perceptron `input-hidden..-classes` with ReLUs (layers `fc1`, `fc2`, ...).
pub fn mlp(input: usize, hidden: &[usize], classes: usize) -> ModelSpec {
    let mut layers = Vec::new();
    for (i, &h) in hidden.iter().enumerate() {
        layers.push(linear(&format!("fc{}", i + 1), h));
        layers.push(Layer::Relu);
    }
    layers.push(linear(&format!("fc{}", hidden.len() + 1), classes));
    let name = std::iter::once(input)
        .chain(hidden.iter().copied())
        .chain(std::iter::once(classes))
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("-");
    ModelSpec {
        name: format!("mlp {name}"),
        input: [input, 1, 1],
        layers,
    }
}

/// LeNet-5-Caffe on 1x28x28 (SPEC §8).
pub fn lenet5() -> ModelSpec {
    let mut conv1 = conv("conv1".into(), 20, 5, 1, Padding::Valid);
    let mut conv2 = conv("conv2".into(), 50, 5, 1, Padding::Valid);
    for c in [&mut conv1, &mut conv2] {
        if let Layer::Conv2d { bias, .. } = c {
            *bias = true;
        }
    }
    let pool = || Layer::MaxPool {
        size: 2,
        stride: None,
        padding: Padding::Valid,
    };
    ModelSpec {
        name: "lenet5".into(),
        input: [1, 28, 28],
        layers: vec![
            conv1,
            Layer::Relu,
            pool(),
            conv2,
            Layer::Relu,
            pool(),
            Layer::Flatten,
            linear("fc3", 500),
            Layer::Relu,
            linear("fc4", 10),
        ],
    }
}

/// The official `WideResNetModel` (pre-activation, 3 groups, dropout 0.3) on 3x32x32, with the
/// official layer names (`conv0`, `g{group}_b{block}_{skip,c1,c2}`, `logits`).
pub fn wide_resnet(depth: usize, width: usize, classes: usize) -> ModelSpec {
    let blocks = (depth - 4) / 6;
    let mut layers = vec![conv("conv0".into(), 16, 3, 1, Padding::Same)];
    let mut cin = 16;
    for (g, base) in [16usize, 32, 64].into_iter().enumerate() {
        let c = base * width;
        for b in 0..blocks {
            let stride = if g > 0 && b == 0 { 2 } else { 1 };
            let project = cin != c || stride != 1;
            let n = |s: &str| format!("g{g}_b{b}_{s}");
            layers.push(Layer::Residual {
                pre: vec![Layer::BatchNorm, Layer::Relu],
                body: vec![
                    conv(n("c1"), c, 3, stride, Padding::Same),
                    Layer::BatchNorm,
                    Layer::Relu,
                    Layer::Dropout { rate: 0.3 },
                    conv(n("c2"), c, 3, 1, Padding::Same),
                ],
                shortcut: if project {
                    vec![conv(n("skip"), c, 1, stride, Padding::Same)]
                } else {
                    vec![]
                },
                shortcut_from: if project {
                    ShortcutFrom::Pre
                } else {
                    ShortcutFrom::Input
                },
            });
            cin = c;
        }
    }
    layers.extend([
        Layer::BatchNorm,
        Layer::Relu,
        Layer::GlobalAvgPool,
        Layer::Flatten,
        linear("logits", classes),
    ]);
    ModelSpec {
        name: format!("wrn-{depth}-{width}"),
        input: [3, 32, 32],
        layers,
    }
}

/// The standard bottleneck ResNet-50 on 3x224x224 (stride on the 3x3 convolution, batch norm
/// after every convolution, ReLU after the add).
pub fn resnet50(classes: usize) -> ModelSpec {
    let mut layers = vec![
        conv("conv1".into(), 64, 7, 2, Padding::Same),
        Layer::BatchNorm,
        Layer::Relu,
        Layer::MaxPool {
            size: 3,
            stride: Some(2),
            padding: Padding::Same,
        },
    ];
    let mut cin = 64;
    for (stage, (blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
        .into_iter()
        .enumerate()
    {
        let out = 4 * width;
        for b in 0..blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let n = |s: &str| format!("s{}_b{b}_{s}", stage + 1);
            let shortcut = if cin != out || stride != 1 {
                vec![
                    conv(n("skip"), out, 1, stride, Padding::Same),
                    Layer::BatchNorm,
                ]
            } else {
                vec![]
            };
            layers.push(Layer::Residual {
                pre: vec![],
                body: vec![
                    conv(n("c1"), width, 1, 1, Padding::Same),
                    Layer::BatchNorm,
                    Layer::Relu,
                    conv(n("c2"), width, 3, stride, Padding::Same),
                    Layer::BatchNorm,
                    Layer::Relu,
                    conv(n("c3"), out, 1, 1, Padding::Same),
                    Layer::BatchNorm,
                ],
                shortcut,
                shortcut_from: ShortcutFrom::Input,
            });
            layers.push(Layer::Relu);
            cin = out;
        }
    }
    layers.extend([Layer::GlobalAvgPool, Layer::Flatten, linear("fc", classes)]);
    ModelSpec {
        name: "resnet-50".into(),
        input: [3, 224, 224],
        layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_and_valid_sizes_follow_tensorflow() {
        assert_eq!(Padding::Same.out(32, 3, 2), Some(16));
        assert_eq!(Padding::Same.out(7, 3, 2), Some(4));
        assert_eq!(Padding::Valid.out(28, 5, 1), Some(24));
        assert_eq!(Padding::Valid.out(4, 5, 1), None);
        // SAME 3x3 stride 2 on 32: total pad 1, none before (the extra at the bottom/right).
        assert_eq!(Padding::Same.before(32, 3, 2), 0);
        assert_eq!(Padding::Same.before(32, 3, 1), 1);
        assert_eq!(Padding::Same.before(224, 7, 2), 2);
    }
}

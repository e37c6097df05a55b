//! CPU twin of a whole model of layers ([`crate::nn::spec::ModelSpec`]): forward, loss and
//! backward of one batch, built from the layer twins of [`crate::cpu::conv`] and
//! [`crate::cpu::dense`]. The reference a GPU model's step is compared with, and itself checked
//! against finite differences (`tests/cnn_cpu.rs`).

use crate::cpu::conv::{self, BnSaved, Window};
use crate::cpu::dense;
use crate::error::{Result, RiglError};
use crate::nn::spec::{Layer, ModelSpec, Shape, ShortcutFrom};

/// A weight tensor of the model on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostWeight {
    /// Name.
    pub name: String,
    /// `[in, out]` or `[kh, kw, cin, cout]`.
    pub shape: Vec<usize>,
    /// Weights (flat `c * out + r`).
    pub w: Vec<f32>,
    /// 0/1 mask of the same layout.
    pub mask: Vec<f32>,
    /// Bias, if the layer has one.
    pub bias: Option<Vec<f32>>,
}

/// A batch norm's parameters and running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct HostNorm {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
}

/// Gradients of one batch (`dL/d(mask ⊙ w)` for the weights, dense).
#[derive(Clone, Debug, PartialEq)]
pub struct HostGrads {
    /// Per weight tensor.
    pub w: Vec<Vec<f32>>,
    /// Per weight tensor's bias.
    pub bias: Vec<Option<Vec<f32>>>,
    /// Per batch norm: gamma.
    pub gamma: Vec<Vec<f32>>,
    /// Per batch norm: beta.
    pub beta: Vec<Vec<f32>>,
}

/// Training (batch statistics, dropout keyed by seed and step) or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training at `step`.
    Train {
        /// Run seed.
        seed: u32,
        /// Step.
        step: u32,
    },
    /// Evaluation (running statistics, no dropout).
    Eval,
}

/// A model's parameters on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostModel {
    /// The model.
    pub spec: ModelSpec,
    /// Weight tensors in [`ModelSpec::infer`]'s order.
    pub weights: Vec<HostWeight>,
    /// Batch norms in walk order.
    pub norms: Vec<HostNorm>,
}

/// What the backward pass needs of one layer's forward.
enum Saved {
    Linear {
        w: usize,
        x: Vec<f32>,
    },
    Conv {
        w: usize,
        x: Vec<f32>,
        g: Window,
        cin: usize,
    },
    Norm {
        i: usize,
        saved: Option<BnSaved>,
    },
    Relu {
        y: Vec<f32>,
    },
    MaxPool {
        arg: Vec<u32>,
        len: usize,
    },
    AvgPool {
        g: Window,
        c: usize,
    },
    Gap {
        hw: usize,
    },
    Flatten {
        c: usize,
        hw: usize,
    },
    Dropout {
        mask: Vec<f32>,
    },
    Residual {
        pre: Vec<Saved>,
        short: Vec<Saved>,
        body: Vec<Saved>,
        from: ShortcutFrom,
    },
}

/// Counters of the walk (weight tensors, batch norms, dropouts) in definition order.
#[derive(Default)]
struct Counters {
    w: usize,
    bn: usize,
    drop: usize,
}

/// The result of a forward and backward pass.
#[derive(Clone, Debug)]
pub struct HostStep {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Correct predictions.
    pub correct: usize,
    /// Gradients.
    pub grads: HostGrads,
}

impl HostModel {
    /// A model with weights drawn from `init(layer index, shape)`, masks all ones, biases zero,
    /// batch norms at gamma 1, beta 0 and unit running variance.
    pub fn new(spec: ModelSpec, init: &mut dyn FnMut(usize, &[usize]) -> Vec<f32>) -> Result<Self> {
        let (_, layers) = spec.infer()?;
        let weights = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let has_bias = l.bias;
                let shape = l.spec.layer.shape.clone();
                let n: usize = shape.iter().product();
                let out = *shape.last().unwrap_or(&1);
                HostWeight {
                    name: l.spec.layer.name.clone(),
                    w: init(i, &shape),
                    mask: vec![1.0; n],
                    bias: has_bias.then(|| vec![0.0; out]),
                    shape,
                }
            })
            .collect();
        let norms = spec
            .norm_channels()?
            .into_iter()
            .map(|c| HostNorm {
                gamma: vec![1.0; c],
                beta: vec![0.0; c],
                mean: vec![0.0; c],
                var: vec![1.0; c],
            })
            .collect();
        Ok(HostModel {
            spec,
            weights,
            norms,
        })
    }

    /// Forward of a batch of `n` inputs `x` (`[C, N, H, W]`) to logits `[classes, N]`; in
    /// training mode the batch norms' running statistics move.
    pub fn forward(&mut self, x: &[f32], n: usize, mode: Mode) -> Result<Vec<f32>> {
        Ok(self.run(x, n, mode)?.0)
    }

    /// Forward, softmax cross-entropy (mean over the batch, `smoothing` as the MLP's) and
    /// backward of one batch.
    pub fn step(
        &mut self,
        x: &[f32],
        labels: &[u32],
        n: usize,
        mode: Mode,
        smoothing: f32,
    ) -> Result<HostStep> {
        let (logits, out_shape, tape) = self.run(x, n, mode)?;
        let classes = out_shape.c;
        let mut dlogits = vec![0.0f32; logits.len()];
        let (losses, correct) = dense::softmax_xent(
            &logits,
            labels,
            &mut dlogits,
            classes,
            n,
            smoothing,
            1.0 / n as f32,
        );
        let mut grads = HostGrads {
            w: self.weights.iter().map(|w| vec![0.0; w.w.len()]).collect(),
            bias: self
                .weights
                .iter()
                .map(|w| w.bias.as_ref().map(|b| vec![0.0; b.len()]))
                .collect(),
            gamma: self
                .norms
                .iter()
                .map(|b| vec![0.0; b.gamma.len()])
                .collect(),
            beta: self.norms.iter().map(|b| vec![0.0; b.beta.len()]).collect(),
        };
        self.backward_seq(&tape, dlogits, n, &mut grads);
        Ok(HostStep {
            loss: losses.iter().sum::<f32>() / n as f32,
            correct: correct.iter().filter(|&&c| c > 0.0).count(),
            grads,
        })
    }

    fn run(&mut self, x: &[f32], n: usize, mode: Mode) -> Result<(Vec<f32>, Shape, Vec<Saved>)> {
        let input = self.spec.input_shape();
        if x.len() != input.len() * n {
            return Err(RiglError::invalid(format!(
                "input of {} values for {n} samples of {}x{}x{}",
                x.len(),
                input.c,
                input.h,
                input.w
            )));
        }
        let layers = self.spec.layers.clone();
        let mut k = Counters::default();
        let (y, s, tape) = self.forward_seq(&layers, x.to_vec(), input, n, mode, &mut k);
        Ok((y, s, tape))
    }

    fn forward_seq(
        &mut self,
        layers: &[Layer],
        mut x: Vec<f32>,
        mut s: Shape,
        n: usize,
        mode: Mode,
        k: &mut Counters,
    ) -> (Vec<f32>, Shape, Vec<Saved>) {
        let mut tape = Vec::with_capacity(layers.len());
        for layer in layers {
            let (y, s2, saved) = self.forward_one(layer, x, s, n, mode, k);
            tape.push(saved);
            x = y;
            s = s2;
        }
        (x, s, tape)
    }

    fn forward_one(
        &mut self,
        layer: &Layer,
        x: Vec<f32>,
        s: Shape,
        n: usize,
        mode: Mode,
        k: &mut Counters,
    ) -> (Vec<f32>, Shape, Saved) {
        match layer {
            Layer::Linear { out, .. } => {
                let i = k.w;
                k.w += 1;
                let p = &self.weights[i];
                let mut y = vec![0.0f32; out * n];
                for o in 0..*out {
                    for b in 0..n {
                        let mut acc = p.bias.as_ref().map_or(0.0, |bias| bias[o]);
                        for f in 0..s.c {
                            acc += p.w[f * out + o] * p.mask[f * out + o] * x[f * n + b];
                        }
                        y[o * n + b] = acc;
                    }
                }
                let shape = Shape {
                    c: *out,
                    h: 1,
                    w: 1,
                };
                (y, shape, Saved::Linear { w: i, x })
            }
            Layer::Conv2d {
                out,
                kernel,
                stride,
                padding,
                ..
            } => {
                let i = k.w;
                k.w += 1;
                let p = &self.weights[i];
                let g = Window {
                    n,
                    h: s.h,
                    w: s.w,
                    k: *kernel,
                    stride: *stride,
                    padding: *padding,
                };
                let y =
                    conv::conv2d_forward(&x, &p.w, Some(&p.mask), p.bias.as_deref(), g, s.c, *out);
                let (h, w) = g.out().unwrap_or((0, 0));
                let saved = Saved::Conv {
                    w: i,
                    x,
                    g,
                    cin: s.c,
                };
                (y, Shape { c: *out, h, w }, saved)
            }
            Layer::BatchNorm => {
                let i = k.bn;
                k.bn += 1;
                let b = &mut self.norms[i];
                match mode {
                    Mode::Train { .. } => {
                        let (y, saved) =
                            conv::batch_norm_train(&x, &b.gamma, &b.beta, &mut b.mean, &mut b.var);
                        (
                            y,
                            s,
                            Saved::Norm {
                                i,
                                saved: Some(saved),
                            },
                        )
                    }
                    Mode::Eval => {
                        let y = conv::batch_norm_eval(&x, &b.gamma, &b.beta, &b.mean, &b.var);
                        (y, s, Saved::Norm { i, saved: None })
                    }
                }
            }
            Layer::Relu => {
                let y: Vec<f32> = x.iter().map(|&v| v.max(0.0)).collect();
                (y.clone(), s, Saved::Relu { y })
            }
            Layer::MaxPool { .. } | Layer::AvgPool { .. } => {
                let g = layer.pool_window(s, n).unwrap_or(Window {
                    n,
                    h: s.h,
                    w: s.w,
                    k: 1,
                    stride: 1,
                    padding: crate::shape::Padding::Valid,
                });
                let (h, w) = g.out().unwrap_or((0, 0));
                let shape = Shape { c: s.c, h, w };
                if matches!(layer, Layer::MaxPool { .. }) {
                    let (y, arg) = conv::max_pool_forward(&x, s.c, g);
                    (y, shape, Saved::MaxPool { arg, len: x.len() })
                } else {
                    let y = conv::avg_pool_forward(&x, s.c, g);
                    (y, shape, Saved::AvgPool { g, c: s.c })
                }
            }
            Layer::GlobalAvgPool => {
                let hw = s.h * s.w;
                let y = conv::global_avg_pool(&x, s.c, n, hw);
                (y, Shape { c: s.c, h: 1, w: 1 }, Saved::Gap { hw })
            }
            Layer::Flatten => {
                let hw = s.h * s.w;
                let y = conv::flatten(&x, s.c, n, hw);
                let shape = Shape {
                    c: s.len(),
                    h: 1,
                    w: 1,
                };
                (y, shape, Saved::Flatten { c: s.c, hw })
            }
            Layer::Dropout { rate } => {
                let id = k.drop;
                k.drop += 1;
                let mask = match mode {
                    Mode::Train { seed, step } => {
                        conv::dropout_mask(seed, step, id as u32, x.len(), *rate)
                    }
                    Mode::Eval => vec![1.0; x.len()],
                };
                let y = x.iter().zip(&mask).map(|(v, m)| v * m).collect();
                (y, s, Saved::Dropout { mask })
            }
            Layer::Residual {
                pre,
                body,
                shortcut,
                shortcut_from,
            } => {
                let (p, ps, pre_tape) = self.forward_seq(pre, x.clone(), s, n, mode, k);
                let (from, fs) = match shortcut_from {
                    ShortcutFrom::Input => (x, s),
                    ShortcutFrom::Pre => (p.clone(), ps),
                };
                let (short, _, short_tape) = self.forward_seq(shortcut, from, fs, n, mode, k);
                let (mut y, ys, body_tape) = self.forward_seq(body, p, ps, n, mode, k);
                for (a, b) in y.iter_mut().zip(&short) {
                    *a += b;
                }
                let saved = Saved::Residual {
                    pre: pre_tape,
                    short: short_tape,
                    body: body_tape,
                    from: *shortcut_from,
                };
                (y, ys, saved)
            }
        }
    }

    fn backward_seq(
        &self,
        tape: &[Saved],
        mut dy: Vec<f32>,
        n: usize,
        g: &mut HostGrads,
    ) -> Vec<f32> {
        for saved in tape.iter().rev() {
            dy = self.backward_one(saved, dy, n, g);
        }
        dy
    }

    fn backward_one(&self, saved: &Saved, dy: Vec<f32>, n: usize, g: &mut HostGrads) -> Vec<f32> {
        match saved {
            Saved::Linear { w, x } => {
                let p = &self.weights[*w];
                let out = p.shape[1];
                let fin = p.shape[0];
                let mut dx = vec![0.0f32; fin * n];
                for f in 0..fin {
                    for o in 0..out {
                        let wi = f * out + o;
                        let mut gw = 0.0f32;
                        for b in 0..n {
                            gw += x[f * n + b] * dy[o * n + b];
                            dx[f * n + b] += p.w[wi] * p.mask[wi] * dy[o * n + b];
                        }
                        g.w[*w][wi] += gw;
                    }
                }
                if let Some(gb) = g.bias[*w].as_mut() {
                    for (o, v) in gb.iter_mut().enumerate() {
                        *v += dy[o * n..(o + 1) * n].iter().sum::<f32>();
                    }
                }
                dx
            }
            Saved::Conv { w, x, g: win, cin } => {
                let p = &self.weights[*w];
                let cout = p.shape[3];
                let gw = conv::conv2d_weight_grad(&dy, x, *win, *cin, cout);
                for (a, b) in g.w[*w].iter_mut().zip(&gw) {
                    *a += b;
                }
                if let Some(gb) = g.bias[*w].as_mut() {
                    for (a, b) in gb.iter_mut().zip(conv::channel_sums(&dy, cout)) {
                        *a += b;
                    }
                }
                conv::conv2d_input_grad(&dy, &p.w, Some(&p.mask), *win, *cin, cout)
            }
            Saved::Norm { i, saved } => {
                let b = &self.norms[*i];
                match saved {
                    Some(s) => {
                        let (dx, dgamma, dbeta) = conv::batch_norm_backward(&dy, &b.gamma, s);
                        for (a, v) in g.gamma[*i].iter_mut().zip(dgamma) {
                            *a += v;
                        }
                        for (a, v) in g.beta[*i].iter_mut().zip(dbeta) {
                            *a += v;
                        }
                        dx
                    }
                    // Evaluation mode is affine: no parameter gradients are asked for there.
                    None => {
                        let m = dy.len() / b.gamma.len().max(1);
                        dy.iter()
                            .enumerate()
                            .map(|(j, d)| {
                                let c = j / m.max(1);
                                d * b.gamma[c] / (b.var[c] + conv::BN_EPSILON).sqrt()
                            })
                            .collect()
                    }
                }
            }
            Saved::Relu { y } => {
                let mut d = dy;
                dense::relu_bwd(y, &mut d);
                d
            }
            Saved::MaxPool { arg, len } => conv::max_pool_backward(&dy, arg, *len),
            Saved::AvgPool { g: win, c } => conv::avg_pool_backward(&dy, *c, *win),
            Saved::Gap { hw } => conv::global_avg_pool_backward(&dy, *hw),
            Saved::Flatten { c, hw } => conv::unflatten(&dy, *c, n, *hw),
            Saved::Dropout { mask } => dy.iter().zip(mask).map(|(d, m)| d * m).collect(),
            Saved::Residual {
                pre,
                short,
                body,
                from,
            } => {
                let d_short = self.backward_seq(short, dy.clone(), n, g);
                let mut d_pre = self.backward_seq(body, dy, n, g);
                if *from == ShortcutFrom::Pre {
                    for (a, b) in d_pre.iter_mut().zip(&d_short) {
                        *a += b;
                    }
                }
                let mut dx = self.backward_seq(pre, d_pre, n, g);
                if *from == ShortcutFrom::Input {
                    for (a, b) in dx.iter_mut().zip(&d_short) {
                        *a += b;
                    }
                }
                dx
            }
        }
    }
}

//! The complete trainable state of a model, per layer, as the host sees it: what a checkpoint
//! saves and what a resumed run restores. Every model type (masked-dense [`Mlp`](super::Mlp),
//! compressed sparse layers) converts its GPU buffers to and from this one struct, so the
//! checkpoint code never touches a model's buffers.

/// Every value a training step reads from the previous step, per layer in dense `[in, out]`
/// row-major layout (biases `[out]`). Restoring it exactly (bit for bit) makes a resumed run
/// identical to one that was never stopped.
///
/// Scratch the next step overwrites before reading (gradients, activations, the mask update's
/// working buffers) is not part of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelState {
    /// Weights (zero outside the mask).
    pub weights: Vec<Vec<f32>>,
    /// 0/1 masks (all ones for dense training).
    pub masks: Vec<Vec<f32>>,
    /// Optimizer momentum of the weights.
    pub momentum: Vec<Vec<f32>>,
    /// Biases.
    pub biases: Vec<Vec<f32>>,
    /// Optimizer momentum of the biases.
    pub bias_momentum: Vec<Vec<f32>>,
    /// Exponential moving average of the dense gradient (SNFS; zeros for other methods).
    pub ema: Vec<Vec<f32>>,
    /// 0/1 map of the weights that were ever active (ITOP rate).
    pub ever: Vec<Vec<f32>>,
    /// Running (loss sum, correct count) of the steps since the metrics were last logged, as the
    /// GPU accumulates them (f32).
    pub loss_sums: [f32; 2],
    /// Batch norms in walk order (empty for the MLP).
    pub norms: Vec<NormState>,
}

/// A batch norm's trained parameters, their momentum and its running statistics, per channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormState {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Momentum of the scale.
    pub gamma_momentum: Vec<f32>,
    /// Momentum of the shift.
    pub beta_momentum: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
}

impl NormState {
    /// The tensors with their names (`gamma`, ...), in a fixed order.
    pub fn tensors(&self) -> [(&'static str, &Vec<f32>); 6] {
        [
            ("gamma", &self.gamma),
            ("beta", &self.beta),
            ("gamma_momentum", &self.gamma_momentum),
            ("beta_momentum", &self.beta_momentum),
            ("running_mean", &self.mean),
            ("running_var", &self.var),
        ]
    }
}

/// Name of the `i`-th batch norm (walk order) in checkpoints and model files: `bn1`, `bn2`, ...
pub fn norm_name(i: usize) -> String {
    format!("bn{}", i + 1)
}

/// One weight tensor of a model as checkpoints and model files store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    /// Layer name (`fc1`, `conv1`, `g1_b0_c1`, ...).
    pub name: String,
    /// `[in, out]` or `[kh, kw, cin, cout]`.
    pub shape: Vec<usize>,
    /// Bias length, if the layer has a bias.
    pub bias: Option<usize>,
}

/// The stored tensors of a model: its weight tensors and the channels of its batch norms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLayout {
    /// Weight tensors in order.
    pub params: Vec<ParamLayout>,
    /// Channels of every batch norm, in walk order.
    pub norms: Vec<usize>,
}

impl ModelLayout {
    /// The MLP of widths `sizes` (input first): layers `fc1`, `fc2`, ... with biases.
    pub fn mlp(sizes: &[usize]) -> Self {
        let names = super::mlp::layer_names(sizes.len().saturating_sub(1));
        ModelLayout {
            params: names
                .into_iter()
                .enumerate()
                .map(|(l, name)| ParamLayout {
                    name,
                    shape: vec![sizes[l], sizes[l + 1]],
                    bias: Some(sizes[l + 1]),
                })
                .collect(),
            norms: Vec::new(),
        }
    }

    /// The weight tensors and batch norms of a model of layers.
    pub fn of_spec(spec: &super::spec::ModelSpec) -> crate::error::Result<Self> {
        let (_, layers) = spec.infer()?;
        Ok(ModelLayout {
            params: layers
                .into_iter()
                .map(|l| {
                    let out = l.spec.layer.shape.last().copied().unwrap_or(1);
                    ParamLayout {
                        name: l.spec.layer.name,
                        shape: l.spec.layer.shape,
                        bias: l.bias.then_some(out),
                    }
                })
                .collect(),
            norms: spec.norm_channels()?,
        })
    }

    /// Layer names of the weight tensors.
    pub fn names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }
}

impl ModelState {
    /// The per-layer tensors with their names (`weight`, `mask`, ...), in a fixed order.
    pub fn tensors(&self) -> [(&'static str, &Vec<Vec<f32>>); 7] {
        [
            ("weight", &self.weights),
            ("mask", &self.masks),
            ("momentum", &self.momentum),
            ("bias", &self.biases),
            ("bias_momentum", &self.bias_momentum),
            ("ema", &self.ema),
            ("ever", &self.ever),
        ]
    }

    /// Where the state holds a non-finite value: one entry per (layer, tensor) with any, as
    /// `"fc1 momentum: 12 of 23520 values non-finite (first at 7: NaN)"`; empty when all finite.
    pub fn non_finite(&self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (what, layers) in self.tensors() {
            for (l, v) in layers.iter().enumerate() {
                let bad = v.iter().filter(|x| !x.is_finite()).count();
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    let name = names.get(l).map(String::as_str).unwrap_or("layer");
                    out.push(format!(
                        "{name} {what}: {bad} of {} values non-finite (first at {i}: {})",
                        v.len(),
                        v[i]
                    ));
                }
            }
        }
        for (i, n) in self.norms.iter().enumerate() {
            for (what, v) in n.tensors() {
                let bad = v.iter().filter(|x| !x.is_finite()).count();
                if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                    out.push(format!(
                        "{} {what}: {bad} of {} values non-finite (first at {j}: {})",
                        norm_name(i),
                        v.len(),
                        v[j]
                    ));
                }
            }
        }
        out
    }
}

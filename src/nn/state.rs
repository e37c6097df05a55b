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
        out
    }
}

//! CPU twin of one MLP training step (`nn::mlp`), built from the dense kernel twins: the
//! reference the GPU model is tested against.

use crate::cpu::dense;
use crate::gpu::ops::SgdConfig;
use crate::gpu::GemmShape;

/// Per-layer parameters of an MLP on the host (weights `[in, out]` row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct HostMlp {
    /// Layer widths, input first.
    pub sizes: Vec<usize>,
    /// Weights per layer.
    pub w: Vec<Vec<f32>>,
    /// 0/1 masks per layer.
    pub mask: Vec<Vec<f32>>,
    /// Biases per layer.
    pub b: Vec<Vec<f32>>,
    /// Weight momentum per layer.
    pub mw: Vec<Vec<f32>>,
    /// Bias momentum per layer.
    pub mb: Vec<Vec<f32>>,
}

/// Gradients and loss of one batch.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// Sum of per-sample losses.
    pub loss_sum: f32,
    /// Number of correct predictions.
    pub correct: f32,
    /// Dense weight gradients per layer (`dL/d(mask ⊙ w)`).
    pub gw: Vec<Vec<f32>>,
    /// Bias gradients per layer.
    pub gb: Vec<Vec<f32>>,
}

impl HostMlp {
    /// Forward and backward on a feature-major batch `x[in, batch]`.
    pub fn grads(&self, x: &[f32], labels: &[u32], batch: usize, smoothing: f32) -> StepResult {
        let n = self.sizes.len() - 1;
        let mut acts: Vec<Vec<f32>> = Vec::new();
        for l in 0..n {
            let (fin, fout) = (self.sizes[l], self.sizes[l + 1]);
            let input = if l == 0 { x } else { &acts[l - 1][..] };
            let mut z = vec![0.0; fout * batch];
            let shape = GemmShape {
                m: fout,
                n: batch,
                k: fin,
                trans_a: true,
                trans_b: false,
            };
            dense::gemm(shape, &self.w[l], input, &mut z, Some(&self.mask[l]), false);
            dense::bias_act(&self.b[l], &mut z, fout, batch, l + 1 < n);
            acts.push(z);
        }
        let classes = self.sizes[n];
        let mut d = vec![0.0; classes * batch];
        let (loss, correct) = dense::softmax_xent(
            &acts[n - 1],
            labels,
            &mut d,
            classes,
            batch,
            smoothing,
            1.0 / batch as f32,
        );
        let mut gw = vec![Vec::new(); n];
        let mut gb = vec![Vec::new(); n];
        for l in (0..n).rev() {
            let (fin, fout) = (self.sizes[l], self.sizes[l + 1]);
            if l + 1 < n {
                dense::relu_bwd(&acts[l], &mut d);
            }
            gb[l] = dense::segment_sum(&d, fout, batch);
            let input = if l == 0 { x } else { &acts[l - 1][..] };
            let mut g = vec![0.0; fin * fout];
            let shape = GemmShape {
                m: fin,
                n: fout,
                k: batch,
                trans_a: false,
                trans_b: true,
            };
            dense::gemm(shape, input, &d, &mut g, None, false);
            gw[l] = g;
            if l > 0 {
                let mut dprev = vec![0.0; fin * batch];
                dense::gemm(
                    GemmShape::nn(fin, batch, fout),
                    &self.w[l],
                    &d,
                    &mut dprev,
                    Some(&self.mask[l]),
                    false,
                );
                d = dprev;
            }
        }
        StepResult {
            loss_sum: loss.iter().sum(),
            correct: correct.iter().sum(),
            gw,
            gb,
        }
    }

    /// Applies SGD (weights masked, biases without weight decay).
    pub fn apply_sgd(&mut self, r: &StepResult, cfg: SgdConfig) {
        let bias_cfg = SgdConfig {
            weight_decay: 0.0,
            ..cfg
        };
        for l in 0..self.w.len() {
            dense::sgd(
                &r.gw[l],
                &mut self.w[l],
                &mut self.mw[l],
                Some(&self.mask[l]),
                cfg,
            );
            dense::sgd(&r.gb[l], &mut self.b[l], &mut self.mb[l], None, bias_cfg);
        }
    }
}

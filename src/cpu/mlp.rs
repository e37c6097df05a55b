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

/// Hidden units that are never active: for each hidden layer, how many of its ReLU units output
/// 0 for every one of the `n` samples of `images` (sample-major, `sizes[0]` features each). Such
/// a unit passes no signal and, having a zero gradient on every weight in and out, can never
/// recover: RigL cannot grow a connection to it (its dense gradient is exactly 0).
/// `weights` are `[in, out]` row-major and multiplied by `masks`.
pub fn dead_units(
    sizes: &[usize],
    weights: &[Vec<f32>],
    masks: &[Vec<f32>],
    biases: &[Vec<f32>],
    images: &[f32],
    n: usize,
) -> Vec<usize> {
    let hidden = sizes.len().saturating_sub(2);
    let eff: Vec<Vec<f32>> = (0..hidden)
        .map(|l| {
            weights[l]
                .iter()
                .zip(&masks[l])
                .map(|(w, m)| w * m)
                .collect()
        })
        .collect();
    let mut alive: Vec<Vec<bool>> = (0..hidden).map(|l| vec![false; sizes[l + 1]]).collect();
    let mut cur = Vec::new();
    let mut next = Vec::new();
    for s in 0..n {
        cur.clear();
        cur.extend_from_slice(&images[s * sizes[0]..(s + 1) * sizes[0]]);
        for l in 0..hidden {
            let out = sizes[l + 1];
            next.clear();
            next.extend_from_slice(&biases[l]);
            for (i, &xi) in cur.iter().enumerate() {
                if xi != 0.0 {
                    let row = &eff[l][i * out..(i + 1) * out];
                    for (y, w) in next.iter_mut().zip(row) {
                        *y += xi * w;
                    }
                }
            }
            for (y, a) in next.iter_mut().zip(alive[l].iter_mut()) {
                *y = y.max(0.0);
                *a |= *y > 0.0;
            }
            std::mem::swap(&mut cur, &mut next);
        }
    }
    alive
        .iter()
        .map(|a| a.iter().filter(|&&x| !x).count())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::dead_units;

    #[test]
    fn dead_units_by_hand() {
        // 2 inputs -> 3 hidden -> 2 hidden -> 1 output; inputs are non-negative.
        // h1[0] = relu(-x0 - x1 - 0.1): never positive -> dead.
        // h1[1] = relu(x0 - 0.5): positive for the second sample only -> alive.
        // h1[2]: its weights are masked out and its bias is 0 -> always 0 -> dead.
        // h2[0] = relu(h1[0] + h1[2]) = 0 -> dead; h2[1] = relu(h1[1]) -> alive.
        let sizes = [2, 3, 2, 1];
        let w1 = vec![-1.0, 1.0, 5.0, -1.0, 0.0, 5.0]; // [in=2, out=3] row-major
        let m1 = vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let b1 = vec![-0.1, -0.5, 0.0];
        let w2 = vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0]; // [3, 2]
        let m2 = vec![1.0; 6];
        let b2 = vec![0.0, 0.0];
        let w3 = vec![1.0, 1.0];
        let m3 = vec![1.0, 1.0];
        let b3 = vec![0.0];
        let images = [0.2, 0.3, 1.0, 0.0]; // two samples
        let dead = dead_units(
            &sizes,
            &[w1, w2, w3],
            &[m1, m2, m3],
            &[b1, b2, b3],
            &images,
            2,
        );
        assert_eq!(dead, vec![2, 1]);
        // Only the first sample: h1[1] is 0 there as well, and so is everything after it.
        let (w, m, b) = (
            vec![
                vec![-1.0, 1.0, 5.0, -1.0, 0.0, 5.0],
                vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0],
                vec![1.0, 1.0],
            ],
            vec![
                vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0],
                vec![1.0; 6],
                vec![1.0; 2],
            ],
            vec![vec![-0.1, -0.5, 0.0], vec![0.0, 0.0], vec![0.0]],
        );
        assert_eq!(dead_units(&sizes, &w, &m, &b, &images[..2], 1), vec![3, 2]);
    }
}

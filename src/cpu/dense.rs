//! CPU twins of the dense kernels in `shaders/gemm.wgsl`, `act.wgsl`, `reduce.wgsl`, `xent.wgsl`
//! and `sgd.wgsl`. Same layouts, same formulas; accumulation in f64 where that makes the reference
//! more accurate than the GPU (tests then compare with a tolerance).

use crate::gpu::ops::SgdConfig;
use crate::gpu::GemmShape;

/// `c (+)= op(a ⊙ mask)·op(b)`, row-major, with the layouts of [`GemmShape`].
pub fn gemm(
    shape: GemmShape,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    mask: Option<&[f32]>,
    accumulate: bool,
) {
    let GemmShape {
        m,
        n,
        k,
        trans_a,
        trans_b,
    } = shape;
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for kk in 0..k {
                let ai = if trans_a { kk * m + i } else { i * k + kk };
                let mut av = a[ai];
                if let Some(mk) = mask {
                    av *= mk[ai];
                }
                let bv = if trans_b {
                    b[j * k + kk]
                } else {
                    b[kk * n + j]
                };
                acc += f64::from(av) * f64::from(bv);
            }
            let idx = i * n + j;
            c[idx] = if accumulate {
                c[idx] + acc as f32
            } else {
                acc as f32
            };
        }
    }
}

/// `z[f, b] = act(z[f, b] + bias[f])`, feature-major.
pub fn bias_act(bias: &[f32], z: &mut [f32], features: usize, batch: usize, relu: bool) {
    for f in 0..features {
        for v in &mut z[f * batch..(f + 1) * batch] {
            let x = *v + bias[f];
            *v = if relu { x.max(0.0) } else { x };
        }
    }
}

/// `g = y > 0 ? g : 0`.
pub fn relu_bwd(y: &[f32], g: &mut [f32]) {
    for (gv, yv) in g.iter_mut().zip(y) {
        if *yv <= 0.0 {
            *gv = 0.0;
        }
    }
}

/// Sums of consecutive segments of length `len`.
pub fn segment_sum(x: &[f32], segments: usize, len: usize) -> Vec<f32> {
    (0..segments)
        .map(|s| {
            x[s * len..(s + 1) * len]
                .iter()
                .map(|v| f64::from(*v))
                .sum::<f64>() as f32
        })
        .collect()
}

/// Softmax cross-entropy of feature-major logits `[classes, batch]`.
///
/// Returns (per-sample loss, per-sample correct flag) and writes `dlogits = (softmax - t) * scale`,
/// with `t = (1 - smoothing) * onehot + smoothing / classes`. The prediction is the first index of
/// the largest logit.
pub fn softmax_xent(
    logits: &[f32],
    labels: &[u32],
    dlogits: &mut [f32],
    classes: usize,
    batch: usize,
    smoothing: f32,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut loss = vec![0.0; batch];
    let mut correct = vec![0.0; batch];
    for b in 0..batch {
        let col = |c: usize| f64::from(logits[c * batch + b]);
        let mut arg = 0;
        for c in 1..classes {
            if logits[c * batch + b] > logits[arg * batch + b] {
                arg = c;
            }
        }
        let mx = col(arg);
        let lse = (0..classes).map(|c| (col(c) - mx).exp()).sum::<f64>().ln();
        let off = f64::from(smoothing) / classes as f64;
        let mut l = 0.0;
        for c in 0..classes {
            let z = col(c) - mx;
            let t = off
                + if c == labels[b] as usize {
                    1.0 - f64::from(smoothing)
                } else {
                    0.0
                };
            l -= t * (z - lse);
            dlogits[c * batch + b] = (((z - lse).exp() - t) * f64::from(scale)) as f32;
        }
        loss[b] = l as f32;
        correct[b] = if arg == labels[b] as usize { 1.0 } else { 0.0 };
    }
    (loss, correct)
}

/// SGD with momentum (TensorFlow's MomentumOptimizer form) and L2 decay; masked positions get
/// weight and momentum zero.
pub fn sgd(grad: &[f32], w: &mut [f32], m: &mut [f32], mask: Option<&[f32]>, cfg: SgdConfig) {
    for i in 0..w.len() {
        if let Some(mk) = mask {
            if mk[i] == 0.0 {
                w[i] = 0.0;
                m[i] = 0.0;
                continue;
            }
        }
        let g = grad[i] + cfg.weight_decay * w[i];
        let mv = cfg.momentum * m[i] + g;
        m[i] = mv;
        let upd = if cfg.nesterov {
            g + cfg.momentum * mv
        } else {
            mv
        };
        w[i] -= cfg.lr * upd;
    }
}

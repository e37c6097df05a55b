//! CPU twins of the image layers (SPEC §8): 2-D convolution (forward, input gradient, weight
//! gradient), batch normalisation, max and average pooling, global average pooling and
//! counter-based dropout. Written as plain loops over the definitions, for clarity rather than
//! speed: they are the reference the GPU kernels are compared with, and they are checked
//! against finite differences themselves (`tests/cnn_cpu.rs`).
//!
//! Layouts: activations are channel-major `[C, N, H, W]` (the `[features, batch]` convention
//! with the spatial positions in the batch axis); a convolution's weights are `[kh, kw, cin,
//! cout]`, flat position `((ky * kw + kx) * cin + ci) * cout + co`, read as the matrix
//! `[kh*kw*cin, cout]` (the same flat index `c * cout + r` as a dense `[in, out]` layer).

use crate::cpu::mask_update::set_score;
pub use crate::shape::Window;

/// Flat index of a channel-major activation `[C, N, H, W]`.
#[inline]
fn at(c: usize, img: usize, y: usize, x: usize, n: usize, h: usize, w: usize) -> usize {
    ((c * n + img) * h + y) * w + x
}

/// Convolution forward: `y[co] = bias[co] + sum w[ky,kx,ci,co] * mask * x[ci, tap]`, with `y`
/// `[cout, N, Ho, Wo]`. `mask` (same layout as `w`) is applied when given.
pub fn conv2d_forward(
    x: &[f32],
    w: &[f32],
    mask: Option<&[f32]>,
    bias: Option<&[f32]>,
    g: Window,
    cin: usize,
    cout: usize,
) -> Vec<f32> {
    let (ho, wo) = g.out().unwrap_or((0, 0));
    let mut y = vec![0.0f32; cout * g.n * ho * wo];
    for co in 0..cout {
        for img in 0..g.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias.map_or(0.0, |b| b[co]);
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let Some((iy, ix)) = g.tap(oy, ox, ky, kx) else {
                                continue;
                            };
                            for ci in 0..cin {
                                let wi = ((ky * g.k + kx) * cin + ci) * cout + co;
                                let wv = w[wi] * mask.map_or(1.0, |m| m[wi]);
                                acc += wv * x[at(ci, img, iy, ix, g.n, g.h, g.w)];
                            }
                        }
                    }
                    y[at(co, img, oy, ox, g.n, ho, wo)] = acc;
                }
            }
        }
    }
    y
}

/// Convolution input gradient: `dx[ci, tap] += w[ky,kx,ci,co] * mask * dy[co, out]` over every
/// output and tap (a transposed convolution), `dx` `[cin, N, H, W]`.
pub fn conv2d_input_grad(
    dy: &[f32],
    w: &[f32],
    mask: Option<&[f32]>,
    g: Window,
    cin: usize,
    cout: usize,
) -> Vec<f32> {
    let (ho, wo) = g.out().unwrap_or((0, 0));
    let mut dx = vec![0.0f32; cin * g.n * g.h * g.w];
    for co in 0..cout {
        for img in 0..g.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let d = dy[at(co, img, oy, ox, g.n, ho, wo)];
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let Some((iy, ix)) = g.tap(oy, ox, ky, kx) else {
                                continue;
                            };
                            for ci in 0..cin {
                                let wi = ((ky * g.k + kx) * cin + ci) * cout + co;
                                let wv = w[wi] * mask.map_or(1.0, |m| m[wi]);
                                dx[at(ci, img, iy, ix, g.n, g.h, g.w)] += wv * d;
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// Convolution weight gradient, dense (`dL/d(mask ⊙ w)` at every position):
/// `dw[ky,kx,ci,co] = sum over images and outputs of dy[co, out] * x[ci, tap]`.
pub fn conv2d_weight_grad(dy: &[f32], x: &[f32], g: Window, cin: usize, cout: usize) -> Vec<f32> {
    let (ho, wo) = g.out().unwrap_or((0, 0));
    let mut dw = vec![0.0f32; g.k * g.k * cin * cout];
    for ky in 0..g.k {
        for kx in 0..g.k {
            for ci in 0..cin {
                for co in 0..cout {
                    let mut acc = 0.0f32;
                    for img in 0..g.n {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                if let Some((iy, ix)) = g.tap(oy, ox, ky, kx) {
                                    acc += dy[at(co, img, oy, ox, g.n, ho, wo)]
                                        * x[at(ci, img, iy, ix, g.n, g.h, g.w)];
                                }
                            }
                        }
                    }
                    dw[((ky * g.k + kx) * cin + ci) * cout + co] = acc;
                }
            }
        }
    }
    dw
}

/// Sum of `dy` per channel (the bias gradient of a convolution), `dy` `[C, M]`.
pub fn channel_sums(dy: &[f32], channels: usize) -> Vec<f32> {
    let m = dy.len() / channels.max(1);
    (0..channels)
        .map(|c| dy[c * m..(c + 1) * m].iter().sum())
        .collect()
}

pub use crate::gpu::image::{BN_EPSILON, BN_MOMENTUM};

/// What batch-norm training keeps for its backward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct BnSaved {
    /// Normalised input `[C, M]`.
    pub xhat: Vec<f32>,
    /// `1 / sqrt(var + eps)` per channel.
    pub inv_std: Vec<f32>,
}

/// Batch norm in training mode over `x` `[C, M]` (M = N*H*W): batch mean and (biased) variance
/// per channel, `y = gamma * (x - mean) / sqrt(var + eps) + beta`; the running statistics move
/// by `running = 0.9 * running + 0.1 * batch` (the variance with Bessel's correction, as
/// TensorFlow's fused batch norm).
pub fn batch_norm_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) -> (Vec<f32>, BnSaved) {
    let c = gamma.len();
    let m = x.len() / c.max(1);
    let mut y = vec![0.0f32; x.len()];
    let mut xhat = vec![0.0f32; x.len()];
    let mut inv_std = vec![0.0f32; c];
    for ch in 0..c {
        let row = &x[ch * m..(ch + 1) * m];
        let mean = (row.iter().map(|&v| f64::from(v)).sum::<f64>() / m as f64) as f32;
        let var = (row
            .iter()
            .map(|&v| f64::from(v - mean) * f64::from(v - mean))
            .sum::<f64>()
            / m as f64) as f32;
        let is = 1.0 / (var + BN_EPSILON).sqrt();
        inv_std[ch] = is;
        for i in 0..m {
            let xh = (row[i] - mean) * is;
            xhat[ch * m + i] = xh;
            y[ch * m + i] = gamma[ch] * xh + beta[ch];
        }
        let unbiased = if m > 1 {
            var * m as f32 / (m - 1) as f32
        } else {
            var
        };
        running_mean[ch] = BN_MOMENTUM * running_mean[ch] + (1.0 - BN_MOMENTUM) * mean;
        running_var[ch] = BN_MOMENTUM * running_var[ch] + (1.0 - BN_MOMENTUM) * unbiased;
    }
    (y, BnSaved { xhat, inv_std })
}

/// Batch norm in evaluation mode: the running statistics.
pub fn batch_norm_eval(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
) -> Vec<f32> {
    let c = gamma.len();
    let m = x.len() / c.max(1);
    let mut y = vec![0.0f32; x.len()];
    for ch in 0..c {
        let is = 1.0 / (running_var[ch] + BN_EPSILON).sqrt();
        for i in 0..m {
            y[ch * m + i] = gamma[ch] * (x[ch * m + i] - running_mean[ch]) * is + beta[ch];
        }
    }
    y
}

/// Batch-norm backward (training mode): `(dx, dgamma, dbeta)` from `dy` `[C, M]`.
/// `dx = inv_std / M * (M * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))`, `dxhat = dy * gamma`.
pub fn batch_norm_backward(
    dy: &[f32],
    gamma: &[f32],
    saved: &BnSaved,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let m = dy.len() / c.max(1);
    let mut dx = vec![0.0f32; dy.len()];
    let mut dgamma = vec![0.0f32; c];
    let mut dbeta = vec![0.0f32; c];
    for ch in 0..c {
        let r = ch * m..(ch + 1) * m;
        let (dyr, xh) = (&dy[r.clone()], &saved.xhat[r]);
        let sum_dy: f32 = dyr.iter().sum();
        let sum_dy_xh: f32 = dyr.iter().zip(xh).map(|(d, x)| d * x).sum();
        dgamma[ch] = sum_dy_xh;
        dbeta[ch] = sum_dy;
        let k = gamma[ch] * saved.inv_std[ch] / m as f32;
        for i in 0..m {
            dx[ch * m + i] = k * (m as f32 * dyr[i] - sum_dy - xh[i] * sum_dy_xh);
        }
    }
    (dx, dgamma, dbeta)
}

/// Max pooling forward over `x` `[C, N, H, W]`: the output and, per output, the flat input index
/// of its maximum (the first in window order on ties; padding never wins).
pub fn max_pool_forward(x: &[f32], c: usize, g: Window) -> (Vec<f32>, Vec<u32>) {
    let (ho, wo) = g.out().unwrap_or((0, 0));
    let mut y = vec![0.0f32; c * g.n * ho * wo];
    let mut arg = vec![0u32; y.len()];
    for ch in 0..c {
        for img in 0..g.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best: Option<(f32, usize)> = None;
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            if let Some((iy, ix)) = g.tap(oy, ox, ky, kx) {
                                let i = at(ch, img, iy, ix, g.n, g.h, g.w);
                                if best.is_none_or(|(b, _)| x[i] > b) {
                                    best = Some((x[i], i));
                                }
                            }
                        }
                    }
                    let o = at(ch, img, oy, ox, g.n, ho, wo);
                    let (v, i) = best.unwrap_or((0.0, 0));
                    y[o] = v;
                    arg[o] = i as u32;
                }
            }
        }
    }
    (y, arg)
}

/// Max pooling backward: `dx[argmax] += dy`.
pub fn max_pool_backward(dy: &[f32], arg: &[u32], input_len: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; input_len];
    for (d, &i) in dy.iter().zip(arg) {
        dx[i as usize] += d;
    }
    dx
}

/// Average pooling forward: the mean over the window's taps inside the image (padding is not
/// counted, as TensorFlow's `SAME` average pooling).
pub fn avg_pool_forward(x: &[f32], c: usize, g: Window) -> Vec<f32> {
    let (ho, wo) = g.out().unwrap_or((0, 0));
    let mut y = vec![0.0f32; c * g.n * ho * wo];
    for ch in 0..c {
        for img in 0..g.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut s, mut cnt) = (0.0f32, 0u32);
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            if let Some((iy, ix)) = g.tap(oy, ox, ky, kx) {
                                s += x[at(ch, img, iy, ix, g.n, g.h, g.w)];
                                cnt += 1;
                            }
                        }
                    }
                    y[at(ch, img, oy, ox, g.n, ho, wo)] = s / cnt.max(1) as f32;
                }
            }
        }
    }
    y
}

/// Average pooling backward.
pub fn avg_pool_backward(dy: &[f32], c: usize, g: Window) -> Vec<f32> {
    let (ho, wo) = g.out().unwrap_or((0, 0));
    let mut dx = vec![0.0f32; c * g.n * g.h * g.w];
    for ch in 0..c {
        for img in 0..g.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let taps: Vec<(usize, usize)> = (0..g.k * g.k)
                        .filter_map(|t| g.tap(oy, ox, t / g.k, t % g.k))
                        .collect();
                    let d = dy[at(ch, img, oy, ox, g.n, ho, wo)] / taps.len().max(1) as f32;
                    for (iy, ix) in taps {
                        dx[at(ch, img, iy, ix, g.n, g.h, g.w)] += d;
                    }
                }
            }
        }
    }
    dx
}

/// Global average pooling: `[C, N, H, W]` to `[C, N]`.
pub fn global_avg_pool(x: &[f32], c: usize, n: usize, hw: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; c * n];
    for (i, out) in y.iter_mut().enumerate() {
        *out = x[i * hw..(i + 1) * hw].iter().sum::<f32>() / hw as f32;
    }
    y
}

/// Global average pooling backward.
pub fn global_avg_pool_backward(dy: &[f32], hw: usize) -> Vec<f32> {
    dy.iter()
        .flat_map(|&d| std::iter::repeat_n(d / hw as f32, hw))
        .collect()
}

/// `[C, N, H, W]` to `[C*H*W, N]` (feature `c*H*W + y*W + x`), the layout a linear layer reads.
pub fn flatten(x: &[f32], c: usize, n: usize, hw: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    for ch in 0..c {
        for img in 0..n {
            for p in 0..hw {
                y[(ch * hw + p) * n + img] = x[(ch * n + img) * hw + p];
            }
        }
    }
    y
}

/// The inverse of [`flatten`] (its backward pass).
pub fn unflatten(y: &[f32], c: usize, n: usize, hw: usize) -> Vec<f32> {
    let mut x = vec![0.0f32; y.len()];
    for ch in 0..c {
        for img in 0..n {
            for p in 0..hw {
                x[(ch * n + img) * hw + p] = y[(ch * hw + p) * n + img];
            }
        }
    }
    x
}

/// Dropout's keep mask, scaled: element `i` is kept (value `1 / (1 - rate)`) unless the
/// counter-based hash of (seed, step, layer, i) falls below `rate * 2^32` (value 0). The hash is
/// SET's ([`set_score`]), so a resumed run drops the same units and the GPU computes the same
/// mask.
pub fn dropout_mask(seed: u32, step: u32, layer: u32, len: usize, rate: f32) -> Vec<f32> {
    let threshold = (f64::from(rate) * 4_294_967_296.0).min(4_294_967_295.0) as u32;
    let keep = 1.0 / (1.0 - rate);
    (0..len)
        .map(|i| {
            if set_score(seed, step, layer, i as u32) < threshold {
                0.0
            } else {
                keep
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Padding;

    #[test]
    fn a_one_by_one_convolution_is_a_matrix_product() {
        // 2 input channels, 3 output channels, one 2x2 image: y[co, p] = sum_ci w[ci, co] x[ci, p].
        let x = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        let w = [1.0, 0.0, 2.0, 0.5, 1.0, -1.0]; // [1, 1, 2, 3]
        let g = Window {
            n: 1,
            h: 2,
            w: 2,
            k: 1,
            stride: 1,
            padding: Padding::Valid,
        };
        let y = conv2d_forward(&x, &w, None, None, g, 2, 3);
        assert_eq!(
            y,
            vec![
                6.0, 12.0, 18.0, 24.0, // 1*x0 + 0.5*x1
                10.0, 20.0, 30.0, 40.0, // 0*x0 + 1*x1
                -8.0, -16.0, -24.0, -32.0 // 2*x0 - x1
            ]
        );
    }

    #[test]
    fn same_padding_puts_the_extra_row_at_the_bottom() {
        // 4x4 image of ones, 3x3 kernel of ones, stride 2, SAME: output 2x2, total pad 1, all of
        // it after: the first output sees a full 3x3 window, the last a 2x2 one.
        let g = Window {
            n: 1,
            h: 4,
            w: 4,
            k: 3,
            stride: 2,
            padding: Padding::Same,
        };
        let y = conv2d_forward(&[1.0; 16], &[1.0; 9], None, None, g, 1, 1);
        assert_eq!(y, vec![9.0, 6.0, 6.0, 4.0]);
    }

    #[test]
    fn max_pool_keeps_the_first_maximum() {
        let g = Window {
            n: 1,
            h: 2,
            w: 2,
            k: 2,
            stride: 2,
            padding: Padding::Valid,
        };
        let (y, arg) = max_pool_forward(&[3.0, 5.0, 5.0, 1.0], 1, g);
        assert_eq!((y, arg.clone()), (vec![5.0], vec![1]));
        assert_eq!(max_pool_backward(&[2.0], &arg, 4), vec![0.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn dropout_drops_about_its_rate_and_repeats() {
        let a = dropout_mask(7, 3, 1, 10_000, 0.3);
        let dropped = a.iter().filter(|&&v| v == 0.0).count();
        assert!((2800..3200).contains(&dropped), "{dropped}");
        assert_eq!(a, dropout_mask(7, 3, 1, 10_000, 0.3));
        assert_ne!(a, dropout_mask(7, 4, 1, 10_000, 0.3));
    }
}

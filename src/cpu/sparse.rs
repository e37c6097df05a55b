//! CPU twins of the compressed sparse kernels (`shaders/spmm.wgsl`, `shaders/sddmm.wgsl`), on the
//! index of [`crate::sparse::csr::CsrIndex`]; activations feature-major `[features, batch]`.

use crate::sparse::csr::CsrIndex;

/// Forward product `y[r, b] = Σ_c w[c, r] x[c, b]` over the active weights.
pub fn spmm_forward(idx: &CsrIndex, vals: &[f32], x: &[f32], batch: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; idx.out_dim * batch];
    for r in 0..idx.out_dim {
        for b in 0..batch {
            let mut acc = 0.0f64;
            for j in idx.out_ptr[r]..idx.out_ptr[r + 1] {
                let s = idx.fwd_slot[j as usize] as usize;
                let c = idx.pos[s] as usize / idx.out_dim;
                acc += f64::from(vals[s]) * f64::from(x[c * batch + b]);
            }
            y[r * batch + b] = acc as f32;
        }
    }
    y
}

/// Input gradient `dx[c, b] = Σ_r w[c, r] d[r, b]` over the active weights.
pub fn spmm_input_grad(idx: &CsrIndex, vals: &[f32], d: &[f32], batch: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; idx.in_dim * batch];
    for c in 0..idx.in_dim {
        for b in 0..batch {
            let mut acc = 0.0f64;
            for s in idx.in_ptr[c]..idx.in_ptr[c + 1] {
                let r = idx.pos[s as usize] as usize % idx.out_dim;
                acc += f64::from(vals[s as usize]) * f64::from(d[r * batch + b]);
            }
            y[c * batch + b] = acc as f32;
        }
    }
    y
}

/// Weight gradient at the active positions only: `g[s] = Σ_b x[c(s), b] d[r(s), b]`.
pub fn sddmm(idx: &CsrIndex, x: &[f32], d: &[f32], batch: usize) -> Vec<f32> {
    idx.pos
        .iter()
        .map(|&q| {
            let (c, r) = (q as usize / idx.out_dim, q as usize % idx.out_dim);
            (0..batch)
                .map(|b| f64::from(x[c * batch + b]) * f64::from(d[r * batch + b]))
                .sum::<f64>() as f32
        })
        .collect()
}

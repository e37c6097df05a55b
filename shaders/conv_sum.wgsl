// The weight gradient's last step on the texture path (src/gpu/conv_tex.rs): the texture GEMM
// leaves partial products dW^T[co, kk] of each split of the batch, stacked
// part[(s · cout + co) · kp + kk]; this sums them over the splits and writes the transpose,
// dw[kk · cout + co] (+)= Σ_s part[s][co][kk], for kk below K (the padding columns are dropped).
//
// Bindings (group 0):
//   0 uniform SumParams
//   1 storage read part : [splits, cout, kp]
//   2 storage rw   dw   : [K, cout]

struct SumParams {
    k: u32,
    cout: u32,
    kp: u32,
    splits: u32,
}

override ACCUMULATE: bool = false;

@group(0) @binding(0) var<uniform> p: SumParams;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> dw: array<f32>;

@compute @workgroup_size(64)
fn conv_wgrad_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.k * p.cout) {
        return;
    }
    let kk = i / p.cout;
    let co = i % p.cout;
    var acc = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        acc += part[(s * p.cout + co) * p.kp + kk];
    }
    if (ACCUMULATE) {
        dw[i] = dw[i] + acc;
    } else {
        dw[i] = acc;
    }
}

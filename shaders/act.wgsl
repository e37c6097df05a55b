// Bias + activation forward and ReLU backward.
// Activations are feature-major: x[f * batch + b] is feature f of sample b.
// Binding 0 of group 0 is the uniform Params below; other bindings are listed at each entry.
// 1-D kernels linearise global_invocation_id over (x, y) so n may exceed 65535 * 256 invocations.

struct Params {
    n: u32,        // total elements (1-D kernels), or segments for segment_sum
    rows: u32,     // features / classes / segments
    cols: u32,     // batch / segment length
    flag: u32,     // bias_act_fwd: 1 = ReLU, 0 = identity
    f0: f32,       // lr | label smoothing
    f1: f32,       // momentum | loss gradient scale
    f2: f32,       // weight decay
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// ---- bias_act_fwd: z[f, b] = act(z[f, b] + bias[f]) in place.
// 1 read bias[rows]; 2 rw z[rows * cols]
@group(0) @binding(1) var<storage, read> x_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> x_io: array<f32>;

@compute @workgroup_size(256)
fn bias_act_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    var v = x_io[i] + x_in[i / p.cols];
    if (p.flag == 1u) {
        v = max(v, 0.0);
    }
    x_io[i] = v;
}

// ---- relu_bwd: g[i] = y[i] > 0 ? g[i] : 0 in place (y is the ReLU output).
// 1 read y ; 2 rw g 

@compute @workgroup_size(256)
fn relu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    x_io[i] = select(0.0, x_io[i], x_in[i] > 0.0);
}


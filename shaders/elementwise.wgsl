// Small elementwise state updates.
// Binding 0 of group 0 is the uniform Params below; 1 read x; 2 rw acc.
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

// ---- ema_update: acc -= f0 * (acc - x), f0 = 1 - decay (TensorFlow's moving average, in this
// order of operations, no fused multiply-add: the CPU twin is cpu::mask_update::ema_update).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> acc: array<f32>;

@compute @workgroup_size(256)
fn ema_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let d = acc[i] - x[i];
    let s = p.f0 * d;
    acc[i] = acc[i] - s;
}

// ---- max_into: acc = max(acc, x).
@compute @workgroup_size(256)
fn max_into(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    acc[i] = max(acc[i], x[i]);
}

// ---- mask_zero: acc = x != 0 ? acc : 0 (zero a tensor outside a 0/1 mask; +0.0, never -0.0).
@compute @workgroup_size(256)
fn mask_zero(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    acc[i] = select(0.0, acc[i], x[i] != 0.0);
}

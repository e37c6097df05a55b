// SGD with momentum / Nesterov and weight decay, optionally masked.
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

override NESTEROV: bool = false;
override USE_MASK: bool = false;
// Also write each new weight's bits into texel i of `sg_tex` (the value texture the sparse
// products read, src/gpu/texture.rs META_WIDTH layout).
override STORE_TEX: bool = false;

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// ---- sgd_update: SGD with momentum (optionally Nesterov) and L2 weight decay, in the form of
// TensorFlow's MomentumOptimizer used by the official code:
//   g = grad + wd * w;  m = mu * m + g;  w -= lr * (NESTEROV ? g + mu * m : m)
// With USE_MASK, a position whose mask is 0 gets w = 0 and m = 0 and nothing else.
// f0 = lr, f1 = momentum, f2 = weight decay.
// 1 read grad; 2 rw w; 3 rw m; 4 read mask (f32 0/1); 5 texture write (rg32uint) value mirror
@group(0) @binding(1) var<storage, read> sg_grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> sg_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> sg_m: array<f32>;
@group(0) @binding(4) var<storage, read> sg_mask: array<f32>;
@group(0) @binding(5) var sg_tex: texture_storage_2d<rg32uint, write>;

@compute @workgroup_size(256)
fn sgd_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) {
        return;
    }
    if (USE_MASK && sg_mask[i] == 0.0) {
        sg_w[i] = 0.0;
        sg_m[i] = 0.0;
        return;
    }
    let w = sg_w[i];
    let g = sg_grad[i] + p.f2 * w;
    let m = p.f1 * sg_m[i] + g;
    sg_m[i] = m;
    var upd = m;
    if (NESTEROV) {
        upd = g + p.f1 * m;
    }
    let nw = w - p.f0 * upd;
    sg_w[i] = nw;
    if (STORE_TEX) {
        textureStore(sg_tex, vec2<u32>(i % 4096u, i / 4096u), vec4<u32>(bitcast<u32>(nw), 0u, 0u, 0u));
    }
}

// ---- sgd_update_v4: sgd_update a vec4 at a time, for n a multiple of 4 (the host checks). On
// lavapipe a storage access at a per-lane address is a loop over the lanes, so one vec4 access
// takes a quarter of four scalar ones' iterations. Each element gets exactly sgd_update's
// arithmetic (same bits). Views of bindings 1-4 as vec4s.
@group(0) @binding(1) var<storage, read> sg_grad4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> sg_w4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> sg_m4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> sg_mask4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn sgd_update_v4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n / 4u) {
        return;
    }
    let w = sg_w4[i];
    let g = sg_grad4[i] + p.f2 * w;
    let m = p.f1 * sg_m4[i] + g;
    var upd = m;
    if (NESTEROV) {
        upd = g + p.f1 * m;
    }
    // With USE_MASK, a masked position gets w = 0 and m = 0 and nothing else (no texel).
    var off = vec4<bool>(false);
    if (USE_MASK) {
        off = sg_mask4[i] == vec4<f32>(0.0);
    }
    let nw = select(w - p.f0 * upd, vec4<f32>(0.0), off);
    sg_m4[i] = select(m, vec4<f32>(0.0), off);
    sg_w4[i] = nw;
    if (STORE_TEX) {
        for (var j = 0u; j < 4u; j++) {
            let t = 4u * i + j;
            if (!off[j]) {
                textureStore(sg_tex, vec2<u32>(t % 4096u, t / 4096u), vec4<u32>(bitcast<u32>(nw[j]), 0u, 0u, 0u));
            }
        }
    }
}

// Elementwise kernels of the compressed sparse model that also write an activation texture
// (src/gpu/texture.rs) for the sparse products to gather from. One invocation per texel (4
// samples of one feature); buffers are feature-major [rows, B] viewed as vec4 (B a multiple of 4).
//
// Bindings (group 0), shared by every entry point:
//   0 uniform Params
//   1 storage read  bias : [rows]                     (bias_act_pack)
//   2 storage rw    y    : [rows, B] vec4, in place   (every entry)
//   3 storage read  a    : [rows, B] vec4, ReLU output (relu_bwd_pack)
//   4 texture write t    : the texture copy of y after the kernel
//   5 texture read  src  : the texture unpack copies into y

struct Params {
    n4: u32,    // texels: rows * B / 4
    b4: u32,    // B / 4
    relu: u32,  // bias_act_pack: 1 = ReLU, 0 = identity
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(4) var t: texture_storage_2d<rgba32float, write>;
@group(0) @binding(5) var src: texture_storage_2d<rgba32float, read>;

fn linear(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// t = y.
@compute @workgroup_size(64)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear(gid, nwg);
    if (i >= p.n4) {
        return;
    }
    textureStore(t, vec2<u32>(i % p.b4, i / p.b4), y[i]);
}

// y = act(y + bias[row]); t = y.
@compute @workgroup_size(64)
fn bias_act_pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear(gid, nwg);
    if (i >= p.n4) {
        return;
    }
    let row = i / p.b4;
    var v = y[i] + vec4<f32>(bias[row]);
    if (p.relu == 1u) {
        v = max(v, vec4<f32>(0.0));
    }
    y[i] = v;
    textureStore(t, vec2<u32>(i % p.b4, row), v);
}

// y = a > 0 ? y : 0 (the ReLU backward); t = y.
@compute @workgroup_size(64)
fn relu_bwd_pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear(gid, nwg);
    if (i >= p.n4) {
        return;
    }
    let v = select(vec4<f32>(0.0), y[i], a[i] > vec4<f32>(0.0));
    y[i] = v;
    textureStore(t, vec2<u32>(i % p.b4, i / p.b4), v);
}

// y = src (an activation kept only as a texture during the step, for the dense-gradient GEMM of
// a mask update).
@compute @workgroup_size(64)
fn unpack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear(gid, nwg);
    if (i >= p.n4) {
        return;
    }
    y[i] = textureLoad(src, vec2<u32>(i % p.b4, i / p.b4));
}

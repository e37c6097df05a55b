// An activation [C, N, H, W] copied into an rgba32float storage texture for the convolution
// gathers of conv_tex.wgsl: texel (img * W4 + x4, c * H + y) = x[c, img, y, 4·x4 .. 4·x4 + 3]
// (zeros past W), W4 = ceil(W / 4). On lavapipe a storage-texture load is a branch-free gather,
// where a storage-buffer load at a different address per lane is a loop over the lanes; the
// gathers read every value k·k times, this copy once. Host side: src/gpu/conv_tex.rs.
//
// Bindings (group 0):
//   0 uniform SrcParams
//   1 storage read  src : [C, N, H, W]
//   2 texture write dst : N·W4 x C·H texels

struct SrcParams {
    n: u32,
    // Texels in the texture: C·H rows of N·W4.
    texels: u32,
    // Channels (act_to_tex_c4).
    c: u32,
    _pad1: u32,
}

// The geometry as pipeline constants (divisions by them are multiplies and shifts).
override H: u32;
override W: u32;
override W4: u32;

@group(0) @binding(0) var<uniform> p: SrcParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

@compute @workgroup_size(64)
fn act_to_tex(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (i >= p.texels) {
        return;
    }
    let width = p.n * W4;
    let row = i / width;
    let col = i % width;
    let img = col / W4;
    let x0 = 4u * (col % W4);
    let c = row / H;
    let y = row % H;
    let base = ((c * p.n + img) * H + y) * W + x0;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (x0 + j < W) {
            v[j] = src[base + j];
        }
    }
    textureStore(dst, vec2<u32>(col, row), v);
}

// ---- act_to_tex_c4: the same activation with 4 channels per texel, for the implicit weight
// gradient (gemm_tex.wgsl's WGRAD): texel (img · W + x, c4 · H + y) = x[4·c4 .. 4·c4 + 3, img,
// y, x] (zeros past C), so that 4 consecutive patch rows (4 channels of one tap) at one position
// are one texel. p.texels = ceil(C / 4)·H·N·W, p.c = C.
@compute @workgroup_size(64)
fn act_to_tex_c4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (i >= p.texels) {
        return;
    }
    let width = p.n * W;
    let row = i / width;
    let col = i % width;
    let img = col / W;
    let x = col % W;
    let c0 = 4u * (row / H);
    let y = row % H;
    let plane = p.n * H * W;
    let base = (c0 * p.n + img) * H * W + y * W + x;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.c) {
            v[j] = src[base + j * plane];
        }
    }
    textureStore(dst, vec2<u32>(col, row), v);
}

// conv_src.wgsl's copies for activations whose rows are whole texels (W a multiple of 4), read
// a vec4 at a time: on lavapipe a storage-buffer load at a different address per lane is a loop
// over the lanes, so one vec4 load is a quarter of the four scalar ones' iterations (WRN-22-2's
// dense step spent 0.73 of 4.0 s in these copies). Same layouts, parameters and bindings as
// conv_src.wgsl, `src` seen as vec4s. Host side: src/gpu/conv_tex.rs.

struct SrcParams {
    n: u32,
    // act_to_tex: the texture's texels; act_to_tex_c4: its texels / 4 (one invocation per 4).
    texels: u32,
    c: u32,
    _pad1: u32,
}

override H: u32;
override W: u32;
override W4: u32;

@group(0) @binding(0) var<uniform> p: SrcParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

// ---- act_to_tex: texel (img · W4 + x4, c · H + y) = x[c, img, y, 4·x4 .. 4·x4 + 3].
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
    let c = row / H;
    let y = row % H;
    textureStore(dst, vec2<u32>(col, row), src[((c * p.n + img) * H + y) * W4 + col % W4]);
}

// ---- act_to_tex_c4: texel (img · W + x, c4 · H + y) = x[4·c4 .. 4·c4 + 3, img, y, x] (zeros
// past C); each invocation loads 4 positions of 4 channels and stores them as 4 texels.
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
    let width = p.n * W4;
    let row = i / width;
    let col = i % width;
    let img = col / W4;
    let x4 = col % W4;
    let c0 = 4u * (row / H);
    let y = row % H;
    let plane4 = p.n * H * W4;
    let at = (c0 * p.n + img) * H * W4 + y * W4 + x4;
    var v: array<vec4<f32>, 4>;
    for (var j = 0u; j < 4u; j++) {
        v[j] = select(vec4<f32>(0.0), src[min(at + j * plane4, arrayLength(&src) - 1u)], c0 + j < p.c);
    }
    let x0 = img * W + 4u * x4;
    textureStore(dst, vec2<u32>(x0, row), vec4<f32>(v[0].x, v[1].x, v[2].x, v[3].x));
    textureStore(dst, vec2<u32>(x0 + 1u, row), vec4<f32>(v[0].y, v[1].y, v[2].y, v[3].y));
    textureStore(dst, vec2<u32>(x0 + 2u, row), vec4<f32>(v[0].z, v[1].z, v[2].z, v[3].z));
    textureStore(dst, vec2<u32>(x0 + 3u, row), vec4<f32>(v[0].w, v[1].w, v[2].w, v[3].w));
}

// An activation [C, N, H, W] copied into an rgba32float storage texture for the convolution
// gathers of conv_tex.wgsl and gemm_tex.wgsl: texel (img * W4 + x4, c * H + y) = x[c, img, y,
// 4·x4 .. 4·x4 + 3] (zeros past W), W4 = ceil(W / 4); or, for the implicit weight gradient, with
// 4 channels per texel: texel (img · W + x, c4 · H + y) = x[4·c4 .. 4·c4 + 3, img, y, x] (zeros
// past C). On lavapipe a storage-texture load is a branch-free gather, where a storage-buffer
// load at a different address per lane is a loop over the lanes; the gathers read every value
// k·k times, this copy once. The `_v4` entries, for rows of whole texels (W a multiple of 4),
// read `src` a vec4 at a time (a quarter of the loop iterations). Host side: src/gpu/conv_tex.rs.
//
// Bindings (group 0):
//   0 uniform SrcParams
//   1 storage read  src : [C, N, H, W] (`src4`: the same as vec4s)
//   2 texture write dst : the texture

struct SrcParams {
    n: u32,
    // Invocations: the texture's texels (act_to_tex_c4_v4: a quarter of them).
    texels: u32,
    // Channels.
    c: u32,
    _pad1: u32,
}

// The geometry as pipeline constants (divisions by them are multiplies and shifts).
override H: u32;
override W: u32;
override W4: u32;

@group(0) @binding(0) var<uniform> p: SrcParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;

// Invocation i's texel: column col = img · per + x of texture row = band · H + y (band: the
// channel, or the group of 4 channels), `per` texels per image row.
struct Item {
    row: u32,
    col: u32,
    img: u32,
    x: u32,
    band: u32,
    y: u32,
}

fn item(i: u32, per: u32) -> Item {
    let row = i / (p.n * per);
    let col = i % (p.n * per);
    return Item(row, col, col / per, col % per, row / H, row % H);
}

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, lidx: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lidx;
}

// ---- act_to_tex: one texel of 4 positions of one channel.
@compute @workgroup_size(64)
fn act_to_tex(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let i = invocation(wid, nwg, lidx);
    if (i >= p.texels) {
        return;
    }
    let t = item(i, W4);
    let x0 = 4u * t.x;
    let base = ((t.band * p.n + t.img) * H + t.y) * W + x0;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (x0 + j < W) {
            v[j] = src[base + j];
        }
    }
    textureStore(dst, vec2<u32>(t.col, t.row), v);
}

// ---- act_to_tex_v4: act_to_tex for W a multiple of 4, one vec4 load per texel.
@compute @workgroup_size(64)
fn act_to_tex_v4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let i = invocation(wid, nwg, lidx);
    if (i >= p.texels) {
        return;
    }
    // Invocations in the source's order, so that runs of them read it as a stream.
    let x = i % W4;
    let rest = i / W4;
    let y = rest % H;
    let band_img = rest / H;
    let img = band_img % p.n;
    textureStore(dst, vec2<u32>(img * W4 + x, (band_img / p.n) * H + y), src4[i]);
}

// ---- act_to_tex_c4: one texel of 4 channels at one position.
@compute @workgroup_size(64)
fn act_to_tex_c4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let i = invocation(wid, nwg, lidx);
    if (i >= p.texels) {
        return;
    }
    let t = item(i, W);
    let c0 = 4u * t.band;
    let plane = p.n * H * W;
    let base = (c0 * p.n + t.img) * H * W + t.y * W + t.x;
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.c) {
            v[j] = src[base + j * plane];
        }
    }
    textureStore(dst, vec2<u32>(t.col, t.row), v);
}

// ---- act_to_tex_c4_v4: act_to_tex_c4 for W a multiple of 4; each invocation loads 4
// positions of 4 channels as 4 vec4s and stores them as 4 texels.
@compute @workgroup_size(64)
fn act_to_tex_c4_v4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let i = invocation(wid, nwg, lidx);
    if (i >= p.texels) {
        return;
    }
    // Invocations in the order of the first channel's source (band, img, y, x), so that runs
    // of them read the 4 channels' planes as 4 streams.
    let x = i % W4;
    let rest = i / W4;
    let y = rest % H;
    let band_img = rest / H;
    let img = band_img % p.n;
    let row = (band_img / p.n) * H + y;
    let c0 = 4u * (band_img / p.n);
    let plane4 = p.n * H * W4;
    let at = (c0 * p.n + img) * H * W4 + y * W4 + x;
    var v: array<vec4<f32>, 4>;
    for (var j = 0u; j < 4u; j++) {
        v[j] = select(vec4<f32>(0.0), src4[min(at + j * plane4, arrayLength(&src4) - 1u)], c0 + j < p.c);
    }
    let x0 = img * W + 4u * x;
    textureStore(dst, vec2<u32>(x0, row), vec4<f32>(v[0].x, v[1].x, v[2].x, v[3].x));
    textureStore(dst, vec2<u32>(x0 + 1u, row), vec4<f32>(v[0].y, v[1].y, v[2].y, v[3].y));
    textureStore(dst, vec2<u32>(x0 + 2u, row), vec4<f32>(v[0].z, v[1].z, v[2].z, v[3].z));
    textureStore(dst, vec2<u32>(x0 + 3u, row), vec4<f32>(v[0].w, v[1].w, v[2].w, v[3].w));
}

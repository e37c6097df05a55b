// Sources of the sparse convolutions (see sconv.wgsl for the scheme).

struct Params {
    rows: u32,      // spconv/sddmm: rows of the product
    blocks: u32,    // spconv: blocks of WG * V output vec4s per row
    nnz: u32,       // slots of the layer
    ptr_off: u32,   // spconv: row pointers in idx (out_ptr forward, in_ptr input gradient)
    texels: u32,    // src_planes / dy_planes: texels to write; meta_*: entries
    accum: u32,     // spconv input gradient: add into dx
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn tex_at(g: u32) -> vec2<u32> {
    return vec2<u32>(g % 4096u, g / 4096u);
}

override N: u32 = 1u;
// src_planes: SC channels of a [SC, N, SH, SW] source as NP x NP phases per channel of HP x WP
// planes, SP positions per image group; element (a, b) of phase (py, px) = source
// (a * SS + py - OFF_Y, b * SS + px - OFF_X), zero outside; ST_ texels per virtual channel.
override SC: u32 = 1u;
override SH: u32 = 1u;
override SW: u32 = 1u;
override SS: u32 = 1u;
override NP: u32 = 1u;
override HP: u32 = 1u;
override WP: u32 = 1u;
override SP: u32 = 1u;
override OFF_Y: u32 = 0u;
override OFF_X: u32 = 0u;
override ST_: u32 = 1u;
// dy_planes: write the source's texels only, not the planes' padding (which stays zero: a
// scratch that serves one geometry is never written elsewhere, see src/gpu/sparse_conv.rs).
override DATA_ONLY: bool = false;

// ---------------------------------------------------------------------------------------------
// Sources.

@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var planes: texture_storage_2d<rgba32float, write>;

// Pixel `at` of images img0 .. img0 + 3 (img0 < N) of the channel whose first image is row0, an
// image being `len` elements; zero past the batch. Four loads, none behind a branch (a loop of
// as many loads as images left took 3x longer on lavapipe).
fn images(row0: u32, img0: u32, at: u32, len: u32) -> vec4<f32> {
    let last = N - 1u;
    let v = vec4<f32>(
        src[(row0 + img0) * len + at],
        src[(row0 + min(img0 + 1u, last)) * len + at],
        src[(row0 + min(img0 + 2u, last)) * len + at],
        src[(row0 + min(img0 + 3u, last)) * len + at],
    );
    return select(v, vec4<f32>(0.0), img0 + vec4<u32>(0u, 1u, 2u, 3u) > vec4<u32>(last));
}

// Texel g: one position of one plane (phase, channel) for the 4 images of its group, zero past
// the batch, the plane or the source.
fn plane_texel(g: u32) {
    let plane = g / ST_;
    let t = g % ST_;
    let c = plane % SC;
    let ph = plane / SC;
    let py = ph / NP;
    let px = ph % NP;
    let img0 = (t / SP) * 4u;
    let e = t % SP;
    let a = e / WP;
    // Padded coordinates; the source pixel is (y - OFF_Y, x - OFF_X).
    let y = a * SS + py;
    let x = (e % WP) * SS + px;
    var v = vec4<f32>(0.0);
    if (img0 < N && a < HP && y >= OFF_Y && x >= OFF_X && y - OFF_Y < SH && x - OFF_X < SW) {
        v = images(c * N, img0, (y - OFF_Y) * SW + x - OFF_X, SH * SW);
    }
    textureStore(planes, tex_at(g), v);
}

// The forward's source: the input's phase planes.
@compute @workgroup_size(64)
fn src_planes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (g < p.texels) {
        plane_texel(g);
    }
}

// The place of source position (y, x) of channel c and image group grp in the planes of one
// phase (NP = 1, SS = 1: the padded output gradient).
fn data_at(c: u32, grp: u32, y: u32, x: u32) -> vec2<u32> {
    return tex_at(c * ST_ + grp * SP + (y + OFF_Y) * WP + x + OFF_X);
}

// Texel g of the source's own: one position of SC x ceil(N / 4) x SH x SW, at its place in the
// planes of one phase.
fn data_texel(g: u32) {
    let per_c = ((N + 3u) / 4u) * SH * SW;
    let c = g / per_c;
    let grp = (g % per_c) / (SH * SW);
    let e = g % (SH * SW);
    let v = images(c * N, grp * 4u, e, SH * SW);
    textureStore(planes, data_at(c, grp, e / SW, e % SW), v);
}

// The output gradient padded for the input gradient (one plane per output channel), which the
// weight gradient's SDDMM reads too: the same code, its own name, so that a launch list can
// tell the two sources apart (src/nn/model.rs drops the second copy of dy of a layer). With
// DATA_ONLY, one invocation per texel of dy's own.
@compute @workgroup_size(64)
fn dy_planes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (g < p.texels) {
        if (DATA_ONLY) {
            data_texel(g);
        } else {
            plane_texel(g);
        }
    }
}


// ---------------------------------------------------------------------------------------------
// pool_dy_planes: dy_planes (DATA_ONLY's texels) of a convolution whose output feeds a max
// pooling alone (its ReLU fused, src/nn/model.rs), from the pooling's output gradient (src:
// [SC, N, PHO, PWO], or with PFLAT the flattened [SC * PHO * PWO, N]) and argmax (parg: the flat
// index into the convolution's output [SC, N, SH, SW], NO_ARG where the ReLU passed nothing):
// the output gradient max_pool_backward would write, straight into the planes. For PK_ x PK_
// windows at stride PK_ that tile the output (SH = PHO * PK_, SW = PWO * PK_, no padding): an
// invocation per window of 4 images loads the window's gradient and argmax once per image and
// writes the window's PK_ x PK_ texels (the gradient at the argmax, zero elsewhere), where
// max_pool_backward wrote every position and dy_planes read them back.

const NO_ARG: u32 = 0xffffffffu;
override PK_: u32 = 2u;
override PHO: u32 = 1u;
override PWO: u32 = 1u;
override PFLAT: bool = false;

@group(0) @binding(3) var<storage, read> parg: array<u32>;

@compute @workgroup_size(64)
fn pool_dy_planes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (g >= p.texels) {
        return;
    }
    let windows = PHO * PWO;
    let per_c = ((N + 3u) / 4u) * windows;
    let c = g / per_c;
    let grp = (g % per_c) / windows;
    let q = g % windows;
    let py = q / PWO;
    let px = q % PWO;
    // The group's 4 images, the ones past the batch clamped to its last (their loads discarded).
    let group = grp * 4u + vec4<u32>(0u, 1u, 2u, 3u);
    let imgs = min(group, vec4<u32>(N - 1u));
    var o = ((c * N + imgs) * PHO + py) * PWO + px;
    if (PFLAT) {
        o = (c * windows + q) * N + imgs;
    }
    let gv = select(
        vec4<f32>(src[o.x], src[o.y], src[o.z], src[o.w]),
        vec4<f32>(0.0),
        group > vec4<u32>(N - 1u),
    );
    let a = vec4<u32>(parg[o.x], parg[o.y], parg[o.z], parg[o.w]);
    // The argmax's position in its image's plane; none matches where it is NO_ARG.
    let at = select(vec4<u32>(NO_ARG), a - (c * N + imgs) * SH * SW, a != vec4<u32>(NO_ARG));
    for (var qy = 0u; qy < PK_; qy++) {
        for (var qx = 0u; qx < PK_; qx++) {
            let y = py * PK_ + qy;
            let x = px * PK_ + qx;
            let v = select(vec4<f32>(0.0), gv, at == vec4<u32>(y * SW + x));
            textureStore(planes, data_at(c, grp, y, x), v);
        }
    }
}

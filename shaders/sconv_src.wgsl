// Sources of the sparse convolutions (see sconv.wgsl for the scheme).

struct Params {
    rows: u32,      // spconv/sddmm: rows of the product
    blocks: u32,    // spconv: blocks of WG * V output vec4s per row
    nnz: u32,       // slots of the layer
    ptr_off: u32,   // spconv: row pointers in idx (out_ptr forward, in_ptr input gradient)
    texels: u32,    // src_planes / dy_space: texels to write; meta_*: entries
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
// planes, image stride SP (a multiple of 4), element (a, b) of phase (py, px) = source
// (a * SS + py - OFF_Y, b * SS + px - OFF_X), zero outside; ST_ texels per virtual channel.
override SC: u32 = 1u;
override SH: u32 = 1u;
override SW: u32 = 1u;
override SS: u32 = 1u;
override NP: u32 = 1u;
override HP: u32 = 1u;
override WP: u32 = 1u;
override SP: u32 = 4u;
override OFF_Y: u32 = 0u;
override OFF_X: u32 = 0u;
override ST_: u32 = 1u;
// dy_space: the forward's output space.
override HO: u32 = 1u;
override WO: u32 = 1u;
override WQ: u32 = 1u;
override U4: u32 = 1u;

// ---------------------------------------------------------------------------------------------
// Sources.

@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var planes: texture_storage_2d<rgba32float, write>;

// Texel t of the 4 shifted copies of one plane set (phase, channel): elements 4t .. 4t + 6 read
// once, copy r's texel = elements 4t + r .. 4t + r + 3. Elements are walked with carries instead
// of a division each.
@compute @workgroup_size(64)
fn src_planes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (g >= p.texels) {
        return;
    }
    let nph = NP * NP;
    let plane = g / ST_;
    let t = g % ST_;
    let c = plane % SC;
    let ph = plane / SC;
    let py = ph / NP;
    let px = ph % NP;
    let e0 = 4u * t;
    var img = e0 / SP;
    var rem = e0 % SP;
    var a = rem / WP;
    var b = rem % WP;
    var e: array<f32, 7>;
    for (var i = 0u; i < 7u; i++) {
        // Padded coordinates; the source pixel is (y - OFF_Y, x - OFF_X).
        let y = a * SS + py;
        let x = b * SS + px;
        var v = 0.0;
        if (img < N && a < HP && y >= OFF_Y && x >= OFF_X && y - OFF_Y < SH && x - OFF_X < SW) {
            v = src[((c * N + img) * SH + y - OFF_Y) * SW + x - OFF_X];
        }
        e[i] = v;
        rem += 1u;
        b += 1u;
        if (b == WP) {
            b = 0u;
            a += 1u;
        }
        if (rem == SP) {
            rem = 0u;
            a = 0u;
            b = 0u;
            img += 1u;
        }
    }
    let stride = nph * SC * ST_;
    textureStore(planes, tex_at(g), vec4<f32>(e[0], e[1], e[2], e[3]));
    textureStore(planes, tex_at(g + stride), vec4<f32>(e[1], e[2], e[3], e[4]));
    textureStore(planes, tex_at(g + 2u * stride), vec4<f32>(e[2], e[3], e[4], e[5]));
    textureStore(planes, tex_at(g + 3u * stride), vec4<f32>(e[3], e[4], e[5], e[6]));
}

// The output gradient [COUT, N, HO, WO] in the forward's output space (row stride WQ, U4 vec4s
// per image, zeros at the positions past the output), for the SDDMM.
@compute @workgroup_size(64)
fn dy_space(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let g = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (g >= p.texels) {
        return;
    }
    let per_row = N * U4;
    let co = g / per_row;
    let u4 = g % per_row;
    let img = u4 / U4;
    let rem = (u4 % U4) * 4u;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let oy = (rem + i) / WQ;
        let ox = (rem + i) % WQ;
        if (oy < HO && ox < WO) {
            v[i] = src[((co * N + img) * HO + oy) * WO + ox];
        }
    }
    textureStore(planes, tex_at(g), v);
}


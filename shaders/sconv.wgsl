// Compressed sparse convolutions: the kernel's active weights in the slots of a CSR index
// (src/sparse/csr.rs, the matrix [K = k*k*cin, cout], flat position q = kidx * cout + co with
// kidx = (ky * k + kx) * cin + ci), activations [C, N, H, W]. Host side and the geometry of every
// quantity below: src/gpu/sparse_conv.rs; CPU twin: the dense convolution of the scattered weights
// (src/cpu/conv.rs).
//
// Every product is a sparse matrix times shifted copies of one dense source: a tap (ky, kx) of the
// kernel reads its source at a fixed offset from the output position, once the source is laid out
// as "planes" (stride-s phases of the padded image, so a strided tap is a shift too) whose row
// stride is the output index space's. So one kernel (`spconv`) runs the forward product
// (rows = output channels, source = the input's phase planes) and the input gradient (rows =
// (input channel, phase), source = the padded output gradient, the taps of that phase); the weight
// gradient (`sddmm`) is a dot product per slot of the output gradient with the shifted input.
//
// A texel of a source (written by `src_planes`) holds one position of 4 images: images 4g..4g+3
// (image group g) in its 4 components, so a shift of any number of positions is a shift of whole
// texels and every read is one texel. The source texture is linear, texel G at
// (G % 4096, G / 4096), virtual channel vc = phase * SC + c holding texels vc * ST .. vc * ST +
// ST - 1, image group g's plane at g * PG, plane rows ROWW apart. A nonzero's metadata
// (`meta_fwd`, `meta_bwd`) is its address A = vc * ST + shift and its value bits. The output
// space has U positions per image group, rows of COLS (the output's own positions only); a lane
// at position u = g * U + r * COLS + c reads texel A + g * PG + r * ROWW + c and computes its 4
// images.
//
// Lanes span the output positions (V each, WG apart), as the dense-layer SpMM's span the
// batch (spmm.wgsl): every load is a distinct useful texel; the metadata of 8 nonzeros is loaded
// by lanes 0..7 and handed out with subgroupBroadcast (BCAST), or loaded by every lane (portable,
// no subgroups). Texture loads: on lavapipe a storage-buffer load at a different address per lane
// is a loop over the lanes, a texture load a branch-free gather.

struct Params {
    rows: u32,      // rows of the product
    blocks: u32,    // blocks of WG * V output positions per row
    nnz: u32,       // slots of the layer
    ptr_off: u32,   // row pointers in idx (out_ptr forward, in_ptr input gradient)
    texels: u32,
    accum: u32,     // input gradient: add into dx
    _pad0: u32,
    _pad1: u32,
}

override N: u32 = 1u;
override K: u32 = 1u;
override S: u32 = 1u;
override CIN: u32 = 1u;
// Unused here: the host passes one geometry to every kernel.
override COUT: u32 = 1u;
override H: u32 = 1u;
override W: u32 = 1u;
override HO: u32 = 1u;
override WO: u32 = 1u;
override PAD_T: u32 = 0u;
override PAD_L: u32 = 0u;
// The output space: N4 image groups of U positions, rows of COLS; the source's row stride ROWW
// and image-group stride PG.
override N4: u32 = 1u;
override U: u32 = 1u;
override COLS: u32 = 1u;
override ROWW: u32 = 1u;
override PG: u32 = 1u;
// Forward product (rows = output channels) or input gradient (rows = (input channel, phase)).
override FORWARD: bool = true;
override BIAS: bool = false;
// Metadata handed out by subgroupBroadcast (lavapipe-shaped) or loaded by every lane (portable).
override BCAST: bool = true;
override WG: u32 = 64u;
// Output positions per lane (1 to 8).
override V: u32 = 1u;
// The output space's positions ordered row first (u = (r * N4 + g) * COLS + c: a block of
// positions covers few output rows of many image groups) instead of image group first
// (u = g * U + r * COLS + c).
override ROWFIRST: bool = false;
// Input gradient at stride 1 (with ROWFIRST): a block walks only the taps whose ky reads an
// output-gradient row inside dy for some input row it covers (the rest read the padding's zeros),
// through the per-(row, ky) pointers bwd_rows writes after the row pointers.
override KSKIP: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
// The layer index (forward) or the input gradient's row pointers.
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var nzmeta: texture_storage_2d<rg32uint, read>;
@group(0) @binding(3) var srct: texture_storage_2d<rgba32float, read>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;

// Written out 8 times: WGSL has no arrays that live in registers.
struct Acc {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
}

// Source texel offsets of a lane's output positions (`base`).
struct Base {
    b0: u32,
    b1: u32,
    b2: u32,
    b3: u32,
    b4: u32,
    b5: u32,
    b6: u32,
    b7: u32,
}

fn tex_at(g: u32) -> vec2<u32> {
    return vec2<u32>(g % 4096u, g / 4096u);
}

fn ld(g: u32) -> vec4<f32> {
    return textureLoad(srct, tex_at(g));
}

// Position u's image group and its place within the group's positions (r * COLS + c).
fn decode(u: u32) -> vec2<u32> {
    if (ROWFIRST) {
        let t = u / COLS;
        return vec2<u32>(t % N4, (t / N4) * COLS + u % COLS);
    }
    return vec2<u32>(u / U, u % U);
}

// Lanes past the output read a valid place (no branch around loads).
fn base(u: u32) -> u32 {
    let d = decode(min(u, N4 * U - 1u));
    return d.x * PG + (d.y / COLS) * ROWW + d.y % COLS;
}

fn madd(acc: Acc, bs: Base, a: u32, w: f32) -> Acc {
    var r = acc;
    let vw = vec4<f32>(w);
    r.a0 = fma(vw, ld(a + bs.b0), r.a0);
    if (V > 1u) { r.a1 = fma(vw, ld(a + bs.b1), r.a1); }
    if (V > 2u) { r.a2 = fma(vw, ld(a + bs.b2), r.a2); }
    if (V > 3u) { r.a3 = fma(vw, ld(a + bs.b3), r.a3); }
    if (V > 4u) { r.a4 = fma(vw, ld(a + bs.b4), r.a4); }
    if (V > 5u) { r.a5 = fma(vw, ld(a + bs.b5), r.a5); }
    if (V > 6u) { r.a6 = fma(vw, ld(a + bs.b6), r.a6); }
    if (V > 7u) { r.a7 = fma(vw, ld(a + bs.b7), r.a7); }
    return r;
}

// The nonzeros start..end of the metadata: 8 at a time, past the end as weight 0 at a valid
// address (a branch around loads costs more than the wasted multiply-adds on lavapipe).
fn walk(acc: Acc, bs: Base, start: u32, end: u32, lane: u32) -> Acc {
    var r = acc;
    let l8 = lane % 8u;
    for (var j0 = start; j0 < end; j0 += 8u) {
        if (BCAST) {
            let m = textureLoad(nzmeta, tex_at(min(j0 + l8, end - 1u)));
            let wl = select(0.0, bitcast<f32>(m.y), j0 + l8 < end);
            r = madd(r, bs, subgroupBroadcast(m.x, 0u), subgroupBroadcast(wl, 0u));
            r = madd(r, bs, subgroupBroadcast(m.x, 1u), subgroupBroadcast(wl, 1u));
            r = madd(r, bs, subgroupBroadcast(m.x, 2u), subgroupBroadcast(wl, 2u));
            r = madd(r, bs, subgroupBroadcast(m.x, 3u), subgroupBroadcast(wl, 3u));
            r = madd(r, bs, subgroupBroadcast(m.x, 4u), subgroupBroadcast(wl, 4u));
            r = madd(r, bs, subgroupBroadcast(m.x, 5u), subgroupBroadcast(wl, 5u));
            r = madd(r, bs, subgroupBroadcast(m.x, 6u), subgroupBroadcast(wl, 6u));
            r = madd(r, bs, subgroupBroadcast(m.x, 7u), subgroupBroadcast(wl, 7u));
        } else {
            for (var t = 0u; t < 8u; t++) {
                let m = textureLoad(nzmeta, tex_at(min(j0 + t, end - 1u)));
                r = madd(r, bs, m.x, select(0.0, bitcast<f32>(m.y), j0 + t < end));
            }
        }
    }
    return r;
}

// First index a >= 0 of phase ph whose padded coordinate a * S + ph is past the padding.
fn lo(pad: u32, ph: u32) -> u32 {
    return select(0u, (pad - ph + S - 1u) / S, pad > ph);
}

// Position u's 4 images (those of the batch) into out.
fn store(row: u32, u: u32, acc: vec4<f32>) {
    if (u >= N4 * U) {
        return;
    }
    let d = decode(u);
    let img0 = d.x * 4u;
    let rem = d.y;
    if (FORWARD) {
        let oy = rem / COLS;
        let ox = rem % COLS;
        var b = 0.0;
        if (BIAS) {
            b = bias[row];
        }
        let o = ((row * N + img0) * HO + oy) * WO + ox;
        let len = HO * WO;
        out[o] = acc.x + b;
        if (img0 + 1u < N) { out[o + len] = acc.y + b; }
        if (img0 + 2u < N) { out[o + 2u * len] = acc.z + b; }
        if (img0 + 3u < N) { out[o + 3u * len] = acc.w + b; }
    } else {
        let ci = row / (S * S);
        let py = (row % (S * S)) / S;
        let px = row % S;
        // Padded coordinates of the input pixel.
        let y = (lo(PAD_T, py) + rem / COLS) * S + py;
        let x = (lo(PAD_L, px) + rem % COLS) * S + px;
        if (y < PAD_T || x < PAD_L || y - PAD_T >= H || x - PAD_L >= W) {
            return;
        }
        let o = ((ci * N + img0) * H + y - PAD_T) * W + x - PAD_L;
        let len = H * W;
        var r = acc;
        if (p.accum != 0u) {
            r.x += out[o];
            if (img0 + 1u < N) { r.y += out[o + len]; }
            if (img0 + 2u < N) { r.z += out[o + 2u * len]; }
            if (img0 + 3u < N) { r.w += out[o + 3u * len]; }
        }
        out[o] = r.x;
        if (img0 + 1u < N) { out[o + len] = r.y; }
        if (img0 + 2u < N) { out[o + 2u * len] = r.z; }
        if (img0 + 3u < N) { out[o + 3u * len] = r.w; }
    }
}

@compute @workgroup_size(WG)
fn spconv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= p.rows * p.blocks) {
        return;
    }
    let row = wg % p.rows;
    let b0 = (wg / p.rows) * WG * V + lidx;
    var bs: Base;
    bs.b0 = base(b0 + 0u * WG);
    bs.b1 = base(b0 + 1u * WG);
    bs.b2 = base(b0 + 2u * WG);
    bs.b3 = base(b0 + 3u * WG);
    bs.b4 = base(b0 + 4u * WG);
    bs.b5 = base(b0 + 5u * WG);
    bs.b6 = base(b0 + 6u * WG);
    bs.b7 = base(b0 + 7u * WG);
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // Forward: out_ptr of the index; input gradient: the row pointers of bwd_rows (sconv_meta.wgsl).
    var start = idx[p.ptr_off + row];
    var end = idx[p.ptr_off + row + 1u];
    if (KSKIP) {
        // Input rows r0..r1 (stride 1: an output row of this space is an input row); input row
        // r reads dy row r + PAD_T - ky, inside for ky in [r + PAD_T + 1 - HO, r + PAD_T].
        let u0 = (wg / p.rows) * WG * V;
        let r0 = u0 / (N4 * COLS);
        let r1 = (min(u0 + WG * V, N4 * U) - 1u) / (N4 * COLS);
        let klo = select(0u, r0 + PAD_T + 1u - HO, r0 + PAD_T + 1u > HO);
        let khi = min(r1 + PAD_T, K - 1u);
        let kp = p.rows + 1u + row * (K + 1u);
        start = idx[kp + min(klo, K)];
        end = max(start, idx[kp + khi + 1u]);
    }
    acc = walk(acc, bs, start, end, lane);
    store(row, b0, acc.a0);
    if (V > 1u) { store(row, b0 + 1u * WG, acc.a1); }
    if (V > 2u) { store(row, b0 + 2u * WG, acc.a2); }
    if (V > 3u) { store(row, b0 + 3u * WG, acc.a3); }
    if (V > 4u) { store(row, b0 + 4u * WG, acc.a4); }
    if (V > 5u) { store(row, b0 + 5u * WG, acc.a5); }
    if (V > 6u) { store(row, b0 + 6u * WG, acc.a6); }
    if (V > 7u) { store(row, b0 + 7u * WG, acc.a7); }
}

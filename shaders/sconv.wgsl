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
// Input gradient at stride 1, kernels of at most 8 x 8: the positions ordered by place first
// (u = (r * COLS + c) * N4 + g: consecutive lanes hold one place of consecutive image groups, a
// subgroup's 8 * V positions in a row), and each subgroup (BCAST: its lanes walk the same
// nonzeros, whatever its size; each lane in the portable form) walks only the taps (ky, kx)
// that read inside dy for some place it holds (the others read the padding's zeros): per kernel
// row, the slots of the taps kx_lo..kx_hi, found through the per-(row, tap) pointers that
// bwd_rows writes after the row pointers, walked as one sequence 8 at a time.
override TAPSKIP: bool = false;
// spconv_pool (forward, V = 8): lane L holds the 4 places of 2x2 pooling window L % (PHO * PWO)
// for the 2 image groups 2 * (L / (PHO * PWO)) and the next.
override POOL: bool = false;
override PHO: u32 = 1u;
override PWO: u32 = 1u;

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
    if (TAPSKIP) {
        return vec2<u32>(u % N4, u / N4);
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

// The 8 nonzeros whose address a and weight w lanes 0..7 hold, each broadcast to every lane.
fn madd8(acc: Acc, bs: Base, a: u32, w: f32) -> Acc {
    var r = acc;
    r = madd(r, bs, subgroupBroadcast(a, 0u), subgroupBroadcast(w, 0u));
    r = madd(r, bs, subgroupBroadcast(a, 1u), subgroupBroadcast(w, 1u));
    r = madd(r, bs, subgroupBroadcast(a, 2u), subgroupBroadcast(w, 2u));
    r = madd(r, bs, subgroupBroadcast(a, 3u), subgroupBroadcast(w, 3u));
    r = madd(r, bs, subgroupBroadcast(a, 4u), subgroupBroadcast(w, 4u));
    r = madd(r, bs, subgroupBroadcast(a, 5u), subgroupBroadcast(w, 5u));
    r = madd(r, bs, subgroupBroadcast(a, 6u), subgroupBroadcast(w, 6u));
    r = madd(r, bs, subgroupBroadcast(a, 7u), subgroupBroadcast(w, 7u));
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
            r = madd8(r, bs, m.x, wl);
        } else {
            for (var t = 0u; t < 8u; t++) {
                let m = textureLoad(nzmeta, tex_at(min(j0 + t, end - 1u)));
                r = madd(r, bs, m.x, select(0.0, bitcast<f32>(m.y), j0 + t < end));
            }
        }
    }
    return r;
}

// TAPSKIP: the taps of the nonzeros to walk, as (per kernel row ky) the first slot of the taps
// kx_lo..kx_hi and their count (0 for the rows outside ky_lo..ky_hi), and the total.
struct Segs {
    first: array<u32, 8>,
    count: array<u32, 8>,
    total: u32,
}

// Position j (< V) of lane lidx in block `block`: WG apart; with TAPSKIP, a subgroup's 8 * V
// positions in a row, 8 apart (its lanes' places stay few); with POOL, place j % 4 of the lane's
// window in image group j / 4 of its pair (the groups past the last read the last).
fn lane_pos(block: u32, lidx: u32, j: u32) -> u32 {
    if (POOL) {
        let l = block * WG + lidx;
        let w = l % (PHO * PWO);
        let g = min((l / (PHO * PWO)) * 2u + j / 4u, N4 - 1u);
        let r = (w / PWO) * 2u + (j % 4u) / 2u;
        let c = (w % PWO) * 2u + j % 2u;
        return g * U + r * COLS + c;
    }
    if (TAPSKIP) {
        return block * WG * V + (lidx / 8u) * 8u * V + j * 8u + lidx % 8u;
    }
    return block * WG * V + lidx + j * WG;
}

// TAPSKIP: the taps that read inside dy for the place of position u (input row r, column c read
// dy row r + PAD_T - ky and column c + PAD_L - kx): (ky_lo, ky_hi, kx_lo, kx_hi), empty where
// lo > hi.
fn place_box(u: u32) -> vec4<u32> {
    let d = decode(min(u, N4 * U - 1u));
    let r = d.y / COLS;
    let c = d.y % COLS;
    return vec4<u32>(
        select(0u, r + PAD_T + 1u - HO, r + PAD_T + 1u > HO),
        min(r + PAD_T, K - 1u),
        select(0u, c + PAD_L + 1u - WO, c + PAD_L + 1u > WO),
        min(c + PAD_L, K - 1u),
    );
}

// TAPSKIP: the box of every position of a lane, over its subgroup with BCAST (its lanes walk the
// same nonzeros).
fn tap_box(block: u32, lidx: u32) -> vec4<u32> {
    var b = place_box(lane_pos(block, lidx, 0u));
    for (var j = 1u; j < V; j++) {
        let o = place_box(lane_pos(block, lidx, j));
        b = vec4<u32>(min(b.x, o.x), max(b.y, o.y), min(b.z, o.z), max(b.w, o.w));
    }
    if (BCAST) {
        b = vec4<u32>(subgroupMin(b.x), subgroupMax(b.y), subgroupMin(b.z), subgroupMax(b.w));
    }
    return b;
}

// TAPSKIP: row `row`'s slots of the taps in box b, from the per-(row, tap) pointers at kp.
fn segs(kp: u32, b: vec4<u32>) -> Segs {
    var sg: Segs;
    sg.total = 0u;
    let xlo = min(b.z, K - 1u);
    let xhi = min(b.w, K - 1u);
    for (var ky = 0u; ky < 8u; ky++) {
        let k = min(ky, K - 1u);
        let first = idx[kp + k * K + xlo];
        let end = idx[kp + k * K + xhi + 1u];
        let inside = ky < K && ky >= b.x && ky <= b.y && b.z <= b.w;
        sg.first[ky] = first;
        sg.count[ky] = select(0u, end - first, inside);
        sg.total += sg.count[ky];
    }
    return sg;
}

// TAPSKIP: the slot of the walk's v-th nonzero (v < sg.total).
fn seg_slot(sg: Segs, v: u32) -> u32 {
    var rest = v;
    var at = 0u;
    var found = false;
    for (var ky = 0u; ky < 8u; ky++) {
        let here = !found && rest < sg.count[ky];
        at = select(at, sg.first[ky] + rest, here);
        rest = select(rest - sg.count[ky], rest, found || here);
        found = found || here;
    }
    return at;
}

// TAPSKIP's walk: the nonzeros of sg, 8 at a time, past the end as weight 0 at a valid address.
fn walk_segs(acc: Acc, bs: Base, sg: Segs, lane: u32) -> Acc {
    var r = acc;
    let l8 = lane % 8u;
    for (var j0 = 0u; j0 < sg.total; j0 += 8u) {
        if (BCAST) {
            let m = textureLoad(nzmeta, tex_at(seg_slot(sg, min(j0 + l8, sg.total - 1u))));
            let wl = select(0.0, bitcast<f32>(m.y), j0 + l8 < sg.total);
            r = madd8(r, bs, m.x, wl);
        } else {
            for (var t = 0u; t < 8u; t++) {
                let m = textureLoad(nzmeta, tex_at(seg_slot(sg, min(j0 + t, sg.total - 1u))));
                r = madd(r, bs, m.x, select(0.0, bitcast<f32>(m.y), j0 + t < sg.total));
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
    let block = wg / p.rows;
    let acc = products(row, block, lidx, lane);
    store(row, lane_pos(block, lidx, 0u), acc.a0);
    if (V > 1u) { store(row, lane_pos(block, lidx, 1u), acc.a1); }
    if (V > 2u) { store(row, lane_pos(block, lidx, 2u), acc.a2); }
    if (V > 3u) { store(row, lane_pos(block, lidx, 3u), acc.a3); }
    if (V > 4u) { store(row, lane_pos(block, lidx, 4u), acc.a4); }
    if (V > 5u) { store(row, lane_pos(block, lidx, 5u), acc.a5); }
    if (V > 6u) { store(row, lane_pos(block, lidx, 6u), acc.a6); }
    if (V > 7u) { store(row, lane_pos(block, lidx, 7u), acc.a7); }
}

// Row `row`'s sums at the positions of lane lidx of block `block`.
fn products(row: u32, block: u32, lidx: u32, lane: u32) -> Acc {
    var bs: Base;
    bs.b0 = base(lane_pos(block, lidx, 0u));
    bs.b1 = base(lane_pos(block, lidx, 1u));
    bs.b2 = base(lane_pos(block, lidx, 2u));
    bs.b3 = base(lane_pos(block, lidx, 3u));
    bs.b4 = base(lane_pos(block, lidx, 4u));
    bs.b5 = base(lane_pos(block, lidx, 5u));
    bs.b6 = base(lane_pos(block, lidx, 6u));
    bs.b7 = base(lane_pos(block, lidx, 7u));
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // Forward: out_ptr of the index; input gradient: the row pointers of bwd_rows (sconv_meta.wgsl).
    if (TAPSKIP) {
        acc = walk_segs(acc, bs, segs(p.rows + 1u + row * (K * K + 1u), tap_box(block, lidx)), lane);
    } else {
        acc = walk(acc, bs, idx[p.ptr_off + row], idx[p.ptr_off + row + 1u], lane);
    }
    return acc;
}

// ---- spconv_pool: the forward product of a convolution whose output feeds a 2x2 max pooling
// of stride 2 alone (the windows tile it), the ReLU between them fused: the pooling's output
// flattened ([cout * PHO * PWO, N], into `out`), its argmax (the flat index into the
// convolution's output [cout, N, HO, WO], NO_ARG where the maximum is <= 0) and the texture
// of the compressed linear layer after it (texel (image group, feature)), as image.wgsl's
// max_pool_fwd_tex writes them from the convolution's output, which is never stored here.
// N a multiple of 4.

const NO_ARG: u32 = 0xffffffffu;

@group(0) @binding(6) var<storage, read_write> parg: array<u32>;
@group(0) @binding(7) var ptex: texture_storage_2d<rgba32float, write>;

// Window l % (PHO * PWO) of image group 2 * (l / (PHO * PWO)) + gi (none past the last), its
// places' sums a, b, c, d (window order) of the 4 images.
fn pool_store(row: u32, l: u32, gi: u32, a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) {
    let g = (l / (PHO * PWO)) * 2u + gi;
    if (g >= N4) {
        return;
    }
    let w = l % (PHO * PWO);
    var bias4 = vec4<f32>(0.0);
    if (BIAS) {
        bias4 = vec4<f32>(bias[row]);
    }
    // The first maximum in window order.
    var best = a + bias4;
    var at = vec4<u32>(0u);
    let v1 = b + bias4;
    let t1 = v1 > best;
    best = select(best, v1, t1);
    at = select(at, vec4<u32>(1u), t1);
    let v2 = c + bias4;
    let t2 = v2 > best;
    best = select(best, v2, t2);
    at = select(at, vec4<u32>(2u), t2);
    let v3 = d + bias4;
    let t3 = v3 > best;
    best = select(best, v3, t3);
    at = select(at, vec4<u32>(3u), t3);
    let live = best > vec4<f32>(0.0);
    let v = select(vec4<f32>(0.0), best, live);
    let img = g * 4u + vec4<u32>(0u, 1u, 2u, 3u);
    let y = (w / PWO) * 2u + at / 2u;
    let x = (w % PWO) * 2u + at % 2u;
    let a4 = select(vec4<u32>(NO_ARG), ((row * N + img) * HO + y) * WO + x, live);
    let f = row * PHO * PWO + w;
    let o = f * N + g * 4u;
    out[o] = v.x;
    out[o + 1u] = v.y;
    out[o + 2u] = v.z;
    out[o + 3u] = v.w;
    parg[o] = a4.x;
    parg[o + 1u] = a4.y;
    parg[o + 2u] = a4.z;
    parg[o + 3u] = a4.w;
    textureStore(ptex, vec2<u32>(g, f), v);
}

@compute @workgroup_size(WG)
fn spconv_pool(
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
    let block = wg / p.rows;
    let acc = products(row, block, lidx, lane);
    let l = block * WG + lidx;
    pool_store(row, l, 0u, acc.a0, acc.a1, acc.a2, acc.a3);
    pool_store(row, l, 1u, acc.a4, acc.a5, acc.a6, acc.a7);
}

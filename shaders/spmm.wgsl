// Sparse × dense products of a compressed sparse layer (CSR), activations feature-major.
//
//   forward     (FORWARD = true):  Y[r, b] = sum over the nonzeros j of output row r of
//                                   vals[slot(j)] * X[col(j), b],  X = layer input  [in, B]
//   input grad  (FORWARD = false): Y[c, b] = sum over the slots s of input row c of
//                                   vals[s] * X[out(s), b],        X = output grad  [out, B]
// One layer's index lives in one u32 buffer (see src/sparse/csr.rs): pos[nnz] (flat position
// c * out + r of every slot, slots in increasing position), fwd_slot[nnz] (slots ordered by output
// row, then input), in_ptr[in + 1], out_ptr[out + 1].
//
// Bindings (group 0):
//   0 uniform Params
//   1 storage read  idx  : the layer index
//   2 storage read  vals : values per slot
//   3 storage read  x    : [cols, B] as vec4 (B a multiple of 4)
//   4 storage rw    y    : [rows, B] as vec4, overwritten
// A workgroup of WG invocations takes one row and WG * V batch vec4s (more along the batch
// when B/4 exceeds that). Lanes span the batch, so every lane's load of X is a distinct, useful
// vec4; the metadata of 8 nonzeros is loaded once per subgroup (lane t loads nonzero t) and handed
// to all lanes with subgroupBroadcast (on lavapipe a non-uniform load is a loop over lanes, a
// broadcast a register shuffle). Needs subgroups of at least 8 invocations.

struct Params {
    rows: u32,      // rows of Y
    b4: u32,        // B / 4
    out_dim: u32,   // the layer's output width (decodes positions)
    nnz: u32,
    ptr_off: u32,   // where this product's row pointers start in idx
    blocks: u32,    // batch blocks of WG * V vec4s
    _pad0: u32,
    _pad1: u32,
}

override FORWARD: bool = true;
override WG: u32 = 64u;
const V: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> vals: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<vec4<f32>>;

struct Acc {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
}

fn madd(acc: Acc, c: u32, v: f32, b0: u32) -> Acc {
    var r = acc;
    let base = c * p.b4;
    let last = p.b4 - 1u;
    let vv = vec4<f32>(v);
    r.a0 = fma(vv, x[base + min(b0, last)], r.a0);
    if (V > 1u) { r.a1 = fma(vv, x[base + min(b0 + WG, last)], r.a1); }
    if (V > 2u) { r.a2 = fma(vv, x[base + min(b0 + 2u * WG, last)], r.a2); }
    if (V > 3u) { r.a3 = fma(vv, x[base + min(b0 + 3u * WG, last)], r.a3); }
    return r;
}

@compute @workgroup_size(WG)
fn spmm(
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
    let start = idx[p.ptr_off + row];
    let end = idx[p.ptr_off + row + 1u];
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let l8 = lane % 8u;
    for (var j0 = start; j0 < end; j0 += 8u) {
        let j = min(j0 + l8, end - 1u);
        var s = j;
        if (FORWARD) {
            s = idx[p.nnz + j];
        }
        let ps = idx[s];
        var cl = ps % p.out_dim;
        if (FORWARD) {
            cl = ps / p.out_dim;
        }
        // Past the row's end: a valid column with value 0, so the 8 bodies need no branch
        // (a branch around loads costs more than the wasted multiply-adds on lavapipe).
        let vl = select(0.0, vals[s], j0 + l8 < end);
        acc = madd(acc, subgroupBroadcast(cl, 0u), subgroupBroadcast(vl, 0u), b0);
        acc = madd(acc, subgroupBroadcast(cl, 1u), subgroupBroadcast(vl, 1u), b0);
        acc = madd(acc, subgroupBroadcast(cl, 2u), subgroupBroadcast(vl, 2u), b0);
        acc = madd(acc, subgroupBroadcast(cl, 3u), subgroupBroadcast(vl, 3u), b0);
        acc = madd(acc, subgroupBroadcast(cl, 4u), subgroupBroadcast(vl, 4u), b0);
        acc = madd(acc, subgroupBroadcast(cl, 5u), subgroupBroadcast(vl, 5u), b0);
        acc = madd(acc, subgroupBroadcast(cl, 6u), subgroupBroadcast(vl, 6u), b0);
        acc = madd(acc, subgroupBroadcast(cl, 7u), subgroupBroadcast(vl, 7u), b0);
    }
    if (b0 < p.b4) { y[row * p.b4 + b0] = acc.a0; }
    if (V > 1u && b0 + WG < p.b4) { y[row * p.b4 + b0 + WG] = acc.a1; }
    if (V > 2u && b0 + 2u * WG < p.b4) { y[row * p.b4 + b0 + 2u * WG] = acc.a2; }
    if (V > 3u && b0 + 3u * WG < p.b4) { y[row * p.b4 + b0 + 3u * WG] = acc.a3; }
}

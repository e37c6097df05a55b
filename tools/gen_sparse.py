"""Regenerates shaders/spmm.wgsl and shaders/sddmm.wgsl (the 8-way unrolled bodies: WGSL's
subgroupBroadcast needs a constant lane, so the loop over the 8 nonzeros of a group is unrolled).

    python3 tools/gen_sparse.py
"""
import os
root = os.path.join(os.path.dirname(__file__), '..', 'shaders')

SPMM_HEAD = '''// Sparse × dense products of a compressed sparse layer (CSR), activations feature-major.
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
        let vl = vals[s];
        let n = end - j0;
'''
SPMM_TAIL = '''    }
    if (b0 < p.b4) { y[row * p.b4 + b0] = acc.a0; }
    if (V > 1u && b0 + WG < p.b4) { y[row * p.b4 + b0 + WG] = acc.a1; }
    if (V > 2u && b0 + 2u * WG < p.b4) { y[row * p.b4 + b0 + 2u * WG] = acc.a2; }
    if (V > 3u && b0 + 3u * WG < p.b4) { y[row * p.b4 + b0 + 3u * WG] = acc.a3; }
}
'''
body = []
for t in range(8):
    cond = '' if t == 0 else f'if (n > {t}u) '
    body.append(f'        {cond}{{ acc = madd(acc, subgroupBroadcast(cl, {t}u), subgroupBroadcast(vl, {t}u), b0); }}')
open(os.path.join(root, 'spmm.wgsl'), 'w').write(SPMM_HEAD + '\n'.join(body) + '\n' + SPMM_TAIL)

SDDMM_HEAD = '''// Sampled dense-dense product: the weight gradient of a compressed sparse layer at its active
// positions only,  grad[s] = sum_b X[c(s), b] * D[r(s), b]  (X = layer input [in, B],
// D = gradient of the layer output [out, B], both feature-major; B a multiple of 4).
//
// Bindings (group 0):
//   0 uniform Params
//   1 storage read  idx  : the layer index (src/sparse/csr.rs: pos, fwd_slot, in_ptr, out_ptr)
//   2 storage read  x    : [in, B] as vec4
//   3 storage read  d    : [out, B] as vec4
//   4 storage rw    grad : per slot, overwritten
// A workgroup takes one output row r and walks its nonzeros 8 at a time: the lanes span the
// batch (each holds WG-strided vec4s of D[r]), take the dot products of the 8 rows of X with it,
// and the 8 partial sums are reduced over the subgroup (subgroupAdd) and then over the subgroups
// through workgroup memory. The metadata of the 8 nonzeros is loaded by lanes 0..7 and broadcast.

struct Params {
    rows: u32,      // output rows
    b4: u32,        // B / 4
    out_dim: u32,
    nnz: u32,
    ptr_off: u32,   // out_ptr in idx
    blocks: u32,    // batch blocks of WG * V vec4s
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;
const V: u32 = 4u;
// Subgroups per workgroup, at most (WG / smallest subgroup of 8).
const MAX_SG: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> d: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> bounds: array<u32, 2>;

struct Dv {
    d0: vec4<f32>,
    d1: vec4<f32>,
    d2: vec4<f32>,
    d3: vec4<f32>,
}

fn load_d(row: u32, b0: u32) -> Dv {
    var r = Dv(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let base = row * p.b4;
    if (b0 < p.b4) { r.d0 = d[base + b0]; }
    if (V > 1u && b0 + WG < p.b4) { r.d1 = d[base + b0 + WG]; }
    if (V > 2u && b0 + 2u * WG < p.b4) { r.d2 = d[base + b0 + 2u * WG]; }
    if (V > 3u && b0 + 3u * WG < p.b4) { r.d3 = d[base + b0 + 3u * WG]; }
    return r;
}

// Lanes past the batch hold zeros in D, so clamped loads of X add nothing.
fn dotx(c: u32, dv: Dv, b0: u32) -> f32 {
    let base = c * p.b4;
    let last = p.b4 - 1u;
    var acc = x[base + min(b0, last)] * dv.d0;
    if (V > 1u) { acc = fma(x[base + min(b0 + WG, last)], dv.d1, acc); }
    if (V > 2u) { acc = fma(x[base + min(b0 + 2u * WG, last)], dv.d2, acc); }
    if (V > 3u) { acc = fma(x[base + min(b0 + 3u * WG, last)], dv.d3, acc); }
    return acc.x + acc.y + acc.z + acc.w;
}

@compute @workgroup_size(WG)
fn sddmm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (lidx == 0u) {
        let r = min(row, p.rows - 1u);
        bounds[0] = idx[p.ptr_off + r];
        bounds[1] = select(idx[p.ptr_off + r], idx[p.ptr_off + r + 1u], row < p.rows);
    }
    let start = workgroupUniformLoad(&bounds[0]);
    let end = workgroupUniformLoad(&bounds[1]);
    let sg = lidx / sg_size;
    let nsg = (WG + sg_size - 1u) / sg_size;
    let l8 = lane % 8u;
    for (var j0 = start; j0 < end; j0 += 8u) {
        let j = min(j0 + l8, end - 1u);
        let cl = idx[idx[p.nnz + j]] / p.out_dim;
        let n = end - j0;
        var s0 = 0.0;
        var s1 = 0.0;
        var s2 = 0.0;
        var s3 = 0.0;
        var s4 = 0.0;
        var s5 = 0.0;
        var s6 = 0.0;
        var s7 = 0.0;
        for (var blk = 0u; blk < p.blocks; blk++) {
            let b0 = blk * WG * V + lidx;
            let dv = load_d(row, b0);
'''
SDDMM_TAIL = '''        }
        s0 = subgroupAdd(s0);
        s1 = subgroupAdd(s1);
        s2 = subgroupAdd(s2);
        s3 = subgroupAdd(s3);
        s4 = subgroupAdd(s4);
        s5 = subgroupAdd(s5);
        s6 = subgroupAdd(s6);
        s7 = subgroupAdd(s7);
        if (lane == 0u) {
            red[0u * MAX_SG + sg] = s0;
            red[1u * MAX_SG + sg] = s1;
            red[2u * MAX_SG + sg] = s2;
            red[3u * MAX_SG + sg] = s3;
            red[4u * MAX_SG + sg] = s4;
            red[5u * MAX_SG + sg] = s5;
            red[6u * MAX_SG + sg] = s6;
            red[7u * MAX_SG + sg] = s7;
        }
        workgroupBarrier();
        if (lidx < min(n, 8u)) {
            var total = 0.0;
            for (var k = 0u; k < nsg; k++) {
                total += red[lidx * MAX_SG + k];
            }
            grad[idx[p.nnz + j0 + lidx]] = total;
        }
        workgroupBarrier();
    }
}
'''
body = []
for t in range(8):
    cond = '' if t == 0 else f'if (n > {t}u) '
    body.append(f'            {cond}{{ s{t} += dotx(subgroupBroadcast(cl, {t}u), dv, b0); }}')
open(os.path.join(root, 'sddmm.wgsl'), 'w').write(SDDMM_HEAD + '\n'.join(body) + '\n' + SDDMM_TAIL)

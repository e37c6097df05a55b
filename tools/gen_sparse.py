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
//   2 texture read  nzmeta : rg32uint, texel j = (column of X, slot) of the j-th nonzero in the
//                          order this product walks them (sparse_meta.wgsl)
//   3 texture read  x    : [cols, B] as an rgba32float storage texture, texel (b4, c) =
//                          samples 4 b4 .. 4 b4 + 3 of row c (src/gpu/texture.rs)
//   4 storage rw    y    : [rows, B] as vec4, overwritten
//   5 storage read  bias : [rows]                      (EPILOGUE 1)
//   6 texture read  a    : [rows, B] activation texture (EPILOGUE 2)
//   7 texture write t    : the texture copy of y       (STORE_TEX)
//   8 texture read  val  : rg32uint, texel slot = bits of the weight (kept current by the SGD)
// Epilogue, fused so the activations are not read and written again by an elementwise pass:
//   EPILOGUE 0: y = acc;  1: y = act(acc + bias[row]) (ReLU when RELU);  2: y = a > 0 ? acc : 0
//   (the ReLU backward of the layer below); STORE_TEX also writes y to t, and without STORE_BUF
//   only there (hidden activations live in textures; the buffer is filled from the texture at
//   mask updates, the only other reader).
// A workgroup of WG invocations takes one row and WG * V batch vec4s (more along the batch
// when B/4 exceeds that). Lanes span the batch, so every lane's load of X is a distinct, useful
// vec4; the metadata of 8 nonzeros is loaded once per subgroup (lane t loads nonzero t) and handed
// to all lanes with subgroupBroadcast. X comes from a storage texture: on lavapipe a storage-buffer
// load at a different address per lane is a loop over the lanes with a bounds check per
// component, a texture load a branch-free gather (3x faster SpMM measured). Needs subgroups of at
// least 8 invocations.

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
override EPILOGUE: u32 = 0u;
override RELU: bool = false;
override STORE_TEX: bool = false;
override STORE_BUF: bool = true;
// Batch vec4s per lane (1 to 8), so a small batch does not load clamped duplicates.
override V: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var nzmeta: texture_storage_2d<rg32uint, read>;
@group(0) @binding(3) var x: texture_storage_2d<rgba32float, read>;
@group(0) @binding(4) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var a: texture_storage_2d<rgba32float, read>;
@group(0) @binding(7) var t: texture_storage_2d<rgba32float, write>;
@group(0) @binding(8) var val: texture_storage_2d<rg32uint, read>;

fn store(row: u32, b: u32, acc: vec4<f32>) {
    if (b >= p.b4) {
        return;
    }
    let i = row * p.b4 + b;
    var v = acc;
    if (EPILOGUE == 1u) {
        v = v + vec4<f32>(bias[row]);
        if (RELU) {
            v = max(v, vec4<f32>(0.0));
        }
    } else if (EPILOGUE == 2u) {
        v = select(vec4<f32>(0.0), v, textureLoad(a, vec2<u32>(b, row)) > vec4<f32>(0.0));
    }
    if (STORE_BUF) {
        y[i] = v;
    }
    if (STORE_TEX) {
        textureStore(t, vec2<u32>(b, row), v);
    }
}

struct Acc {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
    a8: vec4<f32>,
    a9: vec4<f32>,
    a10: vec4<f32>,
    a11: vec4<f32>,
    a12: vec4<f32>,
    a13: vec4<f32>,
    a14: vec4<f32>,
    a15: vec4<f32>,
}

fn madd(acc: Acc, c: u32, v: f32, b0: u32) -> Acc {
    var r = acc;
    let last = p.b4 - 1u;
    let vv = vec4<f32>(v);
    r.a0 = fma(vv, textureLoad(x, vec2<u32>(min(b0, last), c)), r.a0);
    if (V > 1u) { r.a1 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 1u * WG, last), c)), r.a1); }
    if (V > 2u) { r.a2 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 2u * WG, last), c)), r.a2); }
    if (V > 3u) { r.a3 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 3u * WG, last), c)), r.a3); }
    if (V > 4u) { r.a4 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 4u * WG, last), c)), r.a4); }
    if (V > 5u) { r.a5 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 5u * WG, last), c)), r.a5); }
    if (V > 6u) { r.a6 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 6u * WG, last), c)), r.a6); }
    if (V > 7u) { r.a7 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 7u * WG, last), c)), r.a7); }
    if (V > 8u) { r.a8 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 8u * WG, last), c)), r.a8); }
    if (V > 9u) { r.a9 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 9u * WG, last), c)), r.a9); }
    if (V > 10u) { r.a10 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 10u * WG, last), c)), r.a10); }
    if (V > 11u) { r.a11 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 11u * WG, last), c)), r.a11); }
    if (V > 12u) { r.a12 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 12u * WG, last), c)), r.a12); }
    if (V > 13u) { r.a13 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 13u * WG, last), c)), r.a13); }
    if (V > 14u) { r.a14 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 14u * WG, last), c)), r.a14); }
    if (V > 15u) { r.a15 = fma(vv, textureLoad(x, vec2<u32>(min(b0 + 15u * WG, last), c)), r.a15); }
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
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    let l8 = lane % 8u;
    for (var j0 = start; j0 < end; j0 += 8u) {
        let j = min(j0 + l8, end - 1u);
        let m = textureLoad(nzmeta, vec2<u32>(j % 4096u, j / 4096u));
        let cl = m.x;
        let vbits = textureLoad(val, vec2<u32>(m.y % 4096u, m.y / 4096u)).x;
        // Past the row's end: a valid column with value 0, so the 8 bodies need no branch
        // (a branch around loads costs more than the wasted multiply-adds on lavapipe).
        let vl = select(0.0, bitcast<f32>(vbits), j0 + l8 < end);
'''
SPMM_TAIL = '''    }
    store(row, b0, acc.a0);
    if (V > 1u) { store(row, b0 + 1u * WG, acc.a1); }
    if (V > 2u) { store(row, b0 + 2u * WG, acc.a2); }
    if (V > 3u) { store(row, b0 + 3u * WG, acc.a3); }
    if (V > 4u) { store(row, b0 + 4u * WG, acc.a4); }
    if (V > 5u) { store(row, b0 + 5u * WG, acc.a5); }
    if (V > 6u) { store(row, b0 + 6u * WG, acc.a6); }
    if (V > 7u) { store(row, b0 + 7u * WG, acc.a7); }
    if (V > 8u) { store(row, b0 + 8u * WG, acc.a8); }
    if (V > 9u) { store(row, b0 + 9u * WG, acc.a9); }
    if (V > 10u) { store(row, b0 + 10u * WG, acc.a10); }
    if (V > 11u) { store(row, b0 + 11u * WG, acc.a11); }
    if (V > 12u) { store(row, b0 + 12u * WG, acc.a12); }
    if (V > 13u) { store(row, b0 + 13u * WG, acc.a13); }
    if (V > 14u) { store(row, b0 + 14u * WG, acc.a14); }
    if (V > 15u) { store(row, b0 + 15u * WG, acc.a15); }
}
'''
body = []
for t in range(8):
    body.append(f'        acc = madd(acc, subgroupBroadcast(cl, {t}u), subgroupBroadcast(vl, {t}u), b0);')
open(os.path.join(root, 'spmm.wgsl'), 'w').write(SPMM_HEAD + '\n'.join(body) + '\n' + SPMM_TAIL)

SDDMM_HEAD = '''// Sampled dense-dense product: the weight gradient of a compressed sparse layer at its active
// positions only,  grad[s] = sum_b X[c(s), b] * D[r(s), b]  (X = layer input [in, B],
// D = gradient of the layer output [out, B], both feature-major; B a multiple of 4).
//
// Bindings (group 0):
//   0 uniform Params
//   1 storage read  idx  : the layer index (src/sparse/csr.rs: pos, fwd_slot, in_ptr, out_ptr)
//   2 texture read  x    : [in, B] as an rgba32float storage texture (see spmm.wgsl)
//   3 texture read  d    : [out, B] as an rgba32float storage texture
//   4 storage rw    grad : per slot, overwritten
//   5 storage rw    bgrad: [out] bias gradient sum_b D[r, b], overwritten (BIAS)
// A workgroup takes one output row r; each lane owns one nonzero of the row (WG at a time) and
// walks the batch, 8 vec4s per step: lane t of the subgroup loads D[r, b + t] and hands it to
// every lane with subgroupBroadcast (the same for every nonzero of the row), while each lane
// loads its own X row. So every load is distinct and useful, there is no reduction across lanes
// and no barrier. WG (8 to 64) is chosen per layer to fit the nonzeros per row.

struct Params {
    rows: u32,      // output rows
    b4: u32,        // B / 4
    out_dim: u32,
    nnz: u32,
    ptr_off: u32,   // out_ptr in idx
    blocks: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;
override BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var x: texture_storage_2d<rgba32float, read>;
@group(0) @binding(3) var d: texture_storage_2d<rgba32float, read>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
@group(0) @binding(5) var<storage, read_write> bgrad: array<f32>;

@compute @workgroup_size(WG)
fn sddmm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let start = idx[p.ptr_off + row];
    let end = idx[p.ptr_off + row + 1u];
    let l8 = lane % 8u;
    let last = p.b4 - 1u;
    // At least one pass, so that a row without nonzeros still gets its bias gradient (lanes past
    // the row's end read nonzero 0 and write nothing).
    for (var j0 = start; j0 < max(end, start + 1u); j0 += WG) {
        let j = select(min(j0 + lidx, end - 1u), 0u, end == start);
        let s = idx[p.nnz + j];
        let xrow = idx[s] / p.out_dim;
        var acc = vec4<f32>(0.0);
        var dsum = vec4<f32>(0.0);
        for (var b0 = 0u; b0 < p.b4; b0 += 8u) {
            // Past the batch: D is 0 and X is read at a valid place (no branch, see spmm.wgsl).
            let dl = select(vec4<f32>(0.0), textureLoad(d, vec2<u32>(min(b0 + l8, last), row)), b0 + l8 < p.b4);
            dsum += dl;
'''
SDDMM_TAIL = '''        }
        if (j0 + lidx < end) {
            grad[s] = acc.x + acc.y + acc.z + acc.w;
        }
        // Lanes 0..7 of each subgroup loaded the whole row of D between them.
        if (BIAS) {
            if (j0 == start) {
                let part = select(0.0, dsum.x + dsum.y + dsum.z + dsum.w, lane < 8u);
                let total = subgroupAdd(part);
                if (lidx == 0u) {
                    bgrad[row] = total;
                }
            }
        }
    }
}
'''
body = []
for t in range(8):
    body.append(f'            acc = fma(textureLoad(x, vec2<u32>(min(b0 + {t}u, last), xrow)), subgroupBroadcast(dl, {t}u), acc);')
open(os.path.join(root, 'sddmm.wgsl'), 'w').write(SDDMM_HEAD + '\n'.join(body) + '\n' + SDDMM_TAIL)

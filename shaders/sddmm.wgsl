// Sampled dense-dense product: the weight gradient of a compressed sparse layer at its active
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
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 0u, last), xrow)), subgroupBroadcast(dl, 0u), acc);
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 1u, last), xrow)), subgroupBroadcast(dl, 1u), acc);
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 2u, last), xrow)), subgroupBroadcast(dl, 2u), acc);
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 3u, last), xrow)), subgroupBroadcast(dl, 3u), acc);
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 4u, last), xrow)), subgroupBroadcast(dl, 4u), acc);
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 5u, last), xrow)), subgroupBroadcast(dl, 5u), acc);
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 6u, last), xrow)), subgroupBroadcast(dl, 6u), acc);
            acc = fma(textureLoad(x, vec2<u32>(min(b0 + 7u, last), xrow)), subgroupBroadcast(dl, 7u), acc);
        }
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

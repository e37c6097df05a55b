// Weight gradient of a compressed sparse convolution at its active positions only (an SDDMM
// over N * Ho * Wo): grad[slot] = sum over the output space of dy[co] times the input's phase
// planes shifted by the slot's tap (scheme and layouts in sconv.wgsl; host side
// src/gpu/sparse_conv.rs).
//
// Bindings (group 0):
//   0 uniform Params
//   1 storage read  idx    : the layer index (pos, fwd_slot, in_ptr, out_ptr)
//   2 texture read  nzmeta : the forward metadata (meta_fwd in sconv_meta.wgsl)
//   3 texture read  srct   : the input's phase planes (src_planes in sconv_src.wgsl)
//   4 texture read  dspace : the output gradient padded for the input gradient (dy_planes in
//                            sconv_src.wgsl): dy[co, group, oy, ox] at texel co * DST +
//                            group * DPG + (oy + DLT) * DROWW + DLL + ox
//   5 storage rw    grad   : per slot, overwritten
// A workgroup takes one output channel; each lane owns one nonzero of it (WG at a time) and
// walks the output space row by row, 8 positions (of 4 images each) per step: lane t of the
// subgroup loads dy[co] at step + t and hands it to every lane with subgroupBroadcast (BCAST;
// else every lane loads it), while each lane loads its own shifted source. No reduction across
// lanes, no barrier (as sddmm.wgsl). A row of fewer than 8 positions wastes the rest of a step.

struct Params {
    rows: u32,
    blocks: u32,
    nnz: u32,
    ptr_off: u32,   // out_ptr in idx
    texels: u32,
    accum: u32,
    _pad0: u32,
    _pad1: u32,
}

// The output space: N4 image groups of U positions in rows of COLS; the input's planes: rows
// ROWW apart, image groups PG apart (sconv.wgsl).
override N4: u32 = 1u;
override U: u32 = 1u;
override COLS: u32 = 1u;
override ROWW: u32 = 1u;
override PG: u32 = 1u;
// The output gradient's planes: texels per output channel, per image group, per row, and the
// padding above and on the left of its data.
override DST: u32 = 1u;
override DPG: u32 = 1u;
override DROWW: u32 = 1u;
override DLT: u32 = 0u;
override DLL: u32 = 0u;
override BCAST: bool = true;
override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var nzmeta: texture_storage_2d<rg32uint, read>;
@group(0) @binding(3) var srct: texture_storage_2d<rgba32float, read>;
@group(0) @binding(4) var dspace: texture_storage_2d<rgba32float, read>;
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;

fn tex_at(g: u32) -> vec2<u32> {
    return vec2<u32>(g % 4096u, g / 4096u);
}

fn ls(g: u32) -> vec4<f32> {
    return textureLoad(srct, tex_at(g));
}

fn ld(g: u32) -> vec4<f32> {
    return textureLoad(dspace, tex_at(g));
}

// The source of column c of an output row starting at srow (past the row: its last column).
fn ls_at(srow: u32, c: u32) -> vec4<f32> {
    return ls(srow + min(c, COLS - 1u));
}

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
    for (var j0 = start; j0 < end; j0 += WG) {
        let j = min(j0 + lidx, end - 1u);
        let a = textureLoad(nzmeta, tex_at(j)).x;
        var acc = vec4<f32>(0.0);
        // Output row by output row, so that no position needs a division to find its source.
        for (var r = 0u; r < N4 * (U / COLS); r++) {
            let grp = r / (U / COLS);
            let oy = r % (U / COLS);
            let drow = row * DST + grp * DPG + (oy + DLT) * DROWW + DLL;
            let srow = a + grp * PG + oy * ROWW;
            if (BCAST) {
                for (var c0 = 0u; c0 < COLS; c0 += 8u) {
                    // Past the row: dy is 0 and the source is read at the row's last position.
                    let dl = select(vec4<f32>(0.0), ld(drow + min(c0 + l8, COLS - 1u)), c0 + l8 < COLS);
                    acc = fma(ls_at(srow, c0 + 0u), subgroupBroadcast(dl, 0u), acc);
                    acc = fma(ls_at(srow, c0 + 1u), subgroupBroadcast(dl, 1u), acc);
                    acc = fma(ls_at(srow, c0 + 2u), subgroupBroadcast(dl, 2u), acc);
                    acc = fma(ls_at(srow, c0 + 3u), subgroupBroadcast(dl, 3u), acc);
                    acc = fma(ls_at(srow, c0 + 4u), subgroupBroadcast(dl, 4u), acc);
                    acc = fma(ls_at(srow, c0 + 5u), subgroupBroadcast(dl, 5u), acc);
                    acc = fma(ls_at(srow, c0 + 6u), subgroupBroadcast(dl, 6u), acc);
                    acc = fma(ls_at(srow, c0 + 7u), subgroupBroadcast(dl, 7u), acc);
                }
            } else {
                for (var c = 0u; c < COLS; c++) {
                    acc = fma(ls(srow + c), ld(drow + c), acc);
                }
            }
        }
        if (j0 + lidx < end) {
            grad[idx[p.nnz + j]] = acc.x + acc.y + acc.z + acc.w;
        }
    }
}

// Dense GEMM: C[M,N] (+)= op(A) · op(B), all row-major f32.
//
// Bindings (group 0):
//   0 uniform Params { m, n, k, tiles_n, tiles_total }
//   1 storage read  a     : A as stored: [M,K], or [K,M] when TRANS_A
//   2 storage read  b     : B as stored: [K,N], or [N,K] when TRANS_B
//   3 storage rw    c     : [M,N]
//   4 storage read  amask : same layout as a; read only when MASK_A (the masked-dense yardstick:
//                           the weight operand multiplied by its 0/1 mask on load)
// Overrides: TRANS_A, TRANS_B, MASK_A, ACCUMULATE (C += instead of C =), TRANS_C.
// Work is split in tiles; tiles are linearised over workgroup_id.x + workgroup_id.y * num_workgroups.x
// so a problem may exceed 65535 workgroups in one dimension. Edges are clamped on load and guarded
// on store, so any M, N, K >= 1 works (K = 0 writes zeros).
//
// Two variants:
//   gemm_rowblock: no workgroup memory. 64 invocations along N; each computes RB_TM rows x RB_TN
//     columns (columns strided by 64 so neighbouring invocations read neighbouring memory). Rows of A
//     are the same for the whole workgroup, so software rasterisers (lavapipe) load them once and
//     broadcast. Best where barriers are expensive.
//   gemm_tiled: classic 64x64 tile, 16x16 invocations of 4x4 each, K in steps of 16 staged in
//     workgroup memory. Best on real GPUs.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    tiles_total: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override MASK_A: bool = false;
override ACCUMULATE: bool = false;
// C is stored transposed ([N,M]: c[col * M + row]): the host runs a product with few columns
// as its transpose, so that gemm_rowblock's 128 columns per workgroup are not mostly idle.
override TRANS_C: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> amask: array<f32>;

fn load_a(row: u32, kk: u32) -> f32 {
    var idx = row * p.k + kk;
    if (TRANS_A) {
        idx = kk * p.m + row;
    }
    var v = a[idx];
    if (MASK_A) {
        v = v * amask[idx];
    }
    return v;
}

fn load_b(kk: u32, col: u32) -> f32 {
    if (TRANS_B) {
        return b[col * p.k + kk];
    }
    return b[kk * p.n + col];
}

fn store_c(row: u32, col: u32, v: f32) {
    var idx = row * p.n + col;
    if (TRANS_C) {
        idx = col * p.m + row;
    }
    if (ACCUMULATE) {
        c[idx] = c[idx] + v;
    } else {
        c[idx] = v;
    }
}

const RB_WG: u32 = 64u;
const RB_TM: u32 = 8u;
const RB_TN: u32 = 2u;

@compute @workgroup_size(64)
fn gemm_rowblock(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.tiles_total) {
        return;
    }
    let row0 = (tile / p.tiles_n) * RB_TM;
    let col0 = (tile % p.tiles_n) * (RB_WG * RB_TN) + lid.x;
    let last = p.m - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    let r4 = min(row0 + 4u, last);
    let r5 = min(row0 + 5u, last);
    let r6 = min(row0 + 6u, last);
    let r7 = min(row0 + 7u, last);
    let c0 = min(col0, p.n - 1u);
    let c1 = min(col0 + RB_WG, p.n - 1u);
    var lo0 = vec4<f32>(0.0);
    var hi0 = vec4<f32>(0.0);
    var lo1 = vec4<f32>(0.0);
    var hi1 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let b0 = load_b(kk, c0);
        let b1 = load_b(kk, c1);
        let alo = vec4<f32>(load_a(r0, kk), load_a(r1, kk), load_a(r2, kk), load_a(r3, kk));
        let ahi = vec4<f32>(load_a(r4, kk), load_a(r5, kk), load_a(r6, kk), load_a(r7, kk));
        lo0 = fma(alo, vec4<f32>(b0), lo0);
        hi0 = fma(ahi, vec4<f32>(b0), hi0);
        lo1 = fma(alo, vec4<f32>(b1), lo1);
        hi1 = fma(ahi, vec4<f32>(b1), hi1);
    }
    var out0: array<f32, 8> = array<f32, 8>(lo0.x, lo0.y, lo0.z, lo0.w, hi0.x, hi0.y, hi0.z, hi0.w);
    var out1: array<f32, 8> = array<f32, 8>(lo1.x, lo1.y, lo1.z, lo1.w, hi1.x, hi1.y, hi1.z, hi1.w);
    for (var i = 0u; i < RB_TM; i++) {
        let r = row0 + i;
        if (r < p.m) {
            if (col0 < p.n) {
                store_c(r, col0, out0[i]);
            }
            if (col0 + RB_WG < p.n) {
                store_c(r, col0 + RB_WG, out1[i]);
            }
        }
    }
}

const TL_BM: u32 = 64u;
const TL_BN: u32 = 64u;
const TL_BK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [TL_BK][TL_BM]
var<workgroup> tile_b: array<f32, 1024>; // [TL_BK][TL_BN]

@compute @workgroup_size(16, 16)
fn gemm_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.tiles_total) {
        return;
    }
    let row_base = (tile / p.tiles_n) * TL_BM;
    let col_base = (tile % p.tiles_n) * TL_BN;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += TL_BK) {
        for (var l = 0u; l < 4u; l++) {
            let e = lidx + l * 256u;
            // Pick the element order so consecutive invocations read consecutive addresses.
            var r = e / TL_BK;
            var kk = e % TL_BK;
            if (TRANS_A) {
                r = e % TL_BM;
                kk = e / TL_BM;
            }
            let gr = row_base + r;
            let gk = k0 + kk;
            var va = 0.0;
            if (gr < p.m && gk < p.k) {
                va = load_a(gr, gk);
            }
            tile_a[kk * TL_BM + r] = va;

            var col = e % TL_BN;
            var kb = e / TL_BN;
            if (TRANS_B) {
                col = e / TL_BK;
                kb = e % TL_BK;
            }
            let gc = col_base + col;
            let gkb = k0 + kb;
            var vb = 0.0;
            if (gc < p.n && gkb < p.k) {
                vb = load_b(gkb, gc);
            }
            tile_b[kb * TL_BN + col] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TL_BK; kk++) {
            var af: array<f32, 4>;
            var bf: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                af[i] = tile_a[kk * TL_BM + lid.y * 4u + i];
                bf[i] = tile_b[kk * TL_BN + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(af[i], bf[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row_base + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col_base + lid.x * 4u + j;
            if (r < p.m && col < p.n) {
                store_c(r, col, acc[i][j]);
            }
        }
    }
}

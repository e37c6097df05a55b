// Dense GEMM on vec4 loads: C[M,N] (+)= op(A) · op(B), row-major f32, for shapes where M, N and K
// are multiples of 4 (the host falls back to gemm.wgsl otherwise).
//
// Bindings (group 0), as in gemm.wgsl but viewed as vec4:
//   0 uniform Params { m, n, k, tiles_n, tiles_total }
//   1 storage read  a     : [M,K], or [K,M] when TRANS_A
//   2 storage read  b     : [K,N], or [N,K] when TRANS_B
//   3 storage rw    c     : [M,N]
//   4 storage read  amask : layout of a; used only when MASK_A
// Each invocation computes a 4x4 block of C; a workgroup of 16x4 invocations covers 16 rows x 64
// columns, neighbouring invocations along columns. Every load fetches 4 floats at once: on software
// adapters (lavapipe) each non-uniform load is a per-lane loop, so this quarters the load count of the
// scalar kernels; on GPUs it is a 128-bit load.

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

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> amask: array<vec4<f32>>;

fn load_a4(idx: u32) -> vec4<f32> {
    if (MASK_A) {
        return a[idx] * amask[idx];
    }
    return a[idx];
}

fn store_c4(row: u32, col4: u32, v: vec4<f32>) {
    let idx = row * (p.n / 4u) + col4;
    if (ACCUMULATE) {
        c[idx] = c[idx] + v;
    } else {
        c[idx] = v;
    }
}

@compute @workgroup_size(16, 4)
fn gemm_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.tiles_total) {
        return;
    }
    let row = (tile / p.tiles_n) * 16u + lid.y * 4u;
    let col4 = (tile % p.tiles_n) * 16u + lid.x;
    let m4 = p.m / 4u;
    let n4 = p.n / 4u;
    let k4 = p.k / 4u;
    // Clamp loads at the edges; stores are guarded below.
    let r = min(row, p.m - 4u);
    let cc = min(col4, n4 - 1u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kq = 0u; kq < k4; kq++) {
        // a0..a3: rows r..r+3 over k = 4kq..4kq+3 (as a 4x4 block, row-indexed).
        var a0: vec4<f32>;
        var a1: vec4<f32>;
        var a2: vec4<f32>;
        var a3: vec4<f32>;
        if (TRANS_A) {
            // A is [K, M]: load columns k of rows r..r+3 and transpose the 4x4 block.
            let t0 = load_a4((4u * kq + 0u) * m4 + r / 4u);
            let t1 = load_a4((4u * kq + 1u) * m4 + r / 4u);
            let t2 = load_a4((4u * kq + 2u) * m4 + r / 4u);
            let t3 = load_a4((4u * kq + 3u) * m4 + r / 4u);
            a0 = vec4<f32>(t0.x, t1.x, t2.x, t3.x);
            a1 = vec4<f32>(t0.y, t1.y, t2.y, t3.y);
            a2 = vec4<f32>(t0.z, t1.z, t2.z, t3.z);
            a3 = vec4<f32>(t0.w, t1.w, t2.w, t3.w);
        } else {
            a0 = load_a4((r + 0u) * k4 + kq);
            a1 = load_a4((r + 1u) * k4 + kq);
            a2 = load_a4((r + 2u) * k4 + kq);
            a3 = load_a4((r + 3u) * k4 + kq);
        }
        // b0..b3: B rows k = 4kq..4kq+3 over columns 4cc..4cc+3.
        var b0: vec4<f32>;
        var b1: vec4<f32>;
        var b2: vec4<f32>;
        var b3: vec4<f32>;
        if (TRANS_B) {
            // B is [N, K]: load k-runs of columns 4cc..4cc+3 and transpose.
            let t0 = b[(4u * cc + 0u) * k4 + kq];
            let t1 = b[(4u * cc + 1u) * k4 + kq];
            let t2 = b[(4u * cc + 2u) * k4 + kq];
            let t3 = b[(4u * cc + 3u) * k4 + kq];
            b0 = vec4<f32>(t0.x, t1.x, t2.x, t3.x);
            b1 = vec4<f32>(t0.y, t1.y, t2.y, t3.y);
            b2 = vec4<f32>(t0.z, t1.z, t2.z, t3.z);
            b3 = vec4<f32>(t0.w, t1.w, t2.w, t3.w);
        } else {
            b0 = b[(4u * kq + 0u) * n4 + cc];
            b1 = b[(4u * kq + 1u) * n4 + cc];
            b2 = b[(4u * kq + 2u) * n4 + cc];
            b3 = b[(4u * kq + 3u) * n4 + cc];
        }
        acc0 = fma(vec4<f32>(a0.x), b0, fma(vec4<f32>(a0.y), b1, fma(vec4<f32>(a0.z), b2, fma(vec4<f32>(a0.w), b3, acc0))));
        acc1 = fma(vec4<f32>(a1.x), b0, fma(vec4<f32>(a1.y), b1, fma(vec4<f32>(a1.z), b2, fma(vec4<f32>(a1.w), b3, acc1))));
        acc2 = fma(vec4<f32>(a2.x), b0, fma(vec4<f32>(a2.y), b1, fma(vec4<f32>(a2.z), b2, fma(vec4<f32>(a2.w), b3, acc2))));
        acc3 = fma(vec4<f32>(a3.x), b0, fma(vec4<f32>(a3.y), b1, fma(vec4<f32>(a3.z), b2, fma(vec4<f32>(a3.w), b3, acc3))));
    }
    if (row < p.m && col4 < n4) {
        store_c4(row + 0u, col4, acc0);
        store_c4(row + 1u, col4, acc1);
        store_c4(row + 2u, col4, acc2);
        store_c4(row + 3u, col4, acc3);
    }
}

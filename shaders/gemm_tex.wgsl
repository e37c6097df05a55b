// Dense GEMM from storage textures, for adapters with subgroups of at least 8 invocations:
// C[M,N] (+)= op(A) · op(B) with op(A) [M,K] and op(B) [K,N] packed into rgba32float textures by
// gemm_pack.wgsl (which does the transposes and A's mask); N and K multiples of 4.
// This is the kernel of gemm_sg.wgsl with its operands read from textures: on lavapipe a
// storage-texture load is a branch-free gather (lane by lane in its machine code), where a
// storage-buffer load at a different address per lane is a loop over the lanes with a bounds
// check each.
//
// Bindings (group 0):
//   0 uniform Params { m, n, k, tiles_n, tiles_total, ldc4, c_off4, ksplit4 }
//   1 texture read  at : op(A), k/4 x m texels
//   2 texture read  bt : op(B), n/4 x k texels
//   3 storage rw    c  : [M,N]
// A workgroup of 64 invocations covers ROWS (32) rows x 256 columns; each invocation owns ROWS
// rows x 4 columns, loading 1 texel of A per 8 rows (handed to the other lanes by
// subgroupBroadcast) and 4 texels of B per 4 steps of k.
// NARROW (for adapters whose subgroups are exactly 8 invocations, consecutive in the workgroup):
// a workgroup covers ROWS rows x 32 columns, and its 8 subgroups split its range of k among
// them, subgroup j writing its partial C as split 8·s + j of the workgroup's split s (or of the
// whole product). A product with few columns (a convolution's weight gradient at kh·kw·cin of
// 28 or 144) then keeps most lanes on real columns, where the wide tile computes clamped copies.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    tiles_total: u32,
    // Row stride of C in vec4s (0: n / 4) and C's first vec4: the product may fill a block of
    // columns of a wider matrix (the convolutions' image chunks, src/gpu/conv_tex.rs).
    ldc4: u32,
    c_off4: u32,
    // Steps of k/4 per split of the reduction (0: no split). With splits, tiles_total counts
    // every (split, tile) pair and split s writes its partial C at c_off4 + s * m * ldc4.
    ksplit4: u32,
}

override ACCUMULATE: bool = false;
override NARROW: bool = false;
// ROWS (8, 16, 24 or 32): rows per invocation, for products of fewer than 32 rows (a
// convolution's input gradient to 20 or 16 channels), whose 32-row tiles would multiply clamped
// copies of the last row; the row groups past ROWS are not compiled in. TALL (subgroups of exactly
// 8 invocations, consecutive in the workgroup): each subgroup takes its own ROWS rows of the same
// 32 columns, so a workgroup covers 8·ROWS rows x 32 columns, for products of at most 128 columns
// (a linear layer's at batch 100 used 25 of the wide tile's 64 lanes) with no split of k.
override ROWS: u32 = 32u;
override TALL: bool = false;

// Implicit B (src/gpu/conv_tex.rs): with IMPLICIT, op(B) is not a packed texture but a
// convolution's patch matrix, gathered here from the source texture bound as `bt`
// (conv_src.wgsl's layout: texel (img·SW4 + x/4, ch·SH + y)), where packing it first took as
// long as the product. Only for a stride of 1 and rows of whole texels (QW a multiple of 4): a
// B texel is then 4 consecutive values of one source row, two texel loads at a shift that is the
// same for every lane. Row kk = tap·SC + ch of B, at the column's position q = (img, qy, qx),
// reads source (ch, img, qy + OFF_T + SIGN·ky, qx + OFF_L + SIGN·kx), tap = ky·KS + kx:
// the forward's patches (SIGN 1, OFF = −padding, SC the input channels) or the transposed input
// gradient's (SIGN −1, OFF = +padding, SC the output channels). Rows from REAL on are zeros, but
// row REAL is ones with BIAS_ROW (the forward's bias).
override IMPLICIT: bool = false;
override QH: u32 = 1u;
override QW: u32 = 4u;
override SH: u32 = 1u;
override SW4: u32 = 1u;
override SC: u32 = 1u;
override KS: u32 = 1u;
override OFF_T: i32 = 0;
override OFF_L: i32 = 0;
override SIGN: i32 = 1;
override REAL: u32 = 1u;
override BIAS_ROW: bool = false;
// BY_ROW (IMPLICIT without BIAS_ROW): the lanes take the column texels in the order (block, qy,
// img, qx) instead of (img, qy, qx), a block being ROW_BLOCK images (the last one what is left;
// the host makes a block's row of texels a multiple of 8, so that a workgroup's gathers stay
// within a few images and no subgroup spans two blocks). The 8 texels of a subgroup then share
// their row qy (but in a last, smaller block), and each subgroup runs only the steps of k whose
// kernel rows ky read inside the source for its rows: a valid 5x5 convolution's input gradient
// reads the full padding in a third of its (qy, ky) pairs (LeNet-5's conv2: 20 of 60), and
// those steps only multiplied zeros.
override BY_ROW: bool = false;
override ROW_BLOCK: u32 = 1u;
// Implicit weight gradient (src/gpu/conv_tex.rs): with WGRAD, C[cout, k·k·SC] = dy · patchesᵀ
// with the reduction over the output positions q = (img, qy, qx) (QH x QW each image, QW a
// multiple of 4) and neither operand packed: op(A)'s texel (kq, co) is dy at positions 4kq ..
// 4kq + 3, one texel of dy's source texture bound as `at` (conv_src.wgsl's act_to_tex); op(B)'s
// texel (cc, q) is the patch rows 4cc .. 4cc + 3 (4 channels of one tap, SC a multiple of 4) at
// q, one texel of the input's 4-channel texture bound as `bt` (act_to_tex_c4: texel (img·SW + x,
// c4·SH + y)), at (qy·STRIDE_W + OFF_T + ky, qx·STRIDE_W + OFF_L + kx), zero outside the input.
override WGRAD: bool = false;
override SW: u32 = 1u;
override STRIDE_W: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var at: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var bt: texture_storage_2d<rgba32float, read>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

fn store_c4(c_base: u32, ldc4: u32, row: u32, col4: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    let idx = c_base + row * ldc4 + col4;
    if (ACCUMULATE) {
        c[idx] = c[idx] + v;
    } else {
        c[idx] = v;
    }
}

// Source values x0 .. x0 + 3 of texture row `row` from the two texels they span (zeros outside
// the image's SW4 texels from `col0`, and past its width within the last: conv_src.wgsl writes
// zeros there); the shift x0 & 3 is the same for every lane.
fn row4(row: u32, inside: bool, col0: u32, x0: i32) -> vec4<f32> {
    let w4 = i32(SW4);
    let tx = x0 >> 2u;
    let ok0 = inside && tx >= 0 && tx < w4;
    let ok1 = inside && tx + 1 >= 0 && tx + 1 < w4;
    let t0 = select(vec4<f32>(0.0), textureLoad(bt, vec2<u32>(col0 + u32(clamp(tx, 0, w4 - 1)), row)), ok0);
    let t1 = select(vec4<f32>(0.0), textureLoad(bt, vec2<u32>(col0 + u32(clamp(tx + 1, 0, w4 - 1)), row)), ok1);
    let s = u32(x0 & 3);
    let v1 = vec4<f32>(t0.yzw, t1.x);
    let v2 = vec4<f32>(t0.zw, t1.xy);
    let v3 = vec4<f32>(t0.w, t1.xyz);
    return select(select(select(t0, v1, s == 1u), v2, s == 2u), v3, s == 3u);
}

// Row kk of the implicit B at the column texel whose positions start at (img, y0 − OFF_T,
// x0 − OFF_L); col0 = img·SW4.
fn implicit_b(kk: u32, col0: u32, y0: i32, x0: i32) -> vec4<f32> {
    let kc = min(kk, REAL - 1u);
    let tap = kc / SC;
    let sy = y0 + SIGN * i32(tap / KS);
    let inside = kk < REAL && sy >= 0 && sy < i32(SH);
    let row = (kc % SC) * SH + u32(clamp(sy, 0, i32(SH) - 1));
    let v = row4(row, inside, col0, x0 + SIGN * i32(tap % KS));
    return select(v, vec4<f32>(1.0), BIAS_ROW && kk == REAL);
}

// WGRAD's op(B) texel at position (img, qy, qx) for the lane's tap (ky, kx) and channels c4.
fn wgrad_b(img: u32, qy: u32, qx: u32, ky: i32, kx: i32, c4: u32) -> vec4<f32> {
    let iy = i32(qy * STRIDE_W) + OFF_T + ky;
    let ix = i32(qx * STRIDE_W) + OFF_L + kx;
    let inside = iy >= 0 && iy < i32(SH) && ix >= 0 && ix < i32(SW);
    let y = u32(clamp(iy, 0, i32(SH) - 1));
    let x = u32(clamp(ix, 0, i32(SW) - 1));
    return select(vec4<f32>(0.0), textureLoad(bt, vec2<u32>(img * SW + x, c4 * SH + y)), inside);
}

// BY_ROW: (position row, texel in image order) of texel t of the (block, qy, img, qx) order
// over nimg images.
fn by_row_at(t: u32, nimg: u32) -> vec2<u32> {
    let per_row = QW / 4u;
    let full = ROW_BLOCK * QH * per_row;
    let b = t / full;
    let r = t % full;
    let band = min(ROW_BLOCK, nimg - b * ROW_BLOCK) * per_row;
    let qy = r / band;
    let e = r % band;
    let img = b * ROW_BLOCK + e / per_row;
    return vec2<u32>(qy, (img * QH + qy) * per_row + e % per_row);
}

fn madd(acc: vec4<f32>, av: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(av.x), b0, fma(vec4<f32>(av.y), b1, fma(vec4<f32>(av.z), b2, fma(vec4<f32>(av.w), b3, acc))));
}

@compute @workgroup_size(64)
fn gemm_texture(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let flat = wid.x + wid.y * nwg.x;
    if (flat >= p.tiles_total) {
        return;
    }
    let n4 = p.n / 4u;
    let k4 = p.k / 4u;
    var ldc4 = p.ldc4;
    if (ldc4 == 0u) {
        ldc4 = n4;
    }
    var kbeg = 0u;
    var kend = k4;
    var tile = flat;
    var c_base = p.c_off4;
    var tiles_mn = p.tiles_total;
    // Partial products per split: one, or one per subgroup (NARROW).
    let subs = select(1u, 8u, NARROW);
    if (p.ksplit4 != 0u) {
        tiles_mn = p.tiles_total / ((k4 + p.ksplit4 - 1u) / p.ksplit4);
        let split = flat / tiles_mn;
        tile = flat % tiles_mn;
        kbeg = split * p.ksplit4;
        kend = min(k4, kbeg + p.ksplit4);
        c_base += split * subs * p.m * ldc4;
    }
    // Consecutive workgroups take consecutive row blocks of the same columns, so the slice of B
    // they stream stays in cache.
    let tiles_m = tiles_mn / p.tiles_n;
    var row0 = (tile % tiles_m) * ROWS;
    var col4 = (tile / tiles_m) * 64u + lidx;
    if (TALL) {
        row0 = (tile % tiles_m) * 8u * ROWS + (lidx / 8u) * ROWS;
        col4 = (tile / tiles_m) * 8u + lidx % 8u;
        // A subgroup past the last row has nothing to do (no barriers here; a subgroup leaves
        // as one).
        if (row0 >= p.m) {
            return;
        }
    }
    if (NARROW) {
        col4 = (tile / tiles_m) * 8u + lidx % 8u;
        // Subgroup j's part of [kbeg, kend): the same length for every subgroup, the last ones
        // shorter or empty (they store zeros).
        let sub = lidx / 8u;
        let sublen = (kend - kbeg + 7u) / 8u;
        let b = min(kend, kbeg + sub * sublen);
        kend = min(kend, b + sublen);
        kbeg = b;
        c_base += sub * p.m * ldc4;
    }
    let cc = min(col4, n4 - 1u);
    // The texel of C this lane stores (its column texel, in image order).
    var out4 = col4;
    var ct = cc;
    if (BY_ROW) {
        let nimg = n4 / (QH * (QW / 4u));
        // Texel cc of the (block, qy, img, qx) order and the subgroup's first and last rows
        // (rows only grow within a block, and no subgroup spans two blocks).
        ct = by_row_at(cc, nimg).y;
        out4 = select(col4, ct, col4 < n4);
        let first = min((col4 / 8u) * 8u, n4 - 1u);
        let qf = i32(by_row_at(first, nimg).x);
        let ql = i32(by_row_at(min(first + 7u, n4 - 1u), nimg).x);
        // Kernel rows whose source row qy + OFF_T + SIGN·ky lies in [0, SH) for some qy of them.
        var lo = qf + OFF_T - i32(SH) + 1;
        var hi = ql + OFF_T;
        if (SIGN > 0) {
            lo = -ql - OFF_T;
            hi = i32(SH) - 1 - qf - OFF_T;
        }
        lo = max(lo, 0);
        hi = min(hi, i32(KS) - 1);
        // Their rows of B, tap = ky·KS + kx and row = tap·SC + ch, in steps of 4 rounded out.
        let taps = KS * SC;
        kbeg = max(kbeg, (u32(lo) * taps) / 4u);
        kend = select(kbeg, min(kend, (u32(max(hi + 1, 0)) * taps + 3u) / 4u), hi >= lo);
    }
    // IMPLICIT: the column texel's 4 positions, decoded once.
    let q = 4u * ct;
    let img = q / (QH * QW);
    let qr = q % (QH * QW);
    let col0 = img * SW4;
    let y0 = i32(qr / QW) + OFF_T;
    let x0 = i32(qr % QW) + OFF_L;
    // WGRAD: the lane's tap and channels (its column texel of op(B)).
    let wtap = (4u * cc) / SC;
    let wc4 = ((4u * cc) % SC) / 4u;
    let wky = i32(wtap / KS);
    let wkx = i32(wtap % KS);
    // What this lane loads of A for each group g of 8 rows: row row0 + 8g + (lane % 8).
    let l8 = lane % 8u;

    let arow0 = min(row0 + 0u + l8, p.m - 1u);
    let arow1 = min(row0 + 8u + l8, p.m - 1u);
    let arow2 = min(row0 + 16u + l8, p.m - 1u);
    let arow3 = min(row0 + 24u + l8, p.m - 1u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    var acc8 = vec4<f32>(0.0);
    var acc9 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0);
    var acc13 = vec4<f32>(0.0);
    var acc14 = vec4<f32>(0.0);
    var acc15 = vec4<f32>(0.0);
    var acc16 = vec4<f32>(0.0);
    var acc17 = vec4<f32>(0.0);
    var acc18 = vec4<f32>(0.0);
    var acc19 = vec4<f32>(0.0);
    var acc20 = vec4<f32>(0.0);
    var acc21 = vec4<f32>(0.0);
    var acc22 = vec4<f32>(0.0);
    var acc23 = vec4<f32>(0.0);
    var acc24 = vec4<f32>(0.0);
    var acc25 = vec4<f32>(0.0);
    var acc26 = vec4<f32>(0.0);
    var acc27 = vec4<f32>(0.0);
    var acc28 = vec4<f32>(0.0);
    var acc29 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0);
    var acc31 = vec4<f32>(0.0);
    for (var kq = kbeg; kq < kend; kq++) {
        var mine0: vec4<f32>;
        var mine1: vec4<f32>;
        var mine2: vec4<f32>;
        var mine3: vec4<f32>;
        var b0: vec4<f32>;
        var b1: vec4<f32>;
        var b2: vec4<f32>;
        var b3: vec4<f32>;
        if (WGRAD) {
            // The 4 positions of this step: one output row's qx .. qx + 3 of one image.
            let wq = 4u * kq;
            let wimg = wq / (QH * QW);
            let wr = wq % (QH * QW);
            let qy = wr / QW;
            let qx = wr % QW;
            let acol = wimg * (QW / 4u) + qx / 4u;
            mine0 = textureLoad(at, vec2<u32>(acol, arow0 * QH + qy));
            if (ROWS > 8u) {
                mine1 = textureLoad(at, vec2<u32>(acol, arow1 * QH + qy));
            }
            if (ROWS > 16u) {
                mine2 = textureLoad(at, vec2<u32>(acol, arow2 * QH + qy));
            }
            if (ROWS > 24u) {
                mine3 = textureLoad(at, vec2<u32>(acol, arow3 * QH + qy));
            }
            b0 = wgrad_b(wimg, qy, qx, wky, wkx, wc4);
            b1 = wgrad_b(wimg, qy, qx + 1u, wky, wkx, wc4);
            b2 = wgrad_b(wimg, qy, qx + 2u, wky, wkx, wc4);
            b3 = wgrad_b(wimg, qy, qx + 3u, wky, wkx, wc4);
        } else {
            mine0 = textureLoad(at, vec2<u32>(kq, arow0));
            if (ROWS > 8u) {
                mine1 = textureLoad(at, vec2<u32>(kq, arow1));
            }
            if (ROWS > 16u) {
                mine2 = textureLoad(at, vec2<u32>(kq, arow2));
            }
            if (ROWS > 24u) {
                mine3 = textureLoad(at, vec2<u32>(kq, arow3));
            }
            if (IMPLICIT) {
                b0 = implicit_b(4u * kq + 0u, col0, y0, x0);
                b1 = implicit_b(4u * kq + 1u, col0, y0, x0);
                b2 = implicit_b(4u * kq + 2u, col0, y0, x0);
                b3 = implicit_b(4u * kq + 3u, col0, y0, x0);
            } else {
                b0 = textureLoad(bt, vec2<u32>(cc, 4u * kq + 0u));
                b1 = textureLoad(bt, vec2<u32>(cc, 4u * kq + 1u));
                b2 = textureLoad(bt, vec2<u32>(cc, 4u * kq + 2u));
                b3 = textureLoad(bt, vec2<u32>(cc, 4u * kq + 3u));
            }
        }
        let s0 = subgroupBroadcast(mine0, 0u);
        let s1 = subgroupBroadcast(mine0, 1u);
        let s2 = subgroupBroadcast(mine0, 2u);
        let s3 = subgroupBroadcast(mine0, 3u);
        let s4 = subgroupBroadcast(mine0, 4u);
        let s5 = subgroupBroadcast(mine0, 5u);
        let s6 = subgroupBroadcast(mine0, 6u);
        let s7 = subgroupBroadcast(mine0, 7u);
        acc0 = madd(acc0, s0, b0, b1, b2, b3);
        acc1 = madd(acc1, s1, b0, b1, b2, b3);
        acc2 = madd(acc2, s2, b0, b1, b2, b3);
        acc3 = madd(acc3, s3, b0, b1, b2, b3);
        acc4 = madd(acc4, s4, b0, b1, b2, b3);
        acc5 = madd(acc5, s5, b0, b1, b2, b3);
        acc6 = madd(acc6, s6, b0, b1, b2, b3);
        acc7 = madd(acc7, s7, b0, b1, b2, b3);
        if (ROWS > 8u) {
            let s8 = subgroupBroadcast(mine1, 0u);
            let s9 = subgroupBroadcast(mine1, 1u);
            let s10 = subgroupBroadcast(mine1, 2u);
            let s11 = subgroupBroadcast(mine1, 3u);
            let s12 = subgroupBroadcast(mine1, 4u);
            let s13 = subgroupBroadcast(mine1, 5u);
            let s14 = subgroupBroadcast(mine1, 6u);
            let s15 = subgroupBroadcast(mine1, 7u);
            acc8 = madd(acc8, s8, b0, b1, b2, b3);
            acc9 = madd(acc9, s9, b0, b1, b2, b3);
            acc10 = madd(acc10, s10, b0, b1, b2, b3);
            acc11 = madd(acc11, s11, b0, b1, b2, b3);
            acc12 = madd(acc12, s12, b0, b1, b2, b3);
            acc13 = madd(acc13, s13, b0, b1, b2, b3);
            acc14 = madd(acc14, s14, b0, b1, b2, b3);
            acc15 = madd(acc15, s15, b0, b1, b2, b3);
        }
        if (ROWS > 16u) {
            let s16 = subgroupBroadcast(mine2, 0u);
            let s17 = subgroupBroadcast(mine2, 1u);
            let s18 = subgroupBroadcast(mine2, 2u);
            let s19 = subgroupBroadcast(mine2, 3u);
            let s20 = subgroupBroadcast(mine2, 4u);
            let s21 = subgroupBroadcast(mine2, 5u);
            let s22 = subgroupBroadcast(mine2, 6u);
            let s23 = subgroupBroadcast(mine2, 7u);
            acc16 = madd(acc16, s16, b0, b1, b2, b3);
            acc17 = madd(acc17, s17, b0, b1, b2, b3);
            acc18 = madd(acc18, s18, b0, b1, b2, b3);
            acc19 = madd(acc19, s19, b0, b1, b2, b3);
            acc20 = madd(acc20, s20, b0, b1, b2, b3);
            acc21 = madd(acc21, s21, b0, b1, b2, b3);
            acc22 = madd(acc22, s22, b0, b1, b2, b3);
            acc23 = madd(acc23, s23, b0, b1, b2, b3);
        }
        if (ROWS > 24u) {
            let s24 = subgroupBroadcast(mine3, 0u);
            let s25 = subgroupBroadcast(mine3, 1u);
            let s26 = subgroupBroadcast(mine3, 2u);
            let s27 = subgroupBroadcast(mine3, 3u);
            let s28 = subgroupBroadcast(mine3, 4u);
            let s29 = subgroupBroadcast(mine3, 5u);
            let s30 = subgroupBroadcast(mine3, 6u);
            let s31 = subgroupBroadcast(mine3, 7u);
            acc24 = madd(acc24, s24, b0, b1, b2, b3);
            acc25 = madd(acc25, s25, b0, b1, b2, b3);
            acc26 = madd(acc26, s26, b0, b1, b2, b3);
            acc27 = madd(acc27, s27, b0, b1, b2, b3);
            acc28 = madd(acc28, s28, b0, b1, b2, b3);
            acc29 = madd(acc29, s29, b0, b1, b2, b3);
            acc30 = madd(acc30, s30, b0, b1, b2, b3);
            acc31 = madd(acc31, s31, b0, b1, b2, b3);
        }
    }
    if (col4 < n4) {
        store_c4(c_base, ldc4, row0 + 0u, out4, acc0);
        store_c4(c_base, ldc4, row0 + 1u, out4, acc1);
        store_c4(c_base, ldc4, row0 + 2u, out4, acc2);
        store_c4(c_base, ldc4, row0 + 3u, out4, acc3);
        store_c4(c_base, ldc4, row0 + 4u, out4, acc4);
        store_c4(c_base, ldc4, row0 + 5u, out4, acc5);
        store_c4(c_base, ldc4, row0 + 6u, out4, acc6);
        store_c4(c_base, ldc4, row0 + 7u, out4, acc7);
        if (ROWS > 8u) {
            store_c4(c_base, ldc4, row0 + 8u, out4, acc8);
            store_c4(c_base, ldc4, row0 + 9u, out4, acc9);
            store_c4(c_base, ldc4, row0 + 10u, out4, acc10);
            store_c4(c_base, ldc4, row0 + 11u, out4, acc11);
            store_c4(c_base, ldc4, row0 + 12u, out4, acc12);
            store_c4(c_base, ldc4, row0 + 13u, out4, acc13);
            store_c4(c_base, ldc4, row0 + 14u, out4, acc14);
            store_c4(c_base, ldc4, row0 + 15u, out4, acc15);
        }
        if (ROWS > 16u) {
            store_c4(c_base, ldc4, row0 + 16u, out4, acc16);
            store_c4(c_base, ldc4, row0 + 17u, out4, acc17);
            store_c4(c_base, ldc4, row0 + 18u, out4, acc18);
            store_c4(c_base, ldc4, row0 + 19u, out4, acc19);
            store_c4(c_base, ldc4, row0 + 20u, out4, acc20);
            store_c4(c_base, ldc4, row0 + 21u, out4, acc21);
            store_c4(c_base, ldc4, row0 + 22u, out4, acc22);
            store_c4(c_base, ldc4, row0 + 23u, out4, acc23);
        }
        if (ROWS > 24u) {
            store_c4(c_base, ldc4, row0 + 24u, out4, acc24);
            store_c4(c_base, ldc4, row0 + 25u, out4, acc25);
            store_c4(c_base, ldc4, row0 + 26u, out4, acc26);
            store_c4(c_base, ldc4, row0 + 27u, out4, acc27);
            store_c4(c_base, ldc4, row0 + 28u, out4, acc28);
            store_c4(c_base, ldc4, row0 + 29u, out4, acc29);
            store_c4(c_base, ldc4, row0 + 30u, out4, acc30);
            store_c4(c_base, ldc4, row0 + 31u, out4, acc31);
        }
    }
}

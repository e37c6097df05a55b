// Convolution operands for gemm_tex.wgsl: the lavapipe-shaped convolutions are texture GEMMs whose
// operands these kernels gather straight from the activations and weights into the GEMM's
// rgba32float operand textures (texel (c4, r) = row r, columns 4·c4 .. 4·c4+3), as gemm_pack.wgsl
// does for a plain product: the patch matrix is never stored in a buffer. Host side and the
// products each gather feeds: src/gpu/conv_tex.rs; CPU twin: src/cpu/conv.rs.
//
// Layouts (as conv.wgsl): activations [C, N, H, W], weights [k, k, cin, cout] flat
// ((ky·k + kx)·cin + ci)·cout + co. Patch row kk = (ky·k + kx)·cin + ci; output-gradient patch
// row kd = (ky·k + kx)·cout + co. Rows past the real ones (K, or Kd) are zeros, which pads the
// GEMM's k to a multiple of 4; with BIAS the forward's row K is ones and the weights' column K the
// bias, so the GEMM adds it.
//
// Bindings (group 0):
//   0 uniform PackParams
//   1 storage read  src  : the activations, output gradient or weights, per entry
//   2 storage read  mask : layout of the weights (MASKED entries; any buffer otherwise)
//   3 storage read  bias : [cout] (pack_wt with BIAS; any buffer otherwise)
//   4 texture write dst  : the operand texture
//   5 texture read  srct : the gathers' source (pack_patch, pack_patch_t: the input; pack_dpatch:
//                          the output gradient) as conv_src.wgsl lays it out, texel
//                          (img · W4 + x / 4, c · rows + y); the other entries do not bind it

struct PackParams {
    n: u32,
    h: u32,
    w: u32,
    cin: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    k: u32,
    stride: u32,
    pad_t: u32,
    pad_l: u32,
    _flags: u32,
    // Texture rows and texels per row to write.
    rows: u32,
    cols4: u32,
    // Global column (pack_patch, pack_dpatch, pack_rows) or row (pack_patch_t) of the texture's
    // first one: the chunk of images this launch gathers.
    first: u32,
    // Real rows (pack_patch, pack_dpatch) or columns (pack_wt, pack_wd, pack_patch_t); more are 0.
    real: u32,
    // Workgroups per row of work items.
    blocks_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// The geometry, as constants of each pipeline: a division by a constant is a multiply and a
// shift, where a division by a uniform is a loop over the lanes on lavapipe (the gathers took 4x
// longer with the geometry in the uniform block). The uniform's copies of them are unused.
override H: u32;
override W: u32;
override CIN: u32;
override COUT: u32;
override HO: u32;
override WO: u32;
override K: u32;
override STRIDE: u32;
override PAD_T: u32;
override PAD_L: u32;
// Texels per image row of the gathers' source texture: ceil(W / 4) for the input, ceil(WO / 4)
// for the output gradient.
override W4: u32;
override WO4: u32;
override MASKED: bool = false;
override BIAS: bool = false;
// Rows of work items per invocation: fewer, longer workgroups, which lavapipe starts at a cost
// each, and the row's decoding done once per invocation row rather than per texel.
const ITEM_ROWS: u32 = 8u;

@group(0) @binding(0) var<uniform> p: PackParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var dst: texture_storage_2d<rgba32float, write>;
@group(0) @binding(5) var srct: texture_storage_2d<rgba32float, read>;

fn weight(i: u32) -> f32 {
    if (MASKED) {
        return src[i] * mask[i];
    }
    return src[i];
}

// The (x, rows y0 .. y_end) a workgroup of 64 invocations covers: x along the texels of a row,
// ITEM_ROWS rows per invocation. Scalar divisions only (one per workgroup): a vector division is a
// loop over the lanes on CPU drivers.
struct Item {
    x: u32,
    y0: u32,
    y_end: u32,
}

fn item(wid: vec3<u32>, nwg: vec3<u32>, lidx: u32) -> Item {
    let wg = wid.x + wid.y * nwg.x;
    let y0 = (wg / p.blocks_x) * ITEM_ROWS;
    return Item((wg % p.blocks_x) * 64u + lidx, y0, min(y0 + ITEM_ROWS, p.rows));
}

// ---- pack_wt: the forward's A, op(A)[co, kk] = (w ⊙ mask)[kk, co] (and bias[co] at kk = K).
@compute @workgroup_size(64)
fn pack_wt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let it = item(wid, nwg, lidx);
    if (it.x >= p.cols4) {
        return;
    }
    for (var co = it.y0; co < it.y_end; co++) {
        var v = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let kk = 4u * it.x + j;
            if (kk < p.real) {
                v[j] = weight(kk * COUT + co);
            } else if (BIAS && kk == p.real) {
                v[j] = bias[co];
            }
        }
        textureStore(dst, vec2<u32>(it.x, co), v);
    }
}

// ---- pack_wd: the input gradient's A, op(A)[ci, kd] = (w ⊙ mask)[(tap·cin + ci)·cout + co]
// with kd = tap·cout + co.
@compute @workgroup_size(64)
fn pack_wd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let it = item(wid, nwg, lidx);
    if (it.x >= p.cols4) {
        return;
    }
    for (var ci = it.y0; ci < it.y_end; ci++) {
        var v = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let kd = 4u * it.x + j;
            if (kd < p.real) {
                let tap = kd / COUT;
                v[j] = weight((tap * CIN + ci) * COUT + kd % COUT);
            }
        }
        textureStore(dst, vec2<u32>(it.x, ci), v);
    }
}

// Input value at (ci, img, iy, ix), 0 outside the image.
// Branch-free: the coordinates are clamped into the image and the value zeroed outside it.
fn input_at(ci: u32, img: u32, iy: i32, ix: i32) -> f32 {
    let inside = iy >= 0 && ix >= 0 && iy < i32(H) && ix < i32(W);
    let y = u32(clamp(iy, 0, i32(H) - 1));
    let x = u32(clamp(ix, 0, i32(W) - 1));
    let t = textureLoad(srct, vec2<u32>(img * W4 + (x >> 2u), ci * H + y));
    return select(0.0, t[x & 3u], inside);
}

// The output gradient at (co, img, oy, ox), 0 outside the output; branch-free as input_at.
fn dy_at(co: u32, img: u32, oy: i32, ox: i32) -> f32 {
    let inside = oy >= 0 && ox >= 0 && oy < i32(HO) && ox < i32(WO);
    let y = u32(clamp(oy, 0, i32(HO) - 1));
    let x = u32(clamp(ox, 0, i32(WO) - 1));
    let t = textureLoad(srct, vec2<u32>(img * WO4 + (x >> 2u), co * HO + y));
    return select(0.0, t[x & 3u], inside);
}

// ---- pack_patch: the forward's B (and nothing else), B[kk, q] = x[ci, img, oy·s + ky − pad_t,
// ox·s + kx − pad_l] for the output position q = (img, oy, ox) = first + column.
@compute @workgroup_size(64)
fn pack_patch(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let it = item(wid, nwg, lidx);
    if (it.x >= p.cols4) {
        return;
    }
    // The 4 output positions of this texel column, decoded once.
    let plane = HO * WO;
    var img: vec4<u32>;
    var y0: vec4<i32>;
    var x0: vec4<i32>;
    for (var j = 0u; j < 4u; j++) {
        let q = p.first + 4u * it.x + j;
        img[j] = q / plane;
        let r = q % plane;
        y0[j] = i32((r / WO) * STRIDE) - i32(PAD_T);
        x0[j] = i32((r % WO) * STRIDE) - i32(PAD_L);
    }
    for (var kk = it.y0; kk < it.y_end; kk++) {
        var v = vec4<f32>(0.0);
        if (kk < p.real) {
            let tap = kk / CIN;
            let ci = kk % CIN;
            let ky = i32(tap / K);
            let kx = i32(tap % K);
            for (var j = 0u; j < 4u; j++) {
                v[j] = input_at(ci, img[j], y0[j] + ky, x0[j] + kx);
            }
        } else if (BIAS && kk == p.real) {
            v = vec4<f32>(1.0);
        }
        textureStore(dst, vec2<u32>(it.x, kk), v);
    }
}

// ---- pack_dpatch: the input gradient's B, B[kd, q] = dy[co, img, oy, ox] for the input
// position q = (img, iy, ix) = first + column, where oy·s + ky − pad_t = iy (and the same for x)
// has a solution inside the output; 0 where it has none.
@compute @workgroup_size(64)
fn pack_dpatch(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let it = item(wid, nwg, lidx);
    if (it.x >= p.cols4) {
        return;
    }
    let plane = H * W;
    var img: vec4<u32>;
    var ty0: vec4<i32>;
    var tx0: vec4<i32>;
    for (var j = 0u; j < 4u; j++) {
        let q = p.first + 4u * it.x + j;
        img[j] = q / plane;
        let r = q % plane;
        ty0[j] = i32(r / W) + i32(PAD_T);
        tx0[j] = i32(r % W) + i32(PAD_L);
    }
    let s = i32(STRIDE);
    for (var kd = it.y0; kd < it.y_end; kd++) {
        var v = vec4<f32>(0.0);
        if (kd < p.real) {
            let tap = kd / COUT;
            let co = kd % COUT;
            let ky = i32(tap / K);
            let kx = i32(tap % K);
            for (var j = 0u; j < 4u; j++) {
                let ty = ty0[j] - ky;
                let tx = tx0[j] - kx;
                let hit = ty >= 0 && tx >= 0 && ty % s == 0 && tx % s == 0;
                v[j] = select(0.0, dy_at(co, img[j], ty / s, tx / s), hit);
            }
        }
        textureStore(dst, vec2<u32>(it.x, kd), v);
    }
}

// ---- pack_rows: the weight gradient's A, op(A)[co, q] = dy[co, first + q] (rows of the output
// gradient from column `first`), and the col2im input gradient's B; rows past cout are zero.
@compute @workgroup_size(64)
fn pack_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let it = item(wid, nwg, lidx);
    if (it.x >= p.cols4) {
        return;
    }
    let len = p.n * HO * WO;
    for (var co = it.y0; co < it.y_end; co++) {
        var v = vec4<f32>(0.0);
        if (co < COUT) {
            let base = co * len + p.first + 4u * it.x;
            v = vec4<f32>(src[base], src[base + 1u], src[base + 2u], src[base + 3u]);
        }
        textureStore(dst, vec2<u32>(it.x, co), v);
    }
}

// ---- pack_w: the col2im input gradient's A, op(A)[kk, co] = (w ⊙ mask)[kk · cout + co]: the
// weights as they are laid out, columns past cout (`real`) zero.
@compute @workgroup_size(64)
fn pack_w(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let it = item(wid, nwg, lidx);
    if (it.x >= p.cols4) {
        return;
    }
    for (var kk = it.y0; kk < it.y_end; kk++) {
        var v = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let co = 4u * it.x + j;
            if (co < p.real) {
                v[j] = weight(kk * COUT + co);
            }
        }
        textureStore(dst, vec2<u32>(it.x, kk), v);
    }
}

// ---- pack_patch_t: the weight gradient's B, op(B)[q, kk] = the forward's B[kk, q] for the
// output position q = first + row. One invocation per row (its position decoded once), looping
// over the texels of the row, whose patch rows are the same for every lane.
@compute @workgroup_size(64)
fn pack_patch_t(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let row = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (row >= p.rows) {
        return;
    }
    let plane = HO * WO;
    let q = p.first + row;
    let img = q / plane;
    let r = q % plane;
    let y0 = i32((r / WO) * STRIDE) - i32(PAD_T);
    let x0 = i32((r % WO) * STRIDE) - i32(PAD_L);
    for (var c4 = 0u; c4 < p.cols4; c4++) {
        var v = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let kk = 4u * c4 + j;
            if (kk < p.real) {
                let tap = kk / CIN;
                v[j] = input_at(kk % CIN, img, y0 + i32(tap / K), x0 + i32(tap % K));
            }
        }
        textureStore(dst, vec2<u32>(c4, row), v);
    }
}

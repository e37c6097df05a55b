// Packs a stored f32 matrix into an rgba32float storage texture holding op(X) row-major, 4
// columns per texel: texel (c/4, r) = op(X)[r, c .. c+3], where op(X) is X, or X transposed when
// TRANSPOSE, times the mask when MASK. gemm_tex.wgsl reads its operands from such textures.
// Needs cols a multiple of 4 (rows too when TRANSPOSE).
//
// Bindings (group 0):
//   0 uniform PackParams { rows, cols } of the stored matrix, blocks_x (see below)
//   1 storage read  src  : [rows, cols]
//   2 storage read  mask : layout of src; used only when MASK
//   3 texture write dst  : cols/4 x rows texels, or rows/4 x cols when TRANSPOSE

struct PackParams {
    rows: u32,
    cols: u32,
    // Workgroups per row of work items (the kernel's x extent / 64, rounded up).
    blocks_x: u32,
    _pad: u32,
}

override TRANSPOSE: bool = false;
override MASK: bool = false;
// Rows of work items per invocation (PACK_ITEM_ROWS in src/gpu/gemm.rs): fewer, longer
// workgroups, which lavapipe starts at a cost each.
const ITEM_ROWS: u32 = 8u;

@group(0) @binding(0) var<uniform> pp: PackParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> mask: array<vec4<f32>>;
@group(0) @binding(3) var dst: texture_storage_2d<rgba32float, write>;

fn load_src(idx: u32) -> vec4<f32> {
    if (MASK) {
        return src[idx] * mask[idx];
    }
    return src[idx];
}

// Work item (x, y): texel x of row y (no transpose), or the 4x4 block at rows 4y..4y+3 and
// columns 4x..4x+3 of the stored matrix, written as 4 texels of the transpose. An invocation
// does the items (x, y0) .. (x, y0 + ITEM_ROWS - 1). Its rows come from the workgroup index
// (one scalar division per workgroup, none per invocation: a vector division is a loop over the
// lanes on CPU drivers).
@compute @workgroup_size(64)
fn gemm_pack(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let wg = wid.x + wid.y * nwg.x;
    let y0 = (wg / pp.blocks_x) * ITEM_ROWS;
    let x = (wg % pp.blocks_x) * 64u + lidx;
    let c4 = pp.cols / 4u;
    if (x >= c4) {
        return;
    }
    let y_end = min(y0 + ITEM_ROWS, select(pp.rows, pp.rows / 4u, TRANSPOSE));
    for (var y = y0; y < y_end; y++) {
        if (TRANSPOSE) {
            let v0 = load_src((4u * y + 0u) * c4 + x);
            let v1 = load_src((4u * y + 1u) * c4 + x);
            let v2 = load_src((4u * y + 2u) * c4 + x);
            let v3 = load_src((4u * y + 3u) * c4 + x);
            textureStore(dst, vec2<u32>(y, 4u * x + 0u), vec4<f32>(v0.x, v1.x, v2.x, v3.x));
            textureStore(dst, vec2<u32>(y, 4u * x + 1u), vec4<f32>(v0.y, v1.y, v2.y, v3.y));
            textureStore(dst, vec2<u32>(y, 4u * x + 2u), vec4<f32>(v0.z, v1.z, v2.z, v3.z));
            textureStore(dst, vec2<u32>(y, 4u * x + 3u), vec4<f32>(v0.w, v1.w, v2.w, v3.w));
        } else {
            textureStore(dst, vec2<u32>(x, y), load_src(y * c4 + x));
        }
    }
}

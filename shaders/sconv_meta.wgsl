// Metadata of the sparse convolutions (see sconv.wgsl for the scheme).

struct Params {
    rows: u32,      // spconv/sddmm: rows of the product
    blocks: u32,    // spconv: blocks of WG * V output vec4s per row
    nnz: u32,       // slots of the layer
    ptr_off: u32,   // spconv: row pointers in idx (out_ptr forward, in_ptr input gradient)
    texels: u32,    // src_planes / dy_planes: texels to write; meta_*: entries
    accum: u32,     // spconv input gradient: add into dx
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn tex_at(g: u32) -> vec2<u32> {
    return vec2<u32>(g % 4096u, g / 4096u);
}

// The convolution (N, H, W, HO, WO unused here: the host passes one geometry to every kernel).
override N: u32 = 1u;
override H: u32 = 1u;
override W: u32 = 1u;
override HO: u32 = 1u;
override WO: u32 = 1u;
override K: u32 = 1u;
override S: u32 = 1u;
override CIN: u32 = 1u;
override COUT: u32 = 1u;
override PAD_T: u32 = 0u;
override PAD_L: u32 = 0u;
override NPY: u32 = 1u;
override WQ: u32 = 1u;
override ST: u32 = 1u;
override LT: u32 = 0u;
override LL: u32 = 0u;
override WD: u32 = 1u;
override STD: u32 = 1u;

// ---------------------------------------------------------------------------------------------
// Metadata: texel j = (address, value bits).

@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> vals: array<f32>;
@group(0) @binding(3) var meta_out: texture_storage_2d<rg32uint, write>;
// Input gradient: row pointers of the rows (ci, py, px) into the slots grouped by row.
@group(0) @binding(4) var<storage, read_write> dptr: array<u32>;

// First row of phase py of the input gradient's output space, and its count (also columns).
fn lo(pad: u32, ph: u32) -> u32 {
    return select(0u, (pad - ph + S - 1u) / S, pad > ph);
}

// Forward order (out_ptr ranges of the slots sorted by output channel): the forward source.
@compute @workgroup_size(64)
fn meta_fwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let j = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (j >= p.texels) {
        return;
    }
    let slot = idx[p.nnz + j];
    let kidx = idx[slot] / COUT;
    let ci = kidx % CIN;
    let ky = kidx / CIN / K;
    let kx = (kidx / CIN) % K;
    let ph = (ky % S) * NPY + kx % S;
    let sh = (ky / S) * WQ + kx / S;
    let vc = ph * CIN + ci;
    textureStore(meta_out, tex_at(j), vec4<u32>(vc * ST + sh, bitcast<u32>(vals[slot]), 0u, 0u));
}

// The input gradient's rows (ci, py, px) walk the slots of the taps (ky, kx) of their stride phase:
// row pointers over the slots grouped by row, taps in (ky, kx) order, slots in flat order within a
// tap; then, per row, the first of its slots whose tap ky * K + kx is t or more, for t = 0..K * K
// (at rows + 1 + row * (K * K + 1) + t: the input gradient's TAPSKIP walks only the taps that
// read inside dy). One invocation (rows = cin * S * S, a few thousand at most).
@compute @workgroup_size(1)
fn bwd_rows() {
    let rows = CIN * S * S;
    let in_off = 2u * p.nnz;
    var acc = 0u;
    for (var row = 0u; row < rows; row++) {
        dptr[row] = acc;
        let ci = row / (S * S);
        let py = (row % (S * S)) / S;
        let px = row % S;
        let kp = rows + 1u + row * (K * K + 1u);
        var t = 0u;
        for (var ky = py; ky < K; ky += S) {
            for (var kx = px; kx < K; kx += S) {
                while (t <= ky * K + kx) {
                    dptr[kp + t] = acc;
                    t++;
                }
                let kidx = (ky * K + kx) * CIN + ci;
                acc += idx[in_off + kidx + 1u] - idx[in_off + kidx];
            }
        }
        while (t <= K * K) {
            dptr[kp + t] = acc;
            t++;
        }
    }
    dptr[rows] = acc;
}

// Metadata of the input gradient (bwd_rows' order): the address in the padded output gradient.
@compute @workgroup_size(64)
fn meta_bwd(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let s = (wid.x + wid.y * nwg.x) * 64u + lidx;
    if (s >= p.texels) {
        return;
    }
    let in_off = 2u * p.nnz;
    let q = idx[s];
    let co = q % COUT;
    let kidx = q / COUT;
    let ci = kidx % CIN;
    let ky = kidx / CIN / K;
    let kx = (kidx / CIN) % K;
    let py = ky % S;
    let px = kx % S;
    // Rank within the row: the slots of the phase's earlier taps, then those before s in its tap.
    var rank = s - idx[in_off + kidx];
    for (var ty = py; ty <= ky; ty += S) {
        for (var tx = px; tx < K; tx += S) {
            if (ty == ky && tx >= kx) {
                break;
            }
            let t = (ty * K + tx) * CIN + ci;
            rank += idx[in_off + t + 1u] - idx[in_off + t];
        }
    }
    let sh = (lo(PAD_T, py) + LT - ky / S) * WD + lo(PAD_L, px) + LL - kx / S;
    let j = dptr[(ci * S + py) * S + px] + rank;
    textureStore(meta_out, tex_at(j), vec4<u32>(co * STD + sh, bitcast<u32>(vals[s]), 0u, 0u));
}

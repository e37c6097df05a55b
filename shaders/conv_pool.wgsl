// A first convolution, its ReLU and a max pooling as one layer: max_pool(relu(conv(x) + bias)).
// For a network's first convolution (no input gradient) over few input values per pooled output
// (LeNet-5's conv1: one channel, 5x5, pooled 2x2, a 6x6 patch). CPU twin: the three layers of
// src/cpu/conv.rs in a row (conv2d_forward, relu, max_pool_forward; conv2d_weight_grad of
// max_pool_backward's output and channel_sums for the backward).
//
// Why: unfused, the convolution writes its whole output (4x the pooled one), the pooling reads it
// back, the backward scatters the pooled gradient into a tensor of that size, three-quarters
// zeros, and the weight gradient reads it all again. Here the forward keeps the convolution's
// output in registers, and the weight gradient visits only the argmax of each pooled output:
// a quarter of the positions of a 2x2 pooling, the only ones whose gradient is not zero.
//
// Layouts as shaders/conv.wgsl: activations [C, N, H, W], weights [k, k, cin, cout] flat
// ((ky * CK + kx) * CIN + ci) * COUT + co. arg holds, per pooled output, the flat index into the
// convolution's output [COUT, N, HC, WC] of the first maximum in window order, or NO_ARG where
// that maximum is <= 0 (relu passes no gradient): max_pool_relu's convention (image.wgsl).
//
// The input is read from a copy of x in a texture (TEX, the host's choice where it fits: texel
// (img * W4 + x4, ci * H + y) = x[ci, img, y, 4 * x4 .. 4 * x4 + 3], zeros past W, written by
// conv_src.wgsl's act_to_tex): on lavapipe a storage-buffer load at a different address per lane
// is a loop over the lanes, a texture load one branch-free gather of 4 values, so a patch row of
// 6 values is 3 gathers instead of 6 loops. Without TEX, from the buffer x.
//
// The geometry is in consts that the host specialises per layer (src/gpu/conv_pool.rs), which
// also replaces each `// BEGIN NAME` ... `// END NAME` region by the same code unrolled for that
// geometry (src/gpu/conv_pool.rs, `unrolled_code`): the patch and the accumulators become
// scalars instead of private arrays indexed in loops. The generic loops are tested too.

const CK: u32 = 5u;      // convolution kernel
const CS: u32 = 1u;      // convolution stride
const CPT: u32 = 0u;     // convolution padding above
const CPL: u32 = 0u;     // convolution padding left
const CIN: u32 = 1u;     // input channels
const COUT: u32 = 20u;   // output channels
const H: u32 = 28u;      // input height
const W: u32 = 28u;      // input width
const HC: u32 = 24u;     // convolution output height
const WC: u32 = 24u;     // convolution output width
const PK: u32 = 2u;      // pooling window
const PS: u32 = 2u;      // pooling stride
const PPT: u32 = 0u;     // pooling padding above
const PPL: u32 = 0u;     // pooling padding left
const HO: u32 = 12u;     // pooled height
const WO: u32 = 12u;     // pooled width
const PH: u32 = 6u;      // patch rows: (PK - 1) * CS + CK
const PW: u32 = 6u;      // patch columns
const PATCH: u32 = 36u;  // CIN * PH * PW
const TAPS: u32 = 25u;   // CK * CK * CIN
const TAPS1: u32 = 26u;  // TAPS + 1 (the bias)
const WU4: u32 = 130u;   // ceil((TAPS + 1) * COUT / 4): the weights, then the bias, in vec4s
const ACC: u32 = 520u;   // COUT * TAPS1: the weight gradient's accumulators per invocation
const TEX: bool = false; // the input from srct (else from src)
const W4: u32 = 7u;      // texels per input row: ceil(W / 4)

const NO_ARG: u32 = 0xffffffffu;
const BIAS: u32 = 1u;
const MASKED: u32 = 2u;
const WG: u32 = 64u;

struct Params {
    n: u32,       // images
    flags: u32,   // 1: bias (forward: add it; backward: write its gradient); 2: mask the weights
    chunks: u32,  // backward: partial sums per output channel
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// conv_pool_fwd: x ; conv_pool_wgrad: x ; conv_pool_wsum: the partial sums
// conv_pool_fwd: x ; conv_pool_wgrad: x ; conv_pool_wsum: the partial sums ; conv_pool_wprep: w
@group(0) @binding(1) var<storage, read> src: array<f32>;
// conv_pool_wgrad: the pooled output gradient ; conv_pool_wprep: the mask (read with flag 2)
@group(0) @binding(2) var<storage, read> b2: array<f32>;
// conv_pool_wprep: the bias (read with flag 1)
@group(0) @binding(3) var<storage, read> b3: array<f32>;
// conv_pool_fwd: pooled output ; conv_pool_wgrad: partial sums ; conv_pool_wsum: weight
// gradient ; conv_pool_wprep: the masked weights and the bias, for conv_pool_fwd's binding 7
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// conv_pool_fwd: argmax (written) ; conv_pool_wgrad: argmax (read)
@group(0) @binding(5) var<storage, read_write> arg: array<u32>;
// conv_pool_wsum: bias gradient (written with flag 1)
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;
// conv_pool_fwd: the masked weights as a uniform buffer: every invocation reads the same weight
// at the same time, and lavapipe loads a uniform once where it loads a storage buffer lane by
// lane (a LeNet-5 conv1 forward 60 ms from storage, 8 ms with constant weights).
@group(0) @binding(7) var<uniform> wu: array<vec4<f32>, WU4>;
// conv_pool_fwd, conv_pool_wgrad: the input as a texture (read with TEX).
@group(0) @binding(8) var srct: texture_storage_2d<rgba32float, read>;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// x[ci, img, iy, ix], 0 outside the image (the load is clamped, then discarded: on lavapipe a
// branch around a load costs more than the load).
fn input_at(ci: u32, img: u32, iy: i32, ix: i32) -> f32 {
    if (TEX) {
        return input_texel(ci, img, iy, ix >> 2u)[ix & 3];
    }
    let inside = iy >= 0 && iy < i32(H) && ix >= 0 && ix < i32(W);
    let j = ((ci * p.n + img) * H + u32(clamp(iy, 0, i32(H) - 1))) * W
        + u32(clamp(ix, 0, i32(W) - 1));
    return select(0.0, src[j], inside);
}

// The masked weight wi (conv_pool_wprep's output).
fn weight(wi: u32) -> f32 {
    return wu[wi / 4u][wi % 4u];
}

// Texel x4 of input row iy (x[ci, img, iy, 4 * x4 .. 4 * x4 + 3]), zeros outside the image (the
// load is clamped, then discarded).
fn input_texel(ci: u32, img: u32, iy: i32, x4: i32) -> vec4<f32> {
    let inside = iy >= 0 && iy < i32(H) && x4 >= 0 && x4 < i32(W4);
    let at = vec2<u32>(img * W4 + u32(clamp(x4, 0, i32(W4) - 1)), ci * H + u32(clamp(iy, 0, i32(H) - 1)));
    return select(vec4<f32>(0.0), textureLoad(srct, at), inside);
}

// Value s (0 to 3) of a, b, c, d: a patch value at shift s within its row's texels.
fn pick4(s: u32, a: f32, b: f32, c: f32, d: f32) -> f32 {
    return select(select(a, b, s == 1u), select(c, d, s == 3u), s >= 2u);
}

// One window cell of the pooling: convolution output (cy, cx) of channel co, value v, taken
// when inside the output and above the best so far (the first maximum in window order).
fn cell(co: u32, img: u32, cy: i32, cx: i32, v: f32, best: ptr<function, f32>, at: ptr<function, u32>, found: ptr<function, bool>) {
    let valid = cy >= 0 && cy < i32(HC) && cx >= 0 && cx < i32(WC);
    let take = valid && (!*found || v > *best);
    *best = select(*best, v, take);
    *at = select(*at, ((co * p.n + img) * HC + u32(max(cy, 0))) * WC + u32(max(cx, 0)), take);
    *found = *found || valid;
}

// ---- conv_pool_fwd: one invocation per pooled position (img, py, px), every output channel.
// The input patch under the pooling window's convolutions is loaded once; the weights are the
// same for every invocation (uniform loads).
@compute @workgroup_size(64)
fn conv_pool_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // No early return: a branch on the invocation index would make everything after it
    // divergent, and lavapipe would then load the weights lane by lane instead of once. The
    // invocations past the end compute the last position again and store nothing.
    let total = p.n * HO * WO;
    let live = linear_index(gid, nwg) < total;
    let i = min(linear_index(gid, nwg), total - 1u);
    let img = i / (HO * WO);
    let py = (i / WO) % HO;
    let px = i % WO;
    // The first convolution output of the window, and the first input row/column it reads.
    let cy0 = i32(py * PS) - i32(PPT);
    let cx0 = i32(px * PS) - i32(PPL);
    let iy0 = cy0 * i32(CS) - i32(CPT);
    let ix0 = cx0 * i32(CS) - i32(CPL);
    // BEGIN PATCH
    var pv: array<f32, PATCH>;
    for (var ci = 0u; ci < CIN; ci++) {
        for (var r = 0u; r < PH; r++) {
            for (var c = 0u; c < PW; c++) {
                pv[(ci * PH + r) * PW + c] = input_at(ci, img, iy0 + i32(r), ix0 + i32(c));
            }
        }
    }
    // END PATCH
    for (var co = 0u; co < COUT; co++) {
        let b = weight(TAPS * COUT + co);
        var best = 0.0;
        var at = NO_ARG;
        var found = false;
        // BEGIN CELLS
        for (var qy = 0u; qy < PK; qy++) {
            for (var qx = 0u; qx < PK; qx++) {
                var acc = 0.0;
                for (var ky = 0u; ky < CK; ky++) {
                    for (var kx = 0u; kx < CK; kx++) {
                        for (var ci = 0u; ci < CIN; ci++) {
                            let t = (ky * CK + kx) * CIN + ci;
                            acc += weight(t * COUT + co) * pv[(ci * PH + qy * CS + ky) * PW + qx * CS + kx];
                        }
                    }
                }
                cell(co, img, cy0 + i32(qy), cx0 + i32(qx), acc + b, &best, &at, &found);
            }
        }
        // END CELLS
        let o = ((co * p.n + img) * HO + py) * WO + px;
        if (live) {
            out[o] = max(best, 0.0);
            arg[o] = select(NO_ARG, at, best > 0.0);
        }
    }
}

// ---- conv_pool_wgrad: partial sums of the weight and bias gradients. Invocation `chunk` visits
// the pooled positions chunk, chunk + chunks, ...; at each it loads the input patch under the
// pooling window once and, for every output channel, adds the channel's output gradient times
// the patch's taps under the convolution output at its argmax (none where it is NO_ARG): the
// loads of a position are shared by all channels, and the accumulators of all channels are the
// invocation's own (lavapipe keeps them in its private memory, where a load is one vector
// access, not one per lane). out[(chunk * COUT + co) * TAPS1 + t]: tap t < TAPS, the bias at TAPS.
@compute @workgroup_size(64)
fn conv_pool_wgrad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.chunks) {
        return;
    }
    let total = p.n * HO * WO;
    // BEGIN ACC
    var acc: array<f32, ACC>;
    for (var k = 0u; k < ACC; k++) {
        acc[k] = 0.0;
    }
    // END ACC
    for (var pos = i; pos < total; pos += p.chunks) {
        let img = pos / (HO * WO);
        let cy0 = i32(((pos / WO) % HO) * PS) - i32(PPT);
        let cx0 = i32((pos % WO) * PS) - i32(PPL);
        let iy0 = cy0 * i32(CS) - i32(CPT);
        let ix0 = cx0 * i32(CS) - i32(CPL);
        // BEGIN ADD
        for (var co = 0u; co < COUT; co++) {
            let o = co * total + pos;
            let a = arg[o];
            let live = a != NO_ARG;
            let g = select(0.0, b2[o], live);
            // The argmax's row and column in the window (any cell where it is NO_ARG: g is 0).
            let qy = u32(clamp(i32((a / WC) % HC) - cy0, 0, i32(PK) - 1));
            let qx = u32(clamp(i32(a % WC) - cx0, 0, i32(PK) - 1));
            for (var ky = 0u; ky < CK; ky++) {
                for (var kx = 0u; kx < CK; kx++) {
                    for (var ci = 0u; ci < CIN; ci++) {
                        let t = (ky * CK + kx) * CIN + ci;
                        let v = input_at(ci, img, iy0 + i32(qy * CS + ky), ix0 + i32(qx * CS + kx));
                        acc[co * TAPS1 + t] += g * v;
                    }
                }
            }
            acc[co * TAPS1 + TAPS] += g;
        }
        // END ADD
    }
    let base = i * ACC;
    // BEGIN STORE
    for (var k = 0u; k < ACC; k++) {
        out[base + k] = acc[k];
    }
    // END STORE
}

// ---- conv_pool_wprep: out[i] = w[i] (times mask[i] with flag 2), then out[TAPS * COUT + co] =
// bias[co] (0 without flag 1): conv_pool_fwd's uniform weights.
@compute @workgroup_size(64)
fn conv_pool_wprep(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= TAPS1 * COUT) {
        return;
    }
    var v = 0.0;
    if (i < TAPS * COUT) {
        v = src[i];
        if ((p.flags & MASKED) != 0u) {
            v = v * b2[i];
        }
    } else if ((p.flags & BIAS) != 0u) {
        v = b3[i - TAPS * COUT];
    }
    out[i] = v;
}

// ---- conv_pool_wsum: invocation (t, co) sums the partials of conv_pool_wgrad into the weight
// gradient dw[t * COUT + co] (t < TAPS) or the bias gradient (t = TAPS, with flag 1).
@compute @workgroup_size(64)
fn conv_pool_wsum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= TAPS1 * COUT) {
        return;
    }
    let t = i / COUT;
    let co = i % COUT;
    var s = 0.0;
    for (var chunk = 0u; chunk < p.chunks; chunk++) {
        s += src[(chunk * COUT + co) * TAPS1 + t];
    }
    if (t < TAPS) {
        out[t * COUT + co] = s;
    } else if ((p.flags & BIAS) != 0u) {
        out2[co] = s;
    }
}

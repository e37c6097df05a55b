// 2-D convolution, direct (an implicit GEMM: every output is the dot product of a weight column
// with the input patch gathered on the fly; no im2col buffer). The portable form: one invocation
// per output value, no workgroup memory, no subgroups. CPU twin: src/cpu/conv.rs.
//
// Layouts: activations channel-major [C, N, H, W] (x[((c * n + img) * h + y) * w + x]);
// weights [k, k, cin, cout], flat ((ky * k + kx) * cin + ci) * cout + co (the matrix
// [k*k*cin, cout], as a dense [in, out] layer). Padding: pad_t rows above and pad_l columns to
// the left (TensorFlow SAME puts the extra one at the bottom/right), out-of-image taps read 0.
// Binding 0 of group 0 is the uniform Params below; the others are listed at each entry.
// 1-D kernels linearise global_invocation_id over (x, y), so totals may exceed 65535 * 256.

struct Params {
    n: u32,       // images
    h: u32,       // input height
    w: u32,       // input width
    cin: u32,     // input channels
    cout: u32,    // output channels
    ho: u32,      // output height
    wo: u32,      // output width
    k: u32,       // kernel height and width
    stride: u32,
    pad_t: u32,
    pad_l: u32,
    flags: u32,   // 1: add bias (forward) / accumulate into the output (gradients); 2: apply mask
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;
const BIAS_OR_ACC: u32 = 1u;
const MASKED: u32 = 2u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

fn weight(wi: u32) -> f32 {
    if ((p.flags & MASKED) != 0u) {
        return wt[wi] * mask[wi];
    }
    return wt[wi];
}

// ---- conv_fwd: y[co, img, oy, ox] = bias[co] + sum_{ky, kx, ci} w * mask * x[ci, img, tap].
// 1 read x ; 2 read w ; 3 read mask (any buffer when unmasked) ; 4 read bias (any buffer when
// flags lacks 1) ; 5 rw y
@group(0) @binding(1) var<storage, read> xin: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> aux: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn conv_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    let plane = p.ho * p.wo;
    if (i >= p.cout * p.n * plane) {
        return;
    }
    let co = i / (p.n * plane);
    let img = (i / plane) % p.n;
    let oy = (i % plane) / p.wo;
    let ox = i % p.wo;
    var acc = 0.0;
    if ((p.flags & BIAS_OR_ACC) != 0u) {
        acc = aux[co];
    }
    for (var ky = 0u; ky < p.k; ky++) {
        let iy = i32(oy * p.stride + ky) - i32(p.pad_t);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.k; kx++) {
            let ix = i32(ox * p.stride + kx) - i32(p.pad_l);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let xoff = (img * p.h + u32(iy)) * p.w + u32(ix);
            let wbase = (ky * p.k + kx) * p.cin;
            for (var ci = 0u; ci < p.cin; ci++) {
                acc += weight((wbase + ci) * p.cout + co) * xin[ci * p.n * p.h * p.w + xoff];
            }
        }
    }
    out[i] = acc;
}

// ---- conv_dgrad: dx[ci, img, iy, ix] (+)= sum over the outputs whose window covers it of
// w * mask * dy[co, img, oy, ox] (the transposed convolution, as a gather: no atomics).
// 1 read dy ; 2 read w ; 3 read mask ; 4 unused (any buffer) ; 5 rw dx

@compute @workgroup_size(256)
fn conv_dgrad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    let plane = p.h * p.w;
    if (i >= p.cin * p.n * plane) {
        return;
    }
    let ci = i / (p.n * plane);
    let img = (i / plane) % p.n;
    let iy = (i % plane) / p.w;
    let ix = i % p.w;
    var acc = 0.0;
    for (var ky = 0u; ky < p.k; ky++) {
        // oy * stride + ky = iy + pad_t
        let ty = i32(iy + p.pad_t) - i32(ky);
        if (ty < 0 || (u32(ty) % p.stride) != 0u) {
            continue;
        }
        let oy = u32(ty) / p.stride;
        if (oy >= p.ho) {
            continue;
        }
        for (var kx = 0u; kx < p.k; kx++) {
            let tx = i32(ix + p.pad_l) - i32(kx);
            if (tx < 0 || (u32(tx) % p.stride) != 0u) {
                continue;
            }
            let ox = u32(tx) / p.stride;
            if (ox >= p.wo) {
                continue;
            }
            let wbase = ((ky * p.k + kx) * p.cin + ci) * p.cout;
            let dbase = (img * p.ho + oy) * p.wo + ox;
            for (var co = 0u; co < p.cout; co++) {
                acc += weight(wbase + co) * xin[co * p.n * p.ho * p.wo + dbase];
            }
        }
    }
    if ((p.flags & BIAS_OR_ACC) != 0u) {
        acc += out[i];
    }
    out[i] = acc;
}

// ---- conv_wgrad: dw[ky, kx, ci, co] (+)= sum_{img, oy, ox} dy[co, img, oy, ox] * x[ci, img, tap]
// at every position (the dense gradient dL/d(mask * w); the mask is not applied).
// 1 read x ; 2 read dy ; 3 unused ; 4 unused ; 5 rw dw
// (x and dy arrive in bindings 1 and 2: `xin` and `wt`.)

@compute @workgroup_size(256)
fn conv_wgrad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.k * p.k * p.cin * p.cout) {
        return;
    }
    let co = i % p.cout;
    let ci = (i / p.cout) % p.cin;
    let kx = (i / (p.cout * p.cin)) % p.k;
    let ky = i / (p.cout * p.cin * p.k);
    var acc = 0.0;
    for (var img = 0u; img < p.n; img++) {
        for (var oy = 0u; oy < p.ho; oy++) {
            let iy = i32(oy * p.stride + ky) - i32(p.pad_t);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            for (var ox = 0u; ox < p.wo; ox++) {
                let ix = i32(ox * p.stride + kx) - i32(p.pad_l);
                if (ix < 0 || ix >= i32(p.w)) {
                    continue;
                }
                let d = wt[((co * p.n + img) * p.ho + oy) * p.wo + ox];
                acc += d * xin[((ci * p.n + img) * p.h + u32(iy)) * p.w + u32(ix)];
            }
        }
    }
    if ((p.flags & BIAS_OR_ACC) != 0u) {
        acc += out[i];
    }
    out[i] = acc;
}

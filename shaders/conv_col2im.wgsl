// The col2im input gradient's last step (src/gpu/conv_tex.rs, `DgradForm::Col2im`). The texture
// GEMM leaves, for a chunk of whole images,
//   cols[kk, q'] = Σ_co (w ⊙ mask)[kk, co] · dy[co, q0' + q']
// (kk = (ky·k + kx)·cin + ci, q' = (img − img0, oy, ox) an output position of the chunk, row
// stride `ldc`); every input position then sums the taps that read it:
//   dx[ci, img, iy, ix] (+)= Σ_{ky, kx} cols[(ky·k + kx)·cin + ci, (img − img0, oy, ox)]
// over the taps with oy·s + ky − pad_t = iy and ox·s + kx − pad_l = ix inside the output.
// CPU twin: cpu::conv::conv2d_input_grad.
//
// Bindings (group 0):
//   0 uniform Col2imParams
//   1 storage read cols : [K, ldc]
//   2 storage rw   dx   : [cin, N, H, W] as vec4s (N·H·W a multiple of 4)

struct Col2imParams {
    // The chunk's first input position (img0 · H · W).
    q0: u32,
    // vec4s of one channel of dx in the chunk.
    texels: u32,
    // Row stride of cols: the chunk's output positions.
    ldc: u32,
    // vec4s of one channel of dx in all (N · H · W / 4).
    plane4: u32,
}

// The geometry as pipeline constants (divisions by them are multiplies on lavapipe).
override H: u32;
override W: u32;
override HO: u32;
override WO: u32;
override K: u32;
override STRIDE: u32;
override PAD_T: u32;
override PAD_L: u32;
override CIN: u32;
override ACCUMULATE: bool = false;

@group(0) @binding(0) var<uniform> p: Col2imParams;
@group(0) @binding(1) var<storage, read> cols: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<vec4<f32>>;

// One invocation per 4 consecutive input positions of one channel; every tap's load is
// branch-free (its address clamped into the output, its value zeroed when it misses).
@compute @workgroup_size(64)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= CIN * p.texels) {
        return;
    }
    let ci = i / p.texels;
    let t = i % p.texels;
    let s = i32(STRIDE);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let q = 4u * t + j;
        let img = q / (H * W);
        let r = q % (H * W);
        let ty0 = i32(r / W) + i32(PAD_T);
        let tx0 = i32(r % W) + i32(PAD_L);
        let base = img * HO * WO;
        var acc = 0.0;
        for (var ky = 0u; ky < K; ky++) {
            let ty = ty0 - i32(ky);
            let oy = ty / s;
            let row_hit = ty >= 0 && ty % s == 0 && oy < i32(HO);
            let at_y = base + u32(clamp(oy, 0, i32(HO) - 1)) * WO;
            for (var kx = 0u; kx < K; kx++) {
                let tx = tx0 - i32(kx);
                let ox = tx / s;
                let hit = row_hit && tx >= 0 && tx % s == 0 && ox < i32(WO);
                let kk = (ky * K + kx) * CIN + ci;
                let c = cols[kk * p.ldc + at_y + u32(clamp(ox, 0, i32(WO) - 1))];
                acc += select(0.0, c, hit);
            }
        }
        v[j] = acc;
    }
    let o = ci * p.plane4 + p.q0 / 4u + t;
    if (ACCUMULATE) {
        dx[o] = dx[o] + v;
    } else {
        dx[o] = v;
    }
}

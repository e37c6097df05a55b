// The image layers besides convolution: batch normalisation (per-channel reductions, forward
// and backward), max pooling (with its argmax) and average pooling forward and backward, global
// average pooling, flatten and its inverse, counter-based dropout and the residual add, and the
// fused forms the model builder picks (batch norm + ReLU [+ dropout] forward and backward in the
// batch norm's own passes, ReLU + max pooling in the pooling's). Portable forms: no subgroups;
// the reductions use one workgroup per channel. CPU twins: src/cpu/conv.rs (the fused kernels
// are checked against the unfused twins composed).
//
// Activations are channel-major [C, N, H, W]: x[((c * n + img) * h + y) * w + x]; a batch
// norm's channel is the contiguous run x[c * m .. (c + 1) * m] with m = N*H*W.
// Binding 0 of group 0 is the uniform Params below; the others are listed at each entry.
// 1-D kernels linearise global_invocation_id over (x, y), so totals may exceed 65535 * 256.

struct Params {
    c: u32,       // channels
    n: u32,       // images
    h: u32,       // input height
    w: u32,       // input width
    ho: u32,      // output height
    wo: u32,      // output width
    k: u32,       // pooling window
    stride: u32,
    pad_t: u32,
    pad_l: u32,
    flags: u32,   // batch norm: 1 = training (batch statistics); dropout: the layer id
    seed: u32,    // dropout: run seed
    step: u32,    // dropout: step
    threshold: u32, // dropout: hash values below it are dropped
    f0: f32,      // batch norm: momentum; dropout: the kept units' scale
    f1: f32,      // batch norm: epsilon
}

// The geometry, as constants of each pipeline (src/gpu/image.rs sets them from the uniform's
// copies, which the kernels do not read): a division by a constant is a multiply and a shift,
// where a division by a uniform is a loop over the lanes on lavapipe.
override G_C: u32;
override G_N: u32;
override G_H: u32;
override G_W: u32;
override G_HO: u32;
override G_WO: u32;
override G_K: u32;
override G_STRIDE: u32;
override G_PAD_T: u32;
override G_PAD_L: u32;

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> d: array<f32>;
// Bindings 6 and 7 (after the argmax at 5): the batch norm backward's further read inputs.
@group(0) @binding(6) var<storage, read> e: array<f32>;
@group(0) @binding(7) var<storage, read> e2: array<f32>;

var<workgroup> red0: array<f32, 256>;
var<workgroup> red1: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

// Sums red0 and red1 over the workgroup; the totals end in red0[0] and red1[0].
fn reduce2(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (lid < s) {
            red0[lid] += red0[lid + s];
            red1[lid] += red1[lid + s];
        }
    }
    workgroupBarrier();
}

// Combines the (count, mean, sum of squared deviations) triples in red0, red1, red2 over the
// workgroup with Chan et al.'s pairwise update; the totals end in red0[0], red1[0], red2[0].
fn reduce_moments(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (lid < s && red0[lid + s] > 0.0) {
            let na = red0[lid];
            let n = na + red0[lid + s];
            let f = red0[lid + s] / n;
            let delta = red1[lid + s] - red1[lid];
            red1[lid] += delta * f;
            red2[lid] += red2[lid + s] + delta * delta * na * f;
            red0[lid] = n;
        }
    }
    workgroupBarrier();
}

// A batch norm's stats buffer holds 4C values: (mean, var) per channel at 2c, 2c+1 as the
// forward used them, then the backward's (sum dy*xhat, sum dy) per channel at 2C + 2c, +1.

// Evaluation: stats := the running statistics of channel ch.
fn bn_stats_running(ch: u32, lid: u32) {
    if (lid == 0u) {
        c[2u * ch] = d[2u * ch];
        c[2u * ch + 1u] = d[2u * ch + 1u];
    }
}

// Training: combines every invocation's (count, mean, sum of squared deviations) of channel ch
// (m elements), writes the batch statistics and moves the running ones.
fn bn_stats_finish(ch: u32, lid: u32, m: u32, own: vec3<f32>) {
    red0[lid] = own.x;
    red1[lid] = own.y;
    red2[lid] = own.z;
    reduce_moments(lid);
    if (lid == 0u) {
        let batch_mean = red1[0];
        let var_ = red2[0] / f32(m);
        c[2u * ch] = batch_mean;
        c[2u * ch + 1u] = var_;
        var unbiased = var_;
        if (m > 1u) {
            unbiased = var_ * f32(m) / f32(m - 1u);
        }
        d[2u * ch] = p.f0 * d[2u * ch] + (1.0 - p.f0) * batch_mean;
        d[2u * ch + 1u] = p.f0 * d[2u * ch + 1u] + (1.0 - p.f0) * unbiased;
    }
}

// ---- bn_stats: one workgroup per channel (workgroup id = channel). Training (flags 1): the
// batch mean and biased variance (one pass over x) into stats[2c], stats[2c+1], and the running
// statistics move: running = f0 * running + (1 - f0) * batch (the variance with Bessel's
// correction). Evaluation (flags 0): stats := the running statistics.
// 1 read x ; 2 unused (any buffer) ; 3 rw stats [4C] ; 4 rw running [2C] (mean, var per channel)

@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let ch = wid.x;
    let lid = lid3.x;
    let m = G_N * G_H * G_W;
    if ((p.flags & 1u) == 0u) {
        bn_stats_running(ch, lid);
        return;
    }
    // Welford over this invocation's elements, then Chan's pairwise combination: one read of x.
    var cnt = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    let r = lane_block(m, lid);
    for (var i = r.x; i < r.y; i += LANES) {
        let v = a[ch * m + i];
        cnt += 1.0;
        let dv = v - mean;
        mean += dv / cnt;
        m2 += dv * (v - mean);
    }
    bn_stats_finish(ch, lid, m, vec3<f32>(cnt, mean, m2));
}

// ---- Fused epilogues, chosen per pipeline by G_EPI (0: none): what follows a batch norm (or a
// max pooling) in the same pass. Bit 0: a ReLU. Bit 1: a dropout after it, with the keep mask
// of the dropout kernel below for flat element i (p.seed, p.step, p.flags = layer id,
// p.threshold, p.f0 = the kept units' scale). Bit 2 (bn_bwd_apply): e2[i] is added to dx (the
// other consumer's gradient of a residual block's input). Bit 3 (the max poolings): a flatten
// after the pooling, fused: its output, argmax and output gradient are in the flattened layout
// [C * HO * WO, N] (feature-major, SPEC §8) instead of [C, N, HO, WO].
override G_EPI: u32 = 0u;
const EPI_RELU: u32 = 1u;
const EPI_DROPOUT: u32 = 2u;
const EPI_PLUS: u32 = 4u;
const EPI_FLAT: u32 = 8u;

// The batch norm's output for input value xv: one expression for the forward and for the
// backward's recomputation of the ReLU mask, so the two agree bit for bit.
fn bn_z(xv: f32, mean: f32, inv_std: f32, gamma: f32, beta: f32) -> f32 {
    return gamma * (xv - mean) * inv_std + beta;
}

// y from the batch norm's output z at flat index i.
fn epilogue(z: f32, i: u32) -> f32 {
    var v = z;
    if ((G_EPI & EPI_RELU) != 0u) {
        v = max(v, 0.0);
    }
    if ((G_EPI & EPI_DROPOUT) != 0u) {
        v = select(v * p.f0, 0.0, dropped(i));
    }
    return v;
}

// dL/dz from dL/dy at flat index i (z the batch norm's output there).
fn epilogue_grad(z: f32, dy: f32, i: u32) -> f32 {
    var g = dy;
    if ((G_EPI & EPI_DROPOUT) != 0u) {
        g = select(g * p.f0, 0.0, dropped(i));
    }
    if ((G_EPI & EPI_RELU) != 0u) {
        g = select(0.0, g, z > 0.0);
    }
    return g;
}

// The per-channel element kernels (bn_apply, bn_bwd_apply and their vec4 forms): workgroup g
// covers RUN * WG consecutive items (elements, or vec4s) of one channel, each invocation RUN of
// them (see channel_run), so a channel's statistics are loaded once per RUN items, not per element (every
// storage load is a per-lane loop on lavapipe). src/gpu/image.rs dispatches channels times
// ceil(items per channel / (RUN * WG)) workgroups.
const RUN: u32 = 8u;

// Channel ch's batch statistics and bn_bwd_reduce's sums (stats in d, [4C]) and gamma, beta
// (in b), as the per-element kernels read them once per channel.
struct Chan {
    mean: f32,
    inv_std: f32,
    gamma: f32,
    beta: f32,
    sum_dy_xh: f32,
    sum_dy: f32,
}

fn chan(ch: u32) -> Chan {
    return Chan(d[2u * ch], 1.0 / sqrt(d[2u * ch + 1u] + p.f1), b[2u * ch], b[2u * ch + 1u],
                d[2u * G_C + 2u * ch], d[2u * G_C + 2u * ch + 1u]);
}

// How the invocations walk a channel's items. On lavapipe a subgroup (8 invocations at 256
// bits) runs its whole loop before the next subgroup starts, so each run of LANES consecutive
// invocations takes one contiguous block of items, its lanes LANES apart: the run streams
// through memory, where lanes WG apart made each of its loads land a page beyond the last. On a
// GPU a warp's loads stay in runs of LANES consecutive items.
const LANES: u32 = 8u;

// The run of one invocation of a per-element kernel: workgroup g covers RUN * WG consecutive
// items of channel g / per (`len` items per channel, `per` workgroups each), each run of LANES
// invocations RUN * LANES of them; the invocation every LANES-th from `first` to before `stop`.
// ch is G_C or more past the last channel.
struct Run {
    ch: u32,
    first: u32,
    stop: u32,
}

fn channel_run(g: u32, len: u32, lid: u32) -> Run {
    let per = (len + WG * RUN - 1u) / (WG * RUN);
    let ch = g / per;
    let block = ch * len + (g % per) * WG * RUN + lid / LANES * RUN * LANES;
    return Run(ch, block + lid % LANES, min(ch * len + len, block + RUN * LANES));
}

// A reduction's walk (a workgroup per channel of `len` items): [x, y) of invocation lid's
// contiguous block, every LANES-th item from x.
fn lane_block(len: u32, lid: u32) -> vec2<u32> {
    let per = (len + WG - 1u) / WG * LANES;
    let lo = min(lid / LANES * per, len);
    return vec2<u32>(lo + lid % LANES, min(lo + per, len));
}

// The batch norm's input gradient at element i (x value xv, output gradient dy) of the channel
// cs describes.
fn bn_dx(cs: Chan, xv: f32, dy: f32, i: u32) -> f32 {
    let m = G_N * G_H * G_W;
    let k = cs.gamma * cs.inv_std / f32(m);
    let xhat = (xv - cs.mean) * cs.inv_std;
    let dz = epilogue_grad(bn_z(xv, cs.mean, cs.inv_std, cs.gamma, cs.beta), dy, i);
    return k * (f32(m) * dz - cs.sum_dy - xhat * cs.sum_dy_xh);
}

// ---- bn_apply: y = epilogue(gamma * (x - mean) / sqrt(var + f1) + beta) with the statistics
// bn_stats left in stats. 1 read x ; 2 read gamma_beta [2C] (gamma[c], beta[c] at 2c, 2c+1) ;
// 3 rw y ; 4 rw stats [4C]

@compute @workgroup_size(256)
fn bn_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = channel_run(wid.x + wid.y * nwg.x, G_N * G_H * G_W, lid3.x);
    if (r.ch >= G_C) {
        return;
    }
    let cs = chan(r.ch);
    for (var i = r.first; i < r.stop; i += LANES) {
        c[i] = epilogue(bn_z(a[i], cs.mean, cs.inv_std, cs.gamma, cs.beta), i);
    }
}

// ---- The per-element kernels' vec4 forms (bn_apply_v4, bn_bwd_apply_v4, add_v4), used where
// every channel's run is whole vec4s (N·H·W a multiple of 4; for add, the count): on lavapipe a
// storage access at a per-lane address is a loop over the lanes, so one vec4 access takes a
// quarter of four scalar ones' iterations. They compute each element exactly as the scalar forms
// do (same bits). Views of bindings 1, 3, 6 and 7 as vec4s; an entry uses one view of each.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> e4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> e24: array<vec4<f32>>;

@compute @workgroup_size(256)
fn bn_apply_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = channel_run(wid.x + wid.y * nwg.x, G_N * G_H * G_W / 4u, lid3.x);
    if (r.ch >= G_C) {
        return;
    }
    let cs = chan(r.ch);
    for (var i = r.first; i < r.stop; i += LANES) {
        let xv = a4[i];
        var v: vec4<f32>;
        for (var j = 0u; j < 4u; j++) {
            v[j] = epilogue(bn_z(xv[j], cs.mean, cs.inv_std, cs.gamma, cs.beta), 4u * i + j);
        }
        c4[i] = v;
    }
}

@compute @workgroup_size(256)
fn bn_bwd_apply_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = channel_run(wid.x + wid.y * nwg.x, G_N * G_H * G_W / 4u, lid3.x);
    if (r.ch >= G_C) {
        return;
    }
    let cs = chan(r.ch);
    for (var i = r.first; i < r.stop; i += LANES) {
        let xv = a4[i];
        let dy = e4[i];
        var v: vec4<f32>;
        for (var j = 0u; j < 4u; j++) {
            v[j] = bn_dx(cs, xv[j], dy[j], 4u * i + j);
        }
        if ((G_EPI & EPI_PLUS) != 0u) {
            v += e24[i];
        }
        c4[i] = v;
    }
}

// ---- The two reductions' vec4 forms (bn_stats_v4, bn_bwd_reduce_v4), where every channel's run
// is whole vec4s: the same bindings, one vec4 load per 4 elements. bn_stats_v4 merges each
// vec4's own (mean, sum of squared deviations) into the invocation's running triple (Chan's
// update, one division per 4 elements where the scalar form divides per element);
// bn_bwd_reduce_v4 sums 4 elements per load. Their sums run in another order than the scalar
// forms', so their results differ from those in the last bits.
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn bn_stats_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let ch = wid.x;
    let lid = lid3.x;
    let m = G_N * G_H * G_W;
    let m4 = m / 4u;
    if ((p.flags & 1u) == 0u) {
        bn_stats_running(ch, lid);
        return;
    }
    var cnt = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    let r = lane_block(m4, lid);
    for (var i = r.x; i < r.y; i += LANES) {
        let v = a4[ch * m4 + i];
        let vm = 0.25 * ((v.x + v.y) + (v.z + v.w));
        let dv = v - vec4<f32>(vm);
        let n = cnt + 4.0;
        let f = 4.0 / n;
        let delta = vm - mean;
        mean += delta * f;
        m2 += dot(dv, dv) + delta * delta * cnt * f;
        cnt = n;
    }
    bn_stats_finish(ch, lid, m, vec3<f32>(cnt, mean, m2));
}

@compute @workgroup_size(256)
fn bn_bwd_reduce_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let ch = wid.x;
    let lid = lid3.x;
    let m4 = G_N * G_H * G_W / 4u;
    let mean = d[2u * ch];
    let inv_std = 1.0 / sqrt(d[2u * ch + 1u] + p.f1);
    var gamma = 0.0;
    var beta = 0.0;
    if (G_EPI != 0u) {
        gamma = e[2u * ch];
        beta = e[2u * ch + 1u];
    }
    var sdy = 0.0;
    var sdx = 0.0;
    let r = lane_block(m4, lid);
    for (var i = r.x; i < r.y; i += LANES) {
        let at = ch * m4 + i;
        let xv = a4[at];
        let dy = b4[at];
        var dz: vec4<f32>;
        for (var j = 0u; j < 4u; j++) {
            dz[j] = epilogue_grad(bn_z(xv[j], mean, inv_std, gamma, beta), dy[j], 4u * at + j);
        }
        sdy += (dz.x + dz.y) + (dz.z + dz.w);
        sdx += dot(dz, (xv - vec4<f32>(mean)) * inv_std);
    }
    bn_bwd_reduce_finish(ch, lid, sdx, sdy);
}

// ---- bn_bwd_reduce: one workgroup per channel: dgamma = sum(dz * xhat), dbeta = sum(dz), with
// dz = dL/dz from dy through the epilogue (z and the ReLU mask recomputed from x) and xhat
// recomputed from x and the batch statistics; written to grads[2c], grads[2c+1] (the layout of
// gamma_beta) and to stats[2C + 2c], [2C + 2c + 1] for bn_bwd_apply.
// 1 read x ; 2 read dy ; 3 rw grads [2C] ; 4 rw stats [4C] ; 5 unused ; 6 read gamma_beta

// Sums every invocation's (sum dz * xhat, sum dz) of channel ch into grads and stats.
fn bn_bwd_reduce_finish(ch: u32, lid: u32, sdx: f32, sdy: f32) {
    red0[lid] = sdx;
    red1[lid] = sdy;
    reduce2(lid);
    if (lid == 0u) {
        c[2u * ch] = red0[0];
        c[2u * ch + 1u] = red1[0];
        d[2u * G_C + 2u * ch] = red0[0];
        d[2u * G_C + 2u * ch + 1u] = red1[0];
    }
}

@compute @workgroup_size(256)
fn bn_bwd_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let ch = wid.x;
    let lid = lid3.x;
    let m = G_N * G_H * G_W;
    let mean = d[2u * ch];
    let inv_std = 1.0 / sqrt(d[2u * ch + 1u] + p.f1);
    var gamma = 0.0;
    var beta = 0.0;
    if (G_EPI != 0u) {
        gamma = e[2u * ch];
        beta = e[2u * ch + 1u];
    }
    var sdy = 0.0;
    var sdx = 0.0;
    let r = lane_block(m, lid);
    for (var i = r.x; i < r.y; i += LANES) {
        let at = ch * m + i;
        let xv = a[at];
        let dz = epilogue_grad(bn_z(xv, mean, inv_std, gamma, beta), b[at], at);
        sdy += dz;
        sdx += dz * (xv - mean) * inv_std;
    }
    bn_bwd_reduce_finish(ch, lid, sdx, sdy);
}

// ---- bn_bwd_apply: dx = gamma * inv_std / m * (m * dz - sum(dz) - xhat * sum(dz * xhat))
// [+ e2], dz from dy through the epilogue as in bn_bwd_reduce. 1 read x ; 2 read gamma_beta ;
// 3 rw dx ; 4 rw stats [4C]: the batch statistics (mean, var) at 2c, 2c+1 and bn_bwd_reduce's
// sums (dgamma, dbeta) at 2C + 2c, +1 ; 5 unused ; 6 read dy ; 7 read the gradient added
// (EPI_PLUS; else unused).

@compute @workgroup_size(256)
fn bn_bwd_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid3: vec3<u32>) {
    let r = channel_run(wid.x + wid.y * nwg.x, G_N * G_H * G_W, lid3.x);
    if (r.ch >= G_C) {
        return;
    }
    let cs = chan(r.ch);
    for (var i = r.first; i < r.stop; i += LANES) {
        var v = bn_dx(cs, a[i], e[i], i);
        if ((G_EPI & EPI_PLUS) != 0u) {
            v += e2[i];
        }
        c[i] = v;
    }
}

// ---- Pooling. The input position of tap (ky, kx) of output (oy, ox), or -1 in the padding.
fn tap(oy: u32, ox: u32, ky: u32, kx: u32) -> i32 {
    let iy = i32(oy * G_STRIDE + ky) - i32(G_PAD_T);
    let ix = i32(ox * G_STRIDE + kx) - i32(G_PAD_L);
    if (iy < 0 || iy >= i32(G_H) || ix < 0 || ix >= i32(G_W)) {
        return -1;
    }
    return iy * i32(G_W) + ix;
}

@group(0) @binding(5) var<storage, read_write> arg: array<u32>;

// No argmax: a fused ReLU zeroed the output, so no input gets its gradient.
const NO_ARG: u32 = 0xffffffffu;

// ---- max_pool_fwd: y and, per output, the flat input index of the first maximum in window
// order. With EPI_RELU, the pooling of relu(x) in the same pass: y = max(max(x), 0) and the
// argmax NO_ARG where that maximum is <= 0 (where relu(x) is 0 at every tap, and the ReLU passes
// no gradient), so max_pool_bwd, unchanged, writes relu's and the pooling's input gradient at
// once. 1 read x ; 2 unused ; 3 rw y ; 4 unused ; 5 rw arg

// The index of pooling output (channel * n + image, position q in its plane) in the output's
// layout: [C, N, HO, WO], or flattened with EPI_FLAT.
fn pooled_at(ci: u32, q: u32) -> u32 {
    if ((G_EPI & EPI_FLAT) != 0u) {
        return ((ci / G_N) * G_HO * G_WO + q) * G_N + ci % G_N;
    }
    return ci * G_HO * G_WO + q;
}

// Pooling output q of plane ci (channel * n + image): the maximum and its flat input index, or
// (0, NO_ARG) under EPI_RELU where the maximum is <= 0.
struct Pooled {
    v: f32,
    at: u32,
}

fn pool_at(ci: u32, q: u32) -> Pooled {
    let oy = q / G_WO;
    let ox = q % G_WO;
    var best = 0.0;
    var at = 0u;
    var found = false;
    // Every tap is loaded (a padding tap at a valid place, then ignored): on lavapipe a branch
    // around a load costs more than the load.
    for (var ky = 0u; ky < G_K; ky++) {
        for (var kx = 0u; kx < G_K; kx++) {
            let t = tap(oy, ox, ky, kx);
            let j = ci * G_H * G_W + u32(max(t, 0));
            let v = a[j];
            let take = t >= 0 && (!found || v > best);
            best = select(best, v, take);
            at = select(at, j, take);
            found = found || t >= 0;
        }
    }
    if ((G_EPI & EPI_RELU) != 0u && !(best > 0.0)) {
        return Pooled(0.0, NO_ARG);
    }
    return Pooled(best, at);
}

@compute @workgroup_size(256)
fn max_pool_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    let plane = G_HO * G_WO;
    if (i >= G_C * G_N * plane) {
        return;
    }
    // Invocations in the output's order: with EPI_FLAT, i = (channel * plane + q) * n + image.
    var ci = i / plane; // channel * n + image
    var q = i % plane;
    if ((G_EPI & EPI_FLAT) != 0u) {
        ci = (i / (plane * G_N)) * G_N + i % G_N;
        q = (i / G_N) % plane;
    }
    let r = pool_at(ci, q);
    c[i] = r.v;
    arg[i] = r.at;
}

// ---- max_pool_fwd_tex: max_pool_fwd into the flattened layout (EPI_FLAT), one invocation per 4
// images of one output feature, which also writes them as texel (image / 4, feature) of `ptex`:
// the input texture of a compressed linear layer after the flatten (src/gpu/texture.rs's layout),
// so that layer copies nothing. N a multiple of 4. Bindings as max_pool_fwd ; 8 texture write.
@group(0) @binding(8) var ptex: texture_storage_2d<rgba32float, write>;

@compute @workgroup_size(256)
fn max_pool_fwd_tex(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_index(gid, nwg);
    let plane = G_HO * G_WO;
    let n4 = G_N / 4u;
    if (t >= G_C * plane * n4) {
        return;
    }
    let f = t / n4; // feature: channel * plane + q
    let ch = f / plane;
    let q = f % plane;
    var v = vec4<f32>(0.0);
    for (var l = 0u; l < 4u; l++) {
        let r = pool_at(ch * G_N + (t % n4) * 4u + l, q);
        c[4u * t + l] = r.v;
        arg[4u * t + l] = r.at;
        v[l] = r.v;
    }
    textureStore(ptex, vec2<u32>(t % n4, f), v);
}

// The output index o covering input (iy, ix) through tap (ky, kx), or -1.
fn out_of(iy: u32, ix: u32, ky: u32, kx: u32) -> i32 {
    let ty = i32(iy + G_PAD_T) - i32(ky);
    let tx = i32(ix + G_PAD_L) - i32(kx);
    if (ty < 0 || tx < 0 || (u32(ty) % G_STRIDE) != 0u || (u32(tx) % G_STRIDE) != 0u) {
        return -1;
    }
    let oy = u32(ty) / G_STRIDE;
    let ox = u32(tx) / G_STRIDE;
    if (oy >= G_HO || ox >= G_WO) {
        return -1;
    }
    return i32(oy * G_WO + ox);
}

// ---- max_pool_bwd: dx[j] = sum of dy over the outputs whose argmax is j (a gather over the
// windows covering j; NO_ARG is never j). 1 read dy ; 2 unused ; 3 rw dx ; 4 unused ; 5 rw arg (read)

@compute @workgroup_size(256)
fn max_pool_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = linear_index(gid, nwg);
    let plane = G_H * G_W;
    if (j >= G_C * G_N * plane) {
        return;
    }
    let ci = j / plane;
    let iy = (j % plane) / G_W;
    let ix = j % G_W;
    var acc = 0.0;
    for (var ky = 0u; ky < G_K; ky++) {
        for (var kx = 0u; kx < G_K; kx++) {
            let o = out_of(iy, ix, ky, kx);
            if (o >= 0) {
                let oi = pooled_at(ci, u32(o));
                if (arg[oi] == j) {
                    acc += a[oi];
                }
            }
        }
    }
    c[j] = acc;
}

// ---- max_pool_bwd_cells: max_pool_bwd where windows do not overlap (stride >= window, as
// LeNet-5's 2x2 pools): a scatter instead of a gather. The input splits into cells of stride x
// stride positions, cell (cy, cx) starting at (cy * stride - pad_t, cx * stride - pad_l), and
// window o lies inside cell o, so its argmax does; one invocation per cell reads the output's
// argmax and gradient once and writes every input of the cell (dy at the argmax, 0 elsewhere,
// and 0 in the cells past the last window). Cells: ceil((H + pad_t) / stride) by the same in W.
// Bindings as max_pool_bwd.

fn cells_h() -> u32 {
    return (G_H + G_PAD_T + G_STRIDE - 1u) / G_STRIDE;
}

fn cells_w() -> u32 {
    return (G_W + G_PAD_L + G_STRIDE - 1u) / G_STRIDE;
}

@compute @workgroup_size(256)
fn max_pool_bwd_cells(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let q = linear_index(gid, nwg);
    let plane = cells_h() * cells_w();
    if (q >= G_C * G_N * plane) {
        return;
    }
    let ci = q / plane;
    let cy = (q % plane) / cells_w();
    let cx = q % cells_w();
    var at = NO_ARG;
    var g = 0.0;
    if (cy < G_HO && cx < G_WO) {
        let o = pooled_at(ci, cy * G_WO + cx);
        at = arg[o];
        g = a[o];
    }
    for (var ty = 0u; ty < G_STRIDE; ty++) {
        let iy = i32(cy * G_STRIDE + ty) - i32(G_PAD_T);
        if (iy < 0 || iy >= i32(G_H)) {
            continue;
        }
        for (var tx = 0u; tx < G_STRIDE; tx++) {
            let ix = i32(cx * G_STRIDE + tx) - i32(G_PAD_L);
            if (ix < 0 || ix >= i32(G_W)) {
                continue;
            }
            let j = (ci * G_H + u32(iy)) * G_W + u32(ix);
            c[j] = select(0.0, g, j == at);
        }
    }
}

// Taps of output (oy, ox) inside the image.
fn taps_inside(oy: u32, ox: u32) -> u32 {
    var n = 0u;
    for (var ky = 0u; ky < G_K; ky++) {
        for (var kx = 0u; kx < G_K; kx++) {
            if (tap(oy, ox, ky, kx) >= 0) {
                n += 1u;
            }
        }
    }
    return n;
}

// ---- avg_pool_fwd: the mean over the taps inside the image. 1 read x ; 2 unused ; 3 rw y

@compute @workgroup_size(256)
fn avg_pool_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    let plane = G_HO * G_WO;
    if (i >= G_C * G_N * plane) {
        return;
    }
    let ci = i / plane;
    let oy = (i % plane) / G_WO;
    let ox = i % G_WO;
    var s = 0.0;
    for (var ky = 0u; ky < G_K; ky++) {
        for (var kx = 0u; kx < G_K; kx++) {
            let t = tap(oy, ox, ky, kx);
            if (t >= 0) {
                s += a[ci * G_H * G_W + u32(t)];
            }
        }
    }
    c[i] = s / f32(max(taps_inside(oy, ox), 1u));
}

// ---- avg_pool_bwd: dx[j] = sum over the windows covering j of dy / taps. 1 read dy ; 3 rw dx

@compute @workgroup_size(256)
fn avg_pool_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = linear_index(gid, nwg);
    let plane = G_H * G_W;
    if (j >= G_C * G_N * plane) {
        return;
    }
    let ci = j / plane;
    let iy = (j % plane) / G_W;
    let ix = j % G_W;
    var acc = 0.0;
    for (var ky = 0u; ky < G_K; ky++) {
        for (var kx = 0u; kx < G_K; kx++) {
            let o = out_of(iy, ix, ky, kx);
            if (o >= 0) {
                let oy = u32(o) / G_WO;
                let ox = u32(o) % G_WO;
                acc += a[ci * G_HO * G_WO + u32(o)] / f32(max(taps_inside(oy, ox), 1u));
            }
        }
    }
    c[j] = acc;
}

// ---- global_avg_pool: y[c, img] = mean over the h*w plane. 1 read x ; 3 rw y

@compute @workgroup_size(256)
fn global_avg_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= G_C * G_N) {
        return;
    }
    let hw = G_H * G_W;
    var s = 0.0;
    for (var q = 0u; q < hw; q++) {
        s += a[i * hw + q];
    }
    c[i] = s / f32(hw);
}

// ---- global_avg_pool_bwd: dx[c, img, q] = dy[c, img] / (h*w). 1 read dy ; 3 rw dx

@compute @workgroup_size(256)
fn global_avg_pool_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = linear_index(gid, nwg);
    let hw = G_H * G_W;
    if (j >= G_C * G_N * hw) {
        return;
    }
    c[j] = a[j / hw] / f32(hw);
}

// ---- flatten: [C, N, H, W] -> [C*H*W, N] (feature c*H*W + q); flags 1: the inverse.
// 1 read in ; 3 rw out

@compute @workgroup_size(256)
fn flatten(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    let hw = G_H * G_W;
    if (i >= G_C * G_N * hw) {
        return;
    }
    // i indexes the channel-major layout: (ch * n + img) * hw + q.
    let q = i % hw;
    let img = (i / hw) % G_N;
    let ch = i / (hw * G_N);
    let f = (ch * hw + q) * G_N + img;
    if ((p.flags & 1u) == 0u) {
        c[f] = a[i];
    } else {
        c[i] = a[f];
    }
}

fn fmix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

// Whether the dropout drops element i: SET's counter-based hash of (seed, step, layer, i).
fn dropped(i: u32) -> bool {
    var h = fmix32(p.seed ^ 0x9e3779b9u);
    h = fmix32(h ^ p.step);
    h = fmix32(h ^ p.flags);
    h = fmix32(h ^ i);
    return h < p.threshold;
}

// ---- dropout: out[i] = in[i] * (hash(seed, step, layer, i) < threshold ? 0 : f0), SET's
// counter-based hash, so forward and backward (the same call on dy) and a resumed run agree.
// 1 read in ; 3 rw out ; G_C holds the element count

@compute @workgroup_size(256)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= G_C) {
        return;
    }
    c[i] = select(a[i] * p.f0, 0.0, dropped(i));
}

// ---- add: out[i] += in[i] (the residual add). 1 read in ; 3 rw out ; G_C holds the count

@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= G_C) {
        return;
    }
    c[i] += a[i];
}

// ---- add_v4: add over G_C / 4 vec4s (G_C a multiple of 4); 1 read in ; 3 rw out

@compute @workgroup_size(256)
fn add_v4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= G_C / 4u) {
        return;
    }
    c4[i] += a4[i];
}

// ---- relu: out[i] = max(in[i], 0). 1 read in ; 3 rw out ; G_C holds the count

@compute @workgroup_size(256)
fn relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= G_C) {
        return;
    }
    c[i] = max(a[i], 0.0);
}

// ---- relu_bwd_to: dx[i] = y[i] > 0 ? dy[i] : 0. 1 read y ; 2 read dy ; 3 rw dx ; G_C the count

@compute @workgroup_size(256)
fn relu_bwd_to(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= G_C) {
        return;
    }
    c[i] = select(0.0, b[i], a[i] > 0.0);
}

// ---- copy: out[i] = in[i]. 1 read in ; 3 rw out ; G_C holds the count

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= G_C) {
        return;
    }
    c[i] = a[i];
}

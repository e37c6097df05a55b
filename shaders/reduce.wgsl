// Segmented sums (bias gradients, loss and accuracy totals).
// Activations are feature-major: x[f * batch + b] is feature f of sample b.
// Binding 0 of group 0 is the uniform Params below; other bindings are listed at each entry.
// 1-D kernels linearise global_invocation_id over (x, y) so n may exceed 65535 * 256 invocations.

struct Params {
    n: u32,        // total elements (1-D kernels), or segments for segment_sum
    rows: u32,     // features / classes / segments
    cols: u32,     // batch / segment length
    flag: u32,     // bias_act_fwd: 1 = ReLU, 0 = identity
    f0: f32,       // lr | label smoothing
    f1: f32,       // momentum | loss gradient scale
    f2: f32,       // weight decay
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// ACCUMULATE: out[s] += sum instead of out[s] = sum (running totals over steps).
override ACCUMULATE: bool = false;

const WG: u32 = 256u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// ---- segment_sum: out[s] = sum of x[s * cols .. (s + 1) * cols], one workgroup per segment
// (segment index linearised over workgroup_id x/y). Used for bias gradients (segments = features)
// and for the loss / correct-count totals.
// 1 read x; 2 rw out
@group(0) @binding(1) var<storage, read> ss_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> ss_out: array<f32>;
var<workgroup> ss_part: array<f32, 64>;

@compute @workgroup_size(64)
fn segment_sum(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let s = wid.x + wid.y * nwg.x;
    if (s >= p.rows) {
        return;
    }
    let total = tree(lidx, plain_sum(s * p.cols, 0u, p.cols, lidx));
    if (lidx == 0u) {
        if (ACCUMULATE) {
            ss_out[s] += total;
        } else {
            ss_out[s] = total;
        }
    }
}

// A lane's share of x[base + start .. base + end] (every 64th element).
fn plain_sum(base: u32, start: u32, end: u32, lidx: u32) -> f32 {
    var acc = 0.0;
    for (var i = start + lidx; i < end; i += 64u) {
        acc += ss_x[base + i];
    }
    return acc;
}

// ---- segment_part: the first half of a long segmented sum. Segment s is cut into p.n chunks of
// p.flag elements (the last may be shorter); workgroup (s, c) writes the sum of chunk c into
// out[s * p.n + c], which segment_sum then adds up. Bias gradients of convolutions have few
// segments of N * H * W elements: one workgroup per segment would run on as many cores.
// 1 read x; 2 rw out
@compute @workgroup_size(64)
fn segment_part(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let q = wid.x + wid.y * nwg.x;
    if (q >= p.rows * p.n) {
        return;
    }
    let c = q % p.n;
    let start = c * p.flag;
    let total = tree(lidx, plain_sum((q / p.n) * p.cols, start, min(start + p.flag, p.cols), lidx));
    if (lidx == 0u) {
        ss_out[q] = total;
    }
}

// ---- segment_sum_arg / segment_part_arg: segment_sum and segment_part counting only the
// elements whose max-pooling argmax exists (arg != NO_ARG): the sum of a max pooling's output
// gradient over the outputs that pass it on, which is the sum of the pooling's input gradient
// (every such output's gradient goes to one input), read at a quarter of the places for a 2x2
// pooling. A convolution's bias gradient before a max pooling.
// 1 read x; 2 rw out; 3 read arg
@group(0) @binding(3) var<storage, read> ss_arg: array<u32>;

const NO_ARG: u32 = 0xffffffffu;

// plain_sum over the elements with an argmax.
fn arg_sum(base: u32, start: u32, end: u32, lidx: u32) -> f32 {
    var acc = 0.0;
    for (var i = start + lidx; i < end; i += 64u) {
        acc += select(0.0, ss_x[base + i], ss_arg[base + i] != NO_ARG);
    }
    return acc;
}

// The workgroup's sum of every lane's v (all 64 lanes call it).
fn tree(lidx: u32, v: f32) -> f32 {
    ss_part[lidx] = v;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride >> 1u) {
        if (lidx < stride) {
            ss_part[lidx] += ss_part[lidx + stride];
        }
        workgroupBarrier();
    }
    return ss_part[0];
}

@compute @workgroup_size(64)
fn segment_sum_arg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let s = wid.x + wid.y * nwg.x;
    if (s >= p.rows) {
        return;
    }
    let total = tree(lidx, arg_sum(s * p.cols, 0u, p.cols, lidx));
    if (lidx == 0u) {
        if (ACCUMULATE) {
            ss_out[s] += total;
        } else {
            ss_out[s] = total;
        }
    }
}

@compute @workgroup_size(64)
fn segment_part_arg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let q = wid.x + wid.y * nwg.x;
    if (q >= p.rows * p.n) {
        return;
    }
    let c = q % p.n;
    let start = c * p.flag;
    let total = tree(lidx, arg_sum((q / p.n) * p.cols, start, min(start + p.flag, p.cols), lidx));
    if (lidx == 0u) {
        ss_out[q] = total;
    }
}

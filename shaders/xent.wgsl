// Softmax cross-entropy forward (loss, correct count) and backward, with label smoothing.
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

const WG: u32 = 256u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// ---- softmax_xent: per sample b (one invocation each) over logits[c * cols + b], c < rows:
//   loss[b]    = -sum_c t_c * log_softmax_c, t = (1 - f0) * onehot(label) + f0 / rows
//   correct[b] = 1 if the first index of the largest logit equals the label, else 0
//   dlogits    = (softmax - t) * f1
// Samples b >= flag (padding of a partial last batch) get loss 0, correct 0 and gradient 0.
// 1 read logits[rows * cols]; 2 read labels u32[cols]; 3 rw dlogits[rows * cols];
// 4 rw stats[2 * cols] (loss then correct)
@group(0) @binding(1) var<storage, read> sx_logits: array<f32>;
@group(0) @binding(2) var<storage, read> sx_labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> sx_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> sx_stats: array<f32>;

@compute @workgroup_size(256)
fn softmax_xent(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let b = linear_index(gid, nwg);
    if (b >= p.cols) {
        return;
    }
    let classes = p.rows;
    if (b >= p.flag) {
        for (var c = 0u; c < classes; c++) {
            sx_grad[c * p.cols + b] = 0.0;
        }
        sx_stats[b] = 0.0;
        sx_stats[p.cols + b] = 0.0;
        return;
    }
    let label = sx_labels[b];
    var mx = sx_logits[b];
    var arg = 0u;
    for (var c = 1u; c < classes; c++) {
        let v = sx_logits[c * p.cols + b];
        if (v > mx) {
            mx = v;
            arg = c;
        }
    }
    var sum = 0.0;
    for (var c = 0u; c < classes; c++) {
        sum += exp(sx_logits[c * p.cols + b] - mx);
    }
    let lse = log(sum);
    let off = p.f0 / f32(classes);
    var loss = 0.0;
    for (var c = 0u; c < classes; c++) {
        let z = sx_logits[c * p.cols + b] - mx;
        var t = off;
        if (c == label) {
            t += 1.0 - p.f0;
        }
        loss -= t * (z - lse);
        sx_grad[c * p.cols + b] = (exp(z - lse) - t) * p.f1;
    }
    sx_stats[b] = loss;
    sx_stats[p.cols + b] = select(0.0, 1.0, arg == label);
}


// Index maintenance of a compressed sparse layer at a mask update, on the GPU (no host round trip
// of weights): after the drop phase (select.wgsl over the layer's values) and the grow phase
// (select.wgsl over a dense score of the layer, eligibility from `gsel`), rebuild the slots in
// increasing flat position, carry values and momentum over, and rebuild both row indexes.
//
// A layer's index (one u32 buffer, src/sparse/csr.rs): pos[nnz] at 0 (flat position c * out + r
// of every slot, increasing), fwd_slot[nnz] at nnz (slots by output row, then input), in_ptr[in + 1]
// at 2 nnz, out_ptr[out + 1] at 2 nnz + in + 1.
//
// Bindings (group 0), shared by every entry point:
//   0 uniform Params
//   1 storage rw    gsel    : per flat position of the layer (dense scratch, largest layer):
//                             bit 0 kept, bit 1 grown; after csr_fill_in, new slot + 1 (0 = off)
//   2 storage rw    idx     : the layer index
//   3 storage rw    vals    : values per slot
//   4 storage rw    mom     : momentum per slot
//   5 storage rw    scratch : [in + 1] new in_ptr, then next pos, next values, next momentum
//                             (nnz each, values as bits)
//   6 storage read  dropsel : per slot, bit 0 = kept by the drop phase
//   7 storage rw    stats   : [0] new connections of the last update, from word 64 the layer's
//                             ever-active bitmap (bit p of word 64 + p / 32)
// Every pass is deterministic (no order decided by atomics), so a rebuilt index is the same on
// every run and on the CPU twin.

struct Params {
    in_dim: u32,
    out_dim: u32,
    nnz: u32,
    n: u32,        // in_dim * out_dim
}

override WHICH: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> gsel: array<u32>;
@group(0) @binding(2) var<storage, read_write> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> vals: array<f32>;
@group(0) @binding(4) var<storage, read_write> mom: array<f32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(6) var<storage, read> dropsel: array<u32>;
@group(0) @binding(7) var<storage, read_write> stats: array<atomic<u32>>;

fn inptr_off() -> u32 { return 2u * p.nnz; }
fn outptr_off() -> u32 { return 2u * p.nnz + p.in_dim + 1u; }
fn next_pos(s: u32) -> u32 { return p.in_dim + 1u + s; }
fn next_val(s: u32) -> u32 { return p.in_dim + 1u + p.nnz + s; }
fn next_mom(s: u32) -> u32 { return p.in_dim + 1u + 2u * p.nnz + s; }

fn linear(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// Per flat position: clear the selection flags; also the new-connection counter.
@compute @workgroup_size(64)
fn csr_clear(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear(gid, nwg);
    if (i == 0u) {
        atomicStore(&stats[0], 0u);
    }
    if (i < p.n) {
        gsel[i] = 0u;
    }
}

// Per slot: mark the positions kept by the drop phase (they are not eligible for growth).
@compute @workgroup_size(64)
fn csr_mark(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = linear(gid, nwg);
    if (s < p.nnz && (dropsel[s] & 1u) != 0u) {
        gsel[idx[s]] = 1u;
    }
}

// Per input row: how many positions of the new mask it holds.
@compute @workgroup_size(64)
fn csr_count_in(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = linear(gid, nwg);
    if (c >= p.in_dim) {
        return;
    }
    var cnt = 0u;
    let base = c * p.out_dim;
    for (var r = 0u; r < p.out_dim; r++) {
        cnt += select(0u, 1u, gsel[base + r] != 0u);
    }
    scratch[c] = cnt;
}

// Per output row: how many positions of the new mask it holds (into out_ptr, scanned next).
@compute @workgroup_size(64)
fn csr_count_out(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = linear(gid, nwg);
    if (r >= p.out_dim) {
        return;
    }
    var cnt = 0u;
    for (var c = 0u; c < p.in_dim; c++) {
        cnt += select(0u, 1u, gsel[c * p.out_dim + r] != 0u);
    }
    idx[outptr_off() + r] = cnt;
}

// One invocation: exclusive scan of the row counts into row pointers (WHICH 0: the new in_ptr in
// scratch, 1: out_ptr in idx).
@compute @workgroup_size(1)
fn csr_scan() {
    var run = 0u;
    if (WHICH == 0u) {
        for (var c = 0u; c < p.in_dim; c++) {
            let v = scratch[c];
            scratch[c] = run;
            run += v;
        }
        scratch[p.in_dim] = run;
    } else {
        let o = outptr_off();
        for (var r = 0u; r < p.out_dim; r++) {
            let v = idx[o + r];
            idx[o + r] = run;
            run += v;
        }
        idx[o + p.out_dim] = run;
    }
}

// Per input row: the new slots of the row in position order. A position that was active before
// (kept, or dropped and grown again) keeps its value and momentum; a new connection starts at 0.
// Marks every new position as ever active and leaves its slot + 1 in gsel.
@compute @workgroup_size(64)
fn csr_fill_in(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = linear(gid, nwg);
    if (c >= p.in_dim) {
        return;
    }
    var o = idx[inptr_off() + c];
    let o_end = idx[inptr_off() + c + 1u];
    var s = scratch[c];
    var fresh = 0u;
    let base = c * p.out_dim;
    for (var r = 0u; r < p.out_dim; r++) {
        let q = base + r;
        if (gsel[q] == 0u) {
            continue;
        }
        while (o < o_end && idx[o] < q) {
            o++;
        }
        var v = 0.0;
        var m = 0.0;
        if (o < o_end && idx[o] == q) {
            v = vals[o];
            m = mom[o];
        } else {
            fresh++;
        }
        scratch[next_pos(s)] = q;
        scratch[next_val(s)] = bitcast<u32>(v);
        scratch[next_mom(s)] = bitcast<u32>(m);
        gsel[q] = s + 1u;
        atomicOr(&stats[64u + q / 32u], 1u << (q % 32u));
        s++;
    }
    if (fresh > 0u) {
        atomicAdd(&stats[0], fresh);
    }
}

// Per output row: its slots in input order (the forward index).
@compute @workgroup_size(64)
fn csr_fill_out(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = linear(gid, nwg);
    if (r >= p.out_dim) {
        return;
    }
    var k = idx[outptr_off() + r];
    for (var c = 0u; c < p.in_dim; c++) {
        let g = gsel[c * p.out_dim + r];
        if (g != 0u) {
            idx[p.nnz + k] = g - 1u;
            k++;
        }
    }
}

// Per slot (and per input row): install the rebuilt slots and in_ptr.
@compute @workgroup_size(64)
fn csr_copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = linear(gid, nwg);
    if (s < p.nnz) {
        idx[s] = scratch[next_pos(s)];
        vals[s] = bitcast<f32>(scratch[next_val(s)]);
        mom[s] = bitcast<f32>(scratch[next_mom(s)]);
    }
    if (s <= p.in_dim) {
        idx[inptr_off() + s] = scratch[s];
    }
}

// A compressed sparse layer run on dense GEMMs (the per-layer masked-dense choice of
// --kernels auto): its slots scattered into a dense weight scratch before the products, and the
// dense weight gradient gathered back into the slots. The compressed form stays the state; the
// scratch is rebuilt from it before every use.
//
// Bindings (group 0), shared by every entry point:
//   0 uniform Params
//   1 storage read  idx   : the layer index (pos[nnz] first: flat position of each slot)
//   2 storage read  vals  : values per slot
//   3 storage rw    dense : [in, out] row-major scratch
//   4 storage rw    grad  : gradient per slot (slots_gather)

struct Params {
    n: u32,     // in * out
    nnz: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> vals: array<f32>;
@group(0) @binding(3) var<storage, read_write> dense: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

fn linear(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// dense = 0.
@compute @workgroup_size(64)
fn slots_zero(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear(gid, nwg);
    if (i < p.n) {
        dense[i] = 0.0;
    }
}

// dense[pos[s]] = vals[s].
@compute @workgroup_size(64)
fn slots_scatter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = linear(gid, nwg);
    if (s < p.nnz) {
        dense[idx[s]] = vals[s];
    }
}

// grad[s] = dense[pos[s]] (dense holds the dense weight gradient).
@compute @workgroup_size(64)
fn slots_gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let s = linear(gid, nwg);
    if (s < p.nnz) {
        grad[s] = dense[idx[s]];
    }
}

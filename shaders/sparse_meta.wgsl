// Per-nonzero metadata of a compressed sparse layer for the SpMM (spmm.wgsl): one rg32uint texel
// per nonzero in the order the product walks them, (column of X, slot in the model's value
// texture), so the product fetches the metadata of 8 nonzeros with one texture load per subgroup
// instead of three dependent storage-buffer loads (each a loop over the lanes on lavapipe), and
// the layer's values into the model's value texture (texel slot0 + s = bits of vals[s]). Runs at
// load and after every mask update (the index changes only then); the optimizer keeps the value
// texture current at every step (sgd.wgsl STORE_TEX).
//
// Bindings (group 0):
//   0 uniform Params
//   1 storage read  idx  : the layer index (src/sparse/csr.rs)
//   2 storage read  vals : values per slot
//   3 texture write fwd  : texel j = (input c, slot0 + slot) of forward entry j (by output row)
//   4 texture write bwd  : texel s = (output r, slot0 + s) of slot s (by input row), when BWD
//   5 texture write val  : the model's value texture
// Texel j sits at (j % 4096, j / 4096).

struct Params {
    nnz: u32,
    out_dim: u32,
    slot0: u32,     // the layer's first slot in the model's flat values
    _pad: u32,
}

override BWD: bool = true;
const META_WIDTH: u32 = 4096u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> vals: array<f32>;
@group(0) @binding(3) var fwd: texture_storage_2d<rg32uint, write>;
@group(0) @binding(4) var bwd: texture_storage_2d<rg32uint, write>;
@group(0) @binding(5) var val: texture_storage_2d<rg32uint, write>;

fn at(i: u32) -> vec2<u32> {
    return vec2<u32>(i % META_WIDTH, i / META_WIDTH);
}

@compute @workgroup_size(64)
fn sparse_meta(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * 64u;
    if (j >= p.nnz) {
        return;
    }
    let s = idx[p.nnz + j];
    textureStore(fwd, at(j), vec4<u32>(idx[s] / p.out_dim, p.slot0 + s, 0u, 0u));
    if (BWD) {
        textureStore(bwd, at(j), vec4<u32>(idx[j] % p.out_dim, p.slot0 + j, 0u, 0u));
    }
    textureStore(val, at(p.slot0 + j), vec4<u32>(bitcast<u32>(vals[j]), 0u, 0u, 0u));
}

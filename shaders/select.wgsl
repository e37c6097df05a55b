// Exact top-k selection and the mask update of every sparse layer of a model, in a fixed number of
// dispatches whatever the number of layers.
//
// All layers' weights, masks, momenta and grow scores are stored back to back (flat, per layer
// `offset .. offset + n`). Per phase, each element gets a 32-bit key and an eligibility flag:
//   PHASE 0 (drop): key = fkey(w),     eligible = mask != 0         select k = n_active - n_drop
//   PHASE 1 (grow): key = fkey(score)  (GROW_SET: set_score(seed, step, layer, index)),
//                   eligible = not kept                            select k = n_drop
// fkey(x) = 0 for NaN, else bits(|x|) + 1 (bits of a non-negative float order like the float).
// The selection is exact: the k eligible elements with the largest key, ties to the lower index.
// It is a radix select (4 passes of 8 bits: histogram, then a per-layer scan that fixes one digit
// of the k-th largest key T and how many of the elements equal to T are still needed), then a
// count of T-valued elements per chunk, an exclusive scan of those counts per layer, and a mark
// pass that walks each chunk in index order.
// Each histogram pass also records, per chunk, which digits its counted elements have (a 256-bit
// set). A chunk whose set lacks the digit the scan then fixed holds no element matching the
// longer prefix, so the next pass (and the tie count after the last one) skips it without reading
// its elements: after the first two digits most chunks are skipped.
// With APPLY (the grow phase of a masked model), the grow mark also applies the update to each
// element it walks (what mask_apply does), saving a pass over the model.
//
// Bindings (group 0), shared by every entry point:
//   0 uniform Params
//   1 storage read  table   : header (seed, step, 0, 0), layer table (8 u32 per layer: offset, n,
//                             k_drop, k_grow, chunk0, nchunks, layer id, 0), then chunk -> layer
//                             map. Rewritten by the host before each update (k, step).
//   2 storage rw    w       : weights (f32)
//   3 storage rw    mask    : 0/1 (f32)
//   4 storage rw    mom     : optimizer slot zeroed with new and dropped connections (f32)
//   5 storage read  score   : grow score (|dense gradient| or its EMA), unused for SET
//   6 storage rw    scratch : per layer 256 histogram bins + 4 state words (prefix, k_rem), then
//                             one tie count per chunk, then per layer the number of new
//                             connections made by the last update, then per chunk 8 words: the
//                             set of digits counted by its last histogram pass
//   7 storage rw    sel     : per element, bit 0 = kept by the drop phase, bit 1 = grown
// Chunks are CHUNK consecutive elements of one layer; chunk indices are linearised over
// workgroup_id (x, y).

struct Params {
    n_layers: u32,
    n_chunks: u32,
    total: u32,
    _pad: u32,
}

override PHASE: u32 = 0u;
override PASS: u32 = 0u;
override GROW_SET: bool = false;
override DROP_ONLY: bool = false;
// Drop phase over compressed values (every element is an active weight; `mask` is not read).
override ALL_ELIGIBLE: bool = false;
// Grow mark applies the update (masked models; see mask_apply).
override APPLY: bool = false;
// The first grow histogram pass also does the drop phase's mark (masked models: both phases walk
// the same elements), saving a pass over the model.
override FUSE_DROP: bool = false;

const CHUNK: u32 = 256u;
const LAYER_WORDS: u32 = 8u;
const HEADER: u32 = 4u;
const STATE_STRIDE: u32 = 260u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> mom: array<f32>;
@group(0) @binding(5) var<storage, read> score: array<f32>;
@group(0) @binding(6) var<storage, read_write> scratch: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> sel: array<u32>;

fn fkey(x: f32) -> u32 {
    let b = bitcast<u32>(x) & 0x7fffffffu;
    return select(b + 1u, 0u, b > 0x7f800000u);
}

// MurmurHash3's 32-bit finaliser.
fn fmix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

// SET's random grow score is fmix32(set_prefix(seed, step, layer) ^ index); it must equal
// cpu::mask_update::set_score bit for bit. The prefix is the same for a whole layer, so the
// kernels compute it once per chunk (layer_key).
fn set_prefix(seed: u32, step: u32, layer: u32) -> u32 {
    var h = fmix32(seed ^ 0x9e3779b9u);
    h = fmix32(h ^ step);
    return fmix32(h ^ layer);
}

fn layer_offset(l: u32) -> u32 { return table[HEADER + l * LAYER_WORDS]; }
fn layer_n(l: u32) -> u32 { return table[HEADER + l * LAYER_WORDS + 1u]; }
fn layer_k(l: u32) -> u32 { return table[HEADER + l * LAYER_WORDS + 2u + PHASE]; }
fn layer_chunk0(l: u32) -> u32 { return table[HEADER + l * LAYER_WORDS + 4u]; }
fn layer_nchunks(l: u32) -> u32 { return table[HEADER + l * LAYER_WORDS + 5u]; }
fn layer_id(l: u32) -> u32 { return table[HEADER + l * LAYER_WORDS + 6u]; }
fn chunk_layer(c: u32) -> u32 { return table[HEADER + p.n_layers * LAYER_WORDS + c]; }
// The state words (prefix of T, k_rem) of phase `ph` of layer l: each phase has its own, so the
// grow phase can still read the drop phase's result (FUSE_DROP).
fn state_of(l: u32, ph: u32) -> u32 { return l * STATE_STRIDE + 256u + 2u * ph; }
fn state_base(l: u32) -> u32 { return state_of(l, PHASE); }
fn tie_index(c: u32) -> u32 { return p.n_layers * STATE_STRIDE + c; }
fn new_count_index(l: u32) -> u32 { return p.n_layers * STATE_STRIDE + p.n_chunks + l; }
fn digits_index(c: u32) -> u32 { return p.n_layers * (STATE_STRIDE + 1u) + p.n_chunks + 8u * c; }

// Did chunk c's last histogram pass count an element with digit d?
fn chunk_has_digit(c: u32, d: u32) -> bool {
    return (atomicLoad(&scratch[digits_index(c) + (d >> 5u)]) & (1u << (d & 31u))) != 0u;
}

// What key_of needs of a layer, read once per chunk rather than per element.
struct LayerKey {
    set_prefix: u32,
    offset: u32,
}

fn layer_key(l: u32) -> LayerKey {
    var k = LayerKey(0u, layer_offset(l));
    if (GROW_SET && PHASE == 1u) {
        k.set_prefix = set_prefix(table[0], table[1], layer_id(l));
    }
    return k;
}

fn key_of(lk: LayerKey, i: u32) -> u32 {
    if (PHASE == 0u) {
        return fkey(w[i]);
    }
    if (GROW_SET) {
        return fmix32(lk.set_prefix ^ (i - lk.offset));
    }
    return fkey(score[i]);
}

fn eligible(i: u32) -> bool {
    if (PHASE == 0u) {
        return ALL_ELIGIBLE || mask[i] != 0.0;
    }
    return (sel[i] & 1u) == 0u;
}

// Does `key` agree with the digits of T fixed by the passes before PASS?
fn matches_prefix(key: u32, prefix: u32) -> bool {
    if (PASS == 0u) {
        return true;
    }
    // max() keeps the shift below 32 in the PASS == 0 specialisation, where this is unreachable.
    let s = 32u - 8u * max(PASS, 1u);
    return (key >> s) == (prefix >> s);
}

// One invocation per layer: reset the histogram and the state (prefix 0, k_rem = k).
@compute @workgroup_size(64)
fn sel_init(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = gid.x;
    if (l >= p.n_layers) {
        return;
    }
    for (var b = 0u; b < 256u; b++) {
        atomicStore(&scratch[l * STATE_STRIDE + b], 0u);
    }
    atomicStore(&scratch[state_base(l)], 0u);
    atomicStore(&scratch[state_base(l) + 1u], layer_k(l));
    atomicStore(&scratch[new_count_index(l)], 0u);
}

// One invocation per chunk: histogram of digit PASS of the eligible keys that match the prefix,
// counted in a private array (16-bit counts, two per word: a chunk has at most 256 elements), then
// only the non-empty bins are added to the layer's histogram. No workgroup barriers and few
// atomics: the keys of a chunk share few digits, most of all in the first passes. The set of
// non-empty bins is stored for the next pass, which skips the chunk when it lacks the fixed digit.
@compute @workgroup_size(64)
fn sel_hist(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * 64u;
    if (c >= p.n_chunks) {
        return;
    }
    let l = chunk_layer(c);
    let prefix = atomicLoad(&scratch[state_base(l)]);
    let k_rem = atomicLoad(&scratch[state_base(l) + 1u]);
    if (FUSE_DROP && PHASE == 1u && PASS == 0u) {
        hist_fused_drop_mark(c, l, k_rem);
        return;
    }
    if (k_rem == 0u) {
        return;
    }
    let db = digits_index(c);
    if (PASS > 0u) {
        // The digit the previous pass fixed (max() keeps the shift below 32 when PASS == 0).
        let d = (prefix >> (32u - 8u * max(PASS, 1u))) & 255u;
        if (!chunk_has_digit(c, d)) {
            for (var j = 0u; j < 8u; j++) {
                atomicStore(&scratch[db + j], 0u);
            }
            return;
        }
    }
    let lk = layer_key(l);
    let start = lk.offset + (c - layer_chunk0(l)) * CHUNK;
    let end = min(start + CHUNK, layer_offset(l) + layer_n(l));
    let shift = 24u - 8u * PASS;
    var h: array<u32, 128>;
    for (var i = start; i < end; i++) {
        if (eligible(i)) {
            let key = key_of(lk, i);
            if (matches_prefix(key, prefix)) {
                let bin = (key >> shift) & 255u;
                h[bin >> 1u] += 1u << ((bin & 1u) * 16u);
            }
        }
    }
    flush_hist(c, l, &h);
}

// sel_hist's first grow pass fused with the drop phase's mark (FUSE_DROP): walks chunk c of
// layer l in index order, writes bit 0 of sel as sel_mark does in the drop phase, and counts the
// first digit of the grow key of every element not kept (when the grow k_rem is not 0).
fn hist_fused_drop_mark(c: u32, l: u32, k_rem: u32) {
    let t_drop = atomicLoad(&scratch[state_of(l, 0u)]);
    let k_drop = atomicLoad(&scratch[state_of(l, 0u) + 1u]);
    var rank = atomicLoad(&scratch[tie_index(c)]);
    let lk = layer_key(l);
    let start = lk.offset + (c - layer_chunk0(l)) * CHUNK;
    let end = min(start + CHUNK, layer_offset(l) + layer_n(l));
    var h: array<u32, 128>;
    for (var i = start; i < end; i++) {
        var kept = false;
        if (k_drop > 0u && mask[i] != 0.0) {
            kept = takes(fkey(w[i]), t_drop, k_drop, &rank);
        }
        sel[i] = select(0u, 1u, kept);
        if (!kept && k_rem != 0u) {
            let bin = key_of(lk, i) >> 24u;
            h[bin >> 1u] += 1u << ((bin & 1u) * 16u);
        }
    }
    if (k_rem != 0u) {
        flush_hist(c, l, &h);
    }
}

// Adds a chunk's private histogram (16-bit counts, two per word) to its layer's and stores the
// chunk's set of non-empty bins.
fn flush_hist(c: u32, l: u32, h: ptr<function, array<u32, 128>>) {
    let db = digits_index(c);
    var bits = 0u;
    for (var j = 0u; j < 128u; j++) {
        let v = (*h)[j];
        if (v != 0u) {
            let lo = v & 0xffffu;
            let hi = v >> 16u;
            if (lo != 0u) {
                atomicAdd(&scratch[l * STATE_STRIDE + 2u * j], lo);
                bits |= 1u << ((2u * j) & 31u);
            }
            if (hi != 0u) {
                atomicAdd(&scratch[l * STATE_STRIDE + 2u * j + 1u], hi);
                bits |= 2u << ((2u * j) & 31u);
            }
        }
        if ((j & 15u) == 15u) {
            atomicStore(&scratch[db + (j >> 4u)], bits);
            bits = 0u;
        }
    }
}

// One invocation per layer: fix digit PASS of T from the histogram, then clear the histogram.
@compute @workgroup_size(64)
fn sel_scan(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = gid.x;
    if (l >= p.n_layers) {
        return;
    }
    let base = l * STATE_STRIDE;
    var k_rem = atomicLoad(&scratch[state_base(l) + 1u]);
    var prefix = atomicLoad(&scratch[state_base(l)]);
    let shift = 24u - 8u * PASS;
    if (k_rem > 0u) {
        var above = 0u;
        for (var j = 0u; j < 256u; j++) {
            let b = 255u - j;
            let cnt = atomicLoad(&scratch[base + b]);
            if (above + cnt >= k_rem) {
                prefix = prefix | (b << shift);
                k_rem = k_rem - above;
                break;
            }
            above += cnt;
        }
    }
    atomicStore(&scratch[state_base(l)], prefix);
    atomicStore(&scratch[state_base(l) + 1u], k_rem);
    for (var b = 0u; b < 256u; b++) {
        atomicStore(&scratch[base + b], 0u);
    }
}

// One invocation per chunk: how many eligible elements equal T.
@compute @workgroup_size(64)
fn sel_tiecount(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * 64u;
    if (c >= p.n_chunks) {
        return;
    }
    let l = chunk_layer(c);
    let t = atomicLoad(&scratch[state_base(l)]);
    // No element of the chunk matched T's first three digits with T's last one: no tie here.
    // (With k = 0 the digit sets are stale, but then the mark pass selects nothing anyway.)
    if (!chunk_has_digit(c, t & 255u)) {
        atomicStore(&scratch[tie_index(c)], 0u);
        return;
    }
    let lk = layer_key(l);
    let start = lk.offset + (c - layer_chunk0(l)) * CHUNK;
    let end = min(start + CHUNK, layer_offset(l) + layer_n(l));
    var cnt = 0u;
    for (var i = start; i < end; i++) {
        if (eligible(i) && key_of(lk, i) == t) {
            cnt += 1u;
        }
    }
    atomicStore(&scratch[tie_index(c)], cnt);
}

// One invocation per layer: exclusive scan of the tie counts of its chunks.
@compute @workgroup_size(64)
fn sel_tiescan(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = gid.x;
    if (l >= p.n_layers) {
        return;
    }
    var run = 0u;
    let c0 = layer_chunk0(l);
    for (var c = c0; c < c0 + layer_nchunks(l); c++) {
        let v = atomicLoad(&scratch[tie_index(c)]);
        atomicStore(&scratch[tie_index(c)], run);
        run += v;
    }
}

// The selection rule of an eligible element, walked in index order: key > T is taken, key == T
// while fewer than k_rem ties precede it (`rank` counts the ties walked so far).
fn takes(key: u32, t: u32, k_rem: u32, rank: ptr<function, u32>) -> bool {
    if (key > t) {
        return true;
    }
    if (key == t) {
        let r = *rank;
        *rank = r + 1u;
        return r < k_rem;
    }
    return false;
}

// One invocation per chunk: select key > T, and key == T while fewer than k_rem ties precede.
// The drop phase writes bit 0 of sel (overwriting it), the grow phase sets bit 1 (and, with
// APPLY, updates the element as mask_apply does, counting the chunk's new connections once).
@compute @workgroup_size(64)
fn sel_mark(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * 64u;
    if (c >= p.n_chunks) {
        return;
    }
    let l = chunk_layer(c);
    let t = atomicLoad(&scratch[state_base(l)]);
    let k_rem = atomicLoad(&scratch[state_base(l) + 1u]);
    var rank = atomicLoad(&scratch[tie_index(c)]);
    var new_here = 0u;
    let lk = layer_key(l);
    let start = lk.offset + (c - layer_chunk0(l)) * CHUNK;
    let end = min(start + CHUNK, layer_offset(l) + layer_n(l));
    for (var i = start; i < end; i++) {
        var take = false;
        if (k_rem > 0u && eligible(i)) {
            take = takes(key_of(lk, i), t, k_rem, &rank);
        }
        if (PHASE == 0u) {
            sel[i] = select(0u, 1u, take);
        } else if (APPLY) {
            // The selection is not written back: nothing reads it after an applied update.
            if (apply_one(i, sel[i] | select(0u, 2u, take), false)) {
                new_here += 1u;
            }
        } else if (take) {
            sel[i] = sel[i] | 2u;
        }
    }
    if (new_here != 0u) {
        atomicAdd(&scratch[new_count_index(l)], new_here);
    }
}

// The update of element i with selection bits s (bit 0 kept, bit 1 grown; grown ignored when
// drop_only): new mask = kept | grown; a new connection (grown, inactive before) starts at weight
// 0 and momentum 0; everything outside the new mask is 0. Returns whether i is a new connection.
fn apply_one(i: u32, s: u32, drop_only: bool) -> bool {
    let kept = (s & 1u) != 0u;
    let grown = (s & 2u) != 0u && !drop_only;
    let was = mask[i] != 0.0;
    let now = kept || grown;
    let fresh = grown && !was;
    if (!now || fresh) {
        w[i] = 0.0;
        mom[i] = 0.0;
    }
    if (now != was) {
        mask[i] = select(0.0, 1.0, now);
    }
    return fresh;
}

// One invocation per element: new mask = kept | grown (kept only with DROP_ONLY); a new
// connection (grown, inactive before) starts at weight 0 and momentum 0; everything outside the
// new mask is 0.
@compute @workgroup_size(256)
fn mask_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.total) {
        return;
    }
    if (apply_one(i, sel[i], DROP_ONLY)) {
        for (var l = 0u; l < p.n_layers; l++) {
            if (i >= layer_offset(l) && i < layer_offset(l) + layer_n(l)) {
                atomicAdd(&scratch[new_count_index(l)], 1u);
            }
        }
    }
}

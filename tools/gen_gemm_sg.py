"""Regenerates the unrolled body of shaders/gemm_sg.wgsl (buffers) or shaders/gemm_tex.wgsl
(textures) for ROWS rows per invocation (a multiple of 8), keeping the file's header (bindings,
helpers) as it is.

    python3 tools/gen_gemm_sg.py ROWS shaders/gemm_sg.wgsl
    python3 tools/gen_gemm_sg.py 32 shaders/gemm_tex.wgsl texture

The engine's tile table (GemmVariant::Subgroup and GemmVariant::Texture in src/gpu/gemm.rs) must
say the same row count. For the texture kernel only the unrolled part is written (from the
`arow` lines on: the accumulators, the loop's loads, broadcasts and multiply-adds, the stores),
each group of 8 rows past the first under `if (ROWS > 8g)` so that one kernel serves products
of fewer rows; the entry's prologue (tiles, splits, narrow and tall tiles, the implicit
operands' set-up) is kept as it is in the file.
"""
import sys, re
rows = int(sys.argv[1])
texture = len(sys.argv) > 3 and sys.argv[3] == 'texture'
src = open(sys.argv[2]).read()
if texture:
    G = rows // 8
    keep = src[:src.index('    let arow0 = ')]
    L = [f'    let arow{g} = min(row0 + {8*g}u + l8, p.m - 1u);' for g in range(G)]
    L += [f'    var acc{i} = vec4<f32>(0.0);' for i in range(rows)]
    L.append('    for (var kq = kbeg; kq < kend; kq++) {')
    L += [f'        var mine{g}: vec4<f32>;' for g in range(G)]
    L += [f'        var b{j}: vec4<f32>;' for j in range(4)]

    def guarded(g, lines, ind):
        """Lines of row group g, under `ROWS > 8g` past the first group."""
        pad = ' ' * ind
        if g == 0:
            return [pad + l for l in lines]
        return [f'{pad}if (ROWS > {8*g}u) {{'] + [pad + '    ' + l for l in lines] + [pad + '}']

    L.append("        if (WGRAD) {")
    L.append("            // The 4 positions of this step: one output row's qx .. qx + 3 of one image.")
    L.append("            let wq = 4u * kq;")
    L.append("            let wimg = wq / (QH * QW);")
    L.append("            let wr = wq % (QH * QW);")
    L.append("            let qy = wr / QW;")
    L.append("            let qx = wr % QW;")
    L.append("            let acol = wimg * (QW / 4u) + qx / 4u;")
    for g in range(G):
        L += guarded(g, [f'mine{g} = textureLoad(at, vec2<u32>(acol, arow{g} * QH + qy));'], 12)
    for j in range(4):
        qx = f'qx + {j}u' if j else 'qx'
        L.append(f'            b{j} = wgrad_b(wimg, qy, {qx}, wky, wkx, wc4);')
    L.append('        } else {')
    for g in range(G):
        L += guarded(g, [f'mine{g} = textureLoad(at, vec2<u32>(kq, arow{g}));'], 12)
    L.append('            if (IMPLICIT) {')
    L += [f'                b{j} = implicit_b(4u * kq + {j}u, col0, y0, x0);' for j in range(4)]
    L.append('            } else {')
    L += [f'                b{j} = textureLoad(bt, vec2<u32>(cc, 4u * kq + {j}u));' for j in range(4)]
    L.append('            }')
    L.append('        }')
    for g in range(G):
        body = [f'let s{8*g+l} = subgroupBroadcast(mine{g}, {l}u);' for l in range(8)]
        body += [f'acc{8*g+l} = madd(acc{8*g+l}, s{8*g+l}, b0, b1, b2, b3);' for l in range(8)]
        L += guarded(g, body, 8)
    L.append('    }')
    L.append('    if (col4 < n4) {')
    for g in range(G):
        L += guarded(g, [f'store_c4(c_base, ldc4, row0 + {8*g+l}u, out4, acc{8*g+l});' for l in range(8)], 8)
    L.append('    }')
    L.append('}')
    open(sys.argv[2], 'w').write(keep + '\n'.join(L) + '\n')
    sys.exit(0)
head = src[:src.index('@compute @workgroup_size(64)')] if '@compute' in src else src
head = head.replace('covers 8 rows x 256 columns; each invocation owns 8 rows x 4', f'covers {rows} rows x 256 columns; each invocation owns {rows} rows x 4')
G = rows // 8
L = ['''@compute @workgroup_size(64)
fn ENTRY(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let tile = wid.x + wid.y * nwg.x;
    if (tile >= p.tiles_total) {
        return;
    }
    // Consecutive workgroups take consecutive row blocks of the same columns, so the slice of B
    // they stream stays in cache.
    let tiles_m = p.tiles_total / p.tiles_n;
    let row0 = (tile % tiles_m) * RB_ROWS;
    let n4 = p.n / 4u;
    let k4 = p.k / 4u;
    let m4 = p.m / 4u;
    let col4 = (tile / tiles_m) * 64u + lidx;
    let cc = min(col4, n4 - 1u);
    // What this lane loads of A for each group g of 8 rows: row row0 + 8g + (lane % 8), or for
    // TRANS_A the 4 rows row0 + 8g + 4 * ((lane % 8) / 4) .. +3 at k = 4 kq + lane % 4.
    let l8 = lane % 8u;
'''.replace('RB_ROWS', f'{rows}u').replace('ENTRY', 'gemm_subgroup')]
for g in range(G):
    L.append(f'    let arow{g} = min(row0 + {8*g}u + l8, p.m - 1u);')
    L.append(f'    let arow4_{g} = min(row0 / 4u + {2*g}u + l8 / 4u, max(m4, 1u) - 1u);')
for i in range(rows):
    L.append(f'    var acc{i} = vec4<f32>(0.0);')
L.append('    for (var kq = 0u; kq < k4; kq++) {')
for g in range(G):
    L.append(f'''        var mine{g}: vec4<f32>;
        if (TRANS_A) {{
            mine{g} = load_a4((4u * kq + l8 % 4u) * m4 + arow4_{g});
        }} else {{
            mine{g} = load_a4(arow{g} * k4 + kq);
        }}''')
L.append('''        var b0: vec4<f32>;
        var b1: vec4<f32>;
        var b2: vec4<f32>;
        var b3: vec4<f32>;
        if (TRANS_B) {
            let t0 = b[(4u * cc + 0u) * k4 + kq];
            let t1 = b[(4u * cc + 1u) * k4 + kq];
            let t2 = b[(4u * cc + 2u) * k4 + kq];
            let t3 = b[(4u * cc + 3u) * k4 + kq];
            b0 = vec4<f32>(t0.x, t1.x, t2.x, t3.x);
            b1 = vec4<f32>(t0.y, t1.y, t2.y, t3.y);
            b2 = vec4<f32>(t0.z, t1.z, t2.z, t3.z);
            b3 = vec4<f32>(t0.w, t1.w, t2.w, t3.w);
        } else {
            b0 = b[(4u * kq + 0u) * n4 + cc];
            b1 = b[(4u * kq + 1u) * n4 + cc];
            b2 = b[(4u * kq + 2u) * n4 + cc];
            b3 = b[(4u * kq + 3u) * n4 + cc];
        }''')
for g in range(G):
    for l in range(8):
        L.append(f'        let s{8*g+l} = subgroupBroadcast(mine{g}, {l}u);')
L.append('        if (TRANS_A) {')
for i in range(rows):
    g = i // 4; comp = 'xyzw'[i % 4]
    ks = [f's{j + 4*g}.{comp}' for j in range(4)]
    L.append(f'            acc{i} = madd(acc{i}, vec4<f32>({", ".join(ks)}), b0, b1, b2, b3);')
L.append('        } else {')
for i in range(rows):
    L.append(f'            acc{i} = madd(acc{i}, s{i}, b0, b1, b2, b3);')
L.append('        }\n    }\n    if (col4 < n4) {')
for i in range(rows):
    L.append(f'        store_c4(row0 + {i}u, col4, acc{i});')
L.append('    }\n}\n')
open(sys.argv[2], 'w').write(head + '\n'.join(L))

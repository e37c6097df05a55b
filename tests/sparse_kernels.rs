//! The compressed sparse kernels (SpMM forward and input gradient, SDDMM) against their CPU twins,
//! on odd shapes, empty rows, full rows, a single active weight and a batch spanning several
//! workgroup blocks; and the index layout against its builder.

mod common;

use common::{assert_close, ctx, data, mask};
use rigl::cpu::sparse as twin;
use rigl::gpu::ops::run;
use rigl::gpu::spmm::{meta, sddmm_with_bias, spmm, Metadata, SparseShape};
use rigl::gpu::texture::{meta_texture, Texture};
use rigl::gpu::Tensor;
use rigl::sparse::csr::CsrIndex;

struct Case {
    name: &'static str,
    in_dim: usize,
    out_dim: usize,
    batch: usize,
    mask: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let mut v = vec![];
    let (i, o) = (37, 23);
    v.push(Case {
        name: "odd shape, 20% dense",
        in_dim: i,
        out_dim: o,
        batch: 12,
        mask: mask(i * o, 0.2, 1),
    });
    // Empty and full output rows and input rows.
    let mut m = mask(i * o, 0.3, 2);
    for c in 0..i {
        m[c * o + 3] = 0.0; // output row 3 empty
        m[c * o + 5] = 1.0; // output row 5 full
    }
    for r in 0..o {
        m[7 * o + r] = 0.0; // input row 7 empty
        m[9 * o + r] = 1.0; // input row 9 full
    }
    v.push(Case {
        name: "empty and full rows",
        in_dim: i,
        out_dim: o,
        batch: 8,
        mask: m,
    });
    let mut single = vec![0.0; 11 * 13];
    single[5 * 13 + 7] = 1.0;
    v.push(Case {
        name: "one active weight",
        in_dim: 11,
        out_dim: 13,
        batch: 4,
        mask: single,
    });
    v.push(Case {
        name: "fully dense",
        in_dim: 9,
        out_dim: 17,
        batch: 20,
        mask: vec![1.0; 9 * 17],
    });
    v.push(Case {
        name: "two vec4s per lane",
        in_dim: 13,
        out_dim: 7,
        batch: 400,
        mask: mask(13 * 7, 0.4, 5),
    });
    v.push(Case {
        name: "three vec4s per lane",
        in_dim: 7,
        out_dim: 9,
        batch: 680,
        mask: mask(7 * 9, 0.6, 6),
    });
    v.push(Case {
        name: "batch of several blocks",
        in_dim: 19,
        out_dim: 6,
        batch: 1036,
        mask: mask(19 * 6, 0.5, 3),
    });
    v
}

#[test]
fn pack_kernels_write_the_texture_and_the_buffer() {
    use rigl::gpu::spmm::{pack, PackOp};
    let ctx = ctx();
    let (rows, b) = (5, 12);
    let y0 = data(rows * b, 20);
    let a = data(rows * b, 21);
    let bias = data(rows, 22);
    for (name, op_kind) in [("copy", 0), ("bias+relu", 1), ("relu backward", 2)] {
        let y = Tensor::from_f32(ctx, "y", &y0).unwrap();
        let a_t = Tensor::from_f32(ctx, "a", &a).unwrap();
        let bias_t = Tensor::from_f32(ctx, "bias", &bias).unwrap();
        let t = Texture::new(ctx, "t", rows, b).unwrap();
        let op = match op_kind {
            0 => PackOp::Copy,
            1 => PackOp::BiasAct(&bias_t, true),
            _ => PackOp::ReluBwd(&a_t),
        };
        let want: Vec<f32> = (0..rows * b)
            .map(|i| match op_kind {
                0 => y0[i],
                1 => (y0[i] + bias[i / b]).max(0.0),
                _ => {
                    if a[i] > 0.0 {
                        y0[i]
                    } else {
                        0.0
                    }
                }
            })
            .collect();
        let p = pack(ctx, op, &y, &t).unwrap();
        // Read the texture back through a forward product with an identity matrix.
        let idx = CsrIndex::from_mask(
            rows,
            rows,
            &(0..rows * rows)
                .map(|i| if i % (rows + 1) == 0 { 1.0 } else { 0.0 })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let s = SparseShape {
            in_dim: rows,
            out_dim: rows,
            nnz: rows,
            batch: b,
        };
        let idx_t = Tensor::from_u32(ctx, "index", &idx.to_words()).unwrap();
        let ones = Tensor::from_f32(ctx, "ones", &vec![1.0; rows]).unwrap();
        let out = Tensor::zeros(ctx, "out", rows * b).unwrap();
        let fm = meta_texture(ctx, "meta", rows).unwrap();
        let vt = meta_texture(ctx, "values", rows).unwrap();
        let me = meta(ctx, s, &idx_t, &ones, 0, &vt, &fm, None).unwrap();
        let fmeta = Metadata {
            index: &fm,
            values: &vt,
        };
        let f = spmm(ctx, s, &idx_t, &fmeta, &t, &out, true).unwrap();
        run(ctx, "pack", &[&p, &me, &f]).unwrap();
        assert_eq!(y.read_f32(ctx).unwrap(), want, "{name}: buffer");
        assert_eq!(out.read_f32(ctx).unwrap(), want, "{name}: texture");
    }
}

#[test]
fn index_layout_round_trips_and_orders_slots() {
    let m = mask(37 * 23, 0.2, 4);
    let idx = CsrIndex::from_mask(37, 23, &m).unwrap();
    assert_eq!(idx.mask(), m);
    assert!(idx.pos.windows(2).all(|w| w[0] < w[1]));
    let back = CsrIndex::from_words(37, 23, idx.nnz(), &idx.to_words()).unwrap();
    assert_eq!(back, idx);
    // Every output row's entries name slots of that row, inputs increasing.
    for r in 0..23 {
        let ents = &idx.fwd_slot[idx.out_ptr[r] as usize..idx.out_ptr[r + 1] as usize];
        let cols: Vec<u32> = ents.iter().map(|&s| idx.pos[s as usize] / 23).collect();
        assert!(ents.iter().all(|&s| idx.pos[s as usize] as usize % 23 == r));
        assert!(cols.windows(2).all(|w| w[0] < w[1]));
    }
    let vals = data(idx.nnz(), 5);
    assert_eq!(idx.gather(&idx.scatter(&vals)), vals);
}

#[test]
fn sparse_products_match_the_cpu_twins() {
    let ctx = ctx();
    for case in cases() {
        let idx = CsrIndex::from_mask(case.in_dim, case.out_dim, &case.mask).unwrap();
        let s = SparseShape {
            in_dim: case.in_dim,
            out_dim: case.out_dim,
            nnz: idx.nnz(),
            batch: case.batch,
        };
        let vals = data(s.nnz.max(1), 10);
        let x = data(case.in_dim * case.batch, 11);
        let d = data(case.out_dim * case.batch, 12);
        let idx_t = Tensor::from_u32(ctx, "index", &idx.to_words()).unwrap();
        let vals_t = Tensor::from_f32(ctx, "values", &vals).unwrap();
        let x_t = Texture::from_f32(ctx, "x", &x, case.in_dim, case.batch).unwrap();
        let d_t = Texture::from_f32(ctx, "d", &d, case.out_dim, case.batch).unwrap();
        let y_t = Tensor::from_f32(ctx, "y", &vec![f32::NAN; case.out_dim * case.batch]).unwrap();
        let dx_t = Tensor::from_f32(ctx, "dx", &vec![f32::NAN; case.in_dim * case.batch]).unwrap();
        let g_t = Tensor::from_f32(ctx, "g", &vec![f32::NAN; s.nnz.max(1)]).unwrap();
        // The layer's slots start at 70 in a larger value texture, as a model's later layers do.
        let fm = meta_texture(ctx, "fwd meta", s.nnz).unwrap();
        let bm = meta_texture(ctx, "bwd meta", s.nnz).unwrap();
        let vt = meta_texture(ctx, "values", 70 + s.nnz).unwrap();
        let me = meta(ctx, s, &idx_t, &vals_t, 70, &vt, &fm, Some(&bm)).unwrap();
        let fmeta = Metadata {
            index: &fm,
            values: &vt,
        };
        let bmeta = Metadata {
            index: &bm,
            values: &vt,
        };
        let fwd = spmm(ctx, s, &idx_t, &fmeta, &x_t, &y_t, true).unwrap();
        let bwd = spmm(ctx, s, &idx_t, &bmeta, &d_t, &dx_t, false).unwrap();
        let bg_t = Tensor::from_f32(ctx, "bias grad", &vec![f32::NAN; case.out_dim]).unwrap();
        let sd = sddmm_with_bias(ctx, s, &idx_t, &x_t, &d_t, &g_t, Some(&bg_t)).unwrap();
        run(ctx, "sparse products", &[&me, &fwd, &bwd, &sd]).unwrap();
        let vals = &vals[..s.nnz];
        let tol = (1e-5, 1e-4);
        assert_close(
            &format!("{}: forward", case.name),
            &y_t.read_f32(ctx).unwrap(),
            &twin::spmm_forward(&idx, vals, &x, case.batch),
            tol.0,
            tol.1,
        );
        assert_close(
            &format!("{}: input gradient", case.name),
            &dx_t.read_f32(ctx).unwrap(),
            &twin::spmm_input_grad(&idx, vals, &d, case.batch),
            tol.0,
            tol.1,
        );
        let g = g_t.read_f32(ctx).unwrap();
        assert_close(
            &format!("{}: sddmm", case.name),
            &g[..s.nnz],
            &twin::sddmm(&idx, &x, &d, case.batch),
            1e-4,
            1e-4,
        );
        // The bias gradient rides along, empty rows included.
        assert_close(
            &format!("{}: bias gradient", case.name),
            &bg_t.read_f32(ctx).unwrap(),
            &rigl::cpu::dense::segment_sum(&d, case.out_dim, case.batch),
            1e-4,
            1e-4,
        );
        // The dense reference agrees with the twins (masked weights).
        let dense_w = idx.scatter(vals);
        let mut y_dense = vec![0.0f32; case.out_dim * case.batch];
        rigl::cpu::dense::gemm(
            rigl::gpu::GemmShape {
                m: case.out_dim,
                n: case.batch,
                k: case.in_dim,
                trans_a: true,
                trans_b: false,
            },
            &dense_w,
            &x,
            &mut y_dense,
            None,
            false,
        );
        assert_close(
            &format!("{}: twin vs dense", case.name),
            &twin::spmm_forward(&idx, vals, &x, case.batch),
            &y_dense,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn sparse_kernels_refuse_a_batch_not_multiple_of_4() {
    let ctx = ctx();
    let idx = CsrIndex::from_mask(3, 2, &[1.0; 6]).unwrap();
    let s = SparseShape {
        in_dim: 3,
        out_dim: 2,
        nnz: 6,
        batch: 6,
    };
    let t = Tensor::from_u32(ctx, "index", &idx.to_words()).unwrap();
    let f = Tensor::zeros(ctx, "f", 64).unwrap();
    let x = Texture::new(ctx, "x", 3, 8).unwrap();
    let mt = meta_texture(ctx, "m", 6).unwrap();
    let m = Metadata {
        index: &mt,
        values: &mt,
    };
    let err = spmm(ctx, s, &t, &m, &x, &f, true).unwrap_err().to_string();
    assert!(err.contains("multiple of 4"), "{err}");
    let err = Texture::new(ctx, "x", 3, 6).unwrap_err().to_string();
    assert!(err.contains("multiple of 4"), "{err}");
    // A texture of the wrong shape is refused, naming it.
    let s = SparseShape { batch: 8, ..s };
    let err = spmm(
        ctx,
        s,
        &t,
        &m,
        &Texture::new(ctx, "narrow", 2, 8).unwrap(),
        &f,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("'narrow'") && err.contains("needs 3"), "{err}");
}

//! Which kernels a sparse model runs on: compressed sparse (CSR SpMM/SDDMM) or masked-dense
//! (GEMM over all weights with a 0/1 mask). `auto` times both for every layer at its shape,
//! density and batch on the current adapter, once: the timings are kept in the on-disk tuning
//! cache ([`crate::gpu::tuning`]), so every run on a machine makes the same choice.

use serde::{Deserialize, Serialize};

use crate::error::{Result, RiglError};
use crate::gpu::profile;
use crate::gpu::spmm::{self, SparseShape};
use crate::gpu::texture::{meta_texture, Texture};
use crate::gpu::tuning;
use crate::gpu::{gemm, GemmOp, GemmShape, GpuContext, Tensor};
use crate::nn::model::DenseProducts;
use crate::sparse::csr::CsrIndex;
use crate::sparse::init::{init_layer, WeightInit};

/// The `--kernels` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    /// Time both on this adapter and take the faster.
    #[default]
    Auto,
    /// Compressed sparse layers.
    Sparse,
    /// Masked-dense layers (the reference path).
    Masked,
}

impl KernelChoice {
    /// Parses `auto`, `sparse` or `masked`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(KernelChoice::Auto),
            "sparse" => Ok(KernelChoice::Sparse),
            "masked" => Ok(KernelChoice::Masked),
            o => Err(RiglError::invalid(format!(
                "unknown kernels '{o}' (expected auto, sparse or masked)"
            ))),
        }
    }

    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            KernelChoice::Auto => "auto",
            KernelChoice::Sparse => "sparse",
            KernelChoice::Masked => "masked",
        }
    }
}

/// Measured cost of one layer's training products (forward, weight gradient, and the input
/// gradient unless it is the first layer) on both paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerTiming {
    /// Layer name.
    pub name: String,
    /// Compressed sparse kernels, ms.
    pub sparse_ms: f64,
    /// Masked-dense GEMMs, ms.
    pub masked_ms: f64,
    /// Each product on its own (a convolution's): what picks its path. Absent, the layer runs
    /// all of its products on the faster path of the two sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<ProductTimings>,
    /// The model's first convolution fused with its ReLU and max pooling
    /// ([`crate::nn::model::fused_first_conv`]): one kernel family whatever the paths, not
    /// timed (both times 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fused: bool,
}

/// One product's time both ways, ms: on the compressed kernels, and dense over the scattered
/// slots (the scatter or gather it needs included).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductTiming {
    /// Compressed kernels, ms.
    pub sparse_ms: f64,
    /// Dense over the slots, ms.
    pub dense_ms: f64,
}

impl ProductTiming {
    /// Whether the dense product measured faster (a tie stays compressed: its memory is the
    /// one that follows the density).
    pub fn dense_faster(&self) -> bool {
        self.dense_ms < self.sparse_ms
    }

    /// The faster of the two, ms.
    pub fn best_ms(&self) -> f64 {
        self.sparse_ms.min(self.dense_ms)
    }
}

/// A convolution's training products, each timed both ways.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductTimings {
    /// The forward product.
    pub forward: ProductTiming,
    /// The weight gradient.
    pub weight_grad: ProductTiming,
    /// The input gradient (None for the first layer, which has none).
    pub input_grad: Option<ProductTiming>,
}

impl ProductTimings {
    /// The products, in order.
    fn iter(&self) -> impl Iterator<Item = &ProductTiming> {
        [&self.forward, &self.weight_grad]
            .into_iter()
            .chain(self.input_grad.as_ref())
    }

    /// Sum of the compressed times, ms.
    pub fn sparse_ms(&self) -> f64 {
        self.iter().map(|t| t.sparse_ms).sum()
    }

    /// Sum of the dense times, ms.
    pub fn dense_ms(&self) -> f64 {
        self.iter().map(|t| t.dense_ms).sum()
    }

    /// Sum of the faster of each, ms.
    pub fn best_ms(&self) -> f64 {
        self.iter().map(ProductTiming::best_ms).sum()
    }

    /// Each product on its faster path.
    pub fn paths(&self) -> DenseProducts {
        DenseProducts {
            forward: self.forward.dense_faster(),
            weight_grad: self.weight_grad.dense_faster(),
            // The first layer has no input gradient: it counts as following the others.
            input_grad: self
                .input_grad
                .map_or(self.forward.dense_faster(), |t| t.dense_faster()),
        }
    }
}

impl LayerTiming {
    /// The products of this layer that run dense.
    pub fn paths(&self) -> DenseProducts {
        match &self.products {
            Some(p) => p.paths(),
            None => DenseProducts::all(self.masked_ms < self.sparse_ms),
        }
    }

    /// Its time with each product (or the whole layer, without per-product timings) on its
    /// faster path, ms.
    pub fn best_ms(&self) -> f64 {
        match &self.products {
            Some(p) => p.best_ms(),
            None => self.sparse_ms.min(self.masked_ms),
        }
    }
}

/// The outcome of a kernel choice.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Decision {
    // (`kernels` is the model's storage; with `sparse`, a layer whose measured masked-dense
    // products beat its sparse ones runs on dense GEMMs: see [`Decision::dense_layers`].)
    /// `sparse` or `masked`.
    pub kernels: &'static str,
    /// Why (the setting, a measurement, or what the sparse path lacks here).
    pub reason: String,
    /// Per-layer timings when measured.
    pub layers: Vec<LayerTiming>,
}

/// Times one layer's training products on both paths (ms): (sparse, masked).
pub fn time_layer(ctx: &GpuContext, s: SparseShape, first: bool) -> Result<(f64, f64)> {
    let variant = gemm::choose_variant(ctx)?;
    // The kernels' sources and the GEMM variant are part of the key: timings taken with other
    // kernels say nothing about these.
    let key = format!(
        "layer path|{}|{}x{}|nnz {}|batch {}|{}|gemm {}",
        tuning::device_key(ctx),
        s.in_dim,
        s.out_dim,
        s.nnz,
        s.batch,
        if first { "first" } else { "inner" },
        variant.as_str(),
    );
    tuning::get_or_measure(&key, || measure_layer(ctx, s, first, variant))
}

/// [`time_layer`]'s measurement.
fn measure_layer(
    ctx: &GpuContext,
    s: SparseShape,
    first: bool,
    variant: gemm::GemmVariant,
) -> Result<(f64, f64)> {
    let (i, o, b) = (s.in_dim, s.out_dim, s.batch);
    let init = init_layer(0, 0, &[i, o], s.nnz, WeightInit::GlorotUniform)?;
    let idx = CsrIndex::from_mask(i, o, &init.mask)?;
    let fill = |len: usize| vec![0.5f32; len];
    let idx_t = Tensor::from_u32(ctx, "timing index", &idx.to_words())?;
    let vals = Tensor::from_f32(ctx, "timing values", &idx.gather(&init.weights))?;
    let w = Tensor::from_f32(ctx, "timing weights", &init.weights)?;
    let mask = Tensor::from_f32(ctx, "timing mask", &init.mask)?;
    let x = Tensor::from_f32(ctx, "timing input", &fill(i * b))?;
    let d = Tensor::from_f32(ctx, "timing output gradient", &fill(o * b))?;
    let xt = Texture::from_f32(ctx, "timing input", &fill(i * b), i, b)?;
    let dt = Texture::from_f32(ctx, "timing output gradient", &fill(o * b), o, b)?;
    let y = Tensor::zeros(ctx, "timing output", o * b)?;
    let dx = Tensor::zeros(ctx, "timing input gradient", i * b)?;
    let g = Tensor::zeros(ctx, "timing gradient", s.nnz)?;
    let gd = Tensor::zeros(ctx, "timing dense gradient", i * o)?;
    let fm = meta_texture(ctx, "timing forward metadata", s.nnz)?;
    let bm = meta_texture(ctx, "timing backward metadata", s.nnz)?;
    let vt = meta_texture(ctx, "timing values", s.nnz)?;
    let me = spmm::meta(ctx, s, &idx_t, &vals, 0, &vt, &fm, (!first).then_some(&bm))?;
    crate::gpu::ops::run(ctx, "timing metadata", &[&me])?;
    let fmeta = spmm::Metadata {
        index: &fm,
        values: &vt,
    };
    let bmeta = spmm::Metadata {
        index: &bm,
        values: &vt,
    };
    let mut sparse_ops = vec![
        spmm::spmm(ctx, s, &idx_t, &fmeta, &xt, &y, true)?,
        spmm::sddmm(ctx, s, &idx_t, &xt, &dt, &g)?,
    ];
    if !first {
        sparse_ops.push(spmm::spmm(ctx, s, &idx_t, &bmeta, &dt, &dx, false)?);
    }
    let op = |shape: GemmShape, a: &Tensor, bm: &Tensor, c: &Tensor, m: Option<&Tensor>| {
        GemmOp::new(
            ctx,
            shape,
            crate::gpu::gemm::pick_untracked(ctx, variant, &shape)?,
            a,
            bm,
            c,
            m,
            false,
        )
        .map(|g| g.dispatch)
    };
    let mut masked_ops = vec![
        op(
            GemmShape {
                m: o,
                n: b,
                k: i,
                trans_a: true,
                trans_b: false,
            },
            &w,
            &x,
            &y,
            Some(&mask),
        )?,
        op(
            GemmShape {
                m: i,
                n: o,
                k: b,
                trans_a: false,
                trans_b: true,
            },
            &x,
            &d,
            &gd,
            None,
        )?,
    ];
    if !first {
        masked_ops.push(op(GemmShape::nn(i, b, o), &w, &d, &dx, Some(&mask))?);
    }
    let sp: Vec<_> = sparse_ops.iter().collect();
    let ms: Vec<_> = masked_ops.iter().collect();
    // Both by the wall clock: the two must be measured alike, and lavapipe's timestamps are
    // unreliable around texture reads (see gpu::profile).
    let (sparse_ms, _) = profile::time_ops(ctx, &sp, 1, 3, true)?;
    let (masked_ms, _) = profile::time_ops(ctx, &ms, 1, 3, true)?;
    Ok((sparse_ms, masked_ms))
}

/// Times one convolution kernel's training products (forward, weight gradient, and the input
/// gradient unless it is the first layer) over `nnz` active weights, each on both ways a
/// compressed kernel can run it: the compressed kernels, and the dense product over its slots
/// scattered into a dense scratch (the scatter, or the gradient's gather, included). Cached
/// like [`time_layer`].
pub fn time_conv(
    ctx: &GpuContext,
    g: crate::gpu::conv::ConvGeom,
    nnz: usize,
    first: bool,
) -> Result<ProductTimings> {
    let form = crate::gpu::sparse_conv::SparseConvForm::pick(ctx);
    let w = &g.window;
    let key = format!(
        "conv products|{}|{}x{} k{} s{} {:?}|{}->{}|nnz {nnz}|batch {}|{}|{}",
        tuning::device_key(ctx),
        w.h,
        w.w,
        w.k,
        w.stride,
        w.padding,
        g.cin,
        g.cout,
        w.n,
        if first { "first" } else { "inner" },
        form.as_str(),
    );
    tuning::get_or_measure(&key, || measure_conv(ctx, g, nnz, first, form))
}

/// [`time_conv`]'s measurement.
fn measure_conv(
    ctx: &GpuContext,
    g: crate::gpu::conv::ConvGeom,
    nnz: usize,
    first: bool,
    form: crate::gpu::sparse_conv::SparseConvForm,
) -> Result<ProductTimings> {
    use crate::gpu::conv;
    use crate::gpu::sparse_conv::{self as sc, Layout, Scratch};
    use crate::gpu::spmm::SlotOp;
    let (rows, cols) = (g.window.k * g.window.k * g.cin, g.cout);
    let init = init_layer(0, 0, &[rows, cols], nnz, WeightInit::GlorotUniform)?;
    let idx = CsrIndex::from_mask(rows, cols, &init.mask)?;
    let (ho, wo) = g.out()?;
    let n = g.window.n;
    let fill = |len: usize| vec![0.5f32; len];
    let idx_t = Tensor::from_u32(ctx, "timing index", &idx.to_words())?;
    let vals = Tensor::from_f32(ctx, "timing values", &idx.gather(&init.weights))?;
    let x = Tensor::from_f32(
        ctx,
        "timing input",
        &fill(g.cin * n * g.window.h * g.window.w),
    )?;
    let dy = Tensor::from_f32(ctx, "timing output gradient", &fill(cols * n * ho * wo))?;
    let y = Tensor::zeros(ctx, "timing output", cols * n * ho * wo)?;
    let dx = Tensor::zeros(ctx, "timing input gradient", x.len)?;
    let grad = Tensor::zeros(ctx, "timing slot gradient", nnz)?;
    let wd = Tensor::zeros(ctx, "timing dense weights", rows * cols)?;
    let gd = Tensor::zeros(ctx, "timing dense gradient", rows * cols)?;
    let lay = Layout::new(g)?;
    let scratch = Scratch::new(ctx, &[lay], nnz)?;
    let s = SparseShape {
        in_dim: rows,
        out_dim: cols,
        nnz,
        batch: n,
    };
    let slot = |op: SlotOp, dense: &Tensor| spmm::slots(ctx, op, s, &idx_t, &vals, dense, &grad);
    // Per product: (compressed, dense over the slots), as the model builds them.
    let mut products = vec![
        (
            vec![sc::forward(
                ctx, form, &lay, nnz, &idx_t, &vals, None, &x, &y, &scratch,
            )?],
            vec![
                slot(SlotOp::Zero, &wd)?,
                slot(SlotOp::Scatter, &wd)?,
                conv::forward(ctx, g, &x, &wd, None, None, &y)?,
            ],
        ),
        (
            vec![sc::weight_grad(
                ctx, form, &lay, nnz, &idx_t, &x, &dy, &grad, &scratch,
            )?],
            vec![
                conv::weight_grad(ctx, g, &x, &dy, &gd, false)?,
                slot(SlotOp::Gather, &gd)?,
            ],
        ),
    ];
    if !first {
        products.push((
            vec![sc::input_grad(
                ctx, form, &lay, nnz, &idx_t, &vals, &dy, &dx, false, &scratch,
            )?],
            vec![
                slot(SlotOp::Zero, &wd)?,
                slot(SlotOp::Scatter, &wd)?,
                conv::input_grad(ctx, g, &dy, &wd, None, &dx, false)?,
            ],
        ));
    }
    let lists: Vec<(Vec<_>, Vec<_>)> = products
        .iter()
        .map(|(sp, dn)| (sp.iter().collect(), dn.iter().collect()))
        .collect();
    // Alternated rounds, so a drift of the machine's speed falls on both ways alike.
    let mut times = vec![(Vec::new(), Vec::new()); lists.len()];
    for (sp, dn) in &lists {
        crate::gpu::ops::run(ctx, "timing warm-up", sp)?;
        crate::gpu::ops::run(ctx, "timing warm-up", dn)?;
    }
    for _ in 0..3 {
        for ((sp, dn), (st, dt)) in lists.iter().zip(times.iter_mut()) {
            st.push(profile::time_ops(ctx, sp, 0, 1, true)?.0);
            dt.push(profile::time_ops(ctx, dn, 0, 1, true)?.0);
        }
    }
    let mut timed = times.into_iter().map(|(mut st, mut dt)| ProductTiming {
        sparse_ms: profile::median(&mut st),
        dense_ms: profile::median(&mut dt),
    });
    let (Some(forward), Some(weight_grad)) = (timed.next(), timed.next()) else {
        return Err(RiglError::invalid(
            "a convolution timed without its products",
        ));
    };
    Ok(ProductTimings {
        forward,
        weight_grad,
        input_grad: timed.next(),
    })
}

impl Decision {
    /// Per layer, whether a compressed model runs it on dense GEMMs: where its measured
    /// masked-dense products were faster (all false without per-layer timings).
    pub fn dense_layers(&self, n_layers: usize) -> Vec<bool> {
        dense_layers(&self.layers, n_layers)
    }

    /// Per weight tensor of a model of layers, which of its products run dense over its slots
    /// (none without per-tensor timings).
    pub fn dense_products(&self, n_params: usize) -> Vec<DenseProducts> {
        dense_products(&self.layers, n_params)
    }
}

/// [`Decision::dense_layers`] from per-layer timings (used again on resume).
pub fn dense_layers(timings: &[LayerTiming], n_layers: usize) -> Vec<bool> {
    if timings.len() != n_layers {
        return vec![false; n_layers];
    }
    timings.iter().map(|t| t.masked_ms < t.sparse_ms).collect()
}

/// [`Decision::dense_products`] from per-tensor timings (used again on resume: a run recorded
/// before per-product timings replays its per-tensor choice).
pub fn dense_products(timings: &[LayerTiming], n_params: usize) -> Vec<DenseProducts> {
    if timings.len() != n_params {
        return vec![DenseProducts::default(); n_params];
    }
    timings.iter().map(LayerTiming::paths).collect()
}

/// Decides the kernels of a model of layer widths `sizes` with `active` weights per layer.
/// `method_ok` is false for methods the sparse path does not run (dense, SNFS, pruning), with
/// `why` naming the reason.
pub fn decide(
    ctx: &GpuContext,
    choice: KernelChoice,
    sizes: &[usize],
    active: &[usize],
    batch: usize,
    method_ok: std::result::Result<(), String>,
) -> Result<Decision> {
    let unsupported = method_ok
        .and_then(|()| spmm::support(ctx))
        .and_then(|()| {
            if spmm::batch_supported(batch) {
                Ok(())
            } else {
                Err(format!(
                    "batch {batch} is not a multiple of 4 (the sparse kernels load 4 samples at once)"
                ))
            }
        })
        .and_then(|()| {
            let widest = sizes.iter().copied().max().unwrap_or(0);
            if crate::gpu::texture::fits(ctx, widest, batch) {
                Ok(())
            } else {
                Err(format!(
                    "a layer of {widest} features or a batch of {batch} does not fit an \
                     activation texture (max_texture_dimension_2d {})",
                    ctx.limits.max_texture_dimension_2d
                ))
            }
        })
        .err();
    match (choice, unsupported) {
        (KernelChoice::Masked, _) => Ok(Decision {
            kernels: "masked",
            reason: "--kernels masked".into(),
            layers: vec![],
        }),
        (KernelChoice::Sparse, Some(why)) => Err(RiglError::invalid(format!(
            "--kernels sparse is not available: {why}"
        ))),
        (KernelChoice::Sparse, None) => Ok(Decision {
            kernels: "sparse",
            reason: "--kernels sparse".into(),
            layers: vec![],
        }),
        (KernelChoice::Auto, Some(why)) => Ok(Decision {
            kernels: "masked",
            reason: format!("auto: {why}"),
            layers: vec![],
        }),
        (KernelChoice::Auto, None) => {
            let mut layers = Vec::new();
            for l in 0..sizes.len() - 1 {
                let s = SparseShape {
                    in_dim: sizes[l],
                    out_dim: sizes[l + 1],
                    nnz: active[l],
                    batch,
                };
                let (sparse_ms, masked_ms) = time_layer(ctx, s, l == 0)?;
                layers.push(LayerTiming {
                    name: format!("fc{}", l + 1),
                    sparse_ms,
                    masked_ms,
                    products: None,
                    fused: false,
                });
            }
            let sparse: f64 = layers.iter().map(|t| t.sparse_ms).sum();
            let masked: f64 = layers.iter().map(|t| t.masked_ms).sum();
            let best: f64 = layers.iter().map(|t| t.sparse_ms.min(t.masked_ms)).sum();
            let on_gemm = dense_layers(&layers, layers.len());
            let n_gemm = on_gemm.iter().filter(|&&d| d).count();
            // Every layer faster masked: the masked-dense model (no compressed state at all).
            let kernels = if n_gemm == layers.len() {
                "masked"
            } else {
                "sparse"
            };
            let split = if kernels == "sparse" && n_gemm > 0 {
                let names: Vec<&str> = layers
                    .iter()
                    .zip(&on_gemm)
                    .filter(|(_, &d)| d)
                    .map(|(t, _)| t.name.as_str())
                    .collect();
                format!("; {} on dense GEMMs", names.join(", "))
            } else {
                String::new()
            };
            Ok(Decision {
                kernels,
                reason: format!(
                    "auto: the layers' products take {sparse:.2} ms sparse, {masked:.2} ms \
                     masked, {best:.2} ms choosing per layer on this adapter{split}"
                ),
                layers,
            })
        }
    }
}

/// One weight tensor of a model of layers, as [`decide_model`] times it.
#[derive(Clone, Debug)]
pub struct ParamShape {
    /// Name.
    pub name: String,
    /// A convolution's geometry over the batch (None: a linear layer).
    pub conv: Option<crate::gpu::conv::ConvGeom>,
    /// Rows of the weight matrix (`kh·kw·cin`, or inputs).
    pub rows: usize,
    /// Columns (outputs).
    pub cols: usize,
    /// Active weights.
    pub active: usize,
    /// Runs as the fused first convolution, ReLU and max pooling
    /// ([`crate::nn::model::fused_first_conv`]).
    pub fused: bool,
}

impl ParamShape {
    /// Every weight tensor of `host`'s model over batches of `batch`, with its active count.
    pub fn of_model(host: &crate::cpu::model::HostModel, batch: usize) -> Result<Vec<Self>> {
        let (_, layers) = host.spec.infer()?;
        let fused = crate::nn::model::fused_first_conv(&host.spec, batch).is_some();
        Ok(layers
            .iter()
            .zip(&host.weights)
            .enumerate()
            .map(|(i, (wl, hw))| {
                let cols = hw.shape.last().copied().unwrap_or(1).max(1);
                ParamShape {
                    name: hw.name.clone(),
                    conv: wl.conv_geom(batch),
                    rows: hw.w.len() / cols,
                    cols,
                    active: hw.mask.iter().filter(|&&m| m != 0.0).count(),
                    fused: fused && i == 0,
                }
            })
            .collect())
    }
}

/// Decides the kernels of a model of layers. `sparse` keeps every weight tensor compressed
/// (linear layers where [`crate::nn::model::linear_support`] allows) and runs the compressed
/// products; `auto` times, per tensor, the compressed products against the dense products over
/// its scattered slots and keeps the faster (`layers` holds the timings; every tensor faster
/// dense gives the masked-dense model); `masked` and the methods the compressed path does not
/// run (`method_ok`) give the masked-dense model.
pub fn decide_model(
    ctx: &GpuContext,
    choice: KernelChoice,
    params: &[ParamShape],
    batch: usize,
    method_ok: std::result::Result<(), String>,
) -> Result<Decision> {
    let mut decision = decide_model_paths(ctx, choice, params, batch, method_ok)?;
    if let Some(p) = params.iter().find(|p| p.fused) {
        decision.reason += &format!("; {} fused with its ReLU and max pooling", p.name);
    }
    Ok(decision)
}

fn decide_model_paths(
    ctx: &GpuContext,
    choice: KernelChoice,
    params: &[ParamShape],
    batch: usize,
    method_ok: std::result::Result<(), String>,
) -> Result<Decision> {
    let linear = crate::nn::model::linear_support(ctx, batch);
    let linear_note = match &linear {
        Ok(()) => "convolutions and linear layers compressed".to_string(),
        Err(why) => format!("convolutions compressed, linear layers masked-dense ({why})"),
    };
    match (choice, method_ok) {
        (KernelChoice::Masked, _) => Ok(Decision {
            kernels: "masked",
            reason: "--kernels masked".into(),
            layers: vec![],
        }),
        (KernelChoice::Sparse, Err(why)) => Err(RiglError::invalid(format!(
            "--kernels sparse is not available: {why}"
        ))),
        (KernelChoice::Sparse, Ok(())) => Ok(Decision {
            kernels: "sparse",
            reason: format!("--kernels sparse: {linear_note}"),
            layers: vec![],
        }),
        (KernelChoice::Auto, Err(why)) => Ok(Decision {
            kernels: "masked",
            reason: format!("auto: {why}"),
            layers: vec![],
        }),
        (KernelChoice::Auto, Ok(())) => {
            let mut layers = Vec::with_capacity(params.len());
            for (i, p) in params.iter().enumerate() {
                let first = i == 0;
                if p.fused {
                    layers.push(LayerTiming {
                        name: p.name.clone(),
                        sparse_ms: 0.0,
                        masked_ms: 0.0,
                        products: None,
                        fused: true,
                    });
                    continue;
                }
                let (sparse_ms, masked_ms, products) = match (&p.conv, &linear) {
                    (Some(g), _) => {
                        let t = time_conv(ctx, *g, p.active, first)?;
                        (t.sparse_ms(), t.dense_ms(), Some(t))
                    }
                    (None, Ok(())) => {
                        let (s, m) = time_layer(
                            ctx,
                            SparseShape {
                                in_dim: p.rows,
                                out_dim: p.cols,
                                nnz: p.active,
                                batch,
                            },
                            first,
                        )?;
                        (s, m, None)
                    }
                    // Not compressible here: it stays masked-dense whatever the timings say.
                    (None, Err(_)) => (0.0, 0.0, None),
                };
                layers.push(LayerTiming {
                    name: p.name.clone(),
                    sparse_ms,
                    masked_ms,
                    products,
                    fused: false,
                });
            }
            Ok(model_decision(layers, &linear_note))
        }
    }
}

/// The decision `auto` makes from per-tensor timings: each product on its faster path, and the
/// masked-dense model when every product of every tensor is faster dense.
fn model_decision(layers: Vec<LayerTiming>, linear_note: &str) -> Decision {
    let sparse: f64 = layers.iter().map(|t| t.sparse_ms).sum();
    let masked: f64 = layers.iter().map(|t| t.masked_ms).sum();
    let best: f64 = layers.iter().map(LayerTiming::best_ms).sum();
    let paths = dense_products(&layers, layers.len());
    let kernels = if layers.iter().zip(&paths).all(|(t, p)| t.fused || p.every()) {
        "masked"
    } else {
        "sparse"
    };
    let mut on_dense = Vec::new();
    for (t, p) in layers.iter().zip(&paths).filter(|(t, _)| !t.fused) {
        if p.every() {
            on_dense.push(t.name.clone());
        } else if p.any() {
            let names: Vec<&str> = [
                (p.forward, "forward"),
                (p.weight_grad, "weight gradient"),
                (
                    p.input_grad && t.products.is_some_and(|q| q.input_grad.is_some()),
                    "input gradient",
                ),
            ]
            .into_iter()
            .filter_map(|(d, n)| d.then_some(n))
            .collect();
            on_dense.push(format!("{} ({})", t.name, names.join(", ")));
        }
    }
    let split = if kernels == "sparse" && !on_dense.is_empty() {
        format!("; dense products over the slots of {}", on_dense.join(", "))
    } else {
        String::new()
    };
    let what = if kernels == "sparse" {
        format!("; {linear_note}")
    } else {
        String::new()
    };
    Decision {
        kernels,
        reason: format!(
            "auto: the weight tensors' products take {sparse:.2} ms compressed, {masked:.2} ms \
             dense, {best:.2} ms choosing per product on this adapter{what}{split}"
        ),
        layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, sparse_ms: f64, masked_ms: f64) -> LayerTiming {
        LayerTiming {
            name: name.into(),
            sparse_ms,
            masked_ms,
            products: None,
            fused: false,
        }
    }

    #[test]
    fn layers_run_where_they_measured_faster() {
        let timings = [t("fc1", 3.0, 9.0), t("fc2", 1.0, 0.5), t("fc3", 0.2, 0.2)];
        // Ties stay sparse: the compressed path is the one whose memory scales with density.
        assert_eq!(dense_layers(&timings, 3), vec![false, true, false]);
        // Timings that do not describe the model (a forced choice) run every layer sparse.
        assert_eq!(dense_layers(&timings, 2), vec![false, false]);
        assert_eq!(dense_layers(&[], 3), vec![false; 3]);
        assert_eq!(
            KernelChoice::parse("Sparse").ok(),
            Some(KernelChoice::Sparse)
        );
        assert!(KernelChoice::parse("csr").is_err());
    }

    fn pt(sparse_ms: f64, dense_ms: f64) -> ProductTiming {
        ProductTiming {
            sparse_ms,
            dense_ms,
        }
    }

    #[test]
    fn each_product_runs_where_it_measured_faster() {
        let conv = |first: bool| ProductTimings {
            forward: pt(22.9, 8.9),
            weight_grad: pt(14.5, 35.7),
            input_grad: (!first).then(|| pt(26.0, 26.0)),
        };
        // The first layer has no input gradient: it follows the forward product.
        let first = conv(true);
        assert_eq!(
            first.paths(),
            DenseProducts {
                forward: true,
                weight_grad: false,
                input_grad: true,
            }
        );
        assert!((first.best_ms() - (8.9 + 14.5)).abs() < 1e-9);
        assert!((first.sparse_ms() - 37.4).abs() < 1e-9);
        // A tie stays compressed.
        assert!(!conv(false).paths().input_grad);
        let layer = |name: &str, p: ProductTimings| LayerTiming {
            name: name.into(),
            sparse_ms: p.sparse_ms(),
            masked_ms: p.dense_ms(),
            products: Some(p),
            fused: false,
        };
        let d = model_decision(
            vec![layer("conv1", conv(true)), t("fc3", 5.0, 26.0)],
            "note",
        );
        assert_eq!(d.kernels, "sparse");
        assert!(d.reason.contains("conv1 (forward)"), "{}", d.reason);
        assert_eq!(
            d.dense_products(2),
            vec![first.paths(), DenseProducts::all(false)]
        );
        // Every product of every tensor faster dense: the masked-dense model.
        let slow = ProductTimings {
            forward: pt(2.0, 1.0),
            weight_grad: pt(2.0, 1.0),
            input_grad: Some(pt(2.0, 1.0)),
        };
        let d = model_decision(vec![layer("a", slow), t("b", 2.0, 1.0)], "note");
        assert_eq!(d.kernels, "masked");
    }

    #[test]
    fn timings_recorded_before_per_product_choice_replay_per_tensor() {
        // A kernels.json or checkpoint of an earlier run has no `products`.
        let old: LayerTiming =
            serde_json::from_str(r#"{"name":"conv1","sparse_ms":34.7,"masked_ms":59.0}"#)
                .expect("old timing");
        assert_eq!(old.products, None);
        assert_eq!(old.paths(), DenseProducts::all(false));
        let faster_dense: LayerTiming =
            serde_json::from_str(r#"{"name":"conv2","sparse_ms":9.0,"masked_ms":3.0}"#)
                .expect("old timing");
        assert_eq!(faster_dense.paths(), DenseProducts::all(true));
        // Written without the field when there is none, with it when there is.
        let text = serde_json::to_string(&old).expect("json");
        assert!(!text.contains("products"), "{text}");
        let p = ProductTimings {
            forward: pt(1.0, 2.0),
            weight_grad: pt(1.0, 2.0),
            input_grad: None,
        };
        let new = LayerTiming {
            products: Some(p),
            ..old
        };
        let back: LayerTiming =
            serde_json::from_str(&serde_json::to_string(&new).expect("json")).expect("parse");
        assert_eq!(back, new);
    }

    #[test]
    fn a_fused_first_convolution_takes_no_part_in_the_choice() {
        let fused = LayerTiming {
            fused: true,
            ..t("conv1", 0.0, 0.0)
        };
        // Its untimed 0 ms would keep it compressed; it neither keeps the model compressed nor
        // shows among the tensors on dense products.
        let d = model_decision(vec![fused.clone(), t("fc3", 5.0, 2.0)], "note");
        assert_eq!(d.kernels, "masked", "{}", d.reason);
        let d = model_decision(
            vec![fused.clone(), t("conv2", 5.0, 2.0), t("fc3", 1.0, 2.0)],
            "note",
        );
        assert_eq!(d.kernels, "sparse");
        assert!(
            d.reason.ends_with("over the slots of conv2"),
            "{}",
            d.reason
        );
        // Recorded with the run, and read back.
        let json = serde_json::to_string(&fused).expect("json");
        assert!(json.contains("\"fused\":true"), "{json}");
        assert_eq!(
            serde_json::from_str::<LayerTiming>(&json).expect("parse"),
            fused
        );
        assert!(!serde_json::to_string(&t("fc3", 1.0, 2.0))
            .expect("json")
            .contains("fused"));
    }
}

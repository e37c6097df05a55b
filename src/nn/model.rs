//! A model of layers on the GPU ([`crate::nn::spec::ModelSpec`]), masked-dense: every weight
//! tensor is a param with its weights, 0/1 mask, gradient and momentum, each a view at a
//! 64-element-aligned offset ([`LayerPlacement`]) into one flat buffer per kind (weights, masks,
//! gradients, momentum, and the SNFS gradient EMA and ever-active record), laid out exactly as
//! [`crate::nn::Mlp`]'s so the mask update, the optimizer over the weights and the ITOP map each
//! cover every param in one dispatch; activations and their
//! gradients are allocated once, and the forward and backward passes are dispatch lists built
//! once and encoded every step (SPEC §8 layouts: activations `[C, N, H, W]`, flat ones
//! `[features, N]`). Its CPU twin is [`crate::cpu::model::HostModel`].
//!
//! Backward: every layer's backward pass overwrites its input's gradient; where an activation
//! feeds two layers (a residual block's input or its `pre` output and the shortcut), the second
//! contribution is added after the first (in the first's last pass when that is a batch norm's).
//!
//! Fusion (a peephole over every layer sequence, residual branches included, `Builder::peephole`): a
//! batch norm followed by a ReLU and/or a dropout runs as the batch norm's passes alone
//! ([`image::Epilogue`]), and a ReLU before a max pooling and a flatten after it as the
//! pooling's (its output then in the flattened layout); a compressed linear layer's ReLU runs
//! in its product's store ([`Chain`]). A model that
//! starts with a convolution, a ReLU and a max pooling runs the three as one layer where the
//! fused kernels take it ([`fused_first_conv`], [`crate::gpu::conv_pool`]).

use crate::cpu::conv::Window;
use crate::cpu::model::HostModel;
use crate::error::{Result, RiglError};
use crate::gpu::conv::{self, ConvGeom};
use crate::gpu::conv_pool::{self, ConvPoolGeom};
use crate::gpu::image::{self, BnGrad, DropoutKey, Epilogue, ImageShape};
use crate::gpu::ops::{self, Dispatch, DispatchId, SgdConfig};
use crate::gpu::sparse_conv::{self, SparseConvForm};
use crate::gpu::spmm::{self, Metadata, PackOp, SlotOp};
use crate::gpu::texture::Texture;
use crate::gpu::{gemm, GemmOp, GemmShape, GemmVariant, GpuContext, Tensor};
use crate::nn::loss::LossHead;
use crate::nn::mlp::ALIGN;
use crate::nn::spec::{Layer, ModelSpec, Shape, ShortcutFrom};
use crate::sparse::update::LayerPlacement;

mod compressed;
mod trainable;
pub use compressed::{
    linear_support, CompressedKind, CompressedParam, DenseProducts, LinearMeta, ParamTensor, Slots,
};
pub use trainable::features_to_images;

/// A weight tensor on the GPU.
#[derive(Debug)]
pub struct Param {
    /// Name.
    pub name: String,
    /// `[in, out]` or `[kh, kw, cin, cout]`.
    pub shape: Vec<usize>,
    /// Its views of the model's flat buffers; `None` for a kernel kept compressed (its state is
    /// [`GpuModel::compressed`]).
    pub flat: Option<FlatParam>,
    /// Bias, its gradient and momentum.
    pub bias: Option<[Tensor; 3]>,
}

/// A param's views of the model's flat buffers.
#[derive(Debug)]
pub struct FlatParam {
    /// Weights (a view of [`GpuModel::w`]).
    pub w: Tensor,
    /// 0/1 mask (a view of [`GpuModel::mask`]).
    pub mask: Tensor,
    /// Dense gradient `dL/d(mask ⊙ w)` (a view of [`GpuModel::grad`]).
    pub grad: Tensor,
    /// Momentum (a view of [`GpuModel::mom`]).
    pub mom: Tensor,
}

impl Param {
    /// Its flat views, or an error naming it if it is kept compressed.
    pub fn flat(&self) -> Result<&FlatParam> {
        self.flat.as_ref().ok_or_else(|| {
            RiglError::invalid(format!(
                "weight tensor {} is compressed: it has no dense views",
                self.name
            ))
        })
    }
}

/// A batch norm on the GPU: gamma and beta interleaved `[2C]`, their gradient and momentum, the
/// running statistics `[2C]` and the step's statistics `[4C]`.
#[derive(Debug)]
pub struct Norm {
    /// Channels.
    pub channels: usize,
    /// Gamma and beta.
    pub gamma_beta: Tensor,
    /// Their gradient.
    pub grad: Tensor,
    /// Their momentum.
    pub mom: Tensor,
    /// Running mean and variance.
    pub running: Tensor,
    /// Statistics of the current step.
    pub stats: Tensor,
}

/// An activation and its gradient.
#[derive(Clone, Debug)]
struct Act {
    t: Tensor,
    g: Tensor,
    s: Shape,
    /// A texture copy of `t` its producer writes for a compressed linear layer after it to read
    /// instead of copying `t` itself: a compressed linear layer with its ReLU fused before
    /// another ([`Chain`]), or a max pooling with a flatten fused ([`Builder::pool`]).
    tex: Option<Texture>,
    /// The same producer's output-gradient texture: the next layer writes `g` already through
    /// the ReLU's backward, and into this texture too.
    relu_dy: Option<Texture>,
}

/// A compressed linear layer with a bias, a ReLU after it and another compressed linear layer
/// after that (the peephole in [`Builder::seq`]): the first one's product applies the bias and
/// the ReLU in its store and writes the second one's input texture, and the second one's input
/// gradient applies the ReLU's backward in its store and writes the first one's output-gradient
/// texture, so neither the ReLU nor a texture copy is a pass of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chain {
    /// No ReLU fused.
    None,
    /// The ReLU fused; the next layer is not a compressed linear layer (it reads the buffer).
    Relu,
    /// The ReLU fused, and the next layer is a compressed linear layer.
    ReluIntoLinear,
}

/// A dispatch whose parameters change with the mode or the step.
enum Switch {
    /// A batch norm's statistics: batch ones in training, running ones in evaluation.
    Norm { at: usize, shape: ImageShape },
    /// A dropout, forward (`backward` false) or backward: its hash depends on the step.
    Dropout {
        at: usize,
        backward: bool,
        site: DropSite,
    },
}

/// Where a dropout runs: a pass of its own, or fused into a batch norm's passes.
#[derive(Clone, Copy, Debug)]
enum DropSite {
    /// A dropout pass over `len` elements.
    Alone { layer: u32, len: usize, rate: f32 },
    /// The passes of a batch norm of this shape, a ReLU between them or not.
    Norm {
        shape: ImageShape,
        relu: bool,
        layer: u32,
        rate: f32,
    },
}

impl DropSite {
    /// The dispatch's parameter block at this step (rate 0 in evaluation).
    fn params(&self, seed: u32, mode: RunMode) -> Result<Vec<u8>> {
        let step = |rate: f32| match mode {
            RunMode::Train { step } => (step, rate),
            RunMode::Eval => (0, 0.0),
        };
        match *self {
            DropSite::Alone { layer, len, rate } => {
                let (step, rate) = step(rate);
                image::dropout_step(len, seed, step, layer, rate)
            }
            DropSite::Norm {
                shape,
                relu,
                layer,
                rate,
            } => {
                let (step, rate) = step(rate);
                let key = DropoutKey {
                    seed,
                    step,
                    layer,
                    rate,
                };
                image::bn_epilogue_step(
                    shape,
                    Epilogue {
                        relu,
                        dropout: Some(key),
                    },
                )
            }
        }
    }
}

/// A run of layers built as fewer passes than one per layer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fused {
    /// A batch norm, then a ReLU (`relu`), then a dropout at this rate (`dropout`): the batch
    /// norm's passes with the rest as their epilogue.
    Norm { relu: bool, dropout: Option<f32> },
    /// A ReLU (`relu`) or not, a max pooling and, when `flatten`, a flatten: the pooling's
    /// passes over `relu(x)`, its output and output gradient in the flattened layout.
    MaxPool { relu: bool, flatten: bool },
}

impl Fused {
    /// Layers it stands for.
    fn len(&self) -> usize {
        match self {
            Fused::Norm { relu, dropout } => {
                1 + usize::from(*relu) + usize::from(dropout.is_some())
            }
            Fused::MaxPool { relu, flatten } => 1 + usize::from(*relu) + usize::from(*flatten),
        }
    }
}

/// The fusion that starts `layers`, if any: the peephole the builder runs over every sequence.
/// Only the last layer of a run is seen outside it (a sequence feeds each layer's output to the
/// next alone), so the intermediate activations need not exist.
fn peephole(layers: &[Layer]) -> Option<Fused> {
    match layers {
        [Layer::BatchNorm, rest @ ..] => {
            let (relu, rest) = match rest {
                [Layer::Relu, rest @ ..] => (true, rest),
                _ => (false, rest),
            };
            let dropout = match rest {
                [Layer::Dropout { rate }, ..] => Some(*rate),
                _ => None,
            };
            (relu || dropout.is_some()).then_some(Fused::Norm { relu, dropout })
        }
        [Layer::Relu, Layer::MaxPool { .. }, rest @ ..] => Some(Fused::MaxPool {
            relu: true,
            flatten: matches!(rest, [Layer::Flatten, ..]),
        }),
        [Layer::MaxPool { .. }, Layer::Flatten, ..] => Some(Fused::MaxPool {
            relu: false,
            flatten: true,
        }),
        _ => None,
    }
}

/// The first convolution, its ReLU and max pooling that a [`GpuModel`] runs as one layer
/// ([`crate::gpu::conv_pool`]): when the model starts with them (so no input gradient is
/// needed) and the input values under one pooling window fit the fused kernels' registers
/// (LeNet-5's `conv1`). Its weight tensor is the model's first.
pub fn fused_first_conv(spec: &ModelSpec, batch: usize) -> Option<ConvPoolGeom> {
    let [Layer::Conv2d { .. }, Layer::Relu, pool @ Layer::MaxPool { .. }, ..] =
        spec.layers.as_slice()
    else {
        return None;
    };
    let (_, weights) = spec.infer().ok()?;
    let conv = weights.first()?.conv_geom(batch)?;
    let (h, w) = conv.out().ok()?;
    let window = pool.pool_window(Shape { c: conv.cout, h, w }, batch)?;
    let g = ConvPoolGeom::new(conv, window).ok()?;
    g.fits().then_some(g)
}

/// How a [`GpuModel`] trains: what [`GpuModel::with_options`] takes besides the parameters.
#[derive(Clone, Copy, Debug)]
pub struct ModelOptions {
    /// Sparse training (`true`) or dense training (`false`, reported as `dense` kernels; the
    /// masks are then all ones and the products the same).
    pub masked: bool,
    /// Label smoothing of the cross-entropy target.
    pub label_smoothing: f32,
    /// The optimizer's settings until [`GpuModel::set_sgd`] changes them.
    pub sgd: SgdConfig,
    /// Preferred GEMM variant of the fully connected layers (resolved per product shape).
    pub gemm: GemmVariant,
    /// Convolutions on the compressed sparse kernels ([`crate::gpu::sparse_conv`]): each
    /// kernel's active weights as slots with their own gradient and momentum
    /// ([`GpuModel::compressed`]), the products, the optimizer and the mask update over them;
    /// nothing dense of such a kernel is kept (the flat buffers hold the other params).
    pub compressed_conv: bool,
    /// Linear layers on the compressed sparse matrix kernels ([`crate::gpu::spmm`]) where the
    /// adapter and the batch allow ([`linear_support`]; masked-dense otherwise), kept as
    /// [`ModelOptions::compressed_conv`] keeps convolutions.
    pub compressed_linear: bool,
}

impl ModelOptions {
    /// What [`GpuModel::new`] takes: sparse training, no label smoothing, the optimizer at rest
    /// (learning rate 0 until [`GpuModel::set_sgd`]), the GEMM variant this adapter prefers,
    /// masked-dense convolutions.
    pub fn plain(ctx: &GpuContext) -> Result<Self> {
        Ok(ModelOptions {
            masked: true,
            label_smoothing: 0.0,
            sgd: SgdConfig::AT_REST,
            gemm: gemm::choose_variant(ctx)?,
            compressed_conv: false,
            compressed_linear: false,
        })
    }
}

/// One prebuilt optimizer dispatch: over how many elements, and whether weight decay applies.
#[derive(Debug)]
struct SgdOp {
    op: Dispatch,
    len: usize,
    decay: bool,
}

/// The model on the GPU, for a fixed batch size.
pub struct GpuModel {
    /// The model.
    pub spec: ModelSpec,
    /// Batch size.
    pub batch: usize,
    /// Weight tensors in [`ModelSpec::infer`]'s order.
    pub params: Vec<Param>,
    /// Where each param kept in the flat buffers lies there (its `id` is its index in
    /// [`GpuModel::params`]); compressed kernels have none.
    pub placements: Vec<LayerPlacement>,
    /// Flat weights.
    pub w: Tensor,
    /// Flat 0/1 masks.
    pub mask: Tensor,
    /// Flat dense weight gradients.
    pub grad: Tensor,
    /// Flat weight momentum.
    pub mom: Tensor,
    /// Flat EMA of the dense gradient (SNFS).
    pub ema: Tensor,
    /// Flat "ever active" map (ITOP rate).
    pub ever: Tensor,
    /// Batch norms in walk order.
    pub norms: Vec<Norm>,
    /// The input batch `[C, N, H, W]`.
    pub input: Tensor,
    /// Labels of the batch (u32).
    pub labels: Tensor,
    /// Per-sample loss and correct flag, `[2N]`.
    pub loss_stats: Tensor,
    /// Logits `[classes, N]`.
    pub logits: Tensor,
    forward: Vec<Dispatch>,
    loss: LossHead,
    backward: Vec<Dispatch>,
    switches: Vec<Switch>,
    seed: u32,
    masked: bool,
    sgd: Vec<SgdOp>,
    ema_op: Dispatch,
    ever_op: Dispatch,
    total_w: usize,
    /// Per param: its compressed form, when [`ModelOptions::compressed_conv`] or
    /// [`ModelOptions::compressed_linear`] made one.
    pub compressed: Vec<Option<CompressedParam>>,
    /// What the compressed kernels share (their flat slot buffers among it).
    pub slots: Option<Slots>,
    slot_update: Option<compressed::SlotUpdate>,
}

/// Builds the dispatch lists while walking the layers.
struct Builder<'a> {
    ctx: &'a GpuContext,
    n: usize,
    variant: GemmVariant,
    params: Vec<Param>,
    next_param: usize,
    norms: Vec<Norm>,
    forward: Vec<Dispatch>,
    /// Backward dispatches with the positions of the dropouts among them filled in later.
    switches: Vec<Switch>,
    dropouts: u32,
    seed: u32,
    compressed: Vec<Option<CompressedParam>>,
    slots: Option<Slots>,
    sform: SparseConvForm,
    /// Per param: which products of a compressed one run dense over its scattered slots.
    dense_products: Vec<DenseProducts>,
    /// The dispatches that use the compressed convolutions' shared scratch: the param and the
    /// product of each ([`keep_planes`]).
    scratch_users: Vec<(DispatchId, usize, Product)>,
}

/// A product of a compressed convolution on its compressed kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Product {
    Forward,
    WeightGrad,
    InputGrad,
}

/// Lets a compressed convolution's weight gradient reuse its forward's source planes and
/// metadata where the shared scratch still holds them when it runs: the last dispatch using the
/// scratch in `forward` is that convolution's forward, and the first one in `backward` its
/// weight gradient (in a plain chain of layers, the last compressed convolution's: between the
/// two run the layers after it and their backward, which leave the scratch alone).
fn keep_planes(
    forward: &[Dispatch],
    backward: &mut Vec<Dispatch>,
    users: &[(DispatchId, usize, Product)],
) {
    let user = |op: &Dispatch| {
        let id = op.id();
        users
            .iter()
            .find(|(u, _, _)| *u == id)
            .map(|(_, p, r)| (*p, *r))
    };
    let last_fwd = forward.iter().rev().find_map(user);
    let Some(at) = backward.iter().position(|op| user(op).is_some()) else {
        return;
    };
    if let (Some((pf, Product::Forward)), Some((pw, Product::WeightGrad))) =
        (last_fwd, user(&backward[at]))
    {
        if pf == pw {
            let op = backward.remove(at);
            backward.insert(at, op.without_before(&["meta_fwd", "src_planes"]));
        }
    }
}

/// A compressed linear layer's forward and backward dispatches, and the textures the next
/// layer takes (its input, and the output gradient it writes) under [`Chain::ReluIntoLinear`].
type LinearOps = (Vec<Dispatch>, Vec<Dispatch>, Option<(Texture, Texture)>);

/// A compressed linear layer's forward dispatches (its input into a texture, the sparse product
/// with the bias) and backward ones (the output gradient into a texture, the weight gradient at
/// the slots with the bias gradient, the input gradient when `needs_grad`). With `chain` a ReLU
/// after it is fused ([`Chain`]): `y` is the ReLU's output. An input that carries a texture
/// (`x.tex`) is read from it; one that carries its producer's output-gradient texture
/// (`x.relu_dy`) gets its gradient through that producer's ReLU, in that texture too. Returns
/// the textures the next layer takes under [`Chain::ReluIntoLinear`].
#[allow(clippy::too_many_arguments)]
fn compressed_linear(
    ctx: &GpuContext,
    c: &CompressedParam,
    slots: &Slots,
    p: &Param,
    x: &Act,
    y: &Act,
    n: usize,
    needs_grad: bool,
    chain: Chain,
) -> Result<LinearOps> {
    let (CompressedKind::Linear(m), Some(values)) = (&c.kind, &slots.values) else {
        return Err(RiglError::invalid(format!(
            "linear layer {}: its compressed form is not a linear layer's",
            p.name
        )));
    };
    let (fwd_meta, bwd_meta) = (&m.fwd_meta, &m.bwd_meta);
    let s = c.shape(n);
    let relu = chain != Chain::None;
    let dyt = Texture::new(
        ctx,
        &format!("{} output gradient texture", p.name),
        s.out_dim,
        n,
    )?;
    let yt = match chain {
        Chain::ReluIntoLinear => Some(Texture::new(
            ctx,
            &format!("{} output texture", p.name),
            s.out_dim,
            n,
        )?),
        _ => None,
    };
    let epilogue = match (&p.bias, relu) {
        (Some([b, _, _]), _) => spmm::Epilogue::BiasAct { bias: b, relu },
        (None, false) => spmm::Epilogue::None,
        (None, true) => {
            return Err(RiglError::invalid(format!(
                "linear layer {}: a ReLU fused into a layer without a bias",
                p.name
            )))
        }
    };
    let mut fwd = Vec::new();
    let xt = match &x.tex {
        Some(t) => t.clone(),
        None => {
            let t = Texture::new(ctx, &format!("{} input texture", p.name), s.in_dim, n)?;
            fwd.push(spmm::pack(ctx, PackOp::Copy, &x.t, &t)?);
            t
        }
    };
    fwd.push(spmm::spmm_stores(
        ctx,
        s,
        &c.idx,
        &Metadata {
            index: fwd_meta,
            values,
        },
        &xt,
        &y.t,
        true,
        epilogue,
        yt.as_ref(),
        true,
    )?);
    let mut bwd = Vec::new();
    match chain {
        // The next layer wrote dy through the ReLU, and into `dyt`.
        Chain::ReluIntoLinear => {}
        Chain::Relu => bwd.push(spmm::pack(ctx, PackOp::ReluBwd(&y.t), &y.g, &dyt)?),
        Chain::None => bwd.push(spmm::pack(ctx, PackOp::Copy, &y.g, &dyt)?),
    }
    bwd.push(spmm::sddmm_with_bias(
        ctx,
        s,
        &c.idx,
        &xt,
        &dyt,
        &c.grad,
        p.bias.as_ref().map(|b| &b[1]),
    )?);
    if needs_grad {
        let epilogue = match &x.relu_dy {
            Some(_) => spmm::Epilogue::ReluMask(&xt),
            None => spmm::Epilogue::None,
        };
        bwd.push(spmm::spmm_stores(
            ctx,
            s,
            &c.idx,
            &Metadata {
                index: bwd_meta,
                values,
            },
            &dyt,
            &x.g,
            false,
            epilogue,
            x.relu_dy.as_ref(),
            true,
        )?);
    } else if x.relu_dy.is_some() {
        return Err(RiglError::invalid(format!(
            "linear layer {}: its input's producer waits for a gradient it does not compute",
            p.name
        )));
    }
    Ok((fwd, bwd, yt.map(|t| (t, dyt))))
}

fn image_shape(s: Shape, n: usize) -> ImageShape {
    ImageShape {
        c: s.c,
        n,
        h: s.h,
        w: s.w,
    }
}

/// A backward list under construction: dispatches in execution order, the dropouts among them
/// (index in this list, site), and the pass that writes the input's gradient last, when it is a
/// batch norm's that can add another contribution in the same pass.
#[derive(Default)]
struct Bwd {
    ops: Vec<Dispatch>,
    dropouts: Vec<(usize, DropSite)>,
    input_grad: Option<(usize, NormGrad)>,
    /// A convolution's bias-gradient pass (index in `ops`), which a max pooling right after the
    /// convolution replaces by the sum of its own output gradient ([`Builder::seq`]).
    bias: Option<BiasGrad>,
    /// A max pooling's output gradient and argmax, per channel `len` elements.
    pooled: Option<Pooled>,
    /// A compressed convolution's weight gradient (index in `ops`) that reads its output
    /// gradient through `dy_planes`, which a max pooling right after the convolution may write
    /// itself ([`Builder::seq`]).
    dy_planes: Option<DyPlanes>,
    /// A compressed convolution's forward product, which a max pooling right after it may run
    /// in its place, pooling included ([`Builder::pool`]).
    conv_fwd: Option<ConvFwd>,
}

/// A compressed convolution's forward product: the builder's `forward[at]`, of param `param`
/// on the input `x`.
struct ConvFwd {
    at: usize,
    param: usize,
    x: Tensor,
}

/// A compressed convolution's weight-gradient pass: `ops[at]`, of param `param`.
struct DyPlanes {
    at: usize,
    param: usize,
}

/// A bias-gradient pass: `ops[at]` sums `channels` segments into `grad`.
struct BiasGrad {
    at: usize,
    grad: Tensor,
    channels: usize,
}

/// What a max pooling offers the convolution before it: its output gradient and argmax for
/// the bias gradient, and its backward pass (`ops[at]`, over `window`, the output `flat` or
/// not), which may write the convolution's output-gradient planes instead.
struct Pooled {
    dy: Tensor,
    arg: Tensor,
    len: usize,
    at: usize,
    window: Window,
    flat: bool,
}

/// What rebuilds a batch norm's input-gradient pass with a contribution added
/// ([`Bwd::absorb_add`]).
struct NormGrad {
    shape: ImageShape,
    x: Tensor,
    gamma_beta: Tensor,
    stats: Tensor,
    dy: Tensor,
    grads: Tensor,
    dx: Tensor,
    epilogue: Epilogue,
}

impl Bwd {
    fn push(&mut self, d: Dispatch) {
        self.ops.push(d);
    }

    /// Appends the passes of `other` (run after these); the input gradient is `other`'s.
    fn append(&mut self, other: Bwd) {
        let base = self.ops.len();
        self.ops.extend(other.ops);
        self.dropouts
            .extend(other.dropouts.into_iter().map(|(i, d)| (base + i, d)));
        self.input_grad = other.input_grad.map(|(i, g)| (base + i, g));
    }

    /// Makes the last pass of this list add `extra` into `target`, when that pass is a batch
    /// norm's writing `target` as its input gradient; false if it cannot (the caller adds).
    fn absorb_add(&mut self, ctx: &GpuContext, extra: &Tensor, target: &Tensor) -> Result<bool> {
        let Some((at, g)) = self.input_grad.take() else {
            return Ok(false);
        };
        if at + 1 != self.ops.len() || g.dx.buffer != target.buffer || g.dx.offset != target.offset
        {
            return Ok(false);
        }
        let mut ops = image::bn_backward(
            ctx,
            g.shape,
            BnGrad {
                x: &g.x,
                gamma_beta: &g.gamma_beta,
                stats: &g.stats,
                dy: &g.dy,
                grads: &g.grads,
                dx: Some(&g.dx),
                plus: Some(extra),
            },
            g.epilogue,
        )?;
        let apply = ops.pop().ok_or_else(|| {
            RiglError::invalid("a batch norm backward without its input-gradient pass")
        })?;
        self.ops[at] = apply;
        Ok(true)
    }
}

impl Builder<'_> {
    fn act(&self, s: Shape, what: &str) -> Result<Act> {
        let len = s.len() * self.n;
        Ok(Act {
            t: Tensor::zeros(self.ctx, what, len)?,
            g: Tensor::zeros(self.ctx, &format!("{what} gradient"), len)?,
            s,
            tex: None,
            relu_dy: None,
        })
    }

    fn gemm(
        &self,
        shape: GemmShape,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        m: Option<&Tensor>,
    ) -> Result<Dispatch> {
        let v = gemm::pick(self.ctx, self.variant, &shape)?;
        Ok(GemmOp::new(self.ctx, shape, v, a, b, c, m, false)?.dispatch)
    }

    /// Forward of `layers` from `x`; returns the output and the backward pass (in execution
    /// order), which writes `x.g` when `needs_grad`.
    fn seq(&mut self, layers: &[Layer], mut x: Act, needs_grad: bool) -> Result<(Act, Bwd)> {
        let mut parts: Vec<Bwd> = Vec::with_capacity(layers.len());
        let mut grad = needs_grad;
        let mut i = 0;
        while i < layers.len() {
            let chain = self.chain_at(&layers[i..]);
            let (y, mut b, used) = match peephole(&layers[i..]) {
                _ if chain != Chain::None => {
                    let Layer::Linear { out, .. } = &layers[i] else {
                        return Err(RiglError::invalid("a fused ReLU after a non-linear layer"));
                    };
                    let (y, b) = self.linear(*out, x, grad, chain)?;
                    (y, b, 2)
                }
                Some(f @ Fused::Norm { relu, dropout }) => {
                    let (y, b) = self.norm(x, relu, dropout, grad)?;
                    (y, b, f.len())
                }
                Some(f @ Fused::MaxPool { relu, flatten }) => {
                    let pool = &layers[i + usize::from(relu)];
                    // A flattened pooling output that a compressed linear layer reads: the
                    // pooling writes that layer's input texture too.
                    let feeds = flatten
                        && matches!(layers.get(i + f.len()), Some(Layer::Linear { .. }))
                        && self.on_compressed_kernels(self.next_param, false)
                        && self.n.is_multiple_of(4);
                    let conv = parts.last_mut().and_then(|b| b.conv_fwd.take());
                    let (y, b) = self.pool(pool, x, grad, relu, flatten, feeds, conv)?;
                    (y, b, f.len())
                }
                None => {
                    let (y, b) = self.layer(&layers[i], x, grad)?;
                    (y, b, 1)
                }
            };
            // A convolution then a max pooling: the convolution's bias gradient is the sum of
            // the pooling's output gradient where it has an argmax, a quarter of the reads of a
            // 2x2 pooling's input gradient (the convolution's output feeds the pooling alone).
            if let (Some(pool), Some(prev)) = (b.pooled.take(), parts.last_mut()) {
                if let Some(bias) = prev.bias.take() {
                    prev.ops[bias.at] = ops::segment_sum_pooled(
                        self.ctx,
                        &pool.dy,
                        &pool.arg,
                        &bias.grad,
                        bias.channels,
                        pool.len,
                    )?;
                }
                if let Some(dp) = prev.dy_planes.take() {
                    self.pool_into_planes(&pool, &mut b, prev, dp)?;
                }
            }
            parts.push(b);
            x = y;
            grad = true;
            i += used;
        }
        let mut bwd = Bwd::default();
        for b in parts.into_iter().rev() {
            bwd.append(b);
        }
        Ok((x, bwd))
    }

    /// A max pooling `pool` (its backward `b`) right after a compressed convolution (its
    /// backward `prev`, whose weight gradient `dp` reads the output gradient's planes): where
    /// [`sparse_conv::pooled_dy_planes`] applies, the pooling's backward writes those planes
    /// from its own output gradient and argmax instead of the convolution's output gradient,
    /// and the weight gradient drops its copy (the input gradient, right after it, already
    /// has). The dense kernel gradient of a mask update still reads the convolution's output
    /// gradient: the pooling's backward runs before it there.
    fn pool_into_planes(
        &mut self,
        pool: &Pooled,
        b: &mut Bwd,
        prev: &mut Bwd,
        dp: DyPlanes,
    ) -> Result<()> {
        let Some((_, lay, sc)) = self.compressed_conv(dp.param) else {
            return Ok(());
        };
        let Some(op) = sparse_conv::pooled_dy_planes(
            self.ctx,
            lay,
            &pool.dy,
            &pool.arg,
            pool.window,
            pool.flat,
            sc,
        )?
        else {
            return Ok(());
        };
        let unfused = std::mem::replace(&mut b.ops[pool.at], op);
        if let Some(c) = self.compressed[dp.param].as_mut() {
            c.dense_grad = c.dense_grad.take().map(|d| d.after(unfused));
        }
        let dw = prev.ops.remove(dp.at);
        prev.ops.insert(dp.at, dw.without_before(&["dy_planes"]));
        Ok(())
    }

    /// The forward product of the compressed convolution `cf` with the max pooling of its ReLU
    /// over `window` into `out` (pooled, flattened; argmax; the next layer's texture), where
    /// [`sparse_conv::forward_pooled`] applies.
    fn pooled_product(
        &self,
        cf: &ConvFwd,
        window: Window,
        out: (&Tensor, &Tensor, &Texture),
    ) -> Result<Option<Dispatch>> {
        let Some((c, lay, sc)) = self.compressed_conv(cf.param) else {
            return Ok(None);
        };
        let bias = self.params[cf.param].bias.as_ref().map(|b| &b[0]);
        sparse_conv::forward_pooled(
            self.ctx, self.sform, lay, c.nnz, &c.idx, &c.vals, bias, &cf.x, window, out, sc,
        )
    }

    /// Param `i` compressed as a convolution, its layout and the shared scratch its products
    /// run on.
    fn compressed_conv(
        &self,
        i: usize,
    ) -> Option<(
        &CompressedParam,
        &sparse_conv::Layout,
        &sparse_conv::Scratch,
    )> {
        let (Some(c), Some(slots)) = (self.compressed.get(i)?.as_ref(), &self.slots) else {
            return None;
        };
        match (&c.kind, &slots.textures) {
            (CompressedKind::Conv(lay), Some(sc)) => Some((c, lay, sc)),
            _ => None,
        }
    }

    /// Whether param `i` runs on the compressed kernels (every product), with a bias if `bias`.
    fn on_compressed_kernels(&self, i: usize, bias: bool) -> bool {
        self.slots.is_some()
            && self.compressed.get(i).is_some_and(|c| c.is_some())
            && self
                .dense_products
                .get(i)
                .copied()
                .unwrap_or_default()
                .uniform()
                == Some(false)
            && (!bias || self.params.get(i).is_some_and(|p| p.bias.is_some()))
    }

    /// Whether `layers` start with a linear layer on the compressed kernels with a bias and a
    /// ReLU, and whether a linear layer on the compressed kernels follows ([`Chain`]).
    fn chain_at(&self, layers: &[Layer]) -> Chain {
        let at = self.next_param;
        match layers {
            [Layer::Linear { .. }, Layer::Relu, rest @ ..]
                if self.on_compressed_kernels(at, true) =>
            {
                match rest.first() {
                    Some(Layer::Linear { .. }) if self.on_compressed_kernels(at + 1, false) => {
                        Chain::ReluIntoLinear
                    }
                    _ => Chain::Relu,
                }
            }
            _ => Chain::None,
        }
    }

    /// A linear layer of `out` features, a ReLU after it fused per `chain`.
    fn linear(&mut self, out: usize, x: Act, needs_grad: bool, chain: Chain) -> Result<(Act, Bwd)> {
        let ctx = self.ctx;
        let n = self.n;
        let mut bwd = Bwd::default();
        let idx = self.take_param()?;
        let (fin, fout) = (x.s.c, out);
        let name = self.params[idx].name.clone();
        let mut y = self.act(
            Shape {
                c: fout,
                h: 1,
                w: 1,
            },
            &format!("{name} output"),
        )?;
        let dw = GemmShape {
            m: fin,
            n: fout,
            k: n,
            trans_a: false,
            trans_b: true,
        };
        if let (Some(c), Some(slots)) = (&self.compressed[idx], &self.slots) {
            let p = &self.params[idx];
            // The dense weight gradient (RigL's grow score at mask updates): the masked
            // path's GEMM, into the shared scratch.
            let gv =
                slots
                    .dense_grad
                    .slice(ctx, 0, fin * fout, &format!("{name} dense gradient"))?;
            let dense = self.gemm(dw, &x.t, &y.g, &gv, None)?;
            let paths = self.dense_products.get(idx).copied().unwrap_or_default();
            let Some(on_dense) = paths.uniform() else {
                return Err(RiglError::invalid(format!(
                    "linear layer {name}: its products run all compressed or all dense \
                     (a mix per product is for convolutions), not {paths:?}"
                )));
            };
            if on_dense && chain != Chain::None {
                return Err(RiglError::invalid(format!(
                    "linear layer {name}: a ReLU fused into dense products"
                )));
            }
            let (f, b) = if on_dense {
                // Dense GEMMs over the slots scattered into a scratch.
                let wv = slots.dense_weights(ctx, c, &name)?;
                let slot = |op: SlotOp, d: &Tensor| {
                    spmm::slots(ctx, op, c.shape(n), &c.idx, &c.vals, d, &c.grad)
                };
                let fwd = GemmShape {
                    m: fout,
                    n,
                    k: fin,
                    trans_a: true,
                    trans_b: false,
                };
                let mut f = vec![
                    slot(SlotOp::Zero, &wv)?,
                    slot(SlotOp::Scatter, &wv)?,
                    self.gemm(fwd, &wv, &x.t, &y.t, None)?,
                ];
                let mut b = Vec::new();
                if let Some([bias, gb, _]) = &p.bias {
                    f.push(ops::bias_act(ctx, bias, &y.t, fout, n, false)?);
                    b.push(ops::segment_sum(ctx, &y.g, gb, fout, n, false)?);
                }
                b.push(self.gemm(dw, &x.t, &y.g, &gv, None)?);
                b.push(slot(SlotOp::Gather, &gv)?);
                if needs_grad {
                    b.push(slot(SlotOp::Zero, &wv)?);
                    b.push(slot(SlotOp::Scatter, &wv)?);
                    let dx = GemmShape::nn(fin, n, fout);
                    b.push(self.gemm(dx, &wv, &y.g, &x.g, None)?);
                }
                (f, b)
            } else {
                let (f, b, next) =
                    compressed_linear(ctx, c, slots, p, &x, &y, n, needs_grad, chain)?;
                if let Some((t, dy)) = next {
                    y.tex = Some(t);
                    y.relu_dy = Some(dy);
                }
                (f, b)
            };
            self.forward.extend(f);
            bwd.ops.extend(b);
            if let Some(c) = self.compressed[idx].as_mut() {
                c.dense_grad = Some(dense);
            }
            return Ok((y, bwd));
        }
        if chain != Chain::None {
            return Err(RiglError::invalid(format!(
                "linear layer {name}: a ReLU fused into masked products"
            )));
        }
        let p = &self.params[idx];
        let pf = p.flat()?;
        let fwd = GemmShape {
            m: fout,
            n,
            k: fin,
            trans_a: true,
            trans_b: false,
        };
        let mut f = vec![self.gemm(fwd, &pf.w, &x.t, &y.t, Some(&pf.mask))?];
        if let Some([b, gb, _]) = &p.bias {
            f.push(ops::bias_act(ctx, b, &y.t, fout, n, false)?);
            bwd.push(ops::segment_sum(ctx, &y.g, gb, fout, n, false)?);
        }
        bwd.push(self.gemm(dw, &x.t, &y.g, &pf.grad, None)?);
        if needs_grad {
            let dx = GemmShape::nn(fin, n, fout);
            bwd.push(self.gemm(dx, &pf.w, &y.g, &x.g, Some(&pf.mask))?);
        }
        self.forward.extend(f);
        Ok((y, bwd))
    }

    fn layer(&mut self, layer: &Layer, x: Act, needs_grad: bool) -> Result<(Act, Bwd)> {
        let ctx = self.ctx;
        let n = self.n;
        let mut bwd = Bwd::default();
        match layer {
            Layer::Linear { out, .. } => self.linear(*out, x, needs_grad, Chain::None),
            Layer::Conv2d {
                out,
                kernel,
                stride,
                padding,
                ..
            } => {
                let idx = self.take_param()?;
                let g = ConvGeom {
                    window: Window {
                        n,
                        h: x.s.h,
                        w: x.s.w,
                        k: *kernel,
                        stride: *stride,
                        padding: *padding,
                    },
                    cin: x.s.c,
                    cout: *out,
                };
                let (h, w) = g.out()?;
                let name = self.params[idx].name.clone();
                let y = self.act(Shape { c: *out, h, w }, &format!("{name} output"))?;
                let p = &self.params[idx];
                let bias = p.bias.as_ref().map(|b| &b[0]);
                // The three products: on the compressed kernels, dense over a compressed
                // kernel's slots scattered into a scratch, or masked-dense; a compressed kernel
                // also gets the dense kernel gradient the mask update reads.
                let paths = self.dense_products.get(idx).copied().unwrap_or_default();
                let (fwd, dw, dx, dense) = match (&self.compressed[idx], &self.slots) {
                    (Some(c), Some(slots)) => {
                        let (CompressedKind::Conv(lay), Some(sc)) = (&c.kind, &slots.textures)
                        else {
                            return Err(RiglError::invalid(format!(
                                "convolution {name}: its compressed form is not a convolution's"
                            )));
                        };
                        if lay.geom != g {
                            return Err(RiglError::invalid(format!(
                                "convolution {name}: compressed for {:?}, built for {g:?}",
                                lay.geom
                            )));
                        }
                        let gv = slots.dense_grad.slice(
                            ctx,
                            0,
                            c.rows() * c.cols(),
                            &format!("{name} dense gradient"),
                        )?;
                        let dense = conv::weight_grad(ctx, g, &x.t, &y.g, &gv, false)?;
                        // Each product on the compressed kernels, or dense over the slots
                        // scattered into the shared scratch (scattered again before the input
                        // gradient: another layer's weights are there by then).
                        let wv = if paths.any() {
                            Some(slots.dense_weights(ctx, c, &name)?)
                        } else {
                            None
                        };
                        let slot = |op: SlotOp, d: &Tensor| {
                            spmm::slots(ctx, op, c.shape(n), &c.idx, &c.vals, d, &c.grad)
                        };
                        let scattered = |wv: &Tensor, last: Dispatch| -> Result<Vec<Dispatch>> {
                            Ok(vec![
                                slot(SlotOp::Zero, wv)?,
                                slot(SlotOp::Scatter, wv)?,
                                last,
                            ])
                        };
                        let f = self.sform;
                        let fwd = match &wv {
                            Some(wv) if paths.forward => {
                                scattered(wv, conv::forward(ctx, g, &x.t, wv, None, bias, &y.t)?)?
                            }
                            _ => vec![sparse_conv::forward(
                                ctx, f, lay, c.nnz, &c.idx, &c.vals, bias, &x.t, &y.t, sc,
                            )?],
                        };
                        // Both products dense over the slots: one copy of dy serves both.
                        let mut dy_rows = None;
                        let dw = if paths.weight_grad {
                            let (op, rows) =
                                conv::weight_grad_sharing(ctx, g, &x.t, &y.g, &gv, false)?;
                            dy_rows = rows;
                            vec![op, slot(SlotOp::Gather, &gv)?]
                        } else {
                            vec![sparse_conv::weight_grad(
                                ctx, f, lay, c.nnz, &c.idx, &x.t, &y.g, &c.grad, sc,
                            )?]
                        };
                        let dx = match &wv {
                            _ if !needs_grad => Vec::new(),
                            Some(wv) if paths.input_grad => scattered(
                                wv,
                                conv::input_grad_sharing(
                                    ctx,
                                    g,
                                    &y.g,
                                    wv,
                                    None,
                                    &x.g,
                                    false,
                                    dy_rows.as_ref(),
                                )?,
                            )?,
                            _ => {
                                let op = sparse_conv::input_grad(
                                    ctx, f, lay, c.nnz, &c.idx, &c.vals, &y.g, &x.g, false, sc,
                                )?;
                                // Right after the weight gradient on the compressed kernels
                                // (`bwd` runs `dw` then `dx`), dy's padded planes are in place.
                                vec![if paths.weight_grad {
                                    op
                                } else {
                                    op.without_before(&["dy_planes"])
                                }]
                            }
                        };
                        // The products on the shared scratch ([`keep_planes`]).
                        for (on_scratch, ops, r) in [
                            (!paths.forward, &fwd, Product::Forward),
                            (!paths.weight_grad, &dw, Product::WeightGrad),
                            (!paths.input_grad, &dx, Product::InputGrad),
                        ] {
                            if let (true, Some(op)) = (on_scratch, ops.last()) {
                                self.scratch_users.push((op.id(), idx, r));
                            }
                        }
                        (fwd, dw, dx, Some(dense))
                    }
                    _ => {
                        let pf = p.flat()?;
                        let m = Some(&pf.mask);
                        // The weight gradient runs first and copies dy for both products.
                        let (dw, dy_rows) =
                            conv::weight_grad_sharing(ctx, g, &x.t, &y.g, &pf.grad, false)?;
                        let mut dx = Vec::new();
                        if needs_grad {
                            dx.push(conv::input_grad_sharing(
                                ctx,
                                g,
                                &y.g,
                                &pf.w,
                                m,
                                &x.g,
                                false,
                                dy_rows.as_ref(),
                            )?);
                        }
                        (
                            vec![conv::forward(ctx, g, &x.t, &pf.w, m, bias, &y.t)?],
                            vec![dw],
                            dx,
                            None,
                        )
                    }
                };
                if self.compressed[idx].is_some() && !paths.forward {
                    bwd.conv_fwd = Some(ConvFwd {
                        at: self.forward.len(),
                        param: idx,
                        x: x.t.clone(),
                    });
                }
                self.forward.extend(fwd);
                if let Some([_, gb, _]) = &p.bias {
                    bwd.bias = Some(BiasGrad {
                        at: bwd.ops.len(),
                        grad: gb.clone(),
                        channels: *out,
                    });
                    bwd.push(ops::segment_sum(ctx, &y.g, gb, *out, n * h * w, false)?);
                }
                if self.compressed[idx].is_some() && !paths.weight_grad {
                    bwd.dy_planes = Some(DyPlanes {
                        at: bwd.ops.len(),
                        param: idx,
                    });
                }
                bwd.ops.extend(dw);
                bwd.ops.extend(dx);
                if let Some(c) = self.compressed[idx].as_mut() {
                    c.dense_grad = dense;
                }
                Ok((y, bwd))
            }
            Layer::BatchNorm => self.norm(x, false, None, needs_grad),
            Layer::Relu => {
                let y = self.act(x.s, "relu output")?;
                let len = x.s.len() * n;
                self.forward.push(image::relu(ctx, &x.t, &y.t, len)?);
                if needs_grad {
                    bwd.push(image::relu_backward(ctx, &y.t, &y.g, &x.g, len)?);
                }
                Ok((y, bwd))
            }
            Layer::MaxPool { .. } | Layer::AvgPool { .. } => {
                self.pool(layer, x, needs_grad, false, false, false, None)
            }
            Layer::GlobalAvgPool => {
                let y = self.act(
                    Shape {
                        c: x.s.c,
                        h: 1,
                        w: 1,
                    },
                    "pooled",
                )?;
                let s = image_shape(x.s, n);
                self.forward
                    .push(image::global_avg_pool(ctx, s, &x.t, &y.t, false)?);
                if needs_grad {
                    bwd.push(image::global_avg_pool(ctx, s, &y.g, &x.g, true)?);
                }
                Ok((y, bwd))
            }
            Layer::Flatten => {
                let y = self.act(
                    Shape {
                        c: x.s.len(),
                        h: 1,
                        w: 1,
                    },
                    "flattened",
                )?;
                let s = image_shape(x.s, n);
                self.forward
                    .push(image::flatten(ctx, s, &x.t, &y.t, false)?);
                if needs_grad {
                    bwd.push(image::flatten(ctx, s, &y.g, &x.g, true)?);
                }
                Ok((y, bwd))
            }
            Layer::Dropout { rate } => {
                let layer = self.dropouts;
                self.dropouts += 1;
                let y = self.act(x.s, "dropout output")?;
                let len = x.s.len() * n;
                let site = DropSite::Alone {
                    layer,
                    len,
                    rate: *rate,
                };
                self.switches.push(Switch::Dropout {
                    at: self.forward.len(),
                    backward: false,
                    site,
                });
                self.forward.push(image::dropout(
                    ctx, &x.t, &y.t, len, self.seed, 0, layer, *rate,
                )?);
                if needs_grad {
                    bwd.dropouts.push((bwd.ops.len(), site));
                    bwd.push(image::dropout(
                        ctx, &y.g, &x.g, len, self.seed, 0, layer, *rate,
                    )?);
                }
                Ok((y, bwd))
            }
            Layer::Residual {
                pre,
                body,
                shortcut,
                shortcut_from,
            } => {
                let (p, pre_bwd) = self.seq(pre, x.clone(), needs_grad)?;
                let from = match shortcut_from {
                    ShortcutFrom::Input => x.clone(),
                    ShortcutFrom::Pre => p.clone(),
                };
                let from_needs_grad = match shortcut_from {
                    ShortcutFrom::Input => needs_grad,
                    ShortcutFrom::Pre => needs_grad || !pre.is_empty(),
                };
                // The shortcut writes its input's gradient into a buffer of its own; it is added
                // to `from`'s gradient once the other consumer has written it.
                let short_in = Act {
                    t: from.t.clone(),
                    g: Tensor::zeros(ctx, "shortcut input gradient", from.s.len() * n)?,
                    s: from.s,
                    tex: None,
                    relu_dy: None,
                };
                let (short, short_bwd) = self.seq(shortcut, short_in.clone(), from_needs_grad)?;
                let (y, body_bwd) = self.seq(body, p.clone(), needs_grad || !pre.is_empty())?;
                if y.s != short.s {
                    return Err(RiglError::invalid(
                        "a residual block's body and shortcut differ in shape",
                    ));
                }
                let len = y.s.len() * n;
                self.forward.push(image::add(ctx, &short.t, &y.t, len)?);
                // Backward, in execution order: dy to the shortcut's output, the shortcut, the
                // body (writes p.g), [from = pre: the shortcut's part into p.g], pre (writes
                // x.g), [from = input: the shortcut's part into x.g].
                if !shortcut.is_empty() {
                    bwd.push(image::copy(ctx, &y.g, &short.g, len)?);
                    bwd.append(short_bwd);
                }
                bwd.append(body_bwd);
                let contribution = if shortcut.is_empty() {
                    &y.g
                } else {
                    &short_in.g
                };
                let from_len = from.s.len() * n;
                // The shortcut's part is added by the pass that wrote `from`'s gradient last
                // when that is a batch norm's (the body's first layer for `pre`, or `pre`'s
                // first, or the body's when `pre` is empty and `from` is the input), else by an
                // add pass after it.
                let add_short = |bwd: &mut Bwd| -> Result<()> {
                    if from_needs_grad && !bwd.absorb_add(ctx, contribution, &from.g)? {
                        bwd.push(image::add(ctx, contribution, &from.g, from_len)?);
                    }
                    bwd.input_grad = None;
                    Ok(())
                };
                match shortcut_from {
                    ShortcutFrom::Pre => {
                        add_short(&mut bwd)?;
                        bwd.append(pre_bwd);
                    }
                    ShortcutFrom::Input => {
                        if !pre.is_empty() {
                            bwd.append(pre_bwd);
                        }
                        add_short(&mut bwd)?;
                    }
                }
                Ok((y, bwd))
            }
        }
    }

    /// The model's first convolution, ReLU and max pooling as one layer ([`fused_first_conv`]):
    /// on the param's weights (masked), or dense over a compressed param's slots scattered into
    /// the shared scratch, its weight gradient gathered back (and its dense gradient, RigL's
    /// grow score, into the scratch at mask updates). Nothing needs the input's gradient.
    fn conv_pool(&mut self, g: ConvPoolGeom, x: Act) -> Result<(Act, Bwd)> {
        let (ctx, n) = (self.ctx, self.n);
        let idx = self.take_param()?;
        let name = self.params[idx].name.clone();
        let (ho, wo) = g.out();
        let y = self.act(
            Shape {
                c: g.conv.cout,
                h: ho,
                w: wo,
            },
            &format!("{name} pooled output"),
        )?;
        let arg = Tensor::zeros(ctx, &format!("{name} pooling argmax"), g.output_len())?;
        let (bias, gb) = match &self.params[idx].bias {
            Some([b, gb, _]) => (Some(b.clone()), Some(gb.clone())),
            None => (None, None),
        };
        // The weights it reads and the gradient it writes: the param's own (masked), or a
        // compressed param's slots scattered into the shared scratch before the forward and the
        // gradient gathered back from it. A compressed param with every weight active (ERK's
        // first convolution) holds its slots in the dense layout (the index's order is the flat
        // one, and a mask update regrows what it drops, in place): the kernels read and write
        // the slots themselves. `dense`: where the mask update's dense gradient goes.
        let (w, mask, grad, scatter, gather, dense) = match (&self.compressed[idx], &self.slots) {
            (Some(c), Some(slots)) => {
                let gv = slots.dense_grad.slice(
                    ctx,
                    0,
                    c.rows() * c.cols(),
                    &format!("{name} dense gradient"),
                )?;
                if c.nnz == c.rows() * c.cols() {
                    (
                        c.vals.clone(),
                        None,
                        c.grad.clone(),
                        Vec::new(),
                        None,
                        Some(gv),
                    )
                } else {
                    let wv = slots.dense_weights(ctx, c, &name)?;
                    let slot = |op: SlotOp, d: &Tensor| {
                        spmm::slots(ctx, op, c.shape(n), &c.idx, &c.vals, d, &c.grad)
                    };
                    let scatter = vec![slot(SlotOp::Zero, &wv)?, slot(SlotOp::Scatter, &wv)?];
                    let gather = slot(SlotOp::Gather, &gv)?;
                    (wv, None, gv.clone(), scatter, Some(gather), Some(gv))
                }
            }
            _ => {
                let pf = self.params[idx].flat()?;
                let m = Some(pf.mask.clone());
                (pf.w.clone(), m, pf.grad.clone(), Vec::new(), None, None)
            }
        };
        let (x, dy) = (&x.t, &y.g);
        self.forward.extend(scatter);
        let (xt, copy) = conv_pool::input_texture(ctx, &g, x)?.unzip();
        self.forward.extend(copy);
        self.forward.push(conv_pool::forward(
            ctx,
            &g,
            x,
            xt.as_ref(),
            &w,
            mask.as_ref(),
            bias.as_ref(),
            &y.t,
            &arg,
        )?);
        let mut bwd = Bwd::default();
        bwd.push(conv_pool::weight_grad(
            ctx,
            &g,
            x,
            xt.as_ref(),
            dy,
            &arg,
            &grad,
            gb.as_ref(),
        )?);
        bwd.ops.extend(gather);
        if let Some(gv) = dense {
            // The dense gradient (RigL's grow score) at mask updates: the same pass into the
            // scratch, the bias gradient left alone.
            let dense = conv_pool::weight_grad(ctx, &g, x, xt.as_ref(), dy, &arg, &gv, None)?;
            if let Some(c) = self.compressed[idx].as_mut() {
                c.dense_grad = Some(dense);
            }
        }
        Ok((y, bwd))
    }

    fn take_param(&mut self) -> Result<usize> {
        let i = self.next_param;
        if i >= self.params.len() {
            return Err(RiglError::invalid(
                "the model has more weight layers than params",
            ));
        }
        self.next_param += 1;
        Ok(i)
    }

    /// A batch norm, and the ReLU (`relu`) and the dropout (`dropout`, its rate) after it when
    /// the peephole fused them: forward, the statistics and one apply pass writing the last
    /// layer's output; backward, the reduction and one apply pass, both reading `dy` (the ReLU
    /// mask recomputed from `x`, the dropout's from its hash), the second writing `x.g`.
    fn norm(
        &mut self,
        x: Act,
        relu: bool,
        dropout: Option<f32>,
        needs_grad: bool,
    ) -> Result<(Act, Bwd)> {
        let (ctx, n) = (self.ctx, self.n);
        let mut bwd = Bwd::default();
        let i = self.norms.len();
        let c = x.s.c;
        let norm = Norm {
            channels: c,
            gamma_beta: Tensor::from_f32(ctx, "batch norm", &[1.0, 0.0].repeat(c))?,
            grad: Tensor::zeros(ctx, "batch norm gradient", 2 * c)?,
            mom: Tensor::zeros(ctx, "batch norm momentum", 2 * c)?,
            running: Tensor::from_f32(ctx, "running statistics", &[0.0, 1.0].repeat(c))?,
            stats: Tensor::zeros(ctx, "batch statistics", 4 * c)?,
        };
        let what = match (relu, dropout.is_some()) {
            (false, false) => "",
            (true, false) => " + relu",
            (false, true) => " + dropout",
            (true, true) => " + relu + dropout",
        };
        let y = self.act(x.s, &format!("batch norm {i}{what} output"))?;
        let s = image_shape(x.s, n);
        let site = dropout.map(|rate| {
            let layer = self.dropouts;
            self.dropouts += 1;
            DropSite::Norm {
                shape: s,
                relu,
                layer,
                rate,
            }
        });
        let epilogue = Epilogue {
            relu,
            dropout: match site {
                Some(DropSite::Norm { layer, rate, .. }) => Some(DropoutKey {
                    seed: self.seed,
                    step: 0,
                    layer,
                    rate,
                }),
                _ => None,
            },
        };
        self.switches.push(Switch::Norm {
            at: self.forward.len(),
            shape: s,
        });
        self.forward.push(image::bn_stats(
            ctx,
            s,
            &x.t,
            &norm.stats,
            &norm.running,
            true,
        )?);
        if let Some(site) = site {
            self.switches.push(Switch::Dropout {
                at: self.forward.len(),
                backward: false,
                site,
            });
        }
        self.forward.push(image::bn_apply(
            ctx,
            s,
            &x.t,
            &norm.gamma_beta,
            &y.t,
            &norm.stats,
            epilogue,
        )?);
        let ops = image::bn_backward(
            ctx,
            s,
            BnGrad {
                x: &x.t,
                gamma_beta: &norm.gamma_beta,
                stats: &norm.stats,
                dy: &y.g,
                grads: &norm.grad,
                dx: needs_grad.then_some(&x.g),
                plus: None,
            },
            epilogue,
        )?;
        for op in ops {
            if let Some(site) = site {
                bwd.dropouts.push((bwd.ops.len(), site));
            }
            bwd.push(op);
        }
        if needs_grad {
            bwd.input_grad = Some((
                bwd.ops.len() - 1,
                NormGrad {
                    shape: s,
                    x: x.t.clone(),
                    gamma_beta: norm.gamma_beta.clone(),
                    stats: norm.stats.clone(),
                    dy: y.g.clone(),
                    grads: norm.grad.clone(),
                    dx: x.g.clone(),
                    epilogue,
                },
            ));
        }
        self.norms.push(norm);
        Ok((y, bwd))
    }

    /// A max or average pooling `layer`; `relu`: a max pooling of `relu(x)` (the peephole fused
    /// the ReLU before it), one pass each way; `flatten`: a flatten after a max pooling, fused
    /// (the pooling's output and output gradient in the flattened layout); `texture`: the
    /// flattened output also written as an activation texture (`Act::tex`), for a compressed
    /// linear layer after it. `conv`: the compressed convolution right before it, whose
    /// forward product runs the pooling too where [`sparse_conv::forward_pooled`] applies.
    #[allow(clippy::too_many_arguments)]
    fn pool(
        &mut self,
        layer: &Layer,
        x: Act,
        needs_grad: bool,
        relu: bool,
        flatten: bool,
        texture: bool,
        conv: Option<ConvFwd>,
    ) -> Result<(Act, Bwd)> {
        let (ctx, n) = (self.ctx, self.n);
        let mut bwd = Bwd::default();
        let (g, (h, w)) = layer
            .pool_window(x.s, n)
            .and_then(|g| Some((g, g.out()?)))
            .ok_or_else(|| RiglError::invalid("a pooling window does not fit its input"))?;
        let (shape, layout) = if flatten {
            let c = x.s.c * h * w;
            (Shape { c, h: 1, w: 1 }, image::PoolLayout::Flat)
        } else {
            (Shape { c: x.s.c, h, w }, image::PoolLayout::Images)
        };
        let mut y = self.act(shape, "pooling output")?;
        if texture {
            y.tex = Some(Texture::new(ctx, "pooling output texture", y.s.len(), n)?);
        }
        let s = image_shape(x.s, n);
        if matches!(layer, Layer::MaxPool { .. }) {
            let arg = Tensor::zeros(ctx, "max pooling argmax", y.s.len() * n)?;
            let pooled = match (conv, relu, y.tex.as_ref()) {
                (Some(cf), true, Some(tex)) if flatten => self
                    .pooled_product(&cf, g, (&y.t, &arg, tex))?
                    .map(|op| (cf.at, op)),
                _ => None,
            };
            match pooled {
                Some((at, op)) => {
                    let (old, new) = (self.forward[at].id(), op.id());
                    self.forward[at] = op;
                    for user in self.scratch_users.iter_mut().filter(|u| u.0 == old) {
                        user.0 = new.clone();
                    }
                }
                None => self.forward.push(image::max_pool_into(
                    ctx,
                    s,
                    g,
                    &x.t,
                    &y.t,
                    &arg,
                    relu,
                    layout,
                    y.tex.as_ref(),
                )?),
            }
            if needs_grad {
                // A channel's outputs are one run in either layout.
                bwd.pooled = Some(Pooled {
                    dy: y.g.clone(),
                    arg: arg.clone(),
                    len: n * h * w,
                    at: bwd.ops.len(),
                    window: g,
                    flat: flatten,
                });
                bwd.push(image::max_pool_backward_from(
                    ctx, s, g, &y.g, &x.g, &arg, layout,
                )?);
            }
        } else if relu || flatten || texture {
            return Err(RiglError::invalid(
                "a ReLU or a flatten fused into an average pooling",
            ));
        } else {
            self.forward
                .push(image::avg_pool(ctx, s, g, &x.t, &y.t, false)?);
            if needs_grad {
                bwd.push(image::avg_pool(ctx, s, g, &y.g, &x.g, true)?);
            }
        }
        Ok((y, bwd))
    }
}

/// Training or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Batch statistics and dropout at this step.
    Train {
        /// Step (dropout's hash).
        step: u32,
    },
    /// Running statistics, no dropout.
    Eval,
}

impl GpuModel {
    /// The model on the GPU with the parameters of `host` (weights, masks, biases, batch-norm
    /// parameters and running statistics), for batches of `batch`, dropout seeded by `seed`;
    /// sparse training, no label smoothing, the GEMM variant this adapter prefers.
    pub fn new(ctx: &GpuContext, host: &HostModel, batch: usize, seed: u32) -> Result<Self> {
        Self::with_options(ctx, host, batch, seed, ModelOptions::plain(ctx)?)
    }

    /// [`GpuModel::new`] with the trainer's options. Momentum and the EMA start at zero, the
    /// ever-active record at the masks.
    pub fn with_options(
        ctx: &GpuContext,
        host: &HostModel,
        batch: usize,
        seed: u32,
        opts: ModelOptions,
    ) -> Result<Self> {
        Self::with_products(ctx, host, batch, seed, opts, &[])
    }

    /// [`GpuModel::with_options`] where the products of a compressed param `i` that
    /// `dense_products[i]` names run dense, over its slots scattered into a scratch shared by
    /// such params (its memory stays in proportion to its density; the products are the masked
    /// path's): what `--kernels auto` picks for a product that measured faster dense. A short or
    /// empty slice means compressed products for the rest. A linear layer runs all of its
    /// products one way: a mix for one is an error.
    pub fn with_products(
        ctx: &GpuContext,
        host: &HostModel,
        batch: usize,
        seed: u32,
        opts: ModelOptions,
        dense_products: &[DenseProducts],
    ) -> Result<Self> {
        if batch == 0 {
            return Err(RiglError::invalid("batch size must be at least 1"));
        }
        let (out, _) = host.spec.infer()?;
        if out.h != 1 || out.w != 1 {
            return Err(RiglError::invalid(format!(
                "model '{}' ends in {}x{}x{}, not in class scores (end with a linear layer)",
                host.spec.name, out.c, out.h, out.w
            )));
        }
        let fused = fused_first_conv(&host.spec, batch);
        // Compressed kernels first: the flat buffers hold the other params only.
        let (compressed, slots) = if opts.compressed_conv || opts.compressed_linear {
            let which = compressed::Compress {
                convs: opts.compressed_conv,
                linears: opts.compressed_linear,
            };
            compressed::compress_params(
                ctx,
                host,
                batch,
                which,
                dense_products,
                fused.is_some().then_some(0),
            )?
        } else {
            (host.weights.iter().map(|_| None).collect(), None)
        };
        let mut placements = Vec::with_capacity(host.weights.len());
        let mut off = 0usize;
        for (i, w) in host.weights.iter().enumerate() {
            if compressed.get(i).is_some_and(Option::is_some) {
                continue;
            }
            let n = w.w.len();
            if w.mask.len() != n {
                return Err(RiglError::invalid(format!(
                    "layer {}: {n} weights and {} mask values",
                    w.name,
                    w.mask.len()
                )));
            }
            placements.push(LayerPlacement {
                name: w.name.clone(),
                offset: off,
                n,
                id: i as u32,
            });
            off += n.div_ceil(ALIGN) * ALIGN;
        }
        // At least one aligned block, so every flat buffer and its dispatches exist.
        let total_w = off.max(ALIGN);
        let (mut flat_w, mut flat_m) = (vec![0.0f32; total_w], vec![0.0f32; total_w]);
        for p in &placements {
            let w = &host.weights[p.id as usize];
            for i in 0..p.n {
                let mk = w.mask[i];
                if mk != 0.0 && mk != 1.0 {
                    return Err(RiglError::invalid(format!(
                        "layer {}: mask[{i}] = {mk}, expected 0 or 1",
                        p.name
                    )));
                }
                flat_m[p.offset + i] = mk;
                flat_w[p.offset + i] = w.w[i] * mk;
            }
        }
        let w = Tensor::from_f32(ctx, "weights", &flat_w)?;
        let mask = Tensor::from_f32(ctx, "masks", &flat_m)?;
        let ever = Tensor::from_f32(ctx, "ever-active map", &flat_m)?;
        drop((flat_w, flat_m));
        let grad = Tensor::zeros(ctx, "weight gradients", total_w)?;
        let mom = Tensor::zeros(ctx, "momentum", total_w)?;
        let ema = Tensor::zeros(ctx, "gradient EMA", total_w)?;
        let mut params = Vec::with_capacity(host.weights.len());
        let mut flat_at = placements.iter().peekable();
        for (i, hw) in host.weights.iter().enumerate() {
            let flat = match flat_at.next_if(|p| p.id as usize == i) {
                Some(p) => {
                    let view = |t: &Tensor, what: &str| {
                        t.slice(ctx, p.offset, p.n, &format!("{} {what}", p.name))
                    };
                    Some(FlatParam {
                        w: view(&w, "weights")?,
                        mask: view(&mask, "mask")?,
                        grad: view(&grad, "gradient")?,
                        mom: view(&mom, "momentum")?,
                    })
                }
                None => None,
            };
            let bias = match &hw.bias {
                Some(b) => Some([
                    Tensor::from_f32(ctx, &format!("{} bias", hw.name), b)?,
                    Tensor::zeros(ctx, &format!("{} bias gradient", hw.name), b.len())?,
                    Tensor::zeros(ctx, &format!("{} bias momentum", hw.name), b.len())?,
                ]),
                None => None,
            };
            params.push(Param {
                name: hw.name.clone(),
                shape: hw.shape.clone(),
                flat,
                bias,
            });
        }
        let input = host.spec.input_shape();
        let mut b = Builder {
            ctx,
            n: batch,
            variant: opts.gemm,
            params,
            next_param: 0,
            norms: Vec::new(),
            forward: Vec::new(),
            switches: Vec::new(),
            dropouts: 0,
            seed,
            compressed,
            slots,
            sform: SparseConvForm::pick(ctx),
            dense_products: dense_products.to_vec(),
            scratch_users: Vec::new(),
        };
        let x = b.act(input, "input")?;
        let layers = host.spec.layers.clone();
        let (y, mut bwd) = match fused {
            Some(g) => {
                let (pooled, first) = b.conv_pool(g, x.clone())?;
                let (y, mut bwd) = b.seq(&layers[3..], pooled, true)?;
                bwd.append(first);
                (y, bwd)
            }
            None => b.seq(&layers, x.clone(), false)?,
        };
        keep_planes(&b.forward, &mut bwd.ops, &b.scratch_users);
        let loss = LossHead::new(ctx, &y.t, &y.g, y.s.c, batch, opts.label_smoothing)?;
        let mut switches = b.switches;
        for (at, site) in bwd.dropouts {
            switches.push(Switch::Dropout {
                at,
                backward: true,
                site,
            });
        }
        let no_decay = SgdConfig {
            weight_decay: 0.0,
            ..opts.sgd
        };
        // Weight decay on the weight tensors only (SPEC §8): one dispatch over every weight
        // (the padding between params has mask 0 and stays 0), then biases and batch norms.
        let mut sgd = vec![SgdOp {
            op: ops::sgd(ctx, &grad, &w, &mom, Some(&mask), total_w, opts.sgd)?,
            len: total_w,
            decay: true,
        }];
        if let Some(sl) = &b.slots {
            sgd.push(SgdOp {
                op: sl.sgd(ctx, opts.sgd)?,
                len: sl.total,
                decay: true,
            });
        }
        for p in &b.params {
            if let Some([bias, gb, mb]) = &p.bias {
                sgd.push(SgdOp {
                    op: ops::sgd(ctx, gb, bias, mb, None, bias.len, no_decay)?,
                    len: bias.len,
                    decay: false,
                });
            }
        }
        for nrm in &b.norms {
            let len = 2 * nrm.channels;
            sgd.push(SgdOp {
                op: ops::sgd(
                    ctx,
                    &nrm.grad,
                    &nrm.gamma_beta,
                    &nrm.mom,
                    None,
                    len,
                    no_decay,
                )?,
                len,
                decay: false,
            });
        }
        let ema_op = ops::ema(ctx, &grad, &ema, total_w, 0.9)?;
        let ever_op = ops::max_into(ctx, &mask, &ever, total_w)?;
        let slot_update = match &b.slots {
            Some(sl) => {
                let names: Vec<String> = b.params.iter().map(|p| p.name.clone()).collect();
                Some(compressed::slot_update(
                    ctx,
                    &b.compressed,
                    sl,
                    &names,
                    seed,
                )?)
            }
            None => None,
        };
        let model = GpuModel {
            spec: host.spec.clone(),
            batch,
            params: b.params,
            placements,
            w,
            mask,
            grad,
            mom,
            ema,
            ever,
            norms: b.norms,
            input: x.t,
            labels: loss.labels().clone(),
            loss_stats: loss.stats().clone(),
            logits: y.t,
            forward: b.forward,
            loss,
            backward: bwd.ops,
            switches,
            seed,
            masked: opts.masked,
            sgd,
            ema_op,
            ever_op,
            total_w,
            compressed: b.compressed,
            slots: b.slots,
            slot_update,
        };
        model.load_norms(ctx, host)?;
        model.write_meta(ctx)?;
        Ok(model)
    }

    fn load_norms(&self, ctx: &GpuContext, host: &HostModel) -> Result<()> {
        if host.norms.len() != self.norms.len() {
            return Err(RiglError::invalid(
                "batch norms of the host and GPU models differ",
            ));
        }
        for (g, h) in self.norms.iter().zip(&host.norms) {
            let gb: Vec<f32> = h
                .gamma
                .iter()
                .zip(&h.beta)
                .flat_map(|(a, b)| [*a, *b])
                .collect();
            let run: Vec<f32> = h
                .mean
                .iter()
                .zip(&h.var)
                .flat_map(|(a, b)| [*a, *b])
                .collect();
            g.gamma_beta.write_f32(ctx, &gb)?;
            g.running.write_f32(ctx, &run)?;
        }
        Ok(())
    }

    /// Sets every mode- and step-dependent parameter block.
    pub fn set_mode(&self, ctx: &GpuContext, mode: RunMode) -> Result<()> {
        for s in &self.switches {
            match s {
                Switch::Norm { at, shape } => {
                    let p = image::bn_stats_mode(*shape, mode != RunMode::Eval)?;
                    self.forward[*at].write_params(ctx, &p);
                }
                Switch::Dropout { at, backward, site } => {
                    let p = site.params(self.seed, mode)?;
                    let list = if *backward {
                        &self.backward
                    } else {
                        &self.forward
                    };
                    list[*at].write_params(ctx, &p);
                }
            }
        }
        Ok(())
    }

    /// The forward pass (logits in [`GpuModel::logits`]).
    pub fn forward_ops(&self) -> Vec<&Dispatch> {
        self.forward.iter().collect()
    }

    /// Forward, loss and backward of the batch in [`GpuModel::input`] and
    /// [`GpuModel::labels`]: every parameter's gradient.
    pub fn step_ops(&self) -> Vec<&Dispatch> {
        self.forward
            .iter()
            .chain(self.loss.ops())
            .chain(&self.backward)
            .collect()
    }

    /// SGD over every param (masked weights held at zero; the compressed ones in one dispatch
    /// over their slots) and batch-norm parameter.
    pub fn sgd_ops(&self, ctx: &GpuContext, cfg: SgdConfig) -> Result<Vec<Dispatch>> {
        let no_decay = SgdConfig {
            weight_decay: 0.0,
            ..cfg
        };
        let mut out = Vec::new();
        if let Some(sl) = &self.slots {
            out.push(sl.sgd(ctx, cfg)?);
        }
        for p in &self.params {
            if let Some(f) = &p.flat {
                out.push(ops::sgd(
                    ctx,
                    &f.grad,
                    &f.w,
                    &f.mom,
                    Some(&f.mask),
                    f.w.len,
                    cfg,
                )?);
            }
            if let Some([b, gb, mb]) = &p.bias {
                out.push(ops::sgd(ctx, gb, b, mb, None, b.len, no_decay)?);
            }
        }
        for b in &self.norms {
            out.push(ops::sgd(
                ctx,
                &b.grad,
                &b.gamma_beta,
                &b.mom,
                None,
                2 * b.channels,
                no_decay,
            )?);
        }
        Ok(out)
    }

    /// Mean loss and correct predictions of the last step (waits for the GPU).
    pub fn read_loss(&self, ctx: &GpuContext) -> Result<(f32, usize)> {
        let s = self.loss_stats.read_f32(ctx)?;
        let n = self.batch;
        let loss = s[..n].iter().sum::<f32>() / n as f32;
        let correct = s[n..2 * n].iter().filter(|&&c| c > 0.0).count();
        Ok((loss, correct))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::spec::Padding;

    fn pool(max: bool) -> Layer {
        let (size, stride, padding) = (2, None, Padding::Valid);
        if max {
            Layer::MaxPool {
                size,
                stride,
                padding,
            }
        } else {
            Layer::AvgPool {
                size,
                stride,
                padding,
            }
        }
    }

    #[test]
    fn the_peephole_fuses_what_follows_a_batch_norm_and_what_surrounds_a_max_pooling() {
        let drop = Layer::Dropout { rate: 0.3 };
        let norm = |relu, dropout| Some(Fused::Norm { relu, dropout });
        let max = |relu, flatten| Some(Fused::MaxPool { relu, flatten });
        let cases = [
            (vec![Layer::BatchNorm, Layer::Relu], norm(true, None)),
            (
                vec![Layer::BatchNorm, Layer::Relu, drop.clone(), Layer::Relu],
                norm(true, Some(0.3)),
            ),
            (vec![Layer::BatchNorm, drop.clone()], norm(false, Some(0.3))),
            // Greedy: the batch norm takes the ReLU; the pooling then runs alone.
            (
                vec![Layer::BatchNorm, Layer::Relu, pool(true)],
                norm(true, None),
            ),
            (vec![Layer::BatchNorm], None),
            (vec![Layer::BatchNorm, Layer::Flatten], None),
            (vec![Layer::Relu, pool(true)], max(true, false)),
            (
                vec![Layer::Relu, pool(true), Layer::Flatten],
                max(true, true),
            ),
            (vec![pool(true), Layer::Flatten], max(false, true)),
            (vec![pool(true)], None),
            (vec![Layer::Relu, pool(false)], None),
            (vec![pool(false), Layer::Flatten], None),
            (vec![Layer::Relu, Layer::Flatten], None),
            (vec![Layer::Relu, Layer::BatchNorm], None),
            (vec![drop, Layer::Relu], None),
            (vec![], None),
        ];
        for (layers, want) in cases {
            let got = peephole(&layers);
            assert_eq!(got, want, "{layers:?}");
            if let Some(f) = got {
                assert!(f.len() <= layers.len());
            }
        }
    }
}

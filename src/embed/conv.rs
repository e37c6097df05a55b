//! A sparse 2-D convolution layer as one object — forward, backward, optimizer step and its own
//! mask updates — on GPU buffers that rigl allocates or the caller owns, on rigl's device or the
//! caller's ([`GpuContext::from_device`]): [`crate::embed::SparseLinear`]'s convolutional twin.
//!
//! Layout (the engine's, SPEC §8): weights `[kh, kw, cin, cout]` row-major (flat index
//! `((ky * k + kx) * cin + ci) * cout + co`, square kernels); activations channel-major
//! `[C, N, H, W]`:
//! ```text
//! forward   y = act(conv(x, w ⊙ m) + b)               act = ReLU or identity
//! backward  dy ⊙= relu'(y) (ReLU only, in place),  db = Σ_{N,Ho,Wo} dy,
//!           dW = Σ dy ⊗ patch(x) (dense: dL/d(m ⊙ w), what RigL grows by),
//!           dx = conv_transpose(dy, w ⊙ m)
//! step      SGD with momentum on the active weights and on b, then the mask update at the
//!           schedule's update steps (RigL skips the SGD there, SPEC §4)
//! ```
//! The storage (masked dense today, on the kernels of [`crate::gpu::conv`]) is private, so it
//! can change (to the compressed convolutions) without changing this API.

use crate::embed::layer::{check_layer_io, encode_layer_step, layer_updater, LayerSgd};
use crate::embed::{Core, MaskUpdateInfo, SchedulerConfig, SparseLayerSpec};
use crate::error::{Result, RiglError};
use crate::gpu::conv::{self, ConvGeom, ConvVariant};
use crate::gpu::ops::{self, Dispatch, SgdConfig};
use crate::gpu::{GpuContext, Tensor};
use crate::shape::{Padding, Window};
use crate::sparse::init::{init_layer, WeightInit};
use crate::sparse::update::MaskUpdater;

/// Shape, sparsity and hyper-parameters of a [`SparseConv2d`].
#[derive(Debug, Clone, PartialEq)]
pub struct SparseConv2dConfig {
    /// Name (errors, saved state).
    pub name: String,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Side of the square kernel.
    pub kernel: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Padding: TensorFlow's `SAME` (output `ceil(H / stride)`) or `VALID`.
    pub padding: Padding,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Images per step (the `N` of `x`, `y`, `dy`, `dx`).
    pub batch: usize,
    /// Sparsity of the weights in `[0, 1)` (exact active count).
    pub sparsity: f64,
    /// ReLU after the bias (identity when false).
    pub relu: bool,
    /// Optimizer (weight decay applies to the weights only).
    pub sgd: SgdConfig,
    /// Method, schedule and seed of the mask updates.
    pub scheduler: SchedulerConfig,
    /// Index of the layer in its model: selects the random streams of its initial mask and
    /// weights (as `rigl train` numbers its layers).
    pub layer_index: u64,
    /// Initialiser of the dense weights before masking (fans of `[k, k, cin, cout]`:
    /// `fan_in = k·k·cin`, `fan_out = k·k·cout`).
    pub init: WeightInit,
    /// Form of the convolution kernels; `None` lets [`ConvVariant::pick`] choose (the texture
    /// GEMMs where the device and shape allow, `RIGL_CONV` forcing one).
    pub conv: Option<ConvVariant>,
}

impl SparseConv2dConfig {
    /// A `kernel`×`kernel` convolution `in_channels -> out_channels` over `height`×`width`
    /// images, stride 1, `SAME` padding, at `sparsity`, with SGD (lr 0.1, momentum 0.9, no
    /// weight decay), no activation, He-normal weights (`rigl train --init he_normal`; set
    /// `init` to [`WeightInit::GlorotUniform`] for the trainer's default), the kernel form the
    /// device suits best, and `scheduler`'s updates.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        height: usize,
        width: usize,
        batch: usize,
        sparsity: f64,
        scheduler: SchedulerConfig,
    ) -> Self {
        SparseConv2dConfig {
            name: name.into(),
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: Padding::Same,
            height,
            width,
            batch,
            sparsity,
            relu: false,
            sgd: SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            },
            scheduler,
            layer_index: 0,
            init: WeightInit::HeNormal,
            conv: None,
        }
    }

    /// The geometry, checked: every dimension positive and a `VALID` window that fits
    /// ([`RiglError::InvalidArgument`] otherwise), every tensor's flat index within the
    /// kernels' 32 bits ([`RiglError::TooLarge`] otherwise).
    pub fn geom(&self) -> Result<ConvGeom> {
        let c = self;
        let dims = [
            ("in_channels", c.in_channels),
            ("out_channels", c.out_channels),
            ("kernel", c.kernel),
            ("stride", c.stride),
            ("height", c.height),
            ("width", c.width),
            ("batch", c.batch),
        ];
        if let Some((what, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return Err(RiglError::invalid(format!(
                "layer {}: {what} must be positive",
                c.name
            )));
        }
        let g = ConvGeom {
            window: Window {
                n: c.batch,
                h: c.height,
                w: c.width,
                k: c.kernel,
                stride: c.stride,
                padding: c.padding,
            },
            cin: c.in_channels,
            cout: c.out_channels,
        };
        let (ho, wo) = g
            .out()
            .map_err(|e| RiglError::invalid(format!("layer {}: {e}", c.name)))?;
        // The lengths ConvGeom computes unchecked, checked here first.
        let too_large = || {
            RiglError::invalid(format!(
                "layer {}: tensor sizes overflow the address space",
                c.name
            ))
        };
        let product = |f: &[usize]| -> Result<usize> {
            f.iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .ok_or_else(too_large)
        };
        product(&[c.in_channels, c.batch, c.height, c.width])?;
        product(&[c.out_channels, c.batch, ho, wo])?;
        product(&[c.kernel, c.kernel, c.in_channels, c.out_channels])?;
        // Every flat index within u32 (RiglError::TooLarge naming the tensor otherwise).
        g.params(0)?;
        Ok(g)
    }

    /// Output height and width (an error where [`SparseConv2dConfig::geom`] gives one).
    pub fn output_hw(&self) -> Result<(usize, usize)> {
        self.geom()?.out()
    }

    /// Elements of the input `[cin, N, H, W]` (and of `dx`).
    pub fn input_len(&self) -> Result<usize> {
        Ok(self.geom()?.input_len())
    }

    /// Elements of the output `[cout, N, Ho, Wo]` (and of `dy`).
    pub fn output_len(&self) -> Result<usize> {
        self.geom()?.output_len()
    }

    /// Elements of the weights `[k, k, cin, cout]`.
    pub fn weight_len(&self) -> Result<usize> {
        Ok(self.geom()?.weight_len())
    }
}

/// The activations a [`SparseConv2d`] reads and writes: rigl's or the caller's buffers.
///
/// Views of one `wgpu::Buffer` are fine (at the device's `min_storage_buffer_offset_alignment`)
/// except for the pairs one dispatch reads and writes together: `x` and `y`, `y` and `dy`, `dy`
/// and `dx` must lie in different buffers (refused with [`RiglError::BadBuffer`] otherwise).
#[derive(Debug, Clone)]
pub struct ConvIo {
    /// Input `[cin, N, H, W]` (read).
    pub x: Tensor,
    /// Output `[cout, N, Ho, Wo]` (written by the forward pass).
    pub y: Tensor,
    /// Gradient of the loss with respect to `y`, `[cout, N, Ho, Wo]` (written by the caller;
    /// the backward pass of a ReLU layer turns it into the pre-activation gradient in place).
    pub dy: Tensor,
    /// Gradient with respect to `x`, `[cin, N, H, W]`, written by the backward pass; `None` for
    /// a first layer.
    pub dx: Option<Tensor>,
}

impl ConvIo {
    /// Allocates all four on rigl's side, sized for `cfg` (an error where
    /// [`SparseConv2dConfig::geom`] gives one or the device cannot hold them).
    pub fn allocate(ctx: &GpuContext, cfg: &SparseConv2dConfig, with_dx: bool) -> Result<Self> {
        let g = cfg.geom()?;
        let (n_in, n_out) = (g.input_len(), g.output_len()?);
        Ok(ConvIo {
            x: Tensor::zeros(ctx, "conv layer input", n_in)?,
            y: Tensor::zeros(ctx, "conv layer output", n_out)?,
            dy: Tensor::zeros(ctx, "conv layer output gradient", n_out)?,
            dx: if with_dx {
                Some(Tensor::zeros(ctx, "conv layer input gradient", n_in)?)
            } else {
                None
            },
        })
    }
}

/// A sparse 2-D convolution layer on the GPU with its own masks and mask updates.
#[derive(Debug)]
pub struct SparseConv2d {
    cfg: SparseConv2dConfig,
    geom: ConvGeom,
    core: Core,
    io: ConvIo,
    w: Tensor,
    mask: Tensor,
    mom: Tensor,
    grad: Tensor,
    bias: Tensor,
    bmom: Tensor,
    bgrad: Tensor,
    fwd: Vec<Dispatch>,
    bwd: Vec<Dispatch>,
    sgd: LayerSgd,
    updater: Option<MaskUpdater>,
}

impl SparseConv2d {
    /// Builds the layer: weights from `cfg.init` and an exact random mask from the scheduler's
    /// seed (streams `2 * layer_index` and `2 * layer_index + 1`, as `rigl train`), zero bias,
    /// and every dispatch of a step on `io` (each buffer checked: length, `STORAGE` usage,
    /// offset alignment, the device's binding size, no buffer shared by a pair one dispatch
    /// reads and writes; a bad one is [`RiglError::BadBuffer`] naming its role). A zero
    /// dimension, a `VALID` window that does not fit, a sparsity outside `[0, 1)`, a method
    /// other than RigL, SET or static, or a kernel form `cfg.conv` the device cannot run is
    /// [`RiglError::InvalidArgument`]; tensors past the kernels' 32-bit indexing or a device
    /// short of a limit is [`RiglError::TooLarge`].
    pub fn new(ctx: &GpuContext, cfg: SparseConv2dConfig, io: ConvIo) -> Result<Self> {
        let g = cfg.geom()?;
        crate::embed::gpu::check_device_limits(ctx)?;
        let (cin, cout, k) = (cfg.in_channels, cfg.out_channels, cfg.kernel);
        let shape = [k, k, cin, cout];
        let spec = SparseLayerSpec::new(cfg.name.clone(), &shape, cfg.sparsity);
        let mut core = Core::new(cfg.scheduler, vec![spec])?;
        let init = init_layer(
            cfg.scheduler.seed,
            cfg.layer_index,
            &shape,
            core.active[0],
            cfg.init,
        )?;
        core.active = core.check_masks(std::slice::from_ref(&init.mask))?;
        let name = &cfg.name;
        let (n_in, n_out, n) = (g.input_len(), g.output_len()?, g.weight_len());
        check_layer_io(
            ctx,
            name,
            [&io.x, &io.y, &io.dy],
            io.dx.as_ref(),
            n_in,
            n_out,
        )?;
        let w = Tensor::from_f32(ctx, &format!("{name} weights"), &init.weights)?;
        let mask = Tensor::from_f32(ctx, &format!("{name} mask"), &init.mask)?;
        let mom = Tensor::zeros(ctx, &format!("{name} momentum"), n)?;
        let grad = Tensor::zeros(ctx, &format!("{name} weight gradient"), n)?;
        let bias = Tensor::zeros(ctx, &format!("{name} bias"), cout)?;
        let bmom = Tensor::zeros(ctx, &format!("{name} bias momentum"), cout)?;
        let bgrad = Tensor::zeros(ctx, &format!("{name} bias gradient"), cout)?;
        let variant = match cfg.conv {
            Some(v) if !v.supports(ctx, &g) => {
                return Err(RiglError::invalid(format!(
                    "layer {name}: the {} convolution kernels cannot run this layer on {}",
                    v.as_str(),
                    ctx.info.name
                )))
            }
            Some(v) => v,
            None => ConvVariant::pick(ctx, &g)?,
        };
        // One row per output channel, one column per output position: [cout, N·Ho·Wo].
        let cols = n_out / cout;
        let fwd = vec![
            conv::forward_with(ctx, variant, g, &io.x, &w, Some(&mask), None, &io.y)?,
            ops::bias_act(ctx, &bias, &io.y, cout, cols, cfg.relu)?,
        ];
        let mut bwd = Vec::new();
        if cfg.relu {
            bwd.push(ops::relu_bwd(ctx, &io.y, &io.dy, n_out)?);
        }
        bwd.push(ops::segment_sum(ctx, &io.dy, &bgrad, cout, cols, false)?);
        bwd.push(conv::weight_grad_with(
            ctx, variant, g, &io.x, &io.dy, &grad, false,
        )?);
        if let Some(dx) = &io.dx {
            bwd.push(conv::input_grad_with(
                ctx,
                variant,
                g,
                &io.dy,
                &w,
                Some(&mask),
                dx,
                false,
            )?);
        }
        let sgd = LayerSgd::new(
            ctx,
            cfg.sgd,
            [&grad, &w, &mom, &mask],
            [&bgrad, &bias, &bmom],
        )?;
        let updater = layer_updater(ctx, &cfg.scheduler, name, n, &w, &mask, &mom, &grad)?;
        Ok(SparseConv2d {
            cfg,
            geom: g,
            core,
            io,
            w,
            mask,
            mom,
            grad,
            bias,
            bmom,
            bgrad,
            fwd,
            bwd,
            sgd,
            updater,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SparseConv2dConfig {
        &self.cfg
    }

    /// The activations it reads and writes.
    pub fn io(&self) -> &ConvIo {
        &self.io
    }

    /// Active weights (constant under RigL, SET and static training).
    pub fn active(&self) -> usize {
        self.core.active[0]
    }

    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        // Checked when the layer was built.
        self.geom.window.out().unwrap_or((0, 0))
    }

    /// Records the forward pass into a compute pass.
    pub fn encode_forward(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.fwd {
            d.encode(pass);
        }
    }

    /// Records the backward pass (`io.dy` must hold the output gradient).
    pub fn encode_backward(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.bwd {
            d.encode(pass);
        }
    }

    /// Records the end of training step `step` into `enc`: SGD (except at a RigL update step,
    /// which spends the batch on the update), then the mask update when `step` is an update
    /// step, as the official code orders them. Submit `enc` before recording the next step.
    pub fn encode_step(
        &mut self,
        ctx: &GpuContext,
        step: u64,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<Option<MaskUpdateInfo>> {
        encode_layer_step(
            &mut self.core,
            self.updater.as_ref(),
            self.sgd.dispatches(),
            ctx,
            step,
            enc,
            "sparse conv2d step",
        )
    }

    /// Sets the optimizer's hyper-parameters (e.g. a new learning rate) from the next submit
    /// (a change of `nesterov` rebuilds the two SGD kernels; an error only when that fails).
    pub fn set_sgd(&mut self, ctx: &GpuContext, sgd: SgdConfig) -> Result<()> {
        self.sgd.set(ctx, sgd)?;
        self.cfg.sgd = sgd;
        Ok(())
    }

    /// Overwrites weights (`[k, k, cin, cout]`, zeroed outside the mask) and bias; resets
    /// momentum.
    pub fn load(&self, ctx: &GpuContext, weights: &[f32], bias: &[f32]) -> Result<()> {
        let mask = self.mask.read_f32(ctx)?;
        if weights.len() != mask.len() || bias.len() != self.cfg.out_channels {
            return Err(RiglError::invalid(format!(
                "layer {}: {} weights and {} biases, expected {} and {}",
                self.cfg.name,
                weights.len(),
                bias.len(),
                mask.len(),
                self.cfg.out_channels
            )));
        }
        let w: Vec<f32> = weights.iter().zip(&mask).map(|(w, m)| w * m).collect();
        self.w.write_f32(ctx, &w)?;
        self.bias.write_f32(ctx, bias)?;
        self.mom.write_f32(ctx, &vec![0.0; w.len()])?;
        self.bmom.write_f32(ctx, &vec![0.0; bias.len()])
    }

    /// Reads the weights back (`[k, k, cin, cout]`, zero outside the mask).
    pub fn read_weights(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.w.read_f32(ctx)
    }

    /// Reads the 0/1 mask back (`[k, k, cin, cout]`).
    pub fn read_mask(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.mask.read_f32(ctx)
    }

    /// Reads the dense weight gradient of the last backward pass (`[k, k, cin, cout]`).
    pub fn read_weight_gradient(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.grad.read_f32(ctx)
    }

    /// Reads the weight momentum back.
    pub fn read_momentum(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.mom.read_f32(ctx)
    }

    /// Reads the bias back (`[cout]`).
    pub fn read_bias(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.bias.read_f32(ctx)
    }

    /// Reads the bias gradient of the last backward pass.
    pub fn read_bias_gradient(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        self.bgrad.read_f32(ctx)
    }
}

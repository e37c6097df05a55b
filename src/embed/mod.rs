//! rigl as the sparse backend of another trainer: the host keeps its own model, kernels,
//! optimizer and training loop, and hands the sparsity to rigl.
//!
//! Three ways in:
//! - *whole layers*: [`crate::embed::layer::SparseLinear`], a sparse linear layer, and
//!   [`crate::embed::conv::SparseConv2d`], a sparse 2-D convolution, each with forward,
//!   backward, SGD step and its own mask updates on GPU buffers (rigl's or the caller's), on
//!   rigl's device or the caller's ([`crate::gpu::GpuContext::from_device`]);
//! - *scheduler only*: [`SparseScheduler`] holds the masks of the caller's layers, applies them
//!   to the caller's weight and optimizer-slot buffers, says at each step whether a dense
//!   gradient is needed, and performs the mask update (drop/grow, zeroing new weights and the
//!   optimizer slots it was handed) into the caller's command encoder or queue;
//! - *CPU only*: [`CpuScheduler`], the same on `&mut [f32]` slices, no GPU at all.
//!
//! Both schedulers follow SPEC §3–5 exactly as rigl's own trainer does (same initial masks for
//! the same seed, same update steps, drop fractions, drop counts and tie rules), and their
//! state ([`SchedulerState`]: masks, step, seed and schedule) goes in and out as bytes or a
//! safetensors file so the host's checkpoints stay complete.
//!
//! A host step:
//! ```text
//! forward + backward (host)          -> dense gradient when needs_dense_gradient(step)
//! unless skips_optimizer(step): optimizer step (host), then apply_masks(encoder)
//!                                    (RigL spends the batch of an update step on the update)
//! update(step, encoder)              -> the mask update when is_update_step(step), else nothing
//! ```
//! The optimizer step comes before the update, as in the official code: SET's drop then ranks
//! the stepped weights and its new connections start the next step at 0.
//!
//! What rigl itself allocates on the host's device (its masks, scratch, parameter blocks, a
//! layer's buffers, the packed operand copies of its GEMMs; not the host's buffers it was handed)
//! is [`crate::gpu::GpuContext::gpu_bytes_held`] at any moment.
//!
//! # Examples
//!
//! These are the snippets of `docs/embedding.md` (the CPU one is also in the README), compiled here.
//!
//! Scheduler only, on the host's GPU buffers:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
//! # let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
//! # let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))?;
//! # let buf = |n: u64| device.create_buffer(&wgpu::BufferDescriptor { label: None, size: n * 4,
//! #     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
//! #     mapped_at_creation: false });
//! # let (w1, g1, momentum1) = (buf(784 * 300), buf(784 * 300), buf(784 * 300));
//! # let total_steps = 1000u64;
//! use rigl::embed::{BufferRegion, LayerBuffers, SchedulerConfig, SparseLayerSpec, SparseScheduler};
//! use rigl::gpu::GpuContext;
//!
//! let ctx = GpuContext::from_device(device.clone(), queue.clone(), adapter.get_info()); // your device
//! let layers = vec![SparseLayerSpec::new("fc1", &[784, 300], 0.9)];
//! let buffers = vec![LayerBuffers::new(BufferRegion::whole(&w1))  // your buffers
//!     .with_grad(BufferRegion::whole(&g1))
//!     .with_slot(BufferRegion::whole(&momentum1))];
//! let mut sched = SparseScheduler::new(&ctx, SchedulerConfig::rigl(total_steps, 0), layers, buffers)?;
//! sched.apply_masks_now()?;
//! for step in 0..total_steps {
//!     let mut enc = device.create_command_encoder(&Default::default());
//!     // ... your forward and backward; a dense gradient is needed when sched.needs_dense_gradient(step)
//!     if !sched.skips_optimizer(step) {         // RigL spends an update step's batch on the update
//!         // ... your optimizer step
//!         sched.apply_masks(&mut enc);          // weights and slots outside the masks := 0
//!     }
//!     sched.update(step, &mut enc)?;            // drop/grow at update steps, zeroes new weights and slots
//!     queue.submit([enc.finish()]);
//! }
//! std::fs::write("sched.safetensors", sched.state()?.to_bytes()?)?; // into your checkpoint
//! # Ok(()) }
//! ```
//!
//! CPU only, on slices:
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let total_steps = 3u64;
//! # let (mut w, grad, mut momentum) = (vec![0.5f32; 784 * 300], vec![0.1f32; 784 * 300], vec![0.0f32; 784 * 300]);
//! use rigl::embed::{CpuLayer, CpuScheduler, SchedulerConfig, SparseLayerSpec};
//!
//! let mut sched = CpuScheduler::new(SchedulerConfig::rigl(total_steps, 0),
//!                                   vec![SparseLayerSpec::new("fc1", &[784, 300], 0.9)])?;
//! for step in 0..total_steps {
//!     // ... your forward and backward into `grad`
//!     let mut layers = [CpuLayer::new(&mut w).with_grad(&grad).with_slot(&mut momentum)];
//!     if !sched.skips_optimizer(step) {
//!         // ... your optimizer step on w and momentum
//!         sched.apply_masks(&mut layers)?;
//!     }
//!     sched.update(step, &mut layers)?;
//! }
//! let state = rigl::embed::SchedulerState::from_bytes(&sched.state().to_bytes()?)?; // or .save(path)
//! sched.restore(&state)?;
//! # assert!(w.iter().zip(&sched.masks()[0]).all(|(w, m)| *m == 1.0 || *w == 0.0));
//! # assert_eq!(sched.masks()[0].iter().filter(|&&m| m == 1.0).count(), sched.active_counts()[0]);
//! # Ok(()) }
//! ```
//!
//! Whole layers:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let ctx = rigl::gpu::GpuContext::new()?;
//! # let (batch, total_steps) = (100usize, 1000u64);
//! # use rigl::embed::SchedulerConfig;
//! use rigl::embed::{LinearIo, SparseLinear, SparseLinearConfig};
//!
//! let io = LinearIo::allocate(&ctx, 784, 300, batch, false)?;
//! let cfg = SparseLinearConfig::new("fc1", 784, 300, batch, 0.9, SchedulerConfig::rigl(total_steps, 0));
//! let mut layer = SparseLinear::new(&ctx, cfg, io.clone())?;
//! for step in 0..total_steps {
//!     let mut enc = ctx.device.create_command_encoder(&Default::default());
//!     { let mut pass = enc.begin_compute_pass(&Default::default());
//!       layer.encode_forward(&mut pass); /* your loss writes io.dy */ layer.encode_backward(&mut pass); }
//!     layer.encode_step(&ctx, step, &mut enc)?;  // mask update or SGD, per the schedule
//!     ctx.queue.submit([enc.finish()]);
//! }
//! # Ok(()) }
//! ```
//!
//! A whole convolution, activations `[C, N, H, W]`, weights `[k, k, cin, cout]`:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let ctx = rigl::gpu::GpuContext::new()?;
//! # let (batch, total_steps) = (100usize, 1000u64);
//! # use rigl::embed::SchedulerConfig;
//! use rigl::embed::{ConvIo, SparseConv2d, SparseConv2dConfig};
//! use rigl::shape::Padding;
//!
//! let mut cfg = SparseConv2dConfig::new("conv1", 3, 16, 3, 32, 32, batch, 0.9,
//!                                       SchedulerConfig::rigl(total_steps, 0));
//! cfg.stride = 2;                                  // 32x32 -> 16x16, SAME padding
//! cfg.padding = Padding::Same;
//! cfg.relu = true;
//! let io = ConvIo::allocate(&ctx, &cfg, false)?;   // or your STORAGE buffers
//! let mut layer = SparseConv2d::new(&ctx, cfg, io.clone())?;
//! assert_eq!(layer.output_hw(), (16, 16));
//! for step in 0..total_steps {
//!     let mut enc = ctx.device.create_command_encoder(&Default::default());
//!     { let mut pass = enc.begin_compute_pass(&Default::default());
//!       layer.encode_forward(&mut pass); /* your loss writes io.dy */ layer.encode_backward(&mut pass); }
//!     layer.encode_step(&ctx, step, &mut enc)?;
//!     ctx.queue.submit([enc.finish()]);
//! }
//! # Ok(()) }
//! ```

pub mod conv;
pub mod cpu;
pub mod gpu;
pub mod layer;
pub mod state;

pub use conv::{ConvIo, SparseConv2d, SparseConv2dConfig};
pub use cpu::{CpuLayer, CpuScheduler};
pub use gpu::{BufferRegion, LayerBuffers, SparseScheduler};
pub use layer::{LinearIo, SparseLinear, SparseLinearConfig};
pub use state::{LayerState, SchedulerState};

use crate::error::{Result, RiglError};
use crate::sparse::init::{random_mask, rng_for};
use crate::sparse::schedule::drop_count;
use crate::sparse::update::{GrowRule, LayerCounts};
use crate::sparse::{active_count, Method, UpdateSchedule};

/// What the scheduler does and when (SPEC §3 and §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    /// `Rigl` (grow by |dense gradient|), `Set` (grow at random, no dense gradient) or `Static`
    /// (masks never change). Other methods are rejected with an error.
    pub method: Method,
    /// When masks change and the drop fraction (ΔT, `t_end`, α, cosine or constant).
    pub schedule: UpdateSchedule,
    /// Seed of the initial masks (the trainer's streams: layer `l` uses stream `2 l`) and of
    /// SET's random grow score (its low 32 bits).
    pub seed: u64,
}

impl SchedulerConfig {
    /// RigL with SPEC's defaults for a run of `total_steps` (ΔT 100, `t_end` 0.75 of the run,
    /// α 0.3, cosine decay).
    pub fn rigl(total_steps: u64, seed: u64) -> Self {
        SchedulerConfig {
            method: Method::Rigl,
            schedule: UpdateSchedule::with_defaults(total_steps),
            seed,
        }
    }
}

/// One sparse weight tensor of the host's model.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseLayerSpec {
    /// Name (used in errors and as the key in saved state).
    pub name: String,
    /// Shape (`[in, out]` for a dense layer); the weights are flat, row-major over it.
    pub shape: Vec<usize>,
    /// Sparsity in `[0, 1)`: the layer keeps exactly `n - floor(sparsity * n)` active weights.
    pub sparsity: f64,
}

impl SparseLayerSpec {
    /// A layer named `name` of `shape` at `sparsity`.
    pub fn new(name: impl Into<String>, shape: &[usize], sparsity: f64) -> Self {
        SparseLayerSpec {
            name: name.into(),
            shape: shape.to_vec(),
            sparsity,
        }
    }

    /// Number of weights (product of the shape).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The host's weight tensors `(name, shape)` with per-layer sparsities from a distribution
    /// (uniform, ER or ERK, SPEC §2), as `rigl train` and `rigl plan` compute them: a
    /// convolution kernel `[kh, kw, cin, cout]` counts its kernel dimensions in ERK's score, a
    /// dense layer is `[in, out]`. The weights of a kernel are flat over its shape, so its flat
    /// index `((ky * kw + kx) * cin + ci) * cout + co` is that of the `[kh*kw*cin, cout]` matrix.
    ///
    /// Errors: what [`crate::sparse::layer_sparsities`] rejects (a shape of fewer than two
    /// dimensions, a zero dimension, a duplicate name, a target that cannot be met).
    pub fn distribute(
        layers: &[(&str, &[usize])],
        cfg: &crate::sparse::DistributionConfig,
    ) -> Result<Vec<SparseLayerSpec>> {
        let shapes: Vec<crate::sparse::LayerShape> = layers
            .iter()
            .map(|(n, s)| crate::sparse::LayerShape::new(*n, s))
            .collect();
        Ok(crate::sparse::layer_sparsities(&shapes, cfg)?
            .into_iter()
            .map(|l| SparseLayerSpec::new(l.name, &l.shape, l.sparsity))
            .collect())
    }

    /// True when the layer has no weights.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one mask update did.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskUpdateInfo {
    /// The step of the update.
    pub step: u64,
    /// Drop fraction at that step (SPEC §3).
    pub drop_fraction: f32,
    /// Per layer: active weights dropped, and as many positions grown.
    pub dropped: Vec<usize>,
}

/// The host-side logic shared by the GPU and CPU schedulers.
#[derive(Debug, Clone)]
pub(crate) struct Core {
    pub cfg: SchedulerConfig,
    pub layers: Vec<SparseLayerSpec>,
    pub active: Vec<usize>,
    /// One past the last step given to `update`.
    pub step: u64,
}

impl Core {
    pub fn new(cfg: SchedulerConfig, layers: Vec<SparseLayerSpec>) -> Result<Self> {
        match cfg.method {
            Method::Rigl | Method::Set | Method::Static => {}
            other => {
                return Err(RiglError::invalid(format!(
                    "the embedded scheduler runs rigl, set or static, not {other}"
                )))
            }
        }
        cfg.schedule.validate()?;
        if layers.is_empty() {
            return Err(RiglError::invalid("the scheduler needs at least one layer"));
        }
        let mut active = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            if l.shape.is_empty() || l.shape.contains(&0) {
                return Err(RiglError::invalid(format!(
                    "layer {}: shape {:?} has no weights",
                    l.name, l.shape
                )));
            }
            if !(0.0..1.0).contains(&l.sparsity) {
                return Err(RiglError::invalid(format!(
                    "layer {}: sparsity must be in [0, 1), got {}",
                    l.name, l.sparsity
                )));
            }
            if l.len() > u32::MAX as usize / 2 {
                return Err(RiglError::invalid(format!(
                    "layer {}: {} weights is too many",
                    l.name,
                    l.len()
                )));
            }
            if layers[..i].iter().any(|o| o.name == l.name) {
                return Err(RiglError::invalid(format!(
                    "layer name {} is used twice",
                    l.name
                )));
            }
            active.push(active_count(l.len(), l.sparsity));
        }
        Ok(Core {
            cfg,
            layers,
            active,
            step: 0,
        })
    }

    /// The initial masks: exactly the trainer's (`init_layer` mask streams) for the same seed.
    pub fn initial_masks(&self) -> Result<Vec<Vec<f32>>> {
        self.layers
            .iter()
            .zip(&self.active)
            .enumerate()
            .map(|(l, (spec, &a))| {
                random_mask(spec.len(), a, &mut rng_for(self.cfg.seed, 2 * l as u64))
            })
            .collect()
    }

    pub fn is_update_step(&self, step: u64) -> bool {
        self.cfg.method.drops_and_grows() && self.cfg.schedule.is_update_step(step)
    }

    pub fn needs_dense_gradient(&self, step: u64) -> bool {
        self.cfg.method == Method::Rigl && self.is_update_step(step)
    }

    pub fn rule(&self) -> GrowRule {
        if self.cfg.method == Method::Set {
            GrowRule::Random
        } else {
            GrowRule::Score
        }
    }

    /// Drop fraction and per-layer counts of the update at `step`.
    pub fn counts(&self, step: u64) -> Result<(f32, Vec<LayerCounts>)> {
        if step > u64::from(u32::MAX) {
            return Err(RiglError::invalid(format!(
                "step {step} exceeds the mask update's 32-bit step counter"
            )));
        }
        let df = self.cfg.schedule.drop_fraction(step);
        let counts = self
            .active
            .iter()
            .map(|&a| {
                let d = drop_count(a, df);
                LayerCounts {
                    k_keep: a - d,
                    k_grow: d,
                }
            })
            .collect();
        Ok((df, counts))
    }

    pub fn info(step: u64, df: f32, counts: &[LayerCounts]) -> MaskUpdateInfo {
        MaskUpdateInfo {
            step,
            drop_fraction: df,
            dropped: counts.iter().map(|c| c.k_grow).collect(),
        }
    }

    /// Checks a mask per layer (lengths, 0/1 values) and returns the active counts.
    pub fn check_masks(&self, masks: &[Vec<f32>]) -> Result<Vec<usize>> {
        if masks.len() != self.layers.len() {
            return Err(RiglError::invalid(format!(
                "{} masks for {} layers",
                masks.len(),
                self.layers.len()
            )));
        }
        let mut active = Vec::new();
        for (spec, m) in self.layers.iter().zip(masks) {
            if m.len() != spec.len() {
                return Err(RiglError::invalid(format!(
                    "layer {}: mask of {} values, the layer has {}",
                    spec.name,
                    m.len(),
                    spec.len()
                )));
            }
            if let Some((i, v)) = m.iter().enumerate().find(|(_, &v)| v != 0.0 && v != 1.0) {
                return Err(RiglError::invalid(format!(
                    "layer {}: mask[{i}] = {v}, expected 0 or 1",
                    spec.name
                )));
            }
            active.push(m.iter().filter(|&&v| v == 1.0).count());
        }
        Ok(active)
    }

    pub fn state(&self, masks: &[Vec<f32>]) -> SchedulerState {
        SchedulerState {
            method: self.cfg.method,
            schedule: self.cfg.schedule,
            seed: self.cfg.seed,
            step: self.step,
            layers: self
                .layers
                .iter()
                .zip(masks)
                .map(|(spec, m)| LayerState {
                    name: spec.name.clone(),
                    shape: spec.shape.clone(),
                    mask: m.iter().map(|&v| u8::from(v != 0.0)).collect(),
                })
                .collect(),
        }
    }

    /// Checks that `state` belongs to these layers and returns its masks; adopts its method,
    /// schedule, seed and step.
    pub fn restore(&mut self, state: &SchedulerState) -> Result<Vec<Vec<f32>>> {
        if state.layers.len() != self.layers.len() {
            return Err(RiglError::invalid(format!(
                "saved scheduler state has {} layers, this scheduler {}",
                state.layers.len(),
                self.layers.len()
            )));
        }
        for (spec, l) in self.layers.iter().zip(&state.layers) {
            if spec.name != l.name || spec.shape != l.shape {
                return Err(RiglError::invalid(format!(
                    "saved layer {} {:?} does not match layer {} {:?}",
                    l.name, l.shape, spec.name, spec.shape
                )));
            }
        }
        let masks: Vec<Vec<f32>> = state
            .layers
            .iter()
            .map(|l| {
                l.mask
                    .iter()
                    .map(|&b| f32::from(u8::from(b != 0)))
                    .collect()
            })
            .collect();
        let active = self.check_masks(&masks)?;
        let cfg = SchedulerConfig {
            method: state.method,
            schedule: state.schedule,
            seed: state.seed,
        };
        let mut next = Core::new(cfg, self.layers.clone())?;
        next.active = active;
        next.step = state.step;
        *self = next;
        Ok(masks)
    }
}

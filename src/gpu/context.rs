//! Adapter choice, device creation with the adapter's real limits, and the embedding constructor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Result, RiglError};
use crate::gpu::registry::KernelRegistry;

/// Environment variable naming (a substring of) the adapter to use.
pub const ADAPTER_ENV: &str = "RIGL_ADAPTER";

/// The features we use when the adapter has them; none is required.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SHADER_F16
}

/// A device and queue plus what the engine knows about them.
///
/// Cheap to clone: all fields are reference counted.
#[derive(Clone)]
pub struct GpuContext {
    /// The wgpu device (rigl's own or the host's).
    pub device: wgpu::Device,
    /// The queue work is submitted to.
    pub queue: wgpu::Queue,
    /// Adapter name, backend, type and driver.
    pub info: wgpu::AdapterInfo,
    /// Features enabled on the device.
    pub features: wgpu::Features,
    /// Limits of the device (the adapter's real ones when rigl created it).
    pub limits: wgpu::Limits,
    /// Whether rigl created the device (false when embedded on a host's device).
    pub owned: bool,
    pub(crate) registry: Arc<KernelRegistry>,
    held: Arc<AtomicU64>,
}

/// One allocation's share of [`GpuContext::gpu_bytes_held`]: counted when the buffer or texture
/// is made, given back when the last handle on it (a tensor, a texture, or a dispatch binding
/// it) is dropped.
#[derive(Debug)]
pub(crate) struct Held {
    bytes: u64,
    counter: Arc<AtomicU64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("owned", &self.owned)
            .finish()
    }
}

/// Rank of a device type: lower is preferred.
fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Rank of a backend: the native compute APIs before GL, which lacks features we use.
fn backend_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Picks the adapter index from a list of infos: the name filter first, then by device type and backend.
///
/// Returns an error that lists what was found when nothing matches.
pub fn choose_adapter(infos: &[wgpu::AdapterInfo], name_filter: Option<&str>) -> Result<usize> {
    let found = || {
        if infos.is_empty() {
            "none".to_string()
        } else {
            infos.iter().map(describe).collect::<Vec<_>>().join("; ")
        }
    };
    if let Some(filter) = name_filter {
        let needle = filter.to_lowercase();
        return infos
            .iter()
            .enumerate()
            .filter(|(_, i)| i.name.to_lowercase().contains(&needle))
            .min_by_key(|(_, i)| (backend_rank(i.backend), type_rank(i.device_type)))
            .map(|(idx, _)| idx)
            .ok_or_else(|| {
                RiglError::NoAdapter(format!(
                    "no GPU adapter matches {ADAPTER_ENV}='{filter}'; adapters found: {}",
                    found()
                ))
            });
    }
    infos
        .iter()
        .enumerate()
        .min_by_key(|(_, i)| (backend_rank(i.backend), type_rank(i.device_type)))
        .map(|(idx, _)| idx)
        .ok_or_else(|| {
            RiglError::NoAdapter(
                "no GPU adapter found (no Vulkan, Metal or DX12 driver). On Debian/Ubuntu install \
                 the software Vulkan driver with `apt-get install mesa-vulkan-drivers`"
                    .to_string(),
            )
        })
}

/// The adapter of the `local_rank`-th process on a machine (data-parallel runs, one process per
/// adapter): with a name filter, the best match (ranks share it); otherwise the suitable adapters
/// are those of the best device type and backend found, and rank `i` takes the `i`-th of them
/// (modulo their number, so ranks share adapters when there are more ranks than adapters).
pub fn choose_adapter_for_rank(
    infos: &[wgpu::AdapterInfo],
    name_filter: Option<&str>,
    local_rank: usize,
) -> Result<usize> {
    let best = choose_adapter(infos, name_filter)?;
    if name_filter.is_some() {
        return Ok(best);
    }
    let class = |i: &wgpu::AdapterInfo| (backend_rank(i.backend), type_rank(i.device_type));
    let suitable: Vec<usize> = (0..infos.len())
        .filter(|&i| class(&infos[i]) == class(&infos[best]))
        .collect();
    Ok(suitable[local_rank % suitable.len()])
}

impl GpuContext {
    /// Creates a device on the best adapter: discrete > integrated > virtual > CPU, or the one whose
    /// name contains `$RIGL_ADAPTER`. `WGPU_BACKEND` restricts the backends searched.
    pub fn new() -> Result<Self> {
        let filter = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty());
        pollster::block_on(Self::new_async(filter.as_deref()))
    }

    /// As [`GpuContext::new`] with an explicit adapter name filter.
    pub fn with_adapter(name_filter: Option<&str>) -> Result<Self> {
        pollster::block_on(Self::new_async(name_filter))
    }

    /// The context of the `local_rank`-th process on this machine
    /// ([`choose_adapter_for_rank`]; `$RIGL_ADAPTER` still filters by name).
    pub fn for_local_rank(local_rank: usize) -> Result<Self> {
        let filter = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty());
        pollster::block_on(Self::open(|infos| {
            choose_adapter_for_rank(infos, filter.as_deref(), local_rank)
        }))
    }

    async fn new_async(name_filter: Option<&str>) -> Result<Self> {
        Self::open(|infos| choose_adapter(infos, name_filter)).await
    }

    /// A device on the adapter `pick` chooses among those found.
    async fn open(pick: impl FnOnce(&[wgpu::AdapterInfo]) -> Result<usize>) -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        // Validation layers slow every dispatch; wgpu's own validation still runs.
        desc.flags.remove(wgpu::InstanceFlags::VALIDATION);
        if std::env::var_os("WGPU_BACKEND").is_none() {
            // GL lacks features we use and probes a display server; ask for it only by name.
            desc.backends = wgpu::Backends::PRIMARY;
        }
        let backends = desc.backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
        let idx = pick(&infos)?;
        let adapter = &adapters[idx];
        let info = infos[idx].clone();
        if info.device_type == wgpu::DeviceType::Cpu {
            log::warn!(
                "using a software adapter ({}): correct but slow; install a GPU driver for speed",
                info.name
            );
        }
        let features = adapter.features() & wanted_features();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("rigl"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|source| RiglError::RequestDevice {
                adapter: info.name.clone(),
                source,
            })?;
        Ok(Self::assemble(device, queue, info, true))
    }

    /// Wraps a device and queue the host application already created (embedding).
    ///
    /// rigl uses the features and limits the device was created with, and waits only on its own
    /// submissions.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        Self::assemble(device, queue, info, false)
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        owned: bool,
    ) -> Self {
        let features = device.features();
        let limits = device.limits();
        let lost = Arc::new(std::sync::Mutex::new(None::<String>));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_cb.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        let registry = Arc::new(KernelRegistry::new(lost));
        GpuContext {
            device,
            queue,
            info,
            features,
            limits,
            owned,
            registry,
            held: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes of the buffers and textures rigl holds on this device now (weights, activations,
    /// scratch, GEMM operand copies, parameter blocks), for every model built on this context.
    /// Read-back staging buffers, which live only during a read, are not counted; neither is
    /// what the driver allocates for itself (pipelines, command buffers).
    pub fn gpu_bytes_held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Counts `bytes` as held until the returned handle's last clone is dropped.
    pub(crate) fn hold(&self, bytes: u64) -> Arc<Held> {
        self.held.fetch_add(bytes, Ordering::Relaxed);
        Arc::new(Held {
            bytes,
            counter: self.held.clone(),
        })
    }

    /// True when the adapter is a software rasteriser on the CPU (such as lavapipe).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// True when timestamp queries inside compute passes are available.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        )
    }

    /// The kernel registry (pipelines built once, keyed by shader and constants).
    pub fn registry(&self) -> &KernelRegistry {
        &self.registry
    }

    /// Submits command buffers and blocks until exactly that submission is done.
    pub fn submit_and_wait(
        &self,
        what: &str,
        cmds: impl IntoIterator<Item = wgpu::CommandBuffer>,
    ) -> Result<()> {
        let idx = self.queue.submit(cmds);
        self.wait(what, idx)
    }

    /// Waits for one submission of ours (never for the host's other work).
    pub fn wait(&self, what: &str, idx: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| RiglError::Gpu {
                what: what.to_string(),
                message: e.to_string(),
            })?;
        self.check_lost()
    }

    /// Runs `f` inside validation and out-of-memory error scopes: a GPU error raised by what it
    /// records or submits comes back as [`RiglError::Gpu`] naming `what`, instead of reaching
    /// wgpu's uncaptured-error handler (which panics).
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(err) = v.or(o) {
            return Err(RiglError::Gpu {
                what: what.to_string(),
                message: err.to_string(),
            });
        }
        self.check_lost()?;
        out
    }

    /// Returns an error if the device has been lost.
    pub fn check_lost(&self) -> Result<()> {
        self.registry.check_lost()
    }

    /// Checks that a storage buffer of `bytes` may be bound; `what` names the layer or tensor.
    pub fn check_storage_size(&self, what: &str, bytes: u64) -> Result<()> {
        let limit = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > limit {
            return Err(RiglError::TooLarge {
                what: what.to_string(),
                needed: bytes,
                unit: "bytes",
                limit,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(())
    }
}

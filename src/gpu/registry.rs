//! Kernel registry: every compute pipeline is built once, keyed by shader, entry point and
//! specialisation constants, inside an error scope so a bad shader is an error, not a panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Result, RiglError};
use crate::gpu::shaders;

/// How one binding of a kernel is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// A uniform block of parameters.
    Uniform,
    /// A read-only storage buffer.
    Read,
    /// A read-write storage buffer.
    ReadWrite,
    /// A read-only 2-D storage texture of `rgba32float` ([`crate::gpu::texture::Texture`]).
    TexRead,
    /// A write-only 2-D storage texture of `rgba32float`.
    TexWrite,
    /// A read-only 2-D storage texture of `rg32uint` (sparse metadata).
    MetaRead,
    /// A write-only 2-D storage texture of `rg32uint`.
    MetaWrite,
}

impl Binding {
    /// Whether this binding is a storage texture (activations or sparse metadata).
    pub fn is_texture(self) -> bool {
        matches!(
            self,
            Binding::TexRead | Binding::TexWrite | Binding::MetaRead | Binding::MetaWrite
        )
    }
}

/// A kernel: a shader file (by name), an entry point, the bindings of group 0 in order, and the
/// `const` substitutions / pipeline-overridable constants that specialise it.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpec {
    /// Shader file stem in `shaders/`.
    pub shader: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Bindings 0..n of group 0.
    pub bindings: &'static [Binding],
    /// Module-scope `const NAME: T = value;` lines replaced before compilation (variants that
    /// change array sizes, which overrides cannot).
    pub consts: Vec<(&'static str, String)>,
    /// Pipeline-overridable constants (`override NAME`).
    pub overrides: Vec<(&'static str, f64)>,
    /// Code substituted for the lines from `// BEGIN NAME` to `// END NAME` (the generic code
    /// between them keeps the file valid on its own): straight-line code the host generates for
    /// one geometry, scalars where the generic code loops over private arrays.
    pub snippets: Vec<(&'static str, String)>,
}

impl KernelSpec {
    /// A spec with no specialisation.
    pub fn new(shader: &'static str, entry: &'static str, bindings: &'static [Binding]) -> Self {
        KernelSpec {
            shader,
            entry,
            bindings,
            consts: Vec::new(),
            overrides: Vec::new(),
            snippets: Vec::new(),
        }
    }

    /// Adds a `const` substitution.
    pub fn with_const(mut self, name: &'static str, value: impl ToString) -> Self {
        self.consts.push((name, value.to_string()));
        self
    }

    /// Adds a code substitution (see [`KernelSpec::snippets`]).
    pub fn with_snippet(mut self, name: &'static str, code: String) -> Self {
        self.snippets.push((name, code));
        self
    }

    /// Adds an override constant.
    pub fn with_override(mut self, name: &'static str, value: f64) -> Self {
        self.overrides.push((name, value));
        self
    }

    fn key(&self) -> String {
        format!(
            "{}:{}:{:?}:{:?}:{:?}",
            self.shader, self.entry, self.consts, self.overrides, self.snippets
        )
    }

    /// Human-readable name for errors and profiles.
    pub fn name(&self) -> String {
        format!("{}.wgsl:{}", self.shader, self.entry)
    }
}

/// A built kernel: its pipeline and bind group layout.
#[derive(Debug)]
pub struct Kernel {
    /// The compute pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Layout of bind group 0.
    pub layout: wgpu::BindGroupLayout,
    /// The spec it was built from.
    pub spec: KernelSpec,
}

/// Cache of built kernels for one device.
pub struct KernelRegistry {
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    lost: Arc<Mutex<Option<String>>>,
    pub(crate) tuned_gemm: crate::gpu::gemm::TuneCache,
}

/// Applies `const` and code substitutions to a shader source. Every named const and snippet
/// region must exist.
pub fn specialise(source: &str, spec: &KernelSpec) -> Result<String> {
    let mut out = source.to_string();
    for (name, code) in &spec.snippets {
        let missing = || RiglError::Pipeline {
            kernel: spec.name(),
            message: format!("no `// BEGIN {name}` ... `// END {name}` region to replace"),
        };
        let begin = format!("// BEGIN {name}\n");
        let end = format!("// END {name}\n");
        let start = out.find(&begin).ok_or_else(missing)?;
        let stop = out[start..].find(&end).ok_or_else(missing)? + start + end.len();
        // From the start of the BEGIN line, to keep the indentation of the code after it.
        let line = out[..start].rfind('\n').map_or(0, |i| i + 1);
        out.replace_range(line..stop, code);
    }
    for (name, value) in &spec.consts {
        let prefix = format!("const {name}:");
        let start = out.find(&prefix).ok_or_else(|| RiglError::Pipeline {
            kernel: spec.name(),
            message: format!("no `const {name}` to specialise"),
        })?;
        let eq = out[start..].find('=').map(|i| start + i + 1);
        let end = out[start..].find(';').map(|i| start + i);
        match (eq, end) {
            (Some(eq), Some(end)) if eq < end => {
                out.replace_range(eq..end, &format!(" {value}"));
            }
            _ => {
                return Err(RiglError::Pipeline {
                    kernel: spec.name(),
                    message: format!("malformed `const {name}` line"),
                })
            }
        }
    }
    Ok(out)
}

impl KernelRegistry {
    pub(crate) fn new(lost: Arc<Mutex<Option<String>>>) -> Self {
        KernelRegistry {
            kernels: Mutex::new(HashMap::new()),
            lost,
            tuned_gemm: Default::default(),
        }
    }

    pub(crate) fn check_lost(&self) -> Result<()> {
        match self.lost.lock() {
            Ok(l) => match l.as_ref() {
                Some(msg) => Err(RiglError::DeviceLost(msg.clone())),
                None => Ok(()),
            },
            Err(_) => Err(RiglError::DeviceLost("device-lost state poisoned".into())),
        }
    }

    /// Number of kernels built so far.
    pub fn len(&self) -> usize {
        self.kernels.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// True when no kernel has been built.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the kernel for `spec`, building it on first use.
    pub fn get(&self, device: &wgpu::Device, spec: &KernelSpec) -> Result<Arc<Kernel>> {
        let key = spec.key();
        if let Some(k) = self.kernels.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(k);
        }
        let kernel = Arc::new(build(device, spec)?);
        if let Ok(mut m) = self.kernels.lock() {
            m.insert(key, kernel.clone());
        }
        Ok(kernel)
    }
}

fn build(device: &wgpu::Device, spec: &KernelSpec) -> Result<Kernel> {
    let source = shaders::source(spec.shader).ok_or_else(|| RiglError::Pipeline {
        kernel: spec.name(),
        message: "unknown shader".into(),
    })?;
    let source = specialise(source, spec)?;
    // Parse and validate with naga first: its messages name the line, wgpu's scope only says "invalid".
    shaders::validate(&spec.name(), &source)?;
    let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
        .bindings
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match b {
                Binding::Uniform => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Binding::Read | Binding::ReadWrite => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *b == Binding::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Binding::TexRead | Binding::TexWrite | Binding::MetaRead | Binding::MetaWrite => {
                    wgpu::BindingType::StorageTexture {
                        access: if matches!(b, Binding::TexRead | Binding::MetaRead) {
                            wgpu::StorageTextureAccess::ReadOnly
                        } else {
                            wgpu::StorageTextureAccess::WriteOnly
                        },
                        format: if matches!(b, Binding::TexRead | Binding::TexWrite) {
                            wgpu::TextureFormat::Rgba32Float
                        } else {
                            wgpu::TextureFormat::Rg32Uint
                        },
                        view_dimension: wgpu::TextureViewDimension::D2,
                    }
                }
            },
            count: None,
        })
        .collect();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(spec.shader),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    // SAFETY: our kernels only index within the sizes their host side checked before building the
    // dispatch (every `Dispatch` checks tensor lengths against the problem), and every loop is
    // bounded by a uniform size. The runtime checks wgpu would inject (bounds clamps, loop
    // counters, division guards) cost up to several times the kernel's time on software adapters.
    let module = unsafe {
        device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
    };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(spec.entry),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(spec.entry),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let constants: Vec<(&str, f64)> = spec.overrides.iter().map(|(n, v)| (*n, *v)).collect();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(spec.entry),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(spec.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    if let Some(err) = pollster::block_on(scope.pop()) {
        return Err(RiglError::Pipeline {
            kernel: spec.name(),
            message: err.to_string(),
        });
    }
    Ok(Kernel {
        pipeline,
        layout,
        spec: spec.clone(),
    })
}

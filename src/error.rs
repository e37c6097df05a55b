//! Typed errors of the library. The binary wraps them with `anyhow` for context.

use thiserror::Error;

/// Every failure the library reports. Nothing a user or a GPU can make fail panics.
#[derive(Debug, Error)]
pub enum RiglError {
    /// No usable GPU adapter was found (or the one asked for is absent).
    #[error("{0}")]
    NoAdapter(String),

    /// The adapter refused to create a device with the features and limits we asked for.
    #[error("could not create a device on adapter '{adapter}': {source}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's reason.
        #[source]
        source: wgpu::RequestDeviceError,
    },

    /// A problem does not fit the device's limits (buffer size, workgroup counts).
    #[error("{what} needs {needed} {unit} but the device allows at most {limit} ({limit_name})")]
    TooLarge {
        /// What was being sized (a layer, a kernel, a buffer).
        what: String,
        /// Size that was needed.
        needed: u64,
        /// Unit of `needed` and `limit` (bytes, workgroups).
        unit: &'static str,
        /// The device limit.
        limit: u64,
        /// Name of the wgpu limit.
        limit_name: &'static str,
    },

    /// A shader failed to parse or validate, or a pipeline failed to build.
    #[error("kernel '{kernel}' failed to build: {message}")]
    Pipeline {
        /// Kernel name (shader file and entry point).
        kernel: String,
        /// The validation message.
        message: String,
    },

    /// wgpu reported an error (validation, out of memory, device lost) while doing `what`.
    #[error("GPU error while {what}: {message}")]
    Gpu {
        /// What the engine was doing.
        what: String,
        /// The driver's or wgpu's message.
        message: String,
    },

    /// The device was lost (driver reset, GPU removed).
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// Training produced a non-finite loss or state; nothing after the last good checkpoint was
    /// saved.
    #[error("training stopped at step {step}: {message}")]
    NonFinite {
        /// Steps done when it was detected.
        step: u64,
        /// What was non-finite, where, and which checkpoint is the last good one.
        message: String,
    },

    /// Arguments given by a caller are inconsistent (shapes, sizes, ranges).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An input file is malformed or unreadable.
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// A caller's GPU buffer cannot serve as `role`: too small, misaligned, or lacking a usage
    /// flag rigl needs (embedding on the host's own buffers).
    #[error("buffer '{buffer}' ({role}): {message}")]
    BadBuffer {
        /// The buffer's label, as given by the caller.
        buffer: String,
        /// What rigl wanted to use it for (e.g. "weights of layer fc1").
        role: String,
        /// What is wrong with it.
        message: String,
    },

    /// The ranks of a data-parallel run hold different masks after a mask update (their inputs
    /// differed): the run stops rather than train replicas that silently disagree.
    #[error("the ranks' masks of layer {layer} differ after the mask update of step {step} (checksums {checksums})")]
    MasksDiverged {
        /// The first layer whose masks differ.
        layer: String,
        /// Steps done.
        step: u64,
        /// The lowest and highest checksum over the ranks.
        checksums: String,
    },

    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`RiglError`].
pub type Result<T> = std::result::Result<T, RiglError>;

impl RiglError {
    /// Shorthand for [`RiglError::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        RiglError::InvalidArgument(msg.into())
    }
}

//! The WGSL sources, embedded at build time, and their validation with naga (no GPU needed).

use crate::error::{Result, RiglError};

/// Every shader file in `shaders/`, by stem.
pub const SHADERS: &[(&str, &str)] = &[
    ("gemm", include_str!("../../shaders/gemm.wgsl")),
    ("gemm4", include_str!("../../shaders/gemm4.wgsl")),
    ("gemm_sg", include_str!("../../shaders/gemm_sg.wgsl")),
    ("gemm_tex", include_str!("../../shaders/gemm_tex.wgsl")),
    ("gemm_pack", include_str!("../../shaders/gemm_pack.wgsl")),
    ("act", include_str!("../../shaders/act.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("xent", include_str!("../../shaders/xent.wgsl")),
    ("sgd", include_str!("../../shaders/sgd.wgsl")),
    (
        "elementwise",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    ("select", include_str!("../../shaders/select.wgsl")),
    ("spmm", include_str!("../../shaders/spmm.wgsl")),
    ("sddmm", include_str!("../../shaders/sddmm.wgsl")),
    ("csr", include_str!("../../shaders/csr.wgsl")),
    ("slots", include_str!("../../shaders/slots.wgsl")),
    (
        "sparse_meta",
        include_str!("../../shaders/sparse_meta.wgsl"),
    ),
    ("sparse_act", include_str!("../../shaders/sparse_act.wgsl")),
    ("conv", include_str!("../../shaders/conv.wgsl")),
    ("conv_tex", include_str!("../../shaders/conv_tex.wgsl")),
    ("conv_sum", include_str!("../../shaders/conv_sum.wgsl")),
    (
        "conv_col2im",
        include_str!("../../shaders/conv_col2im.wgsl"),
    ),
    ("conv_pool", include_str!("../../shaders/conv_pool.wgsl")),
    ("conv_src", include_str!("../../shaders/conv_src.wgsl")),
    ("sconv", include_str!("../../shaders/sconv.wgsl")),
    ("sconv_src", include_str!("../../shaders/sconv_src.wgsl")),
    ("sconv_meta", include_str!("../../shaders/sconv_meta.wgsl")),
    (
        "sconv_sddmm",
        include_str!("../../shaders/sconv_sddmm.wgsl"),
    ),
    ("image", include_str!("../../shaders/image.wgsl")),
];

/// A fingerprint of every shader source (64-bit FNV-1a, hex): caches of kernel timings key on
/// it, so a build with changed kernels measures again instead of trusting old timings.
pub fn fingerprint() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (stem, src) in SHADERS {
        for byte in stem.bytes().chain(src.bytes()) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The source of shader `stem`, if it exists.
pub fn source(stem: &str) -> Option<&'static str> {
    SHADERS
        .iter()
        .find(|(s, _)| *s == stem)
        .map(|(_, src)| *src)
}

/// Parses and validates WGSL with naga; the error names the kernel and the offending line.
pub fn validate(name: &str, source: &str) -> Result<()> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| RiglError::Pipeline {
        kernel: name.to_string(),
        message: e.emit_to_string(source),
    })?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| RiglError::Pipeline {
        kernel: name.to_string(),
        message: e.emit_to_string(source),
    })?;
    Ok(())
}

//! Shared test helpers: one GPU context per test binary, deterministic data, tolerances.
#![allow(dead_code)]

pub mod nets;

use std::sync::OnceLock;

use rigl::gpu::GpuContext;

/// The test GPU context (lavapipe in CI). Panics with the library's message if there is none:
/// GPU tests must not silently pass on a machine without a driver.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => c,
        Err(e) => panic!("GPU tests need an adapter: {e}"),
    })
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(747796405).wrapping_add(2891336453);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// A 0/1 mask with roughly `density` ones.
pub fn mask(len: usize, density: f32, seed: u32) -> Vec<f32> {
    data(len, seed)
        .into_iter()
        .map(|v| if (v + 1.0) * 0.5 < density { 1.0 } else { 0.0 })
        .collect()
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise, naming the first failure.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = atol + rtol * w.abs();
        assert!(
            (g - w).abs() <= tol && g.is_finite() == w.is_finite(),
            "{what}: element {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

//! Every `shaders/*.wgsl` parses and validates with naga (no GPU needed), and every file on disk
//! is registered with the engine.

use rigl::gpu::shaders::{validate, SHADERS};

#[test]
fn every_shader_validates() {
    for (name, src) in SHADERS {
        if let Err(e) = validate(name, src) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_shader_file_is_registered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .expect("shaders/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .map(|n| n.trim_end_matches(".wgsl").to_string())
        .collect();
    on_disk.sort();
    let mut registered: Vec<String> = SHADERS.iter().map(|(n, _)| n.to_string()).collect();
    registered.sort();
    assert_eq!(on_disk, registered);
}

#[test]
fn broken_shader_is_an_error_naming_the_kernel() {
    let err = validate("bad.wgsl", "fn main( {").unwrap_err().to_string();
    assert!(err.contains("bad.wgsl"), "{err}");
}

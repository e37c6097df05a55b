//! Runs the embedding examples (each asserts exact sparsity and a falling loss).

#[allow(dead_code)]
#[path = "../examples/embed_cpu.rs"]
mod embed_cpu;
#[allow(dead_code)]
#[path = "../examples/embed_device.rs"]
mod embed_device;

#[test]
fn embed_cpu_example_trains_with_exact_sparsity() {
    embed_cpu::main();
}

#[test]
fn embed_device_example_trains_with_exact_sparsity() {
    embed_device::main();
}

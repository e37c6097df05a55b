//! The same host program as `embed_device.rs` on plain slices: its own two-layer model, loss,
//! gradients and SGD in Rust loops, with rigl's `CpuScheduler` for the masks and their updates.
//! No GPU at all.
//!
//! Asserts that the sparsity is exact after every mask update and at the end, and that the loss
//! falls. `cargo run --release --example embed_cpu` (run by `tests/embed_examples.rs`).

use rigl::embed::{CpuLayer, CpuScheduler, SchedulerConfig, SparseLayerSpec};
use rigl::sparse::{active_count, DropSchedule, Method, UpdateSchedule};

const IN: usize = 16;
const HID: usize = 32;
const OUT: usize = 4;
const BATCH: usize = 32;
const BATCHES: usize = 8;
const SPARSITY: f64 = 0.5;

/// What a run measured.
pub struct Outcome {
    /// Mean loss over the first 20 steps.
    pub first_loss: f32,
    /// Mean loss over the last 20 steps.
    pub last_loss: f32,
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Trains for `steps` steps and checks exact sparsity after every mask update and at the end.
pub fn run(steps: u64) -> Result<Outcome, Box<dyn std::error::Error>> {
    let init = |n_in: usize, n_out: usize, seed| -> Vec<f32> {
        let a = (6.0 / (n_in + n_out) as f32).sqrt();
        values(n_in * n_out, seed).iter().map(|v| v * a).collect()
    };
    let (mut w1, mut w2) = (init(IN, HID, 1), init(HID, OUT, 2));
    let (mut g1, mut g2) = (vec![0.0f32; IN * HID], vec![0.0f32; HID * OUT]);
    let (mut m1, mut m2) = (vec![0.0f32; IN * HID], vec![0.0f32; HID * OUT]);
    let (lr, mu) = (0.05f32, 0.9f32);

    let layers = vec![
        SparseLayerSpec::new("w1", &[IN, HID], SPARSITY),
        SparseLayerSpec::new("w2", &[HID, OUT], SPARSITY),
    ];
    let cfg = SchedulerConfig {
        method: Method::Rigl,
        schedule: UpdateSchedule::new(25, steps * 3 / 4, 0.3, DropSchedule::Cosine)?,
        seed: 7,
    };
    let mut sched = CpuScheduler::new(cfg, layers.clone())?;
    sched.apply_masks(&mut [CpuLayer::new(&mut w1), CpuLayer::new(&mut w2)])?;

    let teacher = values(IN * OUT, 3);
    let batches: Vec<(Vec<f32>, Vec<f32>)> = (0..BATCHES)
        .map(|i| {
            let xs = values(IN * BATCH, 100 + i as u32);
            let mut ts = vec![0.0f32; OUT * BATCH];
            for k in 0..OUT {
                for b in 0..BATCH {
                    ts[k * BATCH + b] = (0..IN)
                        .map(|i| 0.5 * teacher[i * OUT + k] * xs[i * BATCH + b])
                        .sum();
                }
            }
            (xs, ts)
        })
        .collect();

    let mut losses = Vec::new();
    let mut h = vec![0.0f32; HID * BATCH];
    let mut dy = vec![0.0f32; OUT * BATCH];
    let mut dh = vec![0.0f32; HID * BATCH];
    for step in 0..steps {
        let (x, t) = &batches[step as usize % BATCHES];
        // Forward (feature-major activations) and MSE.
        for j in 0..HID {
            for b in 0..BATCH {
                let s: f32 = (0..IN).map(|i| w1[i * HID + j] * x[i * BATCH + b]).sum();
                h[j * BATCH + b] = s.max(0.0);
            }
        }
        let mut loss = 0.0f32;
        for k in 0..OUT {
            for b in 0..BATCH {
                let y: f32 = (0..HID).map(|j| w2[j * OUT + k] * h[j * BATCH + b]).sum();
                let e = y - t[k * BATCH + b];
                dy[k * BATCH + b] = 2.0 * e / (OUT * BATCH) as f32;
                loss += e * e;
            }
        }
        losses.push(loss / (OUT * BATCH) as f32);
        // Backward: dense gradients (a sparse host computes them only when
        // sched.needs_dense_gradient(step)).
        for j in 0..HID {
            for k in 0..OUT {
                g2[j * OUT + k] = (0..BATCH)
                    .map(|b| h[j * BATCH + b] * dy[k * BATCH + b])
                    .sum();
            }
            for b in 0..BATCH {
                let s: f32 = (0..OUT).map(|k| w2[j * OUT + k] * dy[k * BATCH + b]).sum();
                dh[j * BATCH + b] = if h[j * BATCH + b] > 0.0 { s } else { 0.0 };
            }
        }
        for i in 0..IN {
            for j in 0..HID {
                g1[i * HID + j] = (0..BATCH)
                    .map(|b| x[i * BATCH + b] * dh[j * BATCH + b])
                    .sum();
            }
        }
        // The optimizer step (skipped at RigL's update steps), then rigl's mask update.
        let mut model = [
            CpuLayer::new(&mut w1).with_grad(&g1).with_slot(&mut m1),
            CpuLayer::new(&mut w2).with_grad(&g2).with_slot(&mut m2),
        ];
        if !sched.skips_optimizer(step) {
            for l in model.iter_mut() {
                let g = l.grad.expect("gradient");
                let m = &mut l.slots[0];
                for i in 0..l.weights.len() {
                    m[i] = mu * m[i] + g[i];
                    l.weights[i] -= lr * m[i];
                }
            }
            sched.apply_masks(&mut model)?;
        }
        let updated = sched.update(step, &mut model)?;
        if updated.is_some() || step + 1 == steps {
            for ((spec, mask), w) in layers.iter().zip(sched.masks()).zip([&w1, &w2]) {
                let active = mask.iter().filter(|&&m| m == 1.0).count();
                assert_eq!(active, active_count(spec.len(), SPARSITY), "{}", spec.name);
                let stray = w.iter().zip(mask).filter(|(w, m)| **m == 0.0 && **w != 0.0);
                assert_eq!(stray.count(), 0, "{}: weights outside the mask", spec.name);
            }
        }
    }
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    Ok(Outcome {
        first_loss: mean(&losses[..20]),
        last_loss: mean(&losses[losses.len() - 20..]),
    })
}

pub fn main() {
    let o = run(300).expect("embedded training");
    println!(
        "embed_cpu: loss {:.4} -> {:.4} (mean of the first and last 20 steps), sparsity exact",
        o.first_loss, o.last_loss
    );
    assert!(
        o.last_loss < 0.5 * o.first_loss,
        "the loss did not fall: {} -> {}",
        o.first_loss,
        o.last_loss
    );
}

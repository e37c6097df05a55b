//! The CPU twin of convolutional models checked against finite differences: every parameter
//! gradient of small residual nets (convolutions with both paddings and strides, masks, biases,
//! batch norm, max and average pooling, dropout, flatten, global average pooling, identity and
//! projection shortcuts) equals the central difference of the loss, so the reference the GPU
//! kernels will be compared with is known to be right.

mod common;

use common::nets::{model, pooled_net, residual_net};
use rigl::cpu::model::{HostModel, Mode};
use rigl::nn::spec::ModelSpec;

const MODE: Mode = Mode::Train { seed: 5, step: 17 };

fn loss(m: &HostModel, x: &[f32], labels: &[u32], n: usize) -> f64 {
    let mut m = m.clone();
    f64::from(m.step(x, labels, n, MODE, 0.0).expect("step").loss)
}

/// Central differences of the loss against the analytic gradient, for every position of every
/// parameter (masked weights through their effective value `mask * w`, from 0).
fn check(spec: ModelSpec, n: usize, seed: u32) {
    let m = model(spec, seed);
    let input = m.spec.input_shape();
    let x = common::data(input.len() * n, seed + 50);
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7 + seed) % 3).collect();
    let analytic = m
        .clone()
        .step(&x, &labels, n, MODE, 0.0)
        .expect("step")
        .grads;
    let mut checked = 0;
    // A ReLU or max-pool kink within eps of a value bends the larger difference: the gradient
    // is right when the difference at either step size agrees (they converge as eps shrinks).
    let mut compare = |what: String, an: f32, perturb: &dyn Fn(&mut HostModel, f32)| {
        let tol = 2e-3 + 2e-2 * f64::from(an.abs());
        let mut fds = Vec::new();
        for eps in [1e-3f32, 3e-4] {
            let (mut p, mut q) = (m.clone(), m.clone());
            perturb(&mut p, eps);
            perturb(&mut q, -eps);
            let fd = (loss(&p, &x, &labels, n) - loss(&q, &x, &labels, n)) / (2.0 * f64::from(eps));
            fds.push(fd);
        }
        assert!(
            fds.iter().any(|fd| (fd - f64::from(an)).abs() <= tol),
            "{what}: finite differences {fds:?}, analytic {an}"
        );
        checked += 1;
    };
    for t in 0..m.weights.len() {
        let name = m.weights[t].name.clone();
        for i in 0..m.weights[t].w.len() {
            if m.weights[t].mask[i] == 0.0 {
                // The dense gradient at an inactive position: d loss / d (mask * w) at 0.
                compare(
                    format!("{name} weight {i} (inactive)"),
                    analytic.w[t][i],
                    &|mm, e| {
                        mm.weights[t].mask[i] = 1.0;
                        mm.weights[t].w[i] = e;
                    },
                );
            } else {
                compare(format!("{name} weight {i}"), analytic.w[t][i], &|mm, e| {
                    mm.weights[t].w[i] += e;
                });
            }
        }
        if let Some(gb) = analytic.bias[t].as_ref() {
            for (i, &an) in gb.iter().enumerate() {
                compare(format!("{name} bias {i}"), an, &|mm, e| {
                    if let Some(b) = mm.weights[t].bias.as_mut() {
                        b[i] += e;
                    }
                });
            }
        }
    }
    for b in 0..m.norms.len() {
        for i in 0..m.norms[b].gamma.len() {
            compare(
                format!("norm {b} gamma {i}"),
                analytic.gamma[b][i],
                &|mm, e| {
                    mm.norms[b].gamma[i] += e;
                },
            );
            compare(
                format!("norm {b} beta {i}"),
                analytic.beta[b][i],
                &|mm, e| {
                    mm.norms[b].beta[i] += e;
                },
            );
        }
    }
    assert!(checked > 100, "{checked} values checked");
}

#[test]
fn residual_net_gradients_equal_finite_differences() {
    check(residual_net(), 3, 1);
}

#[test]
fn pooled_net_gradients_equal_finite_differences_at_batch_1_and_3() {
    check(pooled_net(), 1, 2);
    check(pooled_net(), 3, 3);
}

#[test]
fn evaluation_uses_the_running_statistics_and_no_dropout() {
    let mut m = model(pooled_net(), 4);
    let x = common::data(36 * 2, 9);
    let before = m.norms[0].clone();
    let a = m.forward(&x, 2, Mode::Eval).expect("eval");
    assert_eq!(m.norms[0], before, "evaluation leaves the statistics alone");
    assert_eq!(a, m.forward(&x, 2, Mode::Eval).expect("eval"));
    m.forward(&x, 2, MODE).expect("train");
    let moved = &m.norms[0];
    assert_ne!(moved.mean, before.mean, "training moves the running mean");
    // running = 0.9 running + 0.1 batch: from 0, the mean is a tenth of the batch mean.
    let mut fresh = model(pooled_net(), 4);
    let y = fresh.forward(&x, 2, Mode::Eval).expect("eval");
    assert_eq!(y.len(), 3 * 2);
}

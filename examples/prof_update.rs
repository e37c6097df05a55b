use rand::Rng;
use rigl::gpu::{profile, GpuContext, Tensor};
use rigl::sparse::update::{GrowRule, LayerCounts, LayerPlacement, MaskUpdater};
fn main() {
    let shapes = [
        (784usize, 300usize, 0.0154f64),
        (300, 100, 0.0445),
        (100, 10, 0.367),
    ];
    let shapes: Vec<_> = if std::env::var("S90").is_ok() {
        vec![(784, 300, 0.077), (300, 100, 0.222), (100, 10, 1.0)]
    } else {
        shapes.to_vec()
    };
    let mut rng = rigl::sparse::init::rng_for(1, 2);
    let (mut w, mut m, mut g) = (vec![], vec![], vec![]);
    let mut place = vec![];
    let mut counts = vec![];
    for (i, &(a, b, d)) in shapes.iter().enumerate() {
        let n = a * b;
        let mut act = 0;
        place.push(LayerPlacement {
            name: format!("l{i}"),
            offset: w.len(),
            n,
            id: i as u32,
        });
        for _ in 0..n {
            let on = rng.random::<f64>() < d;
            act += on as usize;
            m.push(if on { 1.0f32 } else { 0.0 });
            w.push(if on { rng.random::<f32>() - 0.5 } else { 0.0 });
            g.push(rng.random::<f32>() - 0.5);
        }
        let drop = act * 3 / 10;
        counts.push(LayerCounts {
            k_keep: act - drop,
            k_grow: drop,
        });
    }
    let ctx = GpuContext::new().unwrap();
    let wt = Tensor::from_f32(&ctx, "w", &w).unwrap();
    let mt = Tensor::from_f32(&ctx, "m", &m).unwrap();
    let mo = Tensor::zeros(&ctx, "mo", w.len()).unwrap();
    let gt = Tensor::from_f32(&ctx, "g", &g).unwrap();
    let up = MaskUpdater::new(&ctx, place, &wt, &mt, &mo, &gt, 1).unwrap();
    up.prepare(&ctx, 0, &counts).unwrap();
    let ops = up.dispatches(GrowRule::Score);
    let (tot, _) = profile::time_ops(&ctx, &ops, 3, 15, false).unwrap();
    println!("total {tot:.3} ms, {} dispatches", ops.len());
    let mut prev = 0.0;
    for i in 1..=ops.len() {
        let (t, _) = profile::time_ops(&ctx, &ops[..i], 2, 9, false).unwrap();
        println!("{i:2} {:8.3} ms (+{:.3})", t, t - prev);
        prev = t;
    }
}

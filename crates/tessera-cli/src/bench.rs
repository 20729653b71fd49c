//! `tessera bench matmul`: GFLOP/s of the deterministic matmul on square and GPT shapes.

use std::time::Instant;

use anyhow::Result;
use tessera_tensor::rng::Philox;
use tessera_tensor::{matmul, MatSpec};

/// The shapes measured: squares, then the `small` GPT's real products at batch 16 × 128
/// (N = 2048 tokens, d = 256, MLP 1024, vocab 256), forward and backward forms.
pub fn matmul_shapes() -> Vec<(&'static str, MatSpec)> {
    let sq = |n| MatSpec { m: n, n, k: n, ta: false, tb: false };
    let s = |m, n, k, ta, tb| MatSpec { m, n, k, ta, tb };
    vec![
        ("square-256", sq(256)),
        ("square-512", sq(512)),
        ("square-1024", sq(1024)),
        ("gpt-qkv-fwd x·Wᵀ 2048x256x256", s(2048, 256, 256, false, true)),
        ("gpt-mlp-up-fwd x·Wᵀ 2048x1024x256", s(2048, 1024, 256, false, true)),
        ("gpt-mlp-down-fwd x·Wᵀ 2048x256x1024", s(2048, 256, 1024, false, true)),
        ("gpt-mlp-up-dW dyᵀ·x 1024x256x2048", s(1024, 256, 2048, true, false)),
        ("gpt-mlp-up-dx dy·W 2048x256x1024", s(2048, 256, 1024, false, false)),
    ]
}

/// Runs each shape for at least `min_secs` and prints one tab-separated line per shape.
pub fn run_matmul(threads: usize, min_secs: f64) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    println!("impl\tthreads\tshape\tm\tn\tk\tgflops");
    for (name, spec) in matmul_shapes() {
        let r = Philox::new(1);
        let a: Vec<f32> = (0..(spec.m * spec.k) as u64).map(|i| r.uniform(1, i)).collect();
        let b: Vec<f32> = (0..(spec.k * spec.n) as u64).map(|i| r.uniform(2, i)).collect();
        let mut c = vec![0.0f32; spec.m * spec.n];
        let flops = 2.0 * (spec.m * spec.n * spec.k) as f64;
        let best = pool.install(|| {
            matmul(&spec, &a, &b, &mut c); // warm-up
            let (mut best, start) = (f64::INFINITY, Instant::now());
            while start.elapsed().as_secs_f64() < min_secs {
                let t = Instant::now();
                matmul(&spec, &a, &b, &mut c);
                best = best.min(t.elapsed().as_secs_f64());
            }
            best
        });
        let (m, n, k) = (spec.m, spec.n, spec.k);
        println!("tessera\t{threads}\t{name}\t{m}\t{n}\t{k}\t{:.1}", flops / best / 1e9);
    }
    Ok(())
}

//! Every SIMD path this CPU has computes the same bits, on shapes that cross every blocking
//! boundary of the matmul (k > 256: several depth blocks; n > 1024: several column blocks; rows
//! and columns that leave partial register tiles), at 1 and 2 threads, and for the elementwise
//! and row kernels (GELU, layer norm, softmax, cross-entropy, AdamW and their backwards).
//!
//! Forcing a path is process-wide, so this file holds exactly one test and runs as its own
//! process. It prints the paths it ran and fails if a path the CPU supports did not run; set
//! `TESSERA_REQUIRE_PATHS=avx2,avx512` to also fail on a machine that lacks one of them.

use tessera_tensor::rng::Philox;
use tessera_tensor::simd::{force_path, SimdPath};
use tessera_tensor::{matmul, matmul_batched, matmul_reference, AdamWParams, Kernel, MatSpec, Tensor};

fn rand(n: usize, salt: u64) -> Vec<f32> {
    let r = Philox::new(salt);
    (0..n as u64).map(|i| r.uniform(3, i) * 2.0 - 1.0).collect()
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// (m, n, k): several depth blocks and column blocks, partial tiles on both edges, k = 1.
const SHAPES: [(usize, usize, usize); 5] =
    [(37, 1100, 600), (13, 2085, 300), (200, 40, 517), (7, 1041, 257), (3, 1025, 1)];

fn pools() -> Vec<rayon::ThreadPool> {
    [1, 2].iter().map(|&t| rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("pool")).collect()
}

/// Checks every shape and transpose against the scalar FMA chain, on each pool.
fn check_matmul(path: SimdPath, pools: &[rayon::ThreadPool]) {
    for (salt, &(m, n, k)) in SHAPES.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let s = MatSpec { m, n, k, ta, tb };
            let (a, b) = (rand(m * k, 2 * salt as u64), rand(k * n, 2 * salt as u64 + 1));
            let want = bits(&matmul_reference(&s, &a, &b));
            for pool in pools {
                let mut c = vec![f32::NAN; m * n];
                pool.install(|| matmul(&s, &a, &b, &mut c));
                assert!(
                    bits(&c) == want,
                    "{} path, {s:?}, {} threads",
                    path.name(),
                    pool.current_num_threads()
                );
            }
        }
    }
    // Batched: entries run in parallel, each must equal its own product.
    let s = MatSpec { m: 50, n: 1030, k: 300, ta: false, tb: true };
    let (a, b) = (rand(3 * 50 * 300, 90), rand(3 * 300 * 1030, 91));
    let mut c = vec![0.0; 3 * 50 * 1030];
    pools[1].install(|| matmul_batched(&s, 3, &a, &b, &mut c));
    for t in 0..3 {
        let r = matmul_reference(&s, &a[t * 15000..(t + 1) * 15000], &b[t * 309_000..(t + 1) * 309_000]);
        assert!(
            bits(&c[t * 51_500..(t + 1) * 51_500]) == bits(&r),
            "{} path, batched entry {t}",
            path.name()
        );
    }
}

fn t(shape: &[usize], salt: u64) -> Tensor {
    Tensor::new(shape, rand(shape.iter().product(), salt)).expect("shape")
}

/// The outputs of the elementwise and row kernels on fixed inputs, as bits, in a fixed order.
fn kernel_bits(pool: &rayon::ThreadPool) -> Vec<Vec<u32>> {
    let (x, dy) = (t(&[67, 300], 10), t(&[67, 300], 11));
    let (gamma, beta) = (t(&[300], 12), t(&[300], 13));
    let ln = Kernel::LayerNorm { eps: 1e-5 }.execute(&[&x, &gamma, &beta]).expect("ln");
    let att = t(&[2, 3, 70, 70], 14);
    let ids = Tensor::new(&[67], (0..67).map(|i| (i * 7 % 300) as f32).collect()).expect("ids");
    let adam = AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 3 };
    let (m, v) = (
        t(&[67, 300], 15),
        Tensor::new(&[67, 300], rand(67 * 300, 16).iter().map(|x| x * x).collect()).expect("v"),
    );
    let calls: Vec<(Kernel, Vec<&Tensor>)> = vec![
        (Kernel::Gelu, vec![&x]),
        (Kernel::GeluBackward, vec![&x, &dy]),
        (Kernel::Add, vec![&x, &beta]),
        (Kernel::Mul, vec![&x, &dy]),
        (Kernel::SumToShape { shape: vec![300] }, vec![&x]),
        (Kernel::LayerNorm { eps: 1e-5 }, vec![&x, &gamma, &beta]),
        (Kernel::LayerNormBackward, vec![&dy, &x, &gamma, &ln[1], &ln[2]]),
        (Kernel::CausalSoftmax { scale: 0.3 }, vec![&att]),
        (Kernel::SoftmaxBackward { scale: 0.3 }, vec![&att, &att]),
        (Kernel::CrossEntropy, vec![&x, &ids]),
        (Kernel::AdamW(adam), vec![&x, &dy, &m, &v]),
    ];
    let mut out = Vec::new();
    for (k, ins) in &calls {
        let res = pool.install(|| k.execute(ins)).unwrap_or_else(|e| panic!("{}: {e}", k.name()));
        out.extend(res.iter().map(|r| bits(r.data())));
    }
    out
}

#[test]
fn every_simd_path_computes_the_same_bits() {
    let pools = pools();
    force_path(Some(SimdPath::Scalar)).expect("scalar is always supported");
    let want: Vec<Vec<Vec<u32>>> = pools.iter().map(kernel_bits).collect();
    assert!(want[0] == want[1], "scalar kernels differ between 1 and 2 threads");
    let mut ran = Vec::new();
    for path in SimdPath::ALL {
        if !path.supported() {
            eprintln!("path {} NOT RUN: this CPU does not support it", path.name());
            continue;
        }
        force_path(Some(path)).expect("supported path");
        check_matmul(path, &pools);
        for (pool, want) in pools.iter().zip(&want) {
            assert!(
                kernel_bits(pool) == *want,
                "{} path: a row or elementwise kernel differs from scalar",
                path.name()
            );
        }
        ran.push(path.name());
    }
    force_path(None).expect("unforce");
    eprintln!("paths run: {ran:?}");
    let supported: Vec<&str> = SimdPath::ALL.iter().filter(|p| p.supported()).map(|p| p.name()).collect();
    assert_eq!(ran, supported, "every supported path runs");
    if let Ok(req) = std::env::var("TESSERA_REQUIRE_PATHS") {
        for name in req.split(',').filter(|s| !s.is_empty()) {
            assert!(ran.contains(&name), "TESSERA_REQUIRE_PATHS names {name}, which did not run on this CPU");
        }
    }
}

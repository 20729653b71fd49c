//! The benchmark-only fast path ([`tessera_tensor::relaxed`]): it really splits a sum, only
//! when switched on, and once it has been on no tensor data can be hashed. Its own test binary,
//! because the switch is sticky for the whole process.

use tessera_tensor::rng::Philox;
use tessera_tensor::{hash_f32s, matmul, matmul_reference, relaxed, MatSpec};

fn rand_vec(n: usize, salt: u64) -> Vec<f32> {
    let r = Philox::new(salt);
    (0..n as u64).map(|i| r.uniform(7, i) * 2.0 - 1.0).collect()
}

fn same_bits(x: &[f32], y: &[f32]) -> bool {
    x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
}

#[test]
fn fast_path_splits_the_sum_only_when_on_and_then_hashing_refuses() {
    // k = 1024 (four depth blocks) on two threads: the fast path adds two partial sums.
    let s = MatSpec { m: 40, n: 70, k: 1024, ta: true, tb: false };
    let (a, b) = (rand_vec(40 * 1024, 5), rand_vec(1024 * 70, 6));
    let r = matmul_reference(&s, &a, &b);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    let run = |fast: bool| {
        relaxed::set_enabled(fast);
        let mut c = vec![f32::NAN; 40 * 70];
        pool.install(|| matmul(&s, &a, &b, &mut c));
        c
    };
    assert!(same_bits(&run(false), &r), "the exact path changed");
    assert!(!relaxed::was_enabled());
    let fast = run(true);
    assert!(fast.iter().zip(&r).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs())), "fast path is wrong");
    assert!(!same_bits(&fast, &r), "the fast path did not split the sum");
    relaxed::set_enabled(false);
    assert!(same_bits(&run(false), &r), "switched off, the exact path is back");

    let hashed = std::panic::catch_unwind(|| {
        let mut h = blake3::Hasher::new();
        hash_f32s(&mut h, &r);
    });
    let msg = hashed.expect_err("hashing must refuse after the fast path ran");
    let msg = msg.downcast_ref::<String>().map(String::as_str).or(msg.downcast_ref::<&str>().copied());
    assert!(msg.is_some_and(|m| m.contains("non-deterministic fast path")), "{msg:?}");
}

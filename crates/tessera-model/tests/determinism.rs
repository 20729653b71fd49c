//! The training run gives the same bits for 1, 2 and 4 threads, and matches the golden hash.

use tessera_model::fixtures::reference_run;
use tessera_tensor::hex;

mod common;
use common::GOLDEN_20_STEPS;

fn run_with_threads(n: usize) -> String {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("pool");
    hex(&pool.install(|| reference_run(20)).expect("run"))
}

#[test]
fn same_hash_for_1_2_and_4_threads_and_golden() {
    let h1 = run_with_threads(1);
    let h2 = run_with_threads(2);
    let h4 = run_with_threads(4);
    assert_eq!(h1, h2, "1 vs 2 threads");
    assert_eq!(h1, h4, "1 vs 4 threads");
    assert_eq!(h1, GOLDEN_20_STEPS, "golden state hash changed");
}

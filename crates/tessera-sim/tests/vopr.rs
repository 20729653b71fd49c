//! The fault simulator over seeds: every invariant holds under loss, duplication, reordering,
//! partitions, crashes and restarts of every node, and cheats.

mod common;

use tessera_sim::vopr::{reproduce, run_seed, VoprConfig};

#[test]
fn explore() {
    let ds = common::dataset("vopr", "explore");
    let cfg = VoprConfig::default();
    let n: u64 = std::env::var("VOPR_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let from: u64 = std::env::var("VOPR_FROM").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let t = std::time::Instant::now();
    let mut bad = 0;
    for seed in from..from + n {
        let r = run_seed(seed, &cfg, &ds);
        if !r.violations.is_empty() {
            bad += 1;
            println!("seed {seed}: {} ({}) {:?}", r.violations.join("; "), reproduce(seed), r.kinds);
        } else {
            println!(
                "seed {seed}: ok, {} rounds, {} ms virtual, {:?} {:?}",
                r.rounds_closed, r.virtual_ms, r.net, r.kinds
            );
        }
    }
    println!("{n} seeds in {:?}, {bad} failing", t.elapsed());
}

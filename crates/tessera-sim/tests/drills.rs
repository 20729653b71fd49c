//! The cheat drills over many seeds: in every seeded run each cheat is caught or neutralised,
//! and no honest trainer is ever refused. A few seeds run by default; the full sweep of 100
//! seeds is `cargo test --release -p tessera-sim --test drills -- --ignored`.

use std::path::PathBuf;

use tessera_coord::{Cheat, Event, Reject, RunConfig, RunSpec};
use tessera_data::{ingest_bytes, Dataset, IngestOptions};
use tessera_model::fixtures::SONNETS;
use tessera_sim::ProtocolSim;

fn dataset() -> Dataset {
    let dir: PathBuf = std::env::temp_dir().join(format!("tessera-drills-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = IngestOptions { shard_tokens: 8192, ..IngestOptions::default() };
    ingest_bytes(SONNETS, "sonnets", &dir, &opts).unwrap();
    Dataset::open(&dir).unwrap()
}

fn pid(i: u8) -> [u8; 32] {
    [i; 32]
}

fn cfg(seed: u64) -> RunConfig {
    let base = RunConfig {
        min_peers: 4,
        heartbeat_ms: 100,
        silence_ms: 1000,
        min_round_ms: 500,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.seed = seed;
        c.inner_steps = 2;
        c.rounds = 3;
        c.batch = 2;
    })
}

/// Runs four trainers, `cheater` (if any) cheating; returns the run.
fn run<'a>(ds: &'a Dataset, seed: u64, cheat: Option<(u8, Cheat)>) -> ProtocolSim<'a> {
    let mut p = ProtocolSim::new(cfg(seed), ds).unwrap();
    for i in 1..=4 {
        p.join(pid(i)).unwrap();
    }
    if let Some((who, c)) = cheat {
        p.cheat(&pid(who), c);
    }
    p.run_until(3).unwrap();
    p
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>().sqrt()
}

/// For each seed: copy, replay and poison are each caught (refused) or neutralised (clipped,
/// the model within 5% of the target gap of the honest run's), and nobody honest is refused.
fn drills(seeds: std::ops::Range<u64>) {
    let ds = dataset();
    let (mut caught, mut runs) = (0, 0);
    for seed in seeds {
        let honest = run(&ds, seed, None);
        for i in 1..=4 {
            assert!(honest.refused(&pid(i)).is_empty(), "seed {seed}: an honest run refuses nobody");
        }
        let theta = honest.coordinator().global().theta.clone();
        let start = RunSpec::new(cfg(seed)).unwrap().initial_state().theta;
        let target: Vec<f32> = start.iter().map(|x| x + 0.5).collect();
        let cheats = [
            (4, Cheat::Copy { of: pid(1) }),
            (3, Cheat::Replay),
            (2, Cheat::Poison { target: target.clone(), peers: 4 }),
        ];
        for (who, cheat) in cheats {
            let p = run(&ds, seed, Some((who, cheat.clone())));
            let r = p.refused(&pid(who));
            let ok = match &cheat {
                Cheat::Copy { .. } => r.len() == 3 && r.iter().all(|x| matches!(x, Reject::Copy { .. })),
                Cheat::Replay => r.len() == 2 && r.iter().all(|x| *x == Reject::Replayed),
                Cheat::Poison { .. } => {
                    let clipped = p.events.iter().filter(|e| matches!(e, Event::Clipped { .. })).count();
                    let moved = distance(&p.coordinator().global().theta, &theta) / distance(&theta, &target);
                    clipped + r.len() == 3 && moved < 0.05
                }
            };
            assert!(ok, "seed {seed}: {cheat:?} was neither caught nor neutralised: {r:?}");
            for honest in (1..=4).filter(|i| *i != who) {
                assert!(p.refused(&pid(honest)).is_empty(), "seed {seed}: honest trainer {honest} refused");
            }
            caught += 1;
            runs += 1;
        }
    }
    eprintln!("{caught} of {runs} cheating runs caught or neutralised; 0 honest trainers refused");
}

#[test]
fn three_seeds_of_cheat_drills() {
    drills(1..4);
}

#[test]
#[ignore = "slow: 100 seeds × 4 runs; cargo test --release -p tessera-sim --test drills -- --ignored"]
fn a_hundred_seeds_of_cheat_drills() {
    drills(1..101);
}

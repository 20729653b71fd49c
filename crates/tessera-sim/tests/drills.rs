//! The cheat drills over many seeds: in every seeded run each cheat is caught or neutralised,
//! and no honest trainer is ever refused. Four seeds run by default; the full sweep of 100
//! seeds is `cargo test --release -p tessera-sim --test drills -- --ignored a_hundred`.

mod common;

use common::pid;
use tessera_coord::{Behaviour, Cheat, ClosedRound, Event, Record, RunConfig, RunSpec, Shirk};
use tessera_data::Dataset;
use tessera_sim::ProtocolSim;

fn cfg(seed: u64) -> RunConfig {
    let base = RunConfig {
        min_peers: 4,
        heartbeat_ms: 100,
        silence_ms: 1000,
        min_round_ms: 500,
        commit_every: 1,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.seed = seed;
        c.inner_steps = 2;
        c.rounds = MAX_ROUNDS;
        c.batch = 2;
    })
}

/// Most rounds a shirker or a cheating validator is given to be caught (at the default rates,
/// each round catches a half-trained or forged commitment with probability ≥ 1/4, and sends a
/// decoy with probability about 0.19).
const MAX_ROUNDS: u64 = 60;

/// The validator every drill run has: honest, unless it is the cheat.
const VALIDATOR: u8 = 9;

/// What a drill makes one trainer do.
#[derive(Debug, Clone)]
enum Bad {
    Send(Cheat),
    Train(Shirk),
    /// The validator cheats (lazy or lying); the trainers are honest.
    Validator(Behaviour),
}

/// Runs four trainers for `rounds` rounds, `who` (if any) cheating, stopping early once it
/// is refused for good.
fn run<'a>(ds: &'a Dataset, seed: u64, bad: Option<(u8, Bad)>, rounds: u64) -> ProtocolSim<'a> {
    run_with(ds, cfg(seed), bad, rounds)
}

/// [`run`] with another config.
fn run_with<'a>(ds: &'a Dataset, cfg: RunConfig, bad: Option<(u8, Bad)>, rounds: u64) -> ProtocolSim<'a> {
    let mut p = ProtocolSim::new(cfg, ds).unwrap();
    for i in 1..=4 {
        p.join(pid(i)).unwrap();
    }
    let behaviour = match &bad {
        Some((_, Bad::Validator(b))) => *b,
        _ => Behaviour::Honest,
    };
    p.join_validator(pid(VALIDATOR), behaviour).unwrap();
    match &bad {
        Some((who, Bad::Send(c))) => p.cheat(&pid(*who), c.clone()),
        Some((who, Bad::Train(s))) => p.shirk(&pid(*who), *s),
        _ => {}
    }
    for r in 1..=rounds {
        p.run_until(r).unwrap();
        if bad.as_ref().is_some_and(|(who, _)| banned(&p, *who).is_some()) {
            break;
        }
    }
    p
}

/// The round `who` was proven to have cheated in.
fn banned(p: &ProtocolSim, who: u8) -> Option<u64> {
    p.events.iter().find_map(|e| match e {
        Event::Banned { peer, round } if *peer == pid(who) => Some(*round),
        _ => None,
    })
}

/// The rounds whose aggregate took `who`'s update.
fn accepted_in(p: &ProtocolSim, who: u8) -> Vec<u64> {
    let of = |r: &Record| match r {
        Record::RoundClosed { round, accept, .. } => {
            ClosedRound::of(accept).filter(|c| c.accepted.contains(&pid(who))).map(|_| *round)
        }
        _ => None,
    };
    p.records.iter().filter_map(of).collect()
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>().sqrt()
}

/// For each seed, in runs of four trainers with one cheating:
/// - copy and replay are refused every round they cheat (by screening, or by a failed spot
///   check and the refusal that follows it);
/// - poison is refused or clipped every round, and the model stays within 5% of the target
///   gap of the honest run's;
/// - skip-steps, wrong-data and forge are proven by a spot check within [`MAX_ROUNDS`];
/// - nobody honest is refused, and no honest spot check fails.
fn drills(name: &str, seeds: impl IntoIterator<Item = u64>) {
    let ds = common::dataset("drills", name);
    let (mut caught, mut runs, mut rounds_to_catch) = (0, 0, Vec::new());
    let (mut slashed, mut whistleblowers) = (0, 0);
    for seed in seeds {
        let honest = run(&ds, seed, None, 3);
        let by_validator = honest
            .validator_events()
            .iter()
            .filter(|e| matches!(e.1, tessera_coord::ValidatorEvent::Checked { .. }))
            .count();
        assert!(by_validator > 0 || seed > 1, "seed {seed}: the validator checked nothing");
        for i in 1..=4 {
            assert!(honest.refused(&pid(i)).is_empty(), "seed {seed}: an honest run refuses nobody");
        }
        let theta = honest.coordinator().global().theta.clone();
        let start = RunSpec::new(cfg(seed)).unwrap().initial_state().theta;
        let target: Vec<f32> = start.iter().map(|x| x + 0.5).collect();
        let cheats = [
            (4, Bad::Send(Cheat::Copy { of: pid(1) }), 3),
            (3, Bad::Send(Cheat::Replay), 3),
            (2, Bad::Send(Cheat::Poison { target: target.clone(), peers: 4 }), 3),
            (2, Bad::Send(Cheat::Poison { target: target.clone(), peers: 4 }), MAX_ROUNDS),
            (4, Bad::Send(Cheat::Random { seed }), MAX_ROUNDS),
            (1, Bad::Train(Shirk::SkipSteps), MAX_ROUNDS),
            (2, Bad::Train(Shirk::WrongData), MAX_ROUNDS),
            (3, Bad::Train(Shirk::Forge), MAX_ROUNDS),
            (VALIDATOR, Bad::Validator(Behaviour::Lazy), MAX_ROUNDS),
            (VALIDATOR, Bad::Validator(Behaviour::Lying), MAX_ROUNDS),
        ];
        for (who, bad, rounds) in cheats {
            let p = run(&ds, seed, Some((who, bad.clone())), rounds);
            let (acc, r) = (accepted_in(&p, who), p.refused(&pid(who)));
            let proven = banned(&p, who).is_some();
            let ok = match &bad {
                // A copy is refused every round (proven only when a spot check draws it: arrival
                // order cannot tell the copy from the original); a bit-for-bit replay is proven
                // by the screen.
                Bad::Send(Cheat::Copy { .. }) => acc.is_empty(),
                Bad::Send(Cheat::Replay) => acc == [0] && proven, // round 0 has nothing to replay
                // Given the rounds, a poisoner is proven like a random update (below).
                Bad::Send(Cheat::Poison { .. }) if rounds == MAX_ROUNDS => proven,
                Bad::Send(Cheat::Poison { .. }) => {
                    let clipped: Vec<u64> = p
                        .events
                        .iter()
                        .filter_map(|e| match e {
                            Event::Clipped { round, .. } => Some(*round),
                            _ => None,
                        })
                        .collect();
                    let moved = distance(&p.coordinator().global().theta, &theta) / distance(&theta, &target);
                    acc.iter().all(|r| clipped.contains(r)) && moved < 0.05
                }
                // A random update is proven when the last segment's re-derivation is checked.
                Bad::Send(Cheat::Random { .. }) | Bad::Train(_) | Bad::Validator(_) => {
                    banned(&p, who).is_some()
                }
            };
            assert!(ok, "seed {seed}: {bad:?} was neither caught nor neutralised: accepted {acc:?}, {r:?}");
            let spot = matches!(bad, Bad::Train(_) | Bad::Validator(_) | Bad::Send(Cheat::Random { .. }));
            if let (true, Some(b)) = (spot, banned(&p, who)) {
                rounds_to_catch.push(b + 1);
            }
            let paid = ledger_of(&p, seed, &bad, who);
            slashed += usize::from(proven);
            whistleblowers += usize::from(paid);
            for honest in (1..=4).filter(|i| *i != who) {
                let r = p.refused(&pid(honest));
                assert!(r.is_empty(), "seed {seed}, {bad:?}: honest trainer {honest} refused: {r:?}");
            }
            let failed = p.events.iter().any(
                |e| matches!(e, Event::Checked { peer, outcome, .. } if *peer != pid(who) && !outcome.passed()),
            );
            assert!(!failed, "seed {seed}: an honest trainer failed a spot check");
            let refused = p.events.iter().find(|e| matches!(e, Event::LedgerRefused { .. }));
            assert!(refused.is_none(), "seed {seed}, {bad:?}: the ledger refused {refused:?}");
            if !matches!(bad, Bad::Validator(_)) {
                assert!(banned(&p, VALIDATOR).is_none(), "seed {seed}: the honest validator was refused");
            }
            caught += 1;
            runs += 1;
        }
    }
    let mean = rounds_to_catch.iter().sum::<u64>() as f64 / rounds_to_catch.len().max(1) as f64;
    let worst = rounds_to_catch.iter().max().copied().unwrap_or(0);
    eprintln!(
        "{caught} of {runs} cheating runs caught or neutralised; 0 honest trainers or validators \
         refused; shirkers and cheating validators proven after {mean:.1} rounds on average, {worst} at worst; \
         {slashed} proven cheats slashed, {whistleblowers} of them with a whistleblower paid (the others \
         proven by the coordinator itself, whose share is burned); 0 honest peers slashed"
    );
}

/// The run's ledger, checked: it replays to the live accounts; a proven cheat is slashed and
/// whoever proved it (when not the coordinator) is paid its share; nobody else is slashed.
/// Returns whether a whistleblower was paid.
fn ledger_of(p: &ProtocolSim, seed: u64, bad: &Bad, who: u8) -> bool {
    let log: Vec<tessera_ledger::Record> =
        p.records.iter().flat_map(|r| r.ledger_records().to_vec()).collect();
    let live = p.coordinator().accounts().expect("the sim keeps a ledger");
    let replayed = tessera_ledger::verify(&p.ledger_key(), &log).expect("the log verifies");
    assert_eq!(replayed.accounts(), live, "seed {seed}, {bad:?}: the replay is the live accounts");
    let cheat = live.get(&pid(who)).map_or(0, |a| a.slashed);
    assert_eq!(cheat > 0, banned(p, who).is_some(), "seed {seed}, {bad:?}: slashed exactly when proven");
    for (peer, a) in live.iter().filter(|(peer, _)| **peer != pid(who)) {
        assert_eq!(a.slashed, 0, "seed {seed}, {bad:?}: honest {:?} slashed", &peer[..2]);
    }
    let mut paid = false;
    for e in log.iter().map(|r| &r.entry) {
        if let tessera_ledger::Entry::Slashed { peer, whistleblower: Some(w), share, .. } = e {
            assert_eq!(*peer, pid(who), "seed {seed}: only the cheat is slashed");
            assert!(*share > 0 && live.get(w).is_some_and(|a| a.bounties >= *share), "seed {seed}: paid");
            paid = true;
        }
    }
    paid
}

/// Seeds 1 to 3, and seed 39, whose honest trainers' updates came within cosine 0.992 of
/// earlier rounds' in a 60-round run and were once refused as replays (the regression test of
/// `REPLAY_COSINE`).
#[test]
fn four_seeds_of_cheat_drills() {
    drills("four", [1, 2, 3, 39]);
}

#[test]
#[ignore = "slow: 100 seeds × 10 runs; cargo test --release -p tessera-sim --test drills -- --ignored a_hundred"]
fn a_hundred_seeds_of_cheat_drills() {
    drills("hundred", 1..101);
}

/// The scores honest and cheating updates get (applied alone), over 10 seeds: the
/// measurement behind `harm_tolerance`. Prints the range of the held-out gain of honest,
/// random and poison updates, and the margin of the own-batch gain over the unseen-batch gain
/// of honest and wrong-data updates (training on the wrong data shows up as an own-data
/// improvement no better than on batches nobody trained on).
#[test]
#[ignore = "a measurement: cargo test --release -p tessera-sim --test drills -- --ignored --nocapture scores"]
fn scores_of_honest_and_cheating_updates() {
    let ds = common::dataset("drills", "scores");
    let (mut honest, mut random, mut poison) = (Vec::new(), Vec::new(), Vec::new());
    let (mut honest_margin, mut wrong_margin) = (Vec::new(), Vec::new());
    for seed in 1..11 {
        let start = RunSpec::new(cfg(seed)).unwrap().initial_state().theta;
        let target: Vec<f32> = start.iter().map(|x| x + 0.5).collect();
        let bads = [
            Bad::Send(Cheat::Random { seed }),
            Bad::Send(Cheat::Poison { target, peers: 4 }),
            Bad::Train(Shirk::WrongData),
        ];
        for bad in bads {
            // Every update scored, none left out, no spot checks (this measures; it does not
            // filter or catch).
            let scoring =
                RunConfig { score_batches: 2, harm_tolerance: f64::MAX, check_rate: 0.0, ..cfg(seed) };
            let p = run_with(&ds, scoring, Some((4, bad.clone())), 5);
            for e in &p.events {
                let Event::Scored { peer, score, .. } = e else { continue };
                let margin = score.own - score.unseen;
                match (*peer == pid(4), &bad) {
                    (true, Bad::Send(Cheat::Random { .. })) => random.push(score.held_out),
                    (true, Bad::Send(_)) => poison.push(score.held_out),
                    (true, _) => wrong_margin.push(margin),
                    (false, _) => {
                        honest.push(score.held_out);
                        honest_margin.push(margin);
                    }
                }
            }
        }
    }
    let range = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
        (v.len(), at(0.0), at(0.1), at(0.5), at(0.9), at(1.0))
    };
    eprintln!("(count, min, 10th percentile, median, 90th percentile, max)");
    eprintln!(
        "held-out gains: honest {:?}, random {:?}, poison {:?}",
        range(&honest),
        range(&random),
        range(&poison)
    );
    eprintln!(
        "own minus unseen gain: honest {:?}, wrong-data {:?}",
        range(&honest_margin),
        range(&wrong_margin)
    );
}

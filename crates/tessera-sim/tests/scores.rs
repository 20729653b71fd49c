//! Scoring by validators: the coordinator hands each accepted update's score to a validator
//! (`ScoreTask`, `ScoreReport`) and referees exactly, since scores are bit-reproducible: it
//! re-scores every update called harmful and a share (`decoy_rate`) of the others, and
//! refuses a validator whose score is not its own bit for bit.

mod common;

use common::pid;
use tessera_coord::{Behaviour, Event, Record, RunConfig, Validate};
use tessera_data::Dataset;
use tessera_sim::ProtocolSim;

const VALIDATOR: u8 = 9;

/// Three trainers, scoring on, spot checks off (so only the scores are at stake).
fn cfg(validate: Validate, audit: f64) -> RunConfig {
    let base = RunConfig {
        min_peers: 3,
        heartbeat_ms: 100,
        silence_ms: 1000,
        min_round_ms: 500,
        validate,
        check_rate: 0.0,
        decoy_rate: audit,
        score_batches: 2,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.inner_steps = 2;
        c.rounds = 3;
        c.batch = 2;
    })
}

/// Runs the config, with a validator of `behaviour` if any: the scores as (round, peer,
/// bits, by), and the sim.
fn run<'a>(ds: &'a Dataset, rc: RunConfig, behaviour: Option<Behaviour>) -> ProtocolSim<'a> {
    let mut p = ProtocolSim::new(rc.clone(), ds).unwrap();
    if let Some(b) = behaviour {
        p.join_validator(pid(VALIDATOR), b).unwrap();
    }
    for i in 1..=3 {
        p.join(pid(i)).unwrap();
    }
    p.run_until(rc.rounds).unwrap();
    p
}

type Scored = (u64, [u8; 32], [u64; 3], Option<[u8; 32]>);

fn scores(p: &ProtocolSim) -> Vec<Scored> {
    let of = |r: &Record| match r {
        Record::Scored { round, peer, score, by, .. } => Some((*round, *peer, score.to_bits(), *by)),
        _ => None,
    };
    let mut s: Vec<Scored> = p.records.iter().filter_map(of).collect();
    s.sort();
    s
}

fn banned(p: &ProtocolSim, who: u8) -> bool {
    p.events.iter().any(|e| matches!(e, Event::Banned { peer, .. } if *peer == pid(who)))
}

/// An honest validator scores every update, bit for bit as the coordinator would, audits
/// included, and the run reaches the same state as when the coordinator scores.
#[test]
fn a_validators_scores_are_the_coordinators_bit_for_bit() {
    let ds = common::dataset("scores", "honest");
    let own = run(&ds, cfg(Validate::Coordinator, 0.5), None);
    let by_v = run(&ds, cfg(Validate::Validators, 0.5), Some(Behaviour::Honest));
    let (a, b) = (scores(&own), scores(&by_v));
    assert_eq!(a.len(), 9, "three updates a round, three rounds: {a:?}");
    let bits = |s: &[Scored]| s.iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b), "the same scores, bit for bit");
    assert!(a.iter().all(|s| s.3.is_none()), "scored by the coordinator");
    let by_validator = b.iter().filter(|s| s.3 == Some(pid(VALIDATOR))).count();
    let audited = 9 - by_validator;
    assert!(by_validator >= 3 && audited >= 1, "{by_validator} stand as the validator's, {audited} audited");
    assert!(!banned(&by_v, VALIDATOR));
    assert_eq!(own.coordinator().state_hash(), by_v.coordinator().state_hash(), "scoring changes no state");
}

/// A validator that calls honest updates harmful is refuted by the coordinator's own score
/// and refused at its first report; a lazy one that makes its scores up is caught by an
/// audit. No honest update is left out either way.
#[test]
fn lying_and_lazy_scorers_are_refused_and_no_honest_update_is_left_out() {
    let ds = common::dataset("scores", "cheats");
    for (behaviour, audit) in [(Behaviour::Lying, 0.0), (Behaviour::Lazy, 1.0)] {
        let p = run(&ds, cfg(Validate::Validators, audit), Some(behaviour));
        assert!(banned(&p, VALIDATOR), "{behaviour:?} is refused");
        let s = scores(&p);
        assert_eq!(s.len(), 9, "{behaviour:?}: every update scored");
        assert!(s.iter().all(|x| x.3.is_none()), "{behaviour:?}: no score of it stands: {s:?}");
        for i in 1..=3 {
            assert!(p.refused(&pid(i)).is_empty(), "{behaviour:?}: honest trainer {i} is not refused");
        }
    }
}

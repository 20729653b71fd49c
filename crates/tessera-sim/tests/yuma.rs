//! Several validators in the run: every validator scores every accepted update and signs its
//! scores, the coordinator writes them into the ledger as `Weights`, and the ledger pays the
//! round by Yuma consensus. A colluding validator (its friend's updates top marks, the rest
//! nothing) cannot raise its friend's reward beyond the honest validators' spread, and earns
//! less than they do.

mod common;

use common::pid;
use tessera_coord::{Behaviour, RunConfig, SigningKey, Validate};
use tessera_data::Dataset;
use tessera_ledger::yuma::{weights, PPB};
use tessera_ledger::{verify, Accounts, Entry};
use tessera_sim::ProtocolSim;

const FRIEND: u8 = 3;

fn cfg() -> RunConfig {
    let base = RunConfig {
        min_peers: 3,
        heartbeat_ms: 100,
        silence_ms: 1000,
        min_round_ms: 500,
        validate: Validate::Validators,
        check_rate: 0.0,
        decoy_rate: 0.0,
        score_batches: 2,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.inner_steps = 2;
        c.rounds = 3;
        c.batch = 2;
    })
}

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn entries(p: &ProtocolSim) -> Vec<Entry> {
    let records = p.records.iter().map(|r| r.ledger_records().to_vec());
    let log: Vec<_> = records.flatten().collect();
    let replayed = verify(&p.ledger_key(), &log).unwrap();
    assert_eq!(replayed.accounts(), p.coordinator().accounts().unwrap(), "the replay is the live accounts");
    log.into_iter().map(|r| r.entry).collect()
}

/// Three trainers and three signing validators; the third colludes with trainer `FRIEND`
/// when `collude`. Returns the accounts, the validators' ids, and the friend's honest spread:
/// summed over rounds, the least and most the honest validators' weights alone pay it.
fn run(ds: &Dataset, collude: bool) -> (Accounts, Vec<[u8; 32]>, (u64, u64)) {
    let rc = cfg();
    let mut p = ProtocolSim::new(rc.clone(), ds).unwrap();
    let third = if collude { Behaviour::Colluding(pid(FRIEND)) } else { Behaviour::Honest };
    let behaviours = [Behaviour::Honest, Behaviour::Honest, third];
    let ids: Vec<[u8; 32]> = behaviours
        .iter()
        .enumerate()
        .map(|(i, b)| p.join_signing_validator(key(20 + i as u8), *b).unwrap())
        .collect();
    for i in 1..=3 {
        p.join(pid(i)).unwrap();
    }
    p.run_until(rc.rounds).unwrap();
    let log = entries(&p);
    let mut spread = (0, 0);
    let mut weighed = 0;
    for round in 0..rc.rounds {
        let rows: Vec<(&[u8; 32], Vec<i64>)> = log
            .iter()
            .filter_map(|e| match e {
                Entry::Weights { round: r, validator, scores } if *r == round => {
                    Some((validator, scores.iter().map(|s| s.score).collect()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 3, "round {round}: every validator's weights are written");
        weighed += rows.iter().filter(|r| r.1.len() == 3).count();
        let friend_share =
            |row: &[i64]| rc.stakes.reward_per_round * weights(row)[usize::from(FRIEND) - 1] / PPB;
        let honest: Vec<u64> = rows.iter().filter(|r| *r.0 != ids[2]).map(|r| friend_share(&r.1)).collect();
        spread.0 += honest.iter().min().unwrap();
        spread.1 += honest.iter().max().unwrap();
    }
    assert_eq!(weighed, 3 * rc.rounds as usize, "each scored all three updates");
    (p.coordinator().accounts().unwrap().clone(), ids, spread)
}

#[test]
fn three_validators_pay_by_consensus_and_a_colluder_cannot_raise_its_friend() {
    let ds = common::dataset("yuma", "three");
    let (honest, ids, _) = run(&ds, false);
    let (with, ids2, (lo, hi)) = run(&ds, true);
    assert_eq!(ids, ids2);
    let reward = |a: &Accounts, p: &[u8; 32]| a.get(p).unwrap().rewards;
    let friend = reward(&with, &pid(FRIEND));
    assert!((lo..=hi).contains(&friend), "the friend's {friend} within the honest spread [{lo}, {hi}]");
    assert!(friend <= reward(&honest, &pid(FRIEND)), "and no more than with an honest third validator");
    let (colluder, honest_ones) = (reward(&with, &ids[2]), [reward(&with, &ids[0]), reward(&with, &ids[1])]);
    assert!(
        honest_ones.iter().all(|h| colluder < *h),
        "the colluder earns least: {colluder} vs {honest_ones:?}"
    );
    assert!(colluder < reward(&honest, &ids[2]), "and less than an honest third validator");
    // Honest validators agree bit for bit, so with three honest ones nothing is clipped.
    let validators: u64 = ids.iter().map(|v| reward(&honest, v)).sum();
    assert_eq!(validators, cfg().rounds * cfg().stakes.validator_budget, "the validators' budget, exactly");
    assert!(with.unpaid > honest.unpaid, "the colluder's clipped weights leave budget unpaid");
    eprintln!(
        "friend: {} with three honest validators, {friend} with the colluder (spread [{lo}, {hi}]); \
         third validator earns {} honest, {colluder} colluding; unpaid {} vs {}",
        reward(&honest, &pid(FRIEND)),
        reward(&honest, &ids[2]),
        honest.unpaid,
        with.unpaid
    );
}

/// The second and later scorers are refereed too. With every update drawn for an audit, a
/// colluding validator that is never the first asked in round 0 (two updates, three
/// validators, asked in key order, the colluder last) is caught by its scores as one of
/// several, refused and slashed in round 0, and its weights never reach the ledger; no honest
/// validator is refused.
#[test]
fn a_colluder_scoring_as_one_of_several_is_refereed_and_refused() {
    let ds = common::dataset("yuma", "refereed");
    let rc = RunConfig { decoy_rate: 1.0, min_peers: 2, ..cfg() };
    let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
    let mut keys: Vec<SigningKey> = (20..23).map(key).collect();
    keys.sort_by_key(|k| k.verifying_key().to_bytes());
    let colluder = keys[2].verifying_key().to_bytes();
    for (i, k) in keys.into_iter().enumerate() {
        let b = if i == 2 { Behaviour::Colluding(pid(1)) } else { Behaviour::Honest };
        p.join_signing_validator(k, b).unwrap();
    }
    for i in 1..=2 {
        p.join(pid(i)).unwrap();
    }
    p.run_until(rc.rounds).unwrap();
    let log = entries(&p);
    let slashed: Vec<_> = log
        .iter()
        .filter_map(|e| match e {
            Entry::Verdict { round, peer, cheat: true, .. } => Some((*round, *peer)),
            _ => None,
        })
        .collect();
    assert_eq!(slashed, vec![(0, colluder)], "the colluder, in round 0, and nobody else");
    let why = p.records.iter().find_map(|r| match r {
        tessera_coord::Record::Verdict { peer, outcome, .. } if *peer == colluder => {
            Some(format!("{outcome:?}"))
        }
        _ => None,
    });
    assert!(why.as_deref().is_some_and(|w| w.contains("as one of several")), "{why:?}");
    let weighed = log.iter().any(|e| matches!(e, Entry::Weights { validator, .. } if *validator == colluder));
    assert!(!weighed, "its weights never reach the ledger");
    assert!(p.coordinator().accounts().unwrap().get(&colluder).unwrap().slashed > 0);
}

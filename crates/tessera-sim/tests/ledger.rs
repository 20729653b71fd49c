//! The coordinator keeps the run's ledger: every join locks a stake, every closed round pays
//! its budget over the accepted updates, every proven cheat is slashed and its whistleblower
//! paid, and replaying the persisted records gives the coordinator's accounts bit for bit.

mod common;

use common::pid;
use tessera_coord::{Behaviour, Event, Message, Output, Record, RunConfig, Shirk, Signed};
use tessera_data::Dataset;
use tessera_ledger::{verify, Accounts};
use tessera_sim::ProtocolSim;

const VALIDATOR: u8 = 9;

fn cfg() -> RunConfig {
    let base = RunConfig {
        min_peers: 3,
        heartbeat_ms: 100,
        silence_ms: 1000,
        min_round_ms: 500,
        check_rate: 1.0,
        decoy_rate: 0.0,
        commit_every: 1,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.inner_steps = 2;
        c.rounds = 6;
        c.batch = 2;
    })
}

/// The records the coordinator persisted to its ledger, in order.
fn log(p: &ProtocolSim) -> Vec<tessera_ledger::Record> {
    p.records
        .iter()
        .filter_map(|r| if let Record::Ledger(l) = r { Some(l.clone()) } else { None })
        .flatten()
        .collect()
}

/// The ledger replayed from the persisted records: the coordinator's key is the genesis
/// record's signer, which `verify` checks against every record.
fn replay(p: &ProtocolSim, coordinator: &[u8; 32]) -> Accounts {
    verify(coordinator, &log(p)).unwrap().accounts().clone()
}

fn run<'a>(ds: &'a Dataset, validator: Behaviour, shirker: Option<u8>) -> ProtocolSim<'a> {
    let mut p = ProtocolSim::new(cfg(), ds).unwrap();
    p.join_validator(pid(VALIDATOR), validator).unwrap();
    for i in 1..=3 {
        p.join(pid(i)).unwrap();
    }
    if let Some(s) = shirker {
        p.shirk(&pid(s), Shirk::SkipSteps);
    }
    p.run_until(cfg().rounds).unwrap();
    p
}

#[test]
fn the_ledger_pays_honest_work_and_slashes_a_proven_cheat() {
    let ds = common::dataset("ledger", "skipper");
    let p = run(&ds, Behaviour::Honest, Some(1));
    let refused: Vec<&Event> = p.events.iter().filter(|e| matches!(e, Event::LedgerRefused { .. })).collect();
    assert!(refused.is_empty(), "{refused:?}");
    let live = p.coordinator().accounts().unwrap().clone();
    let coordinator = p.ledger_key();
    assert_eq!(replay(&p, &coordinator), live, "the replay gives the coordinator's accounts");
    let a = |i: u8| live.get(&pid(i)).unwrap().clone();
    let rules = cfg().stakes;
    assert!(a(1).slashed > 0, "the shirker is slashed");
    assert!(a(VALIDATOR).bounties > 0, "the validator that proved it is paid");
    assert!(a(VALIDATOR).fees > 0, "and earns its check fees");
    for honest in [2, 3] {
        assert_eq!(a(honest).slashed, 0, "honest trainer {honest} is never slashed");
        assert!(a(honest).rewards > a(1).rewards, "honest work earns more than the shirker's");
    }
    let paid: u64 = live.iter().map(|(_, a)| a.rewards).sum();
    assert_eq!(paid, live.rounds * rules.reward_per_round, "every round's budget, exactly");
    // Every Accept names the ledger's head after its round's entries.
    let heads: Vec<(u64, [u8; 32])> = p
        .records
        .iter()
        .filter_map(|r| match r {
            Record::RoundClosed { accept: Message::Accept { ledger, .. }, .. } => *ledger,
            _ => None,
        })
        .collect();
    assert_eq!(heads.len() as u64, cfg().rounds);
    let chain = log(&p);
    for (n, h) in heads {
        assert_eq!(chain[n as usize - 1].hash(), h, "the head an Accept names is in the chain");
    }
}

#[test]
fn a_lying_validator_is_slashed_and_the_trainer_it_accused_is_paid() {
    let ds = common::dataset("ledger", "liar");
    let p = run(&ds, Behaviour::Lying, None);
    let live = p.coordinator().accounts().unwrap().clone();
    assert_eq!(replay(&p, &p.ledger_key()), live);
    let v = live.get(&pid(VALIDATOR)).unwrap();
    assert!(v.slashed > 0, "the liar is slashed");
    let bounties: u64 = (1..=3).map(|i| live.get(&pid(i)).unwrap().bounties).sum();
    assert!(bounties > 0, "the trainer that won the dispute is paid the whistleblower's share");
    assert!((1..=3).all(|i| live.get(&pid(i)).unwrap().slashed == 0), "no honest trainer is slashed");
}

/// A join below the run's minimum stake is refused with a typed reason, and the ledger holds
/// no account of it.
#[test]
fn a_join_without_the_stake_is_refused() {
    let ds = common::dataset("ledger", "stake");
    let mut p = ProtocolSim::new(cfg(), &ds).unwrap();
    let outs = p.deliver_to_coordinator(Signed {
        sender: pid(7),
        seq: 1,
        message: Message::Join { addrs: vec![], stake: cfg().stakes.min_stake - 1 },
    });
    let refused = outs.iter().any(|o| {
        matches!(o, Output::Event(Event::Rejected { reason: tessera_coord::Reject::Stake { .. }, .. }))
    });
    assert!(refused, "{outs:?}");
    assert!(p.coordinator().accounts().unwrap().get(&pid(7)).is_none());
    assert_eq!(p.coordinator().members().count(), 0);
}

/// Every trainer fetches the ledger as the `Accept`s announce it and checks it: its copy
/// ends at the coordinator's head, with the same accounts.
#[test]
fn every_trainer_keeps_a_verified_copy_of_the_ledger() {
    let ds = common::dataset("ledger", "copies");
    let p = run(&ds, Behaviour::Honest, None);
    let live = p.coordinator().accounts().unwrap().clone();
    let n = log(&p).len() as u64;
    for i in 1..=3 {
        let copy = p.peer_ledger(&pid(i)).unwrap();
        // The last round's Accept names the head after its RoundClosed and rewards.
        assert!(copy.head().0 >= n - 4, "trainer {i} holds {} of {n} records", copy.head().0);
        let full = verify(&p.ledger_key(), &log(&p)[..copy.head().0 as usize]).unwrap();
        assert_eq!(copy.accounts(), full.accounts(), "trainer {i}'s copy is the coordinator's prefix");
    }
    assert_eq!(replay(&p, &p.ledger_key()), live);
}

/// A coordinator that serves a record it did not sign as it chained the others (here: the
/// next record, with another's signature) is caught: the trainer stops trusting it and says
/// why.
#[test]
fn a_trainer_catches_a_rewritten_ledger_record() {
    let ds = common::dataset("ledger", "fork");
    let mut p = run(&ds, Behaviour::Honest, None);
    let log = log(&p);
    let (have, head) = p.peer_ledger(&pid(2)).unwrap().head();
    let forged = tessera_ledger::Record {
        seq: have,
        prev: head,
        entry: tessera_ledger::Entry::Left { peer: pid(1) },
        sig: log.last().unwrap().sig.clone(),
    };
    let lie = Message::LedgerRecords { from: have, records: vec![forged.encode()] };
    let why = p.deliver_to_peer(pid(2), lie).unwrap_err().to_string();
    assert!(why.contains("ledger") && why.contains("no longer trusts") && why.contains("signature"), "{why}");
    assert_eq!(p.peer_ledger(&pid(2)).unwrap().head(), (have, head), "its copy is kept as it was");
}

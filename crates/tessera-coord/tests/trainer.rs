//! The trainer's state machine under scripted frames, blobs and training results: what it
//! refuses, what it fetches, when it trains, and what it reports.

mod common;

use std::sync::Arc;

use tessera_coord::*;
use tessera_data::Dataset;
use tessera_sync::{encode_update, Algorithm};

const COORD: PeerId = [0xC0; 32];
const ME: PeerId = [1; 32];

fn dataset() -> Dataset {
    common::dataset("trainer")
}

fn cfg() -> RunConfig {
    RunConfig { heartbeat_ms: 100, silence_ms: 1000, ..RunConfig::default() }.with(|c| {
        c.inner_steps = 2;
        c.rounds = 2;
        c.batch = 2;
    })
}

/// A trainer plus the coordinator's sequence counter.
struct H {
    t: Trainer,
    seq: u64,
    spec: Arc<RunSpec>,
}

impl H {
    fn new(fault_round: Option<u64>) -> Self {
        Self::with(fault_round, false)
    }

    fn with(fault_round: Option<u64>, keep_blobs: bool) -> Self {
        let ds = dataset();
        let tc = TrainerConfig {
            stake: tessera_coord::DEFAULT_STAKE,
            me: ME,
            coordinator: COORD,
            dataset: ds.manifest_hash(),
            fault_round,
            addr: None,
            key: None,
            keep_blobs,
        };
        H { t: Trainer::new(tc), seq: 0, spec: Arc::new(RunSpec::new(cfg()).unwrap()) }
    }

    fn frame(&mut self, m: Message) -> Vec<Action> {
        self.seq += 1;
        self.t.handle(0, Signed { sender: COORD, seq: self.seq, message: m })
    }

    fn welcome(&mut self, config: String) -> Vec<Action> {
        let s0 = self.spec.initial_state().hash();
        self.frame(Message::Welcome { round: 0, checkpoint: s0, state_hash: s0, config, peers: vec![] })
    }

    /// Welcomed and holding the initial state.
    fn synced(fault_round: Option<u64>) -> Self {
        let mut h = H::new(fault_round);
        h.welcome(cfg().to_toml());
        let g = h.spec.initial_state();
        h.t.fetched(0, g.hash(), Ok(g.encode()));
        assert_eq!(h.t.state(), Some((0, g.hash())));
        h
    }
}

fn warnings(a: &[Action]) -> Vec<TrainerError> {
    a.iter()
        .filter_map(|a| match a {
            Action::Event(TrainerEvent::Warning(e) | TrainerEvent::Fatal(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The fetches asked for, as (the first source, hash, length).
fn fetches(a: &[Action]) -> Vec<(PeerId, Hash32, u64)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Fetch { sources, hash, len, .. } => Some((sources[0].peer, *hash, *len)),
            _ => None,
        })
        .collect()
}

/// The `StateReport`s sent, as (round, state hash, computed).
fn reports(a: &[Action]) -> Vec<(u64, Hash32, bool)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Send(Message::StateReport { round, state_hash, computed }) => {
                Some((*round, *state_hash, *computed))
            }
            _ => None,
        })
        .collect()
}

fn reported(a: &[Action]) -> Vec<(u64, bool, bool)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Event(TrainerEvent::Reported { round, agrees, computed, .. }) => {
                Some((*round, *agrees, *computed))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn frames_from_strangers_replays_and_early_messages_are_refused() {
    let mut h = H::new(None);
    let hb = Message::Heartbeat { round: 0, step: 0 };
    let out = h.t.handle(0, Signed { sender: [9; 32], seq: 1, message: hb.clone() });
    assert_eq!(warnings(&out), [TrainerError::NotCoordinator]);
    let done = Message::Done { round: 0, state_hash: [0; 32] };
    assert_eq!(warnings(&h.frame(done)), [TrainerError::NotConfigured("Done")]);
    let out = h.t.handle(0, Signed { sender: COORD, seq: 1, message: hb.clone() });
    assert!(matches!(&warnings(&out)[..], [TrainerError::Replay(Reject::Replay { seq: 1, .. })]));
    h.welcome(cfg().to_toml());
    assert_eq!(warnings(&h.frame(hb)), [TrainerError::Unexpected("Heartbeat")]);
}

#[test]
fn a_welcome_configures_once_and_fetches_the_checkpoint_by_hash() {
    let mut h = H::new(None);
    assert_eq!(h.t.phase(), Phase::Joining, "no welcome yet");
    let out = h.welcome(cfg().to_toml());
    assert!(matches!(out[0], Action::Event(TrainerEvent::Configured(_))));
    assert_eq!(h.t.phase(), Phase::Syncing { round: 0 }, "fetching the checkpoint");
    let g = h.spec.initial_state();
    assert_eq!(fetches(&out), [(COORD, g.hash(), h.spec.state_len as u64)]);
    // A blob that does not hash to the announced state is refused; the state stays unheld.
    let out = h.t.fetched(0, g.hash(), Ok(vec![0; h.spec.state_len]));
    assert!(matches!(&warnings(&out)[..], [TrainerError::Checkpoint(_)]));
    assert_eq!(h.t.state(), None);
    // Another config mid-run, or another dataset, ends the run for this trainer.
    let out = h.welcome(
        cfg()
            .with(|c| {
                c.rounds = 9;
            })
            .to_toml(),
    );
    assert!(matches!(&out[..], [Action::Event(TrainerEvent::Fatal(TrainerError::ConfigChanged))]));
    let mut other = H::new(None);
    let out = other.welcome(RunConfig { dataset: "ab".repeat(32), ..cfg() }.to_toml());
    assert!(matches!(&warnings(&out)[..], [TrainerError::WrongDataset { .. }]));
}

#[test]
fn an_assigned_unit_is_trained_served_then_committed() {
    let ds = dataset();
    let mut h = H::synced(None);
    let g = h.spec.initial_state();
    let unit = Assignment { peer: ME, data_round: 0, slot: 0 };
    let other = Assignment { peer: [2; 32], data_round: 0, slot: 1 };
    let start = Message::RoundStart {
        round: 0,
        state_hash: g.hash(),
        seed: 1,
        members: vec![ME, [2; 32]],
        addrs: vec![String::new(), String::new()],
        assignments: vec![unit, other],
        deadline_ms: 1000,
        replicas: vec![],
    };
    assert_eq!(h.t.phase(), Phase::Waiting { round: Some(0) });
    let out = h.frame(start.clone());
    assert_eq!(h.t.phase(), Phase::Training { round: 0 });
    let Some(Action::Train { state, state_hash, unit: u }) = out.first().cloned() else { panic!("{out:?}") };
    assert_eq!((state_hash, u), (g.hash(), unit));
    assert!(h.frame(start).is_empty(), "a re-announced round being trained is not trained twice");
    let t = Worker::new(h.spec.clone()).train(&state, &state_hash, &u, &ds, &mut |_| {}).unwrap();
    let out = h.t.trained(0, 0, Ok(t.clone()));
    assert!(
        matches!(&out[0], Action::Serve { hash, .. } if *hash == t.update_hash),
        "served before announced"
    );
    assert!(matches!(&out[1], Action::Send(m) if *m == t.commit()));
    assert_eq!(h.t.phase(), Phase::Waiting { round: Some(0) }, "committed: waiting for the close");
    // Heartbeats once configured, at the configured interval.
    assert!(matches!(&h.t.tick(1000, 2)[..], [Action::Send(Message::Heartbeat { round: 0, step: 2 })]));
    assert!(h.t.tick(1050, 2).is_empty());
}

/// Round 0 closed by a hub with a small aggregate: the blob, its hash, the state it leads to,
/// and the `Accept` announcing it.
fn round_zero_accept(h: &H) -> (Vec<u8>, Hash32, GlobalState, Message) {
    let spec = &h.spec;
    let agg =
        encode_update(Algorithm::DiLoCo, spec.outer.s.codec, spec.layout_hash, 0, &vec![1e-3; spec.n()]);
    let agg_hash = *blake3::hash(&agg).as_bytes();
    let mut next = spec.initial_state();
    next.apply(&spec.outer, Some(&spec.outer.decode_aggregate(0, &agg).unwrap())).unwrap();
    let accept = Message::Accept {
        round: 0,
        accepted: vec![ME],
        updates: vec![[7; 32]],
        rejected: vec![],
        aggregate: Some(agg_hash),
        next_state_hash: next.hash(),
        pairs: None,
        ledger: None,
    };
    (agg, agg_hash, next, accept)
}

#[test]
fn accept_closes_the_round_with_the_aggregate_and_reports_it_computed() {
    let mut h = H::synced(None);
    let (agg, agg_hash, next, accept) = round_zero_accept(&h);
    let out = h.frame(accept);
    assert_eq!(fetches(&out), [(COORD, agg_hash, h.spec.update_len)]);
    assert_eq!(h.t.phase(), Phase::Closing { round: 0 }, "fetching the aggregate");
    let out = h.t.fetched(0, agg_hash, Ok(agg));
    assert_eq!(h.t.phase(), Phase::Waiting { round: Some(1) });
    assert_eq!(reported(&out), [(1, true, true)]);
    assert_eq!(reports(&out), [(1, next.hash(), true)]);
    assert_eq!(h.t.state(), Some((1, next.hash())));
    // Done in the state it holds: finished, computed.
    let out = h.frame(Message::Done { round: 1, state_hash: next.hash() });
    assert!(matches!(&out[..], [Action::Event(TrainerEvent::Finished { round: 1, computed: true, .. })]));
    assert_eq!(h.t.phase(), Phase::Done);
}

#[test]
fn a_missing_aggregate_means_adopting_the_checkpoint_and_saying_so() {
    let mut h = H::synced(None);
    let g = h.spec.initial_state();
    let mut next = g.clone();
    next.apply(&h.spec.outer, None).unwrap();
    let accept = Message::Accept {
        round: 0,
        accepted: vec![ME],
        updates: vec![[7; 32]],
        rejected: vec![],
        aggregate: Some([5; 32]),
        next_state_hash: next.hash(),
        pairs: None,
        ledger: None,
    };
    h.frame(accept);
    let out = h.t.fetched(0, [5; 32], Err("gone".into()));
    assert!(matches!(&warnings(&out)[..], [TrainerError::Fetch { .. }]));
    assert_eq!(fetches(&out), [(COORD, next.hash(), h.spec.state_len as u64)]);
    let out = h.t.fetched(0, next.hash(), Ok(next.encode()));
    assert_eq!(reported(&out), [(1, true, false)], "adopted, not computed");
    assert!(!reports(&out)[0].2);
}

#[test]
fn the_fault_drill_reports_a_different_state_then_resyncs() {
    let mut h = H::synced(Some(0));
    let g = h.spec.initial_state();
    let mut next = g.clone();
    next.apply(&h.spec.outer, None).unwrap();
    let accept = Message::Accept {
        round: 0,
        accepted: vec![],
        updates: vec![],
        rejected: vec![],
        aggregate: None,
        next_state_hash: next.hash(),
        pairs: None,
        ledger: None,
    };
    let out = h.frame(accept);
    assert!(out.iter().any(|a| matches!(a, Action::Event(TrainerEvent::FaultInjected { round: 0 }))));
    assert_eq!(reported(&out), [(1, false, true)]);
    assert_ne!(reports(&out)[0].1, next.hash());
    assert_eq!(fetches(&out), [(COORD, next.hash(), h.spec.state_len as u64)], "takes the checkpoint");
    h.t.fetched(0, next.hash(), Ok(next.encode()));
    assert_eq!(h.t.state(), Some((1, next.hash())));
}

/// Regression: over the network the next `RoundStart` can arrive before the aggregate blob.
/// The trainer fetched the announced state instead, trained on it, and then panicked closing
/// a round it no longer held. It must wait for its own close and compute the state.
#[test]
fn a_round_start_that_overtakes_the_aggregate_waits_for_the_close() {
    let mut h = H::synced(None);
    let (agg, agg_hash, next, accept) = round_zero_accept(&h);
    h.frame(accept);
    let unit = Assignment { peer: ME, data_round: 1, slot: 0 };
    let start = Message::RoundStart {
        round: 1,
        state_hash: next.hash(),
        seed: 1,
        members: vec![ME],
        addrs: vec![String::new()],
        assignments: vec![unit],
        deadline_ms: 1000,
        replicas: vec![],
    };
    let out = h.frame(start);
    assert!(out.is_empty(), "no checkpoint fetch, no training yet: {out:?}");
    let out = h.t.fetched(0, agg_hash, Ok(agg));
    assert_eq!(reported(&out), [(1, true, true)]);
    assert!(matches!(out.last(), Some(Action::Train { state_hash, .. }) if *state_hash == next.hash()));
    assert!(fetches(&out).is_empty());
}

/// Peer-to-peer blobs: the trainer learns where members serve blobs, fetches a state in parts
/// from them (the coordinator last), and an all-gathered update from its author first.
#[test]
fn blobs_are_fetched_from_members_with_the_coordinator_last() {
    let mut h = H::new(None);
    let s0 = h.spec.initial_state().hash();
    let peers =
        vec![([2; 32], "127.0.0.1:2".to_string()), ([3; 32], "127.0.0.1:3".to_string()), (ME, "me".into())];
    let out = h.frame(Message::Welcome {
        round: 0,
        checkpoint: s0,
        state_hash: s0,
        config: cfg().to_toml(),
        peers,
    });
    let Some(Action::Fetch { sources, split, .. }) = out.iter().find(|a| matches!(a, Action::Fetch { .. }))
    else {
        panic!("{out:?}")
    };
    let order: Vec<PeerId> = sources.iter().map(|s| s.peer).collect();
    assert_eq!(order, [[2; 32], [3; 32], COORD], "members first, never itself, the coordinator last");
    assert!(sources.last().is_some_and(|s| s.addr.is_none()) && *split, "split over the holders");
    // A later member list replaces the earlier one: a member that left is not tried again.
    let start = Message::RoundStart {
        round: 0,
        state_hash: s0,
        seed: 1,
        members: vec![ME, [3; 32]],
        addrs: vec!["me".into(), "127.0.0.1:3".into()],
        assignments: vec![Assignment { peer: ME, data_round: 0, slot: 0 }],
        deadline_ms: 1000,
        replicas: vec![],
    };
    h.frame(start);
    let out = h.t.fetched(0, s0, Err("gone".into()));
    assert!(matches!(&warnings(&out)[..], [TrainerError::Fetch { .. }]));
    let next = Message::CheckpointPointer { round: 0, checkpoint: s0, state_hash: s0 };
    let out = h.frame(next);
    let Some(Action::Fetch { sources, .. }) = out.iter().find(|a| matches!(a, Action::Fetch { .. })) else {
        panic!("{out:?}")
    };
    assert_eq!(sources.iter().map(|s| s.peer).collect::<Vec<_>>(), [[3; 32], COORD]);
    // SparseLoCo: each accepted update comes from its author first.
    let mut sl = H::new(None);
    sl.spec = Arc::new(
        RunSpec::new(cfg().with(|c| {
            c.algo = Algorithm::SparseLoCo;
        }))
        .unwrap(),
    );
    let g = sl.spec.initial_state();
    let config = cfg()
        .with(|c| {
            c.algo = Algorithm::SparseLoCo;
        })
        .to_toml();
    let peers = vec![([2; 32], "127.0.0.1:2".to_string())];
    sl.frame(Message::Welcome { round: 0, checkpoint: g.hash(), state_hash: g.hash(), config, peers });
    sl.t.fetched(0, g.hash(), Ok(g.encode()));
    let accept = Message::Accept {
        round: 0,
        accepted: vec![[2; 32]],
        updates: vec![[8; 32]],
        rejected: vec![],
        aggregate: None,
        next_state_hash: [0; 32],
        pairs: None,
        ledger: None,
    };
    let out = sl.frame(accept);
    let f: Vec<(Vec<PeerId>, Hash32, bool)> = out
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { sources, hash, split, .. } => {
                Some((sources.iter().map(|s| s.peer).collect(), *hash, *split))
            }
            _ => None,
        })
        .collect();
    assert_eq!(f, [(vec![[2; 32], COORD], [8; 32], false)]);
}

/// Regression (found by `tessera vopr`, seeds 185 and 243): frames travel on separate streams,
/// so an older round's `Accept` can arrive after a newer one; its smaller ledger head was taken
/// for the ledger going back, and the trainer stopped. An older round's head is now ignored; a
/// newer (or the same) round's smaller head still is proof.
#[test]
fn an_overtaken_accept_does_not_prove_the_ledger_went_back() {
    let mut h = H::synced(None);
    let (_, _, _, accept) = round_zero_accept(&h);
    let with = |round: u64, n: u64| match accept.clone() {
        Message::Accept { accepted, updates, rejected, aggregate, next_state_hash, pairs, .. } => {
            Message::Accept {
                round,
                accepted,
                updates,
                rejected,
                aggregate,
                next_state_hash,
                pairs,
                ledger: Some((n, [n as u8; 32])),
            }
        }
        _ => unreachable!("an Accept"),
    };
    let fatal = |a: &[Action]| a.iter().any(|x| matches!(x, Action::Event(TrainerEvent::Fatal(_))));
    assert!(!fatal(&h.frame(with(1, 9))), "round 1 names 9 records");
    assert!(!fatal(&h.frame(with(0, 5))), "round 0's Accept, overtaken, names 5: not a proof");
    let out = h.frame(with(1, 4));
    assert!(fatal(&out), "the same round naming fewer records is: {out:?}");
}

fn joins(a: &[Action]) -> usize {
    a.iter().filter(|a| matches!(a, Action::Send(Message::Join { .. }))).count()
}

/// Regression (issue: hostile peers): a node sent `Join` once per connection and then waited
/// for `Welcome` for ever (a coordinator drops frames it has no room for). It sends `Join`
/// again every `JOIN_RETRY_MS`, gives up with a typed, fatal `NoWelcome` after
/// `MAX_JOIN_ATTEMPTS`, and stops asking once welcomed.
#[test]
fn a_trainer_asks_again_for_a_welcome_and_gives_up_in_bounded_time() {
    use tessera_coord::{JOIN_RETRY_MS, MAX_JOIN_ATTEMPTS};
    let mut h = H::new(None);
    assert_eq!(joins(&h.t.connected(0)), 1);
    assert_eq!(joins(&h.t.tick(JOIN_RETRY_MS - 1, 0)), 0, "not yet");
    assert_eq!(joins(&h.t.tick(JOIN_RETRY_MS, 0)), 1, "again");
    let mut fatal = None;
    let mut sent = 2;
    for i in 2..=MAX_JOIN_ATTEMPTS as u64 + 1 {
        let acts = h.t.tick(i * JOIN_RETRY_MS, 0);
        sent += joins(&acts);
        fatal = fatal.or(acts.iter().find_map(|a| match a {
            Action::Event(TrainerEvent::Fatal(e)) => Some(e.clone()),
            _ => None,
        }));
    }
    assert_eq!(sent, MAX_JOIN_ATTEMPTS as usize);
    match fatal {
        Some(e @ TrainerError::NoWelcome { .. }) => {
            assert!(e.is_fatal() && e.to_string().contains("no Welcome"))
        }
        other => panic!("expected NoWelcome, got {other:?}"),
    }
    // Welcomed at once: no second Join.
    let mut w = H::new(None);
    w.t.connected(0);
    w.welcome(cfg().to_toml());
    assert_eq!(joins(&w.t.tick(10 * JOIN_RETRY_MS, 0)), 0);
}

/// A keeping trainer (`--keep-updates`) keeps the config it was welcomed with, fetches a hub
/// round's accepted updates besides its aggregate, keeps each as it arrives, and does not
/// finish while one is still being fetched (a node that exited at `Done` lost the last
/// round's updates: the copy's audit recomputed 4 of 5 rounds).
#[test]
fn a_keeping_trainer_keeps_the_config_and_updates_and_finishes_after_them() {
    let mut h = H::with(None, true);
    let text = cfg().to_toml();
    let out = h.welcome(text.clone());
    let kept = |a: &[Action]| -> Vec<Hash32> {
        a.iter()
            .filter_map(|a| if let Action::KeepBlob { hash, .. } = a { Some(*hash) } else { None })
            .collect()
    };
    assert_eq!(kept(&out), [*blake3::hash(text.as_bytes()).as_bytes()], "the config, by its hash");
    let g = h.spec.initial_state();
    h.t.fetched(0, g.hash(), Ok(g.encode()));
    let (u1, u2) = (vec![1u8; 8], vec![2u8; 8]);
    let (h1, h2) = (*blake3::hash(&u1).as_bytes(), *blake3::hash(&u2).as_bytes());
    let accept = Message::Accept {
        round: 0,
        accepted: vec![[5; 32], [6; 32]],
        updates: vec![h1, h2],
        rejected: vec![],
        aggregate: Some([9; 32]),
        next_state_hash: [8; 32],
        pairs: None,
        ledger: None,
    };
    let out = h.frame(accept);
    let asked: Vec<Hash32> = fetches(&out).into_iter().map(|f| f.1).collect();
    assert_eq!(asked, [h1, h2, [9; 32]], "each update to keep, and the aggregate");
    // The run ends where the trainer already is, with two updates still being fetched.
    let out = h.frame(Message::Done { round: 0, state_hash: g.hash() });
    let finished = |a: &[Action]| a.iter().any(|a| matches!(a, Action::Event(TrainerEvent::Finished { .. })));
    assert!(!finished(&out), "it waits for the blobs it keeps");
    let out = h.t.fetched(0, h1, Ok(u1));
    assert_eq!(kept(&out), [h1]);
    assert!(!finished(&out), "one is still on its way");
    // The other fails: it is fetched again a second later, three times in all, then given up.
    let mut now = 0;
    for _ in 1..MAX_KEEP_TRIES {
        let out = h.t.fetched(now, h2, Err("gone".into()));
        assert!(warnings(&out).is_empty() && !finished(&out), "{out:?}");
        now += KEEP_RETRY_MS;
        let again = fetches(&h.t.tick(now, 0)).into_iter().map(|f| f.1).collect::<Vec<_>>();
        assert_eq!(again, [h2], "tried again");
    }
    let out = h.t.fetched(now, h2, Err("gone".into()));
    assert!(matches!(&warnings(&out)[..], [TrainerError::Fetch { what: "a blob to keep", .. }]), "{out:?}");
    assert!(finished(&out), "and finishes once none is in flight");
}

//! The coordinator's state machine under scripted event sequences, with real trainers.

mod common;

use std::sync::Arc;

use tessera_coord::*;
use tessera_data::Dataset;
use tessera_sync::{encode_update, Algorithm, SyncError};

fn dataset() -> Dataset {
    common::dataset("coord")
}

fn cfg() -> RunConfig {
    let base = RunConfig {
        min_peers: 2,
        heartbeat_ms: 100,
        silence_ms: 1000,
        round_timeout_ms: 60_000,
        min_round_ms: 500,
        // These scripts commit by hand and answer no challenge; tests/checks.rs has the checks.
        validate: Validate::Off,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.inner_steps = 2;
        c.rounds = 3;
        c.batch = 2;
    })
}

fn pid(i: u8) -> PeerId {
    [i; 32]
}

/// A coordinator plus a per-peer sequence counter.
struct Harness {
    c: Coordinator,
    seq: std::collections::BTreeMap<PeerId, u64>,
}

impl Harness {
    fn new(cfg: RunConfig) -> (Self, Arc<RunSpec>) {
        let spec = Arc::new(RunSpec::new(cfg).unwrap());
        let c = Coordinator::new(spec.clone(), [7; 32]).unwrap();
        (Self { c, seq: Default::default() }, spec)
    }

    fn send(&mut self, now: u64, from: PeerId, message: Message) -> Vec<Output> {
        let s = self.seq.entry(from).or_insert(0);
        *s += 1;
        self.c.handle(now, Signed { sender: from, seq: *s, message })
    }
}

fn rejections(out: &[Output]) -> Vec<Reject> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(Event::Rejected { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn round_start(out: &[Output]) -> Option<(u64, Hash32, Vec<Assignment>, u64)> {
    out.iter().find_map(|o| match o {
        Output::Broadcast {
            message: Message::RoundStart { round, state_hash, assignments, deadline_ms, .. },
        } => Some((*round, *state_hash, assignments.clone(), *deadline_ms)),
        _ => None,
    })
}

fn index_of(out: &[Output], pred: impl Fn(&Output) -> bool) -> usize {
    out.iter().position(pred).expect("output present")
}

/// The trainer's commit, claiming `round` (tests send wrong rounds on purpose).
fn commit_msg(round: u64, t: &Trained) -> Message {
    let mut m = t.commit();
    if let Message::Commit { round: r, .. } = &mut m {
        *r = round;
    }
    m
}

#[test]
fn a_round_starts_trains_closes_and_every_peer_agrees() {
    let ds = dataset();
    let (mut h, spec) = Harness::new(cfg());
    let initial = spec.initial_state();
    assert!(h
        .send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 })
        .iter()
        .all(|o| !matches!(o, Output::Broadcast { .. })));
    let out = h.send(10, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let (round, s0, assignments, deadline) = round_start(&out).expect("two members start a round");
    assert_eq!((round, deadline), (0, 60_000), "unknown speeds get the configured timeout");
    let persisted = index_of(&out, |o| matches!(o, Output::Persist(Record::RoundStarted { .. })));
    let announced =
        index_of(&out, |o| matches!(o, Output::Broadcast { message: Message::RoundStart { .. } }));
    assert!(persisted < announced, "decisions are written before they are announced");
    assert_eq!(assignments.iter().map(|a| (a.data_round, a.slot)).collect::<Vec<_>>(), [(0, 0), (0, 1)]);

    let mut trained = Vec::new();
    for a in &assignments {
        let mut w = Worker::new(spec.clone());
        trained.push(w.train(&initial, &s0, a, &ds, &mut |_| {}).unwrap());
    }
    let mut outs = Vec::new();
    for (i, t) in trained.iter().enumerate() {
        let out = h.send(400 + i as u64, assignments[i].peer, commit_msg(0, t));
        let fetch = out.iter().find_map(|o| match o {
            Output::Fetch { from, hash, len } => Some((*from, *hash, *len)),
            _ => None,
        });
        assert_eq!(fetch, Some((assignments[i].peer, t.update_hash, t.update.len() as u64)));
        outs.push(h.c.fetched(450, assignments[i].peer, t.update_hash, Ok(t.update.to_vec())));
    }
    let close = outs.pop().unwrap();
    let stored = index_of(&close, |o| matches!(o, Output::StoreBlob { .. }));
    let persisted = index_of(&close, |o| matches!(o, Output::Persist(Record::RoundClosed { .. })));
    let announced = index_of(&close, |o| matches!(o, Output::Broadcast { message: Message::Accept { .. } }));
    assert!(stored < persisted && persisted < announced);
    let (agg, next) = close
        .iter()
        .find_map(|o| match o {
            Output::Broadcast { message: Message::Accept { accepted, aggregate, next_state_hash, .. } } => {
                assert_eq!(accepted.len(), 2);
                Some((*aggregate, *next_state_hash))
            }
            _ => None,
        })
        .unwrap();
    let agg_bytes = close
        .iter()
        .find_map(|o| match o {
            Output::StoreBlob { hash, bytes } if Some(*hash) == agg => Some(bytes.clone()),
            _ => None,
        })
        .unwrap();
    let mut mine = initial.clone();
    mine.apply(&spec.outer, Some(&spec.outer.decode_aggregate(0, &agg_bytes).unwrap())).unwrap();
    assert_eq!(mine.hash(), next, "trainers reach the coordinator's state");
    assert_eq!(h.c.state_hash(), next);
    // The next round follows at once, with a deadline adapted to the observed speed.
    let (r1, s1, a1, d1) = round_start(&close).expect("next round");
    assert_eq!((r1, s1), (1, next));
    assert_eq!(a1.iter().map(|a| (a.data_round, a.slot)).collect::<Vec<_>>(), [(1, 0), (1, 1)]);
    assert_eq!(d1, (391.0 * 3.0) as u64, "slack × the slowest peer's 391 ms (round began at 10)");
    // Reports: agreement is recorded, disagreement flagged and answered with the pointer.
    let ok = h.send(500, pid(1), Message::StateReport { round: 1, state_hash: next, computed: true });
    assert!(ok.contains(&Output::Persist(Record::Report {
        round: 1,
        peer: pid(1),
        state_hash: next,
        agrees: true,
        computed: true
    })));
    let bad = h.send(500, pid(2), Message::StateReport { round: 1, state_hash: [9; 32], computed: true });
    assert!(bad.iter().any(|o| matches!(o, Output::Event(Event::Disagreement { round: 1, .. }))));
    assert!(bad.iter().any(|o| matches!(o, Output::Send { message: Message::CheckpointPointer { .. }, .. })));
    // Regression (issue: hostile peers): a report of a round not yet reached was recorded,
    // one row per round named, so a member could write as many rows as it liked. It is
    // refused, and nothing is persisted.
    for round in [2, 3, 1_000_000, u64::MAX] {
        let spam = h.send(500, pid(1), Message::StateReport { round, state_hash: next, computed: true });
        assert_eq!(rejections(&spam), [Reject::FutureReport { got: round, reached: 1 }]);
        assert!(!spam.iter().any(|o| matches!(o, Output::Persist(_))), "{spam:?}");
    }
}

#[test]
fn a_silent_peer_leaves_and_its_unit_is_reassigned_first() {
    let ds = dataset();
    let (mut h, spec) = Harness::new(cfg());
    let initial = spec.initial_state();
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    let out = h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let (_, s0, a0, _) = round_start(&out).unwrap();
    // Peer 1 trains and commits at 400 ms (its speed brings the deadline down from the
    // timeout to 3 × 400 = 1,200 ms); peer 2 goes silent.
    let mut w = Worker::new(spec.clone());
    let t = w.train(&initial, &s0, &a0[0], &ds, &mut |_| {}).unwrap();
    h.send(400, pid(1), commit_msg(0, &t));
    h.c.fetched(410, pid(1), t.update_hash, Ok(t.update.to_vec()));
    h.send(900, pid(1), Message::Heartbeat { round: 0, step: 2 });
    assert!(h.c.tick(900).is_empty(), "peer 2 is not silent yet");
    let out = h.c.tick(1001);
    assert!(out.contains(&Output::Event(Event::Left(pid(2)))));
    assert!(out.contains(&Output::Event(Event::RoundClosed {
        round: 0,
        accepted: 1,
        rejected: 1,
        reassigned: 1,
        spread: None
    })));
    // After the first round one member is enough: the next round goes on at once and hands
    // out the missed unit (0, 1) before fresh data.
    let (r, _, a1, _) = round_start(&out).unwrap();
    assert_eq!(r, 1);
    let units: Vec<_> = a1.iter().map(|a| (a.peer, a.data_round, a.slot)).collect();
    assert_eq!(units, [(pid(1), 0, 1)]);
    assert_eq!(h.c.backlog().count(), 0);
    // A peer joining mid-round waits for the next round, which gives it fresh data.
    let out = h.send(1100, pid(3), Message::Join { addrs: vec![], stake: 1_000 });
    assert!(round_start(&out).is_none());
    let t1 = {
        let (s1, g1) = (h.c.state_hash(), h.c.global().clone());
        w.train(&g1, &s1, &a1[0], &ds, &mut |_| {}).unwrap()
    };
    h.send(1200, pid(1), commit_msg(1, &t1));
    let out = h.c.fetched(1210, pid(1), t1.update_hash, Ok(t1.update.to_vec()));
    let (r, _, a2, _) = round_start(&out).unwrap();
    assert_eq!(r, 2);
    let units: Vec<_> = a2.iter().map(|a| (a.peer, a.data_round, a.slot)).collect();
    assert_eq!(units, [(pid(1), 2, 0), (pid(3), 2, 1)]);
}

#[test]
fn bad_inputs_are_refused_with_typed_reasons_and_the_round_goes_on() {
    let ds = dataset();
    let (mut h, spec) = Harness::new(cfg());
    let initial = spec.initial_state();
    // Not a member yet.
    let out =
        h.c.handle(0, Signed { sender: pid(7), seq: 1, message: Message::Heartbeat { round: 0, step: 0 } });
    assert_eq!(rejections(&out), [Reject::NotMember]);
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    let out = h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let (_, s0, a0, _) = round_start(&out).unwrap();
    // Replay: an old sequence number.
    let out =
        h.c.handle(1, Signed { sender: pid(1), seq: 1, message: Message::Heartbeat { round: 0, step: 0 } });
    assert_eq!(rejections(&out), [Reject::Replay { seq: 1, last: 1 }]);
    // Peers may not announce rounds.
    let out = h.send(2, pid(1), Message::Done { round: 0, state_hash: s0 });
    assert_eq!(rejections(&out), [Reject::Unexpected("Done")]);
    let t = Worker::new(spec.clone()).train(&initial, &s0, &a0[0], &ds, &mut |_| {}).unwrap();
    // The wrong round, and a commit of the wrong size.
    let out = h.send(3, pid(1), commit_msg(5, &t));
    assert_eq!(rejections(&out), [Reject::WrongRound { got: 5, want: Some(0) }]);
    let mut short = commit_msg(0, &t);
    if let Message::Commit { update_len, .. } = &mut short {
        *update_len -= 1;
    }
    let out = h.send(4, pid(2), short);
    assert!(matches!(rejections(&out)[..], [Reject::BadLength { .. }]));
    // Trained from another state, or local hashes that inner steps would have changed.
    let mut h2 = Harness::new(cfg()).0;
    h2.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    h2.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let mut wrong = commit_msg(0, &t);
    if let Message::Commit { state, .. } = &mut wrong {
        *state = [3; 32];
    }
    assert!(matches!(rejections(&h2.send(1, pid(1), wrong))[..], [Reject::WrongStart { .. }]));
    let mut same = commit_msg(0, &t);
    if let Message::Commit { end_hash, start_hash, .. } = &mut same {
        *end_hash = *start_hash;
    }
    assert!(matches!(rejections(&h2.send(1, pid(2), same))[..], [Reject::LocalHashes(_)]));
    // A good commit, then a different one for the same round: equivocation.
    h.send(5, pid(1), commit_msg(0, &t));
    let mut other = commit_msg(0, &t);
    if let Message::Commit { update, .. } = &mut other {
        update[0] ^= 1;
    }
    let out = h.send(6, pid(1), other);
    assert_eq!(rejections(&out), [Reject::Equivocation(0)]);
    // The blob that arrives does not hash to the commit.
    let out = h.c.fetched(7, pid(1), t.update_hash, Ok(vec![0u8; t.update.len()]));
    assert_eq!(rejections(&out), [Reject::HashMismatch], "the typed reason, not text");
    let accept = out.iter().find_map(|o| match o {
        Output::Broadcast { message: Message::Accept { accepted, rejected, aggregate, .. } } => {
            Some((accepted.clone(), rejected.len(), *aggregate))
        }
        _ => None,
    });
    assert_eq!(accept, Some((vec![], 2, None)), "nothing accepted: the round closes without an aggregate");
    assert_eq!(h.c.round(), 1);
}

/// A round-0 commit to update `hash` of `len` bytes from `state` (local hashes made up).
fn round0_commit(state: [u8; 32], hash: [u8; 32], len: u64) -> Message {
    let (start_hash, end_hash, root) = ([1; 32], [2; 32], [3; 32]);
    Message::Commit {
        round: 0,
        state,
        update: hash,
        update_len: len,
        start_hash,
        end_hash,
        root,
        loss_milli: 0,
        sig: vec![],
    }
}

#[test]
fn non_finite_and_huge_updates_are_rejected() {
    let (mut h, spec) = Harness::new(cfg().with(|c| {
        c.max_update_norm = 10.0;
    }));
    let (n, layout) = (spec.n(), spec.layout_hash);
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let codec = cfg().update_codec().unwrap();
    let mut nan = vec![0.0f32; n];
    nan[3] = f32::NAN;
    let huge = vec![1.0f32; n];
    for (p, v) in [(pid(1), nan), (pid(2), huge)] {
        let blob = encode_update(Algorithm::DiLoCo, codec, layout, 0, &v);
        let hash = *blake3::hash(&blob).as_bytes();
        h.send(10, p, round0_commit(h.c.state_hash(), hash, blob.len() as u64));
        let out = h.c.fetched(20, p, hash, Ok(blob));
        let r = rejections(&out);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            matches!(&r[0], Reject::Update(SyncError::NonFinite { .. } | SyncError::NormTooLarge { .. })),
            "{r:?}"
        );
    }
    assert_eq!(h.c.round(), 1);
}

/// Regression (issue: hostile peers): a fetched blob longer than the committed, run-wide
/// `update_len` is refused before it is hashed or decoded, and an update of another algorithm
/// (the header's algorithm byte) is refused too, though it has the right length.
#[test]
fn an_update_of_the_wrong_length_or_algorithm_is_refused() {
    let (mut h, spec) = Harness::new(cfg());
    let (n, layout) = (spec.n(), spec.layout_hash);
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let codec = cfg().update_codec().unwrap();
    let good = encode_update(Algorithm::DiLoCo, codec, layout, 0, &vec![0.01f32; n]);
    let mut long = good.clone();
    long.extend([0u8; 16]);
    let ddp = encode_update(Algorithm::Ddp, codec, layout, 0, &vec![0.01f32; n]);
    assert_eq!(ddp.len(), good.len(), "same length, another algorithm");
    for (p, blob) in [(pid(1), long), (pid(2), ddp)] {
        let hash = *blake3::hash(&blob).as_bytes();
        h.send(10, p, round0_commit(h.c.state_hash(), hash, spec.update_len));
        let out = h.c.fetched(20, p, hash, Ok(blob));
        let r = rejections(&out);
        let ok = match p[0] {
            1 => matches!(&r[..], [Reject::BadLength { .. }]),
            _ => matches!(&r[..], [Reject::Update(SyncError::Malformed(m))] if m.contains("ddp")),
        };
        assert!(ok, "{r:?}");
    }
}

#[test]
fn a_deadline_closes_a_round_with_a_slow_peer_missing() {
    let (mut h, _) = Harness::new(RunConfig { round_timeout_ms: 700, silence_ms: 5000, ..cfg() });
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    assert!(h.c.tick(699).is_empty());
    let out = h.c.tick(700);
    assert!(out.contains(&Output::Event(Event::RoundClosed {
        round: 0,
        accepted: 0,
        rejected: 2,
        reassigned: 2,
        spread: None
    })));
    let (r, _, a, _) = round_start(&out).unwrap();
    assert_eq!(r, 1);
    assert_eq!(a.iter().map(|a| (a.data_round, a.slot)).collect::<Vec<_>>(), [(0, 0), (0, 1)]);
}

#[test]
fn a_restored_coordinator_reopens_the_announced_round_and_finishes_the_run() {
    restored_round_zero(tessera_sync::Algorithm::DiLoCo);
}

/// Regression (found by `tessera vopr`, seed 0): a coordinator restarted in an open round
/// restored the backlog the last close left, though the round had already handed those units
/// out, so each was assigned again later and trained twice.
#[test]
fn a_reopened_round_keeps_the_backlog_units_it_handed_out() {
    let (mut h, spec) = Harness::new(cfg().with(|c| c.rounds = 3));
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    let out = h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let Some(Message::RoundStart {
        round,
        state_hash,
        seed,
        addrs,
        members,
        mut assignments,
        deadline_ms,
        replicas,
    }) = out.iter().find_map(|o| match o {
        Output::Persist(Record::RoundStarted { start, .. }) => Some(start.clone()),
        _ => None,
    })
    else {
        panic!("round 0 starts")
    };
    // As if the round had taken a waiting unit of an earlier round for its first member.
    assignments[0].data_round = 7;
    assignments[0].slot = 3;
    let start =
        Message::RoundStart { round, state_hash, seed, addrs, members, assignments, deadline_ms, replicas };
    let restored = Restored {
        state: spec.initial_state(),
        backlog: vec![(7, 3), (8, 0)],
        open: Some(start),
        history: vec![],
        replicas: vec![],
        banned: vec![],
    };
    let c = Coordinator::restore(spec.clone(), restored, 5000, [7; 32]).unwrap();
    assert_eq!(c.backlog().copied().collect::<Vec<_>>(), vec![(8, 0)], "the round's unit is not waiting too");
}

/// Regression: a NoLoCo coordinator restarted in round 0 (no Accept yet, so no replicas to
/// restore) re-opened the round without giving its members replicas, and panicked closing it.
#[test]
fn a_restored_noloco_coordinator_gives_the_reopened_rounds_members_replicas() {
    restored_round_zero(tessera_sync::Algorithm::NoLoCo);
}

/// Two members join and round 0 starts; the coordinator dies and a new one is restored at
/// 5,000 ms from what was persisted. Returns it, the spec, and round 0's start and assignments.
fn restarted_in_round_zero(cfg: RunConfig) -> (Coordinator, Arc<RunSpec>, Hash32, Vec<Assignment>) {
    let (mut h, spec) = Harness::new(cfg);
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    let out = h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let start = out
        .iter()
        .find_map(|o| match o {
            Output::Persist(Record::RoundStarted { start, .. }) => Some(start.clone()),
            _ => None,
        })
        .unwrap();
    let (_, s0, a0, _) = round_start(&out).unwrap();
    let restored = Restored {
        state: spec.initial_state(),
        backlog: vec![],
        open: Some(start),
        history: vec![],
        replicas: vec![],
        banned: vec![],
    };
    let c = Coordinator::restore(spec.clone(), restored, 5000, [7; 32]).unwrap();
    (c, spec, s0, a0)
}

fn restored_round_zero(algo: tessera_sync::Algorithm) {
    let ds = dataset();
    let c1 = cfg().with(|c| {
        c.rounds = 1;
        c.algo = algo;
    });
    let (mut c, spec, s0, a0) = restarted_in_round_zero(c1);
    let initial = spec.initial_state();
    // A member reconnects: it is welcomed and re-sent the open round.
    let out = c.handle(
        5100,
        Signed { sender: pid(1), seq: 10, message: Message::Join { addrs: vec![], stake: 1_000 } },
    );
    assert!(out.iter().any(|o| matches!(o, Output::Send { message: Message::Welcome { round: 0, .. }, .. })));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Send { message: Message::RoundStart { round: 0, .. }, .. })));
    let mut last = Vec::new();
    for (seq, a) in (11..).zip(&a0) {
        let t = Worker::new(spec.clone()).train(&initial, &s0, a, &ds, &mut |_| {}).unwrap();
        c.handle(5200, Signed { sender: a.peer, seq, message: commit_msg(0, &t) });
        last = c.fetched(5300, a.peer, t.update_hash, Ok(t.update.to_vec()));
    }
    assert!(last.iter().any(|o| matches!(o, Output::Broadcast { message: Message::Done { round: 1, .. } })));
    assert!(c.is_finished());
    // A late joiner is told the run is done.
    let out = c.handle(
        6000,
        Signed { sender: pid(9), seq: 1, message: Message::Join { addrs: vec![], stake: 1_000 } },
    );
    assert!(out.iter().any(|o| matches!(o, Output::Send { message: Message::Done { round: 1, .. }, .. })));
}

#[test]
fn retraining_a_round_gives_the_same_commit() {
    let ds = dataset();
    let spec = Arc::new(RunSpec::new(cfg()).unwrap());
    let mut w = Worker::new(spec.clone());
    let g = spec.initial_state();
    let s0 = g.hash();
    let a = Assignment { peer: pid(1), data_round: 0, slot: 0 };
    let first = w.train(&g, &s0, &a, &ds, &mut |_| {}).unwrap();
    // A different unit for the same round restarts from the round's inner state...
    let b = Assignment { slot: 1, ..a };
    let other = w.train(&g, &s0, &b, &ds, &mut |_| {}).unwrap();
    assert_ne!(other.update_hash, first.update_hash);
    assert_eq!(other.start_hash, first.start_hash, "the same inner state starts the round");
    // ...so training the first unit again reproduces it bit for bit.
    let again = w.train(&g, &s0, &a, &ds, &mut |_| {}).unwrap();
    assert_eq!(again.update, first.update);
    // A checkpoint that does not hash to the announced state is refused.
    assert!(matches!(spec.decode_state(&g.encode(), &[0; 32]), Err(CoordError::State(_))));
    let mut bad = g.encode();
    bad[0] = b'X';
    let h = *blake3::hash(&bad).as_bytes();
    assert!(matches!(spec.decode_state(&bad, &h), Err(CoordError::State(_))));
}

#[test]
fn corrupted_state_blobs_are_refused_with_typed_errors() {
    let spec = RunSpec::new(cfg()).unwrap();
    let g = spec.initial_state();
    let (blob, n, layout) = (g.encode(), g.theta.len(), g.layout_hash);
    assert_eq!(blob.len(), spec.state_len);
    assert_eq!(GlobalState::decode(&blob, &layout, n, 1).unwrap(), g);
    assert!(GlobalState::decode(&blob, &layout, n, 2).is_err(), "wrong buffer count");
    assert!(GlobalState::decode(&blob, &[0; 32], n, 1).is_err(), "wrong layout");
    let r = tessera_tensor::rng::Philox::new(11);
    let mut refused = 0;
    for i in 0..3000 {
        let mut b = blob.clone();
        match r.below(1, i, 4) {
            0 => {
                let at = r.below(2, i, 64) as usize; // the header
                b[at] ^= 1 + r.below(3, i, 255) as u8;
            }
            1 => b.truncate(r.below(2, i, b.len() as u64) as usize),
            2 => b.extend_from_slice(&[0; 4]),
            _ => {
                let at = 55 + 4 * r.below(2, i, (2 * n) as u64) as usize; // a value
                b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        }
        match GlobalState::decode(&b, &layout, n, 1) {
            Err(CoordError::State(_)) => refused += 1,
            Err(e) => panic!("untyped refusal {e}"),
            Ok(s) => assert_eq!(s.encode(), b, "only a canonical blob decodes"),
        }
    }
    // Flips of the round counter or of the first values still give a valid (different) state.
    assert!(refused > 2700, "{refused}");
}

#[test]
fn run_configs_parse_over_defaults_and_bad_ones_name_the_problem() {
    let c = RunConfig::from_toml("rounds = 3\ncodec = \"2bit\"\n").unwrap();
    assert_eq!((c.rounds, c.codec.name(), c.inner_steps), (3, "2bit", RunConfig::default().inner_steps));
    assert_eq!(RunConfig::from_toml(&c.to_toml()).unwrap(), c, "the canonical text round-trips");
    for (text, want) in [
        ("roundz = 3", "unknown field"),
        ("algo = \"noloco\"\nnoloco_alpha = -1", "finite and non-negative"),
        ("algo = \"adam\"", "unknown variant `adam`, expected one of `ddp`, `diloco`"),
        ("batch = 0", "at least 1"),
        ("seed = -1", "invalid value"),
        ("algo = \"sparseloco\"\nef_beta = 1.5", "ef_beta"),
        ("codec = \"int4\"", "unknown variant `int4`, expected one of `f32`, `int8`, `2bit`, `sign`"),
        ("heartbeat_ms = 500\nsilence_ms = 400", "heartbeat_ms < silence_ms"),
        ("min_peers = 5\nmax_peers = 2", "min_peers"),
        ("preset = \"huge\"", "huge"),
        // Regression (issue: hostile peers, whose review found that a bound near f32::MAX
        // lets a round's aggregate overflow and the coordinator's close panic).
        ("max_update_norm = 3e38", "max_update_norm must be at most 1e18"),
    ] {
        let e = RunConfig::from_toml(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    // The gradient methods take one gradient per round whatever inner_steps says (the one
    // shared training section means the same in the simulator and in a run).
    let ddp = RunConfig::from_toml("algo = \"ddp\"\ninner_steps = 5").unwrap();
    assert_eq!((ddp.h(), ddp.inner_adamw().total_steps), (1, ddp.rounds));
    let big = "x".repeat(MAX_CONFIG_TEXT + 1);
    assert!(RunConfig::from_toml(&big).unwrap_err().to_string().contains("exceeds"));
}

/// Regression: the aggregate was decoded with the per-update norm bound, so a mean of updates
/// just under the bound, re-quantized, could exceed it and make closing the round fail (the
/// coordinator treats that as a bug and stops). Aggregates are checked for shape only.
#[test]
fn an_aggregate_over_the_update_norm_bound_still_applies() {
    let c = cfg().with(|c| {
        c.max_update_norm = 1.0;
    });
    let spec = RunSpec::new(c.clone()).unwrap();
    let mut g = spec.initial_state();
    let n = g.theta.len();
    let agg = encode_update(Algorithm::DiLoCo, c.update_codec().unwrap(), g.layout_hash, 0, &vec![0.5f32; n]);
    assert!(tessera_sync::decode_update(&agg, spec.expected()).is_err(), "over the update bound");
    g.apply(&spec.outer, Some(&spec.outer.decode_aggregate(0, &agg).unwrap())).unwrap();
    assert_eq!(g.round, 1);
}

/// Regression (issue: hostile peers): joins refused because the run is full used to leave a
/// sequence window each, so after 65,536 distinct keys nobody new could ever join. Now only
/// peers that get in have one: after 70,000 refused keys, a newcomer joins once there is room.
#[test]
fn refused_joins_leave_nothing_behind_and_a_newcomer_still_gets_in() {
    let (mut h, _) = Harness::new(RunConfig { max_peers: 2, ..cfg() });
    let join = || Message::Join { addrs: vec![], stake: 1_000 };
    h.send(0, pid(1), join());
    h.send(0, pid(2), join());
    for i in 0..70_000u32 {
        let mut p = [0xAA; 32];
        p[..4].copy_from_slice(&i.to_le_bytes());
        let out = h.send(10, p, join());
        assert!(matches!(&rejections(&out)[..], [Reject::Full(2)]), "{:?}", rejections(&out));
    }
    // Member 1 falls silent and is dropped; member 2 stays.
    for t in [400, 800, 1200, 1600] {
        h.send(t, pid(2), Message::Heartbeat { round: 0, step: 0 });
    }
    h.c.tick(1700);
    assert!(!h.c.members().any(|p| *p == pid(1)), "the silent member is dropped");
    let out = h.send(1800, pid(3), join());
    assert!(rejections(&out).is_empty(), "{:?}", rejections(&out));
    assert!(h.c.members().any(|p| *p == pid(3)), "the newcomer is in");
}

/// Regression (issue: hostile peers): a round that started knowing nobody's speed waited the
/// whole round timeout for a member that never commits. Once half of its members have
/// committed, its deadline comes down to slack × their speeds (at least `min_round_ms`).
#[test]
fn a_first_round_closes_on_the_speeds_it_learns_not_the_timeout() {
    let ds = dataset();
    let (mut h, spec) = Harness::new(cfg().with(|c| c.min_peers = 3));
    let initial = spec.initial_state();
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let out = h.send(0, pid(3), Message::Join { addrs: vec![], stake: 1_000 });
    let (_, s0, a0, deadline) = round_start(&out).unwrap();
    assert_eq!(deadline, 60_000, "no speed is known yet");
    for (i, a) in a0.iter().take(2).enumerate() {
        let t = Worker::new(spec.clone()).train(&initial, &s0, a, &ds, &mut |_| {}).unwrap();
        h.send(100 + 20 * i as u64, a.peer, commit_msg(0, &t));
        h.c.fetched(130, a.peer, t.update_hash, Ok(t.update.to_vec()));
    }
    for now in (200..=600).step_by(100) {
        let mut out = Vec::new();
        for p in [pid(1), pid(2), pid(3)] {
            out.extend(h.send(now, p, Message::Heartbeat { round: 0, step: 0 }));
        }
        out.extend(h.c.tick(now));
        let closed = out.iter().any(|o| matches!(o, Output::Event(Event::RoundClosed { round: 0, .. })));
        // 3 × 120 ms = 360 ms, raised to min_round_ms (500): open at 400, closed by 600.
        assert_eq!(closed, now >= 500, "at {now} ms");
        if closed {
            break;
        }
    }
}

/// Regression (found by `tessera demo --chaos`): a restarted coordinator re-opens the round
/// it had announced, dated after a grace to reconnect; the members' resent commits (trained
/// before the restart) arrived before that start and taught it round times of 0 ms, so the
/// next rounds' deadlines fell to `min_round_ms`, too short to train in, and every member
/// missed them. Commits of a re-opened round teach no speed now: the next round, knowing none,
/// waits the round timeout.
#[test]
fn commits_resent_to_a_restarted_coordinator_teach_no_round_time() {
    let ds = dataset();
    let (mut c, spec, s0, a0) = restarted_in_round_zero(cfg().with(|c| c.rounds = 3));
    let initial = spec.initial_state();
    let mut last = Vec::new();
    for (seq, a) in (11..).zip(&a0) {
        let t = Worker::new(spec.clone()).train(&initial, &s0, a, &ds, &mut |_| {}).unwrap();
        c.handle(5010, Signed { sender: a.peer, seq, message: commit_msg(0, &t) });
        last = c.fetched(5020, a.peer, t.update_hash, Ok(t.update.to_vec()));
    }
    let (round, _, _, deadline) = round_start(&last).expect("round 1 starts");
    assert_eq!((round, deadline), (1, 60_000), "no round time was learned from the resent commits");
}

/// Regression (found by `tessera demo --chaos`): a round that every member missed taught
/// nothing (only commits teach round times), so a deadline too short for everyone repeated for
/// ever. A member that misses now needs at least twice the time it was allotted: the next
/// deadline grows.
#[test]
fn a_round_that_every_member_missed_gets_a_longer_deadline_next() {
    let ds = dataset();
    let (mut h, spec) = Harness::new(cfg().with(|c| c.rounds = 4));
    let initial = spec.initial_state();
    h.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
    let out = h.send(0, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
    let (_, s0, a0, _) = round_start(&out).unwrap();
    // Both commit fast in round 0 (10 ms): round 1's deadline is min_round_ms.
    let mut close = Vec::new();
    for a in &a0 {
        let t = Worker::new(spec.clone()).train(&initial, &s0, a, &ds, &mut |_| {}).unwrap();
        h.send(10, a.peer, commit_msg(0, &t));
        close = h.c.fetched(20, a.peer, t.update_hash, Ok(t.update.to_vec()));
    }
    let (r1, _, _, d1) = round_start(&close).unwrap();
    assert_eq!((r1, d1), (1, 500));
    // Nobody commits in round 1: it closes on its deadline, and round 2 gets more time.
    let mut out = Vec::new();
    for now in (100..=600).step_by(100) {
        for p in [pid(1), pid(2)] {
            out.extend(h.send(now, p, Message::Heartbeat { round: 1, step: 0 }));
        }
        out.extend(h.c.tick(now));
    }
    let (r2, _, _, d2) = round_start(&out).expect("round 2 starts");
    assert_eq!(r2, 2);
    assert!(d2 >= 2 * d1, "the deadline grew after a round nobody made: {d1} -> {d2} ms");
}

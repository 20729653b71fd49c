//! Spot checks inside the round, scripted message by message: the coordinator challenges a
//! commit, the trainer reveals, the coordinator re-runs the segment; honest work passes, a
//! forged reveal or a skipped step is proven and its trainer refused from then on, and a
//! trainer that never reveals loses its update without being called a cheat.

mod common;

use std::sync::Arc;

use tessera_coord::*;
use tessera_data::Dataset;

fn dataset() -> Dataset {
    common::dataset("checks")
}

/// Two trainers, every commit checked, four segments of one step.
fn cfg() -> RunConfig {
    let base = RunConfig {
        min_peers: 2,
        heartbeat_ms: 100,
        silence_ms: 10_000,
        round_timeout_ms: 60_000,
        min_round_ms: 500,
        commit_every: 1,
        validate: Validate::Coordinator,
        check_rate: 1.0,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.inner_steps = 4;
        c.rounds = 2;
        c.batch = 2;
    })
}

fn pid(i: u8) -> PeerId {
    [i; 32]
}

struct Run {
    c: Coordinator,
    spec: Arc<RunSpec>,
    seq: std::collections::BTreeMap<PeerId, u64>,
    workers: Vec<Worker>,
    assignments: Vec<Assignment>,
}

impl Run {
    /// Two members joined; round 0 is open.
    fn start() -> Self {
        Self::start_with(cfg(), None)
    }

    /// The same with `cfg`, and (`validator`) a validator joined first.
    fn start_with(cfg: RunConfig, validator: Option<PeerId>) -> Self {
        let spec = Arc::new(RunSpec::new(cfg).unwrap());
        let c = Coordinator::new(spec.clone(), [9; 32]).unwrap();
        let workers = vec![Worker::new(spec.clone()), Worker::new(spec.clone())];
        let mut r = Self { c, spec, seq: Default::default(), workers, assignments: Vec::new() };
        if let Some(v) = validator {
            r.send(0, v, Message::JoinValidator { addrs: vec![], stake: 1_000 });
        }
        r.send(0, pid(1), Message::Join { addrs: vec![], stake: 1_000 });
        let out = r.send(1, pid(2), Message::Join { addrs: vec![], stake: 1_000 });
        r.assignments = out
            .iter()
            .find_map(|o| match o {
                Output::Broadcast { message: Message::RoundStart { assignments, .. } } => {
                    Some(assignments.clone())
                }
                _ => None,
            })
            .expect("round 0 starts");
        r
    }

    fn send(&mut self, now: u64, from: PeerId, message: Message) -> Vec<Output> {
        let s = self.seq.entry(from).or_insert(0);
        *s += 1;
        self.c.handle(now, Signed { sender: from, seq: *s, message })
    }

    /// Trainer `i` trains and commits; returns the coordinator's answer and its result.
    fn commit(&mut self, ds: &Dataset, i: usize) -> (Vec<Output>, Trained) {
        let (g, a) = (self.spec.initial_state(), self.assignments[i]);
        let t = self.workers[i].train(&g, &g.hash(), &a, ds, &mut |_| {}).unwrap();
        let out = self.send(10, a.peer, t.commit());
        let out2 = self.c.fetched(20, a.peer, t.update_hash, Ok(t.update.to_vec()));
        (out.into_iter().chain(out2).collect(), t)
    }
}

fn challenge(out: &[Output]) -> Option<(u64, u32)> {
    out.iter().find_map(|o| match o {
        Output::Send { message: Message::Challenge { round, segment }, .. } => Some((*round, *segment)),
        _ => None,
    })
}

fn fetch(out: &[Output]) -> Option<(Hash32, u64)> {
    out.iter().find_map(|o| match o {
        Output::Fetch { hash, len, .. } => Some((*hash, *len)),
        _ => None,
    })
}

fn job(out: &[Output]) -> Option<CheckJob> {
    out.iter().find_map(|o| match o {
        Output::Check(j) => Some((**j).clone()),
        _ => None,
    })
}

fn verdicts(out: &[Output]) -> Vec<Outcome> {
    out.iter()
        .filter_map(|o| match o {
            Output::Persist(Record::Verdict { outcome, .. }) => Some(outcome.clone()),
            _ => None,
        })
        .collect()
}

fn accepted(out: &[Output]) -> Option<Vec<PeerId>> {
    out.iter().find_map(|o| match o {
        Output::Broadcast { message: Message::Accept { accepted, .. } } => Some(accepted.clone()),
        _ => None,
    })
}

/// The trainer's whole answer: reveal, the coordinator fetches the blob, runs the job.
fn answer(r: &mut Run, ds: &Dataset, i: usize, out: &[Output]) -> Vec<Output> {
    let (round, seg) = challenge(out).expect("every commit is challenged at rate 1");
    let rev = r.workers[i].reveal_committed(round, seg as usize, ds).unwrap();
    let peer = r.assignments[i].peer;
    let out = r.send(30, peer, rev.message.clone());
    let (hash, len) = fetch(&out).expect("a reveal that fits is fetched");
    assert_eq!((hash, len), (rev.blob_hash, LocalState::blob_len(r.spec.n())));
    let out = r.c.fetched(40, peer, hash, Ok(rev.blob.to_vec()));
    let j = job(&out).expect("the fetched state becomes a job");
    let got = run_check(&r.spec, ds, &j);
    r.c.checked(50, round, peer, got)
}

#[test]
fn honest_work_is_challenged_revealed_rerun_and_passes() {
    let ds = dataset();
    let mut r = Run::start();
    let (out0, _) = r.commit(&ds, 0);
    let (out1, _) = r.commit(&ds, 1);
    assert!(accepted(&out1).is_none(), "the round waits for its checks");
    let v0 = answer(&mut r, &ds, 0, &out0);
    assert_eq!(verdicts(&v0), [Outcome::Pass]);
    let v1 = answer(&mut r, &ds, 1, &out1);
    assert_eq!(verdicts(&v1), [Outcome::Pass]);
    let persisted = v1.iter().position(|o| matches!(o, Output::Persist(Record::Verdict { .. }))).unwrap();
    let announced = v1.iter().position(|o| matches!(o, Output::Broadcast { .. })).unwrap();
    assert!(persisted < announced, "verdicts are written before the round is announced");
    assert_eq!(accepted(&v1).map(|a| a.len()), Some(2), "both updates aggregated");
}

#[test]
fn a_reveal_that_does_not_fit_the_commitment_is_proven_and_refused_from_then_on() {
    let ds = dataset();
    let mut r = Run::start();
    let (out0, _) = r.commit(&ds, 0);
    let (round, seg) = challenge(&out0).unwrap();
    let mut rev = r.workers[0].reveal_committed(round, seg as usize, &ds).unwrap().message;
    if let Message::Reveal { start, .. } = &mut rev {
        start.hash[0] ^= 1; // a state it never committed to
    }
    let out = r.send(30, pid(1), rev);
    assert!(matches!(verdicts(&out)[..], [Outcome::BadReveal(_)]));
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Banned { round: 0, .. }))));
    let later = r.send(40, pid(1), Message::Heartbeat { round: 0, step: 0 });
    assert!(later
        .iter()
        .any(|o| matches!(o, Output::Event(Event::Rejected { reason: Reject::Banned(0), .. }))));
    assert!(r.c.members().all(|m| *m != pid(1)), "a proven cheat is no longer a member");
    let (out1, _) = r.commit(&ds, 1);
    let closed = answer(&mut r, &ds, 1, &out1);
    assert_eq!(accepted(&closed), Some(vec![pid(2)]), "the cheat's update is left out");
}

#[test]
fn a_skipped_step_is_found_by_rerunning_its_segment() {
    let ds = dataset();
    let mut r = Run::start();
    r.workers[0].shirk(Shirk::SkipSteps);
    let (out0, _) = r.commit(&ds, 0);
    let (round, seg) = challenge(&out0).unwrap();
    // Segments 2 and 3 were never trained; force the check onto one of them.
    let seg = seg.max(2) as usize;
    let rev = r.workers[0].reveal_committed(round, seg, &ds).unwrap();
    let (start, end) = (rev.leaves().0.hash, rev.leaves().1.hash);
    let j = CheckJob {
        round,
        peer: pid(1),
        unit: (r.assignments[0].data_round, r.assignments[0].slot),
        segment: seg,
        blob: rev.blob.to_vec(),
        start,
        end,
        rederive: None,
    };
    assert_eq!(run_check(&r.spec, &ds, &j).unwrap(), Outcome::Mismatch);
    let honest = CheckJob { segment: 0, ..j.clone() };
    let rev0 = r.workers[0].reveal_committed(round, 0, &ds).unwrap();
    let (s0, e0) = (rev0.leaves().0.hash, rev0.leaves().1.hash);
    let first = CheckJob { blob: rev0.blob.to_vec(), start: s0, end: e0, ..honest };
    assert_eq!(run_check(&r.spec, &ds, &first).unwrap(), Outcome::Pass, "the steps it did run pass");
}

#[test]
fn a_trainer_that_never_reveals_loses_its_update_but_is_not_called_a_cheat() {
    let ds = dataset();
    let mut r = Run::start();
    let (out0, _) = r.commit(&ds, 0);
    assert!(challenge(&out0).is_some());
    let (out1, _) = r.commit(&ds, 1);
    let _ = answer(&mut r, &ds, 1, &out1);
    let late = r.c.tick(61_000);
    assert_eq!(verdicts(&late), [Outcome::NoReveal]);
    assert_eq!(accepted(&late), Some(vec![pid(2)]));
    assert!(!late.iter().any(|o| matches!(o, Output::Event(Event::Banned { .. }))));
}

#[test]
fn the_draw_follows_the_rate_and_the_blob_decodes_only_at_its_length() {
    let roots: Vec<Hash32> = (0..2000u32).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
    let drawn = |rate| roots.iter().filter(|r| pick(&[1; 32], r, &[2; 32], rate, 10).is_some()).count();
    assert_eq!(drawn(0.0), 0);
    assert_eq!(drawn(1.0), 2000);
    let half = drawn(0.5);
    assert!((900..1100).contains(&half), "about half of 2000 drawn: {half}");
    let segs: std::collections::BTreeSet<usize> =
        roots.iter().filter_map(|r| pick(&[1; 32], r, &[2; 32], 1.0, 10)).collect();
    assert_eq!(segs.len(), 10, "every segment can be drawn");
    let s = LocalState { params: vec![1.0, 2.0], m: vec![3.0, 4.0], v: vec![5.0, 6.0], step: 7 };
    let b = s.encode();
    assert_eq!(b.len() as u64, LocalState::blob_len(2));
    assert_eq!(LocalState::decode(&b, 2).unwrap(), s);
    assert!(matches!(LocalState::decode(&b[1..], 2), Err(CoordError::State(_))));
}

/// A validator is ruled against only by the coordinator's own completed run: a mismatch it
/// names no end state for (so there is nothing to dispute) is refereed by re-running; one it
/// claims on a trainer whose state can then not be fetched proves nothing against it; a
/// mismatch the coordinator's re-run contradicts is a lie, and the validator is refused.
#[test]
fn a_validator_is_ruled_against_only_by_the_coordinators_completed_run() {
    let ds = dataset();
    let v = pid(9);
    let c = RunConfig { validate: Validate::Validators, decoy_rate: 0.0, ..cfg() };
    let mut r = Run::start_with(c, Some(v));
    let task = |out: &[Output]| {
        out.iter().find_map(|o| match o {
            Output::Send { to, message: Message::CheckTask { peer, segment, .. } } if *to == pid(9) => {
                Some((*peer, *segment))
            }
            _ => None,
        })
    };
    let banned = |out: &[Output], who: PeerId| {
        out.iter().any(|o| matches!(o, Output::Event(Event::Banned { peer, .. }) if *peer == who))
    };
    for i in 0..2 {
        let (out, _) = r.commit(&ds, i);
        let (round, seg) = challenge(&out).expect("challenged");
        let rev = r.workers[i].reveal_committed(round, seg as usize, &ds).unwrap();
        let peer = r.assignments[i].peer;
        let out = r.send(30, peer, rev.message.clone());
        assert_eq!(task(&out), Some((peer, seg)), "the revealed check goes to the validator");
        let claim = Message::Verdict {
            round,
            peer,
            segment: seg,
            finding: tessera_wire::Finding::Mismatch,
            reached: None,
        };
        let out = r.send(35, v, claim);
        assert_eq!(fetch(&out).map(|f| f.0), Some(rev.blob_hash), "a claimed mismatch is refereed");
        if i == 0 {
            // The trainer's state cannot be had: its update is left out, nobody is refused.
            let out = r.c.fetched(40, peer, rev.blob_hash, Err("gone".into()));
            assert_eq!(verdicts(&out), [Outcome::NoReveal]);
            assert!(!banned(&out, v) && !banned(&out, peer), "nothing is proven against anyone");
        } else {
            let out = r.c.fetched(40, peer, rev.blob_hash, Ok(rev.blob.to_vec()));
            let j = job(&out).expect("the referee re-runs the check");
            let out = r.c.checked(50, round, peer, run_check(&r.spec, &ds, &j));
            assert!(banned(&out, v), "the coordinator's pass refutes the claimed mismatch");
            assert!(!banned(&out, peer), "the honest trainer is not refused");
            assert!(out.iter().any(|o| matches!(o, Output::Persist(Record::Verdict { peer: p, outcome: Outcome::WrongVerdict(_), .. }) if *p == v)));
            assert_eq!(accepted(&out), Some(vec![pid(2)]), "the honest update is aggregated");
        }
    }
}

/// A validator that could not check a decoy (it could not fetch the state, say) is not
/// called lazy: the coordinator checks the trainer itself, and nobody is refused.
#[test]
fn a_decoy_the_validator_could_not_check_proves_nothing() {
    let ds = dataset();
    let v = pid(9);
    let c = RunConfig { validate: Validate::Validators, decoy_rate: 1.0, ..cfg() };
    let mut r = Run::start_with(c, Some(v));
    let (out, _) = r.commit(&ds, 0);
    let (round, seg) = challenge(&out).expect("challenged");
    let rev = r.workers[0].reveal_committed(round, seg as usize, &ds).unwrap();
    let out = r.send(30, pid(1), rev.message.clone());
    let decoy_end = out.iter().find_map(|o| match o {
        Output::Send { message: Message::CheckTask { end, .. }, .. } => Some(*end),
        _ => None,
    });
    let real_end = rev.leaves().1.hash;
    assert!(decoy_end.is_some_and(|e| e != real_end), "the first task is a decoy");
    let answer = Message::Verdict {
        round,
        peer: pid(1),
        segment: seg,
        finding: tessera_wire::Finding::Unchecked,
        reached: None,
    };
    let out = r.send(35, v, answer);
    assert_eq!(fetch(&out).map(|f| f.0), Some(rev.blob_hash), "the coordinator checks it itself");
    let out = r.c.fetched(40, pid(1), rev.blob_hash, Ok(rev.blob.to_vec()));
    let j = job(&out).expect("a job");
    let out = r.c.checked(50, round, pid(1), run_check(&r.spec, &ds, &j));
    assert_eq!(verdicts(&out), [Outcome::Pass]);
    assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::Banned { .. }))), "nobody is refused");
}

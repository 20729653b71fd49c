//! The networked run's protocol on the virtual clock: it computes what the plain simulator
//! computes, and survives crashes and joins with every live trainer agreeing.

use std::path::PathBuf;

use tessera_coord::{Event, Message, Record, RunConfig, RunSpec, TrainerEvent};
use tessera_data::{ingest_bytes, Dataset, IngestOptions};
use tessera_model::fixtures::SONNETS;
use tessera_sim::{ProtocolSim, Sim, SimConfig};
use tessera_sync::Algorithm;

fn dataset(name: &str) -> Dataset {
    let dir: PathBuf = std::env::temp_dir().join(format!("tessera-proto-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = IngestOptions { shard_tokens: 8192, ..IngestOptions::default() };
    ingest_bytes(SONNETS, "sonnets", &dir, &opts).unwrap();
    Dataset::open(&dir).unwrap()
}

fn run_cfg(peers: usize) -> RunConfig {
    let base = RunConfig {
        min_peers: peers,
        heartbeat_ms: 100,
        silence_ms: 1000,
        min_round_ms: 500,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.inner_steps = 3;
        c.rounds = 4;
        c.batch = 2;
    })
}

/// The rounds the coordinator closed, in order.
fn closes(p: &ProtocolSim) -> Vec<u64> {
    p.records
        .iter()
        .filter_map(|r| match r {
            Record::RoundClosed { round, .. } => Some(*round),
            _ => None,
        })
        .collect()
}

fn pid(i: u8) -> [u8; 32] {
    [i; 32]
}

/// θ after the plain simulator runs `rc` with `peers` peers.
fn plain_sim_theta(rc: &RunConfig, peers: usize, ds: &Dataset) -> Vec<f32> {
    plain_sim(rc, peers, ds).theta().to_vec()
}

/// The plain simulator after it ran `rc` with `peers` peers.
fn plain_sim<'a>(rc: &RunConfig, peers: usize, ds: &'a Dataset) -> Sim<'a> {
    // One shared training section: the simulator runs the run config's settings as they are.
    let sc = SimConfig {
        peers,
        training: rc.training.clone(),
        eval_every: 0,
        eval_batches: 1,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(sc, ds).unwrap();
    for _ in 0..rc.rounds {
        sim.run_round().unwrap();
    }
    sim
}

/// The state a live trainer should hold at the end: the shared state, or its own replica.
fn expected_state(p: &ProtocolSim, peer: u8) -> Option<(u64, [u8; 32])> {
    let c = p.coordinator();
    let hash = match c.spec().outer.algorithm() {
        Algorithm::NoLoCo => c.replicas().hash_of(&pid(peer))?,
        _ => c.state_hash(),
    };
    Some((c.round(), hash))
}

/// Runs `rc` with `peers` trainers present from the start and checks that the coordinator's
/// θ equals the plain simulator's bit for bit; returns the run for further checks.
fn peers_from_the_start_equal_the_simulator<'a>(
    rc: &RunConfig,
    peers: u8,
    ds: &'a Dataset,
) -> ProtocolSim<'a> {
    let mut p = ProtocolSim::new(rc.clone(), ds).unwrap();
    for i in 1..=peers {
        p.join(pid(i)).unwrap();
    }
    p.run_until(rc.rounds).unwrap();
    let sim = plain_sim_theta(rc, peers as usize, ds);
    let theta = &p.coordinator().global().theta;
    assert!(theta.iter().zip(&sim).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: bit-identical θ", rc.algo);
    p
}

#[test]
fn the_protocol_computes_what_the_simulator_computes() {
    let ds = dataset("equal");
    let rc = run_cfg(3);
    let p = peers_from_the_start_equal_the_simulator(&rc, 3, &ds);
    for i in 1..=3 {
        assert_eq!(p.peer_state(&pid(i)), Some((rc.rounds, p.coordinator().state_hash())));
    }
    let reports = p.records.iter().filter(|r| matches!(r, Record::Report { agrees: true, .. })).count();
    assert_eq!(reports, 3 * rc.rounds as usize, "every trainer reported every round, all agreeing");
    // Regression: the next RoundStart overtakes the aggregate blob (blobs come back through
    // the queue); the trainer must wait for its own close, not fetch the checkpoint instead.
    let adopted = p.records.iter().filter(|r| matches!(r, Record::Report { computed: false, .. })).count();
    assert_eq!(adopted, 0, "every state was computed by the trainer, none adopted");
    let loads = p.trainer_events.iter().filter(|(_, e)| matches!(e, TrainerEvent::Loaded { .. })).count();
    assert_eq!(loads, 3, "each trainer fetched one checkpoint, the initial state");
}

#[test]
fn ddp_over_the_protocol_equals_the_simulators_ddp() {
    let ds = dataset("ddp");
    let rc = run_cfg(2).with(|c| {
        c.algo = Algorithm::Ddp;
        c.inner_steps = 1;
        c.rounds = 5;
    });
    let p = peers_from_the_start_equal_the_simulator(&rc, 2, &ds);
    assert_eq!(p.peer_state(&pid(2)), Some((rc.rounds, p.coordinator().state_hash())));
}

/// The all-gather algorithms: every trainer fetches every accepted update and combines them
/// itself, in peer-id order, reaching the coordinator's state and the simulator's.
#[test]
fn sparseloco_and_demo_over_the_protocol_equal_the_simulator() {
    let ds = dataset("allgather");
    for rc in [
        run_cfg(3).with(|c| {
            c.algo = Algorithm::SparseLoCo;
        }),
        run_cfg(3).with(|c| {
            c.algo = Algorithm::DeMo;
            c.inner_steps = 1;
            c.demo_lr = 3e-3;
        }),
    ] {
        let p = peers_from_the_start_equal_the_simulator(&rc, 3, &ds);
        let theta = &p.coordinator().global().theta;
        for i in 1..=3 {
            assert_eq!(p.peer_state(&pid(i)), Some((rc.rounds, p.coordinator().state_hash())), "{}", rc.algo);
        }
        let computed =
            p.records.iter().filter(|r| matches!(r, Record::Report { agrees: true, computed: true, .. }));
        assert_eq!(computed.count(), 3 * rc.rounds as usize, "{}: every state computed and agreed", rc.algo);
        assert!(theta
            .iter()
            .zip(&RunSpec::new(rc.clone()).unwrap().initial_state().theta)
            .any(|(a, b)| a != b));
        // Each trainer fetched the others' updates from their authors: 3 × 2 per round.
        assert_eq!(p.peer_fetches, 6 * rc.rounds, "{}: updates come peer to peer", rc.algo);
    }
}

/// NoLoCo: no shared model. Seeded pairs exchange (Δ, φ) peer to peer; every replica equals
/// the simulator's bit for bit, and each trainer's report matches what its pair implies.
#[test]
fn noloco_over_the_protocol_equals_the_simulator_replica_by_replica() {
    let ds = dataset("noloco");
    for peers in [4u8, 3] {
        // Four trainers make two pairs; three make one triple.
        let rc = run_cfg(peers as usize).with(|c| {
            c.algo = Algorithm::NoLoCo;
        });
        let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
        for i in 1..=peers {
            p.join(pid(i)).unwrap();
        }
        p.run_until(rc.rounds).unwrap();
        let sim = plain_sim(&rc, peers as usize, &ds);
        let c = p.coordinator();
        let mine: Vec<_> = c.replicas().states().map(|(_, s)| (&s.theta, &s.buffers[0])).collect();
        let theirs = sim.replicas();
        assert_eq!(mine.len(), theirs.len());
        for (k, ((phi, m), (sphi, sm))) in mine.iter().zip(&theirs).enumerate() {
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same(phi, sphi) && same(m, sm), "{peers} peers: replica {k} is the simulator's");
        }
        // Two pairs drift apart (there is no global model); one triple stays one replica.
        let apart = mine.iter().any(|r| r.0 != mine[0].0);
        assert_eq!(apart, peers == 4, "{peers} peers");
        for i in 1..=peers {
            assert_eq!(p.peer_state(&pid(i)), expected_state(&p, i));
        }
        let agreed =
            p.records.iter().filter(|r| matches!(r, Record::Report { agrees: true, computed: true, .. }));
        assert_eq!(agreed.count(), peers as usize * rc.rounds as usize, "every replica checked and agreed");
        // Each trainer fetched each partner's Δ and φ from the partner itself; not a φ that is
        // the same blob as its own (every φ is θ₀ in round 0, and a triple stays one replica).
        let (partners, phi_rounds) = if apart { (1, rc.rounds - 1) } else { (2, 0) };
        assert_eq!(p.peer_fetches, partners * peers as u64 * (rc.rounds + phi_rounds));
        let spreads: Vec<f64> = p
            .records
            .iter()
            .filter_map(|r| match r {
                Record::RoundClosed { spread, .. } => *spread,
                _ => None,
            })
            .collect();
        assert_eq!(spreads.len() as u64, rc.rounds, "the spread is recorded every round");
        assert!(spreads.iter().all(|s| s.is_finite() && (*s > 0.0) == apart), "{spreads:?}");
    }
}

#[test]
fn a_crash_mid_round_is_survived_and_its_unit_reassigned() {
    let ds = dataset("crash");
    // Silence is noticed (300 ms) well before the deadline (2 s) closes the round.
    let rc = RunConfig { silence_ms: 300, min_round_ms: 2000, ..run_cfg(3) };
    let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
    for i in 1..=3 {
        p.join(pid(i)).unwrap();
    }
    p.crash_in_round(&pid(2), 1);
    p.run_until(rc.rounds).unwrap();
    assert!(p.events.contains(&Event::Left(pid(2))));
    assert!(p.events.contains(&Event::RoundClosed {
        round: 1,
        accepted: 2,
        rejected: 1,
        reassigned: 1,
        spread: None
    }));
    // Round 2 hands the missed unit (1, 1) out first, to the lowest peer id.
    let r2 = p
        .records
        .iter()
        .find_map(|r| match r {
            Record::RoundStarted { round: 2, start: Message::RoundStart { assignments, .. } } => {
                Some(assignments.clone())
            }
            _ => None,
        })
        .unwrap();
    let units: Vec<_> = r2.iter().map(|a| (a.peer, a.data_round, a.slot)).collect();
    assert_eq!(units, [(pid(1), 1, 1), (pid(3), 2, 0)]);
    // Each round closed exactly once, and the survivors agree with the coordinator.
    assert_eq!(closes(&p), [0, 1, 2, 3]);
    for i in [1, 3] {
        assert_eq!(p.peer_state(&pid(i)), Some((rc.rounds, p.coordinator().state_hash())));
    }
}

#[test]
fn a_late_joiner_syncs_from_the_checkpoint_and_contributes() {
    let ds = dataset("join");
    let rc = run_cfg(2);
    let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
    p.join(pid(1)).unwrap();
    p.join(pid(2)).unwrap();
    p.run_until(2).unwrap();
    p.join(pid(3)).unwrap();
    p.run_until(rc.rounds).unwrap();
    let accepted_late = p.records.iter().any(|r| {
        matches!(r, Record::RoundClosed { round, accept: Message::Accept { accepted, .. }, .. }
            if *round >= 2 && accepted.contains(&pid(3)))
    });
    assert!(accepted_late, "the late joiner's updates were accepted");
    assert!(p.peer_fetches >= 1, "the joiner took the checkpoint from a member, not the coordinator");
    assert_eq!(p.peer_state(&pid(3)), Some((rc.rounds, p.coordinator().state_hash())));
}

/// Churn for every networked algorithm: a trainer dies mid-round and another joins late; the
/// run goes on, each round closes once, and every live trainer holds the coordinator's state.
#[test]
fn every_networked_algorithm_survives_a_crash_and_a_late_join() {
    let ds = dataset("churn");
    for (algo, h) in [
        (Algorithm::Ddp, 1),
        (Algorithm::DiLoCo, 3),
        (Algorithm::SparseLoCo, 3),
        (Algorithm::DeMo, 1),
        (Algorithm::NoLoCo, 3),
    ] {
        let rc = RunConfig { silence_ms: 300, min_round_ms: 2000, ..run_cfg(3) }.with(|c| {
            c.algo = algo;
            c.inner_steps = h;
            c.rounds = 5;
        });
        let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
        for i in 1..=3 {
            p.join(pid(i)).unwrap();
        }
        p.crash_in_round(&pid(2), 1);
        p.run_until(2).unwrap();
        p.join(pid(4)).unwrap();
        p.run_until(rc.rounds).unwrap();
        assert!(p.events.contains(&Event::Left(pid(2))), "{algo}");
        assert_eq!(closes(&p), (0..rc.rounds).collect::<Vec<_>>(), "{algo}: each round closes once");
        for i in [1, 3, 4] {
            assert_eq!(p.peer_state(&pid(i)), expected_state(&p, i), "{algo}: peer {i}");
            assert_eq!(p.coordinator().round(), rc.rounds);
        }
        let bad = p.records.iter().filter(|r| matches!(r, Record::Report { agrees: false, .. })).count();
        assert_eq!(bad, 0, "{algo}: no disagreement");
    }
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>().sqrt()
}

/// The model-replacement attack: one of four trainers sends, within the norm bound, the update
/// that would land the shared model on a target θ* in one round. Clipping every update to 3×
/// the round's median norm bounds each round's pull to that of a few honest updates; without
/// the clip the model jumps to θ* in the first round (later rounds' poison repeats the first
/// and is refused as a replay).
#[test]
fn robust_aggregation_bounds_the_model_replacement_attack() {
    let ds = dataset("poison");
    // Screening and clipping alone (the drills run them with the spot checks).
    let rc = RunConfig { validate: tessera_coord::Validate::Off, ..run_cfg(4) }.with(|c| c.rounds = 3);
    let honest = peers_from_the_start_equal_the_simulator(&rc, 4, &ds).coordinator().global().theta.clone();
    let start = RunSpec::new(rc.clone()).unwrap().initial_state().theta;
    let target: Vec<f32> = start.iter().map(|x| x + 0.5).collect();
    let poisoned = |rc: &RunConfig| {
        let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
        for i in 1..=4 {
            p.join(pid(i)).unwrap();
        }
        p.cheat(&pid(1), tessera_coord::Cheat::Poison { target: target.clone(), peers: 4 });
        p.run_until(rc.rounds).unwrap();
        let accepted = p.records.iter().any(|r| {
            matches!(r, Record::RoundClosed { accept: Message::Accept { accepted, .. }, .. } if accepted.contains(&pid(1)))
        });
        assert!(accepted, "the poison is within every bound: it is accepted");
        // Each round the poison is clipped, or refused outright: pointing at θ* from a model
        // that barely moved, it repeats its earlier update (a replay, cosine > 0.99).
        let clipped =
            p.events.iter().filter(|e| matches!(e, tessera_coord::Event::Clipped { count: 1, .. })).count();
        let replays = p.refused(&pid(1)).iter().filter(|r| **r == tessera_coord::Reject::Replayed).count();
        let want = if rc.clip_median > 0.0 { rc.rounds } else { replays as u64 };
        assert!(clipped >= usize::from(rc.clip_median > 0.0));
        assert_eq!((clipped + replays) as u64, want, "{clipped} clipped, {replays} refused");
        p.coordinator().global().theta.clone()
    };
    let gap = distance(&honest, &target);
    let clipped = poisoned(&rc);
    let open = poisoned(&rc.clone().with(|c| c.clip_median = 0.0));
    let (moved_clipped, moved_open) = (distance(&clipped, &honest) / gap, distance(&open, &honest) / gap);
    eprintln!("pull toward θ*: clipped {moved_clipped:.3}, unclipped {moved_open:.3} (of the gap {gap:.1})");
    assert!(moved_open > 0.8, "without the clip the attack takes the model: {moved_open}");
    assert!(moved_clipped < 0.05, "the clip bounds it: {moved_clipped} of the gap (unclipped {moved_open})");
}

/// A trainer that resubmits another's update of the round, and one that resubmits its own
/// earlier update under the new round's number, are refused with a typed reason; the
/// trainer copied from and every honest trainer are never refused. With a dense codec
/// (DiLoCo) a bit-for-bit replay of an earlier round's update is proof: the cheat is slashed
/// and refused from then on (so refused once); with a sparse one (SparseLoCo), whose honest
/// updates could coincide, it is refused every round and never slashed. A copy within the
/// round is refused every round but never proven by screening (which of two identical
/// commits is the copy, arrival order cannot tell).
#[test]
fn copied_and_replayed_updates_are_refused_and_nobody_honest_is() {
    use tessera_coord::{Cheat, Reject};
    let ds = dataset("copies");
    for algo in [Algorithm::DiLoCo, Algorithm::SparseLoCo] {
        // Screening alone (the drills run it with the spot checks).
        let rc = RunConfig { validate: tessera_coord::Validate::Off, ..run_cfg(4) }.with(|c| c.algo = algo);
        let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
        for i in 1..=4 {
            p.join(pid(i)).unwrap();
        }
        p.cheat(&pid(3), Cheat::Copy { of: pid(1) });
        p.cheat(&pid(2), Cheat::Replay);
        p.run_until(rc.rounds).unwrap();
        let proof = algo == Algorithm::DiLoCo;
        let copies = p.refused(&pid(3));
        assert_eq!(copies.len() as u64, rc.rounds, "{algo}: {copies:?}");
        assert!(copies
            .iter()
            .all(|r| matches!(r, Reject::Copy { of } if *of == tessera_tensor::hex(&pid(1)[..4]))));
        let replays = p.refused(&pid(2));
        let want = if proof { 1 } else { rc.rounds - 1 }; // round 0 has nothing to replay
        assert_eq!(replays.len() as u64, want, "{algo}: {replays:?}");
        assert!(replays.iter().all(|r| *r == Reject::Replayed));
        let accounts = p.coordinator().accounts().unwrap();
        let slashed = |i: u8| accounts.get(&pid(i)).unwrap().slashed;
        assert_eq!((slashed(3) > 0, slashed(2) > 0), (false, proof), "{algo}: slashed when proven");
        let banned: Vec<_> = p.coordinator().banned().map(|(peer, round)| (*peer, *round)).collect();
        assert_eq!(banned.len(), usize::from(proof), "{algo}: {banned:?}");
        for honest in [1, 4] {
            assert!(p.refused(&pid(honest)).is_empty(), "{algo}: no honest trainer is refused");
            assert_eq!(slashed(honest), 0, "{algo}: nor slashed");
        }
        assert_eq!(closes(&p), (0..rc.rounds).collect::<Vec<_>>());
    }
}

/// Checking changes nothing an honest run computes: with a validator checking every update,
/// with the coordinator checking them itself, and with no checks at all, the run reaches the
/// same state bit for bit; the validator settles every check, each a pass.
#[test]
fn spot_checks_by_a_validator_or_the_coordinator_leave_the_state_as_it_was() {
    use tessera_coord::{Behaviour, Validate};
    let ds = dataset("checks-same");
    let run = |validate: Validate, with_validator: bool| {
        let rc = RunConfig { validate, check_rate: 1.0, commit_every: 1, ..run_cfg(3) };
        let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
        if with_validator {
            p.join_validator(pid(9), Behaviour::Honest).unwrap();
        }
        for i in 1..=3 {
            p.join(pid(i)).unwrap();
        }
        p.run_until(rc.rounds).unwrap();
        let verdicts: Vec<(bool, Option<[u8; 32]>)> = p
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Verdict { outcome, by, .. } => Some((outcome.passed(), *by)),
                _ => None,
            })
            .collect();
        (p.coordinator().state_hash(), verdicts)
    };
    let (off, none) = run(Validate::Off, false);
    let (coord, by_coord) = run(Validate::Coordinator, false);
    let (valid, by_valid) = run(Validate::Validators, true);
    assert!(none.is_empty());
    assert_eq!(off, coord, "the coordinator's checks change no state");
    assert_eq!(off, valid, "a validator's checks change no state");
    let rounds = run_cfg(3).rounds as usize;
    assert_eq!(by_coord.len(), 3 * rounds, "every update checked");
    assert!(by_coord.iter().all(|v| *v == (true, None)), "all passed, by the coordinator");
    assert_eq!(by_valid.len(), 3 * rounds);
    assert!(by_valid.iter().all(|v| *v == (true, Some(pid(9)))), "all passed, by the validator");
}

/// Scoring inside the round: every accepted update is scored before the round closes (the
/// scores persisted before the `Accept`), and the model-replacement update, which applied
/// alone raises the held-out loss far beyond the tolerance, is left out as harmful; no honest
/// update is.
#[test]
fn updates_are_scored_in_the_round_and_a_harmful_one_is_left_out() {
    use tessera_coord::{Cheat, Reject, Validate};
    let ds = dataset("scores");
    let rc = RunConfig { validate: Validate::Off, score_batches: 2, harm_tolerance: 0.1, ..run_cfg(4) }
        .with(|c| c.rounds = 1);
    let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
    for i in 1..=4 {
        p.join(pid(i)).unwrap();
    }
    let target: Vec<f32> =
        RunSpec::new(rc.clone()).unwrap().initial_state().theta.iter().map(|x| x + 0.5).collect();
    p.cheat(&pid(4), Cheat::Poison { target, peers: 4 });
    p.run_until(1).unwrap();
    let scored: Vec<_> = p
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Scored { peer, score, harmful, .. } => Some((*peer, score.held_out, *harmful)),
            _ => None,
        })
        .collect();
    assert_eq!(scored.len(), 4, "every accepted update is scored: {scored:?}");
    for (peer, gain, harmful) in &scored {
        assert_eq!(*harmful, *peer == pid(4), "{gain}: only the poison is harmful");
    }
    assert!(matches!(p.refused(&pid(4))[..], [Reject::Harmful { .. }]), "{:?}", p.refused(&pid(4)));
    let closed = p.records.iter().position(|r| matches!(r, Record::RoundClosed { .. })).unwrap();
    let last_score = p.records.iter().rposition(|r| matches!(r, Record::Scored { .. })).unwrap();
    assert!(last_score < closed, "scores are persisted before the round closes");
    for i in 1..=3 {
        assert!(p.refused(&pid(i)).is_empty(), "honest trainer {i} is never refused");
    }
}

/// Regression (issue: hostile peers): a member that heartbeats but never commits kept every
/// round at the configured timeout (its round time is never known), for as long as it stayed.
/// Now the deadline is `slack ×` a quantile of the known round times, and a member that
/// commits nothing for `MAX_MISSED_ROUNDS` rounds in a row is dropped.
#[test]
fn a_member_that_never_commits_sets_nobodys_deadline_and_is_dropped() {
    let ds = dataset("stall");
    let rc = RunConfig { round_timeout_ms: 300_000, ..run_cfg(4) }.with(|c| c.rounds = 6);
    let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
    for i in 1..=4 {
        p.join(pid(i)).unwrap();
    }
    p.miss_every(&pid(4), 1);
    p.run_until(1).unwrap(); // round 0: every round time is unknown, so the full timeout
    let t1 = p.now_ms();
    p.run_until(rc.rounds).unwrap();
    let per_round = (p.now_ms() - t1) / (rc.rounds - 1);
    assert!(per_round < rc.round_timeout_ms / 20, "{per_round} ms a round, not {}", rc.round_timeout_ms);
    let left = p.events.iter().any(|e| matches!(e, tessera_coord::Event::Left(who) if *who == pid(4)));
    assert!(left, "the member that never commits is dropped");
    assert!(!p.coordinator().members().any(|m| *m == pid(4)));
    let missed = p
        .records
        .iter()
        .filter(|r| {
            matches!(r, Record::RoundClosed { accept: Message::Accept { rejected, .. }, .. }
                if rejected.iter().any(|(who, _)| *who == pid(4)))
        })
        .count();
    assert_eq!(missed, tessera_coord::MAX_MISSED_ROUNDS as usize, "dropped after its third missed round");
    for honest in 1..=3 {
        assert!(p.refused(&pid(honest)).is_empty(), "{honest}");
    }
    eprintln!("{per_round} ms a round after round 0 (timeout {} ms)", rc.round_timeout_ms);
}

/// Regression (issue: hostile peers): the coordinator lingered at the end until it had as
/// many final reports as members, so one member repeating its report cut the linger short
/// for the others. Every member must have reported, each counting once.
#[test]
fn the_end_of_a_run_waits_for_every_member_not_for_a_count_of_reports() {
    let ds = dataset("final-reports");
    let rc = run_cfg(3).with(|c| c.rounds = 2);
    let mut p = ProtocolSim::new(rc.clone(), &ds).unwrap();
    for i in 1..=3 {
        p.join(pid(i)).unwrap();
    }
    p.crash_in_round(&pid(3), 1); // a member that will not report the final state
    p.run_until(rc.rounds).unwrap();
    assert!(p.coordinator().is_finished());
    let members: Vec<_> = p.coordinator().members().copied().collect();
    assert!(members.contains(&pid(3)), "not yet dropped for silence: {members:?}");
    assert!(!p.coordinator().all_reported(), "member 3 has not reported");
    let state_hash = p.coordinator().state_hash();
    for i in 0..10 {
        let m = Message::StateReport { round: rc.rounds, state_hash, computed: true };
        p.deliver_to_coordinator(tessera_coord::Signed { sender: pid(1), seq: (1 << 40) + i, message: m });
    }
    assert!(!p.coordinator().all_reported(), "ten reports from member 1 count once");
    let m = Message::StateReport { round: rc.rounds, state_hash, computed: true };
    p.deliver_to_coordinator(tessera_coord::Signed { sender: pid(3), seq: 1 << 40, message: m });
    assert!(p.coordinator().all_reported(), "once member 3 reports, everyone has");
}

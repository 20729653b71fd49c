//! Property tests: any message within the limits round-trips through a signed frame, and any
//! byte string decodes to a value or a typed error, never a panic.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;

/// Round numbers within the wire's limit.
fn round_in_limits() -> impl Strategy<Value = u64> {
    0..=tessera_wire::MAX_ROUND
}
use tessera_wire::*;

fn id() -> impl Strategy<Value = [u8; 32]> + Clone {
    any::<[u8; 32]>()
}

fn message() -> impl Strategy<Value = Message> {
    let ids = proptest::collection::vec(id(), 0..8);
    prop_oneof![
        proptest::collection::vec("[a-z0-9.:]{0,40}", 0..MAX_ADDRS)
            .prop_map(|addrs| Message::Join { addrs, stake: 1_000 }),
        (
            round_in_limits(),
            id(),
            id(),
            "[ -~]{0,200}",
            proptest::collection::vec((id(), "[0-9.:]{0,21}"), 0..4)
        )
            .prop_map(|(round, checkpoint, state_hash, config, peers)| Message::Welcome {
                round,
                checkpoint,
                state_hash,
                config,
                peers
            }),
        (round_in_limits(), any::<u64>()).prop_map(|(round, step)| Message::Heartbeat { round, step }),
        (round_in_limits(), id(), any::<u64>(), ids.clone(), any::<u64>()).prop_map(
            |(round, state_hash, seed, members, deadline_ms)| {
                let assignments = members
                    .iter()
                    .enumerate()
                    .map(|(k, p)| Assignment { peer: *p, data_round: round, slot: k as u64 })
                    .collect();
                let addrs = members.iter().map(|p| format!("127.0.0.1:{}", p[0])).collect();
                let replicas = if seed % 2 == 0 { members.clone() } else { vec![] };
                Message::RoundStart {
                    round,
                    state_hash,
                    seed,
                    members,
                    addrs,
                    assignments,
                    deadline_ms,
                    replicas,
                }
            }
        ),
        (round_in_limits(), id(), id(), any::<u64>(), id(), id()).prop_map(
            |(round, state, update, update_len, start_hash, end_hash)| {
                Message::Commit {
                    round,
                    state,
                    update,
                    update_len,
                    start_hash,
                    end_hash,
                    root: update,
                    loss_milli: 0,
                    sig: vec![],
                }
            }
        ),
        (
            round_in_limits(),
            ids,
            proptest::collection::vec((id(), "[ -~]{0,60}"), 0..6),
            any::<Option<[u8; 32]>>(),
            id()
        )
            .prop_map(|(round, accepted, rejected, aggregate, next_state_hash)| Message::Accept {
                round,
                updates: accepted
                    .iter()
                    .map(|p: &[u8; 32]| {
                        let mut h = *p;
                        h[0] ^= 1;
                        h
                    })
                    .collect(),
                pairs: (round % 2 == 0).then(|| tessera_wire::Pairs {
                    groups: accepted.chunks(2).map(<[_]>::to_vec).collect(),
                    phis: accepted.clone(),
                    replicas: accepted.iter().map(|p| (*p, *p)).collect(),
                }),
                accepted,
                rejected,
                aggregate,
                next_state_hash,
                ledger: (round % 3 == 0).then_some((round, next_state_hash)),
            }),
        (round_in_limits(), id(), any::<bool>())
            .prop_map(|(round, state_hash, computed)| Message::StateReport { round, state_hash, computed }),
        (round_in_limits(), id(), id()).prop_map(|(round, checkpoint, state_hash)| {
            Message::CheckpointPointer { round, checkpoint, state_hash }
        }),
        (round_in_limits(), id()).prop_map(|(round, state_hash)| Message::Done { round, state_hash }),
        (round_in_limits(), any::<u32>()).prop_map(|(round, segment)| Message::Challenge { round, segment }),
        (round_in_limits(), id(), any::<u32>(), 0u8..5).prop_map(|(round, peer, segment, f)| {
            Message::Verdict {
                round,
                peer,
                segment,
                finding: [
                    tessera_wire::Finding::Pass,
                    tessera_wire::Finding::Mismatch,
                    tessera_wire::Finding::WrongUpdate,
                    tessera_wire::Finding::BadReveal,
                    tessera_wire::Finding::Unchecked,
                ][f as usize],
                reached: (f == 1).then_some(peer),
            }
        }),
        (round_in_limits(), id(), any::<u64>(), any::<u64>()).prop_map(|(round, peer, step, op)| {
            let question = tessera_wire::Question::Prefix { step, op };
            Message::DisputeAsk { round, peer, question }
        }),
        (round_in_limits(), id(), prop::collection::vec(id(), 0..20)).prop_map(|(round, peer, hs)| {
            let answer = tessera_wire::Answer::Entry { kernel: peer, inputs: hs.clone(), outputs: hs };
            let question = tessera_wire::Question::Entry { step: round, op: 1 };
            Message::DisputeAnswer { round, peer, question, answer }
        }),
        (round_in_limits(), id(), id(), any::<bool>()).prop_map(|(round, peer, blob, last)| {
            Message::CheckTask {
                round,
                peer,
                addr: "127.0.0.1:1".into(),
                segment: 3,
                unit: (round, 1),
                blob,
                start: peer,
                end: blob,
                rederive: last.then_some((blob, peer)),
            }
        }),
        (round_in_limits(), any::<u32>(), id(), id(), prop::collection::vec(id(), 0..20)).prop_map(
            |(round, segment, blob, hash, proof)| Message::Reveal {
                round,
                segment,
                blob,
                start: tessera_wire::Leaf { hash, proof: proof.clone() },
                end: tessera_wire::Leaf { hash: blob, proof },
            }
        ),
    ]
}

proptest! {
    // Hermetic: a fixed seed and no regression files written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7e55e7a),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn signed_frames_round_trip(m in message(), secret in any::<[u8; 32]>(), seq in any::<u64>()) {
        let key = SigningKey::from_bytes(&secret);
        let frame = encode(&key, seq, &m).unwrap();
        let s = decode(&frame).unwrap();
        prop_assert_eq!(s.message, m);
        prop_assert_eq!(s.seq, seq);
        prop_assert_eq!(s.sender, key.verifying_key().to_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }
}

//! Round trips, canonical bytes, forged and malformed frames.

use ed25519_dalek::SigningKey;
use tessera_tensor::rng::Philox;
use tessera_wire::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn h(r: &Philox, i: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (k, b) in out.iter_mut().enumerate() {
        *b = r.u64(9, i * 32 + k as u64) as u8;
    }
    out
}

/// A random message of kind `kind % 15`, drawn from the counter-based RNG.
fn random_message(r: &Philox, i: u64) -> Message {
    let n = r.below(1, i, 5) as usize;
    let ids: Vec<[u8; 32]> = (0..n as u64).map(|k| h(r, i * 100 + k)).collect();
    let round = r.u64(2, i) % (tessera_wire::MAX_ROUND + 1);
    match r.below(3, i, 21) {
        0 => Message::Join {
            addrs: (0..n).map(|k| format!("127.0.0.1:{}", 1000 + k)).collect(),
            stake: r.u64(15, i),
        },
        1 => Message::Welcome {
            round,
            checkpoint: h(r, i),
            state_hash: h(r, i + 1),
            config: format!("preset = \"tiny\"\nrounds = {round}\n"),
            peers: vec![(h(r, i), "127.0.0.1:9".into())],
        },
        2 => Message::Heartbeat { round, step: r.u64(4, i) },
        3 => Message::RoundStart {
            round,
            state_hash: h(r, i),
            seed: r.u64(5, i),
            assignments: ids
                .iter()
                .enumerate()
                .map(|(k, p)| Assignment { peer: *p, data_round: round, slot: k as u64 })
                .collect(),
            addrs: ids.iter().map(|p| format!("10.0.0.{}:4000", p[0])).collect(),
            replicas: if i.is_multiple_of(2) { ids.clone() } else { vec![] },
            members: ids,
            deadline_ms: r.u64(6, i),
        },
        4 => Message::Commit {
            round,
            state: h(r, i + 3),
            update: h(r, i),
            update_len: r.u64(7, i),
            start_hash: h(r, i + 1),
            end_hash: h(r, i + 2),
            root: h(r, i + 4),
            loss_milli: 0,
            sig: vec![r.u64(8, i) as u8; 64 * (i % 2) as usize],
        },
        5 => Message::Accept {
            round,
            rejected: ids.iter().map(|p| (*p, "norm too large".to_string())).collect(),
            updates: ids.clone(),
            pairs: i.is_multiple_of(3).then(|| tessera_wire::Pairs {
                groups: ids.chunks(2).map(<[_]>::to_vec).collect(),
                phis: ids.clone(),
                replicas: ids.iter().map(|p| (*p, h(r, i + 7))).collect(),
            }),
            accepted: ids,
            aggregate: i.is_multiple_of(2).then(|| h(r, i + 5)),
            next_state_hash: h(r, i),
            ledger: i.is_multiple_of(2).then(|| (r.u64(16, i), h(r, i + 8))),
        },
        6 => Message::StateReport { round, state_hash: h(r, i), computed: i.is_multiple_of(2) },
        7 => Message::CheckpointPointer { round, checkpoint: h(r, i), state_hash: h(r, i + 3) },
        8 => Message::Challenge { round, segment: r.below(7, i, 64) as u32 },
        9 => Message::Reveal {
            round,
            segment: r.below(7, i, 64) as u32,
            blob: h(r, i),
            start: Leaf { hash: h(r, i + 1), proof: ids.clone() },
            end: Leaf { hash: h(r, i + 2), proof: ids.iter().rev().copied().collect() },
        },
        10 => Message::JoinValidator { addrs: vec![format!("10.0.0.{n}:4000")], stake: r.u64(15, i) },
        11 => Message::CheckTask {
            round,
            peer: h(r, i),
            addr: "127.0.0.1:4000".into(),
            segment: r.below(7, i, 64) as u32,
            unit: (round, r.u64(8, i)),
            blob: h(r, i + 1),
            start: h(r, i + 2),
            end: h(r, i + 3),
            rederive: i.is_multiple_of(2).then(|| (h(r, i + 4), h(r, i + 5))),
        },
        12 => Message::Verdict {
            round,
            peer: h(r, i),
            segment: r.below(7, i, 64) as u32,
            finding: [
                Finding::Pass,
                Finding::Mismatch,
                Finding::WrongUpdate,
                Finding::BadReveal,
                Finding::Unchecked,
            ][r.below(8, i, 5) as usize],
            reached: i.is_multiple_of(3).then(|| h(r, i + 6)),
        },
        13 => Message::Refused {
            round,
            reason: "re-running the segment does not reach the committed state".into(),
        },
        14 => Message::DisputeAsk {
            round,
            peer: h(r, i),
            question: match r.below(9, i, 5) {
                0 => Question::State { step: r.u64(10, i) },
                1 => Question::Prefix { step: r.u64(10, i), op: r.u64(11, i) },
                2 => Question::Entry { step: r.u64(10, i), op: r.u64(11, i) },
                3 => Question::Inputs { step: r.u64(10, i), op: r.u64(11, i) },
                _ => Question::StateBlob { step: r.u64(10, i) },
            },
        },
        15 => Message::DisputeAnswer {
            round,
            peer: h(r, i),
            question: Question::State { step: r.u64(10, i) },
            answer: match r.below(9, i, 3) {
                0 => Answer::Hash(h(r, i + 1)),
                1 => Answer::Entry { kernel: h(r, i + 1), inputs: ids.clone(), outputs: ids.clone() },
                _ => Answer::Blob { hash: h(r, i + 1), len: r.u64(12, i) },
            },
        },
        16 => Message::ScoreTask {
            round,
            peer: h(r, i),
            addr: "127.0.0.1:4000".into(),
            unit: (round, r.u64(8, i)),
            update: h(r, i + 1),
            update_len: r.u64(12, i),
            state: h(r, i + 2),
            batches: r.below(13, i, 64),
        },
        17 => Message::ScoreReport {
            round,
            peer: h(r, i),
            score: i
                .is_multiple_of(2)
                .then(|| [(r.u64(14, i) as f64 / 7.0).to_bits(), (-0.25f64).to_bits(), 3]),
            sig: vec![r.u64(15, i) as u8; 64 * (i % 2) as usize],
        },
        18 => Message::LedgerFetch { from: r.u64(17, i) },
        19 => {
            Message::LedgerRecords { from: r.u64(17, i), records: ids.iter().map(|x| x.to_vec()).collect() }
        }
        _ => Message::Done { round, state_hash: h(r, i) },
    }
}

#[test]
fn random_messages_round_trip_and_encode_canonically() {
    let r = Philox::new(1);
    for i in 0..500 {
        let m = random_message(&r, i);
        let k = key((i % 7) as u8 + 1);
        let frame = encode(&k, i, &m).unwrap();
        assert_eq!(encode(&k, i, &m).unwrap(), frame, "same message, same bytes");
        let s = decode(&frame).unwrap();
        assert_eq!((s.sender, s.seq, &s.message), (k.verifying_key().to_bytes(), i, &m));
    }
}

#[test]
fn forged_and_malformed_frames_are_refused_with_typed_errors() {
    let m = Message::StateReport { round: 3, state_hash: [7; 32], computed: true };
    let frame = encode(&key(1), 5, &m).unwrap();
    // A flipped bit anywhere in the signed part breaks the signature (or the decoding).
    let mut bad = frame.clone();
    let last_body = bad.len() - 65;
    bad[last_body] ^= 1;
    assert!(matches!(decode(&bad), Err(WireError::BadSignature) | Err(WireError::Decode(_))));
    // Claiming another sender: signed by key 2 but naming key 1 inside.
    let mut forged = encode(&key(2), 5, &m).unwrap();
    let real = encode(&key(1), 5, &m).unwrap();
    forged[10..42].copy_from_slice(&real[10..42]);
    assert_eq!(decode(&forged), Err(WireError::BadSignature));
    assert_eq!(decode(&frame[..20]), Err(WireError::Truncated(20)));
    let mut wrong_len = frame.clone();
    wrong_len[6] ^= 1;
    assert!(matches!(decode(&wrong_len), Err(WireError::Length { .. })));
    let mut v2 = frame.clone();
    v2[4] = 1;
    assert_eq!(decode(&v2), Err(WireError::Version(1)));
    assert_eq!(decode(&[0u8; 100]), Err(WireError::Magic));
    let huge = vec![0u8; MAX_FRAME + 1];
    assert_eq!(decode(&huge), Err(WireError::TooLarge(MAX_FRAME + 1)));
    let too_many = Message::Join { addrs: vec!["a".into(); MAX_ADDRS + 1], stake: 0 };
    assert!(matches!(encode(&key(1), 0, &too_many), Err(WireError::Limit { .. })));
    let long_proof = Leaf { hash: [0; 32], proof: vec![[0; 32]; MAX_PROOF + 1] };
    let reveal = Message::Reveal {
        round: 0,
        segment: 0,
        blob: [0; 32],
        start: long_proof.clone(),
        end: Leaf { hash: [0; 32], proof: vec![] },
    };
    assert!(matches!(encode(&key(1), 0, &reveal), Err(WireError::Limit { what: "proof length", .. })));
    let entry = Answer::Entry { kernel: [0; 32], inputs: vec![[0; 32]; MAX_OP_IO + 1], outputs: vec![] };
    let question = Question::Entry { step: 0, op: 1 };
    let answer = Message::DisputeAnswer { round: 0, peer: [0; 32], question, answer: entry };
    assert!(matches!(encode(&key(1), 0, &answer), Err(WireError::Limit { what: "operator inputs", .. })));
    // NoLoCo's lists must line up with the members and the accepted peers they describe.
    let ids = vec![[1u8; 32], [2u8; 32]];
    let start = Message::RoundStart {
        round: 0,
        state_hash: [0; 32],
        seed: 1,
        members: ids.clone(),
        addrs: vec![String::new(); 2],
        assignments: vec![],
        deadline_ms: 1,
        replicas: vec![[3; 32]],
    };
    assert!(matches!(
        encode(&key(1), 0, &start),
        Err(WireError::Limit { what: "replicas (none, or one per member)", .. })
    ));
    let accept = Message::Accept {
        round: 0,
        accepted: ids.clone(),
        updates: ids.clone(),
        rejected: vec![],
        aggregate: None,
        next_state_hash: [0; 32],
        pairs: Some(tessera_wire::Pairs { groups: vec![ids.clone()], phis: vec![[4; 32]], replicas: vec![] }),
        ledger: None,
    };
    assert!(matches!(
        encode(&key(1), 0, &accept),
        Err(WireError::Limit { what: "φ blobs (one per accepted peer)", .. })
    ));
}

#[test]
fn garbage_and_corruption_never_panic() {
    let r = Philox::new(2);
    let frames: Vec<Vec<u8>> = (0..50).map(|i| encode(&key(3), i, &random_message(&r, i)).unwrap()).collect();
    for t in 0..20_000u64 {
        let mut f = frames[(t % 50) as usize].clone();
        match t % 3 {
            0 => {
                let pos = r.below(10, t, f.len() as u64) as usize;
                f[pos] ^= 1 << r.below(11, t, 8);
            }
            1 => f.truncate(r.below(12, t, f.len() as u64) as usize),
            _ => {
                let len = r.below(13, t, 300) as usize;
                f = (0..len as u64).map(|i| r.u64(14, t * 300 + i) as u8).collect();
                if len >= 4 {
                    f[..4].copy_from_slice(MAGIC);
                }
            }
        }
        let _ = decode(&f);
    }
}

/// Writes valid frames of every message kind as the fuzz seed corpus (run by hand; see
/// fuzz/README.md): `cargo test -p tessera-wire --test wire -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/wire_decode; run by hand"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let r = Philox::new(3);
    for i in 0..32u64 {
        let frame = encode(&key(4), i, &random_message(&r, i)).unwrap();
        std::fs::write(dir.join(format!("frame-{i:02}")), frame).unwrap();
    }
}

/// Regression (issue: hostile peers): a round number past `MAX_ROUND` is refused with a typed
/// error, sending or receiving, so no peer's round can overflow the protocol's arithmetic.
#[test]
fn a_round_past_the_limit_is_refused() {
    let at = Message::Heartbeat { round: tessera_wire::MAX_ROUND, step: 0 };
    assert!(encode(&key(1), 1, &at).is_ok());
    let past = Message::Done { round: u64::MAX, state_hash: [0; 32] };
    assert!(matches!(encode(&key(1), 1, &past), Err(WireError::Limit { what: "round", .. })));
    assert!(matches!(past.check_limits(), Err(WireError::Limit { what: "round", .. })));
}

/// A frame's sender can be read before its signature is checked (so a receiver drops a frame
/// naming someone other than its connection's peer for free); garbage names nobody.
#[test]
fn the_sender_is_read_without_verifying() {
    let m = Message::Heartbeat { round: 1, step: 2 };
    let frame = encode(&key(3), 9, &m).unwrap();
    assert_eq!(tessera_wire::sender_of(&frame), Some(key(3).verifying_key().to_bytes()));
    let mut forged = frame.clone();
    forged[20] ^= 1; // inside the named sender
    assert_ne!(tessera_wire::sender_of(&forged), Some(key(3).verifying_key().to_bytes()));
    assert!(decode(&forged).is_err(), "and it does not verify");
    assert_eq!(tessera_wire::sender_of(b"not a frame"), None);
    assert_eq!(tessera_wire::sender_of(&frame[..40]), None);
}

/// The coordinator's longest messages, listing `MAX_MEMBERS` members with the longest
/// addresses and reasons, with the largest numbers, encode within `MAX_FRAME` (so the limits
/// agree with each other), and decode again; a member's longest message, a dispute answer of
/// `MAX_OP_IO` hashes each way, fits what a coordinator reads.
#[test]
fn the_longest_messages_fit_their_frames() {
    let ids: Vec<PeerId> = (0..MAX_MEMBERS as u64)
        .map(|i| {
            let mut p = [0xffu8; 32];
            p[..8].copy_from_slice(&i.to_le_bytes());
            p
        })
        .collect();
    let addr = "a".repeat(MAX_TEXT);
    let big = MAX_ROUND;
    let start = Message::RoundStart {
        round: big,
        state_hash: [0xff; 32],
        seed: u64::MAX,
        members: ids.clone(),
        addrs: vec![addr.clone(); MAX_MEMBERS],
        assignments: ids.iter().map(|&peer| Assignment { peer, data_round: big, slot: u64::MAX }).collect(),
        deadline_ms: u64::MAX,
        replicas: vec![[0xff; 32]; MAX_MEMBERS],
    };
    let accept = Message::Accept {
        round: big,
        accepted: ids.clone(),
        updates: vec![[0xff; 32]; MAX_MEMBERS],
        rejected: ids.iter().map(|&p| (p, addr.clone())).collect(),
        aggregate: Some([0xff; 32]),
        next_state_hash: [0xff; 32],
        pairs: Some(Pairs {
            groups: ids.chunks(2).map(<[PeerId]>::to_vec).collect(),
            phis: vec![[0xff; 32]; MAX_MEMBERS],
            replicas: ids.iter().map(|&p| (p, [0xff; 32])).collect(),
        }),
        ledger: Some((u64::MAX, [0xff; 32])),
    };
    let welcome = Message::Welcome {
        round: big,
        checkpoint: [0xff; 32],
        state_hash: [0xff; 32],
        config: "c".repeat(MAX_CONFIG),
        peers: ids.iter().map(|&p| (p, addr.clone())).collect(),
    };
    for m in [start, accept, welcome] {
        let frame = encode(&key(1), u64::MAX, &m).unwrap_or_else(|e| panic!("{}: {e}", m.kind()));
        assert!(
            frame.len() <= MAX_FRAME && frame.len() > MAX_PEER_FRAME,
            "{}: {} bytes",
            m.kind(),
            frame.len()
        );
        assert_eq!(decode(&frame).map(|s| s.message), Ok(m));
    }
    let hashes = vec![[0xffu8; 32]; MAX_OP_IO];
    let answer = Message::DisputeAnswer {
        round: big,
        peer: [0xff; 32],
        question: Question::Entry { step: u64::MAX, op: u64::MAX },
        answer: Answer::Entry { kernel: [0xff; 32], inputs: hashes.clone(), outputs: hashes },
    };
    let frame = encode(&key(2), u64::MAX, &answer).unwrap();
    assert!(frame.len() <= MAX_PEER_FRAME, "a dispute answer of {} bytes", frame.len());
}

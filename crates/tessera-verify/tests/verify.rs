//! Commitments, proofs, challenges and the bisection, checked exhaustively on small sizes.

use tessera_verify::{challenge, segments, Bisection, MerkleTree, Proof, RoundCommitment, Turn, VerifyError};

fn h(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

#[test]
fn every_leaf_of_every_small_tree_proves_and_nothing_else_does() {
    for n in 1..=70usize {
        let leaves: Vec<[u8; 32]> = (0..n as u64).map(h).collect();
        let t = MerkleTree::new(&leaves).unwrap();
        let root = t.root();
        for (i, l) in leaves.iter().enumerate() {
            let p = t.proof(i).unwrap();
            assert_eq!(MerkleTree::verify(&root, n, i, l, &p), Ok(()), "n {n} leaf {i}");
            // Another leaf's data, another index, another size: refused.
            assert_eq!(MerkleTree::verify(&root, n, i, &h(999), &p), Err(VerifyError::RootMismatch));
            if n > 1 {
                let j = (i + 1) % n;
                let e = MerkleTree::verify(&root, n, j, l, &p).unwrap_err();
                assert!(matches!(e, VerifyError::RootMismatch | VerifyError::ProofLength { .. }), "{e}");
            }
            if let Some(first) = p.siblings.first() {
                let mut bad = p.clone();
                bad.siblings[0] = [first[0] ^ 1; 32];
                assert_eq!(MerkleTree::verify(&root, n, i, l, &bad), Err(VerifyError::RootMismatch));
                let short = Proof { siblings: p.siblings[1..].to_vec() };
                assert!(matches!(
                    MerkleTree::verify(&root, n, i, l, &short),
                    Err(VerifyError::ProofLength { .. })
                ));
            }
        }
        assert_eq!(t.proof(n).unwrap_err(), VerifyError::Index { index: n, n });
        assert_eq!(
            MerkleTree::verify(&root, n, n, &leaves[0], &t.proof(0).unwrap()),
            Err(VerifyError::Index { index: n, n })
        );
    }
    assert_eq!(MerkleTree::new(&[]).unwrap_err(), VerifyError::Leaves(0));
}

#[test]
fn different_leaf_lists_never_share_a_root() {
    let (a, b, c) = (h(1), h(2), h(3));
    let roots = [
        MerkleTree::new(&[a, b, c]).unwrap().root(),
        MerkleTree::new(&[a, b, c, c]).unwrap().root(), // no duplication of an odd node
        MerkleTree::new(&[a, b]).unwrap().root(),
        MerkleTree::new(&[b, a]).unwrap().root(),
        MerkleTree::new(&[a]).unwrap().root(),
    ];
    for i in 0..roots.len() {
        for j in i + 1..roots.len() {
            assert_ne!(roots[i], roots[j], "{i} vs {j}");
        }
    }
    // Domain separation: a leaf is not its own root, and an inner node cannot pass as a leaf.
    assert_ne!(MerkleTree::new(&[a]).unwrap().root(), a);
    let inner = MerkleTree::new(&[a, b]).unwrap().root();
    assert_ne!(MerkleTree::new(&[inner]).unwrap().root(), inner);
}

#[test]
fn a_round_is_cut_into_segments_and_its_commitment_proves_each_state() {
    assert_eq!(segments(12, 5).unwrap(), [(0, 5), (5, 10), (10, 12)]);
    assert_eq!(segments(50, 5).unwrap().len(), 10);
    assert_eq!(segments(1, 5).unwrap(), [(0, 1)]);
    assert_eq!(segments(5, 0).unwrap_err(), VerifyError::Segments { steps: 5, k: 0 });
    let ends: Vec<[u8; 32]> = (10..13).map(h).collect();
    let c = RoundCommitment::new(h(0), ends.clone(), h(99), 12, 5).unwrap();
    assert_eq!(c.final_state(), h(12));
    assert_eq!((c.len(), c.update_leaf()), (5, 4));
    let t = c.tree();
    for (i, l) in c.leaves().iter().enumerate() {
        MerkleTree::verify(&c.root(), c.len(), i, l, &t.proof(i).unwrap()).unwrap();
    }
    assert_eq!(
        RoundCommitment::new(h(0), ends[..2].to_vec(), h(99), 12, 5).unwrap_err(),
        VerifyError::SegmentCount { got: 2, want: 3 }
    );
    // Any changed state changes the root.
    let mut forged = c.clone();
    forged.ends[1] = h(77);
    assert_ne!(forged.root(), c.root());
}

#[test]
fn challenges_are_fixed_by_their_inputs_and_spread_evenly() {
    let set = h(5);
    let n = 10;
    assert_eq!(challenge(&set, &h(1), &h(2), n), challenge(&set, &h(1), &h(2), n));
    let mut counts = vec![0u32; n];
    for t in 0..10_000u64 {
        counts[challenge(&set, &h(1), &h(t + 100), n)] += 1;
    }
    assert!(counts.iter().all(|&c| (850..=1150).contains(&c)), "{counts:?}");
    // Another commit set moves the draws: the trainer cannot know its segment in advance.
    let moved =
        (0..100u64).filter(|t| challenge(&set, &h(1), &h(*t), n) != challenge(&h(6), &h(1), &h(*t), n));
    assert!(moved.count() > 70);
    assert_eq!(challenge(&set, &h(1), &h(2), 1), 0);
}

#[test]
fn the_bisection_finds_the_first_disagreement_within_log2_questions() {
    for lo in [0u64, 7] {
        for len in 1..=130u64 {
            let hi = lo + len;
            for first_bad in lo + 1..=hi {
                let mut b = Bisection::new(lo, hi).unwrap();
                let decided = loop {
                    match b.turn() {
                        Turn::Decided(i) => break i,
                        // The challenger agrees with every state before the first bad one.
                        Turn::Reveal(i) => b.answer(i < first_bad).unwrap(),
                    }
                };
                assert_eq!(decided, first_bad, "{lo}..{hi}");
                assert!(b.exchanges() <= Bisection::max_exchanges(len), "{len}: {}", b.exchanges());
            }
        }
    }
    assert_eq!(Bisection::max_exchanges(50), 6);
    assert_eq!(Bisection::max_exchanges(1), 0);
    assert_eq!(Bisection::new(5, 5).unwrap_err(), VerifyError::Range { lo: 5, hi: 5 });
    let mut b = Bisection::new(0, 10).unwrap();
    assert_eq!(b.answer(true).unwrap_err(), VerifyError::NotAsked);
}

#[test]
fn a_difference_outside_the_traced_operators_is_settled_by_recomputing_the_step() {
    use tessera_verify::{Ask, Dispute, EntryHashes, Loser};
    // Both chains agree after the step's last operator, yet the states differ (a forged step
    // counter, say): the referee recomputes the step.
    let (t_state, v_state) = (h(1), h(2));
    let mut d = Dispute::new(3, 4, 200, h(0), [t_state, v_state]).unwrap();
    assert_eq!(d.ask(), Ask::Prefix { step: 3, op: 200 });
    d.revealed([h(9), h(9)]).unwrap();
    assert_eq!(d.ask(), Ask::RecomputeStep { step: 3 });
    let r = d.recomputed(&v_state).unwrap();
    assert_eq!((r.loser, r.step, r.op), (Loser::Trainer, 3, None));
    // An operator whose inputs the two sides name differently: recompute the step as well.
    let mut d = Dispute::new(0, 1, 2, h(0), [t_state, v_state]).unwrap();
    assert_eq!(d.ask(), Ask::Prefix { step: 0, op: 2 }, "one step: straight to its operators");
    d.revealed([h(5), h(6)]).unwrap(); // the chains differ at the end
    assert_eq!(d.ask(), Ask::Prefix { step: 0, op: 1 });
    d.revealed([h(7), h(8)]).unwrap(); // and already after the first operator
    assert_eq!(d.ask(), Ask::Entry { step: 0, op: 1 });
    let e = |i: u64| EntryHashes { kernel: h(50), inputs: vec![h(i)], outputs: vec![h(100 + i)] };
    d.entries([e(1), e(2)]).unwrap();
    assert_eq!(d.ask(), Ask::RecomputeStep { step: 0 });
    assert_eq!(d.recomputed(&t_state).unwrap().loser, Loser::Validator);
    // Both wrong: both lose. Moves out of turn are refused.
    let mut d = Dispute::new(0, 1, 1, h(0), [t_state, v_state]).unwrap();
    assert!(d.revealed([h(5), h(6)]).is_err(), "an answer before the question is refused");
    assert_eq!(d.ask(), Ask::Prefix { step: 0, op: 1 });
    d.revealed([h(5), h(6)]).unwrap();
    assert!(d.replayed(&[h(0)]).is_err());
    assert_eq!(d.ask(), Ask::Entry { step: 0, op: 1 });
    d.entries([e(1), e(1)]).unwrap();
    assert_eq!(d.ask(), Ask::ReplayOp { step: 0, op: 1 });
    assert_eq!(d.replayed(&[h(0)]).unwrap().loser, Loser::Both);
    // Two sides that name different kernels for the operator: the referee recomputes the step.
    let mut d = Dispute::new(0, 1, 1, h(0), [t_state, v_state]).unwrap();
    assert_eq!(d.ask(), Ask::Prefix { step: 0, op: 1 });
    d.revealed([h(5), h(6)]).unwrap();
    assert_eq!(d.ask(), Ask::Entry { step: 0, op: 1 });
    d.entries([e(1), EntryHashes { kernel: h(51), ..e(1) }]).unwrap();
    assert_eq!(d.ask(), Ask::RecomputeStep { step: 0 });
    assert_eq!(d.agreed(), (0, h(0)), "from the segment's start");
    // Nothing to dispute when both claim the same end.
    assert!(Dispute::new(0, 4, 10, h(0), [t_state, t_state]).is_err());
}

#[test]
fn the_step_bisection_tracks_the_state_the_disputed_step_starts_from() {
    use tessera_verify::{Ask, Dispute};
    let mut d = Dispute::new(0, 8, 10, h(0), [h(1), h(2)]).unwrap();
    // The sides agree on states 0..=5 and disagree from 6 on: step 5 is disputed.
    let step = loop {
        match d.ask() {
            Ask::State { step } if step <= 5 => d.revealed([h(10 + step), h(10 + step)]).unwrap(),
            Ask::State { step } => d.revealed([h(10 + step), h(20 + step)]).unwrap(),
            Ask::Prefix { step, .. } => break step,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(step, 5);
    assert_eq!(d.agreed(), (5, h(15)), "the referee recomputes step 5 from the agreed state 5");
    assert!(d.ruling().is_none());
}

#[test]
fn copies_scaled_or_noisy_are_found_and_independent_updates_are_not() {
    use tessera_verify::{copies, sample, values_hash, Samples};
    // Deterministic pseudo-random vectors of 100k values.
    let v = |seed: u64| -> Vec<f32> {
        (0..100_000u64).map(|i| ((h(seed * 1_000_003 + i)[0] as f32) - 127.5) / 128.0).collect()
    };
    let (a, b) = (v(1), v(2));
    let scaled: Vec<f32> = a.iter().map(|x| 2.0 * x).collect();
    let noisy: Vec<f32> = a.iter().zip(v(3)).map(|(x, n)| x + 0.05 * n).collect();
    let samples: Vec<Vec<f32>> = [&a, &b, &scaled, &noisy].iter().map(|x| sample(x).into_owned()).collect();
    let rows = Samples::of(samples.iter().map(Vec::as_slice).collect());
    assert_eq!(copies(&rows, 0.99), [(2, 0), (3, 0)], "the scaled and the noisy copy, of the first");
    assert_eq!(copies(&rows, 1.0), [], "bit for bit, nothing is equal");
    let whole = Samples::of(vec![a.as_slice(), scaled.as_slice(), a.as_slice()]);
    assert_eq!(copies(&whole, 0.99), [(1, 0), (2, 0)], "sampled in place from the whole updates");
    assert_eq!(copies(&whole, 1.0), [(2, 0)]);
    assert_ne!(values_hash(&a, None), values_hash(&scaled, None));
    assert_ne!(values_hash(&a, None), values_hash(&a, Some(&[0, 1])), "the support counts");
}

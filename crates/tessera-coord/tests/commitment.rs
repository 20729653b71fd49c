//! A trainer's commitment to its round: the Merkle root in its `Commit` covers its start state,
//! its state after every `commit_every` inner steps, its final state and its update, and an
//! independent re-execution of the assigned batches reproduces every committed state, so a
//! validator can check any one segment, and a trainer that skipped steps is found out at the
//! first segment it did not compute.

mod common;

use std::sync::Arc;

use tessera_coord::*;
use tessera_data::BatchKey;
use tessera_model::{Gpt, OptState, Trainer as StepTrainer};
use tessera_tensor::TraceMode;
use tessera_verify::{challenge, segments, Bisection, MerkleTree, RoundCommitment, Turn};

/// Segments of 5 steps (these tests cut 12 steps into 5 + 5 + 2).
fn cfg() -> RunConfig {
    RunConfig { commit_every: 5, ..RunConfig::default() }.with(|c| {
        c.inner_steps = 7;
        c.rounds = 2;
        c.batch = 2;
    })
}

/// The states a validator computes by re-running `unit` from the run's initial state: the
/// start, then the end of every segment of `commit_every` steps; `skip` steps are left out
/// (a lazy trainer).
fn recompute(spec: &RunSpec, ds: &tessera_data::Dataset, unit: &Assignment, skip: &[u64]) -> Vec<[u8; 32]> {
    let c = &spec.cfg;
    let model = Gpt { cfg: spec.gpt.clone(), params: spec.template.clone() };
    let mut tr = StepTrainer { opt: OptState::new(&model.params), model, cfg: c.inner_adamw() };
    let mut out = vec![tr.state_hash()];
    for (_, to) in segments(c.h(), c.commit_every).unwrap() {
        while tr.opt.step < to {
            let s = tr.opt.step;
            if !skip.contains(&s) {
                let key = BatchKey { seed: c.seed, round: unit.data_round, slot: unit.slot, step: s };
                tr.step(&ds.train_batch(&key, c.batch, spec.gpt.context).unwrap(), TraceMode::Off).unwrap();
            } else {
                tr.opt.step += 1; // claims the step without computing it
            }
        }
        out.push(tr.state_hash());
    }
    out
}

#[test]
fn the_commit_root_covers_every_segment_and_re_execution_reproduces_it() {
    let ds = common::dataset("commitment");
    let spec = Arc::new(RunSpec::new(cfg()).unwrap());
    let g = spec.initial_state();
    let unit = Assignment { peer: [1; 32], data_round: 0, slot: 0 };
    let t = Worker::new(spec.clone()).train(&g, &g.hash(), &unit, &ds, &mut |_| {}).unwrap();
    // 7 steps cut every 5: segments [0, 5) and [5, 7); leaves: start, two ends, the update.
    let c = &t.commitment;
    assert_eq!((c.ends.len(), c.len()), (2, 4));
    let Message::Commit { root, start_hash, end_hash, update, .. } = t.commit() else { panic!() };
    assert_eq!((root, start_hash, end_hash, update), (c.root(), c.start, c.final_state(), t.update_hash));
    // A validator re-runs the assigned batches and gets every committed state.
    let states = recompute(&spec, &ds, &unit, &[]);
    assert_eq!(states[0], c.start);
    assert_eq!(&states[1..], &c.ends[..], "every committed state is reproduced");
    // The challenged segment's end comes with a proof against the committed root.
    let s = challenge(&[9; 32], &[2; 32], &unit.peer, c.ends.len());
    let tree = c.tree();
    let leaf = s + 1;
    MerkleTree::verify(&root, c.len(), leaf, &c.ends[s], &tree.proof(leaf).unwrap()).unwrap();
}

#[test]
fn a_trainer_that_skips_steps_is_found_at_its_first_uncomputed_segment() {
    let ds = common::dataset("commitment-lazy");
    let spec = Arc::new(RunSpec::new(cfg().with(|c| c.inner_steps = 12)).unwrap());
    let unit = Assignment { peer: [1; 32], data_round: 0, slot: 1 };
    let honest = recompute(&spec, &ds, &unit, &[]);
    // Skips step 6 (in the second segment, [5, 10)): states agree up to the first segment.
    let lazy = recompute(&spec, &ds, &unit, &[6]);
    assert_eq!(honest[..2], lazy[..2]);
    let n = honest.len() as u64 - 1;
    let mut b = Bisection::new(0, n).unwrap();
    let found = loop {
        match b.turn() {
            Turn::Decided(i) => break i,
            Turn::Reveal(i) => b.answer(lazy[i as usize] == honest[i as usize]).unwrap(),
        }
    };
    assert_eq!(found, 2, "the second segment is the first the trainer did not compute");
    assert!(b.exchanges() <= Bisection::max_exchanges(n));
}

#[test]
fn a_dispute_names_the_step_and_operator_and_the_referee_rules_against_the_liar() {
    use tessera_verify::{Loser, Ruling};
    let ds = common::dataset("dispute");
    let spec = RunSpec::new(cfg().with(|c| c.inner_steps = 5)).unwrap();
    let (honest, traces) = Claims::honest(&spec, &ds, (0, 0), 5).unwrap();
    let ops = traces[0].entries.len();
    assert!(ops > 100, "a GPT step is hundreds of operators: {ops}");
    for (step, op) in [(2usize, ops / 3), (0, 0), (4, ops - 1)] {
        let want = |loser| Ruling { loser, step: step as u64, op: Some(op as u64 + 1) };
        // A trainer whose machine computed one operator wrongly.
        let s = settle(&honest.faulty(step, op), &honest, &traces).unwrap();
        assert_eq!((s.ruling, s.ops_recomputed), (want(Loser::Trainer), 1));
        // A validator that claims a mismatch on an honest trainer's work.
        let s = settle(&honest, &honest.faulty(step, op), &traces).unwrap();
        assert_eq!(s.ruling, want(Loser::Validator));
        assert!(s.bytes > 0 && s.exchanges >= 3);
    }
}

#[test]
fn a_side_that_stops_answering_loses_the_dispute() {
    use tessera_verify::{Ask, Dispute, Loser};
    let mut d = Dispute::new(0, 8, 300, [0; 32], [[1; 32], [2; 32]]).unwrap();
    assert_eq!(d.ask(), Ask::State { step: 4 });
    let r = d.timeout(Loser::Trainer);
    assert_eq!(r.loser, Loser::Trainer);
    assert_eq!(d.ask(), Ask::Ruled(r));
    assert!(d.revealed([[0; 32], [0; 32]]).is_err(), "a decided dispute takes no more moves");
}

/// A spot check: the trainer reveals its state at the start of any segment, which proves
/// against its commitment; re-running the segment reproduces the committed end; the last
/// segment's end re-derives the committed update. A trainer that skipped a step fails the
/// check of the segment it skipped in.
#[test]
fn every_segment_passes_a_spot_check_and_a_skipped_step_fails_one() {
    use tessera_coord::{rederive_update, run_segment};
    let ds = common::dataset("spot");
    let spec = Arc::new(RunSpec::new(cfg().with(|c| c.inner_steps = 12)).unwrap());
    let g = spec.initial_state();
    let unit = Assignment { peer: [1; 32], data_round: 0, slot: 2 };
    let mut w = Worker::new(spec.clone());
    let t = w.train(&g, &g.hash(), &unit, &ds, &mut |_| {}).unwrap();
    let c = &t.commitment;
    let tree = c.tree();
    let segs = segments(12, spec.cfg.commit_every).unwrap();
    let u = (unit.data_round, unit.slot);
    let mut last = None;
    for (s, &seg) in segs.iter().enumerate() {
        let start = w.reveal(&g, &g.hash(), u, &ds, s).unwrap();
        let leaf = start.hash(&spec).unwrap();
        let idx = RoundCommitment::start_leaf(s);
        MerkleTree::verify(&c.root(), c.len(), idx, &leaf, &tree.proof(idx).unwrap()).unwrap();
        let end = run_segment(&spec, &ds, &start, u, seg).unwrap();
        assert_eq!(end.hash(&spec).unwrap(), c.ends[s], "segment {s} re-runs to its committed end");
        last = Some(end);
    }
    let update = rederive_update(&spec, &g, &last.unwrap()).unwrap();
    assert_eq!(*blake3::hash(&update).as_bytes(), c.update, "the final state re-derives the update");
    // A lazy trainer skipped step 6, inside segment [5, 10): its commitment's end of that
    // segment is not what re-running from the (still honest) start at step 5 gives.
    let lazy = recompute(&spec, &ds, &unit, &[6]);
    let start = w.reveal(&g, &g.hash(), u, &ds, 1).unwrap();
    assert_eq!(start.hash(&spec).unwrap(), lazy[1], "the lazy trainer's state at step 5 is honest");
    assert_ne!(run_segment(&spec, &ds, &start, u, segs[1]).unwrap().hash(&spec).unwrap(), lazy[2], "caught");
    assert!(w.reveal(&g, &g.hash(), u, &ds, 3).is_err(), "no fourth segment");
}

/// The referee's half over the network: it counts a step's operators itself, and recomputes
/// one operator only from a blob whose kernel and inputs hash to what both sides named.
#[test]
fn the_referee_recomputes_one_operator_only_from_the_inputs_both_sides_named() {
    let ds = common::dataset("referee");
    let spec = RunSpec::new(cfg().with(|c| c.inner_steps = 1)).unwrap();
    let (honest, traces) = Claims::honest(&spec, &ds, (0, 0), 1).unwrap();
    assert_eq!(ops_per_step(&spec).unwrap(), traces[0].entries.len() as u64, "counted from a batch of zeros");
    let j = traces[0].entries.len() / 2;
    let e = &traces[0].entries[j];
    let agreed = honest.entries[0][j].clone();
    let kept = e.inputs.as_ref().unwrap();
    let op = OpInputs {
        kernel: e.kernel.clone(),
        inputs: kept.iter().map(|t| (t.shape().to_vec(), t.data().to_vec())).collect(),
    };
    let blob = op.encode();
    assert_eq!(OpInputs::decode(&blob).unwrap().replay(&agreed).unwrap(), e.output_hashes);
    let mut tampered = op.clone();
    tampered.inputs[0].1[0] += 1.0;
    assert!(matches!(tampered.replay(&agreed), Err(CoordError::State(_))), "an input not named");
    let other = OpInputs { kernel: tessera_tensor::Kernel::Relu, ..op.clone() };
    assert!(matches!(other.replay(&agreed), Err(CoordError::State(_))), "another operator");
    assert!(matches!(OpInputs::decode(&blob[..blob.len() / 2]), Err(CoordError::State(_))), "a cut blob");
    assert_ne!(kernel_hash(&e.kernel), kernel_hash(&tessera_tensor::Kernel::Relu));
    // Every operator of a real step can be recomputed so (none is refused for its shapes).
    for (e, agreed) in traces[0].entries.iter().zip(&honest.entries[0]) {
        let kept = e.inputs.as_ref().unwrap();
        let inputs = kept.iter().map(|t| (t.shape().to_vec(), t.data().to_vec())).collect();
        let op = OpInputs { kernel: e.kernel.clone(), inputs };
        assert_eq!(op.replay(agreed).unwrap(), e.output_hashes, "{}", e.kernel.name());
    }
}

/// Writes seeds for the `dispute_decode` fuzz target (fuzz/README.md): the operator-inputs
/// blobs of the smallest operators of a real step.
/// `cargo test -p tessera-coord --test commitment -- --ignored write_dispute_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/dispute_decode; run by hand"]
fn write_dispute_fuzz_seeds() {
    let ds = common::dataset("seeds");
    let spec = RunSpec::new(cfg().with(|c| c.inner_steps = 1)).unwrap();
    let (_, traces) = Claims::honest(&spec, &ds, (0, 0), 1).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/dispute_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let mut small: Vec<_> = traces[0].entries.iter().collect();
    small.sort_by_key(|e| e.inputs.as_ref().unwrap().iter().map(|t| t.data().len()).sum::<usize>());
    for (i, e) in small.iter().take(8).enumerate() {
        let kept = e.inputs.as_ref().unwrap();
        let inputs = kept.iter().map(|t| (t.shape().to_vec(), t.data().to_vec())).collect();
        let op = OpInputs { kernel: e.kernel.clone(), inputs };
        std::fs::write(dir.join(format!("op-{i:02}")), op.encode()).unwrap();
    }
}

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
use tessera_verify::{challenge, segments, Bisection, MerkleTree, Turn};

fn cfg() -> RunConfig {
    RunConfig::default().with(|c| {
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

/// One side of a dispute: its state after each step of the segment, each step's op trace
/// (prefix chain and entries), with a fault from `(step, op)` on (op index 0-based).
struct Side {
    states: Vec<[u8; 32]>,
    chains: Vec<Vec<[u8; 32]>>,
    entries: Vec<Vec<tessera_verify::EntryHashes>>,
}

fn garbage(a: &[u8; 32]) -> [u8; 32] {
    *blake3::hash(a).as_bytes()
}

impl Side {
    /// The honest run of `steps` steps, with every step's trace and inputs.
    fn honest(spec: &RunSpec, ds: &tessera_data::Dataset, steps: u64) -> (Self, Vec<tessera_tensor::Trace>) {
        let c = &spec.cfg;
        let model = Gpt { cfg: spec.gpt.clone(), params: spec.template.clone() };
        let mut tr = StepTrainer { opt: OptState::new(&model.params), model, cfg: c.inner_adamw() };
        let (mut states, mut traces) = (vec![tr.state_hash()], Vec::new());
        for s in 0..steps {
            let key = BatchKey { seed: c.seed, round: 0, slot: 0, step: s };
            let b = ds.train_batch(&key, c.batch, spec.gpt.context).unwrap();
            traces.push(tr.step(&b, TraceMode::HashesAndInputs).unwrap().trace);
            states.push(tr.state_hash());
        }
        let chains = traces.iter().map(|t| t.prefix_chain()).collect();
        let entries = traces
            .iter()
            .map(|t| {
                t.entries
                    .iter()
                    .map(|e| tessera_verify::EntryHashes {
                        inputs: e.input_hashes.clone(),
                        outputs: e.output_hashes.clone(),
                    })
                    .collect()
            })
            .collect();
        (Side { states, chains, entries }, traces)
    }

    /// This side, computing operator `op` of step `step` wrongly (and everything after it).
    fn faulty(&self, step: usize, op: usize) -> Self {
        let mut s =
            Side { states: self.states.clone(), chains: self.chains.clone(), entries: self.entries.clone() };
        s.entries[step][op].outputs.iter_mut().for_each(|o| *o = garbage(o));
        for c in &mut s.chains[step][op..] {
            *c = garbage(c);
        }
        for st in &mut s.states[step + 1..] {
            *st = garbage(st);
        }
        s
    }
}

/// Hosts a dispute between `trainer` and `validator` over the segment `0..k`, the referee
/// replaying from `traces` (the recorded inputs, checked against the agreed hashes).
fn host(
    trainer: &Side,
    validator: &Side,
    traces: &[tessera_tensor::Trace],
    k: u64,
) -> tessera_verify::Ruling {
    use tessera_verify::{Ask, Dispute};
    let ops = traces[0].entries.len() as u64;
    let ends = [trainer.states[k as usize], validator.states[k as usize]];
    let mut d = Dispute::new(0, k, ops, ends).unwrap();
    let ruling = loop {
        match d.ask() {
            Ask::State { step } => {
                d.revealed([trainer.states[step as usize], validator.states[step as usize]])
            }
            Ask::Prefix { step, op } => {
                let (s, j) = (step as usize, op as usize - 1);
                d.revealed([trainer.chains[s][j], validator.chains[s][j]])
            }
            Ask::Entry { step, op } => {
                let (s, j) = (step as usize, op as usize - 1);
                d.entries([trainer.entries[s][j].clone(), validator.entries[s][j].clone()])
            }
            Ask::ReplayOp { step, op } => {
                let e = &traces[step as usize].entries[op as usize - 1];
                let inputs = e.inputs.as_ref().unwrap();
                assert!(inputs.iter().map(|t| t.hash()).eq(e.input_hashes.iter().copied()), "agreed inputs");
                let refs: Vec<&tessera_tensor::Tensor> = inputs.iter().collect();
                let out: Vec<[u8; 32]> = e.kernel.execute(&refs).unwrap().iter().map(|t| t.hash()).collect();
                break d.replayed(&out).unwrap();
            }
            Ask::RecomputeStep { .. } => panic!("every operator here is traced"),
            Ask::Ruled(r) => break r,
        }
        .unwrap();
    };
    assert!(d.exchanges() <= Dispute::max_exchanges(k, ops), "{} exchanges", d.exchanges());
    ruling
}

#[test]
fn a_dispute_names_the_step_and_operator_and_the_referee_rules_against_the_liar() {
    use tessera_verify::{Loser, Ruling};
    let ds = common::dataset("dispute");
    let spec = RunSpec::new(cfg().with(|c| c.inner_steps = 5)).unwrap();
    let k = 5;
    let (honest, traces) = Side::honest(&spec, &ds, k);
    let ops = traces[0].entries.len();
    assert!(ops > 100, "a GPT step is hundreds of operators: {ops}");
    for (step, op) in [(2usize, ops / 3), (0, 0), (4, ops - 1)] {
        // A trainer whose machine computed one operator wrongly.
        let cheat = honest.faulty(step, op);
        let r = host(&cheat, &honest, &traces, k);
        assert_eq!(r, Ruling { loser: Loser::Trainer, step: step as u64, op: Some(op as u64 + 1) });
        // A validator that claims a mismatch on an honest trainer's work.
        let liar = honest.faulty(step, op);
        let r = host(&honest, &liar, &traces, k);
        assert_eq!(r, Ruling { loser: Loser::Validator, step: step as u64, op: Some(op as u64 + 1) });
    }
}

#[test]
fn a_side_that_stops_answering_loses_the_dispute() {
    use tessera_verify::{Ask, Dispute, Loser};
    let mut d = Dispute::new(0, 8, 300, [[1; 32], [2; 32]]).unwrap();
    assert_eq!(d.ask(), Ask::State { step: 4 });
    let r = d.timeout(Loser::Trainer);
    assert_eq!(r.loser, Loser::Trainer);
    assert_eq!(d.ask(), Ask::Ruled(r));
    assert!(d.revealed([[0; 32], [0; 32]]).is_err(), "a decided dispute takes no more moves");
}

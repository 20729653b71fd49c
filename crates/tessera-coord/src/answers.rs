//! One side's part in a dispute over the network (the trainer's, or that of the validator
//! whose mismatch it disputes), and the referee's one-operator recomputation. A side re-runs
//! the disputed segment once from its start state, keeping its state after each step, and
//! traces a step (inputs kept) only when a question reaches that step's operators. The game
//! itself is [`tessera_verify::Dispute`], hosted by the coordinator
//! (`coordinator/disputes.rs`); [`crate::settle`] plays it in one process.
//!
//! Invariants: an answer is a pure function of the side's start state, the unit and the
//! question; a question outside the disputed segment is an error, never a panic; the referee
//! recomputes an operator only on inputs whose kernel and tensors hash to what both sides
//! named.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_data::{BatchKey, Dataset};
use tessera_model::Batch;
use tessera_tensor::{Kernel, Tensor, Trace, TraceMode};
use tessera_verify::EntryHashes;
use tessera_wire::{Answer, Question};

use crate::{CoordError, Hash32, LocalState, PeerId, RunSpec};

/// Largest blob a side may name in a dispute (an operator's inputs or a local state).
pub const MAX_DISPUTE_BLOB: u64 = 1 << 30;
/// Most disputed segments one side keeps records of (older rounds go first).
pub const MAX_RECORDS: usize = 8;

/// BLAKE3 of a kernel's canonical encoding: what both sides name an operator by.
pub fn kernel_hash(k: &Kernel) -> Hash32 {
    let bytes = postcard::to_allocvec(k).expect("a kernel always encodes");
    *blake3::hash(&bytes).as_bytes()
}

/// The blob a trainer serves for [`Question::Inputs`]: the operator's kernel and its inputs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct OpInputs {
    pub kernel: Kernel,
    pub inputs: Vec<(Vec<usize>, Vec<f32>)>,
}

impl OpInputs {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("an operator's inputs always encode")
    }

    /// Reads a fetched blob (its length was checked against [`MAX_DISPUTE_BLOB`] first).
    pub fn decode(blob: &[u8]) -> Result<Self, CoordError> {
        postcard::from_bytes(blob).map_err(|e| CoordError::State(format!("operator inputs: {e}")))
    }

    /// The referee's recomputation: checks the kernel and every input against the `agreed`
    /// entry, runs the one operator, and returns its output hashes. `Err` means the blob is
    /// not what both sides named (the side that served it is at fault).
    pub fn replay(&self, agreed: &EntryHashes) -> Result<Vec<Hash32>, CoordError> {
        if kernel_hash(&self.kernel) != agreed.kernel || self.inputs.len() != agreed.inputs.len() {
            return Err(CoordError::State("the operator is not the one both sides named".into()));
        }
        let mut tensors = Vec::with_capacity(self.inputs.len());
        for ((shape, data), want) in self.inputs.iter().zip(&agreed.inputs) {
            // (A step's operators never see an empty dimension; the kernels assume none.)
            if shape.is_empty() || shape.contains(&0) {
                return Err(CoordError::State(format!("an input of shape {shape:?}")));
            }
            let t = Tensor::new(shape, data.clone()).map_err(|e| CoordError::State(e.to_string()))?;
            if t.hash() != *want {
                return Err(CoordError::State("an input is not the tensor both sides named".into()));
            }
            tensors.push(t);
        }
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let out = self.kernel.execute(&refs).map_err(|e| CoordError::State(e.to_string()))?;
        Ok(out.iter().map(Tensor::hash).collect())
    }
}

/// What a side answers, and for a blob question the blob it serves.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The question answered.
    pub question: tessera_wire::Question,
    pub answer: Answer,
    pub blob: Option<Arc<Vec<u8>>>,
}

/// A side's record of one disputed segment.
struct Record {
    unit: (u64, u64),
    from: u64,
    states: Vec<LocalState>,
    hashes: Vec<Hash32>,
    /// The one step traced so far (inputs kept), and its prefix chain.
    traced: Option<(u64, Trace, Vec<Hash32>)>,
}

/// What a side needs to start answering about a segment: its start state, the unit and the
/// segment's steps.
pub struct DisputedSegment {
    pub start: LocalState,
    pub unit: (u64, u64),
    pub seg: (u64, u64),
}

/// Which disputed segment: the round, the trainer, and the segment's first step.
pub type DisputeKey = (u64, PeerId, u64);

/// One side's records of the segments it is disputed over.
#[derive(Default)]
pub struct Disputant {
    records: BTreeMap<DisputeKey, Record>,
}

fn flip(h: &Hash32) -> Hash32 {
    *blake3::hash(h).as_bytes()
}

impl Disputant {
    /// Answers `q` about the segment of `key`; `what` gives the segment the first time.
    /// `lie` (drills: the lying validator) makes the answers those of a machine that computed
    /// operator `ops / 2` of the segment's first step wrongly, and so everything after it,
    /// consistently: the game narrows such a lie down to that one operator.
    pub fn answer(
        &mut self,
        spec: &RunSpec,
        ds: &Dataset,
        key: DisputeKey,
        what: impl FnOnce() -> Result<DisputedSegment, CoordError>,
        q: &Question,
        lie: bool,
    ) -> Result<Answered, CoordError> {
        if !self.records.contains_key(&key) {
            let r = Record::compute(spec, ds, what()?)?;
            while self.records.len() >= MAX_RECORDS {
                self.records.pop_first();
            }
            self.records.insert(key, r);
        }
        let r = self.records.get_mut(&key).expect("inserted above");
        r.answer(spec, ds, q, lie)
    }
}

impl Record {
    fn compute(spec: &RunSpec, ds: &Dataset, d: DisputedSegment) -> Result<Self, CoordError> {
        let (from, to) = d.seg;
        let bytes = (to - from + 1).saturating_mul(LocalState::blob_len(spec.n()));
        if from >= to || to > spec.cfg.h() || bytes > crate::MAX_KEPT_BYTES {
            return Err(CoordError::Config(format!("a disputed segment {from}..{to} this side cannot keep")));
        }
        let mut states = vec![d.start];
        for s in from..to {
            let last = states.last().expect("the start state");
            states.push(crate::run_segment(spec, ds, last, d.unit, (s, s + 1))?);
        }
        let hashes = states.iter().map(|s| s.hash(spec)).collect::<Result<Vec<_>, _>>()?;
        assert_eq!(hashes.len() as u64, to - from + 1, "one state per step boundary");
        Ok(Self { unit: d.unit, from, states, hashes, traced: None })
    }

    fn to(&self) -> u64 {
        self.from + self.states.len() as u64 - 1
    }

    /// The trace of step `step` (from the state before it), kept for the next questions.
    fn trace(&mut self, spec: &RunSpec, ds: &Dataset, step: u64) -> Result<(&Trace, &[Hash32]), CoordError> {
        if step < self.from || step >= self.to() {
            return Err(CoordError::State(format!("step {step} is outside the disputed segment")));
        }
        if self.traced.as_ref().is_none_or(|t| t.0 != step) {
            let mut tr = self.states[(step - self.from) as usize].trainer(spec)?;
            let c = &spec.cfg;
            let key = BatchKey { seed: c.seed, round: self.unit.0, slot: self.unit.1, step };
            let trace =
                tr.step(&ds.train_batch(&key, c.batch, spec.gpt.context)?, TraceMode::HashesAndInputs)?.trace;
            let chain = trace.prefix_chain();
            self.traced = Some((step, trace, chain));
        }
        let t = self.traced.as_ref().expect("traced above");
        Ok((&t.1, &t.2))
    }

    fn answer(
        &mut self,
        spec: &RunSpec,
        ds: &Dataset,
        q: &Question,
        lie: bool,
    ) -> Result<Answered, CoordError> {
        let from = self.from;
        // The lie: operator `ops / 2` of the first step, and everything after it.
        let lied = |step: u64, op0: usize, ops: usize| lie && step == from && op0 >= ops / 2;
        let hash = |h: Hash32| Answered { question: *q, answer: Answer::Hash(h), blob: None };
        match *q {
            Question::State { step } => {
                let i = step.checked_sub(from).filter(|i| *i <= self.to() - from);
                let i = i.ok_or_else(|| CoordError::State(format!("state {step} is outside the segment")))?;
                let h = self.hashes[i as usize];
                Ok(hash(if lie && step > from { flip(&h) } else { h }))
            }
            Question::StateBlob { step } => {
                let i = step.checked_sub(from).filter(|i| *i < self.to() - from);
                let i = i.ok_or_else(|| CoordError::State(format!("state {step} is outside the segment")))?;
                Ok(blob(*q, self.states[i as usize].encode()))
            }
            Question::Prefix { step, op } | Question::Entry { step, op } | Question::Inputs { step, op } => {
                let (trace, chain) = self.trace(spec, ds, step)?;
                let ops = trace.entries.len();
                let op0 = op.checked_sub(1).map(|o| o as usize).filter(|o| *o < ops);
                let op0 = op0.ok_or_else(|| CoordError::State(format!("operator {op} of {ops}")))?;
                let e = &trace.entries[op0];
                match *q {
                    Question::Prefix { .. } if lied(step, op0, ops) => Ok(hash(flip(&chain[op0]))),
                    Question::Prefix { .. } => Ok(hash(chain[op0])),
                    Question::Entry { .. } => {
                        let wrong = lied(step, op0, ops) && op0 == ops / 2;
                        let outputs =
                            e.output_hashes.iter().map(|h| if wrong { flip(h) } else { *h }).collect();
                        let (kernel, inputs) = (kernel_hash(&e.kernel), e.input_hashes.clone());
                        let answer = Answer::Entry { kernel, inputs, outputs };
                        Ok(Answered { question: *q, answer, blob: None })
                    }
                    _ => {
                        let kept = e.inputs.as_ref().ok_or(CoordError::State("no recorded inputs".into()))?;
                        let inputs = kept.iter().map(|t| (t.shape().to_vec(), t.data().to_vec())).collect();
                        Ok(blob(*q, OpInputs { kernel: e.kernel.clone(), inputs }.encode()))
                    }
                }
            }
        }
    }
}

fn blob(question: Question, bytes: Vec<u8>) -> Answered {
    let hash = *blake3::hash(&bytes).as_bytes();
    let answer = Answer::Blob { hash, len: bytes.len() as u64 };
    Answered { question, answer, blob: Some(Arc::new(bytes)) }
}

/// How many operators one inner step of this run's model traces (the same for every step):
/// counted once by the referee from a traced step of the initial model on a batch of zeros.
pub fn ops_per_step(spec: &RunSpec) -> Result<u64, CoordError> {
    let model = tessera_model::Gpt { cfg: spec.gpt.clone(), params: spec.template.clone() };
    let opt = tessera_model::OptState::new(&model.params);
    let mut tr = tessera_model::Trainer { model, opt, cfg: spec.cfg.inner_adamw() };
    let (b, t) = (spec.cfg.batch, spec.gpt.context);
    let zeros = || Tensor::new(&[b, t], vec![0.0; b * t]).map_err(|e| CoordError::State(e.to_string()));
    let batch = Batch { inputs: zeros()?, targets: zeros()? };
    let n = tr.step(&batch, TraceMode::Hashes)?.trace.entries.len() as u64;
    assert!(n > 0, "a step runs operators");
    Ok(n)
}

/// The referee's recomputation of one whole step (when the operators alone cannot decide):
/// the local state after step `step` of `unit`, from the state `blob` before it, checked
/// against the `agreed` hash. `Ok(Err(why))`: the blob is not the agreed state.
pub fn recompute_step(
    spec: &RunSpec,
    ds: &Dataset,
    unit: (u64, u64),
    step: u64,
    blob: &[u8],
    agreed: &Hash32,
) -> Result<Result<Hash32, String>, CoordError> {
    let start = match LocalState::decode(blob, spec.n()) {
        Ok(s) if s.hash(spec).is_ok_and(|h| h == *agreed) => s,
        Ok(_) => return Ok(Err("the state blob is not the agreed state".into())),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let end = crate::run_segment(spec, ds, &start, unit, (step, step + 1))?;
    Ok(Ok(end.hash(spec)?))
}

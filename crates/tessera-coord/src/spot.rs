//! Spot checks by re-execution. A trainer reveals its local state at the start of the segment
//! a validator challenged ([`crate::Worker::reveal`]); the validator checks it against the
//! trainer's commitment (its hash is the committed leaf), re-runs the segment's inner steps on
//! the assigned batches, which are a pure function of the assignment, and compares the end
//! with the committed state. For the last segment it also re-derives the encoded update from
//! the final state and compares it with the committed update hash.

use tessera_data::{BatchKey, Dataset};
use tessera_model::{Gpt, OptState, Trainer as StepTrainer};
use tessera_sync::{pseudo_gradient, Work};
use tessera_tensor::TraceMode;

use crate::{CoordError, GlobalState, Hash32, RunSpec};

/// A trainer's local state at one point of its round: parameters, inner AdamW moments and the
/// optimizer's step count (which, with the assignment, fixes the data cursor).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalState {
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

impl LocalState {
    pub(crate) fn of(tr: &StepTrainer<Gpt>) -> Self {
        let (params, m, v) = (tr.model.params.to_flat(), tr.opt.m.to_flat(), tr.opt.v.to_flat());
        Self { params, m, v, step: tr.opt.step }
    }

    pub(crate) fn trainer(&self, spec: &RunSpec) -> Result<StepTrainer<Gpt>, CoordError> {
        let model = Gpt { cfg: spec.gpt.clone(), params: spec.params(&self.params)? };
        let opt = OptState { m: spec.params(&self.m)?, v: spec.params(&self.v)?, step: self.step };
        Ok(StepTrainer { model, opt, cfg: spec.cfg.inner_adamw() })
    }

    /// Overwrites this state with `tr`'s, reusing the buffers (a trainer keeps one per
    /// segment, round after round).
    pub(crate) fn refresh(&mut self, tr: &StepTrainer<Gpt>) {
        tr.model.params.write_flat(&mut self.params);
        tr.opt.m.write_flat(&mut self.m);
        tr.opt.v.write_flat(&mut self.v);
        self.step = tr.opt.step;
    }

    /// The blob a trainer serves for a reveal: the step (u64 LE), then the parameters, the
    /// first and the second moments (f32 LE). Its length is [`LocalState::blob_len`].
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.params.len() == self.m.len() && self.m.len() == self.v.len(), "one layout");
        let mut out = Vec::with_capacity(Self::blob_len(self.params.len()) as usize);
        out.extend(self.step.to_le_bytes());
        for x in self.params.iter().chain(&self.m).chain(&self.v) {
            out.extend(x.to_le_bytes());
        }
        out
    }

    /// The exact length of the blob of a model of `n` parameters.
    pub fn blob_len(n: usize) -> u64 {
        8 + 12 * n as u64
    }

    /// Reads a revealed blob of a model of `n` parameters; the length is checked first.
    pub fn decode(blob: &[u8], n: usize) -> Result<Self, CoordError> {
        if blob.len() as u64 != Self::blob_len(n) {
            let want = Self::blob_len(n);
            return Err(CoordError::State(format!("a local state of {} bytes, want {want}", blob.len())));
        }
        let (step, rest) = blob.split_at(8);
        let step = u64::from_le_bytes(step.try_into().expect("8 bytes"));
        let floats: Vec<f32> =
            rest.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        let (params, mv) = floats.split_at(n);
        let (m, v) = mv.split_at(n);
        Ok(Self { params: params.to_vec(), m: m.to_vec(), v: v.to_vec(), step })
    }

    /// Its hash, the leaf a commitment holds for it.
    pub fn hash(&self, spec: &RunSpec) -> Result<Hash32, CoordError> {
        Ok(self.trainer(spec)?.state_hash())
    }
}

/// Runs inner steps `from..to` of unit `(data_round, slot)` on `tr`.
pub(crate) fn advance(
    spec: &RunSpec,
    ds: &Dataset,
    tr: &mut StepTrainer<Gpt>,
    (data_round, slot): (u64, u64),
    (from, to): (u64, u64),
) -> Result<(), CoordError> {
    let c = &spec.cfg;
    for s in from..to {
        let key = BatchKey { seed: c.seed, round: data_round, slot, step: s };
        tr.step(&ds.train_batch(&key, c.batch, spec.gpt.context)?, TraceMode::Off)?;
    }
    Ok(())
}

/// The validator's side: the local state after re-running steps `from..to` of `unit` from the
/// revealed `start` (compare its [`LocalState::hash`] with the committed end). A gradient
/// method's round has one segment that leaves the state as it was.
pub fn run_segment(
    spec: &RunSpec,
    ds: &Dataset,
    start: &LocalState,
    unit: (u64, u64),
    seg: (u64, u64),
) -> Result<LocalState, CoordError> {
    if seg.0 >= seg.1 || seg.1 > spec.cfg.h() {
        return Err(CoordError::Config(format!("segment {seg:?} of a round of {} steps", spec.cfg.h())));
    }
    let mut tr = start.trainer(spec)?;
    if spec.outer.work() != Work::Gradient {
        advance(spec, ds, &mut tr, unit, seg)?;
    }
    Ok(LocalState::of(&tr))
}

/// The update DiLoCo or NoLoCo encodes from a final local state, trained from `g`: the check
/// of the last segment. (SparseLoCo's and DeMo's encodings also depend on the trainer's error
/// feedback or momentum, and DDP's on a gradient; those are checked by re-running instead.)
pub fn rederive_update(spec: &RunSpec, g: &GlobalState, last: &LocalState) -> Result<Vec<u8>, CoordError> {
    let mut delta = pseudo_gradient(&g.theta, &last.params);
    let mut st = spec.outer.peer_state(&g.theta);
    match spec.outer.work() {
        Work::InnerSteps if spec.outer.buffers() == 1 => {}
        Work::InnerStepsFromOwn => delta.iter_mut().for_each(|x| *x = -*x),
        _ => return Err(CoordError::Config("this algorithm's update is checked by re-running".into())),
    }
    Ok(spec.outer.contribute(&mut st, g.round, &delta)?)
}

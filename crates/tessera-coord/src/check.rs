//! Spot checks inside the round. When a run checks its trainers' work (`validate`), the
//! checker draws, for each commit, whether to check it and which segment, from a secret the
//! trainer does not know and the commit's root (so the draw is fixed only after the trainer
//! has committed). The trainer answers the `Challenge` with a `Reveal`: the segment's start
//! and end leaves with their Merkle proofs, and a blob holding its local state at the start.
//! The checker verifies the proofs, fetches the blob, and runs a [`CheckJob`]: it checks the
//! blob against the start leaf, re-runs the segment on the assigned batches and compares the
//! end; for the last segment it also re-derives the encoded update (DDP, DiLoCo, NoLoCo,
//! whose encodings depend on the final state alone) and compares it with the committed hash.
//! [`run_check`] is pure: a validator's or the coordinator's driver runs it off the
//! protocol's thread. The coordinator's bookkeeping of a round's checks, delegation and
//! refereeing live in `coordinator/round_checks.rs` and `coordinator/checking.rs`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tessera_data::{BatchKey, Dataset};
use tessera_sync::{Algorithm, Work};
use tessera_verify::{MerkleTree, Proof, RoundCommitment};

use crate::{rederive_update, run_segment, CoordError, GlobalState, Hash32, LocalState, PeerId, RunSpec};

/// Who checks the trainers' work in a networked run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Validate {
    /// Nobody: updates are screened (shape, values, norm, copies) but not re-executed.
    Off,
    /// The coordinator spot-checks a share (`check_rate`) of the updates itself.
    Coordinator,
    /// Validators (`tessera node --validator`) run the checks the coordinator draws, and the
    /// coordinator referees their failing findings; with no validator present, the
    /// coordinator runs them itself.
    #[default]
    Validators,
}

/// What one spot check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Re-running the segment from the revealed start did not reach the committed end.
    Mismatch,
    /// The update re-derived from the committed final state is not the committed update.
    WrongUpdate,
    /// The reveal does not fit the commitment (a proof, a leaf or the blob is wrong).
    BadReveal(String),
    /// The trainer did not reveal before the round's deadline (its update is left out, but
    /// nothing is proven against it: it may have crashed).
    NoReveal,
    /// The checker itself could not run the check (its data failed it): counted as passed,
    /// since nothing is proven.
    Unchecked(String),
    /// A validator's finding (named) that the referee's own run overturned: the validator
    /// lied, or passed a decoy without checking.
    WrongVerdict(String),
    /// Screening found the update bit for bit another's of the round, or an earlier accepted
    /// update or aggregate (what it duplicates, named): a copy or a replay, proven.
    Duplicate(String),
}

impl Outcome {
    /// Whether the update may be aggregated.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Unchecked(_))
    }

    /// Whether the trainer is proven to have cheated (and is refused from then on).
    pub fn proves_cheat(&self) -> bool {
        matches!(
            self,
            Outcome::Mismatch
                | Outcome::WrongUpdate
                | Outcome::BadReveal(_)
                | Outcome::WrongVerdict(_)
                | Outcome::Duplicate(_)
        )
    }

    /// What a validator reports of this outcome.
    pub fn finding(&self) -> tessera_wire::Finding {
        use tessera_wire::Finding;
        match self {
            Outcome::Pass => Finding::Pass,
            Outcome::Mismatch => Finding::Mismatch,
            Outcome::WrongUpdate => Finding::WrongUpdate,
            Outcome::BadReveal(_) => Finding::BadReveal,
            Outcome::NoReveal | Outcome::Unchecked(_) | Outcome::WrongVerdict(_) | Outcome::Duplicate(_) => {
                Finding::Unchecked
            }
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Pass => write!(f, "pass"),
            Outcome::Mismatch => write!(f, "re-running the segment does not reach the committed state"),
            Outcome::WrongUpdate => write!(f, "the update is not the one its final state gives"),
            Outcome::BadReveal(why) => write!(f, "the reveal does not fit the commitment: {why}"),
            Outcome::NoReveal => write!(f, "no reveal before the deadline"),
            Outcome::Unchecked(why) => write!(f, "not checked: {why}"),
            Outcome::WrongVerdict(claimed) => {
                write!(f, "a validator's verdict ({claimed}) overturned by the referee")
            }
            Outcome::Duplicate(of) => write!(f, "the update is {of}"),
        }
    }
}

/// Whether to check a commit, and which of its `segments` segments: `None` with probability
/// `1 − rate`. A pure function of the checker's `secret`, the commit's `root` and the
/// trainer, so anyone told the secret afterwards can audit the draws.
pub fn pick(secret: &Hash32, root: &Hash32, trainer: &PeerId, rate: f64, segments: usize) -> Option<usize> {
    assert!(segments > 0, "a round has at least one segment");
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"tessera-check-rate-v1");
    h.update(root);
    h.update(trainer);
    let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    let u = (x >> 11) as f64 / (1u64 << 53) as f64; // uniform in [0, 1)
    (u < rate).then(|| tessera_verify::challenge(root, secret, trainer, segments))
}

/// The leaves a reveal names, checked against the commitment of `segments` segments with
/// root `root`: leaf `segment` and leaf `segment + 1`.
pub fn verify_reveal(
    root: &Hash32,
    segments: usize,
    segment: usize,
    start: &tessera_wire::Leaf,
    end: &tessera_wire::Leaf,
) -> Result<(), String> {
    if segment >= segments {
        return Err(format!("segment {segment} of {segments}"));
    }
    let n = segments + 2;
    let at = RoundCommitment::start_leaf(segment);
    let proof = |l: &tessera_wire::Leaf| Proof { siblings: l.proof.clone() };
    MerkleTree::verify(root, n, at, &start.hash, &proof(start)).map_err(|e| format!("start leaf: {e}"))?;
    MerkleTree::verify(root, n, at + 1, &end.hash, &proof(end)).map_err(|e| format!("end leaf: {e}"))
}

/// One check to run: everything it needs, gathered by the checker.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckJob {
    pub round: u64,
    pub peer: PeerId,
    /// The unit `(data_round, slot)` the trainer was assigned.
    pub unit: (u64, u64),
    pub segment: usize,
    /// The revealed blob and the committed leaves it must match at the segment's start and end.
    pub blob: Vec<u8>,
    pub start: Hash32,
    pub end: Hash32,
    /// The last segment: the shared state (NoLoCo: the trainer's replica) the unit was trained
    /// from, and the committed update's hash, to re-derive the update.
    pub rederive: Option<(Arc<GlobalState>, Hash32)>,
}

/// What a check found, and the end state the checker reached when it re-ran the segment
/// (what a validator stands by if its mismatch is disputed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub outcome: Outcome,
    pub reached: Option<Hash32>,
}

/// Runs a check. `Err` is the checker's own failure (its dataset), never the trainer's.
pub fn run_check(spec: &RunSpec, ds: &Dataset, job: &CheckJob) -> Result<Outcome, CoordError> {
    check_segment(spec, ds, job).map(|c| c.outcome)
}

/// [`run_check`], also saying which end state the re-run reached.
pub fn check_segment(spec: &RunSpec, ds: &Dataset, job: &CheckJob) -> Result<Checked, CoordError> {
    let only = |outcome| Ok(Checked { outcome, reached: None });
    let start = match LocalState::decode(&job.blob, spec.n()) {
        Ok(s) => s,
        Err(e) => return only(Outcome::BadReveal(e.to_string())),
    };
    match start.hash(spec) {
        Ok(h) if h == job.start => {}
        Ok(_) => return only(Outcome::BadReveal("the blob is not the committed start state".into())),
        Err(e) => return only(Outcome::BadReveal(e.to_string())),
    }
    let segs = tessera_verify::segments(spec.cfg.h(), spec.cfg.commit_every)?;
    let seg = *segs.get(job.segment).ok_or(CoordError::Config("segment out of range".into()))?;
    let end = run_segment(spec, ds, &start, job.unit, seg)?;
    let reached = Some(end.hash(spec)?);
    if reached != Some(job.end) {
        return Ok(Checked { outcome: Outcome::Mismatch, reached });
    }
    if let Some((g, want)) = &job.rederive {
        let update = rederive(spec, ds, g, job.unit, &end)?;
        if blake3::hash(&update).as_bytes() != want {
            return Ok(Checked { outcome: Outcome::WrongUpdate, reached });
        }
    }
    Ok(Checked { outcome: Outcome::Pass, reached })
}

/// Whether a run's updates can be re-derived from the final local state alone (SparseLoCo's
/// and DeMo's encodings also depend on the trainer's error feedback or momentum).
pub fn rederivable(spec: &RunSpec) -> bool {
    matches!(spec.outer.algorithm(), Algorithm::Ddp | Algorithm::DiLoCo | Algorithm::NoLoCo)
}

/// The update the trainer must have sent, from its final local state `last`.
fn rederive(
    spec: &RunSpec,
    ds: &Dataset,
    g: &GlobalState,
    (data_round, slot): (u64, u64),
    last: &LocalState,
) -> Result<Vec<u8>, CoordError> {
    if spec.outer.work() != Work::Gradient {
        return rederive_update(spec, g, last);
    }
    // DDP: one gradient of θ on the unit's first batch, encoded without peer state.
    let c = &spec.cfg;
    let key = BatchKey { seed: c.seed, round: data_round, slot, step: 0 };
    let model = tessera_model::Gpt { cfg: spec.gpt.clone(), params: spec.params(&g.theta)? };
    let opt = tessera_model::OptState::new(&model.params);
    let tr = tessera_model::Trainer { model, opt, cfg: c.inner_adamw() };
    let (_, grads) = tr.gradients(&ds.train_batch(&key, c.batch, spec.gpt.context)?)?;
    let flat: Vec<f32> = grads.iter().flat_map(|t| t.data().iter().copied()).collect();
    let mut st = spec.outer.peer_state(&g.theta);
    Ok(spec.outer.contribute(&mut st, g.round, &flat)?)
}

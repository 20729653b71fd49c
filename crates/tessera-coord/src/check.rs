//! Spot checks inside the round. When a run checks its trainers' work (`validate`), the
//! checker draws, for each commit, whether to check it and which segment, from a secret the
//! trainer does not know and the commit's root (so the draw is fixed only after the trainer
//! has committed). The trainer answers the `Challenge` with a `Reveal`: the segment's start
//! and end leaves with their Merkle proofs, and a blob holding its local state at the start.
//! The checker verifies the proofs, fetches the blob, and runs a [`CheckJob`]: it checks the
//! blob against the start leaf, re-runs the segment on the assigned batches and compares the
//! end; for the last segment it also re-derives the encoded update (DDP, DiLoCo, NoLoCo,
//! whose encodings depend on the final state alone) and compares it with the committed hash.
//! [`run_check`] is pure: the coordinator's driver runs it off the protocol's thread.

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
    #[default]
    Coordinator,
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
}

impl Outcome {
    /// Whether the update may be aggregated.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Unchecked(_))
    }

    /// Whether the trainer is proven to have cheated (and is refused from then on).
    pub fn proves_cheat(&self) -> bool {
        matches!(self, Outcome::Mismatch | Outcome::WrongUpdate | Outcome::BadReveal(_))
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

/// Runs a check. `Err` is the checker's own failure (its dataset), never the trainer's.
pub fn run_check(spec: &RunSpec, ds: &Dataset, job: &CheckJob) -> Result<Outcome, CoordError> {
    let start = match LocalState::decode(&job.blob, spec.n()) {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::BadReveal(e.to_string())),
    };
    match start.hash(spec) {
        Ok(h) if h == job.start => {}
        Ok(_) => return Ok(Outcome::BadReveal("the blob is not the committed start state".into())),
        Err(e) => return Ok(Outcome::BadReveal(e.to_string())),
    }
    let segs = tessera_verify::segments(spec.cfg.h(), spec.cfg.commit_every)?;
    let seg = *segs.get(job.segment).ok_or(CoordError::Config("segment out of range".into()))?;
    let end = run_segment(spec, ds, &start, job.unit, seg)?;
    if end.hash(spec)? != job.end {
        return Ok(Outcome::Mismatch);
    }
    if let Some((g, want)) = &job.rederive {
        let update = rederive(spec, ds, g, job.unit, &end)?;
        if blake3::hash(&update).as_bytes() != want {
            return Ok(Outcome::WrongUpdate);
        }
    }
    Ok(Outcome::Pass)
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

/// Most checks one round may hold (one per assigned trainer).
pub const MAX_CHECKS: usize = crate::MAX_ROUND_PEERS;

/// Where one spot check stands.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// The challenge is out; waiting for the reveal.
    Challenged,
    /// The reveal fits the commitment; its blob is being fetched.
    Fetching {
        blob: Hash32,
        start: Hash32,
        end: Hash32,
    },
    /// The job is running on the checker's side.
    Running,
    Done(Outcome),
}

#[derive(Debug, Clone, PartialEq)]
struct Check {
    segment: usize,
    root: Hash32,
    unit: (u64, u64),
    /// The committed update, and (the last segment, re-derivable runs) the state it was
    /// trained from.
    update: Hash32,
    rederive: Option<Arc<GlobalState>>,
    phase: Phase,
}

/// A round's spot checks, on the checker's side (the coordinator, with `validate =
/// "coordinator"`). Each check moves Challenged → Fetching → Running → Done once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checks {
    round: u64,
    by_peer: std::collections::BTreeMap<PeerId, Check>,
}

/// What a commit that is drawn for a check needs.
pub(crate) struct Drawn<'a> {
    pub peer: PeerId,
    pub root: Hash32,
    pub unit: (u64, u64),
    pub update: Hash32,
    /// The state the unit was trained from (for the last segment's re-derivation).
    pub from: &'a GlobalState,
}

impl Checks {
    pub fn new(round: u64) -> Self {
        Self { round, by_peer: Default::default() }
    }

    /// Draws whether to check a commit; returns the `Challenge` to send.
    pub fn draw(&mut self, spec: &RunSpec, secret: &Hash32, d: Drawn) -> Option<tessera_wire::Message> {
        let cfg = &spec.cfg;
        if cfg.validate == Validate::Off
            || self.by_peer.contains_key(&d.peer)
            || self.by_peer.len() >= MAX_CHECKS
        {
            return None;
        }
        let n = tessera_verify::segments(cfg.h(), cfg.commit_every).ok()?.len();
        let segment = pick(secret, &d.root, &d.peer, cfg.check_rate, n)?;
        let last = segment + 1 == n && rederivable(spec);
        let rederive = last.then(|| Arc::new(d.from.clone()));
        let c = Check {
            segment,
            root: d.root,
            unit: d.unit,
            update: d.update,
            rederive,
            phase: Phase::Challenged,
        };
        self.by_peer.insert(d.peer, c);
        Some(tessera_wire::Message::Challenge { round: self.round, segment: segment as u32 })
    }

    /// A reveal arrived from `peer`: `Ok(blob)` to fetch, or the outcome it settles.
    pub fn reveal(
        &mut self,
        spec: &RunSpec,
        peer: &PeerId,
        segment: u32,
        (blob, start, end): (Hash32, &tessera_wire::Leaf, &tessera_wire::Leaf),
    ) -> Result<Hash32, Outcome> {
        let n = tessera_verify::segments(spec.cfg.h(), spec.cfg.commit_every).map_or(0, |s| s.len());
        let Some(c) = self.by_peer.get_mut(peer).filter(|c| c.phase == Phase::Challenged) else {
            return Ok(blob); // not asked, or answered already: ignored by the caller
        };
        let verdict = match segment as usize == c.segment {
            false => Err(format!("segment {segment} revealed, {} challenged", c.segment)),
            true => verify_reveal(&c.root, n, c.segment, start, end),
        };
        match verdict {
            Ok(()) => {
                c.phase = Phase::Fetching { blob, start: start.hash, end: end.hash };
                Ok(blob)
            }
            Err(why) => Err(Outcome::BadReveal(why)),
        }
    }

    /// Whether `peer`'s check waits for blob `hash`.
    pub fn wants(&self, peer: &PeerId, hash: &Hash32) -> bool {
        matches!(self.by_peer.get(peer), Some(Check { phase: Phase::Fetching { blob, .. }, .. }) if blob == hash)
    }

    /// The revealed blob arrived: the job to run (the check is then running).
    pub fn job(&mut self, peer: &PeerId, blob: Vec<u8>) -> Option<CheckJob> {
        let c = self.by_peer.get_mut(peer)?;
        let Phase::Fetching { start, end, .. } = c.phase.clone() else { return None };
        c.phase = Phase::Running;
        let rederive = c.rederive.clone().map(|g| (g, c.update));
        Some(CheckJob {
            round: self.round,
            peer: *peer,
            unit: c.unit,
            segment: c.segment,
            blob,
            start,
            end,
            rederive,
        })
    }

    /// Settles `peer`'s check (once); returns its segment when this settled it.
    pub fn settle(&mut self, peer: &PeerId, outcome: Outcome) -> Option<usize> {
        let c = self.by_peer.get_mut(peer)?;
        if matches!(c.phase, Phase::Done(_)) {
            return None;
        }
        c.phase = Phase::Done(outcome);
        Some(c.segment)
    }

    /// Checks still waiting on a trainer (a reveal or its blob) whose trainer is not `live`.
    pub fn waiting_on(&self, live: impl Fn(&PeerId) -> bool) -> Vec<PeerId> {
        let waits = |c: &Check| matches!(c.phase, Phase::Challenged | Phase::Fetching { .. });
        self.by_peer.iter().filter(|(p, c)| waits(c) && !live(p)).map(|(p, _)| *p).collect()
    }

    /// Whether a check still runs on the checker's side (the round waits for it).
    pub fn running(&self) -> bool {
        self.by_peer.values().any(|c| c.phase == Phase::Running)
    }

    /// Whether every check is settled.
    pub fn settled(&self) -> bool {
        self.by_peer.values().all(|c| matches!(c.phase, Phase::Done(_)))
    }
}

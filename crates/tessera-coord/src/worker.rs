//! A trainer's computation: train an assigned unit from the round's shared state (NoLoCo:
//! the trainer's own replica) into an encoded update. It holds the trainer's *local* state (its model copy and inner optimizer)
//! and nothing of the protocol; the [`crate::Trainer`] state machine decides when to train, and
//! its driver calls [`Worker::train`] (on a blocking thread in the daemon).

use std::sync::Arc;

use tessera_data::{BatchKey, Dataset};
use tessera_model::{Gpt, OptState, Trainer as StepTrainer};
use tessera_sync::{pseudo_gradient, PeerState, Work};
use tessera_tensor::TraceMode;

use tessera_verify::RoundCommitment;

use crate::{Assignment, CoordError, GlobalState, Hash32, LocalState, Message, RunSpec, Shirk};

/// Most bytes of segment-start states a worker keeps for reveals; beyond it, a reveal
/// recomputes the state from the round's start instead.
pub const MAX_KEPT_BYTES: u64 = 1 << 30;

/// A trainer's answer to a challenge: the blob of its local state at the segment's start
/// (to serve) and the `Reveal` message naming it with the two leaves and their proofs.
#[derive(Clone, Debug)]
pub struct Revealed {
    pub round: u64,
    pub segment: usize,
    pub blob: Arc<Vec<u8>>,
    pub blob_hash: Hash32,
    pub message: Message,
}

impl Revealed {
    /// The committed leaves the `Reveal` names at the segment's start and end.
    pub fn leaves(&self) -> (&tessera_wire::Leaf, &tessera_wire::Leaf) {
        match &self.message {
            Message::Reveal { start, end, .. } => (start, end),
            other => unreachable!("a Revealed holds a Reveal, not {}", other.kind()),
        }
    }
}

/// The result of training one unit, kept so that a round re-announced after a coordinator
/// restart is answered with the same commit instead of being trained twice.
#[derive(Clone, Debug)]
pub struct Trained {
    pub round: u64,
    /// The shared state the unit was trained from.
    pub start_state: Hash32,
    pub unit: (u64, u64),
    pub update: Arc<Vec<u8>>,
    pub update_hash: Hash32,
    /// Hashes of the trainer's local state (parameters and inner AdamW) before and after.
    pub start_hash: Hash32,
    pub end_hash: Hash32,
    /// What the trainer commits to: its local state before, after every `commit_every`
    /// inner steps and at the end, and the update; its root goes in `Commit`.
    pub commitment: RoundCommitment,
    pub mean_loss: f64,
}

impl Trained {
    fn new(at: (u64, Hash32, (u64, u64)), update: Vec<u8>, commitment: RoundCommitment, loss: f64) -> Self {
        assert_eq!(commitment.update, *blake3::hash(&update).as_bytes(), "the commitment names this update");
        Self {
            round: at.0,
            start_state: at.1,
            unit: at.2,
            update_hash: commitment.update,
            update: Arc::new(update),
            start_hash: commitment.start,
            end_hash: commitment.final_state(),
            commitment,
            mean_loss: loss,
        }
    }

    /// This result with another update in its place, committed to as such (for the cheat
    /// drills: the commitment names the update that is sent).
    pub fn with_update(mut self, update: Vec<u8>) -> Self {
        self.commitment.update = *blake3::hash(&update).as_bytes();
        self.update_hash = self.commitment.update;
        self.update = Arc::new(update);
        self
    }

    /// The `Commit` that announces this update.
    pub fn commit(&self) -> Message {
        Message::Commit {
            round: self.round,
            state: self.start_state,
            update: self.update_hash,
            update_len: self.update.len() as u64,
            start_hash: self.start_hash,
            end_hash: self.end_hash,
            root: self.commitment.root(),
            loss_milli: tessera_wire::loss_milli(self.mean_loss),
            sig: Vec::new(),
        }
    }
}

/// One trainer's local training.
pub struct Worker {
    spec: Arc<RunSpec>,
    trainer: Option<StepTrainer<Gpt>>,
    /// The algorithm's own state (SparseLoCo's error feedback, DeMo's momentum).
    peer: Option<PeerState>,
    /// The inner optimizer and algorithm state at the start of `.0`'s round from state `.1`.
    snapshot: Option<(u64, Hash32, OptState, PeerState)>,
    cached: Option<Trained>,
    /// The cached round's state at the start of each segment (when they fit
    /// [`MAX_KEPT_BYTES`]), and the shared state it was trained from.
    kept: Vec<LocalState>,
    from: Option<Arc<GlobalState>>,
    /// A drill: how this worker skimps on its training.
    shirk: Option<Shirk>,
    /// What it re-ran of a segment it is disputed over.
    disputant: crate::Disputant,
}

impl Worker {
    pub fn new(spec: Arc<RunSpec>) -> Self {
        Self {
            spec,
            trainer: None,
            peer: None,
            snapshot: None,
            cached: None,
            kept: Vec::new(),
            from: None,
            shirk: None,
            disputant: crate::Disputant::default(),
        }
    }

    /// Drills only: this worker skimps on its training from now on (see [`Shirk`]).
    pub fn shirk(&mut self, s: Shirk) {
        self.shirk = Some(s);
    }

    /// Drills only: what a cheating trainer committed instead of its honest result (the same
    /// round and states, another update), so that its reveals answer for what it sent.
    pub fn committed_instead(&mut self, t: &Trained) {
        let same = self.cached.as_ref().is_some_and(|c| c.round == t.round && c.start_state == t.start_state);
        assert!(same, "a cheat replaces the commit of the round just trained");
        self.cached = Some(t.clone());
    }

    /// The trainer's answer to a challenge of segment `seg` of its commit for `round`: the
    /// segment's start state (kept, or recomputed) and the two leaves with their proofs.
    pub fn reveal_committed(&self, round: u64, seg: usize, ds: &Dataset) -> Result<Revealed, CoordError> {
        let Some(t) = self.cached.as_ref().filter(|t| t.round == round) else {
            return Err(CoordError::NotSynced(format!("no commit of round {round} to reveal")));
        };
        let n = t.commitment.ends.len();
        if seg >= n {
            return Err(tessera_verify::VerifyError::Index { index: seg, n }.into());
        }
        let state = match self.kept.get(seg) {
            Some(s) => s.clone(),
            None => {
                let from = self.from.as_ref().expect("kept with the cached round");
                self.reveal(from, &t.start_state, t.unit, ds, seg)?
            }
        };
        let blob = state.encode();
        let blob_hash = *blake3::hash(&blob).as_bytes();
        let (tree, leaves) = (t.commitment.tree(), t.commitment.leaves());
        let at = RoundCommitment::start_leaf(seg);
        let leaf = |i: usize| -> Result<tessera_wire::Leaf, CoordError> {
            Ok(tessera_wire::Leaf { hash: leaves[i], proof: tree.proof(i)?.siblings })
        };
        let (start, end) = (leaf(at)?, leaf(at + 1)?);
        let message = Message::Reveal { round, segment: seg as u32, blob: blob_hash, start, end };
        Ok(Revealed { round, segment: seg, blob: Arc::new(blob), blob_hash, message })
    }

    /// The trainer's answer to question `q` of the dispute over its commit for `round`: from
    /// the start of the segment the question falls in, re-run honestly (whatever was sent).
    pub fn answer(
        &mut self,
        round: u64,
        q: &tessera_wire::Question,
        ds: &Dataset,
    ) -> Result<crate::Answered, CoordError> {
        use tessera_wire::Question;
        let Some(t) = self.cached.clone().filter(|t| t.round == round) else {
            return Err(CoordError::NotSynced(format!("no commit of round {round} to dispute")));
        };
        let step = match *q {
            Question::State { step } | Question::StateBlob { step } => step,
            Question::Prefix { step, .. } | Question::Entry { step, .. } | Question::Inputs { step, .. } => {
                step
            }
        };
        let segs = tessera_verify::segments(self.spec.cfg.h(), self.spec.cfg.commit_every)?;
        let seg = segs.iter().position(|s| s.0 <= step && step < s.1);
        let seg = seg.ok_or_else(|| CoordError::State(format!("step {step} is outside the round")))?;
        let start = match self.kept.get(seg) {
            Some(s) => s.clone(),
            None => {
                let from = self.from.clone().expect("kept with the cached round");
                self.reveal(&from, &t.start_state, t.unit, ds, seg)?
            }
        };
        let (spec, what) =
            (self.spec.clone(), crate::DisputedSegment { start, unit: t.unit, seg: segs[seg] });
        self.disputant.answer(&spec, ds, (round, [0; 32], segs[seg].0), || Ok(what), q, false)
    }

    /// The trainer's side of a spot check: its local state at the start of segment `seg`
    /// (from 0) of the round it last trained from `state`, recomputed from the inner state that
    /// round began with.
    pub fn reveal(
        &self,
        state: &GlobalState,
        state_hash: &Hash32,
        unit: (u64, u64),
        ds: &Dataset,
        seg: usize,
    ) -> Result<LocalState, CoordError> {
        let spec = &self.spec;
        let Some((_, _, opt, _)) =
            self.snapshot.as_ref().filter(|x| x.0 == state.round && &x.1 == state_hash)
        else {
            return Err(CoordError::NotSynced("no round trained from this state to reveal".into()));
        };
        let segs = tessera_verify::segments(spec.cfg.h(), spec.cfg.commit_every)?;
        let n = segs.len();
        let from = segs.get(seg).map(|x| x.0).ok_or(tessera_verify::VerifyError::Index { index: seg, n })?;
        let model = Gpt { cfg: spec.gpt.clone(), params: spec.params(&state.theta)? };
        let mut tr = StepTrainer { model, opt: opt.clone(), cfg: spec.cfg.inner_adamw() };
        if spec.outer.work() != Work::Gradient {
            crate::spot::advance(spec, ds, &mut tr, unit, (0, from))?;
        }
        assert_eq!(
            tr.opt.step,
            opt.step + from * u64::from(spec.outer.work() != Work::Gradient),
            "at the segment's start"
        );
        Ok(LocalState::of(&tr))
    }

    /// The run this worker trains for.
    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    /// Trains `unit` from `state` (whose hash is `state_hash`). Training the same round again
    /// restarts from the inner state the round began with, and an identical request is
    /// answered from the cache.
    pub fn train(
        &mut self,
        state: &GlobalState,
        state_hash: &Hash32,
        unit: &Assignment,
        ds: &Dataset,
        on_step: &mut dyn FnMut(u64),
    ) -> Result<Trained, CoordError> {
        let key = (unit.data_round, unit.slot);
        let round = state.round;
        if let Some(c) = self.cached.as_ref().filter(|c| c.round == round && &c.start_state == state_hash) {
            if c.unit == key {
                return Ok(c.clone());
            }
        }
        let (t, kept) = self.train_fresh(state, state_hash, key, ds, on_step)?;
        assert_eq!(t.round, round, "a unit is trained for the state's round");
        assert!(kept.is_empty() || kept.len() == t.commitment.ends.len(), "one kept state per segment");
        self.cached = Some(t.clone());
        self.from = kept.is_empty().then(|| Arc::new(state.clone()));
        self.kept = kept;
        Ok(t)
    }

    fn train_fresh(
        &mut self,
        g: &GlobalState,
        state_hash: &Hash32,
        (data_round, slot): (u64, u64),
        ds: &Dataset,
        on_step: &mut dyn FnMut(u64),
    ) -> Result<(Trained, Vec<LocalState>), CoordError> {
        let spec = self.spec.clone();
        let (cfg, round) = (&spec.cfg, g.round);
        if g.layout_hash != spec.layout_hash {
            return Err(CoordError::NotSynced("the state is of another layout".into()));
        }
        let h_steps = cfg.h();
        let tr = self.trainer.get_or_insert_with(|| {
            let model = Gpt { cfg: spec.gpt.clone(), params: spec.template.clone() };
            let mut t = StepTrainer { opt: OptState::new(&model.params), model, cfg: cfg.inner_adamw() };
            // A trainer that joins late follows the run's learning-rate schedule.
            t.opt.step = round.saturating_mul(h_steps);
            t
        });
        let st = self.peer.get_or_insert_with(|| spec.outer.peer_state(&g.theta));
        match &self.snapshot {
            Some((r, s, opt, ps)) if *r == round && s == state_hash => {
                tr.opt = opt.clone();
                *st = ps.clone();
            }
            _ => self.snapshot = Some((round, *state_hash, tr.opt.clone(), st.clone())),
        }
        tr.model.params.load_flat(&g.theta)?;
        let start_hash = tr.state_hash();
        let at = (round, *state_hash, (data_round, slot));
        let k = cfg.commit_every;
        let keep = h_steps.div_ceil(k).saturating_mul(LocalState::blob_len(spec.n())) <= MAX_KEPT_BYTES;
        // Last round's kept states are overwritten in place: no fresh allocation per segment.
        let mut pool = std::mem::take(&mut self.kept).into_iter();
        let mut kept = Vec::new();
        let mut keep_now = |tr: &StepTrainer<Gpt>, kept: &mut Vec<LocalState>| match pool.next() {
            Some(mut s) => {
                s.refresh(tr);
                kept.push(s);
            }
            None => kept.push(LocalState::of(tr)),
        };
        let mut ends = Vec::new();
        let shirk = self.shirk;
        let (x, loss) = match spec.outer.work() {
            Work::Gradient => {
                // One gradient of θ_r on the unit's first batch.
                let key = BatchKey { seed: cfg.seed, round: data_round, slot, step: 0 };
                let (loss, grads) = tr.gradients(&ds.train_batch(&key, cfg.batch, spec.gpt.context)?)?;
                on_step(1);
                let flat: Vec<f32> = grads.iter().flat_map(|t| t.data().iter().copied()).collect();
                ends.push(start_hash); // a gradient leaves the local state as it was
                keep_now(tr, &mut kept);
                (flat, f64::from(loss))
            }
            Work::InnerSteps | Work::InnerStepsFromOwn => {
                // From θ_r (or, NoLoCo, from the replica's own φ, which `g` then holds).
                let mut loss = 0.0;
                let (run, slot) = Shirk::plan(shirk, h_steps, slot);
                for s in 0..h_steps {
                    if keep && s % k == 0 {
                        keep_now(tr, &mut kept); // the start of a committed segment
                    }
                    if s < run {
                        let key = BatchKey { seed: cfg.seed, round: data_round, slot, step: s };
                        let mut b = ds.train_batch(&key, cfg.batch, spec.gpt.context)?;
                        Shirk::noise(shirk, &mut b, s);
                        loss += f64::from(tr.step(&b, TraceMode::Off)?.loss) * (h_steps / run) as f64;
                    }
                    on_step(s + 1);
                    if (s + 1) % k == 0 || s + 1 == h_steps {
                        ends.push(tr.state_hash()); // the end of a committed segment
                    }
                }
                Shirk::forge(shirk, &mut ends);
                let mut delta = pseudo_gradient(&g.theta, &tr.model.params.to_flat());
                if spec.outer.work() == Work::InnerStepsFromOwn {
                    delta.iter_mut().for_each(|x| *x = -*x); // NoLoCo's Δ is end − start
                }
                (delta, loss / h_steps as f64)
            }
        };
        let update = spec.outer.contribute(st, round, &x)?;
        assert_eq!(update.len() as u64, spec.update_len, "an update of the run's exact length");
        let update_hash = *blake3::hash(&update).as_bytes();
        let commitment = RoundCommitment::new(start_hash, ends, update_hash, cfg.h(), k)?;
        Ok((Trained::new(at, update, commitment, loss), kept))
    }
}

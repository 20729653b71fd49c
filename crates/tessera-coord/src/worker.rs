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

use crate::{Assignment, CoordError, GlobalState, Hash32, LocalState, Message, RunSpec};

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
}

impl Worker {
    pub fn new(spec: Arc<RunSpec>) -> Self {
        Self { spec, trainer: None, peer: None, snapshot: None, cached: None }
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
        let t = self.train_fresh(state, state_hash, key, ds, on_step)?;
        assert_eq!(t.round, round, "a unit is trained for the state's round");
        self.cached = Some(t.clone());
        Ok(t)
    }

    fn train_fresh(
        &mut self,
        g: &GlobalState,
        state_hash: &Hash32,
        (data_round, slot): (u64, u64),
        ds: &Dataset,
        on_step: &mut dyn FnMut(u64),
    ) -> Result<Trained, CoordError> {
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
        let mut ends = Vec::new();
        let (x, loss) = match spec.outer.work() {
            Work::Gradient => {
                // One gradient of θ_r on the unit's first batch.
                let key = BatchKey { seed: cfg.seed, round: data_round, slot, step: 0 };
                let (loss, grads) = tr.gradients(&ds.train_batch(&key, cfg.batch, spec.gpt.context)?)?;
                on_step(1);
                let flat: Vec<f32> = grads.iter().flat_map(|t| t.data().iter().copied()).collect();
                ends.push(start_hash); // a gradient leaves the local state as it was
                (flat, f64::from(loss))
            }
            Work::InnerSteps | Work::InnerStepsFromOwn => {
                // From θ_r (or, NoLoCo, from the replica's own φ, which `g` then holds).
                let mut loss = 0.0;
                for s in 0..h_steps {
                    let key = BatchKey { seed: cfg.seed, round: data_round, slot, step: s };
                    let b = ds.train_batch(&key, cfg.batch, spec.gpt.context)?;
                    loss += f64::from(tr.step(&b, TraceMode::Off)?.loss);
                    on_step(s + 1);
                    if (s + 1) % k == 0 || s + 1 == h_steps {
                        ends.push(tr.state_hash()); // the end of a committed segment
                    }
                }
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
        Ok(Trained::new(at, update, commitment, loss))
    }
}

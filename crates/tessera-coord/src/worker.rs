//! A trainer's side of the round protocol: hold the shared state, train an assigned unit into
//! an encoded update, and close the round with the aggregate. Pure computation; the driver
//! moves the blobs and messages.

use tessera_data::{BatchKey, Dataset};
use tessera_model::{Gpt, GptConfig, OptState, Trainer};
use tessera_sync::{encode_update, pseudo_gradient, Codec, Expected};
use tessera_tensor::TraceMode;

use crate::{Assignment, CoordError, GlobalState, Hash32, Message, OuterRule, RunConfig};

/// The result of training one unit, kept so that a round re-announced after a coordinator
/// restart is answered with the same commit instead of being trained twice.
#[derive(Clone, Debug)]
pub struct Trained {
    pub round: u64,
    pub start_state: Hash32,
    pub unit: (u64, u64),
    pub update: Vec<u8>,
    pub update_hash: Hash32,
    /// Hashes of the trainer's local state (parameters and inner AdamW) before and after.
    pub start_hash: Hash32,
    pub end_hash: Hash32,
    pub mean_loss: f64,
}

impl Trained {
    fn new(
        round: u64,
        start_state: Hash32,
        unit: (u64, u64),
        update: Vec<u8>,
        local: [Hash32; 2],
        loss: f64,
    ) -> Self {
        Self {
            round,
            start_state,
            unit,
            update_hash: *blake3::hash(&update).as_bytes(),
            update,
            start_hash: local[0],
            end_hash: local[1],
            mean_loss: loss,
        }
    }

    /// The `Commit` that announces this update.
    pub fn commit(&self) -> Message {
        Message::Commit {
            round: self.round,
            update: self.update_hash,
            update_len: self.update.len() as u64,
            start_hash: self.start_hash,
            end_hash: self.end_hash,
        }
    }
}

/// One trainer.
pub struct Worker {
    cfg: RunConfig,
    codec: Codec,
    gcfg: GptConfig,
    model: Gpt,
    layout_hash: Hash32,
    rule: OuterRule,
    global: Option<(GlobalState, Hash32)>,
    trainer: Option<Trainer<Gpt>>,
    /// The inner optimizer state at the start of `.0`'s round from state `.1`.
    snapshot: Option<(u64, Hash32, OptState)>,
    cached: Option<Trained>,
}

impl Worker {
    pub fn new(cfg: RunConfig) -> Result<Self, CoordError> {
        cfg.validate()?;
        let gcfg = GptConfig::preset(&cfg.preset)?;
        let model = Gpt::new(gcfg.clone(), cfg.seed)?;
        Ok(Self {
            rule: OuterRule::new(&cfg, &model.params),
            codec: cfg.update_codec()?,
            layout_hash: model.params.layout().hash(),
            cfg,
            gcfg,
            model,
            global: None,
            trainer: None,
            snapshot: None,
            cached: None,
        })
    }

    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    /// The run's initial state (round 0), as every peer derives it from the config.
    pub fn initial_state(&self) -> GlobalState {
        GlobalState::initial(self.layout_hash, self.model.params.to_flat(), self.rule.buffers())
    }

    /// How this run closes a round.
    pub fn rule(&self) -> &OuterRule {
        &self.rule
    }

    /// The exact size of this run's state blobs.
    pub fn state_len(&self) -> usize {
        GlobalState::encoded_len(self.model.params.numel(), self.rule.buffers())
    }

    /// What a valid update or aggregate of this run must look like.
    pub fn expected(&self) -> Expected {
        self.rule.expected().clone()
    }

    /// The round and hash of the state held, if any.
    pub fn state(&self) -> Option<(u64, Hash32)> {
        self.global.as_ref().map(|(g, h)| (g.round, *h))
    }

    /// The state held.
    pub fn global(&self) -> Option<&GlobalState> {
        self.global.as_ref().map(|(g, _)| g)
    }

    /// Loads a checkpoint blob, which must hash to `want`.
    pub fn load_state(&mut self, blob: &[u8], want: &Hash32) -> Result<(), CoordError> {
        let got = *blake3::hash(blob).as_bytes();
        if &got != want {
            return Err(CoordError::State("checkpoint does not hash to the announced state".into()));
        }
        let g = GlobalState::decode(blob, &self.layout_hash, self.model.params.numel(), self.rule.buffers())?;
        self.global = Some((g, got));
        Ok(())
    }

    /// Trains `unit` for round `round` from the state `start_state`; returns the update.
    /// Training the same round again restarts from the inner state the round began with, and
    /// an identical request is answered from the cache.
    pub fn train(
        &mut self,
        round: u64,
        start_state: &Hash32,
        unit: &Assignment,
        ds: &Dataset,
        on_step: &mut dyn FnMut(u64),
    ) -> Result<&Trained, CoordError> {
        let key = (unit.data_round, unit.slot);
        let hit = self
            .cached
            .as_ref()
            .is_some_and(|c| c.round == round && &c.start_state == start_state && c.unit == key);
        if !hit {
            let t = self.train_fresh(round, start_state, key, ds, on_step)?;
            self.cached = Some(t);
        }
        Ok(self.cached.as_ref().expect("just filled"))
    }

    fn train_fresh(
        &mut self,
        round: u64,
        start_state: &Hash32,
        (data_round, slot): (u64, u64),
        ds: &Dataset,
        on_step: &mut dyn FnMut(u64),
    ) -> Result<Trained, CoordError> {
        let (g, h) = self.global.as_ref().ok_or_else(|| CoordError::NotSynced("no state loaded".into()))?;
        if g.round != round || h != start_state {
            return Err(CoordError::NotSynced(format!(
                "holding round {}, asked to train round {round}",
                g.round
            )));
        }
        let h_steps = self.cfg.h();
        let tr = self.trainer.get_or_insert_with(|| {
            let mut t = Trainer {
                model: self.model.clone(),
                opt: OptState::new(&self.model.params),
                cfg: self.cfg.inner_adamw(),
            };
            // A trainer that joins late follows the run's learning-rate schedule.
            t.opt.step = round * h_steps;
            t
        });
        match &self.snapshot {
            Some((r, s, opt)) if *r == round && s == start_state => tr.opt = opt.clone(),
            _ => self.snapshot = Some((round, *start_state, tr.opt.clone())),
        }
        tr.model.params.load_flat(&g.theta)?;
        let start_hash = tr.state_hash();
        if self.cfg.algo == "ddp" {
            // One gradient of θ_r on the unit's batch; the coordinator averages them.
            let key = BatchKey { seed: self.cfg.seed, round: data_round, slot, step: 0 };
            let (loss, grads) = tr.gradients(&ds.train_batch(&key, self.cfg.batch, self.gcfg.context)?)?;
            on_step(1);
            let flat: Vec<f32> = grads.iter().flat_map(|t| t.data().iter().copied()).collect();
            let update = encode_update(self.cfg.algorithm(), self.codec, self.layout_hash, round, &flat);
            return Ok(Trained::new(
                round,
                *start_state,
                (data_round, slot),
                update,
                [start_hash; 2],
                f64::from(loss),
            ));
        }
        let mut loss = 0.0;
        for s in 0..h_steps {
            let key = BatchKey { seed: self.cfg.seed, round: data_round, slot, step: s };
            let b = ds.train_batch(&key, self.cfg.batch, self.gcfg.context)?;
            loss += f64::from(tr.step(&b, TraceMode::Off)?.loss);
            on_step(s + 1);
        }
        let delta = pseudo_gradient(&g.theta, &tr.model.params.to_flat());
        let update = encode_update(self.cfg.algorithm(), self.codec, self.layout_hash, round, &delta);
        let hashes = [start_hash, tr.state_hash()];
        Ok(Trained::new(round, *start_state, (data_round, slot), update, hashes, loss / h_steps as f64))
    }

    /// Fault injection (tests, drills): changes one parameter of the held state, as a flipped
    /// bit or a miscomputing machine would, without updating its hash. The next `apply` then
    /// reaches a state the coordinator does not, which it must flag.
    pub fn inject_fault(&mut self) {
        if let Some((g, _)) = self.global.as_mut() {
            if let Some(x) = g.theta.first_mut() {
                *x += 1.0;
            }
        }
    }

    /// Closes `round` with the aggregate blob (or none); returns the new state hash.
    pub fn apply(&mut self, round: u64, aggregate: Option<&[u8]>) -> Result<Hash32, CoordError> {
        let (g, h) = self.global.as_mut().ok_or_else(|| CoordError::NotSynced("no state loaded".into()))?;
        if g.round != round {
            return Err(CoordError::NotSynced(format!(
                "holding round {}, asked to close round {round}",
                g.round
            )));
        }
        let mut next = g.clone();
        next.apply(aggregate, &self.rule)?;
        *h = next.hash();
        *g = next;
        Ok(*h)
    }
}

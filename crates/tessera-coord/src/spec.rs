//! What a run's config implies, computed once: the model's parameter layout and initial
//! values, the outer algorithm (with its codec), and the exact sizes of update and state
//! blobs. Every participant (coordinator, trainer, worker, the daemons' evaluations and
//! exports) builds one `RunSpec` from the config instead of constructing a model to read a
//! layout.

use tessera_model::{Gpt, GptConfig, ParamSet};
use tessera_sync::{decode_update, Combined, Contribute, Contribution, Expected, Outer};

use crate::{ClosedRound, CoordError, GlobalState, Hash32, Message, PeerId, RunConfig};

/// Why a closed round could not be recomputed: the update at index `update` did not decode,
/// or (`None`) the combination or the outer step failed.
#[derive(Debug, thiserror::Error)]
#[error("{}{err}", update.map(|i| format!("accepted update {i}: ")).unwrap_or_default())]
pub struct ReplayError {
    pub update: Option<usize>,
    pub err: CoordError,
}

/// A validated run config and everything derived from it.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub cfg: RunConfig,
    pub gpt: GptConfig,
    /// The initial parameters (round 0), in declaration order; also the layout template.
    pub template: ParamSet,
    pub layout_hash: Hash32,
    /// The outer algorithm: what trainers compute and how a round closes.
    pub outer: Outer,
    /// What a trainer's update must look like (layout, length, norm bound).
    pub expected: Expected,
    /// Exact length of a trainer's encoded update (and of an aggregate).
    pub update_len: u64,
    /// Exact length of a state blob.
    pub state_len: usize,
}

impl RunSpec {
    /// Validates `cfg` and derives the rest.
    pub fn new(cfg: RunConfig) -> Result<Self, CoordError> {
        cfg.validate()?;
        let gpt = GptConfig::preset(&cfg.preset)?;
        let template = Gpt::new(gpt.clone(), cfg.seed)?.params;
        let outer = Outer::new(cfg.outer_settings()?, &template)?;
        let update_len = outer.update_len() as u64;
        let state_len = GlobalState::encoded_len(template.numel(), outer.buffers());
        assert!(update_len > tessera_sync::HEADER_BYTES as u64, "an update carries a payload");
        let expected = outer.expected(Some(cfg.max_update_norm));
        let layout_hash = template.layout().hash();
        Ok(Self { layout_hash, gpt, template, outer, expected, update_len, state_len, cfg })
    }

    /// Parameters in the model.
    pub fn n(&self) -> usize {
        self.template.numel()
    }

    /// The run's initial state (round 0), as every peer derives it from the config.
    pub fn initial_state(&self) -> GlobalState {
        GlobalState::initial(self.layout_hash, self.template.to_flat(), self.outer.buffers())
    }

    /// What a valid update must look like (layout, length, norm bound).
    pub fn expected(&self) -> &Expected {
        &self.expected
    }

    /// One round of a hub or all-gather algorithm applied to `state`: the accepted
    /// contributions combined in peer order (none: the outer step alone) and the outer step.
    /// The coordinator's close and `tessera audit`'s replay both take this one path, so an
    /// audit recomputes exactly what the coordinator computed. NoLoCo closes through its
    /// replicas instead.
    pub fn step<C: Contribute>(
        &self,
        state: &mut GlobalState,
        round: u64,
        contribs: &[C],
    ) -> Result<Option<Combined>, CoordError> {
        assert_eq!(state.round, round, "a round is applied to the state it started from");
        let combined = match contribs.is_empty() {
            true => None,
            false => Some(self.outer.combine(round, contribs)?),
        };
        state.apply(&self.outer, combined.as_ref().map(|c| c.values.as_slice()))?;
        assert_eq!(state.round, round + 1, "a round closes once");
        Ok(combined)
    }

    /// Round `round` recomputed on `state` from its accepted updates' blobs, in the order the
    /// round accepted them: what `tessera audit` and the fault simulator check a closed round
    /// by. Hub and all-gather algorithms only (NoLoCo closes through its replicas).
    /// An error names the update (its index in `blobs`) that did not decode.
    pub fn replay(&self, state: &mut GlobalState, round: u64, blobs: &[&[u8]]) -> Result<(), ReplayError> {
        let mut contribs = Vec::with_capacity(blobs.len());
        for (i, b) in blobs.iter().enumerate() {
            contribs.push(self.contribution(i, b).map_err(|err| ReplayError { update: Some(i), err })?);
        }
        self.step(state, round, &contribs).map_err(|err| ReplayError { update: None, err })?;
        Ok(())
    }

    /// The `index`th accepted update of a round, decoded from its blob.
    pub fn contribution(&self, index: usize, blob: &[u8]) -> Result<Contribution, CoordError> {
        let d = decode_update(blob, &self.expected)?;
        Ok(Contribution { peer: index as u64, weight: 1.0, values: d.values, support: d.support })
    }

    /// Decodes a state blob of this run, which must hash to `want`.
    pub fn decode_state(&self, blob: &[u8], want: &Hash32) -> Result<GlobalState, CoordError> {
        if blob.len() != self.state_len {
            return Err(CoordError::State(format!(
                "blob of {} bytes, expected {}",
                blob.len(),
                self.state_len
            )));
        }
        if blake3::hash(blob).as_bytes() != want {
            return Err(CoordError::State("checkpoint does not hash to the announced state".into()));
        }
        GlobalState::decode(blob, &self.layout_hash, self.n(), self.outer.buffers())
    }

    /// NoLoCo: the replicas a coordinator restarted after `round` closed rounds restores:
    /// those the last close's `Accept` names, each read by `state` and checked to hold
    /// `round`. Both the daemon's store and the simulator's restore through this.
    pub fn restore_replicas<E: From<CoordError>>(
        &self,
        round: u64,
        last_accept: Option<&Message>,
        mut state: impl FnMut(&Hash32) -> Result<GlobalState, E>,
    ) -> Result<Vec<(PeerId, GlobalState)>, E> {
        if round == 0 {
            return Ok(Vec::new());
        }
        let closed = last_accept
            .and_then(ClosedRound::of)
            .ok_or_else(|| CoordError::State(format!("round {} closed without an Accept", round - 1)))?;
        let mut out = Vec::with_capacity(closed.replicas.len());
        for (peer, h) in closed.replicas {
            let s = state(&h)?;
            if s.round != round {
                let why = format!("a replica of round {} after round {}", s.round, round - 1);
                return Err(CoordError::State(why).into());
            }
            out.push((peer, s));
        }
        Ok(out)
    }

    /// The mean loss (nats per byte) of parameters `theta` on `batches`.
    pub fn mean_loss(&self, theta: &[f32], batches: &[tessera_model::Batch]) -> Result<f64, CoordError> {
        let model = Gpt { cfg: self.gpt.clone(), params: self.params(theta)? };
        let tr = tessera_model::Trainer::new(model, tessera_model::AdamWConfig::default())?;
        let mut s = 0.0;
        for b in batches {
            s += f64::from(tr.eval_loss(b)?);
        }
        Ok(s / batches.len().max(1) as f64)
    }

    /// The mean validation loss of `theta` on the first `batches` validation batches.
    pub fn val_loss(
        &self,
        ds: &tessera_data::Dataset,
        theta: &[f32],
        batches: u64,
    ) -> Result<f64, CoordError> {
        let b: Vec<_> = (0..batches)
            .map(|i| ds.val_batch(i, self.cfg.batch, self.gpt.context))
            .collect::<Result<_, _>>()?;
        self.mean_loss(theta, &b)
    }

    /// The parameters `theta` in this run's layout, as a parameter set (for evaluation and
    /// export).
    pub fn params(&self, theta: &[f32]) -> Result<ParamSet, CoordError> {
        let mut p = self.template.clone();
        p.load_flat(theta)?;
        Ok(p)
    }
}

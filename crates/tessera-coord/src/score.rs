//! Update scoring (after Templar's Gauntlet): how much one update, applied alone to the round's
//! start state, lowers the loss on a fixed held-out set (a harmful update raises it), on the
//! trainer's own assigned batches, and on batches of a slot nobody was assigned.
//!
//! Whether an update was trained on its assigned data is read by comparing updates on the same
//! batches: the trainer's own update must lower the loss on its assigned batches clearly more
//! than the round's other updates do (they never saw those batches). Comparing one update's
//! gain on its own batches with its gain on unseen ones is weaker: on the tiny model the
//! difference between two sets of batches outweighs what one pass over them memorizes (the
//! tests measure both).

use tessera_data::{BatchKey, Dataset};

use crate::{CoordError, GlobalState, RunSpec};

/// Most batches one set may hold.
pub const MAX_SCORE_BATCHES: u64 = 64;
/// The data slot whose batches stand for "data nobody trained on" (never assigned: units are
/// numbered from 0 per round).
pub const UNSEEN_SLOT: u64 = u64::MAX;

/// Loss improvements (before − after, nats per byte) from applying one update alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// On the first validation batches.
    pub held_out: f64,
    /// On the batches of the last steps of the trainer's assigned unit.
    pub own: f64,
    /// On the same steps' batches of [`UNSEEN_SLOT`].
    pub unseen: f64,
}

impl Score {
    /// The three losses as f64 bit patterns, as a `ScoreReport` carries them.
    pub fn to_bits(&self) -> [u64; 3] {
        [self.held_out.to_bits(), self.own.to_bits(), self.unseen.to_bits()]
    }

    pub fn from_bits(b: [u64; 3]) -> Self {
        Self { held_out: f64::from_bits(b[0]), own: f64::from_bits(b[1]), unseen: f64::from_bits(b[2]) }
    }

    /// The held-out gain in millionths, as the ledger weighs it (and a validator signs it).
    pub fn micro(&self) -> i64 {
        (self.held_out * 1e6).round().clamp(-1e15, 1e15) as i64
    }
}

/// One update to score: what the coordinator hands its driver.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreJob {
    pub round: u64,
    pub peer: crate::PeerId,
    pub unit: (u64, u64),
    /// The decoded update.
    pub values: Vec<f32>,
    /// The round's start state.
    pub state: std::sync::Arc<GlobalState>,
    pub batches: u64,
}

/// Runs a [`ScoreJob`].
pub fn run_score(spec: &RunSpec, ds: &Dataset, job: &ScoreJob) -> Result<Score, CoordError> {
    score(spec, ds, &job.state, &job.values, job.unit, job.batches)
}

/// Scores the decoded update `values` of the unit `(data_round, slot)` against `state`, on
/// `batches` batches per set.
pub fn score(
    spec: &RunSpec,
    ds: &Dataset,
    state: &GlobalState,
    values: &[f32],
    (data_round, slot): (u64, u64),
    batches: u64,
) -> Result<Score, CoordError> {
    if batches == 0 || batches > MAX_SCORE_BATCHES {
        return Err(CoordError::Config(format!("score on 1 to {MAX_SCORE_BATCHES} batches, not {batches}")));
    }
    if spec.outer.exchange() == tessera_sync::Exchange::Pairs {
        return Err(CoordError::Config("NoLoCo has no shared state to score an update against".into()));
    }
    let mut after = state.clone();
    after.apply(&spec.outer, Some(values))?;
    let (c, ctx) = (&spec.cfg, spec.gpt.context);
    let steps = spec.cfg.h();
    let train = |slot: u64| -> Result<Vec<tessera_model::Batch>, CoordError> {
        (0..batches)
            .map(|i| {
                // The unit's last steps' batches, the ones its end state fits best.
                let key = BatchKey { seed: c.seed, round: data_round, slot, step: steps - 1 - i % steps };
                Ok(ds.train_batch(&key, c.batch, ctx)?)
            })
            .collect()
    };
    let held: Vec<_> = (0..batches).map(|i| ds.val_batch(i, c.batch, ctx)).collect::<Result<_, _>>()?;
    let gain = |b: &[tessera_model::Batch]| -> Result<f64, CoordError> {
        Ok(spec.mean_loss(&state.theta, b)? - spec.mean_loss(&after.theta, b)?)
    };
    let s = Score { held_out: gain(&held)?, own: gain(&train(slot)?)?, unseen: gain(&train(UNSEEN_SLOT)?)? };
    assert!(s.held_out.is_finite() || values.iter().any(|v| !v.is_finite()), "finite updates score finitely");
    Ok(s)
}

//! Cheats, for drills only: what a dishonest trainer sends instead of its honest update. The
//! protocol simulator (and later `tessera node --cheat`) applies one to the honest result, so
//! the defences are tested against the real attack, not a description of it.

use tessera_sync::encode_update;

use crate::{CoordError, GlobalState, RunSpec, Trained};

/// A dishonest trainer's behaviour.
#[derive(Debug, Clone, PartialEq)]
pub enum Cheat {
    /// The model-replacement attack (DiLoCo): the update that, averaged with `peers - 1`
    /// updates of zero and applied by one Nesterov step, lands the shared model on `target`:
    /// `d = peers · (θ − target) / (η (1 + μ))`, sent within the norm bound.
    Poison { target: Vec<f32>, peers: usize },
}

impl Cheat {
    /// What the cheating trainer commits instead of `honest`, trained from `state`.
    pub fn apply(&self, spec: &RunSpec, state: &GlobalState, honest: Trained) -> Result<Trained, CoordError> {
        match self {
            Cheat::Poison { target, peers } => {
                let c = &spec.cfg;
                if target.len() != state.theta.len() {
                    return Err(CoordError::Config("the poison target has another size".into()));
                }
                let k = *peers as f32 / (c.outer_lr * (1.0 + c.outer_momentum));
                let d: Vec<f32> = state.theta.iter().zip(target).map(|(t, x)| k * (t - x)).collect();
                let s = &spec.outer.s;
                let update = encode_update(s.algorithm, s.codec, spec.layout_hash, honest.round, &d);
                Ok(honest.with_update(update))
            }
        }
    }
}

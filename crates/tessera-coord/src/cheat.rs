//! Cheats, for drills only: what a dishonest trainer sends instead of its honest update. The
//! protocol simulator (and later `tessera node --cheat`) applies one to the honest result, so
//! the defences are tested against the real attack, not a description of it.

use tessera_sync::{decode_update, encode_update, frame_update};

use crate::{CoordError, GlobalState, PeerId, RunSpec, Trained};

/// A dishonest trainer's behaviour.
#[derive(Debug, Clone, PartialEq)]
pub enum Cheat {
    /// The model-replacement attack (DiLoCo): the update that, averaged with `peers - 1`
    /// updates of zero and applied by one Nesterov step, lands the shared model on `target`:
    /// `d = peers · (θ − target) / (η (1 + μ))`, sent within the norm bound.
    Poison { target: Vec<f32>, peers: usize },
    /// Resubmits another peer's update of this round as its own.
    Copy { of: PeerId },
    /// Resubmits its own update of an earlier round, framed with the new round's number.
    Replay,
}

/// The cheats a node can be told to run (`tessera node --cheat KIND`, a hidden drill flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheatKind {
    /// [`Cheat::Poison`] toward the initial model shifted by 0.5 everywhere.
    Poison,
    /// [`Cheat::Replay`].
    Replay,
}

impl std::str::FromStr for CheatKind {
    type Err = CoordError;
    fn from_str(s: &str) -> Result<Self, CoordError> {
        match s {
            "poison" => Ok(CheatKind::Poison),
            "replay" => Ok(CheatKind::Replay),
            other => Err(CoordError::Config(format!("unknown cheat {other:?} (poison, replay)"))),
        }
    }
}

impl CheatKind {
    /// The cheat against a run of `spec`.
    pub fn for_run(self, spec: &RunSpec) -> Cheat {
        match self {
            CheatKind::Poison => {
                let target = spec.initial_state().theta.iter().map(|x| x + 0.5).collect();
                Cheat::Poison { target, peers: spec.cfg.min_peers }
            }
            CheatKind::Replay => Cheat::Replay,
        }
    }
}

/// What a cheat may use besides its own honest result: the update it copies (another peer's
/// of this round) and its own earlier update, as the driver saw them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loot<'a> {
    pub copy: Option<&'a [u8]>,
    pub earlier: Option<&'a [u8]>,
}

impl Cheat {
    /// What the cheating trainer commits instead of `honest`, trained from `state`.
    /// (A cheat without its loot, such as a copy before anything could be copied, sends the
    /// honest result.)
    pub fn apply(
        &self,
        spec: &RunSpec,
        state: &GlobalState,
        honest: Trained,
        loot: Loot,
    ) -> Result<Trained, CoordError> {
        match self {
            Cheat::Copy { .. } => Ok(match loot.copy {
                Some(b) => honest.with_update(b.to_vec()),
                None => honest,
            }),
            Cheat::Replay => {
                let Some(old) = loot.earlier else { return Ok(honest) };
                // The same payload, framed with the new round's number.
                let d = decode_update(old, spec.expected())?;
                let s = &spec.outer.s;
                let payload = &old[tessera_sync::HEADER_BYTES..];
                let n = d.header.n as usize;
                let update =
                    frame_update(spec.outer.algorithm(), s.codec, spec.layout_hash, honest.round, n, payload);
                Ok(honest.with_update(update))
            }
            Cheat::Poison { target, peers } => {
                let c = &spec.cfg;
                if target.len() != state.theta.len() {
                    return Err(CoordError::Config("the poison target has another size".into()));
                }
                let k = *peers as f32 / (c.outer_lr * (1.0 + c.outer_momentum));
                let d: Vec<f32> = state.theta.iter().zip(target).map(|(t, x)| k * (t - x)).collect();
                let s = &spec.outer.s;
                let update =
                    encode_update(spec.outer.algorithm(), s.codec, spec.layout_hash, honest.round, &d);
                Ok(honest.with_update(update))
            }
        }
    }
}

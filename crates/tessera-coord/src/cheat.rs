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
    /// Sends a random direction scaled to its honest update's norm (seeded by `seed` and the
    /// round), committing to its honest states.
    Random { seed: u64 },
}

/// How a dishonest trainer skimps on the training itself (drills only; the
/// [`crate::Worker`] runs it, and commits to what it computed, as a real shirker would).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shirk {
    /// Trains only the first half of its H steps (the rest of its commitment repeats the
    /// half-trained state).
    SkipSteps,
    /// Trains on the batches of a slot it was not assigned.
    WrongData,
    /// Trains honestly but commits, as the end of the middle segment, a state it never
    /// computed.
    Forge,
    /// Trains on a noisier unit: its assigned batches with half of the target bytes replaced
    /// by seeded random ones (a drill of data quality for the ledger's rewards; the spot checks
    /// would prove it, since it is not the assigned data).
    NoisyData,
}

/// The slot a wrong-data shirker trains on instead of its own: `slot + WRONG_SLOT`.
pub const WRONG_SLOT: u64 = 1 << 20;

impl Shirk {
    /// The steps run and the slot read, out of `h` steps of `slot`.
    pub(crate) fn plan(s: Option<Shirk>, h: u64, slot: u64) -> (u64, u64) {
        match s {
            Some(Shirk::SkipSteps) => (h.div_ceil(2), slot),
            Some(Shirk::WrongData) => (h, slot.wrapping_add(WRONG_SLOT)),
            _ => (h, slot),
        }
    }

    /// A noisy-data shirker's batch: every other target byte replaced by a seeded one.
    pub(crate) fn noise(s: Option<Shirk>, b: &mut tessera_model::Batch, step: u64) {
        if s != Some(Shirk::NoisyData) {
            return;
        }
        for (i, t) in b.targets.data_mut().iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
            let h = blake3::hash(&[step.to_le_bytes(), (i as u64).to_le_bytes()].concat());
            *t = f32::from(h.as_bytes()[0]);
        }
    }

    /// A forger's commitment: the middle segment's end replaced (never the final state).
    pub(crate) fn forge(s: Option<Shirk>, ends: &mut [crate::Hash32]) {
        if s == Some(Shirk::Forge) && ends.len() >= 2 {
            let mid = (ends.len() - 2) / 2;
            ends[mid] = *blake3::hash(&ends[mid]).as_bytes();
        }
    }
}

/// The cheats a node can be told to run (`tessera node --cheat KIND`, a hidden drill flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheatKind {
    /// [`Cheat::Poison`] toward the initial model shifted by 0.5 everywhere.
    Poison,
    /// [`Cheat::Replay`].
    Replay,
    /// [`Cheat::Random`].
    Random,
    /// [`Cheat::Copy`] of a twin's update (a node takes it from its drill's twin directory).
    Copy,
    /// [`Shirk::SkipSteps`].
    SkipSteps,
    /// [`Shirk::WrongData`].
    WrongData,
    /// [`Shirk::Forge`].
    Forge,
    /// [`Shirk::NoisyData`].
    NoisyData,
    /// A validator passing everything unchecked ([`crate::Behaviour::Lazy`]).
    LazyValidator,
    /// A validator claiming a mismatch on everything ([`crate::Behaviour::Lying`]).
    LyingValidator,
}

impl std::str::FromStr for CheatKind {
    type Err = CoordError;
    fn from_str(s: &str) -> Result<Self, CoordError> {
        match s {
            "poison" => Ok(CheatKind::Poison),
            "replay" => Ok(CheatKind::Replay),
            "random" => Ok(CheatKind::Random),
            "copy" => Ok(CheatKind::Copy),
            "skip-steps" => Ok(CheatKind::SkipSteps),
            "wrong-data" => Ok(CheatKind::WrongData),
            "forge" => Ok(CheatKind::Forge),
            "noisy-data" => Ok(CheatKind::NoisyData),
            "lazy-validator" => Ok(CheatKind::LazyValidator),
            "lying-validator" => Ok(CheatKind::LyingValidator),
            other => Err(CoordError::Config(format!(
                "unknown cheat {other:?} (poison, replay, random, copy, skip-steps, wrong-data, forge, noisy-data, lazy-validator, lying-validator)"
            ))),
        }
    }
}

impl CheatKind {
    /// The cheat against a run of `spec`.
    pub fn for_run(self, spec: &RunSpec) -> Drill {
        match self {
            CheatKind::Poison => {
                let target = spec.initial_state().theta.iter().map(|x| x + 0.5).collect();
                Drill::Send(Cheat::Poison { target, peers: spec.cfg.min_peers })
            }
            CheatKind::Replay => Drill::Send(Cheat::Replay),
            CheatKind::Random => Drill::Send(Cheat::Random { seed: spec.cfg.seed }),
            // Whose update is the driver's to find (a node: its `--twin-dir`).
            CheatKind::Copy => Drill::Send(Cheat::Copy { of: [0; 32] }),
            CheatKind::SkipSteps => Drill::Train(Shirk::SkipSteps),
            CheatKind::WrongData => Drill::Train(Shirk::WrongData),
            CheatKind::Forge => Drill::Train(Shirk::Forge),
            CheatKind::NoisyData => Drill::Train(Shirk::NoisyData),
            CheatKind::LazyValidator | CheatKind::LyingValidator => {
                Drill::Validate(self.validator_behaviour().expect("a validator's cheat"))
            }
        }
    }

    /// A validator's cheat as its behaviour (`None` for a trainer's).
    pub fn validator_behaviour(self) -> Option<crate::Behaviour> {
        match self {
            CheatKind::LazyValidator => Some(crate::Behaviour::Lazy),
            CheatKind::LyingValidator => Some(crate::Behaviour::Lying),
            _ => None,
        }
    }
}

/// A drill: what is sent instead of the honest update, or how the training itself is
/// skimped.
#[derive(Debug, Clone, PartialEq)]
pub enum Drill {
    Send(Cheat),
    Train(Shirk),
    /// A validator's cheat.
    Validate(crate::Behaviour),
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
            Cheat::Random { seed } => {
                let honest_values = decode_update(&honest.update, spec.expected())?.values;
                let norm = honest_values.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                let rng = tessera_tensor::rng::Philox::new(seed ^ 0x7a4d_0a11);
                let offset = honest.round.wrapping_mul(state.theta.len() as u64);
                let mut d: Vec<f32> =
                    (0..state.theta.len() as u64).map(|i| rng.normal(1, offset + i)).collect();
                let dn = d.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt().max(1e-12);
                d.iter_mut().for_each(|x| *x = (f64::from(*x) * norm / dn) as f32);
                let s = &spec.outer.s;
                let update =
                    encode_update(spec.outer.algorithm(), s.codec, spec.layout_hash, honest.round, &d);
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

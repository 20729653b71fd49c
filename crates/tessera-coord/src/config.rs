//! A networked run's configuration: the training settings every trainer must share (the one
//! [`Training`] section the simulator also holds), and the protocol's membership and timings.
//! The coordinator reads it from `run.toml` and hands the same text to every node in its
//! `Welcome`, so a node never trains on settings of its own.

use serde::{Deserialize, Serialize};
use tessera_sync::{GlobalOptimizer, OuterSettings, Training};

use crate::CoordError;

/// Most trainers one round may hold.
pub const MAX_ROUND_PEERS: usize = 16_384;
/// Longest config text a `Welcome` may carry.
pub const MAX_CONFIG_TEXT: usize = 16 * 1024;

/// Everything a networked run depends on: the shared training settings (flattened into the
/// same flat table) and the protocol's membership and timings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// The model, data order, inner and outer optimizers and codec (see [`Training`]); a
    /// networked run takes every algorithm:
    /// - `diloco`: H inner AdamW steps, then Nesterov on the mean Δ;
    /// - `ddp`: every round is one step, the mean f32 gradient feeds one global AdamW step;
    /// - `sparseloco`: H inner steps, top-k 2-bit Δ with error feedback, all-gathered;
    /// - `demo`: one gradient per round, top-k DCT coefficients of the decoupled momentum,
    ///   all-gathered, sign step;
    /// - `noloco`: every trainer keeps its own replica; seeded pairs exchange (φ, Δ) with each
    ///   other and step toward their pair's means; no shared model.
    #[serde(flatten)]
    pub training: Training,
    /// Hex manifest hash of the dataset every trainer must hold ("" = not checked).
    pub dataset: String,
    /// The first round starts once this many trainers are members; later rounds go on with
    /// whoever is there (at least one).
    pub min_peers: usize,
    /// A trainer commits to its local state after every this many inner steps (the k of a
    /// spot check's segment; see `tessera_verify::RoundCommitment`).
    pub commit_every: u64,
    /// Who re-executes trainers' work: `"validators"` (validator nodes, refereed by the
    /// coordinator, which checks itself while none is present), `"coordinator"` or `"off"`.
    pub validate: crate::Validate,
    /// The share of updates spot-checked each round (each checked update has one segment of
    /// `commit_every` steps re-run); see BENCHMARKS.md for the detection it buys.
    pub check_rate: f64,
    /// The share of validator tasks first sent as a decoy (an end leaf nobody can reach), so
    /// that a validator that passes work without checking it is caught.
    pub decoy_rate: f64,
    /// Each accepted update is scored on this many held-out (and own, and unseen) batches,
    /// applied alone to the round's start state (0, the default: no scoring, which costs the
    /// coordinator about 15% of the trainers' compute at 2 batches; NoLoCo is never scored).
    pub score_batches: u64,
    /// An update that raises the held-out loss by more than this (nats/byte) when applied
    /// alone is left out as harmful. Gross harm only: an honest update applied alone at full
    /// weight often raises it a little (BENCHMARKS.md measured down to −0.069 in the demo).
    pub harm_tolerance: f64,
    /// The run's economics (the ledger's `StakeRules`): `min_stake` every trainer and
    /// validator locks to join, `reward_per_round` split over the accepted updates by score,
    /// `check_fee` per check a validator settles, and `slash_bps`/`whistleblower_bps`: the
    /// share of a proven cheat's stake taken, and the share of that paid to who proved it.
    #[serde(flatten)]
    pub stakes: tessera_ledger::StakeRules,
    /// At most this many trainers per round (members beyond it wait).
    pub max_peers: usize,
    /// Trainers send a heartbeat this often; one silent for `silence_ms` has left.
    pub heartbeat_ms: u64,
    pub silence_ms: u64,
    /// After a coordinator restart, how long the trainers of the re-opened round have to
    /// reconnect (on top of `silence_ms`).
    pub rejoin_grace_ms: u64,
    /// Deadline of a round while some trainer's speed is unknown.
    pub round_timeout_ms: u64,
    /// Adaptive deadlines: `slack ×` the slowest known round time, clamped to these bounds.
    pub deadline_slack: f64,
    pub min_round_ms: u64,
    pub max_round_ms: u64,
}

impl std::ops::Deref for RunConfig {
    type Target = Training;
    fn deref(&self) -> &Training {
        &self.training
    }
}

impl std::ops::DerefMut for RunConfig {
    fn deref_mut(&mut self) -> &mut Training {
        &mut self.training
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            training: Training { inner_steps: 20, rounds: 10, inner_warmup: 20, ..Training::default() },
            dataset: String::new(),
            min_peers: 1,
            commit_every: 1,
            validate: crate::Validate::Validators,
            check_rate: 0.5,
            decoy_rate: 0.1,
            score_batches: 0,
            harm_tolerance: 0.5,
            stakes: tessera_ledger::StakeRules::default(),
            max_peers: 64,
            heartbeat_ms: 500,
            silence_ms: 4000,
            rejoin_grace_ms: 15_000,
            round_timeout_ms: 300_000,
            deadline_slack: 3.0,
            min_round_ms: 2000,
            max_round_ms: 600_000,
        }
    }
}

/// Parses a flat TOML table over `defaults`: the keys given replace the default values, and a
/// key the defaults do not have is refused by name (`T` may flatten sections such as
/// [`Training`] into its table, which serde's own `deny_unknown_fields` cannot check).
pub fn parse_flat<T: Serialize + serde::de::DeserializeOwned>(defaults: &T, text: &str) -> Result<T, String> {
    let mut base = toml::Table::try_from(defaults).map_err(|e| e.to_string())?;
    let user: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    for (key, value) in user {
        if !base.contains_key(&key) {
            let known: Vec<&str> = base.keys().map(String::as_str).collect();
            return Err(format!("unknown field `{key}`, expected one of {}", known.join(", ")));
        }
        base.insert(key, value);
    }
    T::deserialize(base).map_err(|e| e.to_string())
}

impl RunConfig {
    /// This config with `f` applied: `RunConfig::default().with(|c| c.rounds = 3)` sets shared
    /// training settings (reached through `Deref`) as easily as its own.
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Parses TOML over the defaults and validates it.
    pub fn from_toml(text: &str) -> Result<Self, CoordError> {
        if text.len() > MAX_CONFIG_TEXT {
            return Err(CoordError::Config(format!(
                "config of {} bytes exceeds {MAX_CONFIG_TEXT}",
                text.len()
            )));
        }
        let cfg: RunConfig = parse_flat(&RunConfig::default(), text).map_err(CoordError::Config)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The canonical TOML text of this config (what the coordinator hands to nodes).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a flat config always serializes")
    }

    /// The outer algorithm's settings (see [`tessera_sync::Outer`]); DDP's global optimizer is
    /// the inner AdamW.
    pub fn outer_settings(&self) -> Result<OuterSettings, CoordError> {
        Ok(self.training.outer_settings(GlobalOptimizer::AdamW(self.inner_adamw()))?)
    }

    /// Rejects impossible settings, naming them.
    pub fn validate(&self) -> Result<(), CoordError> {
        let bad = |m: &str| Err(CoordError::Config(m.to_string()));
        self.training.validate().map_err(|e| CoordError::Config(e.to_string()))?;
        if tessera_verify::segments(self.h(), self.commit_every).is_err() {
            return bad("commit_every must be at least 1 (and cut a round into at most 65536 segments)");
        }
        if self.stakes.slash_bps > 10_000 || self.stakes.whistleblower_bps > 10_000 {
            return bad("slash_bps and whistleblower_bps are basis points: at most 10000");
        }
        if !(0.0..=1.0).contains(&self.check_rate) || !(0.0..=1.0).contains(&self.decoy_rate) {
            return bad("check_rate and decoy_rate must be within [0, 1]");
        }
        if self.score_batches > crate::MAX_SCORE_BATCHES
            || self.harm_tolerance.is_nan()
            || self.harm_tolerance < 0.0
        {
            return bad("need score_batches <= 64 and harm_tolerance >= 0");
        }
        if self.min_peers == 0 || self.max_peers < self.min_peers || self.max_peers > MAX_ROUND_PEERS {
            return bad("need 1 <= min_peers <= max_peers <= 16384");
        }
        if self.heartbeat_ms == 0 || self.silence_ms <= self.heartbeat_ms {
            return bad("need 0 < heartbeat_ms < silence_ms");
        }
        if self.min_round_ms > self.max_round_ms || self.round_timeout_ms == 0 {
            return bad("need min_round_ms <= max_round_ms and round_timeout_ms > 0");
        }
        if !(self.deadline_slack.is_finite() && self.deadline_slack >= 1.0) {
            return bad("deadline_slack must be at least 1");
        }
        Ok(())
    }
}

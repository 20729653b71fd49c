//! A networked run's configuration: the training hyper-parameters every trainer must share,
//! and the protocol's timings. The coordinator reads it from `run.toml` and hands the same
//! text to every node in its `Welcome`, so a node never trains on settings of its own.

use serde::{Deserialize, Serialize};
use tessera_sync::{Codec, ValueCodec};

use crate::CoordError;

/// Most trainers one round may hold.
pub const MAX_ROUND_PEERS: usize = 1024;
/// Longest config text a `Welcome` may carry.
pub const MAX_CONFIG_TEXT: usize = 16 * 1024;

/// Everything a networked run depends on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Model preset: tiny | small | base.
    pub preset: String,
    /// Hex manifest hash of the dataset every trainer must hold ("" = not checked).
    pub dataset: String,
    /// Seeds the initial model and the data order.
    pub seed: u64,
    /// `diloco` (H inner AdamW steps, then Nesterov on the mean Δ) or `ddp` (every round is one
    /// step: the mean f32 gradient feeds one global AdamW step; needs `inner_steps = 1`).
    pub algo: String,
    /// Codec of DiLoCo's updates: f32 | int8 | 2bit | sign (DDP always sends f32).
    pub codec: String,
    pub chunk: usize,
    /// Inner steps per round (H) and rounds in the run.
    pub inner_steps: u64,
    pub rounds: u64,
    /// Sequences per trainer per inner step.
    pub batch: usize,
    pub inner_lr: f32,
    pub inner_warmup: u64,
    pub outer_lr: f32,
    pub outer_momentum: f32,
    /// Updates whose decoded L2 norm exceeds this are rejected.
    pub max_update_norm: f32,
    /// The first round starts once this many trainers are members; later rounds go on with
    /// whoever is there (at least one).
    pub min_peers: usize,
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

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            dataset: String::new(),
            seed: 1,
            algo: "diloco".into(),
            codec: "int8".into(),
            chunk: 4096,
            inner_steps: 20,
            rounds: 10,
            batch: 8,
            inner_lr: 3e-3,
            inner_warmup: 20,
            outer_lr: 0.7,
            outer_momentum: 0.9,
            max_update_norm: 1e6,
            min_peers: 1,
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

impl RunConfig {
    /// Parses TOML over the defaults and validates it.
    pub fn from_toml(text: &str) -> Result<Self, CoordError> {
        if text.len() > MAX_CONFIG_TEXT {
            return Err(CoordError::Config(format!(
                "config of {} bytes exceeds {MAX_CONFIG_TEXT}",
                text.len()
            )));
        }
        let cfg: RunConfig = toml::from_str(text).map_err(|e| CoordError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The canonical TOML text of this config (what the coordinator hands to nodes).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a flat config always serializes")
    }

    /// Inner steps per round.
    pub fn h(&self) -> u64 {
        self.inner_steps
    }

    /// The wire algorithm tag of the updates.
    pub fn algorithm(&self) -> tessera_sync::Algorithm {
        if self.algo == "ddp" {
            tessera_sync::Algorithm::Ddp
        } else {
            tessera_sync::Algorithm::DiLoCo
        }
    }

    /// The inner AdamW of DiLoCo's trainers, which is DDP's global optimizer.
    pub fn inner_adamw(&self) -> tessera_model::AdamWConfig {
        tessera_model::AdamWConfig {
            lr: self.inner_lr,
            warmup_steps: self.inner_warmup,
            total_steps: self.rounds * self.h(),
            ..tessera_model::AdamWConfig::default()
        }
    }

    /// The update codec.
    pub fn update_codec(&self) -> Result<Codec, CoordError> {
        if self.algo == "ddp" {
            return Ok(Codec::dense(ValueCodec::F32, self.chunk));
        }
        let v = match self.codec.as_str() {
            "f32" => ValueCodec::F32,
            "int8" => ValueCodec::Int8,
            "2bit" => ValueCodec::TwoBit,
            "sign" => ValueCodec::Sign,
            other => {
                return Err(CoordError::Config(format!("unknown codec {other:?} (f32, int8, 2bit, sign)")))
            }
        };
        let c = Codec::dense(v, self.chunk);
        c.validate().map_err(|e| CoordError::Config(e.to_string()))?;
        Ok(c)
    }

    /// Rejects impossible settings, naming them.
    pub fn validate(&self) -> Result<(), CoordError> {
        let bad = |m: &str| Err(CoordError::Config(m.to_string()));
        if self.algo != "diloco" && self.algo != "ddp" {
            return bad("algo must be \"diloco\" or \"ddp\"");
        }
        if self.algo == "ddp" && self.inner_steps != 1 {
            return bad("ddp takes one step per round: set inner_steps = 1");
        }
        self.update_codec()?;
        tessera_model::GptConfig::preset(&self.preset).map_err(|e| CoordError::Config(e.to_string()))?;
        if self.rounds == 0 || self.inner_steps == 0 || self.batch == 0 {
            return bad("rounds, inner_steps and batch must be at least 1");
        }
        if self.min_peers == 0 || self.max_peers < self.min_peers || self.max_peers > MAX_ROUND_PEERS {
            return bad("need 1 <= min_peers <= max_peers <= 1024");
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
        let rates = [self.inner_lr, self.outer_lr, self.outer_momentum, self.max_update_norm];
        if rates.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return bad("learning rates, momentum and max_update_norm must be finite and non-negative");
        }
        Ok(())
    }
}

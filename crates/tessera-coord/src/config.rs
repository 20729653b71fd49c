//! A networked run's configuration: the training hyper-parameters every trainer must share,
//! and the protocol's timings. The coordinator reads it from `run.toml` and hands the same
//! text to every node in its `Welcome`, so a node never trains on settings of its own.

use serde::{Deserialize, Serialize};
use tessera_sync::{Algorithm, Codec, GlobalOptimizer, OuterSettings, ValueCodec};

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
    /// The outer algorithm:
    /// - `diloco`: H inner AdamW steps, then Nesterov on the mean Δ;
    /// - `ddp`: every round is one step, the mean f32 gradient feeds one global AdamW step
    ///   (needs `inner_steps = 1`);
    /// - `sparseloco`: H inner steps, top-k 2-bit Δ with error feedback, all-gathered;
    /// - `demo`: one gradient per round, top-k DCT coefficients of the decoupled momentum,
    ///   all-gathered, sign step (needs `inner_steps = 1`);
    /// - `noloco`: every trainer keeps its own replica; seeded pairs exchange (φ, Δ) with each
    ///   other and step toward their pair's means; no shared model.
    pub algo: Algorithm,
    /// Codec of DiLoCo's and NoLoCo's updates: f32 | int8 | 2bit | sign (DDP sends f32,
    /// SparseLoCo top-k 2-bit, DeMo top-k f32 DCT coefficients).
    pub codec: ValueCodec,
    pub chunk: usize,
    /// Values kept per chunk by SparseLoCo and DeMo.
    pub topk: usize,
    /// SparseLoCo: error-feedback decay and outer step size.
    pub ef_beta: f32,
    pub sparse_lr: f32,
    /// DeMo: momentum decay, peak learning rate (warmup = `inner_warmup` rounds, cosine over
    /// the run) and weight decay.
    pub demo_beta: f32,
    pub demo_lr: f32,
    pub demo_weight_decay: f32,
    /// NoLoCo: the outer step size α and momentum β.
    pub noloco_alpha: f32,
    pub noloco_beta: f32,
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
            algo: Algorithm::DiLoCo,
            codec: ValueCodec::Int8,
            chunk: 4096,
            topk: 64,
            ef_beta: 0.95,
            sparse_lr: 1.0,
            demo_beta: 0.999,
            demo_lr: 1e-3,
            demo_weight_decay: 0.0,
            noloco_alpha: 0.7,
            noloco_beta: 0.5,
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

    /// The outer algorithm.
    pub fn algorithm(&self) -> Result<Algorithm, CoordError> {
        Ok(self.algo)
    }

    /// Inner steps per round actually taken (1 for the gradient methods).
    pub fn h(&self) -> u64 {
        self.inner_steps
    }

    /// The outer algorithm's settings (see [`tessera_sync::Outer`]).
    pub fn outer_settings(&self) -> Result<OuterSettings, CoordError> {
        Ok(OuterSettings {
            algorithm: self.algorithm()?,
            codec: self.update_codec()?,
            outer_lr: self.outer_lr,
            outer_momentum: self.outer_momentum,
            noloco_alpha: self.noloco_alpha,
            noloco_beta: self.noloco_beta,
            ef_beta: self.ef_beta,
            sparse_lr: self.sparse_lr,
            demo_beta: self.demo_beta,
            demo_weight_decay: self.demo_weight_decay,
            demo_schedule: tessera_model::AdamWConfig {
                lr: self.demo_lr,
                warmup_steps: self.inner_warmup,
                total_steps: self.rounds,
                ..tessera_model::AdamWConfig::default()
            },
            ddp: GlobalOptimizer::AdamW(self.inner_adamw()),
        })
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
        self.algorithm()?
            .codec(self.codec, self.chunk, self.topk)
            .map_err(|e| CoordError::Config(e.to_string()))
    }

    /// Rejects impossible settings, naming them.
    pub fn validate(&self) -> Result<(), CoordError> {
        let bad = |m: &str| Err(CoordError::Config(m.to_string()));
        let algo = self.algorithm()?;
        if matches!(algo, Algorithm::Ddp | Algorithm::DeMo) && self.inner_steps != 1 {
            return bad("ddp and demo take one gradient per round: set inner_steps = 1");
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
        let rates = [
            self.inner_lr,
            self.outer_lr,
            self.outer_momentum,
            self.max_update_norm,
            self.sparse_lr,
            self.demo_lr,
            self.demo_weight_decay,
            self.noloco_alpha,
            self.noloco_beta,
        ];
        if !(0.0..1.0).contains(&self.ef_beta) || !(0.0..1.0).contains(&self.demo_beta) {
            return bad("ef_beta and demo_beta must be in [0, 1)");
        }
        if rates.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return bad("learning rates, momentum and max_update_norm must be finite and non-negative");
        }
        Ok(())
    }
}

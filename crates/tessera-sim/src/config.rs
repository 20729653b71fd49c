//! The simulator's configuration (one flat TOML table in `tessera sim` configs).

use serde::{Deserialize, Serialize};
use tessera_model::AdamWConfig;
use tessera_sync::{Algorithm, Codec, GlobalOptimizer, OuterSettings, ValueCodec};

use crate::SimError;

/// Most peers one simulation may hold.
pub const MAX_PEERS: usize = 1024;

/// The peers' inner optimizer (and DDP's global one).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InnerOptimizer {
    AdamW,
    Sgd,
}

/// Everything a simulated run depends on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub peers: usize,
    /// ddp | diloco | noloco | sparseloco | demo.
    pub algo: Algorithm,
    /// Codec of the exchanged update for diloco and noloco: f32 | int8 | 2bit | sign.
    /// (ddp sends f32; sparseloco sends top-k + 2-bit; demo sends top-k DCT coefficients.)
    pub codec: ValueCodec,
    /// Inner steps per round (H). ddp and demo synchronize every step and ignore it.
    pub inner_steps: u64,
    pub rounds: u64,
    pub preset: String,
    /// Sequences per peer per inner step.
    pub batch: usize,
    pub seed: u64,
    /// adamw | sgd.
    pub inner_optimizer: InnerOptimizer,
    pub inner_lr: f32,
    pub inner_warmup: u64,
    /// DiLoCo's outer Nesterov step (η, μ); SparseLoCo's outer rate is `outer_lr` too.
    pub outer_lr: f32,
    pub outer_momentum: f32,
    pub noloco_alpha: f32,
    pub noloco_beta: f32,
    /// SparseLoCo's error-feedback decay and outer rate α.
    pub ef_beta: f32,
    pub sparse_lr: f32,
    /// Values kept per chunk by top-k codecs (SparseLoCo 64, DeMo 32 by default).
    pub topk: usize,
    pub chunk: usize,
    pub demo_beta: f32,
    pub demo_lr: f32,
    pub demo_weight_decay: f32,
    /// Peers' link speed (up and down) and round-trip time between any two nodes.
    pub bandwidth_mbps: f64,
    pub rtt_ms: f64,
    /// The hub (relay/aggregator) link speed.
    pub hub_bandwidth_mbps: f64,
    /// Simulated compute time of one inner step on one peer.
    pub step_compute_s: f64,
    /// Validation loss every N rounds (and at the end).
    pub eval_every: u64,
    pub eval_batches: u64,
    /// Updates whose decoded L2 norm exceeds this are rejected.
    pub max_update_norm: f32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            peers: 8,
            algo: Algorithm::DiLoCo,
            codec: ValueCodec::Int8,
            inner_steps: 50,
            rounds: 20,
            preset: "tiny".into(),
            batch: 8,
            seed: 1,
            inner_optimizer: InnerOptimizer::AdamW,
            inner_lr: 3e-3,
            inner_warmup: 50,
            outer_lr: 0.7,
            outer_momentum: 0.9,
            noloco_alpha: 0.7,
            noloco_beta: 0.5,
            ef_beta: 0.95,
            sparse_lr: 1.0,
            topk: 64,
            chunk: 4096,
            demo_beta: 0.999,
            demo_lr: 1e-3,
            demo_weight_decay: 0.0,
            bandwidth_mbps: 10.0,
            rtt_ms: 100.0,
            hub_bandwidth_mbps: 1000.0,
            step_compute_s: 0.05,
            eval_every: 5,
            eval_batches: 8,
            max_update_norm: 1e6,
        }
    }
}

impl SimConfig {
    pub fn algorithm(&self) -> Result<Algorithm, SimError> {
        Ok(self.algo)
    }

    /// Inner steps per round actually used (1 for ddp and demo).
    pub fn h(&self) -> u64 {
        match self.algorithm() {
            Ok(Algorithm::Ddp) | Ok(Algorithm::DeMo) => 1,
            _ => self.inner_steps,
        }
    }

    /// The codec the algorithm sends with.
    pub fn update_codec(&self) -> Result<Codec, SimError> {
        Ok(self.algorithm()?.codec(self.codec, self.chunk, self.topk)?)
    }

    /// The inner AdamW of the peers (DDP's global optimizer).
    pub fn inner_adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.inner_lr,
            warmup_steps: self.inner_warmup,
            total_steps: self.rounds * self.h(),
            ..AdamWConfig::default()
        }
    }

    /// The outer algorithm's settings (see [`tessera_sync::Outer`]).
    pub fn outer_settings(&self) -> Result<OuterSettings, SimError> {
        let ddp = match self.inner_optimizer {
            InnerOptimizer::Sgd => GlobalOptimizer::Sgd { lr: self.inner_lr },
            InnerOptimizer::AdamW => GlobalOptimizer::AdamW(self.inner_adamw()),
        };
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
            demo_schedule: AdamWConfig {
                lr: self.demo_lr,
                warmup_steps: self.inner_warmup,
                total_steps: self.rounds,
                ..AdamWConfig::default()
            },
            ddp,
        })
    }

    /// Rejects impossible settings, naming them.
    pub fn validate(&self) -> Result<(), SimError> {
        self.algorithm()?;
        self.update_codec()?;
        let bad = |m: &str| Err(SimError::Config(m.to_string()));
        if self.peers == 0 || self.peers > MAX_PEERS {
            return bad("peers must be in 1..=1024");
        }
        if self.rounds == 0 || self.inner_steps == 0 || self.batch == 0 || self.eval_batches == 0 {
            return bad("rounds, inner_steps, batch and eval_batches must be at least 1");
        }
        let pos = [self.bandwidth_mbps, self.hub_bandwidth_mbps];
        if pos.iter().any(|v| !(v.is_finite() && *v > 0.0))
            || !(self.rtt_ms >= 0.0 && self.step_compute_s >= 0.0)
        {
            return bad("bandwidths must be positive; rtt_ms and step_compute_s non-negative");
        }
        let rates = [self.inner_lr, self.outer_lr, self.sparse_lr, self.demo_lr, self.max_update_norm];
        if rates.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return bad("learning rates and max_update_norm must be finite and non-negative");
        }
        Ok(())
    }
}

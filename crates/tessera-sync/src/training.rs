//! The training settings every distributed run shares, defined once: the model, the data
//! order, the inner optimizer, the outer algorithm and its codec. The simulator's config and a
//! networked run's `run.toml` each hold one `Training`, flattened into their flat TOML tables,
//! and validate it with [`Training::validate`]; both derive the same [`OuterSettings`] and inner
//! AdamW from it, so a simulated and a networked run of the same settings compute the same
//! bits.

use serde::{Deserialize, Serialize};
use tessera_model::{AdamWConfig, GptConfig};

use crate::{Algorithm, Codec, GlobalOptimizer, OuterSettings, SyncError, ValueCodec};

/// The largest `max_update_norm` a run may set.
pub const MAX_UPDATE_NORM: f32 = 1e18;

/// The shared training settings (every key of the flat TOML tables that is not about the
/// simulated network or the protocol's timings).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Model preset: micro | tiny | small | base.
    pub preset: String,
    /// Seeds the initial model and the data order.
    pub seed: u64,
    /// The outer algorithm: ddp | diloco | noloco | sparseloco | demo.
    pub algo: Algorithm,
    /// Codec of DiLoCo's and NoLoCo's updates: f32 | int8 | 2bit | sign (DDP sends f32,
    /// SparseLoCo top-k 2-bit, DeMo top-k f32 DCT coefficients).
    pub codec: ValueCodec,
    pub chunk: usize,
    /// Values kept per chunk by SparseLoCo and DeMo.
    pub topk: usize,
    /// Inner steps per round (H); ddp and demo take one gradient per round and ignore it.
    pub inner_steps: u64,
    pub rounds: u64,
    /// Sequences per peer per inner step.
    pub batch: usize,
    /// The inner AdamW (DDP's global optimizer): peak rate and warmup steps; cosine over the run.
    pub inner_lr: f32,
    pub inner_warmup: u64,
    /// DiLoCo's outer Nesterov step (η, μ).
    pub outer_lr: f32,
    pub outer_momentum: f32,
    /// NoLoCo's outer step size α and momentum β.
    pub noloco_alpha: f32,
    pub noloco_beta: f32,
    /// SparseLoCo's error-feedback decay and outer rate.
    pub ef_beta: f32,
    pub sparse_lr: f32,
    /// DeMo's momentum decay, peak learning rate (warmup = `inner_warmup` rounds, cosine over
    /// the run) and weight decay.
    pub demo_beta: f32,
    pub demo_lr: f32,
    pub demo_weight_decay: f32,
    /// Updates whose decoded L2 norm exceeds this are rejected: a sanity limit only (an honest
    /// DiLoCo update of the tiny model has a norm of about 50).
    /// Largest L2 norm of an accepted update (at most [`MAX_UPDATE_NORM`]).
    pub max_update_norm: f32,
    /// Robust aggregation (DDP, DiLoCo): an update over this many times the round's median
    /// update norm is clipped to it; 0 turns it off.
    pub clip_median: f32,
}

impl Default for Training {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            seed: 1,
            algo: Algorithm::DiLoCo,
            codec: ValueCodec::Int8,
            chunk: 4096,
            topk: 64,
            inner_steps: 50,
            rounds: 20,
            batch: 8,
            inner_lr: 3e-3,
            inner_warmup: 50,
            outer_lr: 0.7,
            outer_momentum: 0.9,
            noloco_alpha: 0.7,
            noloco_beta: 0.5,
            ef_beta: 0.95,
            sparse_lr: 1.0,
            demo_beta: 0.999,
            demo_lr: 1e-3,
            demo_weight_decay: 0.0,
            max_update_norm: 1e5,
            clip_median: 3.0,
        }
    }
}

impl Training {
    /// Inner steps per round actually taken (1 for the gradient methods, ddp and demo).
    pub fn h(&self) -> u64 {
        match self.algo {
            Algorithm::Ddp | Algorithm::DeMo => 1,
            _ => self.inner_steps,
        }
    }

    /// The codec the algorithm sends its contributions in.
    pub fn update_codec(&self) -> Result<Codec, SyncError> {
        self.algo.codec(self.codec, self.chunk, self.topk)
    }

    /// The peers' inner AdamW (and DDP's global optimizer): warmup, then cosine over the run.
    pub fn inner_adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.inner_lr,
            warmup_steps: self.inner_warmup,
            total_steps: self.rounds.saturating_mul(self.h()),
            ..AdamWConfig::default()
        }
    }

    /// The outer algorithm's settings, with `ddp` as DDP's global optimizer.
    pub fn outer_settings(&self, ddp: GlobalOptimizer) -> Result<OuterSettings, SyncError> {
        Ok(OuterSettings { training: self.clone(), codec: self.update_codec()?, ddp })
    }

    /// Rejects impossible settings, naming them.
    pub fn validate(&self) -> Result<(), SyncError> {
        let bad = |m: &str| Err(SyncError::Config(m.to_string()));
        self.update_codec()?;
        GptConfig::preset(&self.preset).map_err(|e| SyncError::Config(e.to_string()))?;
        if self.rounds == 0 || self.inner_steps == 0 || self.batch == 0 {
            return bad("rounds, inner_steps and batch must be at least 1");
        }
        if !(0.0..1.0).contains(&self.ef_beta) || !(0.0..1.0).contains(&self.demo_beta) {
            return bad("ef_beta and demo_beta must be in [0, 1)");
        }
        let rates = [
            self.inner_lr,
            self.outer_lr,
            self.outer_momentum,
            self.noloco_alpha,
            self.noloco_beta,
            self.sparse_lr,
            self.demo_lr,
            self.demo_weight_decay,
            self.max_update_norm,
            self.clip_median,
        ];
        if rates.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return bad(
                "learning rates, momenta, weight decay and max_update_norm must be finite and non-negative",
            );
        }
        // Updates up to this norm, summed over every peer and stepped with any sane rate, stay
        // far inside f32: a bound near f32::MAX let a round's aggregate overflow.
        if self.max_update_norm > MAX_UPDATE_NORM {
            return bad(&format!("max_update_norm must be at most {MAX_UPDATE_NORM:e}"));
        }
        Ok(())
    }
}

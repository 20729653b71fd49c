//! The simulator's configuration (one flat TOML table in `tessera sim` configs): the shared
//! [`Training`] section plus the simulated peers and network.

use serde::{Deserialize, Serialize};
use tessera_sync::{Algorithm, GlobalOptimizer, OuterSettings, Training};

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

/// The overlapped outer step, an experiment of the simulator (DiLoCo, SparseLoCo; the
/// networked run has no such switch yet). Overlapped, a peer starts round r as soon as it has
/// sent round r−1's update, while that round's exchange travels: it cannot yet hold θ_r, so
/// it trains from a stand-in, and its Δ (from that stand-in) is applied to θ_r:
/// `θ_{r+1} = Outer(θ_r, mean Δ_r)`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Round r trains from θ_r, once the exchange of round r−1 is over.
    #[default]
    None,
    /// Round r trains from θ_{r−1}, the last state every peer holds.
    Delayed,
    /// Round r trains from the outer step of round r−1 taken with the peer's own update in
    /// place of the mean, `Outer(θ_{r−1}, Δ_{r−1,i})`: each peer's own guess at θ_r (after
    /// "eager updates", Kale et al. 2025).
    Eager,
}

impl Overlap {
    pub const ALL: [Overlap; 3] = [Overlap::None, Overlap::Delayed, Overlap::Eager];

    pub fn name(self) -> &'static str {
        match self {
            Overlap::None => "none",
            Overlap::Delayed => "delayed",
            Overlap::Eager => "eager",
        }
    }
}

impl std::str::FromStr for Overlap {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        Self::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| SimError::Config(format!("overlap {s:?}: expected none, delayed or eager")))
    }
}

/// Everything a simulated run depends on: the shared training settings (flattened into the
/// same flat table), the peers and their inner optimizer, and the simulated network.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SimConfig {
    pub peers: usize,
    /// The model, data order, inner and outer optimizers and codec (see [`Training`]).
    #[serde(flatten)]
    pub training: Training,
    /// adamw | sgd.
    pub inner_optimizer: InnerOptimizer,
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
    /// none | delayed | eager: whether a peer's next round waits for the round's exchange
    /// (see [`Overlap`]).
    pub overlap: Overlap,
}

impl std::ops::Deref for SimConfig {
    type Target = Training;
    fn deref(&self) -> &Training {
        &self.training
    }
}

impl std::ops::DerefMut for SimConfig {
    fn deref_mut(&mut self) -> &mut Training {
        &mut self.training
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            peers: 8,
            training: Training::default(),
            inner_optimizer: InnerOptimizer::AdamW,
            bandwidth_mbps: 10.0,
            rtt_ms: 100.0,
            hub_bandwidth_mbps: 1000.0,
            step_compute_s: 0.05,
            eval_every: 5,
            eval_batches: 8,
            overlap: Overlap::None,
        }
    }
}

impl SimConfig {
    /// This config with `f` applied: `SimConfig::default().with(|c| c.rounds = 3)` sets shared
    /// training settings (reached through `Deref`) as easily as its own.
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Parses a flat TOML table over the defaults; unknown keys are refused by name. Not
    /// validated (flags may still change it): call [`SimConfig::validate`].
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        tessera_coord::parse_flat(&SimConfig::default(), text).map_err(SimError::Config)
    }

    /// The outer algorithm's settings (see [`tessera_sync::Outer`]); DDP's global optimizer is
    /// the peers' inner optimizer.
    pub fn outer_settings(&self) -> Result<OuterSettings, SimError> {
        let ddp = match self.inner_optimizer {
            InnerOptimizer::Sgd => GlobalOptimizer::Sgd { lr: self.inner_lr },
            InnerOptimizer::AdamW => GlobalOptimizer::AdamW(self.inner_adamw()),
        };
        Ok(self.training.outer_settings(ddp)?)
    }

    /// Rejects impossible settings, naming them.
    pub fn validate(&self) -> Result<(), SimError> {
        self.training.validate()?;
        let bad = |m: &str| Err(SimError::Config(m.to_string()));
        if self.peers == 0 || self.peers > MAX_PEERS {
            return bad("peers must be in 1..=1024");
        }
        if self.eval_batches == 0 {
            return bad("eval_batches must be at least 1");
        }
        let pos = [self.bandwidth_mbps, self.hub_bandwidth_mbps];
        if pos.iter().any(|v| !(v.is_finite() && *v > 0.0))
            || !(self.rtt_ms >= 0.0 && self.step_compute_s >= 0.0)
        {
            return bad("bandwidths must be positive; rtt_ms and step_compute_s non-negative");
        }
        if self.overlap != Overlap::None && !matches!(self.algo, Algorithm::DiLoCo | Algorithm::SparseLoCo) {
            return bad("overlap needs inner steps from the shared state: algo diloco or sparseloco");
        }
        Ok(())
    }
}

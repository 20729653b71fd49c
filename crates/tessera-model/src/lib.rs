//! # tessera-model
//!
//! **Role.** The models tessera trains (a byte-level GPT and an MLP classifier), their
//! initialisation from the counter-based RNG, AdamW with a warmup + cosine schedule, one
//! training step as an ordered op list, the state hash, and the flat parameter view that the
//! sync layer operates on (layout documented in [`params`]).
//!
//! **Invariants.** Initialisation is a pure function of (config, seed). A training step is a
//! pure function of (state, batch, config): the same inputs give the same state hash on any
//! thread count and SIMD path. Parameter order is the declaration order, and it defines the flat
//! layout.
//!
//! **Must not.** Do I/O, read clocks or OS randomness, or know about networking or peers.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod fixtures;
mod gpt;
mod mlp;
mod optim;
pub mod params;
mod sample;
mod train;

pub use gpt::{linear, Gpt, GptConfig, INIT_STD, LN_EPS, MAX_DIM};
pub use mlp::{Mlp, MlpConfig};
pub use optim::{AdamWConfig, OptState};
pub use params::{FlatLayout, LayoutEntry, ParamSet};
pub use sample::{SampleConfig, MAX_GENERATE};
pub use train::{state_hash, text_batch, Batch, Model, StepOutput, Trainer};

/// Errors from bad configs or bad batches.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("unknown model preset {0:?} (known: tiny, small, base)")]
    UnknownPreset(String),
    #[error("impossible model or optimizer config: {0}")]
    BadConfig(String),
    #[error("bad batch: {0}")]
    BadBatch(String),
    #[error("flat buffer has {got} values, the layout needs {want}")]
    FlatLength { want: usize, got: usize },
}

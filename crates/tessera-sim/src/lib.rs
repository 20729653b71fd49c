//! # tessera-sim
//!
//! **Role.** The deterministic simulator: N peers and the round logic of an outer algorithm in
//! one process, on a virtual clock, over a simulated network with per-node bandwidth and
//! latency that counts every byte. Peers train the real model on their assigned batches and
//! exchange real encoded updates, which are decoded and validated as a network peer would.
//!
//! [`ProtocolSim`] runs the networked run's protocol instead: the coordinator and trainer
//! state machines of `tessera-coord` (the same ones the daemons drive), exchanging real
//! messages and blobs, with scripted joins and crashes, over a transport that can lose,
//! duplicate, reorder and delay frames, cut peers off and slow them, and with nodes that die
//! and restart (the coordinator at any output index, from its store). [`vopr`] is the fault
//! simulator built on it: seeded plans of faults, and the protocol's invariants checked after
//! every step.
//!
//! **Invariants.** A run is a pure function of its config and dataset (and, under faults, of
//! the faults' seed): the same seed gives the same bits (peers train in parallel, but each peer's work is independent and aggregation is
//! in peer-id order). Simulated time never depends on the host's speed.
//!
//! **Must not.** Open sockets, read the wall clock or OS randomness.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod config;
mod links;
mod net;
mod protocol;
mod run;
pub mod vopr;

pub use config::{InnerOptimizer, Overlap, SimConfig, MAX_PEERS};
pub use links::{FaultCounts, NetFaults, MAX_DELAY_MS, MAX_IN_FLIGHT};
pub use net::{Link, Network};
pub use protocol::{CoordCrash, MemStore, ProtocolSim, FETCH_TIMEOUT_MS, MAX_IDLE_TICKS};
pub use run::{RoundReport, Sim};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("bad simulation config: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    #[error(transparent)]
    Data(#[from] tessera_data::DataError),
    #[error(transparent)]
    Sync(#[from] tessera_sync::SyncError),
    #[error(transparent)]
    Tensor(#[from] tessera_tensor::TensorError),
    #[error(transparent)]
    Coord(#[from] tessera_coord::CoordError),
    #[error("the coordinator's store cannot be restored: {0}")]
    Store(String),
    #[error("the protocol run is stuck at round {0} (no live members?)")]
    Stuck(u64),
    #[error("trainer {peer}: {err}")]
    Trainer { peer: String, err: tessera_coord::TrainerError },
}

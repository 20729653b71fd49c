//! # tessera-checkpoint
//!
//! **Role.** Saves and loads training state: the weights as `model.safetensors` (PyTorch-style
//! names, loadable by `safetensors`/`torch` directly), the AdamW moments as
//! `optimizer.safetensors` (`m.<name>`, `v.<name>`), and `meta.json` with the step, the state
//! hash, the model shape, the run config and the BLAKE3 of both tensor files.
//!
//! **Invariants.** A checkpoint becomes visible only complete: its files are written into a
//! temporary directory, fsynced, and the directory is renamed into place (then its parent is
//! fsynced). A checkpoint is loaded only if both files hash to the values in `meta.json` and the
//! rebuilt state hashes to the recorded state hash; otherwise it is refused with a typed error.
//! A failed write leaves earlier checkpoints untouched and removes its temporary directory.
//! [`prune`] removes old checkpoints by renaming each out of the `step-*` names first, so a
//! crash mid-removal never leaves a partial checkpoint under a checkpoint's name.
//!
//! **Must not.** Read clocks or randomness, or trust any byte it reads.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod store;

pub use store::{
    latest, load, prune, read_meta, save, Checkpoint, CheckpointMeta, ModelShape, SaveOptions, CKPT_FORMAT,
};

/// Largest tensor file read from a checkpoint.
pub const MAX_TENSOR_FILE_BYTES: u64 = 8 << 30;
/// Largest `meta.json` read.
pub const MAX_META_BYTES: u64 = 4 << 20;

/// Everything that can go wrong saving or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CkptError {
    #[error("no checkpoint at {0}")]
    NotFound(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("checkpoint {path}: {file} has BLAKE3 {got}, but meta.json records {want}")]
    FileHash { path: String, file: String, want: String, got: String },
    #[error("checkpoint {path}: its state hashes to {got}, but meta.json records {want}")]
    StateHash { path: String, want: String, got: String },
    #[error("checkpoint {path} does not fit this model: {reason}")]
    Mismatch { path: String, reason: String },
    #[error("{path} already holds a different checkpoint for step {step}")]
    Conflict { path: String, step: u64 },
}

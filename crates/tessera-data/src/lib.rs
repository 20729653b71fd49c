//! # tessera-data
//!
//! **Role.** Turns a corpus into fixed-size token shards named by their BLAKE3 hash, listed in
//! a JSON manifest with a held-out validation split, and serves batches that are a pure
//! function of (run seed, round, peer slot, step) and the manifest, read from disk on demand.
//! It also carries the embedded default corpus (Shakespeare's works, public domain).
//!
//! **Invariants.** A shard is never read unless its bytes hashed to the manifest's value when
//! the dataset was opened. Batch positions depend only on the manifest and the batch key, never
//! on the order or thread in which batches are requested. Validation shards are never used for
//! training batches. The tokenizer is byte-level (vocab 256); tokens are stored as u16 LE.
//!
//! **Must not.** Hold the whole corpus in memory when serving batches, read clocks or OS
//! randomness, or touch the network. File I/O is limited to the dataset directory and the
//! corpus paths it is given.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod corpus;
mod dataset;
mod ingest;
mod manifest;

pub use corpus::{embedded_corpus, EMBEDDED_CORPUS_NAME};
pub use dataset::{BatchKey, Dataset};
pub use ingest::{ingest, ingest_bytes, IngestOptions, SourceFormat};
pub use manifest::{Manifest, ShardInfo, MANIFEST_FILE, MANIFEST_FORMAT};

/// Vocabulary of the byte-level tokenizer.
pub const BYTE_VOCAB: usize = 256;
/// Default tokens per shard (128 KiB of u16 tokens).
pub const DEFAULT_SHARD_TOKENS: usize = 1 << 16;
/// Most shards one manifest may list.
pub const MAX_SHARDS: usize = 1 << 16;
/// Largest manifest file read.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// Largest single input file ingested.
pub const MAX_SOURCE_FILE_BYTES: u64 = 4 << 30;
/// Most input files in one corpus directory.
pub const MAX_SOURCE_FILES: usize = 1 << 20;

/// Everything that can go wrong reading a corpus or a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("corpus path {path} does not exist or cannot be read: {source}")]
    Missing { path: String, source: std::io::Error },
    #[error("{path} is not UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { path: String, offset: usize },
    #[error("{path}: pre-tokenized input must hold an even number of bytes (u16 LE tokens)")]
    OddTokenFile { path: String },
    #[error("token {token} in {path} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { path: String, token: u32, vocab: usize },
    #[error("the corpus is empty: {0}")]
    Empty(String),
    #[error("the corpus has {tokens} tokens; at least {need} are needed ({why})")]
    TooSmall { tokens: usize, need: usize, why: String },
    #[error("{what} is too large: {got} (limit {limit})")]
    TooLarge { what: &'static str, got: u64, limit: u64 },
    #[error("shard {file} does not match the manifest: expected BLAKE3 {want}, found {got}")]
    ShardHash { file: String, want: String, got: String },
    #[error("shard {file} has {got} bytes; the manifest says {want}")]
    ShardLength { file: String, want: u64, got: u64 },
    #[error("bad manifest {path}: {reason}")]
    BadManifest { path: String, reason: String },
    #[error("bad batch request: {0}")]
    BadRequest(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl DataError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
    }
}

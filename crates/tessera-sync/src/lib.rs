//! # tessera-sync
//!
//! **Role.** The low-communication outer algorithms (DDP, DiLoCo, NoLoCo, SparseLoCo, DeMo),
//! the update codecs (int8 with a per-chunk scale, top-k with error feedback, 2-bit, sign), the
//! encoded-update wire format, and deterministic aggregation. [`Outer`] is the one table of
//! the five algorithms (what a peer computes and keeps, how it encodes, how contributions
//! combine, how the shared state changes) that the simulator and the networked run share;
//! [`Training`] is the one section of training settings both configs hold. It works on the flat f32 parameter layout of `tessera-model` and knows nothing about
//! peers' transport.
//!
//! **Invariants.** Encoding and decoding are exact and deterministic; every payload length is a
//! pure function of (codec, value count) and is checked before decoding. A decoded update with
//! the wrong layout or length, a NaN/Inf, or a norm over the bound is rejected with a typed
//! error. Aggregation orders contributions by peer id, so its bits do not depend on arrival
//! order.
//!
//! **Must not.** Do I/O, read clocks or OS randomness, or trust any byte it decodes.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod aggregate;
mod algo;
mod codec;
mod outer;
mod training;
mod update;

pub use aggregate::{clip_to_median, l2_norm, sparse_mean, weighted_mean, Contribute, Contribution, Encoded};
pub use algo::{Combined, Exchange, GlobalOptimizer, Outer, OuterSettings, PeerState, Work};
pub use codec::{top_k_indices, Codec, ValueCodec, MAX_CHUNK};
pub use outer::{
    dct_tiles, demo_apply, idct_tiles, mean_of, noloco_groups, noloco_step, pseudo_gradient, replica_spread,
    DemoPeer, ErrorFeedback, NesterovOuter, NoLoCoPeer, DCT_SIDE, DCT_TILE,
};
pub use training::Training;
pub use update::{
    decode_header, decode_update, encode_update, frame_update, Algorithm, Decoded, Expected, UpdateHeader,
    HEADER_BYTES, MAX_UPDATE_VALUES,
};

/// Why an update or a codec was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SyncError {
    #[error("bad training settings: {0}")]
    Config(String),
    #[error("bad codec: {0}")]
    BadCodec(String),
    #[error("unknown algorithm {0:?} (ddp, diloco, noloco, sparseloco, demo)")]
    UnknownAlgorithm(String),
    #[error("unknown codec {0:?} (f32, int8, 2bit, sign)")]
    UnknownCodec(String),
    #[error("{what} has length {got}, expected {want}")]
    Length { what: &'static str, want: usize, got: usize },
    #[error("malformed update: {0}")]
    Malformed(String),
    #[error("the update was made for another parameter layout")]
    Layout,
    #[error("the update holds a NaN or infinity at position {index}")]
    NonFinite { index: usize },
    #[error("the update's norm {norm} exceeds the bound {bound}")]
    NormTooLarge { norm: f64, bound: f32 },
    #[error("two contributions from the same peer")]
    Duplicate,
    #[error("nothing to aggregate")]
    Empty,
}

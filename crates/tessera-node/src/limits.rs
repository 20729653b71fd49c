//! Per-connection limits on what one peer may push into the coordinator: a token bucket on
//! frames (checked before any signature is; the bucket is `tessera_net::RateLimit`), and a
//! share of the protocol's input queue.

/// Frames a connection may send per second, sustained.
pub const FRAMES_PER_S: u64 = 500;
/// Frames a connection may send at once after a quiet spell.
pub const FRAME_BURST: u64 = 1_000;
/// Frames of one connection waiting in the protocol's queue at most (of its 4,096).
pub const MAX_QUEUED_PER_PEER: usize = 256;

pub use tessera_net::RateLimit;

/// Peers listed in the dashboard's view at most (members, validators, and those gone).
pub const MAX_PEERS_SHOWN: usize = 8192;
/// Peers that left remembered for the view at most.
pub const MAX_LEFT_SHOWN: usize = 4096;

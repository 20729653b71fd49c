//! # tessera-verify
//!
//! **Role.** Proof that a trainer's work was done as claimed (DESIGN §7), as pure functions and
//! small state machines that the coordinator, trainers and validators drive:
//! - [`MerkleTree`]: a BLAKE3 Merkle tree with domain-separated leaves and nodes, inclusion
//!   proofs and their verification;
//! - [`RoundCommitment`]: what a trainer commits to for one round — its starting local state,
//!   the state after every k-th inner step, its final state and its encoded update — as the
//!   leaves of one tree whose root goes in `Commit`;
//! - [`challenge`]: which segment of k steps a validator checks, drawn from randomness the
//!   trainer cannot know when it commits;
//! - [`Bisection`]: the dispute game's search, over the steps of a segment and then over the
//!   operators of one step, down to the first index both sides disagree on;
//! - copy and replay detection ([`copies`], [`near_any`], [`values_hash`]): an update that is
//!   (nearly) another's of the same round, or (nearly, or bit for bit) an earlier one; many
//!   pairs are bounded at once by one matrix product and only the close ones compared in
//!   full, so the answer is the full comparison's;
//! - [`Dispute`]: the whole game as a state machine a referee hosts, ending in a [`Ruling`]
//!   that names the (step, operator) decided and who lost.
//!
//! **Invariants.** Every function is deterministic. A proof verifies only against the root,
//! leaf count and index it was made for. Leaf and node hashes are domain-separated, so a node
//! can never pass as a leaf. Sizes are bounded ([`MAX_LEAVES`]) and checked before allocating.
//! The bisection asks at most ⌈log₂ n⌉ questions for a range of n.
//!
//! **Must not.** Do I/O, read clocks or draw OS randomness; trust a proof, a revealed hash or
//! an index from a peer without checking it.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod bisect;
mod commit;
mod copies;
mod dispute;
mod merkle;
mod prune;

pub use bisect::{Bisection, Turn};
pub use commit::{challenge, segments, RoundCommitment, MAX_SEGMENTS};
pub use copies::{cosine, sample, values_hash, Sampler, SAMPLE};
pub use dispute::{Ask, Dispute, EntryHashes, Loser, Ruling};
pub use merkle::{MerkleTree, Proof, MAX_LEAVES};
pub use prune::{copies, near_any, Samples, PRUNE_STRIDE};

/// A BLAKE3 hash.
pub type Hash32 = [u8; 32];

/// Why a commitment, proof or game move was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("a tree needs 1 to {MAX_LEAVES} leaves, got {0}")]
    Leaves(usize),
    #[error("leaf index {index} is out of a tree of {n} leaves")]
    Index { index: usize, n: usize },
    #[error("the proof has {got} sibling hashes, a tree of {n} leaves needs {want} at index {index}")]
    ProofLength { index: usize, n: usize, got: usize, want: usize },
    #[error("the proof does not lead to the committed root")]
    RootMismatch,
    #[error("{steps} steps cut into segments of {k} make more than {MAX_SEGMENTS} segments (or k is 0)")]
    Segments { steps: u64, k: u64 },
    #[error("the commitment holds {got} segment states, {want} expected")]
    SegmentCount { got: usize, want: usize },
    #[error("a bisection needs a range of at least one index, got {lo}..{hi}")]
    Range { lo: u64, hi: u64 },
    #[error("the bisection is not waiting for an answer")]
    NotAsked,
}

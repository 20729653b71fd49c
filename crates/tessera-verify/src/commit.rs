//! What a trainer commits to for one round, and which part of it a validator checks.
//!
//! The H inner steps of a round are cut into segments of k steps (the last may be shorter).
//! The leaves of the round's tree are, in order: the hash of the local state the trainer
//! starts from (its parameters, inner optimizer and step counter, which with the assignment
//! fix the data cursor), the state hash at the end of every segment (the last of which is the
//! final state), and the hash of the encoded update:
//!
//! ```text
//! leaf 0: start | leaf 1..=S: end of segment 1..=S (S = ⌈H/k⌉) | leaf S+1: update
//! ```

use crate::{Hash32, MerkleTree, VerifyError};

/// Most segments one round may be cut into.
pub const MAX_SEGMENTS: usize = 1 << 16;

/// The segments `[from, to)` of `steps` inner steps cut every `k` steps.
pub fn segments(steps: u64, k: u64) -> Result<Vec<(u64, u64)>, VerifyError> {
    if k == 0 || steps == 0 || steps.div_ceil(k) > MAX_SEGMENTS as u64 {
        return Err(VerifyError::Segments { steps, k });
    }
    let out: Vec<(u64, u64)> = (0..steps.div_ceil(k)).map(|s| (s * k, ((s + 1) * k).min(steps))).collect();
    assert!(out.last().is_some_and(|l| l.1 == steps), "the segments cover every step");
    Ok(out)
}

/// One round's commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundCommitment {
    /// The local state before the first inner step.
    pub start: Hash32,
    /// The local state at the end of each segment; the last is the final state.
    pub ends: Vec<Hash32>,
    /// The encoded update.
    pub update: Hash32,
}

impl RoundCommitment {
    /// A commitment to `steps` steps cut every `k`, checking that there is one end state per
    /// segment.
    pub fn new(
        start: Hash32,
        ends: Vec<Hash32>,
        update: Hash32,
        steps: u64,
        k: u64,
    ) -> Result<Self, VerifyError> {
        let want = segments(steps, k)?.len();
        if ends.len() != want {
            return Err(VerifyError::SegmentCount { got: ends.len(), want });
        }
        Ok(Self { start, ends, update })
    }

    /// The leaves, in tree order.
    pub fn leaves(&self) -> Vec<Hash32> {
        let mut v = Vec::with_capacity(self.ends.len() + 2);
        v.push(self.start);
        v.extend(&self.ends);
        v.push(self.update);
        v
    }

    pub fn tree(&self) -> MerkleTree {
        MerkleTree::new(&self.leaves()).expect("at most MAX_SEGMENTS + 2 leaves, at least 3")
    }

    /// The root that goes in `Commit`.
    pub fn root(&self) -> Hash32 {
        self.tree().root()
    }

    /// The final local state (the end of the last segment).
    pub fn final_state(&self) -> Hash32 {
        *self.ends.last().expect("at least one segment")
    }

    /// Leaves in the tree.
    pub fn len(&self) -> usize {
        self.ends.len() + 2
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The leaf index of the state at the start of segment `s` (its end is `s + 1`).
    pub fn start_leaf(s: usize) -> usize {
        s
    }

    /// The leaf index of the update.
    pub fn update_leaf(&self) -> usize {
        self.ends.len() + 1
    }
}

/// The segment (of `n`) a validator checks on a trainer's round: a pure function of the hash
/// of the round's whole commit set, which no trainer knows when it commits, the validator's
/// key and the trainer's. Drawn uniformly (rejection sampling over BLAKE3's output, so no
/// modulo bias).
pub fn challenge(commit_set: &Hash32, validator: &Hash32, trainer: &Hash32, n: usize) -> usize {
    assert!(n > 0, "a round has at least one segment");
    let mut h = blake3::Hasher::new();
    h.update(b"tessera-challenge-v1");
    h.update(commit_set);
    h.update(validator);
    h.update(trainer);
    let mut xof = h.finalize_xof();
    let n = n as u64;
    let zone = u64::MAX - u64::MAX % n; // accept draws below a multiple of n
    loop {
        let mut b = [0u8; 8];
        xof.fill(&mut b);
        let x = u64::from_le_bytes(b);
        if x < zone {
            return (x % n) as usize;
        }
    }
}

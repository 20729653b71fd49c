//! A BLAKE3 Merkle tree. Leaves and inner nodes are hashed under different domain tags, and a
//! node without a partner is carried up unchanged (never paired with a copy of itself), so a
//! tree of n leaves has exactly one shape and two different leaf lists never share a root.

use crate::{Hash32, VerifyError};

/// Most leaves one tree may hold.
pub const MAX_LEAVES: usize = 1 << 20;

const LEAF_TAG: &[u8] = b"tessera-merkle-leaf-v1";
const NODE_TAG: &[u8] = b"tessera-merkle-node-v1";

fn leaf(data: &Hash32) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(LEAF_TAG);
    h.update(data);
    *h.finalize().as_bytes()
}

fn node(l: &Hash32, r: &Hash32) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(NODE_TAG);
    h.update(l);
    h.update(r);
    *h.finalize().as_bytes()
}

/// An inclusion proof: the sibling hashes from the leaf up, one per level where the path has
/// a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub siblings: Vec<Hash32>,
}

/// A tree over committed hashes (each leaf is itself a hash: of a state, an update, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// levels[0] are the hashed leaves; the last level holds the root alone.
    levels: Vec<Vec<Hash32>>,
}

impl MerkleTree {
    pub fn new(leaves: &[Hash32]) -> Result<Self, VerifyError> {
        if leaves.is_empty() || leaves.len() > MAX_LEAVES {
            return Err(VerifyError::Leaves(leaves.len()));
        }
        let mut levels = vec![leaves.iter().map(leaf).collect::<Vec<_>>()];
        while levels[levels.len() - 1].len() > 1 {
            let below = &levels[levels.len() - 1];
            let up: Vec<Hash32> =
                below.chunks(2).map(|p| if p.len() == 2 { node(&p[0], &p[1]) } else { p[0] }).collect();
            levels.push(up);
        }
        assert_eq!(levels[levels.len() - 1].len(), 1, "one root");
        Ok(Self { levels })
    }

    pub fn root(&self) -> Hash32 {
        self.levels[self.levels.len() - 1][0]
    }

    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The proof that leaf `index` is in the tree.
    pub fn proof(&self, index: usize) -> Result<Proof, VerifyError> {
        let n = self.len();
        if index >= n {
            return Err(VerifyError::Index { index, n });
        }
        let mut siblings = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let partner = i ^ 1;
            if partner < level.len() {
                siblings.push(level[partner]);
            }
            i /= 2;
        }
        assert_eq!(siblings.len(), path_len(n, index), "one sibling per paired level");
        Ok(Proof { siblings })
    }

    /// Checks that `data` is leaf `index` of the `n`-leaf tree with root `root`.
    pub fn verify(
        root: &Hash32,
        n: usize,
        index: usize,
        data: &Hash32,
        proof: &Proof,
    ) -> Result<(), VerifyError> {
        if n == 0 || n > MAX_LEAVES {
            return Err(VerifyError::Leaves(n));
        }
        if index >= n {
            return Err(VerifyError::Index { index, n });
        }
        let want = path_len(n, index);
        if proof.siblings.len() != want {
            return Err(VerifyError::ProofLength { index, n, got: proof.siblings.len(), want });
        }
        let (mut h, mut i, mut width) = (leaf(data), index, n);
        let mut sib = proof.siblings.iter();
        while width > 1 {
            if (i ^ 1) < width {
                let s = sib.next().expect("counted by path_len");
                h = if i % 2 == 0 { node(&h, s) } else { node(s, &h) };
            }
            i /= 2;
            width = width.div_ceil(2);
        }
        if &h == root {
            Ok(())
        } else {
            Err(VerifyError::RootMismatch)
        }
    }
}

/// Siblings on the path of leaf `index` in a tree of `n` leaves.
fn path_len(n: usize, index: usize) -> usize {
    let (mut count, mut i, mut width) = (0, index, n);
    while width > 1 {
        count += usize::from((i ^ 1) < width);
        i /= 2;
        width = width.div_ceil(2);
    }
    count
}

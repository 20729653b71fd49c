//! The shared state of a DiLoCo run between rounds, and its one canonical encoding. The
//! state's identity is the BLAKE3 hash of that encoding, so the checkpoint blob a joining node
//! fetches *is* the state it names.
//!
//! ```text
//! "TSG1" | version u16 | round u64 | layout hash [32] | n u64 | θ (n × f32) | momentum (n × f32)
//! ```
//! All integers and floats little-endian.

use tessera_sync::{decode_update, Expected, NesterovOuter};

use crate::{CoordError, Hash32};

const MAGIC: &[u8; 4] = b"TSG1";
const VERSION: u16 = 1;
const HEADER: usize = 4 + 2 + 8 + 32 + 8;
/// Largest parameter count a state blob may hold (checked before allocating).
pub const MAX_STATE_PARAMS: usize = 1 << 28;

/// θ_r and the outer momentum after `round` rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalState {
    pub round: u64,
    pub layout_hash: Hash32,
    pub theta: Vec<f32>,
    pub momentum: Vec<f32>,
}

impl GlobalState {
    /// The state before the first round: the initial parameters and zero momentum.
    pub fn initial(layout_hash: Hash32, theta: Vec<f32>) -> Self {
        let momentum = vec![0.0; theta.len()];
        Self { round: 0, layout_hash, theta, momentum }
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.theta.len();
        assert_eq!(n, self.momentum.len(), "θ and momentum share a layout");
        let mut out = Vec::with_capacity(HEADER + 8 * n);
        out.extend(MAGIC);
        out.extend(VERSION.to_le_bytes());
        out.extend(self.round.to_le_bytes());
        out.extend(self.layout_hash);
        out.extend((n as u64).to_le_bytes());
        for v in self.theta.iter().chain(&self.momentum) {
            out.extend(v.to_le_bytes());
        }
        out
    }

    /// The state's identity: BLAKE3 of [`GlobalState::encode`].
    pub fn hash(&self) -> Hash32 {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Decodes a state blob made for `layout_hash` with `n` parameters, checking every field.
    pub fn decode(b: &[u8], layout_hash: &Hash32, n: usize) -> Result<Self, CoordError> {
        let bad = |m: String| Err(CoordError::State(m));
        if n > MAX_STATE_PARAMS {
            return bad(format!("{n} parameters exceed the limit {MAX_STATE_PARAMS}"));
        }
        if b.len() != HEADER + 8 * n {
            return bad(format!("blob of {} bytes, expected {}", b.len(), HEADER + 8 * n));
        }
        if &b[..4] != MAGIC {
            return bad("bad magic".into());
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return bad(format!("unsupported state version {version}"));
        }
        let round = u64::from_le_bytes(b[6..14].try_into().expect("8 bytes"));
        if &b[14..46] != layout_hash {
            return bad("made for another parameter layout".into());
        }
        let declared = u64::from_le_bytes(b[46..54].try_into().expect("8 bytes"));
        if declared != n as u64 {
            return bad(format!("declares {declared} parameters, expected {n}"));
        }
        let floats: Vec<f32> =
            b[HEADER..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        if let Some(i) = floats.iter().position(|v| !v.is_finite()) {
            return bad(format!("non-finite value at position {i}"));
        }
        let (theta, momentum) = floats.split_at(n);
        Ok(Self { round, layout_hash: *layout_hash, theta: theta.to_vec(), momentum: momentum.to_vec() })
    }

    /// Closes the round: decodes the aggregate blob (if any update was accepted) and applies
    /// DiLoCo's Nesterov outer step. Coordinator and trainers call this same function, so an
    /// honest peer's state hash can only differ through its arithmetic.
    pub fn apply(
        &mut self,
        aggregate: Option<&[u8]>,
        want: &Expected,
        lr: f32,
        mu: f32,
    ) -> Result<(), CoordError> {
        if let Some(blob) = aggregate {
            let d = decode_update(blob, want)?;
            if d.header.round != self.round {
                return Err(CoordError::State(format!(
                    "aggregate made for round {}, state is at {}",
                    d.header.round, self.round
                )));
            }
            let mut outer = NesterovOuter { lr, momentum: mu, b: std::mem::take(&mut self.momentum) };
            outer.step(&mut self.theta, &d.values);
            self.momentum = outer.b;
        }
        self.round += 1;
        Ok(())
    }
}

//! The shared state of a run between rounds, its one canonical encoding, and the rule that
//! closes a round. The state's identity is the BLAKE3 hash of that encoding, so the
//! checkpoint blob a joining node fetches *is* the state it names.
//!
//! ```text
//! "TSG1" | version u16 | round u64 | layout hash [32] | n u64 | buffers u8
//!        | θ (n × f32) | each buffer (n × f32)
//! ```
//! All integers and floats little-endian. DiLoCo keeps one buffer (the outer momentum), DDP
//! two (AdamW's m and v; its step count is the round), SparseLoCo and DeMo none (see
//! [`tessera_sync::Outer::buffers`]).

use tessera_sync::Outer;

use crate::{CoordError, Hash32};

const MAGIC: &[u8; 4] = b"TSG1";
const VERSION: u16 = 2;
const HEADER: usize = 4 + 2 + 8 + 32 + 8 + 1;
/// Largest parameter count a state blob may hold (checked before allocating).
pub const MAX_STATE_PARAMS: usize = 1 << 28;
/// Most buffers beside θ.
const MAX_BUFFERS: usize = 2;

/// θ_r and the optimizer buffers after `round` rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalState {
    pub round: u64,
    pub layout_hash: Hash32,
    pub theta: Vec<f32>,
    pub buffers: Vec<Vec<f32>>,
}

impl GlobalState {
    /// The state before the first round: the initial parameters and zero buffers.
    pub fn initial(layout_hash: Hash32, theta: Vec<f32>, buffers: usize) -> Self {
        let zeros = vec![vec![0.0; theta.len()]; buffers];
        Self { round: 0, layout_hash, theta, buffers: zeros }
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.theta.len();
        assert!(self.buffers.len() <= MAX_BUFFERS && self.buffers.iter().all(|b| b.len() == n), "one layout");
        let mut out = Vec::with_capacity(HEADER + 4 * n * (1 + self.buffers.len()));
        out.extend(MAGIC);
        out.extend(VERSION.to_le_bytes());
        out.extend(self.round.to_le_bytes());
        out.extend(self.layout_hash);
        out.extend((n as u64).to_le_bytes());
        out.push(self.buffers.len() as u8);
        for v in self.theta.iter().chain(self.buffers.iter().flatten()) {
            out.extend(v.to_le_bytes());
        }
        out
    }

    /// The state's identity: BLAKE3 of [`GlobalState::encode`].
    pub fn hash(&self) -> Hash32 {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// The exact size of a state blob with `n` parameters and `buffers` buffers.
    pub fn encoded_len(n: usize, buffers: usize) -> usize {
        HEADER + 4 * n * (1 + buffers)
    }

    /// Decodes a state blob made for `layout_hash` with `n` parameters and `buffers` buffers,
    /// checking every field.
    pub fn decode(b: &[u8], layout_hash: &Hash32, n: usize, buffers: usize) -> Result<Self, CoordError> {
        let bad = |m: String| Err(CoordError::State(m));
        if n > MAX_STATE_PARAMS || buffers > MAX_BUFFERS {
            return bad(format!("{n} parameters and {buffers} buffers exceed the limits"));
        }
        if b.len() != Self::encoded_len(n, buffers) {
            return bad(format!("blob of {} bytes, expected {}", b.len(), Self::encoded_len(n, buffers)));
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
        if declared != n as u64 || b[54] as usize != buffers {
            return bad(format!(
                "declares {declared} parameters and {} buffers, expected {n} and {buffers}",
                b[54]
            ));
        }
        let floats: Vec<f32> =
            b[HEADER..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        if let Some(i) = floats.iter().position(|v| !v.is_finite()) {
            return bad(format!("non-finite value at position {i}"));
        }
        let mut parts = floats.chunks_exact(n.max(1)).map(<[f32]>::to_vec);
        let theta = if n == 0 { Vec::new() } else { parts.next().expect("θ") };
        let bufs = if n == 0 { vec![Vec::new(); buffers] } else { parts.collect() };
        Ok(Self { round, layout_hash: *layout_hash, theta, buffers: bufs })
    }

    /// Closes the round with its combined values (none when nothing was accepted), through
    /// the run's outer algorithm. Coordinator and trainers call this same function, so an
    /// honest peer's state hash can only differ through its arithmetic.
    pub fn apply(&mut self, outer: &Outer, combined: Option<&[f32]>) -> Result<(), CoordError> {
        assert_eq!(self.buffers.len(), outer.buffers(), "the state holds the algorithm's buffers");
        if let Some(v) = combined {
            outer.apply(self.round, &mut self.theta, &mut self.buffers, v)?;
        }
        self.round = self.round.checked_add(1).ok_or_else(|| CoordError::State("round overflow".into()))?;
        Ok(())
    }
}

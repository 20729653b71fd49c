//! The shared state of a run between rounds, its one canonical encoding, and the rule that
//! closes a round. The state's identity is the BLAKE3 hash of that encoding, so the
//! checkpoint blob a joining node fetches *is* the state it names.
//!
//! ```text
//! "TSG1" | version u16 | round u64 | layout hash [32] | n u64 | buffers u8
//!        | θ (n × f32) | each buffer (n × f32)
//! ```
//! All integers and floats little-endian. DiLoCo keeps one buffer (the outer momentum), DDP
//! two (AdamW's m and v; its step count is the round).

use tessera_model::{AdamWConfig, OptState, ParamSet};
use tessera_sync::{decode_update, Expected, NesterovOuter};

use crate::{CoordError, Hash32, RunConfig};

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

/// How a round's aggregate changes the state.
#[derive(Clone, Debug)]
pub enum OuterRule {
    /// DiLoCo: Nesterov SGD on the mean pseudo-gradient (one momentum buffer).
    Nesterov { want: Expected, lr: f32, mu: f32 },
    /// DDP: one AdamW step with the mean gradient (buffers m and v), through the same kernels
    /// as single-machine training.
    AdamW { want: Expected, cfg: AdamWConfig, template: ParamSet },
}

impl OuterRule {
    pub fn new(cfg: &RunConfig, template: &ParamSet) -> Self {
        let want = Expected {
            layout_hash: template.layout().hash(),
            n: template.numel(),
            max_norm: Some(cfg.max_update_norm),
        };
        if cfg.algo == "ddp" {
            OuterRule::AdamW { want, cfg: cfg.inner_adamw(), template: template.clone() }
        } else {
            OuterRule::Nesterov { want, lr: cfg.outer_lr, mu: cfg.outer_momentum }
        }
    }

    /// What a trainer's update must look like (layout, length, norm bound).
    pub fn expected(&self) -> &Expected {
        match self {
            OuterRule::Nesterov { want, .. } | OuterRule::AdamW { want, .. } => want,
        }
    }

    /// What an aggregate must look like: the layout and length, but no norm bound. The mean of
    /// updates within the bound is within it, but quantizing the mean again may push it a hair
    /// over, and the aggregate is named by hash in a signed `Accept` anyway.
    pub fn aggregate_expected(&self) -> Expected {
        Expected { max_norm: None, ..self.expected().clone() }
    }

    /// Buffers the state keeps beside θ.
    pub fn buffers(&self) -> usize {
        match self {
            OuterRule::Nesterov { .. } => 1,
            OuterRule::AdamW { .. } => 2,
        }
    }
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

    /// Closes the round: decodes the aggregate blob (if any update was accepted) and applies
    /// the outer rule. Coordinator and trainers call this same function, so an honest peer's
    /// state hash can only differ through its arithmetic.
    pub fn apply(&mut self, aggregate: Option<&[u8]>, rule: &OuterRule) -> Result<(), CoordError> {
        if let Some(blob) = aggregate {
            let d = decode_update(blob, &rule.aggregate_expected())?;
            if d.header.round != self.round {
                return Err(CoordError::State(format!(
                    "aggregate made for round {}, state is at {}",
                    d.header.round, self.round
                )));
            }
            match rule {
                OuterRule::Nesterov { lr, mu, .. } => {
                    let b = std::mem::take(&mut self.buffers[0]);
                    let mut outer = NesterovOuter { lr: *lr, momentum: *mu, b };
                    outer.step(&mut self.theta, &d.values);
                    self.buffers[0] = outer.b;
                }
                OuterRule::AdamW { cfg, template, .. } => self.adamw(&d.values, cfg, template)?,
            }
        }
        self.round += 1;
        Ok(())
    }

    /// One AdamW step of θ with gradient `g`, the moments in the two buffers.
    fn adamw(&mut self, g: &[f32], cfg: &AdamWConfig, template: &ParamSet) -> Result<(), CoordError> {
        let mut params = template.clone();
        params.load_flat(&self.theta)?;
        let mut opt = OptState { m: template.clone(), v: template.clone(), step: self.round };
        opt.m.load_flat(&self.buffers[0])?;
        opt.v.load_flat(&self.buffers[1])?;
        let mut grads = template.clone();
        grads.load_flat(g)?;
        let mut ex = tessera_tensor::Exec::new(tessera_tensor::TraceMode::Off);
        opt.update(cfg, &mut ex, &mut params, grads.tensors().to_vec());
        self.theta = params.to_flat();
        self.buffers = vec![opt.m.to_flat(), opt.v.to_flat()];
        Ok(())
    }
}

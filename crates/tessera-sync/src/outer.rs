//! The outer steps of the low-communication algorithms, on flat f32 vectors. Every loop runs
//! elementwise in index order: no reduction spans more than one element except where noted.

use tessera_tensor::rng::{purpose, Philox};

use crate::{Codec, SyncError};

/// DiLoCo's outer optimizer: torch-style Nesterov SGD on the pseudo-gradient Δ.
/// `b ← μb + Δ;  θ ← θ − η(Δ + μb)` (b starts at 0). Defaults: η = 0.7, μ = 0.9.
#[derive(Clone, Debug, PartialEq)]
pub struct NesterovOuter {
    pub lr: f32,
    pub momentum: f32,
    pub b: Vec<f32>,
}

impl NesterovOuter {
    pub fn new(lr: f32, momentum: f32, n: usize) -> Self {
        Self { lr, momentum, b: vec![0.0; n] }
    }

    /// Applies one outer step to `theta` given the aggregated Δ.
    pub fn step(&mut self, theta: &mut [f32], delta: &[f32]) {
        assert!(theta.len() == delta.len() && delta.len() == self.b.len(), "outer step sizes");
        let (lr, mu) = (self.lr, self.momentum);
        for ((t, &d), b) in theta.iter_mut().zip(delta).zip(self.b.iter_mut()) {
            *b = mu * *b + d;
            *t -= lr * (d + mu * *b);
        }
    }
}

/// `Δ = start − end` elementwise (a pseudo-gradient).
pub fn pseudo_gradient(start: &[f32], end: &[f32]) -> Vec<f32> {
    assert_eq!(start.len(), end.len());
    start.iter().zip(end).map(|(&s, &e)| s - e).collect()
}

/// NoLoCo's groups for a round: a permutation of `0..n` seeded by (seed, round), cut into pairs
/// (with one group of three when `n` is odd). The same on every peer.
pub fn noloco_groups(seed: u64, round: u64, n: usize) -> Vec<Vec<usize>> {
    let rng = Philox::new(seed);
    let key = purpose("noloco-pairs") ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(key, i as u64, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    let mut groups: Vec<Vec<usize>> = p.chunks(2).map(|c| c.to_vec()).collect();
    if groups.len() > 1 && groups.last().is_some_and(|g| g.len() == 1) {
        let last = groups.pop().expect("non-empty");
        groups.last_mut().expect("non-empty").extend(last);
    }
    groups
}

/// One NoLoCo replica's outer state: its outer weights φ and momentum m.
#[derive(Clone, Debug, PartialEq)]
pub struct NoLoCoPeer {
    pub phi: Vec<f32>,
    pub m: Vec<f32>,
}

impl NoLoCoPeer {
    pub fn new(phi: Vec<f32>) -> Self {
        let n = phi.len();
        Self { phi, m: vec![0.0; n] }
    }

    /// `m ← βm + αΔ̄ + α(φ̄ − φ);  φ ← φ + m`, with Δ̄ and φ̄ the group means. Returns the new φ,
    /// from which the replica's inner training restarts.
    pub fn outer_step(&mut self, alpha: f32, beta: f32, delta_mean: &[f32], phi_mean: &[f32]) -> &[f32] {
        noloco_step(alpha, beta, &mut self.phi, &mut self.m, delta_mean, phi_mean);
        &self.phi
    }
}

/// NoLoCo's outer step of one replica (φ, m) from its group's means Δ̄ and φ̄:
/// `m ← βm + αΔ̄ + α(φ̄ − φ);  φ ← φ + m`.
pub fn noloco_step(
    alpha: f32,
    beta: f32,
    phi: &mut [f32],
    m: &mut [f32],
    delta_mean: &[f32],
    phi_mean: &[f32],
) {
    let n = phi.len();
    assert!(m.len() == n && delta_mean.len() == n && phi_mean.len() == n, "noloco sizes");
    for i in 0..n {
        m[i] = beta * m[i] + alpha * delta_mean[i] + alpha * (phi_mean[i] - phi[i]);
        phi[i] += m[i];
    }
}

/// Elementwise mean of equally weighted vectors, summed in the given order.
pub fn mean_of(vs: &[&[f32]]) -> Vec<f32> {
    assert!(!vs.is_empty());
    let n = vs[0].len();
    let mut out = vec![0.0f32; n];
    for v in vs {
        assert_eq!(v.len(), n);
        out.iter_mut().zip(v.iter()).for_each(|(o, &x)| *o += x);
    }
    let k = vs.len() as f32;
    out.iter_mut().for_each(|o| *o /= k);
    out
}

/// The spread of replicas: the mean over positions of the standard deviation across replicas.
pub fn replica_spread(vs: &[&[f32]]) -> f64 {
    let n = vs[0].len();
    let k = vs.len() as f64;
    let mut total = 0.0f64;
    for i in 0..n {
        let mean = vs.iter().map(|v| f64::from(v[i])).sum::<f64>() / k;
        let var = vs.iter().map(|v| (f64::from(v[i]) - mean).powi(2)).sum::<f64>() / k;
        total += var.sqrt();
    }
    total / n as f64
}

/// Error feedback around a lossy codec (SparseLoCo, and top-k in general):
/// `e ← βe + Δ;  send = encode(e);  e ← e − decode(send)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorFeedback {
    pub beta: f32,
    pub e: Vec<f32>,
}

impl ErrorFeedback {
    pub fn new(beta: f32, n: usize) -> Self {
        Self { beta, e: vec![0.0; n] }
    }

    /// Accumulates Δ, encodes the buffer, removes what was sent; returns the payload.
    pub fn compress(&mut self, delta: &[f32], codec: &Codec) -> Result<Vec<u8>, SyncError> {
        assert_eq!(delta.len(), self.e.len());
        let beta = self.beta;
        self.e.iter_mut().zip(delta).for_each(|(e, &d)| *e = beta * *e + d);
        let payload = codec.encode(&self.e);
        let sent = codec.decode(&payload, self.e.len())?;
        self.e.iter_mut().zip(&sent).for_each(|(e, &s)| *e -= s);
        Ok(payload)
    }
}

/// Side of DeMo's square DCT tiles (tiles of 64×64 = 4096 values cut from the flat vector).
pub const DCT_SIDE: usize = 64;
/// Values per DCT tile.
pub const DCT_TILE: usize = DCT_SIDE * DCT_SIDE;

/// The orthonormal DCT-II matrix of side [`DCT_SIDE`], computed in f64 with `libm`.
fn dct_matrix() -> Vec<f32> {
    let n = DCT_SIDE;
    let mut d = vec![0.0f32; n * n];
    for k in 0..n {
        let s = if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
        for i in 0..n {
            let a = std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64;
            d[k * n + i] = (s * libm::cos(a)) as f32;
        }
    }
    d
}

/// `out = op(A)·op(B)` for 64×64 matrices, through the engine's deterministic matmul (one FMA
/// chain per output, the same bits on every path and thread count).
fn mm64(a: &[f32], b: &[f32], ta: bool, tb: bool) -> Vec<f32> {
    let n = DCT_SIDE;
    let spec = tessera_tensor::MatSpec { m: n, n, k: n, ta, tb };
    let mut out = vec![0.0f32; n * n];
    tessera_tensor::matmul(&spec, a, b, &mut out);
    out
}

/// 2-D DCT-II (orthonormal) of a flat vector, tile by tile; the last tile is zero-padded, so
/// the result has `⌈n / 4096⌉ · 4096` coefficients.
pub fn dct_tiles(x: &[f32]) -> Vec<f32> {
    let d = dct_matrix();
    let mut out = Vec::with_capacity(x.len().div_ceil(DCT_TILE) * DCT_TILE);
    for c in x.chunks(DCT_TILE) {
        let mut t = c.to_vec();
        t.resize(DCT_TILE, 0.0);
        out.extend(mm64(&mm64(&d, &t, false, false), &d, false, true));
    }
    out
}

/// Inverse of [`dct_tiles`], truncated to `n` values.
pub fn idct_tiles(coeffs: &[f32], n: usize) -> Vec<f32> {
    assert_eq!(coeffs.len(), n.div_ceil(DCT_TILE) * DCT_TILE);
    let d = dct_matrix();
    let mut out = Vec::with_capacity(coeffs.len());
    for c in coeffs.chunks(DCT_TILE) {
        out.extend(mm64(&mm64(&d, c, true, false), &d, false, false));
    }
    out.truncate(n);
    out
}

/// One DeMo peer's decoupled momentum `e` (in parameter space).
#[derive(Clone, Debug, PartialEq)]
pub struct DemoPeer {
    pub beta: f32,
    pub e: Vec<f32>,
}

impl DemoPeer {
    pub fn new(beta: f32, n: usize) -> Self {
        Self { beta, e: vec![0.0; n] }
    }

    /// `e ← βe + lr·g`; send the top-k DCT coefficients of each tile; `e ← e − IDCT(sent)`.
    /// `codec` must be a top-k codec over chunks of [`DCT_TILE`] coefficients.
    pub fn compress(&mut self, grad: &[f32], lr: f32, codec: &Codec) -> Result<Vec<u8>, SyncError> {
        if codec.chunk != DCT_TILE || codec.top_k.is_none() {
            return Err(SyncError::BadCodec("DeMo needs top-k over 4096-coefficient tiles".into()));
        }
        let beta = self.beta;
        self.e.iter_mut().zip(grad).for_each(|(e, &g)| *e = beta * *e + lr * g);
        let coeffs = dct_tiles(&self.e);
        let payload = codec.encode(&coeffs);
        let sent = idct_tiles(&codec.decode(&payload, coeffs.len())?, self.e.len());
        self.e.iter_mut().zip(&sent).for_each(|(e, &s)| *e -= s);
        Ok(payload)
    }
}

/// DeMo's parameter update from the aggregated coefficients:
/// `p ← p·(1 − lr·wd) − lr·sign(IDCT(agg))`.
pub fn demo_apply(theta: &mut [f32], agg_coeffs: &[f32], lr: f32, weight_decay: f32) {
    let g = idct_tiles(agg_coeffs, theta.len());
    let decay = 1.0 - lr * weight_decay;
    for (t, &gi) in theta.iter_mut().zip(&g) {
        let s = if gi > 0.0 {
            1.0
        } else if gi < 0.0 {
            -1.0
        } else {
            0.0
        };
        *t = *t * decay - lr * s;
    }
}

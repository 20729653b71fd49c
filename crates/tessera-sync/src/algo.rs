//! The one table of outer algorithms. Each of DDP, DiLoCo, NoLoCo, SparseLoCo and DeMo is
//! defined here once: what a peer computes, the per-peer state it keeps, how it encodes its
//! contribution, how contributions are combined (in peer-id order) and how the combination
//! changes the shared state. The simulator and the networked run both call [`Outer`], so they
//! cannot compute different bits for the same inputs.

use tessera_model::{AdamWConfig, OptState, ParamSet};
use tessera_tensor::{Exec, Hash, Kernel, TraceMode};

use crate::{
    decode_update, demo_apply, encode_update, frame_update, sparse_mean, weighted_mean, Algorithm, Codec,
    Contribute, DemoPeer, ErrorFeedback, Expected, NesterovOuter, NoLoCoPeer, SyncError, Training,
    ValueCodec, DCT_TILE,
};

/// What a peer computes in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// One gradient of the shared parameters on the unit's first batch (DDP, DeMo).
    Gradient,
    /// H inner steps from the shared parameters; the contribution is `start − end` (DiLoCo,
    /// SparseLoCo).
    InnerSteps,
    /// H inner steps from the replica's own outer weights φ (NoLoCo).
    InnerStepsFromOwn,
}

/// How contributions travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// To one aggregator, which re-encodes the mean in the same codec and sends it back.
    Hub,
    /// Every peer combines every accepted contribution itself.
    AllGather,
    /// Seeded pairs (or a triple) exchange with each other only; no shared state.
    Pairs,
}

/// DDP's global optimizer for the mean gradient.
#[derive(Clone, Debug, PartialEq)]
pub enum GlobalOptimizer {
    AdamW(AdamWConfig),
    Sgd { lr: f32 },
}

/// The settings of the outer algorithms: the run's training section (each algorithm reads its
/// own few rates from it), with the codec and DDP's global optimizer resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct OuterSettings {
    pub training: Training,
    /// The codec contributions are sent in (see [`Algorithm::codec`]).
    pub codec: Codec,
    /// DDP's global optimizer.
    pub ddp: GlobalOptimizer,
}

impl Algorithm {
    /// The codec this algorithm's contributions travel in: DDP f32; DiLoCo and NoLoCo the
    /// configured `values` codec; SparseLoCo top-`top_k` per `chunk` as 2-bit; DeMo top-`top_k`
    /// f32 DCT coefficients per 64×64 tile. Validated.
    pub fn codec(self, values: ValueCodec, chunk: usize, top_k: usize) -> Result<Codec, SyncError> {
        let c = match self {
            Algorithm::Ddp => Codec::dense(ValueCodec::F32, chunk),
            Algorithm::DiLoCo | Algorithm::NoLoCo => Codec::dense(values, chunk),
            Algorithm::SparseLoCo => Codec::sparse(ValueCodec::TwoBit, chunk, top_k),
            Algorithm::DeMo => Codec::sparse(ValueCodec::F32, DCT_TILE, top_k),
        };
        c.validate()?;
        Ok(c)
    }
}

/// A peer's own algorithm state, kept across rounds.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerState {
    None,
    ErrorFeedback(ErrorFeedback),
    Demo(DemoPeer),
    NoLoCo(NoLoCoPeer),
}

impl PeerState {
    /// The buffers it holds, for state hashes.
    pub fn buffers(&self) -> Vec<&[f32]> {
        match self {
            PeerState::None => vec![],
            PeerState::ErrorFeedback(e) => vec![&e.e],
            PeerState::Demo(d) => vec![&d.e],
            PeerState::NoLoCo(p) => vec![&p.phi, &p.m],
        }
    }
}

/// Contributions combined: the values every peer applies, and for a hub algorithm the blob the
/// hub sends (the mean re-encoded in the contribution codec).
#[derive(Clone, Debug, PartialEq)]
pub struct Combined {
    pub blob: Option<Vec<u8>>,
    pub values: Vec<f32>,
    /// Contributions clipped to the median norm's bound.
    pub clipped: usize,
}

/// One run's outer algorithm.
#[derive(Clone, Debug)]
pub struct Outer {
    pub s: OuterSettings,
    pub layout_hash: Hash,
    template: ParamSet,
}

impl Outer {
    /// The algorithm for parameters shaped like `template`.
    pub fn new(s: OuterSettings, template: &ParamSet) -> Result<Self, SyncError> {
        s.codec.validate()?;
        if s.training.algo == Algorithm::DeMo && (s.codec.chunk != DCT_TILE || s.codec.top_k.is_none()) {
            return Err(SyncError::BadCodec("DeMo needs top-k over 4096-coefficient tiles".into()));
        }
        if s.training.algo == Algorithm::SparseLoCo && s.codec.top_k.is_none() {
            return Err(SyncError::BadCodec("SparseLoCo needs a top-k codec".into()));
        }
        Ok(Self { layout_hash: template.layout().hash(), template: template.zeros_like(), s })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.s.training.algo
    }

    /// Parameters.
    pub fn n(&self) -> usize {
        self.template.numel()
    }

    /// Values one contribution carries (DeMo: DCT coefficients of whole tiles).
    pub fn values(&self) -> usize {
        match self.algorithm() {
            Algorithm::DeMo => self.n().div_ceil(DCT_TILE) * DCT_TILE,
            _ => self.n(),
        }
    }

    pub fn work(&self) -> Work {
        match self.algorithm() {
            Algorithm::Ddp | Algorithm::DeMo => Work::Gradient,
            Algorithm::NoLoCo => Work::InnerStepsFromOwn,
            Algorithm::DiLoCo | Algorithm::SparseLoCo => Work::InnerSteps,
        }
    }

    pub fn exchange(&self) -> Exchange {
        match self.algorithm() {
            Algorithm::Ddp | Algorithm::DiLoCo => Exchange::Hub,
            Algorithm::SparseLoCo | Algorithm::DeMo => Exchange::AllGather,
            Algorithm::NoLoCo => Exchange::Pairs,
        }
    }

    /// Buffers the state a trainer holds keeps beside θ (DiLoCo: the outer momentum; DDP with
    /// AdamW: its m and v, its step count being the round; NoLoCo: the replica's momentum m,
    /// its θ being the replica's φ).
    pub fn buffers(&self) -> usize {
        match (&self.algorithm(), &self.s.ddp) {
            (Algorithm::DiLoCo | Algorithm::NoLoCo, _) => 1,
            (Algorithm::Ddp, GlobalOptimizer::AdamW(_)) => 2,
            _ => 0,
        }
    }

    /// What a contribution must look like.
    pub fn expected(&self, max_norm: Option<f32>) -> Expected {
        let (algorithm, codec) = (self.algorithm(), Some(self.s.codec));
        Expected { layout_hash: self.layout_hash, n: self.values(), max_norm, algorithm, codec }
    }

    /// The exact length of an encoded contribution.
    pub fn update_len(&self) -> usize {
        crate::HEADER_BYTES + self.s.codec.encoded_len(self.values())
    }

    /// A new peer's own state, its replica starting at `theta`.
    pub fn peer_state(&self, theta: &[f32]) -> PeerState {
        let n = theta.len();
        match self.algorithm() {
            Algorithm::SparseLoCo => PeerState::ErrorFeedback(ErrorFeedback::new(self.s.training.ef_beta, n)),
            Algorithm::DeMo => PeerState::Demo(DemoPeer::new(self.s.training.demo_beta, n)),
            Algorithm::NoLoCo => PeerState::NoLoCo(NoLoCoPeer::new(theta.to_vec())),
            Algorithm::Ddp | Algorithm::DiLoCo => PeerState::None,
        }
    }

    /// DeMo's step size in `round` (its schedule counts rounds from 1).
    pub fn demo_lr(&self, round: u64) -> f32 {
        let t = &self.s.training;
        let schedule = AdamWConfig {
            lr: t.demo_lr,
            warmup_steps: t.inner_warmup,
            total_steps: t.rounds,
            ..AdamWConfig::default()
        };
        schedule.lr_at(round.saturating_add(1))
    }

    /// Encodes a peer's contribution for `round` from what it computed: Δ = start − end after
    /// inner steps, or the gradient (see [`Outer::work`]). NoLoCo's Δ is `end − start`.
    pub fn contribute(&self, st: &mut PeerState, round: u64, x: &[f32]) -> Result<Vec<u8>, SyncError> {
        let (alg, codec, layout) = (self.algorithm(), self.s.codec, self.layout_hash);
        if x.len() != self.n() {
            return Err(SyncError::Length { what: "contribution", want: self.n(), got: x.len() });
        }
        Ok(match (alg, st) {
            (Algorithm::SparseLoCo, PeerState::ErrorFeedback(ef)) => {
                frame_update(alg, codec, layout, round, x.len(), &ef.compress(x, &codec)?)
            }
            (Algorithm::DeMo, PeerState::Demo(d)) => {
                let payload = d.compress(x, self.demo_lr(round), &codec)?;
                frame_update(alg, codec, layout, round, self.values(), &payload)
            }
            (Algorithm::Ddp | Algorithm::DiLoCo | Algorithm::NoLoCo, _) => {
                encode_update(alg, codec, layout, round, x)
            }
            (_, other) => {
                return Err(SyncError::Malformed(format!("{} cannot use peer state {other:?}", alg.name())))
            }
        })
    }

    /// Combines decoded contributions of `round` in peer-id order.
    /// Whether [`Outer::combine`] reads the contributions' norms (to clip them to the median's
    /// bound, or to scale them to the median), so a caller holding them encoded keeps each
    /// norm from the first decoding.
    pub fn weighs_norms(&self) -> bool {
        match self.algorithm() {
            Algorithm::Ddp | Algorithm::DiLoCo => self.s.training.clip_median > 0.0,
            Algorithm::SparseLoCo => true,
            Algorithm::DeMo | Algorithm::NoLoCo => false,
        }
    }

    pub fn combine<C: Contribute>(&self, round: u64, contribs: &[C]) -> Result<Combined, SyncError> {
        let n = self.values();
        match self.algorithm() {
            Algorithm::Ddp | Algorithm::DiLoCo => {
                // Robust aggregation: outliers over `clip_median ×` the median norm (0: off).
                let (scales, count) = match self.s.training.clip_median {
                    f if f > 0.0 => crate::clip_to_median(contribs, f64::from(f))?,
                    _ => (None, 0),
                };
                let mean = weighted_mean(contribs, n, scales.as_deref())?;
                let blob = encode_update(self.algorithm(), self.s.codec, self.layout_hash, round, &mean);
                let values = self.decode_aggregate(round, &blob)?;
                Ok(Combined { blob: Some(blob), values, clipped: count })
            }
            Algorithm::SparseLoCo => {
                Ok(Combined { blob: None, values: sparse_mean(contribs, n, true)?, clipped: 0 })
            }
            Algorithm::DeMo => {
                Ok(Combined { blob: None, values: sparse_mean(contribs, n, false)?, clipped: 0 })
            }
            Algorithm::NoLoCo => Err(SyncError::Malformed("NoLoCo combines within its pairs".into())),
        }
    }

    /// NoLoCo: one group's decoded Δs and φs (the group's accepted members in peer-id order,
    /// a replica's own Δ decoded like its partners') combined into the values a member
    /// applies: the mean Δ̄, then the mean φ̄ (`2n` values). Every member of the group computes
    /// the same bits, and so does the coordinator that checks them.
    pub fn combine_group(&self, deltas: &[&[f32]], phis: &[&[f32]]) -> Result<Vec<f32>, SyncError> {
        let n = self.n();
        if deltas.is_empty() || deltas.len() != phis.len() {
            return Err(SyncError::Malformed(format!(
                "{} Δs and {} φs in a group",
                deltas.len(),
                phis.len()
            )));
        }
        if let Some(v) = deltas.iter().chain(phis).find(|v| v.len() != n) {
            return Err(SyncError::Length { what: "group member", want: n, got: v.len() });
        }
        let mut out = crate::mean_of(deltas);
        out.extend(crate::mean_of(phis));
        assert_eq!(out.len(), 2 * n, "Δ̄ then φ̄");
        Ok(out)
    }

    /// NoLoCo: the exact length of a φ blob (see [`Outer::phi_message`]).
    pub fn phi_len(&self) -> u64 {
        let f32s = Codec::dense(ValueCodec::F32, self.s.codec.chunk);
        (crate::HEADER_BYTES + f32s.encoded_len(self.n())) as u64
    }

    /// NoLoCo: the blob a replica offers its partners for its outer weights φ in `round`
    /// (f32, lossless; the same framing as an update).
    pub fn phi_message(&self, round: u64, phi: &[f32]) -> Vec<u8> {
        let f32s = Codec::dense(ValueCodec::F32, self.s.codec.chunk);
        encode_update(Algorithm::NoLoCo, f32s, self.layout_hash, round, phi)
    }

    /// Decodes a partner's φ blob of `round` (see [`Outer::phi_message`]).
    pub fn decode_phi(&self, round: u64, blob: &[u8]) -> Result<Vec<f32>, SyncError> {
        let f32s = Some(Codec::dense(ValueCodec::F32, self.s.codec.chunk));
        let d = decode_update(blob, &Expected { codec: f32s, ..self.expected(None) })?;
        if d.header.round != round || d.header.algorithm != Algorithm::NoLoCo {
            return Err(SyncError::Malformed(format!("φ of round {}, expected {round}", d.header.round)));
        }
        Ok(d.values)
    }

    /// Decodes a hub's aggregate blob for `round`: checked for layout and length, not against
    /// the per-update norm bound (the mean of updates within it, quantized again, may be a
    /// hair over, and the blob is named by hash in a signed message anyway).
    pub fn decode_aggregate(&self, round: u64, blob: &[u8]) -> Result<Vec<f32>, SyncError> {
        let d = decode_update(blob, &self.expected(None))?;
        if d.header.round != round {
            return Err(SyncError::Malformed(format!(
                "aggregate of round {}, expected {round}",
                d.header.round
            )));
        }
        Ok(d.values)
    }

    /// Applies a round's combined values to the shared state (θ and the buffers).
    pub fn apply(
        &self,
        round: u64,
        theta: &mut [f32],
        bufs: &mut [Vec<f32>],
        agg: &[f32],
    ) -> Result<(), SyncError> {
        // NoLoCo applies a group's Δ̄ and φ̄ together (see [`Outer::combine_group`]).
        let want = if self.algorithm() == Algorithm::NoLoCo { 2 * self.n() } else { self.values() };
        if bufs.len() != self.buffers() || theta.len() != self.n() || agg.len() != want {
            return Err(SyncError::Length { what: "shared state", want: self.n(), got: theta.len() });
        }
        match (self.algorithm(), &self.s.ddp) {
            (Algorithm::DiLoCo, _) => {
                let b = std::mem::take(&mut bufs[0]);
                let mut outer = NesterovOuter {
                    lr: self.s.training.outer_lr,
                    momentum: self.s.training.outer_momentum,
                    b,
                };
                outer.step(theta, agg);
                bufs[0] = outer.b;
            }
            (Algorithm::Ddp, GlobalOptimizer::AdamW(cfg)) => self.adamw(round, cfg, theta, bufs, agg)?,
            (Algorithm::Ddp, GlobalOptimizer::Sgd { lr }) => self.sgd(*lr, theta, agg)?,
            (Algorithm::SparseLoCo, _) => {
                let lr = self.s.training.sparse_lr;
                theta.iter_mut().zip(agg).for_each(|(t, &a)| *t -= lr * a);
            }
            (Algorithm::DeMo, _) => {
                demo_apply(theta, agg, self.demo_lr(round), self.s.training.demo_weight_decay)
            }
            (Algorithm::NoLoCo, _) => {
                // θ is the replica's φ, the buffer its momentum m; from the group's Δ̄ and φ̄.
                let (dm, pm) = agg.split_at(self.n());
                let (a, b) = (self.s.training.noloco_alpha, self.s.training.noloco_beta);
                crate::noloco_step(a, b, theta, &mut bufs[0], dm, pm);
            }
        }
        Ok(())
    }

    /// One AdamW step of θ with gradient `g`, moments in the two buffers, step count = round,
    /// through the same kernels as single-machine training.
    fn adamw(
        &self,
        round: u64,
        cfg: &AdamWConfig,
        theta: &mut [f32],
        bufs: &mut [Vec<f32>],
        g: &[f32],
    ) -> Result<(), SyncError> {
        let load = |v: &[f32]| -> Result<ParamSet, SyncError> {
            let mut p = self.template.clone();
            p.load_flat(v).map_err(|e| SyncError::Malformed(e.to_string()))?;
            Ok(p)
        };
        let mut params = load(theta)?;
        let mut opt = OptState { m: load(&bufs[0])?, v: load(&bufs[1])?, step: round };
        let grads = load(g)?;
        let mut ex = Exec::new(TraceMode::Off);
        opt.update(cfg, &mut ex, &mut params, grads.tensors().to_vec());
        theta.copy_from_slice(&params.to_flat());
        bufs[0] = opt.m.to_flat();
        bufs[1] = opt.v.to_flat();
        assert_eq!(opt.step, round + 1, "one optimizer step per round");
        Ok(())
    }

    /// `p ← p − lr·g` per parameter tensor, through the engine's SGD kernel.
    fn sgd(&self, lr: f32, theta: &mut [f32], g: &[f32]) -> Result<(), SyncError> {
        let mut off = 0;
        for t in self.template.tensors() {
            let k = t.numel();
            let shape = t.shape();
            let p = tessera_tensor::Tensor::new(shape, theta[off..off + k].to_vec())
                .map_err(|e| SyncError::Malformed(e.to_string()))?;
            let gi = tessera_tensor::Tensor::new(shape, g[off..off + k].to_vec())
                .map_err(|e| SyncError::Malformed(e.to_string()))?;
            let out =
                Kernel::Sgd { lr }.execute(&[&p, &gi]).map_err(|e| SyncError::Malformed(e.to_string()))?;
            theta[off..off + k].copy_from_slice(out[0].data());
            off += k;
        }
        assert_eq!(off, theta.len(), "the template covers every parameter");
        Ok(())
    }
}

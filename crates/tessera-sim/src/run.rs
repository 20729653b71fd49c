//! One simulated run: N peers training the real model on their assigned batches, exchanging
//! encoded updates over the simulated network, round by round on the virtual clock.

use rayon::prelude::*;
use tessera_data::{BatchKey, Dataset};
use tessera_model::{AdamWConfig, Gpt, GptConfig, ParamSet, Trainer};
use tessera_sync::{
    decode_update, demo_apply, encode_update, frame_update, mean_of, noloco_groups, pseudo_gradient,
    replica_spread, sparse_mean, weighted_mean, Algorithm, Codec, Contribution, DemoPeer, ErrorFeedback,
    Expected, NesterovOuter, NoLoCoPeer, ValueCodec, DCT_TILE,
};
use tessera_tensor::{Hash, Kernel, Tensor, TraceMode};

use crate::net::{Link, Network};
use crate::{SimConfig, SimError};

/// What one round reports.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport {
    /// Rounds completed.
    pub round: u64,
    /// Inner steps each peer has taken.
    pub steps: u64,
    /// Tokens trained on, all peers together.
    pub tokens: u64,
    /// Simulated wall-clock at the end of the round.
    pub sim_time_s: f64,
    /// Mean training loss of the round's inner steps over all peers.
    pub train_loss: f64,
    /// Validation loss of the shared model (NoLoCo: the mean over replicas), when evaluated.
    pub val_loss: Option<f64>,
    /// NoLoCo: mean standard deviation of the outer weights across replicas.
    pub spread: Option<f64>,
    /// Cumulative bytes sent and received by each peer.
    pub bytes_sent: Vec<u64>,
    pub bytes_recv: Vec<u64>,
    /// Updates rejected by the decoder this round.
    pub rejected: usize,
}

struct Peer {
    tr: Trainer<Gpt>,
    ef: Option<ErrorFeedback>,
    noloco: Option<NoLoCoPeer>,
    demo: Option<DemoPeer>,
}

/// The read-only context of a round, borrowed field by field so peers can be borrowed mutably.
macro_rules! ctx {
    ($s:expr) => {
        Ctx { cfg: &$s.cfg, ds: $s.ds, ctx_len: $s.gcfg.context }
    };
}

/// The read-only context of a round.
struct Ctx<'a> {
    cfg: &'a SimConfig,
    ds: &'a Dataset,
    ctx_len: usize,
}

/// A simulated run.
pub struct Sim<'a> {
    cfg: SimConfig,
    algo: Algorithm,
    codec: Codec,
    ds: &'a Dataset,
    gcfg: GptConfig,
    template: ParamSet,
    layout_hash: Hash,
    theta: Vec<f32>,
    outer: NesterovOuter,
    global: Trainer<Gpt>,
    peers: Vec<Peer>,
    net: Network,
    clock: f64,
    round: u64,
}

impl<'a> Sim<'a> {
    /// Sets up `cfg.peers` peers, all starting from the same initial model.
    pub fn new(cfg: SimConfig, ds: &'a Dataset) -> Result<Self, SimError> {
        cfg.validate()?;
        let algo = cfg.algorithm()?;
        let codec = cfg.update_codec()?;
        let gcfg = GptConfig::preset(&cfg.preset)?;
        if ds.manifest().vocab > gcfg.vocab {
            return Err(SimError::Config(format!(
                "dataset vocab {} exceeds the model's {}",
                ds.manifest().vocab,
                gcfg.vocab
            )));
        }
        let model = Gpt::new(gcfg.clone(), cfg.seed)?;
        let template = model.params.clone();
        let theta = template.to_flat();
        let n = theta.len();
        let inner = AdamWConfig {
            lr: cfg.inner_lr,
            warmup_steps: cfg.inner_warmup,
            total_steps: cfg.rounds * cfg.h(),
            ..AdamWConfig::default()
        };
        let global = Trainer::new(model.clone(), inner.clone())?;
        let peers = (0..cfg.peers)
            .map(|_| -> Result<Peer, SimError> {
                Ok(Peer {
                    tr: Trainer::new(model.clone(), inner.clone())?,
                    ef: (algo == Algorithm::SparseLoCo).then(|| ErrorFeedback::new(cfg.ef_beta, n)),
                    noloco: (algo == Algorithm::NoLoCo).then(|| NoLoCoPeer::new(theta.clone())),
                    demo: (algo == Algorithm::DeMo).then(|| DemoPeer::new(cfg.demo_beta, n)),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let peer_link = Link { up_bps: cfg.bandwidth_mbps * 1e6, down_bps: cfg.bandwidth_mbps * 1e6 };
        let hub_link = Link { up_bps: cfg.hub_bandwidth_mbps * 1e6, down_bps: cfg.hub_bandwidth_mbps * 1e6 };
        let mut links = vec![peer_link; cfg.peers];
        links.push(hub_link);
        let net = Network::new(links, cfg.rtt_ms / 2000.0);
        Ok(Self {
            outer: NesterovOuter::new(cfg.outer_lr, cfg.outer_momentum, n),
            layout_hash: template.layout().hash(),
            cfg,
            algo,
            codec,
            ds,
            gcfg,
            template,
            theta,
            global,
            peers,
            net,
            clock: 0.0,
            round: 0,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.theta.len()
    }

    fn hub(&self) -> usize {
        self.cfg.peers
    }

    fn expected(&self, n: usize) -> Expected {
        Expected { layout_hash: self.layout_hash, n, max_norm: Some(self.cfg.max_update_norm) }
    }

    /// Runs one round and reports it.
    pub fn run_round(&mut self) -> Result<RoundReport, SimError> {
        let t_start = self.clock;
        let h = self.cfg.h();
        let compute_end = t_start + h as f64 * self.cfg.step_compute_s;
        let (train_loss, rejected, end) = match self.algo {
            Algorithm::Ddp => self.round_ddp(compute_end)?,
            Algorithm::DiLoCo => self.round_diloco(compute_end)?,
            Algorithm::SparseLoCo => self.round_sparseloco(compute_end)?,
            Algorithm::NoLoCo => self.round_noloco(compute_end)?,
            Algorithm::DeMo => self.round_demo(compute_end)?,
        };
        self.clock = end.max(compute_end);
        self.round += 1;
        let last = self.round == self.cfg.rounds;
        let eval_now = last || (self.cfg.eval_every > 0 && self.round.is_multiple_of(self.cfg.eval_every));
        let (val_loss, spread) = if eval_now { self.evaluate()? } else { (None, None) };
        let n = self.cfg.peers;
        Ok(RoundReport {
            round: self.round,
            steps: self.round * h,
            tokens: self.round * h * (n * self.cfg.batch * self.gcfg.context) as u64,
            sim_time_s: self.clock,
            train_loss,
            val_loss,
            spread,
            bytes_sent: self.net.sent[..n].to_vec(),
            bytes_recv: self.net.recv[..n].to_vec(),
            rejected,
        })
    }

    /// Every peer uploads its bytes to the hub; returns when the last arrived.
    fn upload(&mut self, t: f64, sizes: &[u64]) -> f64 {
        let hub = self.hub();
        sizes.iter().enumerate().map(|(i, &b)| self.net.transfer(t, i, hub, b)).fold(t, f64::max)
    }

    /// The hub sends `bytes` to every peer; returns when the last arrived.
    fn broadcast(&mut self, t: f64, bytes: u64) -> f64 {
        let hub = self.hub();
        (0..self.cfg.peers).map(|i| self.net.transfer(t, hub, i, bytes)).fold(t, f64::max)
    }

    /// Every peer's message reaches every other peer through the hub (all-gather).
    fn all_gather(&mut self, t: f64, sizes: &[u64]) -> f64 {
        let hub = self.hub();
        let arrivals: Vec<f64> =
            sizes.iter().enumerate().map(|(i, &b)| self.net.transfer(t, i, hub, b)).collect();
        let mut end = t;
        for (src, (&b, &at)) in sizes.iter().zip(&arrivals).enumerate() {
            for dst in (0..self.cfg.peers).filter(|&d| d != src) {
                end = end.max(self.net.transfer(at, hub, dst, b));
            }
        }
        end
    }

    /// Decodes every message, returning valid contributions (weight 1) and the rejection count.
    fn decode_all(&self, msgs: &[Vec<u8>], n: usize) -> (Vec<Contribution>, usize) {
        let want = self.expected(n);
        let mut out = Vec::new();
        let mut rejected = 0;
        for (peer, m) in msgs.iter().enumerate() {
            match decode_update(m, &want) {
                Ok(d) => out.push(Contribution {
                    peer: peer as u64,
                    weight: 1.0,
                    values: d.values,
                    support: d.support,
                }),
                Err(_) => rejected += 1,
            }
        }
        (out, rejected)
    }

    fn round_ddp(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let ctx = ctx!(self);
        let global = &self.global;
        let r = self.round;
        let grads: Vec<(f64, Vec<f32>)> = (0..self.cfg.peers)
            .into_par_iter()
            .map(|i| {
                let (loss, g) = global.gradients(&ctx.batch(r, i, 0)?)?;
                Ok((f64::from(loss), flatten(&g)))
            })
            .collect::<Result<_, SimError>>()?;
        let msgs: Vec<Vec<u8>> = grads
            .iter()
            .map(|(_, g)| encode_update(Algorithm::Ddp, self.codec, self.layout_hash, r, g))
            .collect();
        let n = self.theta.len();
        let (end, rejected) = self.hub_aggregate(t, &msgs, n, |agg, sim| {
            let g = unflatten(&sim.template, agg)?;
            if sim.cfg.inner_optimizer == "sgd" {
                sgd_apply(&mut sim.global, &g, sim.cfg.inner_lr)?;
            } else {
                sim.global.apply_gradients(g);
            }
            sim.theta = sim.global.model.params.to_flat();
            Ok(())
        })?;
        Ok((mean(grads.iter().map(|g| g.0)), rejected, end))
    }

    /// Uploads `msgs` to the hub, which averages the valid ones, re-encodes the mean with the
    /// same codec and broadcasts it; `apply` receives the decoded mean.
    fn hub_aggregate(
        &mut self,
        t: f64,
        msgs: &[Vec<u8>],
        n: usize,
        apply: impl FnOnce(&[f32], &mut Self) -> Result<(), SimError>,
    ) -> Result<(f64, usize), SimError> {
        let sizes: Vec<u64> = msgs.iter().map(|m| m.len() as u64).collect();
        let at_hub = self.upload(t, &sizes);
        let (contribs, rejected) = self.decode_all(msgs, n);
        if contribs.is_empty() {
            return Ok((at_hub, rejected));
        }
        let mean = weighted_mean(&contribs, n)?;
        let agg = encode_update(self.algo, self.codec, self.layout_hash, self.round, &mean);
        let end = self.broadcast(at_hub, agg.len() as u64);
        let decoded = decode_update(&agg, &self.expected(n))?;
        apply(&decoded.values, self)?;
        Ok((end, rejected))
    }

    fn round_diloco(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let results = train_peers(&mut self.peers, &ctx!(self), self.round, Some(&self.theta))?;
        let msgs: Vec<Vec<u8>> = results
            .iter()
            .map(|(_, d)| encode_update(Algorithm::DiLoCo, self.codec, self.layout_hash, self.round, d))
            .collect();
        let n = self.theta.len();
        let (end, rejected) = self.hub_aggregate(t, &msgs, n, |delta, sim| {
            sim.outer.step(&mut sim.theta, delta);
            Ok(())
        })?;
        Ok((mean(results.iter().map(|r| r.0)), rejected, end))
    }

    fn round_sparseloco(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let results = train_peers(&mut self.peers, &ctx!(self), self.round, Some(&self.theta))?;
        let n = self.theta.len();
        let mut msgs = Vec::with_capacity(results.len());
        for (p, (_, delta)) in self.peers.iter_mut().zip(&results) {
            let ef = p.ef.as_mut().expect("sparseloco peers have error feedback");
            let payload = ef.compress(delta, &self.codec)?;
            msgs.push(frame_update(
                Algorithm::SparseLoCo,
                self.codec,
                self.layout_hash,
                self.round,
                n,
                &payload,
            ));
        }
        let sizes: Vec<u64> = msgs.iter().map(|m| m.len() as u64).collect();
        let end = self.all_gather(t, &sizes);
        let (contribs, rejected) = self.decode_all(&msgs, n);
        if !contribs.is_empty() {
            let agg = sparse_mean(&contribs, n, true)?;
            let lr = self.cfg.sparse_lr;
            self.theta.iter_mut().zip(&agg).for_each(|(t, &a)| *t -= lr * a);
        }
        Ok((mean(results.iter().map(|r| r.0)), rejected, end))
    }

    fn round_noloco(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let results = train_peers(&mut self.peers, &ctx!(self), self.round, None)?;
        let n = self.theta.len();
        // Δ = trained − φ (NoLoCo's sign convention), per replica.
        let deltas: Vec<Vec<f32>> = self
            .peers
            .iter()
            .zip(&results)
            .map(|(_, (_, start_minus_end))| start_minus_end.iter().map(|d| -d).collect())
            .collect();
        let phis: Vec<Vec<f32>> =
            self.peers.iter().map(|p| p.noloco.as_ref().expect("noloco peer").phi.clone()).collect();
        let want_delta = self.expected(n);
        let want_phi = Expected { max_norm: None, ..want_delta.clone() };
        let phi_codec = Codec::dense(ValueCodec::F32, self.cfg.chunk);
        let mut end = t;
        let mut rejected = 0;
        for group in noloco_groups(self.cfg.seed, self.round, self.cfg.peers) {
            let mut members = group.clone();
            members.sort_unstable();
            let msgs: Vec<(Vec<u8>, Vec<u8>)> = members
                .iter()
                .map(|&i| {
                    (
                        encode_update(
                            Algorithm::NoLoCo,
                            self.codec,
                            self.layout_hash,
                            self.round,
                            &deltas[i],
                        ),
                        encode_update(Algorithm::NoLoCo, phi_codec, self.layout_hash, self.round, &phis[i]),
                    )
                })
                .collect();
            for &i in &members {
                let (mut ds, mut ps): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (Vec::new(), Vec::new());
                for (b, &j) in members.iter().enumerate() {
                    if i == j {
                        ds.push(deltas[i].clone());
                        ps.push(phis[i].clone());
                        continue;
                    }
                    let bytes = (msgs[b].0.len() + msgs[b].1.len()) as u64;
                    end = end.max(self.net.transfer(t, j, i, bytes));
                    match (decode_update(&msgs[b].0, &want_delta), decode_update(&msgs[b].1, &want_phi)) {
                        (Ok(d), Ok(p)) => {
                            ds.push(d.values);
                            ps.push(p.values);
                        }
                        _ => rejected += 1,
                    }
                }
                let dref: Vec<&[f32]> = ds.iter().map(Vec::as_slice).collect();
                let pref: Vec<&[f32]> = ps.iter().map(Vec::as_slice).collect();
                let (dm, pm) = (mean_of(&dref), mean_of(&pref));
                let peer = &mut self.peers[i];
                let phi = peer.noloco.as_mut().expect("noloco peer").outer_step(
                    self.cfg.noloco_alpha,
                    self.cfg.noloco_beta,
                    &dm,
                    &pm,
                );
                peer.tr.model.params.load_flat(phi)?;
            }
        }
        Ok((mean(results.iter().map(|r| r.0)), rejected, end))
    }

    fn round_demo(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let ctx = ctx!(self);
        let r = self.round;
        let sched = AdamWConfig {
            lr: self.cfg.demo_lr,
            warmup_steps: self.cfg.inner_warmup,
            total_steps: self.cfg.rounds,
            ..AdamWConfig::default()
        };
        let lr = sched.lr_at(r + 1);
        let global = &self.global;
        let (codec, layout) = (self.codec, self.layout_hash);
        let n = self.theta.len();
        let coeffs = n.div_ceil(DCT_TILE) * DCT_TILE;
        let out: Vec<(f64, Vec<u8>)> = self
            .peers
            .par_iter_mut()
            .enumerate()
            .map(|(i, p)| {
                let (loss, g) = global.gradients(&ctx.batch(r, i, 0)?)?;
                let demo = p.demo.as_mut().expect("demo peer");
                let payload = demo.compress(&flatten(&g), lr, &codec)?;
                Ok((f64::from(loss), frame_update(Algorithm::DeMo, codec, layout, r, coeffs, &payload)))
            })
            .collect::<Result<_, SimError>>()?;
        let (losses, msgs): (Vec<f64>, Vec<Vec<u8>>) = out.into_iter().unzip();
        let sizes: Vec<u64> = msgs.iter().map(|m| m.len() as u64).collect();
        let end = self.all_gather(t, &sizes);
        let (contribs, rejected) = self.decode_all(&msgs, coeffs);
        if !contribs.is_empty() {
            let agg = sparse_mean(&contribs, coeffs, false)?;
            demo_apply(&mut self.theta, &agg, lr, self.cfg.demo_weight_decay);
            self.global.model.params.load_flat(&self.theta)?;
        }
        Ok((mean(losses.into_iter()), rejected, end))
    }

    /// Validation loss of the shared model (NoLoCo: mean over replicas) and the replica spread.
    fn evaluate(&mut self) -> Result<(Option<f64>, Option<f64>), SimError> {
        let ctx_len = self.gcfg.context;
        let (batch, k, ds) = (self.cfg.batch, self.cfg.eval_batches, self.ds);
        let eval = |tr: &Trainer<Gpt>| -> Result<f64, SimError> {
            let mut s = 0.0;
            for i in 0..k {
                s += f64::from(tr.eval_loss(&ds.val_batch(i, batch, ctx_len)?)?);
            }
            Ok(s / k as f64)
        };
        if self.algo == Algorithm::NoLoCo {
            let losses: Vec<f64> = self.peers.par_iter().map(|p| eval(&p.tr)).collect::<Result<_, _>>()?;
            let phis: Vec<&[f32]> =
                self.peers.iter().map(|p| p.noloco.as_ref().expect("noloco").phi.as_slice()).collect();
            return Ok((Some(mean(losses.into_iter())), Some(replica_spread(&phis))));
        }
        self.global.model.params.load_flat(&self.theta)?;
        Ok((Some(eval(&self.global)?), None))
    }

    /// BLAKE3 over the whole simulated state: the round, the shared parameters and outer
    /// momentum, and every peer's parameters, optimizer state and algorithm buffers.
    pub fn state_hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"tessera-sim-v1");
        h.update(self.algo.name().as_bytes());
        h.update(&self.round.to_le_bytes());
        tessera_tensor::hash_f32s(&mut h, &self.theta);
        tessera_tensor::hash_f32s(&mut h, &self.outer.b);
        h.update(&self.global.state_hash());
        for p in &self.peers {
            h.update(&p.tr.state_hash());
            for buf in [p.ef.as_ref().map(|e| &e.e), p.demo.as_ref().map(|d| &d.e)].into_iter().flatten() {
                tessera_tensor::hash_f32s(&mut h, buf);
            }
            if let Some(nl) = &p.noloco {
                tessera_tensor::hash_f32s(&mut h, &nl.phi);
                tessera_tensor::hash_f32s(&mut h, &nl.m);
            }
        }
        *h.finalize().as_bytes()
    }

    /// The shared parameters (for DDP/DiLoCo/SparseLoCo/DeMo).
    pub fn theta(&self) -> &[f32] {
        &self.theta
    }
}

impl Ctx<'_> {
    fn batch(&self, round: u64, slot: usize, step: u64) -> Result<tessera_model::Batch, SimError> {
        let key = BatchKey { seed: self.cfg.seed, round, slot: slot as u64, step };
        Ok(self.ds.train_batch(&key, self.cfg.batch, self.ctx_len)?)
    }
}

/// Each peer (in parallel) starts from `start` (or its own parameters), runs H inner steps on
/// its batches, and returns its mean loss and `start − end`.
fn train_peers(
    peers: &mut [Peer],
    ctx: &Ctx,
    round: u64,
    start: Option<&[f32]>,
) -> Result<Vec<(f64, Vec<f32>)>, SimError> {
    let h = ctx.cfg.h();
    peers
        .par_iter_mut()
        .enumerate()
        .map(|(i, p)| {
            if let Some(s) = start {
                p.tr.model.params.load_flat(s)?;
            }
            let begin = p.tr.model.params.to_flat();
            let mut loss = 0.0;
            for s in 0..h {
                let b = ctx.batch(round, i, s)?;
                loss += f64::from(if ctx.cfg.inner_optimizer == "sgd" {
                    let (l, g) = p.tr.gradients(&b)?;
                    sgd_apply(&mut p.tr, &g, ctx.cfg.inner_lr)?;
                    l
                } else {
                    p.tr.step(&b, TraceMode::Off)?.loss
                });
            }
            Ok((loss / h as f64, pseudo_gradient(&begin, &p.tr.model.params.to_flat())))
        })
        .collect()
}

/// `p ← p − lr·g` for every parameter tensor.
fn sgd_apply(tr: &mut Trainer<Gpt>, grads: &[Tensor], lr: f32) -> Result<(), SimError> {
    for (i, g) in grads.iter().enumerate() {
        let p = tr.model.params.tensors()[i].clone();
        let mut out = Kernel::Sgd { lr }.execute(&[&p, g])?;
        tr.model.params.set(i, out.pop().expect("sgd output"));
    }
    Ok(())
}

fn flatten(ts: &[Tensor]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ts.iter().map(Tensor::numel).sum());
    ts.iter().for_each(|t| out.extend_from_slice(t.data()));
    out
}

fn unflatten(template: &ParamSet, flat: &[f32]) -> Result<Vec<Tensor>, SimError> {
    let mut p = template.clone();
    p.load_flat(flat)?;
    Ok(p.tensors().to_vec())
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

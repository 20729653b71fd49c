//! One simulated run: N peers training the real model on their assigned batches, exchanging
//! encoded updates over the simulated network, round by round on the virtual clock.

use rayon::prelude::*;
use tessera_data::{BatchKey, Dataset};
use tessera_model::{Gpt, GptConfig, Trainer};
use tessera_sync::{
    decode_update, noloco_groups, pseudo_gradient, replica_spread, Algorithm, Contribution, Exchange, Outer,
    PeerState, Work,
};
use tessera_tensor::{Hash, Kernel, Tensor, TraceMode};

use crate::net::{Link, Network};
use crate::{Overlap, SimConfig, SimError};

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
    /// Cumulative bytes the hub (the coordinator's role) sent and received.
    pub hub_sent: u64,
    pub hub_recv: u64,
    /// Updates rejected by the decoder this round.
    pub rejected: usize,
}

struct Peer {
    tr: Trainer<Gpt>,
    st: PeerState,
}

/// Overlapped rounds: the shared state before the last round's outer step, θ_{r−1} and its
/// buffers, and (eager) each peer's decoded contribution to that step (see [`Overlap`]).
struct Lap {
    theta: Vec<f32>,
    bufs: Vec<Vec<f32>>,
    own: Vec<Option<Contribution>>,
}

/// A round's mean training loss, every peer's encoded contribution, and what each computed.
type Contributed = (f64, Vec<Vec<u8>>, Vec<Vec<f32>>);

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
    outer: Outer,
    ds: &'a Dataset,
    gcfg: GptConfig,
    /// The shared state: θ and the algorithm's buffers (see [`Outer::buffers`]).
    theta: Vec<f32>,
    bufs: Vec<Vec<f32>>,
    /// Computes the shared model's gradients and losses (DDP, DeMo, evaluation).
    global: Trainer<Gpt>,
    peers: Vec<Peer>,
    net: Network,
    /// When the state after the last round is known everywhere (and the round reported).
    clock: f64,
    /// When the peers finished their last round's training.
    compute_free: f64,
    /// When the exchanges of the rounds before the last and the last ended.
    exchanged: [f64; 2],
    /// The overlapped outer step ([`SimConfig::overlap`]): what the next round trains from.
    lap: Option<Lap>,
    round: u64,
}

impl<'a> Sim<'a> {
    /// Sets up `cfg.peers` peers, all starting from the same initial model.
    pub fn new(cfg: SimConfig, ds: &'a Dataset) -> Result<Self, SimError> {
        cfg.validate()?;
        let gcfg = GptConfig::preset(&cfg.preset)?;
        if ds.manifest().vocab > gcfg.vocab {
            return Err(SimError::Config(format!(
                "dataset vocab {} exceeds the model's {}",
                ds.manifest().vocab,
                gcfg.vocab
            )));
        }
        let model = Gpt::new(gcfg.clone(), cfg.seed)?;
        let outer = Outer::new(cfg.outer_settings()?, &model.params)?;
        let theta = model.params.to_flat();
        let inner = cfg.inner_adamw();
        let global = Trainer::new(model.clone(), inner.clone())?;
        let peers = (0..cfg.peers)
            .map(|_| -> Result<Peer, SimError> {
                Ok(Peer { tr: Trainer::new(model.clone(), inner.clone())?, st: outer.peer_state(&theta) })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let peer_link = Link { up_bps: cfg.bandwidth_mbps * 1e6, down_bps: cfg.bandwidth_mbps * 1e6 };
        let hub_link = Link { up_bps: cfg.hub_bandwidth_mbps * 1e6, down_bps: cfg.hub_bandwidth_mbps * 1e6 };
        let mut links = vec![peer_link; cfg.peers];
        links.push(hub_link);
        let net = Network::new(links, cfg.rtt_ms / 2000.0);
        Ok(Self {
            bufs: vec![vec![0.0; theta.len()]; outer.buffers()],
            lap: (cfg.overlap != Overlap::None).then(|| Lap {
                theta: theta.clone(),
                bufs: vec![vec![0.0; theta.len()]; outer.buffers()],
                own: vec![None; cfg.peers],
            }),
            outer,
            cfg,
            ds,
            gcfg,
            theta,
            global,
            peers,
            net,
            clock: 0.0,
            compute_free: 0.0,
            exchanged: [0.0; 2],
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

    /// Runs one round and reports it. A round's training starts once the peers are free and
    /// hold its starting state: the last round's (or, overlapped, the one before's).
    pub fn run_round(&mut self) -> Result<RoundReport, SimError> {
        let waits_for = self.exchanged[usize::from(self.lap.is_none())];
        let t_start = self.compute_free.max(waits_for);
        let h = self.cfg.h();
        let compute_end = t_start + h as f64 * self.cfg.step_compute_s;
        let (train_loss, rejected, end) = match self.outer.exchange() {
            Exchange::Hub => self.round_hub(compute_end)?,
            Exchange::AllGather => self.round_all_gather(compute_end)?,
            Exchange::Pairs => self.round_pairs(compute_end)?,
        };
        assert!(end >= compute_end, "an exchange ends after the training it sends");
        self.compute_free = compute_end;
        self.exchanged = [self.exchanged[1], end];
        self.clock = end;
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
            hub_sent: self.net.sent[n],
            hub_recv: self.net.recv[n],
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
    fn decode_all(&self, msgs: &[Vec<u8>]) -> (Vec<Contribution>, usize) {
        let want = self.outer.expected(Some(self.cfg.max_update_norm));
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

    /// Every peer computes what the algorithm asks of it (see [`Work`]) and encodes its
    /// contribution; returns the mean loss, the encoded messages and what was computed.
    fn contributions(&mut self) -> Result<Contributed, SimError> {
        let r = self.round;
        let results = match self.outer.work() {
            Work::Gradient => {
                // The global model holds θ: it starts there and `sync_global` keeps it there.
                let (ctx, global) = (ctx!(self), &self.global);
                (0..self.cfg.peers)
                    .into_par_iter()
                    .map(|i| {
                        let (loss, g) = global.gradients(&ctx.batch(r, i, 0)?)?;
                        Ok((f64::from(loss), flatten(&g)))
                    })
                    .collect::<Result<Vec<_>, SimError>>()?
            }
            Work::InnerSteps => {
                let guesses = self.guesses()?;
                let shared = self.lap.as_ref().map_or(&self.theta, |l| &l.theta);
                let start = |i: usize| Some(guesses.get(i).and_then(Option::as_deref).unwrap_or(shared));
                train_peers(&mut self.peers, &ctx!(self), r, start)?
            }
            Work::InnerStepsFromOwn => {
                // Δ = trained − φ (NoLoCo's sign convention), per replica.
                let mut res = train_peers(&mut self.peers, &ctx!(self), r, |_| None)?;
                res.iter_mut().for_each(|(_, d)| d.iter_mut().for_each(|x| *x = -*x));
                res
            }
        };
        let mut msgs = Vec::with_capacity(results.len());
        for (p, (_, x)) in self.peers.iter_mut().zip(&results) {
            msgs.push(self.outer.contribute(&mut p.st, r, x)?);
        }
        let loss = mean(results.iter().map(|r| r.0));
        Ok((loss, msgs, results.into_iter().map(|r| r.1).collect()))
    }

    /// Eager overlap: each peer's own guess at θ_r, the last outer step taken with its
    /// contribution alone (`None`: it had none, and starts from θ_{r−1} like the rest).
    fn guesses(&self) -> Result<Vec<Option<Vec<f32>>>, SimError> {
        let Some(lap) = &self.lap else { return Ok(Vec::new()) };
        let prev = self.round.saturating_sub(1);
        let guess = |c: &Contribution| -> Result<Vec<f32>, SimError> {
            let (mut theta, mut bufs) = (lap.theta.clone(), lap.bufs.clone());
            let alone = self.outer.combine(prev, std::slice::from_ref(c))?;
            self.outer.apply(prev, &mut theta, &mut bufs, &alone.values)?;
            Ok(theta)
        };
        let guesses: Vec<Option<Vec<f32>>> =
            lap.own.iter().map(|o| o.as_ref().map(guess).transpose()).collect::<Result<_, _>>()?;
        assert!(guesses.len() <= self.cfg.peers, "at most one start per peer");
        Ok(guesses)
    }

    /// Overlapped: before the round's outer step, keeps θ_r and its buffers, and (eager) each
    /// peer's contribution, from which the next round starts.
    fn keep_lap(&mut self, contribs: &[Contribution]) {
        let eager = self.cfg.overlap == Overlap::Eager;
        let Some(lap) = self.lap.as_mut() else { return };
        lap.theta.copy_from_slice(&self.theta);
        lap.bufs.clone_from(&self.bufs);
        lap.own.iter_mut().for_each(|o| *o = None);
        for c in contribs.iter().filter(|_| eager) {
            lap.own[c.peer as usize] = Some(c.clone());
        }
        assert_eq!(lap.own.len(), self.cfg.peers, "one slot per peer");
    }

    /// After the shared state changed: the global model follows it.
    fn sync_global(&mut self) -> Result<(), SimError> {
        match self.outer.algorithm() {
            Algorithm::Ddp => {
                self.global.model.params.load_flat(&self.theta)?;
                if let [m, v] = &self.bufs[..] {
                    self.global.opt.m.load_flat(m)?;
                    self.global.opt.v.load_flat(v)?;
                    self.global.opt.step = self.round + 1;
                }
            }
            Algorithm::DeMo => self.global.model.params.load_flat(&self.theta)?,
            _ => {}
        }
        Ok(())
    }

    /// DDP, DiLoCo: peers upload to the hub, which combines the valid contributions and
    /// broadcasts the mean in the same codec.
    fn round_hub(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let (loss, msgs, _) = self.contributions()?;
        let sizes: Vec<u64> = msgs.iter().map(|m| m.len() as u64).collect();
        let at_hub = self.upload(t, &sizes);
        let (contribs, rejected) = self.decode_all(&msgs);
        self.keep_lap(&contribs);
        if contribs.is_empty() {
            return Ok((loss, rejected, at_hub));
        }
        let c = self.outer.combine(self.round, &contribs)?;
        let blob_len = c.blob.as_ref().map_or(0, |b| b.len() as u64);
        let end = self.broadcast(at_hub, blob_len);
        self.outer.apply(self.round, &mut self.theta, &mut self.bufs, &c.values)?;
        self.sync_global()?;
        Ok((loss, rejected, end))
    }

    /// SparseLoCo, DeMo: every contribution reaches every peer, which combines them itself.
    fn round_all_gather(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let (loss, msgs, _) = self.contributions()?;
        let sizes: Vec<u64> = msgs.iter().map(|m| m.len() as u64).collect();
        let end = self.all_gather(t, &sizes);
        let (contribs, rejected) = self.decode_all(&msgs);
        self.keep_lap(&contribs);
        if !contribs.is_empty() {
            let c = self.outer.combine(self.round, &contribs)?;
            self.outer.apply(self.round, &mut self.theta, &mut self.bufs, &c.values)?;
            self.sync_global()?;
        }
        Ok((loss, rejected, end))
    }

    /// NoLoCo: seeded groups exchange (Δ, φ); each replica steps toward its group's means.
    /// A replica's own Δ enters decoded, like its partners', so every member of a group (and
    /// a coordinator checking them) combines the same bits.
    fn round_pairs(&mut self, t: f64) -> Result<(f64, usize, f64), SimError> {
        let (loss, delta_msgs, _) = self.contributions()?;
        let want_delta = self.outer.expected(Some(self.cfg.max_update_norm));
        let r = self.round;
        let phi_msgs: Vec<Vec<u8>> =
            self.peers.iter().map(|p| self.outer.phi_message(r, p.st.buffers()[0])).collect();
        let mut end = t;
        let mut rejected = 0;
        for group in noloco_groups(self.cfg.seed, r, self.cfg.peers) {
            let mut members = group.clone();
            members.sort_unstable();
            for &i in &members {
                let (mut ds, mut ps): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (Vec::new(), Vec::new());
                for &j in &members {
                    if i != j {
                        let bytes = (delta_msgs[j].len() + phi_msgs[j].len()) as u64;
                        end = end.max(self.net.transfer(t, j, i, bytes));
                    }
                    match (decode_update(&delta_msgs[j], &want_delta), self.outer.decode_phi(r, &phi_msgs[j]))
                    {
                        (Ok(d), Ok(p)) => {
                            ds.push(d.values);
                            ps.push(p);
                        }
                        _ => rejected += usize::from(i != j),
                    }
                }
                let peer = &mut self.peers[i];
                let PeerState::NoLoCo(rep) = &mut peer.st else {
                    return Err(SimError::Config("a NoLoCo peer without a replica".into()));
                };
                if ds.is_empty() {
                    continue; // its own Δ was refused: the replica stays where it was
                }
                let dref: Vec<&[f32]> = ds.iter().map(Vec::as_slice).collect();
                let pref: Vec<&[f32]> = ps.iter().map(Vec::as_slice).collect();
                let values = self.outer.combine_group(&dref, &pref)?;
                self.outer.apply(r, &mut rep.phi, std::slice::from_mut(&mut rep.m), &values)?;
                peer.tr.model.params.load_flat(&rep.phi)?;
            }
        }
        Ok((loss, rejected, end))
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
        if self.outer.exchange() == Exchange::Pairs {
            let losses: Vec<f64> = self.peers.par_iter().map(|p| eval(&p.tr)).collect::<Result<_, _>>()?;
            let phis: Vec<&[f32]> = self.peers.iter().map(|p| p.st.buffers()[0]).collect();
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
        h.update(self.outer.algorithm().name().as_bytes());
        h.update(&self.round.to_le_bytes());
        tessera_tensor::hash_f32s(&mut h, &self.theta);
        // The outer momentum (zeros for the algorithms without one, as it always was).
        match self.outer.algorithm() {
            Algorithm::DiLoCo => tessera_tensor::hash_f32s(&mut h, &self.bufs[0]),
            _ => tessera_tensor::hash_f32s(&mut h, &vec![0.0; self.theta.len()]),
        }
        h.update(&self.global.state_hash());
        for p in &self.peers {
            h.update(&p.tr.state_hash());
            for buf in p.st.buffers() {
                tessera_tensor::hash_f32s(&mut h, buf);
            }
        }
        if let Some(lap) = &self.lap {
            h.update(b"overlap");
            tessera_tensor::hash_f32s(&mut h, &lap.theta);
        }
        *h.finalize().as_bytes()
    }

    /// The shared parameters (for DDP/DiLoCo/SparseLoCo/DeMo).
    pub fn theta(&self) -> &[f32] {
        &self.theta
    }

    /// NoLoCo: each peer's replica (φ and m), in peer order.
    pub fn replicas(&self) -> Vec<(&[f32], &[f32])> {
        self.peers
            .iter()
            .filter_map(|p| match &p.st {
                PeerState::NoLoCo(r) => Some((r.phi.as_slice(), r.m.as_slice())),
                _ => None,
            })
            .collect()
    }
}

impl Ctx<'_> {
    fn batch(&self, round: u64, slot: usize, step: u64) -> Result<tessera_model::Batch, SimError> {
        let key = BatchKey { seed: self.cfg.seed, round, slot: slot as u64, step };
        Ok(self.ds.train_batch(&key, self.cfg.batch, self.ctx_len)?)
    }
}

/// Each peer (in parallel) starts from `start(peer)` (or its own parameters), runs H inner steps on
/// its batches, and returns its mean loss and `start − end`.
fn train_peers<'s>(
    peers: &mut [Peer],
    ctx: &Ctx,
    round: u64,
    start: impl Fn(usize) -> Option<&'s [f32]> + Sync,
) -> Result<Vec<(f64, Vec<f32>)>, SimError> {
    let h = ctx.cfg.h();
    peers
        .par_iter_mut()
        .enumerate()
        .map(|(i, p)| {
            if let Some(s) = start(i) {
                p.tr.model.params.load_flat(s)?;
            }
            let begin = p.tr.model.params.to_flat();
            let mut loss = 0.0;
            for s in 0..h {
                let b = ctx.batch(round, i, s)?;
                loss += f64::from(if ctx.cfg.inner_optimizer == crate::InnerOptimizer::Sgd {
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

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

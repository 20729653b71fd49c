//! Copy and replay detection at the coordinator (see `tessera_verify::copies`): within a round,
//! an update whose sampled values have a cosine above [`COPY_COSINE`] with one committed before
//! it, or (sparse) whose set of positions equals one's, is a copy; across rounds, one equal bit for bit to an earlier accepted update or
//! aggregate, or within [`REPLAY_COSINE`] of one of the last [`MAX_RECENT`], is a replay. Bounded
//! memory: [`MAX_SEEN`] hashes and [`MAX_RECENT`] samples.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tessera_sync::Algorithm;
use tessera_verify::{copies, near_any, values_hash, Sampler, Samples};

use crate::{Hash32, PeerId, Reject};

/// Most hashes of earlier updates and aggregates remembered for replay detection.
pub const MAX_SEEN: usize = 65_536;
/// Most samples of earlier updates and aggregates compared with each new one (a replay with
/// its values re-encoded or perturbed is not bit for bit equal).
pub const MAX_RECENT: usize = 256;
/// Two updates whose sampled values have a cosine above this are a copy and its original
/// (DeMo's, which follow slowly moving momenta, only when bit for bit equal).
pub const COPY_COSINE: f64 = 0.99;
/// An update whose sampled values have a cosine above this with an earlier round's update or
/// aggregate is a replay. Stricter than [`COPY_COSINE`]: an honest trainer's successive
/// updates can point the same way (the 60-round drills of the tiny model at H = 2 measured
/// honest cosines up to 0.9938 against earlier rounds), while a replay re-encoded or slightly
/// perturbed stays above 0.9999.
pub const REPLAY_COSINE: f64 = 0.9999;

/// An accepted update being screened: its author and what was kept of it.
pub type Screened<'a> = (PeerId, &'a Kept);

/// What the screen keeps of an update: the hash of its values and their sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    hash: Hash32,
    sample: Vec<f32>,
}

impl Fingerprint {
    pub fn of(sampler: &Sampler, values: &[f32], support: Option<&[u32]>) -> Self {
        Self { hash: values_hash(values, support), sample: sampler.sample(values).into_owned() }
    }

    /// The hash of the values (and support).
    pub fn hash(&self) -> Hash32 {
        self.hash
    }
}

/// What the coordinator keeps of an accepted update beside its blob, taken when the blob is
/// decoded and checked: enough to screen it and to clip it at the close without holding its
/// decoded values (450 kB a member for the tiny model; the close decodes the blob again).
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub fingerprint: Fingerprint,
    /// Every value is zero: it moves nothing and is never a copy or a replay.
    pub zero: bool,
    /// Its L2 norm ([`tessera_sync::l2_norm`]), when the close weighs norms.
    pub norm: Option<f64>,
    /// For sparse updates: the positions sent.
    pub support: Option<Vec<u32>>,
}

impl Kept {
    /// What to keep of decoded `values` (with their `support`), and their norm if given.
    pub fn of(sampler: &Sampler, values: &[f32], support: Option<Vec<u32>>, norm: Option<f64>) -> Self {
        let fingerprint = Fingerprint::of(sampler, values, support.as_deref());
        let zero = values.iter().all(|x| *x == 0.0);
        Self { fingerprint, zero, norm, support }
    }
}

/// A round's screening: the updates refused, with the reason, and the values hash of every
/// update screened (for [`Screen::remember_round`] once the round is closed).
#[derive(Debug, Default)]
pub struct Screening {
    pub refused: Vec<(PeerId, Reject)>,
    pub hashes: Vec<(PeerId, Hash32)>,
    /// Of the refused, those whose values are bit for bit an earlier round's accepted update
    /// or aggregate, with what they duplicate: proof of a cheat (only for the dense codecs,
    /// whose honest updates never coincide exactly; a sparse or sign-coded one can; and only
    /// when an update rests on two or more batch draws: two honest trainers given one
    /// sequence each may draw the same one, and compute the same bits). A copy of another's
    /// update of the same round is refused but proves nothing: commit order is not proof of
    /// who copied whom, since a copier with a faster link commits first (its spot check, when
    /// drawn, proves it).
    pub proven: Vec<(PeerId, String)>,
}

/// The memory of earlier updates.
#[derive(Debug)]
pub struct Screen {
    /// Whether an exact duplicate proves a cheat (dense codecs).
    proves: bool,
    /// [`COPY_COSINE`] and [`REPLAY_COSINE`], or 1 (bit for bit only) for DeMo.
    threshold: f64,
    replay_threshold: f64,
    /// Hashes of the values of earlier accepted updates and aggregates: a set to look up, and
    /// their order, oldest first, to forget by.
    seen: BTreeSet<Hash32>,
    seen_order: VecDeque<Hash32>,
    /// Samples of the most recent ones.
    recent: VecDeque<Vec<f32>>,
}

impl Screen {
    /// A screen for `algorithm`, whose updates each rest on `draws` sequences of data (inner
    /// steps × batch).
    pub fn new(algorithm: Algorithm, draws: u64) -> Self {
        let demo = algorithm == Algorithm::DeMo;
        let (threshold, replay_threshold) = if demo { (1.0, 1.0) } else { (COPY_COSINE, REPLAY_COSINE) };
        let (seen, seen_order, recent) = (BTreeSet::new(), VecDeque::new(), VecDeque::new());
        let dense = matches!(algorithm, Algorithm::Ddp | Algorithm::DiLoCo | Algorithm::NoLoCo);
        let proves = dense && draws >= 2;
        Self { proves, threshold, replay_threshold, seen, seen_order, recent }
    }

    /// Screens the round's accepted updates, in commit order. An all-zero update moves nothing
    /// and is never refused (all such updates are alike).
    pub fn check(&self, acc: &[Screened]) -> Screening {
        let acc: Vec<Screened> = acc.iter().filter(|(_, k)| !k.zero).copied().collect();
        let hashes: Vec<Hash32> = acc.iter().map(|(_, k)| k.fingerprint.hash).collect();
        let (t, rt) = (self.threshold, self.replay_threshold);
        let samples = Samples::of(acc.iter().map(|(_, k)| k.fingerprint.sample.as_slice()).collect());
        let near = match rt < 1.0 {
            true => near_any(&samples, &self.recent.iter().collect::<Vec<_>>(), rt),
            false => vec![false; samples.len()],
        };
        let mut refused: Vec<(PeerId, Reject)> = acc
            .iter()
            .zip(&hashes)
            .zip(&near)
            .filter(|((_, h), near)| self.seen.contains(*h) || **near)
            .map(|(((p, _), _), _)| (*p, Reject::Replayed))
            .collect();
        let proven: Vec<(PeerId, String)> = acc
            .iter()
            .zip(&hashes)
            .filter(|(_, h)| self.proves && self.seen.contains(*h))
            .map(|((p, _), _)| (*p, "bit for bit an earlier accepted update or aggregate".to_string()))
            .collect();
        let mut found = copies(&samples, t);
        // A sparse update that sends exactly another's positions is a copy too, whatever values
        // it puts there (of the first to send them).
        let mut copied: BTreeSet<usize> = found.iter().map(|f| f.0).collect();
        let mut first: BTreeMap<&[u32], usize> = BTreeMap::new();
        for (i, (_, k)) in acc.iter().enumerate() {
            let Some(si) = k.support.as_deref() else { continue };
            match first.get(si) {
                Some(&j) if copied.insert(i) => found.push((i, j)),
                Some(_) => {}
                None => {
                    first.insert(si, i);
                }
            }
        }
        for (copy, original) in found {
            let of = tessera_tensor::hex(&acc[original].0[..4]);
            refused.push((acc[copy].0, Reject::Copy { of }));
        }
        assert!(refused.len() <= 2 * acc.len(), "at most two reasons per update");
        let refusing: BTreeSet<&PeerId> = refused.iter().map(|r| &r.0).collect();
        assert!(proven.iter().all(|p| refusing.contains(&p.0)), "what is proven is refused");
        let hashes = acc.iter().map(|a| a.0).zip(hashes).collect();
        Screening { refused, hashes, proven }
    }

    /// Remembers a closed round's accepted updates, in order: every one's hash, and the
    /// samples of the last [`MAX_RECENT`] (what remembering each in turn would leave).
    pub fn remember_round(&mut self, accepted: &[&Fingerprint]) {
        accepted.iter().for_each(|f| self.remember_hash(f.hash));
        let keep = accepted.len().saturating_sub(MAX_RECENT);
        accepted[keep..].iter().for_each(|f| self.remember_sample(f.sample.clone()));
        assert!(self.recent.len() <= MAX_RECENT, "bounded");
    }

    /// Remembers an accepted update or an aggregate.
    pub fn remember(&mut self, f: Fingerprint) {
        self.remember_hash(f.hash);
        self.remember_sample(f.sample);
    }

    fn remember_hash(&mut self, hash: Hash32) {
        if self.seen.insert(hash) {
            self.seen_order.push_back(hash);
        }
        while self.seen_order.len() > MAX_SEEN {
            let old = self.seen_order.pop_front().expect("non-empty");
            self.seen.remove(&old);
        }
        assert_eq!(self.seen.len(), self.seen_order.len(), "one order entry per hash");
    }

    fn remember_sample(&mut self, sample: Vec<f32>) {
        self.recent.push_back(sample);
        while self.recent.len() > MAX_RECENT {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_verify::cosine;

    fn kept(v: &[f32], support: Option<&[u32]>) -> Kept {
        Kept::of(&Sampler::new(v.len()), v, support.map(<[u32]>::to_vec), Some(tessera_sync::l2_norm(v)))
    }

    /// Regressions found by `tessera vopr`: seeds 613 and 798, two honest DDP trainers each
    /// given one sequence drew the same one, computed the same gradient, and the later was
    /// slashed as a copier; seed 2682, a copier whose copy reached the coordinator before the
    /// original got the original's trainer slashed. A copy within a round is refused, never
    /// proven; a replay of an earlier round's update is proven only from two draws of data.
    #[test]
    fn only_a_replay_resting_on_two_draws_proves_a_cheat() {
        let v: Vec<f32> = (0..64).map(|i| i as f32 * 0.5 - 3.0).collect();
        let k = kept(&v, None);
        let pair: Vec<Screened> = vec![([1; 32], &k), ([2; 32], &k)];
        let s = Screen::new(Algorithm::Ddp, 8).check(&pair);
        assert_eq!(s.refused.len(), 1, "the later copy is refused");
        assert!(s.proven.is_empty(), "but who copied whom is not proven");
        let again: Vec<Screened> = vec![([3; 32], &k)];
        for (draws, proven) in [(1, 0), (2, 1)] {
            let mut s = Screen::new(Algorithm::Ddp, draws);
            s.remember(Fingerprint::of(&Sampler::new(v.len()), &v, None));
            let got = s.check(&again);
            assert_eq!(got.refused.len(), 1, "a replay is refused");
            assert_eq!(got.proven.len(), proven, "{draws} draws");
        }
    }

    #[test]
    fn a_sparse_update_on_anothers_positions_is_a_copy_and_a_resent_one_a_replay() {
        let mut s = Screen::new(Algorithm::SparseLoCo, 8);
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let va: Vec<f32> = (0..100).map(|i| if i % 10 == 0 { 1.0 + i as f32 } else { 0.0 }).collect();
        let vb: Vec<f32> = (0..100).map(|i| if i % 10 == 0 { -(i as f32) + 50.0 } else { 0.0 }).collect();
        let vc: Vec<f32> = (0..100).map(|i| if i % 7 == 0 { 3.0 } else { 0.0 }).collect();
        let (pa, pc): (Vec<u32>, Vec<u32>) = ((0..100).step_by(10).collect(), (0..100).step_by(7).collect());
        let (ka, kb, kc) = (kept(&va, Some(&pa)), kept(&vb, Some(&pa)), kept(&vc, Some(&pc)));
        let round = [(a, &ka), (b, &kb), (c, &kc)];
        assert!(cosine(&va, &vb) < COPY_COSINE, "not alike by value");
        assert_eq!(s.check(&round).refused, [(b, Reject::Copy { of: tessera_tensor::hex(&a[..4]) })]);
        s.remember(Fingerprint::of(&Sampler::new(100), &vc, Some(&pc)));
        assert_eq!(s.check(&[(a, &kc)]).refused, [(a, Reject::Replayed)]);
        // Zero updates (a learning rate of 0, say) are never copies or replays of each other.
        let zero = vec![0.0f32; 100];
        s.remember(Fingerprint::of(&Sampler::new(100), &zero, None));
        let kz = kept(&zero, None);
        assert!(kz.zero, "kept as all zero");
        assert!(s.check(&[(a, &kz), (b, &kz)]).refused.is_empty());
    }
}

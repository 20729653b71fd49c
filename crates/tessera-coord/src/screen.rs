//! Copy and replay detection at the coordinator (see `tessera_verify::copies`): within a round,
//! an update whose sampled values have a cosine above [`COPY_COSINE`] with one committed before
//! it, or (sparse) whose set of positions equals one's, is a copy; across rounds, one equal bit for bit to an earlier accepted update or
//! aggregate, or within that cosine of one of the last [`MAX_RECENT`], is a replay. Bounded
//! memory: [`MAX_SEEN`] hashes and [`MAX_RECENT`] samples.

use std::collections::VecDeque;

use tessera_sync::Algorithm;
use tessera_verify::{copies, cosine, sample, values_hash};

use crate::{Hash32, PeerId, Reject};

/// Most hashes of earlier updates and aggregates remembered for replay detection.
pub const MAX_SEEN: usize = 65_536;
/// Most samples of earlier updates and aggregates compared with each new one (a replay with
/// its values re-encoded or perturbed is not bit for bit equal).
pub const MAX_RECENT: usize = 256;
/// Two updates whose sampled values have a cosine above this are a copy and its original
/// (DeMo's, which follow slowly moving momenta, only when bit for bit equal).
pub const COPY_COSINE: f64 = 0.99;

/// An accepted update being screened: its author, values and (sparse) support.
pub type Screened<'a> = (PeerId, &'a [f32], Option<&'a [u32]>);

/// The memory of earlier updates.
#[derive(Debug)]
pub struct Screen {
    /// [`COPY_COSINE`], or 1 (bit for bit only) for DeMo.
    threshold: f64,
    /// Hashes of the values of earlier accepted updates and aggregates, oldest first.
    seen: VecDeque<Hash32>,
    /// Samples of the most recent ones.
    recent: VecDeque<Vec<f32>>,
}

impl Screen {
    pub fn new(algorithm: Algorithm) -> Self {
        let threshold = if algorithm == Algorithm::DeMo { 1.0 } else { COPY_COSINE };
        Self { threshold, seen: VecDeque::new(), recent: VecDeque::new() }
    }

    /// The round's accepted updates, in commit order, that are refused, with the reason.
    /// An all-zero update moves nothing and is never refused (all such updates are alike).
    pub fn check(&self, acc: &[Screened]) -> Vec<(PeerId, Reject)> {
        let nonzero: Vec<Screened> =
            acc.iter().filter(|(_, v, _)| v.iter().any(|x| *x != 0.0)).copied().collect();
        let acc = &nonzero[..];
        let samples: Vec<Vec<f32>> = acc.iter().map(|(_, v, _)| sample(v)).collect();
        let t = self.threshold;
        let near = |s: &Vec<f32>| t < 1.0 && self.recent.iter().any(|r| cosine(r, s) > t);
        let mut out: Vec<(PeerId, Reject)> = acc
            .iter()
            .zip(&samples)
            .filter(|((_, v, s), sample)| self.seen.contains(&values_hash(v, *s)) || near(sample))
            .map(|((p, _, _), _)| (*p, Reject::Replayed))
            .collect();
        let mut found = copies(&samples, t);
        // A sparse update that sends exactly another's positions is a copy too, whatever values
        // it puts there.
        for (i, (_, _, si)) in acc.iter().enumerate() {
            let same = acc[..i].iter().position(|(_, _, sj)| si.is_some() && si == sj);
            if let Some(j) = same.filter(|_| !found.iter().any(|f| f.0 == i)) {
                found.push((i, j));
            }
        }
        for (copy, original) in found {
            let of = tessera_tensor::hex(&acc[original].0[..4]);
            out.push((acc[copy].0, Reject::Copy { of }));
        }
        assert!(out.len() <= 2 * acc.len(), "at most two reasons per update");
        out
    }

    /// Remembers an accepted update's or aggregate's values.
    pub fn remember(&mut self, values: &[f32], support: Option<&[u32]>) {
        self.seen.push_back(values_hash(values, support));
        self.recent.push_back(sample(values));
        while self.seen.len() > MAX_SEEN {
            self.seen.pop_front();
        }
        while self.recent.len() > MAX_RECENT {
            self.recent.pop_front();
        }
        assert!(self.recent.len() <= self.seen.len(), "bounded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_update_on_anothers_positions_is_a_copy_and_a_resent_one_a_replay() {
        let mut s = Screen::new(Algorithm::SparseLoCo);
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let va: Vec<f32> = (0..100).map(|i| if i % 10 == 0 { 1.0 + i as f32 } else { 0.0 }).collect();
        let vb: Vec<f32> = (0..100).map(|i| if i % 10 == 0 { -(i as f32) + 50.0 } else { 0.0 }).collect();
        let vc: Vec<f32> = (0..100).map(|i| if i % 7 == 0 { 3.0 } else { 0.0 }).collect();
        let (pa, pc): (Vec<u32>, Vec<u32>) = ((0..100).step_by(10).collect(), (0..100).step_by(7).collect());
        let round = [
            (a, va.as_slice(), Some(pa.as_slice())),
            (b, vb.as_slice(), Some(pa.as_slice())),
            (c, vc.as_slice(), Some(pc.as_slice())),
        ];
        assert!(cosine(&va, &vb) < COPY_COSINE, "not alike by value");
        assert_eq!(s.check(&round), [(b, Reject::Copy { of: tessera_tensor::hex(&a[..4]) })]);
        s.remember(&vc, Some(&pc));
        assert_eq!(s.check(&[(a, vc.as_slice(), Some(pc.as_slice()))]), [(a, Reject::Replayed)]);
        // Zero updates (a learning rate of 0, say) are never copies or replays of each other.
        let zero = vec![0.0f32; 100];
        s.remember(&zero, None);
        assert!(s.check(&[(a, zero.as_slice(), None), (b, zero.as_slice(), None)]).is_empty());
    }
}

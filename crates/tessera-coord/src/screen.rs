//! Copy and replay detection at the coordinator (see `tessera_verify::copies`): within a round,
//! an update whose sampled values have a cosine above [`COPY_COSINE`] with one committed before
//! it is a copy; across rounds, one equal bit for bit to an earlier accepted update or
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
    pub fn check(&self, acc: &[Screened]) -> Vec<(PeerId, Reject)> {
        let samples: Vec<Vec<f32>> = acc.iter().map(|(_, v, _)| sample(v)).collect();
        let t = self.threshold;
        let near = |s: &Vec<f32>| t < 1.0 && self.recent.iter().any(|r| cosine(r, s) > t);
        let mut out: Vec<(PeerId, Reject)> = acc
            .iter()
            .zip(&samples)
            .filter(|((_, v, s), sample)| self.seen.contains(&values_hash(v, *s)) || near(sample))
            .map(|((p, _, _), _)| (*p, Reject::Replayed))
            .collect();
        for (copy, original) in copies(&samples, t) {
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

//! The transport [`crate::ProtocolSim`] runs over: deliveries ordered by their arrival time on
//! the virtual clock, with the network's faults drawn from a seed. With no faults every
//! delivery arrives at once, in the order it was sent (a FIFO queue).
//!
//! A fault touches only what crosses the network (control frames and blob transfers), never
//! a node's own computation. Each draw is a pure function of (seed, draw number), so a seed
//! replays the same faults.

use std::collections::BTreeMap;

use tessera_coord::PeerId;
use tessera_tensor::rng::{purpose, Philox};

/// Most deliveries in flight at once: a run that exceeds it is broken, not slow.
pub const MAX_IN_FLIGHT: usize = 1 << 20;
/// Longest delay any one delivery may be given, in virtual milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;

/// How the network misbehaves. Probabilities are per frame (loss, duplication, reordering)
/// or per blob transfer (loss only: a transfer that fails is reported as failed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetFaults {
    pub seed: u64,
    pub loss: f64,
    pub duplicate: f64,
    /// The chance a delivery is held back by up to `reorder_ms`, so later ones overtake it.
    pub reorder: f64,
    pub reorder_ms: u64,
    /// Every delivery's latency is drawn from `0..=delay_ms`.
    pub delay_ms: u64,
}

/// What the faults did, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delayed: u64,
    /// Deliveries dropped because a partition cut their link, or because an end crashed.
    pub cut: u64,
    pub stale: u64,
}

impl std::ops::AddAssign<&FaultCounts> for FaultCounts {
    fn add_assign(&mut self, o: &FaultCounts) {
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.delayed += o.delayed;
        self.cut += o.cut;
        self.stale += o.stale;
    }
}

/// Which node a delivery's network link touches, besides the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// A frame or a blob crossing the network between the coordinator (or another peer) and
    /// this peer.
    Net(PeerId),
    /// A node's own computation finishing (a check, a score, training): never lost.
    Local,
}

/// A queued delivery, with the incarnations of its ends when it was sent (a delivery meant
/// for, or sent by, a process that has since died is dropped).
pub(crate) struct Queued<D> {
    pub d: D,
    pub coord_epoch: u64,
    pub peer_epoch: Option<(PeerId, u64)>,
}

/// The deliveries in flight, by (arrival time, send order).
pub(crate) struct Links<D> {
    queue: BTreeMap<(u64, u64), Queued<D>>,
    sent: u64,
    faults: NetFaults,
    rng: Philox,
    draws: u64,
    /// Extra latency of a slow peer's every delivery.
    slow: BTreeMap<PeerId, u64>,
    /// Peers cut off from everyone until the given time.
    cut: BTreeMap<PeerId, u64>,
    pub counts: FaultCounts,
}

impl<D> Links<D> {
    pub fn new() -> Self {
        Self::with_faults(NetFaults::default())
    }

    pub fn with_faults(faults: NetFaults) -> Self {
        let rng = Philox::new(faults.seed);
        Self {
            queue: BTreeMap::new(),
            sent: 0,
            faults,
            rng,
            draws: 0,
            slow: BTreeMap::new(),
            cut: BTreeMap::new(),
            counts: FaultCounts::default(),
        }
    }

    pub fn set_faults(&mut self, faults: NetFaults) {
        self.rng = Philox::new(faults.seed);
        self.faults = faults;
    }

    /// Peer `peer`'s deliveries take `extra_ms` longer from now on (0: no longer slow).
    pub fn slow(&mut self, peer: PeerId, extra_ms: u64) {
        match extra_ms {
            0 => self.slow.remove(&peer),
            ms => self.slow.insert(peer, ms.min(MAX_DELAY_MS)),
        };
    }

    /// Peer `peer` can reach nobody, and nobody it, until `until_ms`.
    pub fn partition(&mut self, peer: PeerId, until_ms: u64) {
        self.cut.insert(peer, until_ms);
    }

    /// Whether `peer`'s link is cut at `now_ms`.
    pub fn is_cut(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.cut.get(peer).is_some_and(|&t| now_ms < t)
    }

    /// The partitions that heal by `now_ms`, forgotten as they are returned.
    pub fn healed(&mut self, now_ms: u64) -> Vec<PeerId> {
        let done: Vec<PeerId> = self.cut.iter().filter(|(_, &t)| t <= now_ms).map(|(p, _)| *p).collect();
        for p in &done {
            self.cut.remove(p);
        }
        done
    }

    fn uniform(&mut self) -> f64 {
        self.draws += 1;
        f64::from(self.rng.uniform(purpose("links"), self.draws))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.draws += 1;
        self.rng.below(purpose("links delay"), self.draws, n.max(1))
    }

    /// A draw from `0..=max` (a node's wait before it dials again, say).
    pub fn jitter(&mut self, max: u64) -> u64 {
        self.below(max + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }

    /// How long a delivery over `hop` takes; `None` when the network loses it.
    fn latency(&mut self, hop: Hop, now_ms: u64) -> Option<u64> {
        let Hop::Net(peer) = hop else { return Some(0) };
        if self.is_cut(&peer, now_ms) {
            self.counts.cut += 1;
            return None;
        }
        if self.chance(self.faults.loss) {
            self.counts.lost += 1;
            return None;
        }
        let mut ms = self.slow.get(&peer).copied().unwrap_or(0);
        if self.faults.delay_ms > 0 {
            ms += self.below(self.faults.delay_ms + 1);
            self.counts.delayed += 1;
        }
        if self.chance(self.faults.reorder) {
            ms += self.below(self.faults.reorder_ms + 1);
            self.counts.reordered += 1;
        }
        Some(ms.min(MAX_DELAY_MS))
    }

    /// Queues `q` over `hop`; `copy` makes the duplicate the network may deliver as well.
    /// Returns false when the delivery was lost.
    pub fn send(&mut self, now_ms: u64, hop: Hop, q: Queued<D>, copy: Option<&dyn Fn(&D) -> D>) -> bool {
        assert!(self.queue.len() < MAX_IN_FLIGHT, "deliveries in flight are bounded");
        let Some(ms) = self.latency(hop, now_ms) else { return false };
        if let Some(copy) = copy.filter(|_| matches!(hop, Hop::Net(_))) {
            if self.chance(self.faults.duplicate) {
                let again = Queued { d: copy(&q.d), coord_epoch: q.coord_epoch, peer_epoch: q.peer_epoch };
                let later = ms + self.below(self.faults.delay_ms.max(1) + 1);
                self.push(now_ms + later, again);
                self.counts.duplicated += 1;
            }
        }
        self.push(now_ms + ms, q);
        true
    }

    /// Queues `q` to arrive `ms` from now, untouched by the faults (local work, or a
    /// transfer's failure).
    pub fn send_after(&mut self, now_ms: u64, ms: u64, q: Queued<D>) {
        assert!(self.queue.len() < MAX_IN_FLIGHT, "deliveries in flight are bounded");
        self.push(now_ms + ms.min(MAX_DELAY_MS), q);
    }

    fn push(&mut self, at: u64, q: Queued<D>) {
        self.sent += 1;
        self.queue.insert((at, self.sent), q);
    }

    /// The next delivery due by `now_ms`, first come first.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<Queued<D>> {
        let (&(at, _), _) = self.queue.first_key_value()?;
        (at <= now_ms).then(|| self.queue.pop_first().map(|(_, q)| q)).flatten()
    }

    /// When the next delivery arrives.
    pub fn next_at(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(&(at, _), _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(d: u32) -> Queued<u32> {
        Queued { d, coord_epoch: 0, peer_epoch: None }
    }

    #[test]
    fn without_faults_deliveries_come_in_order_at_once() {
        let mut l: Links<u32> = Links::new();
        for i in 0..5 {
            assert!(l.send(10, Hop::Net([1; 32]), q(i), None));
        }
        let got: Vec<u32> = std::iter::from_fn(|| l.pop_due(10).map(|q| q.d)).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(l.counts, FaultCounts::default());
    }

    #[test]
    fn faults_lose_duplicate_and_reorder_the_same_way_for_a_seed() {
        let faults =
            NetFaults { seed: 7, loss: 0.1, duplicate: 0.1, reorder: 0.2, reorder_ms: 500, delay_ms: 20 };
        let run = || {
            let mut l: Links<u32> = Links::with_faults(faults.clone());
            for i in 0..1000 {
                l.send(0, Hop::Net([1; 32]), q(i), Some(&|d: &u32| *d));
            }
            let got: Vec<u32> = std::iter::from_fn(|| l.pop_due(u64::MAX).map(|q| q.d)).collect();
            (got, l.counts)
        };
        let (a, ca) = run();
        assert_eq!(run().0, a, "a seed replays its faults");
        assert!(ca.lost > 50 && ca.lost < 150, "{ca:?}");
        assert!(ca.duplicated > 40 && ca.reordered > 100, "{ca:?}");
        assert!(a.windows(2).any(|w| w[0] > w[1]), "some deliveries overtake others");
        assert_eq!(a.len() as u64, 1000 - ca.lost + ca.duplicated);
    }

    #[test]
    fn a_partition_cuts_until_it_heals_and_local_work_is_never_lost() {
        let mut l: Links<u32> = Links::with_faults(NetFaults { loss: 1.0, ..NetFaults::default() });
        assert!(l.send(0, Hop::Local, q(1), None), "local work is never lost");
        l.set_faults(NetFaults::default());
        l.partition([2; 32], 100);
        assert!(!l.send(50, Hop::Net([2; 32]), q(2), None));
        assert!(l.send(50, Hop::Net([3; 32]), q(3), None));
        assert_eq!(l.healed(99), Vec::<PeerId>::new());
        assert_eq!(l.healed(100), vec![[2; 32]]);
        assert!(l.send(100, Hop::Net([2; 32]), q(4), None));
        assert_eq!(l.counts.cut, 1);
    }
}

//! The open round's slots: what became of each assigned member's unit. Kept with counts of
//! the undecided ones, so that asking whether the round is decided after every input costs
//! nothing like a scan of all members (a 10,000-member round asks it 20,000 times).

use std::collections::{BTreeMap, BTreeSet};

use crate::screen::Kept;
use crate::{Hash32, PeerId, Reject};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Slot {
    Waiting,
    Fetching {
        hash: Hash32,
    },
    /// Decoded and checked: its blob (stored for the peers and `tessera audit` at the close,
    /// and decoded again there) and what was kept of its values.
    Accepted {
        hash: Hash32,
        bytes: Vec<u8>,
        kept: Kept,
    },
    /// Refused, with its typed reason (turned into text only for `Accept`).
    Rejected(Reject),
}

/// Each assigned member's slot, with the members still waiting and the count of fetches in
/// flight kept beside them.
#[derive(Debug, Default)]
pub(super) struct Slots {
    map: BTreeMap<PeerId, Slot>,
    waiting: BTreeSet<PeerId>,
    fetching: usize,
}

impl Slots {
    /// Every one of `peers` waiting.
    pub fn waiting(peers: impl Iterator<Item = PeerId>) -> Self {
        let map: BTreeMap<PeerId, Slot> = peers.map(|p| (p, Slot::Waiting)).collect();
        let waiting = map.keys().copied().collect();
        Self { map, waiting, fetching: 0 }
    }

    pub fn get(&self, p: &PeerId) -> Option<&Slot> {
        self.map.get(p)
    }

    pub fn contains(&self, p: &PeerId) -> bool {
        self.map.contains_key(p)
    }

    /// Sets an assigned member's slot (a peer not assigned is ignored).
    pub fn set(&mut self, p: PeerId, slot: Slot) {
        let Some(old) = self.map.get_mut(&p) else { return };
        match old {
            Slot::Waiting => assert!(self.waiting.remove(&p), "a waiting slot is listed"),
            Slot::Fetching { .. } => self.fetching -= 1,
            _ => {}
        }
        match &slot {
            Slot::Waiting => assert!(self.waiting.insert(p), "listed once"),
            Slot::Fetching { .. } => self.fetching += 1,
            _ => {}
        }
        *old = slot;
        assert!(self.fetching + self.waiting.len() <= self.map.len(), "the counts are of the slots");
    }

    /// Whether every slot is decided: nothing is being fetched, and every member still waiting
    /// has left (`is_member` says who is still in). Stops at the first waiting member.
    pub fn decided(&self, is_member: impl Fn(&PeerId) -> bool) -> bool {
        self.fetching == 0 && !self.waiting.iter().any(is_member)
    }

    /// The slots in peer-id order, consumed.
    pub fn into_iter(self) -> impl Iterator<Item = (PeerId, Slot)> {
        self.map.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u8) -> PeerId {
        [i; 32]
    }

    /// The counts follow every change, and a round is decided exactly when the scan of every
    /// slot would say so.
    #[test]
    fn decided_matches_a_full_scan() {
        let mut s = Slots::waiting((0..4).map(p));
        let scan = |s: &Slots, left: &[PeerId]| {
            s.map.iter().all(|(q, slot)| match slot {
                Slot::Waiting => left.contains(q),
                Slot::Fetching { .. } => false,
                _ => true,
            })
        };
        let steps = [
            (0, Slot::Fetching { hash: [1; 32] }),
            (1, Slot::Rejected(Reject::NoCommit)),
            (
                0,
                Slot::Accepted {
                    hash: [1; 32],
                    bytes: vec![],
                    kept: Kept::of(&tessera_verify::Sampler::new(0), &[], None, None),
                },
            ),
            (2, Slot::Fetching { hash: [2; 32] }),
            (2, Slot::Rejected(Reject::HashMismatch)),
            (3, Slot::Fetching { hash: [3; 32] }),
            (3, Slot::Rejected(Reject::HashMismatch)),
        ];
        for (i, slot) in steps {
            s.set(p(i), slot);
            for left in [vec![], vec![p(3)], vec![p(2), p(3)]] {
                assert_eq!(s.decided(|q| !left.contains(q)), scan(&s, &left), "after {i}, {left:?} left");
            }
        }
        assert!(s.decided(|_| true));
        s.set(p(9), Slot::Waiting); // not assigned: ignored
        assert!(s.decided(|_| true) && !s.contains(&p(9)));
    }
}

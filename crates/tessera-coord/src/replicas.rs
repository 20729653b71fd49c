//! NoLoCo's replicas as the coordinator tracks them. NoLoCo has no shared model: each member
//! trains its own replica (its outer weights φ as θ, its outer momentum m as the one buffer
//! of a [`GlobalState`]). The coordinator keeps every member's replica so that it can check
//! each one's reported state hash exactly: per round it applies the step each member's group
//! implies, with the same functions the members use ([`tessera_sync::Outer::combine_group`],
//! [`GlobalState::apply`]). Its own "state" is the consensus, the mean of the replicas: what
//! it evaluates and exports, and what a joiner starts from.

use std::collections::BTreeMap;

use tessera_sync::{mean_of, noloco_groups, replica_spread};
use tessera_wire::Pairs;

use crate::{CoordError, GlobalState, Hash32, PeerId, RunSpec};

/// Rounds of replica hashes kept for checking state reports.
pub const MAX_REPLICA_HISTORY: usize = 16;

#[derive(Clone, Debug)]
struct Replica {
    state: GlobalState,
    hash: Hash32,
}

impl Replica {
    fn new(state: GlobalState) -> Self {
        Self { hash: state.hash(), state }
    }
}

/// What closing a round produced.
#[derive(Debug)]
pub struct ClosedPairs {
    /// For the `Accept`.
    pub pairs: Pairs,
    /// Blobs to store and serve: the accepted members' φ blobs and the new replica states.
    pub blobs: Vec<(Hash32, Vec<u8>)>,
    /// The mean of the replicas after the round.
    pub consensus: GlobalState,
    /// The mean standard deviation of φ across the replicas after the round.
    pub spread: f64,
}

/// Every member's replica.
#[derive(Debug, Default)]
pub struct Replicas {
    table: BTreeMap<PeerId, Replica>,
    history: BTreeMap<u64, BTreeMap<PeerId, Hash32>>,
}

impl Replicas {
    /// Replicas restored after a restart (all of the same round).
    pub fn restore(states: Vec<(PeerId, GlobalState)>) -> Self {
        let table: BTreeMap<PeerId, Replica> =
            states.into_iter().map(|(p, s)| (p, Replica::new(s))).collect();
        let mut r = Self { table, history: BTreeMap::new() };
        if let Some(round) = r.table.values().next().map(|x| x.state.round) {
            assert!(r.table.values().all(|x| x.state.round == round), "replicas of one round");
            r.remember(round);
        }
        r
    }

    /// The replica `peer` trains from, if it has one.
    pub fn hash_of(&self, peer: &PeerId) -> Option<Hash32> {
        self.table.get(peer).map(|r| r.hash)
    }

    /// Gives `peer` a replica if it has none: a copy of the consensus `start` (whose blob the
    /// coordinator already serves). Returns the replica's hash.
    pub fn ensure(&mut self, peer: PeerId, start: &GlobalState) -> Hash32 {
        let r = self.table.entry(peer).or_insert_with(|| Replica::new(start.clone()));
        assert_eq!(r.state.round, start.round, "a replica is of the current round");
        r.hash
    }

    /// The replica `peer` trains from, if it has one.
    pub fn get(&self, peer: &PeerId) -> Option<&GlobalState> {
        self.table.get(peer).map(|r| &r.state)
    }

    /// The replica hash `peer` should hold after `round` rounds, if remembered.
    pub fn expected(&self, round: u64, peer: &PeerId) -> Option<Hash32> {
        self.history.get(&round).and_then(|m| m.get(peer)).copied()
    }

    /// Every replica, in peer-id order (for tests and persistence).
    pub fn states(&self) -> impl Iterator<Item = (&PeerId, &GlobalState)> {
        self.table.iter().map(|(p, r)| (p, &r.state))
    }

    fn remember(&mut self, round: u64) {
        self.history.insert(round, self.table.iter().map(|(p, r)| (*p, r.hash)).collect());
        while self.history.len() > MAX_REPLICA_HISTORY {
            self.history.pop_first();
        }
    }

    /// Closes the round that starts from the consensus `prev`: `members` (in peer-id order)
    /// were paired by the run's seed, `accepted`
    /// holds the decoded Δ of each accepted member. Each accepted member's replica takes the
    /// step its group's accepted members imply; every other replica only moves to the next
    /// round. Replicas of peers that are no longer members (`keep` false) are dropped.
    pub fn close(
        &mut self,
        spec: &RunSpec,
        prev: &GlobalState,
        members: &[PeerId],
        accepted: &BTreeMap<PeerId, Vec<f32>>,
        keep: impl Fn(&PeerId) -> bool,
    ) -> Result<ClosedPairs, CoordError> {
        let (outer, round) = (&spec.outer, prev.round);
        assert!(members.windows(2).all(|w| w[0] < w[1]), "members in peer-id order");
        assert!(accepted.keys().all(|p| self.table.contains_key(p)), "accepted members have replicas");
        let groups: Vec<Vec<PeerId>> = noloco_groups(spec.cfg.seed, round, members.len())
            .into_iter()
            .map(|g| {
                let mut ids: Vec<PeerId> = g.into_iter().map(|i| members[i]).collect();
                ids.sort_unstable();
                ids
            })
            .collect();
        let mut blobs = Vec::new();
        let mut phis = Vec::with_capacity(accepted.len());
        for p in accepted.keys() {
            let b = outer.phi_message(round, &self.table[p].state.theta);
            phis.push(*blake3::hash(&b).as_bytes());
            blobs.push((phis[phis.len() - 1], b));
        }
        let mut stepped: BTreeMap<PeerId, GlobalState> = BTreeMap::new();
        for ids in &groups {
            let acc: Vec<&PeerId> = ids.iter().filter(|p| accepted.contains_key(*p)).collect();
            if acc.is_empty() {
                continue;
            }
            let ds: Vec<&[f32]> = acc.iter().map(|p| accepted[*p].as_slice()).collect();
            let ps: Vec<&[f32]> = acc.iter().map(|p| self.table[*p].state.theta.as_slice()).collect();
            let values = outer.combine_group(&ds, &ps)?;
            for p in acc {
                let mut s = self.table[p].state.clone();
                s.apply(outer, Some(&values))?;
                stepped.insert(*p, s);
            }
        }
        self.table.retain(|p, _| keep(p));
        for (p, r) in self.table.iter_mut() {
            let next = match stepped.remove(p) {
                Some(s) => s,
                None => {
                    let mut s = r.state.clone();
                    s.apply(outer, None)?;
                    s
                }
            };
            *r = Replica::new(next);
            blobs.push((r.hash, r.state.encode()));
        }
        self.remember(round + 1);
        let replicas = self.table.iter().map(|(p, r)| (*p, r.hash)).collect();
        let (consensus, spread) = self.consensus(outer, prev)?;
        Ok(ClosedPairs { pairs: Pairs { groups, phis, replicas }, blobs, consensus, spread })
    }

    /// The mean of the replicas (φ and m, in peer-id order) after the round that started from
    /// `prev`, and their spread; `prev` moved on a round when there are none.
    fn consensus(
        &self,
        outer: &tessera_sync::Outer,
        prev: &GlobalState,
    ) -> Result<(GlobalState, f64), CoordError> {
        let mut g = prev.clone();
        g.apply(outer, None)?;
        if self.table.is_empty() {
            return Ok((g, 0.0));
        }
        let phis: Vec<&[f32]> = self.table.values().map(|r| r.state.theta.as_slice()).collect();
        let ms: Vec<&[f32]> = self.table.values().map(|r| r.state.buffers[0].as_slice()).collect();
        g.theta = mean_of(&phis);
        g.buffers = vec![mean_of(&ms)];
        Ok((g, replica_spread(&phis)))
    }
}

//! The trainer's close of a round: on `Accept` it fetches what the round's close needs (a
//! hub's aggregate, every accepted update of an all-gather round, a NoLoCo group's Δ and φ),
//! keeps what a keeping trainer keeps, combines the blobs in peer order and steps its state,
//! or adopts the announced checkpoint when it cannot.

use std::sync::Arc;

use super::{Action, Closing, Held, Trainer, TrainerError, TrainerEvent, Want};
use crate::{Hash32, Pairs, PeerId};

impl Trainer {
    pub(super) fn on_accept(
        &mut self,
        round: u64,
        accepted: Vec<PeerId>,
        aggregate: Option<Hash32>,
        updates: Vec<Hash32>,
        next: Hash32,
    ) {
        self.keep_round(round, &accepted, &updates);
        match self.state() {
            Some((r, _)) if r == round => {}
            Some((r, _)) if r > round => return, // already past it
            // Not holding this round's start state: take the new checkpoint.
            _ => return self.adopt(round + 1, next),
        }
        let hub = self.spec_ref().outer.exchange() == tessera_sync::Exchange::Hub;
        let wanted: Vec<Hash32> = if hub { aggregate.into_iter().collect() } else { updates };
        let authors: Vec<PeerId> = if hub { vec![] } else { accepted };
        let len = self.spec_ref().update_len;
        let wanted: Vec<(Hash32, u64, Option<PeerId>)> =
            wanted.into_iter().enumerate().map(|(i, h)| (h, len, authors.get(i).copied())).collect();
        self.fetch_round(round, next, wanted);
    }

    /// Keeps the accepted updates of a closed round (see [`crate::keep`]): those this trainer
    /// holds and those the close fetches as they are, the others fetched from their authors.
    pub(super) fn keep_round(&mut self, round: u64, accepted: &[PeerId], updates: &[Hash32]) {
        // (A NoLoCo close fetches only the group's blobs: the others are fetched to be kept.)
        let gathers = self.spec_ref().outer.exchange() == tessera_sync::Exchange::AllGather;
        let closes = gathers && self.state().is_some_and(|(r, _)| r == round);
        let own = self.own.clone();
        let list: Vec<crate::keep::Accepted<'_>> = accepted
            .iter()
            .zip(updates)
            .map(|(p, h)| crate::keep::Accepted {
                hash: *h,
                sources: self.sources(&[*p]),
                have: own.iter().find(|o| o.0 == *h).map(|o| &o.1),
                closing: closes,
            })
            .collect();
        let len = self.spec_ref().update_len;
        let acts = self.keeper.accepted(list, len);
        self.out.extend(acts);
    }

    /// Fetches a round's blobs (hash, length, author) that are not this trainer's own (an
    /// author's first, then the coordinator), and closes the round once all are here.
    pub(super) fn fetch_round(
        &mut self,
        round: u64,
        next: Hash32,
        wanted: Vec<(Hash32, u64, Option<PeerId>)>,
    ) {
        let own = self.own.clone();
        let mine = |h: &Hash32| own.iter().find(|o| o.0 == *h).map(|o| o.1.to_vec());
        let blobs: Vec<(Hash32, Option<Vec<u8>>)> = wanted.iter().map(|(h, _, _)| (*h, mine(h))).collect();
        for ((h, len, author), b) in wanted.iter().zip(&blobs) {
            if b.1.is_none() {
                let sources = self.sources(&author.iter().copied().collect::<Vec<_>>());
                self.out.push(Action::Fetch { sources, hash: *h, len: *len, split: false });
            }
        }
        self.closing = Some(Closing { round, next, blobs });
        self.try_close();
    }

    /// NoLoCo: the round closed with `p`'s pairing. An accepted trainer fetches each accepted
    /// partner's Δ and φ (from the partner first) and steps toward its group's means; one not
    /// accepted only moves its replica to the next round. Either way the result is checked
    /// against the replica the coordinator computed for it.
    pub(super) fn on_accept_pairs(
        &mut self,
        round: u64,
        accepted: Vec<PeerId>,
        updates: Vec<Hash32>,
        p: Pairs,
    ) {
        self.keep_round(round, &accepted, &updates);
        let kept = self.keeper.closed_round(round, p.replicas.iter().map(|r| r.0).collect());
        self.out.extend(kept);
        let me = self.tc.me;
        let Some(next) = p.replicas.iter().find(|r| r.0 == me).map(|r| r.1) else { return };
        match self.state() {
            Some((r, _)) if r == round => {}
            Some((r, _)) if r > round => return,
            _ => return self.adopt(round + 1, next),
        }
        let mut wanted = Vec::new();
        if accepted.contains(&me) {
            let Some(group) = p.groups.iter().find(|g| g.contains(&me)) else {
                let err = "this trainer is in no group".to_string();
                self.warn(TrainerError::Aggregate { round, err });
                return self.adopt(round + 1, next);
            };
            let (dlen, plen) = (self.spec_ref().update_len, self.spec_ref().outer.phi_len());
            for peer in group {
                if let Some(i) = accepted.iter().position(|a| a == peer) {
                    wanted.push((updates[i], dlen, Some(*peer)));
                    wanted.push((p.phis[i], plen, Some(*peer)));
                }
            }
        }
        self.fetch_round(round, next, wanted);
    }

    /// Closes the round once every blob it needs is here.
    pub(super) fn try_close(&mut self) {
        let Some(c) = self.closing.as_ref().filter(|c| c.blobs.iter().all(|b| b.1.is_some())) else { return };
        let c = c.clone();
        self.closing = None;
        if self.spec_ref().outer.exchange() == tessera_sync::Exchange::AllGather {
            for b in c.blobs.iter().filter_map(|b| b.1.as_deref()) {
                let kept = self.keeper.closed(b);
                self.out.extend(kept);
            }
        }
        match self.combine(&c) {
            Ok(values) => self.close(c.round, values.as_deref(), c.next),
            Err(err) => {
                self.warn(TrainerError::Aggregate { round: c.round, err });
                self.adopt(c.round + 1, c.next);
            }
        }
        self.after_close_done();
    }

    /// The values a round's blobs combine to (none when nothing was accepted).
    pub(super) fn combine(&self, c: &Closing) -> Result<Option<Vec<f32>>, String> {
        let outer = &self.spec_ref().outer;
        let blobs: Vec<&[u8]> = c.blobs.iter().filter_map(|b| b.1.as_deref()).collect();
        if blobs.is_empty() {
            return Ok(None);
        }
        if outer.exchange() == tessera_sync::Exchange::Hub {
            return outer.decode_aggregate(c.round, blobs[0]).map(Some).map_err(|e| e.to_string());
        }
        if outer.exchange() == tessera_sync::Exchange::Pairs {
            // (Δ, φ) of each accepted member of the group, in peer-id order.
            let mut ds = Vec::with_capacity(blobs.len() / 2);
            let mut ps = Vec::with_capacity(blobs.len() / 2);
            for pair in blobs.chunks_exact(2) {
                let d = tessera_sync::decode_update(pair[0], self.spec_ref().expected());
                ds.push(d.map_err(|e| e.to_string())?.values);
                ps.push(outer.decode_phi(c.round, pair[1]).map_err(|e| e.to_string())?);
            }
            let dref: Vec<&[f32]> = ds.iter().map(Vec::as_slice).collect();
            let pref: Vec<&[f32]> = ps.iter().map(Vec::as_slice).collect();
            return outer.combine_group(&dref, &pref).map(Some).map_err(|e| e.to_string());
        }
        let want = self.spec_ref().expected();
        let mut contribs = Vec::with_capacity(blobs.len());
        for (i, b) in blobs.iter().enumerate() {
            let d = tessera_sync::decode_update(b, want).map_err(|e| e.to_string())?;
            let support = d.support;
            contribs.push(tessera_sync::Contribution {
                peer: i as u64,
                weight: 1.0,
                values: d.values,
                support,
            });
        }
        outer.combine(c.round, &contribs).map(|x| Some(x.values)).map_err(|e| e.to_string())
    }

    /// A `RoundStart` or `Done` that waited for the close is handled now.
    pub(super) fn after_close_done(&mut self) {
        if let Some(w) = self.after_close.take() {
            self.need(w);
        }
    }

    pub(super) fn adopt(&mut self, round: u64, state: Hash32) {
        self.need(Want { round, hash: state, train: None, report: true, finish: false });
    }

    /// Closes `round` with its combined values (or none), reports the state reached, and takes
    /// the coordinator's checkpoint if it differs.
    pub(super) fn close(&mut self, round: u64, combined: Option<&[f32]>, expected: Hash32) {
        let held = self.held.as_ref().expect("closing needs the round's state");
        assert_eq!(held.state.round, round, "a round is closed from its own start state");
        let mut next = (*held.state).clone();
        if self.tc.fault_round == Some(round) {
            if let Some(x) = next.theta.first_mut() {
                *x += 1.0; // a flipped bit or a miscomputing machine, its hash not updated
            }
            self.out.push(Action::Event(TrainerEvent::FaultInjected { round }));
        }
        if let Err(e) = next.apply(&self.spec_ref().outer, combined) {
            self.warn(TrainerError::Aggregate { round, err: e.to_string() });
            return self.adopt(round + 1, expected);
        }
        let blob = next.encode();
        let mine = *blake3::hash(&blob).as_bytes();
        let agrees = mine == expected;
        // Offered to the other members, who may fetch checkpoints from it.
        self.out.push(Action::Serve { hash: mine, bytes: Arc::new(blob) });
        self.held = Some(Held { state: Arc::new(next), hash: mine, computed: true });
        self.report(round + 1, mine, agrees, true);
        if !agrees {
            self.need(Want { round: round + 1, hash: expected, train: None, report: false, finish: false });
        }
    }
}

//! Faults of [`ProtocolSim`]'s nodes: the coordinator dying before any output (between a
//! persisted record and its broadcast, between a blob and its record), on a failed write or
//! a full disk; trainers and validators dying with or without their disks; partitions; slow
//! peers. A restarted node resumes as its daemon does: the coordinator from what its store
//! holds, a trainer from its key and (with its disk) its ledger copy, and every node that
//! lost its connection dials again.

use std::collections::{BTreeMap, HashMap};

use tessera_coord::{
    Coordinator, Hash32, Message, Output, PeerId, Record, Restored, RunSpec, Trainer, Validator,
};

use super::{Delivery, ProtocolSim};
use crate::links::{FaultCounts, NetFaults};
use crate::SimError;

/// Most virtual milliseconds a node waits before dialing the coordinator again.
pub const MAX_RECONNECT_MS: u64 = 500;

/// How the coordinator's process dies. The daemon exits on a failed write and is restarted
/// by its supervisor, so a write that fails is a crash before that write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordCrash {
    /// Dies before its `n`th output, counted over the run; back after `down_ms`.
    AtOutput { n: u64, down_ms: u64 },
    /// Its first write (a record or a blob) from its `n`th output on fails.
    WriteFails { n: u64, down_ms: u64 },
    /// The disk is full from `from_ms` until `until_ms`: the first write then fails, and the
    /// daemon cannot start again before space is freed.
    DiskFull { from_ms: u64, until_ms: u64 },
}

/// The coordinator's store as the simulator keeps it: the records it persisted, in order,
/// and the blobs it stored. It survives the coordinator's crashes.
pub struct MemStore<'a> {
    pub records: &'a [Record],
    pub blobs: &'a HashMap<Hash32, Vec<u8>>,
}

impl MemStore<'_> {
    /// The ledger's records, in the order they were persisted.
    pub fn ledger(&self) -> Vec<tessera_ledger::Record> {
        self.records.iter().flat_map(|r| r.ledger_records().iter().cloned()).collect()
    }

    /// What a restarted coordinator resumes from, by the rules the daemon's SQLite store
    /// keeps: the last closed round's state and backlog, that round's announced successor,
    /// every state hash, and the peers a verdict proved to cheat (the last verdict of each
    /// check stands).
    pub fn restore(&self, spec: &RunSpec) -> Result<Restored, SimError> {
        let mut history = vec![(0u64, spec.initial_state().hash())];
        let mut backlog = Vec::new();
        let mut last_accept = None;
        let mut starts: BTreeMap<u64, Message> = BTreeMap::new();
        let mut verdicts: BTreeMap<(u64, PeerId, u64), bool> = BTreeMap::new();
        for r in self.records {
            match r {
                Record::RoundClosed { round, state_hash, backlog: b, accept, .. } => {
                    if *round + 1 != history.len() as u64 {
                        return Err(SimError::Store(format!("round {round} closed out of order")));
                    }
                    history.push((round + 1, *state_hash));
                    backlog = b.clone();
                    last_accept = Some(accept);
                }
                Record::RoundStarted { round, start } => {
                    starts.insert(*round, start.clone());
                }
                Record::Verdict { round, peer, segment, outcome, .. } => {
                    verdicts.insert((*round, *peer, *segment), outcome.proves_cheat());
                }
                _ => {}
            }
        }
        let (round, hash) = *history.last().expect("the initial state");
        let blob = self.blobs.get(&hash).ok_or_else(|| {
            SimError::Store(format!("the state of round {round} was recorded but never stored"))
        })?;
        let state = spec.decode_state(blob, &hash)?;
        if state.round != round {
            return Err(SimError::Store(format!(
                "the state after round {round} holds round {}",
                state.round
            )));
        }
        let mut banned: BTreeMap<PeerId, u64> = BTreeMap::new();
        for ((r, peer, _), _) in verdicts.iter().filter(|(_, cheat)| **cheat) {
            banned.entry(*peer).and_modify(|b| *b = (*b).min(*r)).or_insert(*r);
        }
        let open = starts.remove(&round);
        let banned = banned.into_iter().collect();
        let replicas = spec.restore_replicas(round, last_accept, |h| {
            let blob = self.blobs.get(h).ok_or_else(|| {
                SimError::Store(format!("a replica of round {round} was recorded but never stored"))
            })?;
            Ok::<_, SimError>(spec.decode_state(blob, h)?)
        })?;
        Ok(Restored { state, backlog, open, history, replicas, banned })
    }
}

impl ProtocolSim<'_> {
    /// The network misbehaves so from now on.
    pub fn set_net_faults(&mut self, faults: NetFaults) {
        self.links.set_faults(faults);
    }

    /// What the network's faults did so far.
    pub fn fault_counts(&self) -> &FaultCounts {
        &self.links.counts
    }

    /// The coordinator will die so (several may wait; each strikes once).
    pub fn crash_coordinator(&mut self, c: CoordCrash) {
        self.crashes.push(c);
    }

    /// Whether the coordinator's process is down.
    pub fn coordinator_down(&self) -> bool {
        self.coord_down.is_some()
    }

    /// A blob the coordinator's store holds.
    pub fn blob(&self, hash: &Hash32) -> Option<&[u8]> {
        self.blobs.get(hash).map(Vec::as_slice)
    }

    /// The coordinator's store.
    pub fn store(&self) -> MemStore<'_> {
        MemStore { records: &self.records, blobs: &self.blobs }
    }

    /// Who is where, in one line (for a stuck run's report): the coordinator's members, the
    /// live trainers, how many of those hold no config (never welcomed) and the open round.
    pub fn membership(&self) -> String {
        let live = self.peers.values().filter(|p| p.alive).count();
        let unconfigured = self.peers.values().filter(|p| p.alive && p.w.is_none()).count();
        let down = if self.coord_down.is_some() { ", the coordinator is down" } else { "" };
        format!(
            "{} members, {live} live trainers of which {unconfigured} never welcomed, {} validators{down}",
            self.coord.members().count(),
            self.validators.values().filter(|c| c.alive).count(),
        )
    }

    /// Trainer `peer`'s process dies now: what is in flight to or from it is lost.
    pub fn kill(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.alive = false;
            p.epoch += 1;
        } else if let Some(c) = self.validators.get_mut(peer) {
            c.alive = false;
            c.epoch += 1;
        }
    }

    /// A dead trainer or validator starts again with its key; `with_disk`, it also resumes
    /// the ledger copy it kept (without, it starts with none). Its memory is gone: a trainer
    /// fetches the state, and serves nothing until it trains again.
    pub fn restart(&mut self, id: &PeerId, with_disk: bool) -> Result<(), SimError> {
        let now = self.now;
        if let Some(c) = self.validators.get_mut(id).filter(|c| !c.alive) {
            c.v = Validator::new(c.vc.clone());
            match with_disk {
                true => {
                    c.v.resume_ledger(&c.kept)
                        .map_err(|err| SimError::Trainer { peer: tessera_tensor::hex(&id[..4]), err })?
                }
                false => c.kept.clear(),
            }
            c.d = Default::default();
            c.alive = true;
            c.epoch += 1;
            let acts = c.v.connected(now);
            return self.act_validator(*id, acts);
        }
        let Some(p) = self.peers.get_mut(id).filter(|p| !p.alive) else { return Ok(()) };
        let mut t = Trainer::new(p.tc.clone());
        match with_disk {
            true => t
                .resume_ledger(&p.kept)
                .map_err(|err| SimError::Trainer { peer: tessera_tensor::hex(&id[..4]), err })?,
            false => p.kept.clear(),
        }
        p.t = t;
        p.w = None;
        p.served.clear();
        p.served_order.clear();
        p.crash_in = None;
        p.alive = true;
        p.epoch += 1;
        let acts = p.t.connected(now);
        self.act(*id, acts)
    }

    /// Peer `id` is cut off from everyone for `ms`; it dials again once the cut heals.
    pub fn partition(&mut self, id: PeerId, ms: u64) {
        self.links.partition(id, self.now + ms);
    }

    /// Trainer `id`'s frames and blobs take `extra_ms` longer, and each unit it trains
    /// `train_ms` (0 and 0: it is fast again).
    pub fn slow(&mut self, id: PeerId, extra_ms: u64, train_ms: u64) {
        self.links.slow(id, extra_ms);
        if let Some(p) = self.peers.get_mut(&id) {
            p.train_ms = train_ms;
        }
    }

    /// Whether output `o` is where a waiting crash strikes; if so the coordinator is down.
    pub(super) fn crash_due(&mut self, o: &Output) -> bool {
        let write = matches!(o, Output::Persist(_) | Output::StoreBlob { .. });
        let (n, now) = (self.outputs, self.now);
        let hit = self.crashes.iter().position(|c| match *c {
            CoordCrash::AtOutput { n: at, .. } => n >= at,
            CoordCrash::WriteFails { n: at, .. } => write && n >= at,
            CoordCrash::DiskFull { from_ms, until_ms } => write && (from_ms..until_ms).contains(&now),
        });
        let Some(i) = hit else { return false };
        let until = match self.crashes.remove(i) {
            CoordCrash::AtOutput { down_ms, .. } | CoordCrash::WriteFails { down_ms, .. } => now + down_ms,
            CoordCrash::DiskFull { until_ms, .. } => until_ms,
        };
        self.coord_down = Some(until.max(now + 1));
        self.coord_epoch += 1;
        true
    }

    /// What falls due on a tick: a down coordinator restarts, cut links heal and dial again,
    /// a full disk that saw no write frees up.
    pub(super) fn faults_due(&mut self) -> Result<(), SimError> {
        let now = self.now;
        self.crashes.retain(|c| !matches!(c, CoordCrash::DiskFull { until_ms, .. } if *until_ms <= now));
        if self.coord_down.is_some_and(|t| t <= now) {
            self.restart_coordinator()?;
        }
        for id in self.links.healed(now) {
            self.reconnect(&id)?;
        }
        Ok(())
    }

    /// The coordinator starts again from its store; every live node dials it again.
    fn restart_coordinator(&mut self) -> Result<(), SimError> {
        assert!(self.coord_down.is_some(), "only a dead coordinator restarts");
        let store = self.store();
        let (restored, ledger) = (store.restore(&self.spec)?, store.ledger());
        let mut c = Coordinator::restore(self.spec.clone(), restored, self.now, self.secret)?;
        let outs = c.keep_ledger(super::sim_coordinator_key(), &ledger)?;
        self.coord = c;
        self.coord_down = None;
        self.coord_epoch += 1;
        self.restarts += 1;
        self.execute(outs);
        let live: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(id, _)| *id)
            .chain(self.validators.iter().filter(|(_, c)| c.alive).map(|(id, _)| *id))
            .collect();
        for id in live {
            let wait = self.links.jitter(MAX_RECONNECT_MS);
            self.push_after(wait, Delivery::Reconnect(id));
        }
        Ok(())
    }

    /// A live trainer or validator dials the coordinator again and asks to join.
    pub(super) fn reconnect(&mut self, id: &PeerId) -> Result<(), SimError> {
        let now = self.now;
        if let Some(p) = self.peers.get_mut(id).filter(|p| p.alive) {
            let acts = p.t.connected(now);
            return self.act(*id, acts);
        }
        if let Some(c) = self.validators.get_mut(id).filter(|c| c.alive) {
            let acts = c.v.connected(now);
            return self.act_validator(*id, acts);
        }
        Ok(())
    }
}

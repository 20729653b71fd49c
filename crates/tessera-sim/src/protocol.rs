//! The networked run's protocol in one process: the real [`Coordinator`] and real [`Worker`]s
//! exchanging the real messages and blobs, on a virtual clock, with scripted joins and
//! crashes. Training takes no virtual time; the clock moves (in heartbeat ticks) only while
//! the run waits for a deadline or for silence to expose a crashed peer. Given the same
//! membership history, it computes the same states as the daemons.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tessera_coord::{Coordinator, Event, Hash32, Message, Output, PeerId, Record, RunConfig, Signed, Worker};
use tessera_data::Dataset;

use crate::SimError;

/// Most idle ticks a run may wait before it is declared stuck.
pub const MAX_IDLE_TICKS: u64 = 100_000;

struct Peer {
    w: Worker,
    alive: bool,
    seq: u64,
    updates: HashMap<Hash32, Vec<u8>>,
    /// Dies on receiving the `RoundStart` of this round, before committing.
    crash_in: Option<u64>,
}

enum Delivery {
    ToCoord(Signed),
    ToPeer(PeerId, Message),
}

/// A scripted protocol run.
pub struct ProtocolSim<'a> {
    ds: &'a Dataset,
    cfg: RunConfig,
    coord: Coordinator,
    peers: BTreeMap<PeerId, Peer>,
    blobs: HashMap<Hash32, Vec<u8>>,
    queue: VecDeque<Delivery>,
    now: u64,
    /// Everything the coordinator persisted and logged, in order.
    pub records: Vec<Record>,
    pub events: Vec<Event>,
}

impl<'a> ProtocolSim<'a> {
    pub fn new(cfg: RunConfig, ds: &'a Dataset) -> Result<Self, SimError> {
        let w = Worker::new(cfg.clone())?;
        let init = w.initial_state();
        let mut blobs = HashMap::new();
        blobs.insert(init.hash(), init.encode());
        let coord = Coordinator::new(cfg.clone(), init)?;
        Ok(Self {
            ds,
            cfg,
            coord,
            peers: BTreeMap::new(),
            blobs,
            queue: VecDeque::new(),
            now: 0,
            records: Vec::new(),
            events: Vec::new(),
        })
    }

    pub fn coordinator(&self) -> &Coordinator {
        &self.coord
    }

    /// A new trainer sends its `Join` (delivered by the next [`ProtocolSim::run_until`]).
    pub fn join(&mut self, peer: PeerId) -> Result<(), SimError> {
        let w = Worker::new(self.cfg.clone())?;
        self.peers.insert(peer, Peer { w, alive: true, seq: 0, updates: HashMap::new(), crash_in: None });
        self.send_from(peer, Message::Join { addrs: vec![] });
        Ok(())
    }

    /// The trainer stops responding from now on.
    pub fn crash(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.alive = false;
        }
    }

    /// The trainer dies when round `round` is announced, before it commits.
    pub fn crash_in_round(&mut self, peer: &PeerId, round: u64) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.crash_in = Some(round);
        }
    }

    /// The state (round, hash) a trainer holds.
    pub fn peer_state(&self, peer: &PeerId) -> Option<(u64, Hash32)> {
        self.peers.get(peer).and_then(|p| p.w.state())
    }

    /// Runs until `round` rounds are closed (or the run ends). Messages still in flight then
    /// stay queued for the next call, so scripted events land between rounds.
    pub fn run_until(&mut self, round: u64) -> Result<(), SimError> {
        let mut idle = 0;
        self.drain(round)?;
        while self.coord.round() < round && !self.coord.is_finished() {
            idle += 1;
            if idle > MAX_IDLE_TICKS {
                return Err(SimError::Stuck(self.coord.round()));
            }
            self.now += self.cfg.heartbeat_ms;
            let alive: Vec<PeerId> = self.peers.iter().filter(|(_, p)| p.alive).map(|(k, _)| *k).collect();
            for p in alive {
                let r = self.coord.round();
                self.send_from(p, Message::Heartbeat { round: r, step: 0 });
            }
            let outs = self.coord.tick(self.now);
            self.execute(outs);
            self.drain(round)?;
        }
        if self.coord.is_finished() {
            self.drain(u64::MAX)?; // the last Accept and Done reach everyone
        }
        Ok(())
    }

    fn send_from(&mut self, peer: PeerId, message: Message) {
        let p = self.peers.get_mut(&peer).expect("known peer");
        p.seq += 1;
        self.queue.push_back(Delivery::ToCoord(Signed { sender: peer, seq: p.seq, message }));
    }

    fn execute(&mut self, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::Send { to, message } => self.queue.push_back(Delivery::ToPeer(to, message)),
                Output::Broadcast { message } => {
                    for m in self.coord.members().copied().collect::<Vec<_>>() {
                        self.queue.push_back(Delivery::ToPeer(m, message.clone()));
                    }
                }
                Output::Fetch { from, hash, .. } => {
                    let got = self
                        .peers
                        .get(&from)
                        .filter(|p| p.alive)
                        .and_then(|p| p.updates.get(&hash).cloned())
                        .ok_or_else(|| "peer unreachable".to_string());
                    let outs = self.coord.fetched(self.now, from, hash, got);
                    self.execute(outs);
                }
                Output::StoreBlob { hash, bytes } => {
                    self.blobs.insert(hash, bytes);
                }
                Output::Persist(r) => self.records.push(r),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    /// Delivers queued messages until none is left or `round` rounds are closed.
    fn drain(&mut self, round: u64) -> Result<(), SimError> {
        while self.coord.round() < round {
            let Some(d) = self.queue.pop_front() else { break };
            match d {
                Delivery::ToCoord(s) => {
                    let outs = self.coord.handle(self.now, s);
                    self.execute(outs);
                }
                Delivery::ToPeer(to, m) => self.deliver(to, m)?,
            }
        }
        Ok(())
    }

    /// Loads the checkpoint `hash` into a trainer if it does not hold it.
    fn sync(&mut self, to: PeerId, round: u64, hash: Hash32) -> Result<bool, SimError> {
        let p = self.peers.get_mut(&to).expect("known peer");
        if p.w.state() == Some((round, hash)) {
            return Ok(true);
        }
        match self.blobs.get(&hash) {
            Some(b) => p.w.load_state(b, &hash).map(|_| true).map_err(SimError::from),
            None => Ok(false),
        }
    }

    fn deliver(&mut self, to: PeerId, m: Message) -> Result<(), SimError> {
        let Some(p) = self.peers.get_mut(&to) else { return Ok(()) };
        if !p.alive {
            return Ok(());
        }
        match m {
            Message::Welcome { round, state_hash, .. }
            | Message::CheckpointPointer { round, state_hash, .. } => {
                self.sync(to, round, state_hash)?;
            }
            Message::RoundStart { round, state_hash, assignments, .. } => {
                if p.crash_in == Some(round) {
                    p.alive = false;
                    return Ok(());
                }
                let Some(a) = assignments.iter().find(|a| a.peer == to).copied() else { return Ok(()) };
                if !self.sync(to, round, state_hash)? {
                    return Ok(());
                }
                let p = self.peers.get_mut(&to).expect("known peer");
                let t = p.w.train(round, &state_hash, &a, self.ds, &mut |_| {})?.clone();
                p.updates.insert(t.update_hash, t.update.clone());
                let commit = t.commit();
                self.send_from(to, commit);
            }
            Message::Accept { round, aggregate, next_state_hash, .. } => {
                let mine = if p.w.state().map(|s| s.0) == Some(round) {
                    let agg = aggregate.and_then(|h| self.blobs.get(&h));
                    p.w.apply(round, agg.map(Vec::as_slice))?
                } else {
                    self.sync(to, round + 1, next_state_hash)?;
                    next_state_hash
                };
                self.send_from(to, Message::StateReport { round: round + 1, state_hash: mine });
            }
            _ => {}
        }
        Ok(())
    }
}

//! The networked run's protocol in one process: the real [`Coordinator`] and real [`Trainer`]
//! state machines (the ones the daemons drive) exchanging the real messages and blobs, on a
//! virtual clock, with scripted joins and crashes. This driver only executes actions; every
//! decision is the machines'. Training takes no virtual time; the clock moves (in heartbeat
//! ticks) only while the run waits for a deadline or for silence to expose a crashed peer.
//! Given the same membership history, it computes the same states as the daemons.

use std::collections::{BTreeMap, HashMap, VecDeque};

mod restarts;
pub use restarts::{CoordCrash, MemStore};
use std::sync::Arc;

use tessera_coord::{
    Action, Cheat, Checked, CoordError, Coordinator, Disputant, Event, Hash32, Loot, Message, Outcome,
    Output, PeerId, Record, RunConfig, RunSpec, Shirk, Signed, Trainer, TrainerConfig, TrainerError,
    TrainerEvent, Validator, ValidatorAction, ValidatorConfig, ValidatorEvent, Worker,
};
use tessera_data::Dataset;

use crate::links::{Hop, Links, Queued};
use crate::SimError;

/// Most idle ticks a run may wait before it is declared stuck.
pub const MAX_IDLE_TICKS: u64 = 100_000;
/// Most blobs one simulated trainer serves (the oldest go first), as a real endpoint bounds.
pub const MAX_SERVED: usize = 64;
/// The simulated coordinator's signing key (its identity and its ledger's signer), fixed.
pub fn sim_coordinator_key() -> tessera_coord::SigningKey {
    tessera_coord::SigningKey::from_bytes(&blake3::derive_key("tessera-sim coordinator key", b""))
}

struct Peer {
    t: Trainer,
    /// What it restarts with.
    tc: TrainerConfig,
    w: Option<Worker>,
    alive: bool,
    seq: u64,
    served: HashMap<Hash32, Arc<Vec<u8>>>,
    /// The served blobs' hashes, oldest first (at most [`MAX_SERVED`]).
    served_order: VecDeque<Hash32>,
    /// Dies when asked to train a unit of this round, before committing.
    crash_in: Option<u64>,
    miss_every: Option<u64>,
    /// The ledger records it kept (what a node appends to its copy on disk).
    kept: Vec<tessera_ledger::Record>,
    /// The blobs it kept beside that copy (`TrainerConfig::keep_blobs`), by hash.
    kept_blobs: BTreeMap<Hash32, Arc<Vec<u8>>>,
    kept_rounds: BTreeMap<u64, tessera_coord::KeptRound>,
    /// Sends this instead of its honest updates.
    cheat: Option<Cheat>,
    /// Skimps on its training so.
    shirk: Option<Shirk>,
    /// Its last update sent (what a copier or a replay takes).
    last: Option<(u64, Arc<Vec<u8>>)>,
    /// A drill: it leaves every dispute question unanswered.
    mute: bool,
    /// Its process's incarnation: what was sent to or by an earlier one is dropped.
    epoch: u64,
    /// Virtual milliseconds a unit of training takes (0: none, answered at once).
    train_ms: u64,
}

/// What travels, in order. Blobs come back through the queue like messages, so a message
/// sent after a fetch began can arrive before the blob, as on a real network.
enum Delivery {
    ToCoord(Signed),
    ToPeer(PeerId, Signed),
    BlobToCoord(PeerId, Hash32, Result<Vec<u8>, String>),
    BlobToPeer(PeerId, Hash32, Result<Vec<u8>, String>),
    /// A spot check the coordinator ran: (round, trainer, outcome).
    Checked(u64, PeerId, Result<Outcome, CoordError>),
    /// An update the coordinator scored: (round, trainer, score).
    Scored(u64, PeerId, Result<tessera_coord::Score, CoordError>),
    /// A spot check a validator ran: (validator, round, trainer, outcome).
    ValidatorChecked(PeerId, u64, PeerId, Result<Checked, CoordError>),
    /// An update a validator scored: (validator, (round, trainer), score).
    ValidatorScored(PeerId, (u64, PeerId), Result<tessera_coord::Score, CoordError>),
    /// A validator's answer to a dispute question: (validator, (round, trainer), answer).
    ValidatorAnswered(PeerId, (u64, PeerId), Result<tessera_coord::Answered, CoordError>),
    /// A step the coordinator recomputed as a dispute's referee: (round, trainer, state).
    Recomputed(u64, PeerId, Result<Result<Hash32, String>, CoordError>),
    /// A slow trainer finished training its unit of `round`.
    Trained(PeerId, u64, Result<tessera_coord::Trained, CoordError>),
    /// A trainer or validator dials the coordinator again (its connection broke).
    Reconnect(PeerId),
}

impl Delivery {
    /// Whether it crosses a connection to the coordinator (or is the coordinator's own
    /// work): a coordinator that has restarted since never sees it.
    fn via_coord(&self) -> bool {
        !matches!(
            self,
            Delivery::BlobToPeer(..)
                | Delivery::ValidatorChecked(..)
                | Delivery::ValidatorScored(..)
                | Delivery::ValidatorAnswered(..)
                | Delivery::Trained(..)
                | Delivery::Reconnect(..)
        )
    }

    /// The trainer or validator at its other end, and whether it crosses the network.
    fn hop(&self) -> (Option<PeerId>, Hop) {
        match self {
            Delivery::ToCoord(s) => (Some(s.sender), Hop::Net(s.sender)),
            Delivery::ToPeer(p, _) | Delivery::BlobToPeer(p, ..) => (Some(*p), Hop::Net(*p)),
            // The coordinator's fetch ends, with the blob or an error, even if the source has
            // died since (a dead source's transfer fails; it is never left hanging).
            Delivery::BlobToCoord(p, ..) => (None, Hop::Net(*p)),
            Delivery::ValidatorChecked(p, ..)
            | Delivery::ValidatorScored(p, ..)
            | Delivery::ValidatorAnswered(p, ..)
            | Delivery::Trained(p, ..)
            | Delivery::Reconnect(p) => (Some(*p), Hop::Local),
            Delivery::Checked(..) | Delivery::Scored(..) | Delivery::Recomputed(..) => (None, Hop::Local),
        }
    }

    /// The same frame again (the network may duplicate frames, never blobs or work).
    fn frame_copy(&self) -> Option<Self> {
        match self {
            Delivery::ToCoord(s) => Some(Delivery::ToCoord(s.clone())),
            Delivery::ToPeer(p, s) => Some(Delivery::ToPeer(*p, s.clone())),
            _ => None,
        }
    }
}

/// How long a blob transfer the network lost takes to fail, as a fetcher's timeout.
pub const FETCH_TIMEOUT_MS: u64 = 2_000;

/// A simulated validator.
struct Checker {
    v: Validator,
    d: Disputant,
    alive: bool,
    seq: u64,
    epoch: u64,
    /// What it restarts with.
    vc: ValidatorConfig,
    /// The ledger records it kept (what a validator node appends to its copy on disk).
    kept: Vec<tessera_ledger::Record>,
}

/// A scripted protocol run.
pub struct ProtocolSim<'a> {
    ds: &'a Dataset,
    spec: Arc<RunSpec>,
    coord: Coordinator,
    coord_seq: u64,
    peers: BTreeMap<PeerId, Peer>,
    validators: BTreeMap<PeerId, Checker>,
    blobs: HashMap<Hash32, Vec<u8>>,
    links: Links<Delivery>,
    now: u64,
    last_tick: u64,
    /// The coordinator's incarnation, and its restarts' inputs.
    coord_epoch: u64,
    secret: Hash32,
    /// Down until the given time (it restarts from its store then).
    coord_down: Option<u64>,
    crashes: Vec<CoordCrash>,
    /// Outputs the coordinator has handed over so far, across its restarts.
    outputs: u64,
    pub restarts: u64,
    /// The coordinator's identity: the key its ledger is signed with.
    ledger_key: PeerId,
    /// Everything the coordinator persisted and logged, in order.
    pub records: Vec<Record>,
    pub events: Vec<Event>,
    /// What each trainer reported, in order.
    pub trainer_events: Vec<(PeerId, TrainerEvent)>,
    /// Blobs trainers fetched from another trainer rather than the coordinator.
    pub peer_fetches: u64,
    validator_events: Vec<(PeerId, ValidatorEvent)>,
    /// Trainers that keep blobs beside their ledger copy ([`Self::join_keeping`]).
    keeping: std::collections::BTreeSet<PeerId>,
}

impl<'a> ProtocolSim<'a> {
    pub fn new(cfg: RunConfig, ds: &'a Dataset) -> Result<Self, SimError> {
        let spec = Arc::new(RunSpec::new(cfg)?);
        let init = spec.initial_state();
        let mut blobs = HashMap::new();
        blobs.insert(init.hash(), init.encode());
        let secret = *blake3::hash(format!("tessera-sim-checker {}", spec.cfg.seed).as_bytes()).as_bytes();
        let mut coord = Coordinator::new(spec.clone(), secret)?;
        assert!(coord.round() == 0 && !coord.is_finished(), "a fresh run starts at round 0");
        // The run keeps its ledger, signed with the simulated coordinator's own key.
        let key = sim_coordinator_key();
        let ledger_key = key.verifying_key().to_bytes();
        let genesis = coord.keep_ledger(key, &[])?;
        let records = genesis
            .into_iter()
            .filter_map(|o| if let Output::Persist(r) = o { Some(r) } else { None })
            .collect();
        Ok(Self {
            ds,
            spec,
            coord,
            coord_seq: 0,
            peers: BTreeMap::new(),
            validators: BTreeMap::new(),
            blobs,
            links: Links::new(),
            now: 0,
            last_tick: 0,
            coord_epoch: 0,
            secret,
            coord_down: None,
            crashes: Vec::new(),
            outputs: 0,
            restarts: 0,
            ledger_key,
            records,
            events: Vec::new(),
            trainer_events: Vec::new(),
            keeping: Default::default(),
            peer_fetches: 0,
            validator_events: Vec::new(),
        })
    }

    pub fn coordinator(&self) -> &Coordinator {
        &self.coord
    }

    /// The public key the coordinator's ledger records are signed with.
    pub fn ledger_key(&self) -> PeerId {
        self.ledger_key
    }

    /// The trainer's (or validator's) verified copy of the coordinator's ledger.
    pub fn peer_ledger(&self, peer: &PeerId) -> Option<&tessera_ledger::Ledger> {
        match self.peers.get(peer) {
            Some(p) => Some(p.t.ledger()),
            None => self.validators.get(peer).map(|c| c.v.ledger()),
        }
    }

    /// Hands `message`, signed as the coordinator's, to trainer `peer` now (a scripted
    /// coordinator's lie), and executes what it does.
    pub fn deliver_to_peer(&mut self, peer: PeerId, message: Message) -> Result<(), SimError> {
        let s = self.signed_by_coord(message);
        let now = self.now;
        let acts = self.peer_mut(&peer).t.handle(now, s);
        self.act(peer, acts)
    }

    /// The virtual clock, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// The ledger records a trainer kept, as a node keeps them on disk.
    pub fn peer_kept_ledger(&self, peer: &PeerId) -> Option<&[tessera_ledger::Record]> {
        match self.peers.get(peer) {
            Some(p) => Some(p.kept.as_slice()),
            None => self.validators.get(peer).map(|c| c.kept.as_slice()),
        }
    }

    /// The blobs a keeping trainer ([`Self::join_keeping`]) kept, by hash.
    pub fn peer_kept_blobs(&self, peer: &PeerId) -> Option<&BTreeMap<Hash32, Arc<Vec<u8>>>> {
        self.peers.get(peer).map(|p| &p.kept_blobs)
    }

    /// The NoLoCo rounds a keeping trainer kept, by round.
    pub fn peer_kept_rounds(&self, peer: &PeerId) -> Option<&BTreeMap<u64, tessera_coord::KeptRound>> {
        self.peers.get(peer).map(|p| &p.kept_rounds)
    }

    /// Hands `frame` to the coordinator now (a scripted peer outside the run), executes what
    /// it answers, and returns that.
    pub fn deliver_to_coordinator(&mut self, frame: Signed) -> Vec<Output> {
        let outs = self.coord.handle(self.now, frame);
        self.execute(outs.clone());
        outs
    }

    /// A new trainer sends its `Join` (delivered by the next [`ProtocolSim::run_until`]).
    pub fn join(&mut self, peer: PeerId) -> Result<(), SimError> {
        self.join_with(peer, None)
    }

    /// A new trainer that runs the fault drill in `fault_round` (see [`TrainerConfig`]).
    pub fn join_with(&mut self, peer: PeerId, fault_round: Option<u64>) -> Result<(), SimError> {
        self.join_trainer(peer, fault_round, None)
    }

    /// A new trainer that keeps the run's config and every accepted update beside its
    /// ledger copy (`tessera node --keep-updates`; see [`Self::peer_kept_blobs`]).
    pub fn join_keeping(&mut self, peer: PeerId) -> Result<(), SimError> {
        self.keeping.insert(peer);
        self.join_trainer(peer, None, None)
    }

    /// A new trainer whose identity is `key`'s public half, and which signs its updates.
    pub fn join_signing(&mut self, key: tessera_coord::SigningKey) -> Result<PeerId, SimError> {
        let id = key.verifying_key().to_bytes();
        self.join_trainer(id, None, Some(key))?;
        Ok(id)
    }

    fn join_trainer(
        &mut self,
        peer: PeerId,
        fault_round: Option<u64>,
        key: Option<tessera_coord::SigningKey>,
    ) -> Result<(), SimError> {
        let addr = Some(format!("sim:{}", tessera_tensor::hex(&peer[..4])));
        let tc = TrainerConfig {
            stake: tessera_coord::DEFAULT_STAKE,
            me: peer,
            coordinator: self.ledger_key,
            dataset: self.ds.manifest_hash(),
            addr,
            fault_round,
            key,
            keep_blobs: self.keeping.contains(&peer),
        };
        let p = Peer {
            t: Trainer::new(tc.clone()),
            tc,
            w: None,
            alive: true,
            seq: 0,
            served: HashMap::new(),
            served_order: VecDeque::new(),
            crash_in: None,
            miss_every: None,
            kept: Vec::new(),
            kept_blobs: BTreeMap::new(),
            kept_rounds: BTreeMap::new(),
            cheat: None,
            shirk: None,
            last: None,
            mute: false,
            epoch: 0,
            train_ms: 0,
        };
        self.peers.insert(peer, p);
        let now = self.now;
        let acts = self.peer_mut(&peer).t.connected(now);
        self.act(peer, acts)
    }

    /// A validator sends its `JoinValidator`; `behaviour` is honest or a drill. It holds no
    /// key, so its scores are not signed (and never weigh in Yuma consensus).
    pub fn join_validator(
        &mut self,
        id: PeerId,
        behaviour: tessera_coord::Behaviour,
    ) -> Result<(), SimError> {
        self.join_checker(id, None, behaviour)
    }

    /// A validator whose identity is `key`'s public half, and which signs its scores.
    pub fn join_signing_validator(
        &mut self,
        key: tessera_coord::SigningKey,
        behaviour: tessera_coord::Behaviour,
    ) -> Result<PeerId, SimError> {
        let id = key.verifying_key().to_bytes();
        self.join_checker(id, Some(key), behaviour)?;
        Ok(id)
    }

    fn join_checker(
        &mut self,
        id: PeerId,
        key: Option<tessera_coord::SigningKey>,
        behaviour: tessera_coord::Behaviour,
    ) -> Result<(), SimError> {
        let vc = ValidatorConfig {
            stake: tessera_coord::DEFAULT_STAKE,
            me: id,
            coordinator: self.ledger_key,
            dataset: self.ds.manifest_hash(),
            addr: None,
            behaviour,
            key,
        };
        let mut v = Validator::new(vc.clone());
        let acts = v.connected(self.now);
        let c = Checker { v, d: Disputant::default(), alive: true, seq: 0, epoch: 0, vc, kept: Vec::new() };
        self.validators.insert(id, c);
        self.act_validator(id, acts)
    }

    /// What each validator reported, in order.
    pub fn validator_events(&self) -> &[(PeerId, ValidatorEvent)] {
        &self.validator_events
    }

    /// Executes one validator's actions in order.
    fn act_validator(&mut self, id: PeerId, acts: Vec<ValidatorAction>) -> Result<(), SimError> {
        for a in acts {
            let Some(c) = self.validators.get_mut(&id).filter(|c| c.alive) else { return Ok(()) };
            match a {
                ValidatorAction::Send(message) => {
                    c.seq += 1;
                    let s = Signed { sender: id, seq: c.seq, message };
                    self.push(Delivery::ToCoord(s));
                }
                ValidatorAction::Fetch { sources, hash, len } => {
                    let found = sources.iter().find_map(|s| self.fetch(&s.peer, &hash));
                    let got = found
                        .filter(|b| b.len() as u64 == len)
                        .ok_or_else(|| "blob not available".to_string());
                    self.push(Delivery::BlobToPeer(id, hash, got));
                }
                ValidatorAction::Check(job) => {
                    let got = tessera_coord::check_segment(&self.spec, self.ds, &job);
                    self.push(Delivery::ValidatorChecked(id, job.round, job.peer, got));
                }
                ValidatorAction::Score(job) => {
                    let got = tessera_coord::run_score(&self.spec, self.ds, &job);
                    self.push(Delivery::ValidatorScored(id, (job.round, job.peer), got));
                }
                ValidatorAction::Answer(job) => {
                    let got = job.run(&self.spec, self.ds, &mut c.d);
                    self.push(Delivery::ValidatorAnswered(id, (job.round, job.peer), got));
                }
                ValidatorAction::KeepLedger(records) => c.kept.extend(records),
                ValidatorAction::Event(e) => {
                    match &e {
                        ValidatorEvent::Fatal(TrainerError::Refused { .. }) => c.alive = false,
                        ValidatorEvent::Fatal(err) => {
                            let peer = tessera_tensor::hex(&id[..4]);
                            return Err(SimError::Trainer { peer, err: err.clone() });
                        }
                        _ => {}
                    }
                    self.validator_events.push((id, e));
                }
            }
        }
        Ok(())
    }

    /// The trainer stops responding from now on.
    pub fn crash(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.alive = false;
        }
    }

    /// The trainer dies when asked to train round `round`, before it commits.
    pub fn crash_in_round(&mut self, peer: &PeerId, round: u64) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.crash_in = Some(round);
        }
    }

    /// The trainer cheats from now on (a drill: see [`Cheat`]).
    pub fn cheat(&mut self, peer: &PeerId, cheat: Cheat) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.cheat = Some(cheat);
        }
    }

    /// The trainer leaves every dispute question unanswered from now on (a drill: it loses
    /// its disputes by timeout).
    pub fn mute_in_disputes(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.mute = true;
        }
    }

    /// The trainer misses every `n`th round from now on (rounds `n − 1`, `2n − 1`, …; `n = 1`:
    /// every round): its training fails and it commits nothing, while it stays connected.
    pub fn miss_every(&mut self, peer: &PeerId, n: u64) {
        assert!(n >= 1, "a round in n");
        if let Some(p) = self.peers.get_mut(peer) {
            p.miss_every = Some(n);
        }
    }

    /// The trainer skimps on its training from now on (a drill: see [`Shirk`]).
    pub fn shirk(&mut self, peer: &PeerId, s: Shirk) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.shirk = Some(s);
            if let Some(w) = p.w.as_mut() {
                w.shirk(s);
            }
        }
    }

    /// Why the coordinator refused `peer`'s messages and updates, in order.
    pub fn refused(&self, peer: &PeerId) -> Vec<tessera_coord::Reject> {
        let of = |e: &Event| match e {
            Event::Rejected { from, reason } if from == peer => Some(reason.clone()),
            _ => None,
        };
        self.events.iter().filter_map(of).collect()
    }

    /// The state (round, hash) a trainer holds.
    pub fn peer_state(&self, peer: &PeerId) -> Option<(u64, Hash32)> {
        self.peers.get(peer).and_then(|p| p.t.state())
    }

    /// Runs until `round` rounds are closed (or the run ends). Messages still in flight then
    /// stay queued for the next call, so scripted events land between rounds.
    pub fn run_until(&mut self, round: u64) -> Result<(), SimError> {
        let mut idle = 0;
        self.drain(round)?;
        while self.coord.round() < round && !self.coord.is_finished() {
            if !self.advance()? {
                idle += 1;
                if idle > MAX_IDLE_TICKS {
                    return Err(SimError::Stuck(self.coord.round()));
                }
            }
            self.drain(round)?;
        }
        if self.coord.is_finished() {
            self.drain(u64::MAX)?; // the last Accept and Done reach everyone
        }
        Ok(())
    }

    /// One step: the next delivery due, or else the clock moved to the next delivery or tick.
    pub fn step(&mut self) -> Result<(), SimError> {
        match self.links.pop_due(self.now) {
            Some(q) => self.deliver(q),
            None => self.advance().map(|_| ()),
        }
    }

    /// Whether the coordinator has said the run is over (and is up to say so).
    pub fn is_finished(&self) -> bool {
        self.coord_down.is_none() && self.coord.is_finished()
    }

    /// Moves the clock to the next delivery (true) or to the next heartbeat tick, which it
    /// runs (false): every live node ticks, partitions heal, a crashed coordinator restarts.
    fn advance(&mut self) -> Result<bool, SimError> {
        let tick_at = self.last_tick + self.spec.cfg.heartbeat_ms;
        if let Some(at) = self.links.next_at().filter(|&at| at < tick_at) {
            self.now = self.now.max(at);
            return Ok(true);
        }
        self.now = tick_at;
        self.last_tick = tick_at;
        self.tick_all()?;
        Ok(false)
    }

    fn tick_all(&mut self) -> Result<(), SimError> {
        self.faults_due()?;
        let alive: Vec<PeerId> = self.peers.iter().filter(|(_, p)| p.alive).map(|(k, _)| *k).collect();
        for p in alive {
            let now = self.now;
            let acts = self.peer_mut(&p).t.tick(now, 0);
            self.act(p, acts)?;
        }
        let checkers: Vec<PeerId> =
            self.validators.iter().filter(|(_, c)| c.alive).map(|(k, _)| *k).collect();
        for id in checkers {
            let now = self.now;
            let acts = self.validators.get_mut(&id).map(|c| c.v.tick(now)).unwrap_or_default();
            self.act_validator(id, acts)?;
        }
        if self.coord_down.is_none() {
            let outs = self.coord.tick(self.now);
            self.execute(outs);
        }
        Ok(())
    }

    /// Queues `d` over the simulated network (or as local work), tagged with the current
    /// incarnations of its ends. A blob transfer the network loses fails after
    /// [`FETCH_TIMEOUT_MS`], as a real fetch times out.
    fn push(&mut self, d: Delivery) {
        let (end, hop) = d.hop();
        let peer_epoch = end.map(|p| (p, self.epoch_of(&p)));
        let blob_failure = match &d {
            Delivery::BlobToPeer(to, h, _) => {
                Some(Delivery::BlobToPeer(*to, *h, Err("transfer lost".into())))
            }
            Delivery::BlobToCoord(from, h, _) => {
                Some(Delivery::BlobToCoord(*from, *h, Err("transfer lost".into())))
            }
            _ => None,
        };
        let q = Queued { d, coord_epoch: self.coord_epoch, peer_epoch };
        let copy = |d: &Delivery| d.frame_copy().expect("only frames are copied");
        let frame = matches!(q.d, Delivery::ToCoord(_) | Delivery::ToPeer(..));
        let sent =
            self.links.send(self.now, hop, q, frame.then_some(&copy as &dyn Fn(&Delivery) -> Delivery));
        if let (false, Some(fail)) = (sent, blob_failure) {
            let q = Queued { d: fail, coord_epoch: self.coord_epoch, peer_epoch };
            self.links.send_after(self.now, FETCH_TIMEOUT_MS, q);
        }
    }

    /// Queues local work that finishes `ms` from now.
    fn push_after(&mut self, ms: u64, d: Delivery) {
        let peer_epoch = d.hop().0.map(|p| (p, self.epoch_of(&p)));
        self.links.send_after(self.now, ms, Queued { d, coord_epoch: self.coord_epoch, peer_epoch });
    }

    /// The incarnation of trainer or validator `p` (0 for one never seen).
    fn epoch_of(&self, p: &PeerId) -> u64 {
        match (self.peers.get(p), self.validators.get(p)) {
            (Some(t), _) => t.epoch,
            (None, Some(v)) => v.epoch,
            (None, None) => 0,
        }
    }

    fn peer_mut(&mut self, p: &PeerId) -> &mut Peer {
        self.peers.get_mut(p).expect("a scripted peer")
    }

    /// Executes one trainer's actions in order.
    fn act(&mut self, peer: PeerId, acts: Vec<Action>) -> Result<(), SimError> {
        for a in acts {
            if !self.peers[&peer].alive {
                return Ok(());
            }
            match a {
                Action::Send(message) => {
                    let p = self.peer_mut(&peer);
                    p.seq += 1;
                    let s = Signed { sender: peer, seq: p.seq, message };
                    self.push(Delivery::ToCoord(s));
                }
                Action::Fetch { sources, hash, len, .. } => {
                    // The first source that holds it; the coordinator is the last.
                    let found = sources.iter().find_map(|s| self.fetch(&s.peer, &hash).map(|b| (s.peer, b)));
                    if found.as_ref().is_some_and(|(from, _)| *from != self.ledger_key) {
                        self.peer_fetches += 1;
                    }
                    let got = found.map(|(_, b)| b).filter(|b| b.len() as u64 == len);
                    let got = got.ok_or_else(|| "blob not available".to_string());
                    self.push(Delivery::BlobToPeer(peer, hash, got));
                }
                Action::Train { state, state_hash, unit } => {
                    let (ds, now, spec) = (self.ds, self.now, self.spec.clone());
                    let victim = match &self.peers[&peer].cheat {
                        Some(Cheat::Copy { of }) => self.peers.get(of).and_then(|v| v.last.clone()),
                        _ => None,
                    };
                    let p = self.peer_mut(&peer);
                    if p.crash_in == Some(state.round) {
                        p.alive = false;
                        return Ok(());
                    }
                    if p.miss_every.is_some_and(|n| state.round % n == n - 1) {
                        let missed = Err(tessera_coord::CoordError::State("drill: a missed round".into()));
                        let more = p.t.trained(now, state.round, missed);
                        self.act(peer, more)?;
                        continue;
                    }
                    let w = p.w.as_mut().expect("configured before training");
                    let mut got = w.train(&state, &state_hash, &unit, ds, &mut |_| {});
                    if let (Some(c), Ok(t)) = (&p.cheat, &got) {
                        let copy = victim.as_ref().filter(|v| v.0 == state.round).map(|v| v.1.as_slice());
                        let earlier = p.last.as_ref().filter(|l| l.0 < state.round).map(|l| l.1.as_slice());
                        got = c.apply(&spec, &state, t.clone(), Loot { copy, earlier });
                        if let Ok(t) = &got {
                            w.committed_instead(t); // it answers challenges for what it sent
                        }
                    }
                    if let Ok(t) = &got {
                        p.last = Some((t.round, t.update.clone()));
                    }
                    if p.train_ms > 0 {
                        let ms = p.train_ms;
                        self.push_after(ms, Delivery::Trained(peer, state.round, got));
                        continue;
                    }
                    let more = p.t.trained(now, state.round, got);
                    self.act(peer, more)?;
                }
                Action::Reveal { round, segment } => {
                    let (ds, now) = (self.ds, self.now);
                    let p = self.peer_mut(&peer);
                    let w = p.w.as_ref().expect("configured before revealing");
                    let got = w.reveal_committed(round, segment, ds);
                    let more = p.t.revealed(now, round, got);
                    self.act(peer, more)?;
                }
                Action::Answer { round, question } => {
                    let (ds, now) = (self.ds, self.now);
                    let p = self.peer_mut(&peer);
                    if p.mute {
                        continue;
                    }
                    let w = p.w.as_mut().expect("configured before a dispute");
                    let got = w.answer(round, &question, ds);
                    let more = p.t.answered(now, round, got);
                    self.act(peer, more)?;
                }
                Action::KeepLedger(records) => self.peer_mut(&peer).kept.extend(records),
                Action::KeepBlob { hash, bytes } => {
                    assert_eq!(*blake3::hash(&bytes).as_bytes(), hash, "a kept blob is named by its hash");
                    self.peer_mut(&peer).kept_blobs.insert(hash, bytes);
                }
                Action::KeepRound(k) => {
                    self.peer_mut(&peer).kept_rounds.insert(k.round, k);
                }
                Action::Serve { hash, bytes } => {
                    let p = self.peer_mut(&peer);
                    if p.served.insert(hash, bytes).is_none() {
                        p.served_order.push_back(hash);
                    }
                    while p.served_order.len() > MAX_SERVED {
                        let old = p.served_order.pop_front().expect("non-empty");
                        p.served.remove(&old);
                    }
                }
                Action::Event(e) => {
                    match &e {
                        TrainerEvent::Configured(spec) => {
                            let p = self.peer_mut(&peer);
                            let mut w = Worker::new(spec.clone());
                            if let Some(s) = p.shirk {
                                w.shirk(s);
                            }
                            p.w = Some(w);
                        }
                        // A trainer the coordinator refuses stops, as the daemon does.
                        TrainerEvent::Fatal(TrainerError::Refused { .. }) => {
                            self.peer_mut(&peer).alive = false
                        }
                        TrainerEvent::Fatal(err) => {
                            let peer = tessera_tensor::hex(&peer[..4]);
                            return Err(SimError::Trainer { peer, err: err.clone() });
                        }
                        _ => {}
                    }
                    self.trainer_events.push((peer, e));
                }
            }
        }
        Ok(())
    }

    /// A blob from the coordinator's store or a live peer's served blobs.
    fn fetch(&self, from: &PeerId, hash: &Hash32) -> Option<Vec<u8>> {
        if *from == self.ledger_key {
            return self.blobs.get(hash).filter(|_| self.coord_down.is_none()).cloned();
        }
        if self.links.is_cut(from, self.now) {
            return None;
        }
        let p = self.peers.get(from).filter(|p| p.alive)?;
        p.served.get(hash).map(|b| b.as_ref().clone())
    }

    fn signed_by_coord(&mut self, message: Message) -> Signed {
        self.coord_seq += 1;
        Signed { sender: self.ledger_key, seq: self.coord_seq, message }
    }

    fn execute(&mut self, outs: Vec<Output>) {
        assert!(self.coord_down.is_none() || outs.is_empty(), "a crashed coordinator outputs nothing");
        for o in outs {
            self.outputs += 1;
            if self.crash_due(&o) {
                return; // the rest of the outputs die with the process
            }
            match o {
                Output::Send { to, message } => {
                    let s = self.signed_by_coord(message);
                    self.push(Delivery::ToPeer(to, s));
                }
                Output::Broadcast { message } => {
                    let s = self.signed_by_coord(message);
                    for m in self.coord.members().copied().collect::<Vec<_>>() {
                        self.push(Delivery::ToPeer(m, s.clone()));
                    }
                }
                Output::Fetch { from, hash, .. } => {
                    let got = self.fetch(&from, &hash).ok_or_else(|| "peer unreachable".to_string());
                    self.push(Delivery::BlobToCoord(from, hash, got));
                }
                Output::StoreBlob { hash, bytes } => {
                    self.blobs.insert(hash, bytes);
                }
                Output::Persist(r) => self.records.push(r),
                Output::Check(job) => {
                    let got = tessera_coord::run_check(&self.spec, self.ds, &job);
                    self.push(Delivery::Checked(job.round, job.peer, got));
                }
                Output::Score(job) => {
                    let got = tessera_coord::run_score(&self.spec, self.ds, &job);
                    self.push(Delivery::Scored(job.round, job.peer, got));
                }
                Output::Recompute(job) => {
                    let got = job.run(&self.spec, self.ds);
                    self.push(Delivery::Recomputed(job.round, job.peer, got));
                }
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    /// Delivers queued messages until none is left or `round` rounds are closed.
    fn drain(&mut self, round: u64) -> Result<(), SimError> {
        while self.coord.round() < round {
            let Some(q) = self.links.pop_due(self.now) else { break };
            self.deliver(q)?;
        }
        Ok(())
    }

    /// Hands one delivery to its recipient, unless an end of it has died since it was sent.
    fn deliver(&mut self, q: Queued<Delivery>) -> Result<(), SimError> {
        let stale_coord = q.d.via_coord() && (q.coord_epoch != self.coord_epoch || self.coord_down.is_some());
        let stale_peer = q.peer_epoch.is_some_and(|(p, e)| self.epoch_of(&p) != e);
        if stale_coord || stale_peer {
            self.links.counts.stale += 1;
            return Ok(());
        }
        match q.d {
            Delivery::ToCoord(s) => {
                let outs = self.coord.handle(self.now, s);
                self.execute(outs);
            }
            Delivery::ToPeer(to, s) if self.validators.contains_key(&to) => {
                let now = self.now;
                let acts = self.validators.get_mut(&to).filter(|c| c.alive).map(|c| c.v.handle(now, s));
                self.act_validator(to, acts.unwrap_or_default())?;
            }
            Delivery::BlobToPeer(to, hash, got) if self.validators.contains_key(&to) => {
                let now = self.now;
                let acts =
                    self.validators.get_mut(&to).filter(|c| c.alive).map(|c| c.v.fetched(now, hash, got));
                self.act_validator(to, acts.unwrap_or_default())?;
            }
            Delivery::ValidatorChecked(to, round, peer, got) => {
                let now = self.now;
                let acts = self.validators.get_mut(&to).map(|c| c.v.checked(now, round, peer, got));
                self.act_validator(to, acts.unwrap_or_default())?;
            }
            Delivery::ValidatorScored(to, key, got) => {
                let now = self.now;
                let acts = self.validators.get_mut(&to).map(|c| c.v.scored(now, key, got));
                self.act_validator(to, acts.unwrap_or_default())?;
            }
            Delivery::ValidatorAnswered(to, key, got) => {
                let now = self.now;
                let acts = self.validators.get_mut(&to).map(|c| c.v.answered(now, key, got));
                self.act_validator(to, acts.unwrap_or_default())?;
            }
            Delivery::Recomputed(round, peer, got) => {
                let outs = self.coord.recomputed(self.now, round, peer, got);
                self.execute(outs);
            }
            Delivery::ToPeer(to, s) => {
                let Some(p) = self.peers.get_mut(&to).filter(|p| p.alive) else { return Ok(()) };
                let acts = p.t.handle(self.now, s);
                self.act(to, acts)?;
            }
            Delivery::BlobToCoord(from, hash, got) => {
                let outs = self.coord.fetched(self.now, from, hash, got);
                self.execute(outs);
            }
            Delivery::Checked(round, peer, got) => {
                let outs = self.coord.checked(self.now, round, peer, got);
                self.execute(outs);
            }
            Delivery::Scored(round, peer, got) => {
                let outs = self.coord.scored(self.now, round, peer, got);
                self.execute(outs);
            }
            Delivery::BlobToPeer(to, hash, got) => {
                let Some(p) = self.peers.get_mut(&to).filter(|p| p.alive) else { return Ok(()) };
                let acts = p.t.fetched(self.now, hash, got);
                self.act(to, acts)?;
            }
            Delivery::Trained(to, round, got) => {
                let Some(p) = self.peers.get_mut(&to).filter(|p| p.alive) else { return Ok(()) };
                let acts = p.t.trained(self.now, round, got);
                self.act(to, acts)?;
            }
            Delivery::Reconnect(to) => self.reconnect(&to)?,
        }
        Ok(())
    }
}

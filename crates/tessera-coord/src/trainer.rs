//! The trainer's side of the round protocol as a sans-IO state machine. Inputs are verified
//! frames from the coordinator, fetched blobs, finished training results and ticks, each with
//! the time; outputs are [`Action`]s, executed in order by a driver: send a message, fetch a
//! blob (from whom), train a unit, serve a blob, log an event. The daemon (`tessera node`)
//! and the protocol simulator drive this one machine, so they cannot decide differently.
//!
//! What it decides:
//! - frames not signed by the coordinator, or replayed, are refused;
//! - `Welcome` configures the run once (a changed config or another dataset is fatal);
//! - a state it does not hold is fetched by hash and checked before use;
//! - an assigned unit is trained from the round's start state, and committed once trained;
//! - `Accept` closes the round with the aggregate blob; if that blob cannot be had, or this
//!   trainer did not hold the round's start, it adopts the announced checkpoint instead;
//! - every state it reaches is reported, saying whether it computed or adopted it;
//! - it follows the coordinator's ledger ([`crate::LedgerCopy::follow`]) and, with
//!   `keep_blobs`, keeps what lets its copy be audited alone ([`crate::keep`]); the run's
//!   `Finished` waits (bounded) for both to catch up.

use std::sync::Arc;

use crate::{
    Assignment, CoordError, GlobalState, Hash32, Message, PeerId, Reject, RunConfig, RunSpec, SeqWindow,
};
use crate::{Revealed, Signed, Trained};

mod closing;

/// What the driver must do, in order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Sign and send to the coordinator.
    Send(Message),
    /// Fetch blob `hash` (exactly `len` bytes) from the first of `sources` that has it, or
    /// (`split`) in parts from several of them at once; check it against its hash; then call
    /// [`Trainer::fetched`]. The coordinator is always the last source.
    Fetch {
        sources: Vec<Source>,
        hash: Hash32,
        len: u64,
        split: bool,
    },
    /// Train `unit` from `state` (see [`crate::Worker::train`]), then call [`Trainer::trained`].
    Train {
        state: Arc<GlobalState>,
        state_hash: Hash32,
        unit: Assignment,
    },
    /// Reveal segment `segment` of this trainer's commitment for `round` (see
    /// [`crate::Worker::reveal_committed`]), then call [`Trainer::revealed`].
    Reveal {
        round: u64,
        segment: usize,
    },
    /// Answer question `question` of the dispute over this trainer's commit for `round`
    /// (see [`crate::Worker::answer`]), then call [`Trainer::answered`].
    Answer {
        round: u64,
        question: tessera_wire::Question,
    },
    /// Serve this blob to whoever asks for it by hash.
    Serve {
        hash: Hash32,
        bytes: Arc<Vec<u8>>,
    },
    /// Append these ledger records, verified, to the copy kept on disk (in order).
    KeepLedger(Vec<tessera_ledger::Record>),
    /// Keep this blob (hash-checked) beside the ledger copy: the run's config or an accepted
    /// update, for `tessera audit` to recompute rounds from (only with
    /// [`TrainerConfig::keep_blobs`]).
    KeepBlob {
        hash: Hash32,
        bytes: Arc<Vec<u8>>,
    },
    /// Keep what a NoLoCo round's close needs besides its updates (with `keep_blobs`).
    KeepRound(crate::KeptRound),
    Event(TrainerEvent),
}

/// Longest a trainer whose run is over waits for its ledger copy to catch up.
pub const MAX_LEDGER_WAIT_MS: u64 = 5_000;

/// Where a blob may be fetched from: a peer at the address it serves blobs at, or (no
/// address) the coordinator, over the connection the trainer already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub peer: PeerId,
    pub addr: Option<String>,
}

/// Most peers tried for one blob besides the coordinator.
pub const MAX_SOURCES: usize = 4;

/// Things worth logging (or, for `Fatal` and `Finished`, acting on).
#[derive(Debug, Clone)]
pub enum TrainerEvent {
    /// The run's config arrived; the driver builds its [`crate::Worker`] from it.
    Configured(Arc<RunSpec>),
    Loaded {
        round: u64,
        bytes: usize,
    },
    Committed {
        round: u64,
        unit: (u64, u64),
        loss: f64,
    },
    /// This trainer reached `state_hash` after `round` rounds; `computed` is false when it
    /// took the coordinator's checkpoint instead of computing the state.
    Reported {
        round: u64,
        state_hash: Hash32,
        agrees: bool,
        computed: bool,
    },
    /// This trainer answered a spot check of `round`.
    Revealed {
        round: u64,
        segment: usize,
    },
    /// The fault drill changed the state before closing `round`.
    FaultInjected {
        round: u64,
    },
    Warning(TrainerError),
    /// The run cannot go on for this trainer.
    Fatal(TrainerError),
    /// The run is over; `computed` says whether the final state was computed here.
    Finished {
        round: u64,
        state_hash: Hash32,
        computed: bool,
    },
}

/// How long a trainer waits for `Welcome` before sending `Join` again.
pub const JOIN_RETRY_MS: u64 = 2_000;
/// `Join`s a trainer sends on one connection before it gives up (about a minute).
pub const MAX_JOIN_ATTEMPTS: u32 = 30;

/// Why the trainer refused something or could not go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainerError {
    #[error("frame refused: not signed by the coordinator")]
    NotCoordinator,
    #[error("frame refused: {0}")]
    Replay(Reject),
    #[error("the coordinator changed the run's config mid-run")]
    ConfigChanged,
    #[error("the run trains on dataset {run}, this node holds {mine} (--data-dir)")]
    WrongDataset { run: String, mine: String },
    #[error("the run's config is refused: {0}")]
    Config(String),
    #[error("unexpected message from the coordinator: {0}")]
    Unexpected(&'static str),
    #[error("message before the run's config: {0}")]
    NotConfigured(&'static str),
    #[error("checkpoint refused: {0}")]
    Checkpoint(String),
    #[error("fetching {what}: {err}")]
    Fetch { what: &'static str, err: String },
    #[error("training round {round} failed: {err}")]
    Training { round: u64, err: String },
    #[error("the coordinator refuses this node from now on (round {round}): {reason}")]
    Refused { round: u64, reason: String },
    #[error("revealing round {round}: {err}")]
    Reveal { round: u64, err: String },
    #[error("aggregate of round {round} refused: {err}; taking the checkpoint")]
    Aggregate { round: u64, err: String },
    #[error("the coordinator's ledger does not check: {0}; this node no longer trusts it")]
    Ledger(String),
    #[error("the run ended with the ledger copy at {have} of the {announced} records announced")]
    LedgerBehind { have: u64, announced: u64 },
    #[error("no Welcome from the coordinator after {attempts} Join attempts {every_ms} ms apart (it may be full, or refusing this node)")]
    NoWelcome { attempts: u32, every_ms: u64 },
}

impl TrainerError {
    /// Whether the run cannot go on for this trainer.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            TrainerError::ConfigChanged
                | TrainerError::WrongDataset { .. }
                | TrainerError::Config(_)
                | TrainerError::Refused { .. }
                | TrainerError::Ledger(_)
                | TrainerError::NoWelcome { .. }
        )
    }
}

/// Who this trainer is and what it holds.
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    pub me: PeerId,
    pub coordinator: PeerId,
    /// The manifest hash of the dataset this trainer holds.
    pub dataset: Hash32,
    /// Fault drill: corrupt one parameter before closing this round.
    pub fault_round: Option<u64>,
    /// Where this trainer serves blobs to other members (announced in `Join`).
    pub addr: Option<String>,
    /// What it locks to join (see `RunConfig::stakes`).
    pub stake: u64,
    /// Its identity's key (whose public half is `me`), to sign each committed update for
    /// the ledger; `None`: its commits are not signed.
    pub key: Option<ed25519_dalek::SigningKey>,
    /// Keep the run's config and every accepted update it hears of beside the ledger copy
    /// ([`Action::KeepBlob`]), so the copy can be audited by recomputation; a hub trainer
    /// then fetches each accepted update as well as the aggregate.
    pub keep_blobs: bool,
}

#[derive(Debug, Clone)]
struct Held {
    state: Arc<GlobalState>,
    hash: Hash32,
    computed: bool,
}

/// A state this trainer is fetching, and what to do once it holds it.
#[derive(Debug, Clone)]
struct Want {
    round: u64,
    hash: Hash32,
    train: Option<Assignment>,
    report: bool,
    finish: bool,
}

impl Want {
    /// Adds what `other` asks to be done once the state is held.
    fn absorb(&mut self, other: &Want) {
        self.train = self.train.or(other.train);
        self.report |= other.report;
        self.finish |= other.finish;
    }
}

/// A round whose close waits for blobs: a hub's aggregate, or every accepted update.
#[derive(Debug, Clone)]
struct Closing {
    round: u64,
    /// The state the coordinator announced.
    next: Hash32,
    blobs: Vec<(Hash32, Option<Vec<u8>>)>,
}

impl Closing {
    fn produces(&self, w: &Want) -> bool {
        self.round + 1 == w.round && self.next == w.hash
    }
}

/// The trainer's state machine.
pub struct Trainer {
    tc: TrainerConfig,
    window: SeqWindow,
    spec: Option<(Arc<RunSpec>, String)>,
    held: Option<Held>,
    want: Option<Want>,
    /// The round and start state of the unit being trained.
    training: Option<(u64, Hash32)>,
    /// The round of the last commit sent (the one a challenge may ask about).
    committed: Option<u64>,
    /// The round being closed, while its blobs are fetched.
    closing: Option<Closing>,
    /// Where other members serve blobs, as the coordinator last said.
    peers: std::collections::BTreeMap<PeerId, String>,
    /// This trainer's latest update, and (NoLoCo) its φ blob: not fetched back.
    own: Vec<(Hash32, Arc<Vec<u8>>)>,
    /// What to do with the state that closing the round will produce (a `RoundStart` or
    /// `Done` that overtook the aggregate): done once it is computed, not fetched.
    after_close: Option<Want>,
    round: u64,
    last_heartbeat: Option<u64>,
    /// Until the first `Welcome`: when `Join` was last sent on this connection, and how often.
    join_sent: Option<(u64, u32)>,
    finished: bool,
    /// The run is over but the ledger copy (or what it keeps) is still catching up: the `Finished` event waits
    /// (at most [`MAX_LEDGER_WAIT_MS`] from the first tick after it), so the copy a node keeps
    /// ends with the run's last records.
    pending_finish: Option<(u64, Hash32, bool)>,
    finish_wait_since: Option<u64>,
    /// Its verified copy of the coordinator's ledger.
    ledger: crate::LedgerCopy,
    keeper: crate::keep::Keeper,
    out: Vec<Action>,
}

impl Trainer {
    pub fn new(tc: TrainerConfig) -> Self {
        let me = tc.key.as_ref().map(|k| k.verifying_key().to_bytes());
        assert!(me.is_none_or(|k| k == tc.me), "the signing key is the trainer's identity");
        Self {
            ledger: crate::LedgerCopy::new(&tc.coordinator),
            keeper: crate::keep::Keeper::new(tc.keep_blobs),
            tc,
            window: SeqWindow::default(),
            spec: None,
            held: None,
            want: None,
            training: None,
            committed: None,
            closing: None,
            peers: Default::default(),
            own: Vec::new(),
            after_close: None,
            round: 0,
            last_heartbeat: None,
            join_sent: None,
            finished: false,
            pending_finish: None,
            finish_wait_since: None,
            out: Vec::new(),
        }
    }

    /// The round and hash of the state held, if any.
    pub fn state(&self) -> Option<(u64, Hash32)> {
        self.held.as_ref().map(|h| (h.state.round, h.hash))
    }

    /// What it is doing now (for a status page; see [`crate::Phase`]).
    pub fn phase(&self) -> crate::Phase {
        use crate::Phase;
        match (&self.spec, &self.want, self.training, &self.closing) {
            _ if self.finished || self.pending_finish.is_some() => Phase::Done,
            (None, ..) => Phase::Joining,
            (_, Some(w), ..) => Phase::Syncing { round: w.round },
            (_, _, Some((round, _)), _) => Phase::Training { round },
            (_, _, _, Some(c)) => Phase::Closing { round: c.round },
            _ => Phase::Waiting { round: Some(self.held.as_ref().map_or(self.round, |h| h.state.round)) },
        }
    }

    /// A (new) connection to the coordinator: ask to join. Fetches in flight on an old
    /// connection are answered with errors by the driver.
    pub fn connected(&mut self, now_ms: u64) -> Vec<Action> {
        self.join_sent = Some((now_ms, 1));
        self.send_join();
        self.take()
    }

    fn send_join(&mut self) {
        let addrs = self.tc.addr.iter().cloned().collect();
        self.out.push(Action::Send(Message::Join { addrs, stake: self.tc.stake }));
    }

    /// Before the first `Welcome`, `Join` is sent again every [`JOIN_RETRY_MS`] (a coordinator
    /// may drop a frame it has no room for), and after [`MAX_JOIN_ATTEMPTS`] the trainer gives
    /// up with [`TrainerError::NoWelcome`] rather than wait for ever.
    fn retry_join(&mut self, now_ms: u64) {
        let Some((at, attempts)) = self.join_sent else { return };
        if self.spec.is_some() || now_ms.saturating_sub(at) < JOIN_RETRY_MS {
            return;
        }
        assert!(attempts >= 1, "a Join was sent");
        if attempts >= MAX_JOIN_ATTEMPTS {
            self.join_sent = None;
            let e = TrainerError::NoWelcome { attempts, every_ms: JOIN_RETRY_MS };
            self.out.push(Action::Event(TrainerEvent::Fatal(e)));
            return;
        }
        self.join_sent = Some((now_ms, attempts + 1));
        self.send_join();
    }

    /// Time passed; `step` is the inner step of the unit being trained. Sends a heartbeat
    /// when one is due.
    pub fn tick(&mut self, now_ms: u64, step: u64) -> Vec<Action> {
        self.retry_join(now_ms);
        let again = self.keeper.tick(now_ms);
        self.out.extend(again);
        if let Some((round, hash, computed)) = self.pending_finish {
            let since = *self.finish_wait_since.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= MAX_LEDGER_WAIT_MS {
                let (have, announced) = (self.ledger.ledger().head().0, self.ledger.announced_len());
                if have < announced {
                    self.warn(TrainerError::LedgerBehind { have, announced });
                }
                if let n @ 1.. = self.keeper.in_flight() {
                    let err = format!("the run ended with {n} still being fetched");
                    self.warn(TrainerError::Fetch { what: "blobs to keep", err });
                }
                self.finished_now(round, hash, computed);
            }
        }
        if let Some((spec, _)) = &self.spec {
            let due = self.last_heartbeat.is_none_or(|t| now_ms.saturating_sub(t) >= spec.cfg.heartbeat_ms);
            if due && !self.finished {
                self.last_heartbeat = Some(now_ms);
                self.out.push(Action::Send(Message::Heartbeat { round: self.round, step }));
            }
        }
        self.take()
    }

    /// A verified frame arrived from the transport.
    pub fn handle(&mut self, _now_ms: u64, s: Signed) -> Vec<Action> {
        if s.sender != self.tc.coordinator {
            self.warn(TrainerError::NotCoordinator);
        } else if let Err(e) = self.window.check(s.seq) {
            self.warn(TrainerError::Replay(e));
        } else if let Err(e) = self.on_message(s.message) {
            self.out.push(Action::Event(if e.is_fatal() {
                TrainerEvent::Fatal(e)
            } else {
                TrainerEvent::Warning(e)
            }));
        }
        self.take()
    }

    /// The driver fetched (or failed to fetch) a blob asked for by [`Action::Fetch`].
    pub fn fetched(&mut self, now_ms: u64, hash: Hash32, got: Result<Vec<u8>, String>) -> Vec<Action> {
        let got = match self.keeper.fetched(now_ms, &hash, got) {
            crate::keep::Fetched::Not(got) => got,
            crate::keep::Fetched::Kept(acts) => {
                let kept = acts.iter().find_map(|a| match a {
                    Action::KeepBlob { bytes, .. } => Some(bytes.clone()),
                    _ => None,
                });
                self.out.extend(acts);
                self.finish_if_caught_up();
                // The close may wait for it too (a NoLoCo partner's Δ, fetched twice): it
                // takes the first copy to arrive.
                let closes = self
                    .closing
                    .as_ref()
                    .is_some_and(|c| c.blobs.iter().any(|b| b.0 == hash && b.1.is_none()));
                match kept {
                    Some(b) if closes => Ok(b.to_vec()),
                    _ => return self.take(),
                }
            }
            crate::keep::Fetched::Failed(err) => {
                self.warn(TrainerError::Fetch { what: "a blob to keep", err });
                self.finish_if_caught_up();
                return self.take();
            }
        };
        if self.want.as_ref().is_some_and(|w| w.hash == hash) {
            let w = self.want.take().expect("checked");
            self.on_state(w, got);
        } else if let Some(c) = self.closing.as_mut() {
            let Some(slot) = c.blobs.iter_mut().find(|(h, b)| *h == hash && b.is_none()) else {
                return self.take();
            };
            match got {
                Ok(b) => {
                    slot.1 = Some(b);
                    self.try_close();
                }
                Err(err) => {
                    let (round, next) = (c.round, c.next);
                    self.closing = None;
                    self.warn(TrainerError::Fetch { what: "an update of the round", err });
                    self.adopt(round + 1, next);
                    self.after_close_done();
                }
            }
        }
        self.take()
    }

    /// The driver finished training the unit asked for by [`Action::Train`].
    pub fn trained(&mut self, _now_ms: u64, round: u64, got: Result<Trained, CoordError>) -> Vec<Action> {
        match got {
            Ok(t) if self.training == Some((t.round, t.start_state)) => {
                self.training = None;
                self.own = vec![(t.update_hash, t.update.clone())];
                if self.pairs() {
                    // Partners fetch this replica's φ along with its Δ.
                    let held = self.held.as_ref().filter(|h| h.hash == t.start_state);
                    if let Some(h) = held {
                        let b = Arc::new(self.spec_ref().outer.phi_message(t.round, &h.state.theta));
                        self.own.push((*blake3::hash(&b).as_bytes(), b));
                    }
                }
                for (hash, bytes) in self.own.clone() {
                    self.out.push(Action::Serve { hash, bytes });
                }
                let mut commit = t.commit();
                if let (Some(k), Message::Commit { sig, .. }) = (&self.tc.key, &mut commit) {
                    *sig = tessera_ledger::sign_update(k, t.round, &t.update_hash);
                }
                self.out.push(Action::Send(commit));
                self.committed = Some(t.round);
                let e = TrainerEvent::Committed { round: t.round, unit: t.unit, loss: t.mean_loss };
                self.out.push(Action::Event(e));
            }
            Ok(_) => {} // a unit of a round that has moved on
            Err(e) => {
                self.training = None;
                self.warn(TrainerError::Training { round, err: e.to_string() });
            }
        }
        self.take()
    }

    /// The driver revealed what [`Action::Reveal`] asked for.
    pub fn revealed(&mut self, _now_ms: u64, round: u64, got: Result<Revealed, CoordError>) -> Vec<Action> {
        match got {
            Ok(r) => {
                assert_eq!(r.round, round, "the reveal answers the challenge's round");
                self.out.push(Action::Serve { hash: r.blob_hash, bytes: r.blob });
                self.out.push(Action::Send(r.message));
                self.out.push(Action::Event(TrainerEvent::Revealed { round, segment: r.segment }));
            }
            Err(e) => self.warn(TrainerError::Reveal { round, err: e.to_string() }),
        }
        self.take()
    }

    /// The driver answered what [`Action::Answer`] asked; `Err` leaves the question
    /// unanswered (the dispute is then lost by timeout).
    pub fn answered(
        &mut self,
        _now_ms: u64,
        round: u64,
        got: Result<crate::Answered, CoordError>,
    ) -> Vec<Action> {
        match got {
            Ok(a) => {
                if let (Some(bytes), tessera_wire::Answer::Blob { hash, .. }) = (a.blob, &a.answer) {
                    self.out.push(Action::Serve { hash: *hash, bytes });
                }
                let (question, answer) = (a.question, a.answer);
                let answer = Message::DisputeAnswer { round, peer: self.tc.me, question, answer };
                self.out.push(Action::Send(answer));
            }
            Err(e) => self.warn(TrainerError::Reveal { round, err: e.to_string() }),
        }
        self.take()
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn warn(&mut self, e: TrainerError) {
        self.out.push(Action::Event(TrainerEvent::Warning(e)));
    }

    fn on_message(&mut self, m: Message) -> Result<(), TrainerError> {
        if !matches!(m, Message::Welcome { .. }) && self.spec.is_none() {
            return Err(TrainerError::NotConfigured(m.kind()));
        }
        self.follow_ledger(&m)?;
        match m {
            // The checkpoint is the shared state, or (NoLoCo) this trainer's replica.
            Message::Welcome { round, checkpoint, config, peers, .. } => {
                self.configure(config)?;
                self.learn(peers.into_iter());
                self.need(Want { round, hash: checkpoint, train: None, report: false, finish: false });
            }
            Message::RoundStart { round, state_hash, assignments, members, replicas, addrs, .. } => {
                self.round = self.round.max(round);
                let start = match replicas.is_empty() {
                    true => Some(state_hash),
                    false => members.iter().position(|p| *p == self.tc.me).map(|i| replicas[i]),
                };
                if self.pairs() {
                    self.keeper.started(round, &members);
                }
                self.learn(members.into_iter().zip(addrs));
                let unit = assignments.iter().find(|a| a.peer == self.tc.me).copied();
                if let (Some(a), Some(hash)) = (unit, start) {
                    self.need(Want { round, hash, train: Some(a), report: false, finish: false });
                }
            }
            Message::Accept { round, accepted, aggregate, updates, next_state_hash, pairs, .. } => {
                match pairs {
                    Some(p) if self.pairs() => self.on_accept_pairs(round, accepted, updates, p),
                    None if !self.pairs() => {
                        self.on_accept(round, accepted, aggregate, updates, next_state_hash)
                    }
                    _ => return Err(TrainerError::Unexpected("an Accept of another algorithm")),
                }
            }
            Message::CheckpointPointer { round, checkpoint, .. } => {
                self.need(Want { round, hash: checkpoint, train: None, report: false, finish: false });
            }
            Message::Done { round, state_hash } => {
                let hash = self.final_state(round).unwrap_or(state_hash);
                self.need(Want { round, hash, train: None, report: false, finish: true });
            }
            Message::Challenge { round, segment } if self.committed == Some(round) => {
                self.out.push(Action::Reveal { round, segment: segment as usize });
            }
            Message::Challenge { .. } => return Err(TrainerError::Unexpected("a challenge of no commit")),
            Message::DisputeAsk { round, peer, question }
                if self.committed == Some(round) && peer == self.tc.me =>
            {
                self.out.push(Action::Answer { round, question });
            }
            Message::DisputeAsk { .. } => return Err(TrainerError::Unexpected("a dispute of no commit")),
            Message::Refused { round, reason } => return Err(TrainerError::Refused { round, reason }),
            Message::LedgerRecords { .. } => {} // followed above
            other => return Err(TrainerError::Unexpected(other.kind())),
        }
        Ok(())
    }

    /// Follows the coordinator's ledger with `m`: keeps what it verified and asks for the
    /// records it lacks.
    fn follow_ledger(&mut self, m: &Message) -> Result<(), TrainerError> {
        let f = self.ledger.follow(m);
        // What was verified is kept even when a later record proves the coordinator false.
        if !f.keep.is_empty() {
            let coordinator = Source { peer: self.tc.coordinator, addr: None };
            let evidence = self.keeper.evidence(&f.keep, coordinator);
            self.out.push(Action::KeepLedger(f.keep));
            self.out.extend(evidence);
        }
        if let Some(from) = f.next.map_err(TrainerError::Ledger)? {
            self.out.push(Action::Send(Message::LedgerFetch { from }));
        }
        self.finish_if_caught_up();
        Ok(())
    }

    /// Resumes the ledger copy from `records` kept on disk by an earlier run of this node
    /// (before it connects); `Err` if they do not verify against the coordinator's key.
    pub fn resume_ledger(&mut self, records: &[tessera_ledger::Record]) -> Result<(), TrainerError> {
        assert_eq!(self.ledger.ledger().head().0, 0, "a copy is resumed before anything is fetched");
        self.ledger =
            crate::LedgerCopy::resume(&self.tc.coordinator, records).map_err(TrainerError::Ledger)?;
        Ok(())
    }

    /// The verified copy of the coordinator's ledger.
    pub fn ledger(&self) -> &tessera_ledger::Ledger {
        self.ledger.ledger()
    }

    fn configure(&mut self, text: String) -> Result<(), TrainerError> {
        if let Some(spec) = configure(&self.spec, text.clone(), &self.tc.dataset)? {
            self.out.push(Action::Event(TrainerEvent::Configured(spec.clone())));
            self.out.extend(self.keeper.config(&text));
            self.spec = Some((spec, text));
        }
        Ok(())
    }

    fn spec_ref(&self) -> &Arc<RunSpec> {
        &self.spec.as_ref().expect("configured before any state is needed").0
    }

    /// NoLoCo: the run ends with this trainer's own replica after `round` rounds (held, or
    /// being computed by the close in hand), not the consensus the coordinator announces.
    fn final_state(&self, round: u64) -> Option<Hash32> {
        if !self.pairs() {
            return None;
        }
        match (&self.held, &self.closing) {
            (_, Some(c)) if c.round + 1 == round => Some(c.next),
            (Some(h), _) if h.state.round == round => Some(h.hash),
            _ => None,
        }
    }

    /// Whether the run is NoLoCo's (each trainer its own replica, exchanged in pairs).
    fn pairs(&self) -> bool {
        self.spec.as_ref().is_some_and(|s| s.0.outer.exchange() == tessera_sync::Exchange::Pairs)
    }

    /// Makes sure this trainer holds state `w.hash` after `w.round` rounds, fetching it if
    /// not, then does what `w` asks.
    fn need(&mut self, w: Want) {
        if self.state() == Some((w.round, w.hash)) {
            return self.then(w);
        }
        if self.closing.as_ref().is_some_and(|c| c.produces(&w)) {
            // Closing the round in hand will compute this state: wait for it, do not fetch it.
            match self.after_close.as_mut() {
                Some(old) => old.absorb(&w),
                None => self.after_close = Some(w),
            }
            return;
        }
        if let Some(old) = self.want.as_mut().filter(|o| o.hash == w.hash && o.round == w.round) {
            old.absorb(&w); // already being fetched: add what is to be done once it is here
            return;
        }
        let len = self.spec_ref().state_len as u64;
        // Any member may hold the state: fetch parts from several at once, and the rest (or
        // all of it, if a part fails) from the coordinator.
        // (NoLoCo: a replica is this trainer's own; only the coordinator holds it.)
        let holders: Vec<PeerId> = match self.pairs() {
            true => Vec::new(),
            false => self.peers.keys().copied().collect(),
        };
        let sources = self.sources(&holders);
        let split = sources.len() > 1;
        self.out.push(Action::Fetch { sources, hash: w.hash, len, split });
        self.want = Some(w);
    }

    fn on_state(&mut self, w: Want, got: Result<Vec<u8>, String>) {
        let loaded = match got {
            Err(err) => Err(TrainerError::Fetch { what: "the checkpoint", err }),
            Ok(b) => match self.spec_ref().decode_state(&b, &w.hash) {
                Ok(g) if g.round == w.round => Ok((g, b)),
                Ok(g) => {
                    Err(TrainerError::Checkpoint(format!("it is of round {}, not {}", g.round, w.round)))
                }
                Err(e) => Err(TrainerError::Checkpoint(e.to_string())),
            },
        };
        match loaded {
            Ok((g, b)) => {
                let bytes = b.len();
                if self.closing.as_ref().is_some_and(|c| c.round < g.round) {
                    self.closing = None; // the loaded state is past the round being closed
                    self.after_close = None;
                }
                self.out.push(Action::Serve { hash: w.hash, bytes: Arc::new(b) }); // as fetched
                self.held = Some(Held { state: Arc::new(g), hash: w.hash, computed: false });
                self.out.push(Action::Event(TrainerEvent::Loaded { round: w.round, bytes }));
                self.then(w);
            }
            Err(e) => {
                self.warn(e);
                if w.finish {
                    // The run is over; report where it ended even without the state.
                    self.finish(w.round, w.hash, false);
                }
            }
        }
    }

    /// `w`'s state is held: train, report or finish as asked.
    fn then(&mut self, w: Want) {
        let held = self.held.clone().expect("then() runs once the state is held");
        assert_eq!((held.state.round, held.hash), (w.round, w.hash), "the state asked for");
        if w.report {
            self.report(w.round, w.hash, true, held.computed);
        }
        if let Some(unit) = w.train {
            if self.training != Some((w.round, w.hash)) {
                self.training = Some((w.round, w.hash));
                self.out.push(Action::Train { state: held.state, state_hash: w.hash, unit });
            }
        }
        if w.finish {
            self.finish(w.round, w.hash, held.computed);
        }
    }

    /// The run is over: finished now, or once the ledger copy and the blobs being fetched
    /// to keep are in (at most [`MAX_LEDGER_WAIT_MS`] after the next tick).
    fn finish(&mut self, round: u64, state_hash: Hash32, computed: bool) {
        match self.catching_up() {
            true => self.pending_finish = Some((round, state_hash, computed)),
            false => self.finished_now(round, state_hash, computed),
        }
    }

    fn catching_up(&self) -> bool {
        self.ledger.behind() || self.keeper.in_flight() > 0
    }

    fn finish_if_caught_up(&mut self) {
        if let (Some((round, hash, computed)), false) = (self.pending_finish, self.catching_up()) {
            self.finished_now(round, hash, computed);
        }
    }

    fn finished_now(&mut self, round: u64, state_hash: Hash32, computed: bool) {
        self.pending_finish = None;
        if !self.finished {
            self.finished = true;
            self.out.push(Action::Event(TrainerEvent::Finished { round, state_hash, computed }));
        }
    }

    /// Remembers where members serve blobs (bounded by the wire's member limit).
    /// The coordinator's latest word on who the members are replaces the last: a member that
    /// left is not tried again (a dead address would cost a connect timeout per fetch).
    fn learn(&mut self, peers: impl Iterator<Item = (PeerId, String)>) {
        self.peers.clear();
        let me = self.tc.me;
        let live = peers.filter(|(p, a)| *p != me && !a.is_empty()).take(tessera_wire::MAX_MEMBERS);
        self.peers.extend(live);
        assert!(!self.peers.contains_key(&me), "a trainer never fetches from itself");
    }

    /// Up to [`MAX_SOURCES`] of `peers` whose address is known, then the coordinator.
    fn sources(&self, peers: &[PeerId]) -> Vec<Source> {
        let mut v: Vec<Source> = peers
            .iter()
            .filter(|p| **p != self.tc.me && **p != self.tc.coordinator)
            .filter_map(|p| self.peers.get(p).map(|a| Source { peer: *p, addr: Some(a.clone()) }))
            .take(MAX_SOURCES)
            .collect();
        v.push(Source { peer: self.tc.coordinator, addr: None });
        v
    }

    fn report(&mut self, round: u64, state_hash: Hash32, agrees: bool, computed: bool) {
        self.out.push(Action::Event(TrainerEvent::Reported { round, state_hash, agrees, computed }));
        self.out.push(Action::Send(Message::StateReport { round, state_hash, computed }));
    }
}

/// A node's side of `Welcome`'s config: `None` when `held` is already this config (a changed
/// one is fatal), else the run it describes, refused if it trains on another dataset than
/// `dataset` (the trainer's and the validator's machines both configure so).
pub(crate) fn configure(
    held: &Option<(Arc<RunSpec>, String)>,
    text: String,
    dataset: &Hash32,
) -> Result<Option<Arc<RunSpec>>, TrainerError> {
    if let Some((_, old)) = held {
        return if *old == text { Ok(None) } else { Err(TrainerError::ConfigChanged) };
    }
    let cfg = RunConfig::from_toml(&text).map_err(|e| TrainerError::Config(e.to_string()))?;
    let mine = tessera_tensor::hex(dataset);
    if !cfg.dataset.is_empty() && cfg.dataset != mine {
        return Err(TrainerError::WrongDataset { run: cfg.dataset, mine });
    }
    Ok(Some(Arc::new(RunSpec::new(cfg).map_err(|e| TrainerError::Config(e.to_string()))?)))
}

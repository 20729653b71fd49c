//! The coordinator's round state machine. Inputs are verified frames, fetched blobs and clock
//! ticks, each with the current time; outputs are messages, blob fetches, blobs to store,
//! records to persist and events to log, to be executed in order.

use std::collections::{BTreeMap, VecDeque};

use std::sync::Arc;

use tessera_sync::{decode_update, Contribute, Encoded, Exchange, Expected};
use tessera_wire::{Assignment, Message};

use crate::check::Outcome;
use crate::screen::{Fingerprint, Kept, Screen, Screened, Screening};
mod checking;
mod disputes;
mod ledgering;
mod liveness;
mod outputs;
mod round_checks;
mod scoring;
mod slots;

use liveness::silent;
use slots::{Slot, Slots};

pub use disputes::RecomputeJob;
pub use outputs::{ClosedRound, Disputed, Event, Output, Record, Restored};

pub use checking::MAX_VALIDATORS;

use round_checks::Checks;

use crate::{
    CoordError, GlobalState, Hash32, PeerId, Reject, Replicas, RunConfig, RunSpec, SeqWindow, Signed,
};

/// Most peers whose sequence numbers are remembered (members and departed peers).
pub const MAX_KNOWN_PEERS: usize = 65_536;
/// Most past state hashes kept for checking state reports.
pub const MAX_HISTORY: usize = 4096;
/// Most units of work waiting to be reassigned.
pub const MAX_BACKLOG: usize = 65_536;
/// Rounds in a row a member may be assigned a unit and commit nothing before it is dropped
/// from the run (it may join again).
pub const MAX_MISSED_ROUNDS: u32 = 3;
/// The quantile of the round's members' known round times that the deadline is `slack ×`.
pub const DEADLINE_QUANTILE: f64 = 0.75;
/// Weight of the newest observation in a peer's round-time average.
const SPEED_ALPHA: f64 = 0.5;
/// How much a member's known round time grows when it misses a round (see `count_missed`).
pub const MISS_GROWTH: f64 = 2.0;

/// A unit of data: H inner steps on the batches of `(data_round, slot)`.
pub type Unit = (u64, u64);

struct OpenRound {
    round: u64,
    start: Message,
    assignments: Vec<Assignment>,
    started_ms: u64,
    deadline_at: u64,
    slots: Slots,
    /// How many of the round's members have a known round time (the deadline adapts once
    /// half of them do).
    known: usize,
    /// The peers in the order their commits arrived (a copy comes after its original).
    order: Vec<PeerId>,
    checks: Checks,
    /// Accepted updates whose score is awaited, and the start state they are scored against.
    scoring: BTreeMap<PeerId, scoring::Scoring>,
    start_state: Option<Arc<GlobalState>>,
    /// With several validators: the (validator, peer) scores still awaited for Yuma, and the
    /// signed scores in, by validator and peer.
    weighing: std::collections::BTreeSet<(PeerId, PeerId)>,
    weights: BTreeMap<PeerId, BTreeMap<PeerId, tessera_ledger::SignedScore>>,
    /// Scores of updates drawn for an audit: the coordinator's own, and other validators'
    /// claims waiting for it (refereed as the first scorer's are).
    own_scores: BTreeMap<PeerId, crate::Score>,
    score_claims: BTreeMap<PeerId, Vec<(PeerId, crate::Score)>>,
    /// Each committed update's signature by its trainer (for the ledger's `RoundClosed`).
    sigs: BTreeMap<PeerId, Vec<u8>>,
    /// Re-opened by a restarted coordinator: its commits were mostly trained before the
    /// restart and resent on reconnecting, so their arrival times say nothing of a speed.
    reopened: bool,
}

/// The coordinator.
pub struct Coordinator {
    cfg: RunConfig,
    spec: Arc<RunSpec>,
    /// The shared state (NoLoCo: the consensus, the mean of the replicas).
    global: GlobalState,
    state_hash: Hash32,
    /// NoLoCo: each member's own replica.
    replicas: Replicas,
    history: BTreeMap<u64, Hash32>,
    /// Members and when each was last heard from.
    members: BTreeMap<PeerId, u64>,
    /// No member can be silent before this time (the earliest last contact plus the
    /// silence allowed, kept by `heard`), so `advance` scans the members only from then on.
    next_silence: u64,
    /// Where each member serves blobs (its first `Join` address), for the others to fetch from.
    addrs: BTreeMap<PeerId, String>,
    seqs: BTreeMap<PeerId, SeqWindow>,
    speed_ms: BTreeMap<PeerId, f64>,
    /// Members' rounds in a row assigned and not committed (members only).
    missed: BTreeMap<PeerId, u32>,
    /// Members that joined (again) during the open round: a restarted trainer has lost the
    /// states a dispute would ask about (cleared when a round starts; at most
    /// `MAX_KNOWN_PEERS`).
    rejoined: std::collections::BTreeSet<PeerId>,
    /// The peers that reported the run's final state (each once, however often it reports).
    final_reports: std::collections::BTreeSet<PeerId>,
    backlog: VecDeque<Unit>,
    /// Copy and replay detection's memory of earlier updates.
    screen: Screen,
    /// The run's sample coordinates, for every update's fingerprint.
    sampler: tessera_verify::Sampler,
    open: Option<OpenRound>,
    /// The checker's secret: which commits are spot-checked, and where, is drawn from it.
    secret: Hash32,
    /// Trainers and validators proven to have cheated, refused from then on (with the round
    /// caught in).
    banned: BTreeMap<PeerId, u64>,
    /// Validators and when each was last heard from (never members: they train nothing).
    validators: BTreeMap<PeerId, u64>,
    /// Tasks handed to validators so far (the round-robin's position).
    delegated: usize,
    /// Operators per inner step, counted at the first dispute.
    ops: Option<u64>,
    /// The ledger, once the driver hands it over, and the open round's scores (millionths
    /// of the held-out gain) for its `RoundClosed`.
    kept: Option<ledgering::Kept>,
    round_scores: BTreeMap<PeerId, i64>,
    finished: bool,
    out: Vec<Output>,
}

impl Coordinator {
    /// A coordinator for a fresh run, starting from the run's initial state. `secret` draws
    /// the spot checks: it must be unknown to the trainers (the daemon derives it from the
    /// coordinator's key).
    pub fn new(spec: Arc<RunSpec>, secret: Hash32) -> Result<Self, CoordError> {
        let state = spec.initial_state();
        let r = Restored {
            state,
            backlog: Vec::new(),
            open: None,
            history: Vec::new(),
            replicas: Vec::new(),
            banned: Vec::new(),
        };
        Self::restore(spec, r, 0, secret)
    }

    /// A coordinator resuming from what it persisted; an announced round is re-opened with
    /// the same assignments, its members given `silence_ms` from `now_ms` to reconnect.
    pub fn restore(spec: Arc<RunSpec>, r: Restored, now_ms: u64, secret: Hash32) -> Result<Self, CoordError> {
        if r.state.layout_hash != spec.layout_hash
            || r.state.theta.len() != spec.n()
            || r.state.buffers.len() != spec.outer.buffers()
        {
            return Err(CoordError::State("the state does not fit this run's model and algorithm".into()));
        }
        if r.replicas.iter().any(|(_, s)| s.round != r.state.round || s.theta.len() != spec.n()) {
            return Err(CoordError::State("a replica is not of the state's round and model".into()));
        }
        let cfg = spec.cfg.clone();
        let draws = spec.cfg.h().saturating_mul(spec.cfg.batch as u64);
        let screen = Screen::new(spec.outer.algorithm(), draws);
        let sampler = tessera_verify::Sampler::new(spec.expected().n); // an update's values
        let state_hash = r.state.hash();
        let mut history: BTreeMap<u64, Hash32> = r.history.into_iter().collect();
        history.insert(r.state.round, state_hash);
        let mut c = Self {
            finished: r.state.round >= cfg.rounds,
            cfg,
            spec,
            global: r.state,
            state_hash,
            replicas: Replicas::restore(r.replicas),
            screen,
            sampler,
            history,
            members: BTreeMap::new(),
            next_silence: 0,
            addrs: BTreeMap::new(),
            seqs: BTreeMap::new(),
            speed_ms: BTreeMap::new(),
            missed: BTreeMap::new(),
            rejoined: Default::default(),
            final_reports: Default::default(),
            backlog: r.backlog.into_iter().collect(),
            open: None,
            secret,
            banned: r.banned.into_iter().collect(),
            validators: BTreeMap::new(),
            delegated: 0,
            ops: None,
            kept: None,
            round_scores: BTreeMap::new(),
            out: Vec::new(),
        };
        if let Some(start @ Message::RoundStart { .. }) = r.open {
            c.reopen(start, now_ms);
        }
        Ok(c)
    }

    fn reopen(&mut self, start: Message, now_ms: u64) {
        let Message::RoundStart { round, ref assignments, deadline_ms, .. } = start else { return };
        if round != self.global.round {
            return; // announced before a close that was persisted: stale
        }
        // The round took its units from the backlog the last close left, which is the one
        // restored: they are the round's now, or each would be trained twice.
        let before = self.backlog.len();
        self.backlog.retain(|u| !assignments.iter().any(|a| (a.data_round, a.slot) == *u));
        assert!(self.backlog.len() + assignments.len() >= before, "only the round's own units leave");
        // Their last contact is dated into the future: a grace to reconnect.
        let grace = self.cfg.rejoin_grace_ms;
        for a in assignments {
            self.heard(a.peer, now_ms + grace);
            if self.pairs() {
                // Round 0 has no Accept to restore replicas from: they start as the consensus.
                self.replicas.ensure(a.peer, &self.global);
            }
        }
        self.open = Some(OpenRound {
            round,
            assignments: assignments.clone(),
            slots: Slots::waiting(assignments.iter().map(|a| a.peer)),
            known: 0,
            started_ms: now_ms + grace,
            deadline_at: now_ms + grace + deadline_ms,
            start,
            order: Vec::new(),
            checks: Checks::new(round),
            scoring: Default::default(),
            weighing: Default::default(),
            weights: Default::default(),
            own_scores: Default::default(),
            score_claims: Default::default(),
            sigs: Default::default(),
            start_state: None,
            reopened: true,
        });
    }

    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    pub fn spec(&self) -> &Arc<RunSpec> {
        &self.spec
    }

    /// Rounds completed.
    pub fn round(&self) -> u64 {
        self.global.round
    }

    pub fn state_hash(&self) -> Hash32 {
        self.state_hash
    }

    pub fn global(&self) -> &GlobalState {
        &self.global
    }

    /// NoLoCo: every member's replica.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    fn pairs(&self) -> bool {
        self.spec.outer.exchange() == Exchange::Pairs
    }

    /// The state `peer` trains from: its replica (NoLoCo) or the shared state.
    fn start_of(&self, peer: &PeerId) -> Option<Hash32> {
        if self.pairs() {
            self.replicas.hash_of(peer)
        } else {
            Some(self.state_hash)
        }
    }

    /// Whether `p` is a member or a validator of the run now (who may fetch its blobs).
    pub fn has_joined(&self, p: &PeerId) -> bool {
        self.members.contains_key(p) || self.validators.contains_key(p)
    }

    pub fn members(&self) -> impl Iterator<Item = &PeerId> {
        self.members.keys()
    }

    /// When `p` (a member or validator) was last heard from, on the caller's clock.
    pub fn last_heard(&self, p: &PeerId) -> Option<u64> {
        self.members.get(p).or_else(|| self.validators.get(p)).copied()
    }

    /// What a round of `p`'s takes, as learned from its commits (ms), if known.
    pub fn speed_ms(&self, p: &PeerId) -> Option<f64> {
        self.speed_ms.get(p).copied()
    }

    /// The open round's start and deadline, on the caller's clock (none between rounds).
    pub fn open_window(&self) -> Option<(u64, u64)> {
        self.open.as_ref().map(|o| (o.started_ms, o.deadline_at))
    }

    /// The open round's assignments (none between rounds).
    pub fn assignments(&self) -> &[Assignment] {
        self.open.as_ref().map_or(&[], |o| o.assignments.as_slice())
    }

    pub fn backlog(&self) -> impl Iterator<Item = &Unit> {
        self.backlog.iter()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The state hash after `round` rounds, if still remembered.
    pub fn state_at(&self, round: u64) -> Option<Hash32> {
        self.history.get(&round).copied()
    }

    /// A verified frame arrived.
    pub fn handle(&mut self, now_ms: u64, signed: Signed) -> Vec<Output> {
        let from = signed.sender;
        if let Err(reason) = self.admit(now_ms, &signed) {
            self.event(Event::Rejected { from, reason });
        }
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }

    /// The driver fetched (or failed to fetch) a blob asked for by [`Output::Fetch`].
    pub fn fetched(
        &mut self,
        now_ms: u64,
        from: PeerId,
        hash: Hash32,
        got: Result<Vec<u8>, String>,
    ) -> Vec<Output> {
        if self.dispute_blob(from, hash, &got) || self.reveal_blob(from, hash, &got) {
            self.advance(now_ms);
            return std::mem::take(&mut self.out);
        }
        let mut decoded = None; // the values, for scoring
        let verdict = match got {
            Err(e) => Slot::Rejected(Reject::FetchFailed(e)),
            // The committed length was checked to be the run's; the blob must be that long.
            Ok(b) if b.len() as u64 != self.spec.update_len => {
                Slot::Rejected(Reject::BadLength { got: b.len() as u64, want: self.spec.update_len })
            }
            Ok(b) if blake3::hash(&b).as_bytes() != &hash => Slot::Rejected(Reject::HashMismatch),
            Ok(b) => match decode_update(&b, self.spec.expected()) {
                Ok(d) if d.header.round == self.global.round => {
                    // Stored at the close: peers fetch them (all-gather), and `tessera audit`
                    // recomputes each round's aggregate from them. The values are not held.
                    let norm = match self.spec.outer.weighs_norms() {
                        true => Some(d.norm.unwrap_or_else(|| tessera_sync::l2_norm(&d.values))),
                        false => None,
                    };
                    let kept = Kept::of(&self.sampler, &d.values, d.support, norm);
                    decoded = Some(d.values);
                    Slot::Accepted { hash, bytes: b, kept }
                }
                Ok(d) => {
                    Slot::Rejected(Reject::WrongRound { got: d.header.round, want: Some(self.global.round) })
                }
                Err(e) => Slot::Rejected(Reject::Update(e)),
            },
        };
        if let Some(open) = self.open.as_mut() {
            if open.slots.get(&from) == Some(&Slot::Fetching { hash }) {
                if let Slot::Rejected(reason) = &verdict {
                    let reason = reason.clone();
                    self.out.push(Output::Event(Event::Rejected { from, reason }));
                }
                let accepted = matches!(verdict, Slot::Accepted { .. });
                open.slots.set(from, verdict);
                if let (true, Some(values)) = (accepted, decoded) {
                    self.ask_score(from, values);
                }
            }
        }
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }

    /// Time passed: drop silent members, close a round past its deadline, start the next.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }

    fn event(&mut self, e: Event) {
        self.out.push(Output::Event(e));
    }

    /// Membership, sequence and round checks, then the message's effect.
    fn admit(&mut self, now_ms: u64, s: &Signed) -> Result<(), Reject> {
        let from = s.sender;
        if let Some(round) = self.banned.get(&from) {
            return Err(Reject::Banned(*round));
        }
        let is_join = matches!(s.message, Message::Join { .. } | Message::JoinValidator { .. });
        if !is_join && !self.members.contains_key(&from) && !self.validators.contains_key(&from) {
            return Err(Reject::NotMember);
        }
        // Only peers that joined get a sequence window: a refused join leaves nothing behind,
        // so keys that never get in cannot fill the table.
        let full = self.seqs.len() >= MAX_KNOWN_PEERS;
        let fresh = match self.seqs.get_mut(&from) {
            Some(w) => w.check(s.seq).map(|_| None)?,
            None if full => return Err(Reject::Full(self.members.len())),
            None => {
                let mut w = crate::seq::SeqWindow::default();
                w.check(s.seq)?;
                Some(w)
            }
        };
        let admitted = self.effect(now_ms, from, &s.message);
        if let (Some(w), Ok(())) = (fresh, &admitted) {
            self.seqs.insert(from, w);
        }
        assert!(self.seqs.len() <= MAX_KNOWN_PEERS, "sequence windows are bounded");
        admitted
    }

    /// A sequence-checked message's effect.
    fn effect(&mut self, now_ms: u64, from: PeerId, m: &Message) -> Result<(), Reject> {
        if matches!(m, Message::JoinValidator { .. }) || self.validators.contains_key(&from) {
            return self.admit_validator(now_ms, from, m);
        }
        match m {
            Message::Join { addrs, stake } => {
                self.check_stake(*stake)?;
                self.join(now_ms, from, addrs.first())?;
                self.ledger_join(from, *stake, false);
            }
            Message::Heartbeat { .. } => {}
            Message::Commit { .. } => self.commit(now_ms, from, m)?,
            Message::Reveal { .. } => self.on_reveal(from, m)?,
            Message::DisputeAnswer { .. } => self.on_dispute_answer(from, m)?,
            Message::LedgerFetch { from: seq } => self.on_ledger_fetch(from, *seq),
            Message::StateReport { round, state_hash, computed } => {
                self.report(from, *round, *state_hash, *computed)?
            }
            other => return Err(Reject::Unexpected(other.kind())),
        }
        if !self.banned.contains_key(&from) {
            self.heard(from, now_ms); // (a message that proved a cheat does not count)
        }
        Ok(())
    }

    /// A message from a validator: it joins, heartbeats and reports verdicts, nothing else.
    fn admit_validator(&mut self, now_ms: u64, from: PeerId, m: &Message) -> Result<(), Reject> {
        match m {
            Message::JoinValidator { stake, .. } => {
                self.check_stake(*stake)?;
                self.validator_join(now_ms, from)?;
                self.ledger_join(from, *stake, true);
            }
            Message::Heartbeat { .. } => {}
            Message::Verdict { .. } => self.on_verdict(from, m)?,
            Message::DisputeAnswer { .. } => self.on_dispute_answer(from, m)?,
            Message::ScoreReport { .. } => self.on_score_report(from, m)?,
            Message::LedgerFetch { from: seq } => self.on_ledger_fetch(from, *seq),
            other => return Err(Reject::Unexpected(other.kind())),
        }
        if let Some(seen) = self.validators.get_mut(&from) {
            *seen = now_ms;
        }
        Ok(())
    }

    fn join(&mut self, now_ms: u64, from: PeerId, addr: Option<&String>) -> Result<(), Reject> {
        if !self.members.contains_key(&from) {
            if self.members.len() >= self.cfg.max_peers {
                return Err(Reject::Full(self.members.len()));
            }
            self.heard(from, now_ms);
            self.event(Event::Joined(from));
        }
        if self.open.is_some() && self.rejoined.len() < MAX_KNOWN_PEERS {
            self.rejoined.insert(from);
        }
        assert!(self.rejoined.len() <= MAX_KNOWN_PEERS, "bounded");
        if self.pairs() {
            self.replicas.ensure(from, &self.global); // a joiner starts from the consensus
        }
        if let Some(a) = addr {
            self.addrs.insert(from, truncate(a.clone()));
        }
        assert!(self.addrs.len() <= self.members.len(), "addresses are kept for members only");
        let peers: Vec<(PeerId, String)> = self
            .addrs
            .iter()
            .filter(|(p, a)| **p != from && !a.is_empty())
            .take(tessera_wire::MAX_MEMBERS)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let welcome = Message::Welcome {
            round: self.global.round,
            checkpoint: self.start_of(&from).unwrap_or(self.state_hash),
            state_hash: self.state_hash,
            config: self.cfg.to_toml(),
            peers,
        };
        self.out.push(Output::Send { to: from, message: welcome });
        if let Some(open) = &self.open {
            if open.slots.contains(&from) {
                self.out.push(Output::Send { to: from, message: open.start.clone() });
            }
        }
        if self.finished {
            let done = Message::Done { round: self.global.round, state_hash: self.state_hash };
            self.out.push(Output::Send { to: from, message: done });
        }
        Ok(())
    }

    /// What a commit claims that can be checked before its update is fetched: the round's
    /// start state, the exact length, and local hashes that fit the algorithm's work.
    fn check_commit(&self, from: &PeerId, m: &Message) -> Result<(), Reject> {
        let Message::Commit { state, update_len, start_hash, end_hash, .. } = m else {
            return Err(Reject::Unexpected("a commit"));
        };
        let want = self.start_of(from).ok_or(Reject::NotAssigned(self.global.round))?;
        if *state != want {
            return Err(Reject::WrongStart {
                got: tessera_tensor::hex(state),
                want: tessera_tensor::hex(&want),
            });
        }
        if *update_len != self.spec.update_len {
            return Err(Reject::BadLength { got: *update_len, want: self.spec.update_len });
        }
        match self.spec.outer.work() {
            tessera_sync::Work::Gradient if start_hash != end_hash => {
                Err(Reject::LocalHashes("a gradient leaves the local state as it was"))
            }
            tessera_sync::Work::InnerSteps | tessera_sync::Work::InnerStepsFromOwn
                if start_hash == end_hash =>
            {
                Err(Reject::LocalHashes("inner steps change the local state"))
            }
            _ => Ok(()),
        }
    }

    fn commit(&mut self, now_ms: u64, from: PeerId, m: &Message) -> Result<(), Reject> {
        let Message::Commit { round, update, update_len: len, root, sig, loss_milli, .. } = m else {
            return Err(Reject::Unexpected("a commit"));
        };
        let (round, len) = (*round, *len);
        let signed = match sig.is_empty() {
            true => Ok(()),
            false => tessera_ledger::check_update(&from, round, update, sig)
                .map_err(|_| Reject::Unexpected("a commit whose update signature does not verify")),
        };
        let checked = self.check_commit(&from, m).and(signed);
        let open_round = self.open.as_ref().map(|o| o.round);
        let open = match self.open.as_mut() {
            Some(o) if o.round == round => o,
            _ => return Err(Reject::WrongRound { got: round, want: open_round }),
        };
        let slot = open.slots.get(&from).ok_or(Reject::NotAssigned(round))?;
        match slot {
            Slot::Waiting if checked.is_err() => {
                let reject = checked.expect_err("checked above");
                open.slots.set(from, Slot::Rejected(reject.clone()));
                return Err(reject);
            }
            Slot::Waiting => {
                open.slots.set(from, Slot::Fetching { hash: *update });
                open.order.push(from);
                if !sig.is_empty() {
                    open.sigs.insert(from, sig.clone());
                }
                if !open.reopened {
                    let took = now_ms.saturating_sub(open.started_ms) as f64;
                    open.known += usize::from(!self.speed_ms.contains_key(&from));
                    let s = self.speed_ms.entry(from).or_insert(took);
                    *s = SPEED_ALPHA * took + (1.0 - SPEED_ALPHA) * *s;
                }
                self.out.push(Output::Fetch { from, hash: *update, len });
                self.out.push(Output::Event(Event::Committed {
                    round,
                    peer: from,
                    bytes: len,
                    loss_milli: *loss_milli,
                }));
                self.draw_check(from, *root, *update);
                self.tighten_deadline();
            }
            Slot::Fetching { hash } | Slot::Accepted { hash, .. } if hash == update => {} // a resend
            Slot::Rejected(_) => {}
            _ => return Err(Reject::Equivocation(round)),
        }
        Ok(())
    }

    /// Whether the run is over and every member has reported its final state (what the
    /// daemon lingers for; a member that repeats its report counts once).
    pub fn all_reported(&self) -> bool {
        self.finished && self.members.keys().all(|m| self.final_reports.contains(m))
    }

    /// A member's state after `round`: recorded (one row per round and peer, and only for
    /// rounds the run has reached, so a member's reports are bounded by the rounds), checked,
    /// and answered with the checkpoint when it disagrees.
    fn report(&mut self, from: PeerId, round: u64, reported: Hash32, computed: bool) -> Result<(), Reject> {
        if round > self.global.round {
            return Err(Reject::FutureReport { got: round, reached: self.global.round });
        }
        if round == self.cfg.rounds && self.final_reports.len() < MAX_KNOWN_PEERS {
            self.final_reports.insert(from);
        }
        let expected = match self.pairs() {
            true => self.replicas.expected(round, &from),
            false => self.history.get(&round).copied(),
        };
        let agrees = expected == Some(reported);
        let rec = Record::Report { round, peer: from, state_hash: reported, agrees, computed };
        self.out.push(Output::Persist(rec));
        if !agrees {
            self.event(Event::Disagreement { round, peer: from, reported, expected });
            let ptr = Message::CheckpointPointer {
                round: self.global.round,
                checkpoint: self.start_of(&from).unwrap_or(self.state_hash),
                state_hash: self.state_hash,
            };
            self.out.push(Output::Send { to: from, message: ptr });
        }
        Ok(())
    }

    /// Drops silent members, closes the open round when it is decided or late, starts the next.
    fn advance(&mut self, now_ms: u64) {
        self.drop_silent(now_ms);
        let late = self.open.as_ref().is_some_and(|o| now_ms >= o.deadline_at);
        self.expire_checks(now_ms, late);
        if let Some(open) = &self.open {
            let decided = open.slots.decided(|p| self.members.contains_key(p));
            // Past the deadline every check still open is the checker's own (a fetch or a
            // re-run in flight): the round waits for it, the trainer being not at fault.
            let scored = open.scoring.is_empty() && open.weighing.is_empty();
            if (decided || late) && open.checks.settled() && scored {
                if let Err(e) = self.close() {
                    // Our own aggregate failed to decode: a bug, not a peer's fault.
                    panic!("closing round {}: {e}", self.global.round);
                }
            }
        }
        let quorum = if self.global.round == 0 { self.cfg.min_peers } else { 1 };
        if self.open.is_none() && !self.finished && self.members.len() >= quorum {
            self.start(now_ms);
        }
    }

    fn start(&mut self, now_ms: u64) {
        self.rejoined.clear();
        let round = self.global.round;
        let peers: Vec<PeerId> = self.members.keys().take(self.cfg.max_peers).copied().collect();
        let mut fresh = 0u64;
        let assignments: Vec<Assignment> = peers
            .iter()
            .map(|&peer| {
                let (data_round, slot) = self.backlog.pop_front().unwrap_or_else(|| {
                    fresh += 1;
                    (round, fresh - 1)
                });
                Assignment { peer, data_round, slot }
            })
            .collect();
        let deadline_ms = self.deadline(&peers);
        let replicas = match self.pairs() {
            true => peers.iter().map(|p| self.replicas.ensure(*p, &self.global)).collect(),
            false => Vec::new(),
        };
        let start = Message::RoundStart {
            round,
            state_hash: self.state_hash,
            seed: self.cfg.seed,
            addrs: peers.iter().map(|p| self.addrs.get(p).cloned().unwrap_or_default()).collect(),
            members: peers.clone(),
            assignments: assignments.clone(),
            deadline_ms,
            replicas,
        };
        self.out.push(Output::Persist(Record::RoundStarted { round, start: start.clone() }));
        self.out.push(Output::Broadcast { message: start.clone() });
        self.open = Some(OpenRound {
            round,
            slots: Slots::waiting(peers.iter().copied()),
            known: peers.iter().filter(|p| self.speed_ms.contains_key(*p)).count(),
            assignments,
            started_ms: now_ms,
            deadline_at: now_ms + deadline_ms,
            start,
            order: Vec::new(),
            checks: Checks::new(round),
            scoring: Default::default(),
            weighing: Default::default(),
            weights: Default::default(),
            own_scores: Default::default(),
            score_claims: Default::default(),
            sigs: Default::default(),
            start_state: None,
            reopened: false,
        });
        self.event(Event::Opened { round, started_ms: now_ms, deadline_ms: now_ms + deadline_ms });
    }

    /// Accepts what arrived, aggregates it in peer-id order, applies the outer step, persists,
    /// then announces.
    fn close(&mut self) -> Result<(), CoordError> {
        let open = self.open.take().expect("close needs an open round");
        let round = open.round;
        let mut accepted = Vec::new();
        let mut updates = Vec::new();
        let mut rejected = Vec::new();
        let mut waiting = Vec::new();
        let allotted = open.deadline_at.saturating_sub(open.started_ms);
        let Screening { refused, hashes, proven } = self.screen(&open.order, &open.slots);
        for (peer, of) in proven {
            self.convict_duplicate(round, peer, of);
        }
        // By peer: the first reason each refused update was given, and each one's values hash.
        let mut refusals: BTreeMap<PeerId, Reject> = BTreeMap::new();
        for (peer, reason) in refused {
            refusals.entry(peer).or_insert(reason);
        }
        let mut hashes: BTreeMap<PeerId, Hash32> = hashes.into_iter().collect();
        let mut kept = Vec::new(); // what was kept of each accepted update
        let mut blobs_at = Vec::new(); // where in the outputs each one's StoreBlob is queued
        let mut remembered = Vec::new(); // those screened (not all zero), in order
        for (peer, slot) in open.slots.into_iter() {
            if let Some(r) = refusals.remove(&peer) {
                self.out.push(Output::Event(Event::Rejected { from: peer, reason: r.clone() }));
                rejected.push((peer, r));
                continue;
            }
            match slot {
                Slot::Accepted { hash, bytes, kept: k } => {
                    if let Some(h) = hashes.remove(&peer) {
                        assert_eq!(h, k.fingerprint.hash(), "screened as kept");
                        remembered.push(kept.len());
                    }
                    accepted.push(peer);
                    updates.push(hash);
                    blobs_at.push(self.out.len());
                    self.out.push(Output::StoreBlob { hash, bytes }); // served to the peers
                    kept.push(k);
                }
                Slot::Rejected(r) => rejected.push((peer, r)),
                Slot::Waiting => {
                    waiting.push(peer);
                    rejected.push((peer, Reject::NoCommit))
                }
                Slot::Fetching { .. } => rejected.push((peer, Reject::NotFetched)),
            }
        }
        assert!(refusals.is_empty(), "only the round's updates are refused");
        let remembered: Vec<&Fingerprint> = remembered.iter().map(|&i| &kept[i].fingerprint).collect();
        self.screen.remember_round(&remembered);
        let mut reassigned = 0;
        let taken: std::collections::BTreeSet<&PeerId> = accepted.iter().collect();
        for a in &open.assignments {
            if !taken.contains(&a.peer) && self.backlog.len() < MAX_BACKLOG {
                self.backlog.push_back((a.data_round, a.slot));
                reassigned += 1;
            }
        }
        let members: Vec<PeerId> = open.assignments.iter().map(|a| a.peer).collect();
        let start_hash = self.state_hash;
        // The close reads each accepted blob where its StoreBlob waits in the outputs, decoding
        // it as it is added in: the outputs before the step are set aside and put back first.
        let queued = std::mem::take(&mut self.out);
        // Checked when it was fetched: decoded again, the same bytes need no norm bound.
        let expected = Expected { max_norm: None, ..self.spec.expected().clone() };
        let contribs: Vec<Encoded> = blobs_at
            .iter()
            .zip(&kept)
            .enumerate()
            .map(|(i, (&at, k))| Encoded {
                peer: i as u64,
                weight: 1.0,
                blob: queued_blob(&queued, at),
                expected: &expected,
                norm: k.norm,
                support: k.support.as_deref(),
            })
            .collect();
        let stepped = self.step(round, &members, &accepted, &contribs);
        let after = std::mem::replace(&mut self.out, queued);
        self.out.extend(after);
        let Stepped { aggregate: agg_hash, pairs, spread } = stepped?;
        self.count_missed(&waiting, &members, allotted);
        let state_blob = self.global.encode();
        self.state_hash = *blake3::hash(&state_blob).as_bytes();
        self.history.insert(self.global.round, self.state_hash);
        while self.history.len() > MAX_HISTORY {
            self.history.pop_first();
        }
        self.out.push(Output::StoreBlob { hash: self.state_hash, bytes: state_blob });
        let (n_acc, n_rej) = (accepted.len(), rejected.len());
        for (peer, reason) in &rejected {
            self.event(Event::LeftOut { round, peer: *peer, reason: reason.clone() });
        }
        // Typed until here: the Accept carries each reason as text.
        let rejected: Vec<(PeerId, String)> =
            rejected.into_iter().map(|(p, r)| (p, truncate(r.to_string()))).collect();
        let mut accept = Message::Accept {
            round,
            accepted,
            updates,
            rejected,
            aggregate: agg_hash,
            next_state_hash: self.state_hash,
            pairs,
            ledger: None,
        };
        // The ledger's entries of the round are persisted with the close, before the Accept
        // that names them.
        let mark = self.out.len();
        self.ledger_weights(round, open.weights, &accept);
        self.ledger_round(round, (start_hash, self.state_hash), &accept, &open.sigs);
        let ledger = self.take_ledger_writes(mark);
        if let Message::Accept { ledger, .. } = &mut accept {
            *ledger = self.ledger_head();
        }
        let backlog = self.backlog.iter().copied().collect();
        self.out.push(Output::Persist(Record::RoundClosed {
            round,
            accept: accept.clone(),
            state_hash: self.state_hash,
            backlog,
            spread,
            ledger,
        }));
        if matches!(&accept, Message::Accept { ledger: Some(_), .. }) {
            // Validators keep copies of the ledger too: they learn its head as members do.
            for &to in self.validators.keys() {
                self.out.push(Output::Send { to, message: accept.clone() });
            }
        }
        self.out.push(Output::Broadcast { message: accept });
        self.event(Event::RoundClosed { round, accepted: n_acc, rejected: n_rej, reassigned, spread });
        if self.global.round >= self.cfg.rounds {
            self.finished = true;
            let (round, state_hash) = (self.global.round, self.state_hash);
            self.out.push(Output::Broadcast { message: Message::Done { round, state_hash } });
            for &to in self.validators.keys() {
                self.out.push(Output::Send { to, message: Message::Done { round, state_hash } });
            }
            self.event(Event::Finished { round, state_hash });
        }
        Ok(())
    }
}

/// What applying a round produced: the aggregate's hash (hub algorithms), and for NoLoCo the
/// pairing with the replicas it produced and their spread.
struct Stepped {
    aggregate: Option<Hash32>,
    pairs: Option<tessera_wire::Pairs>,
    spread: Option<f64>,
}

impl Coordinator {
    /// Copy and replay detection over a round's accepted updates, in commit order.
    fn screen(&self, order: &[PeerId], slots: &Slots) -> Screening {
        let acc: Vec<Screened> = order
            .iter()
            .filter_map(|p| match slots.get(p) {
                Some(Slot::Accepted { kept, .. }) => Some((*p, kept)),
                _ => None,
            })
            .collect();
        self.screen.check(&acc)
    }

    /// Applies a round's accepted contributions (in peer-id order) to the state; stores the
    /// blobs peers will fetch. Returns the aggregate's hash (hub algorithms), and for NoLoCo
    /// the pairing with the replicas it produced and their spread.
    fn step(
        &mut self,
        round: u64,
        members: &[PeerId],
        accepted: &[PeerId],
        contribs: &[Encoded],
    ) -> Result<Stepped, CoordError> {
        assert_eq!(accepted.len(), contribs.len(), "one contribution per accepted peer");
        if self.pairs() {
            let mut deltas = BTreeMap::new();
            for (peer, c) in accepted.iter().zip(contribs) {
                deltas.insert(*peer, c.values()?.into_owned());
            }
            let live = |p: &PeerId| self.members.contains_key(p);
            let closed = self.replicas.close(&self.spec, &self.global, members, &deltas, live)?;
            for (hash, bytes) in closed.blobs {
                self.out.push(Output::StoreBlob { hash, bytes });
            }
            self.global = closed.consensus;
            return Ok(Stepped { aggregate: None, pairs: Some(closed.pairs), spread: Some(closed.spread) });
        }
        let spec = self.spec.clone();
        let combined = spec.step(&mut self.global, round, contribs)?;
        if let Some(c) = combined.as_ref().filter(|c| c.blob.is_some()) {
            self.screen.remember(Fingerprint::of(&self.sampler, &c.values, None));
            // an aggregate resent is a replay
        }
        if let Some(count) = combined.as_ref().map(|c| c.clipped).filter(|&c| c > 0) {
            self.event(Event::Clipped { round, count });
        }
        let aggregate = combined.as_ref().and_then(|c| c.blob.clone());
        let agg_hash = aggregate.as_ref().map(|b| *blake3::hash(b).as_bytes());
        if let (Some(bytes), Some(hash)) = (aggregate, agg_hash) {
            self.out.push(Output::StoreBlob { hash, bytes });
        }
        assert_eq!(self.global.round, round + 1, "a round closes once");
        Ok(Stepped { aggregate: agg_hash, pairs: None, spread: None })
    }
}

/// The bytes of the `StoreBlob` queued at `at`.
fn queued_blob(out: &[Output], at: usize) -> &[u8] {
    match &out[at] {
        Output::StoreBlob { bytes, .. } => bytes,
        other => panic!("output {at} is {other:?}, not a queued update blob"),
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > tessera_wire::MAX_TEXT {
        let mut cut = tessera_wire::MAX_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

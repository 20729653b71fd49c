//! A validator's side of the protocol as a sans-IO state machine (`tessera node
//! --validator`). It joins with `JoinValidator`, takes the run's config from `Welcome`, and
//! for each `CheckTask` fetches the trainer's revealed local state (from the trainer, the
//! coordinator as fallback) and, for a last segment, the state the unit was trained from; it
//! then asks its driver to run the check ([`crate::run_check`]) and answers with a signed
//! `Verdict`. It decides nothing about the trainer: the coordinator referees every failing
//! finding, and sends decoys that only a validator that re-runs the segment answers rightly.
//! A mismatch it reports may be disputed: it keeps the revealed start state and answers the
//! coordinator's `DisputeAsk`s ([`ValidatorAction::Answer`]). The drill behaviours (`Lazy`,
//! `Lying`) exist to show that both are caught.

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera_wire::Finding;

use tessera_wire::Question;

use crate::{
    CheckJob, Checked, CoordError, GlobalState, Hash32, LocalState, Message, PeerId, RunSpec, SeqWindow,
    Signed, Source, TrainerError,
};

/// Most tasks a validator holds at once (later ones are answered `Unchecked`).
pub const MAX_TASKS: usize = 1024;

/// How a validator behaves: honestly, or (drills) as a cheat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    #[default]
    Honest,
    /// Passes every task without checking it (`--cheat lazy-validator`).
    Lazy,
    /// Claims a mismatch on every task (`--cheat lying-validator`), and in the dispute that
    /// follows answers as a machine that computed one operator wrongly would.
    Lying,
    /// Scores without computing: its friend's updates a held-out gain of 1, every other
    /// update 0 (a drill for Yuma consensus; simulator only).
    Colluding(PeerId),
}

/// Who this validator is and what it holds.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    pub me: PeerId,
    pub coordinator: PeerId,
    /// The manifest hash of the dataset this validator holds.
    pub dataset: Hash32,
    pub addr: Option<String>,
    pub behaviour: Behaviour,
    /// What it locks to join (see `RunConfig::stakes`).
    pub stake: u64,
    /// Its identity's key (whose public half is `me`), to sign its scores for the ledger's
    /// Yuma consensus; `None`: its scores are not signed, and count only as scores.
    pub key: Option<ed25519_dalek::SigningKey>,
}

/// What the driver must do, in order. (Sending is the common action: it keeps its message
/// inline rather than allocate for each.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum ValidatorAction {
    /// Sign and send to the coordinator.
    Send(Message),
    /// Fetch blob `hash` (exactly `len` bytes) from the first of `sources` that has it, check
    /// it against its hash, then call [`Validator::fetched`].
    Fetch {
        sources: Vec<Source>,
        hash: Hash32,
        len: u64,
    },
    /// Run the check ([`crate::check_segment`]), then call [`Validator::checked`].
    Check(Box<CheckJob>),
    /// Answer a dispute's question ([`crate::Disputant::answer`]), then call
    /// [`Validator::answered`].
    Answer(Box<AnswerJob>),
    /// Score an update ([`crate::run_score`]), then call [`Validator::scored`].
    Score(Box<crate::ScoreJob>),
    /// Append these ledger records, verified, to the copy kept on disk (in order).
    KeepLedger(Vec<tessera_ledger::Record>),
    Event(ValidatorEvent),
}

/// Things worth logging (or, for `Fatal` and `Finished`, acting on).
#[derive(Debug, Clone)]
pub enum ValidatorEvent {
    Configured(Arc<RunSpec>),
    Checked { round: u64, peer: PeerId, segment: u32, finding: Finding },
    Warning(TrainerError),
    Fatal(TrainerError),
    Finished { round: u64 },
}

/// One task: the job being assembled, the blobs still to arrive, and (a last segment) the
/// committed update and the state it was trained from.
#[derive(Debug, Clone)]
struct Task {
    job: CheckJob,
    blob: Option<Hash32>,
    from: Option<Hash32>,
    update: Option<Hash32>,
    state: Option<Arc<GlobalState>>,
}

/// A question of the dispute over `peer`'s round-`round` update, which this validator found
/// reaching another end: the segment's steps, the revealed start state it re-ran from, and
/// (drills) whether it lies.
#[derive(Debug, Clone)]
pub struct AnswerJob {
    pub round: u64,
    pub peer: PeerId,
    pub unit: (u64, u64),
    pub seg: (u64, u64),
    pub start: Arc<Vec<u8>>,
    pub question: Question,
    pub lie: bool,
}

impl AnswerJob {
    /// Computes the answer (re-running the segment from the revealed start the first time).
    pub fn run(
        &self,
        spec: &RunSpec,
        ds: &tessera_data::Dataset,
        d: &mut crate::Disputant,
    ) -> Result<crate::Answered, CoordError> {
        let what = || {
            let start = LocalState::decode(&self.start, spec.n())?;
            Ok(crate::DisputedSegment { start, unit: self.unit, seg: self.seg })
        };
        let key = (self.round, self.peer, self.seg.0);
        d.answer(spec, ds, key, what, &self.question, self.lie)
    }
}

/// A `ScoreTask` being assembled: the blobs still to arrive (the update, the round's start
/// state) and what has come of them.
#[derive(Debug, Clone)]
struct ScoreTask {
    unit: (u64, u64),
    batches: u64,
    update: Option<Hash32>,
    state: Option<Hash32>,
    values: Option<Vec<f32>>,
    start: Option<Arc<GlobalState>>,
}

/// What this validator keeps of a mismatch it reported, to answer the dispute over it.
#[derive(Debug, Clone)]
struct Held {
    unit: (u64, u64),
    seg: (u64, u64),
    start: Arc<Vec<u8>>,
}

/// The validator's state machine.
pub struct Validator {
    vc: ValidatorConfig,
    window: SeqWindow,
    spec: Option<(Arc<RunSpec>, String)>,
    tasks: BTreeMap<(u64, PeerId), Task>,
    /// Mismatches reported, kept for their disputes: of the latest round only, at most
    /// [`MAX_TASKS`].
    held: BTreeMap<(u64, PeerId), Held>,
    /// Score tasks waiting for their blobs (at most [`MAX_TASKS`]).
    scores: BTreeMap<(u64, PeerId), ScoreTask>,
    last_heartbeat: Option<u64>,
    finished: bool,
    /// Its verified copy of the coordinator's ledger (followed as a trainer's is).
    ledger: crate::LedgerCopy,
    /// The run is over (after this round) but the copy is catching up, since this time: the
    /// `Finished` event waits, at most [`crate::trainer::MAX_LEDGER_WAIT_MS`].
    pending_finish: Option<(u64, Option<u64>)>,
    out: Vec<ValidatorAction>,
}

impl Validator {
    pub fn new(vc: ValidatorConfig) -> Self {
        let me = vc.key.as_ref().map(|k| k.verifying_key().to_bytes());
        assert!(me.is_none_or(|k| k == vc.me), "the signing key is the validator's identity");
        Self {
            window: SeqWindow::default(),
            spec: None,
            tasks: BTreeMap::new(),
            held: BTreeMap::new(),
            scores: BTreeMap::new(),
            last_heartbeat: None,
            finished: false,
            ledger: crate::LedgerCopy::new(&vc.coordinator),
            pending_finish: None,
            vc,
            out: Vec::new(),
        }
    }

    /// Resumes the ledger copy from `records` kept on disk by an earlier run of this node
    /// (before it connects); `Err` if they do not verify against the coordinator's key.
    pub fn resume_ledger(&mut self, records: &[tessera_ledger::Record]) -> Result<(), TrainerError> {
        assert_eq!(self.ledger.ledger().head().0, 0, "a copy is resumed before anything is fetched");
        self.ledger =
            crate::LedgerCopy::resume(&self.vc.coordinator, records).map_err(TrainerError::Ledger)?;
        Ok(())
    }

    /// The verified copy of the coordinator's ledger.
    pub fn ledger(&self) -> &tessera_ledger::Ledger {
        self.ledger.ledger()
    }

    /// Follows the coordinator's ledger with `m` (see [`crate::LedgerCopy::follow`]).
    fn follow_ledger(&mut self, m: &Message) -> Result<(), TrainerError> {
        let f = self.ledger.follow(m);
        if !f.keep.is_empty() {
            self.out.push(ValidatorAction::KeepLedger(f.keep));
        }
        if let Some(from) = f.next.map_err(TrainerError::Ledger)? {
            self.out.push(ValidatorAction::Send(Message::LedgerFetch { from }));
        }
        if let (Some((round, _)), false) = (self.pending_finish, self.ledger.behind()) {
            self.finish(round);
        }
        Ok(())
    }

    fn finish(&mut self, round: u64) {
        self.pending_finish = None;
        if !self.finished {
            self.finished = true;
            self.out.push(ValidatorAction::Event(ValidatorEvent::Finished { round }));
        }
    }

    /// The run, once configured.
    pub fn spec(&self) -> Option<&Arc<RunSpec>> {
        self.spec.as_ref().map(|s| &s.0)
    }

    /// What it is doing now (for a status page; see [`crate::Phase`]).
    pub fn phase(&self) -> crate::Phase {
        use crate::Phase;
        let done = self.finished || self.pending_finish.is_some();
        match (done, &self.spec, self.tasks.len() + self.scores.len()) {
            (true, ..) => Phase::Done,
            (_, None, _) => Phase::Joining,
            (_, _, 0) => Phase::Waiting { round: None },
            (_, _, tasks) => Phase::Checking { tasks },
        }
    }

    /// A (new) connection to the coordinator: ask to join as a validator.
    pub fn connected(&mut self, _now_ms: u64) -> Vec<ValidatorAction> {
        let addrs = self.vc.addr.iter().cloned().collect();
        self.out.push(ValidatorAction::Send(Message::JoinValidator { addrs, stake: self.vc.stake }));
        self.take()
    }

    /// Time passed: a heartbeat when one is due.
    pub fn tick(&mut self, now_ms: u64) -> Vec<ValidatorAction> {
        if let Some((round, since)) = self.pending_finish {
            let since = since.unwrap_or(now_ms);
            self.pending_finish = Some((round, Some(since)));
            if now_ms.saturating_sub(since) >= crate::trainer::MAX_LEDGER_WAIT_MS {
                let (have, announced) = (self.ledger.ledger().head().0, self.ledger.announced_len());
                let e = TrainerError::LedgerBehind { have, announced };
                self.out.push(ValidatorAction::Event(ValidatorEvent::Warning(e)));
                self.finish(round);
            }
        }
        if let Some((spec, _)) = &self.spec {
            let due = self.last_heartbeat.is_none_or(|t| now_ms.saturating_sub(t) >= spec.cfg.heartbeat_ms);
            if due && !self.finished {
                self.last_heartbeat = Some(now_ms);
                self.out.push(ValidatorAction::Send(Message::Heartbeat { round: 0, step: 0 }));
            }
        }
        self.take()
    }

    /// A verified frame arrived.
    pub fn handle(&mut self, _now_ms: u64, s: Signed) -> Vec<ValidatorAction> {
        let got = if s.sender != self.vc.coordinator {
            Err(TrainerError::NotCoordinator)
        } else {
            match self.window.check(s.seq) {
                Err(e) => Err(TrainerError::Replay(e)),
                Ok(()) => self.on_message(s.message),
            }
        };
        if let Err(e) = got {
            let fatal = e.is_fatal();
            let ev = if fatal { ValidatorEvent::Fatal(e) } else { ValidatorEvent::Warning(e) };
            self.out.push(ValidatorAction::Event(ev));
        }
        self.take()
    }

    /// The driver fetched (or failed to fetch) a blob asked for by [`ValidatorAction::Fetch`].
    pub fn fetched(
        &mut self,
        _now_ms: u64,
        hash: Hash32,
        got: Result<Vec<u8>, String>,
    ) -> Vec<ValidatorAction> {
        self.score_blob(&hash, &got);
        let waiting: Vec<(u64, PeerId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.blob == Some(hash) || t.from == Some(hash))
            .map(|(k, _)| *k)
            .collect();
        for key in waiting {
            let spec = self.spec.as_ref().expect("tasks come after the config").0.clone();
            let t = self.tasks.get_mut(&key).expect("listed above");
            let ok = match &got {
                Err(_) => false,
                Ok(b) if t.blob == Some(hash) => {
                    t.job.blob = b.clone();
                    t.blob = None;
                    true
                }
                Ok(b) => match spec.decode_state(b, &hash) {
                    Ok(g) => {
                        t.state = Some(Arc::new(g));
                        t.from = None;
                        true
                    }
                    Err(_) => false,
                },
            };
            if !ok {
                self.answer(key, Finding::Unchecked, None);
            } else if t.blob.is_none() && t.from.is_none() {
                let mut job = t.job.clone();
                job.rederive = t.state.clone().zip(t.update);
                self.out.push(ValidatorAction::Check(Box::new(job)));
            }
        }
        self.take()
    }

    /// The driver ran the check asked for by [`ValidatorAction::Check`]; `Err` is this
    /// validator's own failure. A mismatch is kept for the dispute that may follow.
    pub fn checked(
        &mut self,
        _now_ms: u64,
        round: u64,
        peer: PeerId,
        got: Result<Checked, CoordError>,
    ) -> Vec<ValidatorAction> {
        let key = (round, peer);
        let (mut finding, mut reached) =
            got.map_or((Finding::Unchecked, None), |c| (c.outcome.finding(), c.reached));
        if self.vc.behaviour == Behaviour::Lying {
            let end = self.tasks.get(&key).map(|t| t.job.end);
            (finding, reached) = (Finding::Mismatch, end.map(|e| *blake3::hash(&e).as_bytes()));
        }
        if finding == Finding::Mismatch {
            self.hold(key);
        }
        self.answer(key, finding, reached);
        self.take()
    }

    /// The driver answered the dispute question asked for by [`ValidatorAction::Answer`];
    /// `Err` (this validator's own failure) leaves it unanswered, to be lost by timeout.
    pub fn answered(
        &mut self,
        _now_ms: u64,
        (round, peer): (u64, PeerId),
        got: Result<crate::Answered, CoordError>,
    ) -> Vec<ValidatorAction> {
        match got {
            Ok(a) => {
                let (question, answer) = (a.question, a.answer);
                self.out.push(ValidatorAction::Send(Message::DisputeAnswer { round, peer, question, answer }))
            }
            Err(e) => self.warn(TrainerError::Reveal { round, err: e.to_string() }),
        }
        self.take()
    }

    /// The driver scored what [`ValidatorAction::Score`] asked; `Err` (this validator's own
    /// failure) is reported as no score, for the coordinator to score instead.
    pub fn scored(
        &mut self,
        _now_ms: u64,
        (round, peer): (u64, PeerId),
        got: Result<crate::Score, CoordError>,
    ) -> Vec<ValidatorAction> {
        self.report_score((round, peer), got.ok().map(|s| s.to_bits()));
        self.take()
    }

    fn report_score(&mut self, (round, peer): (u64, PeerId), score: Option<[u64; 3]>) {
        self.scores.remove(&(round, peer));
        let micro = score.map(|b| crate::Score::from_bits(b).micro());
        let sig = match (&self.vc.key, micro) {
            (Some(k), Some(m)) => tessera_ledger::sign_score(k, round, &peer, m),
            _ => Vec::new(),
        };
        self.out.push(ValidatorAction::Send(Message::ScoreReport { round, peer, score, sig }));
    }

    /// A score task in: answered at once by a drill behaviour (a lazy validator makes a
    /// score up, a lying one calls every update harmful), else its two blobs are fetched.
    fn take_score_task(&mut self, key: (u64, PeerId), addr: String, t: ScoreTask) {
        let made_up = |held_out: f64| Some(crate::Score { held_out, own: 0.0, unseen: 0.0 }.to_bits());
        match self.vc.behaviour {
            Behaviour::Lazy => return self.report_score(key, made_up(0.0)),
            Behaviour::Lying => return self.report_score(key, made_up(-1e3)),
            Behaviour::Colluding(friend) => {
                return self.report_score(key, made_up(if key.1 == friend { 1.0 } else { 0.0 }))
            }
            Behaviour::Honest if self.scores.len() >= MAX_TASKS => return self.report_score(key, None),
            Behaviour::Honest => {}
        }
        let spec = self.spec.as_ref().expect("configured").0.clone();
        let coord = Source { peer: self.vc.coordinator, addr: None };
        let trainer = Source { peer: key.1, addr: (!addr.is_empty()).then_some(addr) };
        if let Some(hash) = t.update {
            let sources = vec![trainer, coord.clone()];
            self.out.push(ValidatorAction::Fetch { sources, hash, len: spec.update_len });
        }
        if let Some(hash) = t.state {
            self.out.push(ValidatorAction::Fetch { sources: vec![coord], hash, len: spec.state_len as u64 });
        }
        self.scores.insert(key, t);
    }

    /// A fetched blob, for the score tasks waiting on it; a task with both is handed to the
    /// driver, one whose blob failed is reported unscored.
    fn score_blob(&mut self, hash: &Hash32, got: &Result<Vec<u8>, String>) {
        let Some(spec) = self.spec.as_ref().map(|s| s.0.clone()) else { return };
        let waiting: Vec<(u64, PeerId)> = self
            .scores
            .iter()
            .filter(|(_, t)| t.update == Some(*hash) || t.state == Some(*hash))
            .map(|(k, _)| *k)
            .collect();
        for key in waiting {
            let t = self.scores.get_mut(&key).expect("listed above");
            let ok = match got {
                Err(_) => false,
                Ok(b) if t.update == Some(*hash) => {
                    t.update = None;
                    let d = tessera_sync::decode_update(b, spec.expected());
                    d.map(|d| t.values = Some(d.values)).is_ok()
                }
                Ok(b) => {
                    t.state = None;
                    spec.decode_state(b, hash).map(|g| t.start = Some(Arc::new(g))).is_ok()
                }
            };
            if !ok {
                self.report_score(key, None);
            } else if let (Some(values), Some(state)) = (&t.values, &t.start) {
                let (round, peer) = key;
                let (values, state) = (values.clone(), state.clone());
                let job = crate::ScoreJob { round, peer, unit: t.unit, values, state, batches: t.batches };
                self.out.push(ValidatorAction::Score(Box::new(job)));
            }
        }
    }

    fn warn(&mut self, e: TrainerError) {
        self.out.push(ValidatorAction::Event(ValidatorEvent::Warning(e)));
    }

    /// Keeps what the dispute over task `key` needs.
    fn hold(&mut self, key: (u64, PeerId)) {
        let (Some(t), Some((spec, _))) = (self.tasks.get(&key), &self.spec) else { return };
        let segs = tessera_verify::segments(spec.cfg.h(), spec.cfg.commit_every).unwrap_or_default();
        let Some(&seg) = segs.get(t.job.segment) else { return };
        // A round closes only once its disputes are decided: earlier rounds' are over.
        self.held.retain(|k, _| k.0 >= key.0);
        while self.held.len() >= MAX_TASKS {
            self.held.pop_first();
        }
        let held = Held { unit: t.job.unit, seg, start: Arc::new(t.job.blob.clone()) };
        self.held.insert(key, held);
    }

    fn take(&mut self) -> Vec<ValidatorAction> {
        std::mem::take(&mut self.out)
    }

    fn answer(&mut self, key: (u64, PeerId), finding: Finding, reached: Option<Hash32>) {
        let Some(t) = self.tasks.remove(&key) else { return };
        let (round, peer, segment) = (key.0, key.1, t.job.segment as u32);
        let reached = reached.filter(|_| finding == Finding::Mismatch);
        self.out.push(ValidatorAction::Send(Message::Verdict { round, peer, segment, finding, reached }));
        self.out.push(ValidatorAction::Event(ValidatorEvent::Checked { round, peer, segment, finding }));
    }

    fn on_message(&mut self, m: Message) -> Result<(), TrainerError> {
        self.follow_ledger(&m)?;
        match m {
            Message::Welcome { config, .. } => self.configure(config),
            Message::CheckTask { .. } if self.spec.is_none() => Err(TrainerError::NotConfigured("CheckTask")),
            Message::CheckTask { round, peer, addr, segment, unit, blob, start, end, rederive } => {
                let job = CheckJob {
                    round,
                    peer,
                    unit,
                    segment: segment as usize,
                    blob: Vec::new(),
                    start,
                    end,
                    rederive: None,
                };
                let (from, update) = (rederive.map(|r| r.0), rederive.map(|r| r.1));
                let task = Task { job, blob: Some(blob), from, update, state: None };
                self.take_task(peer, addr, task);
                Ok(())
            }
            Message::Done { round, .. } => {
                match self.ledger.behind() {
                    true => self.pending_finish = Some((round, None)),
                    false => self.finish(round),
                }
                Ok(())
            }
            Message::Refused { round, reason } => Err(TrainerError::Refused { round, reason }),
            Message::ScoreTask { .. } if self.spec.is_none() => Err(TrainerError::NotConfigured("ScoreTask")),
            Message::ScoreTask { round, peer, addr, unit, update, state, batches, .. } => {
                let t = ScoreTask {
                    unit,
                    batches,
                    update: Some(update),
                    state: Some(state),
                    values: None,
                    start: None,
                };
                self.take_score_task((round, peer), addr, t);
                Ok(())
            }
            Message::DisputeAsk { round, peer, question } => {
                let h = self
                    .held
                    .get(&(round, peer))
                    .ok_or(TrainerError::Unexpected("a dispute of no mismatch"))?;
                let (unit, seg, start) = (h.unit, h.seg, h.start.clone());
                let lie = self.vc.behaviour == Behaviour::Lying;
                let job = AnswerJob { round, peer, unit, seg, start, question, lie };
                self.out.push(ValidatorAction::Answer(Box::new(job)));
                Ok(())
            }
            Message::RoundStart { .. }
            | Message::Accept { .. }
            | Message::CheckpointPointer { .. }
            | Message::LedgerRecords { .. } => Ok(()),
            other => Err(TrainerError::Unexpected(other.kind())),
        }
    }

    /// A task in: answered at once by a drill behaviour, else its blobs are fetched.
    fn take_task(&mut self, peer: PeerId, addr: String, t: Task) {
        let key = (t.job.round, peer);
        let full = self.tasks.len() >= MAX_TASKS && !self.tasks.contains_key(&key);
        let spec = self.spec.as_ref().expect("configured").0.clone();
        self.tasks.insert(key, t.clone());
        match self.vc.behaviour {
            Behaviour::Lazy => return self.answer(key, Finding::Pass, None),
            _ if full => return self.answer(key, Finding::Unchecked, None),
            Behaviour::Honest | Behaviour::Lying | Behaviour::Colluding(_) => {}
        }
        let coord = Source { peer: self.vc.coordinator, addr: None };
        let trainer = Source { peer, addr: (!addr.is_empty()).then_some(addr) };
        let len = LocalState::blob_len(spec.n());
        if let Some(hash) = t.blob {
            self.out.push(ValidatorAction::Fetch { sources: vec![trainer, coord.clone()], hash, len });
        }
        if let Some(hash) = t.from {
            let len = spec.state_len as u64;
            self.out.push(ValidatorAction::Fetch { sources: vec![coord], hash, len });
        }
    }

    fn configure(&mut self, text: String) -> Result<(), TrainerError> {
        if let Some(spec) = crate::trainer::configure(&self.spec, text.clone(), &self.vc.dataset)? {
            self.out.push(ValidatorAction::Event(ValidatorEvent::Configured(spec.clone())));
            self.spec = Some((spec, text));
        }
        Ok(())
    }
}

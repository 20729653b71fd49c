//! A validator's side of the protocol as a sans-IO state machine (`tessera node
//! --validator`). It joins with `JoinValidator`, takes the run's config from `Welcome`, and
//! for each `CheckTask` fetches the trainer's revealed local state (from the trainer, the
//! coordinator as fallback) and, for a last segment, the state the unit was trained from; it
//! then asks its driver to run the check ([`crate::run_check`]) and answers with a signed
//! `Verdict`. It decides nothing about the trainer: the coordinator referees every failing
//! finding, and sends decoys that only a validator that re-runs the segment answers rightly.
//! The drill behaviours (`Lazy`, `Lying`) exist to show that both are caught.

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera_wire::Finding;

use crate::{
    CheckJob, CoordError, GlobalState, Hash32, LocalState, Message, Outcome, PeerId, RunSpec, SeqWindow,
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
    /// Claims a mismatch on every task (`--cheat lying-validator`).
    Lying,
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
}

/// What the driver must do, in order.
#[derive(Debug, Clone)]
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
    /// Run the check, then call [`Validator::checked`].
    Check(Box<CheckJob>),
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

/// The validator's state machine.
pub struct Validator {
    vc: ValidatorConfig,
    window: SeqWindow,
    spec: Option<(Arc<RunSpec>, String)>,
    tasks: BTreeMap<(u64, PeerId), Task>,
    last_heartbeat: Option<u64>,
    finished: bool,
    out: Vec<ValidatorAction>,
}

impl Validator {
    pub fn new(vc: ValidatorConfig) -> Self {
        Self {
            vc,
            window: SeqWindow::default(),
            spec: None,
            tasks: BTreeMap::new(),
            last_heartbeat: None,
            finished: false,
            out: Vec::new(),
        }
    }

    /// The run, once configured.
    pub fn spec(&self) -> Option<&Arc<RunSpec>> {
        self.spec.as_ref().map(|s| &s.0)
    }

    /// A (new) connection to the coordinator: ask to join as a validator.
    pub fn connected(&mut self, _now_ms: u64) -> Vec<ValidatorAction> {
        let addrs = self.vc.addr.iter().cloned().collect();
        self.out.push(ValidatorAction::Send(Message::JoinValidator { addrs }));
        self.take()
    }

    /// Time passed: a heartbeat when one is due.
    pub fn tick(&mut self, now_ms: u64) -> Vec<ValidatorAction> {
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
                self.answer(key, Finding::Unchecked);
            } else if t.blob.is_none() && t.from.is_none() {
                let mut job = t.job.clone();
                job.rederive = t.state.clone().zip(t.update);
                self.out.push(ValidatorAction::Check(Box::new(job)));
            }
        }
        self.take()
    }

    /// The driver ran the check asked for by [`ValidatorAction::Check`]; `Err` is this
    /// validator's own failure.
    pub fn checked(
        &mut self,
        _now_ms: u64,
        round: u64,
        peer: PeerId,
        got: Result<Outcome, CoordError>,
    ) -> Vec<ValidatorAction> {
        let finding = got.map_or(Finding::Unchecked, |o| o.finding());
        self.answer((round, peer), finding);
        self.take()
    }

    fn take(&mut self) -> Vec<ValidatorAction> {
        std::mem::take(&mut self.out)
    }

    fn answer(&mut self, key: (u64, PeerId), finding: Finding) {
        let Some(t) = self.tasks.remove(&key) else { return };
        let (round, peer, segment) = (key.0, key.1, t.job.segment as u32);
        self.out.push(ValidatorAction::Send(Message::Verdict { round, peer, segment, finding }));
        self.out.push(ValidatorAction::Event(ValidatorEvent::Checked { round, peer, segment, finding }));
    }

    fn on_message(&mut self, m: Message) -> Result<(), TrainerError> {
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
                self.finished = true;
                self.out.push(ValidatorAction::Event(ValidatorEvent::Finished { round }));
                Ok(())
            }
            Message::Refused { round, reason } => Err(TrainerError::Refused { round, reason }),
            Message::RoundStart { .. } | Message::Accept { .. } | Message::CheckpointPointer { .. } => Ok(()),
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
            Behaviour::Lazy => return self.answer(key, Finding::Pass),
            Behaviour::Lying => return self.answer(key, Finding::Mismatch),
            Behaviour::Honest if full => return self.answer(key, Finding::Unchecked),
            Behaviour::Honest => {}
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

//! The coordinator as checker and referee. It draws spot checks at commit time and takes the
//! reveals. With `validate = "validators"` and a validator present, it hands each revealed
//! check to a validator (now and then a decoy whose end leaf was replaced); otherwise it
//! fetches the revealed state and runs the check itself. A validator's mismatch goes to the
//! dispute game (`disputes.rs`), which the coordinator referees by recomputing one operator;
//! any other failing finding, or a pass on a decoy, is refereed by the coordinator re-running
//! the check: the side it rules against (the trainer, or the validator that lied or did not
//! check) is refused from then on. The round's bookkeeping is [`round_checks::Checks`].

use super::round_checks::{Drawn, Next};
use super::*;
use tessera_wire::Finding;

/// Most validators one run holds.
pub const MAX_VALIDATORS: usize = 256;

impl Coordinator {
    /// A commit was accepted for fetching: maybe challenge it.
    pub(super) fn draw_check(&mut self, from: PeerId, root: Hash32, update: Hash32) {
        let pairs = self.pairs();
        let Some(open) = self.open.as_mut() else { return };
        let Some(a) = open.assignments.iter().find(|a| a.peer == from) else { return };
        let state = match pairs {
            true => self.replicas.get(&from).zip(self.replicas.hash_of(&from)),
            false => Some((&self.global, self.state_hash)),
        };
        let (Some(state), unit) = (state, (a.data_round, a.slot)) else { return };
        let d = Drawn { peer: from, root, unit, update, from: state };
        if let Some(challenge) = open.checks.draw(&self.spec, &self.secret, d) {
            self.out.push(Output::Send { to: from, message: challenge });
        }
    }

    /// A `Reveal` arrived.
    pub(super) fn on_reveal(&mut self, from: PeerId, m: &Message) -> Result<(), Reject> {
        let Message::Reveal { round, segment, blob, start, end } = m else {
            return Err(Reject::Unexpected("a reveal"));
        };
        let open_round = self.open.as_ref().map(|o| o.round);
        let open = match self.open.as_mut() {
            Some(o) if o.round == *round => o,
            _ => return Err(Reject::WrongRound { got: *round, want: open_round }),
        };
        match open.checks.reveal(&self.spec, &from, *segment, (*blob, start, end)) {
            Ok(Some(blob)) => self.dispatch(from, blob),
            Ok(None) => {} // not challenged, or a resend
            Err(outcome) => self.verdict(from, outcome, None),
        }
        Ok(())
    }

    /// A revealed check goes to a validator, or (none present) is fetched to be run here.
    fn dispatch(&mut self, peer: PeerId, blob: Hash32) {
        let validator = match self.cfg.validate {
            crate::Validate::Validators => self.next_validator(),
            _ => None,
        };
        let Some(v) = validator else {
            let len = crate::LocalState::blob_len(self.spec.n());
            self.out.push(Output::Fetch { from: peer, hash: blob, len });
            return;
        };
        let decoy = self.decoy(&peer).then_some(self.secret);
        let addr = self.addrs.get(&peer).cloned().unwrap_or_default();
        let open = self.open.as_mut().expect("a reveal of the open round");
        if let Some(task) = open.checks.delegate(&peer, (v, &addr), decoy.as_ref()) {
            self.out.push(Output::Send { to: v, message: task });
        }
    }

    /// Validators in turn, round-robin.
    pub(super) fn next_validator(&mut self) -> Option<PeerId> {
        let n = self.validators.len();
        let v = self.validators.keys().nth(self.delegated % n.max(1)).copied();
        self.delegated = self.delegated.wrapping_add(1);
        v
    }

    /// Whether `peer`'s task this round goes out first as a decoy (`decoy_rate`).
    fn decoy(&self, peer: &PeerId) -> bool {
        let round = self.open.as_ref().map_or(0, |o| o.round);
        let key = [&b"decoy"[..], peer, &round.to_le_bytes()].concat();
        crate::pick(&self.secret, blake3::hash(&key).as_bytes(), peer, self.cfg.decoy_rate, 1).is_some()
    }

    /// A validator joined (or rejoined): it gets the run's config.
    pub(super) fn validator_join(&mut self, now_ms: u64, from: PeerId) -> Result<(), Reject> {
        if !self.validators.contains_key(&from) && self.validators.len() >= MAX_VALIDATORS {
            return Err(Reject::Full(self.validators.len()));
        }
        if self.members.contains_key(&from) {
            return Err(Reject::Unexpected("JoinValidator from a trainer"));
        }
        if self.validators.insert(from, now_ms).is_none() {
            self.event(Event::Joined(from));
        }
        let welcome = Message::Welcome {
            round: self.global.round,
            checkpoint: self.state_hash,
            state_hash: self.state_hash,
            config: self.cfg.to_toml(),
            peers: Vec::new(),
        };
        self.out.push(Output::Send { to: from, message: welcome });
        Ok(())
    }

    /// A validator's `Verdict` arrived.
    pub(super) fn on_verdict(&mut self, from: PeerId, m: &Message) -> Result<(), Reject> {
        let Message::Verdict { round, peer, finding, reached, .. } = m else {
            return Err(Reject::Unexpected("a verdict"));
        };
        let Some(open) = self.open.as_mut().filter(|o| o.round == *round) else {
            return Err(Reject::WrongRound { got: *round, want: self.open.as_ref().map(|o| o.round) });
        };
        match open.checks.verdict(&self.spec, &from, peer, (*finding, *reached)) {
            Next::Ignore => {}
            Next::Settle(outcome) => self.verdict(*peer, outcome, Some(from)),
            Next::Delegate(v) => {
                let addr = self.addrs.get(peer).cloned().unwrap_or_default();
                if let Some(task) = open.checks.delegate(peer, (v, &addr), None) {
                    self.out.push(Output::Send { to: v, message: task });
                }
            }
            Next::Referee(blob) => {
                let len = crate::LocalState::blob_len(self.spec.n());
                self.out.push(Output::Fetch { from: *peer, hash: blob, len });
            }
            Next::Dispute(opened) => self.open_dispute(*peer, opened),
        }
        Ok(())
    }

    /// A fetched blob, if it is a revealed state a check waits for: handles it and says so.
    pub(super) fn reveal_blob(&mut self, from: PeerId, hash: Hash32, got: &Result<Vec<u8>, String>) -> bool {
        let Some(open) = self.open.as_mut() else { return false };
        if !open.checks.wants(&from, &hash) {
            return false;
        }
        match got {
            Ok(b) if blake3::hash(b).as_bytes() == &hash => {
                let job = open.checks.job(&from, b.clone()).expect("the check waits for this blob");
                self.out.push(Output::Check(Box::new(job)));
            }
            _ => self.verdict(from, Outcome::NoReveal, None),
        }
        true
    }

    /// The driver ran a check asked for by [`Output::Check`]. `Err` is the checker's own
    /// failure: nothing is proven against the trainer. When the check referees a validator's
    /// finding, a finding the coordinator's own run contradicts refuses the validator.
    pub fn checked(
        &mut self,
        now_ms: u64,
        round: u64,
        peer: PeerId,
        got: Result<Outcome, CoordError>,
    ) -> Vec<Output> {
        if let Some(open) = self.open.as_ref().filter(|o| o.round == round) {
            let second = open.checks.second(&peer);
            let outcome = got.unwrap_or_else(|e| Outcome::Unchecked(e.to_string()));
            if let Some((v, claimed, decoy)) = second {
                // Only the coordinator's own completed run rules on the validator.
                let ruled = !matches!(outcome, Outcome::Unchecked(_));
                if ruled && claimed != honest_finding(&outcome, decoy) {
                    self.refuse_validator(v, round, format!("{claimed:?}"), None);
                }
            }
            self.verdict(peer, outcome, None);
        }
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }

    /// A validator whose finding was overturned is refused from now on (and slashed: the
    /// ledger pays the whistleblower's share to `proven_by`, if anyone).
    pub(super) fn refuse_validator(
        &mut self,
        v: PeerId,
        round: u64,
        claimed: String,
        proven_by: Option<PeerId>,
    ) {
        // Overturned twice in a round (two decoys settling): refused and slashed once.
        if self.banned.len() >= MAX_KNOWN_PEERS || self.banned.contains_key(&v) {
            return;
        }
        self.validators.remove(&v);
        self.banned.insert(v, round);
        let outcome = Outcome::WrongVerdict(claimed);
        self.tell_refused(v, round, &outcome);
        self.out.push(Output::Persist(Record::Verdict { round, peer: v, segment: 0, outcome, by: None }));
        let (passed, cheat) = (false, true);
        self.ledger(tessera_ledger::Entry::Verdict {
            round,
            peer: v,
            segment: 0,
            passed,
            cheat,
            by: None,
            proven_by,
        });
        self.event(Event::Banned { peer: v, round });
        if let Some(open) = self.open.as_mut() {
            // A refused validator's scores of the round weigh nothing in its consensus.
            open.weights.remove(&v);
            open.weighing.retain(|(x, _)| *x != v);
            for (peer, blob) in open.checks.take_back(Some(&v)) {
                let len = crate::LocalState::blob_len(self.spec.n());
                self.out.push(Output::Fetch { from: peer, hash: blob, len });
            }
        }
    }

    /// Settles `peer`'s check once (`by` the validator whose finding stands, or the
    /// coordinator): persists the verdict, leaves a failed update out, and refuses a proven
    /// cheat from now on.
    pub(super) fn verdict(&mut self, peer: PeerId, outcome: Outcome, by: Option<PeerId>) {
        let Some(open) = self.open.as_mut() else { return };
        let Some(segment) = open.checks.settle(&peer, outcome.clone()) else { return };
        let round = open.round;
        if !outcome.passed() {
            let reason = Reject::FailedCheck { segment, outcome: outcome.clone() };
            open.slots.set(peer, Slot::Rejected(reason.clone()));
            self.out.push(Output::Event(Event::Rejected { from: peer, reason }));
        }
        self.write_verdict(round, peer, segment as u32, &outcome, by);
        self.event(Event::Checked { round, peer, segment, outcome, by });
    }

    /// Persists a verdict on `peer` (`by` a validator, whose it is to prove, or the
    /// coordinator), writes it to the ledger, and refuses a proven cheat from now on.
    fn write_verdict(
        &mut self,
        round: u64,
        peer: PeerId,
        segment: u32,
        outcome: &Outcome,
        by: Option<PeerId>,
    ) {
        let rec = Record::Verdict { round, peer, segment: u64::from(segment), outcome: outcome.clone(), by };
        self.out.push(Output::Persist(rec));
        let (passed, cheat) = (outcome.passed(), outcome.proves_cheat());
        self.ledger(tessera_ledger::Entry::Verdict {
            round,
            peer,
            segment,
            passed,
            cheat,
            by,
            proven_by: by,
        });
        if cheat {
            self.ban(peer, round, outcome);
        }
    }

    /// Screening proved `peer`'s update of the open round a bit-for-bit duplicate: the
    /// verdict is the coordinator's own (it is the whistleblower; the share is burned), on
    /// the update itself rather than a segment, and the trainer is refused from now on.
    pub(super) fn convict_duplicate(&mut self, round: u64, peer: PeerId, of: String) {
        let outcome = Outcome::Duplicate(of);
        assert!(outcome.proves_cheat() && !outcome.passed(), "a duplicate is proof");
        self.write_verdict(round, peer, tessera_ledger::SEGMENT_UPDATE, &outcome, None);
    }

    /// Refuses a trainer proven to have cheated from now on (and tells it why).
    fn ban(&mut self, peer: PeerId, round: u64, why: &Outcome) {
        if self.banned.len() >= MAX_KNOWN_PEERS {
            return;
        }
        self.tell_refused(peer, round, why);
        self.banned.insert(peer, round);
        self.members.remove(&peer);
        self.addrs.remove(&peer);
        self.event(Event::Banned { peer, round });
    }

    /// Tells a peer proven to have cheated that it is refused, and why (so it stops, rather
    /// than wait out the run).
    fn tell_refused(&mut self, to: PeerId, round: u64, why: &Outcome) {
        let reason = super::truncate(why.to_string());
        self.out.push(Output::Send { to, message: Message::Refused { round, reason } });
    }

    /// Unanswered challenges of trainers that left (or, at the `deadline`, of any trainer) are
    /// settled as not revealed; checks delegated to validators that left (or, at the deadline,
    /// to any) are taken back and run here.
    pub(super) fn expire_checks(&mut self, now_ms: u64, deadline: bool) {
        let silent = super::silent(&self.validators, now_ms, self.cfg.silence_ms);
        for v in &silent {
            self.validators.remove(v);
            self.event(Event::Left(*v));
        }
        self.retry_disputes(now_ms);
        self.expire_disputes(now_ms, deadline);
        self.expire_scores(deadline);
        let Some(open) = self.open.as_mut() else { return };
        let mut back = Vec::new();
        for v in &silent {
            back.extend(open.checks.take_back(Some(v)));
        }
        if deadline {
            back.extend(open.checks.take_back(None));
        }
        let len = crate::LocalState::blob_len(self.spec.n());
        for (peer, hash) in back {
            self.out.push(Output::Fetch { from: peer, hash, len });
        }
        let members = &self.members;
        for p in open.checks.unanswered(|p| !deadline && members.contains_key(p)) {
            self.verdict(p, Outcome::NoReveal, None);
        }
    }

    /// The validators present.
    pub fn validators(&self) -> impl Iterator<Item = &PeerId> {
        self.validators.keys()
    }

    /// Trainers and validators proven to have cheated, with the round each was caught in.
    pub fn banned(&self) -> impl Iterator<Item = (&PeerId, &u64)> {
        self.banned.iter()
    }
}

/// What an honest validator reports on a check whose true outcome (the coordinator's own run)
/// is `outcome`; a decoy's replaced end leaf cannot be reached.
fn honest_finding(outcome: &Outcome, decoy: bool) -> Finding {
    match outcome {
        Outcome::BadReveal(_) => Finding::BadReveal,
        _ if decoy => Finding::Mismatch,
        Outcome::Pass
        | Outcome::Unchecked(_)
        | Outcome::NoReveal
        | Outcome::WrongVerdict(_)
        | Outcome::Duplicate(_) => Finding::Pass,
        Outcome::Mismatch => Finding::Mismatch,
        Outcome::WrongUpdate => Finding::WrongUpdate,
    }
}

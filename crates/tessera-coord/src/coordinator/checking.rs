//! The coordinator as checker (`validate = "coordinator"`): drawing spot checks at commit
//! time, taking reveals and their blobs, handing jobs to the driver, and acting on outcomes
//! (a failed check leaves the update out; a proven cheat is refused from then on). The
//! round's bookkeeping is [`crate::check::Checks`]; this is where outcomes reach the round.

use super::*;

impl Coordinator {
    /// A commit was accepted for fetching: maybe challenge it.
    pub(super) fn draw_check(&mut self, from: PeerId, root: Hash32, update: Hash32) {
        let pairs = self.pairs();
        let Some(open) = self.open.as_mut() else { return };
        let Some(a) = open.assignments.iter().find(|a| a.peer == from) else { return };
        let state = if pairs { self.replicas.get(&from) } else { Some(&self.global) };
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
            Ok(hash) if open.checks.wants(&from, &hash) => {
                let len = crate::LocalState::blob_len(self.spec.n());
                self.out.push(Output::Fetch { from, hash, len });
            }
            Ok(_) => {} // not challenged, or a resend
            Err(outcome) => self.verdict(from, outcome),
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
            _ => self.verdict(from, Outcome::NoReveal),
        }
        true
    }

    /// The driver ran a check asked for by [`Output::Check`]. `Err` is the checker's own
    /// failure: nothing is proven against the trainer.
    pub fn checked(
        &mut self,
        now_ms: u64,
        round: u64,
        peer: PeerId,
        got: Result<Outcome, CoordError>,
    ) -> Vec<Output> {
        if self.open.as_ref().is_some_and(|o| o.round == round) {
            let outcome = got.unwrap_or_else(|e| Outcome::Unchecked(e.to_string()));
            self.verdict(peer, outcome);
        }
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }

    /// Settles `peer`'s check once: persists the verdict, leaves a failed update out, and
    /// refuses a proven cheat from now on.
    pub(super) fn verdict(&mut self, peer: PeerId, outcome: Outcome) {
        let Some(open) = self.open.as_mut() else { return };
        let Some(segment) = open.checks.settle(&peer, outcome.clone()) else { return };
        let round = open.round;
        if !outcome.passed() {
            let reason = Reject::FailedCheck { segment, outcome: outcome.clone() };
            if let Some(slot) = open.slots.get_mut(&peer) {
                *slot = Slot::Rejected(reason.clone());
            }
            self.out.push(Output::Event(Event::Rejected { from: peer, reason }));
        }
        let rec = Record::Verdict { round, peer, segment: segment as u64, outcome: outcome.clone() };
        self.out.push(Output::Persist(rec));
        if outcome.proves_cheat() && self.banned.len() < MAX_KNOWN_PEERS {
            self.banned.insert(peer, round);
            self.members.remove(&peer);
            self.addrs.remove(&peer);
            self.event(Event::Banned { peer, round });
        }
        self.event(Event::Checked { round, peer, segment, outcome });
    }

    /// Checks waiting on trainers that left, or (`deadline`) on any trainer, are settled as
    /// not revealed.
    pub(super) fn expire_checks(&mut self, deadline: bool) {
        let Some(open) = &self.open else { return };
        let members = &self.members;
        let stale = open.checks.waiting_on(|p| !deadline && members.contains_key(p));
        for p in stale {
            self.verdict(p, Outcome::NoReveal);
        }
    }

    /// Trainers proven to have cheated, with the round each was caught in.
    pub fn banned(&self) -> impl Iterator<Item = (&PeerId, &u64)> {
        self.banned.iter()
    }
}

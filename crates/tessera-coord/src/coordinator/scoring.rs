//! Scoring inside the round (`score_batches` > 0): each accepted update is scored by the
//! driver ([`crate::run_score`], off the protocol's thread) against the round's start state,
//! and one that raises the held-out loss by more than `harm_tolerance` is left out as
//! harmful. Every score is persisted, for the ledger. NoLoCo, with no shared state, is not
//! scored.

use std::sync::Arc;

use super::*;

impl Coordinator {
    /// `peer`'s update was accepted for the aggregate: ask for its score.
    pub(super) fn ask_score(&mut self, peer: PeerId) {
        if self.cfg.score_batches == 0 || self.pairs() {
            return;
        }
        let Some(open) = self.open.as_mut() else { return };
        let Some(Slot::Accepted { values, .. }) = open.slots.get(&peer) else { return };
        let Some(a) = open.assignments.iter().find(|a| a.peer == peer) else { return };
        let state = open.start_state.get_or_insert_with(|| Arc::new(self.global.clone())).clone();
        let job = crate::ScoreJob {
            round: open.round,
            peer,
            unit: (a.data_round, a.slot),
            values: values.clone(),
            state,
            batches: self.cfg.score_batches,
        };
        open.scoring.insert(peer);
        self.out.push(Output::Score(Box::new(job)));
    }

    /// The driver scored an update asked for by [`Output::Score`]. `Err` is the scorer's own
    /// failure: the update stays in, unscored.
    pub fn scored(
        &mut self,
        now_ms: u64,
        round: u64,
        peer: PeerId,
        got: Result<crate::Score, CoordError>,
    ) -> Vec<Output> {
        let tolerance = self.cfg.harm_tolerance;
        let open = self.open.as_mut().filter(|o| o.round == round);
        if let Some(open) = open.filter(|o| o.scoring.contains(&peer)) {
            open.scoring.remove(&peer);
            match got {
                Ok(score) => {
                    let harmful = score.held_out < -tolerance;
                    self.out.push(Output::Persist(Record::Scored { round, peer, score, harmful }));
                    if let (true, Some(slot)) = (harmful, open.slots.get_mut(&peer)) {
                        let reason = Reject::Harmful { held_out: score.held_out };
                        *slot = Slot::Rejected(reason.clone());
                        self.out.push(Output::Event(Event::Rejected { from: peer, reason }));
                    }
                    self.out.push(Output::Event(Event::Scored { round, peer, score, harmful }));
                }
                Err(e) => self.out.push(Output::Event(Event::Unscored { round, peer, why: e.to_string() })),
            }
        }
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }
}

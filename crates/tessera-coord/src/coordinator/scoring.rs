//! Scoring inside the round (`score_batches` > 0): each accepted update is scored against the
//! round's start state ([`crate::run_score`]), and one that raises the held-out loss by more
//! than `harm_tolerance` is left out as harmful. With `validate = "validators"` and a
//! validator present, the score is a validator's task (`ScoreTask`, answered by
//! `ScoreReport`); otherwise the driver scores it off the protocol's thread. Scores are
//! bit-reproducible, so the coordinator referees exactly: it re-scores every update a
//! validator calls harmful, and a share (`decoy_rate`) of the others, and refuses a validator
//! whose score is not bit for bit its own. Every score is persisted (with who scored it), for
//! the ledger. NoLoCo, with no shared state, is not scored.
//!
//! With two or more validators every one of them scores every accepted update (up to
//! `tessera_ledger::MAX_WEIGHING`): the first asked decides harm as above, and each signs its
//! scores, which the round's `Weights` entries carry into the ledger, where Yuma consensus
//! pays the round by them. The others' scores are refereed too: of an update drawn for an
//! audit, each validator's score must be the coordinator's own bit for bit, or that
//! validator is refused (and its weights of the round dropped). The round closes once every
//! validator asked has answered, or at its deadline.

use std::sync::Arc;

use super::*;

/// One update being scored: the job, the validator it was handed to (`None`: the
/// coordinator's own run), and a validator's score that run referees.
#[derive(Debug, Clone)]
pub(super) struct Scoring {
    job: Box<crate::ScoreJob>,
    by: Option<PeerId>,
    claimed: Option<(PeerId, crate::Score)>,
}

impl Coordinator {
    /// `peer`'s update, decoded to `values`, was accepted for the aggregate: ask for its score.
    pub(super) fn ask_score(&mut self, peer: PeerId, values: Vec<f32>) {
        if self.cfg.score_batches == 0 || self.pairs() {
            return;
        }
        let validator = match self.cfg.validate {
            crate::Validate::Validators => self.next_validator(),
            _ => None,
        };
        let (state_hash, update_len) = (self.state_hash, self.spec.update_len);
        let addr = self.addrs.get(&peer).cloned().unwrap_or_default();
        let Some(open) = self.open.as_mut() else { return };
        let Some(Slot::Accepted { hash, .. }) = open.slots.get(&peer) else { return };
        let Some(a) = open.assignments.iter().find(|a| a.peer == peer) else { return };
        let state = open.start_state.get_or_insert_with(|| Arc::new(self.global.clone())).clone();
        assert_eq!(state.hash(), state_hash, "an update is scored against the round's start state");
        let job = Box::new(crate::ScoreJob {
            round: open.round,
            peer,
            unit: (a.data_round, a.slot),
            values,
            state,
            batches: self.cfg.score_batches,
        });
        let task = Message::ScoreTask {
            round: open.round,
            peer,
            addr,
            unit: job.unit,
            update: *hash,
            update_len,
            state: state_hash,
            batches: job.batches,
        };
        assert!(!open.scoring.contains_key(&peer), "an update is scored once");
        open.scoring.insert(peer, Scoring { job: job.clone(), by: validator, claimed: None });
        // Several validators: the others score it too, for Yuma.
        let weighers: Vec<PeerId> = match (validator, self.validators.len() >= 2) {
            (Some(first), true) => self.validators.keys().copied().filter(|v| *v != first).collect(),
            _ => Vec::new(),
        };
        for v in weighers.into_iter().take(tessera_ledger::MAX_WEIGHING - 1) {
            open.weighing.insert((v, peer));
            self.out.push(Output::Send { to: v, message: task.clone() });
        }
        match validator {
            Some(v) => self.out.push(Output::Send { to: v, message: task }),
            None => self.out.push(Output::Score(job)),
        }
    }

    /// Keeps a validator's signed score of `peer`'s update for the round's `Weights`, when
    /// it was asked for one (as the first scorer, or as one of several).
    fn weigh(
        &mut self,
        from: PeerId,
        round: u64,
        peer: PeerId,
        score: Option<crate::Score>,
        sig: &[u8],
    ) -> Result<(), Reject> {
        let audit = self.audit(&peer);
        let Some(open) = self.open.as_mut().filter(|o| o.round == round) else { return Ok(()) };
        let asked = open.weighing.remove(&(from, peer));
        let first = open.scoring.get(&peer).is_some_and(|s| s.by == Some(from));
        let (Some(score), false) = (score, sig.is_empty()) else { return Ok(()) };
        if !(asked || first) {
            return Ok(());
        }
        let signed = tessera_ledger::SignedScore { peer, score: score.micro(), sig: sig.to_vec() };
        if tessera_ledger::check_score(&from, round, &signed).is_err() {
            return Err(Reject::Unexpected("a score whose signature does not verify"));
        }
        let row = open.weights.entry(from).or_default();
        assert!(row.len() < tessera_ledger::MAX_ROUND_ENTRIES, "one score per accepted update");
        row.insert(peer, signed);
        // One of several, drawn for an audit: refereed against the coordinator's own score
        // (the first scorer's claim is refereed in `on_score_report`).
        if asked && !first && audit {
            match open.own_scores.get(&peer) {
                Some(own) => {
                    let own = *own;
                    self.referee_claim(round, peer, (from, score), &own);
                }
                None => open.score_claims.entry(peer).or_default().push((from, score)),
            }
        }
        Ok(())
    }

    /// A validator's claimed score of `peer`'s update against the coordinator's `own`: a
    /// validator whose score is not it, bit for bit, is refused (its weights are dropped).
    fn referee_claim(
        &mut self,
        round: u64,
        peer: PeerId,
        (v, claimed): (PeerId, crate::Score),
        own: &crate::Score,
    ) {
        if claimed.to_bits() == own.to_bits() {
            return;
        }
        let why = format!("scored {}'s update {claimed:?} as one of several, not {own:?}", hex4(&peer));
        self.refuse_validator(v, round, why, None);
        assert!(
            self.open.as_ref().is_none_or(|o| !o.weights.contains_key(&v)),
            "a refused scorer weighs nothing"
        );
    }

    /// A validator's `ScoreReport` arrived.
    pub(super) fn on_score_report(&mut self, from: PeerId, m: &Message) -> Result<(), Reject> {
        let Message::ScoreReport { round, peer, score, sig } = m else {
            return Err(Reject::Unexpected("a score report"));
        };
        let want = self.open.as_ref().map(|o| o.round);
        if want.is_some_and(|w| *round < w) {
            return Ok(()); // late: the round it scored is closed
        }
        if want != Some(*round) {
            return Err(Reject::WrongRound { got: *round, want });
        }
        let claimed = score.map(crate::Score::from_bits);
        self.weigh(from, *round, *peer, claimed, sig)?;
        let (tolerance, audit) = (self.cfg.harm_tolerance, self.audit(peer));
        let open = self.open.as_mut().expect("checked above");
        let Some(s) = open.scoring.get_mut(peer).filter(|s| s.by == Some(from)) else {
            return Ok(()); // taken back already, or not this validator's
        };
        match claimed {
            // Harm claimed, or drawn for an audit: the coordinator scores it too and compares.
            Some(c) if harms(&c, tolerance) || audit => {
                s.by = None;
                s.claimed = Some((from, c));
                self.out.push(Output::Score(s.job.clone()));
            }
            Some(c) => {
                open.scoring.remove(peer);
                self.settle_score(*round, *peer, c, Some(from));
            }
            // It could not score: the coordinator does, and nobody is ruled against.
            None => {
                s.by = None;
                self.out.push(Output::Score(s.job.clone()));
            }
        }
        Ok(())
    }

    /// Whether a validator's score of `peer`'s update this round is re-scored as an audit.
    fn audit(&self, peer: &PeerId) -> bool {
        let round = self.open.as_ref().map_or(0, |o| o.round);
        let key = [&b"score-audit"[..], peer, &round.to_le_bytes()].concat();
        crate::pick(&self.secret, blake3::hash(&key).as_bytes(), peer, self.cfg.decoy_rate, 1).is_some()
    }

    /// Score tasks of validators that left (or, at the `deadline`, of any) are taken back.
    pub(super) fn expire_scores(&mut self, deadline: bool) {
        let Some(open) = self.open.as_mut() else { return };
        open.weighing.retain(|(v, _)| !deadline && self.validators.contains_key(v));
        for s in open.scoring.values_mut() {
            if s.by.is_some_and(|v| deadline || !self.validators.contains_key(&v)) {
                s.by = None;
                self.out.push(Output::Score(s.job.clone()));
            }
        }
    }

    /// The driver scored an update asked for by [`Output::Score`]. `Err` is the scorer's own
    /// failure: the update stays in, unscored. A validator's score this run referees must be
    /// this one, bit for bit.
    pub fn scored(
        &mut self,
        now_ms: u64,
        round: u64,
        peer: PeerId,
        got: Result<crate::Score, CoordError>,
    ) -> Vec<Output> {
        let open = self.open.as_mut().filter(|o| o.round == round);
        let own = open.and_then(|o| o.scoring.remove(&peer).filter(|s| s.by.is_none()));
        match (own, got) {
            (Some(s), Ok(score)) => {
                if let Some((v, c)) = s.claimed.filter(|(_, c)| c.to_bits() != score.to_bits()) {
                    self.refuse_validator(v, round, format!("score {c:?}, not {score:?}"), None);
                }
                let open = self.open.as_mut().expect("the round is open: its scoring was in it");
                open.own_scores.insert(peer, score);
                for claim in open.score_claims.remove(&peer).unwrap_or_default() {
                    self.referee_claim(round, peer, claim, &score);
                }
                self.settle_score(round, peer, score, None);
            }
            (Some(_), Err(e)) => {
                self.out.push(Output::Event(Event::Unscored { round, peer, why: e.to_string() }))
            }
            (None, _) => {}
        }
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }

    /// Records `peer`'s score (`by` the validator whose score stands), and leaves a harmful
    /// update out.
    fn settle_score(&mut self, round: u64, peer: PeerId, score: crate::Score, by: Option<PeerId>) {
        let harmful = harms(&score, self.cfg.harm_tolerance);
        // The ledger weighs rewards by the held-out gain, in millionths.
        self.round_scores.insert(peer, score.micro());
        self.out.push(Output::Persist(Record::Scored { round, peer, score, harmful, by }));
        let open = self.open.as_mut().filter(|o| o.round == round);
        if let (true, Some(open)) = (harmful, open.filter(|o| o.slots.contains(&peer))) {
            let reason = Reject::Harmful { held_out: score.held_out };
            open.slots.set(peer, Slot::Rejected(reason.clone()));
            self.out.push(Output::Event(Event::Rejected { from: peer, reason }));
        }
        self.out.push(Output::Event(Event::Scored { round, peer, score, harmful, by }));
    }
}

fn hex4(p: &PeerId) -> String {
    tessera_tensor::hex(&p[..4])
}

/// Whether a score says the update harms the model: it raises the held-out loss by more than
/// `tolerance` (or the loss is not a number at all).
fn harms(s: &crate::Score, tolerance: f64) -> bool {
    s.held_out.is_nan() || s.held_out < -tolerance
}

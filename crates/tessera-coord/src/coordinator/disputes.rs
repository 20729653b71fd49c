//! The coordinator as the referee of disputes. When a validator reports that re-running a
//! trainer's segment reaches another end state, the two are put through the dispute game
//! ([`tessera_verify::Dispute`]): the coordinator asks both the same question (`DisputeAsk`),
//! compares their `DisputeAnswer`s, and narrows the disagreement to one step and then one
//! operator of its op trace. It then fetches that operator's kernel and inputs from the
//! trainer, checks them against the hashes both named, recomputes the one operator and rules;
//! when the operators cannot decide (the chains agree, or the inputs differ), it fetches the
//! agreed state and recomputes that one step ([`Output::Recompute`]). The loser is refused
//! from then on (a false accusation loses too); a side that does not answer by the round's
//! deadline although it was heard from since the question was put loses by timeout; one that
//! left, joined again during the round (a restarted trainer has lost its states), or was not
//! heard from at all (crashed or cut off: nothing is proven), has its check
//! voided (a trainer's update is left out unrevealed; a validator's check is taken back). A
//! question still unanswered is put again every [`DISPUTE_RETRY_HEARTBEATS`] heartbeats, and a
//! blob transfer that fails is retried up to [`MAX_DISPUTE_REFETCHES`] times, so that a lost
//! frame never decides a dispute. A validator's loss proves its accusation false,
//! not the trainer's commitment right, so the coordinator then checks the segment itself. Every dispute is persisted with the exact step and
//! operator decided, the exchanges and the bytes.

use tessera_verify::{Ask, Dispute, EntryHashes, Loser, Ruling};
use tessera_wire::{Answer, Finding, Question};

use super::round_checks::Opened;
use super::*;

/// Heartbeats between puttings of a question a side has not answered.
pub const DISPUTE_RETRY_HEARTBEATS: u64 = 3;
/// Heartbeats a question must have been out before, past the deadline, a side's silence on it
/// decides anything (the round waits for the dispute meanwhile): an answer in flight from a
/// slow peer is not silence.
pub const DISPUTE_PATIENCE_HEARTBEATS: u64 = 4 * DISPUTE_RETRY_HEARTBEATS;
/// Puts of a question that a side must have had the chance to answer (it was heard from
/// after the putting) before its silence loses it the dispute. A lossy network drops a
/// question or its answer now and then; at 10% loss each way a chance is missed with
/// probability 0.19, so eight in a row are missed about once in 600,000 disputes (seed 43613:
/// four lost frames in a row had an honest trainer forfeit when one chance was enough).
pub const DISPUTE_SILENT_CHANCES: u32 = 8;
/// Most times a dispute's failed blob transfer is retried.
pub const MAX_DISPUTE_REFETCHES: u32 = 3;

/// A dispute under way over one trainer's check.
#[derive(Debug, Clone)]
pub(super) struct Game {
    validator: PeerId,
    d: Dispute,
    unit: (u64, u64),
    /// The segment's length and the operators per step (what bounds the exchanges).
    bound: (u64, u64),
    /// The question out, and the answers in: `[trainer, validator]`.
    asked: Option<Question>,
    got: [Option<Answer>; 2],
    /// The operator entry both sides named (what the referee recomputes), and its kernel.
    entry: Option<EntryHashes>,
    kernel: Option<&'static str>,
    /// A blob the referee waits for from the trainer, or its own recomputation in flight.
    fetching: Option<Hash32>,
    running: bool,
    /// When the question out was first seen unanswered on a tick, and last put again.
    asked_at: Option<u64>,
    retried_at: u64,
    /// Per side (`[trainer, validator]`): when the question was last put to it (0: at
    /// `asked_at`), and the puttings it was heard from after (its chances to answer).
    put_at: [u64; 2],
    chances: [u32; 2],
    /// The blob awaited's length, and the transfers of it that failed.
    fetch_len: u64,
    refetches: u32,
    bytes: u64,
    /// What the operator's replay rests on (its inputs blob is stored), for the ledger.
    evidence: Option<tessera_ledger::Evidence>,
}

/// The referee's recomputation of one step: run it, then call [`Coordinator::recomputed`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecomputeJob {
    pub round: u64,
    pub peer: PeerId,
    pub unit: (u64, u64),
    pub step: u64,
    /// The state before the step, as the trainer served it, and the hash both sides agreed on.
    pub blob: Vec<u8>,
    pub agreed: Hash32,
}

impl RecomputeJob {
    /// Runs it ([`crate::recompute_step`]).
    pub fn run(
        &self,
        spec: &RunSpec,
        ds: &tessera_data::Dataset,
    ) -> Result<Result<Hash32, String>, CoordError> {
        crate::recompute_step(spec, ds, self.unit, self.step, &self.blob, &self.agreed)
    }
}

/// Bytes a side's answer reveals.
fn answer_bytes(a: &Answer) -> u64 {
    match a {
        Answer::Hash(_) => 32,
        Answer::Entry { inputs, outputs, .. } => 32 * (1 + inputs.len() + outputs.len()) as u64,
        Answer::Blob { .. } => 40,
    }
}

impl Coordinator {
    /// The trainer disputes `o.validator`'s mismatch on its check: the game begins.
    pub(super) fn open_dispute(&mut self, trainer: PeerId, o: Opened) {
        let ops = match self.ops {
            Some(n) => Ok(n),
            None => crate::ops_per_step(&self.spec),
        };
        let game = ops.map_err(|e| e.to_string()).and_then(|ops| {
            self.ops = Some(ops);
            Dispute::new(o.seg.0, o.seg.1, ops, o.start, o.ends).map_err(|e| e.to_string())
        });
        let (d, ops) = match game {
            Ok(d) => (d, self.ops.expect("counted above")),
            // The referee's own failure: nothing is proven against either side.
            Err(e) => return self.verdict(trainer, Outcome::Unchecked(e), None),
        };
        let g = Game {
            validator: o.validator,
            d,
            unit: o.unit,
            bound: (o.seg.1 - o.seg.0, ops),
            asked: None,
            got: [None, None],
            entry: None,
            kernel: None,
            fetching: None,
            running: false,
            asked_at: None,
            retried_at: 0,
            put_at: [0; 2],
            chances: [0; 2],
            fetch_len: 0,
            refetches: 0,
            bytes: 0,
            evidence: None,
        };
        let open = self.open.as_mut().expect("a dispute of the open round");
        assert!(!open.checks.games.contains_key(&trainer), "one dispute per check");
        open.checks.games.insert(trainer, g);
        let (round, validator) = (open.round, o.validator);
        self.ledger(tessera_ledger::Entry::DisputeOpened { round, trainer, validator });
        self.ask_next(trainer);
    }

    fn game(&mut self, trainer: &PeerId) -> Option<&mut Game> {
        self.open.as_mut()?.checks.games.get_mut(trainer)
    }

    /// Puts the game's next question to the side(s) it concerns, or ends it.
    fn ask_next(&mut self, trainer: PeerId) {
        let round = self.open.as_ref().map_or(0, |o| o.round);
        let Some(g) = self.game(&trainer) else { return };
        let (q, both) = match g.d.ask() {
            Ask::State { step } => (Question::State { step }, true),
            Ask::Prefix { step, op } => (Question::Prefix { step, op }, true),
            Ask::Entry { step, op } => (Question::Entry { step, op }, true),
            Ask::ReplayOp { step, op } => (Question::Inputs { step, op }, false),
            Ask::RecomputeStep { step } => (Question::StateBlob { step }, false),
            Ask::Ruled(r) => return self.conclude(trainer, r),
        };
        g.asked = Some(q);
        g.got = [None, None];
        g.asked_at = None;
        g.put_at = [0; 2];
        g.chances = [0; 2];
        let v = g.validator;
        let ask = Message::DisputeAsk { round, peer: trainer, question: q };
        self.out.push(Output::Send { to: trainer, message: ask.clone() });
        if both {
            self.out.push(Output::Send { to: v, message: ask });
        }
    }

    /// A `DisputeAnswer` arrived from one of the sides.
    pub(super) fn on_dispute_answer(&mut self, from: PeerId, m: &Message) -> Result<(), Reject> {
        let Message::DisputeAnswer { round, peer, question, answer } = m else {
            return Err(Reject::Unexpected("a dispute answer"));
        };
        let want = self.open.as_ref().map(|o| o.round);
        if want.is_some_and(|w| *round < w) {
            return Ok(()); // a game that ended with its round: a late answer changes nothing
        }
        if want != Some(*round) {
            return Err(Reject::WrongRound { got: *round, want });
        }
        // A game that ended (ruled, or dropped with its validator) while a question was out:
        // the answer is late, not wrong.
        let Some(g) = self.game(peer) else { return Ok(()) };
        let side = match from {
            f if f == *peer => 0,
            f if f == g.validator => 1,
            _ => return Err(Reject::Unexpected("an answer from outside the dispute")),
        };
        let Some(q) = g.asked else { return Err(Reject::Unexpected("an answer while the referee works")) };
        if *question != q {
            return Ok(()); // an answer to an earlier putting of a question already settled
        }
        let trainer_only = matches!(q, Question::Inputs { .. } | Question::StateBlob { .. });
        if g.got[side].is_some() || (trainer_only && side == 1) {
            return Ok(()); // the first answer stands
        }
        g.bytes += answer_bytes(answer);
        g.got[side] = Some(answer.clone());
        let complete = g.got[0].is_some() && (trainer_only || g.got[1].is_some());
        if complete {
            self.answered(*peer, q);
        }
        Ok(())
    }

    /// Both (or, for a blob, the trainer) answered `q`: feed the game.
    fn answered(&mut self, trainer: PeerId, q: Question) {
        let Some(g) = self.game(&trainer) else { return };
        let got = std::mem::take(&mut g.got);
        g.asked = None;
        let moved = match (q, got) {
            (
                Question::State { .. } | Question::Prefix { .. },
                [Some(Answer::Hash(t)), Some(Answer::Hash(v))],
            ) => g.d.revealed([t, v]).map_err(|_| Loser::Both),
            (Question::Entry { .. }, [Some(t), Some(v)]) => match (t, v) {
                (
                    Answer::Entry { kernel, inputs, outputs },
                    Answer::Entry { kernel: k, inputs: i, outputs: o },
                ) => {
                    let (te, ve) = (
                        EntryHashes { kernel, inputs, outputs },
                        EntryHashes { kernel: k, inputs: i, outputs: o },
                    );
                    g.entry = Some(te.clone());
                    g.d.entries([te, ve]).map_err(|_| Loser::Both)
                }
                (Answer::Entry { .. }, _) => Err(Loser::Validator),
                _ => Err(Loser::Trainer),
            },
            (Question::Inputs { .. } | Question::StateBlob { .. }, [Some(Answer::Blob { hash, len }), _]) => {
                return self.fetch_for_dispute(trainer, q, hash, len);
            }
            // An answer of the wrong kind forfeits (the trainer's first, if both are wrong).
            (_, [Some(t), _]) if !fits(&q, &t) => Err(Loser::Trainer),
            _ => Err(Loser::Validator),
        };
        match moved {
            Ok(()) => self.ask_next(trainer),
            Err(who) => self.forfeit(trainer, who),
        }
    }

    /// The trainer named the blob the referee needs: fetch it (after checking its length).
    fn fetch_for_dispute(&mut self, trainer: PeerId, q: Question, hash: Hash32, len: u64) {
        let fits = match q {
            Question::StateBlob { .. } => len == crate::LocalState::blob_len(self.spec.n()),
            _ => len <= crate::MAX_DISPUTE_BLOB,
        };
        if !fits {
            return self.forfeit(trainer, Loser::Trainer);
        }
        let Some(g) = self.game(&trainer) else { return };
        g.fetching = Some(hash);
        g.asked = Some(q);
        g.fetch_len = len;
        g.refetches = 0;
        g.bytes += len;
        self.out.push(Output::Fetch { from: trainer, hash, len });
    }

    /// A fetched blob, if a dispute waits for it: handles it and says so.
    pub(super) fn dispute_blob(&mut self, from: PeerId, hash: Hash32, got: &Result<Vec<u8>, String>) -> bool {
        let round = self.open.as_ref().map_or(0, |o| o.round);
        let Some(g) = self.game(&from).filter(|g| g.fetching == Some(hash)) else { return false };
        g.fetching = None;
        let q = g.asked.take();
        let bytes = match got {
            Ok(b) if blake3::hash(b).as_bytes() == &hash => b,
            // A transfer that failed proves nothing: it is tried again, a few times.
            Err(_) if g.refetches < MAX_DISPUTE_REFETCHES => {
                g.refetches += 1;
                g.fetching = Some(hash);
                g.asked = q;
                let len = g.fetch_len;
                self.out.push(Output::Fetch { from, hash, len });
                return true;
            }
            _ => {
                self.forfeit(from, Loser::Trainer);
                return true;
            }
        };
        match q {
            Some(Question::Inputs { .. }) => {
                let entry = g.entry.clone().expect("inputs are asked for after the entries");
                g.evidence = g.d.claims().map(|claims| tessera_ledger::Evidence {
                    inputs: hash,
                    inputs_len: bytes.len() as u64,
                    kernel: entry.kernel,
                    input_hashes: entry.inputs.clone(),
                    claims,
                });
                let replayed = crate::OpInputs::decode(bytes).and_then(|op| {
                    g.kernel = Some(op.kernel.name());
                    op.replay(&entry)
                });
                let ruled = match replayed {
                    Ok(outputs) => g.d.replayed(&outputs).map_err(|_| Loser::Both),
                    Err(_) => Err(Loser::Trainer), // not what both sides named
                };
                // Kept, before the ruling that rests on it, so that the audit can recompute it.
                self.out.push(Output::StoreBlob { hash, bytes: bytes.clone() });
                match ruled {
                    Ok(r) => self.conclude(from, r),
                    Err(who) => self.forfeit(from, who),
                }
            }
            Some(Question::StateBlob { step }) => {
                g.running = true;
                let (unit, agreed) = (g.unit, g.d.agreed().1);
                assert_eq!(g.d.agreed().0, step, "the step is recomputed from the agreed state");
                let job = RecomputeJob { round, peer: from, unit, step, blob: bytes.clone(), agreed };
                self.out.push(Output::Recompute(Box::new(job)));
            }
            _ => unreachable!("a dispute fetches only operator inputs and states"),
        }
        true
    }

    /// The driver ran a [`RecomputeJob`]: `Ok(Err(_))` means the trainer's blob was not the
    /// agreed state; `Err` is the referee's own failure (nobody is ruled against for it).
    pub fn recomputed(
        &mut self,
        now_ms: u64,
        round: u64,
        peer: PeerId,
        got: Result<Result<Hash32, String>, CoordError>,
    ) -> Vec<Output> {
        let open = self.open.as_ref().is_some_and(|o| o.round == round);
        if let Some(g) = self.game(&peer).filter(|g| open && g.running) {
            g.running = false;
            match got {
                Ok(Ok(state)) => match g.d.recomputed(&state) {
                    Ok(r) => self.conclude(peer, r),
                    Err(_) => self.forfeit(peer, Loser::Both),
                },
                Ok(Err(_)) => self.forfeit(peer, Loser::Trainer),
                Err(e) => {
                    self.open.as_mut().map(|o| o.checks.games.remove(&peer));
                    self.verdict(peer, Outcome::Unchecked(e.to_string()), None);
                }
            }
        }
        self.advance(now_ms);
        std::mem::take(&mut self.out)
    }

    /// Puts each question still unanswered again to the sides that owe an answer, every
    /// [`DISPUTE_RETRY_HEARTBEATS`] heartbeats (an answer already in stands; a repeat is
    /// ignored).
    pub(super) fn retry_disputes(&mut self, now_ms: u64) {
        let every = self.cfg.heartbeat_ms.saturating_mul(DISPUTE_RETRY_HEARTBEATS);
        let Some(open) = self.open.as_mut() else { return };
        let (round, members, validators) = (open.round, &self.members, &self.validators);
        let mut again = Vec::new();
        for (t, g) in open.checks.games.iter_mut().filter(|(_, g)| !g.running && g.fetching.is_none()) {
            let Some(question) = g.asked else { continue };
            let first = *g.asked_at.get_or_insert(now_ms);
            if now_ms.saturating_sub(first.max(g.retried_at)) < every {
                continue;
            }
            g.retried_at = now_ms;
            let ask = Message::DisputeAsk { round, peer: *t, question };
            let heard = [members.get(t).copied(), validators.get(&g.validator).copied()];
            let owed = [g.got[0].is_none(), g.got[1].is_none() && !trainer_only(g.asked)];
            for side in 0..2 {
                if !owed[side] {
                    continue;
                }
                // The last putting counts as a chance if the side was heard from after it.
                let last = g.put_at[side].max(first);
                g.chances[side] += u32::from(heard[side].is_some_and(|at| at > last));
                g.put_at[side] = now_ms;
                let to = if side == 0 { *t } else { g.validator };
                again.push(Output::Send { to, message: ask.clone() });
            }
        }
        assert!(again.len() <= 2 * open.checks.games.len(), "at most one question per side");
        self.out.extend(again);
    }

    /// Past the `deadline`, once a question has been out [`DISPUTE_PATIENCE_HEARTBEATS`], a
    /// side that has not answered it loses if it was heard from after each of
    /// [`DISPUTE_SILENT_CHANCES`] puttings of it (it chose not to answer; fewer, and it is
    /// asked again, since a lost frame is not a choice); one not heard from at all (it may have crashed or been cut
    /// off), a trainer that joined again during the round (a restart loses its states), or one
    /// that left, proves nothing: a trainer's check is voided as not revealed, a
    /// validator's is taken back. The referee's own recomputation or blob transfer in flight
    /// is waited for (seed 30445: a lost transfer, timed out after the patience, had an
    /// honest trainer forfeit). A
    /// dispute whose validator was refused (in another dispute) or left is dropped, and the
    /// coordinator checks the trainer itself.
    pub(super) fn expire_disputes(&mut self, now_ms: u64, deadline: bool) {
        let patience = self.cfg.heartbeat_ms.saturating_mul(DISPUTE_PATIENCE_HEARTBEATS);
        let Some(open) = self.open.as_ref() else { return };
        let validators = &self.validators;
        let orphans: Vec<PeerId> = open
            .checks
            .games
            .iter()
            .filter(|(_, g)| !validators.contains_key(&g.validator))
            .map(|(t, _)| *t)
            .collect();
        for t in orphans {
            self.take_check_back(t);
        }
        let Some(open) = self.open.as_ref() else { return };
        let (mut lost, mut void, mut back) = (Vec::new(), Vec::new(), Vec::new());
        for (t, g) in &open.checks.games {
            // The referee's own work in flight (a recomputation, or a transfer from the
            // trainer, which always ends: the transport times it out and a failure is retried
            // at most MAX_DISPUTE_REFETCHES times) is no side's silence: it is waited for.
            let silent = match (g.running, g.fetching.is_some()) {
                (true, _) | (false, true) => [false, false],
                (false, false) => [g.got[0].is_none(), g.got[1].is_none() && !trainer_only(g.asked)],
            };
            let since = g.asked_at.unwrap_or(u64::MAX);
            let deadline = deadline && now_ms.saturating_sub(since) >= patience;
            let last_heard = [self.members.get(t).copied(), self.validators.get(&g.validator).copied()];
            let heard = last_heard.map(|at| at.is_some_and(|at| at > since));
            // A side heard from but silent loses only once it has had its chances to answer
            // (it was heard from after each of them); until then it is asked again.
            let ripe = [0, 1].map(|side| {
                let last = g.put_at[side].max(since);
                let this = last_heard[side].is_some_and(|at| at > last);
                g.chances[side] + u32::from(this) >= DISPUTE_SILENT_CHANCES
            });
            // A trainer that joined again this round was restarted, or reconnected: it may
            // have lost the states asked about, so its silence proves nothing either.
            let restarted = self.rejoined.contains(t);
            if !self.members.contains_key(t) || (deadline && silent[0] && (!heard[0] || restarted)) {
                void.push(*t);
                continue;
            }
            if deadline && silent[1] && !heard[1] {
                back.push(*t);
                continue;
            }
            match [deadline && silent[0] && ripe[0], deadline && silent[1] && ripe[1]] {
                [true, true] => lost.push((*t, Loser::Both)),
                [true, false] => lost.push((*t, Loser::Trainer)),
                [false, true] => lost.push((*t, Loser::Validator)),
                [false, false] => {}
            }
        }
        for t in void {
            self.open.as_mut().map(|o| o.checks.games.remove(&t));
            self.verdict(t, Outcome::NoReveal, None);
        }
        for t in back {
            self.take_check_back(t);
        }
        for (t, who) in lost {
            self.forfeit(t, who);
        }
    }

    /// `who` loses without a decision on the computation (no answer, a wrong kind of
    /// answer, or a blob that is not what was named).
    fn forfeit(&mut self, trainer: PeerId, who: Loser) {
        let Some(g) = self.game(&trainer) else { return };
        let r = g.d.timeout(who);
        self.decide(trainer, r, true);
    }

    /// The game was decided on the computation.
    fn conclude(&mut self, trainer: PeerId, r: Ruling) {
        self.decide(trainer, r, false);
    }

    /// The game is over: record it, then leave out and refuse the loser.
    fn decide(&mut self, trainer: PeerId, r: Ruling, forfeit: bool) {
        let Some(open) = self.open.as_mut() else { return };
        let Some(g) = open.checks.games.remove(&trainer) else { return };
        let (round, v) = (open.round, g.validator);
        let exchanges = g.d.exchanges();
        assert!(exchanges <= Dispute::max_exchanges(g.bound.0, g.bound.1), "{exchanges} exchanges");
        let d = Disputed {
            round,
            trainer,
            validator: v,
            ruling: r,
            kernel: g.kernel.filter(|_| r.op.is_some()),
            forfeit,
            exchanges,
            bytes: g.bytes,
        };
        self.out.push(Output::Persist(Record::Dispute(d.clone())));
        let loser = match r.loser {
            Loser::Trainer => tessera_ledger::Loser::Trainer,
            Loser::Validator => tessera_ledger::Loser::Validator,
            Loser::Both => tessera_ledger::Loser::Both,
        };
        let (step, op) = (r.step, r.op);
        let evidence = g.evidence.filter(|_| op.is_some() && !forfeit);
        self.ledger(tessera_ledger::Entry::DisputeResolved {
            round,
            trainer,
            validator: v,
            loser,
            step,
            op,
            evidence,
        });
        self.event(Event::Disputed(d));
        if matches!(r.loser, Loser::Validator | Loser::Both) {
            self.refuse_validator(v, round, format!("{:?}", Finding::Mismatch), Some(trainer));
        }
        match r.loser {
            Loser::Trainer => self.verdict(trainer, Outcome::Mismatch, Some(v)),
            Loser::Both => self.verdict(trainer, Outcome::Mismatch, None),
            // The game proves the accusation false, not the trainer's commitment right (a
            // trainer that answers honestly need not have committed honestly): the
            // coordinator checks the segment itself.
            Loser::Validator => self.take_check_back(trainer),
        }
    }

    /// `trainer`'s check is the coordinator's again: fetch the revealed state to run it.
    fn take_check_back(&mut self, trainer: PeerId) {
        let Some(open) = self.open.as_mut() else { return };
        open.checks.games.remove(&trainer);
        if let Some(hash) = open.checks.undispute(&trainer) {
            let len = crate::LocalState::blob_len(self.spec.n());
            self.out.push(Output::Fetch { from: trainer, hash, len });
        }
    }
}

/// Whether the question goes to the trainer alone.
fn trainer_only(q: Option<Question>) -> bool {
    matches!(q, Some(Question::Inputs { .. } | Question::StateBlob { .. }))
}

/// Whether `a` is the kind of answer `q` asks for.
fn fits(q: &Question, a: &Answer) -> bool {
    match q {
        Question::State { .. } | Question::Prefix { .. } => matches!(a, Answer::Hash(_)),
        Question::Entry { .. } => matches!(a, Answer::Entry { .. }),
        Question::Inputs { .. } | Question::StateBlob { .. } => matches!(a, Answer::Blob { .. }),
    }
}

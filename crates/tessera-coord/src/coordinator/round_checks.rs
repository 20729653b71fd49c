//! A round's spot checks on the coordinator's side. Each check moves once through
//! Challenged → (Delegated to a validator →) Fetching → Running → Done, or skips to Done.
//! A validator's mismatch (of a run whose segments step) is disputed with the trainer
//! (Delegated → Disputed → Done, `disputes.rs`); any other failing finding, or a decoy it
//! passed, is refereed by the coordinator re-running the check itself; `second` carries the
//! finding being refereed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera_wire::{Finding, Leaf, Message};

use crate::check::{pick, rederivable, verify_reveal, CheckJob, Outcome, Validate};
use crate::{GlobalState, Hash32, PeerId, RunSpec};

/// Most checks one round may hold (one per assigned trainer).
pub const MAX_CHECKS: usize = crate::MAX_ROUND_PEERS;

/// A validator's finding under review: who, what it claimed, and whether the task was a decoy.
pub(super) type Second = (PeerId, Finding, bool);

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    /// The challenge is out; waiting for the reveal.
    Challenged,
    /// Handed to `validator`; `decoy` when its end leaf was replaced (a validator that passes
    /// it did not check).
    Delegated {
        validator: PeerId,
        decoy: bool,
    },
    /// The coordinator fetches the revealed blob to check it itself; `second` is the
    /// validator finding it referees.
    Fetching {
        second: Option<Second>,
    },
    Running {
        second: Option<Second>,
    },
    /// A validator's mismatch the trainer disputes: the game is in `Checks::games`.
    Disputed,
    Done(Outcome),
}

#[derive(Debug, Clone, PartialEq)]
struct Check {
    segment: usize,
    root: Hash32,
    unit: (u64, u64),
    /// The committed update, and (the last segment, re-derivable runs) the state it was
    /// trained from, with its hash.
    update: Hash32,
    rederive: Option<(Arc<GlobalState>, Hash32)>,
    /// The reveal: its blob and the committed leaves at the segment's start and end.
    revealed: Option<(Hash32, Hash32, Hash32)>,
    phase: Phase,
}

/// What a commit that is drawn for a check needs.
pub(super) struct Drawn<'a> {
    pub peer: PeerId,
    pub root: Hash32,
    pub unit: (u64, u64),
    pub update: Hash32,
    /// The state the unit was trained from, and its hash (the last segment's re-derivation).
    pub from: (&'a GlobalState, Hash32),
}

/// What a validator's verdict leads to.
pub(super) enum Next {
    /// Nothing (not delegated to this validator, or settled already).
    Ignore,
    /// The check is settled so.
    Settle(Outcome),
    /// A decoy was answered rightly: hand the real task to the same validator.
    Delegate(PeerId),
    /// The coordinator checks it itself: fetch this blob.
    Referee(Hash32),
    /// The validator's mismatch is disputed (see `disputes.rs`).
    Dispute(Opened),
}

/// What a dispute over a check starts from: the segment's steps, its committed start leaf,
/// the two claimed ends (the trainer's committed leaf, the state the validator reached) and
/// the unit trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Opened {
    pub validator: PeerId,
    pub seg: (u64, u64),
    pub start: Hash32,
    pub ends: [Hash32; 2],
    pub unit: (u64, u64),
}

/// A round's spot checks.
#[derive(Debug, Clone, Default)]
pub(super) struct Checks {
    round: u64,
    by_peer: BTreeMap<PeerId, Check>,
    /// The disputes under way, by trainer.
    pub games: BTreeMap<PeerId, super::disputes::Game>,
}

impl Checks {
    pub fn new(round: u64) -> Self {
        Self { round, by_peer: BTreeMap::new(), games: BTreeMap::new() }
    }

    /// Draws whether to check a commit; returns the `Challenge` to send.
    pub fn draw(&mut self, spec: &RunSpec, secret: &Hash32, d: Drawn) -> Option<Message> {
        let cfg = &spec.cfg;
        let full = self.by_peer.contains_key(&d.peer) || self.by_peer.len() >= MAX_CHECKS;
        if cfg.validate == Validate::Off || full {
            return None;
        }
        let n = tessera_verify::segments(cfg.h(), cfg.commit_every).ok()?.len();
        let segment = pick(secret, &d.root, &d.peer, cfg.check_rate, n)?;
        let last = segment + 1 == n && rederivable(spec);
        let rederive = last.then(|| (Arc::new(d.from.0.clone()), d.from.1));
        let (root, unit, update) = (d.root, d.unit, d.update);
        let c = Check { segment, root, unit, update, rederive, revealed: None, phase: Phase::Challenged };
        self.by_peer.insert(d.peer, c);
        Some(Message::Challenge { round: self.round, segment: segment as u32 })
    }

    /// A reveal arrived from `peer`: `Ok(Some(blob))` when it fits the commitment (the check
    /// then waits to be delegated or fetched), `Ok(None)` when it was not asked for, or the
    /// outcome it proves.
    pub fn reveal(
        &mut self,
        spec: &RunSpec,
        peer: &PeerId,
        segment: u32,
        (blob, start, end): (Hash32, &Leaf, &Leaf),
    ) -> Result<Option<Hash32>, Outcome> {
        let n = tessera_verify::segments(spec.cfg.h(), spec.cfg.commit_every).map_or(0, |s| s.len());
        let Some(c) = self.by_peer.get_mut(peer).filter(|c| c.phase == Phase::Challenged) else {
            return Ok(None); // not asked, or answered already
        };
        let fits = match segment as usize == c.segment {
            false => Err(format!("segment {segment} revealed, {} challenged", c.segment)),
            true => verify_reveal(&c.root, n, c.segment, start, end),
        };
        fits.map_err(Outcome::BadReveal)?;
        c.revealed = Some((blob, start.hash, end.hash));
        c.phase = Phase::Fetching { second: None };
        Ok(Some(blob))
    }

    /// Hands `peer`'s revealed check to `validator` (the trainer serves the blob at `addr`);
    /// `decoy` replaces the end leaf with one derived from `secret`, so that only a validator
    /// that re-runs the segment reports the mismatch.
    pub fn delegate(&mut self, peer: &PeerId, to: (PeerId, &str), decoy: Option<&Hash32>) -> Option<Message> {
        let c = self.by_peer.get_mut(peer)?;
        let (blob, start, end) = c.revealed?;
        if !matches!(c.phase, Phase::Fetching { second: None } | Phase::Delegated { decoy: true, .. }) {
            return None;
        }
        let end = match decoy {
            Some(secret) => *blake3::keyed_hash(secret, &[&b"decoy"[..], &end].concat()).as_bytes(),
            None => end,
        };
        c.phase = Phase::Delegated { validator: to.0, decoy: decoy.is_some() };
        Some(Message::CheckTask {
            round: self.round,
            peer: *peer,
            addr: to.1.to_string(),
            segment: c.segment as u32,
            unit: c.unit,
            blob,
            start,
            end,
            rederive: c.rederive.as_ref().map(|(_, h)| (*h, c.update)),
        })
    }

    /// `validator` found `finding` on `peer`'s check, reaching end state `reached`; a
    /// mismatch of a run whose segments step (`disputable`) goes to a dispute.
    pub fn verdict(
        &mut self,
        spec: &RunSpec,
        validator: &PeerId,
        peer: &PeerId,
        (finding, reached): (Finding, Option<Hash32>),
    ) -> Next {
        let disputable = spec.outer.work() != tessera_sync::Work::Gradient;
        let Some(c) = self.by_peer.get_mut(peer) else { return Next::Ignore };
        let Phase::Delegated { validator: v, decoy } = c.phase.clone() else { return Next::Ignore };
        if v != *validator {
            return Next::Ignore;
        }
        let (blob, start, end) = c.revealed.expect("delegated after a reveal");
        match (decoy, finding) {
            (true, Finding::Mismatch) => Next::Delegate(v),
            (false, Finding::Mismatch) if disputable && reached.is_some_and(|r| r != end) => {
                let segs = tessera_verify::segments(spec.cfg.h(), spec.cfg.commit_every).unwrap_or_default();
                let Some(&seg) = segs.get(c.segment) else { return Next::Ignore };
                c.phase = Phase::Disputed;
                let ends = [end, reached.expect("matched above")];
                Next::Dispute(Opened { validator: v, seg, start, ends, unit: c.unit })
            }
            (false, Finding::Pass) => Next::Settle(Outcome::Pass),
            // It could not check (a blob it could not fetch): the coordinator checks instead,
            // and nobody is ruled against for it.
            (_, Finding::Unchecked) => {
                c.phase = Phase::Fetching { second: None };
                Next::Referee(blob)
            }
            // A decoy passed, or a failure claimed: the coordinator re-runs it and rules.
            (_, f) => {
                c.phase = Phase::Fetching { second: Some((v, f, decoy)) };
                Next::Referee(blob)
            }
        }
    }

    /// Checks delegated to `validator` (which left, or missed the deadline), taken back: the
    /// blobs the coordinator now fetches to check them itself.
    pub fn take_back(&mut self, validator: Option<&PeerId>) -> Vec<(PeerId, Hash32)> {
        let mut out = Vec::new();
        for (p, c) in &mut self.by_peer {
            if let Phase::Delegated { validator: v, .. } = &c.phase {
                if validator.is_none_or(|x| x == v) {
                    c.phase = Phase::Fetching { second: None };
                    out.push((*p, c.revealed.expect("delegated after a reveal").0));
                }
            }
        }
        out
    }

    /// A dispute over `peer`'s check ended without a ruling (its validator was refused or
    /// left): the check is the coordinator's again; the revealed blob to fetch.
    pub fn undispute(&mut self, peer: &PeerId) -> Option<Hash32> {
        let c = self.by_peer.get_mut(peer).filter(|c| c.phase == Phase::Disputed)?;
        c.phase = Phase::Fetching { second: None };
        c.revealed.map(|r| r.0)
    }

    /// Whether `peer`'s check waits for the coordinator to fetch blob `hash`.
    pub fn wants(&self, peer: &PeerId, hash: &Hash32) -> bool {
        let c = self.by_peer.get(peer);
        c.is_some_and(|c| {
            matches!(c.phase, Phase::Fetching { .. }) && c.revealed.is_some_and(|r| r.0 == *hash)
        })
    }

    /// The revealed blob arrived: the job to run (the check is then running).
    pub fn job(&mut self, peer: &PeerId, blob: Vec<u8>) -> Option<CheckJob> {
        let c = self.by_peer.get_mut(peer)?;
        let Phase::Fetching { second } = c.phase.clone() else { return None };
        let (_, start, end) = c.revealed?;
        c.phase = Phase::Running { second };
        let rederive = c.rederive.as_ref().map(|(g, _)| (g.clone(), c.update));
        Some(CheckJob {
            round: self.round,
            peer: *peer,
            unit: c.unit,
            segment: c.segment,
            blob,
            start,
            end,
            rederive,
        })
    }

    /// The validator finding the coordinator's own run of `peer`'s check referees.
    pub fn second(&self, peer: &PeerId) -> Option<Second> {
        match self.by_peer.get(peer).map(|c| &c.phase) {
            Some(Phase::Running { second } | Phase::Fetching { second }) => *second,
            _ => None,
        }
    }

    /// Settles `peer`'s check (once); returns its segment when this settled it.
    pub fn settle(&mut self, peer: &PeerId, outcome: Outcome) -> Option<usize> {
        let c = self.by_peer.get_mut(peer)?;
        if matches!(c.phase, Phase::Done(_)) {
            return None;
        }
        c.phase = Phase::Done(outcome);
        Some(c.segment)
    }

    /// Challenges still unanswered whose trainer is not `live`.
    pub fn unanswered(&self, live: impl Fn(&PeerId) -> bool) -> Vec<PeerId> {
        let waits = |c: &Check| c.phase == Phase::Challenged;
        self.by_peer.iter().filter(|(p, c)| waits(c) && !live(p)).map(|(p, _)| *p).collect()
    }

    /// Whether every check is settled.
    pub fn settled(&self) -> bool {
        self.by_peer.values().all(|c| matches!(c.phase, Phase::Done(_)))
    }
}

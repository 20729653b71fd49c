//! What a trainer that keeps an auditable copy of the run (`TrainerConfig::keep_blobs`)
//! keeps beside its ledger copy: the run's config (the blob the ledger's `RunCreated` names by
//! hash) and every accepted update of every round it hears closed, so that `tessera audit`
//! can recompute each round's state from the copy alone.
//!
//! Updates the round's close fetches anyway (an all-gather round's) are kept from the close;
//! a hub round's close needs only the aggregate, so its updates are fetched here, apart from
//! the close: a failed fetch costs the audit that round's recomputation, never the close.
//! A NoLoCo round has no aggregate: its accepted Δ blobs are fetched from their authors, and
//! the round's members and the replicas it kept ([`KeptRound`], from its `RoundStart` and
//! `Accept`) are kept as well, so the audit can close the round through every replica. The inputs of every
//! operator a dispute was decided by (named by the ledger's `DisputeResolved`) are fetched from
//! the coordinator and kept too, for the audit to decide the dispute again.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::trainer::{Action, Source};
use crate::{Hash32, PeerId};

/// Most kept-update fetches in flight at once; an `Accept` that would pass it keeps what fits.
pub const MAX_KEEP_FETCHES: usize = 2 * tessera_wire::MAX_MEMBERS;
/// Largest encoded [`KeptRound`] read back.
pub const MAX_KEPT_ROUND: usize = 2 * (64 * tessera_wire::MAX_MEMBERS + 8) + 16;
/// RoundStarts whose members are remembered until their `Accept`.
const MAX_STARTS: usize = 4;
/// Times a blob to keep is fetched before it is given up (a round not kept whole is then
/// only chained by the audit), and how long after a failure it is tried again.
pub const MAX_KEEP_TRIES: u32 = 3;
pub const KEEP_RETRY_MS: u64 = 1_000;

/// A blob being fetched to be kept: where from, how long, and how many tries so far.
#[derive(Debug, Clone)]
struct Try {
    sources: Vec<Source>,
    len: u64,
    tries: u32,
}

/// What a NoLoCo round's close needs besides its updates: who the members were (each trains
/// from its own replica, a new one from the consensus) and whose replicas it kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptRound {
    pub round: u64,
    pub members: Vec<PeerId>,
    pub replicas: Vec<PeerId>,
}

impl KeptRound {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a kept round encodes")
    }

    /// Decodes a kept round, checked against the limits before anything is kept.
    pub fn decode(b: &[u8]) -> Result<Self, crate::CoordError> {
        let bad = |why: String| crate::CoordError::State(format!("kept round: {why}"));
        if b.len() > MAX_KEPT_ROUND {
            return Err(bad(format!("{} bytes, over {MAX_KEPT_ROUND}", b.len())));
        }
        let k: Self = postcard::from_bytes(b).map_err(|e| bad(e.to_string()))?;
        if k.members.len() > tessera_wire::MAX_MEMBERS || k.replicas.len() > tessera_wire::MAX_MEMBERS {
            return Err(bad("more peers than a round may have".into()));
        }
        Ok(k)
    }
}

/// The keeping side of a trainer.
#[derive(Debug, Default)]
pub(crate) struct Keeper {
    on: bool,
    /// Blobs being fetched to be kept, and (with the time they are due) those to fetch again.
    fetching: std::collections::BTreeMap<Hash32, Try>,
    again: Vec<(u64, Hash32, Try)>,
    /// Updates already kept (this session), so none is written twice; bounded as `fetching`.
    kept: BTreeSet<Hash32>,
    /// NoLoCo: the members of the latest rounds started, until their `Accept`.
    starts: std::collections::BTreeMap<u64, Vec<PeerId>>,
}

/// What became of a fetch's result (see [`Keeper::fetched`]).
pub(crate) enum Fetched {
    /// Not fetched for keeping: the result, for the trainer.
    Not(Result<Vec<u8>, String>),
    /// Kept: the actions that keep it.
    Kept(Vec<Action>),
    /// The fetch for keeping failed.
    Failed(String),
}

/// An update of a closed round: its hash, its author, and the bytes when this trainer has them.
pub(crate) struct Accepted<'a> {
    pub hash: Hash32,
    pub sources: Vec<Source>,
    pub have: Option<&'a Arc<Vec<u8>>>,
    /// The round's close fetches it (and keeps it once fetched).
    pub closing: bool,
}

impl Keeper {
    pub fn new(on: bool) -> Self {
        Self { on, ..Self::default() }
    }

    /// Blobs being fetched to be kept, or waiting to be fetched again.
    pub fn in_flight(&self) -> usize {
        self.fetching.len() + self.again.len()
    }

    /// NoLoCo: round `round` started with `members`.
    pub fn started(&mut self, round: u64, members: &[PeerId]) {
        if self.on {
            self.starts.insert(round, members.to_vec());
            while self.starts.len() > MAX_STARTS {
                self.starts.pop_first();
            }
        }
    }

    /// NoLoCo: round `round` closed keeping `replicas`: kept with the round's members, if
    /// its start was heard.
    pub fn closed_round(&mut self, round: u64, replicas: Vec<PeerId>) -> Option<Action> {
        let members = self.starts.remove(&round).filter(|_| self.on)?;
        Some(Action::KeepRound(KeptRound { round, members, replicas }))
    }

    /// The run's config text, kept under its hash.
    pub fn config(&mut self, text: &str) -> Option<Action> {
        self.keep(Arc::new(text.as_bytes().to_vec()))
    }

    /// What to do for a closed round's accepted updates: keep those held, fetch the rest
    /// that the close does not fetch (`len` bytes each).
    pub fn accepted(&mut self, updates: Vec<Accepted<'_>>, len: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for u in updates {
            if !self.on || self.kept.contains(&u.hash) || self.fetching.contains_key(&u.hash) || u.closing {
                continue;
            }
            match u.have {
                Some(b) => out.extend(self.keep(b.clone())),
                None => out.extend(self.fetch(u.hash, Try { sources: u.sources, len, tries: 0 })),
            }
        }
        out
    }

    /// Starts (or starts again) fetching `hash` to keep it, within the bound.
    fn fetch(&mut self, hash: Hash32, mut t: Try) -> Option<Action> {
        if self.in_flight() >= MAX_KEEP_FETCHES {
            return None; // over the limit: this round is not kept whole
        }
        t.tries += 1;
        let fetch = Action::Fetch { sources: t.sources.clone(), hash, len: t.len, split: false };
        self.fetching.insert(hash, t);
        assert!(self.in_flight() <= MAX_KEEP_FETCHES, "kept fetches are bounded");
        Some(fetch)
    }

    /// Time passed: the blobs whose fetch failed are fetched again once due.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.again).into_iter().partition(|a| a.0 <= now_ms);
        self.again = later;
        due.into_iter().filter_map(|(_, h, t)| self.fetch(h, t)).collect()
    }

    /// Verified ledger records: the inputs of each disputed operator they name are fetched
    /// from `coordinator` (the referee, which stores them) to be kept.
    pub fn evidence(&mut self, records: &[tessera_ledger::Record], coordinator: Source) -> Vec<Action> {
        let mut out = Vec::new();
        for r in records {
            let tessera_ledger::Entry::DisputeResolved { evidence: Some(e), .. } = &r.entry else { continue };
            let known = self.kept.contains(&e.inputs) || self.fetching.contains_key(&e.inputs);
            if self.on && !known && e.inputs_len <= crate::MAX_DISPUTE_BLOB {
                let t = Try { sources: vec![coordinator.clone()], len: e.inputs_len, tries: 0 };
                out.extend(self.fetch(e.inputs, t));
            }
        }
        out
    }

    /// A blob the close fetched: kept when keeping is on.
    pub fn closed(&mut self, blob: &[u8]) -> Option<Action> {
        self.keep(Arc::new(blob.to_vec()))
    }

    /// A fetch's result at `now_ms`: handed back when `hash` was not fetched for keeping. A
    /// failed fetch is tried again [`KEEP_RETRY_MS`] later, [`MAX_KEEP_TRIES`] times in all.
    pub fn fetched(&mut self, now_ms: u64, hash: &Hash32, got: Result<Vec<u8>, String>) -> Fetched {
        let Some(t) = self.fetching.remove(hash) else { return Fetched::Not(got) };
        match got {
            Ok(b) => Fetched::Kept(self.keep(Arc::new(b)).into_iter().collect()),
            Err(_) if t.tries < MAX_KEEP_TRIES => {
                self.again.push((now_ms.saturating_add(KEEP_RETRY_MS), *hash, t));
                Fetched::Kept(Vec::new())
            }
            Err(e) => Fetched::Failed(e),
        }
    }

    fn keep(&mut self, bytes: Arc<Vec<u8>>) -> Option<Action> {
        if !self.on {
            return None;
        }
        let hash = *blake3::hash(&bytes).as_bytes();
        if self.kept.len() >= MAX_KEEP_FETCHES {
            self.kept.clear(); // only a guard against writing twice: forgetting costs a rewrite
        }
        self.kept.insert(hash).then_some(Action::KeepBlob { hash, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(hash: Hash32, have: Option<&Arc<Vec<u8>>>, closing: bool) -> Accepted<'_> {
        Accepted { hash, sources: Vec::new(), have, closing }
    }

    #[test]
    fn keeps_what_it_has_fetches_the_rest_once_and_nothing_when_off() {
        let mine = Arc::new(vec![1u8, 2, 3]);
        let h = *blake3::hash(&mine).as_bytes();
        let mut k = Keeper::new(true);
        let acts = k.accepted(
            vec![acc(h, Some(&mine), false), acc([7; 32], None, false), acc([8; 32], None, true)],
            3,
        );
        assert!(matches!(&acts[0], Action::KeepBlob { hash, .. } if *hash == h));
        assert!(matches!(&acts[1], Action::Fetch { hash, len: 3, .. } if *hash == [7; 32]));
        assert_eq!(acts.len(), 2, "the close's own fetch is not repeated");
        // The same round heard again (a duplicated Accept): nothing more.
        assert!(k.accepted(vec![acc(h, Some(&mine), false), acc([7; 32], None, false)], 3).is_empty());
        let other = vec![9u8; 3];
        let Fetched::Kept(got) = k.fetched(0, &[7; 32], Ok(other.clone())) else { panic!("kept") };
        let want = *blake3::hash(&other).as_bytes();
        assert!(matches!(&got[..], [Action::KeepBlob { hash, .. }] if *hash == want));
        assert!(
            matches!(k.fetched(0, &[7; 32], Ok(other)), Fetched::Not(Ok(_))),
            "not fetched for keeping now"
        );
        assert!(matches!(k.fetched(0, &[5; 32], Err("x".into())), Fetched::Not(Err(_))), "never asked for");
        // A failed fetch is tried again a second later, three times in all.
        let _ = k.accepted(vec![acc([6; 32], None, false)], 3);
        for t in 1..MAX_KEEP_TRIES as u64 {
            assert!(
                matches!(k.fetched(t * 10_000, &[6; 32], Err("gone".into())), Fetched::Kept(a) if a.is_empty())
            );
            assert!(k.tick(t * 10_000 + KEEP_RETRY_MS - 1).is_empty(), "not yet due");
            assert_eq!(k.in_flight(), 1, "still counted as on its way");
            let again = k.tick(t * 10_000 + KEEP_RETRY_MS);
            assert!(matches!(&again[..], [Action::Fetch { hash, .. }] if *hash == [6; 32]));
        }
        assert!(matches!(k.fetched(99_999, &[6; 32], Err("gone".into())), Fetched::Failed(e) if e == "gone"));
        assert_eq!(k.in_flight(), 0, "given up");
        let mut off = Keeper::new(false);
        assert!(off.accepted(vec![acc(h, Some(&mine), false), acc([7; 32], None, false)], 3).is_empty());
        assert!(off.config("x").is_none() && off.closed(&[1]).is_none());
    }
}

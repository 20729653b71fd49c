//! A node's copy of the coordinator's ledger. Each `Accept` names the ledger's head; the
//! node fetches the records it lacks (`LedgerFetch`, answered by `LedgerRecords`), checks
//! each against the chain it holds (sequence, link, the coordinator's signature, the payout
//! rules) and compares the announced heads with its own records. A coordinator that rewrites
//! history (a fork, a gap, a changed record) is caught by the first check that fails, and the
//! proof is what the error says; the copy keeps what it verified before it. The records it
//! verifies are handed out once ([`LedgerCopy::take_fresh`]) for the driver to keep on disk,
//! and a restarted node resumes from what it kept ([`LedgerCopy::resume`]).

use tessera_ledger::{Ledger, Record};

use crate::{Hash32, Message, PeerId};

/// Most record hashes a copy remembers to compare announced heads with.
pub const MAX_COPY_RECORDS: usize = 1 << 20;

/// A verified prefix of the coordinator's ledger.
#[derive(Debug, Clone)]
pub struct LedgerCopy {
    ledger: Ledger,
    hashes: Vec<Hash32>,
    /// The latest head the coordinator announced.
    announced: Option<(u64, Hash32)>,
    /// Records verified since the driver last took them.
    fresh: Vec<Record>,
    /// The round of the latest `Accept` whose head was taken (an older round's, overtaken
    /// in the network, names an older head and is not a report of the ledger going back).
    head_round: Option<u64>,
}

/// What a coordinator's message did to a copy (see [`LedgerCopy::follow`]).
#[derive(Debug)]
pub struct Follow {
    /// Records verified by it, in order, to keep on disk (kept even when `next` is `Err`).
    pub keep: Vec<Record>,
    /// The record to fetch from next, if the copy is behind the announced head; `Err` is
    /// the proof that the coordinator's history is not the one this copy verified.
    pub next: Result<Option<u64>, String>,
}

impl LedgerCopy {
    pub fn new(coordinator: &PeerId) -> Self {
        Self {
            ledger: Ledger::replica(coordinator),
            hashes: Vec::new(),
            announced: None,
            fresh: Vec::new(),
            head_round: None,
        }
    }

    /// Follows one message from the coordinator: an `Accept`'s ledger head (of the latest
    /// round heard) or the `LedgerRecords` asked for; any other message changes nothing.
    /// The trainer's and the validator's machines both keep their copies so.
    pub fn follow(&mut self, m: &Message) -> Follow {
        let next = match m {
            Message::Accept { round, ledger: Some(head), .. }
                if self.head_round.is_none_or(|r| *round >= r) =>
            {
                self.head_round = Some(*round);
                self.announced(*head)
            }
            Message::LedgerRecords { from, records } => self.received(*from, records),
            _ => Ok(None),
        };
        let keep = self.take_fresh();
        assert!(keep.len() as u64 <= self.ledger.head().0, "only verified records are kept");
        Follow { keep, next }
    }

    /// A copy that starts from `records` kept earlier, verified again; `Err` names the first
    /// that fails (a copy damaged on disk, or of another coordinator).
    pub fn resume(coordinator: &PeerId, records: &[Record]) -> Result<Self, String> {
        let mut c = Self::new(coordinator);
        c.ledger.extend(records).map_err(|e| e.to_string())?;
        c.hashes = records.iter().take(MAX_COPY_RECORDS).map(Record::hash).collect();
        assert_eq!(c.ledger.head().0, records.len() as u64, "every kept record resumed");
        Ok(c)
    }

    /// How many records the coordinator last announced.
    pub fn announced_len(&self) -> u64 {
        self.announced.map_or(0, |a| a.0)
    }

    /// Whether the coordinator announced records this copy has not verified yet.
    pub fn behind(&self) -> bool {
        self.announced.is_some_and(|a| a.0 > self.ledger.head().0)
    }

    /// The records verified since the last call, in order (to append to the kept copy).
    pub fn take_fresh(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.fresh)
    }

    /// The verified ledger so far.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// An `Accept` announced the head `(n, h)`: the record to fetch from, if any is missing;
    /// `Err` is the proof that the announced history is not the one this copy verified.
    pub fn announced(&mut self, head: (u64, Hash32)) -> Result<Option<u64>, String> {
        if self.announced.is_some_and(|a| head.0 < a.0) {
            return Err(format!(
                "the ledger's head went back from {} to {} records",
                self.announced.map_or(0, |a| a.0),
                head.0
            ));
        }
        self.announced = Some(head);
        self.check()?;
        let have = self.ledger.head().0;
        Ok((head.0 > have).then_some(have))
    }

    /// Records `from`, `from + 1`, … arrived: verified and kept; the next record to fetch,
    /// if the announced head is still ahead; `Err` is the proof of a tampered history.
    pub fn received(&mut self, from: u64, records: &[Vec<u8>]) -> Result<Option<u64>, String> {
        let have = self.ledger.head().0;
        if from != have {
            return Ok(None); // an answer to an earlier fetch
        }
        for (i, b) in records.iter().enumerate() {
            let seq = from + i as u64;
            let r = Record::decode(b).map_err(|e| format!("ledger record {seq}: {e}"))?;
            self.ledger.extend(std::slice::from_ref(&r)).map_err(|e| e.to_string())?;
            if self.hashes.len() < MAX_COPY_RECORDS {
                self.hashes.push(r.hash());
            }
            self.fresh.push(r);
        }
        self.check()?;
        let (have, want) = (self.ledger.head().0, self.announced.map_or(0, |a| a.0));
        match (want > have, records.is_empty()) {
            (true, true) => Err(format!("the coordinator announced {want} ledger records but serves {have}")),
            (true, false) => Ok(Some(have)),
            (false, _) => Ok(None),
        }
    }

    /// The announced head, where this copy has reached it, must be this copy's record.
    fn check(&self) -> Result<(), String> {
        let Some((n, h)) = self.announced else { return Ok(()) };
        let Some(i) = n.checked_sub(1) else { return Ok(()) };
        match self.hashes.get(i as usize) {
            Some(mine) if *mine != h => Err(format!(
                "the coordinator announced record {i} as {}, but its record {i} was {} (a rewritten history)",
                hex4(&h),
                hex4(mine)
            )),
            _ => Ok(()),
        }
    }
}

fn hex4(h: &Hash32) -> String {
    h[..4].iter().map(|b| format!("{b:02x}")).collect()
}

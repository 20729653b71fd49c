//! `tessera audit DIR`: a coordinator directory checked from genesis, trusting nothing in it.
//! The ledger is replayed against the coordinator's key (every signature, chain link and
//! payout rule, and so every balance); every `RoundClosed` must chain from the run's initial
//! state through each round's recorded state and name the round's accepted updates; every
//! state blob still stored is read back and re-hashed. The first divergence is named.
//! Not yet: recomputing each round's aggregate from its accepted update blobs (the store
//! does not keep them) and re-running each dispute's operator.

use std::path::Path;

use tessera_ledger::Entry;

use crate::{Store, StoreError};

/// What an audit that passed checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub records: u64,
    pub rounds: u64,
    pub blobs_checked: u64,
    pub final_state: Option<[u8; 32]>,
}

/// The first divergence an audit found.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("no ledger in this directory")]
    NoLedger,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {seq} (RoundClosed of round {round}): {why}")]
    Round { seq: u64, round: u64, why: String },
}

/// Audits the coordinator directory `dir` (read only).
pub fn audit(dir: &Path) -> Result<AuditReport, AuditError> {
    let store = Store::open_read_only(dir)?;
    let ledger = store.verified_ledger()?.ok_or(AuditError::NoLedger)?;
    let log = store.ledger()?;
    let mut state = match store.meta("initial_state")? {
        Some(b) => b.try_into().map_err(|_| StoreError::Corrupt("the initial state's hash".into()))?,
        None => return Err(AuditError::Store(StoreError::Corrupt("no initial state recorded".into()))),
    };
    let (mut rounds, mut blobs) = (0u64, 0u64);
    for r in &log {
        let Entry::RoundClosed { round, start, end, accepted, .. } = &r.entry else { continue };
        let fail = |why: String| AuditError::Round { seq: r.seq, round: *round, why };
        if *start != state {
            return Err(fail("it does not start from the state the round before ended in".into()));
        }
        if store.closed_state(*round)? != Some(*end) {
            return Err(fail("its end state is not the one the store recorded for the round".into()));
        }
        let peers: Vec<[u8; 32]> = accepted.iter().map(|a| a.peer).collect();
        if store.accepted_in(*round)? != peers {
            return Err(fail("its accepted updates are not the ones the store recorded".into()));
        }
        if store.has_blob(end) {
            store.blob(end).map_err(|e| fail(format!("the end state's blob: {e}")))?;
            blobs += 1;
        }
        state = *end;
        rounds += 1;
    }
    assert_eq!(rounds, ledger.accounts().rounds, "one RoundClosed per paid round");
    let final_state = (rounds > 0).then_some(state);
    Ok(AuditReport { records: ledger.head().0, rounds, blobs_checked: blobs, final_state })
}

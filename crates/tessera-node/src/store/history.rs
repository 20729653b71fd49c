//! What a restarted coordinator's dashboard shows of the run before it started: the closed
//! rounds, evaluations, checks and disputes, read back from the store (the newest
//! [`crate::view::MAX_VIEW_ROUNDS`] rounds and [`crate::view::MAX_VIEW_CHECKS`] checks and
//! disputes).

use rusqlite::params;
use tessera_coord::{Hash32, Message, PeerId};

use super::{h32, Store, StoreError};
use crate::view::{MAX_VIEW_CHECKS, MAX_VIEW_ROUNDS};

/// A round closed before this process started.
#[derive(Debug, Clone)]
pub struct PastRound {
    pub round: u64,
    pub accept: Message,
    pub state_hash: Hash32,
}

/// A settled spot check.
#[derive(Debug, Clone)]
pub struct PastCheck {
    pub round: u64,
    pub peer: PeerId,
    pub segment: usize,
    pub outcome: String,
    pub passed: bool,
    pub by: Option<PeerId>,
}

/// A decided dispute.
#[derive(Debug, Clone)]
pub struct PastDispute {
    pub round: u64,
    pub trainer: PeerId,
    pub validator: PeerId,
    pub step: u64,
    pub op: Option<u64>,
    pub kernel: Option<String>,
    /// `trainer`, `validator` or `both`.
    pub loser: String,
    pub forfeit: bool,
    pub exchanges: u32,
    pub bytes: u64,
}

/// The run so far, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub rounds: Vec<PastRound>,
    /// (round, ms on the clock of the process that recorded it, loss).
    pub evals: Vec<(u64, u64, f64)>,
    pub checks: Vec<PastCheck>,
    pub disputes: Vec<PastDispute>,
}

fn opt_h32(v: Option<Vec<u8>>) -> Result<Option<Hash32>, StoreError> {
    v.map(h32).transpose()
}

fn int(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("a negative {what}")))
}

impl Store {
    /// The newest closed rounds, evaluations, checks and disputes, oldest first.
    pub fn history(&self) -> Result<History, StoreError> {
        let mut h = History::default();
        let mut q = self.db.prepare(
            "SELECT round, accept, state_hash FROM rounds WHERE accept IS NOT NULL ORDER BY round DESC LIMIT ?1",
        )?;
        let rows = q.query_map(params![MAX_VIEW_ROUNDS as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
        })?;
        for row in rows {
            let (round, accept, state) = row?;
            let accept = postcard::from_bytes(&accept)?;
            h.rounds.push(PastRound { round: int(round, "round")?, accept, state_hash: h32(state)? });
        }
        h.rounds.reverse();
        let mut q = self.db.prepare("SELECT round, ms, val_loss FROM evals ORDER BY round DESC LIMIT ?1")?;
        let rows = q.query_map(params![MAX_VIEW_ROUNDS as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, f64>(2)?))
        })?;
        for row in rows {
            let (round, ms, loss) = row?;
            h.evals.push((int(round, "round")?, int(ms, "time")?, loss));
        }
        h.evals.reverse();
        h.checks = self.past_checks()?;
        h.disputes = self.past_disputes()?;
        assert!(h.rounds.windows(2).all(|w| w[0].round < w[1].round), "rounds oldest first, once each");
        Ok(h)
    }

    fn past_checks(&self) -> Result<Vec<PastCheck>, StoreError> {
        let mut q = self.db.prepare(
            "SELECT round, peer, segment, outcome, passed, validator FROM verdicts
             ORDER BY round DESC, peer DESC LIMIT ?1",
        )?;
        type Row = (i64, Vec<u8>, i64, String, bool, Option<Vec<u8>>);
        let rows = q.query_map(params![MAX_VIEW_CHECKS as i64], |r| {
            Ok::<Row, _>((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (round, peer, segment, outcome, passed, by) = row?;
            let segment =
                usize::try_from(segment).map_err(|_| StoreError::Corrupt("a negative segment".into()))?;
            let (round, peer, by) = (int(round, "round")?, h32(peer)?, opt_h32(by)?);
            out.push(PastCheck { round, peer, segment, outcome, passed, by });
        }
        out.reverse();
        Ok(out)
    }

    fn past_disputes(&self) -> Result<Vec<PastDispute>, StoreError> {
        let mut q = self.db.prepare(
            "SELECT round, trainer, validator, step, op, kernel, loser, forfeit, exchanges, bytes FROM disputes
             ORDER BY round DESC, trainer DESC LIMIT ?1",
        )?;
        let rows = q.query_map(params![MAX_VIEW_CHECKS as i64], |r| {
            let ids = (r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?);
            let nums = (r.get::<_, i64>(0)?, r.get::<_, i64>(3)?, r.get::<_, Option<i64>>(4)?);
            let rest = (r.get::<_, Option<String>>(5)?, r.get::<_, String>(6)?, r.get::<_, bool>(7)?);
            Ok((ids, nums, rest, r.get::<_, i64>(8)?, r.get::<_, i64>(9)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let ((t, v), (round, step, op), (kernel, loser, forfeit), exchanges, bytes) = row?;
            out.push(PastDispute {
                round: int(round, "round")?,
                trainer: h32(t)?,
                validator: h32(v)?,
                step: int(step, "step")?,
                op: op.map(|o| int(o, "operator")).transpose()?,
                kernel,
                loser,
                forfeit,
                exchanges: u32::try_from(exchanges).map_err(|_| StoreError::Corrupt("exchanges".into()))?,
                bytes: int(bytes, "byte count")?,
            });
        }
        out.reverse();
        Ok(out)
    }

    /// The length of stored blob `h`, if it is still kept.
    pub fn blob_len(&self, h: &Hash32) -> Option<u64> {
        std::fs::metadata(self.blob_path(h)).ok().map(|m| m.len())
    }
}

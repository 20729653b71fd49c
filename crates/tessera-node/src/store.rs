//! The coordinator's durable state: an SQLite database in WAL mode for decisions, and a
//! directory of content-addressed blob files (state checkpoints, aggregates, all-gathered
//! updates, and NoLoCo's replicas and φ blobs). A blob is
//! written and fsynced before the row that names it; a row is committed before the decision
//! is announced. Readers (the demo, tests) use the query methods, so no SQL leaves this file.

use std::path::{Path, PathBuf};

mod history;

pub use history::{History, PastCheck, PastDispute, PastRound};
use rusqlite::{params, Connection, OptionalExtension};
use tessera_coord::{ClosedRound, GlobalState, Hash32, Message, Record, Restored, RunSpec, Unit};
use tessera_net::hex;

pub const DB_FILE: &str = "coordinator.sqlite";
/// Rounds of state checkpoints (and NoLoCo replicas and φ blobs) kept on disk; older ones are
/// deleted. Aggregates and updates are all kept.
const KEEP_STATES: u64 = 3;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("stored record does not decode: {0}")]
    Encoding(#[from] postcard::Error),
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("round {0} was not open in the database (closed twice?)")]
    ClosedTwice(u64),
    #[error(transparent)]
    State(#[from] tessera_coord::CoordError),
    #[error("ledger: {0}")]
    Ledger(#[from] tessera_ledger::LedgerError),
    #[error("the {what} after round {round} is {value}, not a finite number")]
    NotFinite { what: &'static str, round: u64, value: f64 },
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// How far a run has come (for progress displays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub rounds_closed: u64,
    pub accepted: u64,
}

/// What a run did, from its records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub progress: Progress,
    /// State reports received, and how many agreed with the coordinator.
    pub reports: u64,
    pub agreed: u64,
    /// Agreeing reports of states the node computed itself (not adopted from a checkpoint).
    pub computed_agreed: u64,
    /// Reports of states adopted from the checkpoint.
    pub adopted: u64,
    /// The state after the last closed round (NoLoCo: the consensus of the replicas).
    pub last_state: Option<Hash32>,
    /// NoLoCo: the spread of the replicas after the last closed round.
    pub last_spread: Option<f64>,
    /// The coordinator's bytes sent and received, as last recorded.
    pub traffic: Option<(u64, u64)>,
    /// Spot checks settled (and how many a validator's finding settled), how many failed,
    /// and the trainers and validators proven to have cheated.
    pub checks: u64,
    pub checks_by_validators: u64,
    pub checks_failed: u64,
    pub cheats_caught: u64,
    /// Seconds the coordinator spent re-running segments, as last recorded.
    pub check_s: f64,
    /// Updates scored, and how many of them were left out as harmful; seconds spent scoring.
    pub scored: u64,
    pub scored_by_validators: u64,
    pub harmful: u64,
    pub score_s: f64,
    /// Disputes decided, and how many of them down to one operator the referee recomputed.
    pub disputes: u64,
    pub disputes_to_op: u64,
}

pub struct Store {
    db: Connection,
    blobs: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rounds(
    round INTEGER PRIMARY KEY, start BLOB NOT NULL,
    accept BLOB, state_hash BLOB, backlog BLOB, spread REAL);
CREATE TABLE IF NOT EXISTS accepted(round INTEGER NOT NULL, peer BLOB NOT NULL, PRIMARY KEY(round, peer));
CREATE TABLE IF NOT EXISTS evals(round INTEGER PRIMARY KEY, ms INTEGER NOT NULL, val_loss REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reports(round INTEGER NOT NULL, peer BLOB NOT NULL, state_hash BLOB NOT NULL,
    agrees INTEGER NOT NULL, computed INTEGER NOT NULL, PRIMARY KEY(round, peer, computed));
CREATE TABLE IF NOT EXISTS verdicts(round INTEGER NOT NULL, peer BLOB NOT NULL, segment INTEGER NOT NULL,
    outcome TEXT NOT NULL, passed INTEGER NOT NULL, cheat INTEGER NOT NULL, validator BLOB,
    PRIMARY KEY(round, peer));
CREATE TABLE IF NOT EXISTS scores(round INTEGER NOT NULL, peer BLOB NOT NULL, held_out REAL NOT NULL,
    own REAL NOT NULL, unseen REAL NOT NULL, harmful INTEGER NOT NULL, validator BLOB,
    PRIMARY KEY(round, peer));
CREATE TABLE IF NOT EXISTS ledger(seq INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS disputes(round INTEGER NOT NULL, trainer BLOB NOT NULL, validator BLOB NOT NULL,
    step INTEGER NOT NULL, op INTEGER, kernel TEXT, loser TEXT NOT NULL, forfeit INTEGER NOT NULL,
    exchanges INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY(round, trainer));
";

fn h32(v: Vec<u8>) -> Result<Hash32, StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".into()))
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(format!("creating {}", blobs.display())))?;
        let db = Connection::open(dir.join(DB_FILE))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        if db.prepare("SELECT spread FROM rounds LIMIT 0").is_err() {
            db.execute_batch("ALTER TABLE rounds ADD COLUMN spread REAL")?; // a store from before it
        }
        Ok(Self { db, blobs })
    }

    /// Opens an existing store read-only (for progress and summaries while it runs).
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let db = Connection::open_with_flags(dir.join(DB_FILE), flags)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { db, blobs: dir.join("blobs") })
    }

    fn count(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(self.db.query_row(sql, [], |r| r.get::<_, i64>(0))?.max(0) as u64)
    }

    /// Rounds closed and updates accepted so far.
    pub fn progress(&self) -> Result<Progress, StoreError> {
        Ok(Progress {
            rounds_closed: self.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL")?,
            accepted: self.count("SELECT COUNT(*) FROM accepted")?,
        })
    }

    /// What the run did: progress, state reports, the last state and the traffic.
    pub fn summary(&self) -> Result<Summary, StoreError> {
        let last: Option<(Vec<u8>, Option<f64>)> = self
            .db
            .query_row(
                "SELECT state_hash, spread FROM rounds WHERE accept IS NOT NULL ORDER BY round DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (last, spread) = last.map_or((None, None), |(h, s)| (Some(h), s));
        let traffic = match self.meta("traffic")? {
            Some(b) => Some(postcard::from_bytes::<(u64, u64)>(&b)?),
            None => None,
        };
        Ok(Summary {
            progress: self.progress()?,
            reports: self.count("SELECT COUNT(*) FROM reports")?,
            agreed: self.count("SELECT COUNT(*) FROM reports WHERE agrees = 1")?,
            computed_agreed: self.count("SELECT COUNT(*) FROM reports WHERE agrees = 1 AND computed = 1")?,
            adopted: self.count("SELECT COUNT(*) FROM reports WHERE computed = 0")?,
            last_state: last.map(h32).transpose()?,
            last_spread: spread,
            traffic,
            checks: self.count("SELECT COUNT(*) FROM verdicts")?,
            checks_by_validators: self.count("SELECT COUNT(*) FROM verdicts WHERE validator IS NOT NULL")?,
            checks_failed: self.count("SELECT COUNT(*) FROM verdicts WHERE passed = 0")?,
            cheats_caught: self.count("SELECT COUNT(DISTINCT peer) FROM verdicts WHERE cheat = 1")?,
            check_s: self.meta_f64("check_s")?,
            scored: self.count("SELECT COUNT(*) FROM scores")?,
            scored_by_validators: self.count("SELECT COUNT(*) FROM scores WHERE validator IS NOT NULL")?,
            harmful: self.count("SELECT COUNT(*) FROM scores WHERE harmful = 1")?,
            score_s: self.meta_f64("score_s")?,
            disputes: self.count("SELECT COUNT(*) FROM disputes")?,
            disputes_to_op: self.count("SELECT COUNT(*) FROM disputes WHERE op IS NOT NULL")?,
        })
    }

    /// A meta value holding one f64 (0 when absent).
    fn meta_f64(&self, key: &str) -> Result<f64, StoreError> {
        match self.meta(key)? {
            Some(b) => Ok(f64::from_le_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("meta {key} is not one f64")))?,
            )),
            None => Ok(0.0),
        }
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", params![key, value])?;
        Ok(())
    }

    fn blob_path(&self, h: &Hash32) -> PathBuf {
        self.blobs.join(hex(h))
    }

    /// Writes a blob durably (temp file, fsync, rename, fsync the directory).
    pub fn put_blob(&self, h: &Hash32, bytes: &[u8]) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.blob_path(h);
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.blobs)?.sync_all()
        };
        write().map_err(io(format!("writing blob {}", path.display())))
    }

    /// Reads a blob and checks its hash.
    pub fn blob(&self, h: &Hash32) -> Result<Vec<u8>, StoreError> {
        let b = std::fs::read(self.blob_path(h)).map_err(io(format!("reading blob {}", hex(h))))?;
        if blake3::hash(&b).as_bytes() != h {
            return Err(StoreError::Corrupt(format!("blob {} is corrupt on disk", hex(h))));
        }
        Ok(b)
    }

    /// The state blob `h` of the run `spec`, decoded and checked.
    pub fn state(&self, spec: &RunSpec, h: &Hash32) -> Result<GlobalState, StoreError> {
        Ok(spec.decode_state(&self.blob(h)?, h)?)
    }

    /// Writes one decision; a round closes at most once.
    pub fn persist(&mut self, rec: &Record) -> Result<(), StoreError> {
        match rec {
            Record::RoundStarted { round, start } => {
                self.db.execute(
                    "INSERT INTO rounds(round, start) VALUES (?1, ?2)
                     ON CONFLICT(round) DO UPDATE SET start = excluded.start WHERE accept IS NULL",
                    params![*round as i64, postcard::to_allocvec(start)?],
                )?;
            }
            Record::RoundClosed { round, accept, state_hash, backlog, spread, ledger } => {
                let tx = self.db.transaction()?;
                let n = tx.execute(
                    "UPDATE rounds SET accept = ?2, state_hash = ?3, backlog = ?4, spread = ?5
                     WHERE round = ?1 AND accept IS NULL",
                    params![
                        *round as i64,
                        postcard::to_allocvec(accept)?,
                        &state_hash[..],
                        postcard::to_allocvec(backlog)?,
                        spread.filter(|v| v.is_finite())
                    ],
                )?;
                if n != 1 {
                    return Err(StoreError::ClosedTwice(*round));
                }
                insert_ledger(&tx, ledger)?;
                for p in ClosedRound::of(accept).map(|c| c.accepted).unwrap_or_default() {
                    tx.execute(
                        "INSERT INTO accepted(round, peer) VALUES (?1, ?2)",
                        params![*round as i64, &p[..]],
                    )?;
                }
                tx.commit()?;
                self.collect_garbage(*round)?;
            }
            Record::Report { round, peer, state_hash, agrees, computed } => {
                self.db.execute(
                    // One row per (round, peer, computed): a member that repeats its report
                    // replaces it, and a diverged one's computed report and its adoption of
                    // the checkpoint are both kept.
                    "INSERT OR REPLACE INTO reports(round, peer, state_hash, agrees, computed)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![*round as i64, &peer[..], &state_hash[..], *agrees, *computed],
                )?;
            }
            Record::Scored { round, peer, score, harmful, by } => {
                self.db.execute(
                    "INSERT OR REPLACE INTO scores(round, peer, held_out, own, unseen, harmful, validator)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        *round as i64,
                        &peer[..],
                        score.held_out,
                        score.own,
                        score.unseen,
                        *harmful,
                        by.map(|v| v.to_vec())
                    ],
                )?;
            }
            Record::Ledger(records) => {
                let tx = self.db.transaction()?;
                insert_ledger(&tx, records)?;
                tx.commit()?;
            }
            Record::Dispute(d) => {
                let loser = format!("{:?}", d.ruling.loser).to_lowercase();
                self.db.execute(
                    "INSERT OR REPLACE INTO disputes(round, trainer, validator, step, op, kernel, loser, forfeit,
                     exchanges, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        d.round as i64,
                        &d.trainer[..],
                        &d.validator[..],
                        d.ruling.step as i64,
                        d.ruling.op.map(|o| o as i64),
                        d.kernel,
                        loser,
                        d.forfeit,
                        i64::from(d.exchanges),
                        d.bytes as i64
                    ],
                )?;
            }
            Record::Verdict { round, peer, segment, outcome, by } => {
                self.db.execute(
                    "INSERT OR REPLACE INTO verdicts(round, peer, segment, outcome, passed, cheat, validator)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        *round as i64,
                        &peer[..],
                        *segment as i64,
                        outcome.to_string(),
                        outcome.passed(),
                        outcome.proves_cheat(),
                        by.map(|v| v.to_vec())
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// The state hash recorded after round `round` closed, if it did.
    pub fn closed_state(&self, round: u64) -> Result<Option<Hash32>, StoreError> {
        let row: Option<Option<Vec<u8>>> = self
            .db
            .query_row("SELECT state_hash FROM rounds WHERE round = ?1", [round as i64], |r| r.get(0))
            .optional()?;
        row.flatten().map(h32).transpose()
    }

    /// Round `round`'s `RoundStart` and, once it closed, its `Accept`, as announced.
    pub fn round_messages(&self, round: u64) -> Result<Option<(Message, Option<Message>)>, StoreError> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .db
            .query_row("SELECT start, accept FROM rounds WHERE round = ?1", [round as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((start, accept)) = row else { return Ok(None) };
        let accept = accept.map(|b| postcard::from_bytes(&b)).transpose()?;
        Ok(Some((postcard::from_bytes(&start)?, accept)))
    }

    /// The peers whose updates round `round` accepted, in peer order.
    pub fn accepted_in(&self, round: u64) -> Result<Vec<Hash32>, StoreError> {
        let mut q = self.db.prepare("SELECT peer FROM accepted WHERE round = ?1 ORDER BY peer")?;
        let rows = q.query_map([round as i64], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| h32(r?)).collect()
    }

    /// Whether blob `h` is stored (it may have been collected with its round).
    pub fn has_blob(&self, h: &Hash32) -> bool {
        self.blob_path(h).exists()
    }

    /// The ledger replayed from its records and checked against the coordinator's key
    /// (signatures, chain, rules); `None` when this store keeps no ledger.
    pub fn verified_ledger(&self) -> Result<Option<tessera_ledger::Ledger>, StoreError> {
        let records = self.ledger()?;
        let Some(key) = self.meta("coordinator")? else { return Ok(None) };
        let key: [u8; 32] =
            key.try_into().map_err(|_| StoreError::Corrupt("the coordinator's key".into()))?;
        match records.is_empty() {
            true => Ok(None),
            false => Ok(Some(tessera_ledger::verify(&key, &records)?)),
        }
    }

    /// The ledger's records in order, each decoded (size-limited, canonical) but not yet
    /// verified: `tessera_ledger::verify` checks the chain.
    pub fn ledger(&self) -> Result<Vec<tessera_ledger::Record>, StoreError> {
        let mut q = self.db.prepare("SELECT seq, record FROM ledger ORDER BY seq")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, bytes) = row?;
            let r = tessera_ledger::Record::decode(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("ledger record {seq}: {e}")))?;
            out.push(r);
        }
        Ok(out)
    }

    /// Records the validation loss after `round` rounds, `ms` after this process started. A
    /// loss that is not a finite number (a diverged model) is refused with a typed error and
    /// nothing is written (SQLite would store NaN as NULL).
    pub fn record_eval(&self, round: u64, ms: u64, val_loss: f64) -> Result<(), StoreError> {
        if !val_loss.is_finite() {
            return Err(StoreError::NotFinite { what: "validation loss", round, value: val_loss });
        }
        self.db.execute(
            "INSERT OR REPLACE INTO evals(round, ms, val_loss) VALUES (?1, ?2, ?3)",
            params![round as i64, ms as i64, val_loss],
        )?;
        Ok(())
    }

    /// Deletes the state checkpoint (and NoLoCo's replicas and φ blobs) of the round that fell
    /// out of the kept window. Every such blob names its round, so none is shared with a later
    /// round.
    fn collect_garbage(&self, round: u64) -> Result<(), StoreError> {
        let Some(old) = round.checked_sub(KEEP_STATES) else { return Ok(()) };
        type Blobs = Option<Vec<u8>>;
        let row: Option<(Blobs, Blobs)> = self
            .db
            .query_row("SELECT state_hash, accept FROM rounds WHERE round = ?1", [old as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((state, accept)) = row else { return Ok(()) };
        let mut doomed = Vec::new();
        if let Some(h) = state {
            doomed.push(h32(h)?);
        }
        let accept: Option<Message> = accept.map(|b| postcard::from_bytes(&b)).transpose()?;
        doomed.extend(accept.as_ref().and_then(ClosedRound::of).map(|c| c.expiring).unwrap_or_default());
        for h in doomed {
            let _ = std::fs::remove_file(self.blob_path(&h));
        }
        Ok(())
    }

    /// NoLoCo: the replicas the last closed round (`round - 1`) produced, decoded and checked.
    fn restore_replicas(&self, spec: &RunSpec, round: u64) -> Result<Vec<(Hash32, GlobalState)>, StoreError> {
        let Some(last) = round.checked_sub(1) else { return Ok(Vec::new()) };
        let b: Vec<u8> =
            self.db.query_row("SELECT accept FROM rounds WHERE round = ?1", [last as i64], |r| r.get(0))?;
        let accept: Message = postcard::from_bytes(&b)?;
        spec.restore_replicas(round, Some(&accept), |h| self.state(spec, h))
    }

    /// What a restarted coordinator resumes from (None for a fresh run).
    pub fn restore(&self, spec: &RunSpec) -> Result<Option<Restored>, StoreError> {
        let Some(initial) = self.meta("initial_state")? else { return Ok(None) };
        let initial = h32(initial)?;
        let mut history = vec![(0u64, initial)];
        let mut stmt = self
            .db
            .prepare("SELECT round, state_hash FROM rounds WHERE accept IS NOT NULL ORDER BY round")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        for row in rows {
            let (r, h) = row?;
            history.push((r as u64 + 1, h32(h)?));
        }
        let (round, state_hash) = *history.last().expect("initial state");
        let state = self.state(spec, &state_hash)?;
        if state.round != round {
            return Err(StoreError::Corrupt(format!(
                "checkpoint for round {round} holds round {}",
                state.round
            )));
        }
        let backlog: Vec<Unit> = match round.checked_sub(1) {
            Some(last) => {
                let b: Vec<u8> =
                    self.db.query_row("SELECT backlog FROM rounds WHERE round = ?1", [last as i64], |r| {
                        r.get(0)
                    })?;
                postcard::from_bytes(&b)?
            }
            None => Vec::new(),
        };
        let open: Option<Vec<u8>> = self
            .db
            .query_row("SELECT start FROM rounds WHERE round = ?1 AND accept IS NULL", [round as i64], |r| {
                r.get(0)
            })
            .optional()?;
        let open = open.map(|b| postcard::from_bytes::<Message>(&b)).transpose()?;
        let replicas = self.restore_replicas(spec, round)?;
        let banned = self.banned()?;
        Ok(Some(Restored { state, backlog, open, history, replicas, banned }))
    }

    /// Trainers proven to have cheated, with the first round each was caught in.
    fn banned(&self) -> Result<Vec<(Hash32, u64)>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT peer, MIN(round) FROM verdicts WHERE cheat = 1 GROUP BY peer ORDER BY peer")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        rows.map(|row| {
            let (p, r) = row?;
            Ok((h32(p)?, r as u64))
        })
        .collect()
    }
}

/// Appends ledger records inside the caller's transaction.
fn insert_ledger(tx: &rusqlite::Transaction, records: &[tessera_ledger::Record]) -> Result<(), StoreError> {
    for r in records {
        tx.execute("INSERT INTO ledger(seq, record) VALUES (?1, ?2)", params![r.seq as i64, r.encode()])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_coord::{Assignment, RunConfig};

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-store-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn start(round: u64) -> Message {
        let peer = [1; 32];
        Message::RoundStart {
            round,
            state_hash: [0; 32],
            seed: 1,
            members: vec![peer],
            addrs: vec!["127.0.0.1:1".into()],
            assignments: vec![Assignment { peer, data_round: round, slot: 0 }],
            deadline_ms: 1000,
            replicas: vec![],
        }
    }

    #[test]
    fn a_crash_between_blob_and_record_reopens_the_round_and_a_round_closes_once() {
        let dir = tmp("crash");
        let spec = RunSpec::new(RunConfig::default()).unwrap();
        let g0 = spec.initial_state();
        {
            let s = Store::open(&dir).unwrap();
            assert!(s.restore(&spec).unwrap().is_none(), "a fresh directory holds no run");
            s.put_blob(&g0.hash(), &g0.encode()).unwrap();
            s.set_meta("initial_state", &g0.hash()).unwrap();
            let mut s = s;
            s.persist(&Record::RoundStarted { round: 0, start: start(0) }).unwrap();
            // The next state's blob is written, then the process dies before the record.
            let mut g1 = g0.clone();
            g1.round = 1;
            s.put_blob(&g1.hash(), &g1.encode()).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let r = s.restore(&spec).unwrap().unwrap();
        assert_eq!(r.state, g0, "the undecided round is not applied");
        assert_eq!(r.open, Some(start(0)), "the announced round is re-opened");
        // Closing it works once; a second close of the same round is refused.
        let mut s = s;
        let mut g1 = g0.clone();
        g1.round = 1;
        let accept = Message::Accept {
            round: 0,
            accepted: vec![[1; 32]],
            updates: vec![[2; 32]],
            rejected: vec![],
            aggregate: None,
            next_state_hash: g1.hash(),
            pairs: None,
            ledger: None,
        };
        let rec = Record::RoundClosed {
            round: 0,
            accept,
            state_hash: g1.hash(),
            backlog: vec![(0, 3)],
            spread: None,
            ledger: vec![],
        };
        s.persist(&rec).unwrap();
        assert!(s.persist(&rec).is_err(), "a round closes at most once");
        let r = s.restore(&spec).unwrap().unwrap();
        assert_eq!((r.state.round, r.open, r.backlog), (1, None, vec![(0, 3)]));
        assert_eq!(r.history, vec![(0, g0.hash()), (1, g1.hash())]);
        // A blob corrupted on disk is refused, never loaded.
        std::fs::write(dir.join("blobs").join(hex(&g1.hash())), b"garbage").unwrap();
        assert!(s.restore(&spec).is_err());
    }
}

//! The coordinator's durable state: an SQLite database in WAL mode for decisions, and a
//! directory of content-addressed blob files (state checkpoints and aggregates). A blob is
//! written and fsynced before the row that names it; a row is committed before the decision
//! is announced.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use tessera_coord::{GlobalState, Hash32, Message, Record, Restored, Unit};
use tessera_net::hex;

pub const DB_FILE: &str = "coordinator.sqlite";
/// State checkpoints kept on disk (older ones are deleted; aggregates are all kept).
const KEEP_STATES: u64 = 3;

pub struct Store {
    db: Connection,
    blobs: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rounds(
    round INTEGER PRIMARY KEY, start BLOB NOT NULL,
    accept BLOB, state_hash BLOB, backlog BLOB);
CREATE TABLE IF NOT EXISTS accepted(round INTEGER NOT NULL, peer BLOB NOT NULL, PRIMARY KEY(round, peer));
CREATE TABLE IF NOT EXISTS evals(round INTEGER PRIMARY KEY, ms INTEGER NOT NULL, val_loss REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reports(round INTEGER NOT NULL, peer BLOB NOT NULL, state_hash BLOB NOT NULL,
    agrees INTEGER NOT NULL);
";

fn h32(v: Vec<u8>) -> Result<Hash32> {
    v.try_into().map_err(|_| anyhow::anyhow!("stored hash is not 32 bytes"))
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("blobs")).with_context(|| format!("creating {}", dir.display()))?;
        let db = Connection::open(dir.join(DB_FILE)).context("opening the coordinator database")?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db, blobs: dir.join("blobs") })
    }

    /// Opens an existing database read-only (for the demo's progress and summary).
    pub fn open_read_only(dir: &Path) -> Result<Connection> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let db = Connection::open_with_flags(dir.join(DB_FILE), flags)?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(db)
    }

    /// The database, for read-only queries (the demo's summary).
    pub fn conn(&self) -> &Connection {
        &self.db
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", params![key, value])?;
        Ok(())
    }

    fn blob_path(&self, h: &Hash32) -> PathBuf {
        self.blobs.join(hex(h))
    }

    /// Writes a blob durably (temp file, fsync, rename, fsync the directory).
    pub fn put_blob(&self, h: &Hash32, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let path = self.blob_path(h);
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.blobs)?.sync_all()?;
        Ok(())
    }

    /// Reads a blob and checks its hash.
    pub fn blob(&self, h: &Hash32) -> Result<Vec<u8>> {
        let b = std::fs::read(self.blob_path(h)).with_context(|| format!("reading blob {}", hex(h)))?;
        if blake3::hash(&b).as_bytes() != h {
            bail!("blob {} is corrupt on disk", hex(h));
        }
        Ok(b)
    }

    /// Writes one decision; a round closes at most once.
    pub fn persist(&mut self, rec: &Record) -> Result<()> {
        match rec {
            Record::RoundStarted { round, start } => {
                self.db.execute(
                    "INSERT INTO rounds(round, start) VALUES (?1, ?2)
                     ON CONFLICT(round) DO UPDATE SET start = excluded.start WHERE accept IS NULL",
                    params![*round as i64, postcard::to_allocvec(start)?],
                )?;
            }
            Record::RoundClosed { round, accept, state_hash, backlog } => {
                let tx = self.db.transaction()?;
                let n = tx.execute(
                    "UPDATE rounds SET accept = ?2, state_hash = ?3, backlog = ?4 WHERE round = ?1 AND accept IS NULL",
                    params![
                        *round as i64,
                        postcard::to_allocvec(accept)?,
                        &state_hash[..],
                        postcard::to_allocvec(backlog)?
                    ],
                )?;
                if n != 1 {
                    bail!("round {round} was not open in the database (closed twice?)");
                }
                if let Message::Accept { accepted, .. } = accept {
                    for p in accepted {
                        tx.execute(
                            "INSERT INTO accepted(round, peer) VALUES (?1, ?2)",
                            params![*round as i64, &p[..]],
                        )?;
                    }
                }
                tx.commit()?;
                self.collect_garbage(*round)?;
            }
            Record::Report { round, peer, state_hash, agrees } => {
                self.db.execute(
                    "INSERT INTO reports(round, peer, state_hash, agrees) VALUES (?1, ?2, ?3, ?4)",
                    params![*round as i64, &peer[..], &state_hash[..], *agrees],
                )?;
            }
        }
        Ok(())
    }

    /// Records the validation loss after `round` rounds, `ms` after this process started.
    pub fn record_eval(&self, round: u64, ms: u64, val_loss: f64) -> Result<()> {
        self.db.execute(
            "INSERT OR REPLACE INTO evals(round, ms, val_loss) VALUES (?1, ?2, ?3)",
            params![round as i64, ms as i64, val_loss],
        )?;
        Ok(())
    }

    /// Deletes the state checkpoint that fell out of the kept window.
    fn collect_garbage(&self, round: u64) -> Result<()> {
        let Some(old) = round.checked_sub(KEEP_STATES) else { return Ok(()) };
        let h: Option<Vec<u8>> = self
            .db
            .query_row("SELECT state_hash FROM rounds WHERE round = ?1", [old as i64], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(h) = h {
            let _ = std::fs::remove_file(self.blob_path(&h32(h)?));
        }
        Ok(())
    }

    /// What a restarted coordinator resumes from (None for a fresh run).
    pub fn restore(&self, layout_hash: &Hash32, n: usize, buffers: usize) -> Result<Option<Restored>> {
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
        let state = GlobalState::decode(&self.blob(&state_hash)?, layout_hash, n, buffers)?;
        if state.round != round {
            bail!("checkpoint for round {round} holds round {}", state.round);
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
        Ok(Some(Restored { state, backlog, open, history }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_coord::{Assignment, RunConfig, Worker};

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
            assignments: vec![Assignment { peer, data_round: round, slot: 0 }],
            deadline_ms: 1000,
        }
    }

    #[test]
    fn a_crash_between_blob_and_record_reopens_the_round_and_a_round_closes_once() {
        let dir = tmp("crash");
        let w = Worker::new(RunConfig::default()).unwrap();
        let g0 = w.initial_state();
        let (layout, n) = (g0.layout_hash, g0.theta.len());
        {
            let s = Store::open(&dir).unwrap();
            assert!(s.restore(&layout, n, 1).unwrap().is_none(), "a fresh directory holds no run");
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
        let r = s.restore(&layout, n, 1).unwrap().unwrap();
        assert_eq!(r.state, g0, "the undecided round is not applied");
        assert_eq!(r.open, Some(start(0)), "the announced round is re-opened");
        // Closing it works once; a second close of the same round is refused.
        let mut s = s;
        let mut g1 = g0.clone();
        g1.round = 1;
        let accept = Message::Accept {
            round: 0,
            accepted: vec![[1; 32]],
            rejected: vec![],
            aggregate: None,
            next_state_hash: g1.hash(),
        };
        let rec = Record::RoundClosed { round: 0, accept, state_hash: g1.hash(), backlog: vec![(0, 3)] };
        s.persist(&rec).unwrap();
        assert!(s.persist(&rec).is_err(), "a round closes at most once");
        let r = s.restore(&layout, n, 1).unwrap().unwrap();
        assert_eq!((r.state.round, r.open, r.backlog), (1, None, vec![(0, 3)]));
        assert_eq!(r.history, vec![(0, g0.hash()), (1, g1.hash())]);
        // A blob corrupted on disk is refused, never loaded.
        std::fs::write(dir.join("blobs").join(hex(&g1.hash())), b"garbage").unwrap();
        assert!(s.restore(&layout, n, 1).is_err());
    }
}

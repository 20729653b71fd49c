//! A node's copy of the coordinator's ledger on disk (`tessera node --ledger-copy FILE`): a
//! header naming the coordinator, then each verified record as a little-endian `u32` length
//! and its canonical encoding, appended and synced as the node verifies them. Only verified
//! records are ever written, so a copy is intact when its node stops trusting the
//! coordinator; `tessera audit FILE` replays it. A record cut short by a crash mid-append is
//! dropped (and the file cut back) when the copy is reopened; anything else that does not
//! read is a typed error, and the file is left as it is.

use std::io::Write;
use std::path::{Path, PathBuf};

use tessera_ledger::{Record, MAX_RECORD};

use crate::StoreError;

const MAGIC: &[u8; 24] = b"tessera-ledger-copy-v1\n\0";
/// Most records a copy is read back with.
pub const MAX_KEPT_RECORDS: usize = 1 << 20;

/// The kept copy, open for appending.
#[derive(Debug)]
pub struct LedgerFile {
    path: PathBuf,
    file: std::fs::File,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

impl LedgerFile {
    /// Opens (or creates) the copy at `path` of `coordinator`'s ledger, and reads back the
    /// records kept so far (not yet verified: the trainer verifies them on resuming).
    pub fn open(path: &Path, coordinator: &[u8; 32]) -> Result<(Self, Vec<Record>), StoreError> {
        let what = || format!("ledger copy {}", path.display());
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::Io { what: what(), source: e }),
        };
        let (records, good) = match bytes.is_empty() {
            true => {
                std::fs::write(path, [&MAGIC[..], coordinator].concat()).map_err(io(what()))?;
                (Vec::new(), MAGIC.len() + 32)
            }
            false => read(&bytes, Some(coordinator))?,
        };
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(io(what()))?;
        if good < bytes.len() {
            file.set_len(good as u64).map_err(io(what()))?; // a record cut short by a crash
        }
        Ok((Self { path: path.to_path_buf(), file }, records))
    }

    /// Appends verified records and syncs them to disk.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        for r in records {
            let b = r.encode();
            assert!(b.len() <= MAX_RECORD, "a verified record is within the limit");
            buf.extend((b.len() as u32).to_le_bytes());
            buf.extend(b);
        }
        let what = || format!("appending to {}", self.path.display());
        self.file.write_all(&buf).map_err(io(what()))?;
        self.file.sync_data().map_err(io(what()))
    }
}

/// Where a copy at `copy` keeps its blobs (`tessera node --keep-updates`): `<FILE>.blobs/`,
/// one file per blob, named by its BLAKE3 hash in hex.
pub fn blobs_dir(copy: &Path) -> PathBuf {
    let mut name = copy.as_os_str().to_owned();
    name.push(".blobs");
    PathBuf::from(name)
}

/// Largest kept blob read back (checked before reading it).
pub const MAX_KEPT_BLOB: u64 = 1 << 31;

/// Keeps `bytes` (whose hash is `hash`) in the blob directory `dir`: written to a temporary
/// name, synced and renamed into place, so a crash leaves the blob whole or absent.
pub fn keep_blob(dir: &Path, hash: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
    assert_eq!(blake3::hash(bytes).as_bytes(), hash, "a kept blob is named by its hash");
    write_atomic(dir, &hex(hash), bytes)
}

/// The kept blob `hash` in `dir`, re-hashed: `None` if it is not kept, a typed error if it
/// is over [`MAX_KEPT_BLOB`] or its bytes do not hash to its name.
pub fn kept_blob(dir: &Path, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
    let path = dir.join(hex(hash));
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io { what: format!("reading {}", path.display()), source: e }),
    };
    if len > MAX_KEPT_BLOB {
        return Err(StoreError::Corrupt(format!(
            "kept blob {}: {len} bytes, over the limit",
            hex(&hash[..4])
        )));
    }
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    if blake3::hash(&bytes).as_bytes() != hash {
        return Err(StoreError::Corrupt(format!("kept blob {} does not hash to its name", hex(&hash[..4]))));
    }
    Ok(Some(bytes))
}

/// Keeps a NoLoCo round's members and kept replicas as `round-<R>` in `dir`, atomically.
pub fn keep_round(dir: &Path, k: &tessera_coord::KeptRound) -> Result<(), StoreError> {
    write_atomic(dir, &format!("round-{}", k.round), &k.encode())
}

/// The kept round `round` in `dir`, if kept; a typed error if it does not decode (or is of
/// another round).
pub fn kept_round(dir: &Path, round: u64) -> Result<Option<tessera_coord::KeptRound>, StoreError> {
    let path = dir.join(format!("round-{round}"));
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::Io { what: format!("reading {}", path.display()), source: e }),
    };
    if len > tessera_coord::MAX_KEPT_ROUND as u64 {
        return Err(StoreError::Corrupt(format!("kept round {round}: {len} bytes, over the limit")));
    }
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    let k = tessera_coord::KeptRound::decode(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    match k.round == round {
        true => Ok(Some(k)),
        false => Err(StoreError::Corrupt(format!("kept round {round} says it is round {}", k.round))),
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let what = || format!("keeping {name} in {}", dir.display());
    std::fs::create_dir_all(dir).map_err(io(what()))?;
    let (tmp, path) = (dir.join(format!(".{name}.tmp")), dir.join(name));
    let mut f = std::fs::File::create(&tmp).map_err(io(what()))?;
    f.write_all(bytes).and_then(|_| f.sync_data()).map_err(io(what()))?;
    std::fs::rename(&tmp, &path).map_err(io(what()))
}

fn hex(b: &[u8]) -> String {
    tessera_tensor::hex(b)
}

/// Reads a kept copy: its coordinator and records (`tessera audit FILE`).
pub fn read_copy(path: &Path) -> Result<([u8; 32], Vec<Record>), StoreError> {
    let bytes = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    let (records, _) = read(&bytes, None)?;
    let coordinator = bytes[MAGIC.len()..MAGIC.len() + 32].try_into().expect("checked by read");
    Ok((coordinator, records))
}

/// A kept copy, read and verified against the coordinator it names.
pub fn verified_copy(path: &Path) -> Result<(tessera_ledger::Ledger, Vec<Record>), StoreError> {
    let (coordinator, records) = read_copy(path)?;
    Ok((tessera_ledger::verify(&coordinator, &records)?, records))
}

/// Whether `path` is a kept ledger copy (rather than a coordinator's directory).
pub fn is_copy(path: &Path) -> bool {
    let mut head = [0u8; 24];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).is_ok()
        && &head == MAGIC
}

/// The records of a copy's bytes, and how many bytes hold whole records.
fn read(bytes: &[u8], coordinator: Option<&[u8; 32]>) -> Result<(Vec<Record>, usize), StoreError> {
    let bad = |why: String| StoreError::Corrupt(format!("ledger copy: {why}"));
    if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("not a tessera ledger copy".into()));
    }
    let named = &bytes[MAGIC.len()..MAGIC.len() + 32];
    if coordinator.is_some_and(|c| c[..] != *named) {
        return Err(bad("a copy of another coordinator's ledger".into()));
    }
    let (mut at, mut records) = (MAGIC.len() + 32, Vec::new());
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD {
            return Err(bad(format!("record {} of {len} bytes", records.len())));
        }
        let Some(b) = bytes.get(at + 4..at + 4 + len) else { break }; // cut short
        if records.len() >= MAX_KEPT_RECORDS {
            return Err(bad(format!("more than {MAX_KEPT_RECORDS} records")));
        }
        records.push(Record::decode(b).map_err(|e| bad(format!("record {}: {e}", records.len())))?);
        at += 4 + len;
    }
    Ok((records, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ledger::{Ledger, StakeRules};

    fn records() -> (ed25519_dalek::SigningKey, Vec<Record>) {
        let k = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let (mut l, first) = Ledger::genesis(&k, [1; 32], StakeRules::default()).unwrap();
        let mut log = vec![first];
        log.extend(
            l.append(&k, tessera_ledger::Entry::Joined { peer: [9; 32], stake: 1_000, validator: false })
                .unwrap(),
        );
        (k, log)
    }

    #[test]
    fn a_copy_reads_back_what_was_kept_and_drops_a_record_cut_short() {
        let dir = std::env::temp_dir().join(format!("tessera-ledger-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger");
        let (k, log) = records();
        let me = k.verifying_key().to_bytes();
        let (mut f, none) = LedgerFile::open(&path, &me).unwrap();
        assert!(none.is_empty() && is_copy(&path));
        f.append(&log).unwrap();
        drop(f);
        assert_eq!(LedgerFile::open(&path, &me).unwrap().1, log);
        // A crash mid-append: half of a third record.
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend(100u32.to_le_bytes());
        bytes.extend([7; 50]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, back) = LedgerFile::open(&path, &me).unwrap();
        assert_eq!(back, log, "the whole records are kept");
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole, "and the torn one cut off");
        assert_eq!(read_copy(&path).unwrap(), (me, log.clone()));
        // Another coordinator's copy, and a damaged record, are typed errors.
        let other = LedgerFile::open(&path, &[0; 32]).unwrap_err().to_string();
        assert!(other.contains("another coordinator"), "{other}");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + 32 + 3] = 0xff; // the first record's length, far over the limit
        std::fs::write(&path, &bytes).unwrap();
        let e = LedgerFile::open(&path, &me).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
        std::fs::write(&path, b"not a copy at all, just some bytes").unwrap();
        assert!(!is_copy(&path));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

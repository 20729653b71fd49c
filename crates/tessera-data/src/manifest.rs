//! The manifest: which shards make up a dataset, by BLAKE3 hash, and which are held out.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tessera_tensor::Hash;

use crate::{DataError, MAX_MANIFEST_BYTES, MAX_SHARDS};

/// File name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Format tag of this manifest version.
pub const MANIFEST_FORMAT: &str = "tessera-shards-v1";

/// One shard: a file of `tokens` little-endian u16 tokens, named `<blake3>.bin`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    pub file: String,
    pub blake3: String,
    pub tokens: usize,
}

/// A dataset: its tokenizer and its training and validation shards, in order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// `bytes` (UTF-8 bytes as tokens) or `pretokenized-u16`.
    pub tokenizer: String,
    pub vocab: usize,
    /// Bytes per stored token (always 2: u16 LE).
    pub token_bytes: usize,
    /// Tokens per full shard (the last shard may be shorter).
    pub shard_tokens: usize,
    /// Every `val_every`-th shard is held out for validation.
    pub val_every: usize,
    /// What the shards were made from.
    pub source: String,
    pub train: Vec<ShardInfo>,
    pub val: Vec<ShardInfo>,
}

impl Manifest {
    /// BLAKE3 of the manifest's canonical JSON: the dataset's identity.
    pub fn hash(&self) -> Hash {
        let bytes = serde_json::to_vec(self).expect("manifest serializes");
        *blake3::hash(&bytes).as_bytes()
    }

    /// Total training tokens.
    pub fn train_tokens(&self) -> usize {
        self.train.iter().map(|s| s.tokens).sum()
    }

    /// Total validation tokens.
    pub fn val_tokens(&self) -> usize {
        self.val.iter().map(|s| s.tokens).sum()
    }

    /// Checks every field a reader relies on.
    pub fn validate(&self, path: &Path) -> Result<(), DataError> {
        let bad = |reason: String| DataError::BadManifest { path: path.display().to_string(), reason };
        if self.format != MANIFEST_FORMAT {
            return Err(bad(format!("format {:?}, expected {MANIFEST_FORMAT:?}", self.format)));
        }
        if self.token_bytes != 2 || self.vocab == 0 || self.vocab > 1 << 16 || self.shard_tokens == 0 {
            return Err(bad("token size, vocab or shard size out of range".into()));
        }
        if self.train.is_empty() || self.val.is_empty() {
            return Err(bad("needs at least one training and one validation shard".into()));
        }
        if self.train.len() + self.val.len() > MAX_SHARDS {
            return Err(bad(format!("more than {MAX_SHARDS} shards")));
        }
        for s in self.train.iter().chain(&self.val) {
            let hex_ok = s.blake3.len() == 64 && s.blake3.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok || s.file != format!("{}.bin", s.blake3) {
                return Err(bad(format!("shard entry {:?} is not <blake3>.bin", s.file)));
            }
            if s.tokens == 0 || s.tokens > self.shard_tokens {
                return Err(bad(format!("shard {} has {} tokens", s.file, s.tokens)));
            }
        }
        Ok(())
    }

    /// Reads and validates `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let meta = std::fs::metadata(&path)
            .map_err(|e| DataError::Missing { path: path.display().to_string(), source: e })?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(DataError::TooLarge { what: "manifest", got: meta.len(), limit: MAX_MANIFEST_BYTES });
        }
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| DataError::BadManifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        m.validate(&path)?;
        Ok(m)
    }

    /// Writes `dir/manifest.json` atomically (temporary file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<(), DataError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        write_atomic(&dir.join(MANIFEST_FILE), &bytes)
    }
}

/// Writes `bytes` to `path` via a temporary file in the same directory, fsynced and renamed, so
/// a reader sees either the old file or the complete new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

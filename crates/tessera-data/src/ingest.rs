//! Ingestion: a corpus (a UTF-8 text file, a directory of them, or pre-tokenized u16 files)
//! becomes fixed-size shards named by their BLAKE3 hash, plus the manifest.

use std::path::{Path, PathBuf};

use crate::manifest::write_atomic;
use crate::{DataError, Manifest, ShardInfo, BYTE_VOCAB, DEFAULT_SHARD_TOKENS, MANIFEST_FORMAT};
use crate::{MAX_SHARDS, MAX_SOURCE_FILES, MAX_SOURCE_FILE_BYTES};

/// How input files are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// UTF-8 text; each byte is a token (vocab 256).
    Text,
    /// Little-endian u16 token ids.
    U16,
}

/// Ingestion settings.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub format: SourceFormat,
    /// Tokens per shard.
    pub shard_tokens: usize,
    /// Every `val_every`-th shard (the 20th, 40th, … by default) is held out for validation.
    pub val_every: usize,
    /// Vocabulary of pre-tokenized input (text is always 256).
    pub vocab: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            format: SourceFormat::Text,
            shard_tokens: DEFAULT_SHARD_TOKENS,
            val_every: 20,
            vocab: BYTE_VOCAB,
        }
    }
}

/// Collects shards as tokens arrive, writing each full one to disk.
struct ShardWriter<'a> {
    dir: &'a Path,
    shard_tokens: usize,
    buf: Vec<u16>,
    shards: Vec<ShardInfo>,
}

impl ShardWriter<'_> {
    fn push(&mut self, t: u16) -> Result<(), DataError> {
        self.buf.push(t);
        if self.buf.len() == self.shard_tokens {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.shards.len() >= MAX_SHARDS {
            return Err(DataError::TooLarge {
                what: "shard count",
                got: self.shards.len() as u64 + 1,
                limit: MAX_SHARDS as u64,
            });
        }
        let bytes: Vec<u8> = self.buf.iter().flat_map(|t| t.to_le_bytes()).collect();
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let file = format!("{hash}.bin");
        write_atomic(&self.dir.join(&file), &bytes)?;
        self.shards.push(ShardInfo { file, blake3: hash, tokens: self.buf.len() });
        self.buf.clear();
        Ok(())
    }
}

/// All regular files under `path` (or `path` itself), sorted by path, for a fixed order.
fn source_files(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let missing = |e| DataError::Missing { path: path.display().to_string(), source: e };
    let meta = std::fs::metadata(path).map_err(missing)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))? {
            let p = entry.map_err(|e| DataError::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
            if out.len() > MAX_SOURCE_FILES {
                return Err(DataError::TooLarge {
                    what: "file count",
                    got: out.len() as u64,
                    limit: MAX_SOURCE_FILES as u64,
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_source(p: &Path) -> Result<Vec<u8>, DataError> {
    let len = std::fs::metadata(p).map_err(|e| DataError::io(p, e))?.len();
    if len > MAX_SOURCE_FILE_BYTES {
        return Err(DataError::TooLarge { what: "input file", got: len, limit: MAX_SOURCE_FILE_BYTES });
    }
    std::fs::read(p).map_err(|e| DataError::io(p, e))
}

/// Ingests the file or directory `src` into shards and a manifest in `out`.
pub fn ingest(src: &Path, out: &Path, opts: &IngestOptions) -> Result<Manifest, DataError> {
    let files = source_files(src)?;
    let mut w = start(out, opts)?;
    for f in &files {
        let bytes = read_source(f)?;
        push_source(&mut w, &f.display().to_string(), &bytes, opts)?;
    }
    finish(w, out, opts, &src.display().to_string())
}

/// Ingests in-memory text (the embedded corpus) named `name`.
pub fn ingest_bytes(
    text: &[u8],
    name: &str,
    out: &Path,
    opts: &IngestOptions,
) -> Result<Manifest, DataError> {
    let mut w = start(out, opts)?;
    push_source(&mut w, name, text, opts)?;
    finish(w, out, opts, name)
}

fn start<'a>(out: &'a Path, opts: &IngestOptions) -> Result<ShardWriter<'a>, DataError> {
    if opts.shard_tokens < 2 || opts.val_every < 2 {
        return Err(DataError::BadRequest("shard_tokens and val_every must be at least 2".into()));
    }
    if opts.format == SourceFormat::Text && opts.vocab != BYTE_VOCAB {
        return Err(DataError::BadRequest("text is tokenized as bytes: vocab must be 256".into()));
    }
    if opts.vocab == 0 || opts.vocab > 1 << 16 {
        return Err(DataError::BadRequest(format!("vocab {} must be in 1..=65536", opts.vocab)));
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    Ok(ShardWriter { dir: out, shard_tokens: opts.shard_tokens, buf: Vec::new(), shards: Vec::new() })
}

fn push_source(w: &mut ShardWriter, name: &str, bytes: &[u8], opts: &IngestOptions) -> Result<(), DataError> {
    match opts.format {
        SourceFormat::Text => {
            if let Err(e) = std::str::from_utf8(bytes) {
                return Err(DataError::NotUtf8 { path: name.to_string(), offset: e.valid_up_to() });
            }
            bytes.iter().try_for_each(|&b| w.push(u16::from(b)))
        }
        SourceFormat::U16 => {
            if !bytes.len().is_multiple_of(2) {
                return Err(DataError::OddTokenFile { path: name.to_string() });
            }
            bytes.chunks_exact(2).try_for_each(|c| {
                let t = u16::from_le_bytes([c[0], c[1]]);
                if usize::from(t) >= opts.vocab {
                    return Err(DataError::TokenOutOfRange {
                        path: name.to_string(),
                        token: t.into(),
                        vocab: opts.vocab,
                    });
                }
                w.push(t)
            })
        }
    }
}

fn finish(mut w: ShardWriter, out: &Path, opts: &IngestOptions, source: &str) -> Result<Manifest, DataError> {
    w.flush()?;
    let all = std::mem::take(&mut w.shards);
    let tokens: usize = all.iter().map(|s| s.tokens).sum();
    if tokens == 0 {
        return Err(DataError::Empty(source.to_string()));
    }
    if all.len() < 2 {
        return Err(DataError::TooSmall {
            tokens,
            need: opts.shard_tokens + 1,
            why: "more than one shard, so one can be held out; lower the shard size".into(),
        });
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let n = all.len();
    for (i, s) in all.into_iter().enumerate() {
        // Every val_every-th shard is held out; a corpus with fewer shards holds out its last.
        let held = (i + 1) % opts.val_every == 0 || (n < opts.val_every && i + 1 == n);
        if held {
            val.push(s)
        } else {
            train.push(s)
        }
    }
    let tokenizer = match opts.format {
        SourceFormat::Text => "bytes",
        SourceFormat::U16 => "pretokenized-u16",
    };
    let m = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        tokenizer: tokenizer.to_string(),
        vocab: opts.vocab,
        token_bytes: 2,
        shard_tokens: opts.shard_tokens,
        val_every: opts.val_every,
        source: source.to_string(),
        train,
        val,
    };
    m.validate(&out.join(crate::MANIFEST_FILE))?;
    m.write(out)?;
    Ok(m)
}

//! An opened, verified dataset that serves batches read from disk on demand.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use tessera_model::Batch;
use tessera_tensor::rng::{purpose, Philox};
use tessera_tensor::{Hash, Tensor};

use crate::{DataError, Manifest, ShardInfo};

/// Seed of the fixed validation batches: every run evaluates on the same positions.
const VAL_SEED: u64 = 0x7e55_e7a0_0000_0001;
/// Largest batch × context served at once (guards allocations).
pub const MAX_BATCH_TOKENS: usize = 1 << 24;

/// Identifies one training batch. Its positions are a pure function of this key, the batch
/// shape and the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchKey {
    pub seed: u64,
    pub round: u64,
    /// The peer's slot in the round (0 for single-machine training).
    pub slot: u64,
    pub step: u64,
}

/// One split's shards, with the prefix sums of their sampleable windows.
#[derive(Debug)]
struct Split {
    files: Vec<File>,
    shards: Vec<ShardInfo>,
}

impl Split {
    /// Cumulative counts of valid window starts for sequences of `len` tokens.
    fn windows(&self, len: usize) -> Vec<u64> {
        let mut acc = 0u64;
        self.shards
            .iter()
            .map(|s| {
                acc += s.tokens.saturating_sub(len - 1) as u64;
                acc
            })
            .collect()
    }

    /// Reads `len` tokens starting at window number `w` of the split.
    fn read(&self, cum: &[u64], w: u64, len: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
        let shard = cum.partition_point(|&c| c <= w);
        let start = if shard == 0 { w } else { w - cum[shard - 1] };
        let mut buf = vec![0u8; len * 2];
        read_at(&self.files[shard], &mut buf, start * 2)
            .map_err(|e| DataError::io(Path::new(&self.shards[shard].file), e))?;
        out.extend(buf.chunks_exact(2).map(|c| f32::from(u16::from_le_bytes([c[0], c[1]]))));
        Ok(())
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = f.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// A dataset whose every shard has been checked against the manifest.
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    hash: Hash,
    train: Split,
    val: Split,
}

impl Dataset {
    /// Opens `dir`, reading the manifest and hashing every shard (streamed, 64 KiB at a time).
    /// A missing, short, long or altered shard is an error naming the file.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let manifest = Manifest::read(dir)?;
        let open_split = |shards: &[ShardInfo]| -> Result<Split, DataError> {
            let files = shards.iter().map(|s| verify_shard(dir, s)).collect::<Result<_, _>>()?;
            Ok(Split { files, shards: shards.to_vec() })
        };
        let train = open_split(&manifest.train)?;
        let val = open_split(&manifest.val)?;
        let hash = manifest.hash();
        Ok(Self { dir: dir.to_path_buf(), manifest, hash, train, val })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// BLAKE3 of the manifest: the dataset's identity.
    pub fn manifest_hash(&self) -> Hash {
        self.hash
    }

    /// The training batch for `key`: `batch` rows of `context` tokens and their next tokens.
    pub fn train_batch(&self, key: &BatchKey, batch: usize, context: usize) -> Result<Batch, DataError> {
        let mut h = blake3::Hasher::new();
        h.update(b"tessera-train-batch-v1");
        for v in [key.round, key.slot] {
            h.update(&v.to_le_bytes());
        }
        let stream = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
        let rng = Philox::new(key.seed);
        self.batch(&self.train, batch, context, |b| rng.u64(stream, key.step.wrapping_mul(batch as u64) + b))
    }

    /// Validation batch number `index`; the same for every run on this dataset.
    pub fn val_batch(&self, index: u64, batch: usize, context: usize) -> Result<Batch, DataError> {
        let rng = Philox::new(VAL_SEED);
        let p = purpose("val-batch");
        self.batch(&self.val, batch, context, |b| rng.u64(p, index.wrapping_mul(batch as u64) + b))
    }

    fn batch(
        &self,
        split: &Split,
        batch: usize,
        context: usize,
        draw: impl Fn(u64) -> u64,
    ) -> Result<Batch, DataError> {
        if batch == 0 || context == 0 || batch.saturating_mul(context) > MAX_BATCH_TOKENS {
            return Err(DataError::BadRequest(format!("batch {batch} × context {context}")));
        }
        let cum = split.windows(context + 1);
        let total = cum.last().copied().unwrap_or(0);
        if total == 0 {
            return Err(DataError::TooSmall {
                tokens: split.shards.iter().map(|s| s.tokens).sum(),
                need: context + 1,
                why: "one shard must be longer than the context".into(),
            });
        }
        let (mut x, mut y) = (Vec::with_capacity(batch * context), Vec::with_capacity(batch * context));
        let mut row = Vec::with_capacity(context + 1);
        for b in 0..batch as u64 {
            let w = ((u128::from(draw(b)) * u128::from(total)) >> 64) as u64;
            row.clear();
            split.read(&cum, w, context + 1, &mut row)?;
            x.extend_from_slice(&row[..context]);
            y.extend_from_slice(&row[1..]);
        }
        let shape = [batch, context];
        Ok(Batch {
            inputs: Tensor::new(&shape, x).expect("shape"),
            targets: Tensor::new(&shape, y).expect("shape"),
        })
    }

    /// Cross-entropy, in bits per token, of the training split's unigram distribution (with
    /// add-one smoothing) on the validation split: the baseline a model must beat.
    pub fn unigram_bits_per_token(&self) -> Result<f64, DataError> {
        let vocab = self.manifest.vocab;
        let mut train = vec![1u64; vocab];
        count_tokens(&self.train, &mut train)?;
        let mut val = vec![0u64; vocab];
        count_tokens(&self.val, &mut val)?;
        let tn: u64 = train.iter().sum();
        let vn: u64 = val.iter().sum();
        let bits: f64 = (0..vocab)
            .filter(|&t| val[t] > 0)
            .map(|t| -(val[t] as f64) * (train[t] as f64 / tn as f64).log2())
            .sum();
        Ok(bits / vn as f64)
    }
}

fn count_tokens(split: &Split, counts: &mut [u64]) -> Result<(), DataError> {
    for (f, s) in split.files.iter().zip(&split.shards) {
        let mut buf = vec![0u8; s.tokens * 2];
        read_at(f, &mut buf, 0).map_err(|e| DataError::io(Path::new(&s.file), e))?;
        for c in buf.chunks_exact(2) {
            let t = usize::from(u16::from_le_bytes([c[0], c[1]]));
            if let Some(n) = counts.get_mut(t) {
                *n += 1;
            }
        }
    }
    Ok(())
}

/// Opens one shard and checks its length and BLAKE3 hash against the manifest.
fn verify_shard(dir: &Path, s: &ShardInfo) -> Result<File, DataError> {
    let path = dir.join(&s.file);
    let mut f =
        File::open(&path).map_err(|e| DataError::Missing { path: path.display().to_string(), source: e })?;
    let len = f.metadata().map_err(|e| DataError::io(&path, e))?.len();
    let want = s.tokens as u64 * 2;
    if len != want {
        return Err(DataError::ShardLength { file: s.file.clone(), want, got: len });
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(&path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = h.finalize().to_hex().to_string();
    if got != s.blake3 {
        return Err(DataError::ShardHash { file: s.file.clone(), want: s.blake3.clone(), got });
    }
    Ok(f)
}

//! `tessera sample`, `tessera data ingest` and `tessera inspect`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use tessera_checkpoint::{latest, load, read_meta};
use tessera_data::{ingest, IngestOptions, SourceFormat};
use tessera_model::{Gpt, GptConfig, SampleConfig};

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A checkpoint directory (step-…), or a checkpoint root to take the newest from.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Bytes to generate.
    #[arg(long, default_value_t = 400)]
    pub tokens: usize,
    /// 0 picks the most likely byte each time.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the k most likely bytes (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Resolves a checkpoint argument: a `step-…` directory, or a directory holding them.
pub fn resolve_checkpoint(p: &Path) -> Result<PathBuf> {
    if p.join("meta.json").exists() {
        return Ok(p.to_path_buf());
    }
    latest(p)?.with_context(|| format!("no checkpoint at {}", p.display()))
}

/// Loads the GPT stored in a checkpoint.
pub fn load_gpt(p: &Path) -> Result<(Gpt, PathBuf)> {
    let path = resolve_checkpoint(p)?;
    let meta = read_meta(&path)?;
    let m = &meta.model;
    if m.kind != "gpt" {
        bail!("{} holds a {:?} model, not a GPT", path.display(), m.kind);
    }
    let cfg = GptConfig {
        vocab: m.vocab,
        d_model: m.d_model,
        layers: m.layers,
        heads: m.heads,
        context: m.context,
    };
    let mut gpt = Gpt::new(cfg, 0)?;
    gpt.params = load(&path, &gpt.params)?.params;
    Ok((gpt, path))
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let (gpt, path) = load_gpt(&a.checkpoint)?;
    let prompt: Vec<u32> = a.prompt.bytes().map(u32::from).collect();
    let cfg = SampleConfig { temperature: a.temperature, top_k: a.top_k, seed: a.seed };
    let out = gpt.generate(&prompt, a.tokens, &cfg)?;
    let bytes: Vec<u8> = a.prompt.bytes().chain(out.iter().map(|&t| t as u8)).collect();
    eprintln!("sampling from {}", path.display());
    crate::out(&String::from_utf8_lossy(&bytes));
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Cut a corpus into BLAKE3-named shards with a manifest.
    Ingest {
        /// A UTF-8 text file, a directory of them, or (with --format u16) token files.
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// text or u16.
        #[arg(long, default_value = "text")]
        format: String,
        #[arg(long, default_value_t = tessera_data::DEFAULT_SHARD_TOKENS)]
        shard_tokens: usize,
        /// Vocabulary of u16 input.
        #[arg(long, default_value_t = 256)]
        vocab: usize,
    },
}

pub fn data(cmd: DataCmd) -> Result<()> {
    let DataCmd::Ingest { corpus, out, format, shard_tokens, vocab } = cmd;
    let format = match format.as_str() {
        "text" => SourceFormat::Text,
        "u16" => SourceFormat::U16,
        f => bail!("--format must be text or u16, not {f:?}"),
    };
    let opts = IngestOptions { format, shard_tokens, vocab, ..IngestOptions::default() };
    let m = ingest(&corpus, &out, &opts)?;
    crate::out(&format!(
        "{}: {} training shards ({} tokens), {} validation shards ({} tokens); manifest {}",
        out.display(),
        m.train.len(),
        m.train_tokens(),
        m.val.len(),
        m.val_tokens(),
        tessera_tensor::hex(&m.hash())
    ));
    Ok(())
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A checkpoint directory (or a root holding them).
    #[arg(long)]
    pub checkpoint: PathBuf,
}

/// Prints the checkpoint's metadata and, per weight tensor, its shape and an exact checksum
/// (Σ (i+1)·bits(xᵢ) mod 2⁶⁴ over the f32 bit patterns) that any language can recompute.
pub fn inspect(a: InspectArgs) -> Result<()> {
    let (gpt, path) = load_gpt(&a.checkpoint)?;
    let meta = read_meta(&path)?;
    crate::out(&format!("checkpoint {}", path.display()));
    crate::out(&format!("step {}", meta.step));
    crate::out(&format!("state-hash {}", meta.state_hash));
    for (name, t) in gpt.params.names().iter().zip(gpt.params.tensors()) {
        let sum =
            t.data().iter().enumerate().fold(0u64, |acc, (i, v)| {
                acc.wrapping_add((i as u64 + 1).wrapping_mul(u64::from(v.to_bits())))
            });
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        crate::out(&format!("tensor {name} {} {sum}", shape.join("x")));
    }
    Ok(())
}

//! `tessera train`: single-machine GPT training on a text file (default: the embedded Sonnets).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_model::fixtures::SONNETS;
use tessera_model::{text_batch, AdamWConfig, Gpt, GptConfig, Trainer};
use tessera_tensor::{hex, simd, TraceMode};

/// Largest training text read into memory by this minimal trainer.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model preset: tiny (~0.1M parameters), small (~3M) or base (~11M).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Optimizer steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Seed for initialisation and batch order.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Sequences per step (each as long as the preset's context).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Worker threads (0: one per core). The result does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f32>,
    /// A UTF-8 text file to train on (default: the embedded Shakespeare Sonnets).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print a progress line every N steps (0: never).
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
}

fn load_text(path: &Option<PathBuf>) -> Result<Vec<u8>> {
    let Some(p) = path else { return Ok(SONNETS.to_vec()) };
    let meta = std::fs::metadata(p).with_context(|| format!("cannot read training text {}", p.display()))?;
    if meta.len() > MAX_TEXT_BYTES {
        bail!("{} is {} bytes; this trainer reads at most {MAX_TEXT_BYTES}", p.display(), meta.len());
    }
    let bytes = std::fs::read(p).with_context(|| format!("cannot read training text {}", p.display()))?;
    std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8 text", p.display()))?;
    if bytes.is_empty() {
        bail!("{} is empty", p.display());
    }
    Ok(bytes)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = GptConfig::preset(&a.preset)?;
    let text = load_text(&a.data)?;
    if a.steps == 0 || a.batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    let mut opt = AdamWConfig::for_run(a.steps);
    if let Some(lr) = a.lr {
        opt.lr = lr;
    }
    let ctx = cfg.context;
    let params = cfg.num_params();
    let mut tr = Trainer::new(Gpt::new(cfg, a.seed)?, opt)?;
    text_batch(&text, a.seed, 0, a.batch, ctx)?; // check the text is long enough before starting
    let pool = crate::pool(a.threads)?;
    eprintln!(
        "training {} ({params} parameters) for {} steps, batch {}×{ctx}, {} threads, {} path, {} bytes of text",
        a.preset,
        a.steps,
        a.batch,
        pool.current_num_threads(),
        simd::active_path().name(),
        text.len()
    );
    let start = Instant::now();
    pool.install(|| -> Result<()> {
        for s in 0..a.steps {
            let out = tr.step(&text_batch(&text, a.seed, s, a.batch, ctx)?, TraceMode::Off)?;
            let done = s + 1;
            if a.log_every > 0 && (done % a.log_every == 0 || done == a.steps) {
                let secs = start.elapsed().as_secs_f64();
                let tps = (done as usize * a.batch * ctx) as f64 / secs;
                let eta = secs / done as f64 * (a.steps - done) as f64;
                eprintln!(
                    "step {done:>6}/{}  loss {:.4}  {tps:>8.0} tok/s  eta {eta:.0}s",
                    a.steps, out.loss
                );
            }
        }
        Ok(())
    })?;
    println!("state-hash: {}", hex(&tr.state_hash()));
    Ok(())
}

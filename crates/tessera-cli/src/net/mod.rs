//! The networked run's daemons: `tessera coordinator`, `tessera node` and `tessera demo`.
//! They wire the sans-IO state machines of `tessera-coord` to the `tessera-net` transport,
//! the clock, the disk and the terminal.

pub mod coordinator;
pub mod demo;
pub mod node;
pub mod store;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;

/// The endpoint settings both daemons take.
#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// Socket to bind.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: std::net::SocketAddr,
    /// Test-only link shaping of everything this process sends, e.g. `10mbit,50ms`.
    #[arg(long)]
    pub shape: Option<tessera_net::Shaping>,
    /// Internet mode: use iroh's public relays and address lookup (contacts n0's servers).
    #[arg(long)]
    pub internet: bool,
}

impl NetArgs {
    pub fn config(&self) -> tessera_net::NetConfig {
        tessera_net::NetConfig { bind: self.bind, shaping: self.shape, internet: self.internet }
    }
}

/// How often the daemons look at the clock.
pub const TICK: Duration = Duration::from_millis(100);
/// Frames queued for one peer before new ones are dropped.
pub const MAX_OUTBOX: usize = 256;
/// Tries to fetch one blob.
pub const FETCH_ATTEMPTS: usize = 5;

/// Mean validation loss (nats per byte) of parameters `theta` on the first `batches`
/// validation batches.
pub fn val_loss(
    cfg: &tessera_coord::RunConfig,
    ds: &tessera_data::Dataset,
    theta: &[f32],
    batches: u64,
) -> Result<f64> {
    use tessera_model::{AdamWConfig, Gpt, GptConfig, Trainer};
    let g = GptConfig::preset(&cfg.preset)?;
    let ctx = g.context;
    let mut model = Gpt::new(g, cfg.seed)?;
    model.params.load_flat(theta)?;
    let tr = Trainer::new(model, AdamWConfig::default())?;
    let mut s = 0.0;
    for i in 0..batches {
        s += f64::from(tr.eval_loss(&ds.val_batch(i, cfg.batch, ctx)?)?);
    }
    Ok(s / batches.max(1) as f64)
}

/// A 32-byte ed25519 secret kept as hex in `path`, created (from the OS's randomness) if
/// missing.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey> {
    if path.exists() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
        let b = tessera_tensor::unhex32(text.trim())
            .with_context(|| format!("{} does not hold a 64-digit hex key", path.display()))?;
        return Ok(SigningKey::from_bytes(&b));
    }
    let key = fresh_key()?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, tessera_net::hex(&key.to_bytes()))?;
    Ok(key)
}

/// A new identity from the OS's randomness (the binary edge may read it).
pub fn fresh_key() -> Result<SigningKey> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(SigningKey::from_bytes(&b))
}

/// Outgoing sequence numbers: start at the wall clock in microseconds, so a restarted process
/// continues above what it sent before, then count up.
pub struct Seq(std::sync::atomic::AtomicU64);

impl Seq {
    pub fn from_clock() -> Self {
        let us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
        Self(std::sync::atomic::AtomicU64::new(us))
    }

    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }
}

/// The first 8 hex digits of a peer id, for logs.
pub fn short(p: &[u8]) -> String {
    tessera_net::hex(&p[..4])
}

/// Timestamped log lines on stderr.
#[derive(Clone)]
pub struct Log {
    who: String,
    t0: Instant,
}

impl Log {
    pub fn new(who: &str) -> Self {
        Self { who: who.to_string(), t0: Instant::now() }
    }

    fn line(&self, level: &str, msg: &str) {
        eprintln!("{:>8.2}s {level} {}: {msg}", self.t0.elapsed().as_secs_f64(), self.who);
    }

    pub fn info(&self, msg: &str) {
        self.line("INFO", msg);
    }

    pub fn warn(&self, msg: &str) {
        self.line("WARN", msg);
    }
}

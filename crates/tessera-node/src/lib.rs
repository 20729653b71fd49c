//! # tessera-node
//!
//! **Role.** The daemons of a networked run: the coordinator service ([`coordinator`]), the
//! trainer service ([`trainer`], `tessera node`) and the coordinator's durable [`Store`]. They
//! wire the sans-IO state machines of `tessera-coord` to the `tessera-net` transport, the
//! clock, the disk and the thread pool. A driver here only executes the machines' outputs in
//! order; what a message means is decided in `tessera-coord`, so the simulator and the
//! daemons cannot diverge. The coordinator also publishes what its run looks like
//! ([`view::Snapshot`], with the run before a restart read back from the store) and each
//! trainer or validator what it is doing ([`status::NodeStatus`]) for the HTTP service of
//! `tessera-web`, and every daemon's [`Log`] writes human lines or JSON
//! ([`set_log_format`]).
//!
//! **Invariants.** A coordinator decision is written to the store before it is announced
//! (persist before announce), and a round closes at most once (a database constraint). Blobs
//! are written and fsynced before the row that names them. Every queue, outbox and retry is
//! bounded by a named constant.
//!
//! **Must not.** Parse command lines or draw progress bars (that is `tessera-cli`'s), decide
//! protocol questions itself, trust a byte from a peer or the disk unchecked, or wait on a
//! reader of its published view.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod audit;
pub mod coordinator;
mod fetch;
pub mod ledger_file;
pub mod limits;
pub mod status;
mod store;
pub mod trainer;
mod twin;
mod validator;
pub mod view;

use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tessera_data::{embedded_corpus, ingest_bytes, Dataset, IngestOptions, EMBEDDED_CORPUS_NAME};

pub use store::{History, PastCheck, PastDispute, PastRound, Progress, Store, StoreError, Summary, DB_FILE};

/// How often the daemons look at the clock.
pub const TICK: Duration = Duration::from_millis(100);
/// Frames queued for one peer before new ones are dropped.
pub const MAX_OUTBOX: usize = 256;
/// Tries to fetch one blob.
pub const FETCH_ATTEMPTS: usize = 5;
/// Default dataset directory: the embedded corpus, ingested on first use.
pub const DEFAULT_DATA_DIR: &str = "runs/data/embedded";

/// Why a daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Run(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] tessera_net::NetError),
    #[error(transparent)]
    Wire(#[from] tessera_wire::WireError),
    #[error(transparent)]
    Coord(#[from] tessera_coord::CoordError),
    #[error(transparent)]
    Data(#[from] tessera_data::DataError),
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] tessera_checkpoint::CkptError),
    #[error(transparent)]
    Trainer(#[from] tessera_coord::TrainerError),
}

impl NodeError {
    /// An I/O error, saying what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }
}

/// The daemons' async runtime: two worker threads (the compute runs on its own pool).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, NodeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(NodeError::io("starting the runtime"))
}

/// Opens a dataset directory, building it from the embedded corpus if it has no manifest.
pub fn embedded_dataset(dir: &Path) -> Result<Dataset, NodeError> {
    if !dir.join(tessera_data::MANIFEST_FILE).exists() {
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        ingest_bytes(&embedded_corpus()?, EMBEDDED_CORPUS_NAME, &tmp, &IngestOptions::default())?;
        if std::fs::rename(&tmp, dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp); // another process built it first
        }
    }
    Ok(Dataset::open(dir)?)
}

/// A 32-byte ed25519 secret kept as hex in `path`, created (from the OS's randomness) if
/// missing.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, NodeError> {
    let shown = path.display().to_string();
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(NodeError::io(format!("reading key {shown}")))?;
        let b = tessera_tensor::unhex32(text.trim())
            .ok_or_else(|| NodeError::Run(format!("{shown} does not hold a 64-digit hex key")))?;
        return Ok(SigningKey::from_bytes(&b));
    }
    let key = fresh_key()?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(NodeError::io(format!("creating {}", d.display())))?;
    }
    write_secret(path, tessera_net::hex(&key.to_bytes()).as_bytes())
        .map_err(NodeError::io(format!("writing {shown}")))?;
    Ok(key)
}

/// Writes a secret: readable by its owner only (mode 0600 on Unix) from the moment it exists,
/// and atomically (a temporary file in the same directory, synced, then renamed), so a crash
/// never leaves a half-written key.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp); // a leftover keeps its mode: start afresh
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Counts a new session of the key in `key`: reads `<key>.session` (none yet: 0), writes it
/// back one higher (atomically, as the key) and returns the new number.
fn next_session(key: &Path) -> Result<u64, NodeError> {
    let mut p = key.as_os_str().to_owned();
    p.push(".session");
    let path = std::path::PathBuf::from(p);
    let shown = path.display().to_string();
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| NodeError::Run(format!("{shown} does not hold a session number")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(NodeError::io(format!("reading {shown}"))(e)),
    };
    let next = last.checked_add(1).filter(|n| *n < 1 << (64 - SESSION_BITS));
    let next = next.ok_or_else(|| NodeError::Run(format!("{shown}: the key's sessions are used up")))?;
    write_secret(&path, next.to_string().as_bytes()).map_err(NodeError::io(format!("writing {shown}")))?;
    Ok(next)
}

/// A new identity from the OS's randomness (the daemons may read it).
pub fn fresh_key() -> Result<SigningKey, NodeError> {
    use std::io::Read;
    let mut b = [0u8; 32];
    let io = NodeError::io("reading /dev/urandom");
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(io)?;
    Ok(SigningKey::from_bytes(&b))
}

/// A rayon pool of `threads` threads (0: one per available core).
pub fn pool(threads: usize) -> Result<rayon::ThreadPool, NodeError> {
    let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| NodeError::Run(format!("building the thread pool: {e}")))
}

/// Writes one line to stdout; a closed pipe (`tessera … | head`) ends the process quietly.
pub fn out(line: &str) {
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    if let Err(e) = writeln!(so, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error writing output: {e}");
        std::process::exit(1);
    }
}

/// Bits of a sequence number that count frames within one session (one run of a process);
/// the bits above number the session. 2^32 frames is 99 days at the 500 frames a second a
/// connection may send.
pub const SESSION_BITS: u32 = 32;

/// Outgoing sequence numbers, per session and free of the clock: the key's session counter
/// (kept next to the key file, `<key>.session`) goes up by one at every start, and the
/// session's frames count up from `session << SESSION_BITS`, so a restarted process always
/// continues above what it sent before, however the clock was set. A key kept nowhere is a new
/// identity that no receiver has seen, so it starts at session 1.
pub struct Seq(std::sync::atomic::AtomicU64);

impl Seq {
    pub fn for_key(key: Option<&Path>) -> Result<Self, NodeError> {
        let session = match key {
            Some(k) => next_session(k)?,
            None => 1,
        };
        assert!((1..1 << (64 - SESSION_BITS)).contains(&session), "a session number fits its bits");
        Ok(Self(std::sync::atomic::AtomicU64::new(session << SESSION_BITS)))
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
        match log_format() {
            LogFormat::Human => self.line("INFO", msg),
            LogFormat::Json => {
                tracing::info!(who = %self.who, uptime_s = self.t0.elapsed().as_secs_f64(), "{msg}")
            }
        }
    }

    pub fn warn(&self, msg: &str) {
        match log_format() {
            LogFormat::Human => self.line("WARN", msg),
            LogFormat::Json => {
                tracing::warn!(who = %self.who, uptime_s = self.t0.elapsed().as_secs_f64(), "{msg}")
            }
        }
    }
}

/// How the daemons' logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `   1.23s INFO coordinator: round 3 closed: …`
    #[default]
    Human,
    /// One JSON object per line, through tracing-subscriber: `timestamp`, `level`, `fields`
    /// (`message`, `who`, `uptime_s`) and `target`.
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Sets how every [`Log`] of this process writes (once, at start; later calls are ignored).
/// JSON installs a tracing-subscriber JSON writer on stderr.
pub fn set_log_format(f: LogFormat) {
    if LOG_FORMAT.set(f).is_ok() && f == LogFormat::Json {
        // Our own lines at info; the libraries below (iroh, quinn) only when they warn, unless
        // RUST_LOG says otherwise.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tessera_node=info"));
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .try_init();
    }
}

fn log_format() -> LogFormat {
    LOG_FORMAT.get().copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sequence numbers used to start at the wall clock, so a clock set back made a restarted
    /// node's frames look like replays. Now each start counts a session next to the key.
    #[test]
    fn each_start_of_a_key_numbers_its_frames_above_the_last_without_the_clock() {
        let dir = std::env::temp_dir().join(format!("tessera-seq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("node.key");
        let first = Seq::for_key(Some(&key)).unwrap();
        let (a, b) = (first.next(), first.next());
        assert_eq!((a, b), ((1 << SESSION_BITS) + 1, (1 << SESSION_BITS) + 2));
        let again = Seq::for_key(Some(&key)).unwrap();
        assert_eq!(again.next(), (2 << SESSION_BITS) + 1, "a restart continues above");
        assert_eq!(Seq::for_key(None).unwrap().next(), (1 << SESSION_BITS) + 1);
        std::fs::write(dir.join("node.key.session"), "garbage").unwrap();
        let e = Seq::for_key(Some(&key)).err().expect("a corrupt session file is refused");
        assert!(e.to_string().contains("does not hold a session number"), "{e}");
        std::fs::write(dir.join("node.key.session"), u32::MAX.to_string()).unwrap();
        let e = Seq::for_key(Some(&key)).err().expect("sessions run out");
        assert!(e.to_string().contains("used up"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

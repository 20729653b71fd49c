//! # tessera (the command-line tool)
//!
//! **Role.** The binary edge: parses arguments, reads files, owns the thread pool and the
//! clock, and calls the libraries. `anyhow` errors are allowed only here.
//!
//! **Must not.** Hold training logic of its own: everything reproducible lives in the
//! libraries, so the simulator and the daemons compute the same bits as this tool.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod bench;
mod check_bench;
mod config;
mod coord_bench;
mod crash_bench;
mod dispute_bench;
mod net;
mod plot;
mod sim;
mod tools;
mod train;
mod vopr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tessera_tensor::simd::{force_path, SimdPath};

/// Environment variable that forces a SIMD path (`scalar` or `avx2`); results are identical,
/// only speed differs.
pub const SIMD_ENV: &str = "TESSERA_SIMD";

#[derive(Parser)]
#[command(name = "tessera", version, about = "Verifiable low-communication training across untrusted peers")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// How the daemons (coordinator, node, validator) write their logs to stderr: `human`
    /// lines, or one JSON object per line (tracing-subscriber's JSON format).
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: tessera_node::LogFormat,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a byte-level GPT on one machine; prints `state-hash: <hex>` at the end.
    Train(Box<train::TrainArgs>),
    /// Simulate N peers of an outer algorithm on a virtual network; prints `state-hash:`.
    Sim(Box<sim::SimArgs>),
    /// Generate text from a checkpoint.
    Sample(tools::SampleArgs),
    /// Build datasets.
    #[command(subcommand)]
    Data(tools::DataCmd),
    /// Show a checkpoint's metadata and per-tensor checksums.
    Inspect(tools::InspectArgs),
    /// Run a coordinator and 4 trainers as local processes (DiLoCo + int8) and summarize.
    Demo(net::demo::DemoArgs),
    /// Coordinate a networked run (state in SQLite under --dir; restart resumes it).
    Coordinator(net::CoordinatorArgs),
    /// Train in a networked run: `tessera node --join <ticket>`.
    Node(net::NodeArgs),
    /// Print a run's accounts from its coordinator directory, after checking its ledger
    /// (signatures, chain, rules): stake, rewards, fees, slashes and scores per peer.
    Ledger(net::ledger::LedgerArgs),
    /// Audit a coordinator directory from genesis: the ledger's signatures, chain, payouts and
    /// balances, each round's states and accepted updates, the stored state blobs. Prints
    /// `audit: OK` or the first divergent entry, and exits non-zero on one.
    Audit(net::ledger::LedgerArgs),
    /// The fault simulator: runs seeded whole-protocol runs under network faults, crashes and
    /// cheats, checks every invariant, and prints each failing seed with its reproduction.
    Vopr(vopr::VoprArgs),
    /// Reproducible speed measurements (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

/// Largest allocation glibc serves from its heap instead of a fresh `mmap` (its own maximum).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at the heap's top that glibc keeps instead of returning to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_TRIM_THRESHOLD: libc::c_int = 256 << 20;
/// Extra heap glibc reserves each time it grows the heap (address space; touched only if used).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HEAP_TOP_PAD: libc::c_int = 16 << 20;

/// Keeps freed tensor buffers in the process's heap for the next kernel instead of handing them
/// back to the system after each one. A training step frees and reallocates hundreds of
/// megabytes of activations and gradients; by default every buffer over glibc's adaptive
/// threshold is a fresh `mmap`, compute threads get arenas of their own that glibc trims, and
/// every page handed back is a page fault when it is used again (BENCHMARKS.md §4: for
/// `small`, about 236,000 faults in 8 steps before, about 230 a step after the first). One arena whose freed memory stays in the heap reuses the same pages every
/// step. Results do not change: allocation never touches the arithmetic.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD);
        libc::mallopt(libc::M_TOP_PAD, HEAP_TOP_PAD);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> Result<()> {
    keep_freed_memory();
    let cli = Cli::parse();
    tessera_node::set_log_format(cli.log_format);
    if let Ok(name) = std::env::var(SIMD_ENV) {
        let path = SimdPath::parse(&name).with_context(|| format!("{SIMD_ENV}={name}"))?;
        force_path(Some(path)).with_context(|| format!("{SIMD_ENV}={name}"))?;
    }
    match cli.cmd {
        Cmd::Train(a) => train::run(*a),
        Cmd::Sample(a) => tools::sample(a),
        Cmd::Sim(a) => sim::run(*a),
        Cmd::Data(d) => tools::data(d),
        Cmd::Inspect(a) => tools::inspect(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::Demo(a) => net::demo::run(a),
        Cmd::Coordinator(a) => net::coordinator(a),
        Cmd::Node(a) => net::node(a),
        Cmd::Ledger(a) => net::ledger::run(a),
        Cmd::Audit(a) => net::ledger::audit(a),
        Cmd::Vopr(a) => vopr::run(a),
    }
}

pub use tessera_node::out;

/// A rayon pool of `threads` threads (0: one per available core).
pub fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    Ok(tessera_node::pool(threads)?)
}

//! The networked run's commands: `tessera coordinator`, `tessera node` and `tessera demo`.
//! The arguments live here and become the options of the `tessera-node` services; the demo's
//! orchestration (processes, progress bar, summary) is the command line's own.

pub mod demo;
pub mod ledger;

use std::path::PathBuf;

use clap::Args;
use tessera_node::coordinator::CoordinatorOptions;
use tessera_node::trainer::NodeOptions;
use tessera_node::DEFAULT_DATA_DIR;

/// The endpoint settings both daemons take.
#[derive(Args, Debug, Clone)]
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
        tessera_net::NetConfig {
            bind: self.bind,
            shaping: self.shape,
            internet: self.internet,
            ..Default::default()
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// The run's TOML config (see `RunConfig`; every field has a default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory for the database, blobs, key and ticket (resumed if it holds a run).
    #[arg(long, default_value = "runs/coordinator")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
    /// Dataset whose manifest hash is pinned into the config (built from the embedded corpus
    /// if the directory does not exist); also used by --eval-every.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate the validation loss every N rounds (and at the end) into the `evals` table
    /// (needs --data-dir; 0: never).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    pub eval_batches: u64,
    /// Seconds to wait after the last round for the nodes' final reports.
    #[arg(long, default_value_t = 5)]
    pub linger_s: u64,
    /// Serve the dashboard, the JSON API and /metrics on this address (e.g. 127.0.0.1:8080;
    /// port 0 picks one). Off unless given; give a non-loopback address to expose it.
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
}

/// `tessera coordinator`: starts the HTTP service first when asked (printing its address and
/// writing it to `<dir>/http`), then runs the coordinator.
pub fn coordinator(a: CoordinatorArgs) -> anyhow::Result<()> {
    let web = match a.http {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                eprintln!("warning: the dashboard at {addr} is reachable from other machines (read-only)");
            }
            let web = tessera_web::spawn(addr)?;
            std::fs::create_dir_all(&a.dir)?;
            let tmp = a.dir.join("http.tmp");
            std::fs::write(&tmp, web.url())?;
            std::fs::rename(&tmp, a.dir.join("http"))?;
            crate::out(&format!("dashboard: {}", web.url()));
            Some(web)
        }
        None => None,
    };
    let mut o = a.options();
    o.publish = web.as_ref().map(|w| w.publisher.clone());
    Ok(tessera_node::coordinator::run(o)?)
}

impl CoordinatorArgs {
    pub fn options(self) -> CoordinatorOptions {
        CoordinatorOptions {
            config: self.config,
            dir: self.dir,
            net: self.net.config(),
            data_dir: self.data_dir,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            linger_s: self.linger_s,
            publish: None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The coordinator's ticket, `<hex id>@<ip:port>` (printed by `tessera coordinator`).
    #[arg(long)]
    pub join: String,
    /// Dataset directory (built from the embedded corpus if it does not exist).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Key file (hex ed25519 secret), created if missing; a fresh identity if not given.
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Give up after the coordinator has been unreachable this long.
    #[arg(long, default_value_t = 60)]
    pub reconnect_s: u64,
    /// Emulate a slower machine: sleep this long after every inner step (tests, demos).
    #[arg(long, default_value_t = 0)]
    pub slow_step_ms: u64,
    /// Fault drill: corrupt one parameter before closing this round, so this node reaches a
    /// different state, is flagged by the coordinator and must re-sync from its checkpoint.
    #[arg(long, hide = true)]
    pub fault_round: Option<u64>,
    /// Cheat drill: poison, replay, random, copy, skip-steps, wrong-data, forge or noisy-data
    /// (a trainer's), or lazy-validator or lying-validator (with --validator), to watch the
    /// coordinator catch it.
    #[arg(long, hide = true)]
    pub cheat: Option<tessera_coord::CheatKind>,
    /// Copy drill: an honest node writes each update it commits to this directory after
    /// sending the commit; a `--cheat copy` node waits there for its twin's update of the
    /// round and commits that as its own.
    #[arg(long, hide = true)]
    pub twin_dir: Option<PathBuf>,
    /// Check other trainers' work instead of training: re-run the segments the coordinator
    /// hands out and answer with signed verdicts (the run's `validate = "validators"`).
    #[arg(long)]
    pub validator: bool,
    /// What this node locks to join the run (the run's `min_stake` at least; slashed if it
    /// is proven to cheat).
    #[arg(long, default_value_t = tessera_coord::DEFAULT_STAKE)]
    pub stake: u64,
    /// Keep this node's verified copy of the coordinator's ledger in FILE (resumed on
    /// restart; `tessera audit FILE` replays it). In memory only if not given.
    #[arg(long)]
    pub ledger_copy: Option<PathBuf>,
    /// Also keep the run's config and every accepted update in `FILE.blobs/` beside the
    /// ledger copy, so `tessera audit FILE` recomputes every round from the copy alone (a hub
    /// run's trainer then fetches each accepted update as well as the aggregate).
    #[arg(long, requires = "ledger_copy")]
    pub keep_updates: bool,
    /// Serve this node's status page, its JSON (/api/status) and /metrics on this address
    /// (e.g. 127.0.0.1:8081; port 0 picks one). Off unless given.
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
}

/// `tessera node`: starts its HTTP service first when asked (printing `status: URL`), then
/// runs the trainer or validator.
pub fn node(a: NodeArgs) -> anyhow::Result<()> {
    let publish = match a.http {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                eprintln!(
                    "warning: the node's status at {addr} is reachable from other machines (read-only)"
                );
            }
            let web = tessera_web::spawn_node(addr)?;
            crate::out(&format!("status: {}", web.url()));
            Some(web.publisher)
        }
        None => None,
    };
    let mut o = a.options();
    o.publish = publish;
    Ok(tessera_node::trainer::run(o)?)
}

impl NodeArgs {
    pub fn options(self) -> NodeOptions {
        NodeOptions {
            join: self.join,
            data_dir: self.data_dir,
            key: self.key,
            net: self.net.config(),
            threads: self.threads,
            reconnect_s: self.reconnect_s,
            slow_step_ms: self.slow_step_ms,
            fault_round: self.fault_round,
            cheat: self.cheat,
            twin_dir: self.twin_dir,
            validator: self.validator,
            stake: self.stake,
            ledger_copy: self.ledger_copy,
            keep_updates: self.keep_updates,
            publish: None,
        }
    }
}

//! `tessera node`: a trainer. It joins a coordinator, syncs to the run's state by fetching the
//! checkpoint blob it names, trains the units it is assigned, serves its updates as blobs,
//! closes each round with the aggregate and reports the state hash it computed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use ed25519_dalek::SigningKey;
use iroh::endpoint::Connection;
use tessera_coord::{Hash32, Message, PeerId, RunConfig, SeqWindow, Worker};
use tessera_data::{embedded_corpus, ingest_bytes, Dataset, IngestOptions, EMBEDDED_CORPUS_NAME};
use tessera_net::{hex, parse_ticket, Net, NetError};
use tokio::sync::mpsc;

use super::{fresh_key, load_or_create_key, short, Log, Seq, FETCH_ATTEMPTS};

/// Default dataset directory: the embedded corpus, ingested on first use.
pub const DEFAULT_DATA_DIR: &str = "runs/data/embedded";

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
    pub net: super::NetArgs,
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
}

/// Opens a dataset directory, building it from the embedded corpus if it has no manifest.
pub fn embedded_dataset(dir: &Path) -> Result<Dataset> {
    if !dir.join(tessera_data::MANIFEST_FILE).exists() {
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        ingest_bytes(&embedded_corpus()?, EMBEDDED_CORPUS_NAME, &tmp, &IngestOptions::default())?;
        if std::fs::rename(&tmp, dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp); // another process built it first
        }
    }
    Dataset::open(dir).with_context(|| format!("opening dataset {}", dir.display()))
}

struct Node {
    net: Net,
    key: Arc<SigningKey>,
    seq: Arc<Seq>,
    coord: PeerId,
    ds: Arc<Dataset>,
    pool: Arc<rayon::ThreadPool>,
    worker: Option<Worker>,
    config_text: Option<String>,
    window: SeqWindow,
    progress: Arc<[AtomicU64; 2]>,
    slow_step: Duration,
    fault_round: Option<u64>,
    log: Log,
}

enum End {
    Lost,
    Done,
}

pub fn run(a: NodeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(main_loop(a))
}

async fn main_loop(a: NodeArgs) -> Result<()> {
    let (coord, addr) = parse_ticket(&a.join)?;
    let key = match &a.key {
        Some(p) => load_or_create_key(p)?,
        None => fresh_key()?,
    };
    let ds = Arc::new(embedded_dataset(&a.data_dir)?);
    let net = Net::bind(key.to_bytes(), &a.net.config()).await?;
    let log = Log::new(&format!("node {}", short(&net.id())));
    let mut node = Node {
        net,
        key: Arc::new(key),
        seq: Arc::new(Seq::from_clock()),
        coord,
        ds,
        pool: Arc::new(crate::pool(a.threads)?),
        worker: None,
        config_text: None,
        window: SeqWindow::default(),
        progress: Arc::default(),
        slow_step: Duration::from_millis(a.slow_step_ms),
        fault_round: a.fault_round,
        log,
    };
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let conn = match node.net.connect(coord, addr).await {
            Ok(c) => c,
            Err(e) => {
                let t = *unreachable_since.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_secs(a.reconnect_s) {
                    bail!("coordinator unreachable for {} s: {e}", a.reconnect_s);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        unreachable_since = None;
        node.log.info("connected to the coordinator");
        match node.session(conn).await? {
            End::Done => break,
            End::Lost => node.log.warn("lost the coordinator; reconnecting"),
        }
        unreachable_since.get_or_insert_with(Instant::now);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.net.close().await;
    Ok(())
}

impl Node {
    async fn session(&mut self, conn: Connection) -> Result<End> {
        let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, NetError>>(1024);
        let (net, c2) = (self.net.clone(), conn.clone());
        tokio::spawn(async move { net.serve(c2, move |f| drop(tx.try_send(f))).await });
        self.spawn_heartbeat(conn.clone());
        self.send(&conn, &Message::Join { addrs: vec![] }).await;
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(Ok(b)) => {
                        if self.on_frame(&conn, &b).await? {
                            return Ok(End::Done);
                        }
                    }
                    Some(Err(e)) => self.log.warn(&format!("frame refused: {e}")),
                    None => return Ok(End::Lost),
                },
                _ = conn.closed() => return Ok(End::Lost),
            }
        }
    }

    fn spawn_heartbeat(&self, conn: Connection) {
        let (net, key, seq, progress) =
            (self.net.clone(), self.key.clone(), self.seq.clone(), self.progress.clone());
        let every = self.worker.as_ref().map_or(500, |w| w.config().heartbeat_ms);
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(every));
            loop {
                t.tick().await;
                if conn.close_reason().is_some() {
                    return;
                }
                let m = Message::Heartbeat {
                    round: progress[0].load(Ordering::Relaxed),
                    step: progress[1].load(Ordering::Relaxed),
                };
                if let Ok(f) = tessera_wire::encode(&key, seq.next(), &m) {
                    let _ = net.send_frame(&conn, &f).await;
                }
            }
        });
    }

    async fn send(&self, conn: &Connection, m: &Message) {
        match tessera_wire::encode(&self.key, self.seq.next(), m) {
            Ok(f) => {
                if let Err(e) = self.net.send_frame(conn, &f).await {
                    self.log.warn(&format!("send failed: {e}"));
                }
            }
            Err(e) => self.log.warn(&format!("cannot encode: {e}")),
        }
    }

    /// Handles one frame; true when the run is done.
    async fn on_frame(&mut self, conn: &Connection, bytes: &[u8]) -> Result<bool> {
        let s = match tessera_wire::decode(bytes) {
            Ok(s) => s,
            Err(e) => {
                self.log.warn(&format!("frame refused: {e}"));
                return Ok(false);
            }
        };
        if s.sender != self.coord {
            self.log.warn("frame refused: not signed by the coordinator");
            return Ok(false);
        }
        if let Err(e) = self.window.check(s.seq) {
            self.log.warn(&format!("frame refused: {e}"));
            return Ok(false);
        }
        match s.message {
            Message::Welcome { round, state_hash, config, .. } => {
                self.configure(&config)?;
                self.ensure_state(conn, round, &state_hash).await;
            }
            Message::RoundStart { round, state_hash, assignments, .. } => {
                let me = self.net.id();
                if let Some(a) = assignments.iter().find(|a| a.peer == me).copied() {
                    if self.ensure_state(conn, round, &state_hash).await {
                        self.train(conn, round, state_hash, a).await?;
                    }
                }
            }
            Message::Accept { round, aggregate, next_state_hash, .. } => {
                self.close_round(conn, round, aggregate, next_state_hash).await;
            }
            Message::CheckpointPointer { round, state_hash, .. } => {
                self.ensure_state(conn, round, &state_hash).await;
            }
            Message::Done { round, state_hash } => {
                self.ensure_state(conn, round, &state_hash).await;
                let agrees = self.worker.as_ref().and_then(Worker::state) == Some((round, state_hash));
                self.log.info(&format!("run done after {round} rounds; my state agrees: {agrees}"));
                crate::out(&format!("state-hash: {}", hex(&state_hash)));
                return Ok(true);
            }
            other => self.log.warn(&format!("unexpected message from the coordinator: {other:?}")),
        }
        Ok(false)
    }

    fn configure(&mut self, text: &str) -> Result<()> {
        if let Some(old) = &self.config_text {
            if old != text {
                bail!("the coordinator changed the run's config mid-run");
            }
            return Ok(());
        }
        let cfg = RunConfig::from_toml(text)?;
        let mine = hex(&self.ds.manifest_hash());
        if !cfg.dataset.is_empty() && cfg.dataset != mine {
            bail!("the run trains on dataset {}, this node holds {mine} (--data-dir)", cfg.dataset);
        }
        self.log.info(&format!(
            "run config: {} {} H={} rounds={}",
            cfg.preset, cfg.codec, cfg.inner_steps, cfg.rounds
        ));
        self.worker = Some(Worker::new(cfg)?);
        self.config_text = Some(text.to_string());
        Ok(())
    }

    /// Makes sure the worker holds state `hash` after `round` rounds, fetching the checkpoint
    /// if not. False if it could not.
    async fn ensure_state(&mut self, conn: &Connection, round: u64, hash: &Hash32) -> bool {
        let Some(w) = self.worker.as_mut() else { return false };
        if w.state() == Some((round, *hash)) {
            return true;
        }
        let limit = w.state_len() as u64;
        for _ in 0..FETCH_ATTEMPTS {
            match self.net.fetch_blob(conn, hash, limit).await {
                Ok(b) => match w.load_state(&b, hash) {
                    Ok(()) => {
                        self.log.info(&format!("loaded checkpoint of round {round} ({} bytes)", b.len()));
                        return true;
                    }
                    Err(e) => {
                        self.log.warn(&format!("checkpoint refused: {e}"));
                        return false;
                    }
                },
                Err(e) => self.log.warn(&format!("fetching checkpoint: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    async fn train(
        &mut self,
        conn: &Connection,
        round: u64,
        start: Hash32,
        a: tessera_coord::Assignment,
    ) -> Result<()> {
        let Some(mut w) = self.worker.take() else { return Ok(()) };
        let (ds, pool, progress, slow) =
            (self.ds.clone(), self.pool.clone(), self.progress.clone(), self.slow_step);
        progress[0].store(round, Ordering::Relaxed);
        let t0 = Instant::now();
        let (w, got) = tokio::task::spawn_blocking(move || {
            let got = pool.install(|| {
                let mut on_step = |s| {
                    progress[1].store(s, Ordering::Relaxed);
                    std::thread::sleep(slow);
                };
                w.train(round, &start, &a, &ds, &mut on_step).cloned()
            });
            (w, got)
        })
        .await?;
        self.worker = Some(w);
        let t = match got {
            Ok(t) => t,
            Err(e) => {
                self.log.warn(&format!("training round {round} failed: {e}"));
                return Ok(());
            }
        };
        self.net.blobs().insert(Arc::new(t.update.clone()));
        self.log.info(&format!(
            "round {round}: trained unit ({}, {}) in {:.2}s, loss {:.4}",
            a.data_round,
            a.slot,
            t0.elapsed().as_secs_f64(),
            t.mean_loss
        ));
        let m = t.commit();
        self.send(conn, &m).await;
        Ok(())
    }

    async fn close_round(&mut self, conn: &Connection, round: u64, aggregate: Option<Hash32>, next: Hash32) {
        let Some(w) = self.worker.as_ref() else { return };
        match w.state() {
            Some((r, _)) if r == round => {}
            Some((r, _)) if r > round => return, // already past it
            // Not holding this round's start state: take the new checkpoint.
            _ => return self.adopt(conn, round + 1, next).await,
        }
        let blob = match aggregate {
            None => None,
            Some(h) => {
                let limit = (tessera_sync::HEADER_BYTES + 8 * w.expected().n) as u64;
                match self.net.fetch_blob(conn, &h, limit).await {
                    Ok(b) => Some(b),
                    Err(e) => {
                        self.log.warn(&format!(
                            "fetching the aggregate of round {round}: {e}; taking the checkpoint"
                        ));
                        return self.adopt(conn, round + 1, next).await;
                    }
                }
            }
        };
        let w = self.worker.as_mut().expect("checked above");
        if self.fault_round == Some(round) {
            self.log.warn(&format!("fault drill: corrupting my state before closing round {round}"));
            w.inject_fault();
        }
        match w.apply(round, blob.as_deref()) {
            Ok(mine) => {
                self.report(conn, round + 1, mine, next).await;
                if mine != next {
                    self.ensure_state(conn, round + 1, &next).await;
                }
            }
            Err(e) => self.log.warn(&format!("aggregate of round {round} refused: {e}")),
        }
    }

    /// Takes the coordinator's checkpoint after `round` rounds instead of computing it, and
    /// reports it.
    async fn adopt(&mut self, conn: &Connection, round: u64, state: Hash32) {
        if self.ensure_state(conn, round, &state).await {
            self.report(conn, round, state, state).await;
        }
    }

    async fn report(&self, conn: &Connection, round: u64, mine: Hash32, theirs: Hash32) {
        let agrees = mine == theirs;
        crate::out(&format!("state round={round} hash={} agrees={agrees}", hex(&mine)));
        if !agrees {
            self.log.warn(&format!("my state after round {round} differs from the coordinator's"));
        }
        self.send(conn, &Message::StateReport { round, state_hash: mine }).await;
    }
}

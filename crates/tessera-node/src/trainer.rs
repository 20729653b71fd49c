//! The trainer service (`tessera node`). It drives the [`Trainer`] state machine of
//! `tessera-coord` over a QUIC connection to the coordinator: frames, fetched blobs, finished
//! training and ticks go in; the machine's actions (send, fetch, train, serve, log) are
//! executed in order. It decides nothing itself. Training runs on a blocking thread, so
//! heartbeats and frames keep flowing meanwhile.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use iroh::endpoint::Connection;
use tessera_coord::{
    Action, Assignment, Cheat, CheatKind, CoordError, Drill, GlobalState, Hash32, Loot, Source, Trained,
    Trainer, TrainerConfig, TrainerEvent, Worker,
};
use tessera_data::Dataset;
use tessera_net::{hex, parse_ticket, Net, NetConfig, NetError};
use tokio::sync::mpsc;

use crate::status::{Board, NodePhase};
use crate::{embedded_dataset, fresh_key, load_or_create_key, out, short, Log, NodeError, Seq, TICK};

/// Fetch and training results queued for the event loop.
const MAX_NODE_INPUTS: usize = 64;

type Res<T> = std::result::Result<T, NodeError>;

/// How to run a trainer.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The coordinator's ticket, `<hex id>@<ip:port>`.
    pub join: String,
    /// Dataset directory (built from the embedded corpus if it does not exist).
    pub data_dir: PathBuf,
    /// Key file (hex ed25519 secret), created if missing; a fresh identity if not given.
    pub key: Option<PathBuf>,
    pub net: NetConfig,
    /// Compute threads (0: one per core).
    pub threads: usize,
    /// Give up after the coordinator has been unreachable this long.
    pub reconnect_s: u64,
    /// Emulate a slower machine: sleep this long after every inner step.
    pub slow_step_ms: u64,
    /// Fault drill: corrupt one parameter before closing this round.
    pub fault_round: Option<u64>,
    /// Cheat drill: what to send instead of honest updates (or, a validator, how to lie).
    pub cheat: Option<CheatKind>,
    /// Copy drill: where an honest node leaves its committed updates and a `copy` cheat takes
    /// its twin's from (see [`crate::twin`]).
    pub twin_dir: Option<PathBuf>,
    /// Check trainers' work instead of training (`tessera node --validator`).
    pub validator: bool,
    /// What this node locks to join (the run's `min_stake` at least).
    pub stake: u64,
    /// Where this node keeps its verified copy of the coordinator's ledger (resumed from
    /// on restart; `None`: in memory only).
    pub ledger_copy: Option<PathBuf>,
    /// Keep the run's config and every accepted update beside the ledger copy (in
    /// `<FILE>.blobs/`), so `tessera audit FILE` recomputes every round; needs `ledger_copy`.
    pub keep_updates: bool,
    /// Where to publish this node's status (`tessera node --http`; `None`: not kept).
    pub publish: Option<crate::status::StatusPublisher>,
}

/// What comes back to the event loop from tasks it started.
enum Input {
    Fetched(Hash32, Result<Vec<u8>, String>),
    /// The worker back, the round, the result, and the seconds spent training.
    Trained(Box<Worker>, u64, Box<Result<Trained, CoordError>>, f64),
}

type TrainJob = (Arc<GlobalState>, Hash32, Assignment);

struct Node {
    net: Net,
    key: SigningKey,
    /// The ledger copy on disk, if kept, and the directory its blobs are kept in.
    kept: Option<crate::ledger_file::LedgerFile>,
    blobs: Option<PathBuf>,
    seq: Seq,
    ds: Arc<Dataset>,
    pool: Arc<rayon::ThreadPool>,
    t: Trainer,
    fetcher: crate::fetch::Fetcher,
    /// Absent before the run is configured and while it is training.
    worker: Option<Worker>,
    /// A unit asked for while the worker was busy (the latest one wins).
    queued: Option<TrainJob>,
    /// Seconds the last unit took to train (for the log).
    last_train_s: f64,
    /// Seconds spent training (on the blocking thread), and the span from the first training
    /// to the end of the run: the utilisation figure.
    busy_s: f64,
    first_train: Option<Instant>,
    run_s: f64,
    step: Arc<AtomicU64>,
    slow_step: Duration,
    /// Cheat drill, once the run's config is known; and this node's last update.
    cheat_kind: Option<CheatKind>,
    cheat: Option<Arc<Cheat>>,
    last_update: Option<(u64, Arc<Vec<u8>>)>,
    /// The copy drill's twin directory.
    twin_dir: Option<PathBuf>,
    inputs: mpsc::Sender<Input>,
    started: Instant,
    log: Log,
    board: Board,
}

/// Opens the node's ledger copy at `path` (if it keeps one) and has its machine resume from
/// the records kept there (`resume`, which verifies them again).
pub(crate) fn open_copy(
    path: Option<&std::path::Path>,
    coord: &tessera_coord::PeerId,
    log: &Log,
    resume: impl FnOnce(&[tessera_ledger::Record]) -> Result<(), tessera_coord::TrainerError>,
) -> Res<Option<crate::ledger_file::LedgerFile>> {
    let Some(p) = path else { return Ok(None) };
    let (f, records) = crate::ledger_file::LedgerFile::open(p, coord)?;
    resume(&records)?;
    log.info(&format!("ledger copy {}: resumed {} verified records", p.display(), records.len()));
    Ok(Some(f))
}

/// Serves this trainer's blobs (its updates and the states it holds) to the other members.
/// Control frames from them mean nothing and are dropped.
pub(crate) async fn serve_peers(net: Net) {
    let mut incoming = net.incoming();
    while let Some(conn) = incoming.next().await {
        let n = net.clone();
        tokio::spawn(async move { n.serve(conn, |_| {}).await });
    }
}

/// The coordinator's frames on `conn`, as they arrive.
pub(crate) fn frames_of(net: &Net, conn: &Connection) -> mpsc::Receiver<Result<Vec<u8>, NetError>> {
    let (tx, frames) = mpsc::channel::<Result<Vec<u8>, NetError>>(1024);
    let (net, c2) = (net.clone(), conn.clone());
    tokio::spawn(async move { net.serve(c2, move |f| drop(tx.try_send(f))).await });
    frames
}

/// A received frame, decoded and verified: `None` when the connection ended, `Some(None)` for
/// a frame refused (and logged).
pub(crate) fn verified(
    log: &Log,
    f: Option<Result<Vec<u8>, NetError>>,
) -> Option<Option<tessera_coord::Signed>> {
    let refused = |e: &dyn std::fmt::Display| {
        log.warn(&format!("frame refused: {e}"));
        Some(None)
    };
    match f? {
        Ok(b) => match tessera_wire::decode(&b) {
            Ok(s) => Some(Some(s)),
            Err(e) => refused(&e),
        },
        Err(e) => refused(&e),
    }
}

pub(crate) enum End {
    Lost,
    Done,
}

/// Runs a trainer (or, with `validator`, a validator) until the run is done or the
/// coordinator stays unreachable.
pub fn run(a: NodeOptions) -> Res<()> {
    if a.keep_updates && a.ledger_copy.is_none() {
        return Err(NodeError::Run(
            "--keep-updates keeps blobs beside the ledger copy: add --ledger-copy FILE".into(),
        ));
    }
    if a.validator && a.keep_updates {
        return Err(NodeError::Run(
            "--keep-updates is for trainers: a validator keeps its ledger copy without the updates".into(),
        ));
    }
    match a.validator {
        true => crate::runtime()?.block_on(crate::validator::main_loop(a)),
        false => crate::runtime()?.block_on(main_loop(a)),
    }
}

/// Longest one attempt to reach the coordinator may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest wait between attempts (doubling in between).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Dials the coordinator until it answers, saying so, with a doubling wait between attempts,
/// and gives up with a clear error once it has been unreachable for `limit_s` seconds
/// (counted from `since`, kept across reconnections).
pub(crate) async fn connect(
    net: &Net,
    (coord, addr): (tessera_coord::PeerId, Option<std::net::SocketAddr>),
    limit_s: u64,
    since: &mut Option<Instant>,
    (log, board): (&Log, &mut Board),
) -> Res<Connection> {
    let at = addr.map_or("its relay".to_string(), |a| a.to_string());
    let mut wait = FIRST_BACKOFF;
    for attempt in 1u32.. {
        board.set_phase(NodePhase::Dialling { attempt }, log);
        if attempt == 1 {
            log.info(&format!("dialling the coordinator {} at {at}", short(&coord)));
        }
        let e = match tokio::time::timeout(DIAL_TIMEOUT, net.connect(coord, addr)).await {
            Ok(Ok(c)) => {
                *since = None;
                board.update(|s| s.connections += 1);
                return Ok(c);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", DIAL_TIMEOUT.as_secs()),
        };
        let t = *since.get_or_insert_with(Instant::now);
        if t.elapsed() > Duration::from_secs(limit_s) {
            return Err(NodeError::Run(format!(
                "the coordinator at {at} has been unreachable for {limit_s} s ({attempt} attempts; last: {e}); \
                 check the ticket, or raise --reconnect-s"
            )));
        }
        log.warn(&format!(
            "coordinator not reachable (attempt {attempt}: {e}); retrying in {} ms",
            wait.as_millis()
        ));
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
    unreachable!("the attempts are counted in u32")
}

async fn main_loop(a: NodeOptions) -> Res<()> {
    let (coord, addr) = parse_ticket(&a.join)?;
    if a.cheat == Some(CheatKind::Copy) && a.twin_dir.is_none() {
        return Err(NodeError::Run(
            "--cheat copy needs --twin-dir (where its twin leaves its updates)".into(),
        ));
    }
    let key = match &a.key {
        Some(p) => load_or_create_key(p)?,
        None => fresh_key()?,
    };
    let ds = Arc::new(embedded_dataset(&a.data_dir)?);
    let net = Net::bind(key.to_bytes(), &a.net).await?;
    let log = Log::new(&format!("node {}", short(&net.id())));
    let tc = TrainerConfig {
        stake: a.stake,
        me: net.id(),
        coordinator: coord,
        dataset: ds.manifest_hash(),
        fault_round: a.fault_round,
        addr: Some(net.local_addr()?.to_string()),
        key: Some(key.clone()),
        keep_blobs: a.keep_updates,
    };
    let board = Board::new(a.publish.clone(), &net.id(), &coord, "trainer");
    let mut t = Trainer::new(tc);
    let kept = open_copy(a.ledger_copy.as_deref(), &coord, &log, |r| t.resume_ledger(r))?;
    tokio::spawn(serve_peers(net.clone()));
    let (tx, mut inputs) = mpsc::channel(MAX_NODE_INPUTS);
    let mut node = Node {
        fetcher: crate::fetch::Fetcher::new(net.clone(), coord),
        net,
        key,
        kept,
        blobs: a.keep_updates.then(|| a.ledger_copy.as_deref().map(crate::ledger_file::blobs_dir)).flatten(),
        seq: Seq::for_key(a.key.as_deref())?,
        ds,
        pool: Arc::new(crate::pool(a.threads)?),
        t,

        worker: None,
        queued: None,
        last_train_s: 0.0,
        busy_s: 0.0,
        first_train: None,
        run_s: 0.0,
        step: Arc::default(),
        slow_step: Duration::from_millis(a.slow_step_ms),
        cheat_kind: a.cheat,
        cheat: None,
        last_update: None,
        twin_dir: a.twin_dir.clone(),
        inputs: tx,
        started: Instant::now(),
        log,
        board,
    };
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let at = (coord, addr);
        let conn =
            connect(&node.net, at, a.reconnect_s, &mut unreachable_since, (&node.log, &mut node.board))
                .await?;
        node.log.info("connected to the coordinator");
        match node.session(conn, &mut inputs).await? {
            End::Done => break,
            End::Lost => node.log.warn("lost the coordinator; reconnecting"),
        }
        unreachable_since.get_or_insert_with(Instant::now);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.refresh();
    node.board.publish_now();
    let (sent, recv) = node.net.traffic();
    node.log.info(&format!("traffic: {sent} bytes sent, {recv} received"));
    out(&format!("compute train_s={:.3} run_s={:.3}", node.busy_s, node.run_s));
    let (peers, coordinator) = node.fetcher.fetched();
    out(&format!(
        "traffic sent={sent} received={recv} blob_bytes_from_peers={peers} from_coordinator={coordinator}"
    ));
    node.net.close().await;
    Ok(())
}

impl Node {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn session(&mut self, conn: Connection, inputs: &mut mpsc::Receiver<Input>) -> Res<End> {
        let mut frames = frames_of(&self.net, &conn);
        let acts = self.t.connected(self.now_ms());
        if self.execute(&conn, acts).await? {
            return Ok(End::Done);
        }
        self.refresh();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            let now = self.now_ms();
            let acts = tokio::select! {
                f = frames.recv() => match verified(&self.log, f) {
                    Some(Some(s)) => self.t.handle(now, s),
                    Some(None) => continue,
                    None => return Ok(End::Lost),
                },
                Some(i) = inputs.recv() => self.on_input(now, i),
                _ = ticker.tick() => self.t.tick(now, self.step.load(Ordering::Relaxed)),
                _ = conn.closed() => return Ok(End::Lost),
            };
            if self.execute(&conn, acts).await? {
                return Ok(End::Done);
            }
            self.refresh();
        }
    }

    /// Brings the status up to date with the machine, the transport and the ledger copy.
    fn refresh(&mut self) {
        let (sent, recv) = self.net.traffic();
        let busy = self.busy_s;
        self.board.held(self.t.state(), self.t.ledger(), &self.net.id());
        self.board.update(|s| {
            s.bytes_sent = sent;
            s.bytes_received = recv;
            s.compute_s = busy;
        });
        self.board.set_phase(NodePhase::Member(self.t.phase()), &self.log);
    }

    fn on_input(&mut self, now: u64, i: Input) -> Vec<Action> {
        match i {
            Input::Fetched(hash, got) => self.t.fetched(now, hash, got),
            Input::Trained(w, round, got, took) => {
                self.worker = Some(*w);
                self.busy_s += took;
                self.last_train_s = took;
                if let Ok(t) = got.as_ref() {
                    self.last_update = Some((t.round, t.update.clone()));
                }
                let mut acts = self.t.trained(now, round, *got);
                if let Some(job) = self.queued.take() {
                    acts.push(Action::Train { state: job.0, state_hash: job.1, unit: job.2 });
                }
                acts
            }
        }
    }

    /// Executes the machine's actions in order; true when the run is over for this node.
    async fn execute(&mut self, conn: &Connection, acts: Vec<Action>) -> Res<bool> {
        let mut done = false;
        let mut acts: std::collections::VecDeque<Action> = acts.into();
        while let Some(a) = acts.pop_front() {
            match a {
                Action::Send(m) => {
                    self.send(conn, &m).await;
                    self.leave_for_twin(&m);
                }
                Action::Fetch { sources, hash, len, split } => {
                    self.spawn_fetch(conn, sources, hash, len, split)
                }
                Action::Train { state, state_hash, unit } => self.spawn_train((state, state_hash, unit)),
                Action::Serve { bytes, .. } => {
                    self.net.blobs().insert(bytes);
                }
                Action::KeepLedger(records) => {
                    if let Some(f) = self.kept.as_mut() {
                        f.append(&records)?;
                    }
                }
                Action::KeepBlob { hash, bytes } => {
                    if let Some(dir) = &self.blobs {
                        crate::ledger_file::keep_blob(dir, &hash, &bytes)?;
                    }
                }
                Action::KeepRound(k) => {
                    if let Some(dir) = &self.blobs {
                        crate::ledger_file::keep_round(dir, &k)?;
                    }
                }
                Action::Reveal { round, segment } => {
                    // From the states kept in memory: quick, so done on the loop.
                    let got = match &self.worker {
                        Some(w) => w.reveal_committed(round, segment, &self.ds),
                        None => Err(tessera_coord::CoordError::NotSynced("the worker is training".into())),
                    };
                    let more = self.t.revealed(self.now_ms(), round, got);
                    acts.extend(more);
                }
                Action::Answer { round, question } => {
                    // A dispute's question: the first re-runs the segment (k steps), the
                    // operator questions trace one step; short enough for the loop.
                    let got = match self.worker.as_mut() {
                        Some(w) => w.answer(round, &question, &self.ds),
                        None => Err(tessera_coord::CoordError::NotSynced("the worker is training".into())),
                    };
                    let more = self.t.answered(self.now_ms(), round, got);
                    acts.extend(more);
                }
                Action::Event(e) => done |= self.on_event(e)?,
            }
        }
        Ok(done)
    }

    /// The copy drill: an honest node with a twin directory leaves its update there once its
    /// `Commit` is sent.
    fn leave_for_twin(&self, m: &tessera_coord::Message) {
        let (Some(dir), None, tessera_coord::Message::Commit { round, .. }) =
            (&self.twin_dir, self.cheat_kind, m)
        else {
            return;
        };
        if let Some((_, u)) = self.last_update.as_ref().filter(|l| l.0 == *round) {
            if let Err(e) = crate::twin::leave(dir, *round, u) {
                self.log.warn(&format!("cannot leave the update for the twin: {e}"));
            }
        }
    }

    async fn send(&self, conn: &Connection, m: &tessera_coord::Message) {
        match tessera_wire::encode(&self.key, self.seq.next(), m) {
            Ok(f) => {
                if let Err(e) = self.net.send_frame(conn, &f).await {
                    self.log.warn(&format!("send failed: {e}"));
                }
            }
            Err(e) => self.log.warn(&format!("cannot encode: {e}")),
        }
    }

    fn spawn_fetch(&self, conn: &Connection, sources: Vec<Source>, hash: Hash32, len: u64, split: bool) {
        let (f, conn, tx) = (self.fetcher.clone(), conn.clone(), self.inputs.clone());
        tokio::spawn(async move {
            let got = match split {
                true => f.split(&conn, &sources, &hash, len).await,
                false => f.whole(&conn, &sources, &hash, len).await,
            };
            let _ = tx.send(Input::Fetched(hash, got)).await;
        });
    }

    fn spawn_train(&mut self, job: TrainJob) {
        let Some(mut w) = self.worker.take() else {
            self.queued = Some(job); // the worker is busy; train this when it is back
            return;
        };
        let (ds, pool, step, slow, tx) =
            (self.ds.clone(), self.pool.clone(), self.step.clone(), self.slow_step, self.inputs.clone());
        let (cheat, last, twin) = (self.cheat.clone(), self.last_update.clone(), self.twin_dir.clone());
        self.first_train.get_or_insert_with(Instant::now);
        step.store(0, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let (state, hash, unit) = job;
            let t0 = Instant::now();
            let got = pool.install(|| {
                let mut on_step = |s| {
                    step.store(s, Ordering::Relaxed);
                    std::thread::sleep(slow);
                };
                let honest = w.train(&state, &hash, &unit, &ds, &mut on_step);
                match (cheat, honest) {
                    (Some(c), Ok(t)) => {
                        let earlier = last.as_ref().filter(|l| l.0 < state.round).map(|l| l.1.as_slice());
                        let copied = match (&*c, &twin) {
                            (Cheat::Copy { .. }, Some(dir)) => {
                                crate::twin::take(dir, state.round, t.update.len() as u64)
                            }
                            _ => None,
                        };
                        let got = c.apply(w.spec(), &state, t, Loot { copy: copied.as_deref(), earlier });
                        if let Ok(t) = &got {
                            w.committed_instead(t); // it answers challenges for what it sent
                        }
                        got
                    }
                    (_, got) => got,
                }
            });
            let took = t0.elapsed().as_secs_f64();
            let _ = tx.blocking_send(Input::Trained(Box::new(w), state.round, Box::new(got), took));
        });
    }

    /// Logs an event; true when the run is over.
    fn on_event(&mut self, e: TrainerEvent) -> Res<bool> {
        match e {
            TrainerEvent::Configured(spec) => {
                let c = &spec.cfg;
                let simd = tessera_tensor::simd::active_path().name();
                let threads = self.pool.current_num_threads();
                let msg = format!(
                    "run config: {} {} {} H={} rounds={}; computing on {simd} with {threads} threads",
                    c.preset,
                    c.algo,
                    c.codec,
                    c.h(),
                    c.rounds
                );
                self.log.info(&msg);
                let mut w = Worker::new(spec.clone());
                if let Some(k) = self.cheat_kind {
                    self.log.warn(&format!("DRILL: this node cheats ({k:?}) instead of training honestly"));
                    match k.for_run(&spec) {
                        Drill::Send(c) => self.cheat = Some(Arc::new(c)),
                        Drill::Train(s) => w.shirk(s),
                        Drill::Validate(_) => {
                            let e = format!("--cheat {k:?} is a validator's cheat: add --validator");
                            return Err(NodeError::Run(e));
                        }
                    }
                }
                self.worker = Some(w);
            }
            TrainerEvent::Loaded { round, bytes } => {
                self.log.info(&format!("loaded checkpoint of round {round} ({bytes} bytes)"))
            }
            TrainerEvent::Committed { round, unit, loss } => {
                self.board.update(|s| {
                    s.commits += 1;
                    s.round = Some(round);
                });
                let took = self.last_train_s;
                self.log.info(&format!(
                    "round {round}: trained unit ({}, {}) in {took:.2}s, loss {loss:.4}",
                    unit.0, unit.1
                ));
            }
            TrainerEvent::Reported { round, state_hash, agrees, computed } => {
                self.board.update(|s| {
                    s.reports += 1;
                    s.disagreements += u64::from(!agrees);
                    s.agrees = Some(agrees);
                    s.round = Some(s.round.map_or(round, |r| r.max(round)));
                });
                out(&format!(
                    "state round={round} hash={} agrees={agrees} computed={computed}",
                    hex(&state_hash)
                ));
                if !agrees {
                    self.log.warn(&format!("my state after round {round} differs from the coordinator's"));
                }
            }
            TrainerEvent::Revealed { round, segment } => {
                self.log.info(&format!("round {round}: spot-checked; revealed segment {segment}"))
            }
            TrainerEvent::FaultInjected { round } => {
                self.log.warn(&format!("fault drill: corrupting my state before closing round {round}"))
            }
            TrainerEvent::Warning(e) => {
                self.board.update(|s| s.warnings += 1);
                self.log.warn(&e.to_string())
            }
            TrainerEvent::Fatal(e) => return Err(NodeError::Trainer(e)),
            TrainerEvent::Finished { round, state_hash, computed } => {
                self.run_s = self.first_train.map_or(0.0, |t| t.elapsed().as_secs_f64());
                self.log.info(&format!(
                    "run done after {round} rounds; my final state computed here: {computed}"
                ));
                out(&format!("state-hash: {}", hex(&state_hash)));
                return Ok(true);
            }
        }
        Ok(false)
    }
}

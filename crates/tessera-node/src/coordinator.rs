//! The coordinator service (`tessera coordinator`): the round state machine of
//! `tessera-coord` behind a QUIC endpoint, with its decisions in the [`Store`]. Restarting it
//! with the same directory resumes the run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use iroh::endpoint::Connection;
use tessera_coord::{Coordinator, Event, Hash32, Output, PeerId, Record, RunConfig, RunSpec};
use tessera_net::{hex, peer_id, Net, NetConfig};
use tokio::sync::mpsc;

use crate::{load_or_create_key, out, short, Log, NodeError, Seq, Store, FETCH_ATTEMPTS, MAX_OUTBOX, TICK};

/// How to run a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// The run's TOML config (every field has a default).
    pub config: Option<PathBuf>,
    /// Directory for the database, blobs, key and ticket (resumed if it holds a run).
    pub dir: PathBuf,
    pub net: NetConfig,
    /// Dataset whose manifest hash is pinned into the config; also used for evaluations.
    pub data_dir: Option<PathBuf>,
    /// Evaluate the validation loss every N rounds (and at the end); 0: never.
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: u64,
    /// Seconds to wait after the last round for the nodes' final reports.
    pub linger_s: u64,
    /// Where to publish what the run looks like ([`crate::view::Snapshot`]), every
    /// [`crate::view::PUBLISH_EVERY`] while it changes: what `--http` serves.
    pub publish: Option<Publisher>,
}

/// The sending end of the coordinator's published view (`tessera-web` holds the other).
pub type Publisher = Arc<tokio::sync::watch::Sender<Option<Arc<crate::view::Snapshot>>>>;

type Res<T> = std::result::Result<T, NodeError>;

/// Inputs queued for the state machine before new frames are dropped (and logged).
const MAX_INPUTS: usize = 4096;
/// How long a connection may stay without joining before it is closed.
const STRANGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections that have not joined kept open at once (the oldest go first).
const MAX_STRANGERS: usize = 1024;

enum Input {
    /// A frame that verified, its sender being the connection's peer, and the count of that
    /// connection's frames in the queue (to give back when it is taken out).
    Frame(PeerId, Box<tessera_wire::Signed>, Arc<std::sync::atomic::AtomicUsize>),
    Fetched(PeerId, Hash32, Result<Vec<u8>, String>),
    /// A new connection, with the gate of the blobs it may fetch (opened once it is a member).
    Connected(PeerId, Connection, Arc<tessera_net::BlobGate>),
    /// A validation loss computed off the loop: the round, when its state was reached, the loss.
    Evaluated(u64, u64, Result<f64, String>),
    /// An update scored off the loop: the round, the trainer, the score, the seconds it took.
    Scored(u64, PeerId, Result<tessera_coord::Score, tessera_coord::CoordError>, f64),
    /// A spot check run off the loop: the round, the trainer, the outcome, the seconds it took.
    Checked(u64, PeerId, Result<tessera_coord::Outcome, tessera_coord::CoordError>, f64),
    /// A disputed step the referee recomputed off the loop: the round, the trainer, the
    /// state reached (or why the trainer's blob was not the agreed state), the seconds.
    Recomputed(u64, PeerId, Result<Result<Hash32, String>, tessera_coord::CoordError>, f64),
}

struct Daemon {
    coord: Coordinator,
    store: Store,
    net: Net,
    key: SigningKey,
    seq: Seq,
    outboxes: HashMap<PeerId, mpsc::Sender<Vec<u8>>>,
    conns: Arc<Mutex<HashMap<PeerId, Connection>>>,
    /// Each connection's blob gate: open while its peer is a member or a validator.
    gates: HashMap<PeerId, Arc<tessera_net::BlobGate>>,
    /// Connections that have not joined yet, and since when (forgotten after
    /// [`STRANGER_TIMEOUT`]).
    strangers: HashMap<PeerId, Instant>,
    tx: mpsc::Sender<Input>,
    started: Instant,
    log: Log,
    eval: Option<(Arc<tessera_data::Dataset>, u64, u64)>,
    /// The dataset spot checks re-run the trainers' steps on (from `--data-dir`).
    data: Option<Arc<tessera_data::Dataset>>,
    /// Seconds spent running spot checks and scoring updates (recorded with the traffic).
    check_s: f64,
    score_s: f64,
    evaluated: u64,
    /// Evaluations running on blocking threads; the daemon exits only once they are recorded.
    evals_pending: usize,
    dash: crate::view::Dash,
    publish: Option<Publisher>,
    published_at: Instant,
}

/// Runs a coordinator until its run is finished and the nodes' final reports are in.
pub fn run(a: CoordinatorOptions) -> Res<()> {
    crate::runtime()?.block_on(serve(a))
}

/// Reads a run config file (size-bounded by [`RunConfig::from_toml`]).
pub fn read_config(p: &Path) -> Res<RunConfig> {
    let text = std::fs::read_to_string(p).map_err(NodeError::io(format!("reading {}", p.display())))?;
    Ok(RunConfig::from_toml(&text)?)
}

fn load_config(a: &CoordinatorOptions, store: &Store) -> Res<RunConfig> {
    let mut cfg = match &a.config {
        Some(p) => read_config(p)?,
        None => RunConfig::default(),
    };
    if let (Some(dir), true) = (&a.data_dir, cfg.dataset.is_empty()) {
        cfg.dataset = hex(&crate::embedded_dataset(dir)?.manifest_hash());
    }
    let text = cfg.to_toml();
    match store.meta("config")? {
        Some(old) if old != text.as_bytes() => {
            let dir = a.dir.display();
            return Err(NodeError::Run(format!(
                "{dir} holds a run with another config; use a new --dir to start a new run"
            )));
        }
        Some(_) => {}
        None => store.set_meta("config", text.as_bytes())?,
    }
    Ok(cfg)
}

async fn serve(a: CoordinatorOptions) -> Res<()> {
    let log = Log::new("coordinator");
    let mut store = Store::open(&a.dir)?;
    let spec = Arc::new(RunSpec::new(load_config(&a, &store)?)?);
    let key = load_or_create_key(&a.dir.join("coordinator.key"))?;
    // Which commits are spot-checked is drawn from a secret the trainers cannot know.
    let secret = blake3::derive_key("tessera coordinator check secret v1", &key.to_bytes());
    let coord = match store.restore(&spec)? {
        Some(r) => {
            log.info(&format!("resuming at round {} ({} rounds closed)", r.state.round, r.history.len() - 1));
            Coordinator::restore(spec.clone(), r, 0, secret)?
        }
        None => {
            let initial = spec.initial_state();
            let h = initial.hash();
            store.put_blob(&h, &initial.encode())?;
            store.set_meta("initial_state", &h)?;
            Coordinator::new(spec.clone(), secret)?
        }
    };
    let mut coord = coord;
    store.set_meta("coordinator", &key.verifying_key().to_bytes())?;
    let genesis = coord.keep_ledger(key.clone(), &store.ledger()?)?;
    for o in genesis {
        if let Output::Persist(rec) = o {
            store.persist(&rec)?;
        }
    }
    // Only members and validators send to a coordinator, and none of their messages is long.
    let net_cfg = tessera_net::NetConfig { max_frame: tessera_wire::MAX_PEER_FRAME, ..a.net.clone() };
    let net = Net::bind(key.to_bytes(), &net_cfg).await?;
    if let Ok(b) = store.blob(&coord.state_hash()) {
        net.blobs().insert(Arc::new(b));
    }
    let ticket = net.ticket()?;
    let tmp = a.dir.join("ticket.tmp");
    std::fs::write(&tmp, &ticket)
        .and_then(|()| std::fs::rename(&tmp, a.dir.join("ticket")))
        .map_err(NodeError::io("writing the ticket"))?;
    log.info(&format!("listening; join with: tessera node --join {ticket}"));
    out(&format!("ticket: {ticket}"));
    let (tx, mut rx) = mpsc::channel::<Input>(MAX_INPUTS);
    let mut dash = crate::view::Dash::new(&coord, &store.ledger()?);
    dash.restore(&store.history()?, |h| store.blob_len(h));
    let mut d = Daemon {
        coord,
        store,
        net: net.clone(),
        key,
        seq: Seq::for_key(Some(&a.dir.join("coordinator.key")))?,
        outboxes: HashMap::new(),
        conns: Arc::default(),
        gates: HashMap::new(),
        strangers: HashMap::new(),
        tx: tx.clone(),
        started: Instant::now(),
        log,
        eval: None,
        check_s: 0.0,
        score_s: 0.0,
        data: a.data_dir.as_deref().map(tessera_data::Dataset::open).transpose()?.map(Arc::new),
        evaluated: u64::MAX,
        evals_pending: 0,
        dash,
        publish: a.publish.clone(),
        published_at: Instant::now(),
    };
    if let (Some(ds), n @ 1..) = (&d.data, a.eval_every) {
        d.eval = Some((ds.clone(), n, a.eval_batches));
    }
    d.maybe_eval()?;
    tokio::spawn(accept_loop(net.clone(), tx.clone(), d.log.clone()));
    let mut ticker = tokio::time::interval(TICK);
    let mut finished_at: Option<Instant> = None;
    loop {
        tokio::select! {
            Some(input) = rx.recv() => d.on_input(input)?,
            _ = ticker.tick() => {
                let outs = d.coord.tick(d.now_ms());
                d.open_gates(None); // members evicted by silence, peers banned
                d.execute(outs)?;
                d.forget_strangers();
            }
        }
        d.maybe_eval()?;
        d.publish(false);
        if d.coord.is_finished() {
            let t = *finished_at.get_or_insert_with(Instant::now);
            let reported = d.coord.all_reported() || t.elapsed() > Duration::from_secs(a.linger_s);
            if reported && d.evals_pending == 0 {
                break;
            }
        }
    }
    d.record_traffic()?;
    d.publish(true);
    if d.coord.is_finished() {
        let path = export_model(&d.coord, &a.dir.join("model"))?;
        d.log.info(&format!("final model written to {} (tessera sample --checkpoint …)", path.display()));
    }
    d.log.info(&format!("done: {} rounds, state {}", d.coord.round(), hex(&d.coord.state_hash())));
    out(&format!("state-hash: {}", hex(&d.coord.state_hash())));
    tokio::time::sleep(Duration::from_millis(300)).await; // let the last frames drain
    net.close().await;
    Ok(())
}

/// Writes the final shared model as a standard checkpoint (safetensors + meta.json), so
/// `tessera sample` and Python can read it. DDP's AdamW moments go along; DiLoCo's trainers'
/// inner moments are their own, so its checkpoint carries zero moments.
fn export_model(coord: &Coordinator, dir: &Path) -> Res<PathBuf> {
    use tessera_model::OptState;
    let (spec, cfg) = (coord.spec(), coord.config());
    let state = coord.global();
    let params = spec.params(&state.theta)?;
    let mut opt = OptState::new(&params);
    if let [m, v] = &state.buffers[..] {
        opt.m.load_flat(m)?;
        opt.v.load_flat(v)?;
    }
    opt.step = state.round * cfg.h();
    let shape = tessera_checkpoint::ModelShape::gpt(&cfg.preset, &spec.gpt);
    let dataset = (!cfg.dataset.is_empty()).then(|| cfg.dataset.clone());
    let info = (&shape, dataset, cfg.to_toml());
    let path = tessera_checkpoint::save(dir, &params, &opt, (info.0, info.1, &info.2), &Default::default())?;
    Ok(path)
}

async fn accept_loop(net: Net, tx: mpsc::Sender<Input>, log: Log) {
    let mut incoming = net.incoming();
    while let Some(conn) = incoming.next().await {
        let peer = peer_id(&conn);
        let gate = tessera_net::BlobGate::closed();
        if tx.send(Input::Connected(peer, conn.clone(), gate.clone())).await.is_err() {
            return;
        }
        let (net, tx, log) = (net.clone(), tx.clone(), log.clone());
        let refused = std::sync::atomic::AtomicU64::new(0);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bucket = Mutex::new(crate::limits::RateLimit::new(
            crate::limits::FRAMES_PER_S,
            crate::limits::FRAME_BURST,
        ));
        let since = Instant::now();
        tokio::spawn(async move {
            // Frames are checked here, on the connection's own task: past its rate a frame is
            // dropped unread; a frame naming another sender is dropped before its signature is
            // checked; one that does not verify never reaches the protocol's queue; and a
            // connection holds at most its share of that queue. So a flood costs only its own
            // connection's time and crowds out no honest frame.
            net.serve_gated(
                conn,
                move |f| {
                    let now_ms = since.elapsed().as_millis() as u64;
                    let over_rate = !bucket.lock().expect("bucket").allow(now_ms);
                    let checked =
                        match over_rate {
                            true => Err(format!("over {} frames a second", crate::limits::FRAMES_PER_S)),
                            false => f.map_err(|e| e.to_string()).and_then(|bytes| {
                                match tessera_wire::sender_of(&bytes) {
                                    Some(s) if s != peer => {
                                        Err(format!("signed by another peer {}", short(&s)))
                                    }
                                    _ => tessera_wire::decode(&bytes).map_err(|e| e.to_string()),
                                }
                            }),
                        };
                    let ordering = std::sync::atomic::Ordering::Relaxed;
                    let checked = checked.and_then(|s| {
                        match queued.load(ordering) < crate::limits::MAX_QUEUED_PER_PEER {
                            true => Ok(s),
                            false => Err(format!(
                                "its share of the queue ({}) is full",
                                crate::limits::MAX_QUEUED_PER_PEER
                            )),
                        }
                    });
                    match checked {
                        Ok(s) => {
                            queued.fetch_add(1, ordering);
                            if tx.try_send(Input::Frame(peer, Box::new(s), queued.clone())).is_err() {
                                queued.fetch_sub(1, ordering);
                                log.warn(&format!(
                                    "input queue full: a frame from {} was dropped",
                                    short(&peer)
                                ));
                            }
                        }
                        Err(e) => {
                            // Said for the first few, then every 1,000th: a flood cannot flood the log.
                            let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if n < 8 || n.is_multiple_of(1000) {
                                log.warn(&format!(
                                    "frame from {} refused: {e} ({} refused so far)",
                                    short(&peer),
                                    n + 1
                                ));
                            }
                        }
                    }
                },
                gate,
            )
            .await;
        });
    }
}

impl Daemon {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Evaluates the shared model when a round divisible by `eval_every` (or the last) closed.
    fn maybe_eval(&mut self) -> Res<()> {
        let Some((ds, every, batches)) = &self.eval else { return Ok(()) };
        let r = self.coord.round();
        if r == self.evaluated || !(r.is_multiple_of(*every) || self.coord.is_finished()) {
            return Ok(());
        }
        // Off the event loop, so heartbeats and commits are handled while it runs; timed at
        // the moment the state was reached.
        let (spec, ds, theta, batches) =
            (self.coord.spec().clone(), ds.clone(), self.coord.global().theta.clone(), *batches);
        let (tx, ms) = (self.tx.clone(), self.now_ms());
        tokio::task::spawn_blocking(move || {
            let loss = spec.val_loss(&ds, &theta, batches).map_err(|e| e.to_string());
            let _ = tx.blocking_send(Input::Evaluated(r, ms, loss));
        });
        self.evals_pending += 1;
        self.evaluated = r;
        Ok(())
    }

    fn on_input(&mut self, input: Input) -> Res<()> {
        let now = self.now_ms();
        let sender = match &input {
            Input::Frame(p, ..) => Some(*p),
            _ => None,
        };
        let outs = match input {
            Input::Evaluated(r, ms, loss) => {
                self.evals_pending = self.evals_pending.checked_sub(1).expect("an evaluation was pending");
                match loss.map_err(|e| e.to_string()) {
                    // A diverged model's loss is not a number: said, not fatal to the run.
                    Ok(l) => match self.store.record_eval(r, ms, l) {
                        Ok(()) => {
                            self.dash.eval(r, ms, l);
                            self.log.info(&format!("round {r}: validation loss {l:.4}"))
                        }
                        Err(e @ crate::StoreError::NotFinite { .. }) => self.log.warn(&e.to_string()),
                        Err(e) => return Err(e.into()),
                    },
                    Err(e) => self.log.warn(&format!("evaluating round {r}: {e}")),
                }
                return Ok(());
            }
            Input::Checked(round, peer, got, took) => {
                self.check_s += took;
                self.coord.checked(now, round, peer, got)
            }
            Input::Recomputed(round, peer, got, took) => {
                self.check_s += took;
                self.coord.recomputed(now, round, peer, got)
            }
            Input::Scored(round, peer, got, took) => {
                self.score_s += took;
                self.coord.scored(now, round, peer, got)
            }
            Input::Connected(peer, conn, gate) => {
                self.gates.insert(peer, gate);
                self.open_gates(Some(&peer));
                self.conns.lock().expect("conns").insert(peer, conn.clone());
                self.outboxes.insert(peer, spawn_outbox(self.net.clone(), conn));
                self.strangers.insert(peer, Instant::now());
                return Ok(());
            }
            Input::Frame(peer, s, queued) => {
                queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                assert_eq!(s.sender, peer, "frames are checked against their connection first");
                self.coord.handle(now, *s)
            }
            Input::Fetched(peer, hash, got) => self.coord.fetched(now, peer, hash, got),
        };
        // Membership may have changed: gates first, so a peer just welcomed can fetch at once.
        self.open_gates(sender.as_ref());
        self.execute(outs)
    }

    /// Opens the blob gate of every member and validator and closes the others' (`only`: the
    /// one peer whose frame may have changed its membership; `None`: everyone's).
    fn open_gates(&mut self, only: Option<&PeerId>) {
        let c = &self.coord;
        match only {
            Some(p) => {
                if let Some(g) = self.gates.get(p) {
                    g.set_open(c.has_joined(p));
                }
            }
            None => self.gates.iter().for_each(|(p, g)| g.set_open(c.has_joined(p))),
        }
        assert!(self.gates.len() <= self.conns.lock().expect("conns").len() + 1, "a gate per connection");
    }

    /// Publishes the view if it changed and [`crate::view::PUBLISH_EVERY`] has passed since
    /// the last time (`force`: now, whatever changed). Never waits on a reader.
    fn publish(&mut self, force: bool) {
        let Some(tx) = &self.publish else { return };
        if !force && self.published_at.elapsed() < crate::view::PUBLISH_EVERY {
            return;
        }
        let now = self.now_ms();
        if let Some(s) = self.dash.snapshot(&self.coord, now, self.net.traffic(), force) {
            tx.send_replace(Some(Arc::new(s)));
            self.published_at = Instant::now();
        }
    }

    fn record_traffic(&self) -> Res<()> {
        let b = postcard::to_allocvec(&self.net.traffic()).map_err(|e| NodeError::Run(e.to_string()))?;
        self.store.set_meta("check_s", &self.check_s.to_le_bytes())?;
        self.store.set_meta("score_s", &self.score_s.to_le_bytes())?;
        Ok(self.store.set_meta("traffic", &b)?)
    }

    fn send(&mut self, to: &PeerId, frame: Vec<u8>) {
        if let Some(ob) = self.outboxes.get(to) {
            if ob.try_send(frame).is_err() {
                self.log.warn(&format!("outbox to {} full or closed; message dropped", short(to)));
            }
        }
    }

    fn execute(&mut self, outs: Vec<Output>) -> Res<()> {
        let now = self.now_ms();
        for o in outs {
            self.dash.output(now, &o);
            match o {
                Output::Send { to, message } => {
                    let f = tessera_wire::encode(&self.key, self.seq.next(), &message)?;
                    self.send(&to, f);
                }
                Output::Broadcast { message } => {
                    let f = tessera_wire::encode(&self.key, self.seq.next(), &message)?;
                    let members: Vec<PeerId> = self.coord.members().copied().collect();
                    for m in members {
                        self.send(&m, f.clone());
                    }
                }
                Output::Fetch { from, hash, len } => self.spawn_fetch(from, hash, len),
                Output::StoreBlob { hash, bytes } => {
                    self.store.put_blob(&hash, &bytes)?;
                    self.net.blobs().insert(Arc::new(bytes));
                }
                Output::Persist(rec) => {
                    self.store.persist(&rec)?;
                    if let Record::RoundClosed { .. } = rec {
                        self.record_traffic()?;
                    }
                }
                Output::Check(job) => self.spawn_check(*job),
                Output::Score(job) => self.spawn_score(*job),
                Output::Recompute(job) => {
                    let (round, peer) = (job.round, job.peer);
                    self.off_loop(
                        move |spec, ds| match ds {
                            Some(ds) => job.run(spec, ds),
                            None => Err(tessera_coord::CoordError::Config(
                                "the coordinator has no --data-dir".into(),
                            )),
                        },
                        move |got, took| Input::Recomputed(round, peer, got, took),
                    );
                }
                Output::Event(e) => self.on_event(e),
            }
        }
        Ok(())
    }

    /// Scores an update on a blocking thread; without a dataset nothing can be scored.
    fn spawn_score(&self, job: tessera_coord::ScoreJob) {
        let (round, peer) = (job.round, job.peer);
        self.off_loop(
            move |spec, ds| match ds {
                Some(ds) => tessera_coord::run_score(spec, ds, &job),
                None => Err(tessera_coord::CoordError::Config("the coordinator has no --data-dir".into())),
            },
            move |got, took| Input::Scored(round, peer, got, took),
        );
    }

    /// Runs a spot check on a blocking thread; without a dataset nothing can be re-run.
    fn spawn_check(&self, job: tessera_coord::CheckJob) {
        let (round, peer) = (job.round, job.peer);
        self.off_loop(
            move |spec, ds| match ds {
                Some(ds) => tessera_coord::run_check(spec, ds, &job),
                None => Ok(tessera_coord::Outcome::Unchecked("the coordinator has no --data-dir".into())),
            },
            move |got, took| Input::Checked(round, peer, got, took),
        );
    }

    /// Runs `work` on a blocking thread against the run and its dataset (if any), and sends
    /// its result with the seconds it took back to the loop.
    fn off_loop<T: Send + 'static>(
        &self,
        work: impl FnOnce(&RunSpec, Option<&tessera_data::Dataset>) -> T + Send + 'static,
        done: impl FnOnce(T, f64) -> Input + Send + 'static,
    ) {
        let (spec, data, tx) = (self.coord.spec().clone(), self.data.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let got = work(&spec, data.as_deref());
            let _ = tx.blocking_send(done(got, t0.elapsed().as_secs_f64()));
        });
    }

    fn spawn_fetch(&self, from: PeerId, hash: Hash32, len: u64) {
        let (net, conns, tx) = (self.net.clone(), self.conns.clone(), self.tx.clone());
        tokio::spawn(async move {
            let mut last = String::from("not connected");
            for _ in 0..FETCH_ATTEMPTS {
                let conn = conns.lock().expect("conns").get(&from).cloned();
                if let Some(c) = conn {
                    match net.fetch_blob(&c, &hash, len).await {
                        Ok(b) => {
                            let _ = tx.send(Input::Fetched(from, hash, Ok(b))).await;
                            return;
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = tx.send(Input::Fetched(from, hash, Err(last))).await;
        });
    }

    /// Closes the connections that have not joined within [`STRANGER_TIMEOUT`] (and, past
    /// [`MAX_STRANGERS`], the oldest), so connections that never join cannot grow the maps.
    fn forget_strangers(&mut self) {
        if self.strangers.is_empty() {
            return; // the common case, every tick
        }
        let joined: Vec<PeerId> = self.coord.members().chain(self.coord.validators()).copied().collect();
        for p in joined {
            self.strangers.remove(&p);
        }
        let mut by_age: Vec<(PeerId, Instant)> = self.strangers.iter().map(|(p, t)| (*p, *t)).collect();
        by_age.sort_by_key(|s| s.1);
        let excess = by_age.len().saturating_sub(MAX_STRANGERS);
        for (i, (p, t)) in by_age.into_iter().enumerate() {
            if i < excess || t.elapsed() > STRANGER_TIMEOUT {
                self.strangers.remove(&p);
                self.outboxes.remove(&p);
                self.gates.remove(&p);
                if let Some(c) = self.conns.lock().expect("conns").remove(&p) {
                    c.close(0u32.into(), b"did not join");
                }
                self.log.info(&format!("closed the connection of {}, which did not join", short(&p)));
            }
        }
        assert!(self.strangers.len() <= MAX_STRANGERS, "strangers are bounded");
    }

    fn on_event(&mut self, e: Event) {
        match e {
            // Shown on the dashboard (the Dash takes them), not worth a log line each.
            Event::Opened { .. } | Event::Committed { .. } => {}
            Event::Joined(p) => self.log.info(&format!("{} joined", short(&p))),
            Event::Left(p) => {
                // Forget its connection too, so churn does not grow these maps.
                self.outboxes.remove(&p);
                self.gates.remove(&p);
                if let Some(c) = self.conns.lock().expect("conns").remove(&p) {
                    c.close(0u32.into(), b"silent");
                }
                self.log.info(&format!("{} left (silent)", short(&p)))
            }
            Event::Rejected { from, reason } => {
                self.log.warn(&format!("message from {} refused: {reason}", short(&from)))
            }
            Event::RoundClosed { round, accepted, rejected, reassigned, spread } => {
                let spread = spread.map_or(String::new(), |s| format!(", replica spread {s:.3e}"));
                self.log.info(&format!(
                    "round {round} closed: {accepted} accepted, {rejected} rejected, {reassigned} units reassigned{spread}"
                ))
            }
            Event::Disagreement { round, peer, reported, expected } => self.log.warn(&format!(
                "DISAGREEMENT: {} reports state {} after round {round}, expected {}",
                short(&peer),
                hex(&reported),
                expected.map_or("unknown".into(), |h| hex(&h))
            )),
            Event::Checked { round, peer, segment, outcome, by } => {
                let by = by.map_or("the coordinator".to_string(), |v| format!("validator {}", short(&v)));
                let line =
                    format!("round {round}: spot check of {} (segment {segment}) by {by}: {outcome}", short(&peer));
                match outcome.passed() {
                    true => self.log.info(&line),
                    false => self.log.warn(&line),
                }
            }
            Event::Disputed(d) => self.log.warn(&d.to_string()),
            Event::LedgerRefused { kind, why } => self.log.warn(&format!("the ledger refused a {kind} entry: {why}")),
            Event::Scored { round, peer, score, harmful, by } => {
                let by = by.map_or("the coordinator".to_string(), |v| format!("validator {}", short(&v)));
                let line = format!(
                    "round {round}: {}'s update scored by {by}: held-out gain {:+.4}, own {:+.4}, unseen {:+.4}{}",
                    short(&peer),
                    score.held_out,
                    score.own,
                    score.unseen,
                    if harmful { " — HARMFUL, left out" } else { "" }
                );
                match harmful {
                    true => self.log.warn(&line),
                    false => self.log.info(&line),
                }
            }
            Event::Unscored { round, peer, why } => {
                self.log.warn(&format!("round {round}: {}'s update not scored: {why}", short(&peer)))
            }
            Event::Banned { peer, round } => self.log.warn(&format!(
                "CHEAT: {} proven to have cheated in round {round}; refused from now on",
                short(&peer)
            )),
            Event::LeftOut { round, peer, reason } => {
                self.log.info(&format!("round {round}: {} left out: {reason}", short(&peer)))
            }
            Event::Clipped { round, count } => self.log.warn(&format!(
                "round {round}: {count} update(s) over the median-norm bound were clipped (robust aggregation)"
            )),
            Event::Finished { round, state_hash } => {
                self.log.info(&format!("run finished after {round} rounds: {}", hex(&state_hash)))
            }
        }
    }
}

fn spawn_outbox(net: Net, conn: Connection) -> mpsc::Sender<Vec<u8>> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_OUTBOX);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if net.send_frame(&conn, &f).await.is_err() && conn.close_reason().is_some() {
                return;
            }
        }
    });
    tx
}

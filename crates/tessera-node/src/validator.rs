//! The validator service (`tessera node --validator`). It drives the
//! [`tessera_coord::Validator`] state machine: frames, fetch results, check results (run on
//! blocking threads) and ticks go in; the machine's actions (send, fetch, check, log) are
//! executed in order. It decides nothing itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use iroh::endpoint::Connection;
use tessera_coord::{
    Behaviour, CheckJob, Checked, CoordError, Disputant, Hash32, PeerId, Validator, ValidatorAction,
    ValidatorConfig, ValidatorEvent,
};
use tessera_data::Dataset;
use tessera_net::{parse_ticket, Net};
use tokio::sync::mpsc;

use crate::status::{Board, NodePhase};
use crate::trainer::{connect, frames_of, serve_peers, verified, End, NodeOptions};
use crate::{embedded_dataset, fresh_key, load_or_create_key, out, short, Log, NodeError, Seq, TICK};

type Res<T> = std::result::Result<T, NodeError>;

/// Fetch and check results queued for the event loop.
const MAX_INPUTS: usize = 256;

enum Input {
    Fetched(Hash32, Result<Vec<u8>, String>),
    /// A check's round, trainer, outcome and seconds.
    Checked(u64, PeerId, Result<Checked, CoordError>, f64),
    /// A score's round, trainer, result and seconds.
    Scored(u64, PeerId, Result<tessera_coord::Score, CoordError>, f64),
}

struct Checker {
    net: Net,
    key: SigningKey,
    seq: Seq,
    ds: Arc<Dataset>,
    pool: Arc<rayon::ThreadPool>,
    v: Validator,
    /// The ledger copy on disk, if kept.
    kept: Option<crate::ledger_file::LedgerFile>,
    fetcher: crate::fetch::Fetcher,
    inputs: mpsc::Sender<Input>,
    started: Instant,
    log: Log,
    checks: u64,
    scores: u64,
    check_s: f64,
    /// What it re-ran of the segments it is disputed over.
    disputant: Disputant,
    board: Board,
}

/// The validator's behaviour from the node's `--cheat` drill flag (a trainer's cheat refused).
fn behaviour(a: &NodeOptions) -> Res<Behaviour> {
    match a.cheat {
        None => Ok(Behaviour::Honest),
        Some(k) => k
            .validator_behaviour()
            .ok_or_else(|| NodeError::Run(format!("--cheat {k:?} is a trainer's cheat, not a validator's"))),
    }
}

pub(crate) async fn main_loop(a: NodeOptions) -> Res<()> {
    let (coord, addr) = parse_ticket(&a.join)?;
    let key = match &a.key {
        Some(p) => load_or_create_key(p)?,
        None => fresh_key()?,
    };
    let ds = Arc::new(embedded_dataset(&a.data_dir)?);
    let net = Net::bind(key.to_bytes(), &a.net).await?;
    let log = Log::new(&format!("validator {}", short(&net.id())));
    let behaviour = behaviour(&a)?;
    if behaviour != Behaviour::Honest {
        log.warn(&format!("DRILL: this validator cheats ({behaviour:?})"));
    }
    let vc = ValidatorConfig {
        stake: a.stake,
        me: net.id(),
        coordinator: coord,
        dataset: ds.manifest_hash(),
        addr: Some(net.local_addr()?.to_string()),
        behaviour,
        key: Some(key.clone()),
    };
    let board = Board::new(a.publish.clone(), &net.id(), &coord, "validator");
    let mut v = Validator::new(vc);
    let kept = crate::trainer::open_copy(a.ledger_copy.as_deref(), &coord, &log, |r| v.resume_ledger(r))?;
    tokio::spawn(serve_peers(net.clone()));
    let (tx, mut inputs) = mpsc::channel(MAX_INPUTS);
    let mut c = Checker {
        fetcher: crate::fetch::Fetcher::new(net.clone(), coord),
        net,
        key,
        seq: Seq::for_key(a.key.as_deref())?,
        ds,
        pool: Arc::new(crate::pool(a.threads)?),
        v,
        kept,
        inputs: tx,
        started: Instant::now(),
        log,
        checks: 0,
        scores: 0,
        check_s: 0.0,
        disputant: Disputant::default(),
        board,
    };
    let mut unreachable_since = None;
    loop {
        let logs = (&c.log, &mut c.board);
        let conn = connect(&c.net, (coord, addr), a.reconnect_s, &mut unreachable_since, logs).await?;
        c.log.info("connected to the coordinator as a validator");
        match c.session(conn, &mut inputs).await? {
            End::Done => break,
            End::Lost => c.log.warn("lost the coordinator; reconnecting"),
        }
        unreachable_since.get_or_insert_with(Instant::now);
    }
    c.refresh();
    c.board.publish_now();
    out(&format!("validator checks={} scores={} check_s={:.3}", c.checks, c.scores, c.check_s));
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.net.close().await;
    Ok(())
}

impl Checker {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn session(&mut self, conn: Connection, inputs: &mut mpsc::Receiver<Input>) -> Res<End> {
        let mut frames = frames_of(&self.net, &conn);
        let acts = self.v.connected(self.now_ms());
        if self.execute(&conn, acts).await? {
            return Ok(End::Done);
        }
        self.refresh();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            let now = self.now_ms();
            let acts = tokio::select! {
                f = frames.recv() => match verified(&self.log, f) {
                    Some(Some(s)) => self.v.handle(now, s),
                    Some(None) => continue,
                    None => return Ok(End::Lost),
                },
                Some(i) = inputs.recv() => match i {
                    Input::Fetched(hash, got) => self.v.fetched(now, hash, got),
                    Input::Checked(round, peer, got, took) => {
                        self.checks += 1;
                        self.check_s += took;
                        self.v.checked(now, round, peer, got)
                    }
                    Input::Scored(round, peer, got, took) => {
                        self.scores += 1;
                        self.check_s += took;
                        self.v.scored(now, (round, peer), got)
                    }
                },
                _ = ticker.tick() => self.v.tick(now),
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
        self.board.held(None, self.v.ledger(), &self.net.id());
        let (sent, recv) = self.net.traffic();
        let (checks, busy) = (self.checks + self.scores, self.check_s);
        self.board.update(|s| {
            s.bytes_sent = sent;
            s.bytes_received = recv;
            s.checks = checks;
            s.compute_s = busy;
        });
        self.board.set_phase(NodePhase::Member(self.v.phase()), &self.log);
    }

    /// Executes the machine's actions in order; true when the run is over.
    async fn execute(&mut self, conn: &Connection, acts: Vec<ValidatorAction>) -> Res<bool> {
        let mut done = false;
        for a in acts {
            match a {
                ValidatorAction::Send(m) => match tessera_wire::encode(&self.key, self.seq.next(), &m) {
                    Ok(f) => {
                        if let Err(e) = self.net.send_frame(conn, &f).await {
                            self.log.warn(&format!("send failed: {e}"));
                        }
                    }
                    Err(e) => self.log.warn(&format!("cannot encode: {e}")),
                },
                ValidatorAction::Fetch { sources, hash, len } => {
                    let (f, conn, tx) = (self.fetcher.clone(), conn.clone(), self.inputs.clone());
                    tokio::spawn(async move {
                        let got = f.whole(&conn, &sources, &hash, len).await;
                        let _ = tx.send(Input::Fetched(hash, got)).await;
                    });
                }
                ValidatorAction::KeepLedger(records) => {
                    if let Some(f) = self.kept.as_mut() {
                        f.append(&records)?;
                    }
                }
                ValidatorAction::Check(job) => self.spawn_check(*job),
                ValidatorAction::Score(job) => self.spawn_score(*job),
                ValidatorAction::Answer(job) => {
                    // A dispute's question: the first re-runs the segment, an operator
                    // question traces one step; short enough for the loop.
                    let Some(spec) = self.spec() else { continue };
                    let (ds, d) = (&self.ds, &mut self.disputant);
                    let got = self.pool.install(|| job.run(&spec, ds, d));
                    let more = self.v.answered(self.now_ms(), (job.round, job.peer), got);
                    Box::pin(self.execute(conn, more)).await?;
                }
                ValidatorAction::Event(e) => done |= self.on_event(e)?,
            }
        }
        Ok(done)
    }

    fn spawn_check(&self, job: CheckJob) {
        let (ds, pool, tx) = (self.ds.clone(), self.pool.clone(), self.inputs.clone());
        let Some(spec) = self.spec() else { return };
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let got = pool.install(|| tessera_coord::check_segment(&spec, &ds, &job));
            let took = t0.elapsed().as_secs_f64();
            let _ = tx.blocking_send(Input::Checked(job.round, job.peer, got, took));
        });
    }

    fn spawn_score(&self, job: tessera_coord::ScoreJob) {
        let (ds, pool, tx) = (self.ds.clone(), self.pool.clone(), self.inputs.clone());
        let Some(spec) = self.spec() else { return };
        tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let got = pool.install(|| tessera_coord::run_score(&spec, &ds, &job));
            let took = t0.elapsed().as_secs_f64();
            let _ = tx.blocking_send(Input::Scored(job.round, job.peer, got, took));
        });
    }

    fn spec(&self) -> Option<Arc<tessera_coord::RunSpec>> {
        self.v.spec().cloned()
    }

    fn on_event(&mut self, e: ValidatorEvent) -> Res<bool> {
        match e {
            ValidatorEvent::Configured(spec) => {
                let c = &spec.cfg;
                self.log.info(&format!(
                    "run config: {} {} H={}; checking segments of {}",
                    c.preset,
                    c.algo,
                    c.h(),
                    c.commit_every
                ));
            }
            ValidatorEvent::Checked { round, peer, segment, finding } => {
                self.board.update(|s| s.round = Some(s.round.map_or(round, |r| r.max(round))));
                self.log
                    .info(&format!("round {round}: checked {} segment {segment}: {finding:?}", short(&peer)))
            }
            ValidatorEvent::Warning(e) => {
                self.board.update(|s| s.warnings += 1);
                self.log.warn(&e.to_string())
            }
            ValidatorEvent::Fatal(e) => return Err(NodeError::Trainer(e)),
            ValidatorEvent::Finished { round } => {
                self.log.info(&format!("run done after {round} rounds; {} checks run", self.checks));
                return Ok(true);
            }
        }
        Ok(false)
    }
}

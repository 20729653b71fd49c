//! `tessera demo`: a coordinator and N trainers as separate local processes, DiLoCo with int8
//! updates on the embedded corpus, with a progress bar and a closing summary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_coord::{RunConfig, RunSpec};
use tessera_model::{Gpt, SampleConfig};
use tessera_net::hex;
use tessera_node::{embedded_dataset, Store, DEFAULT_DATA_DIR};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory (its coordinator state is replaced on every run).
    #[arg(long, default_value = "runs/demo")]
    pub dir: PathBuf,
    /// Trainers to start.
    #[arg(long, default_value_t = 4)]
    pub peers: usize,
    /// Run config (TOML) instead of the demo's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rounds (overrides the config).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// The outer algorithm (overrides the config): diloco, noloco, sparseloco, ddp or demo. The
    /// gradient methods (ddp, demo) take one step per round, so they get H times the rounds:
    /// the same training steps.
    #[arg(long)]
    pub algo: Option<tessera_sync::Algorithm>,
    /// Dataset directory (built from the embedded corpus if missing).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Faults, drawn from this seed: every time a round closes, one random trainer is killed
    /// with SIGKILL and restarted at once (same key); after a third and after two thirds of
    /// the rounds, the coordinator is killed with SIGKILL and restarted from its directory.
    #[arg(long)]
    pub chaos: Option<u64>,
}

/// The demo's run: the tiny model, 4 trainers, DiLoCo with int8 updates.
pub fn demo_config(peers: usize) -> RunConfig {
    RunConfig { min_peers: peers, ..RunConfig::default() }.with(|c| {
        c.inner_steps = 50;
        c.rounds = 30;
        c.batch = 8;
        c.inner_warmup = 50;
    })
}

/// The demo's processes: the coordinator first, then the validator (if any) and the trainers,
/// each with its name and arguments (to restart it). Kills them when dropped, so an error
/// never leaves processes behind.
struct Children(Vec<(String, Vec<String>, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, _, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Children {
    fn start(&mut self, dir: &Path, name: &str, args: Vec<String>) -> Result<()> {
        let child = spawn(dir, name, &args)?;
        self.0.push((name.to_string(), args, child));
        Ok(())
    }

    /// Kills child `i` with SIGKILL and starts it again with the same arguments.
    fn kill9_and_restart(&mut self, dir: &Path, i: usize) -> Result<()> {
        let (name, args, child) = &mut self.0[i];
        child.kill().with_context(|| format!("kill -9 {name}"))?;
        child.wait()?;
        *child = spawn(dir, name, args)?;
        Ok(())
    }
}

/// The faults of `--chaos`: after each round closes, one random trainer dies at a random
/// moment inside the next round (20–90% of the last round's length, so mid-training), and at
/// a third and two thirds of the rounds the coordinator dies at that moment too.
struct Chaos {
    rng: tessera_tensor::rng::Philox,
    /// Rounds closed when last seen, and when the last one closed.
    seen: u64,
    last_close: Instant,
    /// The next strike: when, at which trainer, and whether the coordinator dies too.
    pending: Option<(Instant, usize, bool)>,
    coordinator_at: [u64; 2],
    trainer_kills: u64,
    coordinator_kills: u64,
}

impl Chaos {
    fn new(seed: u64, rounds: u64) -> Self {
        let at = [(rounds / 3).max(1), (2 * rounds / 3).max(2)];
        let rng = tessera_tensor::rng::Philox::new(seed);
        Self {
            rng,
            seen: 0,
            last_close: Instant::now(),
            pending: None,
            coordinator_at: at,
            trainer_kills: 0,
            coordinator_kills: 0,
        }
    }

    /// Plans a strike for each newly closed round (not after the last), and strikes when one
    /// is due. The trainers are children `first..`.
    fn step(
        &mut self,
        kids: &mut Children,
        dir: &Path,
        closed: u64,
        first: usize,
        rounds: u64,
    ) -> Result<()> {
        if closed > self.seen && closed < rounds {
            if let Some((_, victim, coordinator)) = self.pending.take() {
                self.strike(kids, dir, victim, coordinator)?; // due: its round is over
            }
            let now = Instant::now();
            let len = now - self.last_close;
            self.last_close = now;
            self.seen = closed;
            let trainers = (kids.0.len() - first) as u64;
            let p = tessera_tensor::rng::purpose("demo chaos");
            let victim = first + self.rng.below(p, 2 * closed, trainers) as usize;
            let frac = 0.2 + 0.7 * f64::from(self.rng.uniform(p, 2 * closed + 1));
            let coordinator = self.coordinator_at.contains(&closed);
            self.pending = Some((now + len.mul_f64(frac), victim, coordinator));
        }
        if let Some((at, victim, coordinator)) = self.pending {
            if Instant::now() >= at {
                self.pending = None;
                self.strike(kids, dir, victim, coordinator)?;
            }
        }
        Ok(())
    }

    fn strike(&mut self, kids: &mut Children, dir: &Path, victim: usize, coordinator: bool) -> Result<()> {
        kids.kill9_and_restart(dir, victim)?;
        self.trainer_kills += 1;
        if coordinator {
            kids.kill9_and_restart(dir, 0)?;
            self.coordinator_kills += 1;
        }
        assert!(self.coordinator_kills <= 2, "the coordinator dies twice at most");
        Ok(())
    }
}

/// Output files are appended to, so a restarted process's lines follow its earlier life's.
fn spawn(dir: &Path, name: &str, args: &[String]) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let open = |p: PathBuf| std::fs::OpenOptions::new().create(true).append(true).open(p);
    let out = open(dir.join(format!("{name}.out")))?;
    let err = open(dir.join(format!("{name}.log")))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// Prints where each node serves its status page (what each printed as `status: URL`),
/// waiting a few seconds for them; a node that has not said yet is left out.
fn status_pages(dir: &Path, names: &[String]) {
    let t0 = Instant::now();
    let mut pages = Vec::with_capacity(names.len());
    for name in names {
        let page = loop {
            let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default();
            if let Some(url) = out.lines().find_map(|l| l.strip_prefix("status: ")) {
                break Some(url.trim().to_string());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(url) = page {
            pages.push(format!("{name} {url}"));
        }
    }
    if !pages.is_empty() {
        crate::out(&format!("demo: each node's own status page: {}", pages.join(", ")));
    }
}

/// How the run's updates travel, for the banner (e.g. `int8`, `top-64/4096 2bit`).
fn spec_codec(cfg: &RunConfig) -> String {
    match cfg.update_codec() {
        Ok(c) => match c.top_k {
            Some(k) => format!("top-{k}/{} {}", c.chunk, c.values),
            None => c.values.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn wait_for_file(p: &Path, timeout: Duration) -> Result<String> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(s) = std::fs::read_to_string(p) {
            if !s.is_empty() {
                return Ok(s.trim().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not appear within {:?}", p.display(), timeout)
}

pub fn run(a: DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let coord_dir = a.dir.join("coordinator");
    let _ = std::fs::remove_dir_all(&coord_dir);
    std::fs::create_dir_all(&coord_dir)?;
    let ds = embedded_dataset(&a.data_dir)?;
    let mut cfg = match &a.config {
        Some(p) => RunConfig::from_toml(&std::fs::read_to_string(p)?)?,
        None => demo_config(a.peers),
    };
    if let Some(algo) = a.algo {
        cfg.algo = algo;
        if matches!(algo, tessera_sync::Algorithm::Ddp | tessera_sync::Algorithm::DeMo) {
            cfg.rounds = cfg.rounds.saturating_mul(cfg.inner_steps);
            cfg.inner_steps = 1;
        }
    }
    if let Some(r) = a.rounds {
        cfg.rounds = r;
    }
    cfg.validate()?;
    let cfg_path = a.dir.join("run.toml");
    std::fs::write(&cfg_path, cfg.to_toml())?;
    let s = |p: &Path| p.display().to_string();
    for e in std::fs::read_dir(&a.dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "out" || x == "log") {
            std::fs::remove_file(&p)?; // the last run's; this run's are appended to
        }
    }
    let mut kids = Children(Vec::new());
    // The validation loss every 5 rounds, for the dashboard's loss curve.
    let coord_args = [
        "coordinator",
        "--config",
        &s(&cfg_path),
        "--dir",
        &s(&coord_dir),
        "--data-dir",
        &s(&a.data_dir),
        "--eval-every",
        "5",
    ];
    let mut coord_args: Vec<String> = coord_args.map(String::from).to_vec();
    let mut http_port = 0;
    if a.chaos.is_some() {
        // A restarted coordinator must come back where the trainers (and the dashboard's
        // reader) dial it.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        coord_args.extend(["--bind".to_string(), format!("127.0.0.1:{port}")]);
        http_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    }
    coord_args.extend(["--http".to_string(), format!("127.0.0.1:{http_port}")]);
    let _ = std::fs::remove_file(coord_dir.join("http"));
    kids.start(&a.dir, "coordinator", coord_args)?;
    let ticket = wait_for_file(&coord_dir.join("ticket"), Duration::from_secs(60))?;
    let url = wait_for_file(&coord_dir.join("http"), Duration::from_secs(10))?;
    crate::out(&format!("demo: watch the run at {url}"));
    crate::out(&format!(
        "demo: coordinator at {ticket}; {} trainers, {} preset, {} H={} with {} updates, {} rounds",
        a.peers,
        cfg.preset,
        cfg.algo,
        cfg.inner_steps,
        spec_codec(&cfg),
        cfg.rounds
    ));
    // Each node serves its own status page too, but not under --chaos, whose restarts would
    // move them to other ports.
    let node_args = |key: &Path| {
        let args =
            ["node", "--join", &ticket, "--data-dir", &s(&a.data_dir), "--key", &s(key), "--threads", "1"];
        let mut args: Vec<String> = args.map(String::from).to_vec();
        if a.chaos.is_none() {
            args.extend(["--http".to_string(), "127.0.0.1:0".to_string()]);
        }
        args
    };
    if cfg.validate == tessera_coord::Validate::Validators {
        // One validator, there before the first round: it re-runs the segments the
        // coordinator draws and the coordinator referees what it finds.
        let mut args = node_args(&a.dir.join("validator.key"));
        args.push("--validator".into());
        kids.start(&a.dir, "validator", args)?;
    }
    let first_trainer = kids.0.len();
    for i in 0..a.peers {
        kids.start(&a.dir, &format!("node-{i}"), node_args(&a.dir.join(format!("node-{i}.key"))))?;
    }
    if a.chaos.is_none() {
        let names: Vec<String> = kids.0.iter().skip(1).map(|k| k.0.clone()).collect();
        status_pages(&a.dir, &names);
    }
    let mut chaos = a.chaos.map(|seed| Chaos::new(seed, cfg.rounds));
    crate::out(&format!("demo: logs in {}", a.dir.display()));
    let bar = crate::train::make_bar(cfg.rounds, 0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} rounds  {msg}  {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let deadline = Duration::from_secs(a.timeout_s);
    loop {
        if let Some(st) = kids.0[0].2.try_wait()? {
            if !st.success() {
                bail!("the coordinator failed ({st}); see {}", a.dir.join("coordinator.log").display());
            }
            break;
        }
        for (name, _, c) in kids.0.iter_mut().skip(1) {
            if let Some(st) = c.try_wait()? {
                if !st.success() {
                    bail!("{name} failed ({st}); see {}", a.dir.join(format!("{name}.log")).display());
                }
            }
        }
        if t0.elapsed() > deadline {
            bail!("the demo did not finish within {} s", a.timeout_s);
        }
        if let Ok(p) = Store::open_read_only(&coord_dir).and_then(|s| s.progress()) {
            bar.set_position(p.rounds_closed);
            bar.set_message(format!("{} updates accepted", p.accepted));
            if let Some(ch) = &mut chaos {
                ch.step(&mut kids, &a.dir, p.rounds_closed, first_trainer, cfg.rounds)?;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    // Give the nodes a moment to finish, then reap them.
    let t1 = Instant::now();
    for (name, _, c) in kids.0.iter_mut().skip(1) {
        while c.try_wait()?.is_none() && t1.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if c.try_wait()?.is_none() {
            eprintln!("demo: {name} still running; stopping it");
        }
    }
    drop(kids);
    if let Some(ch) = &chaos {
        crate::out(&format!(
            "demo: chaos killed {} trainers (one inside each round after the first, while the run lasted) and the coordinator {} times, each with SIGKILL mid-round, and restarted them; the bytes and training seconds below are each process's last life only",
            ch.trainer_kills, ch.coordinator_kills
        ));
    }
    summary(&coord_dir, &cfg, &ds, a.peers, t0.elapsed())
}

/// The number after `key` on the first line of `name.out` (in the demo's directory) that
/// holds it, such as a node's `compute train_s=…`.
fn printed(coord_dir: &Path, name: &str, key: &str) -> Option<f64> {
    let dir = coord_dir.parent().unwrap_or(coord_dir);
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).ok()?;
    let at = out.lines().find_map(|l| l.split_once(key).map(|x| x.1.to_string()))?;
    at.split_whitespace().next()?.parse().ok()
}

/// The trainers' training seconds, from the `compute train_s=…` line each node prints.
fn train_seconds(coord_dir: &Path, peers: usize) -> Vec<f64> {
    (0..peers).filter_map(|i| printed(coord_dir, &format!("node-{i}"), "train_s=")).collect()
}

/// What the spot checks did and what they cost against the trainers' compute.
fn checks_line(sum: &tessera_node::Summary, cfg: &RunConfig, train_s: &[f64], validator_s: f64) -> String {
    if cfg.validate == tessera_coord::Validate::Off {
        return "off (validate = \"off\")".into();
    }
    let trained: f64 = train_s.iter().sum();
    let spent = sum.check_s + validator_s;
    let share = match trained > 0.0 {
        true => format!("{:.1}% of the trainers' {trained:.1} s", 100.0 * spent / trained),
        false => "trainers' time unknown".into(),
    };
    format!(
        "{} (rate {}; {} settled by the validator, {} by the coordinator), {} failed, {} disputes \
         ({} down to one operator), {} cheats caught; {spent:.2} s of re-execution = {share}",
        sum.checks,
        cfg.check_rate,
        sum.checks_by_validators,
        sum.checks - sum.checks_by_validators,
        sum.checks_failed,
        sum.disputes,
        sum.disputes_to_op,
        sum.cheats_caught
    )
}

fn summary(
    coord_dir: &Path,
    cfg: &RunConfig,
    ds: &tessera_data::Dataset,
    peers: usize,
    took: Duration,
) -> Result<()> {
    let store = Store::open_read_only(coord_dir)?;
    let sum = store.summary()?;
    let (rounds, accepted) = (sum.progress.rounds_closed, sum.progress.accepted);
    let spec = RunSpec::new(cfg.clone())?;
    let init = spec.initial_state();
    let hash = sum.last_state.context("no round was closed")?;
    let fin = store.state(&spec, &hash)?;
    let (sent, recv) = sum.traffic.unwrap_or_default();
    let val = |theta: &[f32]| spec.val_loss(ds, theta, 8);
    let (l0, l1) = (val(&init.theta)?, val(&fin.theta)?);
    let n = spec.n() as u64;
    let ddp = accepted * cfg.inner_steps * 2 * (tessera_sync::HEADER_BYTES as u64 + 4 * n);
    let moved = sent + recv;
    let g = Gpt { cfg: spec.gpt.clone(), params: spec.params(&fin.theta)? };
    let prompt = b"ROMEO:\n";
    let p: Vec<u32> = prompt.iter().map(|&b| u32::from(b)).collect();
    let out = g.generate(&p, 160, &SampleConfig { temperature: 0.8, top_k: 40, seed: 7 })?;
    let text: Vec<u8> = prompt.iter().copied().chain(out.iter().map(|&t| t as u8)).collect();
    let o = crate::out;
    o("");
    o(&format!("demo finished in {:.1} s", took.as_secs_f64()));
    o(&format!(
        "  rounds             {rounds} (of {}), {accepted} updates accepted from {peers} trainers",
        cfg.rounds
    ));
    o(&format!("  validation loss    {l0:.4} -> {l1:.4} nats/byte"));
    o(&format!(
        "  state reports      {} of {} agree with the coordinator; {} computed by the node itself, {} adopted",
        sum.agreed, sum.reports, sum.computed_agreed, sum.adopted
    ));
    let validator_s = printed(coord_dir, "validator", "check_s=").unwrap_or(0.0);
    let trained = train_seconds(coord_dir, peers);
    o(&format!("  spot checks        {}", checks_line(&sum, cfg, &trained, validator_s)));
    if sum.scored > 0 {
        o(&format!(
            "  scores             {} updates scored on {} held-out batches ({} by the validator), {} left \
             out as harmful; {:.2} s of the coordinator's",
            sum.scored, cfg.score_batches, sum.scored_by_validators, sum.harmful, sum.score_s
        ));
    }
    o(&format!("  bytes moved        {:.2} MB (coordinator sent + received)", moved as f64 / 1e6));
    o(&format!(
        "  DDP would move     {:.2} MB for the same steps: {:.0}x more",
        ddp as f64 / 1e6,
        ddp as f64 / moved.max(1) as f64
    ));
    o(&format!("  final state        {}", hex(&hash)));
    if let Some(l) = store.verified_ledger()? {
        let (n, head) = l.head();
        o(&format!(
            "  ledger             {n} records, head {}, verified (tessera ledger {})",
            hex(&head[..4]),
            coord_dir.display()
        ));
        for line in super::ledger::table(l.accounts()) {
            o(&format!("    {line}"));
        }
    }
    if let Some(spread) = sum.last_spread {
        o(&format!("  replica spread     {spread:.3e} (NoLoCo: the final state is the replicas' mean)"));
    }
    o(&format!("  model              {}/model (tessera sample --checkpoint …)", coord_dir.display()));
    o("  sample:");
    for line in String::from_utf8_lossy(&text).lines() {
        o(&format!("    | {line}"));
    }
    if sum.agreed != sum.reports {
        bail!("{} state reports disagreed with the coordinator", sum.reports - sum.agreed);
    }
    if sum.computed_agreed == 0 {
        bail!("no node computed a state that agrees with the coordinator's");
    }
    Ok(())
}

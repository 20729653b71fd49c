//! The fault simulator, after TigerBeetle's VOPR and FoundationDB's simulation: one seed
//! draws a whole run (the algorithm, the network's loss, duplication, reordering and delay,
//! partitions, slow peers, trainer and validator crashes with and without their disks, the
//! coordinator dying at any output index, on a failed write or a full disk, and at times a
//! cheat) and runs it in [`ProtocolSim`] on the micro model, checking the protocol's
//! invariants after every step. A seed is its own reproduction: the same seed replays the same
//! run, bit for bit.

use std::collections::{BTreeMap, BTreeSet};

use tessera_coord::{Behaviour, Cheat, Hash32, Message, PeerId, Record, RunConfig, RunSpec, Shirk, Unit};
use tessera_data::Dataset;
use tessera_ledger::Entry;
use tessera_sync::Algorithm;
use tessera_tensor::rng::{purpose, Philox};

use crate::links::{FaultCounts, NetFaults};
use crate::protocol::{CoordCrash, ProtocolSim};
use crate::SimError;

/// The dataset every seed trains on: the embedded Sonnets, ingested into `dir` on first use
/// (an existing dataset there is opened). The test suite and `tessera vopr` share it, so a
/// seed fails or passes the same in both.
pub fn dataset(dir: &std::path::Path) -> Result<Dataset, SimError> {
    if !dir.join("manifest.json").exists() {
        let opts = tessera_data::IngestOptions { shard_tokens: 8192, ..Default::default() };
        tessera_data::ingest_bytes(tessera_model::fixtures::SONNETS, "sonnets", dir, &opts)?;
    }
    Ok(Dataset::open(dir)?)
}

/// Most trainers a seed may run.
pub const MAX_VOPR_PEERS: usize = 256;
/// Most steps (deliveries and ticks) one seed may take before it is declared stuck.
pub const MAX_STEPS: u64 = 2_000_000;

/// What every seed shares.
#[derive(Clone, Debug, PartialEq)]
pub struct VoprConfig {
    pub peers: usize,
    pub validators: usize,
    pub rounds: u64,
    /// Each seed's loss, duplication and reordering rates are drawn from this range.
    pub min_rate: f64,
    pub max_rate: f64,
    /// The outer algorithms a seed draws from (in this order: a seed's draw depends on it).
    pub algos: Vec<Algorithm>,
}

/// Every outer algorithm, as seeds draw them. The first four are the mix the seeds before
/// NoLoCo joined were drawn from (their regression seeds keep it).
pub const ALL_ALGOS: [Algorithm; 5] =
    [Algorithm::Ddp, Algorithm::DiLoCo, Algorithm::SparseLoCo, Algorithm::DeMo, Algorithm::NoLoCo];

impl Default for VoprConfig {
    fn default() -> Self {
        Self {
            peers: 16,
            validators: 2,
            rounds: 4,
            min_rate: 0.05,
            max_rate: 0.10,
            algos: ALL_ALGOS.to_vec(),
        }
    }
}

/// A scheduled fault (trainers and validators by index: trainers first, then validators).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// The node dies, and starts again `down_ms` later, `with_disk` or without.
    Kill { node: usize, down_ms: u64, with_disk: bool },
    /// The node is cut off from everyone for `ms`.
    Partition { node: usize, ms: u64 },
    /// The trainer is slow from now on.
    Slow { node: usize, extra_ms: u64, train_ms: u64 },
    /// A trainer that joins late.
    Join { node: usize },
}

/// A cheat one node plays (trainers by index; validators by index after the trainers).
#[derive(Clone, Debug, PartialEq)]
pub enum Adversary {
    Sends(usize, Cheat),
    Trains(usize, Shirk),
    Validates(usize, Behaviour),
}

/// Everything one seed runs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub algo: Algorithm,
    pub net: NetFaults,
    /// Faults, in time order (virtual ms).
    pub faults: Vec<(u64, Fault)>,
    pub coord_crashes: Vec<CoordCrash>,
    pub adversary: Option<Adversary>,
    /// No new fault after this; the network is clean from then on.
    pub horizon_ms: u64,
}

/// What a seed did and found.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub seed: u64,
    /// Each invariant broken (the run stops at the first).
    pub violations: Vec<String>,
    pub rounds_closed: u64,
    pub finished: bool,
    /// The coordinator's restarts, and the state the run ended in.
    pub restarts: u64,
    pub final_state: Option<Hash32>,
    pub virtual_ms: u64,
    pub net: FaultCounts,
    /// Scheduled faults by kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// On a violation: the coordinator's last events and the trainers' last reports, oldest
    /// first (what `tessera vopr --seeds 1 --from S --verbose` prints).
    pub log: Vec<String>,
}

/// Most events a failing seed's log keeps.
pub const MAX_LOG: usize = 80;

struct Draw {
    rng: Philox,
    i: u64,
}

impl Draw {
    fn below(&mut self, n: u64) -> u64 {
        self.i += 1;
        self.rng.below(purpose("vopr plan"), self.i, n.max(1))
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn uniform(&mut self) -> f64 {
        self.i += 1;
        f64::from(self.rng.uniform(purpose("vopr plan"), self.i))
    }
    fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// The run config every seed shares, but for its seed and algorithm: the micro model, two
/// inner steps, timings short enough that each round takes a few hundred virtual ms.
pub fn run_config(cfg: &VoprConfig, seed: u64, algo: Algorithm) -> RunConfig {
    let base = RunConfig {
        min_peers: cfg.peers.div_ceil(2),
        max_peers: cfg.peers.max(RunConfig::default().max_peers),
        heartbeat_ms: 100,
        silence_ms: 1500,
        rejoin_grace_ms: 1000,
        min_round_ms: 300,
        max_round_ms: 6_000,
        round_timeout_ms: 6_000,
        commit_every: 1,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.preset = "micro".into();
        c.seed = seed;
        c.algo = algo;
        c.inner_steps = 2;
        c.inner_warmup = 2;
        c.rounds = cfg.rounds;
        c.batch = 1;
        c.chunk = 256;
        c.topk = 16;
    })
}

/// The seed's plan.
pub fn plan(seed: u64, cfg: &VoprConfig) -> Plan {
    let mut d = Draw { rng: Philox::new(seed), i: 0 };
    assert!(!cfg.algos.is_empty(), "a seed draws from at least one algorithm");
    let algo = cfg.algos[d.below(cfg.algos.len() as u64) as usize];
    let rate = |d: &mut Draw| cfg.min_rate + (cfg.max_rate - cfg.min_rate) * d.uniform();
    let net = NetFaults {
        seed,
        loss: rate(&mut d),
        duplicate: rate(&mut d),
        reorder: rate(&mut d),
        reorder_ms: d.between(50, 400),
        delay_ms: d.between(0, 40),
    };
    let horizon_ms = 300 * cfg.rounds + d.between(500, 3_000);
    let nodes = cfg.peers + cfg.validators;
    let mut faults = Vec::new();
    for _ in 0..d.between(1, 6) {
        let at = d.below(horizon_ms);
        let node = d.below(nodes as u64) as usize;
        let f = match d.below(4) {
            0 | 1 => Fault::Kill { node, down_ms: d.between(100, 3_000), with_disk: d.chance(0.5) },
            2 => Fault::Partition { node, ms: d.between(100, 3_000) },
            _ if node < cfg.peers => {
                Fault::Slow { node, extra_ms: d.between(0, 300), train_ms: d.between(0, 1_500) }
            }
            _ => Fault::Partition { node, ms: d.between(100, 1_000) },
        };
        faults.push((at, f));
    }
    if cfg.peers > 2 && d.chance(0.3) {
        faults.push((d.below(horizon_ms), Fault::Join { node: cfg.peers - 1 }));
    }
    faults.sort_by_key(|(at, _)| *at);
    let outputs = (cfg.peers as u64 * 8 + 20) * cfg.rounds;
    let mut coord_crashes = Vec::new();
    for _ in 0..d.between(0, 3) {
        let down_ms = d.between(50, 2_000);
        coord_crashes.push(match d.below(3) {
            0 => CoordCrash::AtOutput { n: d.below(outputs), down_ms },
            1 => CoordCrash::WriteFails { n: d.below(outputs), down_ms },
            _ => {
                let from_ms = d.below(horizon_ms);
                CoordCrash::DiskFull { from_ms, until_ms: from_ms + down_ms }
            }
        });
    }
    let adversary = adversary(&mut d, cfg);
    Plan { seed, algo, net, faults, coord_crashes, adversary, horizon_ms }
}

fn adversary(d: &mut Draw, cfg: &VoprConfig) -> Option<Adversary> {
    if cfg.peers < 2 || !d.chance(0.4) {
        return None;
    }
    let who = d.below(cfg.peers as u64) as usize;
    let other = (who + 1) % cfg.peers;
    Some(match d.below(8) {
        0 => Adversary::Sends(who, Cheat::Replay),
        1 => Adversary::Sends(who, Cheat::Copy { of: node_id(other) }),
        2 => Adversary::Sends(who, Cheat::Random { seed: d.below(1 << 32) }),
        3 => Adversary::Trains(who, Shirk::SkipSteps),
        4 => Adversary::Trains(who, Shirk::WrongData),
        5 => Adversary::Trains(who, Shirk::Forge),
        6 if cfg.validators > 0 => Adversary::Validates(cfg.peers, Behaviour::Lying),
        _ if cfg.validators > 0 => Adversary::Validates(cfg.peers, Behaviour::Lazy),
        _ => Adversary::Trains(who, Shirk::SkipSteps),
    })
}

/// Node `i`'s identity: trainers and validators sign with keys derived from their index.
pub fn node_key(i: usize) -> tessera_coord::SigningKey {
    let k = blake3::derive_key("tessera vopr node key", &(i as u64).to_le_bytes());
    tessera_coord::SigningKey::from_bytes(&k)
}

fn node_id(i: usize) -> PeerId {
    node_key(i).verifying_key().to_bytes()
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { with_disk: true, .. } => "crash, restart with disk",
            Fault::Kill { with_disk: false, .. } => "crash, restart without disk",
            Fault::Partition { .. } => "partition",
            Fault::Slow { .. } => "slow peer",
            Fault::Join { .. } => "late join",
        }
    }
}

fn crash_kind(c: &CoordCrash) -> &'static str {
    match c {
        CoordCrash::AtOutput { .. } => "coordinator crash at an output",
        CoordCrash::WriteFails { .. } => "coordinator write failure",
        CoordCrash::DiskFull { .. } => "coordinator disk full",
    }
}

/// Runs one seed and checks every invariant.
pub fn run_seed(seed: u64, cfg: &VoprConfig, ds: &Dataset) -> SeedReport {
    run(&plan(seed, cfg), cfg, ds)
}

/// Runs one plan (a seed's, or one written by hand) and checks every invariant.
pub fn run(plan: &Plan, cfg: &VoprConfig, ds: &Dataset) -> SeedReport {
    let seed = plan.seed;
    let mut report = SeedReport { seed, ..SeedReport::default() };
    for (_, f) in &plan.faults {
        *report.kinds.entry(f.kind()).or_default() += 1;
    }
    for c in &plan.coord_crashes {
        *report.kinds.entry(crash_kind(c)).or_default() += 1;
    }
    if let Some(a) = &plan.adversary {
        *report.kinds.entry(adversary_kind(a)).or_default() += 1;
    }
    if let Err(v) = run_plan(plan, cfg, ds, &mut report) {
        report.violations.push(v);
    }
    report
}

fn adversary_kind(a: &Adversary) -> &'static str {
    match a {
        Adversary::Sends(..) => "cheating trainer (sends)",
        Adversary::Trains(..) => "cheating trainer (trains)",
        Adversary::Validates(..) => "cheating validator",
    }
}

/// Runs `plan`; the first violation found is the error.
fn run_plan(plan: &Plan, cfg: &VoprConfig, ds: &Dataset, report: &mut SeedReport) -> Result<(), String> {
    assert!(cfg.peers >= 1 && cfg.peers <= MAX_VOPR_PEERS, "a plan runs 1..={MAX_VOPR_PEERS} trainers");
    let rc = run_config(cfg, plan.seed, plan.algo);
    let mut sim = ProtocolSim::new(rc.clone(), ds).map_err(|e| format!("config: {e}"))?;
    let late: BTreeSet<usize> = plan
        .faults
        .iter()
        .filter_map(|(_, f)| if let Fault::Join { node } = f { Some(*node) } else { None })
        .collect();
    let honest = setup(&mut sim, plan, cfg, &late).map_err(|e| format!("setup: {e}"))?;
    for c in &plan.coord_crashes {
        sim.crash_coordinator(*c);
    }
    sim.set_net_faults(plan.net.clone());
    let mut watch = Watch::new(sim.coordinator().spec(), honest);
    let found = drive(&mut sim, plan, cfg, &rc, &mut watch, report);
    if found.is_err() {
        report.log = log_of(&sim);
    }
    found
}

/// The last events of the run, coordinator's and trainers', for a failing seed.
fn log_of(sim: &ProtocolSim) -> Vec<String> {
    let coord = sim.events.iter().rev().take(MAX_LOG / 2).map(|e| format!("coordinator: {e:?}"));
    let trainers =
        sim.trainer_events.iter().rev().take(MAX_LOG / 2).map(|(p, e)| format!("trainer {}: {e:?}", hex(p)));
    let mut log: Vec<String> = coord.collect::<Vec<_>>().into_iter().rev().collect();
    log.extend(trainers.collect::<Vec<_>>().into_iter().rev());
    log.iter_mut().for_each(|l| l.truncate(300));
    log
}

/// Steps the run through its plan to the end, checking as it goes.
fn drive(
    sim: &mut ProtocolSim,
    plan: &Plan,
    cfg: &VoprConfig,
    rc: &RunConfig,
    watch: &mut Watch,
    report: &mut SeedReport,
) -> Result<(), String> {
    let spec = sim.coordinator().spec().clone();
    let mut due: Vec<(u64, Fault)> = plan.faults.clone();
    let mut restarts: Vec<(u64, usize, bool)> = Vec::new();
    let quiet_ms = (cfg.rounds + 3) * rc.round_timeout_ms.max(rc.max_round_ms) + rc.silence_ms;
    let mut clean = false;
    for _ in 0..MAX_STEPS {
        if sim.is_finished() {
            break;
        }
        let now = sim.now_ms();
        while due.first().is_some_and(|(at, _)| *at <= now) {
            let (_, f) = due.remove(0);
            apply(sim, f, now, &mut restarts).map_err(|e| format!("{}: {e}", f.kind()))?;
        }
        restarts.sort();
        while restarts.first().is_some_and(|(at, ..)| *at <= now) {
            let (_, node, disk) = restarts.remove(0);
            sim.restart(&node_id(node), disk).map_err(|e| format!("restarting node {node}: {e}"))?;
        }
        if !clean && now >= plan.horizon_ms {
            sim.set_net_faults(NetFaults::default());
            clean = true;
        }
        if now > plan.horizon_ms + 3_000 + quiet_ms {
            return Err(format!(
                "liveness: stuck at round {} of {}, {} ms after the last fault ({})",
                sim.coordinator().round(),
                cfg.rounds,
                now - plan.horizon_ms,
                sim.membership()
            ));
        }
        sim.step().map_err(|e| step_error(&e))?;
        watch.step(sim)?;
        report.virtual_ms = sim.now_ms();
    }
    report.finished = sim.is_finished();
    report.restarts = sim.restarts;
    report.final_state = Some(sim.coordinator().state_hash());
    report.net = sim.fault_counts().clone();
    report.rounds_closed = watch.closed.len() as u64;
    if !report.finished {
        return Err(format!("liveness: not finished after {MAX_STEPS} steps"));
    }
    watch.step(sim)?;
    watch.finish(sim, &spec)
}

fn step_error(e: &SimError) -> String {
    format!("a node stopped: {e}")
}

/// Joins every node (the late joiner later) and sets the adversary; returns the honest
/// trainers.
fn setup(
    sim: &mut ProtocolSim,
    plan: &Plan,
    cfg: &VoprConfig,
    late: &BTreeSet<usize>,
) -> Result<BTreeSet<PeerId>, SimError> {
    for i in (0..cfg.peers).filter(|i| !late.contains(i)) {
        sim.join_signing(node_key(i))?;
    }
    let mut honest: BTreeSet<PeerId> = (0..cfg.peers).map(node_id).collect();
    for v in 0..cfg.validators {
        let i = cfg.peers + v;
        let b = match &plan.adversary {
            Some(Adversary::Validates(who, b)) if *who == i => *b,
            _ => Behaviour::Honest,
        };
        sim.join_signing_validator(node_key(i), b)?;
    }
    match &plan.adversary {
        Some(Adversary::Sends(who, c)) => {
            sim.cheat(&node_id(*who), c.clone());
            honest.remove(&node_id(*who));
        }
        Some(Adversary::Trains(who, s)) => {
            sim.shirk(&node_id(*who), *s);
            honest.remove(&node_id(*who));
        }
        _ => {}
    }
    Ok(honest)
}

fn apply(
    sim: &mut ProtocolSim,
    f: Fault,
    now: u64,
    restarts: &mut Vec<(u64, usize, bool)>,
) -> Result<(), SimError> {
    match f {
        Fault::Kill { node, down_ms, with_disk } => {
            sim.kill(&node_id(node));
            restarts.push((now + down_ms, node, with_disk));
        }
        Fault::Partition { node, ms } => sim.partition(node_id(node), ms),
        Fault::Slow { node, extra_ms, train_ms } => sim.slow(node_id(node), extra_ms, train_ms),
        Fault::Join { node } => {
            sim.join_signing(node_key(node))?;
        }
    }
    Ok(())
}

/// The invariants, checked as the run goes (incrementally over the store's new records).
struct Watch {
    honest: BTreeSet<PeerId>,
    initial: Hash32,
    /// State hash after each closed round, by round.
    closed: BTreeMap<u64, Hash32>,
    /// NoLoCo: each member's replica hash after each closed round, by (round, member).
    replicas: BTreeMap<(u64, PeerId), Hash32>,
    pairs: bool,
    starts: BTreeMap<u64, Vec<tessera_coord::Assignment>>,
    trained: BTreeSet<Unit>,
    seen: usize,
}

impl Watch {
    fn new(spec: &RunSpec, honest: BTreeSet<PeerId>) -> Self {
        let initial = spec.initial_state().hash();
        Self {
            honest,
            initial,
            closed: BTreeMap::new(),
            replicas: BTreeMap::new(),
            pairs: spec.outer.exchange() == tessera_sync::Exchange::Pairs,
            starts: BTreeMap::new(),
            trained: BTreeSet::new(),
            seen: 0,
        }
    }

    /// After every step: each new record keeps the round and data invariants, and every live
    /// honest trainer holds the state the coordinator recorded for its round.
    fn step(&mut self, sim: &ProtocolSim) -> Result<(), String> {
        while self.seen < sim.records.len() {
            let r = &sim.records[self.seen];
            self.seen += 1;
            self.record(r)?;
        }
        for p in &self.honest {
            let Some((round, hash)) = sim.peer_state(p) else { continue };
            let want = match round.checked_sub(1) {
                None => Some(self.initial),
                // NoLoCo: a member holds its own replica; one that has none yet, the consensus.
                Some(last) if self.pairs => {
                    self.replicas.get(&(last, *p)).or(self.closed.get(&last)).copied()
                }
                Some(last) => self.closed.get(&last).copied(),
            };
            if want != Some(hash) {
                return Err(format!(
                    "agreement: trainer {} holds state {} after {round} rounds; the coordinator recorded {}",
                    tessera_tensor::hex(&p[..4]),
                    tessera_tensor::hex(&hash[..4]),
                    want.map(|h| tessera_tensor::hex(&h[..4])).unwrap_or_else(|| "none".into())
                ));
            }
        }
        Ok(())
    }

    fn record(&mut self, r: &Record) -> Result<(), String> {
        match r {
            Record::RoundStarted { round, start: Message::RoundStart { assignments, .. } } => {
                self.starts.insert(*round, assignments.clone());
            }
            Record::RoundClosed { round, accept, state_hash, backlog, .. } => {
                if self.closed.insert(*round, *state_hash).is_some() {
                    return Err(format!("close once: round {round} closed twice"));
                }
                if *round + 1 != self.closed.len() as u64 {
                    return Err(format!("close once: round {round} closed before the rounds before it"));
                }
                let Message::Accept { accepted, pairs, .. } = accept else {
                    return Err(format!("round {round} closed without an Accept"));
                };
                for (peer, h) in pairs.iter().flat_map(|p| &p.replicas) {
                    self.replicas.insert((*round, *peer), *h);
                }
                let assigned = self.starts.get(round).cloned().unwrap_or_default();
                self.units(*round, &assigned, accepted, backlog)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// No unit is trained twice, and one assigned but not accepted waits in the backlog.
    fn units(
        &mut self,
        round: u64,
        assigned: &[tessera_coord::Assignment],
        accepted: &[PeerId],
        backlog: &[Unit],
    ) -> Result<(), String> {
        for a in assigned {
            let unit = (a.data_round, a.slot);
            if accepted.contains(&a.peer) {
                if !self.trained.insert(unit) {
                    return Err(format!("data: unit {unit:?} trained twice (again in round {round})"));
                }
            } else if !backlog.contains(&unit) && backlog.len() < tessera_coord::MAX_BACKLOG {
                return Err(format!("data: unit {unit:?} of round {round} was neither accepted nor kept"));
            }
        }
        if let Some(u) = backlog.iter().find(|u| self.trained.contains(u)) {
            return Err(format!("data: unit {u:?} is waiting again after it was trained"));
        }
        Ok(())
    }

    /// At the end: the ledger replays to the live accounts, slashes no honest trainer, and
    /// its rounds recompute, from the initial state and the accepted updates' blobs, to the
    /// states the coordinator recorded.
    fn finish(&self, sim: &ProtocolSim, spec: &RunSpec) -> Result<(), String> {
        let log = sim.store().ledger();
        let ledger = tessera_ledger::verify(&sim.ledger_key(), &log)
            .map_err(|e| format!("ledger: it does not verify: {e}"))?;
        if Some(ledger.accounts()) != sim.coordinator().accounts() {
            return Err("ledger: the replayed accounts are not the live ones".into());
        }
        let mut state = spec.initial_state();
        let mut rounds = 0u64;
        for rec in &log {
            match &rec.entry {
                Entry::Slashed { peer, round, .. } if self.honest.contains(peer) => {
                    return Err(format!(
                        "slashing: honest trainer {} slashed in round {round} ({})",
                        hex(peer),
                        why_slashed(sim, peer, *round)
                    ));
                }
                Entry::RoundClosed { round, start, end, accepted, .. } => {
                    // NoLoCo's rounds close through replicas, which `replay` (like the
                    // audit) does not recompute; the replicas are checked as the run goes.
                    if !self.pairs {
                        self.recompute(sim, spec, &mut state, (*round, start, end), accepted)?;
                    }
                    rounds += 1;
                }
                _ => {}
            }
        }
        if rounds != self.closed.len() as u64 {
            return Err(format!(
                "ledger: {rounds} rounds closed in the ledger, {} in the store",
                self.closed.len()
            ));
        }
        Ok(())
    }

    fn recompute(
        &self,
        sim: &ProtocolSim,
        spec: &RunSpec,
        state: &mut tessera_coord::GlobalState,
        (round, start, end): (u64, &Hash32, &Hash32),
        accepted: &[tessera_ledger::AcceptedUpdate],
    ) -> Result<(), String> {
        if state.hash() != *start || self.closed.get(&round) != Some(end) {
            return Err(format!(
                "recompute: round {round}'s ledger entry does not chain from the state before"
            ));
        }
        let mut blobs = Vec::with_capacity(accepted.len());
        for a in accepted {
            let b = sim
                .blob(&a.update)
                .ok_or_else(|| format!("recompute: round {round}: an accepted update was lost"))?;
            blobs.push(b);
        }
        spec.replay(state, round, &blobs).map_err(|e| format!("recompute: round {round}: {e}"))?;
        if state.hash() != *end {
            return Err(format!(
                "recompute: round {round}'s accepted updates give {}, not the recorded {}",
                hex(&state.hash()),
                hex(end)
            ));
        }
        Ok(())
    }
}

/// What the coordinator logged of `peer` in `round`'s disputes and checks.
fn why_slashed(sim: &ProtocolSim, peer: &PeerId, round: u64) -> String {
    let said: Vec<String> = sim
        .events
        .iter()
        .filter_map(|e| match e {
            tessera_coord::Event::Disputed(d) if d.trainer == *peer && d.round == round => {
                Some(d.to_string())
            }
            tessera_coord::Event::Checked { round: r, peer: p, outcome, .. } if p == peer && *r == round => {
                Some(format!("checked: {outcome}"))
            }
            _ => None,
        })
        .collect();
    said.join("; ")
}

fn hex(h: &[u8; 32]) -> String {
    tessera_tensor::hex(&h[..4])
}

/// The one-line reproduction of `seed`.
pub fn reproduce(seed: u64) -> String {
    format!("tessera vopr --seeds 1 --from {seed}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_coord::Assignment;

    fn watch() -> Watch {
        let spec = RunSpec::new(run_config(&VoprConfig::default(), 1, Algorithm::DiLoCo)).unwrap();
        Watch::new(&spec, BTreeSet::new())
    }

    fn started(round: u64, units: &[(u8, Unit)]) -> Record {
        let assignments: Vec<Assignment> =
            units.iter().map(|(p, (r, s))| Assignment { peer: [*p; 32], data_round: *r, slot: *s }).collect();
        let start = Message::RoundStart {
            round,
            state_hash: [0; 32],
            seed: 1,
            members: assignments.iter().map(|a| a.peer).collect(),
            addrs: vec![],
            assignments,
            deadline_ms: 1000,
            replicas: vec![],
        };
        Record::RoundStarted { round, start }
    }

    fn closed(round: u64, accepted: &[u8], backlog: Vec<Unit>) -> Record {
        let accept = Message::Accept {
            round,
            accepted: accepted.iter().map(|p| [*p; 32]).collect(),
            updates: vec![],
            rejected: vec![],
            aggregate: None,
            next_state_hash: [round as u8 + 1; 32],
            pairs: None,
            ledger: None,
        };
        Record::RoundClosed {
            round,
            accept,
            state_hash: [round as u8 + 1; 32],
            backlog,
            spread: None,
            ledger: vec![],
        }
    }

    #[test]
    fn the_watch_passes_a_sound_history() {
        let mut w = watch();
        w.record(&started(0, &[(1, (0, 0)), (2, (0, 1))])).unwrap();
        w.record(&closed(0, &[1], vec![(0, 1)])).unwrap();
        w.record(&started(1, &[(1, (0, 1)), (2, (1, 0))])).unwrap();
        w.record(&closed(1, &[1, 2], vec![])).unwrap();
        assert_eq!(w.closed.len(), 2);
    }

    #[test]
    fn the_watch_catches_a_round_closed_twice() {
        let mut w = watch();
        w.record(&started(0, &[(1, (0, 0))])).unwrap();
        w.record(&closed(0, &[1], vec![])).unwrap();
        let e = w.record(&closed(0, &[1], vec![])).unwrap_err();
        assert!(e.contains("closed twice"), "{e}");
    }

    #[test]
    fn the_watch_catches_a_unit_trained_twice_or_dropped() {
        let mut w = watch();
        w.record(&started(0, &[(1, (0, 0)), (2, (0, 1))])).unwrap();
        w.record(&closed(0, &[1], vec![(0, 1)])).unwrap();
        w.record(&started(1, &[(1, (0, 0)), (2, (1, 0))])).unwrap();
        let e = w.record(&closed(1, &[1], vec![(1, 0)])).unwrap_err();
        assert!(e.contains("trained twice"), "{e}");

        let mut w = watch();
        w.record(&started(0, &[(1, (0, 0)), (2, (0, 1))])).unwrap();
        let e = w.record(&closed(0, &[1], vec![])).unwrap_err();
        assert!(e.contains("neither accepted nor kept"), "{e}");
    }

    #[test]
    fn a_plan_is_a_pure_function_of_its_seed() {
        let cfg = VoprConfig::default();
        assert_eq!(format!("{:?}", plan(7, &cfg)), format!("{:?}", plan(7, &cfg)));
        assert_ne!(format!("{:?}", plan(7, &cfg)), format!("{:?}", plan(8, &cfg)));
        let p = plan(7, &cfg);
        assert!(p.net.loss >= cfg.min_rate && p.net.loss <= cfg.max_rate);
        assert!(p.faults.windows(2).all(|w| w[0].0 <= w[1].0), "faults in time order");
    }
}

//! The networked run with real processes on loopback: a coordinator and trainers as separate
//! `tessera` processes, killed with SIGKILL and restarted, and a hostile client. Each test
//! checks its outcome against the database the coordinator kept and, where the membership
//! history allows, against the in-process protocol simulator bit for bit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use tessera_coord::{Message, RunConfig};
use tessera_data::{ingest_bytes, Dataset, IngestOptions};
use tessera_model::fixtures::SONNETS;
use tessera_sim::ProtocolSim;
use tessera_sync::Algorithm;
use tessera_tensor::simd::best_path;

const WAIT: Duration = Duration::from_secs(240);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-net-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dataset(dir: &Path) -> PathBuf {
    let d = dir.join("data");
    let opts = IngestOptions { shard_tokens: 8192, ..IngestOptions::default() };
    ingest_bytes(SONNETS, "sonnets", &d, &opts).unwrap();
    d
}

/// Generous timings: the tests run in parallel on two cores, and a node wrongly taken for
/// silent or late would change the membership history the simulator comparisons rely on.
fn config(peers: usize, rounds: u64) -> RunConfig {
    let base = RunConfig {
        min_peers: peers,
        heartbeat_ms: 100,
        silence_ms: 5000,
        min_round_ms: 15_000,
        ..RunConfig::default()
    };
    base.with(|c| {
        c.inner_steps = 4;
        c.rounds = rounds;
        c.batch = 2;
    })
}

/// A child process, killed when dropped; its output goes to files in the test directory.
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn start(dir: &Path, name: &str, args: &[String]) -> Proc {
        Self::start_env(dir, name, args, &[])
    }

    fn start_env(dir: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
        let (out, err) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.log")));
        let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Proc { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for a clean exit.
    fn finish(&mut self) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "process failed ({st}):\n{}", self.log());
                return self.stdout();
            }
            assert!(t0.elapsed() < WAIT, "process did not finish:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit, however it does.
    fn wait(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t0.elapsed() < WAIT, "process did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a node computes: threads and a forced SIMD path (None: the fastest the CPU has).
#[derive(Clone, Copy)]
struct Machine {
    threads: usize,
    simd: Option<&'static str>,
}

/// Three different machines: the CPU's fastest path on one thread, the scalar path on two
/// threads, and AVX2 where the CPU has it (else scalar) on one. Their bits must agree.
fn three_machines() -> [Machine; 3] {
    let avx2 = tessera_tensor::simd::SimdPath::Avx2.supported();
    [
        Machine { threads: 1, simd: None },
        Machine { threads: 2, simd: Some("scalar") },
        Machine { threads: 1, simd: Some(if avx2 { "avx2" } else { "scalar" }) },
    ]
}

struct Run {
    dir: PathBuf,
    data: PathBuf,
    cfg: RunConfig,
    port: u16,
}

fn secret(i: u8) -> [u8; 32] {
    [i; 32]
}

fn peer_id(i: u8) -> [u8; 32] {
    SigningKey::from_bytes(&secret(i)).verifying_key().to_bytes()
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Run {
    fn new(name: &str, cfg: RunConfig) -> Run {
        let dir = tmp(name);
        let data = dataset(&dir);
        std::fs::write(dir.join("run.toml"), cfg.to_toml()).unwrap();
        Run { dir, data, cfg, port: free_port() }
    }

    fn coordinator(&self, name: &str) -> (Proc, String) {
        let s = |p: &Path| p.display().to_string();
        let cdir = self.dir.join("coord");
        let _ = std::fs::remove_file(cdir.join("ticket"));
        let args = [
            "coordinator",
            "--config",
            &s(&self.dir.join("run.toml")),
            "--dir",
            &s(&cdir),
            "--data-dir",
            &s(&self.data),
            "--bind",
            &format!("127.0.0.1:{}", self.port),
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
        ];
        let p = Proc::start(&self.dir, name, &args.map(String::from));
        let t0 = Instant::now();
        loop {
            if let Ok(t) = std::fs::read_to_string(cdir.join("ticket")) {
                return (p, t.trim().to_string());
            }
            assert!(t0.elapsed() < WAIT, "no ticket:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn node(&self, ticket: &str, i: u8, extra: &[&str]) -> Proc {
        self.node_on(ticket, i, extra, Machine { threads: 1, simd: None })
    }

    /// A node computing with `m`'s thread count and SIMD path.
    fn node_on(&self, ticket: &str, i: u8, extra: &[&str], m: Machine) -> Proc {
        let key = self.dir.join(format!("node{i}.key"));
        std::fs::write(&key, tessera_net::hex(&secret(i))).unwrap();
        let s = |p: &Path| p.display().to_string();
        let threads = m.threads.to_string();
        let mut args: Vec<String> = [
            "node",
            "--join",
            ticket,
            "--data-dir",
            &s(&self.data),
            "--key",
            &s(&key),
            "--threads",
            &threads,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        let env: Vec<(&str, &str)> = m.simd.iter().map(|p| ("TESSERA_SIMD", *p)).collect();
        Proc::start_env(&self.dir, &format!("node{i}"), &args, &env)
    }

    /// What `tessera audit` prints of the coordinator's directory, and whether it passed.
    fn audit(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["audit", &self.dir.join("coord").display().to_string()])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// What `tessera ledger` prints of the coordinator's directory (it must succeed).
    fn ledger(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["ledger", &self.dir.join("coord").display().to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "tessera ledger failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn db(&self) -> Connection {
        Connection::open_with_flags(
            self.dir.join("coord").join("coordinator.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
    }

    /// Waits until `sql` counts at least `n`.
    fn wait_count(&self, sql: &str, n: i64) {
        let t0 = Instant::now();
        while self.count(sql) < n {
            assert!(t0.elapsed() < WAIT, "timed out waiting for {sql} >= {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `RoundStart` assignments of `round` as (peer, data_round, slot).
    fn assignments(&self, round: u64) -> Vec<([u8; 32], u64, u64)> {
        let b: Vec<u8> = self
            .db()
            .query_row("SELECT start FROM rounds WHERE round = ?1", [round as i64], |r| r.get(0))
            .unwrap();
        match postcard::from_bytes::<Message>(&b).unwrap() {
            Message::RoundStart { assignments, .. } => {
                assignments.iter().map(|a| (a.peer, a.data_round, a.slot)).collect()
            }
            other => panic!("not a RoundStart: {other:?}"),
        }
    }

    /// Every round closed exactly once, and every state report agreed.
    fn check_ledger(&self) {
        let rounds = self.cfg.rounds as i64;
        assert_eq!(self.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL"), rounds);
        assert_eq!(self.count("SELECT COUNT(*) FROM rounds WHERE accept IS NULL"), 0);
        assert_eq!(self.count("SELECT COUNT(*) FROM reports WHERE agrees = 0"), 0, "a node disagreed");
        assert_eq!(
            self.count("SELECT COUNT(*) FROM verdicts WHERE cheat = 1"),
            0,
            "an honest node was called a cheat"
        );
        // Evaluations run off the coordinator's loop; the last one is in before it exits.
        let last_eval = self.count("SELECT MAX(round) FROM evals");
        assert_eq!(last_eval, rounds, "the final state was evaluated");
        assert!(self.count("SELECT COUNT(*) FROM reports") > 0);
    }
}

/// How the daemons' logs name a peer (the first 4 bytes, in hex).
fn short_hex(p: &[u8; 32]) -> String {
    tessera_net::hex(&p[..4])
}

/// Blob bytes a node fetched from other nodes and from the coordinator (its last line).
fn blob_sources(stdout: &str) -> (u64, u64) {
    let l = stdout.lines().find(|l| l.starts_with("traffic ")).expect("a traffic line");
    let field = |k: &str| -> u64 {
        let v = l.split(' ').find_map(|f| f.strip_prefix(k)).expect("field");
        v.parse().expect("number")
    };
    (field("blob_bytes_from_peers="), field("from_coordinator="))
}

fn state_hash(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("state-hash: ")).expect("state-hash line").to_string()
}

/// The per-round states a node printed: (round, hash, agrees, computed).
fn node_states_full(stdout: &str) -> Vec<(u64, String, bool, bool)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("state round=")?;
            let (r, rest) = rest.split_once(" hash=")?;
            let (h, rest) = rest.split_once(" agrees=")?;
            let (a, c) = rest.split_once(" computed=")?;
            Some((r.parse().ok()?, h.to_string(), a == "true", c == "true"))
        })
        .collect()
}

/// The per-round state hashes a node printed: (round, hash, agrees).
fn node_states(stdout: &str) -> Vec<(u64, String, bool)> {
    node_states_full(stdout).into_iter().map(|s| (s.0, s.1, s.2)).collect()
}

/// The protocol simulator's final state for peers `ids` all present from the start.
fn simulated(run: &Run, ids: &[u8]) -> String {
    let ds = Dataset::open(&run.data).unwrap();
    let mut p = ProtocolSim::new(run.cfg.clone(), &ds).unwrap();
    for &i in ids {
        p.join(peer_id(i)).unwrap();
    }
    p.run_until(run.cfg.rounds).unwrap();
    tessera_net::hex(&p.coordinator().state_hash())
}

/// Three nodes from the start, on different thread counts and SIMD paths: every round, every
/// node computes the coordinator's state, and the run ends where the protocol simulator ends.
/// Returns the run for further checks.
fn three_nodes_agree(name: &str, cfg: RunConfig) -> Run {
    let run = Run::new(name, cfg);
    let (mut c, ticket) = run.coordinator("coord");
    let machines = three_machines();
    let mut nodes: Vec<Proc> =
        (1..=3).map(|i| run.node_on(&ticket, i, &[], machines[i as usize - 1])).collect();
    let final_hash = state_hash(&c.finish());
    let outs: Vec<String> = nodes.iter_mut().map(|n| n.finish()).collect();
    assert!(
        outs.iter().all(|o| node_states_full(o).iter().all(|s| s.3)),
        "every state computed, none adopted"
    );
    let per_node: Vec<Vec<(u64, String, bool)>> = outs.iter().map(|o| node_states(o)).collect();
    for r in 1..=run.cfg.rounds {
        let hashes: Vec<&(u64, String, bool)> =
            per_node.iter().map(|v| v.iter().find(|s| s.0 == r).unwrap()).collect();
        assert!(hashes.iter().all(|s| s.2 && s.1 == hashes[0].1), "round {r}: {hashes:?}");
    }
    assert_eq!(per_node[0].last().unwrap().1, final_hash);
    for (n, m) in nodes.iter().zip(machines) {
        let want =
            format!("computing on {} with {} threads", m.simd.unwrap_or(best_path().name()), m.threads);
        assert!(n.log().contains(&want), "the node says how it computed: {want}\n{}", n.log());
    }
    run.check_ledger();
    let computed = "SELECT COUNT(*) FROM reports WHERE agrees = 1 AND computed = 1";
    assert_eq!(run.count(computed), 3 * run.cfg.rounds as i64);
    assert_eq!(
        final_hash,
        simulated(&run, &[1, 2, 3]),
        "{}: the networked run equals the simulator",
        run.cfg.algo
    );
    run
}

#[test]
fn three_nodes_agree_every_round_and_match_the_simulator_bit_for_bit() {
    let run = three_nodes_agree("agree", config(3, 4));
    // The final model is a standard checkpoint that `tessera sample` reads.
    let model = run.dir.join("coord").join("model");
    let o = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["sample", "--checkpoint", &model.display().to_string(), "--tokens", "16", "--prompt", "A"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).len() >= 2);
}

#[test]
fn ddp_sparseloco_and_demo_over_loopback_match_the_simulator_bit_for_bit() {
    three_nodes_agree(
        "ddp",
        config(3, 3).with(|c| {
            c.algo = Algorithm::Ddp;
            c.inner_steps = 1;
        }),
    );
    let run = three_nodes_agree(
        "sparseloco",
        config(3, 3).with(|c| {
            c.algo = Algorithm::SparseLoCo;
        }),
    );
    // Updates travel peer to peer: every node fetched the others' from their authors.
    for i in 1..=3 {
        let (peers, _) =
            blob_sources(&std::fs::read_to_string(run.dir.join(format!("node{i}.out"))).unwrap());
        assert!(peers > 0, "node {i} fetched nothing from its peers");
    }
    three_nodes_agree(
        "demo",
        config(3, 3).with(|c| {
            c.algo = Algorithm::DeMo;
            c.inner_steps = 1;
        }),
    );
}

/// NoLoCo: four nodes make two seeded pairs that exchange (Δ, φ) with each other. Every round
/// each node's replica is what the coordinator computed for it, and each ends where its
/// replica ends in the protocol simulator; the coordinator's consensus does too.
#[test]
fn noloco_over_loopback_matches_the_simulator_replica_by_replica() {
    let run = Run::new(
        "noloco",
        config(4, 3).with(|c| {
            c.algo = Algorithm::NoLoCo;
        }),
    );
    let (mut c, ticket) = run.coordinator("coord");
    let machines = three_machines();
    let mut nodes: Vec<Proc> = (1..=4)
        .map(|i| run.node_on(&ticket, i, &[], machines.get(i as usize - 1).copied().unwrap_or(machines[0])))
        .collect();
    let consensus = state_hash(&c.finish());
    let outs: Vec<String> = nodes.iter_mut().map(|n| n.finish()).collect();
    let ds = Dataset::open(&run.data).unwrap();
    let mut p = ProtocolSim::new(run.cfg.clone(), &ds).unwrap();
    for i in 1..=4 {
        p.join(peer_id(i)).unwrap();
    }
    p.run_until(run.cfg.rounds).unwrap();
    assert_eq!(consensus, tessera_net::hex(&p.coordinator().state_hash()), "the consensus");
    let mut finals = Vec::new();
    for (i, o) in (1..=4).zip(&outs) {
        let states = node_states_full(o);
        assert_eq!(states.len() as u64, run.cfg.rounds, "node {i} reported every round");
        assert!(states.iter().all(|s| s.2 && s.3), "node {i}: every replica computed and agreed: {states:?}");
        let want = p.peer_state(&peer_id(i)).map(|s| (s.0, tessera_net::hex(&s.1)));
        let last = states.last().map(|s| (s.0, s.1.clone()));
        assert_eq!(last, want, "node {i} ends where its simulated replica ends");
        finals.push(last);
        let (from_peers, _) = blob_sources(o);
        assert!(from_peers > 0, "node {i} fetched its partner's blobs from the partner");
    }
    finals.sort();
    finals.dedup();
    assert!(finals.len() > 1, "the replicas differ: there is no global model");
    run.check_ledger();
    let spread = "SELECT COUNT(*) FROM rounds WHERE spread > 0";
    assert_eq!(run.count(spread), run.cfg.rounds as i64, "the replica spread is recorded each round");
}

/// Cheat drills end to end: a node sending the in-bounds model-replacement update is clipped
/// to the median bound (and its repeats are refused as replays), a node resending its last
/// update is refused as a replay, and the honest nodes are never refused and always agree.
/// (Spot checks are off here: this is the screening and clipping alone.)
#[test]
fn poisoning_and_replaying_nodes_are_clipped_and_refused() {
    let run = Run::new("cheats", config(4, 3).with(|c| c.validate = tessera_coord::Validate::Off));
    let (mut c, ticket) = run.coordinator("coord");
    let mut nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &[])).collect();
    nodes.push(run.node(&ticket, 3, &["--cheat", "replay"]));
    nodes.push(run.node(&ticket, 4, &["--cheat", "poison"]));
    c.finish();
    let log = c.log();
    let refused = |i: u8, what: &str| {
        let who = short_hex(&peer_id(i));
        log.lines().filter(|l| l.contains(&format!("message from {who} refused")) && l.contains(what)).count()
    };
    assert!(
        log.contains("update(s) over the median-norm bound were clipped"),
        "the poison is clipped:\n{log}"
    );
    // Bit for bit its round-0 update: refused in round 1, proven, slashed, refused from then on.
    assert_eq!(refused(3, "(a replay)"), 1, "the replayer is refused in round 1:\n{log}");
    assert!(ledger_column(&run, 3, 6) > 0, "and slashed:\n{}", run.ledger());
    assert_eq!(ledger_column(&run, 4, 6), 0, "the poisoner is clipped, not proven (checks are off)");
    for honest in [1, 2] {
        assert_eq!(refused(honest, ""), 0, "honest node {honest} is never refused:\n{log}");
        assert!(node_states(&nodes[honest as usize - 1].finish()).iter().all(|s| s.2), "honest nodes agree");
    }
    assert!(nodes[3].log().contains("DRILL: this node cheats (Poison)"));
    let rounds = run.cfg.rounds as i64;
    assert_eq!(run.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL"), rounds);
}

/// Column `col` (0: peer, 3: rewards, 6: slashed) of node `i`'s row in `tessera ledger`.
fn ledger_column(run: &Run, i: u8, col: usize) -> u64 {
    let (ledger, who) = (run.ledger(), short_hex(&peer_id(i)));
    let line = ledger.lines().find(|l| l.starts_with(&who)).unwrap_or_else(|| panic!("{who}:\n{ledger}"));
    line.split_whitespace().nth(col).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

/// The copy drill with real processes: a node resubmits, as its own, the update its twin
/// (an honest node with the same `--twin-dir`) committed this round. With the checks off, the
/// coordinator's screening refuses the copy every round, but does not slash it: which of two
/// identical commits is the copy, arrival order cannot prove (a copier with a faster link
/// commits first; `tessera vopr` seed 2682 framed an honest trainer so), so the spot checks
/// prove copies. Nobody honest is refused. A copier without a twin directory is refused at
/// start with a typed error.
#[test]
fn a_copying_node_is_refused_every_round() {
    let run = Run::new("copy", config(4, 3).with(|c| c.validate = tessera_coord::Validate::Off));
    let (mut c, ticket) = run.coordinator("coord");
    let twin = run.dir.join("twin").display().to_string();
    let mut nodes = vec![run.node(&ticket, 1, &["--twin-dir", &twin])];
    nodes.extend((2..=3).map(|i| run.node(&ticket, i, &[])));
    nodes.push(run.node(&ticket, 4, &["--cheat", "copy", "--twin-dir", &twin]));
    let mut lone = run.node(&ticket, 5, &["--cheat", "copy"]);
    c.finish();
    let log = c.log();
    let copier = short_hex(&peer_id(4));
    let copies = log
        .lines()
        .filter(|l| l.contains(&format!("message from {copier} refused")) && l.contains("a copy of"));
    assert_eq!(copies.count(), 3, "the copy is refused every round:\n{log}");
    assert_eq!(ledger_column(&run, 4, 6), 0, "screening slashes no copier:\n{}", run.ledger());
    for honest in [1, 2, 3] {
        let who = short_hex(&peer_id(honest));
        assert!(!log.lines().any(|l| l.contains(&format!("message from {who} refused"))), "{honest}:\n{log}");
        assert!(node_states(&nodes[honest as usize - 1].finish()).iter().all(|s| s.2), "honest nodes agree");
        assert_eq!(ledger_column(&run, honest, 6), 0, "honest node {honest} is never slashed");
    }
    assert!(nodes[3].log().contains("DRILL: this node cheats (Copy)"));
    assert_eq!(run.count("SELECT COUNT(*) FROM accepted"), 9, "only the three honest updates, each round");
    let st = lone.wait();
    assert!(!st.success() && lone.log().contains("--cheat copy needs --twin-dir"), "{}", lone.log());
}

/// Spot checks end to end: with every update checked, a node that trains only half of its
/// steps and a node sending the model-replacement update are proven to cheat in round 0 (the
/// re-run segment does not reach the committed state; the update is not the one the committed
/// final state gives), left out of the aggregate and refused from then on; the honest nodes
/// pass every check and agree.
#[test]
fn spot_checks_prove_skipping_and_poisoning_nodes() {
    // One segment of all four steps: every check re-runs the round and re-derives the update,
    // so each cheat is proven in its first round whatever the draw.
    let cfg = RunConfig { commit_every: 4, check_rate: 1.0, ..config(4, 3) };
    let run = Run::new("spot-checks", cfg);
    let (mut c, ticket) = run.coordinator("coord");
    let mut nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &[])).collect();
    nodes.push(run.node(&ticket, 3, &["--cheat", "skip-steps"]));
    nodes.push(run.node(&ticket, 4, &["--cheat", "poison"]));
    c.finish();
    let log = c.log();
    for (cheat, why) in [(3, "does not reach the committed state"), (4, "not the one its final state gives")]
    {
        let who = short_hex(&peer_id(cheat));
        assert!(log.contains(&format!("CHEAT: {who} proven to have cheated in round 0")), "{cheat}:\n{log}");
        assert!(log.contains(why), "node {cheat} fails its check: {why}\n{log}");
        let node = nodes[cheat as usize - 1].log();
        assert!(
            node.contains("the coordinator refuses this node from now on (round 0)"),
            "told why:\n{node}"
        );
    }
    for honest in [1, 2] {
        let who = short_hex(&peer_id(honest));
        assert!(!log.lines().any(|l| l.contains(&format!("message from {who} refused"))), "{log}");
        assert!(node_states(&nodes[honest as usize - 1].finish()).iter().all(|s| s.2), "honest nodes agree");
    }
    let q = |sql: &str| run.count(sql);
    assert_eq!(q("SELECT COUNT(DISTINCT peer) FROM verdicts WHERE cheat = 1"), 2);
    assert_eq!(q("SELECT COUNT(*) FROM verdicts WHERE passed = 1"), 6, "two honest nodes, three rounds");
    assert_eq!(q("SELECT COUNT(*) FROM accepted"), 6, "only the honest updates are aggregated");
    // The ledger: verified, the two cheats slashed, the honest nodes paid and never slashed.
    let ledger = run.ledger();
    assert!(ledger.contains("verified"), "{ledger}");
    for cheat in [3, 4] {
        assert!(ledger_column(&run, cheat, 6) > 0, "node {cheat} is slashed:\n{ledger}");
    }
    for honest in [1, 2] {
        assert_eq!(ledger_column(&run, honest, 6), 0, "{ledger}");
        assert!(ledger_column(&run, honest, 3) > 0, "{ledger}");
    }
    audited_and_tampered(&run);
}

/// The audit passes on the run as it is, recomputing every round from its accepted updates,
/// and names the entry when one byte of a ledger row, of an accepted update blob, or of a
/// stored state blob, is flipped.
fn audited_and_tampered(run: &Run) {
    let (ok, out) = run.audit();
    assert!(
        ok && out.contains("audit: OK") && out.contains("3 rounds (3 recomputed from 6 update blobs)"),
        "{out}"
    );
    let db = Connection::open(run.dir.join("coord").join("coordinator.sqlite")).unwrap();
    // One byte of an update accepted in round 1, flipped on disk.
    let accept: Vec<u8> =
        db.query_row("SELECT accept FROM rounds WHERE round = 1", [], |r| r.get(0)).unwrap();
    let Ok(Message::Accept { updates, .. }) = postcard::from_bytes::<Message>(&accept) else {
        panic!("an Accept")
    };
    let path = run.dir.join("coord").join("blobs").join(tessera_net::hex(&updates[1]));
    let blob = std::fs::read(&path).unwrap();
    let mut bad = blob.clone();
    bad[blob.len() / 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let (ok, out) = run.audit();
    assert!(!ok && out.contains("RoundClosed of round 1") && out.contains("the update of"), "{out}");
    std::fs::write(&path, &blob).unwrap();
    assert!(run.audit().0, "restored");
    let row: Vec<u8> = db.query_row("SELECT record FROM ledger WHERE seq = 5", [], |r| r.get(0)).unwrap();
    let mut bad = row.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1; // a bit of the signature
    db.execute("UPDATE ledger SET record = ?1 WHERE seq = 5", [&bad]).unwrap();
    let (ok, out) = run.audit();
    assert!(!ok && out.contains("audit: FAILED") && out.contains("record 5"), "{out}");
    db.execute("UPDATE ledger SET record = ?1 WHERE seq = 5", [&row]).unwrap();
    assert!(run.audit().0, "restored");
    // The final state's blob, flipped on disk.
    let h: Vec<u8> = db.query_row("SELECT state_hash FROM rounds WHERE round = 2", [], |r| r.get(0)).unwrap();
    let path = run.dir.join("coord").join("blobs").join(tessera_net::hex(&h));
    let mut blob = std::fs::read(&path).unwrap();
    blob[100] ^= 1;
    std::fs::write(&path, &blob).unwrap();
    let (ok, out) = run.audit();
    assert!(!ok && out.contains("RoundClosed of round 2") && out.contains("corrupt"), "{out}");
}

/// Validators as processes: every update is checked by one of two validators, one honest
/// and one that claims a mismatch on everything. The trainer that skips steps is proven in
/// round 0 (whichever validator checks it, the referee confirms a failing finding), the lying
/// validator by the dispute over the first update it accuses (the game narrows its lie to one
/// operator, which the coordinator recomputes); both are refused from then on, and nobody
/// honest is.
#[test]
fn validators_check_trainers_and_a_lying_validator_is_refused() {
    let cfg = RunConfig { commit_every: 4, check_rate: 1.0, ..config(3, 3) };
    let run = Run::new("validators", cfg);
    let (mut c, ticket) = run.coordinator("coord");
    let mut v = [
        run.node(&ticket, 5, &["--validator"]),
        run.node(&ticket, 6, &["--validator", "--cheat", "lying-validator"]),
    ];
    std::thread::sleep(Duration::from_millis(500)); // the validators are there before round 0
    let mut nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &[])).collect();
    nodes.push(run.node(&ticket, 3, &["--cheat", "skip-steps"]));
    c.finish();
    let log = c.log();
    let shirker = short_hex(&peer_id(3));
    assert!(log.contains(&format!("CHEAT: {shirker} proven to have cheated in round 0")), "{log}");
    // Which validator gets which check depends on the order reveals arrive in: the liar may
    // first be handed the shirker (and be right by accident), so it is proven in the first
    // round it is handed honest work, not necessarily round 0.
    let liar = short_hex(&peer_id(6));
    assert!(log.contains(&format!("CHEAT: {liar} proven to have cheated in round")), "{log}");
    for honest in [1, 2, 5] {
        let who = short_hex(&peer_id(honest));
        assert!(!log.lines().any(|l| l.contains(&format!("message from {who} refused"))), "{honest}: {log}");
    }
    for n in &mut nodes[..2] {
        assert!(node_states(&n.finish()).iter().all(|s| s.2), "honest nodes agree");
    }
    let out = v[0].finish();
    assert!(out.contains("validator checks="), "the honest validator reports its checks: {out}");
    assert!(v[0].log().contains("checked"), "the honest validator checked work:\n{}", v[0].log());
    assert!(v[1].log().contains("DRILL: this validator cheats (Lying)"));
    let q = |sql: &str| run.count(sql);
    assert_eq!(q("SELECT COUNT(DISTINCT peer) FROM verdicts WHERE cheat = 1"), 2, "the shirker and the liar");
    // The liar's mismatch went to the dispute game, narrowed to one operator it got wrong.
    let pinned = "SELECT COUNT(*) FROM disputes WHERE loser = 'validator' AND op IS NOT NULL AND forfeit = 0";
    assert!(q(pinned) >= 1, "a dispute decided at one operator:\n{log}");
    assert!(log.contains("operator") && log.contains("the validator loses"), "{log}");
    log.lines().filter(|l| l.contains("dispute between")).for_each(|l| eprintln!("{l}"));
    assert_eq!(q("SELECT COUNT(*) FROM accepted"), 6, "only the honest updates are aggregated");
    disputes_audited(&run);
}

/// The audit recomputes every operator a dispute was decided by, and names the dispute when
/// one byte of that operator's stored inputs is flipped.
fn disputes_audited(run: &Run) {
    let (ok, out) = run.audit();
    assert!(ok && !out.contains(" 0 disputed operators recomputed"), "{out}");
    let db = Connection::open(run.dir.join("coord").join("coordinator.sqlite")).unwrap();
    let mut rows = db.prepare("SELECT record FROM ledger ORDER BY seq").unwrap();
    let records: Vec<Vec<u8>> = rows.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let evidence = records
        .iter()
        .find_map(|b| match tessera_ledger::Record::decode(b).unwrap().entry {
            tessera_ledger::Entry::DisputeResolved { evidence: Some(e), .. } => Some(e),
            _ => None,
        })
        .expect("a dispute decided by one operator");
    let path = run.dir.join("coord").join("blobs").join(tessera_net::hex(&evidence.inputs));
    let mut blob = std::fs::read(&path).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    std::fs::write(&path, &blob).unwrap();
    let (ok, out) = run.audit();
    assert!(!ok && out.contains("DisputeResolved") && out.contains("inputs"), "{out}");
}

/// Scoring by a validator process: it fetches each accepted update and the round's start
/// state, scores the update and reports; the coordinator audits a share of the scores by
/// scoring them itself, and every score is recorded with who scored it.
#[test]
fn a_validator_scores_the_updates() {
    let cfg = RunConfig { check_rate: 0.0, score_batches: 1, decoy_rate: 0.5, ..config(3, 3) };
    let run = Run::new("validator-scores", cfg);
    let (mut c, ticket) = run.coordinator("coord");
    let mut v = run.node(&ticket, 5, &["--validator"]);
    std::thread::sleep(Duration::from_millis(500)); // the validator is there before round 0
    let mut nodes: Vec<Proc> = (1..=3).map(|i| run.node(&ticket, i, &[])).collect();
    c.finish();
    let log = c.log();
    let out = v.finish();
    assert!(out.contains("scores=") && !out.contains("scores=0 "), "the validator scored: {out}");
    let q = |sql: &str| run.count(sql);
    assert_eq!(q("SELECT COUNT(*) FROM scores"), 9, "every accepted update scored:\n{log}");
    assert!(q("SELECT COUNT(*) FROM scores WHERE validator IS NOT NULL") >= 1, "{log}");
    assert!(log.contains("scored by validator"), "{log}");
    assert!(!log.contains("CHEAT"), "the honest validator is not refused:\n{log}");
    for n in &mut nodes {
        assert!(node_states(&n.finish()).iter().all(|s| s.2), "honest nodes agree");
    }
}

#[test]
fn a_node_killed_mid_round_is_left_out_and_its_unit_reassigned() {
    killed_node("kill-node", config(3, 4));
}

/// The same for an all-gather algorithm: the survivors combine the two accepted updates.
#[test]
fn a_node_killed_mid_round_of_a_demo_run_is_left_out() {
    killed_node(
        "kill-node-demo",
        config(3, 4).with(|c| {
            c.algo = Algorithm::DeMo;
            c.inner_steps = 1;
        }),
    );
}

/// The same for NoLoCo: the killed node's partners step with the members that are left.
#[test]
fn a_node_killed_mid_round_of_a_noloco_run_is_left_out() {
    killed_node("kill-node-nl", config(3, 4).with(|c| c.algo = Algorithm::NoLoCo));
}

fn killed_node(name: &str, cfg: RunConfig) {
    // A round's training takes about 1 s whatever H is, so the kill lands mid-round.
    let step_ms = (1000 / cfg.inner_steps.max(1)).to_string();
    let run = Run::new(name, cfg);
    let (mut c, ticket) = run.coordinator("coord");
    let slow = ["--slow-step-ms", &step_ms];
    let mut nodes: Vec<Proc> = (1..=3).map(|i| run.node(&ticket, i, &slow)).collect();
    // Round 1 is announced: the nodes are training it (about 1 s). Kill one.
    run.wait_count("SELECT COUNT(*) FROM rounds WHERE round = 1", 1);
    std::thread::sleep(Duration::from_millis(300));
    nodes[1].kill9();
    let victim = peer_id(2);
    c.finish();
    run.check_ledger();
    let r1 = run.assignments(1);
    let lost = r1.iter().find(|a| a.0 == victim).map(|a| (a.1, a.2)).unwrap();
    let acc1 = run.count("SELECT COUNT(*) FROM accepted WHERE round = 1");
    assert_eq!(acc1, 2, "round 1 completed without the killed node");
    let r2 = run.assignments(2);
    assert!(r2.iter().all(|a| a.0 != victim));
    assert_eq!((r2[0].1, r2[0].2), lost, "its unit is the first handed out in round 2");
    for i in [0, 2] {
        assert!(node_states(&nodes[i].finish()).iter().all(|s| s.2));
    }
}

#[test]
fn a_node_joining_mid_run_syncs_and_contributes() {
    // Enough rounds (about 1 s each) that the late node joins well before the last one.
    let run = Run::new("join", config(2, 8));
    let (mut c, ticket) = run.coordinator("coord");
    let slow = ["--slow-step-ms", "250"];
    let mut nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &slow)).collect();
    run.wait_count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL", 1);
    nodes.push(run.node(&ticket, 3, &slow));
    c.finish();
    run.check_ledger();
    let late = tessera_net::hex(&peer_id(3));
    let contributed: i64 = run
        .db()
        .query_row("SELECT COUNT(*) FROM accepted WHERE hex(peer) = upper(?1)", [&late], |r| r.get(0))
        .unwrap();
    assert!(contributed >= 1, "the late node's updates were accepted");
    let out = nodes[2].finish();
    let states = node_states(&out);
    assert!(nodes[2].log().contains("loaded checkpoint of round"));
    let (from_peers, _) = blob_sources(&out);
    assert!(from_peers > 0, "the late node fetched (part of) its checkpoint from the members");
    assert_eq!(states.last().map(|s| (s.0, s.2)), Some((run.cfg.rounds, true)));
}

#[test]
fn a_killed_coordinator_restarts_from_disk_and_loses_nothing() {
    killed_coordinator("kill-coord", config(3, 5));
}

/// NoLoCo's restarted coordinator restores every member's replica from its store.
#[test]
fn a_killed_coordinator_of_a_noloco_run_restarts_with_every_replica() {
    killed_coordinator(
        "kill-coord-nl",
        config(4, 5).with(|c| {
            c.algo = Algorithm::NoLoCo;
        }),
    );
}

/// The same for an all-gather algorithm, whose trainers fetch every accepted update.
#[test]
fn a_killed_coordinator_of_a_sparseloco_run_restarts_and_loses_nothing() {
    killed_coordinator(
        "kill-coord-sl",
        config(3, 5).with(|c| {
            c.algo = Algorithm::SparseLoCo;
        }),
    );
}

fn killed_coordinator(name: &str, cfg: RunConfig) {
    let run = Run::new(name, cfg);
    let (mut c, ticket) = run.coordinator("coord1");
    let slow = ["--slow-step-ms", "150"];
    let n = run.cfg.min_peers as u8;
    let copy = run.dir.join("node1.ledger").display().to_string();
    let kept = ["--slow-step-ms", "150", "--ledger-copy", copy.as_str()];
    let mut nodes: Vec<Proc> =
        (1..=n).map(|i| run.node(&ticket, i, if i == 1 { &kept[..] } else { &slow[..] })).collect();
    // Kill it while round 2 is being trained.
    run.wait_count("SELECT COUNT(*) FROM rounds WHERE round = 2", 1);
    std::thread::sleep(Duration::from_millis(200));
    c.kill9();
    let (mut c2, ticket2) = run.coordinator("coord2");
    assert_eq!(ticket, ticket2, "same identity and address after a restart");
    let final_hash = state_hash(&c2.finish());
    assert!(c2.log().contains("resuming at round 2"), "{}", c2.log());
    let outs: Vec<String> = nodes.iter_mut().map(|p| p.finish()).collect();
    run.check_ledger();
    // The restarted coordinator continued the same signed chain: it verifies whole, and
    // every round was paid once.
    let ledger = run.ledger();
    assert!(ledger.contains("verified"), "{ledger}");
    assert!(ledger.contains(&format!("{} rounds paid", run.cfg.rounds)), "{ledger}");
    // And the audit of the run, across the kill and the restart, passes from genesis.
    let (ok, audit) = run.audit();
    let rounds = format!("{} rounds", run.cfg.rounds);
    assert!(ok && audit.contains("audit: OK") && audit.contains(&rounds), "{audit}");
    // Every round is recomputed from its updates, but NoLoCo's, which close through replicas.
    let noloco = run.cfg.algo == Algorithm::NoLoCo;
    let recomputed = format!("({} recomputed", if noloco { 0 } else { run.cfg.rounds });
    assert!(audit.contains(&recomputed), "{audit}");
    assert!(audit.contains(&final_hash), "the audit ends in the run's final state: {audit}");
    // Node 1 kept its copy of the ledger on disk across the coordinator's restart: it audits
    // whole, as the same chain, to the same final state.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["audit", &copy]).output().unwrap();
    let copied = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && copied.contains("a node's copy") && copied.contains(&rounds), "{copied}");
    assert!(copied.contains(&final_hash), "{copied}");
    // No accepted update lost or applied twice: the state equals an uninterrupted run's.
    let ids: Vec<u8> = (1..=n).collect();
    assert_eq!(final_hash, simulated(&run, &ids));
    for (i, o) in ids.iter().zip(&outs) {
        let last = node_states(o).last().map(|s| (s.0, s.2));
        assert_eq!(last, Some((run.cfg.rounds, true)), "node {i} ends agreeing");
    }
}

#[test]
fn a_node_that_computes_a_different_state_is_flagged_and_resyncs() {
    let run = Run::new("diverge", config(2, 4));
    let (mut c, ticket) = run.coordinator("coord");
    let mut good = run.node(&ticket, 1, &[]);
    let mut bad = run.node(&ticket, 2, &["--fault-round", "1"]);
    c.finish();
    good.finish();
    let states = node_states(&bad.finish());
    // After round 1 (state 2) it disagreed, once; it took the checkpoint and agreed after.
    assert_eq!(states.iter().filter(|s| !s.2).map(|s| s.0).collect::<Vec<_>>(), [2]);
    assert!(states.iter().filter(|s| s.0 > 2).all(|s| s.2));
    assert!(bad.log().contains("loaded checkpoint of round 2"), "{}", bad.log());
    let flagged = run.count("SELECT COUNT(*) FROM reports WHERE agrees = 0");
    assert_eq!(flagged, 1);
    assert!(c.log().contains("DISAGREEMENT"), "{}", c.log());
    assert_eq!(run.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL"), 4);
}

/// Regressions (issue: hostile peers): a connection that never joins used to be kept, with
/// its outbox, for ever, and was served the coordinator's blobs. The coordinator serves it
/// none (the run's initial state, which the member then trains from, is "missing" to it) and
/// closes it once it has not joined for 5 s, and the run is not disturbed.
#[test]
fn a_connection_that_never_joins_is_served_nothing_and_closed() {
    let cfg = config(1, 1);
    let initial = tessera_coord::RunSpec::new(cfg.clone()).unwrap().initial_state().hash();
    let run = Run::new("stranger", cfg);
    let (mut c, ticket) = run.coordinator("coord");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let stranger = short_hex(&peer_id(98));
    rt.block_on(async {
        let (id, addr) = tessera_net::parse_ticket(&ticket).unwrap();
        let net = tessera_net::Net::bind(secret(98), &tessera_net::NetConfig::default()).await.unwrap();
        let conn = net.connect(id, addr).await.unwrap();
        let got = net.fetch_blob(&conn, &initial, 1 << 30).await;
        assert!(
            matches!(got, Err(tessera_net::NetError::Missing(_))),
            "a stranger is served no blob: {got:?}"
        );
        tokio::time::sleep(Duration::from_secs(7)).await;
        net.close().await;
    });
    let mut node = run.node(&ticket, 1, &[]);
    c.finish();
    node.finish();
    let log = c.log();
    let closed = format!("closed the connection of {stranger}, which did not join");
    assert!(log.contains(&closed), "{closed:?} missing in:\n{log}");
    assert_eq!(run.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL"), 1, "and the run went on");
}

#[test]
fn hostile_frames_are_refused_with_typed_errors_and_the_run_goes_on() {
    let run = Run::new("hostile", config(2, 3));
    let (mut c, ticket) = run.coordinator("coord");
    let nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &["--slow-step-ms", "100"])).collect();
    run.wait_count("SELECT COUNT(*) FROM rounds", 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let (id, addr) = tessera_net::parse_ticket(&ticket).unwrap();
        let me = SigningKey::from_bytes(&secret(99));
        let net = tessera_net::Net::bind(secret(99), &tessera_net::NetConfig::default()).await.unwrap();
        let conn = net.connect(id, addr).await.unwrap();
        let send = |f: Vec<u8>| {
            let (net, conn) = (net.clone(), conn.clone());
            async move { net.send_frame(&conn, &f).await.unwrap() }
        };
        // Garbage, then a frame that declares more than the limit.
        send(b"not a frame at all, and long enough to have a header and a signature: ".repeat(2)).await;
        net.send_raw(&conn, tessera_wire::MAX_FRAME as u32 + 10, &[0u8; 64]).await.unwrap();
        // Signed by us, claiming to be node 1: refused as another peer's before its
        // signature is checked.
        let mut forged =
            tessera_wire::encode(&me, 1, &Message::Join { addrs: vec![], stake: 1_000 }).unwrap();
        let body_start = 10;
        forged[body_start..body_start + 32].copy_from_slice(&peer_id(1));
        send(forged).await;
        // Naming us, with a broken signature.
        let mut broken =
            tessera_wire::encode(&me, 2, &Message::Join { addrs: vec![], stake: 1_000 }).unwrap();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        send(broken).await;
        // A valid frame of node 1's, relayed over our connection.
        let relayed = tessera_wire::encode(
            &SigningKey::from_bytes(&secret(1)),
            1,
            &Message::Join { addrs: vec![], stake: 1_000 },
        );
        send(relayed.unwrap()).await;
        // Join properly, then replay the same frame, then commit to a wrong round.
        let join = tessera_wire::encode(&me, 5, &Message::Join { addrs: vec![], stake: 1_000 }).unwrap();
        send(join.clone()).await;
        send(join).await;
        let bad = Message::Commit {
            round: 999,
            state: [0; 32],
            update: [1; 32],
            update_len: 10,
            start_hash: [0; 32],
            end_hash: [0; 32],
            root: [0; 32],
            sig: vec![],
        };
        send(tessera_wire::encode(&me, 6, &bad).unwrap()).await;
        // A member flooding valid frames: past its burst and rate they are dropped unread.
        for i in 0..5_000u64 {
            send(tessera_wire::encode(&me, 100 + i, &Message::Heartbeat { round: 0, step: 0 }).unwrap())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        net.close().await;
    });
    c.finish();
    drop(nodes);
    run.check_ledger();
    let log = c.log();
    for want in [
        "refused: bad magic",
        "refused: frame of more than",
        "refused: signature does not verify",
        "refused: signed by another peer",
        "refused: sequence number 5 is not above",
        "refused: message for round 999",
        "refused: over 500 frames a second",
    ] {
        assert!(log.contains(want), "missing {want:?} in:\n{log}");
    }
}

/// The attack test "a member that never commits" (issue: hostile peers), with real processes:
/// a node that heartbeats but takes 10 minutes a step never commits. The round timeout is
/// 300 s, but each round closes on the deadline adapted to the members' speeds once the
/// others have committed, and after 3 rounds without a commit the member is dropped; the run
/// of 4 rounds ends in far less than one round timeout.
#[test]
fn a_member_that_never_commits_does_not_hold_the_rounds() {
    let cfg = config(3, 4).with(|c| {
        c.round_timeout_ms = 300_000;
        c.max_round_ms = 300_000;
        c.min_round_ms = 500;
    });
    let run = Run::new("never-commits", cfg);
    let (mut c, ticket) = run.coordinator("coord");
    let t0 = Instant::now();
    let mut nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &[])).collect();
    let _stalled = run.node(&ticket, 3, &["--slow-step-ms", "600000"]);
    c.finish();
    let took = t0.elapsed();
    for n in &mut nodes {
        n.finish();
    }
    assert!(took < Duration::from_secs(150), "4 rounds took {took:?}, over half a round timeout");
    assert_eq!(run.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL"), 4);
    assert_eq!(run.count("SELECT COUNT(*) FROM accepted"), 8, "both honest updates, every round");
    let log = c.log();
    let stalled = short_hex(&peer_id(3));
    assert!(log.contains(&format!("{stalled} left")), "dropped after 3 rounds without a commit:\n{log}");
}

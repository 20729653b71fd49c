//! What the tests with real processes share: a run's directory, dataset and config, the
//! coordinator and node processes (killed when dropped), and readers of what they print and
//! store.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use tessera_coord::{Message, RunConfig};
use tessera_data::{ingest_bytes, Dataset, IngestOptions};
use tessera_model::fixtures::SONNETS;
use tessera_sim::ProtocolSim;

pub const WAIT: Duration = Duration::from_secs(240);

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-net-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn dataset(dir: &Path) -> PathBuf {
    let d = dir.join("data");
    let opts = IngestOptions { shard_tokens: 8192, ..IngestOptions::default() };
    ingest_bytes(SONNETS, "sonnets", &d, &opts).unwrap();
    d
}

/// Generous timings: the tests run in parallel on two cores, and a node wrongly taken for
/// silent or late would change the membership history the simulator comparisons rely on.
pub fn config(peers: usize, rounds: u64) -> RunConfig {
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
pub struct Proc {
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Proc {
    pub fn start(dir: &Path, name: &str, args: &[String]) -> Proc {
        Self::start_env(dir, name, args, &[])
    }

    pub fn start_env(dir: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
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

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for a clean exit.
    pub fn finish(&mut self) -> String {
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
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t0.elapsed() < WAIT, "process did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
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
pub struct Machine {
    pub threads: usize,
    pub simd: Option<&'static str>,
}

/// Three different machines: the CPU's fastest path on one thread, the scalar path on two
/// threads, and AVX2 where the CPU has it (else scalar) on one. Their bits must agree.
pub fn three_machines() -> [Machine; 3] {
    let avx2 = tessera_tensor::simd::SimdPath::Avx2.supported();
    [
        Machine { threads: 1, simd: None },
        Machine { threads: 2, simd: Some("scalar") },
        Machine { threads: 1, simd: Some(if avx2 { "avx2" } else { "scalar" }) },
    ]
}

pub struct Run {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub cfg: RunConfig,
    pub port: u16,
}

pub fn secret(i: u8) -> [u8; 32] {
    [i; 32]
}

pub fn peer_id(i: u8) -> [u8; 32] {
    SigningKey::from_bytes(&secret(i)).verifying_key().to_bytes()
}

pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Run {
    pub fn new(name: &str, cfg: RunConfig) -> Run {
        let dir = tmp(name);
        let data = dataset(&dir);
        std::fs::write(dir.join("run.toml"), cfg.to_toml()).unwrap();
        Run { dir, data, cfg, port: free_port() }
    }

    pub fn coordinator(&self, name: &str) -> (Proc, String) {
        self.coordinator_with(name, &[])
    }

    /// The coordinator, with `extra` arguments.
    pub fn coordinator_with(&self, name: &str, extra: &[&str]) -> (Proc, String) {
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
        let mut args: Vec<String> = args.map(String::from).to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        let p = Proc::start(&self.dir, name, &args);
        let t0 = Instant::now();
        loop {
            if let Ok(t) = std::fs::read_to_string(cdir.join("ticket")) {
                return (p, t.trim().to_string());
            }
            assert!(t0.elapsed() < WAIT, "no ticket:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn node(&self, ticket: &str, i: u8, extra: &[&str]) -> Proc {
        self.node_on(ticket, i, extra, Machine { threads: 1, simd: None })
    }

    /// A node computing with `m`'s thread count and SIMD path.
    pub fn node_on(&self, ticket: &str, i: u8, extra: &[&str], m: Machine) -> Proc {
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
    pub fn audit(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["audit", &self.dir.join("coord").display().to_string()])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// What `tessera ledger` prints of the coordinator's directory (it must succeed).
    pub fn ledger(&self) -> String {
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

    pub fn db(&self) -> Connection {
        Connection::open_with_flags(
            self.dir.join("coord").join("coordinator.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap_or(0)
    }

    /// Waits until `sql` counts at least `n`.
    pub fn wait_count(&self, sql: &str, n: i64) {
        let t0 = Instant::now();
        while self.count(sql) < n {
            assert!(t0.elapsed() < WAIT, "timed out waiting for {sql} >= {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `RoundStart` assignments of `round` as (peer, data_round, slot).
    pub fn assignments(&self, round: u64) -> Vec<([u8; 32], u64, u64)> {
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
    pub fn check_ledger(&self) {
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
pub fn short_hex(p: &[u8; 32]) -> String {
    tessera_net::hex(&p[..4])
}

/// Blob bytes a node fetched from other nodes and from the coordinator (its last line).
pub fn blob_sources(stdout: &str) -> (u64, u64) {
    let l = stdout.lines().find(|l| l.starts_with("traffic ")).expect("a traffic line");
    let field = |k: &str| -> u64 {
        let v = l.split(' ').find_map(|f| f.strip_prefix(k)).expect("field");
        v.parse().expect("number")
    };
    (field("blob_bytes_from_peers="), field("from_coordinator="))
}

pub fn state_hash(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("state-hash: ")).expect("state-hash line").to_string()
}

/// The per-round states a node printed: (round, hash, agrees, computed).
pub fn node_states_full(stdout: &str) -> Vec<(u64, String, bool, bool)> {
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
pub fn node_states(stdout: &str) -> Vec<(u64, String, bool)> {
    node_states_full(stdout).into_iter().map(|s| (s.0, s.1, s.2)).collect()
}

/// The protocol simulator's final state for peers `ids` all present from the start.
pub fn simulated(run: &Run, ids: &[u8]) -> String {
    let ds = Dataset::open(&run.data).unwrap();
    let mut p = ProtocolSim::new(run.cfg.clone(), &ds).unwrap();
    for &i in ids {
        p.join(peer_id(i)).unwrap();
    }
    p.run_until(run.cfg.rounds).unwrap();
    tessera_net::hex(&p.coordinator().state_hash())
}

/// One HTTP/1.1 request to `base` (`http://host:port/`): the status and the body.
pub fn http(base: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    // Every answer here has a Content-Length (JSON, HTML and the metrics are not streamed).
    Ok((status, body.to_string()))
}

/// Waits for the coordinator's dashboard address (`<dir>/coord/http`).
pub fn dashboard(run: &Run) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(u) = std::fs::read_to_string(run.dir.join("coord").join("http")) {
            return u.trim().to_string();
        }
        assert!(t0.elapsed() < WAIT, "no dashboard address");
        std::thread::sleep(Duration::from_millis(20));
    }
}

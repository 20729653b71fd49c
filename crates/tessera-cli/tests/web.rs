//! The coordinator's HTTP service with real processes on loopback (issue: see the run): its
//! JSON API and `/metrics` follow a live run, agree with what the coordinator stored, and
//! refuse bad requests with typed errors.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tessera_coord::Message;

/// What the test saw of the API while the run was live: the last good answer of each path.
#[derive(Default)]
struct Seen {
    run: Option<Value>,
    peers: Option<Value>,
    rounds: BTreeMap<u64, Value>,
    ledger: BTreeMap<u64, Value>,
    verification: Option<Value>,
    metrics: Vec<prometheus_parse::Scrape>,
}

fn json(url: &str, path: &str) -> Option<Value> {
    match http(url, "GET", path) {
        Ok((200, body)) => {
            Some(serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
        }
        _ => None, // not up yet, or gone
    }
}

fn scrape(url: &str) -> Option<prometheus_parse::Scrape> {
    let (status, body) = http(url, "GET", "/metrics").ok()?;
    (status == 200).then(|| {
        let lines = body.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("the text format parses")
    })
}

fn sample(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples.iter().find(|m| m.metric == name && label.is_none_or(|(k, v)| m.labels.get(k) == Some(v))).map(
        |m| match m.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        },
    )
}

/// The (`a`, `b`) string fields of each object of a JSON array.
fn pairs(v: &Value, a: &str, b: &str) -> Vec<(String, String)> {
    let field = |o: &Value, k: &str| o[k].as_str().unwrap_or_else(|| panic!("no {k} in {o}")).to_string();
    v.as_array().expect("an array").iter().map(|o| (field(o, a), field(o, b))).collect()
}

/// Polls every API path until the coordinator exits.
fn watch(url: &str, coord: &mut Proc) -> Seen {
    let mut seen = Seen::default();
    let t0 = Instant::now();
    while coord.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < WAIT, "the run did not end");
        if let Some(v) = json(url, "/api/run") {
            seen.run = Some(v);
        }
        if let Some(v) = json(url, "/api/peers") {
            seen.peers = Some(v);
        }
        if let Some(page) = json(url, "/api/rounds?from=0") {
            for r in page["rounds"].as_array().unwrap() {
                seen.rounds.insert(r["round"].as_u64().unwrap(), r.clone());
            }
        }
        let from = seen.ledger.len();
        if let Some(page) = json(url, &format!("/api/ledger?from={from}")) {
            for e in page["entries"].as_array().unwrap() {
                seen.ledger.insert(e["seq"].as_u64().unwrap(), e.clone());
            }
        }
        if let Some(v) = json(url, "/api/verification") {
            seen.verification = Some(v);
        }
        if let Some(m) = scrape(url) {
            seen.metrics.push(m);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

/// Two honest trainers and one that never commits, 4 rounds: every answer of the API is
/// checked against the coordinator's store, the metrics move with the run, and bad requests
/// get typed errors.
#[test]
fn the_api_and_metrics_follow_a_live_run_and_agree_with_the_store() {
    let cfg = config(3, 4).with(|c| c.min_round_ms = 500);
    let run = Run::new("web-api", cfg);
    let (mut coord, ticket) = run.coordinator_with("coord", &["--http", "127.0.0.1:0"]);
    let url = dashboard(&run);
    assert!(coord.stdout().contains(&format!("dashboard: {url}")), "the address is printed");
    // Bad requests, while it runs: only GET, bounded pages, typed errors.
    let (status, _) = http(&url, "POST", "/api/run").unwrap();
    assert_eq!(status, 405, "anything but GET is refused");
    let (status, body) = http(&url, "GET", "/api/rounds?from=minus-one").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("\"error\""), "a typed JSON error: {body}");
    let (status, _) = http(&url, "GET", "/no/such/page").unwrap();
    assert_eq!(status, 404);
    let (status, page) = http(&url, "GET", "/").unwrap();
    assert!(status == 200 && page.contains("<canvas id=\"loss\""), "the dashboard is served");
    let _nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &[])).collect();
    let _stalled = run.node(&ticket, 3, &["--slow-step-ms", "600000"]);
    let seen = watch(&url, &mut coord);
    // Rounds: the same state, the same accepted updates and the same typed-then-worded
    // rejections as the coordinator's own records.
    assert!(seen.rounds.len() >= 3, "most rounds were seen live: {:?}", seen.rounds.keys());
    let db = run.db();
    let mut no_commit = 0;
    for (round, r) in &seen.rounds {
        let (accept, state): (Vec<u8>, Vec<u8>) = db
            .query_row("SELECT accept, state_hash FROM rounds WHERE round = ?1", [*round as i64], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        assert_eq!(r["state_hash"], tessera_net::hex(&state), "round {round}'s state");
        let Message::Accept { accepted, updates, rejected, .. } = postcard::from_bytes(&accept).unwrap()
        else {
            panic!("round {round}: not an Accept")
        };
        let api_acc = pairs(&r["accepted"], "peer", "update");
        let stored: Vec<(String, String)> =
            accepted.iter().zip(&updates).map(|(p, u)| (tessera_net::hex(p), tessera_net::hex(u))).collect();
        assert_eq!(api_acc, stored, "round {round}'s accepted updates");
        let api_rej = pairs(&r["rejected"], "peer", "reason");
        let stored: Vec<(String, String)> =
            rejected.iter().map(|(p, why)| (tessera_net::hex(p), why.clone())).collect();
        assert_eq!(api_rej, stored, "round {round}'s rejections and their reasons");
        no_commit += r["rejected"].as_array().unwrap().iter().filter(|x| x["kind"] == "no_commit").count();
        // (A round can close with no update when both honest trainers miss its deadline on a
        // loaded machine: then it has no loss and no bytes to show.)
        if !accepted.is_empty() {
            assert!(r["train_loss"].as_f64().is_some_and(|l| l > 0.0), "the trainers' losses are shown");
            assert!(r["ddp_bytes"].as_u64().unwrap() > r["update_bytes"].as_u64().unwrap());
        }
    }
    assert!(no_commit >= 1, "the stalled member's rounds are left out as no_commit");
    // The ledger: every entry seen is the stored record of that number.
    assert!(!seen.ledger.is_empty());
    for (seq, e) in &seen.ledger {
        let rec: Vec<u8> = db
            .query_row("SELECT record FROM ledger WHERE seq = ?1", [*seq as i64], |row| row.get(0))
            .unwrap();
        let rec = tessera_ledger::Record::decode(&rec).unwrap();
        assert_eq!(e["hash"], tessera_net::hex(&rec.hash()), "ledger entry {seq}");
        assert_eq!(e["kind"], rec.entry.kind());
    }
    // Verification: every check shown is the stored verdict of that round and peer.
    let v = seen.verification.expect("the verification page was seen");
    let checks = v["checks"].as_array().unwrap();
    assert!(!checks.is_empty(), "spot checks ran and were shown: {v}");
    for c in checks {
        let (round, peer) = (c["round"].as_u64().unwrap(), c["peer"].as_str().unwrap());
        let peer_bytes =
            (0..32).map(|i| u8::from_str_radix(&peer[2 * i..2 * i + 2], 16).unwrap()).collect::<Vec<u8>>();
        let (segment, passed, outcome): (i64, bool, String) = db
            .query_row(
                "SELECT segment, passed, outcome FROM verdicts WHERE round = ?1 AND peer = ?2",
                rusqlite::params![round as i64, peer_bytes],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!((c["segment"].as_i64(), c["passed"].as_bool()), (Some(segment), Some(passed)), "{c}");
        assert_eq!(c["outcome"], outcome);
    }
    assert_eq!(v["next_check"].as_u64(), Some(checks.len() as u64), "one page holds them all");
    // The run: its ledger head is the stored record it names.
    let r = seen.run.expect("the run was seen");
    let entries = r["ledger_entries"].as_u64().unwrap();
    let head: Vec<u8> = db
        .query_row("SELECT record FROM ledger WHERE seq = ?1", [(entries - 1) as i64], |row| row.get(0))
        .unwrap();
    assert_eq!(r["ledger_head"], tessera_net::hex(&tessera_ledger::Record::decode(&head).unwrap().hash()));
    assert_eq!(r["algorithm"], "diloco");
    // Peers: both honest trainers, as trainers, with their stake and what they earned.
    let peers = seen.peers.expect("the peers were seen");
    let peers = peers["peers"].as_array().unwrap();
    for i in 1..=2u8 {
        let p = peers
            .iter()
            .find(|p| p["id"] == tessera_net::hex(&peer_id(i)))
            .expect("an honest trainer is listed");
        assert_eq!((p["role"].as_str(), p["state"].as_str()), (Some("trainer"), Some("active")));
        assert!(p["rounds_delivered"].as_u64().unwrap() >= 2 && p["stake"].as_u64().unwrap() > 0);
    }
    // Metrics: a real parser reads them, and the counters moved with the run.
    let (first, last) = (seen.metrics.first().unwrap(), seen.metrics.last().unwrap());
    let rounds = |s| sample(s, "tessera_rounds_total", None).unwrap();
    assert!(rounds(last) > rounds(first), "the round counter moved: {} -> {}", rounds(first), rounds(last));
    let accepted = sample(last, "tessera_updates_accepted_total", None).unwrap();
    let stored = run.count(&format!("SELECT COUNT(*) FROM accepted WHERE round < {}", rounds(last) as i64));
    assert_eq!(accepted, stored as f64, "the accepted updates of the rounds closed so far");
    let left_out = sample(last, "tessera_updates_rejected_total", Some(("reason", "no_commit")));
    assert!(left_out.is_some_and(|n| n >= 1.0), "rejections are counted by reason");
    assert!(sample(last, "tessera_bytes_received_total", None).unwrap() > 0.0);
    assert!(sample(last, "tessera_members", None).is_some());
}

/// `--log-format json`: every line a daemon writes to stderr is one JSON object with a
/// level, a message and who wrote it.
#[test]
fn json_logs_are_one_object_a_line() {
    let run = Run::new("json-logs", config(1, 1));
    let (mut coord, ticket) = run.coordinator_with("coord", &["--log-format", "json"]);
    let mut node = run.node(&ticket, 1, &["--log-format", "json"]);
    coord.finish();
    node.finish();
    for (who, log) in [("coordinator", coord.log()), ("node", node.log())] {
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{who} logged:\n{log}");
        for l in lines {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {l}"));
            assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{who}: {l}");
            assert!(v["fields"]["who"].is_string(), "{who}: {l}");
        }
    }
}

/// The `status: URL` line a node printed.
fn status_url(node: &Proc) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(u) = node.stdout().lines().find_map(|l| l.strip_prefix("status: ")) {
            return u.trim().to_string();
        }
        assert!(t0.elapsed() < WAIT, "no status address:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tessera node --http`: the node's own status follows its run (phases, its state and
/// whether it agrees, its bytes, its balance) and matches the coordinator's word; its
/// metrics parse and move.
#[test]
fn a_nodes_status_page_follows_its_run_and_agrees_with_the_coordinator() {
    let run = Run::new("web-node", config(1, 4).with(|c| c.min_round_ms = 400));
    let (mut coord, ticket) = run.coordinator_with("coord", &["--http", "127.0.0.1:0"]);
    let curl = dashboard(&run);
    // Each inner step takes 100 ms at least, so the 50 ms polls below see the training phase
    // (a CI run once saw only syncing, closing and waiting: its rounds trained faster).
    let mut node = run.node(&ticket, 1, &["--http", "127.0.0.1:0", "--slow-step-ms", "100"]);
    let url = status_url(&node);
    let (mut phases, mut statuses, mut scrapes) = (Vec::<String>::new(), Vec::<Value>::new(), Vec::new());
    let mut coord_peer = None;
    let t0 = Instant::now();
    while node.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < WAIT, "the run did not end");
        if let Some(s) = json(&url, "/api/status") {
            let p = s["phase"].as_str().unwrap().to_string();
            if phases.last() != Some(&p) {
                phases.push(p);
            }
            statuses.push(s);
        }
        if let Some(m) = scrape(&url) {
            scrapes.push(m);
        }
        if let Some(p) = json(&curl, "/api/peers") {
            let me = tessera_net::hex(&peer_id(1));
            coord_peer =
                p["peers"].as_array().unwrap().iter().find(|x| x["id"] == me).cloned().or(coord_peer);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    coord.finish();
    assert!(phases.iter().any(|p| p == "training") && phases.iter().any(|p| p == "waiting"), "{phases:?}");
    let last = statuses.last().expect("the status was served");
    assert_eq!(
        (last["role"].as_str(), last["id"].as_str()),
        (Some("trainer"), Some(&*tessera_net::hex(&peer_id(1))))
    );
    assert!(last["bytes_sent"].as_u64().unwrap() > 0 && last["bytes_received"].as_u64().unwrap() > 0);
    assert!(last["commits"].as_u64().unwrap() >= 2, "{last}");
    // Every state it said it held after r ≥ 1 rounds is the coordinator's state of round r-1,
    // and it said it agreed.
    let db = run.db();
    let mut checked = 0;
    for s in &statuses {
        let (Some(r), Some(h)) = (s["state_round"].as_u64(), s["state_hash"].as_str()) else { continue };
        if r == 0 {
            continue;
        }
        let stored: Vec<u8> = db
            .query_row("SELECT state_hash FROM rounds WHERE round = ?1", [(r - 1) as i64], |row| row.get(0))
            .unwrap();
        assert_eq!(h, tessera_net::hex(&stored), "the state after {r} rounds");
        checked += 1;
    }
    assert!(checked >= 2, "states were shown: {checked}");
    assert!(statuses.iter().any(|s| s["agrees"] == true) && statuses.iter().all(|s| s["agrees"] != false));
    // Its balance by its own verified ledger copy is the coordinator's.
    let (mine, theirs) = (&last["balance"], coord_peer.expect("the coordinator listed the node"));
    assert_eq!(mine["stake"], theirs["stake"], "{mine} vs {theirs}");
    assert!(mine["active"] == true && last["ledger_len"].as_u64().unwrap() > 2);
    // Metrics: one phase at a time; the byte and commit counters moved.
    let (first, lastm) = (scrapes.first().unwrap(), scrapes.last().unwrap());
    let on: Vec<_> = lastm.samples.iter().filter(|m| m.metric == "tessera_node_phase").collect();
    assert_eq!(on.len(), 8, "every phase has its gauge");
    let ones = on.iter().filter(|m| matches!(m.value, prometheus_parse::Value::Gauge(v) if v == 1.0)).count();
    assert_eq!(ones, 1, "the node is in one phase");
    let sent = |s| sample(s, "tessera_node_bytes_sent_total", None).unwrap();
    assert!(sent(lastm) > sent(first), "bytes sent moved: {} -> {}", sent(first), sent(lastm));
    assert!(sample(lastm, "tessera_node_commits_total", None).unwrap() >= 1.0);
    // The log says when it syncs (its first state is the coordinator's checkpoint).
    assert!(node.log().contains("syncing: fetching the state of round 0"), "{}", node.log());
}

/// A node that cannot reach the coordinator says so, in its status and its log, counting
/// its attempts, and gives up with a clear error after --reconnect-s.
#[test]
fn a_node_that_cannot_reach_the_coordinator_says_it_is_dialling() {
    let run = Run::new("web-dialling", config(1, 1));
    let ticket = format!("{}@127.0.0.1:{}", tessera_net::hex(&peer_id(99)), free_port());
    let mut node = run.node(&ticket, 1, &["--http", "127.0.0.1:0", "--reconnect-s", "4"]);
    let url = status_url(&node);
    let t0 = Instant::now();
    let seen = loop {
        if let Some(s) = json(&url, "/api/status") {
            if s["detail"].as_str().is_some_and(|d| !d.ends_with("(attempt 1)")) {
                break s;
            }
        }
        assert!(t0.elapsed() < WAIT, "no second attempt shown:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(seen["phase"], "dialling");
    assert!(seen["detail"].as_str().unwrap().starts_with("dialling the coordinator (attempt "), "{seen}");
    assert_eq!(seen["connections"], 0);
    let status = node.wait();
    assert!(!status.success(), "it gives up");
    let log = node.log();
    assert!(
        log.contains("dialling the coordinator") && log.contains("has been unreachable for 4 s"),
        "{log}"
    );
}

/// A coordinator restarted from its directory shows the rounds, evaluations and checks from
/// before its restart (read back from its store, with no times), not only those since.
#[test]
fn a_restarted_coordinators_dashboard_shows_the_rounds_before_its_restart() {
    let run = Run::new("web-restart", config(1, 5).with(|c| c.min_round_ms = 300));
    let (mut c1, ticket) = run.coordinator("coord1");
    let mut node = run.node(&ticket, 1, &["--slow-step-ms", "40"]);
    run.wait_count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL", 2);
    c1.kill9();
    let closed = run.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL") as usize;
    let (mut c2, _) = run.coordinator_with("coord2", &["--http", "127.0.0.1:0"]);
    let url = dashboard(&run);
    let t0 = Instant::now();
    let page = loop {
        if let Some(p) = json(&url, "/api/rounds") {
            break p;
        }
        assert!(t0.elapsed() < WAIT, "no rounds page:\n{}", c2.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let past: Vec<&Value> =
        page["rounds"].as_array().unwrap().iter().filter(|r| r["closed_ms"].is_null()).collect();
    assert_eq!(past.len(), closed, "every round closed before the restart: {page}");
    let db = run.db();
    for r in &past {
        let round = r["round"].as_u64().unwrap();
        let state: Vec<u8> = db
            .query_row("SELECT state_hash FROM rounds WHERE round = ?1", [round as i64], |row| row.get(0))
            .unwrap();
        assert_eq!(r["state_hash"], tessera_net::hex(&state), "round {round}");
        let acc = r["accepted"].as_array().unwrap();
        assert_eq!(acc.len(), 1, "round {round}: the one trainer's update");
        assert_eq!(acc[0]["peer"], tessera_net::hex(&peer_id(1)));
        assert!(acc[0]["bytes"].as_u64().is_some_and(|b| b > 0), "its stored length: {r}");
        assert!(r["started_ms"].is_null() && r["ddp_bytes"].as_u64().unwrap() > 0);
    }
    let evals = page["evals"].as_array().unwrap();
    assert!(evals.iter().any(|e| e["round"] == 0), "the evaluation before the restart: {evals:?}");
    c2.finish();
    node.finish();
}

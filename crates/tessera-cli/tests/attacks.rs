//! Attacks on the daemons with real processes on loopback (issue: hostile peers): strangers,
//! floods of bad frames, stalled handshakes, report spam and members that never commit. Each
//! checks that the honest run goes on, against the database the coordinator kept.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tessera_coord::Message;

mod common;
use common::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// A hand-driven peer: its own key and connection to the coordinator, sending what the test
/// says and handing over the frames it receives.
struct Raw {
    net: tessera_net::Net,
    conn: tessera_net::Connection,
    key: SigningKey,
    seq: u64,
    frames: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Raw {
    async fn connect(ticket: &str, i: u8) -> Result<Raw, tessera_net::NetError> {
        let (id, addr) = tessera_net::parse_ticket(ticket)?;
        let net = tessera_net::Net::bind(secret(i), &tessera_net::NetConfig::default()).await?;
        let conn = net.connect(id, addr).await?;
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        let (n, c) = (net.clone(), conn.clone());
        tokio::spawn(async move { n.serve(c, move |f| drop(f.map(|f| tx.send(f)))).await });
        Ok(Raw { net, conn, key: SigningKey::from_bytes(&secret(i)), seq: 0, frames })
    }

    async fn send(&mut self, m: &Message) -> Result<(), tessera_net::NetError> {
        self.seq += 1;
        let f = tessera_wire::encode(&self.key, self.seq, m).unwrap();
        self.net.send_frame(&self.conn, &f).await
    }

    /// The next frame from the coordinator that `want` picks, within `limit`.
    async fn until(&mut self, limit: Duration, want: impl Fn(&Message) -> bool) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let f = tokio::time::timeout_at(deadline, self.frames.recv()).await.ok()??;
            if let Ok(s) = tessera_wire::decode(&f) {
                if want(&s.message) {
                    return Some(s.message);
                }
            }
        }
    }
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
        // Garbage, then a frame that declares more than a coordinator reads (a member's
        // longest message is far shorter than a coordinator's).
        send(b"not a frame at all, and long enough to have a header and a signature: ".repeat(2)).await;
        net.send_raw(&conn, tessera_wire::MAX_PEER_FRAME as u32 + 10, &[0u8; 64]).await.unwrap();
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
            loss_milli: 0,
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
        "refused: frame over this endpoint's limit",
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

/// The attack test "stalled handshakes" (issue: hostile peers): the coordinator's accept loop
/// awaited each handshake in turn, up to 10 s each, so a host that opened handshakes and never
/// finished them held up every join. With 40 handshakes stalled against it, an honest peer's
/// `Join` is answered with `Welcome` within 2 s of its first packet.
#[test]
fn stalled_handshakes_do_not_delay_an_honest_join() {
    let run = Run::new("stalled-handshakes", config(1, 1));
    let (c, ticket) = run.coordinator("coord");
    rt().block_on(async {
        let (id, addr) = tessera_net::parse_ticket(&ticket).unwrap();
        let _staller = tessera_net::stall_handshakes((id, addr.unwrap()), 40).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await; // all 40 under way
        let t0 = Instant::now();
        let mut me = Raw::connect(&ticket, 1).await.unwrap();
        me.send(&Message::Join { addrs: vec![], stake: 1_000 }).await.unwrap();
        let welcome = me.until(Duration::from_secs(10), |m| matches!(m, Message::Welcome { .. })).await;
        let took = t0.elapsed();
        assert!(welcome.is_some(), "no Welcome:\n{}", c.log());
        assert!(took < Duration::from_secs(2), "the Welcome took {took:?}");
    });
}

/// The attack test "bad-signature flood" (issue: hostile peers): frames were signature-checked
/// on the coordinator's one loop before anything else, and dropped when its queue was full, so
/// a flood of bad signatures crowded out honest heartbeats and commits until honest members
/// were evicted. Eight connections of a hostile host flood frames with broken signatures for
/// 10 s while two honest nodes train: no honest member leaves, and every round accepts both.
#[test]
fn a_flood_of_bad_signatures_from_eight_tasks_evicts_no_honest_member() {
    let run = Run::new("bad-signature-flood", config(2, 8));
    let (mut c, ticket) = run.coordinator("coord");
    let mut nodes: Vec<Proc> = (1..=2).map(|i| run.node(&ticket, i, &["--slow-step-ms", "400"])).collect();
    run.wait_count("SELECT COUNT(*) FROM rounds", 1);
    let sent: u64 = rt().block_on(async {
        let flood = (0..8u8).map(|k| {
            let ticket = ticket.clone();
            tokio::spawn(async move { flood_bad_signatures(&ticket, 100 + k, Duration::from_secs(10)).await })
        });
        let mut sent = 0;
        for f in flood.collect::<Vec<_>>() {
            sent += f.await.unwrap();
        }
        sent
    });
    assert!(sent > 8_000, "the flood flowed: {sent} frames");
    c.finish();
    for n in &mut nodes {
        n.finish();
    }
    run.check_ledger();
    assert_eq!(run.count("SELECT COUNT(*) FROM accepted"), 16, "both honest updates, every round");
    let log = c.log();
    for i in 1..=2 {
        let who = short_hex(&peer_id(i));
        assert!(!log.contains(&format!("{who} left")), "honest node {i} was evicted:\n{log}");
    }
    assert!(log.contains("refused: signature does not verify"), "the flood reached the coordinator:\n{log}");
}

/// One hostile connection's share of the flood: frames naming itself with a broken signature,
/// as fast as it can for `how_long` (redialling when the coordinator closes it as a stranger).
/// Returns the frames sent.
async fn flood_bad_signatures(ticket: &str, i: u8, how_long: Duration) -> u64 {
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < how_long {
        let Ok(mut raw) = Raw::connect(ticket, i).await else { continue };
        loop {
            raw.seq += 1;
            let hb = Message::Heartbeat { round: 0, step: raw.seq };
            let mut f = tessera_wire::encode(&raw.key, raw.seq, &hb).unwrap();
            let last = f.len() - 1;
            f[last] ^= 1;
            if t0.elapsed() >= how_long || raw.net.send_frame(&raw.conn, &f).await.is_err() {
                break;
            }
            sent += 1;
        }
        raw.net.close().await;
    }
    sent
}

/// The attack test "state-report spam" (issue: hostile peers): each report was one row, with
/// no key and no bound (and one fsync each). A member sends 20,000 reports, naming rounds
/// past, present and far in the future: past its rate they are dropped unread, reports of
/// rounds not reached are refused, and the rest keep one row per (round, peer). The run goes on.
#[test]
fn twenty_thousand_state_reports_keep_the_rows_bounded() {
    let cfg = config(1, 3);
    let run = Run::new("report-spam", cfg.clone());
    let (mut c, ticket) = run.coordinator("coord");
    let mut node = run.node(&ticket, 1, &["--slow-step-ms", "300"]);
    run.wait_count("SELECT COUNT(*) FROM rounds", 1);
    rt().block_on(async {
        let mut spam = Raw::connect(&ticket, 97).await.unwrap();
        spam.send(&Message::Join { addrs: vec![], stake: 1_000 }).await.unwrap();
        spam.until(Duration::from_secs(10), |m| matches!(m, Message::Welcome { .. }))
            .await
            .expect("welcomed");
        for i in 0..20_000u64 {
            let report = Message::StateReport { round: i % 50, state_hash: [i as u8; 32], computed: true };
            spam.send(&report).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        spam.net.close().await;
    });
    c.finish();
    node.finish();
    let spammer = tessera_net::hex(&peer_id(97));
    let rows = run.count(&format!("SELECT COUNT(*) FROM reports WHERE hex(peer) = upper('{spammer}')"));
    assert!((1..=cfg.rounds as i64 + 1).contains(&rows), "{rows} rows: one per round reached at most");
    let log = c.log();
    assert!(log.contains("refused: a state report for round"), "future rounds refused:\n{log}");
    assert!(log.contains("refused: over 500 frames a second"), "the rate held:\n{log}");
    assert_eq!(run.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL"), 3, "and the run went on");
}

/// A process's resident memory, in bytes (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// Dials the coordinator from fresh identities (one per id in `ids`), `at_once` at a time,
/// closing each connection made. Returns how many were let in.
async fn strangers(ticket: &str, ids: std::ops::Range<u32>, at_once: usize) -> usize {
    let (id, addr) = tessera_net::parse_ticket(ticket).unwrap();
    let mut made = 0;
    let ids: Vec<u32> = ids.collect();
    for chunk in ids.chunks(at_once) {
        let dials = chunk.iter().map(|&i| {
            tokio::spawn(async move {
                let mut secret = [0u8; 32];
                secret[..4].copy_from_slice(&i.to_le_bytes());
                secret[31] = 0x5A;
                let net = tessera_net::Net::bind(secret, &tessera_net::NetConfig::default()).await.ok()?;
                let conn = net.connect(id, addr).await.ok()?;
                Some((net, conn))
            })
        });
        let held: Vec<_> = dials.collect();
        for h in held {
            if let Some((net, _conn)) = h.await.unwrap() {
                made += 1;
                net.close().await;
            }
        }
    }
    made
}

/// The attack test "connections that never join" (issue: hostile peers): their connections
/// and outboxes were kept for ever, and each new key took a sequence window, until after
/// 65,536 keys nobody could join. One host dials from 20,000 fresh identities that never join.
/// It was first found here that iroh keeps about 14 KiB for each remote key for a minute, so
/// the coordinator grew by 277 MiB over them; now a source may start only 10 connections a
/// second (after a burst of 64), the rest are refused at once, the coordinator's memory after
/// them is within 64 MiB of its memory after the first 2,000, and an honest node then joins.
#[test]
#[ignore = "slow (about a minute): run with --ignored"]
fn twenty_thousand_connections_that_never_join_keep_memory_bounded() {
    let run = Run::new("never-join", config(1, 1));
    let (mut c, ticket) = run.coordinator("coord");
    let pid = c.child.id();
    let t0 = Instant::now();
    let (first, after, made) = rt().block_on(async {
        let mut made = strangers(&ticket, 0..2_000, 16).await;
        let first = rss_bytes(pid);
        made += strangers(&ticket, 2_000..20_000, 16).await;
        (first, rss_bytes(pid), made)
    });
    let secs = t0.elapsed().as_secs();
    let allowed = tessera_net::CONNECT_BURST_PER_SOURCE + tessera_net::CONNECTS_PER_SOURCE_PER_S * (secs + 1);
    assert!(made as u64 <= allowed, "{made} connections in {secs} s: over the source's rate");
    let grew = after.saturating_sub(first);
    assert!(grew < 64 << 20, "the coordinator grew by {} MiB: {first} → {after} bytes", grew >> 20);
    let mut node = run.node(&ticket, 1, &[]);
    c.finish();
    node.finish();
    assert_eq!(run.count("SELECT COUNT(*) FROM rounds WHERE accept IS NOT NULL"), 1, "and the run went on");
    println!("coordinator memory: {first} bytes after 2,000 attempts, {after} after 20,000 ({made} let in, {secs} s)");
}

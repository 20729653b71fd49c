//! The networked run with real processes on loopback: a coordinator and trainers as separate
//! `tessera` processes, killed with SIGKILL and restarted. Each test
//! checks its outcome against the database the coordinator kept and, where the membership
//! history allows, against the in-process protocol simulator bit for bit.

use std::process::Command;
use std::time::Duration;

use rusqlite::Connection;
use tessera_coord::{Message, RunConfig};
use tessera_data::Dataset;
use tessera_sim::ProtocolSim;
use tessera_sync::Algorithm;
use tessera_tensor::simd::best_path;

mod common;
use common::*;

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
    let tcopy = run.dir.join("node1.ledger").display().to_string();
    let keeping = ["--ledger-copy", tcopy.as_str(), "--keep-updates"];
    let mut nodes: Vec<Proc> =
        (1..=2).map(|i| run.node(&ticket, i, if i == 1 { &keeping[..] } else { &[] })).collect();
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
    update_flipped_is_named(run, &db, 1);
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

/// One byte of the `index`th update accepted in round 1, flipped on disk: the audit names
/// that round and the update; then the blob is put back. Returns round 1's stored `Accept`.
fn update_flipped_is_named(run: &Run, db: &Connection, index: usize) -> Vec<u8> {
    let accept: Vec<u8> =
        db.query_row("SELECT accept FROM rounds WHERE round = 1", [], |r| r.get(0)).unwrap();
    let Ok(Message::Accept { updates, .. }) = postcard::from_bytes::<Message>(&accept) else {
        panic!("an Accept")
    };
    let path = run.dir.join("coord").join("blobs").join(tessera_net::hex(&updates[index]));
    let blob = std::fs::read(&path).unwrap();
    let mut bad = blob.clone();
    bad[blob.len() / 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let (ok, out) = run.audit();
    assert!(!ok && out.contains("RoundClosed of round 1") && out.contains("the update of"), "{out}");
    std::fs::write(&path, &blob).unwrap();
    accept
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
    let vcopy = run.dir.join("validator5.ledger").display().to_string();
    let mut v = [
        run.node(&ticket, 5, &["--validator", "--ledger-copy", vcopy.as_str()]),
        run.node(&ticket, 6, &["--validator", "--cheat", "lying-validator"]),
    ];
    std::thread::sleep(Duration::from_millis(500)); // the validators are there before round 0
    let tcopy = run.dir.join("node1.ledger").display().to_string();
    let keeping = ["--ledger-copy", tcopy.as_str(), "--keep-updates"];
    let mut nodes: Vec<Proc> =
        (1..=2).map(|i| run.node(&ticket, i, if i == 1 { &keeping[..] } else { &[] })).collect();
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
    // The honest validator kept a verified copy of the ledger too: it audits whole, with
    // every round chained.
    let o = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["audit", &vcopy]).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    let rounds = format!("{} rounds chained", run.cfg.rounds);
    assert!(o.status.success() && said.contains("a node's copy") && said.contains(&rounds), "{said}");
    // Trainer 1 kept the updates and each disputed operator's inputs: from its copy alone,
    // every round is recomputed and every dispute decided again.
    let o = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["audit", &tcopy]).output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    let recomputed = format!("({} recomputed from", run.cfg.rounds);
    assert!(o.status.success() && said.contains(&recomputed), "{said}");
    assert!(!said.contains(" 0 disputed operators recomputed"), "{said}");
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
    let kept = ["--slow-step-ms", "150", "--ledger-copy", copy.as_str(), "--keep-updates"];
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
    // Every round is recomputed from its updates, NoLoCo's through every replica.
    let recomputed = format!("({} recomputed", run.cfg.rounds);
    assert!(audit.contains(&recomputed), "{audit}");
    if run.cfg.algo == Algorithm::NoLoCo {
        // A NoLoCo round's Δ, flipped on disk, is named by the round that accepted it.
        let db = Connection::open(run.dir.join("coord").join("coordinator.sqlite")).unwrap();
        let accept = update_flipped_is_named(&run, &db, 0);
        // A replica the store's Accept names, changed: the replay's replica differs.
        let Ok(Message::Accept { pairs: Some(mut pairs), .. }) = postcard::from_bytes::<Message>(&accept)
        else {
            panic!("a NoLoCo Accept")
        };
        pairs.replicas[0].1[0] ^= 1;
        let mut changed = postcard::from_bytes::<Message>(&accept).unwrap();
        if let Message::Accept { pairs: p, .. } = &mut changed {
            *p = Some(pairs);
        }
        let bytes = postcard::to_allocvec(&changed).unwrap();
        db.execute("UPDATE rounds SET accept = ?1 WHERE round = 1", [&bytes]).unwrap();
        let (ok, out) = run.audit();
        assert!(!ok && out.contains("RoundClosed of round 1") && out.contains("the replica of"), "{out}");
        db.execute("UPDATE rounds SET accept = ?1 WHERE round = 1", [&accept]).unwrap();
        assert!(run.audit().0, "restored");
    }
    assert!(audit.contains(&final_hash), "the audit ends in the run's final state: {audit}");
    // Node 1 kept its copy of the ledger on disk across the coordinator's restart: it audits
    // whole, as the same chain, to the same final state.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["audit", &copy]).output().unwrap();
    let copied = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && copied.contains("a node's copy") && copied.contains(&rounds), "{copied}");
    assert!(copied.contains(&final_hash), "{copied}");
    // It kept every accepted update beside the copy (NoLoCo: with each round's members and
    // kept replicas): every round is recomputed from them.
    let recomputed = format!("{} recomputed from", run.cfg.rounds);
    assert!(copied.contains(&recomputed), "{copied}");
    kept_update_flipped_is_named(&copy);
    // No accepted update lost or applied twice: the state equals an uninterrupted run's.
    let ids: Vec<u8> = (1..=n).collect();
    assert_eq!(final_hash, simulated(&run, &ids));
    for (i, o) in ids.iter().zip(&outs) {
        let last = node_states(o).last().map(|s| (s.0, s.2));
        assert_eq!(last, Some((run.cfg.rounds, true)), "node {i} ends agreeing");
    }
}

/// A byte of a kept update blob flipped: the copy's audit names the round that accepted it;
/// put back, it passes again.
fn kept_update_flipped_is_named(copy: &str) {
    let dir = std::path::PathBuf::from(format!("{copy}.blobs"));
    // The largest kept blob is an update (the others are the run's config, a short text, and
    // NoLoCo's kept rounds, shorter still).
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort_by_key(|f| std::fs::metadata(f).unwrap().len());
    let victim = files.last().unwrap().clone();
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    std::fs::write(&victim, &bad).unwrap();
    let audit = || Command::new(env!("CARGO_BIN_EXE_tessera")).args(["audit", copy]).output().unwrap();
    let out = audit();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success() && said.contains("RoundClosed of round"), "{said}");
    assert!(said.contains("does not hash to its name"), "{said}");
    std::fs::write(&victim, &good).unwrap();
    assert!(audit().status.success(), "restored");
    // A byte of the copy's last record (its signature) flipped: that record is named.
    let last = tessera_node::ledger_file::read_copy(std::path::Path::new(copy)).unwrap().1.len() - 1;
    let good = std::fs::read(copy).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(copy, &bad).unwrap();
    let out = audit();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success() && said.contains(&format!("record {last}")), "{said}");
    std::fs::write(copy, &good).unwrap();
    assert!(audit().status.success(), "restored");
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

/// What `tessera demo ARGS` printed, run in `dir`; it must succeed.
fn demo(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// `tessera demo` prints the dashboard's address and each node's own status page, and ends
/// with every state report agreeing.
#[test]
fn the_demo_prints_the_dashboard_and_every_nodes_status_page() {
    let stdout = demo(&tmp("demo-pages"), &["--rounds", "2", "--peers", "2"]);
    assert!(stdout.contains("demo: watch the run at http://127.0.0.1:"), "{stdout}");
    let pages = stdout.lines().find_map(|l| l.strip_prefix("demo: each node's own status page: "));
    let pages = pages.unwrap_or_else(|| panic!("no status pages line:\n{stdout}"));
    for name in ["validator", "node-0", "node-1"] {
        assert!(pages.contains(&format!("{name} http://127.0.0.1:")), "{name}: {pages}");
    }
    assert!(stdout.contains("state reports      4 of 4 agree"), "{stdout}");
}

/// The Q drill (issue: hostile peers) in small: `tessera demo --chaos` kills one trainer
/// inside every round after the first and the coordinator twice, each with SIGKILL, and
/// restarts them. The run finishes, every round accepts updates (after each coordinator
/// restart, the next rounds used to close with none: the resent commits had taught it 0 ms
/// round times), and the ledger verifies.
#[test]
fn the_demo_survives_a_trainer_killed_every_round_and_the_coordinator_twice() {
    let dir = tmp("chaos");
    let stdout = demo(&dir, &["--chaos", "5", "--rounds", "6"]);
    // One per round after the first, the last only if it strikes before the run ends.
    let killed = stdout.contains("chaos killed 4 trainers") || stdout.contains("chaos killed 5 trainers");
    assert!(killed && stdout.contains("the coordinator 2 times"), "{stdout}");
    assert!(stdout.contains("rounds             6 (of 6)"), "{stdout}");
    assert!(stdout.contains("verified (tessera ledger"), "{stdout}");
    let db = Connection::open(dir.join("coordinator").join("coordinator.sqlite")).unwrap();
    for round in 0..6i64 {
        let n: i64 =
            db.query_row("SELECT COUNT(*) FROM accepted WHERE round = ?1", [round], |r| r.get(0)).unwrap();
        assert!(n >= 1, "round {round} accepted no update:\n{stdout}");
    }
}

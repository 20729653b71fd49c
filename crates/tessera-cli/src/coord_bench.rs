//! `tessera bench coordinator`: the coordinator's CPU time to decide one round with many
//! members (BENCHMARKS.md, "Scale"). The members' updates are trained beforehand, in
//! parallel, and their blobs are in memory as the network would hand them over; the timed
//! part is the coordinator state machine alone, on one thread (a one-thread pool, so its
//! matrix products do not spread either), handling every member's commit and update blob
//! and closing the round (screening, aggregation, the ledger's records).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use rayon::prelude::*;
use tessera_coord::{
    Coordinator, Event, Message, Output, PeerId, RunConfig, RunSpec, Signed, Trained, Worker, MAX_ROUND_PEERS,
};

/// The figures of one measurement.
struct Measured {
    commits_s: f64,
    close_s: f64,
    /// The deciding thread's CPU time over both (None where the system does not say).
    cpu_s: Option<f64>,
    accepted: usize,
}

pub fn run(preset: &str, members: &[usize], data_dir: &Path) -> Result<()> {
    let ds = tessera_node::embedded_dataset(data_dir)?;
    for &n in members {
        if n == 0 || n > MAX_ROUND_PEERS {
            bail!("--members must be between 1 and {MAX_ROUND_PEERS} (a run's max_peers), not {n}");
        }
        let m = measure(preset, n, &ds)?;
        crate::out(&format!(
            "{preset}, {n} members: commits and blobs {:.3} s ({:.1} µs a member), close {:.3} s, total {:.3} s (CPU {}); {} accepted",
            m.commits_s,
            m.commits_s * 1e6 / n as f64,
            m.close_s,
            m.commits_s + m.close_s,
            m.cpu_s.map_or("n/a".to_string(), |s| format!("{s:.3} s")),
            m.accepted
        ));
    }
    Ok(())
}

fn pid(i: usize) -> PeerId {
    let mut p = [0u8; 32];
    p[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    p
}

fn measure(preset: &str, n: usize, ds: &tessera_data::Dataset) -> Result<Measured> {
    let cfg = RunConfig {
        min_peers: n,
        max_peers: n,
        validate: tessera_coord::Validate::Off,
        ..RunConfig::default()
    }
    .with(|c| {
        c.preset = preset.to_string();
        c.inner_steps = 1;
        c.batch = 1;
        c.rounds = 1;
    });
    let spec = std::sync::Arc::new(RunSpec::new(cfg)?);
    let mut c = Coordinator::new(spec.clone(), [7; 32])?;
    let key = tessera_coord::SigningKey::from_bytes(&[9; 32]);
    c.keep_ledger(key, &[])?;
    for i in 0..n {
        let join = Message::Join { addrs: vec![], stake: tessera_coord::DEFAULT_STAKE };
        c.handle(0, Signed { sender: pid(i), seq: 1, message: join });
    }
    let (state_hash, assignments) = (c.state_hash(), c.assignments().to_vec());
    if assignments.len() != n {
        bail!("round 0 did not start with {n} members");
    }
    let initial = spec.initial_state();
    let trained: Vec<Trained> = assignments
        .par_iter()
        .map(|a| Worker::new(spec.clone()).train(&initial, &state_hash, a, ds, &mut |_| {}))
        .collect::<Result<_, _>>()?;
    let mut blobs: Vec<Vec<u8>> = trained.iter().map(|tr| tr.update.to_vec()).collect();
    let last = blobs.pop().expect("one member at least");
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let (commits_s, close_s, cpu_s, close) = one.install(|| {
        let cpu = thread_cpu_s();
        let t = Instant::now();
        for (i, (a, tr)) in assignments.iter().zip(&trained).enumerate() {
            let seq = 2 + i as u64;
            c.handle(10, Signed { sender: a.peer, seq, message: tr.commit() });
        }
        for ((a, tr), blob) in assignments.iter().zip(&trained).zip(blobs) {
            c.fetched(20, a.peer, tr.update_hash, Ok(blob));
        }
        let commits_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (a, tr) = (assignments.last().expect("members"), trained.last().expect("members"));
        let close = c.fetched(30, a.peer, tr.update_hash, Ok(last));
        let cpu_s = thread_cpu_s().zip(cpu).map(|(b, a)| b - a);
        (commits_s, t.elapsed().as_secs_f64(), cpu_s, close)
    });
    let accepted = close
        .iter()
        .find_map(|o| match o {
            Output::Event(Event::RoundClosed { accepted, .. }) => Some(*accepted),
            _ => None,
        })
        .unwrap_or(0);
    if accepted == 0 {
        bail!("the round did not close with the last update");
    }
    Ok(Measured { commits_s, close_s, cpu_s, accepted })
}

/// This thread's CPU time so far (Linux's schedstat, in ns), if the system says.
fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

//! `tessera bench coordinator`: the coordinator's CPU time to decide one round with many
//! members (BENCHMARKS.md, "Scale"). The members' updates are trained beforehand, in
//! parallel; the timed part is the coordinator state machine alone, on one thread, handling
//! every member's commit and update blob and closing the round (screening, aggregation, the
//! ledger's records).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use rayon::prelude::*;
use tessera_coord::{
    Coordinator, Event, Message, Output, PeerId, RunConfig, RunSpec, Signed, Trained, Worker, MAX_MEMBERS,
};

/// The figures of one measurement.
struct Measured {
    commits_s: f64,
    close_s: f64,
    accepted: usize,
}

pub fn run(preset: &str, members: &[usize], data_dir: &Path) -> Result<()> {
    let ds = tessera_node::embedded_dataset(data_dir)?;
    for &n in members {
        if n == 0 || n > MAX_MEMBERS {
            bail!("--members must be between 1 and {} (the wire's MAX_MEMBERS), not {n}", MAX_MEMBERS);
        }
        let m = measure(preset, n, &ds)?;
        crate::out(&format!(
            "{preset}, {n} members: commits and blobs {:.3} s ({:.1} µs a member), close {:.3} s, total {:.3} s; {} accepted",
            m.commits_s,
            m.commits_s * 1e6 / n as f64,
            m.close_s,
            m.commits_s + m.close_s,
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
    let t = Instant::now();
    let mut last = Vec::new();
    for (i, (a, tr)) in assignments.iter().zip(&trained).enumerate() {
        let seq = 2 + i as u64;
        c.handle(10, Signed { sender: a.peer, seq, message: tr.commit() });
        if i + 1 < n {
            c.fetched(20, a.peer, tr.update_hash, Ok(tr.update.to_vec()));
        } else {
            last.push((a.peer, tr.update_hash, tr.update.to_vec()));
        }
    }
    let commits_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (peer, hash, blob) = last.pop().expect("one member at least");
    let close = c.fetched(30, peer, hash, Ok(blob));
    let close_s = t.elapsed().as_secs_f64();
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
    Ok(Measured { commits_s, close_s, accepted })
}

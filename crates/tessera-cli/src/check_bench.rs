//! `tessera bench checks`: detection against overhead (BENCHMARKS.md, "Detection against
//! overhead").
//!
//! For each segment length k and checking rate:
//! - a real shirking trainer (skip-steps, wrong-data, forge) trains a unit, and every one of
//!   its segments is spot-checked for real: which segments fail is measured, not assumed;
//! - the chance of catching a trainer that cheats every round within `rounds` rounds is then
//!   measured over `trials` simulated cheaters, each round's draw made by the checker's own
//!   [`tessera_coord::pick`] over a fresh commit root;
//! - the checker's compute is the measured time of one check (reveal, proofs, re-run,
//!   re-derivation) times the rate, as a share of the measured time to train one unit; the
//!   trainer's own cost of committing (a state hash per segment, the kept states) is the
//!   training time against training with a single segment.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use tessera_coord::{pick, run_check, Assignment, CheckJob, Outcome, RunConfig, RunSpec, Shirk, Worker};

/// What the bench is asked to measure.
pub struct ChecksBench<'a> {
    pub preset: &'a str,
    pub h: u64,
    pub batch: usize,
    pub rounds: u64,
    pub trials: u64,
    pub ks: &'a [u64],
    pub rates: &'a [f64],
    pub data_dir: &'a Path,
}

pub fn run(b: &ChecksBench) -> Result<()> {
    if b.h == 0 || b.rounds == 0 || b.trials == 0 || b.ks.contains(&0) {
        bail!("--h, --rounds, --trials and every k must be at least 1");
    }
    let ds = tessera_node::embedded_dataset(b.data_dir)?;
    let out = crate::out;
    out(&format!(
        "preset {}, H = {}, batch {}, caught within {} rounds over {} simulated cheaters",
        b.preset, b.h, b.batch, b.rounds, b.trials
    ));
    let mut ks = b.ks.to_vec();
    ks.push(b.h); // a single segment: the least a commitment costs
    let trains = train_times(b, &ds, &ks)?;
    let base = trains[ks.len() - 1];
    let state_mb = tessera_coord::LocalState::blob_len(spec(b, 1)?.n()) as f64 / 1e6;
    out(&format!(
        "one unit trained with a single segment: {:.1} ms; a revealed state: {state_mb:.1} MB",
        base * 1e3
    ));
    out("k\trate\ttrain_ms\tcommit_cost%\tkept_MB\tcheck_ms\tchecker%\tskip-steps\twrong-data\tforge\tbad_segments(skip/wrong/forge)");
    for (&k, &train) in b.ks.iter().zip(&trains) {
        let (check_s, bad) = measure_k(b, &ds, k)?;
        let segs = b.h.div_ceil(k) as usize;
        for &rate in b.rates {
            let caught: Vec<f64> = bad.iter().map(|f| detection(b, rate, segs, f)).collect();
            out(&format!(
                "{k}\t{rate}\t{:.1}\t{:.1}\t{:.0}\t{:.2}\t{:.2}\t{:.4}\t{:.4}\t{:.4}\t{}/{}/{} of {segs}",
                train * 1e3,
                (train / base - 1.0) * 100.0,
                segs as f64 * state_mb,
                check_s * 1e3,
                rate * check_s / train * 100.0,
                caught[0],
                caught[1],
                caught[2],
                bad[0].len(),
                bad[1].len(),
                bad[2].len()
            ));
        }
    }
    Ok(())
}

fn spec(b: &ChecksBench, k: u64) -> Result<RunSpec> {
    let cfg = RunConfig::default().with(|c| {
        c.preset = b.preset.to_string();
        c.inner_steps = b.h;
        c.batch = b.batch;
        c.commit_every = k;
    });
    Ok(RunSpec::new(cfg)?)
}

/// Median seconds to train one unit of H steps for each segment length in `ks`, the
/// lengths measured in turn, round after round (so drift on a shared machine hits all alike),
/// after one warm-up round, each length's worker kept from round to round as a trainer's is.
fn train_times(b: &ChecksBench, ds: &tessera_data::Dataset, ks: &[u64]) -> Result<Vec<f64>> {
    let specs: Vec<_> = ks.iter().map(|&k| spec(b, k).map(std::sync::Arc::new)).collect::<Result<_>>()?;
    let mut times = vec![Vec::new(); ks.len()];
    // One worker per length, as a trainer keeps one across rounds.
    let mut workers: Vec<Worker> = specs.iter().map(|s| Worker::new(s.clone())).collect();
    for rep in 0..6u64 {
        for ((spec, t), w) in specs.iter().zip(&mut times).zip(&mut workers) {
            let g = spec.initial_state();
            let a = Assignment { peer: [1; 32], data_round: 0, slot: rep };
            let t0 = Instant::now();
            w.train(&g, &g.hash(), &a, ds, &mut |_| {})?;
            if rep > 0 {
                t.push(t0.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// The mean time of one check, and each shirker's failing segments, every segment checked.
fn measure_k(b: &ChecksBench, ds: &tessera_data::Dataset, k: u64) -> Result<(f64, Vec<Vec<usize>>)> {
    let spec = std::sync::Arc::new(spec(b, k)?);
    let g = std::sync::Arc::new(spec.initial_state());
    let a = Assignment { peer: [1; 32], data_round: 0, slot: 0 };
    let segs = b.h.div_ceil(k) as usize;
    let (mut total, mut runs, mut bad) = (0.0, 0u32, Vec::new());
    for shirk in [Some(Shirk::SkipSteps), Some(Shirk::WrongData), Some(Shirk::Forge), None] {
        let mut w = Worker::new(spec.clone());
        if let Some(s) = shirk {
            w.shirk(s);
        }
        let t = w.train(&g, &g.hash(), &a, ds, &mut |_| {})?;
        let mut failing = Vec::new();
        for seg in 0..segs {
            let r = w.reveal_committed(0, seg, ds)?;
            let (start, end) = r.leaves();
            let last = seg + 1 == segs && tessera_coord::rederivable(&spec);
            let t0 = Instant::now();
            tessera_coord::verify_reveal(&t.commitment.root(), segs, seg, start, end)
                .map_err(anyhow::Error::msg)?;
            let job = CheckJob {
                round: 0,
                peer: a.peer,
                unit: (0, 0),
                segment: seg,
                blob: r.blob.to_vec(),
                start: start.hash,
                end: end.hash,
                rederive: last.then(|| (g.clone(), t.update_hash)),
            };
            let outcome = run_check(&spec, ds, &job)?;
            total += t0.elapsed().as_secs_f64();
            runs += 1;
            if outcome != Outcome::Pass {
                failing.push(seg);
            }
        }
        match shirk {
            Some(_) => bad.push(failing),
            None if failing.is_empty() => {}
            None => bail!("an honest trainer failed segments {failing:?}"),
        }
    }
    Ok((total / f64::from(runs), bad))
}

/// The share of `trials` cheaters (failing segments `bad` every round) caught within the
/// bench's rounds, the checker drawing with [`pick`] over a fresh root each round.
fn detection(b: &ChecksBench, rate: f64, segs: usize, bad: &[usize]) -> f64 {
    let rng = tessera_tensor::rng::Philox::new(0x5eed);
    let hash = |purpose: u64, i: u64| -> [u8; 32] {
        let mut h = [0u8; 32];
        for (j, c) in h.chunks_mut(8).enumerate() {
            c.copy_from_slice(&rng.u64(purpose, i * 4 + j as u64).to_le_bytes());
        }
        h
    };
    let secret = hash(1, 0);
    let caught = (0..b.trials)
        .filter(|t| {
            (0..b.rounds).any(|r| {
                let root = hash(2, t * b.rounds + r); // each commit's root is fresh
                pick(&secret, &root, &[2; 32], rate, segs).is_some_and(|s| bad.contains(&s))
            })
        })
        .count();
    caught as f64 / b.trials as f64
}

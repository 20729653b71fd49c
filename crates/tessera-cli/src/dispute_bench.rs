//! `tessera bench dispute`: what one dispute costs (BENCHMARKS.md, "The cost of one dispute").

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use tessera_coord::{settle, Claims, RunConfig, RunSpec};
use tessera_verify::{Dispute, Loser};

pub fn run(preset: &str, steps: u64, batch: usize, faults: usize, data_dir: &Path) -> Result<()> {
    if faults == 0 || steps == 0 {
        bail!("--faults and --steps must be at least 1");
    }
    let ds = tessera_node::embedded_dataset(data_dir)?;
    let cfg = RunConfig::default().with(|c| {
        c.preset = preset.to_string();
        c.inner_steps = steps;
        c.batch = batch;
    });
    let spec = RunSpec::new(cfg)?;
    let t0 = Instant::now();
    let (honest, traces) = Claims::honest(&spec, &ds, (0, 0), steps)?;
    let traced_step_s = t0.elapsed().as_secs_f64() / steps as f64;
    let ops = traces[0].entries.len();
    let (mut ex, mut bytes, mut referee_s) = (Vec::new(), Vec::new(), Vec::new());
    for f in 0..faults {
        // Spread over the segment: step f mod steps, operator at an even stride.
        let (step, op) = (f % steps as usize, (f * ops / faults + f) % ops);
        let cheat = honest.faulty(step, op);
        let t = Instant::now();
        let s = settle(&cheat, &honest, &traces)?;
        referee_s.push(t.elapsed().as_secs_f64());
        if s.ruling.loser != Loser::Trainer || s.ruling.op != Some(op as u64 + 1) {
            bail!("fault at step {step} op {op} was not pinned: {:?}", s.ruling);
        }
        ex.push(f64::from(s.exchanges));
        bytes.push(s.bytes as f64);
    }
    let stat = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        (s[0], s[s.len() / 2], s[s.len() - 1])
    };
    let (e, b, r) = (stat(&ex), stat(&bytes), stat(&referee_s));
    let out = crate::out;
    out(&format!(
        "preset {preset}, batch {batch}, segment of {steps} steps, {ops} operators per step, {faults} faults, all pinned to their (step, operator)"
    ));
    out(&format!(
        "exchanges (min/median/max): {:.0} / {:.0} / {:.0}   bound ⌈log2 k⌉ + ⌈log2 ops⌉ + 4 = {}",
        e.0,
        e.1,
        e.2,
        Dispute::max_exchanges(steps, ops as u64)
    ));
    out(&format!("bytes revealed and fetched (min/median/max): {:.0} / {:.0} / {:.0}", b.0, b.1, b.2));
    out(&format!(
        "referee: 1 operator recomputed, {:.2} / {:.2} / {:.2} ms (the whole game); one traced training step {:.1} ms",
        r.0 * 1e3,
        r.1 * 1e3,
        r.2 * 1e3,
        traced_step_s * 1e3
    ));
    Ok(())
}

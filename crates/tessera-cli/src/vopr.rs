//! `tessera vopr`: the fault simulator over many seeds (see `tessera_sim::vopr`). Each failing
//! seed is printed with the command that reproduces it; the exit status is non-zero if any
//! seed broke an invariant.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use tessera_sim::vopr::{plan, run_seed, SeedReport, VoprConfig, MAX_VOPR_PEERS};
use tessera_sim::FaultCounts;

/// Most seeds one invocation runs.
pub const MAX_SEEDS: u64 = 100_000_000;
/// Most validators a seed runs.
pub const MAX_VOPR_VALIDATORS: usize = 8;
/// Most rounds a seed runs.
pub const MAX_VOPR_ROUNDS: u64 = 100;

#[derive(clap::Args, Debug)]
pub struct VoprArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Trainers per seed.
    #[arg(long, default_value_t = 16)]
    pub peers: usize,
    /// Validators per seed.
    #[arg(long, default_value_t = 2)]
    pub validators: usize,
    /// Rounds per seed.
    #[arg(long, default_value_t = 4)]
    pub rounds: u64,
    /// The outer algorithms seeds draw from, in this order (the order is part of a seed).
    #[arg(long, value_delimiter = ',', default_value = "ddp,diloco,sparseloco,demo,noloco")]
    pub algos: Vec<tessera_sync::Algorithm>,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where the embedded Sonnets are ingested for the seeds to train on (on first use).
    #[arg(long, default_value = "runs/vopr-data")]
    pub data_dir: PathBuf,
    /// Print every seed's line and plan, not only the failing ones.
    #[arg(long)]
    pub verbose: bool,
}

impl VoprArgs {
    fn config(&self) -> Result<VoprConfig> {
        if self.seeds == 0 || self.seeds > MAX_SEEDS {
            bail!("--seeds must be between 1 and {MAX_SEEDS}, not {}", self.seeds);
        }
        if self.from.checked_add(self.seeds).is_none() {
            bail!("--from {} plus --seeds {} overflows", self.from, self.seeds);
        }
        if self.peers < 2 || self.peers > MAX_VOPR_PEERS {
            bail!("--peers must be between 2 and {MAX_VOPR_PEERS}, not {}", self.peers);
        }
        if self.validators > MAX_VOPR_VALIDATORS {
            bail!("--validators must be at most {MAX_VOPR_VALIDATORS}, not {}", self.validators);
        }
        if self.rounds == 0 || self.rounds > MAX_VOPR_ROUNDS {
            bail!("--rounds must be between 1 and {MAX_VOPR_ROUNDS}, not {}", self.rounds);
        }
        if self.algos.is_empty() || self.algos.len() > tessera_sim::vopr::ALL_ALGOS.len() {
            bail!("--algos must name 1 to {} algorithms", tessera_sim::vopr::ALL_ALGOS.len());
        }
        let d = VoprConfig::default();
        let (peers, validators, rounds, algos) =
            (self.peers, self.validators, self.rounds, self.algos.clone());
        Ok(VoprConfig { peers, validators, rounds, algos, ..d })
    }

    /// The one-line command that runs seed `seed` alone with these settings.
    fn reproduce(&self, seed: u64) -> String {
        let d = VoprConfig::default();
        let mut s = format!("tessera vopr --seeds 1 --from {seed}");
        if self.peers != d.peers {
            s += &format!(" --peers {}", self.peers);
        }
        if self.validators != d.validators {
            s += &format!(" --validators {}", self.validators);
        }
        if self.rounds != d.rounds {
            s += &format!(" --rounds {}", self.rounds);
        }
        if self.algos != d.algos {
            let names: Vec<String> = self.algos.iter().map(|a| a.to_string()).collect();
            s += &format!(" --algos {}", names.join(","));
        }
        s
    }
}

/// A line above the bar (or on stderr when there is none).
fn say(pb: &ProgressBar, line: String) {
    match pb.is_hidden() {
        true => eprintln!("{line}"),
        false => pb.println(line),
    }
}

fn bar(total: u64) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() { ProgressBar::new(total) } else { ProgressBar::hidden() };
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} seeds  {msg}  eta {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    pb.set_style(style);
    pb
}

pub fn run(a: VoprArgs) -> Result<()> {
    let cfg = a.config()?;
    let ds = tessera_sim::vopr::dataset(&a.data_dir)
        .with_context(|| format!("the seeds' dataset in {}", a.data_dir.display()))?;
    let pool = crate::pool(a.threads)?;
    eprintln!(
        "vopr: seeds {}..{}, {} trainers + {} validators, {} rounds of the micro model each, {:.0}–{:.0}% loss, duplication and reordering",
        a.from,
        a.from + a.seeds,
        cfg.peers,
        cfg.validators,
        cfg.rounds,
        cfg.min_rate * 100.0,
        cfg.max_rate * 100.0
    );
    let pb = bar(a.seeds);
    let quiet_every = (a.seeds / 10).max(1);
    let started = std::time::Instant::now();
    let reports: Vec<SeedReport> = pool.install(|| {
        (a.from..a.from + a.seeds)
            .into_par_iter()
            .map(|seed| {
                let r = run_seed(seed, &cfg, &ds);
                if a.verbose {
                    say(&pb, format!("seed {seed}: {:?}", plan(seed, &cfg)));
                }
                if !r.violations.is_empty() {
                    let v = r.violations.join("; ");
                    say(&pb, format!("FAIL seed {seed}: {v}\n  reproduce: {}", a.reproduce(seed)));
                    if a.verbose {
                        r.log.iter().for_each(|l| say(&pb, format!("  {l}")));
                    }
                } else if a.verbose {
                    say(
                        &pb,
                        format!("ok   seed {seed}: {} rounds, {} virtual ms", r.rounds_closed, r.virtual_ms),
                    );
                }
                pb.inc(1);
                if pb.is_hidden() && pb.position().is_multiple_of(quiet_every) {
                    eprintln!("vopr: {}/{} seeds", pb.position(), a.seeds);
                }
                r
            })
            .collect()
    });
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    summarize(&a, &reports, secs)
}

fn summarize(a: &VoprArgs, reports: &[SeedReport], secs: f64) -> Result<()> {
    let failing: Vec<&SeedReport> = reports.iter().filter(|r| !r.violations.is_empty()).collect();
    let mut net = FaultCounts::default();
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut rounds, mut virtual_ms, mut restarts) = (0u64, 0u64, 0u64);
    for r in reports {
        net += &r.net;
        for (k, v) in &r.kinds {
            *kinds.entry(k).or_default() += v;
        }
        rounds += r.rounds_closed;
        restarts += r.restarts;
        virtual_ms += r.virtual_ms;
    }
    let n = reports.len();
    crate::out(&format!(
        "vopr: {n} seeds, {} violations, {:.1} seeds/s ({secs:.1} s); {rounds} rounds closed in {:.0} virtual s",
        failing.len(),
        n as f64 / secs.max(1e-9),
        virtual_ms as f64 / 1000.0
    ));
    crate::out(&format!(
        "network: {} frames lost, {} duplicated, {} reordered, {} delayed; {} cut by partitions; {} dropped with a dead end",
        net.lost, net.duplicated, net.reordered, net.delayed, net.cut, net.stale
    ));
    let listed: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
    crate::out(&format!("scheduled: {}", listed.join(", ")));
    crate::out(&format!("coordinator restarts (crashes that struck): {restarts}"));
    for r in &failing {
        crate::out(&format!("FAIL seed {}: {}  ({})", r.seed, r.violations.join("; "), a.reproduce(r.seed)));
    }
    if !failing.is_empty() {
        bail!("{} of {n} seeds broke an invariant", failing.len());
    }
    Ok(())
}

//! `tessera sim`: N peers of an outer algorithm in one process on a simulated network.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use tessera_sim::{Sim, SimConfig};
use tessera_tensor::hex;

use crate::config::RunConfig;

#[derive(Args, Debug, Default)]
pub struct SimArgs {
    /// A TOML file of simulator settings (a flat table; see --print-config for every key).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    #[arg(long)]
    pub peers: Option<usize>,
    /// ddp | diloco | noloco | sparseloco | demo.
    #[arg(long)]
    pub algo: Option<tessera_sync::Algorithm>,
    /// f32 | int8 | 2bit | sign (diloco and noloco).
    #[arg(long)]
    pub codec: Option<tessera_sync::ValueCodec>,
    #[arg(long)]
    pub inner_steps: Option<u64>,
    #[arg(long)]
    pub rounds: Option<u64>,
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub bandwidth_mbps: Option<f64>,
    #[arg(long)]
    pub rtt_ms: Option<f64>,
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// none | delayed | eager: overlap each round's training with the last round's exchange
    /// (diloco, sparseloco; see the README).
    #[arg(long)]
    pub overlap: Option<tessera_sim::Overlap>,
    /// Dataset directory (default: the embedded corpus, built under runs/data/shakespeare).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Per-round curves as CSV.
    #[arg(long, default_value = "runs/sim.csv")]
    pub csv: PathBuf,
    /// Worker threads (0: one per core); results do not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Parses a flat TOML table over the simulator defaults; unknown keys are errors.
pub fn parse_sim_config(text: &str, origin: &Path) -> Result<SimConfig> {
    SimConfig::from_toml(text).with_context(|| format!("{}: bad simulator config", origin.display()))
}

fn effective(a: &SimArgs) -> Result<SimConfig> {
    let mut c = match &a.config {
        Some(p) => parse_sim_config(&crate::config::read_config_file(p)?, p)?,
        None => SimConfig::default(),
    };
    macro_rules! set {
        ($($flag:ident),*) => { $( if let Some(v) = a.$flag.clone() { c.$flag = v; } )* };
    }
    set!(peers, algo, codec, inner_steps, rounds, preset, seed, batch, bandwidth_mbps, rtt_ms, eval_every);
    if let Some(o) = a.overlap {
        c.overlap = o;
    }
    c.validate()?;
    Ok(c)
}

pub fn run(a: SimArgs) -> Result<()> {
    let c = effective(&a)?;
    if a.print_config {
        crate::out(&toml::to_string(&c)?);
        return Ok(());
    }
    let mut data_cfg = RunConfig::defaults();
    if let Some(d) = &a.data_dir {
        data_cfg.data.dir = d.clone();
    }
    let ds = crate::train::open_dataset(&data_cfg, &|s| eprintln!("{s}"))?;
    let pool = crate::pool(a.threads)?;
    let mut sim = Sim::new(c.clone(), &ds)?;
    let codec = c.update_codec()?;
    let sends = match codec.top_k {
        Some(k) => format!("top-{k} of {} as {:?}", codec.chunk, codec.values),
        None => format!("{:?}", codec.values),
    };
    eprintln!(
        "simulating {} peers, {} (sends {sends}), H = {}, {} rounds, {} ({} parameters), {} Mbit/s, {} ms RTT",
        c.peers,
        c.algo,
        c.h(),
        c.rounds,
        c.preset,
        sim.num_params(),
        c.bandwidth_mbps,
        c.rtt_ms
    );
    if let Some(parent) = a.csv.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut csv = std::fs::File::create(&a.csv).with_context(|| format!("creating {}", a.csv.display()))?;
    writeln!(csv, "algo,codec,round,steps,tokens,sim_time_s,train_loss,val_loss,spread,bytes_sent_per_peer,bytes_recv_per_peer,rejected,hub_bytes_sent,hub_bytes_recv")?;
    let pb = crate::train::make_bar(c.rounds, 0);
    let mut last = None;
    pool.install(|| -> Result<()> {
        for _ in 0..c.rounds {
            let r = sim.run_round()?;
            let np = r.bytes_sent.len() as f64;
            let sent = r.bytes_sent.iter().sum::<u64>() as f64 / np;
            let recv = r.bytes_recv.iter().sum::<u64>() as f64 / np;
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.5}"));
            writeln!(
                csv,
                "{},{},{},{},{},{:.3},{:.5},{},{},{sent:.0},{recv:.0},{},{},{}",
                c.algo,
                c.codec,
                r.round,
                r.steps,
                r.tokens,
                r.sim_time_s,
                r.train_loss,
                opt(r.val_loss),
                opt(r.spread),
                r.rejected,
                r.hub_sent,
                r.hub_recv
            )?;
            pb.set_position(r.round);
            pb.set_message(format!("loss {:.3}  sim {:.0}s", r.train_loss, r.sim_time_s));
            if let Some(v) = r.val_loss {
                let line = format!(
                    "round {:>5}/{}  train {:.4}  val {v:.4}  sent/peer {:.2} MB  sim time {:.1} s",
                    r.round,
                    c.rounds,
                    r.train_loss,
                    sent / 1e6,
                    r.sim_time_s
                );
                if pb.is_hidden() {
                    eprintln!("{line}")
                } else {
                    pb.println(line)
                }
            }
            last = Some(r);
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    if let Some(r) = last.filter(|r| r.sim_time_s > 0.0) {
        let training = r.steps as f64 * c.step_compute_s;
        eprintln!(
            "each peer trained {training:.1} s of {:.1} s simulated: {:.1}% utilisation{}",
            r.sim_time_s,
            100.0 * training / r.sim_time_s,
            match c.overlap {
                tessera_sim::Overlap::None => String::new(),
                o => format!(" (overlap: {})", o.name()),
            }
        );
    }
    crate::out(&format!("state-hash: {}", hex(&sim.state_hash())));
    Ok(())
}

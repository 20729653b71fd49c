//! `tessera bench …`: the reproducible measurements behind BENCHMARKS.md.
//!
//! - `matmul`: GFLOP/s of the deterministic matmul on square and GPT shapes;
//! - `gpt`: training throughput (tokens/s) and peak resident memory of a GPT preset.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use tessera_model::fixtures::SONNETS;
use tessera_model::{text_batch, AdamWConfig, Gpt, GptConfig, Trainer};
use tessera_tensor::rng::Philox;
use tessera_tensor::{matmul, relaxed, simd, MatSpec, TraceMode};

/// The switch of the benchmarks that measure what determinism costs.
#[derive(clap::Args, Debug)]
pub struct FastPath {
    /// Run the non-deterministic fast path instead (threads split one matmul's sum), to
    /// measure what determinism costs. Benchmark only: the bits then depend on the thread
    /// count, and this process refuses to hash any state.
    #[arg(long)]
    nondeterministic: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Matmul GFLOP/s (tab-separated; compare with bench/matmul_numpy.py).
    Matmul {
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Minimum seconds per shape.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[command(flatten)]
        fast: FastPath,
    },
    /// GPT training tokens/s and peak memory (compare with bench/gpt_torch.py).
    Gpt {
        #[arg(long, default_value = "small")]
        preset: String,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timed steps (after 2 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: u64,
        #[command(flatten)]
        fast: FastPath,
    },
    /// The communication table from `tessera sim` CSVs (one per method; the first must be DDP):
    /// final validation loss, bytes per peer, ratio to DDP, and simulated time to reach
    /// 1.02 × DDP's final validation loss. Also draws loss against bytes as a PNG.
    CommReport {
        /// Where to write comm-loss-vs-bytes.png.
        #[arg(long, default_value = "bench/results")]
        out_dir: std::path::PathBuf,
        csvs: Vec<std::path::PathBuf>,
    },
    /// The test-only link shaper measured on loopback: one-way time of lone small frames and
    /// fetch time of a blob through a shaped uplink, against the figures it is set to.
    Link {
        #[arg(long, default_value = "10mbit,50ms")]
        shape: tessera_net::Shaping,
        #[arg(long, default_value_t = 4_000_000)]
        blob_bytes: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The dispute game over a real segment: a trainer that computed one operator wrongly, at
    /// `faults` positions spread over the segment's steps and operators. Prints the exchanges,
    /// the bytes revealed and fetched, and the referee's compute against one training step.
    Dispute {
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Steps in the segment (the run's `commit_every`).
        #[arg(long, default_value_t = 5)]
        steps: u64,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        faults: usize,
        #[arg(long, default_value = "runs/data/embedded")]
        data_dir: std::path::PathBuf,
    },
    /// Spot checks: the checker's compute against the chance of catching a trainer that
    /// cheats every round (skip-steps, wrong-data, forge), for each k and checking rate.
    Checks {
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Inner steps per round (H).
        #[arg(long, default_value_t = 20)]
        h: u64,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Caught within this many rounds.
        #[arg(long, default_value_t = 20)]
        rounds: u64,
        /// Simulated cheaters per configuration.
        #[arg(long, default_value_t = 10_000)]
        trials: u64,
        /// Segment lengths (commit_every) to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,2,5,10")]
        ks: Vec<u64>,
        /// Checking rates to measure.
        #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.5,1")]
        rates: Vec<f64>,
        #[arg(long, default_value = "runs/data/embedded")]
        data_dir: std::path::PathBuf,
    },
    /// The coordinator's CPU time to decide one round with many members (their updates
    /// trained beforehand; checks off): every commit and update blob, then the close.
    Coordinator {
        /// The model (`micro` by default: 10,000 `tiny` updates take 7 GB and a minute).
        #[arg(long, default_value = "micro")]
        preset: String,
        /// Member counts to measure (at most the 16,384 members a run config allows).
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024,10000")]
        members: Vec<usize>,
        #[arg(long, default_value = "runs/data/embedded")]
        data_dir: std::path::PathBuf,
    },
    /// kill -9 at random moments while a process writes state blobs and checkpoints as the
    /// daemons do; after each kill, everything on disk must load and verify.
    CrashWrites {
        #[arg(long, default_value_t = 1000)]
        trials: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Each kill comes at a uniform moment within this many ms of the writer's start.
        #[arg(long, default_value_t = 60)]
        max_delay_ms: u64,
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Scratch directory (emptied first).
        #[arg(long, default_value = "runs/crash-writes")]
        dir: std::path::PathBuf,
    },
    /// The writer that `crash-writes` kills (loops until killed).
    #[command(hide = true)]
    CrashWriter {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value = "tiny")]
        preset: String,
    },
    /// The determinism reference run of the test suite (tiny GPT, 20 steps, seed 1234, batch
    /// 4, the Sonnets); prints its state hash, which must equal the golden hash in the tests.
    ReferenceRun {
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Matmul { threads, seconds, fast } => {
            relaxed::set_enabled(fast.nondeterministic);
            run_matmul(threads, seconds)
        }
        BenchCmd::Gpt { preset, batch, threads, steps, fast } => {
            relaxed::set_enabled(fast.nondeterministic);
            run_gpt(&preset, batch, threads, steps)
        }
        BenchCmd::CommReport { out_dir, csvs } => comm_report(&out_dir, &csvs),
        BenchCmd::Coordinator { preset, members, data_dir } => {
            crate::coord_bench::run(&preset, &members, &data_dir)
        }
        BenchCmd::Link { shape, blob_bytes, rounds } => run_link(shape, blob_bytes, rounds),
        BenchCmd::CrashWrites { trials, seed, max_delay_ms, preset, dir } => {
            crate::crash_bench::run(&crate::crash_bench::CrashBench {
                trials,
                seed,
                max_delay_ms,
                dir: &dir,
                preset: &preset,
            })
        }
        BenchCmd::CrashWriter { dir, preset } => crate::crash_bench::writer(&dir, &preset),
        BenchCmd::Dispute { preset, steps, batch, faults, data_dir } => {
            crate::dispute_bench::run(&preset, steps, batch, faults, &data_dir)
        }
        BenchCmd::Checks { preset, h, batch, rounds, trials, ks, rates, data_dir } => {
            let b = crate::check_bench::ChecksBench {
                preset: &preset,
                h,
                batch,
                rounds,
                trials,
                ks: &ks,
                rates: &rates,
                data_dir: &data_dir,
            };
            crate::check_bench::run(&b)
        }
        BenchCmd::ReferenceRun { threads } => {
            let h = crate::pool(threads)?.install(|| tessera_model::fixtures::reference_run(20))?;
            crate::out(&format!("state-hash: {}", tessera_tensor::hex(&h)));
            Ok(())
        }
    }
}

/// Trains `preset` at `batch × context` and prints tokens/s and peak RSS, tab-separated.
fn run_gpt(preset: &str, batch: usize, threads: usize, steps: u64) -> Result<()> {
    let cfg = GptConfig::preset(preset)?;
    let ctx = cfg.context;
    let mut tr = Trainer::new(Gpt::new(cfg, 1)?, AdamWConfig::for_run(steps + 2))?;
    let pool = crate::pool(threads)?;
    let secs = pool.install(|| -> Result<f64> {
        for s in 0..2 {
            tr.step(&text_batch(SONNETS, 1, s, batch, ctx)?, TraceMode::Off)?;
        }
        let start = Instant::now();
        for s in 2..steps + 2 {
            tr.step(&text_batch(SONNETS, 1, s, batch, ctx)?, TraceMode::Off)?;
        }
        Ok(start.elapsed().as_secs_f64())
    })?;
    let tps = (steps as usize * batch * ctx) as f64 / secs;
    let rss = peak_rss_mib().context("reading peak memory")?;
    crate::out("impl\tthreads\tpreset\tbatch\tcontext\ttokens_per_s\tpeak_rss_mib\tpath");
    let path = simd::active_path().name();
    let name = impl_name();
    crate::out(&format!("{name}\t{threads}\t{preset}\t{batch}\t{ctx}\t{tps:.0}\t{rss:.0}\t{path}"));
    Ok(())
}

/// `tessera`, or `tessera-nondet` on the non-deterministic fast path.
fn impl_name() -> &'static str {
    if relaxed::enabled() {
        "tessera-nondet"
    } else {
        "tessera"
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmHWM value")?.parse()?;
    Ok(kib / 1024.0)
}

/// The shapes measured: squares, then the `small` GPT's real products at batch 16 × 128
/// (N = 2048 tokens, d = 256, MLP 1024, vocab 256), forward and backward forms.
pub fn matmul_shapes() -> Vec<(&'static str, MatSpec)> {
    let sq = |n| MatSpec { m: n, n, k: n, ta: false, tb: false };
    let s = |m, n, k, ta, tb| MatSpec { m, n, k, ta, tb };
    vec![
        ("square-256", sq(256)),
        ("square-512", sq(512)),
        ("square-1024", sq(1024)),
        ("gpt-qkv-fwd x·Wᵀ 2048x256x256", s(2048, 256, 256, false, true)),
        ("gpt-mlp-up-fwd x·Wᵀ 2048x1024x256", s(2048, 1024, 256, false, true)),
        ("gpt-mlp-down-fwd x·Wᵀ 2048x256x1024", s(2048, 256, 1024, false, true)),
        ("gpt-mlp-up-dW dyᵀ·x 1024x256x2048", s(1024, 256, 2048, true, false)),
        ("gpt-mlp-down-dW dyᵀ·x 256x1024x2048", s(256, 1024, 2048, true, false)),
        ("gpt-attn-dW dyᵀ·x 256x256x2048", s(256, 256, 2048, true, false)),
        ("gpt-mlp-up-dx dy·W 2048x256x1024", s(2048, 256, 1024, false, false)),
    ]
}

/// Runs each shape for at least `min_secs` and prints one tab-separated line per shape.
fn run_matmul(threads: usize, min_secs: f64) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    crate::out("impl\tthreads\tshape\tm\tn\tk\tgflops");
    for (name, spec) in matmul_shapes() {
        let r = Philox::new(1);
        let a: Vec<f32> = (0..(spec.m * spec.k) as u64).map(|i| r.uniform(1, i)).collect();
        let b: Vec<f32> = (0..(spec.k * spec.n) as u64).map(|i| r.uniform(2, i)).collect();
        let mut c = vec![0.0f32; spec.m * spec.n];
        let flops = 2.0 * (spec.m * spec.n * spec.k) as f64;
        let best = pool.install(|| {
            matmul(&spec, &a, &b, &mut c); // warm-up
            let (mut best, start) = (f64::INFINITY, Instant::now());
            while start.elapsed().as_secs_f64() < min_secs {
                let t = Instant::now();
                matmul(&spec, &a, &b, &mut c);
                best = best.min(t.elapsed().as_secs_f64());
            }
            best
        });
        let (m, n, k) = (spec.m, spec.n, spec.k);
        crate::out(&format!("{}\t{threads}\t{name}\t{m}\t{n}\t{k}\t{:.1}", impl_name(), flops / best / 1e9));
    }
    Ok(())
}

/// One method's curve from a `tessera sim` CSV.
struct Curve {
    label: String,
    /// (bytes sent per peer, simulated seconds, validation loss) at each evaluation.
    evals: Vec<(f64, f64, f64)>,
    /// At the last row: bytes sent + received per peer, and the hub's (None in older CSVs).
    moved: f64,
    hub: Option<f64>,
}

fn read_curve(path: &std::path::Path) -> Result<Curve> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut label = String::new();
    let mut evals = Vec::new();
    let (mut moved, mut hub) = (0.0, None);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 12 {
            anyhow::bail!("{}: malformed row {line:?}", path.display());
        }
        moved = f[9].parse::<f64>()? + f[10].parse::<f64>()?;
        hub = match (f.get(12), f.get(13)) {
            (Some(s), Some(r)) => Some(s.parse::<f64>()? + r.parse::<f64>()?),
            _ => None,
        };
        label =
            if matches!(f[0], "diloco" | "noloco") { format!("{} {}", f[0], f[1]) } else { f[0].to_string() };
        if let Ok(v) = f[7].parse::<f64>() {
            evals.push((f[9].parse()?, f[5].parse()?, v));
        }
    }
    anyhow::ensure!(!evals.is_empty(), "{}: no validation rows", path.display());
    Ok(Curve { label, evals, moved, hub })
}

fn comm_report(out_dir: &std::path::Path, csvs: &[std::path::PathBuf]) -> Result<()> {
    let curves: Vec<Curve> = csvs.iter().map(|p| read_curve(p)).collect::<Result<_>>()?;
    let ddp = curves.first().context("give the DDP CSV first")?;
    anyhow::ensure!(ddp.label == "ddp", "the first CSV must be DDP's, got {}", ddp.label);
    let (ddp_bytes, _, ddp_loss) = *ddp.evals.last().expect("non-empty");
    let target = 1.02 * ddp_loss;
    crate::out(&format!("target loss: {target:.4} (1.02 × DDP's final {ddp_loss:.4})"));
    crate::out("| method | final val loss | vs DDP | bytes sent per peer | DDP bytes ÷ method bytes | sent + received per peer | DDP ÷ method (sent + received) | hub (coordinator) sent + received | sim. time to target |");
    crate::out("|---|---|---|---|---|---|---|---|---|");
    for c in &curves {
        let (bytes, _, loss) = *c.evals.last().expect("non-empty");
        let reach = c
            .evals
            .iter()
            .find(|e| e.2 <= target)
            .map_or("not reached".to_string(), |e| format!("{:.0} s", e.1));
        let hub = c.hub.map_or("—".to_string(), |h| format!("{:.3} MB", h / 1e6));
        crate::out(&format!(
            "| {} | {loss:.4} | {:+.1}% | {:.3} MB | {:.0}× | {:.3} MB | {:.0}× | {hub} | {reach} |",
            c.label,
            100.0 * (loss / ddp_loss - 1.0),
            bytes / 1e6,
            ddp_bytes / bytes,
            c.moved / 1e6,
            ddp.moved / c.moved
        ));
    }
    let colors = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [0, 0, 0],
    ];
    let series = curves
        .iter()
        .zip(colors.iter().cycle())
        .map(|(c, &color)| crate::plot::Series {
            label: c.label.clone(),
            color,
            points: c.evals.iter().filter(|e| e.0 > 0.0).map(|e| (e.0.log10(), e.2)).collect(),
            dashed: false,
        })
        .collect();
    std::fs::create_dir_all(out_dir)?;
    let png = out_dir.join("comm-loss-vs-bytes.png");
    crate::plot::Chart {
        title: "val loss vs bytes".into(),
        x_label: "log10 bytes sent per peer".into(),
        y_label: "val loss".into(),
        series,
    }
    .write(&png)?;
    eprintln!("plot: {}", png.display());
    Ok(())
}

fn run_link(shape: tessera_net::Shaping, blob_bytes: usize, rounds: usize) -> Result<()> {
    let r = tessera_net::measure_link(shape, blob_bytes, rounds)?;
    let delay = shape.delay_ms as f64 / 1e3;
    let frame_want = delay + (64.0 + 4.0) * 8.0 / shape.rate_bps;
    let blob_want = delay + blob_bytes as f64 * 8.0 / shape.rate_bps;
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    crate::out(&format!("link: {:.1} Mbit/s, {} ms one-way (set)", shape.rate_bps / 1e6, shape.delay_ms));
    crate::out("what\tset_s\tmeasured_median_s\tmin_s\tmax_s\tmeasured_mbit_s");
    let row = |what: &str, want: f64, v: &[f64], bytes: usize| {
        let (lo, hi) = (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
        let m = median(v);
        let rate = bytes as f64 * 8.0 / (m - delay).max(1e-9) / 1e6;
        crate::out(&format!("{what}\t{want:.4}\t{m:.4}\t{lo:.4}\t{hi:.4}\t{rate:.2}"));
    };
    row("frame-64B", frame_want, &r.frame_s, 64);
    row(&format!("blob-{blob_bytes}B"), blob_want, &r.blob_s, blob_bytes);
    Ok(())
}

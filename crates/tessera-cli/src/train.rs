//! `tessera train`: single-machine GPT training with validation, checkpoints and exact resume.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_checkpoint::{latest, load, read_meta, save, ModelShape, SaveOptions};
use tessera_data::{embedded_corpus, ingest, ingest_bytes, BatchKey, Dataset, IngestOptions, SourceFormat};
use tessera_data::{Manifest, EMBEDDED_CORPUS_NAME};
use tessera_model::{Gpt, GptConfig, Trainer};
use tessera_tensor::{hex, simd, TraceMode};

use crate::config::RunConfig;
use crate::plot::{Chart, Series};

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// A TOML run config; keys not given keep their defaults (see --print-config).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Model preset: tiny (~0.1M parameters), small (~3.3M) or base (~11M).
    #[arg(long)]
    pub preset: Option<String>,
    /// Total optimizer steps of the run.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Stop after this many steps (with a checkpoint); resume later with --resume.
    #[arg(long)]
    pub until: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sequences per step.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Worker threads (0: one per core); results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Corpus to train on: a UTF-8 text file or a directory of them (default: embedded).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Dataset directory (shards + manifest).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output directory for metrics.csv, loss.png and checkpoints.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    #[arg(long)]
    pub eval_every: Option<u64>,
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Resume from a checkpoint directory, or (without a value) from the newest in the
    /// checkpoint directory. The run continues bit-exactly.
    #[arg(long, num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
}

/// Builds the effective config: file (or defaults), then flags.
pub fn effective_config(a: &TrainArgs) -> Result<RunConfig> {
    let mut c = match &a.config {
        Some(p) => RunConfig::load(p)?,
        None => RunConfig::defaults(),
    };
    macro_rules! set {
        ($flag:expr, $field:expr) => {
            if let Some(v) = $flag.clone() {
                $field = v;
            }
        };
    }
    set!(a.preset, c.model.preset);
    set!(a.steps, c.train.steps);
    set!(a.seed, c.train.seed);
    set!(a.batch, c.train.batch);
    set!(a.threads, c.train.threads);
    set!(a.lr, c.optim.lr);
    set!(a.data, c.data.corpus);
    set!(a.data_dir, c.data.dir);
    set!(a.out_dir, c.train.out_dir);
    set!(a.eval_every, c.eval.every);
    set!(a.checkpoint_dir, c.checkpoint.dir);
    set!(a.checkpoint_every, c.checkpoint.every);
    c.validate()?;
    Ok(c)
}

/// Opens the dataset, building it from the corpus first if the directory has no manifest.
pub fn open_dataset(c: &RunConfig, log: &dyn Fn(&str)) -> Result<Dataset> {
    let dir = c.data_dir();
    let embedded = c.data.corpus.as_os_str().is_empty();
    let source =
        if embedded { EMBEDDED_CORPUS_NAME.to_string() } else { c.data.corpus.display().to_string() };
    if dir.join(tessera_data::MANIFEST_FILE).exists() {
        let m = Manifest::read(&dir)?;
        if m.source != source {
            bail!(
                "dataset {} was built from {:?}, not {source:?}: choose another data dir (--data-dir)",
                dir.display(),
                m.source
            );
        }
    } else {
        log(&format!("building dataset {} from {source}", dir.display()));
        let opts = IngestOptions {
            format: if c.data.format == "u16" { SourceFormat::U16 } else { SourceFormat::Text },
            shard_tokens: c.data.shard_tokens,
            vocab: c.data.vocab,
            ..IngestOptions::default()
        };
        let m = if embedded {
            ingest_bytes(&embedded_corpus()?, EMBEDDED_CORPUS_NAME, &dir, &opts)?
        } else {
            ingest(&c.data.corpus, &dir, &opts)?
        };
        log(&format!(
            "  {} training and {} validation shards ({} + {} tokens)",
            m.train.len(),
            m.val.len(),
            m.train_tokens(),
            m.val_tokens()
        ));
    }
    Ok(Dataset::open(&dir)?)
}

/// Restores the trainer from a checkpoint after checking it belongs to this run.
fn resume(tr: &mut Trainer<Gpt>, c: &RunConfig, ds: &Dataset, which: Option<&Path>) -> Result<PathBuf> {
    let path = match which {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = c.checkpoint_dir();
            latest(&dir)?.with_context(|| format!("--resume: no checkpoint in {}", dir.display()))?
        }
    };
    let meta = read_meta(&path)?;
    let then = RunConfig::parse(&meta.run_config, &path.join("meta.json"))?;
    for ((key, old), (_, new)) in then.identity().into_iter().zip(c.identity()) {
        if old != new {
            bail!("cannot resume {}: {key} was {old}, now {new}", path.display());
        }
    }
    let here = hex(&ds.manifest_hash());
    if meta.dataset.as_deref() != Some(here.as_str()) {
        bail!(
            "cannot resume {}: it was trained on dataset {:?}, this run uses {here}",
            path.display(),
            meta.dataset
        );
    }
    let ck = load(&path, &tr.model.params)?;
    tr.model.params = ck.params;
    tr.opt = ck.opt;
    Ok(path)
}

/// Mean loss over the fixed validation batches.
fn eval(tr: &Trainer<Gpt>, ds: &Dataset, c: &RunConfig, ctx: usize) -> Result<f64> {
    let mut sum = 0.0f64;
    for i in 0..c.eval.batches {
        sum += f64::from(tr.eval_loss(&ds.val_batch(i, c.train.batch, ctx)?)?);
    }
    Ok(sum / c.eval.batches as f64)
}

/// The metrics file: rows after `keep_through` (from an abandoned run) are dropped.
fn open_metrics(path: &Path, keep_through: u64) -> Result<std::fs::File> {
    const HEADER: &str = "step,tokens,train_loss,val_loss,val_bits_per_byte,lr,elapsed_s";
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut kept = vec![HEADER.to_string()];
    kept.extend(
        old.lines()
            .skip(1)
            .filter(|l| {
                l.split(',').next().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s <= keep_through)
            })
            .map(str::to_string),
    );
    std::fs::write(path, kept.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(std::fs::OpenOptions::new().append(true).open(path)?)
}

/// Draws loss.png from metrics.csv.
pub fn plot_metrics(csv: &Path, png: &Path, unigram_bits: f64) -> Result<()> {
    let text = std::fs::read_to_string(csv)?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let ln2 = std::f64::consts::LN_2;
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(s), Some(t)) =
            (f.first().and_then(|v| v.parse::<f64>().ok()), f.get(2).and_then(|v| v.parse::<f64>().ok()))
        else {
            continue;
        };
        train.push((s, t / ln2));
        if let Some(v) = f.get(3).and_then(|v| v.parse::<f64>().ok()) {
            val.push((s, v / ln2));
        }
    }
    let x_max = train.last().map_or(1.0, |p| p.0);
    let series = vec![
        Series { label: "train".into(), color: [31, 119, 180], points: train, dashed: false },
        Series { label: "val".into(), color: [255, 127, 14], points: val, dashed: false },
        Series {
            label: "unigram".into(),
            color: [120, 120, 120],
            points: vec![(0.0, unigram_bits), (x_max, unigram_bits)],
            dashed: true,
        },
    ];
    Chart { title: "tessera train".into(), x_label: "step".into(), y_label: "bits/byte".into(), series }
        .write(png)
}

pub fn make_bar(total: u64, start: u64) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() { ProgressBar::new(total) } else { ProgressBar::hidden() };
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_position(start);
    pb
}

pub fn run(a: TrainArgs) -> Result<()> {
    let c = effective_config(&a)?;
    if a.print_config {
        print!("{}", c.to_toml());
        return Ok(());
    }
    let gcfg = GptConfig::preset(&c.model.preset)?;
    let ctx = gcfg.context;
    std::fs::create_dir_all(&c.train.out_dir)
        .with_context(|| format!("creating {}", c.train.out_dir.display()))?;
    let pool = crate::pool(c.train.threads)?;
    let pb = make_bar(c.train.steps, 0);
    let log = |s: &str| if pb.is_hidden() { eprintln!("{s}") } else { pb.println(s) };
    let ds = open_dataset(&c, &log)?;
    let unigram = ds.unigram_bits_per_token()?;
    let mut tr = Trainer::new(Gpt::new(gcfg.clone(), c.train.seed)?, c.adamw())?;
    if let Some(which) = &a.resume {
        let p = resume(&mut tr, &c, &ds, which.as_deref())?;
        log(&format!("resumed from {} at step {}", p.display(), tr.opt.step));
    }
    let start = tr.opt.step;
    let end = a.until.unwrap_or(c.train.steps).min(c.train.steps);
    pb.set_position(start);
    log(&format!(
        "training {} ({} parameters) steps {}..{end} of {}, batch {}×{ctx}, {} threads, {} path",
        c.model.preset,
        gcfg.num_params(),
        start,
        c.train.steps,
        c.train.batch,
        pool.current_num_threads(),
        simd::active_path().name(),
    ));
    log(&format!("unigram baseline on validation: {unigram:.3} bits/byte"));
    let metrics_path = c.train.out_dir.join("metrics.csv");
    let mut metrics = open_metrics(&metrics_path, start)?;
    let ckdir = c.checkpoint_dir();
    let run_toml = c.to_toml();
    let shape = ModelShape::gpt(&c.model.preset, &gcfg);
    let dataset_hash = hex(&ds.manifest_hash());
    let save_now = |tr: &Trainer<Gpt>| -> Result<PathBuf> {
        let info = (&shape, Some(dataset_hash.clone()), run_toml.as_str());
        Ok(save(&ckdir, &tr.model.params, &tr.opt, info, &SaveOptions::default())?)
    };
    let t0 = Instant::now();
    let mut last_val = None;
    pool.install(|| -> Result<()> {
        for s in start..end {
            let key = BatchKey { seed: c.train.seed, round: 0, slot: 0, step: s };
            let out = tr.step(&ds.train_batch(&key, c.train.batch, ctx)?, TraceMode::Off)?;
            let done = s + 1;
            if !out.loss.is_finite() {
                bail!("training diverged at step {done} (loss {}); the last checkpoint is intact", out.loss);
            }
            let secs = t0.elapsed().as_secs_f64();
            let tps = ((done - start) as usize * c.train.batch * ctx) as f64 / secs;
            pb.set_position(done);
            pb.set_message(format!("loss {:.3}  {tps:.0} tok/s", out.loss));
            let is_eval = done == end || (c.eval.every > 0 && done % c.eval.every == 0);
            let val = if is_eval { Some(eval(&tr, &ds, &c, ctx)?) } else { None };
            let lr = c.adamw().lr_at(done);
            let vcol = val.map_or(String::new(), |v| format!("{v:.5},{:.5}", v / std::f64::consts::LN_2));
            let vcol = if vcol.is_empty() { ",".to_string() } else { vcol };
            let tokens = done as usize * c.train.batch * ctx;
            writeln!(metrics, "{done},{tokens},{:.5},{vcol},{lr:.6e},{secs:.2}", out.loss)?;
            if let Some(v) = val {
                last_val = Some(v);
                let bpb = v / std::f64::consts::LN_2;
                log(&format!(
                    "step {done:>6}/{}  train {:.4}  val {v:.4} ({bpb:.3} bits/byte)  {tps:.0} tok/s",
                    c.train.steps, out.loss
                ));
            }
            if done == end || (c.checkpoint.every > 0 && done % c.checkpoint.every == 0) {
                let p = save_now(&tr)?;
                log(&format!("checkpoint {}", p.display()));
            }
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    metrics.flush()?;
    let png = c.train.out_dir.join("loss.png");
    plot_metrics(&metrics_path, &png, unigram)?;
    if let Some(v) = last_val {
        let bpb = v / std::f64::consts::LN_2;
        eprintln!("validation: {bpb:.3} bits/byte (unigram baseline {unigram:.3}); curve: {}", png.display());
    }
    crate::out(&format!("state-hash: {}", hex(&tr.state_hash())));
    Ok(())
}

//! `tessera bench crash-writes`: kill -9 at random moments while a process writes checkpoints
//! and state blobs the way the daemons do, and check after every kill that everything left on
//! disk loads and verifies (S3 of the hostile-peers issue).
//!
//! The writer (`tessera bench crash-writer`, hidden) loops: a state blob through
//! [`tessera_node::Store::put_blob`], a record of it in the store's SQLite, a checkpoint through
//! [`tessera_checkpoint::save`], then [`tessera_checkpoint::prune`] to the newest 3. Each state
//! differs from the last. After each kill the parent opens the store, reads back every blob
//! (hash-checked and decoded), loads every checkpoint (file hashes and state hash), and counts
//! the temporaries the kill left (evidence that it landed inside a write).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tessera_coord::{RunConfig, RunSpec};

/// Checkpoints the writer keeps.
const KEEP: usize = 3;

fn spec(preset: &str) -> Result<RunSpec> {
    let cfg = RunConfig::default().with(|c| c.preset = preset.to_string());
    Ok(RunSpec::new(cfg)?)
}

/// The writer: loops until killed. Prints `ready` once set up.
pub fn writer(dir: &Path, preset: &str) -> Result<()> {
    let spec = spec(preset)?;
    let store = tessera_node::Store::open(&dir.join("store"))?;
    let ckdir = dir.join("checkpoints");
    let start = match tessera_checkpoint::latest(&ckdir)? {
        Some(p) => tessera_checkpoint::read_meta(&p)?.step + 1,
        None => 1,
    };
    let mut state = spec.initial_state();
    let shape = tessera_checkpoint::ModelShape::gpt(preset, &spec.gpt);
    let config = spec.cfg.to_toml();
    println!("ready");
    for i in start.. {
        state.round = i;
        let at = (i as usize) % state.theta.len();
        state.theta[at] += 1.0;
        let blob = state.encode();
        let h = state.hash();
        store.put_blob(&h, &blob)?;
        store.set_meta("last_state", &h)?;
        let params = spec.params(&state.theta)?;
        let mut opt = tessera_model::OptState::new(&params);
        opt.step = i;
        tessera_checkpoint::save(&ckdir, &params, &opt, (&shape, None, &config), &Default::default())?;
        tessera_checkpoint::prune(&ckdir, KEEP)?;
    }
    Ok(())
}

/// What the checks after the kills found.
#[derive(Debug, Default)]
struct Tally {
    trials: u64,
    blobs_verified: u64,
    checkpoints_verified: u64,
    corrupt: Vec<String>,
    /// Kills that left a temporary file or directory behind (landed inside a write).
    mid_write: u64,
    last_step: u64,
    /// Blobs verified after an earlier kill (a later writer never rewrites a blob it finds).
    seen: std::collections::HashSet<String>,
}

/// Checks everything on disk after a kill: every blob not verified before, the blob the
/// store's record names, every checkpoint. Appends what failed to `t.corrupt`.
fn verify(dir: &Path, spec: &RunSpec, t: &mut Tally) -> Result<()> {
    let store = tessera_node::Store::open(&dir.join("store"));
    let store = match store {
        Ok(s) => s,
        Err(e) => {
            t.corrupt.push(format!("store does not open: {e}"));
            return Ok(());
        }
    };
    let mut left_temp = false;
    for e in std::fs::read_dir(dir.join("store").join("blobs"))? {
        let name = e?.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            left_temp = true;
            continue;
        }
        if !t.seen.insert(name.clone()) {
            continue;
        }
        let Some(h) = tessera_tensor::unhex32(&name) else {
            t.corrupt.push(format!("stray file {name} among the blobs"));
            continue;
        };
        match store.state(spec, &h) {
            Ok(_) => t.blobs_verified += 1,
            Err(e) => t.corrupt.push(format!("blob {name}: {e}")),
        }
    }
    if let Some(h) = store.meta("last_state")? {
        let h: [u8; 32] = h.as_slice().try_into().context("a 32-byte hash")?;
        if let Err(e) = store.state(spec, &h) {
            t.corrupt.push(format!("the recorded last state: {e}"));
        }
    }
    let ckdir = dir.join("checkpoints");
    for e in std::fs::read_dir(&ckdir).into_iter().flatten() {
        let p = e?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if name.starts_with('.') {
            left_temp = true;
            continue;
        }
        match tessera_checkpoint::load(&p, &spec.template) {
            Ok(c) => {
                t.checkpoints_verified += 1;
                t.last_step = t.last_step.max(c.meta.step);
            }
            Err(e) => t.corrupt.push(format!("checkpoint {name}: {e}")),
        }
    }
    t.mid_write += left_temp as u64;
    Ok(())
}

/// How long after `ready` trial `i` kills the writer, in microseconds below `max_us`.
fn delay_us(seed: u64, i: u64, max_us: u64) -> u64 {
    let rng = tessera_tensor::rng::Philox::new(seed);
    rng.below(tessera_tensor::rng::purpose("crash-writes kill delay"), i, max_us.max(1))
}

/// The settings of `tessera bench crash-writes`.
pub struct CrashBench<'a> {
    pub trials: u64,
    pub seed: u64,
    pub max_delay_ms: u64,
    pub dir: &'a Path,
    pub preset: &'a str,
}

pub fn run(b: &CrashBench) -> Result<()> {
    let spec = spec(b.preset)?;
    let _ = std::fs::remove_dir_all(b.dir);
    std::fs::create_dir_all(b.dir)?;
    let exe = std::env::current_exe()?;
    let mut t = Tally::default();
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(b.trials);
    for i in 0..b.trials {
        kill_one(&exe, b, delay_us(b.seed, i, b.max_delay_ms * 1000))?;
        verify(b.dir, &spec, &mut t)?;
        t.trials += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "crash-writes: {} kill -9 trials in {:.1} s (preset {}, kill 0–{} ms after start, seed {})",
        t.trials,
        t0.elapsed().as_secs_f64(),
        b.preset,
        b.max_delay_ms,
        b.seed
    );
    println!("  killed inside a write (a temporary left behind): {}", t.mid_write);
    println!(
        "  loads after the kills: {} state blobs and {} checkpoints verified",
        t.blobs_verified, t.checkpoints_verified
    );
    println!("  newest checkpoint step reached: {}", t.last_step);
    println!("  corrupt loads: {}", t.corrupt.len());
    for c in t.corrupt.iter().take(20) {
        println!("    {c}");
    }
    if !t.corrupt.is_empty() {
        bail!("{} corrupt loads after kill -9", t.corrupt.len());
    }
    Ok(())
}

/// Starts a writer, waits for it to be ready, kills it (SIGKILL) `delay_us` later.
fn kill_one(exe: &PathBuf, b: &CrashBench, delay_us: u64) -> Result<()> {
    let mut child = Command::new(exe)
        .args(["bench", "crash-writer", "--preset", b.preset, "--dir"])
        .arg(b.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the writer")?;
    let out = child.stdout.take().context("the writer's stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("the writer did not start: {line:?} ({:?})", child.wait()?);
    }
    std::thread::sleep(Duration::from_micros(delay_us));
    child.kill().context("kill -9")?;
    let status = child.wait()?;
    // A writer that stopped by itself (an error) is a finding too: it must run until killed.
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(9) {
        bail!("the writer exited before it was killed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check can fail: a truncated blob and a checkpoint with a cut file are counted
    /// corrupt, a temporary left behind is counted as a kill inside a write.
    #[test]
    fn verify_finds_truncated_blobs_and_checkpoints() {
        let dir = std::env::temp_dir().join(format!("tessera-crash-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = spec("micro").unwrap();
        let store = tessera_node::Store::open(&dir.join("store")).unwrap();
        let state = spec.initial_state();
        store.put_blob(&state.hash(), &state.encode()).unwrap();
        let mut clean = Tally::default();
        verify(&dir, &spec, &mut clean).unwrap();
        assert_eq!((clean.blobs_verified, clean.corrupt.len(), clean.mid_write), (1, 0, 0));
        // A blob cut short under its final name, and a temporary.
        let mut other = state.clone();
        other.round = 7;
        let blobs = dir.join("store").join("blobs");
        let bytes = other.encode();
        std::fs::write(blobs.join(tessera_tensor::hex(&other.hash())), &bytes[..bytes.len() / 2]).unwrap();
        std::fs::write(blobs.join("ab.tmp"), b"half").unwrap();
        // A checkpoint whose model file was cut.
        let ck = dir.join("checkpoints");
        let params = spec.params(&state.theta).unwrap();
        let opt = tessera_model::OptState::new(&params);
        let shape = tessera_checkpoint::ModelShape::gpt("micro", &spec.gpt);
        let p =
            tessera_checkpoint::save(&ck, &params, &opt, (&shape, None, ""), &Default::default()).unwrap();
        let model = p.join("model.safetensors");
        let len = std::fs::metadata(&model).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&model).unwrap().set_len(len - 8).unwrap();
        let mut t = Tally::default();
        verify(&dir, &spec, &mut t).unwrap();
        assert_eq!(t.corrupt.len(), 2, "{:?}", t.corrupt);
        assert_eq!(t.mid_write, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The run configuration of `tessera train`: a TOML file (every key optional, unknown keys are
//! errors) plus command-line overrides. The defaults are `default-run.toml`, embedded in the
//! binary and printed by `tessera train --print-config`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tessera_model::AdamWConfig;
use tessera_sync::{Algorithm, Training, ValueCodec};

/// The embedded defaults.
pub const DEFAULT_RUN_TOML: &str = include_str!("default-run.toml");
/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a config file of at most [`MAX_CONFIG_BYTES`] (checked before reading).
pub fn read_config_file(path: &Path) -> Result<String> {
    let len =
        std::fs::metadata(path).with_context(|| format!("cannot read config {}", path.display()))?.len();
    if len > MAX_CONFIG_BYTES {
        bail!("config {} is {len} bytes (limit {MAX_CONFIG_BYTES})", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    pub optim: OptimSection,
    pub train: TrainSection,
    pub data: DataSection,
    pub eval: EvalSection,
    pub checkpoint: CheckpointSection,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `tiny`, `small` or `base`.
    pub preset: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f32,
    pub warmup_steps: u64,
    /// Length of the cosine schedule; 0 means `train.steps`.
    pub total_steps: u64,
    pub min_lr_ratio: f32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub steps: u64,
    /// Sequences per step, each as long as the preset's context.
    pub batch: usize,
    pub seed: u64,
    /// Worker threads; 0 = one per core. Results do not depend on it.
    pub threads: usize,
    /// Where metrics, the plot and (by default) checkpoints go.
    pub out_dir: PathBuf,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Text file or directory to train on; empty = the embedded Shakespeare corpus.
    pub corpus: PathBuf,
    /// `text` (UTF-8, byte tokens) or `u16` (pre-tokenized little-endian ids).
    pub format: String,
    /// Vocabulary of `u16` input (text is always 256).
    pub vocab: usize,
    /// Dataset directory (shards + manifest); built from the corpus when it has no manifest.
    /// Empty = `runs/data/shakespeare` for the embedded corpus, else `<out_dir>/data`.
    pub dir: PathBuf,
    pub shard_tokens: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Validation loss every N steps (and at the end); 0 = only at the end.
    pub every: u64,
    /// Fixed validation batches averaged per evaluation.
    pub batches: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Checkpoint every N steps (and at the end); 0 = only at the end.
    pub every: u64,
    /// Empty = `<out_dir>/checkpoints`.
    pub dir: PathBuf,
}

impl RunConfig {
    /// The embedded defaults.
    pub fn defaults() -> Self {
        Self::parse(DEFAULT_RUN_TOML, Path::new("<embedded default-run.toml>"))
            .expect("embedded defaults parse")
    }

    /// Parses TOML over the defaults: keys given replace the default values.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let mut base: toml::Table = DEFAULT_RUN_TOML.parse().expect("embedded defaults are TOML");
        let user: toml::Table =
            text.parse().with_context(|| format!("{} is not valid TOML", origin.display()))?;
        for (section, value) in user {
            match (base.get_mut(&section), value) {
                (Some(toml::Value::Table(b)), toml::Value::Table(u)) => b.extend(u),
                (_, _) => bail!("{}: unknown section [{section}]", origin.display()),
            }
        }
        let cfg: RunConfig = toml::Value::Table(base)
            .try_into()
            .with_context(|| format!("{}: bad run config", origin.display()))?;
        Ok(cfg)
    }

    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read_config_file(path)?, path)
    }

    /// The config as TOML (stored in every checkpoint).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }

    /// These settings as the training section every distributed run shares: one peer, one
    /// round of `train.steps` inner steps, and an outer step that takes the peer's result as it
    /// is (DiLoCo with f32 updates, η = 1, μ = 0: local training, up to one rounding of the
    /// outer subtraction per parameter; see the simulator's tests). The keys
    /// this file shares with `tessera sim` and `run.toml` are validated by its `validate`.
    pub fn training(&self) -> Training {
        Training {
            preset: self.model.preset.clone(),
            seed: self.train.seed,
            algo: Algorithm::DiLoCo,
            codec: ValueCodec::F32,
            inner_steps: self.train.steps,
            rounds: 1,
            batch: self.train.batch,
            inner_lr: self.optim.lr,
            inner_warmup: self.optim.warmup_steps,
            outer_lr: 1.0,
            outer_momentum: 0.0,
            ..Training::default()
        }
    }

    /// Rejects impossible values, naming the key.
    pub fn validate(&self) -> Result<()> {
        self.training().validate().context("bad [model], [train] or [optim] setting")?;
        if !matches!(self.data.format.as_str(), "text" | "u16") {
            bail!("data.format must be \"text\" or \"u16\", not {:?}", self.data.format);
        }
        if self.data.shard_tokens < 2 || self.eval.batches == 0 {
            bail!("data.shard_tokens must be at least 2 and eval.batches at least 1");
        }
        self.adamw().validate().context("bad [optim] section")?;
        Ok(())
    }

    /// The optimizer settings, with the schedule length resolved.
    pub fn adamw(&self) -> AdamWConfig {
        let o = &self.optim;
        AdamWConfig {
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
            grad_clip: (o.grad_clip > 0.0).then_some(o.grad_clip),
            warmup_steps: o.warmup_steps,
            total_steps: if o.total_steps == 0 { self.train.steps } else { o.total_steps },
            min_lr_ratio: o.min_lr_ratio,
        }
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        if self.checkpoint.dir.as_os_str().is_empty() {
            self.train.out_dir.join("checkpoints")
        } else {
            self.checkpoint.dir.clone()
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        match (self.data.dir.as_os_str().is_empty(), self.data.corpus.as_os_str().is_empty()) {
            (false, _) => self.data.dir.clone(),
            (true, true) => PathBuf::from("runs/data/shakespeare"),
            (true, false) => self.train.out_dir.join("data"),
        }
    }

    /// The settings that must not change when a run is resumed, with their values.
    pub fn identity(&self) -> Vec<(&'static str, String)> {
        vec![
            ("model.preset", self.model.preset.clone()),
            ("train.batch", self.train.batch.to_string()),
            ("train.seed", self.train.seed.to_string()),
            ("optim", format!("{:?}", AdamWConfig { total_steps: 0, ..self.adamw() })),
            (
                "the schedule length (optim.total_steps, or train.steps when it is 0; set \
                 optim.total_steps to extend a run without changing its schedule)",
                self.adamw().total_steps.to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let d = RunConfig::defaults();
        d.validate().unwrap();
        assert_eq!(RunConfig::parse(&d.to_toml(), Path::new("x")).unwrap(), d);
    }

    #[test]
    fn partial_files_override_defaults_and_unknown_keys_fail() {
        let c = RunConfig::parse("[train]\nsteps = 7\n", Path::new("x")).unwrap();
        assert_eq!(c.train.steps, 7);
        assert_eq!(c.train.batch, RunConfig::defaults().train.batch);
        let e = RunConfig::parse("[train]\nstepz = 7\n", Path::new("x")).unwrap_err();
        assert!(format!("{e:#}").contains("stepz"), "{e:#}");
        assert!(RunConfig::parse("[trian]\nsteps = 7\n", Path::new("x")).is_err());
        assert!(RunConfig::parse("[train]\nsteps = \"many\"\n", Path::new("x")).is_err());
        let bad = RunConfig::parse("[optim]\nbeta1 = 1.5\n", Path::new("x")).unwrap();
        assert!(bad.validate().is_err());
        let bad = RunConfig::parse("[model]\npreset = \"huge\"\n", Path::new("x")).unwrap();
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("huge"));
        // The shared training section's checks apply here too.
        let bad = RunConfig::parse("[train]\nbatch = 0\n", Path::new("x")).unwrap();
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("batch must be at least 1"));
        let t = RunConfig::defaults().training();
        assert_eq!(
            (t.h(), t.inner_adamw().total_steps),
            (RunConfig::defaults().train.steps, RunConfig::defaults().adamw().total_steps)
        );
    }
}

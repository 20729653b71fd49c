//! Writing and reading checkpoint directories `step-<NNNNNNNN>/`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use tessera_model::{state_hash, OptState, ParamSet};
use tessera_tensor::{hex, Tensor};

use crate::{CkptError, MAX_META_BYTES, MAX_TENSOR_FILE_BYTES};

/// Format tag of `meta.json`.
pub const CKPT_FORMAT: &str = "tessera-ckpt-v1";
const MODEL_FILE: &str = "model.safetensors";
const OPT_FILE: &str = "optimizer.safetensors";
const META_FILE: &str = "meta.json";

/// The model a checkpoint belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// `gpt`.
    pub kind: String,
    pub preset: String,
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub context: usize,
}

impl ModelShape {
    /// The shape of a GPT of preset `preset` with config `g`.
    pub fn gpt(preset: &str, g: &tessera_model::GptConfig) -> Self {
        ModelShape {
            kind: "gpt".into(),
            preset: preset.into(),
            vocab: g.vocab,
            d_model: g.d_model,
            layers: g.layers,
            heads: g.heads,
            context: g.context,
        }
    }
}

/// The contents of `meta.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    pub format: String,
    /// Optimizer steps taken.
    pub step: u64,
    /// Hex BLAKE3 state hash of parameters and optimizer state (as `tessera train` prints).
    pub state_hash: String,
    /// Hex hash of the flat parameter layout.
    pub layout_hash: String,
    pub model: ModelShape,
    /// Hex manifest hash of the training data, when known.
    pub dataset: Option<String>,
    /// The run configuration (TOML) that produced this state.
    pub run_config: String,
    /// BLAKE3 of each tensor file.
    pub files: BTreeMap<String, String>,
}

/// A loaded, verified checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
    pub params: ParamSet,
    pub opt: OptState,
}

/// Save settings. `fail_after_bytes` injects a "no space left on device" error once that many
/// bytes have been written: it exists to test the failure path, as a full disk would.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    pub fail_after_bytes: Option<u64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CkptError + '_ {
    move |source| CkptError::Io { path: path.display().to_string(), source }
}

fn to_bytes(t: &Tensor) -> Vec<u8> {
    t.data().iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn serialize(entries: &[(String, &Tensor)], meta: HashMap<String, String>) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = entries.iter().map(|(_, t)| to_bytes(t)).collect();
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            let v = TensorView::new(Dtype::F32, t.shape().to_vec(), b).expect("f32 view of matching size");
            (name.clone(), v)
        })
        .collect();
    safetensors::serialize(views, &Some(meta)).expect("serializing in-memory tensors")
}

/// Writes the checkpoint of `(params, opt)` into `dir/step-<step>/` and returns its path.
pub fn save(
    dir: &Path,
    params: &ParamSet,
    opt: &OptState,
    info: (&ModelShape, Option<String>, &str),
    opts: &SaveOptions,
) -> Result<PathBuf, CkptError> {
    let (model, dataset, run_config) = info;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let named: Vec<(String, &Tensor)> = params.names().iter().cloned().zip(params.tensors()).collect();
    let model_bytes = serialize(&named, HashMap::from([("format".to_string(), "pt".to_string())]));
    let mut moments: Vec<(String, &Tensor)> = Vec::new();
    for (prefix, set) in [("m", &opt.m), ("v", &opt.v)] {
        moments.extend(set.names().iter().map(|n| format!("{prefix}.{n}")).zip(set.tensors()));
    }
    let opt_bytes = serialize(&moments, HashMap::new());
    let meta = CheckpointMeta {
        format: CKPT_FORMAT.to_string(),
        step: opt.step,
        state_hash: hex(&state_hash(params, opt)),
        layout_hash: hex(&params.layout().hash()),
        model: model.clone(),
        dataset,
        run_config: run_config.to_string(),
        files: BTreeMap::from([
            (MODEL_FILE.to_string(), blake3::hash(&model_bytes).to_hex().to_string()),
            (OPT_FILE.to_string(), blake3::hash(&opt_bytes).to_hex().to_string()),
        ]),
    };
    let mut meta_bytes = serde_json::to_vec_pretty(&meta).expect("meta serializes");
    meta_bytes.push(b'\n');
    let target = dir.join(format!("step-{:08}", opt.step));
    let tmp = dir.join(format!(".tmp-step-{:08}-{}", opt.step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let files = [(MODEL_FILE, &model_bytes), (OPT_FILE, &opt_bytes), (META_FILE, &meta_bytes)];
    if let Err(e) = write_dir(&tmp, &files, opts.fail_after_bytes) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if target.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
        let existing = read_meta(&target)?;
        if existing.state_hash == meta.state_hash {
            return Ok(target);
        }
        return Err(CkptError::Conflict { path: target.display().to_string(), step: opt.step });
    }
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    sync_dir(dir);
    Ok(target)
}

/// Writes and fsyncs each file, then the directory itself.
fn write_dir(tmp: &Path, files: &[(&str, &Vec<u8>)], mut budget: Option<u64>) -> Result<(), CkptError> {
    std::fs::create_dir(tmp).map_err(io_err(tmp))?;
    for (name, bytes) in files {
        let path = tmp.join(name);
        let mut f = std::fs::File::create(&path).map_err(io_err(&path))?;
        let allowed = budget.map_or(bytes.len(), |b| (b as usize).min(bytes.len()));
        f.write_all(&bytes[..allowed]).map_err(io_err(&path))?;
        if allowed < bytes.len() {
            let full =
                std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (injected)");
            return Err(io_err(&path)(full));
        }
        budget = budget.map(|b| b - allowed as u64);
        f.sync_all().map_err(io_err(&path))?;
    }
    sync_dir(tmp);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, CkptError> {
    let len = std::fs::metadata(path).map_err(|_| CkptError::NotFound(path.display().to_string()))?.len();
    if len > limit {
        return Err(CkptError::Corrupt {
            path: path.display().to_string(),
            reason: format!("{len} bytes is over the limit"),
        });
    }
    std::fs::read(path).map_err(io_err(path))
}

/// Reads and checks `meta.json` of the checkpoint at `path`.
pub fn read_meta(path: &Path) -> Result<CheckpointMeta, CkptError> {
    let corrupt = |reason: String| CkptError::Corrupt { path: path.display().to_string(), reason };
    if !path.join(META_FILE).exists() {
        return Err(CkptError::NotFound(path.display().to_string()));
    }
    let bytes = read_limited(&path.join(META_FILE), MAX_META_BYTES)?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("meta.json: {e}")))?;
    if meta.format != CKPT_FORMAT {
        return Err(corrupt(format!("format {:?}, expected {CKPT_FORMAT:?}", meta.format)));
    }
    Ok(meta)
}

/// Reads one tensor file, checking its BLAKE3 against the meta.
fn read_checked(path: &Path, meta: &CheckpointMeta, file: &str) -> Result<Vec<u8>, CkptError> {
    let bytes = read_limited(&path.join(file), MAX_TENSOR_FILE_BYTES)?;
    let want = meta.files.get(file).cloned().unwrap_or_default();
    let got = blake3::hash(&bytes).to_hex().to_string();
    if got != want {
        return Err(CkptError::FileHash { path: path.display().to_string(), file: file.into(), want, got });
    }
    Ok(bytes)
}

/// Fills `template` (names and shapes) from a safetensors buffer, requiring exactly its tensors.
fn fill(path: &Path, bytes: &[u8], template: &ParamSet, prefix: &str) -> Result<ParamSet, CkptError> {
    let corrupt = |reason: String| CkptError::Corrupt { path: path.display().to_string(), reason };
    let mismatch = |reason: String| CkptError::Mismatch { path: path.display().to_string(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("safetensors: {e}")))?;
    if st.len() != template.len() {
        return Err(mismatch(format!("{} tensors, the model has {}", st.len(), template.len())));
    }
    let mut out = template.clone();
    for (i, name) in template.names().iter().enumerate() {
        let key = format!("{prefix}{name}");
        let view = st.tensor(&key).map_err(|_| mismatch(format!("tensor {key} is missing")))?;
        let want = template.tensors()[i].shape();
        if view.dtype() != Dtype::F32 || view.shape() != want {
            return Err(mismatch(format!(
                "{key}: {:?} {:?}, expected F32 {want:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let vals: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.set(i, Tensor::new(want, vals).map_err(|e| corrupt(e.to_string()))?);
    }
    Ok(out)
}

/// Loads and verifies the checkpoint at `path` for a model whose parameters look like
/// `template` (names and shapes; values are ignored).
pub fn load(path: &Path, template: &ParamSet) -> Result<Checkpoint, CkptError> {
    let meta = read_meta(path)?;
    let model_bytes = read_checked(path, &meta, MODEL_FILE)?;
    let opt_bytes = read_checked(path, &meta, OPT_FILE)?;
    let params = fill(path, &model_bytes, template, "")?;
    let (m, v) = fill_moments(path, &opt_bytes, template)?;
    let opt = OptState { m, v, step: meta.step };
    let got = hex(&state_hash(&params, &opt));
    if got != meta.state_hash {
        return Err(CkptError::StateHash { path: path.display().to_string(), want: meta.state_hash, got });
    }
    Ok(Checkpoint { path: path.to_path_buf(), meta, params, opt })
}

/// Reads the optimizer file, which holds `m.<name>` and `v.<name>` for every parameter.
fn fill_moments(path: &Path, bytes: &[u8], template: &ParamSet) -> Result<(ParamSet, ParamSet), CkptError> {
    let mut doubled = ParamSet::new();
    for p in ["m.", "v."] {
        for (n, t) in template.names().iter().zip(template.tensors()) {
            doubled.push(format!("{p}{n}"), t.clone());
        }
    }
    let all = fill(path, bytes, &doubled, "")?;
    let (mut m, mut v) = (template.clone(), template.clone());
    let n = template.len();
    for i in 0..n {
        m.set(i, all.tensors()[i].clone());
        v.set(i, all.tensors()[n + i].clone());
    }
    Ok((m, v))
}

/// The newest complete checkpoint (`step-*` with a `meta.json`) in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, CkptError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    let mut best: Option<(u64, PathBuf)> = None;
    for e in entries {
        let p = e.map_err(io_err(dir))?.path();
        let step = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|s| s.parse().ok());
        if let Some(step) = step {
            if p.join(META_FILE).exists() && best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, p));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Keeps the `keep` newest complete checkpoints in `dir` and removes the rest, each first
/// renamed out of the `step-*` namespace (so a removal cut short by a crash never leaves a
/// half-deleted checkpoint that looks complete). It also clears what crashed writers left:
/// removals cut short, and other processes' temporary directories. One writer per directory.
/// Returns how many checkpoints it removed.
pub fn prune(dir: &Path, keep: usize) -> Result<usize, CkptError> {
    assert!(keep > 0, "pruning keeps at least the newest checkpoint");
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mine = format!("-{}", std::process::id());
    let mut steps: Vec<(u64, PathBuf)> = Vec::new();
    for e in entries {
        let p = e.map_err(io_err(dir))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let leftover =
            name.starts_with(".del-") || (name.starts_with(".tmp-step-") && !name.ends_with(&mine));
        if leftover {
            std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
        } else if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
            steps.push((step, p));
        }
    }
    steps.sort();
    let old = steps.len().saturating_sub(keep);
    for (_, p) in &steps[..old] {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("step");
        let doomed = dir.join(format!(".del-{name}"));
        std::fs::rename(p, &doomed).map_err(io_err(p))?;
        std::fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
    }
    sync_dir(dir);
    assert!(steps.len() - old <= keep, "at most `keep` checkpoints are left");
    Ok(old)
}

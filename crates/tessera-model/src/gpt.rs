//! A byte-level GPT: learned token and position embeddings, pre-norm blocks with causal
//! multi-head attention and a GELU MLP, a final layer norm and an untied output head.
//!
//! Parameter names follow the GPT-2 / PyTorch convention (`h.0.attn.q_proj.weight`, …), and
//! linear weights are stored `[out, in]` as `torch.nn.Linear` stores them.

use tessera_tensor::rng::{purpose, Philox};
use tessera_tensor::{Graph, Tensor, Var};

use crate::{Batch, Model, ModelError, ParamSet};

/// Layer-norm epsilon, as in GPT-2.
pub const LN_EPS: f32 = 1e-5;
/// Standard deviation of the initial weights.
pub const INIT_STD: f32 = 0.02;
/// Largest preset dimension accepted from a config (guards allocations).
pub const MAX_DIM: usize = 1 << 16;

/// The shape of a GPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptConfig {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub context: usize,
}

impl GptConfig {
    /// The named presets: `micro` (~5k parameters, for the fault simulator's thousands of
    /// runs), `tiny` (~0.11M), `small` (~3.3M), `base` (~10.9M).
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        let c = |d_model, layers, heads, context| GptConfig { vocab: 256, d_model, layers, heads, context };
        match name {
            "micro" => Ok(c(8, 1, 2, 16)),
            "tiny" => Ok(c(48, 3, 4, 64)),
            "small" => Ok(c(256, 4, 4, 128)),
            "base" => Ok(c(384, 6, 6, 256)),
            _ => Err(ModelError::UnknownPreset(name.to_string())),
        }
    }

    /// Names of the presets.
    pub const PRESETS: [&'static str; 4] = ["micro", "tiny", "small", "base"];

    /// Checks that the shape is buildable.
    pub fn validate(&self) -> Result<(), ModelError> {
        let dims = [self.vocab, self.d_model, self.layers, self.heads, self.context];
        if dims.iter().any(|&d| d == 0 || d > MAX_DIM) || !self.d_model.is_multiple_of(self.heads) {
            return Err(ModelError::BadConfig(format!("{self:?}")));
        }
        Ok(())
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        let (v, d, t) = (self.vocab, self.d_model, self.context);
        let block = 2 * 2 * d + 4 * (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d);
        v * d + t * d + self.layers * block + 2 * d + v * d
    }
}

/// A GPT and its parameters.
#[derive(Clone, Debug)]
pub struct Gpt {
    pub cfg: GptConfig,
    pub params: ParamSet,
}

impl Gpt {
    /// A freshly initialised model: weights `N(0, 0.02)` (residual projections scaled by
    /// `1/√(2·layers)`), biases 0, layer-norm gains 1. Each tensor draws from the counter-based
    /// RNG under its own name, so initialisation does not depend on order or threads.
    pub fn new(cfg: GptConfig, seed: u64) -> Result<Self, ModelError> {
        cfg.validate()?;
        let rng = Philox::new(seed);
        let (v, d, t) = (cfg.vocab, cfg.d_model, cfg.context);
        let resid_std = INIT_STD / libm::sqrtf(2.0 * cfg.layers as f32);
        let mut p = ParamSet::new();
        let normal = |p: &mut ParamSet, name: String, shape: &[usize], std: f32| {
            let n: usize = shape.iter().product();
            let key = purpose(&format!("init:{name}"));
            let data = (0..n as u64).map(|i| rng.normal(key, i) * std).collect();
            p.push(name, Tensor::new(shape, data).expect("init shape"));
        };
        normal(&mut p, "wte.weight".into(), &[v, d], INIT_STD);
        normal(&mut p, "wpe.weight".into(), &[t, d], INIT_STD);
        for l in 0..cfg.layers {
            let h = format!("h.{l}");
            p.push(format!("{h}.ln_1.weight"), Tensor::full(&[d], 1.0));
            p.push(format!("{h}.ln_1.bias"), Tensor::zeros(&[d]));
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                let std = if proj == "out_proj" { resid_std } else { INIT_STD };
                normal(&mut p, format!("{h}.attn.{proj}.weight"), &[d, d], std);
                p.push(format!("{h}.attn.{proj}.bias"), Tensor::zeros(&[d]));
            }
            p.push(format!("{h}.ln_2.weight"), Tensor::full(&[d], 1.0));
            p.push(format!("{h}.ln_2.bias"), Tensor::zeros(&[d]));
            normal(&mut p, format!("{h}.mlp.fc.weight"), &[4 * d, d], INIT_STD);
            p.push(format!("{h}.mlp.fc.bias"), Tensor::zeros(&[4 * d]));
            normal(&mut p, format!("{h}.mlp.proj.weight"), &[d, 4 * d], resid_std);
            p.push(format!("{h}.mlp.proj.bias"), Tensor::zeros(&[d]));
        }
        p.push("ln_f.weight", Tensor::full(&[d], 1.0));
        p.push("ln_f.bias", Tensor::zeros(&[d]));
        normal(&mut p, "lm_head.weight".into(), &[v, d], INIT_STD);
        assert_eq!(p.numel(), cfg.num_params());
        Ok(Self { cfg, params: p })
    }

    /// Logits `[B·T, V]` for token ids `[B, T]` (T ≤ context), built on graph `g` whose first
    /// leaves are the parameters `w` in declaration order.
    pub fn logits(&self, g: &mut Graph, w: &[Var], tokens: &Tensor) -> Result<Var, ModelError> {
        let cfg = &self.cfg;
        let s = tokens.shape();
        if s.len() != 2 || s[1] == 0 || s[1] > cfg.context || s[0] == 0 {
            return Err(ModelError::BadBatch(format!("tokens {s:?} for context {}", cfg.context)));
        }
        check_ids(tokens, cfg.vocab)?;
        let (b, t, d, nh) = (s[0], s[1], cfg.d_model, cfg.heads);
        let n = b * t;
        let mut it = w.iter().copied();
        let mut next = || it.next().expect("parameter count");
        let (wte, wpe) = (next(), next());
        let flat_ids = tokens.reshape(&[n]).expect("flatten tokens");
        let pos = Tensor::new(&[t], (0..t).map(|i| i as f32).collect()).expect("positions");
        let tok = g.embedding(wte, &flat_ids);
        let tok = g.reshape(tok, &[b, t, d]);
        let pe = g.embedding(wpe, &pos);
        let x = g.add(tok, pe);
        let mut x = g.reshape(x, &[n, d]);
        let scale = 1.0 / libm::sqrtf((d / nh) as f32);
        for _ in 0..cfg.layers {
            let (g1, b1) = (next(), next());
            let h = g.layer_norm(x, g1, b1, LN_EPS);
            let mut qkv = [h; 3];
            for q in &mut qkv {
                let (wq, bq) = (next(), next());
                let y = linear(g, h, wq, Some(bq));
                let y = g.reshape(y, &[b, t, d]);
                *q = g.split_heads(y, nh);
            }
            let att = g.matmul(qkv[0], qkv[1], false, true);
            let att = g.causal_softmax(att, scale);
            let o = g.matmul(att, qkv[2], false, false);
            let o = g.merge_heads(o);
            let o = g.reshape(o, &[n, d]);
            let (wo, bo) = (next(), next());
            let o = linear(g, o, wo, Some(bo));
            x = g.add(x, o);
            let (g2, b2) = (next(), next());
            let h = g.layer_norm(x, g2, b2, LN_EPS);
            let (wf, bf, wp, bp) = (next(), next(), next(), next());
            let h = linear(g, h, wf, Some(bf));
            let h = g.gelu(h);
            let h = linear(g, h, wp, Some(bp));
            x = g.add(x, h);
        }
        let (gf, bf) = (next(), next());
        let x = g.layer_norm(x, gf, bf, LN_EPS);
        let head = next();
        Ok(linear(g, x, head, None))
    }
}

/// `x·Wᵀ + b` with `W` stored `[out, in]`.
pub fn linear(g: &mut Graph, x: Var, w: Var, b: Option<Var>) -> Var {
    let y = g.matmul(x, w, false, true);
    match b {
        Some(b) => g.add(y, b),
        None => y,
    }
}

/// Checks that every id is an integer in `0..vocab` (the kernels' own rule), as a model error.
pub(crate) fn check_ids(t: &Tensor, vocab: usize) -> Result<(), ModelError> {
    tessera_tensor::check_ids(t, vocab).map_err(|e| ModelError::BadBatch(e.to_string()))
}

impl Model for Gpt {
    fn params(&self) -> &ParamSet {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamSet {
        &mut self.params
    }

    fn loss(&self, g: &mut Graph, w: &[Var], batch: &Batch) -> Result<Var, ModelError> {
        let logits = self.logits(g, w, &batch.inputs)?;
        let n = batch.inputs.numel();
        if batch.targets.numel() != n {
            return Err(ModelError::BadBatch("targets do not match inputs".into()));
        }
        check_ids(&batch.targets, self.cfg.vocab)?;
        let targets = batch.targets.reshape(&[n]).expect("flatten targets");
        Ok(g.cross_entropy(logits, &targets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sizes() {
        let tiny = GptConfig::preset("tiny").unwrap().num_params();
        let small = GptConfig::preset("small").unwrap().num_params();
        let base = GptConfig::preset("base").unwrap().num_params();
        assert!((80_000..150_000).contains(&tiny), "{tiny}");
        assert!((2_800_000..3_600_000).contains(&small), "{small}");
        assert!((10_000_000..12_000_000).contains(&base), "{base}");
        assert!(GptConfig::preset("huge").is_err());
        let mut bad = GptConfig::preset("tiny").unwrap();
        bad.heads = 5;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn init_is_a_pure_function_of_the_seed() {
        let cfg = GptConfig::preset("tiny").unwrap();
        let a = Gpt::new(cfg.clone(), 7).unwrap();
        let b = Gpt::new(cfg.clone(), 7).unwrap();
        let c = Gpt::new(cfg, 8).unwrap();
        assert_eq!(a.params, b.params);
        assert_ne!(a.params, c.params);
    }
}

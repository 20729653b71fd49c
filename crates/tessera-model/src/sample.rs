//! Text generation from a GPT: temperature and top-k sampling with the counter-based RNG, so a
//! (model, prompt, settings, seed) always gives the same text.

use tessera_tensor::rng::{purpose, Philox};
use tessera_tensor::{Graph, Tensor, TraceMode, Var};

use crate::{Gpt, ModelError};

/// Most tokens one call may generate.
pub const MAX_GENERATE: usize = 1 << 16;

/// Sampling settings. `temperature == 0` picks the most likely token; `top_k == 0` keeps all.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleConfig {
    pub temperature: f32,
    pub top_k: usize,
    pub seed: u64,
}

impl Gpt {
    /// Generates `n` tokens after `prompt` (an empty prompt starts from a newline), seeing at
    /// most the last `context` tokens at each step.
    pub fn generate(&self, prompt: &[u32], n: usize, cfg: &SampleConfig) -> Result<Vec<u32>, ModelError> {
        if n > MAX_GENERATE || !(cfg.temperature >= 0.0 && cfg.temperature.is_finite()) {
            return Err(ModelError::BadConfig(format!(
                "generate {n} tokens at temperature {}",
                cfg.temperature
            )));
        }
        let vocab = self.cfg.vocab;
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::BadBatch(format!("prompt token {t} outside 0..{vocab}")));
        }
        let mut toks: Vec<u32> = if prompt.is_empty() { vec![u32::from(b'\n')] } else { prompt.to_vec() };
        let start = toks.len();
        let rng = Philox::new(cfg.seed);
        let key = purpose("sample");
        for i in 0..n {
            let window = &toks[toks.len().saturating_sub(self.cfg.context)..];
            let t = window.len();
            let ids = Tensor::new(&[1, t], window.iter().map(|&v| v as f32).collect()).expect("shape");
            let mut g = Graph::new(TraceMode::Off);
            let w: Vec<Var> = self.params.tensors().iter().map(|p| g.leaf(p.clone(), false)).collect();
            let logits = self.logits(&mut g, &w, &ids)?;
            let last = &g.value(logits).data()[(t - 1) * vocab..t * vocab];
            toks.push(pick(last, cfg, rng.uniform(key, i as u64)));
        }
        Ok(toks.split_off(start))
    }
}

/// Chooses a token from logits with one uniform draw `u`.
fn pick(logits: &[f32], cfg: &SampleConfig, u: f32) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // Highest logit first; ties broken by token id, so the order is total and fixed.
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if cfg.temperature == 0.0 {
        return idx[0] as u32;
    }
    let k = if cfg.top_k == 0 { idx.len() } else { cfg.top_k.min(idx.len()) };
    let top = logits[idx[0]];
    let weights: Vec<f64> =
        idx[..k].iter().map(|&j| libm::exp(f64::from((logits[j] - top) / cfg.temperature))).collect();
    let total: f64 = weights.iter().sum();
    let mut target = f64::from(u) * total;
    for (j, w) in idx[..k].iter().zip(&weights) {
        if target < *w {
            return *j as u32;
        }
        target -= w;
    }
    idx[k - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GptConfig;

    #[test]
    fn generation_is_reproducible_and_respects_top_k() {
        let m = Gpt::new(GptConfig::preset("tiny").unwrap(), 1).unwrap();
        let cfg = SampleConfig { temperature: 1.0, top_k: 5, seed: 3 };
        let a = m.generate(b"Shall I".map(u32::from).as_slice(), 20, &cfg).unwrap();
        let b = m.generate(b"Shall I".map(u32::from).as_slice(), 20, &cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 20);
        let greedy = SampleConfig { temperature: 0.0, ..cfg };
        assert_eq!(pick(&[0.1, 3.0, 2.0], &greedy, 0.9), 1);
        let top1 = SampleConfig { temperature: 1.0, top_k: 1, seed: 0 };
        assert_eq!(pick(&[0.1, 3.0, 2.0], &top1, 0.99), 1);
        assert!(m.generate(&[300], 1, &cfg).is_err());
    }
}

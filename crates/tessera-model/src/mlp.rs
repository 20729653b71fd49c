//! A multi-layer perceptron classifier: `Linear → ReLU → … → Linear → softmax cross-entropy`.

use tessera_tensor::rng::{purpose, Philox};
use tessera_tensor::{Graph, Tensor, Var};

use crate::gpt::{check_ids, linear, MAX_DIM};
use crate::{Batch, Model, ModelError, ParamSet};

/// Sizes of an MLP: input features, hidden widths, output classes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpConfig {
    pub inputs: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
}

/// An MLP and its parameters (`fc.{i}.weight [out, in]`, `fc.{i}.bias`).
#[derive(Clone, Debug)]
pub struct Mlp {
    pub cfg: MlpConfig,
    pub params: ParamSet,
}

impl Mlp {
    /// He-normal weights (`std = √(2/in)`) from the counter-based RNG, zero biases.
    pub fn new(cfg: MlpConfig, seed: u64) -> Result<Self, ModelError> {
        let widths: Vec<usize> =
            std::iter::once(cfg.inputs).chain(cfg.hidden.iter().copied()).chain([cfg.classes]).collect();
        if widths.iter().any(|&w| w == 0 || w > MAX_DIM) || cfg.classes < 2 {
            return Err(ModelError::BadConfig(format!("{cfg:?}")));
        }
        let rng = Philox::new(seed);
        let mut p = ParamSet::new();
        for (i, io) in widths.windows(2).enumerate() {
            let (fan_in, out) = (io[0], io[1]);
            let name = format!("fc.{i}.weight");
            let key = purpose(&format!("init:{name}"));
            let std = libm::sqrtf(2.0 / fan_in as f32);
            let data = (0..(out * fan_in) as u64).map(|j| rng.normal(key, j) * std).collect();
            p.push(name, Tensor::new(&[out, fan_in], data).expect("init shape"));
            p.push(format!("fc.{i}.bias"), Tensor::zeros(&[out]));
        }
        Ok(Self { cfg, params: p })
    }

    /// Logits `[N, classes]` for inputs `[N, features]`.
    pub fn logits(&self, g: &mut Graph, w: &[Var], x: &Tensor) -> Result<Var, ModelError> {
        if x.shape().len() != 2 || x.shape()[1] != self.cfg.inputs || x.shape()[0] == 0 {
            return Err(ModelError::BadBatch(format!(
                "inputs {:?}, want [N, {}]",
                x.shape(),
                self.cfg.inputs
            )));
        }
        let mut h = g.leaf(x.clone(), false);
        let layers = w.len() / 2;
        for (i, wb) in w.chunks(2).enumerate() {
            h = linear(g, h, wb[0], Some(wb[1]));
            if i + 1 < layers {
                h = g.relu(h);
            }
        }
        Ok(h)
    }
}

impl Model for Mlp {
    fn params(&self) -> &ParamSet {
        &self.params
    }

    fn params_mut(&mut self) -> &mut ParamSet {
        &mut self.params
    }

    fn loss(&self, g: &mut Graph, w: &[Var], batch: &Batch) -> Result<Var, ModelError> {
        let logits = self.logits(g, w, &batch.inputs)?;
        let n = batch.inputs.shape()[0];
        if batch.targets.numel() != n {
            return Err(ModelError::BadBatch("one target per row is needed".into()));
        }
        check_ids(&batch.targets, self.cfg.classes)?;
        Ok(g.cross_entropy(logits, &batch.targets))
    }
}

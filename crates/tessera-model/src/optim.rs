//! AdamW with decoupled weight decay, global gradient clipping, and a warmup + cosine schedule.

use tessera_tensor::{AdamWParams, Exec, Kernel, Tensor};

use crate::{ModelError, ParamSet};

/// Optimizer and schedule settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay, applied to tensors of rank ≥ 2 only (not biases or norms).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip: Option<f32>,
    /// Linear warmup from 0 over this many steps.
    pub warmup_steps: u64,
    /// Cosine decay to `min_lr_ratio · lr` at this step (held there after).
    pub total_steps: u64,
    pub min_lr_ratio: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: Some(1.0),
            warmup_steps: 20,
            total_steps: 1000,
            min_lr_ratio: 0.1,
        }
    }
}

impl AdamWConfig {
    /// The defaults for a run of `steps` steps: warmup over the first quarter (at most 100
    /// steps), cosine decay to the end.
    pub fn for_run(steps: u64) -> Self {
        Self { total_steps: steps, warmup_steps: (steps / 4).min(100), ..Self::default() }
    }

    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<(), ModelError> {
        let ok = self.lr.is_finite()
            && self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0
            && self.grad_clip.is_none_or(|c| c > 0.0)
            && (0.0..=1.0).contains(&self.min_lr_ratio);
        if ok {
            Ok(())
        } else {
            Err(ModelError::BadConfig(format!("optimizer {self:?}")))
        }
    }

    /// Learning rate for 1-based `step`: linear warmup, then cosine to the floor.
    pub fn lr_at(&self, step: u64) -> f32 {
        let lr = f64::from(self.lr);
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return (lr * step as f64 / self.warmup_steps as f64) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
        let floor = lr * f64::from(self.min_lr_ratio);
        (floor + (lr - floor) * 0.5 * (1.0 + libm::cos(std::f64::consts::PI * t))) as f32
    }
}

/// AdamW moments and step count. `m` and `v` share the parameters' flat layout.
#[derive(Clone, Debug, PartialEq)]
pub struct OptState {
    pub m: ParamSet,
    pub v: ParamSet,
    /// Number of updates applied so far.
    pub step: u64,
}

impl OptState {
    /// Zero moments for `params`.
    pub fn new(params: &ParamSet) -> Self {
        Self { m: params.zeros_like(), v: params.zeros_like(), step: 0 }
    }

    /// One update: clip all gradients together (if configured), then AdamW per tensor, every
    /// kernel run through `ex` so it lands in the op trace. Returns the pre-clip gradient norm.
    pub fn update(
        &mut self,
        cfg: &AdamWConfig,
        ex: &mut Exec,
        params: &mut ParamSet,
        grads: Vec<Tensor>,
    ) -> f32 {
        assert_eq!(grads.len(), params.len(), "one gradient per parameter");
        let (grads, norm) = match cfg.grad_clip {
            Some(max_norm) => {
                let refs: Vec<&Tensor> = grads.iter().collect();
                let mut out = ex.run(Kernel::ClipGradNorm { max_norm }, &refs);
                let norm = out.pop().expect("norm").item();
                (out, norm)
            }
            None => (grads, f32::NAN),
        };
        self.step += 1;
        let lr = cfg.lr_at(self.step);
        for (i, g) in grads.iter().enumerate() {
            let p = &params.tensors()[i];
            let wd = if p.shape().len() >= 2 { cfg.weight_decay } else { 0.0 };
            let h = AdamWParams {
                lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: wd,
                step: self.step,
            };
            let ins = [p, g, &self.m.tensors()[i], &self.v.tensors()[i]];
            let mut out = ex.run(Kernel::AdamW(h), &ins).into_iter();
            params.set(i, out.next().expect("p"));
            self.m.set(i, out.next().expect("m"));
            self.v.set(i, out.next().expect("v"));
        }
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let c = AdamWConfig {
            lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert_eq!(c.lr_at(5), 0.5);
        assert_eq!(c.lr_at(10), 1.0);
        assert!((c.lr_at(60) - 0.55).abs() < 1e-6);
        assert!((c.lr_at(110) - 0.1).abs() < 1e-6);
        assert!((c.lr_at(500) - 0.1).abs() < 1e-6);
        assert!(AdamWConfig { beta1: 1.0, ..c }.validate().is_err());
    }
}

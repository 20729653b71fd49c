//! One training step (forward, backward, optimizer update) and the state hash.

use tessera_tensor::rng::{purpose, Philox};
use tessera_tensor::{Graph, Hash, Tensor, Trace, TraceMode, Var};

use crate::{AdamWConfig, ModelError, OptState, ParamSet};

/// Inputs and targets of one step. For a GPT: token ids `[B, T]` and next tokens `[B, T]`;
/// for an MLP: features `[N, F]` and class ids `[N]`. Ids are integers stored as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

/// A trainable model: its parameters and its loss on a batch.
pub trait Model {
    fn params(&self) -> &ParamSet;
    fn params_mut(&mut self) -> &mut ParamSet;
    /// Builds the loss on `g`, whose leaves `w` are this model's parameters in order.
    fn loss(&self, g: &mut Graph, w: &[Var], batch: &Batch) -> Result<Var, ModelError>;
}

/// What one step reports.
#[derive(Debug)]
pub struct StepOutput {
    pub loss: f32,
    /// Global gradient norm before clipping (NaN when clipping is off).
    pub grad_norm: f32,
    /// The op trace, empty under [`TraceMode::Off`].
    pub trace: Trace,
}

/// A model with its optimizer.
#[derive(Clone, Debug)]
pub struct Trainer<M: Model> {
    pub model: M,
    pub opt: OptState,
    pub cfg: AdamWConfig,
}

impl<M: Model> Trainer<M> {
    /// A trainer with fresh optimizer state.
    pub fn new(model: M, cfg: AdamWConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let opt = OptState::new(model.params());
        Ok(Self { model, opt, cfg })
    }

    /// Forward, backward and one AdamW update, all as one ordered op list.
    pub fn step(&mut self, batch: &Batch, mode: TraceMode) -> Result<StepOutput, ModelError> {
        let (loss, gs, mut ex) = self.backward(batch, mode)?;
        let grad_norm = self.opt.update(&self.cfg, &mut ex, self.model.params_mut(), gs);
        Ok(StepOutput { loss, grad_norm, trace: ex.take_trace() })
    }

    /// The loss and the gradient of every parameter (in parameter order) on `batch`, without
    /// changing anything. Used by algorithms that exchange gradients (DDP, DeMo).
    pub fn gradients(&self, batch: &Batch) -> Result<(f32, Vec<Tensor>), ModelError> {
        let (loss, gs, _) = self.backward(batch, TraceMode::Off)?;
        Ok((loss, gs))
    }

    /// One AdamW update from given gradients (e.g. the mean over peers); returns the norm
    /// before clipping.
    pub fn apply_gradients(&mut self, grads: Vec<Tensor>) -> f32 {
        let mut ex = tessera_tensor::Exec::new(TraceMode::Off);
        self.opt.update(&self.cfg, &mut ex, self.model.params_mut(), grads)
    }

    fn backward(
        &self,
        batch: &Batch,
        mode: TraceMode,
    ) -> Result<(f32, Vec<Tensor>, tessera_tensor::Exec), ModelError> {
        let mut g = Graph::new(mode);
        let w: Vec<Var> = self.model.params().tensors().iter().map(|t| g.leaf(t.clone(), true)).collect();
        let loss_var = self.model.loss(&mut g, &w, batch)?;
        let loss = g.value(loss_var).item();
        let mut grads = g.backward(loss_var);
        let shapes: Vec<Vec<usize>> =
            self.model.params().tensors().iter().map(|t| t.shape().to_vec()).collect();
        let gs: Vec<Tensor> =
            w.iter().zip(&shapes).map(|(&v, s)| grads.take(v).unwrap_or_else(|| Tensor::zeros(s))).collect();
        drop(grads);
        Ok((loss, gs, g.into_exec()))
    }

    /// Loss on a batch without updating anything.
    pub fn eval_loss(&self, batch: &Batch) -> Result<f32, ModelError> {
        let mut g = Graph::new(TraceMode::Off);
        let w: Vec<Var> = self.model.params().tensors().iter().map(|t| g.leaf(t.clone(), false)).collect();
        let l = self.model.loss(&mut g, &w, batch)?;
        Ok(g.value(l).item())
    }

    /// BLAKE3 over the layout, the parameters, the step count and the AdamW moments.
    pub fn state_hash(&self) -> Hash {
        state_hash(self.model.params(), &self.opt)
    }
}

/// The state hash of parameters plus optimizer state (see [`Trainer::state_hash`]).
pub fn state_hash(params: &ParamSet, opt: &OptState) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"tessera-state-v1");
    h.update(&params.layout().hash());
    params.hash_into(&mut h);
    h.update(&opt.step.to_le_bytes());
    opt.m.hash_into(&mut h);
    opt.v.hash_into(&mut h);
    *h.finalize().as_bytes()
}

/// A next-byte batch drawn from `text`: row `b` of step `step` starts at an offset that is a
/// pure function of `(seed, step, b)`. (The sharded data pipeline will replace this sampler.)
pub fn text_batch(
    text: &[u8],
    seed: u64,
    step: u64,
    batch: usize,
    context: usize,
) -> Result<Batch, ModelError> {
    if batch == 0 || context == 0 || text.len() < context + 2 {
        return Err(ModelError::BadBatch(format!(
            "need text longer than context + 1 = {} bytes and batch ≥ 1, got {} bytes, batch {batch}",
            context + 1,
            text.len()
        )));
    }
    let rng = Philox::new(seed);
    let key = purpose("text-batch");
    let span = (text.len() - context - 1) as u64;
    let (mut x, mut y) = (Vec::with_capacity(batch * context), Vec::with_capacity(batch * context));
    for b in 0..batch {
        let off = rng.below(key, step * batch as u64 + b as u64, span) as usize;
        x.extend(text[off..off + context].iter().map(|&c| f32::from(c)));
        y.extend(text[off + 1..off + context + 1].iter().map(|&c| f32::from(c)));
    }
    let shape = [batch, context];
    Ok(Batch {
        inputs: Tensor::new(&shape, x).expect("shape"),
        targets: Tensor::new(&shape, y).expect("shape"),
    })
}

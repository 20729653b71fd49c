//! The closed set of operators. Forward, backward and optimizer work all run through
//! [`Kernel::execute`], so one training step is exactly an ordered list of kernel invocations
//! that can be recorded and replayed one at a time.

use crate::matmul::{matmul, matmul_batched, MatSpec};
use crate::ops_basic::{broadcast2, map1, merge_heads, shape_err, split_heads, sum_fixed, sum_to_shape};
use crate::ops_nn as nn;
use crate::ops_optim::{self as optim, AdamWParams};
use crate::{Tensor, TensorError};

/// Largest number of inputs one kernel takes (gradient clipping takes all gradients).
pub const MAX_KERNEL_INPUTS: usize = 4096;

/// One operator with its static parameters. Inputs are given to [`Kernel::execute`]. It
/// serializes (serde) so that a dispute's referee can be told which operator to recompute.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Kernel {
    /// `op(A)·op(B)`; both 2-D, or both with the same leading batch dims.
    MatMul {
        ta: bool,
        tb: bool,
    },
    /// Same data, new shape.
    Reshape {
        shape: Vec<usize>,
    },
    /// `a + b`, `b` of `a`'s shape or a suffix of it.
    Add,
    /// `a − b`, broadcasting as `Add`.
    Sub,
    /// `a · b`, broadcasting as `Add`.
    Mul,
    /// `s · a`.
    Scale {
        s: f32,
    },
    /// Sum over leading dims down to `shape` (the backward of a broadcast).
    SumToShape {
        shape: Vec<usize>,
    },
    /// Sum of all elements, as `[1]`.
    SumAll,
    /// Mean of all elements, as `[1]`.
    MeanAll,
    /// A `[1]` value `g` spread to `shape` as `g·scale` (backward of sum and mean).
    Expand {
        shape: Vec<usize>,
        scale: f32,
    },
    Gelu,
    /// Inputs `x, dy`.
    GeluBackward,
    Relu,
    /// Inputs `x, dy`.
    ReluBackward,
    /// Inputs `x, gamma, beta`; outputs `y, mean, rstd`.
    LayerNorm {
        eps: f32,
    },
    /// Inputs `dy, x, gamma, mean, rstd`; outputs `dx, dgamma, dbeta`.
    LayerNormBackward,
    /// Softmax of `scale·x` over the last dim of `[.., T, T]`, causal mask.
    CausalSoftmax {
        scale: f32,
    },
    /// Inputs `y, dy` (y the softmax output).
    SoftmaxBackward {
        scale: f32,
    },
    /// `[B, T, H·D] → [B, H, T, D]`.
    SplitHeads {
        heads: usize,
    },
    /// `[B, H, T, D] → [B, T, H·D]`.
    MergeHeads,
    /// Inputs `table [V, C], ids`; ids are integers stored as f32.
    Embedding,
    /// Inputs `ids, dy`; output `[rows, C]`.
    EmbeddingBackward {
        rows: usize,
    },
    /// Inputs `logits [N, V], targets [N]`; outputs `loss [1], probs [N, V]`.
    CrossEntropy,
    /// Inputs `probs, targets, dloss`.
    CrossEntropyBackward,
    /// Inputs: all gradients; outputs: the clipped gradients, then the norm.
    ClipGradNorm {
        max_norm: f32,
    },
    /// Inputs `p, g, m, v`; outputs `p', m', v'`.
    AdamW(AdamWParams),
    /// Inputs `p, g`; output `p − lr·g`.
    Sgd {
        lr: f32,
    },
}

impl Kernel {
    /// A short stable name for the kernel kind.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::MatMul { .. } => "matmul",
            Kernel::Reshape { .. } => "reshape",
            Kernel::Add => "add",
            Kernel::Sub => "sub",
            Kernel::Mul => "mul",
            Kernel::Scale { .. } => "scale",
            Kernel::SumToShape { .. } => "sum_to_shape",
            Kernel::SumAll => "sum_all",
            Kernel::MeanAll => "mean_all",
            Kernel::Expand { .. } => "expand",
            Kernel::Gelu => "gelu",
            Kernel::GeluBackward => "gelu_backward",
            Kernel::Relu => "relu",
            Kernel::ReluBackward => "relu_backward",
            Kernel::LayerNorm { .. } => "layer_norm",
            Kernel::LayerNormBackward => "layer_norm_backward",
            Kernel::CausalSoftmax { .. } => "causal_softmax",
            Kernel::SoftmaxBackward { .. } => "softmax_backward",
            Kernel::SplitHeads { .. } => "split_heads",
            Kernel::MergeHeads => "merge_heads",
            Kernel::Embedding => "embedding",
            Kernel::EmbeddingBackward { .. } => "embedding_backward",
            Kernel::CrossEntropy => "cross_entropy",
            Kernel::CrossEntropyBackward => "cross_entropy_backward",
            Kernel::ClipGradNorm { .. } => "clip_grad_norm",
            Kernel::AdamW(_) => "adamw",
            Kernel::Sgd { .. } => "sgd",
        }
    }

    /// Number of inputs, or `None` when variable (gradient clipping).
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Kernel::ClipGradNorm { .. } => return None,
            Kernel::Reshape { .. }
            | Kernel::Scale { .. }
            | Kernel::SumToShape { .. }
            | Kernel::SumAll
            | Kernel::MeanAll
            | Kernel::Expand { .. }
            | Kernel::Gelu
            | Kernel::Relu
            | Kernel::CausalSoftmax { .. }
            | Kernel::SplitHeads { .. }
            | Kernel::MergeHeads => 1,
            Kernel::LayerNorm { .. } | Kernel::CrossEntropyBackward => 3,
            Kernel::AdamW(_) => 4,
            Kernel::LayerNormBackward => 5,
            _ => 2,
        })
    }

    /// Runs the kernel. Inputs are checked; a bad count or shape is an error, never a panic.
    pub fn execute(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, TensorError> {
        let want = self.arity();
        if want.is_some_and(|n| n != inputs.len()) || inputs.len() > MAX_KERNEL_INPUTS {
            return Err(TensorError::Arity { kernel: self.name(), got: inputs.len() });
        }
        let i = inputs;
        let one = |t: Result<Tensor, TensorError>| t.map(|t| vec![t]);
        match self {
            Kernel::MatMul { ta, tb } => one(matmul_op(i[0], i[1], *ta, *tb)),
            Kernel::Reshape { shape } => one(i[0].reshape(shape)),
            Kernel::Add => one(broadcast2("add", i[0], i[1], |a, b| a + b)),
            Kernel::Sub => one(broadcast2("sub", i[0], i[1], |a, b| a - b)),
            Kernel::Mul => one(broadcast2("mul", i[0], i[1], |a, b| a * b)),
            Kernel::Scale { s } => Ok(vec![map1(i[0], |a| a * s)]),
            Kernel::SumToShape { shape } => one(sum_to_shape(i[0], shape)),
            Kernel::SumAll => Ok(vec![Tensor::scalar(sum_fixed(i[0].data()))]),
            Kernel::MeanAll => mean_all(i[0]),
            Kernel::Expand { shape, scale } => one(expand(i[0], shape, *scale)),
            Kernel::Gelu => Ok(vec![nn::gelu(i[0])]),
            Kernel::GeluBackward => same_shape(self, i).map(|_| vec![nn::gelu_backward(i[0], i[1])]),
            Kernel::Relu => Ok(vec![nn::relu(i[0])]),
            Kernel::ReluBackward => same_shape(self, i).map(|_| vec![nn::relu_backward(i[0], i[1])]),
            Kernel::LayerNorm { eps } => nn::layer_norm(i[0], i[1], i[2], *eps),
            Kernel::LayerNormBackward => nn::layer_norm_backward(i),
            Kernel::CausalSoftmax { scale } => one(nn::causal_softmax(i[0], *scale)),
            Kernel::SoftmaxBackward { scale } => one(nn::softmax_backward(i[0], i[1], *scale)),
            Kernel::SplitHeads { heads } => one(split_heads(i[0], *heads)),
            Kernel::MergeHeads => one(merge_heads(i[0])),
            Kernel::Embedding => one(nn::embedding(i[0], i[1])),
            Kernel::EmbeddingBackward { rows } => one(nn::embedding_backward(i[0], i[1], *rows)),
            Kernel::CrossEntropy => nn::cross_entropy(i[0], i[1]),
            Kernel::CrossEntropyBackward => one(nn::cross_entropy_backward(i)),
            Kernel::ClipGradNorm { max_norm } => optim::clip_grad_norm(i, *max_norm),
            Kernel::AdamW(h) => optim::adamw(i, h),
            Kernel::Sgd { lr } => one(optim::sgd(i[0], i[1], *lr)),
        }
    }
}

fn same_shape(k: &Kernel, i: &[&Tensor]) -> Result<(), TensorError> {
    if i[0].shape() == i[1].shape() {
        Ok(())
    } else {
        Err(shape_err(k.name(), format!("{:?} vs {:?}", i[0].shape(), i[1].shape())))
    }
}

fn mean_all(x: &Tensor) -> Result<Vec<Tensor>, TensorError> {
    if x.numel() == 0 {
        return Err(shape_err("mean_all", "empty tensor".into()));
    }
    Ok(vec![Tensor::scalar(sum_fixed(x.data()) / x.numel() as f32)])
}

fn expand(g: &Tensor, shape: &[usize], scale: f32) -> Result<Tensor, TensorError> {
    if g.numel() != 1 {
        return Err(shape_err("expand", format!("{:?} is not one value", g.shape())));
    }
    let v = g.data()[0] * scale;
    Tensor::new(shape, vec![v; shape.iter().product()])
}

/// Splits `[batch.., r, c]` into (batch dims, r, c).
fn mat_dims(s: &[usize]) -> Option<(&[usize], usize, usize)> {
    (s.len() >= 2).then(|| (&s[..s.len() - 2], s[s.len() - 2], s[s.len() - 1]))
}

fn matmul_op(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor, TensorError> {
    let bad = || shape_err("matmul", format!("{:?} (t={ta}) · {:?} (t={tb})", a.shape(), b.shape()));
    let (ba, ar, ac) = mat_dims(a.shape()).ok_or_else(bad)?;
    let (bb, br, bc) = mat_dims(b.shape()).ok_or_else(bad)?;
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 || ba != bb {
        return Err(bad());
    }
    let batch: usize = ba.iter().product();
    let spec = MatSpec { m, n, k, ta, tb };
    let mut c = vec![0.0f32; batch * m * n];
    if batch == 1 {
        matmul(&spec, a.data(), b.data(), &mut c);
    } else {
        matmul_batched(&spec, batch, a.data(), b.data(), &mut c);
    }
    let mut shape = ba.to_vec();
    shape.extend([m, n]);
    Ok(Tensor::from_parts(shape, c))
}

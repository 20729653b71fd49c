//! Reverse-mode autograd over a tape.
//!
//! A [`Graph`] is built once per step: leaves (parameters, inputs) and then operators in
//! program order. [`Graph::backward`] walks the tape in reverse and emits the backward kernels
//! through the same [`Exec`], so forward, backward and the optimizer update form one ordered
//! op list. Gradients reaching one node from several uses are added in tape order.

use crate::{Exec, Kernel, Tensor, TraceMode};

/// A handle to a node of a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(usize);

/// How a node was made, with what its backward needs.
#[derive(Debug)]
enum Op {
    Leaf,
    MatMul { a: Var, b: Var, ta: bool, tb: bool },
    Add { a: Var, b: Var },
    Sub { a: Var, b: Var },
    Mul { a: Var, b: Var },
    Scale { a: Var, s: f32 },
    Reshape { a: Var },
    SumAll { a: Var },
    MeanAll { a: Var },
    Gelu { a: Var },
    Relu { a: Var },
    LayerNorm { x: Var, g: Var, b: Var, mean: Tensor, rstd: Tensor },
    Softmax { a: Var, scale: f32 },
    SplitHeads { a: Var },
    MergeHeads { a: Var, heads: usize },
    Embedding { table: Var, ids: Tensor },
    CrossEntropy { logits: Var, targets: Tensor, probs: Tensor },
}

#[derive(Debug)]
struct Node {
    value: Tensor,
    op: Op,
    needs_grad: bool,
}

/// The tape of one step.
#[derive(Debug)]
pub struct Graph {
    nodes: Vec<Node>,
    exec: Exec,
}

/// Gradients from [`Graph::backward`], indexed by the node they belong to.
#[derive(Debug)]
pub struct Grads(Vec<Option<Tensor>>);

impl Grads {
    /// The gradient of a node that needed one and was reached from the loss.
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.0.get(v.0).and_then(Option::as_ref)
    }

    /// Takes a gradient out.
    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        self.0.get_mut(v.0).and_then(Option::take)
    }
}

impl Graph {
    /// An empty tape whose kernels are recorded as `mode` says.
    pub fn new(mode: TraceMode) -> Self {
        Self { nodes: Vec::new(), exec: Exec::new(mode) }
    }

    /// The executor, for kernels outside the graph (the optimizer update).
    pub fn exec(&mut self) -> &mut Exec {
        &mut self.exec
    }

    /// Consumes the graph, returning its executor (and so its trace).
    pub fn into_exec(self) -> Exec {
        self.exec
    }

    /// The value of a node.
    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    /// Adds a leaf. `needs_grad` marks a parameter whose gradient is wanted.
    pub fn leaf(&mut self, t: Tensor, needs_grad: bool) -> Var {
        self.push(t, Op::Leaf, needs_grad)
    }

    fn push(&mut self, value: Tensor, op: Op, needs_grad: bool) -> Var {
        self.nodes.push(Node { value, op, needs_grad });
        Var(self.nodes.len() - 1)
    }

    fn ng(&self, vs: &[Var]) -> bool {
        vs.iter().any(|v| self.nodes[v.0].needs_grad)
    }

    fn unary(&mut self, k: Kernel, a: Var, op: Op) -> Var {
        let out = self.exec.run1(k, &[&self.nodes[a.0].value]);
        let ng = self.ng(&[a]);
        self.push(out, op, ng)
    }

    fn binary(&mut self, k: Kernel, a: Var, b: Var, op: Op) -> Var {
        let out = self.exec.run1(k, &[&self.nodes[a.0].value, &self.nodes[b.0].value]);
        let ng = self.ng(&[a, b]);
        self.push(out, op, ng)
    }

    /// `op(a)·op(b)`, see [`Kernel::MatMul`].
    pub fn matmul(&mut self, a: Var, b: Var, ta: bool, tb: bool) -> Var {
        self.binary(Kernel::MatMul { ta, tb }, a, b, Op::MatMul { a, b, ta, tb })
    }

    /// `a + b` (b may broadcast over leading dims).
    pub fn add(&mut self, a: Var, b: Var) -> Var {
        self.binary(Kernel::Add, a, b, Op::Add { a, b })
    }

    /// `a − b` (b may broadcast over leading dims).
    pub fn sub(&mut self, a: Var, b: Var) -> Var {
        self.binary(Kernel::Sub, a, b, Op::Sub { a, b })
    }

    /// `a · b` elementwise (b may broadcast over leading dims).
    pub fn mul(&mut self, a: Var, b: Var) -> Var {
        self.binary(Kernel::Mul, a, b, Op::Mul { a, b })
    }

    /// `s · a`.
    pub fn scale(&mut self, a: Var, s: f32) -> Var {
        self.unary(Kernel::Scale { s }, a, Op::Scale { a, s })
    }

    /// Same data under a new shape.
    pub fn reshape(&mut self, a: Var, shape: &[usize]) -> Var {
        self.unary(Kernel::Reshape { shape: shape.to_vec() }, a, Op::Reshape { a })
    }

    /// Sum of all elements.
    pub fn sum_all(&mut self, a: Var) -> Var {
        self.unary(Kernel::SumAll, a, Op::SumAll { a })
    }

    /// Mean of all elements.
    pub fn mean_all(&mut self, a: Var) -> Var {
        self.unary(Kernel::MeanAll, a, Op::MeanAll { a })
    }

    /// GELU (tanh form).
    pub fn gelu(&mut self, a: Var) -> Var {
        self.unary(Kernel::Gelu, a, Op::Gelu { a })
    }

    /// ReLU.
    pub fn relu(&mut self, a: Var) -> Var {
        self.unary(Kernel::Relu, a, Op::Relu { a })
    }

    /// Layer norm over the last dim with affine `g`, `b`.
    pub fn layer_norm(&mut self, x: Var, g: Var, b: Var, eps: f32) -> Var {
        let ins = [&self.nodes[x.0].value, &self.nodes[g.0].value, &self.nodes[b.0].value];
        let mut out = self.exec.run(Kernel::LayerNorm { eps }, &ins).into_iter();
        let (y, mean, rstd) = (out.next(), out.next(), out.next());
        let (y, mean, rstd) = (y.expect("y"), mean.expect("mean"), rstd.expect("rstd"));
        let ng = self.ng(&[x, g, b]);
        self.push(y, Op::LayerNorm { x, g, b, mean, rstd }, ng)
    }

    /// Causal softmax of `scale·a` over the last dim of `[.., T, T]`.
    pub fn causal_softmax(&mut self, a: Var, scale: f32) -> Var {
        self.unary(Kernel::CausalSoftmax { scale }, a, Op::Softmax { a, scale })
    }

    /// `[B, T, H·D] → [B, H, T, D]`.
    pub fn split_heads(&mut self, a: Var, heads: usize) -> Var {
        self.unary(Kernel::SplitHeads { heads }, a, Op::SplitHeads { a })
    }

    /// `[B, H, T, D] → [B, T, H·D]`.
    pub fn merge_heads(&mut self, a: Var) -> Var {
        let heads = self.nodes[a.0].value.shape().get(1).copied().unwrap_or(1);
        self.unary(Kernel::MergeHeads, a, Op::MergeHeads { a, heads })
    }

    /// Rows of `table` picked by `ids` (integers stored as f32).
    pub fn embedding(&mut self, table: Var, ids: &Tensor) -> Var {
        let out = self.exec.run1(Kernel::Embedding, &[&self.nodes[table.0].value, ids]);
        let ng = self.ng(&[table]);
        self.push(out, Op::Embedding { table, ids: ids.clone() }, ng)
    }

    /// Mean softmax cross-entropy of `logits [N, V]` against `targets [N]`.
    pub fn cross_entropy(&mut self, logits: Var, targets: &Tensor) -> Var {
        let mut out = self.exec.run(Kernel::CrossEntropy, &[&self.nodes[logits.0].value, targets]);
        let probs = out.pop().expect("probs");
        let loss = out.pop().expect("loss");
        let ng = self.ng(&[logits]);
        self.push(loss, Op::CrossEntropy { logits, targets: targets.clone(), probs }, ng)
    }

    /// Back-propagates from the one-element `loss`, returning the gradients of every node that
    /// needs one (leaves included).
    pub fn backward(&mut self, loss: Var) -> Grads {
        assert_eq!(self.value(loss).numel(), 1, "backward from a non-scalar");
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        grads[loss.0] = Some(Tensor::full(self.value(loss).shape(), 1.0));
        for i in (0..self.nodes.len()).rev() {
            let Some(g) = grads[i].take() else { continue };
            if !self.nodes[i].needs_grad {
                continue;
            }
            if matches!(self.nodes[i].op, Op::Leaf) {
                grads[i] = Some(g);
                continue;
            }
            for (v, d) in self.backward_node(i, &g) {
                if !self.nodes[v.0].needs_grad {
                    continue;
                }
                let acc = match grads[v.0].take() {
                    None => d,
                    Some(prev) => self.exec.run1(Kernel::Add, &[&prev, &d]),
                };
                grads[v.0] = Some(acc);
            }
        }
        Grads(grads)
    }

    /// Input gradients of node `i` given its output gradient `g`, in input order.
    fn backward_node(&mut self, i: usize, g: &Tensor) -> Vec<(Var, Tensor)> {
        let nodes = &self.nodes;
        let ex = &mut self.exec;
        let val = |v: Var| &nodes[v.0].value;
        let need = |v: Var| nodes[v.0].needs_grad;
        let unbroadcast = |ex: &mut Exec, d: Tensor, like: &Tensor| {
            if d.shape() == like.shape() {
                d
            } else {
                ex.run1(Kernel::SumToShape { shape: like.shape().to_vec() }, &[&d])
            }
        };
        let mut out = Vec::new();
        match &nodes[i].op {
            Op::Leaf => {}
            &Op::MatMul { a, b, ta, tb } => {
                if need(a) {
                    let da = if ta {
                        ex.run1(Kernel::MatMul { ta: tb, tb: true }, &[val(b), g])
                    } else {
                        ex.run1(Kernel::MatMul { ta: false, tb: !tb }, &[g, val(b)])
                    };
                    out.push((a, da));
                }
                if need(b) {
                    let db = if tb {
                        ex.run1(Kernel::MatMul { ta: true, tb: ta }, &[g, val(a)])
                    } else {
                        ex.run1(Kernel::MatMul { ta: !ta, tb: false }, &[val(a), g])
                    };
                    out.push((b, db));
                }
            }
            &Op::Add { a, b } => {
                out.push((a, g.clone()));
                if need(b) {
                    out.push((b, unbroadcast(ex, g.clone(), val(b))));
                }
            }
            &Op::Sub { a, b } => {
                out.push((a, g.clone()));
                if need(b) {
                    let neg = ex.run1(Kernel::Scale { s: -1.0 }, &[g]);
                    out.push((b, unbroadcast(ex, neg, val(b))));
                }
            }
            &Op::Mul { a, b } => {
                if need(a) {
                    out.push((a, ex.run1(Kernel::Mul, &[g, val(b)])));
                }
                if need(b) {
                    let full = ex.run1(Kernel::Mul, &[g, val(a)]);
                    out.push((b, unbroadcast(ex, full, val(b))));
                }
            }
            &Op::Scale { a, s } => out.push((a, ex.run1(Kernel::Scale { s }, &[g]))),
            &Op::Reshape { a } => {
                out.push((a, ex.run1(Kernel::Reshape { shape: val(a).shape().to_vec() }, &[g])))
            }
            &Op::SumAll { a } => {
                out.push((a, ex.run1(Kernel::Expand { shape: val(a).shape().to_vec(), scale: 1.0 }, &[g])))
            }
            &Op::MeanAll { a } => {
                let scale = 1.0 / val(a).numel() as f32;
                out.push((a, ex.run1(Kernel::Expand { shape: val(a).shape().to_vec(), scale }, &[g])))
            }
            &Op::Gelu { a } => out.push((a, ex.run1(Kernel::GeluBackward, &[val(a), g]))),
            &Op::Relu { a } => out.push((a, ex.run1(Kernel::ReluBackward, &[val(a), g]))),
            Op::LayerNorm { x, g: gm, b, mean, rstd } => {
                let ins = [g, val(*x), val(*gm), mean, rstd];
                let mut d = ex.run(Kernel::LayerNormBackward, &ins).into_iter();
                out.push((*x, d.next().expect("dx")));
                out.push((*gm, d.next().expect("dgamma")));
                out.push((*b, d.next().expect("dbeta")));
            }
            &Op::Softmax { a, scale } => {
                let y = &nodes[i].value;
                out.push((a, ex.run1(Kernel::SoftmaxBackward { scale }, &[y, g])));
            }
            &Op::SplitHeads { a } => out.push((a, ex.run1(Kernel::MergeHeads, &[g]))),
            &Op::MergeHeads { a, heads } => out.push((a, ex.run1(Kernel::SplitHeads { heads }, &[g]))),
            Op::Embedding { table, ids } => {
                let rows = val(*table).shape()[0];
                out.push((*table, ex.run1(Kernel::EmbeddingBackward { rows }, &[ids, g])));
            }
            Op::CrossEntropy { logits, targets, probs } => {
                out.push((*logits, ex.run1(Kernel::CrossEntropyBackward, &[probs, targets, g])));
            }
        }
        out
    }
}

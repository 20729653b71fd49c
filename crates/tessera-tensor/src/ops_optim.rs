//! Optimizer kernels: global gradient-norm clipping, AdamW with decoupled weight decay, SGD.

use rayon::prelude::*;

use crate::ops_basic::{map2, PAR_CHUNK};
use crate::{Tensor, TensorError};

/// Hyper-parameters of one AdamW update of one tensor. `step` counts from 1.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u64,
}

/// Sum of squares in f64 with 8 fixed interleaved partials, combined in a fixed tree.
fn sum_squares(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            let v = f64::from(c[l]);
            acc[l] += v * v;
        }
    }
    let mut s = crate::ops_basic::tree8(acc);
    for &r in rem {
        s += f64::from(r) * f64::from(r);
    }
    s
}

/// Scales all gradients by `min(1, max_norm / (‖g‖ + 1e-6))`, ‖g‖ over all of them together.
/// Returns the scaled gradients followed by the norm as a `[1]` tensor.
pub(crate) fn clip_grad_norm(grads: &[&Tensor], max_norm: f32) -> Result<Vec<Tensor>, TensorError> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(TensorError::BadParam {
            kernel: "clip_grad_norm",
            detail: format!("max_norm {max_norm}"),
        });
    }
    let per: Vec<f64> = grads.par_iter().map(|g| sum_squares(g.data())).collect();
    let norm = per.iter().fold(0.0f64, |a, &b| a + b).sqrt();
    let coef = if norm > f64::from(max_norm) { (f64::from(max_norm) / (norm + 1e-6)) as f32 } else { 1.0 };
    let mut out: Vec<Tensor> = grads
        .iter()
        .map(|g| if coef == 1.0 { (*g).clone() } else { crate::ops_basic::map1(g, |x| x * coef) })
        .collect();
    out.push(Tensor::scalar(norm as f32));
    Ok(out)
}

/// AdamW: `p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + eps)`. Inputs `p, g, m, v`; returns `p', m', v'`.
pub(crate) fn adamw(i: &[&Tensor], h: &AdamWParams) -> Result<Vec<Tensor>, TensorError> {
    let (p, g, m, v) = (i[0], i[1], i[2], i[3]);
    if g.shape() != p.shape() || m.shape() != p.shape() || v.shape() != p.shape() {
        return Err(crate::ops_basic::shape_err("adamw", format!("p {:?} g {:?}", p.shape(), g.shape())));
    }
    if h.step == 0 {
        return Err(TensorError::BadParam { kernel: "adamw", detail: "step counts from 1".into() });
    }
    let t = h.step.min(i32::MAX as u64) as f64;
    let bc1 = (1.0 - libm::pow(f64::from(h.beta1), t)) as f32;
    let bc2 = (1.0 - libm::pow(f64::from(h.beta2), t)) as f32;
    let decay = 1.0 - h.lr * h.weight_decay;
    let n = p.numel();
    let (mut po, mut mo, mut vo) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    po.par_chunks_mut(PAR_CHUNK)
        .zip(mo.par_chunks_mut(PAR_CHUNK).zip(vo.par_chunks_mut(PAR_CHUNK)))
        .enumerate()
        .for_each(|(c, (po, (mo, vo)))| {
            let base = c * PAR_CHUNK;
            let len = po.len();
            let (g, m, v, p) = (
                &g.data()[base..base + len],
                &m.data()[base..base + len],
                &v.data()[base..base + len],
                &p.data()[base..base + len],
            );
            crate::simd::wide(
                #[inline(always)]
                || {
                    for j in 0..len {
                        let gk = g[j];
                        let mk = h.beta1 * m[j] + (1.0 - h.beta1) * gk;
                        let vk = h.beta2 * v[j] + (1.0 - h.beta2) * gk * gk;
                        let mhat = mk / bc1;
                        let vhat = vk / bc2;
                        po[j] = p[j] * decay - h.lr * mhat / (vhat.sqrt() + h.eps);
                        mo[j] = mk;
                        vo[j] = vk;
                    }
                },
            )
        });
    let s = p.shape().to_vec();
    Ok(vec![Tensor::from_parts(s.clone(), po), Tensor::from_parts(s.clone(), mo), Tensor::from_parts(s, vo)])
}

/// Plain SGD: `p ← p − lr·g`.
pub(crate) fn sgd(p: &Tensor, g: &Tensor, lr: f32) -> Result<Tensor, TensorError> {
    if p.shape() != g.shape() {
        return Err(crate::ops_basic::shape_err("sgd", format!("{:?} vs {:?}", p.shape(), g.shape())));
    }
    Ok(map2(p, g, |p, g| p - lr * g))
}

//! Neural-network operators and their backward passes: activations, layer norm, causal
//! softmax, embedding lookup and softmax cross-entropy.
//!
//! Rows are independent and spread over threads; every per-row sum uses [`sum_fixed`] or
//! [`dot_fixed`]; `exp` is [`crate::math::exp`], `log` comes from `libm`.

use rayon::prelude::*;

use crate::ops_basic::{dot_fixed, map1, map2, shape_err, sum_fixed};
use crate::{Tensor, TensorError};

const GELU_C: f32 = 0.797_884_6; // sqrt(2/pi)
const GELU_A: f32 = 0.044_715;
/// Columns of dγ/dβ one task sums in layer-norm backward.
const LN_COLS: usize = 64;

/// GELU, tanh form: `0.5·x·(1 + tanh(u))` with `u = √(2/π)·(x + 0.044715·x³)`, computed in
/// the identical closed form `x·σ(2u) = x / (1 + e^(−2u))`, which needs one `exp`.
pub(crate) fn gelu(x: &Tensor) -> Tensor {
    map1(x, |x| x * gelu_sigmoid(x))
}

/// `σ(2u(x))`; saturates cleanly (exp overflow gives 0, underflow gives 1).
#[inline(always)]
fn gelu_sigmoid(x: f32) -> f32 {
    let u = GELU_C * (x + GELU_A * x * x * x);
    1.0 / (1.0 + crate::math::exp(-2.0 * u))
}

/// Gradient of the tanh-form GELU times `dy`: `s + x·2s(1−s)·u'(x)` with `s = σ(2u)`.
pub(crate) fn gelu_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    map2(x, dy, |x, dy| {
        let s = gelu_sigmoid(x);
        let du = GELU_C * (1.0 + 3.0 * GELU_A * x * x);
        (s + x * (2.0 * s * (1.0 - s)) * du) * dy
    })
}

pub(crate) fn relu(x: &Tensor) -> Tensor {
    map1(x, |x| if x > 0.0 { x } else { 0.0 })
}

pub(crate) fn relu_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    map2(x, dy, |x, dy| if x > 0.0 { dy } else { 0.0 })
}

fn rows_of(x: &Tensor, name: &'static str) -> Result<(usize, usize), TensorError> {
    match x.shape().last() {
        Some(&c) if c > 0 => Ok((x.numel() / c, c)),
        _ => Err(shape_err(name, format!("{:?}", x.shape()))),
    }
}

/// Layer norm over the last dim. Returns `(y, mean, rstd)`; mean and rstd have one value a row.
pub(crate) fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f32) -> Result<Vec<Tensor>, TensorError> {
    let (rows, c) = rows_of(x, "layer_norm")?;
    if g.shape() != [c] || b.shape() != [c] {
        return Err(shape_err(
            "layer_norm",
            format!("x {:?} gamma {:?} beta {:?}", x.shape(), g.shape(), b.shape()),
        ));
    }
    let mut y = vec![0.0f32; x.numel()];
    let mut stats = vec![(0.0f32, 0.0f32); rows];
    let rows_iter = y.par_chunks_mut(c).zip(x.data().par_chunks(c)).zip(stats.par_iter_mut());
    rows_iter.for_each_init(
        || vec![0.0f32; c],
        |d, ((yr, xr), st)| {
            crate::simd::wide(
                #[inline(always)]
                || {
                    let mean = sum_fixed(xr) / c as f32;
                    for (d, &x) in d.iter_mut().zip(xr) {
                        *d = x - mean;
                    }
                    let var = dot_fixed(d, d) / c as f32;
                    let rstd = 1.0 / (var + eps).sqrt();
                    for (((y, &d), &g), &b) in yr.iter_mut().zip(d.iter()).zip(g.data()).zip(b.data()) {
                        *y = d * rstd * g + b;
                    }
                    *st = (mean, rstd);
                },
            )
        },
    );
    let lead = x.shape()[..x.shape().len() - 1].to_vec();
    let (mean, rstd): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
    Ok(vec![
        Tensor::from_parts(x.shape().to_vec(), y),
        Tensor::from_parts(lead.clone(), mean),
        Tensor::from_parts(lead, rstd),
    ])
}

/// Backward of layer norm. Inputs `dy, x, gamma, mean, rstd`; returns `(dx, dgamma, dbeta)`.
pub(crate) fn layer_norm_backward(i: &[&Tensor]) -> Result<Vec<Tensor>, TensorError> {
    let (dy, x, g, mean, rstd) = (i[0], i[1], i[2], i[3], i[4]);
    let (rows, c) = rows_of(x, "layer_norm_backward")?;
    if dy.shape() != x.shape() || g.shape() != [c] || mean.numel() != rows || rstd.numel() != rows {
        return Err(shape_err("layer_norm_backward", format!("x {:?} dy {:?}", x.shape(), dy.shape())));
    }
    let xhat_row = |r: usize, out: &mut [f32]| {
        let xr = &x.data()[r * c..(r + 1) * c];
        let (m, s) = (mean.data()[r], rstd.data()[r]);
        for (o, &x) in out.iter_mut().zip(xr) {
            *o = (x - m) * s;
        }
    };
    let mut dx = vec![0.0f32; x.numel()];
    dx.par_chunks_mut(c).enumerate().for_each_init(
        || (vec![0.0f32; c], vec![0.0f32; c]),
        |(xh, dxh), (r, dxr)| {
            crate::simd::wide(
                #[inline(always)]
                || {
                    let dyr = &dy.data()[r * c..(r + 1) * c];
                    xhat_row(r, xh);
                    for ((d, &dy), &g) in dxh.iter_mut().zip(dyr).zip(g.data()) {
                        *d = dy * g;
                    }
                    let m1 = sum_fixed(dxh) / c as f32;
                    let m2 = dot_fixed(dxh, xh) / c as f32;
                    let s = rstd.data()[r];
                    for ((o, &d), &xh) in dxr.iter_mut().zip(dxh.iter()).zip(xh.iter()) {
                        *o = s * (d - m1 - xh * m2);
                    }
                },
            )
        },
    );
    // dγ and dβ: each column summed over the rows in row order; blocks of columns run in
    // parallel (a column's sum is never split).
    let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
    let cols = dg.par_chunks_mut(LN_COLS).zip(db.par_chunks_mut(LN_COLS)).enumerate();
    cols.for_each(|(blk, (dg, db))| {
        let j0 = blk * LN_COLS;
        crate::simd::wide(
            #[inline(always)]
            || {
                for r in 0..rows {
                    let xr = &x.data()[r * c + j0..r * c + j0 + dg.len()];
                    let dyr = &dy.data()[r * c + j0..r * c + j0 + dg.len()];
                    let (m, s) = (mean.data()[r], rstd.data()[r]);
                    for (((dg, db), &x), &dy) in dg.iter_mut().zip(db.iter_mut()).zip(xr).zip(dyr) {
                        *dg += dy * ((x - m) * s);
                        *db += dy;
                    }
                }
            },
        )
    });
    Ok(vec![
        Tensor::from_parts(x.shape().to_vec(), dx),
        Tensor::from_parts(vec![c], dg),
        Tensor::from_parts(vec![c], db),
    ])
}

fn square_rows(x: &Tensor, name: &'static str) -> Result<usize, TensorError> {
    let s = x.shape();
    if s.len() < 2 || s[s.len() - 1] != s[s.len() - 2] || s[s.len() - 1] == 0 {
        return Err(shape_err(name, format!("{s:?} is not [.., T, T]")));
    }
    Ok(s[s.len() - 1])
}

/// Softmax of `scale·x` over the last dim with a causal mask: row `i` sees columns `0..=i`;
/// masked entries are exactly 0.
pub(crate) fn causal_softmax(x: &Tensor, scale: f32) -> Result<Tensor, TensorError> {
    let t = square_rows(x, "causal_softmax")?;
    let mut y = vec![0.0f32; x.numel()];
    y.par_chunks_mut(t).zip(x.data().par_chunks(t)).enumerate().for_each(|(r, (yr, xr))| {
        crate::simd::wide(
            #[inline(always)]
            || {
                let n = r % t + 1;
                let max = xr[..n].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(scale * v));
                for (y, &v) in yr[..n].iter_mut().zip(&xr[..n]) {
                    *y = crate::math::exp(scale * v - max);
                }
                let inv = 1.0 / sum_fixed(&yr[..n]);
                for y in &mut yr[..n] {
                    *y *= inv;
                }
            },
        )
    });
    Ok(Tensor::from_parts(x.shape().to_vec(), y))
}

/// Backward of [`causal_softmax`] from its output `y`: `dx = scale·y·(dy − Σ y·dy)`.
pub(crate) fn softmax_backward(y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor, TensorError> {
    let t = square_rows(y, "softmax_backward")?;
    if dy.shape() != y.shape() {
        return Err(shape_err("softmax_backward", format!("{:?} vs {:?}", y.shape(), dy.shape())));
    }
    let mut dx = vec![0.0f32; y.numel()];
    dx.par_chunks_mut(t).enumerate().for_each(|(r, dxr)| {
        crate::simd::wide(
            #[inline(always)]
            || {
                let n = r % t + 1;
                let yr = &y.data()[r * t..r * t + n];
                let dyr = &dy.data()[r * t..r * t + n];
                let s = dot_fixed(yr, dyr);
                for ((o, &y), &d) in dxr[..n].iter_mut().zip(yr).zip(dyr) {
                    *o = scale * (y * (d - s));
                }
            },
        )
    });
    Ok(Tensor::from_parts(y.shape().to_vec(), dx))
}

/// Reads integer ids stored as f32 (exact below 2²⁴), checking each is in `0..limit`.
pub(crate) fn ids_of(ids: &Tensor, limit: usize, name: &'static str) -> Result<Vec<usize>, TensorError> {
    ids.data()
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 && (v as usize) < limit {
                Ok(v as usize)
            } else {
                Err(TensorError::BadIndex { kernel: name, value: v, limit })
            }
        })
        .collect()
}

/// Checks that every value of `ids` is an integer id in `0..limit` (the rule every id-taking
/// kernel applies), so callers can refuse bad input before building a graph.
pub fn check_ids(ids: &Tensor, limit: usize) -> Result<(), TensorError> {
    ids_of(ids, limit, "ids").map(|_| ())
}

/// Row lookup: `table [V, C]`, `ids [..]` → `[.., C]`.
pub(crate) fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor, TensorError> {
    if table.shape().len() != 2 {
        return Err(shape_err("embedding", format!("table {:?}", table.shape())));
    }
    let (v, c) = (table.shape()[0], table.shape()[1]);
    let idx = ids_of(ids, v, "embedding")?;
    let mut out = vec![0.0f32; idx.len() * c];
    out.par_chunks_mut(c.max(1)).zip(idx.par_iter()).for_each(|(o, &i)| {
        o.copy_from_slice(&table.data()[i * c..(i + 1) * c]);
    });
    let mut shape = ids.shape().to_vec();
    shape.push(c);
    Ok(Tensor::from_parts(shape, out))
}

/// Backward of embedding: scatter-add of `dy [.., C]` rows into a `[rows, C]` table, in the
/// order of `ids` (so repeated ids accumulate in a fixed order).
pub(crate) fn embedding_backward(ids: &Tensor, dy: &Tensor, rows: usize) -> Result<Tensor, TensorError> {
    let c = *dy.shape().last().unwrap_or(&0);
    if c == 0 || dy.numel() != ids.numel() * c {
        return Err(shape_err("embedding_backward", format!("ids {:?} dy {:?}", ids.shape(), dy.shape())));
    }
    let idx = ids_of(ids, rows, "embedding_backward")?;
    let mut out = vec![0.0f32; rows * c];
    for (n, &i) in idx.iter().enumerate() {
        let src = &dy.data()[n * c..(n + 1) * c];
        for (o, &g) in out[i * c..(i + 1) * c].iter_mut().zip(src) {
            *o += g;
        }
    }
    Ok(Tensor::from_parts(vec![rows, c], out))
}

/// Mean softmax cross-entropy of `logits [N, V]` against `targets [N]`.
/// Returns `(loss [1], probs [N, V])`.
pub(crate) fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Vec<Tensor>, TensorError> {
    let s = logits.shape();
    if s.len() != 2 || s[1] == 0 || targets.numel() != s[0] || s[0] == 0 {
        return Err(shape_err("cross_entropy", format!("logits {s:?} targets {:?}", targets.shape())));
    }
    let (n, v) = (s[0], s[1]);
    let tg = ids_of(targets, v, "cross_entropy")?;
    let mut probs = vec![0.0f32; n * v];
    let mut losses = vec![0.0f32; n];
    probs
        .par_chunks_mut(v)
        .zip(logits.data().par_chunks(v))
        .zip(losses.par_iter_mut().zip(tg.par_iter()))
        .for_each(|((p, x), (l, &t))| {
            crate::simd::wide(
                #[inline(always)]
                || {
                    let max = x.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
                    for (p, &a) in p.iter_mut().zip(x) {
                        *p = crate::math::exp(a - max);
                    }
                    let z = sum_fixed(p);
                    let inv = 1.0 / z;
                    for p in p.iter_mut() {
                        *p *= inv;
                    }
                    *l = libm::logf(z) + max - x[t];
                },
            )
        });
    let loss = sum_fixed(&losses) / n as f32;
    Ok(vec![Tensor::scalar(loss), Tensor::from_parts(vec![n, v], probs)])
}

/// Backward of mean cross-entropy: `(probs − onehot)·dloss/N`.
pub(crate) fn cross_entropy_backward(i: &[&Tensor]) -> Result<Tensor, TensorError> {
    let (probs, targets, dloss) = (i[0], i[1], i[2]);
    let s = probs.shape();
    if s.len() != 2 || targets.numel() != s[0] || dloss.numel() != 1 {
        return Err(shape_err("cross_entropy_backward", format!("probs {s:?}")));
    }
    let (n, v) = (s[0], s[1]);
    let tg = ids_of(targets, v, "cross_entropy_backward")?;
    let k = dloss.data()[0] / n as f32;
    let mut dx = vec![0.0f32; n * v];
    dx.par_chunks_mut(v).zip(probs.data().par_chunks(v)).zip(tg.par_iter()).for_each(|((d, p), &t)| {
        crate::simd::wide(
            #[inline(always)]
            || {
                for (j, (d, &p)) in d.iter_mut().zip(p).enumerate() {
                    let y = if j == t { 1.0 } else { 0.0 };
                    *d = (p - y) * k;
                }
            },
        )
    });
    Ok(Tensor::from_parts(vec![n, v], dx))
}

//! Elementwise arithmetic, reductions, reshapes and attention head split/merge.
//!
//! Elementwise work is spread over threads in chunks (each output independent). Every sum has
//! one order fixed by the shape: see [`sum_fixed`].

use rayon::prelude::*;

use crate::{Tensor, TensorError};

/// Elements per parallel task for elementwise kernels.
pub(crate) const PAR_CHUNK: usize = 1 << 14;

/// Combines 8 interleaved partial sums in the one fixed tree every reduction here uses:
/// `((a0+a4) + (a1+a5)) + ((a2+a6) + (a3+a7))`.
#[inline]
pub(crate) fn tree8<T: Copy + std::ops::Add<Output = T>>(a: [T; 8]) -> T {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Sum with an order fixed by the length alone: 8 interleaved partial sums over the multiple
/// of 8, combined pairwise in a fixed tree, then the remainder in order.
pub fn sum_fixed(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = tree8(acc);
    for &r in rem {
        s += r;
    }
    s
}

/// Dot product with the same fixed order as [`sum_fixed`] (products rounded, then summed).
pub fn dot_fixed(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let n8 = a.len() / 8 * 8;
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = tree8(acc);
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Applies `f` to every element, in parallel chunks (each output independent).
pub(crate) fn map1(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let n = x.numel();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n].par_chunks_mut(PAR_CHUNK).zip(x.data().par_chunks(PAR_CHUNK)).for_each(
        |(o, xs)| {
            crate::simd::wide(
                #[inline(always)]
                || {
                    o.iter_mut().zip(xs).for_each(|(o, &v)| {
                        o.write(f(v));
                    })
                },
            )
        },
    );
    // SAFETY: the zip above wrote all n elements (equal-length chunkings of n values).
    unsafe { out.set_len(n) };
    Tensor::from_parts(x.shape().to_vec(), out)
}

/// Applies `f` elementwise to two tensors of one shape.
pub(crate) fn map2(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Tensor {
    assert_eq!(a.shape(), b.shape());
    let n = a.numel();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(PAR_CHUNK)
        .zip(a.data().par_chunks(PAR_CHUNK).zip(b.data().par_chunks(PAR_CHUNK)))
        .for_each(|(o, (xa, xb))| {
            crate::simd::wide(
                #[inline(always)]
                || {
                    for ((o, &x), &y) in o.iter_mut().zip(xa).zip(xb) {
                        o.write(f(x, y));
                    }
                },
            )
        });
    // SAFETY: the zip above wrote all n elements (equal-length chunkings of n values).
    unsafe { out.set_len(n) };
    Tensor::from_parts(a.shape().to_vec(), out)
}

/// `a ∘ b` where `b` has `a`'s shape or a suffix of it (broadcast over leading dims).
pub(crate) fn broadcast2(
    name: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor, TensorError> {
    if a.shape() == b.shape() {
        return Ok(map2(a, b, f));
    }
    if !is_suffix(b.shape(), a.shape()) || b.numel() == 0 {
        return Err(shape_err(name, format!("{:?} with {:?}", a.shape(), b.shape())));
    }
    let inner = b.numel();
    let mut out = vec![0.0f32; a.numel()];
    let rows_per = (PAR_CHUNK / inner).max(1);
    out.par_chunks_mut(rows_per * inner).zip(a.data().par_chunks(rows_per * inner)).for_each(|(o, xa)| {
        crate::simd::wide(
            #[inline(always)]
            || {
                for (orow, arow) in o.chunks_mut(inner).zip(xa.chunks(inner)) {
                    for ((o, &x), &y) in orow.iter_mut().zip(arow).zip(b.data()) {
                        *o = f(x, y);
                    }
                }
            },
        )
    });
    Ok(Tensor::from_parts(a.shape().to_vec(), out))
}

/// Whether `s` equals the last `s.len()` dims of `of`.
pub(crate) fn is_suffix(s: &[usize], of: &[usize]) -> bool {
    s.len() <= of.len() && of[of.len() - s.len()..] == *s
}

pub(crate) fn shape_err(kernel: &'static str, detail: String) -> TensorError {
    TensorError::Shape { kernel, detail }
}

/// Sums `x` over its leading dims down to `shape` (a suffix of `x`'s shape); rows in order.
pub(crate) fn sum_to_shape(x: &Tensor, shape: &[usize]) -> Result<Tensor, TensorError> {
    if !is_suffix(shape, x.shape()) {
        return Err(shape_err("sum_to_shape", format!("{:?} to {:?}", x.shape(), shape)));
    }
    let inner: usize = shape.iter().product();
    let mut out = vec![0.0f32; inner];
    if inner > 0 {
        crate::simd::wide(
            #[inline(always)]
            || {
                for row in x.data().chunks(inner) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o += v;
                    }
                }
            },
        )
    }
    Ok(Tensor::from_parts(shape.to_vec(), out))
}

/// `[B, T, H·D] → [B, H, T, D]`.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor, TensorError> {
    let s = x.shape();
    if s.len() != 3 || heads == 0 || !s[2].is_multiple_of(heads) {
        return Err(shape_err("split_heads", format!("{s:?} into {heads} heads")));
    }
    let (b, t, d) = (s[0], s[1], s[2] / heads);
    let mut out = vec![0.0f32; x.numel()];
    let src = x.data();
    out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
        let (bi, h) = (bh / heads, bh % heads);
        for ti in 0..t {
            let from = (bi * t + ti) * heads * d + h * d;
            o[ti * d..(ti + 1) * d].copy_from_slice(&src[from..from + d]);
        }
    });
    Ok(Tensor::from_parts(vec![b, heads, t, d], out))
}

/// `[B, H, T, D] → [B, T, H·D]`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor, TensorError> {
    let s = x.shape();
    if s.len() != 4 {
        return Err(shape_err("merge_heads", format!("{s:?}")));
    }
    let (b, h, t, d) = (s[0], s[1], s[2], s[3]);
    let mut out = vec![0.0f32; x.numel()];
    let src = x.data();
    out.par_chunks_mut(h * d).enumerate().for_each(|(bt, o)| {
        let (bi, ti) = (bt / t, bt % t);
        for hi in 0..h {
            let from = ((bi * h + hi) * t + ti) * d;
            o[hi * d..(hi + 1) * d].copy_from_slice(&src[from..from + d]);
        }
    });
    Ok(Tensor::from_parts(vec![b, t, h * d], out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let x = Tensor::new(&[2, 3, 8], (0..48).map(|i| i as f32).collect()).unwrap();
        let y = split_heads(&x, 2).unwrap();
        assert_eq!(y.shape(), &[2, 2, 3, 4]);
        assert_eq!(y.data()[4], 8.0); // b0 h0 t1 d0 = x[0,1,0]
        assert_eq!(merge_heads(&y).unwrap(), x);
    }

    #[test]
    fn fixed_sum_order_is_the_documented_one() {
        let xs: Vec<f32> = (0..11).map(|i| 1.0 + i as f32 * 1e-7).collect();
        let mut acc = [0.0f32; 8];
        acc.copy_from_slice(&xs[..8]);
        let want = ((acc[0] + acc[4]) + (acc[1] + acc[5]))
            + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
            + xs[8]
            + xs[9]
            + xs[10];
        assert_eq!(sum_fixed(&xs).to_bits(), want.to_bits());
    }

    #[test]
    fn broadcast_rejects_non_suffix() {
        let a = Tensor::zeros(&[2, 3]);
        assert!(broadcast2("add", &a, &Tensor::zeros(&[2]), |x, y| x + y).is_err());
        let r = broadcast2("add", &a, &Tensor::full(&[3], 1.0), |x, y| x + y).unwrap();
        assert_eq!(r.data(), &[1.0; 6]);
    }
}

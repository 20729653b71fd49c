//! Copy and replay detection. A peer that resubmits another peer's update, or its own (or an
//! aggregate) from an earlier round, has done no work for the round.
//! - Within a round, updates are compared by the cosine of their values at [`SAMPLE`] fixed
//!   coordinates (every update of a run is sampled at the same ones): a copy, scaled or with a
//!   little noise added, has a cosine near 1; honest updates trained on different data do not.
//! - Across rounds, an update whose decoded values are bit for bit those of an earlier update
//!   or aggregate is a replay ([`values_hash`]); only a hash per update is kept.

use crate::Hash32;

/// Coordinates sampled for the within-round comparison.
pub const SAMPLE: usize = 4096;

/// The values at the run's fixed sample coordinates: evenly spaced strides, each offset by a
/// pseudo-random amount fixed by its stride index (all of them when there are fewer).
pub fn sample(values: &[f32]) -> Vec<f32> {
    let n = values.len();
    if n <= SAMPLE {
        return values.to_vec();
    }
    let stride = n / SAMPLE;
    (0..SAMPLE)
        .map(|j| {
            let off = (splitmix(j as u64) % stride as u64) as usize;
            values[j * stride + off]
        })
        .collect()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Cosine similarity, accumulated in f64 in index order (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "samples of one run");
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// Values hashed per call to the hasher (the bytes hashed are the same, however they are cut).
const HASH_CHUNK: usize = 4096;

/// The identity of an update's decoded values (and the positions a sparse update sent): BLAKE3
/// over a domain tag and the little-endian bytes, fed a chunk at a time (4 bytes a call cost
/// more than the hashing itself).
pub fn values_hash(values: &[f32], support: Option<&[u32]>) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(b"tessera-values-v1");
    let mut buf = Vec::with_capacity(4 * HASH_CHUNK);
    for chunk in values.chunks(HASH_CHUNK) {
        buf.clear();
        chunk.iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
        h.update(&buf);
    }
    if let Some(s) = support {
        h.update(b"support");
        for chunk in s.chunks(HASH_CHUNK) {
            buf.clear();
            chunk.iter().for_each(|i| buf.extend_from_slice(&i.to_le_bytes()));
            h.update(&buf);
        }
    }
    *h.finalize().as_bytes()
}

/// Every how many sample coordinates one goes into the cheap part of the copy test.
const PRUNE_STRIDE: usize = 16;

/// A sample's squared norms over the pruning coordinates (every [`PRUNE_STRIDE`]th) and over
/// the rest.
fn split_norms(s: &[f32]) -> (f64, f64) {
    let (mut head, mut rest) = (0.0f64, 0.0f64);
    for (j, &x) in s.iter().enumerate() {
        let x = f64::from(x);
        match j % PRUNE_STRIDE {
            0 => head += x * x,
            _ => rest += x * x,
        }
    }
    (head, rest)
}

/// An upper bound on the cosine of `a` and `b` from their pruning coordinates alone: their
/// dot product there, plus at most the product of their norms over the rest (Cauchy–Schwarz).
/// Honest updates, nearly orthogonal, come out near 1 − 1/16, so the full cosine is computed
/// only for the few pairs that could be copies.
fn cosine_bound(a: &[f32], b: &[f32], na: (f64, f64), nb: (f64, f64)) -> f64 {
    let dot: f64 = a.iter().zip(b).step_by(PRUNE_STRIDE).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let (aa, bb) = (na.0 + na.1, nb.0 + nb.1);
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (dot + (na.1 * nb.1).sqrt()) / (aa.sqrt() * bb.sqrt())
}

/// Within one round: given each update's sample in the order the updates were committed,
/// which are copies, and of which earlier one: `(copy, original)` index pairs. An update is a
/// copy when its cosine with an earlier, not itself copied, update exceeds `threshold` (or,
/// with `threshold` ≥ 1, when its sample is bit for bit equal).
///
/// A pair is compared in full only when [`cosine_bound`] allows a cosine over the threshold (a
/// margin of 1e-9 covers the bound's rounding), so the answer is the full comparison's.
pub fn copies(samples: &[Vec<f32>], threshold: f64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut originals: Vec<usize> = Vec::new();
    let norms: Vec<(f64, f64)> = samples.iter().map(|s| split_norms(s)).collect();
    for (i, s) in samples.iter().enumerate() {
        let same = |o: &usize| {
            let t = &samples[*o];
            if threshold >= 1.0 {
                t.iter().zip(s).all(|(a, b)| a.to_bits() == b.to_bits())
            } else {
                cosine_bound(t, s, norms[*o], norms[i]) > threshold - 1e-9 && cosine(t, s) > threshold
            }
        };
        match originals.iter().find(|o| same(o)) {
            Some(&o) => out.push((i, o)),
            None => originals.push(i),
        }
    }
    assert!(out.iter().all(|(c, o)| o < c), "a copy comes after its original");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(seed: u64, n: usize) -> Vec<f32> {
        (0..n as u64).map(|i| (splitmix(seed * 1_000_003 + i) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// The bound the copy test prunes by never falls below the cosine it stands for, for
    /// orthogonal-ish pairs, copies, scaled and noisy copies, and vectors with all their
    /// weight off (or on) the pruning coordinates; so pruning never changes an answer.
    #[test]
    fn the_pruning_bound_is_never_below_the_cosine() {
        let mut cases = Vec::new();
        for s in 0..200u64 {
            let a = vector(s, SAMPLE);
            let b = vector(s + 7_777, SAMPLE);
            let noisy: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + 0.05 * y).collect();
            let scaled: Vec<f32> = a.iter().map(|x| -3.0 * x).collect();
            let off: Vec<f32> =
                a.iter().enumerate().map(|(j, x)| if j % PRUNE_STRIDE == 0 { 0.0 } else { *x }).collect();
            let on: Vec<f32> =
                a.iter().enumerate().map(|(j, x)| if j % PRUNE_STRIDE == 0 { *x } else { 0.0 }).collect();
            cases.extend([
                (a.clone(), b),
                (a.clone(), noisy),
                (a.clone(), scaled),
                (off.clone(), a.clone()),
                (on, off),
            ]);
        }
        let mut pruned = 0;
        for (a, b) in &cases {
            let bound = cosine_bound(a, b, split_norms(a), split_norms(b));
            assert!(bound >= cosine(a, b) - 1e-12, "bound {bound} below cosine {}", cosine(a, b));
            pruned += usize::from(bound <= 0.99 - 1e-9);
        }
        assert!(pruned >= 200, "the bound prunes the unrelated pairs: {pruned}");
    }
}

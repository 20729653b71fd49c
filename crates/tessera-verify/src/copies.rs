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

/// The identity of an update's decoded values (and the positions a sparse update sent).
pub fn values_hash(values: &[f32], support: Option<&[u32]>) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(b"tessera-values-v1");
    for v in values {
        h.update(&v.to_le_bytes());
    }
    if let Some(s) = support {
        h.update(b"support");
        for i in s {
            h.update(&i.to_le_bytes());
        }
    }
    *h.finalize().as_bytes()
}

/// Within one round: given each update's sample in the order the updates were committed,
/// which are copies, and of which earlier one: `(copy, original)` index pairs. An update is a
/// copy when its cosine with an earlier, not itself copied, update exceeds `threshold` (or,
/// with `threshold` ≥ 1, when its sample is bit for bit equal).
pub fn copies(samples: &[Vec<f32>], threshold: f64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut originals: Vec<usize> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let same = |o: &usize| {
            let t = &samples[*o];
            if threshold >= 1.0 {
                t.iter().zip(s).all(|(a, b)| a.to_bits() == b.to_bits())
            } else {
                cosine(t, s) > threshold
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

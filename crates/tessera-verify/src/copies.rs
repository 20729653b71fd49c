//! Copy and replay detection. A peer that resubmits another peer's update, or its own (or an
//! aggregate) from an earlier round, has done no work for the round.
//! - Within a round, updates are compared by the cosine of their values at [`SAMPLE`] fixed
//!   coordinates (every update of a run is sampled at the same ones): a copy, scaled or with a
//!   little noise added, has a cosine near 1; honest updates trained on different data do not.
//!   The comparison of many pairs at once is in `prune.rs`.
//! - Across rounds, an update whose decoded values are bit for bit those of an earlier update
//!   or aggregate is a replay ([`values_hash`]); only a hash per update is kept.

use std::borrow::Cow;

use crate::Hash32;

/// Coordinates sampled for the within-round comparison.
pub const SAMPLE: usize = 4096;

/// The values at the run's fixed sample coordinates: evenly spaced strides, each offset by a
/// pseudo-random amount fixed by its stride index (all of them, borrowed, when there are fewer).
pub fn sample(values: &[f32]) -> Cow<'_, [f32]> {
    Sampler::new(values.len()).sample(values)
}

/// The sample coordinates of a run's `n` values, worked out once for many updates (see
/// [`sample`]; working them out costs more than gathering them).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    n: usize,
    /// `None`: `n ≤ SAMPLE`, the values are their own sample.
    at: Option<Vec<usize>>,
}

impl Sampler {
    pub fn new(n: usize) -> Self {
        Self { n, at: (n > SAMPLE).then(|| sample_positions(n)) }
    }

    /// The sample of `values`, which must be `n` long.
    pub fn sample<'v>(&self, values: &'v [f32]) -> Cow<'v, [f32]> {
        assert_eq!(values.len(), self.n, "values of the run sampled");
        match &self.at {
            None => Cow::Borrowed(values),
            Some(at) => Cow::Owned(at.iter().map(|&p| values[p]).collect()),
        }
    }
}

/// Where the sample coordinates of `n > SAMPLE` values are (see [`sample`]).
pub(crate) fn sample_positions(n: usize) -> Vec<usize> {
    assert!(n > SAMPLE, "fewer values are their own sample");
    let stride = n / SAMPLE;
    (0..SAMPLE).map(|j| j * stride + (splitmix(j as u64) % stride as u64) as usize).collect()
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
/// over a domain tag and the little-endian bytes (the values' own memory, handed over whole on
/// a little-endian machine).
pub fn values_hash(values: &[f32], support: Option<&[u32]>) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(b"tessera-values-v1");
    tessera_tensor::hash_f32s(&mut h, values);
    if let Some(s) = support {
        h.update(b"support");
        let mut buf = Vec::with_capacity(4 * HASH_CHUNK);
        for chunk in s.chunks(HASH_CHUNK) {
            buf.clear();
            chunk.iter().for_each(|i| buf.extend_from_slice(&i.to_le_bytes()));
            h.update(&buf);
        }
    }
    *h.finalize().as_bytes()
}

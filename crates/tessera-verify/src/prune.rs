//! The within-round copy test and the near-replay test at scale. Both ask, of many pairs of
//! samples, whether their cosine exceeds a threshold. Comparing every pair in full costs
//! O(n²·4096); here each pair is first bounded from every 16th coordinate (the "head"), and
//! only a pair whose bound allows a cosine over the threshold is compared in full. The head
//! dot products of all pairs come from one matrix product per block of rows, so a
//! 10,000-update round prunes its 50 million pairs in a fraction of a second.
//!
//! **Exactness.** The bound of a pair is `ĥa·ĥb + ra·rb`, with `ĥ` a sample's head divided by
//! its whole norm and `r` the norm of the rest divided by the whole norm (Cauchy–Schwarz on
//! the rest), so it is never below the cosine. Computed in f32, it may be low by at most the
//! rounding of 256-term dot products of unit-bounded vectors (under 2·10⁻⁵); [`MARGIN`] is
//! five times that. A pruned pair therefore has a cosine under the threshold, and the answer
//! is the full comparison's, bit for bit. A sample whose norm is zero or not finite is never
//! pruned (it is compared in full, as before).

use std::collections::BTreeMap;

use tessera_tensor::{matmul, MatSpec};

use std::borrow::Cow;

use crate::copies::{cosine, sample_positions, SAMPLE};

/// Every how many sample coordinates one goes into the head.
pub const PRUNE_STRIDE: usize = 16;
/// Rows whose head dot products are computed at once (bounds the scratch to `BLOCK × n`).
const BLOCK: usize = 256;
/// Slack added to every computed bound: covers its f32 rounding with room to spare.
const MARGIN: f32 = 1e-4;

/// A set of updates' samples (see [`crate::sample`]), read in place: from the updates' values
/// when those are held (gathering 10,000 samples into memory of their own would cost more
/// than screening them), or given as the samples themselves (rows no longer than [`SAMPLE`]),
/// as the coordinator keeps them.
pub struct Samples<'a> {
    rows: Vec<&'a [f32]>,
    /// Where sample coordinate `j` is in a row (`None`: the rows are their own samples).
    at: Option<Vec<usize>>,
}

impl<'a> Samples<'a> {
    /// The samples of `rows`, all of one length (rows no longer than [`SAMPLE`] are their own).
    pub fn of(rows: Vec<&'a [f32]>) -> Self {
        let n = rows.first().map_or(0, |r| r.len());
        assert!(rows.iter().all(|r| r.len() == n), "values of one run");
        let at = (n > SAMPLE).then(|| sample_positions(n));
        Self { rows, at }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The length of one sample.
    pub fn width(&self) -> usize {
        self.at.as_ref().map_or(self.rows.first().map_or(0, |r| r.len()), Vec::len)
    }

    fn get(&self, i: usize, j: usize) -> f32 {
        match &self.at {
            Some(at) => self.rows[i][at[j]],
            None => self.rows[i][j],
        }
    }

    /// Row `i`'s sample, gathered into `buf` when the rows are not their own samples.
    fn row_in<'b>(&'b self, i: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        match &self.at {
            Some(at) => {
                buf.clear();
                buf.extend(at.iter().map(|&p| self.rows[i][p]));
                buf
            }
            None => self.rows[i],
        }
    }

    /// Row `i`'s sample (borrowed when the rows are their own samples).
    pub fn row(&self, i: usize) -> Cow<'a, [f32]> {
        match &self.at {
            Some(at) => Cow::Owned(at.iter().map(|&p| self.rows[i][p]).collect()),
            None => Cow::Borrowed(self.rows[i]),
        }
    }
}

/// The samples reduced for pruning.
struct Heads {
    /// Head length: coordinates `0, 16, 32, …` of a sample.
    k: usize,
    /// Each sample's head over its norm, row-major `[n, k]`.
    rows: Vec<f32>,
    /// Each sample's norm off the head over its norm, rounded up.
    rest: Vec<f32>,
    /// [`EXACT`] for a sample that cannot be normalized (compared in full with everything),
    /// else 0: added to every bound of its pairs.
    bonus: Vec<f32>,
}

impl Heads {
    fn of(samples: &Samples) -> Self {
        let len = samples.width();
        let k = len.div_ceil(PRUNE_STRIDE);
        let (mut rows, mut rest, mut bonus) = (Vec::with_capacity(samples.len() * k), Vec::new(), Vec::new());
        let mut buf = Vec::new();
        for i in 0..samples.len() {
            let s = samples.row_in(i, &mut buf);
            // Lane l sums the squares of coordinates ≡ l (mod 16): lane 0 is the head.
            let mut lanes = [0.0f64; PRUNE_STRIDE];
            for c in s.chunks(PRUNE_STRIDE) {
                lanes.iter_mut().zip(c).for_each(|(a, &x)| *a += f64::from(x) * f64::from(x));
            }
            let off: f64 = lanes[1..].iter().sum();
            let norm = (lanes[0] + off).sqrt();
            let usable = norm.is_finite() && norm > 0.0;
            let scale = if usable { 1.0 / norm } else { 0.0 };
            rows.extend(s.iter().step_by(PRUNE_STRIDE).map(|&x| (f64::from(x) * scale) as f32));
            rest.push(((off.sqrt() * scale) as f32) * (1.0 + 1e-6));
            bonus.push(if usable { 0.0 } else { EXACT });
        }
        assert_eq!(rows.len(), samples.len() * k, "one head per sample");
        Self { k, rows, rest, bonus }
    }

    fn len(&self) -> usize {
        self.rest.len()
    }

    /// The head dot products of rows `from..to` with rows `0..cols` of `other`, row-major
    /// `[to − from, cols]`, into `c` (reused from block to block: fresh memory for each would
    /// cost more in page faults than the products).
    fn dots<'c>(&self, from: usize, to: usize, other: &Heads, cols: usize, c: &'c mut Vec<f32>) -> &'c [f32] {
        assert!(from <= to && to <= self.len() && cols <= other.len() && self.k == other.k);
        c.clear();
        c.resize((to - from) * cols, 0.0);
        if !c.is_empty() && self.k > 0 {
            let spec = MatSpec { m: to - from, n: cols, k: self.k, ta: false, tb: true };
            matmul(&spec, &self.rows[from * self.k..to * self.k], &other.rows[..cols * self.k], c);
        }
        c
    }

    /// The columns `j` of `cols` for which row `i`'s bound with `other`'s row `j` (head dot
    /// products `dots`) allows a cosine over `threshold`, in order. Checked 64 at a time in a
    /// loop the compiler vectorizes; almost every block of pairs is pruned whole.
    fn candidates<'s>(
        &'s self,
        i: usize,
        other: &'s Heads,
        dots: &'s [f32],
        cols: std::ops::Range<usize>,
        threshold: f64,
    ) -> impl Iterator<Item = usize> + 's {
        // Rounded down, so a bound the f64 test would pass passes here too.
        let lim = ((threshold - 1e-9) as f32 - MARGIN).min(f32::MAX);
        let lim = lim - lim.abs() * 1e-6;
        let (ri, bi) = (self.rest[i], self.bonus[i]);
        let pass = move |j: usize| dots[j] + ri * other.rest[j] + (bi + other.bonus[j]) > lim;
        let (start, end) = (cols.start, cols.end);
        (start..end).step_by(64).flat_map(move |j0| {
            let j1 = (j0 + 64).min(end);
            let any = (j0..j1).fold(false, |a, j| a | pass(j));
            let span = if any { j0..j1 } else { j0..j0 };
            span.filter(move |&j| pass(j))
        })
    }
}

/// Added to the bounds of a sample that cannot be normalized: they pass with anything.
const EXACT: f32 = 1e30;

/// Within one round: given each update's sample in the order the updates were committed,
/// which are copies, and of which earlier one: `(copy, original)` index pairs. An update is a
/// copy when its cosine with an earlier, not itself copied, update exceeds `threshold` (the
/// first such, in commit order), or, with `threshold` ≥ 1, when its sample is bit for bit
/// equal to one.
pub fn copies(samples: &Samples, threshold: f64) -> Vec<(usize, usize)> {
    let out = match threshold >= 1.0 {
        true => equal_copies(samples),
        false => near_copies(samples, threshold),
    };
    assert!(out.iter().all(|(c, o)| o < c), "a copy comes after its original");
    assert!(out.windows(2).all(|w| w[0].0 < w[1].0), "each update is a copy once");
    out
}

/// Bit-for-bit equal samples: the originals are pairwise distinct, so at most one can match.
fn equal_copies(samples: &Samples) -> Vec<(usize, usize)> {
    let mut originals: BTreeMap<Vec<u32>, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..samples.len() {
        let bits: Vec<u32> = (0..samples.width()).map(|j| samples.get(i, j).to_bits()).collect();
        match originals.get(&bits) {
            Some(&o) => out.push((i, o)),
            None => {
                originals.insert(bits, i);
            }
        }
    }
    out
}

fn near_copies(samples: &Samples, threshold: f64) -> Vec<(usize, usize)> {
    let heads = Heads::of(samples);
    let n = samples.len();
    let mut original = vec![false; n];
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for from in (0..n).step_by(BLOCK) {
        let to = (from + BLOCK).min(n);
        let dots = heads.dots(from, to, &heads, to, &mut scratch);
        for i in from..to {
            let row = &dots[(i - from) * to..(i - from + 1) * to];
            let me = std::cell::OnceCell::new(); // row i's sample, gathered only if needed
            let hit = heads.candidates(i, &heads, row, 0..i, threshold).find(|&j| {
                original[j] && cosine(&samples.row(j), me.get_or_init(|| samples.row(i))) > threshold
            });
            match hit {
                Some(o) => out.push((i, o)),
                None => original[i] = true,
            }
        }
    }
    out
}

/// For each of `samples`, whether its cosine with any of `earlier` exceeds `threshold`.
pub fn near_any<E: AsRef<[f32]>>(samples: &Samples, earlier: &[E], threshold: f64) -> Vec<bool> {
    if samples.is_empty() || earlier.is_empty() {
        return vec![false; samples.len()];
    }
    let own = Samples::of(earlier.iter().map(|e| e.as_ref()).collect());
    let (heads, old) = (Heads::of(samples), Heads::of(&own));
    let m = earlier.len();
    let mut out = Vec::with_capacity(samples.len());
    let mut scratch = Vec::new();
    for from in (0..samples.len()).step_by(BLOCK) {
        let to = (from + BLOCK).min(samples.len());
        let dots = heads.dots(from, to, &old, m, &mut scratch);
        for i in from..to {
            let row = &dots[(i - from) * m..(i - from + 1) * m];
            let me = std::cell::OnceCell::new();
            let mut near = heads.candidates(i, &old, row, 0..m, threshold);
            out.push(
                near.any(|j| cosine(earlier[j].as_ref(), me.get_or_init(|| samples.row(i))) > threshold),
            );
        }
    }
    assert_eq!(out.len(), samples.len(), "one answer per sample");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitmix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn vector(seed: u64, n: usize) -> Vec<f32> {
        (0..n as u64).map(|i| (splitmix(seed * 1_000_003 + i) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// The comparison of every pair in full, as the copy test was before pruning.
    fn brute_copies(samples: &[Vec<f32>], threshold: f64) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut originals: Vec<usize> = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            let same = |o: &&usize| match threshold >= 1.0 {
                true => samples[**o].iter().zip(s).all(|(a, b)| a.to_bits() == b.to_bits()),
                false => cosine(&samples[**o], s) > threshold,
            };
            match originals.iter().find(same) {
                Some(&o) => out.push((i, o)),
                None => originals.push(i),
            }
        }
        out
    }

    /// A round's worth of samples of every kind: unrelated ones sharing a common direction
    /// (honest updates of one round are alike), copies scaled and with noise, copies of
    /// copies, pairs just over and just under the threshold, zero samples, and samples with
    /// all their weight on (or off) the head coordinates.
    fn mixed(seed: u64, len: usize) -> Vec<Vec<f32>> {
        let common = vector(seed + 99, len);
        let mut v: Vec<Vec<f32>> = (0..300)
            .map(|i| vector(seed * 1000 + i, len).iter().zip(&common).map(|(x, c)| x + 0.6 * c).collect())
            .collect();
        let noise = vector(seed + 5, len);
        for (at, of, eps) in [(20, 3, 0.05f32), (40, 3, 0.0), (60, 20, 0.1), (80, 7, 0.14), (90, 8, 0.15)] {
            v[at] = v[of].iter().zip(&noise).map(|(x, n)| -2.5 * x + eps * n).collect();
        }
        v[100] = vec![0.0; len];
        v[101] = vec![0.0; len];
        v[110] = v[9].iter().enumerate().map(|(j, x)| if j % PRUNE_STRIDE == 0 { 0.0 } else { *x }).collect();
        v[120] = v[9].iter().enumerate().map(|(j, x)| if j % PRUNE_STRIDE == 0 { *x } else { 0.0 }).collect();
        v[130] = v[120].clone();
        v[140] = v[10].iter().map(|x| x * 1e-30).collect();
        v[150] = v[10].iter().map(|x| x * 1e30).collect();
        v
    }

    /// Pruning never changes an answer: the copy test gives the full comparison's pairs, on
    /// rounds mixing every kind of copy near and far from the threshold, at sample lengths
    /// that do and do not divide by the stride, for several thresholds (and bit equality).
    #[test]
    fn copies_match_the_full_comparison() {
        let mut found = 0;
        for (seed, len) in [(1, SAMPLE), (2, 1000), (3, 17), (4, SAMPLE)] {
            let v = mixed(seed, len);
            for t in [0.9, 0.99, 0.999, 1.0] {
                let want = brute_copies(&v, t);
                let rows = Samples::of(v.iter().map(Vec::as_slice).collect());
                assert_eq!(copies(&rows, t), want, "seed {seed}, length {len}, threshold {t}");
                found += want.len();
            }
        }
        assert!(found >= 40, "the cases do contain copies: {found}");
    }

    /// The near-replay test against earlier samples gives the full comparison's answers.
    #[test]
    fn near_any_matches_the_full_comparison() {
        let v = mixed(7, SAMPLE);
        let (earlier, now) = v.split_at(150);
        let mut now = now.to_vec();
        now[3] = earlier[12].iter().map(|x| x * 0.5).collect();
        now[4] = earlier[13].iter().zip(&earlier[14]).map(|(a, b)| a + 0.001 * b).collect();
        for t in [0.99, 0.9999] {
            let want: Vec<bool> = now.iter().map(|s| earlier.iter().any(|e| cosine(e, s) > t)).collect();
            let rows = Samples::of(now.iter().map(Vec::as_slice).collect());
            assert_eq!(near_any(&rows, earlier, t), want, "threshold {t}");
            assert!(want[3] && want[4], "the replays are near");
        }
        let rows = Samples::of(now.iter().map(Vec::as_slice).collect());
        assert_eq!(near_any(&rows, &[] as &[Vec<f32>], 0.9), vec![false; now.len()]);
    }
}

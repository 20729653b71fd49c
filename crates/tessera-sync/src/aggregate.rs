//! Deterministic aggregation: contributions are combined in ascending peer-id order, whatever
//! order they arrived in, so every honest peer computes the same bits. A contribution is
//! anything that can give its values ([`Contribute`]): held decoded ([`Contribution`]), or
//! still in its wire form and decoded only while it is added in ([`Encoded`]), so a round of
//! 10,000 members holds their 113 kB blobs, not 450 kB of values each.

use std::borrow::Cow;

use crate::{decode_update, Expected, SyncError};

/// One contribution as aggregation reads it.
pub trait Contribute {
    /// Its position in the order of aggregation (ascending, unique).
    fn peer(&self) -> u64;
    /// Relative weight (e.g. tokens trained on); must be positive and finite.
    fn weight(&self) -> f64;
    /// Its dense values (borrowed when held decoded).
    fn values(&self) -> Result<Cow<'_, [f32]>, SyncError>;
    /// For sparse updates: the positions sent (others are "not sent", not zero).
    fn support(&self) -> Option<&[u32]>;
    /// Its L2 norm ([`l2_norm`] of its values).
    fn norm(&self) -> Result<f64, SyncError> {
        Ok(l2_norm(&self.values()?))
    }
}

/// One peer's decoded contribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    pub peer: u64,
    /// Relative weight (e.g. tokens trained on); must be positive and finite.
    pub weight: f64,
    pub values: Vec<f32>,
    /// For sparse updates: the positions sent (others are "not sent", not zero).
    pub support: Option<Vec<u32>>,
}

impl Contribute for Contribution {
    fn peer(&self) -> u64 {
        self.peer
    }
    fn weight(&self) -> f64 {
        self.weight
    }
    fn values(&self) -> Result<Cow<'_, [f32]>, SyncError> {
        Ok(Cow::Borrowed(&self.values))
    }
    fn support(&self) -> Option<&[u32]> {
        self.support.as_deref()
    }
}

/// A contribution still encoded: an update blob that was decoded and checked once already (its
/// norm and support kept from then), decoded again each time its values are read.
#[derive(Clone, Debug)]
pub struct Encoded<'a> {
    pub peer: u64,
    pub weight: f64,
    pub blob: &'a [u8],
    pub expected: &'a Expected,
    /// Its norm, when it was computed at the first decoding.
    pub norm: Option<f64>,
    pub support: Option<&'a [u32]>,
}

impl Contribute for Encoded<'_> {
    fn peer(&self) -> u64 {
        self.peer
    }
    fn weight(&self) -> f64 {
        self.weight
    }
    fn values(&self) -> Result<Cow<'_, [f32]>, SyncError> {
        let d = decode_update(self.blob, self.expected)?;
        assert_eq!(d.support.as_deref(), self.support, "the same blob decodes to the same support");
        Ok(Cow::Owned(d.values))
    }
    fn support(&self) -> Option<&[u32]> {
        self.support
    }
    fn norm(&self) -> Result<f64, SyncError> {
        match self.norm {
            Some(n) => Ok(n),
            None => Ok(l2_norm(&self.values()?)),
        }
    }
}

/// The indices of `c` in ascending peer id, after checking the ids are unique and the weights
/// positive.
fn order<C: Contribute>(c: &[C]) -> Result<Vec<usize>, SyncError> {
    let mut v: Vec<usize> = (0..c.len()).collect();
    v.sort_by_key(|&i| c[i].peer());
    if v.windows(2).any(|w| c[w[0]].peer() == c[w[1]].peer()) {
        return Err(SyncError::Duplicate);
    }
    if v.iter().any(|&i| !(c[i].weight() > 0.0 && c[i].weight().is_finite())) {
        return Err(SyncError::Malformed("contribution weight must be positive".into()));
    }
    Ok(v)
}

/// Weighted mean `Σ wᵢxᵢ / Σ wᵢ`, accumulated in peer-id order with f32 coefficients. With
/// `scales` (one per contribution, in the order given, as [`clip_to_median`] returns them),
/// each value is first multiplied by its contribution's scale.
pub fn weighted_mean<C: Contribute>(
    contribs: &[C],
    n: usize,
    scales: Option<&[f32]>,
) -> Result<Vec<f32>, SyncError> {
    if let Some(s) = scales {
        assert_eq!(s.len(), contribs.len(), "one scale per contribution");
    }
    let order = order(contribs)?;
    if order.is_empty() {
        return Err(SyncError::Empty);
    }
    let total: f64 = order.iter().map(|&i| contribs[i].weight()).sum();
    let mut out = vec![0.0f32; n];
    for i in order {
        let values = contribs[i].values()?;
        if values.len() != n {
            return Err(SyncError::Length { what: "contribution", want: n, got: values.len() });
        }
        let w = (contribs[i].weight() / total) as f32;
        // Exactly rounded `×` and `+` only, so the lanes `wide` compiles for change no bit.
        tessera_tensor::simd::wide(|| match scales.map(|s| s[i]) {
            Some(k) => out.iter_mut().zip(values.iter()).for_each(|(o, &x)| *o += w * (x * k)),
            None => out.iter_mut().zip(values.iter()).for_each(|(o, &x)| *o += w * x),
        });
    }
    Ok(out)
}

/// The L2 norm, accumulated in f64 in index order.
pub fn l2_norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
}

/// The median (the mean of the middle two for an even count); 0 for none.
fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        m if m % 2 == 1 => s[m / 2],
        m => 0.5 * (s[m / 2 - 1] + s[m / 2]),
    }
}

/// Robust aggregation's clip: each contribution whose norm exceeds `factor ×` the median norm
/// of the round's contributions is scaled down to that norm; the others are left exactly as
/// they are. Returns the scale of each contribution, in the order given, for
/// [`weighted_mean`] (`None` when none needed clipping; 1 for those left alone, which
/// multiplies no bit), and how many were clipped. With at least three contributions and an
/// honest majority, no one peer can move the mean further than `factor ×` an honest update
/// (the model-replacement attack).
pub fn clip_to_median<C: Contribute>(
    contribs: &[C],
    factor: f64,
) -> Result<(Option<Vec<f32>>, usize), SyncError> {
    assert!(factor.is_finite() && factor > 0.0, "a positive clip factor");
    let norms: Vec<f64> = contribs.iter().map(Contribute::norm).collect::<Result<_, _>>()?;
    let bound = factor * median(&norms);
    let scales: Vec<f32> =
        norms.iter().map(|&n| if n > bound && n > 0.0 { (bound / n) as f32 } else { 1.0 }).collect();
    let clipped = norms.iter().filter(|&&n| n > bound && n > 0.0).count();
    assert_eq!(scales.len(), contribs.len(), "one scale per contribution");
    Ok(((clipped > 0).then_some(scales), clipped))
}

/// For each position, the mean over the peers that sent it (0 where none did). With
/// `norm_scale`, each peer's values are first scaled by `min(1, median norm / own norm)`.
pub fn sparse_mean<C: Contribute>(contribs: &[C], n: usize, norm_scale: bool) -> Result<Vec<f32>, SyncError> {
    let order = order(contribs)?;
    if order.is_empty() {
        return Err(SyncError::Empty);
    }
    let norms: Vec<f64> = match norm_scale {
        true => order.iter().map(|&i| contribs[i].norm()).collect::<Result<_, _>>()?,
        false => Vec::new(),
    };
    let median = median(&norms);
    let (mut sum, mut cnt) = (vec![0.0f32; n], vec![0u32; n]);
    for (j, &i) in order.iter().enumerate() {
        let c = &contribs[i];
        let values = c.values()?;
        if values.len() != n {
            return Err(SyncError::Length { what: "contribution", want: n, got: values.len() });
        }
        let k = match norms.get(j) {
            Some(&norm) if norm > median && norm > 0.0 => (median / norm) as f32,
            _ => 1.0,
        };
        let mut add = |i: usize| {
            sum[i] += k * values[i];
            cnt[i] += 1;
        };
        match c.support() {
            Some(idx) => idx.iter().for_each(|&i| add(i as usize)),
            None => (0..n).for_each(add),
        }
    }
    assert!(norms.is_empty() || norms.len() == order.len(), "a norm per contribution, or none");
    Ok(sum.iter().zip(&cnt).map(|(&s, &c)| if c > 0 { s / c as f32 } else { 0.0 }).collect())
}

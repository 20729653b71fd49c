//! Deterministic aggregation: contributions are combined in ascending peer-id order, whatever
//! order they arrived in, so every honest peer computes the same bits.

use crate::SyncError;

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

fn sorted(c: &[Contribution]) -> Result<Vec<&Contribution>, SyncError> {
    let mut v: Vec<&Contribution> = c.iter().collect();
    v.sort_by_key(|c| c.peer);
    if v.windows(2).any(|w| w[0].peer == w[1].peer) {
        return Err(SyncError::Duplicate);
    }
    if v.iter().any(|c| !(c.weight > 0.0 && c.weight.is_finite())) {
        return Err(SyncError::Malformed("contribution weight must be positive".into()));
    }
    Ok(v)
}

/// Weighted mean `Σ wᵢxᵢ / Σ wᵢ`, accumulated in peer-id order with f32 coefficients.
pub fn weighted_mean(contribs: &[Contribution], n: usize) -> Result<Vec<f32>, SyncError> {
    let v = sorted(contribs)?;
    if v.is_empty() {
        return Err(SyncError::Empty);
    }
    let total: f64 = v.iter().map(|c| c.weight).sum();
    let mut out = vec![0.0f32; n];
    for c in v {
        if c.values.len() != n {
            return Err(SyncError::Length { what: "contribution", want: n, got: c.values.len() });
        }
        let w = (c.weight / total) as f32;
        out.iter_mut().zip(&c.values).for_each(|(o, &x)| *o += w * x);
    }
    Ok(out)
}

/// The L2 norm, accumulated in f64 in index order.
fn l2(x: &[f32]) -> f64 {
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
/// they are. Returns the clipped contributions (`None` when none needed clipping) and how many
/// were clipped. With at least three contributions and an honest majority, no one peer can
/// move the mean further than `factor ×` an honest update (the model-replacement attack).
pub fn clip_to_median(contribs: &[Contribution], factor: f64) -> (Option<Vec<Contribution>>, usize) {
    assert!(factor.is_finite() && factor > 0.0, "a positive clip factor");
    let norms: Vec<f64> = contribs.iter().map(|c| l2(&c.values)).collect();
    let bound = factor * median(&norms);
    let over: Vec<bool> = norms.iter().map(|&n| n > bound && n > 0.0).collect();
    let clipped = over.iter().filter(|&&o| o).count();
    if clipped == 0 {
        return (None, 0);
    }
    let out = contribs
        .iter()
        .zip(norms.iter().zip(&over))
        .map(|(c, (&norm, &o))| {
            let mut c = c.clone();
            if o {
                let k = (bound / norm) as f32;
                c.values.iter_mut().for_each(|x| *x *= k);
            }
            c
        })
        .collect();
    (Some(out), clipped)
}

/// For each position, the mean over the peers that sent it (0 where none did). With
/// `norm_scale`, each peer's values are first scaled by `min(1, median norm / own norm)`.
pub fn sparse_mean(contribs: &[Contribution], n: usize, norm_scale: bool) -> Result<Vec<f32>, SyncError> {
    let v = sorted(contribs)?;
    if v.is_empty() {
        return Err(SyncError::Empty);
    }
    let norms: Vec<f64> = v.iter().map(|c| l2(&c.values)).collect();
    let median = median(&norms);
    let (mut sum, mut cnt) = (vec![0.0f32; n], vec![0u32; n]);
    for (c, &norm) in v.iter().zip(&norms) {
        if c.values.len() != n {
            return Err(SyncError::Length { what: "contribution", want: n, got: c.values.len() });
        }
        let k = if norm_scale && norm > median && norm > 0.0 { (median / norm) as f32 } else { 1.0 };
        let mut add = |i: usize| {
            sum[i] += k * c.values[i];
            cnt[i] += 1;
        };
        match &c.support {
            Some(idx) => idx.iter().for_each(|&i| add(i as usize)),
            None => (0..n).for_each(add),
        }
    }
    Ok(sum.iter().zip(&cnt).map(|(&s, &c)| if c > 0 { s / c as f32 } else { 0.0 }).collect())
}

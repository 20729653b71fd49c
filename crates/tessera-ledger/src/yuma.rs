//! Yuma consensus (after Bittensor) over several validators' scores of one round: the
//! stake-weighted median per peer, each validator's weights clipped to it, the peers'
//! incentive, and the validators' dividends by how well they agree. Deterministic f64 (no
//! transcendentals, fixed orders); the ledger turns its results into integer amounts.

/// The consensus of one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Consensus {
    /// Per peer: the largest weight a κ share of the stake gives it at least.
    pub consensus: Vec<f64>,
    /// Per peer: the normalized stake-weighted sum of the clipped weights.
    pub incentive: Vec<f64>,
    /// Per validator: its bonds (this round's, column-normalized stake × clipped weight,
    /// averaged into `prior` with α) times the incentive, normalized.
    pub dividends: Vec<f64>,
    /// The bonds to carry into the next round.
    pub bonds: Vec<Vec<f64>>,
}

/// Weights of the bonds' moving average.
pub const BOND_ALPHA: f64 = 0.1;

fn normalize(v: &[f64]) -> Vec<f64> {
    let s: f64 = v.iter().sum();
    match s > 0.0 {
        true => v.iter().map(|x| x / s).collect(),
        false => vec![0.0; v.len()],
    }
}

/// The consensus weight of each column: the largest `c` among the column's weights such that
/// the stake of the validators giving at least `c` is at least `kappa`.
pub fn consensus(stake: &[f64], weights: &[Vec<f64>], kappa: f64) -> Vec<f64> {
    let cols = weights.first().map_or(0, Vec::len);
    assert!(weights.iter().all(|r| r.len() == cols), "one weight per peer in every row");
    assert_eq!(stake.len(), weights.len(), "one stake per validator");
    let s = normalize(stake);
    (0..cols)
        .map(|j| {
            let mut candidates: Vec<f64> = weights.iter().map(|r| r[j]).collect();
            candidates.sort_by(|a, b| b.total_cmp(a));
            let support =
                |c: f64| -> f64 { weights.iter().zip(&s).filter(|(r, _)| r[j] >= c).map(|(_, w)| w).sum() };
            candidates.into_iter().find(|c| support(*c) >= kappa).unwrap_or(0.0)
        })
        .collect()
}

/// One round of Yuma: rows of `weights` are each validator's scores over the peers (made
/// non-negative and row-normalized here), `stake` the validators' stakes, `prior` the bonds
/// carried from the last round (empty: none).
pub fn yuma(stake: &[f64], weights: &[Vec<f64>], kappa: f64, prior: &[Vec<f64>]) -> Consensus {
    let w: Vec<Vec<f64>> =
        weights.iter().map(|r| normalize(&r.iter().map(|x| x.max(0.0)).collect::<Vec<_>>())).collect();
    let c = consensus(stake, &w, kappa);
    let s = normalize(stake);
    let clipped: Vec<Vec<f64>> =
        w.iter().map(|r| r.iter().zip(&c).map(|(x, c)| x.min(*c)).collect()).collect();
    let cols = c.len();
    let raw: Vec<f64> = (0..cols).map(|j| clipped.iter().zip(&s).map(|(r, si)| si * r[j]).sum()).collect();
    let incentive = normalize(&raw);
    // This round's bonds: stake × clipped weight, normalized per column.
    let fresh: Vec<Vec<f64>> = clipped
        .iter()
        .zip(&s)
        .map(|(r, si)| {
            r.iter().enumerate().map(|(j, x)| if raw[j] > 0.0 { si * x / raw[j] } else { 0.0 }).collect()
        })
        .collect();
    let bonds: Vec<Vec<f64>> = match prior.len() == fresh.len() && prior.iter().all(|p| p.len() == cols) {
        true => fresh
            .iter()
            .zip(prior)
            .map(|(f, p)| f.iter().zip(p).map(|(f, p)| BOND_ALPHA * f + (1.0 - BOND_ALPHA) * p).collect())
            .collect(),
        false => fresh,
    };
    let div: Vec<f64> = bonds.iter().map(|b| b.iter().zip(&incentive).map(|(b, i)| b * i).sum()).collect();
    Consensus { consensus: c, incentive, dividends: normalize(&div), bonds }
}

//! Yuma consensus (after Bittensor) over several validators' scores of one round, in integer
//! arithmetic (parts per billion, [`PPB`]), so that what it pays is a pure, exact function of
//! the log:
//! - each validator's scores become weights as in the single-scorer split, row-normalized;
//! - the consensus weight of each peer is its stake-weighted median (the largest weight a
//!   κ share of the stake gives it at least), and every weight above it is clipped to it;
//! - a peer's incentive is the stake-weighted sum of its clipped weights, *not* renormalized:
//!   it never exceeds the consensus, which lies within the honest validators' range while
//!   they hold more than 1 − κ of the stake. (Renormalizing, as Bittensor does, lets a
//!   colluder who starves the other peers raise its friend's share: the test
//!   `a_colluding_validator_cannot_raise_its_friends_reward` measures both.) What the
//!   clipping leaves of the budget is not paid out;
//! - a validator's bonds are its column-normalized share of the clipped weights, averaged
//!   over rounds ([`BOND_ALPHA`]); its dividends are its bonds times the incentive, so a
//!   validator earns by agreeing with the consensus.

/// One, in parts per billion.
pub const PPB: u64 = 1_000_000_000;
/// The default κ: a stake-weighted median.
pub const KAPPA: u64 = PPB / 2;
/// The weight of this round's bonds in their moving average (0.1).
pub const BOND_ALPHA: u64 = PPB / 10;

/// The consensus of one round; every vector in parts per billion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consensus {
    /// Per peer: the consensus weight.
    pub consensus: Vec<u64>,
    /// Per peer: the stake-weighted sum of the clipped weights (they sum to at most [`PPB`]).
    pub incentive: Vec<u64>,
    /// Per validator: its share of the validators' budget (they sum to [`PPB`], or to 0 when
    /// no validator agreed with anything).
    pub dividends: Vec<u64>,
    /// Per validator and peer: the bonds to carry into the next round.
    pub bonds: Vec<Vec<u64>>,
}

/// `v` scaled to sum to [`PPB`] (floors; all zeros when it sums to 0).
fn normalize(v: &[u128]) -> Vec<u64> {
    let s: u128 = v.iter().sum();
    match s > 0 {
        true => v.iter().map(|x| (x * u128::from(PPB) / s) as u64).collect(),
        false => vec![0; v.len()],
    }
}

/// A validator's scores as weights: each weighs as in the single-scorer split
/// ([`crate::rules::weight`]: 1 plus a positive gain), then the row sums to [`PPB`].
pub fn weights(scores: &[i64]) -> Vec<u64> {
    normalize(&scores.iter().map(|&s| u128::from(crate::rules::weight(s))).collect::<Vec<_>>())
}

/// The consensus weight of each column: the largest `c` among the column's weights such that
/// the validators giving at least `c` hold at least `kappa` (of [`PPB`]) of the stake.
pub fn consensus(stake: &[u64], w: &[Vec<u64>], kappa: u64) -> Vec<u64> {
    let cols = w.first().map_or(0, Vec::len);
    assert!(w.iter().all(|r| r.len() == cols), "one weight per peer in every row");
    assert_eq!(stake.len(), w.len(), "one stake per validator");
    let total: u128 = stake.iter().map(|&s| u128::from(s)).sum();
    (0..cols)
        .map(|j| {
            let mut candidates: Vec<u64> = w.iter().map(|r| r[j]).collect();
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            let support = |c: u64| -> u128 {
                w.iter().zip(stake).filter(|(r, _)| r[j] >= c).map(|(_, &s)| u128::from(s)).sum()
            };
            let enough = |c: u64| support(c) * u128::from(PPB) >= u128::from(kappa) * total && total > 0;
            candidates.into_iter().find(|&c| enough(c)).unwrap_or(0)
        })
        .collect()
}

/// One round of Yuma: `scores[i]` is validator `i`'s scores of the round's peers, `stake[i]`
/// its stake, `prior` the bonds carried from the last round (a row per validator, or empty).
pub fn yuma(stake: &[u64], scores: &[Vec<i64>], kappa: u64, prior: &[Vec<u64>]) -> Consensus {
    let w: Vec<Vec<u64>> = scores.iter().map(|r| weights(r)).collect();
    let c = consensus(stake, &w, kappa);
    let cols = c.len();
    let total: u128 = stake.iter().map(|&s| u128::from(s)).sum::<u128>().max(1);
    let clipped: Vec<Vec<u64>> =
        w.iter().map(|r| r.iter().zip(&c).map(|(x, c)| *x.min(c)).collect()).collect();
    // Σᵢ stakeᵢ · W̄ᵢⱼ per peer (in stake × ppb).
    let raw: Vec<u128> = (0..cols)
        .map(|j| clipped.iter().zip(stake).map(|(r, &s)| u128::from(s) * u128::from(r[j])).sum())
        .collect();
    let incentive: Vec<u64> = raw.iter().map(|r| (r / total) as u64).collect();
    assert!(incentive.iter().sum::<u64>() <= PPB, "the incentive pays at most the budget");
    let fresh: Vec<Vec<u64>> = clipped
        .iter()
        .zip(stake)
        .map(|(r, &s)| {
            let share = |j: usize| u128::from(s) * u128::from(r[j]) * u128::from(PPB) / raw[j].max(1);
            (0..cols).map(|j| share(j) as u64).collect()
        })
        .collect();
    let carried = prior.len() == fresh.len() && prior.iter().all(|p| p.len() == cols);
    let bonds: Vec<Vec<u64>> = match carried {
        true => fresh
            .iter()
            .zip(prior)
            .map(|(f, p)| f.iter().zip(p).map(|(f, p)| ema(*f, *p)).collect())
            .collect(),
        false => fresh,
    };
    let div: Vec<u128> = bonds
        .iter()
        .map(|b| b.iter().zip(&incentive).map(|(b, i)| u128::from(*b) * u128::from(*i)).sum())
        .collect();
    let dividends = normalize(&div);
    assert!(dividends.iter().sum::<u64>() <= PPB, "dividends share one budget");
    Consensus { consensus: c, incentive, dividends, bonds }
}

/// This round's bond `fresh` averaged into the carried one.
fn ema(fresh: u64, prior: u64) -> u64 {
    let v = u128::from(BOND_ALPHA) * u128::from(fresh) + u128::from(PPB - BOND_ALPHA) * u128::from(prior);
    (v / u128::from(PPB)) as u64
}

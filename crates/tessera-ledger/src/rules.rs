//! The payout rules, pure integer functions: the writer applies them to produce the implied
//! entries, and a replay applies them again to check those entries.

use crate::{AcceptedUpdate, Amount, PeerId, StakeRules};

/// A score's weight in the round's reward: every accepted update weighs 1, plus its held-out
/// gain in millionths (a harmful one was not accepted; a negative gain adds nothing).
pub fn weight(score: i64) -> u64 {
    1 + score.max(0) as u64
}

/// Splits `budget` over the accepted updates in proportion to their [`weight`]s, exactly
/// ([`split`]). The amounts sum to `budget` (or to 0 when nothing was accepted).
pub fn split_reward(budget: Amount, accepted: &[AcceptedUpdate]) -> Vec<(PeerId, Amount)> {
    let weights: Vec<(PeerId, u128)> =
        accepted.iter().map(|a| (a.peer, u128::from(weight(a.score)))).collect();
    split(budget, &weights)
}

/// Splits `budget` in proportion to `weights`, exactly: each gets the floor of its share, and
/// what the floors leave goes one unit each to the largest remainders (ties to the lower
/// peer id). The amounts sum to `budget`, or to 0 when every weight is 0.
pub fn split(budget: Amount, weights: &[(PeerId, u128)]) -> Vec<(PeerId, Amount)> {
    let total: u128 = weights.iter().map(|w| w.1).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut shares: Vec<(PeerId, Amount, u128)> = weights
        .iter()
        .map(|&(peer, w)| {
            let num = u128::from(budget) * w;
            (peer, (num / total) as Amount, num % total)
        })
        .collect();
    let given: Amount = shares.iter().map(|s| s.1).sum();
    let mut left = budget - given;
    assert!((left as usize) < shares.len().max(1), "floors leave less than one unit per share");
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&i, &j| shares[j].2.cmp(&shares[i].2).then(shares[i].0.cmp(&shares[j].0)));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    let out: Vec<(PeerId, Amount)> = shares.into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(out.iter().map(|s| s.1).sum::<Amount>(), budget, "the whole budget is paid");
    out
}

/// What a slash takes from a stake of `stake`, and the whistleblower's share of it.
pub fn slash(rules: &StakeRules, stake: Amount) -> (Amount, Amount) {
    let amount = (u128::from(stake) * u128::from(rules.slash_bps.min(10_000)) / 10_000) as Amount;
    let share = (u128::from(amount) * u128::from(rules.whistleblower_bps.min(10_000)) / 10_000) as Amount;
    assert!(amount <= stake && share <= amount, "a slash takes at most the stake");
    (amount, share)
}

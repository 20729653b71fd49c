//! The accounts a log implies: applying its entries in order. Payouts are queued by their
//! causes (a closed round, a proven cheat, a stake fallen below the minimum) and must follow
//! them in the log exactly as the rules give them.

use std::collections::{BTreeMap, VecDeque};

use crate::rules::{slash, split, split_reward};
use crate::yuma::{yuma, KAPPA, PPB};
use crate::{
    AcceptedUpdate, Amount, Entry, Hash32, PeerId, StakeRules, MAX_ACCOUNTS, MAX_REASON, MAX_ROUND_ENTRIES,
    MAX_WEIGHING,
};

/// One peer's account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Locked at join, less what was slashed.
    pub stake: Amount,
    pub validator: bool,
    /// Still in the run (left, or removed below the minimum stake: false).
    pub active: bool,
    /// Round rewards, check fees, and whistleblower shares of slashes it proved.
    pub rewards: Amount,
    pub fees: Amount,
    pub bounties: Amount,
    pub slashed: Amount,
    /// Accepted updates and the sum of their scores (millionths).
    pub accepted: u64,
    pub score_sum: i64,
}

impl Account {
    /// What it earned.
    pub fn earned(&self) -> Amount {
        self.rewards.saturating_add(self.fees).saturating_add(self.bounties)
    }
}

/// Every account, and what the rules still owe the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    config: Option<(Hash32, StakeRules)>,
    by_peer: BTreeMap<PeerId, Account>,
    owed: VecDeque<Entry>,
    /// Slashed amounts nobody was paid (the part beyond whistleblower shares).
    pub burned: Amount,
    /// Round budgets Yuma's clipping left unpaid.
    pub unpaid: Amount,
    /// Rounds closed.
    pub rounds: u64,
    /// The (peer, segment) verdicts of the open round (one each: a coordinator that
    /// re-settles a check after a restart pays and slashes once).
    judged: std::collections::BTreeSet<(PeerId, u32)>,
    /// The validators' scores of the open round, by validator.
    weights: BTreeMap<PeerId, Vec<(PeerId, i64)>>,
    /// Yuma bonds by (validator, peer), of the last round paid by weights (only its pairs
    /// are carried, which bounds them by [`MAX_WEIGHING`] × [`MAX_ROUND_ENTRIES`]).
    bonds: BTreeMap<(PeerId, PeerId), u64>,
}

impl Accounts {
    /// The run's config hash and economics, once created.
    pub fn rules(&self) -> Option<&StakeRules> {
        self.config.as_ref().map(|c| &c.1)
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Account> {
        self.by_peer.get(peer)
    }

    /// Accounts in peer-id order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &Account)> {
        self.by_peer.iter()
    }

    /// The next entry the rules require, if any (the writer appends it next).
    pub fn owed(&self) -> Option<&Entry> {
        self.owed.front()
    }

    /// Applies one entry; `Err` says why it breaks the rules (the accounts are then as
    /// they were only up to the failing check: callers stop at the first error).
    pub fn apply(&mut self, e: &Entry) -> Result<(), String> {
        match self.owed.front() {
            Some(want) if want == e => {
                self.owed.pop_front();
                return self.pay(e);
            }
            Some(want) => return Err(format!("the rules require {want:?} next")),
            None if matches!(e, Entry::Rewarded { .. } | Entry::Slashed { .. }) => {
                return Err("a payout no rule implies".into())
            }
            None => {}
        }
        let rules = match (e, &self.config) {
            (Entry::RunCreated { config, rules }, None) => {
                self.config = Some((*config, *rules));
                return Ok(());
            }
            (Entry::RunCreated { .. }, Some(_)) => return Err("the run was created already".into()),
            (_, None) => return Err("no RunCreated before it".into()),
            (_, Some(c)) => c.1,
        };
        self.cause(e, &rules)
    }

    /// An entry that is not a payout: its effect, and the payouts it implies.
    fn cause(&mut self, e: &Entry, rules: &StakeRules) -> Result<(), String> {
        match e {
            Entry::Joined { peer, stake, validator } => {
                if *stake < rules.min_stake {
                    return Err(format!("a stake of {stake} is below the minimum of {}", rules.min_stake));
                }
                if self.by_peer.get(peer).is_some_and(|a| a.active) {
                    return Err("joined already".into());
                }
                if !self.by_peer.contains_key(peer) && self.by_peer.len() >= MAX_ACCOUNTS {
                    return Err(format!("more than {MAX_ACCOUNTS} accounts"));
                }
                let a = self.by_peer.entry(*peer).or_default();
                (a.stake, a.validator, a.active) = (*stake, *validator, true);
            }
            Entry::RoundClosed { round, accepted, rejected, .. } => {
                if *round != self.rounds {
                    return Err(format!("round {round} closed, round {} expected", self.rounds));
                }
                if accepted.len() > MAX_ROUND_ENTRIES || rejected.len() > MAX_ROUND_ENTRIES {
                    return Err(format!("more than {MAX_ROUND_ENTRIES} updates"));
                }
                if rejected.iter().any(|r| r.1.len() > MAX_REASON) {
                    return Err(format!("a reason over {MAX_REASON} bytes"));
                }
                if !accepted.windows(2).all(|w| w[0].peer < w[1].peer) {
                    return Err("accepted updates not in strict peer order".into());
                }
                for u in accepted.iter().filter(|u| !u.sig.is_empty()) {
                    crate::check_update(&u.peer, *round, &u.update, &u.sig)?;
                }
                for u in accepted {
                    let a = self.active(&u.peer)?;
                    a.accepted += 1;
                    a.score_sum = a.score_sum.saturating_add(u.score);
                }
                self.rounds += 1;
                self.judged.clear();
                let round = *round;
                let paid = match self.weights.is_empty() {
                    true => split_reward(rules.reward_per_round, accepted),
                    false => self.by_consensus(rules, accepted),
                };
                for (peer, amount) in paid {
                    self.owed.push_back(Entry::Rewarded { round, peer, amount });
                }
            }
            Entry::Weights { round, validator, scores } => {
                if *round != self.rounds {
                    return Err(format!("weights of round {round} while round {} is open", self.rounds));
                }
                if !self.active(validator)?.validator {
                    return Err("weights by a trainer".into());
                }
                if scores.len() > MAX_ROUND_ENTRIES || !scores.windows(2).all(|w| w[0].peer < w[1].peer) {
                    return Err(format!("scores not in strict peer order, or more than {MAX_ROUND_ENTRIES}"));
                }
                if self.weights.contains_key(validator) || self.weights.len() >= MAX_WEIGHING {
                    return Err(format!("a second Weights of the round, or more than {MAX_WEIGHING}"));
                }
                for sc in scores {
                    crate::check_score(validator, *round, sc)?;
                }
                self.weights.insert(*validator, scores.iter().map(|sc| (sc.peer, sc.score)).collect());
            }
            Entry::Verdict { round, peer, segment, cheat, by, proven_by, .. } => {
                self.known(peer)?;
                if *round != self.rounds {
                    return Err(format!("a verdict of round {round} while round {} is open", self.rounds));
                }
                // One verdict per check (a restart re-settling one pays and slashes once),
                // and one on the update itself ([`crate::SEGMENT_UPDATE`]).
                if self.judged.len() >= MAX_ACCOUNTS || !self.judged.insert((*peer, *segment)) {
                    return Err("a second verdict of the round on this peer".into());
                }
                if let Some(v) = by {
                    let a = self.active(v)?;
                    if !a.validator {
                        return Err("a verdict by a trainer".into());
                    }
                    a.fees = a.fees.saturating_add(rules.check_fee);
                }
                if *cheat {
                    let stake = self.known(peer)?.stake;
                    let (amount, share) = slash(rules, stake);
                    if let Some(w) = proven_by {
                        self.known(w)?;
                    }
                    let whistleblower = proven_by.filter(|w| share > 0 && w != peer);
                    let share = if whistleblower.is_some() { share } else { 0 };
                    self.owed.push_back(Entry::Slashed {
                        round: *round,
                        peer: *peer,
                        amount,
                        whistleblower,
                        share,
                    });
                }
            }
            Entry::DisputeOpened { trainer, validator, .. } => {
                self.known(trainer)?;
                self.known(validator)?;
            }
            Entry::DisputeResolved { trainer, validator, evidence, .. } => {
                self.known(trainer)?;
                self.known(validator)?;
                let big = |e: &crate::Evidence| {
                    e.input_hashes.len().max(e.claims[0].len()).max(e.claims[1].len())
                        > crate::MAX_EVIDENCE_TENSORS
                };
                if evidence.as_ref().is_some_and(big) {
                    return Err(format!("evidence of more than {} tensors", crate::MAX_EVIDENCE_TENSORS));
                }
            }
            Entry::Left { peer } => {
                let a = self.active(peer)?;
                a.active = false;
            }
            Entry::RunCreated { .. } | Entry::Rewarded { .. } | Entry::Slashed { .. } => {
                unreachable!("handled by apply")
            }
        }
        Ok(())
    }

    /// The open round's payouts by Yuma consensus over the validators' weights (taken): each
    /// accepted update's share of the budget is its incentive (floored; the rest is unpaid),
    /// and the validators' budget is split by their dividends.
    fn by_consensus(&mut self, rules: &StakeRules, accepted: &[AcceptedUpdate]) -> Vec<(PeerId, Amount)> {
        let weights = std::mem::take(&mut self.weights);
        let validators: Vec<PeerId> = weights.keys().copied().collect();
        let stake: Vec<u64> = validators.iter().map(|v| self.by_peer.get(v).map_or(0, |a| a.stake)).collect();
        let score =
            |row: &[(PeerId, i64)], p: &PeerId| row.binary_search_by_key(p, |s| s.0).map_or(0, |i| row[i].1);
        let scores: Vec<Vec<i64>> =
            weights.values().map(|row| accepted.iter().map(|a| score(row, &a.peer)).collect()).collect();
        let prior: Vec<Vec<u64>> = validators
            .iter()
            .map(|v| accepted.iter().map(|a| self.bonds.get(&(*v, a.peer)).copied().unwrap_or(0)).collect())
            .collect();
        let c = yuma(&stake, &scores, KAPPA, &prior);
        self.bonds.clear();
        for (v, row) in validators.iter().zip(&c.bonds) {
            self.bonds.extend(accepted.iter().zip(row).map(|(a, b)| ((*v, a.peer), *b)));
        }
        let budget = u128::from(rules.reward_per_round);
        let mut paid: Vec<(PeerId, Amount)> = accepted
            .iter()
            .zip(&c.incentive)
            .map(|(a, i)| (a.peer, (budget * u128::from(*i) / u128::from(PPB)) as Amount))
            .collect();
        let total: Amount = paid.iter().map(|p| p.1).sum();
        assert!(total <= rules.reward_per_round, "consensus pays at most the round's budget");
        self.unpaid = self.unpaid.saturating_add(rules.reward_per_round - total);
        let dividends: Vec<(PeerId, u128)> =
            validators.iter().zip(&c.dividends).map(|(v, d)| (*v, u128::from(*d))).collect();
        paid.extend(split(rules.validator_budget, &dividends));
        paid
    }

    /// A payout the rules owed.
    fn pay(&mut self, e: &Entry) -> Result<(), String> {
        let min = self.rules().map_or(0, |r| r.min_stake);
        match e {
            Entry::Rewarded { peer, amount, .. } => {
                let a = self.known(peer)?;
                a.rewards = a.rewards.saturating_add(*amount);
            }
            Entry::Slashed { peer, amount, whistleblower, share, .. } => {
                let a = self.known(peer)?;
                assert!(*amount <= a.stake, "the rules slash at most the stake");
                a.stake -= amount;
                a.slashed = a.slashed.saturating_add(*amount);
                let removed = a.active && a.stake < min;
                if let Some(w) = whistleblower {
                    let b = self.known(w)?;
                    b.bounties = b.bounties.saturating_add(*share);
                }
                self.burned = self.burned.saturating_add(amount - share);
                if removed {
                    self.owed.push_front(Entry::Left { peer: *peer });
                }
            }
            Entry::Left { peer } => self.known(peer)?.active = false,
            other => unreachable!("{} is never owed", other.kind()),
        }
        Ok(())
    }

    fn known(&mut self, peer: &PeerId) -> Result<&mut Account, String> {
        self.by_peer.get_mut(peer).ok_or_else(|| format!("{} has no account", hex4(peer)))
    }

    fn active(&mut self, peer: &PeerId) -> Result<&mut Account, String> {
        let a = self.known(peer)?;
        match a.active {
            true => Ok(a),
            false => Err("the account is no longer active".into()),
        }
    }
}

fn hex4(p: &PeerId) -> String {
    p[..4].iter().map(|b| format!("{b:02x}")).collect()
}

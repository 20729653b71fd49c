//! The ledger: a signed hash chain whose replay gives the writer's accounts bit for bit,
//! payouts derived by the rules, every tampering named, and Yuma consensus.

use ed25519_dalek::SigningKey;
use tessera_ledger::rules::{slash, split_reward};
use tessera_ledger::yuma::{consensus, weights, PPB};
use tessera_ledger::*;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn pid(i: u8) -> PeerId {
    [i; 32]
}

fn rules() -> StakeRules {
    StakeRules {
        min_stake: 100,
        reward_per_round: 1_000,
        check_fee: 3,
        validator_budget: 300,
        slash_bps: 5_000,
        whistleblower_bps: 2_000,
    }
}

fn accepted(scores: &[(u8, i64)]) -> Vec<AcceptedUpdate> {
    scores
        .iter()
        .map(|&(p, score)| AcceptedUpdate { peer: pid(p), update: [p; 32], score, sig: vec![] })
        .collect()
}

/// A small run: three trainers and a validator join, two rounds close, a cheat is proven.
fn run() -> (Ledger, Vec<Record>) {
    let k = key(200);
    let (mut l, first) = Ledger::genesis(&k, [7; 32], rules()).unwrap();
    let mut log = vec![first];
    let mut add = |l: &mut Ledger, e: Entry| log.extend(l.append(&k, e).unwrap());
    for i in 1..=3 {
        add(&mut l, Entry::Joined { peer: pid(i), stake: 200, validator: false });
    }
    add(&mut l, Entry::Joined { peer: pid(9), stake: 500, validator: true });
    let close = |round: u64, accepted| Entry::RoundClosed {
        round,
        start: [round as u8; 32],
        end: [round as u8 + 1; 32],
        accepted,
        rejected: vec![],
    };
    add(&mut l, close(0, accepted(&[(1, 10), (2, 20), (3, 0)])));
    let verdict = |peer: PeerId, cheat: bool| Entry::Verdict {
        round: 1,
        peer,
        segment: 0,
        passed: !cheat,
        cheat,
        by: Some(pid(9)),
        proven_by: Some(pid(9)),
    };
    add(&mut l, verdict(pid(1), false));
    add(&mut l, verdict(pid(3), true));
    add(&mut l, close(1, accepted(&[(1, 5), (2, 5)])));
    (l, log)
}

#[test]
fn the_replay_gives_the_writers_accounts_and_payouts_follow_the_rules() {
    let (l, log) = run();
    let replayed = verify(&key(200).verifying_key().to_bytes(), &log).unwrap();
    assert_eq!(replayed.accounts(), l.accounts(), "the same accounts, bit for bit");
    assert_eq!(replayed.head(), l.head());
    let a = |i: u8| l.accounts().get(&pid(i)).unwrap().clone();
    // Round 0: 1,000 split by weights 11, 21, 1; round 1: 500 each.
    assert_eq!(
        split_reward(1_000, &accepted(&[(1, 10), (2, 20), (3, 0)])).iter().map(|s| s.1).sum::<u64>(),
        1_000
    );
    assert_eq!(a(1).rewards + a(2).rewards + a(3).rewards, 2_000, "the whole budget of both rounds");
    assert!(a(2).rewards > a(1).rewards && a(1).rewards > a(3).rewards, "rewards follow scores");
    // The cheat lost half its stake; the validator that proved it got a fifth of that.
    assert_eq!((a(3).stake, a(3).slashed), (100, 100));
    assert_eq!(a(9).bounties, 20);
    assert_eq!(a(9).fees, 6, "two checks settled");
    assert_eq!(l.accounts().burned, 80);
    assert!(a(3).active, "still at the minimum stake");
    let kinds: Vec<&str> = log.iter().map(|r| r.entry.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Rewarded").count(), 5);
    assert_eq!(kinds.iter().filter(|k| **k == "Slashed").count(), 1);
}

#[test]
fn a_stake_below_the_minimum_is_refused_and_a_slashed_one_below_it_is_removed() {
    let k = key(200);
    let (mut l, _) = Ledger::genesis(&k, [7; 32], rules()).unwrap();
    let low = l.append(&k, Entry::Joined { peer: pid(1), stake: 99, validator: false });
    assert_eq!(low.unwrap_err(), LedgerError::StakeTooLow { got: 99, need: 100 });
    assert_eq!(l.head().0, 1, "nothing appended");
    l.append(&k, Entry::Joined { peer: pid(1), stake: 150, validator: false }).unwrap();
    let cheat = Entry::Verdict {
        round: 0,
        peer: pid(1),
        segment: 0,
        passed: false,
        cheat: true,
        by: None,
        proven_by: None,
    };
    let out = l.append(&k, cheat).unwrap();
    let kinds: Vec<&str> = out.iter().map(|r| r.entry.kind()).collect();
    assert_eq!(kinds, ["Verdict", "Slashed", "Left"], "75 left of 150: removed");
    assert!(!l.accounts().get(&pid(1)).unwrap().active);
    let late = Entry::RoundClosed {
        round: 0,
        start: [0; 32],
        end: [1; 32],
        accepted: accepted(&[(1, 0)]),
        rejected: vec![],
    };
    assert!(
        matches!(l.append(&k, late), Err(LedgerError::Rule { kind: "RoundClosed", .. })),
        "a removed peer earns nothing"
    );
    assert!(l.append(&key(201), Entry::Left { peer: pid(1) }).is_err(), "only the coordinator writes");
    // One verdict per peer and round: a check re-settled after a restart pays and slashes once.
    let (mut l, _) = Ledger::genesis(&k, [7; 32], rules()).unwrap();
    l.append(&k, Entry::Joined { peer: pid(2), stake: 500, validator: false }).unwrap();
    let pass = Entry::Verdict {
        round: 0,
        peer: pid(2),
        segment: 0,
        passed: true,
        cheat: false,
        by: None,
        proven_by: None,
    };
    l.append(&k, pass.clone()).unwrap();
    assert!(matches!(l.append(&k, pass), Err(LedgerError::Rule { kind: "Verdict", .. })));
    let late = Entry::Verdict {
        round: 3,
        peer: pid(2),
        segment: 0,
        passed: true,
        cheat: false,
        by: None,
        proven_by: None,
    };
    assert!(l.append(&k, late).is_err(), "a verdict of a round that is not open");
}

#[test]
fn every_tampering_is_named_by_the_replay() {
    let (_, log) = run();
    let coord = key(200).verifying_key().to_bytes();
    let at = |i: usize, e: LedgerError| match e {
        LedgerError::Chain { seq, .. } | LedgerError::Rule { seq, .. } => assert_eq!(seq, i as u64, "{e}"),
        other => panic!("{other}"),
    };
    // A changed entry (a reward raised), re-signed by nobody: its signature fails.
    let mut changed = log.clone();
    let i = changed.iter().position(|r| matches!(r.entry, Entry::Rewarded { .. })).unwrap();
    if let Entry::Rewarded { amount, .. } = &mut changed[i].entry {
        *amount += 1;
    }
    at(i, verify(&coord, &changed).unwrap_err());
    // A dropped record: a gap at its place.
    let mut dropped = log.clone();
    dropped.remove(3);
    at(3, verify(&coord, &dropped).unwrap_err());
    // Two records swapped.
    let mut swapped = log.clone();
    swapped.swap(2, 3);
    at(2, verify(&coord, &swapped).unwrap_err());
    // A fork: a different history signed by the coordinator from record 5 on.
    let k = key(200);
    let mut fork = verify(&coord, &log[..5]).unwrap();
    let other = fork.append(&k, Entry::Left { peer: pid(2) }).unwrap();
    let mut forked = log.clone();
    forked[5] = other[0].clone();
    at(6, verify(&coord, &forked).unwrap_err());
    // A payout the rules do not give, even when signed: the rule check names it.
    let (mut w, _) = Ledger::genesis(&k, [7; 32], rules()).unwrap();
    let base = verify(&coord, &log[..1]).unwrap();
    assert_eq!(base.head(), w.head());
    let forged = w.append(&k, Entry::Joined { peer: pid(1), stake: 200, validator: false }).unwrap();
    let mut bad = vec![log[0].clone(), forged[0].clone()];
    assert!(verify(&coord, &bad).is_ok());
    let sneaky = Record {
        seq: 2,
        prev: bad[1].hash(),
        entry: Entry::Rewarded { round: 0, peer: pid(1), amount: 5 },
        sig: vec![0; 64],
    };
    bad.push(sneaky);
    at(2, verify(&coord, &bad).unwrap_err());
    // Decoding refuses garbage and oversized input with typed errors.
    assert!(matches!(Record::decode(&[1, 2, 3]), Err(LedgerError::Decode(_))));
    assert!(matches!(Record::decode(&vec![0; MAX_RECORD + 1]), Err(LedgerError::Decode(_))));
    let r = &log[4];
    assert_eq!(Record::decode(&r.encode()).unwrap(), *r);
    // The same record with its sequence number written as an overlong varint: refused.
    let b = r.encode();
    assert_eq!(b[0], 4);
    let overlong = [&[0x84u8, 0x00][..], &b[1..]].concat();
    assert!(matches!(Record::decode(&overlong), Err(LedgerError::Decode(_))), "one record, one encoding");
}

#[test]
fn a_resumed_ledger_continues_the_same_chain() {
    let (l, log) = run();
    let k = key(200);
    let mut resumed = Ledger::resume(&k.verifying_key().to_bytes(), &log).unwrap();
    assert_eq!(resumed.head(), l.head());
    let more = resumed.append(&k, Entry::Left { peer: pid(2) }).unwrap();
    let mut all = log.clone();
    all.extend(more);
    assert!(verify(&k.verifying_key().to_bytes(), &all).is_ok());
}

#[test]
fn rewards_split_exactly_and_slashes_are_integers() {
    for budget in [0u64, 1, 7, 1_000, 999_999_937] {
        for n in 1..=7u8 {
            let acc: Vec<AcceptedUpdate> = (1..=n)
                .map(|i| AcceptedUpdate {
                    peer: pid(i),
                    update: [0; 32],
                    score: i64::from(i) * 37 - 50,
                    sig: vec![],
                })
                .collect();
            let s = split_reward(budget, &acc);
            assert_eq!(s.iter().map(|x| x.1).sum::<u64>(), budget, "{budget} over {n}");
        }
    }
    assert!(split_reward(100, &[]).is_empty());
    let even = split_reward(10, &accepted(&[(1, 0), (2, 0), (3, 0)]));
    assert_eq!(
        even.iter().map(|x| x.1).collect::<Vec<_>>(),
        [4, 3, 3],
        "the remainder to the lowest peer id"
    );
    assert_eq!(slash(&rules(), 201), (100, 20));
    assert_eq!(slash(&StakeRules { slash_bps: 20_000, ..rules() }, 50).0, 50, "never more than the stake");
}

#[test]
fn yuma_consensus_matches_the_reference_vectors() {
    let ppb = |x: f64| (x * PPB as f64).round() as u64;
    let stake = [0, 75, 25, 0];
    let w: Vec<Vec<u64>> = [[0.0, 0.1, 0.0], [0.0, 0.2, 0.4], [0.0, 0.3, 0.1], [0.0, 0.4, 0.5]]
        .iter()
        .map(|r| r.iter().map(|&x| ppb(x)).collect())
        .collect();
    let c = |k: f64| consensus(&stake, &w, ppb(k));
    assert_eq!(c(0.24), [0, ppb(0.3), ppb(0.4)]);
    assert_eq!(c(0.26), [0, ppb(0.2), ppb(0.4)]);
    assert_eq!(c(0.76), [0, ppb(0.2), ppb(0.1)]);
}

/// Five trainers, three validators of equal stake, `ROUNDS` rounds paid by their weights.
/// Each honest validator scores a trainer's true contribution with its own noise; `colluder`
/// makes the third validator give its friend (trainer 5) top marks and the others next to
/// nothing. Returns the accounts, and the honest spread of the friend's reward: summed over
/// the rounds, the least and the most the two honest validators' weights alone would pay it.
const ROUNDS: u64 = 20;
const FRIEND: u8 = 5;

fn yuma_run(colluder: bool) -> (Accounts, (u64, u64)) {
    let k = key(200);
    let (mut l, first) = Ledger::genesis(&k, [7; 32], rules()).unwrap();
    let mut log = vec![first];
    let trainers: Vec<PeerId> = (1..=5).map(pid).collect();
    let validators: Vec<SigningKey> = (20..23).map(key).collect();
    let mut add = |l: &mut Ledger, e: Entry| log.extend(l.append(&k, e).unwrap());
    for t in &trainers {
        add(&mut l, Entry::Joined { peer: *t, stake: 200, validator: false });
    }
    for v in &validators {
        add(&mut l, Entry::Joined { peer: v.verifying_key().to_bytes(), stake: 500, validator: true });
    }
    let truth = [200_000i64, 250_000, 150_000, 300_000, 100_000];
    let mut spread = (0u64, 0u64);
    for round in 0..ROUNDS {
        let mut alone = Vec::new();
        for (i, v) in validators.iter().enumerate() {
            let noise = |j: usize| ((round as i64 * 7 + i as i64 * 13 + j as i64 * 5) % 11 - 5) * 3_000;
            let mut scores: Vec<(PeerId, i64)> =
                trainers.iter().enumerate().map(|(j, t)| (*t, truth[j] + noise(j))).collect();
            if colluder && i == 2 {
                scores =
                    trainers.iter().map(|t| (*t, if t[0] == FRIEND { 900_000 } else { 1_000 })).collect();
            }
            if i < 2 {
                let w = weights(&scores.iter().map(|s| s.1).collect::<Vec<_>>());
                alone.push(rules().reward_per_round * w[usize::from(FRIEND) - 1] / PPB);
            }
            let scores = scores.iter().map(|&(p, score)| SignedScore {
                peer: p,
                score,
                sig: sign_score(v, round, &p, score),
            });
            add(
                &mut l,
                Entry::Weights { round, validator: v.verifying_key().to_bytes(), scores: scores.collect() },
            );
        }
        let accepted: Vec<AcceptedUpdate> = trainers
            .iter()
            .map(|t| AcceptedUpdate { peer: *t, update: [t[0]; 32], score: 0, sig: vec![] })
            .collect();
        let close = Entry::RoundClosed { round, start: [0; 32], end: [1; 32], accepted, rejected: vec![] };
        add(&mut l, close);
        spread.0 += alone[0].min(alone[1]);
        spread.1 += alone[0].max(alone[1]);
    }
    let replayed = verify(&key(200).verifying_key().to_bytes(), &log).unwrap();
    assert_eq!(replayed.accounts(), l.accounts(), "the consensus replays bit for bit");
    (l.accounts().clone(), spread)
}

/// The test: with 3 validators, one of which colludes to give a friend top scores,
/// the friend's reward stays within the honest validators' spread (round by round, between
/// what the two honest validators' weights alone would pay it), and the colluder earns less than the honest validators, and
/// less than an honest third validator earns. Bittensor's renormalized incentive would have
/// paid the friend beyond that spread: measured here, so the test can fail.
#[test]
fn a_colluding_validator_cannot_raise_its_friends_reward() {
    let (honest, _) = yuma_run(false);
    let (with, (lo, hi)) = yuma_run(true);
    let reward = |a: &Accounts, p: PeerId| a.get(&p).unwrap().rewards;
    let friend = reward(&with, pid(FRIEND));
    assert!((lo..=hi).contains(&friend), "the friend's {friend} within the honest spread [{lo}, {hi}]");
    let v = |i: u8| key(i).verifying_key().to_bytes();
    let earned = |a: &Accounts, i: u8| a.get(&v(i)).unwrap().rewards;
    assert!(
        earned(&with, 22) < earned(&with, 20) && earned(&with, 22) < earned(&with, 21),
        "the colluder earns least"
    );
    assert!(earned(&with, 22) < earned(&honest, 22), "and less than an honest third validator");
    assert!(with.unpaid > honest.unpaid, "what its clipped weights would have paid is not paid");
    // The renormalized incentive of one colluded round, as Bittensor pays it.
    let truth = [200_000i64, 250_000, 150_000, 300_000, 100_000];
    let rows: Vec<Vec<i64>> = vec![
        truth.to_vec(),
        truth.iter().map(|t| t + 6_000).collect(),
        (1..=5).map(|j| if j == FRIEND { 900_000 } else { 1_000 }).collect(),
    ];
    let c = tessera_ledger::yuma::yuma(&[500, 500, 500], &rows, tessera_ledger::yuma::KAPPA, &[]);
    let total: u64 = c.incentive.iter().sum();
    let renormalized = rules().reward_per_round * c.incentive[usize::from(FRIEND) - 1] / total;
    let share = |w: &[u64]| rules().reward_per_round * w[usize::from(FRIEND) - 1] / PPB;
    let honest_hi = share(&weights(&rows[0])).max(share(&weights(&rows[1])));
    assert!(renormalized > honest_hi, "renormalized, the friend would get {renormalized} > {honest_hi}");
    eprintln!(
        "friend's reward over {ROUNDS} rounds: {} with an honest third validator, {friend} with the colluder \
         (honest spread [{lo}, {hi}]); one renormalized round would pay {renormalized} > {honest_hi}",
        reward(&honest, pid(FRIEND))
    );
}

/// Weights are a validator's own signed entry: a forged signature, a trainer's weights, a
/// second vector in a round, or scores out of peer order are refused, and nothing is written.
#[test]
fn weights_are_signed_by_their_validator_and_checked() {
    let k = key(200);
    let (mut l, _) = Ledger::genesis(&k, [7; 32], rules()).unwrap();
    let v = key(20);
    let vid = v.verifying_key().to_bytes();
    l.append(&k, Entry::Joined { peer: vid, stake: 500, validator: true }).unwrap();
    l.append(&k, Entry::Joined { peer: pid(1), stake: 200, validator: false }).unwrap();
    let signed = |k: &SigningKey, p: u8, score| SignedScore {
        peer: pid(p),
        score,
        sig: sign_score(k, 0, &pid(p), score),
    };
    let w = |scores| Entry::Weights { round: 0, validator: vid, scores };
    let good = w(vec![signed(&v, 1, 5)]);
    let head = l.head();
    let why = |e: Entry, l: &mut Ledger| match l.append(&k, e) {
        Err(LedgerError::Rule { kind: "Weights", why, .. }) => why,
        other => panic!("{other:?}"),
    };
    assert!(why(w(vec![signed(&key(21), 1, 5)]), &mut l).contains("signature"), "signed by another key");
    let mut altered = signed(&v, 1, 5);
    altered.score = 6;
    assert!(why(w(vec![altered]), &mut l).contains("signature"), "a score changed after signing");
    assert!(why(w(vec![signed(&v, 2, 1), signed(&v, 1, 1)]), &mut l).contains("order"));
    let t = key(1);
    l.append(&k, Entry::Joined { peer: t.verifying_key().to_bytes(), stake: 200, validator: false }).unwrap();
    let by_trainer =
        Entry::Weights { round: 0, validator: t.verifying_key().to_bytes(), scores: vec![signed(&t, 1, 5)] };
    assert!(why(by_trainer, &mut l).contains("trainer"));
    let head2 = l.head();
    assert_eq!(head2.0, head.0 + 1, "nothing refused is written");
    l.append(&k, good.clone()).unwrap();
    assert!(why(good, &mut l).contains("second"));
}

/// Writes seeds for the `ledger_decode` fuzz target (fuzz/README.md): every record of a
/// small run. `cargo test -p tessera-ledger --test ledger -- --ignored write_ledger_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/ledger_decode; run by hand"]
fn write_ledger_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ledger_decode");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, r) in run().1.iter().enumerate() {
        std::fs::write(dir.join(format!("record-{i:02}")), r.encode()).unwrap();
    }
}

/// A `RoundClosed` whose accepted update carries a signature that is not its trainer's is
/// refused; one its trainer signed is written, and replays.
#[test]
fn an_accepted_updates_signature_must_be_its_trainers() {
    let k = key(200);
    let (mut l, first) = Ledger::genesis(&k, [7; 32], rules()).unwrap();
    let t = key(1);
    let tid = t.verifying_key().to_bytes();
    let mut log = vec![first];
    log.extend(l.append(&k, Entry::Joined { peer: tid, stake: 200, validator: false }).unwrap());
    let close = |sig| Entry::RoundClosed {
        round: 0,
        start: [0; 32],
        end: [1; 32],
        accepted: vec![AcceptedUpdate { peer: tid, update: [5; 32], score: 0, sig }],
        rejected: vec![],
    };
    let head = l.head();
    match l.append(&k, close(sign_update(&key(2), 0, &[5; 32]))) {
        Err(LedgerError::Rule { kind: "RoundClosed", why, .. }) => {
            assert!(why.contains("signature"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    match l.append(&k, close(sign_update(&t, 1, &[5; 32]))) {
        Err(LedgerError::Rule { why, .. }) => assert!(why.contains("signature"), "another round's: {why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(l.head(), head, "nothing refused is written");
    log.extend(l.append(&k, close(sign_update(&t, 0, &[5; 32]))).unwrap());
    assert_eq!(verify(&k.verifying_key().to_bytes(), &log).unwrap().accounts(), l.accounts());
}

//! A node's copy of the ledger: it fetches what the announced heads say it lacks, and a head
//! that names another history than the one it verified, or one that goes back, is caught.

use tessera_coord::{LedgerCopy, SigningKey};
use tessera_ledger::{Entry, Ledger, StakeRules};

/// A ledger of four records: the coordinator's id, the ledger, and its records.
fn chain() -> ([u8; 32], Ledger, Vec<tessera_ledger::Record>) {
    let k = SigningKey::from_bytes(&[3; 32]);
    let (mut l, first) = Ledger::genesis(&k, [1; 32], StakeRules::default()).unwrap();
    let mut log = vec![first];
    for i in 1..=3u8 {
        log.extend(l.append(&k, Entry::Joined { peer: [i; 32], stake: 1_000, validator: false }).unwrap());
    }
    (k.verifying_key().to_bytes(), l, log)
}

#[test]
fn a_copy_follows_the_announced_heads_and_catches_a_rewritten_history() {
    let (me, l, log) = chain();
    let enc: Vec<Vec<u8>> = log.iter().map(|r| r.encode()).collect();
    let mut c = LedgerCopy::new(&me);
    assert_eq!(c.announced(l.head()), Ok(Some(0)), "fetch from the start");
    assert_eq!(c.received(0, &enc[..2]), Ok(Some(2)), "more to fetch");
    assert_eq!(c.received(0, &enc[..2]), Ok(None), "a stale answer changes nothing");
    assert_eq!(c.received(2, &enc[2..]), Ok(None), "caught up");
    assert_eq!(c.ledger().head(), l.head());
    // The coordinator announces another record 3 than the one it served: a rewritten history.
    let err = c.announced((4, [9; 32])).unwrap_err();
    assert!(err.contains("rewritten"), "{err}");
    assert!(c.announced((2, log[1].hash())).is_err(), "a head that goes back");
    // Announcing more than it serves.
    let mut c = LedgerCopy::new(&me);
    c.announced((9, [0; 32])).unwrap();
    assert_eq!(c.received(0, &enc), Ok(Some(4)));
    assert!(c.received(4, &[]).unwrap_err().contains("serves"), "and then serves nothing");
}

/// A copy hands out each record it verified once, to be kept on disk, including those it
/// verified before a later record proved the coordinator false; resumed from what was kept,
/// it catches a coordinator that has since rewritten those records, and refuses a kept copy
/// that does not verify.
#[test]
fn a_resumed_copy_keeps_what_it_verified_and_catches_a_later_rewrite() {
    let (me, l, log) = chain();
    let enc: Vec<Vec<u8>> = log.iter().map(|r| r.encode()).collect();
    let mut c = LedgerCopy::new(&me);
    c.announced(l.head()).unwrap();
    // Record 3 arrives tampered: records 0–2 are verified and handed out, the rest refused.
    let mut bad = log[3].clone();
    bad.entry = Entry::Left { peer: [1; 32] };
    let served = [enc[0].clone(), enc[1].clone(), enc[2].clone(), bad.encode()];
    assert!(c.received(0, &served).is_err());
    let kept = c.take_fresh();
    assert_eq!(kept, log[..3], "what was verified is kept");
    assert!(c.take_fresh().is_empty(), "once");
    // Restarted from what it kept, the node catches a coordinator announcing another record 2.
    let mut resumed = LedgerCopy::resume(&me, &kept).unwrap();
    assert_eq!(resumed.ledger().head().0, 3);
    let err = resumed.announced((3, [9; 32])).unwrap_err();
    assert!(err.contains("rewritten"), "{err}");
    // A kept copy that is damaged, or of another coordinator, is refused.
    let mut damaged = kept.clone();
    damaged[1].entry = Entry::Left { peer: [2; 32] };
    assert!(LedgerCopy::resume(&me, &damaged).unwrap_err().contains("signature"));
    assert!(LedgerCopy::resume(&[7; 32], &kept).is_err());
}

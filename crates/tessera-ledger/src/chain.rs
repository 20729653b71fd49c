//! The signed hash chain: the writer ([`Ledger`]) and the replay ([`verify`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{Accounts, Entry, Hash32, LedgerError, PeerId, StakeRules};

/// Largest encoded record accepted.
pub const MAX_RECORD: usize = 1 << 20;
const DOMAIN: &[u8] = b"tessera-ledger-v1";

/// One entry of the log: its position, the hash of the record before it (zeros for the
/// first), and the coordinator's signature over the three.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub prev: Hash32,
    pub entry: Entry,
    pub sig: Vec<u8>,
}

fn signed_bytes(seq: u64, prev: &Hash32, entry: &Entry) -> Vec<u8> {
    let body = postcard::to_allocvec(entry).expect("an entry always encodes");
    [DOMAIN, &seq.to_le_bytes(), prev, &body].concat()
}

impl Record {
    /// The canonical encoding (what is stored, fetched and hashed).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a record always encodes")
    }

    /// Reads one stored or fetched record, checking its size first.
    pub fn decode(b: &[u8]) -> Result<Self, LedgerError> {
        if b.len() > MAX_RECORD {
            return Err(LedgerError::Decode(format!("{} bytes exceed the limit of {MAX_RECORD}", b.len())));
        }
        let (r, rest): (Record, &[u8]) =
            postcard::take_from_bytes(b).map_err(|e| LedgerError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(LedgerError::Decode(format!("{} trailing bytes", rest.len())));
        }
        if r.sig.len() != 64 {
            return Err(LedgerError::Decode(format!("a signature of {} bytes", r.sig.len())));
        }
        // One record, one encoding: an overlong integer or the like is refused, so stored and
        // fetched bytes can be compared as they are.
        if r.encode() != b {
            return Err(LedgerError::Decode("not the canonical encoding".into()));
        }
        Ok(r)
    }

    /// What the next record names as `prev`.
    pub fn hash(&self) -> Hash32 {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Checks the coordinator's signature.
    fn check_sig(&self, key: &VerifyingKey) -> Result<(), String> {
        let sig: [u8; 64] = self.sig.as_slice().try_into().map_err(|_| "a signature of the wrong length")?;
        key.verify_strict(&signed_bytes(self.seq, &self.prev, &self.entry), &Signature::from_bytes(&sig))
            .map_err(|_| "the coordinator's signature does not verify".to_string())
    }
}

/// The coordinator's side: the chain so far (its head) and the accounts it implies.
#[derive(Debug, Clone)]
pub struct Ledger {
    coordinator: PeerId,
    next: u64,
    head: Hash32,
    accounts: Accounts,
}

impl Ledger {
    /// A new ledger: its first record, `RunCreated`.
    pub fn genesis(
        key: &SigningKey,
        config: Hash32,
        rules: StakeRules,
    ) -> Result<(Self, Record), LedgerError> {
        let coordinator = key.verifying_key().to_bytes();
        let mut l = Self { coordinator, next: 0, head: [0; 32], accounts: Accounts::default() };
        let mut out = l.append(key, Entry::RunCreated { config, rules })?;
        assert_eq!(out.len(), 1, "RunCreated implies nothing");
        Ok((l, out.remove(0)))
    }

    /// The ledger a verified log leaves (a restarted coordinator continues its chain).
    pub fn resume(coordinator: &PeerId, records: &[Record]) -> Result<Self, LedgerError> {
        verify(coordinator, records)
    }

    /// Appends `entry`, then every payout it implies: the records to persist, in order.
    /// An entry that breaks the rules (a stake below the minimum, an unknown peer) is refused
    /// with a typed error and nothing is appended.
    pub fn append(&mut self, key: &SigningKey, entry: Entry) -> Result<Vec<Record>, LedgerError> {
        if key.verifying_key().to_bytes() != self.coordinator {
            return Err(LedgerError::Invalid("signed by another key than the coordinator's".into()));
        }
        if self.accounts.owed().is_some() {
            return Err(LedgerError::Invalid("payouts are owed first".into()));
        }
        if let (Entry::Joined { stake, .. }, Some(r)) = (&entry, self.accounts.rules()) {
            if *stake < r.min_stake {
                return Err(LedgerError::StakeTooLow { got: *stake, need: r.min_stake });
            }
        }
        let mut trial = self.accounts.clone();
        let kind = entry.kind();
        trial.apply(&entry).map_err(|why| LedgerError::Rule { seq: self.next, kind, why })?;
        let mut entries = vec![entry];
        while let Some(owed) = trial.owed().cloned() {
            trial.apply(&owed).expect("an owed payout applies");
            entries.push(owed);
        }
        self.accounts = trial;
        let records: Vec<Record> = entries.into_iter().map(|e| self.seal(key, e)).collect();
        assert!(self.accounts.owed().is_none(), "every payout is written with its cause");
        Ok(records)
    }

    fn seal(&mut self, key: &SigningKey, entry: Entry) -> Record {
        let sig = key.sign(&signed_bytes(self.next, &self.head, &entry)).to_bytes().to_vec();
        let r = Record { seq: self.next, prev: self.head, entry, sig };
        self.head = r.hash();
        self.next += 1;
        r
    }

    /// The number of records and the hash of the last (what an `Accept` carries).
    pub fn head(&self) -> (u64, Hash32) {
        (self.next, self.head)
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }
}

/// Replays a log from genesis: every sequence number, chain link and signature, and every
/// entry against the rules. The first record that fails is named. A log may end owing the
/// payouts of its last entry (fetched before they were written): see
/// [`Accounts::owed`].
pub fn verify(coordinator: &PeerId, records: &[Record]) -> Result<Ledger, LedgerError> {
    let mut l = Ledger::replica(coordinator);
    l.extend(records)?;
    Ok(l)
}

impl Ledger {
    /// An empty copy of `coordinator`'s ledger, to be [`Ledger::extend`]ed as records arrive
    /// (a node's replica).
    pub fn replica(coordinator: &PeerId) -> Self {
        Self { coordinator: *coordinator, next: 0, head: [0; 32], accounts: Accounts::default() }
    }

    /// Checks and applies `records`, which must continue this ledger. On the first that
    /// fails the error names it, and the ledger holds what came before it.
    pub fn extend(&mut self, records: &[Record]) -> Result<(), LedgerError> {
        let key = VerifyingKey::from_bytes(&self.coordinator)
            .map_err(|_| LedgerError::Invalid("the coordinator's key is not a valid ed25519 point".into()))?;
        for r in records {
            self.extend_one(&key, r)?;
        }
        Ok(())
    }

    fn extend_one(&mut self, key: &VerifyingKey, r: &Record) -> Result<(), LedgerError> {
        let chain = |why: &str| LedgerError::Chain { seq: r.seq, why: why.to_string() };
        if r.seq != self.next {
            let why = format!("record {} found in its place (a gap or a reorder)", r.seq);
            return Err(LedgerError::Chain { seq: self.next, why });
        }
        if r.prev != self.head {
            return Err(chain("does not name the record before it (a changed or forked history)"));
        }
        r.check_sig(key).map_err(|why| chain(&why))?;
        let mut accounts = self.accounts.clone();
        let rule = |why| LedgerError::Rule { seq: r.seq, kind: r.entry.kind(), why };
        accounts.apply(&r.entry).map_err(rule)?;
        self.accounts = accounts;
        self.head = r.hash();
        self.next += 1;
        Ok(())
    }
}

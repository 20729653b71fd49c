//! # tessera-ledger
//!
//! **Role.** The accounting of a run (DESIGN §7): an append-only event log whose records are
//! hash-chained and signed by the coordinator ([`Record`], [`Ledger`]), the accounts it
//! implies (stake, rewards, fees, slashes: [`Accounts`]), the rules that turn a closed round
//! or a proven cheat into payouts ([`rules`]), and Yuma consensus over several validators'
//! scores ([`yuma`]): a round for which validators' signed [`Entry::Weights`] precede its
//! `RoundClosed` is paid by consensus, and the validators by their agreement with it.
//!
//! **Invariants.**
//! - Balances are a pure function of the log: replaying the records from genesis
//!   ([`verify`]) gives the same accounts, bit for bit, as the writer holds. All amounts are
//!   integers ([`Amount`]); no float reaches a balance.
//! - Payouts are derived, not asserted: a `RoundClosed` implies its `Rewarded` entries, and a
//!   proven cheat or a lost dispute its `Slashed` entry; the ledger writes them itself, right
//!   after their cause, and a replay refuses a log whose payouts differ from the rules.
//! - Record `n` names the hash of record `n − 1` and is signed by the coordinator over its
//!   sequence number, that hash and the entry: a changed, dropped, reordered or forked record
//!   is found by the first check that fails, and named.
//! - Entries of other participants carry their own signatures: a validator's `Weights` are
//!   signed by its key ([`sign_score`]), a trainer's accepted update by the trainer's
//!   ([`sign_update`]), and the replay checks them.
//! - Decoding never panics: every record is size-checked ([`MAX_RECORD`]) before it is read.
//!
//! **Must not.** Do I/O, read clocks or draw randomness (ed25519 signing is deterministic);
//! keep unbounded state (accounts are capped by [`MAX_ACCOUNTS`]).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod accounts;
mod chain;
pub mod rules;
pub mod yuma;

pub use accounts::{Account, Accounts};
pub use chain::{verify, Ledger, Record, MAX_RECORD};

use serde::{Deserialize, Serialize};

/// A peer's identity: its ed25519 public key.
pub type PeerId = [u8; 32];
/// A BLAKE3 hash.
pub type Hash32 = [u8; 32];
/// An amount of the run's reward unit (integers only).
pub type Amount = u64;

/// Most accounts one ledger holds.
pub const MAX_ACCOUNTS: usize = 65_536;
/// Most accepted or rejected updates one `RoundClosed` lists.
pub const MAX_ROUND_ENTRIES: usize = 4096;
/// Longest reason text a rejection carries.
pub const MAX_REASON: usize = 256;
/// The `segment` of a verdict on an update itself rather than on one of its segments (a
/// bit-for-bit copy or replay found by screening).
pub const SEGMENT_UPDATE: u32 = u32::MAX;
/// Most validators whose weights one round is paid by.
pub const MAX_WEIGHING: usize = 64;

/// What a node locks when it joins unless told otherwise (the default `min_stake`).
pub const DEFAULT_STAKE: Amount = 1_000;

/// A run's economics, fixed at genesis.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StakeRules {
    /// What a trainer or validator must lock to join, and keep to stay.
    pub min_stake: Amount,
    /// Split over each round's accepted updates by score.
    pub reward_per_round: Amount,
    /// Paid to a validator for each check it settles.
    pub check_fee: Amount,
    /// Split each round over the validators whose weights it was paid by, by their Yuma
    /// dividends (nothing in a round without weights).
    pub validator_budget: Amount,
    /// The share of its stake a proven cheat or a dispute's loser loses, in basis points.
    pub slash_bps: u32,
    /// The share of a slash paid to whoever proved it, in basis points.
    pub whistleblower_bps: u32,
}

impl Default for StakeRules {
    fn default() -> Self {
        Self {
            min_stake: DEFAULT_STAKE,
            reward_per_round: 1_000,
            check_fee: 5,
            validator_budget: 100,
            slash_bps: 5_000,
            whistleblower_bps: 2_000,
        }
    }
}

/// One accepted update of a closed round: its blob, its score (the held-out loss gain in
/// millionths of a nat per byte; 0 when the run does not score), and the trainer's own
/// signature over the round and the update ([`sign_update`]; empty from a trainer without a
/// key, as in the simulator), which the replay checks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AcceptedUpdate {
    pub peer: PeerId,
    pub update: Hash32,
    pub score: i64,
    pub sig: Vec<u8>,
}

const UPDATE_DOMAIN: &[u8] = b"tessera-update-v1";

/// What a trainer signs for its update of `round`.
pub fn update_message(round: u64, update: &Hash32) -> Vec<u8> {
    [UPDATE_DOMAIN, &round.to_le_bytes(), update].concat()
}

/// A trainer's signature over its update `update` of `round`.
pub fn sign_update(key: &ed25519_dalek::SigningKey, round: u64, update: &Hash32) -> Vec<u8> {
    use ed25519_dalek::Signer;
    key.sign(&update_message(round, update)).to_bytes().to_vec()
}

/// Checks `peer`'s signature `sig` over its update of `round`.
pub fn check_update(peer: &PeerId, round: u64, update: &Hash32, sig: &[u8]) -> Result<(), String> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(peer).map_err(|_| "not a trainer's key")?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| "an update signature of the wrong length")?;
    key.verify_strict(&update_message(round, update), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| "the trainer's signature over its update does not verify".to_string())
}

/// What a dispute decided by one operator rests on, for anyone to recompute: the blob of
/// the operator's kernel and inputs (stored by the coordinator), the kernel's and inputs'
/// hashes both sides named, and the output hashes each claimed, `[trainer, validator]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub inputs: Hash32,
    /// The inputs blob's length in bytes (so a node can fetch it to keep with its copy).
    pub inputs_len: u64,
    pub kernel: Hash32,
    pub input_hashes: Vec<Hash32>,
    pub claims: [Vec<Hash32>; 2],
}

/// Most tensors an operator's evidence names (inputs, or one side's outputs).
pub const MAX_EVIDENCE_TENSORS: usize = 64;

impl Evidence {
    /// Who loses when the operator, recomputed, gives `outputs`.
    pub fn loser(&self, outputs: &[Hash32]) -> Loser {
        match (self.claims[0] == outputs, self.claims[1] == outputs) {
            (true, _) => Loser::Validator,
            (false, true) => Loser::Trainer,
            (false, false) => Loser::Both,
        }
    }
}

/// Who lost a dispute.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loser {
    Trainer,
    Validator,
    Both,
}

/// What the ledger records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The first entry: the run config's hash and its economics.
    RunCreated { config: Hash32, rules: StakeRules },
    /// A trainer or validator joined, locking `stake`.
    Joined { peer: PeerId, stake: Amount, validator: bool },
    /// Round `round` went from state `start` to `end`, taking `accepted` and refusing
    /// `rejected` (with reasons).
    RoundClosed {
        round: u64,
        start: Hash32,
        end: Hash32,
        accepted: Vec<AcceptedUpdate>,
        rejected: Vec<(PeerId, String)>,
    },
    /// A spot check of `peer`'s round-`round` update was settled, `by` a validator (paid the
    /// check fee) or the coordinator; `cheat`: it proves a cheat (a trainer's, or a
    /// validator's false finding), and `proven_by` is paid the whistleblower's share of the
    /// slash (`None`: the coordinator proved it, and the share is burned).
    Verdict {
        round: u64,
        peer: PeerId,
        segment: u32,
        passed: bool,
        cheat: bool,
        by: Option<PeerId>,
        proven_by: Option<PeerId>,
    },
    /// A validator's mismatch on `trainer`'s update is disputed.
    DisputeOpened { round: u64, trainer: PeerId, validator: PeerId },
    /// The dispute was decided at `step` (and `op`, when one operator was recomputed, with
    /// the evidence to recompute it again).
    DisputeResolved {
        round: u64,
        trainer: PeerId,
        validator: PeerId,
        loser: Loser,
        step: u64,
        op: Option<u64>,
        evidence: Option<Evidence>,
    },
    /// Implied by a `RoundClosed`: `peer`'s share of the round's reward.
    Rewarded { round: u64, peer: PeerId, amount: Amount },
    /// Implied by a proven cheat or a lost dispute: `amount` taken from `peer`'s stake, of
    /// which `share` goes to the `whistleblower` (the rest is burned).
    Slashed { round: u64, peer: PeerId, amount: Amount, whistleblower: Option<PeerId>, share: Amount },
    /// A peer left (or, its stake below the minimum, was removed); its stake is released.
    Left { peer: PeerId },
    /// A validator's scores of round `round`'s updates (in peer order), each signed by the
    /// validator itself ([`sign_score`]). Written before the round's `RoundClosed`, which is
    /// then paid by Yuma consensus.
    Weights { round: u64, validator: PeerId, scores: Vec<SignedScore> },
}

impl Entry {
    /// The entry's kind, for errors and listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::RunCreated { .. } => "RunCreated",
            Entry::Joined { .. } => "Joined",
            Entry::RoundClosed { .. } => "RoundClosed",
            Entry::Verdict { .. } => "Verdict",
            Entry::DisputeOpened { .. } => "DisputeOpened",
            Entry::DisputeResolved { .. } => "DisputeResolved",
            Entry::Rewarded { .. } => "Rewarded",
            Entry::Slashed { .. } => "Slashed",
            Entry::Left { .. } => "Left",
            Entry::Weights { .. } => "Weights",
        }
    }
}

/// One validator's score of one peer's update (millionths, as [`AcceptedUpdate::score`]),
/// with the validator's signature over the round, the peer and the score.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignedScore {
    pub peer: PeerId,
    pub score: i64,
    pub sig: Vec<u8>,
}

const SCORE_DOMAIN: &[u8] = b"tessera-score-v1";

/// What a validator signs for its score of `peer`'s update of `round`.
pub fn score_message(round: u64, peer: &PeerId, score: i64) -> Vec<u8> {
    [SCORE_DOMAIN, &round.to_le_bytes(), peer, &score.to_le_bytes()].concat()
}

/// A validator's signature over its score of `peer`'s update of `round`.
pub fn sign_score(key: &ed25519_dalek::SigningKey, round: u64, peer: &PeerId, score: i64) -> Vec<u8> {
    use ed25519_dalek::Signer;
    key.sign(&score_message(round, peer, score)).to_bytes().to_vec()
}

/// Checks `validator`'s signature over its score `s` of round `round`.
pub fn check_score(validator: &PeerId, round: u64, s: &SignedScore) -> Result<(), String> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(validator).map_err(|_| "not a validator's key")?;
    let sig: [u8; 64] = s.sig.as_slice().try_into().map_err(|_| "a score signature of the wrong length")?;
    key.verify_strict(&score_message(round, &s.peer, s.score), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| "the validator's signature over its score does not verify".to_string())
}

/// Why an entry or a log was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    #[error("record {seq}: {why}")]
    Chain { seq: u64, why: String },
    #[error("record {seq} ({kind}): {why}")]
    Rule { seq: u64, kind: &'static str, why: String },
    #[error("a stake of {got} is below the minimum of {need}")]
    StakeTooLow { got: Amount, need: Amount },
    #[error("{0}")]
    Invalid(String),
    #[error("record does not decode: {0}")]
    Decode(String),
}

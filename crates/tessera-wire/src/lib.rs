//! # tessera-wire
//!
//! **Role.** The control messages of a run (DESIGN §6) as versioned types with one canonical
//! encoding (postcard), each carried in a frame signed by the sender's ed25519 key, which is
//! the peer's identity. Bulk data (updates, checkpoints) does not travel here: messages name it
//! by BLAKE3 hash and it moves as verified blobs.
//!
//! ```text
//! frame = magic "TSW1" | version u16 LE | body length u32 LE | body | signature (64 bytes)
//! body  = postcard(Signed { sender, seq, message })
//! signature = ed25519(sender, magic ‖ version ‖ length ‖ body)
//! ```
//!
//! **Invariants.** Decoding never panics. The frame size is checked against [`MAX_FRAME`]
//! before anything is allocated, the declared body length must match the frame exactly, the
//! body must decode completely, the signature must verify (strictly) under the sender key it
//! names, and collection sizes must be within their named limits. The same message always
//! encodes to the same bytes.
//!
//! **Must not.** Do I/O or read clocks; decide whether a message is fresh (sequence numbers
//! and rounds are checked by the coordinator's state machine).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Frame magic.
pub const MAGIC: &[u8; 4] = b"TSW1";
/// Wire version of this crate.
pub const VERSION: u16 = 5;
/// A loss in thousandths for [`Message::Commit`] (`u32::MAX` when it is not finite or out of
/// range).
pub fn loss_milli(loss: f64) -> u32 {
    let m = (loss * 1000.0).round();
    if m.is_finite() && (0.0..u32::MAX as f64).contains(&m) {
        m as u32
    } else {
        u32::MAX
    }
}

/// Largest frame accepted (control messages only; bulk data moves as blobs): a coordinator's
/// `RoundStart`, `Accept` or `Welcome` listing [`MAX_MEMBERS`] members with the longest
/// addresses and reasons fits (about 6 MiB at most; a test checks).
pub const MAX_FRAME: usize = 8 << 20;
/// Largest frame a member or validator sends (a dispute answer of [`MAX_OP_IO`] hashes each
/// way is the longest, about 260 KiB): all a coordinator reads, so a peer can make it hold
/// no more than this per frame.
pub const MAX_PEER_FRAME: usize = 1 << 20;
/// Most members, assignments or rejections one message may list.
pub const MAX_MEMBERS: usize = 16_384;
/// Most addresses a peer may advertise.
pub const MAX_ADDRS: usize = 16;
/// Longest string field (an address or a rejection reason).
pub const MAX_TEXT: usize = 256;
/// Longest run configuration a `Welcome` may carry.
pub const MAX_CONFIG: usize = 16 * 1024;
/// Most sibling hashes one Merkle proof may carry (a commitment has at most 2^16 + 2 leaves).
pub const MAX_PROOF: usize = 32;
/// Most ledger records one `LedgerRecords` carries.
pub const MAX_LEDGER_BATCH: usize = 256;
/// Most input (or output) hashes one operator's entry may carry in a dispute.
pub const MAX_OP_IO: usize = 4096;
const HEADER: usize = 4 + 2 + 4;
const SIG: usize = 64;

/// A peer's identity: its ed25519 public key.
pub type PeerId = [u8; 32];
/// A BLAKE3 hash.
pub type Hash32 = [u8; 32];

/// Every control message of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A peer asks to join, locking `stake` (the run's `min_stake` at least); it can be
    /// reached at `addrs`.
    Join { addrs: Vec<String>, stake: u64 },
    /// The coordinator admits a peer: where the run is, which checkpoint to fetch, and the
    /// run's configuration (TOML text).
    /// `peers` are the members that serve blobs, with their addresses, so a joiner can fetch
    /// the checkpoint from several of them.
    Welcome {
        round: u64,
        checkpoint: Hash32,
        state_hash: Hash32,
        config: String,
        peers: Vec<(PeerId, String)>,
    },
    /// Liveness, with the peer's progress in the current round.
    Heartbeat { round: u64, step: u64 },
    /// A round begins: the state it starts from, its seed, members (with the address each
    /// serves blobs at, "" if unknown), the work each assigned trainer does, and its deadline
    /// (milliseconds after the round started). NoLoCo: `replicas` names, per member, the
    /// replica state that member trains from (empty for the other algorithms, whose members
    /// all train from `state_hash`).
    RoundStart {
        round: u64,
        state_hash: Hash32,
        seed: u64,
        members: Vec<PeerId>,
        addrs: Vec<String>,
        assignments: Vec<Assignment>,
        deadline_ms: u64,
        replicas: Vec<Hash32>,
    },
    /// A trainer commits to its update blob, the shared state `state` it trained from, the
    /// hashes of its local state (parameters and inner optimizer) before and after, and the
    /// Merkle `root` over its start state, its state after every k-th inner step, its final
    /// state and its update (`tessera_verify::RoundCommitment`).
    /// `sig`: the trainer's own signature over the round and the update, for the ledger
    /// (`tessera_ledger::sign_update`), or empty.
    Commit {
        round: u64,
        state: Hash32,
        update: Hash32,
        update_len: u64,
        start_hash: Hash32,
        end_hash: Hash32,
        root: Hash32,
        /// The trainer's mean training loss over the unit in thousandths, as it says (shown
        /// on dashboards, never trusted: nothing is decided by it; `u32::MAX`: not finite).
        loss_milli: u32,
        sig: Vec<u8>,
    },
    /// The coordinator's decision for a round, with a reason for each rejection. `updates`
    /// names the accepted update blobs, in the order of `accepted` (peer-id order); for a hub
    /// algorithm `aggregate` names the blob of their combination (absent when nothing was
    /// accepted, and for all-gather algorithms, whose peers combine `updates` themselves).
    Accept {
        round: u64,
        accepted: Vec<PeerId>,
        updates: Vec<Hash32>,
        rejected: Vec<(PeerId, String)>,
        aggregate: Option<Hash32>,
        next_state_hash: Hash32,
        /// NoLoCo only: the pairing and what the partners exchange.
        pairs: Option<Pairs>,
        /// The ledger's head after this round's entries: its record count and the hash of
        /// its last record (absent when the coordinator keeps no ledger).
        ledger: Option<(u64, Hash32)>,
    },
    /// A node reports the state hash it holds after `round` rounds: computed by applying the
    /// round itself, or (`computed = false`) adopted from the coordinator's checkpoint.
    StateReport { round: u64, state_hash: Hash32, computed: bool },
    /// The latest checkpoint blob.
    CheckpointPointer { round: u64, checkpoint: Hash32, state_hash: Hash32 },
    /// The run has finished after `round` rounds in the state `state_hash`.
    Done { round: u64, state_hash: Hash32 },
    /// A spot check: the checker asks a trainer to reveal segment `segment` (from 0) of its
    /// commitment for `round`.
    Challenge { round: u64, segment: u32 },
    /// A trainer's answer to a `Challenge`: the committed leaves at the segment's start and
    /// end, each with its Merkle proof against the `Commit`'s root, and the blob (served by
    /// this trainer) that holds the local state at the segment's start.
    Reveal { round: u64, segment: u32, blob: Hash32, start: Leaf, end: Leaf },
    /// A validator asks to check trainers' work; it can be reached at `addrs`.
    JoinValidator { addrs: Vec<String>, stake: u64 },
    /// The coordinator hands a validator one spot check: `peer`'s reveal of `segment` of its
    /// round-`round` commit (already checked against the commitment), the blob to fetch from
    /// the trainer at `addr` (its local state at the segment's start), the committed leaves at
    /// the segment's start and end, and, for the last segment, the state the unit was trained
    /// from and the committed update, to re-derive it.
    CheckTask {
        round: u64,
        peer: PeerId,
        addr: String,
        segment: u32,
        unit: (u64, u64),
        blob: Hash32,
        start: Hash32,
        end: Hash32,
        rederive: Option<(Hash32, Hash32)>,
    },
    /// A validator's finding on a `CheckTask`; for a mismatch, the end state it `reached`
    /// (what it stands by if the trainer disputes it).
    Verdict { round: u64, peer: PeerId, segment: u32, finding: Finding, reached: Option<Hash32> },
    /// The coordinator refuses this peer from now on (proven to have cheated in `round`),
    /// saying why.
    Refused { round: u64, reason: String },
    /// The referee (the coordinator) asks one side of the dispute over `peer`'s round-`round`
    /// update (the trainer `peer` itself, or the validator whose mismatch it disputes) one
    /// question of the dispute game.
    DisputeAsk { round: u64, peer: PeerId, question: Question },
    /// A side's answer to a `DisputeAsk`, naming the question it answers (a question may be
    /// put again, and an answer to an earlier one must not be taken for the next one's).
    DisputeAnswer { round: u64, peer: PeerId, question: Question, answer: Answer },
    /// The coordinator hands a validator the scoring of `peer`'s accepted round-`round`
    /// update: the update blob (`update_len` bytes, served by the trainer at `addr`), the
    /// round's start state blob it is applied to (served by the coordinator), the unit the
    /// trainer was assigned, and the batches per set to score on.
    ScoreTask {
        round: u64,
        peer: PeerId,
        addr: String,
        unit: (u64, u64),
        update: Hash32,
        update_len: u64,
        state: Hash32,
        batches: u64,
    },
    /// A validator's score of a `ScoreTask`: the loss the update gains on the held-out set,
    /// on the trainer's own batches and on unassigned batches, as f64 bit patterns (scores are
    /// bit-reproducible, so they compare exactly); `None`: it could not score.
    /// `sig`: the validator's own signature over its score for the ledger
    /// (`tessera_ledger::sign_score` of the held-out gain in millionths), or empty.
    ScoreReport { round: u64, peer: PeerId, score: Option<[u64; 3]>, sig: Vec<u8> },
    /// A node asks for the ledger's records from sequence number `from` on.
    LedgerFetch { from: u64 },
    /// The coordinator's answer: encoded ledger records `from`, `from + 1`, … (at most
    /// [`MAX_LEDGER_BATCH`], within the frame limit).
    LedgerRecords { from: u64, records: Vec<Vec<u8>> },
}

/// One question of the dispute game (`tessera_verify::Dispute`). Steps count inner steps from
/// the round's start; operators count from 1 within a step's op trace.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Question {
    /// The hash of the local state after `step` inner steps.
    State { step: u64 },
    /// The prefix hash chain value after operator `op` of step `step`.
    Prefix { step: u64, op: u64 },
    /// Operator `op` of step `step`: its kernel's hash, input hashes and output hashes.
    Entry { step: u64, op: u64 },
    /// (Trainer only.) A blob holding operator `op`'s kernel and input tensors, for the
    /// referee to recompute it.
    Inputs { step: u64, op: u64 },
    /// (Trainer only.) A blob holding the local state after `step` steps, for the referee to
    /// recompute step `step` from.
    StateBlob { step: u64 },
}

/// A side's answer to one [`Question`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// To `State` and `Prefix`.
    Hash(Hash32),
    /// To `Entry` (at most [`MAX_OP_IO`] hashes each).
    Entry { kernel: Hash32, inputs: Vec<Hash32>, outputs: Vec<Hash32> },
    /// To `Inputs` and `StateBlob`: the blob this side serves, and its length.
    Blob { hash: Hash32, len: u64 },
}
/// What a validator found (see `tessera_coord::Outcome`, which adds the coordinator's own
/// cases).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    Pass,
    /// Re-running the segment did not reach the committed end.
    Mismatch,
    /// The update re-derived from the final state is not the committed one.
    WrongUpdate,
    /// The revealed blob is not the committed start state.
    BadReveal,
    /// The validator could not run the check (its own data or the blob's fetch failed).
    Unchecked,
}

/// One committed leaf with its inclusion proof (the sibling hashes from the leaf up).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub hash: Hash32,
    pub proof: Vec<Hash32>,
}

/// The largest round number a message may carry: far beyond any run, and small enough that
/// the protocol's round arithmetic (`round + 1`, `round × H`) never overflows.
pub const MAX_ROUND: u64 = 1 << 40;

impl Message {
    /// The round the message names, if it names one.
    pub fn round(&self) -> Option<u64> {
        match self {
            Message::Welcome { round, .. }
            | Message::Heartbeat { round, .. }
            | Message::RoundStart { round, .. }
            | Message::Commit { round, .. }
            | Message::Accept { round, .. }
            | Message::StateReport { round, .. }
            | Message::CheckpointPointer { round, .. }
            | Message::Done { round, .. }
            | Message::Challenge { round, .. }
            | Message::Reveal { round, .. }
            | Message::CheckTask { round, .. }
            | Message::Verdict { round, .. }
            | Message::Refused { round, .. }
            | Message::DisputeAsk { round, .. }
            | Message::DisputeAnswer { round, .. }
            | Message::ScoreTask { round, .. }
            | Message::ScoreReport { round, .. } => Some(*round),
            Message::Join { .. }
            | Message::JoinValidator { .. }
            | Message::LedgerFetch { .. }
            | Message::LedgerRecords { .. } => None,
        }
    }

    /// The message's kind, for logs and refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join { .. } => "Join",
            Message::Welcome { .. } => "Welcome",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::RoundStart { .. } => "RoundStart",
            Message::Commit { .. } => "Commit",
            Message::Accept { .. } => "Accept",
            Message::StateReport { .. } => "StateReport",
            Message::CheckpointPointer { .. } => "CheckpointPointer",
            Message::Done { .. } => "Done",
            Message::Challenge { .. } => "Challenge",
            Message::Reveal { .. } => "Reveal",
            Message::JoinValidator { .. } => "JoinValidator",
            Message::CheckTask { .. } => "CheckTask",
            Message::Verdict { .. } => "Verdict",
            Message::Refused { .. } => "Refused",
            Message::DisputeAsk { .. } => "DisputeAsk",
            Message::DisputeAnswer { .. } => "DisputeAnswer",
            Message::ScoreTask { .. } => "ScoreTask",
            Message::ScoreReport { .. } => "ScoreReport",
            Message::LedgerFetch { .. } => "LedgerFetch",
            Message::LedgerRecords { .. } => "LedgerRecords",
        }
    }
}

/// How a NoLoCo round closes: the seeded groups the coordinator announced (pairs, one triple
/// when the count is odd), the φ blob of each accepted member (in the order of `accepted`),
/// and each member's replica state after the round.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Pairs {
    pub groups: Vec<Vec<PeerId>>,
    pub phis: Vec<Hash32>,
    pub replicas: Vec<(PeerId, Hash32)>,
}

/// One unit of training work: H inner steps on the batches of `(data_round, slot)`. A unit
/// that was not delivered is handed to another trainer in a later round, so no data is
/// skipped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Assignment {
    pub peer: PeerId,
    pub data_round: u64,
    pub slot: u64,
}

/// A message with its sender and the sender's sequence number (for replay detection).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub sender: PeerId,
    pub seq: u64,
    pub message: Message,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("frame too short ({0} bytes)")]
    Truncated(usize),
    #[error("bad magic")]
    Magic,
    #[error("unsupported wire version {0}")]
    Version(u16),
    #[error("declared body length {declared} does not match the frame ({actual})")]
    Length { declared: usize, actual: usize },
    #[error("body does not decode: {0}")]
    Decode(String),
    #[error("sender key is not a valid ed25519 point")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("{what}: {got} exceeds the limit of {limit}")]
    Limit { what: &'static str, got: usize, limit: usize },
}

impl Message {
    /// Checks collection sizes, string lengths and the round number against the named limits.
    pub fn check_limits(&self) -> Result<(), WireError> {
        let lim = |what, got: usize, limit| {
            if got > limit {
                Err(WireError::Limit { what, got, limit })
            } else {
                Ok(())
            }
        };
        if let Some(r) = self.round().filter(|r| *r > MAX_ROUND) {
            let (got, limit) = (usize::try_from(r).unwrap_or(usize::MAX), MAX_ROUND as usize);
            return Err(WireError::Limit { what: "round", got, limit });
        }
        // A list that must hold one entry per entry of another.
        let one_each = |what, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(WireError::Limit { what, got, limit: want })
            }
        };
        match self {
            Message::Join { addrs, .. } | Message::JoinValidator { addrs, .. } => {
                lim("addresses", addrs.len(), MAX_ADDRS)?;
                addrs.iter().try_for_each(|a| lim("address length", a.len(), MAX_TEXT))
            }
            Message::Welcome { config, peers, .. } => {
                lim("config length", config.len(), MAX_CONFIG)?;
                lim("peers", peers.len(), MAX_MEMBERS)?;
                peers.iter().try_for_each(|(_, a)| lim("address length", a.len(), MAX_TEXT))
            }
            Message::RoundStart { members, addrs, assignments, replicas, .. } => {
                lim("members", members.len(), MAX_MEMBERS)?;
                if !replicas.is_empty() {
                    one_each("replicas (none, or one per member)", replicas.len(), members.len())?;
                }
                one_each("addresses (one per member)", addrs.len(), members.len())?;
                addrs.iter().try_for_each(|a| lim("address length", a.len(), MAX_TEXT))?;
                lim("assignments", assignments.len(), MAX_MEMBERS)
            }
            Message::Accept { accepted, updates, rejected, pairs, .. } => {
                lim("accepted", accepted.len(), MAX_MEMBERS)?;
                if let Some(p) = pairs {
                    lim("group members", p.groups.iter().map(Vec::len).sum(), MAX_MEMBERS)?;
                    lim("replicas", p.replicas.len(), MAX_MEMBERS)?;
                    one_each("φ blobs (one per accepted peer)", p.phis.len(), accepted.len())?;
                }
                one_each("updates (one per accepted peer)", updates.len(), accepted.len())?;
                lim("rejected", rejected.len(), MAX_MEMBERS)?;
                rejected.iter().try_for_each(|(_, r)| lim("reason length", r.len(), MAX_TEXT))
            }
            Message::CheckTask { addr, .. } | Message::ScoreTask { addr, .. } => {
                lim("address length", addr.len(), MAX_TEXT)
            }
            Message::Refused { reason, .. } => lim("reason length", reason.len(), MAX_TEXT),
            Message::DisputeAnswer { answer: Answer::Entry { inputs, outputs, .. }, .. } => {
                lim("operator inputs", inputs.len(), MAX_OP_IO)?;
                lim("operator outputs", outputs.len(), MAX_OP_IO)
            }
            Message::LedgerRecords { records, .. } => lim("ledger records", records.len(), MAX_LEDGER_BATCH),
            Message::ScoreReport { sig, .. } | Message::Commit { sig, .. } => lim("signature", sig.len(), 64),
            Message::Reveal { start, end, .. } => {
                lim("proof length", start.proof.len(), MAX_PROOF)?;
                lim("proof length", end.proof.len(), MAX_PROOF)
            }
            _ => Ok(()),
        }
    }
}

/// Encodes and signs `message` as `key`'s `seq`-th message.
pub fn encode(key: &SigningKey, seq: u64, message: &Message) -> Result<Vec<u8>, WireError> {
    message.check_limits()?;
    let signed = Signed { sender: key.verifying_key().to_bytes(), seq, message: message.clone() };
    let body = postcard::to_allocvec(&signed).map_err(|e| WireError::Decode(e.to_string()))?;
    let total = HEADER + body.len() + SIG;
    if total > MAX_FRAME {
        return Err(WireError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(total);
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(&body);
    let sig = key.sign(&out);
    out.extend(sig.to_bytes());
    Ok(out)
}

/// The sender a well-formed frame names, read without verifying anything (so a receiver can
/// drop a frame that names someone other than the connection's peer before spending a
/// signature check on it). `None` when the header is not a frame's.
pub fn sender_of(frame: &[u8]) -> Option<PeerId> {
    let ok = frame.len() >= HEADER + 32 + SIG && &frame[..4] == MAGIC;
    // `Signed` encodes its sender first, as 32 raw bytes.
    ok.then(|| frame[HEADER..HEADER + 32].try_into().expect("32 bytes"))
}

/// Checks and decodes a frame, verifying the signature under the sender key it names.
pub fn decode(frame: &[u8]) -> Result<Signed, WireError> {
    if frame.len() > MAX_FRAME {
        return Err(WireError::TooLarge(frame.len()));
    }
    if frame.len() < HEADER + SIG {
        return Err(WireError::Truncated(frame.len()));
    }
    if &frame[..4] != MAGIC {
        return Err(WireError::Magic);
    }
    let version = u16::from_le_bytes([frame[4], frame[5]]);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let declared = u32::from_le_bytes([frame[6], frame[7], frame[8], frame[9]]) as usize;
    let actual = frame.len() - HEADER - SIG;
    if declared != actual {
        return Err(WireError::Length { declared, actual });
    }
    let (signed_part, sig_bytes) = frame.split_at(HEADER + declared);
    let (signed, rest): (Signed, &[u8]) =
        postcard::take_from_bytes(&signed_part[HEADER..]).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!("{} trailing bytes", rest.len())));
    }
    let key = VerifyingKey::from_bytes(&signed.sender).map_err(|_| WireError::BadKey)?;
    let mut sig = [0u8; SIG];
    sig.copy_from_slice(sig_bytes);
    key.verify_strict(signed_part, &Signature::from_bytes(&sig)).map_err(|_| WireError::BadSignature)?;
    signed.message.check_limits()?;
    Ok(signed)
}

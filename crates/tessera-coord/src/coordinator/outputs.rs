//! What the coordinator's state machine hands its driver: outputs to execute, records to
//! persist, events to log, and what it reloads after a restart.

use crate::check::{CheckJob, Outcome};
use crate::{GlobalState, Hash32, Message, PeerId, Reject, Unit};

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send {
        to: PeerId,
        message: Message,
    },
    /// To every current member.
    Broadcast {
        message: Message,
    },
    /// Fetch blob `hash` (exactly `len` bytes) from `from`, then call [`crate::Coordinator::fetched`].
    Fetch {
        from: PeerId,
        hash: Hash32,
        len: u64,
    },
    /// Store a blob durably and serve it by hash.
    StoreBlob {
        hash: Hash32,
        bytes: Vec<u8>,
    },
    /// Write a decision durably before going on.
    Persist(Record),
    /// Run a spot check ([`crate::run_check`]), then call [`crate::Coordinator::checked`].
    Check(Box<CheckJob>),
    /// Score an update ([`crate::run_score`]), then call [`crate::Coordinator::scored`].
    Score(Box<crate::ScoreJob>),
    /// Recompute one disputed step ([`super::RecomputeJob::run`]), then call
    /// [`crate::Coordinator::recomputed`].
    Recompute(Box<super::RecomputeJob>),
    Event(Event),
}

/// A decision or observation to write down.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A round was announced (the `RoundStart` message).
    RoundStarted { round: u64, start: Message },
    /// A round was closed: the `Accept` message, the new state and the backlog after it,
    /// (NoLoCo) the spread of the replicas, and the ledger's records of the close (weights,
    /// `RoundClosed`, payouts). One record, written at once: a crash never leaves the ledger
    /// paying a round the store has not closed, which a restart would close and pay again.
    RoundClosed {
        round: u64,
        accept: Message,
        state_hash: Hash32,
        backlog: Vec<Unit>,
        spread: Option<f64>,
        ledger: Vec<tessera_ledger::Record>,
    },
    /// A node reported the state hash it holds after `round` rounds, computed by itself or
    /// adopted from the checkpoint.
    Report { round: u64, peer: PeerId, state_hash: Hash32, agrees: bool, computed: bool },
    /// A spot check of `peer`'s update of `round` was settled, `by` a validator (or, `None`,
    /// the coordinator itself): what the ledger pays and slashes by.
    Verdict { round: u64, peer: PeerId, segment: u64, outcome: Outcome, by: Option<PeerId> },
    /// `peer`'s update of `round` was scored (`harmful`: left out), `by` a validator whose
    /// score stands (or, `None`, the coordinator).
    Scored { round: u64, peer: PeerId, score: crate::Score, harmful: bool, by: Option<PeerId> },
    /// A dispute was decided.
    Dispute(Disputed),
    /// Ledger records to append, in order (the ledger's `Record`s, chained and signed).
    Ledger(Vec<tessera_ledger::Record>),
}

/// How a dispute between a trainer and the validator that contradicted it ended: the ruling
/// (who lost, and the exact step and operator decided; `op` is `None` when the referee
/// recomputed the whole step or a side forfeited), the disputed operator's kernel, and what
/// the game cost: exchanges and bytes revealed or fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct Disputed {
    pub round: u64,
    pub trainer: PeerId,
    pub validator: PeerId,
    pub ruling: tessera_verify::Ruling,
    pub kernel: Option<&'static str>,
    /// The loser did not answer in time, answered out of turn, or served a blob that is not
    /// what it named: nothing was recomputed.
    pub forfeit: bool,
    pub exchanges: u32,
    pub bytes: u64,
}

impl std::fmt::Display for Disputed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, v) = (tessera_tensor::hex(&self.trainer[..4]), tessera_tensor::hex(&self.validator[..4]));
        write!(f, "round {}: dispute between trainer {t} and validator {v} ", self.round)?;
        let step = self.ruling.step;
        match (self.forfeit, self.ruling.op, self.kernel) {
            (true, _, _) => write!(f, "forfeited at step {step}")?,
            (false, Some(op), k) => {
                write!(f, "decided at step {step}, operator {op} ({})", k.unwrap_or("?"))?
            }
            (false, None, _) => write!(f, "decided by recomputing step {step}")?,
        }
        let loser = match self.ruling.loser {
            tessera_verify::Loser::Trainer => "the trainer",
            tessera_verify::Loser::Validator => "the validator",
            tessera_verify::Loser::Both => "both",
        };
        write!(f, " after {} exchanges, {} bytes: {loser} loses", self.exchanges, self.bytes)
    }
}

impl Record {
    /// The ledger's records this record writes (in order).
    pub fn ledger_records(&self) -> &[tessera_ledger::Record] {
        match self {
            Record::Ledger(v) | Record::RoundClosed { ledger: v, .. } => v,
            _ => &[],
        }
    }
}

/// What a closed round's `Accept` names that a store keeps or lets go, read here by the
/// protocol so that no driver interprets the message itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClosedRound {
    pub accepted: Vec<PeerId>,
    /// The accepted update blobs, in the order of `accepted`.
    pub updates: Vec<Hash32>,
    /// NoLoCo: each member's replica after the round (what a restart restores).
    pub replicas: Vec<(PeerId, Hash32)>,
    /// Blobs that expire with the round's state checkpoint (NoLoCo's φ and replica blobs).
    pub expiring: Vec<Hash32>,
    /// The updates left out, with their reasons in words.
    pub rejected: Vec<(PeerId, String)>,
}

impl ClosedRound {
    /// `None` when `accept` is not an `Accept`.
    pub fn of(accept: &Message) -> Option<Self> {
        let Message::Accept { accepted, updates, pairs, rejected, .. } = accept else { return None };
        let replicas = pairs.as_ref().map(|p| p.replicas.clone()).unwrap_or_default();
        let phis = pairs.iter().flat_map(|p| p.phis.iter().copied());
        let expiring = phis.chain(replicas.iter().map(|r| r.1)).collect();
        let rejected = rejected.clone();
        Some(Self { accepted: accepted.clone(), updates: updates.clone(), replicas, expiring, rejected })
    }
}

/// Things worth logging.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Joined(PeerId),
    /// Round `round` started at `started_ms`, due by `deadline_ms` (the caller's clock).
    Opened {
        round: u64,
        started_ms: u64,
        deadline_ms: u64,
    },
    /// A member's commit was taken for the round: its update's length, and the mean loss it
    /// reports (thousandths; shown, never trusted).
    Committed {
        round: u64,
        peer: PeerId,
        bytes: u64,
        loss_milli: u32,
    },
    Left(PeerId),
    Rejected {
        from: PeerId,
        reason: Reject,
    },
    RoundClosed {
        round: u64,
        accepted: usize,
        rejected: usize,
        reassigned: usize,
        spread: Option<f64>,
    },
    Disagreement {
        round: u64,
        peer: PeerId,
        reported: Hash32,
        expected: Option<Hash32>,
    },
    /// A spot check was settled (`by` the validator whose finding stands, or the coordinator).
    Checked {
        round: u64,
        peer: PeerId,
        segment: usize,
        outcome: Outcome,
        by: Option<PeerId>,
    },
    /// A dispute was decided.
    Disputed(Disputed),
    /// The ledger refused an entry of `kind` (a peer it holds no account of, say).
    LedgerRefused {
        kind: &'static str,
        why: String,
    },
    /// An update was scored (`harmful`: left out), `by` a validator (or the coordinator).
    Scored {
        round: u64,
        peer: PeerId,
        score: crate::Score,
        harmful: bool,
        by: Option<PeerId>,
    },
    /// An update could not be scored (the scorer's own failure); it stays in.
    Unscored {
        round: u64,
        peer: PeerId,
        why: String,
    },
    /// A trainer proven to have cheated is refused from now on.
    Banned {
        peer: PeerId,
        round: u64,
    },
    /// `peer`'s update was left out of `round`'s close, and why (one per `Accept` rejection).
    LeftOut {
        round: u64,
        peer: PeerId,
        reason: crate::Reject,
    },
    /// Robust aggregation scaled `count` accepted updates down to the round's median bound.
    Clipped {
        round: u64,
        count: usize,
    },
    Finished {
        round: u64,
        state_hash: Hash32,
    },
}

/// What the coordinator reloads after a restart.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The state blob of the last closed round (or the initial state).
    pub state: GlobalState,
    pub backlog: Vec<Unit>,
    /// A round that was announced but not closed.
    pub open: Option<Message>,
    /// State hashes by rounds completed.
    pub history: Vec<(u64, Hash32)>,
    /// NoLoCo: every member's replica, of the state's round.
    pub replicas: Vec<(PeerId, GlobalState)>,
    /// Trainers proven to have cheated, with the round each was caught in.
    pub banned: Vec<(PeerId, u64)>,
}

//! # tessera-coord
//!
//! **Role.** The round protocol of a networked run (DESIGN §6) as sans-IO state machines:
//! [`Coordinator`] decides membership, data assignment, deadlines and acceptance and keeps the
//! shared state, draws spot checks and referees them; [`Trainer`] is a trainer's side (sync
//! to a state by hash, have its unit trained, commit, reveal a challenged segment, close the
//! round with the aggregate, report, follow the ledger and keep what audits it); [`Validator`]
//! re-runs the checks it is handed and follows the ledger too. All are
//! driven by events
//! with explicit time: by the simulator on a virtual clock, and by the daemons over the
//! network. [`Worker`] is the trainer's computation (H inner steps into an encoded update),
//! which the trainer's driver runs when the machine asks; [`RunSpec`] is what a run's config
//! implies (layout, initial state, outer rule, blob sizes), derived once. NoLoCo's replicas
//! ([`Replicas`]), copy and replay screening, and the verification pieces that need the model
//! (spot checks by re-execution, [`settle`] for disputes, [`score`]) live here too; [`Cheat`]
//! is for drills only.
//!
//! **Invariants.**
//! - A round's result is a pure function of the state it starts from, the assignments, and
//!   which updates were accepted. Contributions are combined in peer-id order by the run's
//!   outer algorithm (`tessera_sync::Outer`), and the coordinator and every trainer close a
//!   round with the same function ([`GlobalState::apply`]), so all honest peers reach the
//!   same state hash.
//! - A decision is emitted as [`Output::Persist`] *before* the message that announces it; a
//!   driver executes outputs in order and stops if persisting fails.
//! - A unit of work that was not accepted (peer silent, late, or its update rejected) goes to
//!   the backlog and is assigned again before fresh data: no batch is skipped, and no
//!   accepted update is ever applied twice (a round closes exactly once).
//! - Every input from a peer is checked (membership, sequence number, round, assignment,
//!   update shape and values) and refused with a typed [`Reject`], never a panic.
//! - Spot checks decide only what the coordinator re-ran or a validator's unrefuted pass
//!   says: a trainer or validator is refused only on the coordinator's own run, and a check
//!   never changes the state an honest round reaches.
//! - Clipping leaves an update within the median bound bit for bit as it was; the copy and
//!   replay thresholds are set so that no honest update is refused (every honest run in the
//!   tests checks it).
//!
//! **Must not.** Open sockets, read clocks or draw OS randomness; keep unbounded state (peers,
//! history and backlog are capped by named constants).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod answers;
mod cheat;
mod check;
mod config;
mod coordinator;
mod keep;
mod ledger_copy;
mod phase;
mod referee;
mod replicas;
mod score;
mod screen;
mod seq;
mod spec;
mod spot;
mod state;
mod trainer;
mod validator;
mod worker;

pub use answers::{
    kernel_hash, ops_per_step, recompute_step, Answered, Disputant, DisputeKey, DisputedSegment, OpInputs,
    MAX_DISPUTE_BLOB, MAX_RECORDS,
};
pub use cheat::{Cheat, CheatKind, Drill, Loot, Shirk, WRONG_SLOT};
pub use check::{
    check_segment, pick, rederivable, run_check, verify_reveal, CheckJob, Checked, Outcome, Validate,
};
pub use config::{parse_flat, RunConfig, MAX_CONFIG_TEXT, MAX_ROUND_PEERS};
pub use coordinator::{
    ClosedRound, Coordinator, Disputed, Event, Output, RecomputeJob, Record, Restored, Unit,
    DEADLINE_QUANTILE, MAX_BACKLOG, MAX_HISTORY, MAX_KNOWN_PEERS, MAX_MISSED_ROUNDS, MAX_VALIDATORS,
};
pub use ed25519_dalek::SigningKey;
pub use keep::{KeptRound, KEEP_RETRY_MS, MAX_KEEP_FETCHES, MAX_KEEP_TRIES, MAX_KEPT_ROUND};
pub use ledger_copy::{LedgerCopy, MAX_COPY_RECORDS};
pub use phase::Phase;
pub use referee::{settle, Claims, Settled};
pub use replicas::{ClosedPairs, Replicas, MAX_REPLICA_HISTORY};
pub use score::{run_score, score, Score, ScoreJob, MAX_SCORE_BATCHES, UNSEEN_SLOT};
pub use screen::{COPY_COSINE, MAX_RECENT, MAX_SEEN, REPLAY_COSINE};
pub use seq::{SeqWindow, SEQ_WINDOW};
pub use spec::{ReplayError, RunSpec};
pub use spot::{rederive_update, run_segment, LocalState};
pub use state::{GlobalState, MAX_STATE_PARAMS};
pub use tessera_ledger::DEFAULT_STAKE;
pub use tessera_verify::{Dispute, EntryHashes, Loser, Ruling};
pub use tessera_wire::{Answer, Assignment, Hash32, Message, Pairs, PeerId, Question, Signed, MAX_MEMBERS};
pub use trainer::{
    Action, Source, Trainer, TrainerConfig, TrainerError, TrainerEvent, JOIN_RETRY_MS, MAX_JOIN_ATTEMPTS,
    MAX_SOURCES,
};
pub use validator::{Behaviour, Validator, ValidatorAction, ValidatorConfig, ValidatorEvent, MAX_TASKS};
pub use worker::{Revealed, Trained, Worker, MAX_KEPT_BYTES};

/// Errors of the protocol's own computations and of bad blobs or configs.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("config: {0}")]
    Config(String),
    #[error("state blob: {0}")]
    State(String),
    #[error("not synchronized: {0}")]
    NotSynced(String),
    #[error(transparent)]
    Sync(#[from] tessera_sync::SyncError),
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    #[error(transparent)]
    Data(#[from] tessera_data::DataError),
    #[error(transparent)]
    Verify(#[from] tessera_verify::VerifyError),
}

/// Why the coordinator refused a message from a peer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    #[error("sequence number {seq} is not above {last} (replayed or reordered)")]
    Replay { seq: u64, last: u64 },
    #[error("sender is not a member (send Join first)")]
    NotMember,
    #[error("the run is full ({0} members)")]
    Full(usize),
    #[error("message for round {got}, the open round is {want:?}")]
    WrongRound { got: u64, want: Option<u64> },
    #[error("a state report for round {got}, but the run has reached only round {reached}")]
    FutureReport { got: u64, reached: u64 },
    #[error("sender has no assignment in round {0}")]
    NotAssigned(u64),
    #[error("a second, different commit for round {0} (equivocation)")]
    Equivocation(u64),
    #[error("update of {got} bytes, expected {want}")]
    BadLength { got: u64, want: u64 },
    #[error("trained from state {got}, the round starts from {want}")]
    WrongStart { got: String, want: String },
    #[error("local state hashes do not fit the algorithm: {0}")]
    LocalHashes(&'static str),
    #[error("update blob does not match its committed hash")]
    HashMismatch,
    #[error("update refused: {0}")]
    Update(tessera_sync::SyncError),
    #[error("a copy of {of}…'s update of this round")]
    Copy { of: String },
    #[error("the same values as an earlier round's update or aggregate (a replay)")]
    Replayed,
    #[error("no commit before the round closed")]
    NoCommit,
    #[error("update not fetched before the deadline")]
    NotFetched,
    #[error("update could not be fetched: {0}")]
    FetchFailed(String),
    #[error("peers may not send {0}")]
    Unexpected(&'static str),
    #[error("spot check of segment {segment} failed: {outcome}")]
    FailedCheck { segment: usize, outcome: Outcome },
    #[error("harmful: applied alone it raises the held-out loss by {:.4} nats/byte", -held_out)]
    Harmful { held_out: f64 },
    #[error("a stake of {got} is below the run's minimum of {need}")]
    Stake { got: u64, need: u64 },
    #[error("proven to have cheated in round {0}")]
    Banned(u64),
}

impl Reject {
    /// A short, stable name of the reason's kind (snake case), for metric labels and APIs:
    /// one of a fixed set, whatever a peer sent.
    pub fn kind(&self) -> &'static str {
        match self {
            Reject::Replay { .. } => "replay",
            Reject::NotMember => "not_member",
            Reject::Full(_) => "full",
            Reject::WrongRound { .. } => "wrong_round",
            Reject::FutureReport { .. } => "future_report",
            Reject::NotAssigned(_) => "not_assigned",
            Reject::Equivocation(_) => "equivocation",
            Reject::BadLength { .. } => "bad_length",
            Reject::WrongStart { .. } => "wrong_start",
            Reject::LocalHashes(_) => "local_hashes",
            Reject::HashMismatch => "hash_mismatch",
            Reject::Update(_) => "bad_update",
            Reject::Copy { .. } => "copy",
            Reject::Replayed => "replayed",
            Reject::NoCommit => "no_commit",
            Reject::NotFetched => "not_fetched",
            Reject::FetchFailed(_) => "fetch_failed",
            Reject::Unexpected(_) => "unexpected",
            Reject::FailedCheck { .. } => "failed_check",
            Reject::Harmful { .. } => "harmful",
            Reject::Stake { .. } => "stake",
            Reject::Banned(_) => "banned",
        }
    }
}

//! What a trainer or validator is doing now, as its state machine sees it: shown by a
//! node's status page and logged when it changes (`tessera node --http`). A pure reading of
//! the machine's state; it decides nothing.

/// A member's phase. The daemon adds the one phase the machine cannot see: dialling the
/// coordinator before any connection exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; `Join` sent and no `Welcome` yet.
    Joining,
    /// Holding the latest state (a trainer: the state after `round - 1` rounds, so round
    /// `round` is next) or no task (a validator, `None`): waiting for a round to start.
    Waiting { round: Option<u64> },
    /// Fetching the state of `round` it does not hold (a checkpoint, or rounds it missed).
    Syncing { round: u64 },
    /// Training its unit of `round`.
    Training { round: u64 },
    /// Fetching `round`'s aggregate or accepted updates to compute the next state.
    Closing { round: u64 },
    /// A validator re-running or scoring `tasks` updates.
    Checking { tasks: usize },
    /// The run is over for it.
    Done,
}

impl Phase {
    /// A stable lowercase name (the status API's `phase` and the metric's label).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Joining => "joining",
            Phase::Waiting { .. } => "waiting",
            Phase::Syncing { .. } => "syncing",
            Phase::Training { .. } => "training",
            Phase::Closing { .. } => "closing",
            Phase::Checking { .. } => "checking",
            Phase::Done => "done",
        }
    }

    /// Every name [`Phase::name`] gives, in a fixed order.
    pub const NAMES: [&'static str; 7] =
        ["joining", "waiting", "syncing", "training", "closing", "checking", "done"];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Joining => write!(f, "joining: waiting for the coordinator's welcome"),
            Phase::Waiting { round: Some(r) } => write!(f, "waiting for round {r} to start"),
            Phase::Waiting { round: None } => write!(f, "waiting for the next round's work"),
            Phase::Syncing { round } => {
                write!(f, "syncing: fetching the state of round {round} it does not hold")
            }
            Phase::Training { round } => write!(f, "training round {round}"),
            Phase::Closing { round } => write!(f, "closing round {round}: fetching its updates"),
            Phase::Checking { tasks } => write!(f, "checking {tasks} updates"),
            Phase::Done => write!(f, "the run is over"),
        }
    }
}

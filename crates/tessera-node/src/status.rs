//! What a trainer or validator daemon shows of itself (`tessera node --http ADDR`): a
//! [`NodeStatus`] it publishes through a `watch` channel when its phase changes and at most
//! every [`crate::view::PUBLISH_EVERY`] otherwise, which the HTTP service of `tessera-web`
//! reads. The daemon owns a [`Board`]; a reader never takes a lock of the daemon's loop. A
//! change of phase that a user should see (joining, syncing, waiting after either) is also
//! logged; the dialler logs its own attempts.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tessera_coord::{Hash32, PeerId, Phase};
use tessera_net::hex;

use crate::view::PUBLISH_EVERY;
use crate::Log;

/// Where a node's status is published (give it to `NodeOptions::publish`).
pub type StatusPublisher = Arc<tokio::sync::watch::Sender<Option<Arc<NodeStatus>>>>;

/// What the daemon is doing: the machine's [`Phase`], or dialling before any connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePhase {
    /// Trying to reach the coordinator: the attempt under way.
    Dialling {
        attempt: u32,
    },
    Member(Phase),
}

impl NodePhase {
    /// A stable lowercase name (the status API's `phase`, the metric's label).
    pub fn name(&self) -> &'static str {
        match self {
            NodePhase::Dialling { .. } => "dialling",
            NodePhase::Member(p) => p.name(),
        }
    }

    /// Every name, in a fixed order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        std::iter::once("dialling").chain(Phase::NAMES)
    }

    fn describe(&self) -> String {
        match self {
            NodePhase::Dialling { attempt } => format!("dialling the coordinator (attempt {attempt})"),
            NodePhase::Member(p) => p.to_string(),
        }
    }

    /// Whether entering this phase (from `before`) is worth a log line: dialling is logged
    /// by the dialler itself and the end by the daemon; training and closing are the steady
    /// state of every round.
    fn logged(&self, before: &NodePhase) -> bool {
        match self {
            NodePhase::Member(Phase::Joining | Phase::Syncing { .. }) => true,
            NodePhase::Member(Phase::Waiting { .. }) => matches!(
                before,
                NodePhase::Dialling { .. } | NodePhase::Member(Phase::Joining | Phase::Syncing { .. })
            ),
            _ => false,
        }
    }
}

/// A node's stake and earnings, from its verified copy of the coordinator's ledger.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Balance {
    pub stake: u64,
    pub earned: u64,
    pub slashed: u64,
    /// Still a member by the ledger (not left, not removed below the minimum stake).
    pub active: bool,
}

/// One published status of a node. Field names are the stable API of `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The node's id (hex).
    pub id: String,
    /// "trainer" or "validator".
    pub role: &'static str,
    /// See [`NodePhase::name`]; `detail` says it in words.
    pub phase: &'static str,
    pub detail: String,
    pub coordinator: String,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// Connections made to the coordinator (a reconnection counts again).
    pub connections: u64,
    /// The latest round it worked on (trained, closed or checked).
    pub round: Option<u64>,
    /// The state it holds: the rounds it reflects and its hash (hex).
    pub state_round: Option<u64>,
    pub state_hash: Option<String>,
    /// Whether its last reported state matched the coordinator's.
    pub agrees: Option<bool>,
    pub reports: u64,
    pub disagreements: u64,
    /// Updates committed (a trainer) or checks and scores run (a validator).
    pub commits: u64,
    pub checks: u64,
    /// Seconds of computation (training or checking).
    pub compute_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Entries in its verified ledger copy.
    pub ledger_len: u64,
    /// From its ledger copy; `None` before its `Joined` entry is in the copy.
    pub balance: Option<Balance>,
    pub warnings: u64,
}

impl NodeStatus {
    fn new(me: &PeerId, coordinator: &PeerId, role: &'static str) -> Self {
        let phase = NodePhase::Dialling { attempt: 1 };
        Self {
            id: hex(me),
            role,
            phase: phase.name(),
            detail: phase.describe(),
            coordinator: hex(coordinator),
            uptime_s: 0.0,
            connections: 0,
            round: None,
            state_round: None,
            state_hash: None,
            agrees: None,
            reports: 0,
            disagreements: 0,
            commits: 0,
            checks: 0,
            compute_s: 0.0,
            bytes_sent: 0,
            bytes_received: 0,
            ledger_len: 0,
            balance: None,
            warnings: 0,
        }
    }
}

/// The daemon's side: the status being kept, and where it goes.
pub struct Board {
    publish: Option<StatusPublisher>,
    now: NodeStatus,
    phase: NodePhase,
    started: Instant,
    published_at: Option<Instant>,
}

impl Board {
    pub fn new(
        publish: Option<StatusPublisher>,
        me: &PeerId,
        coordinator: &PeerId,
        role: &'static str,
    ) -> Self {
        let phase = NodePhase::Dialling { attempt: 1 };
        Self {
            publish,
            now: NodeStatus::new(me, coordinator, role),
            phase,
            started: Instant::now(),
            published_at: None,
        }
    }

    pub fn phase(&self) -> NodePhase {
        self.phase
    }

    /// Enters `p` (logging it if a user should see it) and publishes at once if it changed.
    pub fn set_phase(&mut self, p: NodePhase, log: &Log) {
        if p == self.phase {
            return;
        }
        if p.logged(&self.phase) {
            log.info(&p.describe());
        }
        self.phase = p;
        self.now.phase = p.name();
        self.now.detail = p.describe();
        assert_eq!(self.now.phase, self.phase.name(), "the published name is the phase's");
        self.publish_now();
    }

    /// Changes the status; publishes if the last publication is older than
    /// [`PUBLISH_EVERY`].
    pub fn update(&mut self, f: impl FnOnce(&mut NodeStatus)) {
        f(&mut self.now);
        if self.published_at.is_none_or(|t| t.elapsed() >= PUBLISH_EVERY) {
            self.publish_now();
        }
    }

    /// The state held and what the ledger copy says of this node.
    pub fn held(&mut self, state: Option<(u64, Hash32)>, ledger: &tessera_ledger::Ledger, me: &PeerId) {
        if self.publish.is_none() {
            return; // nobody reads it: the daemon's loop does not pay for it
        }
        let balance = ledger.accounts().get(me).map(|a| Balance {
            stake: a.stake,
            earned: a.earned(),
            slashed: a.slashed,
            active: a.active,
        });
        self.update(|s| {
            s.state_round = state.map(|x| x.0);
            s.state_hash = state.map(|x| hex(&x.1));
            s.ledger_len = ledger.head().0;
            s.balance = balance;
        });
    }

    /// Publishes the status as it is now (also at the end of the run).
    pub fn publish_now(&mut self) {
        let Some(tx) = &self.publish else { return };
        self.now.uptime_s = self.started.elapsed().as_secs_f64();
        self.published_at = Some(Instant::now());
        tx.send_replace(Some(Arc::new(self.now.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phases a user must be told about are logged, the per-round ones are not, and a
    /// change of phase is published at once (whatever the publication interval).
    #[test]
    fn a_change_of_phase_is_published_at_once_and_only_the_telling_ones_are_logged() {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let mut b = Board::new(Some(Arc::new(tx)), &[1; 32], &[2; 32], "trainer");
        let log = Log::new("test");
        let seen = |rx: &tokio::sync::watch::Receiver<Option<Arc<NodeStatus>>>| {
            rx.borrow().as_ref().map(|s| (s.phase, s.detail.clone()))
        };
        assert!(seen(&rx).is_none(), "nothing published before the first change");
        b.set_phase(NodePhase::Member(Phase::Joining), &log);
        assert_eq!(seen(&rx).map(|s| s.0), Some("joining"));
        b.set_phase(NodePhase::Member(Phase::Syncing { round: 3 }), &log);
        assert_eq!(
            seen(&rx),
            Some(("syncing", "syncing: fetching the state of round 3 it does not hold".into()))
        );
        b.set_phase(NodePhase::Member(Phase::Training { round: 3 }), &log);
        assert_eq!(seen(&rx).map(|s| s.0), Some("training"), "published within the interval too");
        let training = NodePhase::Member(Phase::Training { round: 3 });
        assert!(NodePhase::Member(Phase::Syncing { round: 4 }).logged(&training));
        assert!(!NodePhase::Member(Phase::Closing { round: 3 }).logged(&training));
        assert!(!NodePhase::Member(Phase::Waiting { round: Some(4) }).logged(&training));
        assert!(!NodePhase::Member(Phase::Done).logged(&training), "the daemon logs the end itself");
        let joining = NodePhase::Member(Phase::Joining);
        assert!(NodePhase::Member(Phase::Waiting { round: Some(4) }).logged(&joining));
        let names: Vec<_> = NodePhase::names().collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains(&b.phase().name()));
    }
}

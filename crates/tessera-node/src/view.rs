//! What the coordinator daemon shows of its run: a [`Snapshot`] it publishes every
//! [`PUBLISH_EVERY`] (and when the run ends), which the HTTP service (`tessera-web`) reads.
//! The daemon feeds a [`Dash`] the outputs it executes (events and records); the service
//! only ever reads published snapshots, so no request takes a lock of the protocol or waits
//! on its event loop. Everything kept is bounded ([`MAX_VIEW_ROUNDS`] and friends), and a
//! snapshot is cheap to clone: history lives in shared chunks ([`Chunked`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tessera_coord::{ClosedRound, Coordinator, Event, Hash32, Output, PeerId, Record};
use tessera_net::hex;

/// How often the daemon publishes a snapshot while the run changes.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Closed rounds kept in the view (the oldest are dropped past it).
pub const MAX_VIEW_ROUNDS: usize = 100_000;
/// Checks and disputes kept in the view.
pub const MAX_VIEW_CHECKS: usize = 100_000;
/// Ledger entries kept in the view (`tessera ledger` reads the whole log from the store).
pub const MAX_VIEW_LEDGER: usize = 1_000_000;
/// Items per shared chunk of a [`Chunked`] history.
const CHUNK: usize = 256;

/// An append-only history numbered from 0, held in shared chunks: a clone copies at most
/// one chunk's items, whatever its length. Past `cap` items the oldest chunk is dropped
/// (its numbers are not reused).
#[derive(Debug, Clone)]
pub struct Chunked<T> {
    /// The number of the first item kept.
    start: u64,
    full: VecDeque<Arc<[T]>>,
    tail: Vec<T>,
    cap: usize,
}

impl<T: Clone> Chunked<T> {
    pub fn new(cap: usize) -> Self {
        assert!(cap >= CHUNK, "a history keeps at least one chunk");
        Self { start: 0, full: VecDeque::new(), tail: Vec::new(), cap }
    }

    pub fn push(&mut self, t: T) {
        self.tail.push(t);
        if self.tail.len() == CHUNK {
            self.full.push_back(std::mem::take(&mut self.tail).into());
        }
        while self.full.len() * CHUNK + self.tail.len() > self.cap {
            let dropped = self.full.pop_front().expect("over the cap means a full chunk");
            self.start += dropped.len() as u64;
        }
        assert!(self.full.iter().all(|c| c.len() == CHUNK), "only whole chunks are shared");
    }

    /// One past the number of the last item pushed.
    pub fn end(&self) -> u64 {
        self.start + (self.full.len() * CHUNK + self.tail.len()) as u64
    }

    /// The number of the first item still kept.
    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.full.iter().flat_map(|c| c.iter()).chain(self.tail.iter())
    }

    /// Up to `limit` items numbered `from` on (or from the first kept), with their numbers.
    pub fn range(&self, from: u64, limit: usize) -> Vec<(u64, T)> {
        let skip = from.saturating_sub(self.start);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        let first = self.start.saturating_add(skip as u64);
        let got: Vec<(u64, T)> = self
            .iter()
            .skip(skip)
            .take(limit)
            .enumerate()
            .map(|(i, t)| (first + i as u64, t.clone()))
            .collect();
        assert!(got.len() <= limit, "a range is bounded by its limit");
        got
    }
}

/// The run as a whole.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunInfo {
    pub algorithm: String,
    pub preset: String,
    /// Rounds the run is set to, and the round reached (rounds closed).
    pub rounds: u64,
    pub round: u64,
    pub finished: bool,
    /// The shared state after the last closed round (NoLoCo: the replicas' consensus).
    pub state_hash: String,
    /// The ledger's record count and last record's hash (absent without a ledger).
    pub ledger_entries: Option<u64>,
    pub ledger_head: Option<String>,
    pub members: usize,
    pub validators: usize,
    /// The open round's start and deadline, in ms since the coordinator started.
    pub open_round: Option<OpenRound>,
    /// Milliseconds since the coordinator started (the clock of every `_ms` field).
    pub uptime_ms: u64,
    /// The coordinator's own bytes, sent and received.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The run config, as TOML.
    pub config: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpenRound {
    pub round: u64,
    pub started_ms: u64,
    pub deadline_ms: u64,
}

/// One trainer or validator.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerView {
    pub id: String,
    /// `trainer` or `validator`.
    pub role: &'static str,
    /// `active`, `banned` (proven to have cheated) or `left`.
    pub state: &'static str,
    /// Rounds whose close accepted its update.
    pub rounds_delivered: u64,
    /// What one of its rounds takes, as learned from its commits (ms).
    pub speed_ms: Option<f64>,
    pub last_seen_ms: Option<u64>,
    /// Its account in the ledger (absent without a ledger): stake left, earned, slashed.
    pub stake: Option<u64>,
    pub balance: Option<u64>,
    pub slashed: Option<u64>,
}

/// One closed round.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoundView {
    pub round: u64,
    pub started_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    /// `None` for a round closed before the coordinator's last start (its times were on
    /// another process's clock; the dashboard reads it back from the store).
    pub closed_ms: Option<u64>,
    pub accepted: Vec<AcceptedView>,
    pub rejected: Vec<RejectedView>,
    /// Bytes of the accepted updates, and what DDP would have moved for the same work: one
    /// dense f32 gradient per inner step from each accepted trainer.
    pub update_bytes: u64,
    pub ddp_bytes: u64,
    /// The accepted trainers' mean training loss, as they reported it.
    pub train_loss: Option<f64>,
    pub state_hash: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AcceptedView {
    pub peer: String,
    pub update: String,
    pub bytes: Option<u64>,
    pub loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RejectedView {
    pub peer: String,
    /// A stable name of the reason's kind (`Reject::kind`), and the reason in words.
    pub kind: &'static str,
    pub reason: String,
}

/// A validation loss of the shared model after `round` rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalView {
    pub round: u64,
    pub at_ms: u64,
    pub loss: f64,
}

/// A settled spot check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckView {
    pub round: u64,
    pub peer: String,
    pub segment: usize,
    pub passed: bool,
    pub outcome: String,
    /// The validator whose finding stands (absent: the coordinator checked).
    pub by: Option<String>,
}

/// A decided dispute, with the (step, operator) it was narrowed to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DisputeView {
    pub round: u64,
    pub trainer: String,
    pub validator: String,
    /// `trainer`, `validator` or `both`.
    pub loser: &'static str,
    pub step: u64,
    pub op: Option<u64>,
    pub kernel: Option<String>,
    pub forfeit: bool,
    pub exchanges: u32,
    pub bytes: u64,
}

/// One ledger entry, summarised.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LedgerView {
    pub seq: u64,
    pub kind: &'static str,
    pub round: Option<u64>,
    pub peer: Option<String>,
    pub amount: Option<u64>,
    pub hash: String,
}

/// Running totals (what `/metrics` exports).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counters {
    pub accepted: u64,
    /// Updates left out of a close, by [`tessera_coord::Reject::kind`].
    pub rejected: BTreeMap<&'static str, u64>,
    /// Frames refused before a close (not members, replays, wrong rounds…), by kind.
    pub refused: BTreeMap<&'static str, u64>,
    pub checks: u64,
    pub checks_failed: u64,
    pub disputes: u64,
    pub slashes: u64,
    pub slashed_amount: u64,
    pub rewarded_amount: u64,
    pub update_bytes: u64,
    pub ddp_bytes: u64,
}

/// What one publication shows.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub run: RunInfo,
    pub peers: Vec<PeerView>,
    #[serde(skip)]
    pub rounds: Chunked<RoundView>,
    #[serde(skip)]
    pub evals: Chunked<EvalView>,
    #[serde(skip)]
    pub checks: Chunked<CheckView>,
    #[serde(skip)]
    pub disputes: Chunked<DisputeView>,
    #[serde(skip)]
    pub ledger: Chunked<LedgerView>,
    pub counters: Counters,
}

/// The daemon's accumulator of what it has seen, turned into a [`Snapshot`] on publication.
pub struct Dash {
    snap: Snapshot,
    /// The open round's commits the coordinator took: peer → (update length, reported
    /// loss); at most one per assigned member, cleared at the close.
    commits: BTreeMap<PeerId, (u64, Option<f64>)>,
    /// The open round: its number, start and deadline.
    opened: Option<(u64, u64, u64)>,
    delivered: BTreeMap<PeerId, u64>,
    left: std::collections::BTreeSet<PeerId>,
    /// The open close's left-out updates (its `LeftOut` events come just before its record).
    pending_rejected: Vec<RejectedView>,
    /// The flat parameter count and inner steps per round (for the DDP equivalent).
    n: u64,
    h: u64,
    dirty: bool,
}

impl Dash {
    /// A dash of `coord`, whose ledger so far is `ledger` (from the store).
    pub fn new(coord: &Coordinator, ledger: &[tessera_ledger::Record]) -> Self {
        let cfg = coord.config();
        let run = RunInfo {
            algorithm: cfg.algo.to_string(),
            preset: cfg.preset.clone(),
            rounds: cfg.rounds,
            round: coord.round(),
            finished: coord.is_finished(),
            state_hash: hex(&coord.state_hash()),
            ledger_entries: None,
            ledger_head: None,
            members: 0,
            validators: 0,
            open_round: None,
            uptime_ms: 0,
            bytes_sent: 0,
            bytes_received: 0,
            config: cfg.to_toml(),
        };
        let snap = Snapshot {
            run,
            peers: Vec::new(),
            rounds: Chunked::new(MAX_VIEW_ROUNDS),
            evals: Chunked::new(MAX_VIEW_ROUNDS),
            checks: Chunked::new(MAX_VIEW_CHECKS),
            disputes: Chunked::new(MAX_VIEW_CHECKS),
            ledger: Chunked::new(MAX_VIEW_LEDGER),
            counters: Counters::default(),
        };
        let (n, h) = (coord.spec().n() as u64, cfg.h());
        let mut d = Self {
            snap,
            commits: BTreeMap::new(),
            opened: None,
            delivered: BTreeMap::new(),
            left: Default::default(),
            pending_rejected: Vec::new(),
            n,
            h,
            dirty: true,
        };
        d.ledger(ledger);
        d
    }

    /// An output of the state machine, as the daemon executes it.
    pub fn output(&mut self, now_ms: u64, o: &Output) {
        match o {
            Output::Persist(rec @ Record::RoundClosed { round, accept, state_hash, .. }) => {
                self.closed(now_ms, *round, accept, state_hash);
                self.ledger(rec.ledger_records());
            }
            Output::Persist(rec @ Record::Ledger(_)) => self.ledger(rec.ledger_records()),
            Output::Event(e) => self.event(e),
            _ => return,
        }
        self.dirty = true;
    }

    /// Takes in what the store holds of the run before this process started (the rounds'
    /// times are unknown: `started_ms`, `deadline_ms` and `closed_ms` are `None`; the
    /// rejections' reasons are known in words only: kind `recorded`). `blob_len` gives a
    /// stored update's length, if it is still kept.
    pub fn restore(&mut self, h: &crate::store::History, blob_len: impl Fn(&Hash32) -> Option<u64>) {
        assert!(self.snap.rounds.end() == 0, "the past is taken in before any round closes");
        for r in &h.rounds {
            let Some(ClosedRound { accepted: peers, updates, rejected, .. }) = ClosedRound::of(&r.accept)
            else {
                continue;
            };
            let accepted: Vec<AcceptedView> = peers
                .iter()
                .zip(&updates)
                .map(|(p, u)| AcceptedView { peer: hex(p), update: hex(u), bytes: blob_len(u), loss: None })
                .collect();
            for p in &peers {
                *self.delivered.entry(*p).or_default() += 1;
            }
            let rejected = rejected
                .into_iter()
                .take(tessera_wire::MAX_MEMBERS)
                .map(|(p, reason)| RejectedView { peer: hex(&p), kind: "recorded", reason })
                .collect();
            let view = RoundView {
                round: r.round,
                started_ms: None,
                deadline_ms: None,
                closed_ms: None,
                update_bytes: accepted.iter().filter_map(|a| a.bytes).sum(),
                accepted,
                rejected,
                ddp_bytes: self.ddp_bytes(peers.len()),
                train_loss: None,
                state_hash: hex(&r.state_hash),
            };
            self.snap.rounds.push(view);
        }
        for &(round, at_ms, loss) in &h.evals {
            self.snap.evals.push(EvalView { round, at_ms, loss });
        }
        for c in &h.checks {
            self.snap.checks.push(CheckView {
                round: c.round,
                peer: hex(&c.peer),
                segment: c.segment,
                passed: c.passed,
                outcome: c.outcome.clone(),
                by: c.by.map(|v| hex(&v)),
            });
        }
        for d in &h.disputes {
            let loser = match d.loser.as_str() {
                "trainer" => "trainer",
                "validator" => "validator",
                _ => "both",
            };
            self.snap.disputes.push(DisputeView {
                round: d.round,
                trainer: hex(&d.trainer),
                validator: hex(&d.validator),
                loser,
                step: d.step,
                op: d.op,
                kernel: d.kernel.clone(),
                forfeit: d.forfeit,
                exchanges: d.exchanges,
                bytes: d.bytes,
            });
        }
        self.dirty = true;
    }

    /// What DDP would move for `accepted` trainers' steps of a round: one dense f32 gradient
    /// per inner step each.
    fn ddp_bytes(&self, accepted: usize) -> u64 {
        (accepted as u64).saturating_mul(self.h).saturating_mul(self.n * 4)
    }

    /// A validation loss of the shared model after `round` rounds.
    pub fn eval(&mut self, round: u64, at_ms: u64, loss: f64) {
        self.snap.evals.push(EvalView { round, at_ms, loss });
        self.dirty = true;
    }

    fn closed(&mut self, now_ms: u64, round: u64, accept: &tessera_wire::Message, state_hash: &Hash32) {
        let Some(ClosedRound { accepted, updates, .. }) = ClosedRound::of(accept) else { return };
        // A round reopened after a restart was not seen opening: it has no start here.
        let window = self.opened.take().filter(|o| o.0 == round);
        let mut view = RoundView {
            round,
            started_ms: window.map(|o| o.1),
            deadline_ms: window.map(|o| o.2),
            closed_ms: Some(now_ms),
            accepted: Vec::with_capacity(accepted.len()),
            rejected: Vec::new(),
            update_bytes: 0,
            ddp_bytes: self.ddp_bytes(accepted.len()),
            train_loss: None,
            state_hash: hex(state_hash),
        };
        for (p, u) in accepted.iter().zip(&updates) {
            let (bytes, loss) = self.commits.get(p).map_or((None, None), |c| (Some(c.0), c.1));
            view.update_bytes += bytes.unwrap_or(0);
            view.accepted.push(AcceptedView { peer: hex(p), update: hex(u), bytes, loss });
            *self.delivered.entry(*p).or_default() += 1;
        }
        let losses: Vec<f64> = view.accepted.iter().filter_map(|a| a.loss).collect();
        view.train_loss = (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
        // The typed reasons came in as `LeftOut` events just before this record.
        view.rejected = std::mem::take(&mut self.pending_rejected);
        let c = &mut self.snap.counters;
        c.accepted += accepted.len() as u64;
        c.update_bytes += view.update_bytes;
        c.ddp_bytes += view.ddp_bytes;
        self.commits.clear();
        self.snap.rounds.push(view);
    }

    fn event(&mut self, e: &Event) {
        let c = &mut self.snap.counters;
        match e {
            Event::Opened { round, started_ms, deadline_ms } => {
                self.opened = Some((*round, *started_ms, *deadline_ms));
                self.commits.clear();
            }
            Event::Committed { peer, bytes, loss_milli, .. } => {
                let loss = (*loss_milli != u32::MAX).then(|| f64::from(*loss_milli) / 1000.0);
                self.commits.insert(*peer, (*bytes, loss));
            }
            Event::LeftOut { peer, reason, .. } => {
                *c.rejected.entry(reason.kind()).or_default() += 1;
                if self.pending_rejected.len() < tessera_wire::MAX_MEMBERS {
                    let v = RejectedView { peer: hex(peer), kind: reason.kind(), reason: reason.to_string() };
                    self.pending_rejected.push(v);
                }
            }
            Event::Rejected { reason, .. } => *c.refused.entry(reason.kind()).or_default() += 1,
            Event::Checked { round, peer, segment, outcome, by } => {
                c.checks += 1;
                c.checks_failed += u64::from(!outcome.passed());
                self.snap.checks.push(CheckView {
                    round: *round,
                    peer: hex(peer),
                    segment: *segment,
                    passed: outcome.passed(),
                    outcome: outcome.to_string(),
                    by: by.map(|v| hex(&v)),
                });
            }
            Event::Disputed(d) => {
                c.disputes += 1;
                let loser = match d.ruling.loser {
                    tessera_verify::Loser::Trainer => "trainer",
                    tessera_verify::Loser::Validator => "validator",
                    tessera_verify::Loser::Both => "both",
                };
                self.snap.disputes.push(DisputeView {
                    round: d.round,
                    trainer: hex(&d.trainer),
                    validator: hex(&d.validator),
                    loser,
                    step: d.ruling.step,
                    op: d.ruling.op,
                    kernel: d.kernel.map(str::to_string),
                    forfeit: d.forfeit,
                    exchanges: d.exchanges,
                    bytes: d.bytes,
                });
            }
            Event::Left(p) if self.left.len() < crate::limits::MAX_LEFT_SHOWN => {
                self.left.insert(*p);
            }
            Event::Joined(p) => {
                self.left.remove(p);
            }
            _ => {}
        }
    }

    /// Takes in ledger records as they are persisted (in order).
    fn ledger(&mut self, records: &[tessera_ledger::Record]) {
        for r in records {
            assert!(r.seq >= self.snap.ledger.end(), "ledger records come in order, once");
            let c = &mut self.snap.counters;
            match &r.entry {
                tessera_ledger::Entry::Slashed { amount, .. } => {
                    c.slashes += 1;
                    c.slashed_amount = c.slashed_amount.saturating_add(*amount);
                }
                tessera_ledger::Entry::Rewarded { amount, .. } => {
                    c.rewarded_amount = c.rewarded_amount.saturating_add(*amount)
                }
                _ => {}
            }
            self.snap.ledger.push(ledger_view(r));
        }
    }

    /// The snapshot to publish, if anything changed since the last one (`force`: in any
    /// case). `traffic`: the coordinator's bytes sent and received.
    pub fn snapshot(
        &mut self,
        coord: &Coordinator,
        now_ms: u64,
        traffic: (u64, u64),
        force: bool,
    ) -> Option<Snapshot> {
        if !self.dirty && !force {
            return None;
        }
        self.dirty = false;
        let run = &mut self.snap.run;
        run.round = coord.round();
        run.finished = coord.is_finished();
        run.state_hash = hex(&coord.state_hash());
        let head = coord.ledger_head();
        run.ledger_entries = head.map(|h| h.0);
        run.ledger_head = head.map(|h| hex(&h.1));
        run.members = coord.members().count();
        run.validators = coord.validators().count();
        run.open_round = coord.open_window().map(|(s, d)| OpenRound {
            round: coord.round(),
            started_ms: s,
            deadline_ms: d,
        });
        run.uptime_ms = now_ms;
        (run.bytes_sent, run.bytes_received) = traffic;
        self.snap.peers = self.peers(coord, now_ms);
        Some(self.snap.clone())
    }

    fn peers(&self, coord: &Coordinator, now_ms: u64) -> Vec<PeerView> {
        let banned: BTreeMap<&PeerId, &u64> = coord.banned().collect();
        let trainers = coord.members().map(|p| (*p, "trainer"));
        let validators = coord.validators().map(|p| (*p, "validator"));
        let gone = self.left.iter().chain(banned.keys().copied()).map(|p| (*p, "trainer"));
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for (p, role) in trainers.chain(validators).chain(gone) {
            if !seen.insert(p) || out.len() >= crate::limits::MAX_PEERS_SHOWN {
                continue;
            }
            let account = coord.accounts().and_then(|a| a.get(&p));
            let state = match (banned.contains_key(&p), coord.has_joined(&p)) {
                (true, _) => "banned",
                (false, true) => "active",
                (false, false) => "left",
            };
            out.push(PeerView {
                id: hex(&p),
                role: if account.is_some_and(|a| a.validator) { "validator" } else { role },
                state,
                rounds_delivered: self.delivered.get(&p).copied().unwrap_or(0),
                speed_ms: coord.speed_ms(&p),
                last_seen_ms: coord.last_heard(&p).map(|t| now_ms.saturating_sub(t)),
                stake: account.map(|a| a.stake),
                balance: account.map(|a| a.earned()),
                slashed: account.map(|a| a.slashed),
            });
        }
        out
    }
}

/// One ledger record, summarised for the view.
fn ledger_view(r: &tessera_ledger::Record) -> LedgerView {
    use tessera_ledger::Entry as E;
    let (round, peer, amount) = match &r.entry {
        E::RunCreated { .. } => (None, None, None),
        E::Joined { peer, stake, .. } => (None, Some(peer), Some(*stake)),
        E::RoundClosed { round, .. } => (Some(*round), None, None),
        E::Verdict { round, peer, .. } => (Some(*round), Some(peer), None),
        E::DisputeOpened { round, trainer, .. } | E::DisputeResolved { round, trainer, .. } => {
            (Some(*round), Some(trainer), None)
        }
        E::Rewarded { round, peer, amount } | E::Slashed { round, peer, amount, .. } => {
            (Some(*round), Some(peer), Some(*amount))
        }
        E::Left { peer } => (None, Some(peer), None),
        E::Weights { round, validator, .. } => (Some(*round), Some(validator), None),
    };
    LedgerView {
        seq: r.seq,
        kind: r.entry.kind(),
        round,
        peer: peer.map(|p| hex(p)),
        amount,
        hash: hex(&r.hash()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items keep their numbers, pages start where asked and stop at their limit, and past
    /// the cap the oldest chunk goes while the numbers run on.
    #[test]
    fn a_chunked_history_numbers_pages_and_drops_its_oldest_chunk() {
        let mut h = Chunked::new(2 * CHUNK);
        for i in 0..(3 * CHUNK as u64 + 5) {
            h.push(i);
        }
        // 3 chunks and 5 over a cap of 2 chunks: the two oldest go, so at most the cap is kept.
        let first = 2 * CHUNK as u64;
        assert_eq!((h.start(), h.end()), (first, 3 * CHUNK as u64 + 5), "the oldest chunks were dropped");
        assert_eq!(h.range(0, 2), vec![(first, first), (first + 1, first + 1)]);
        let tail = h.range(3 * CHUNK as u64 + 3, 10);
        assert_eq!(
            tail,
            vec![(3 * CHUNK as u64 + 3, 3 * CHUNK as u64 + 3), (3 * CHUNK as u64 + 4, 3 * CHUNK as u64 + 4)]
        );
        assert!(h.range(u64::MAX, 10).is_empty());
        assert_eq!(h.iter().count(), CHUNK + 5);
        // A clone shares the full chunks.
        let c = h.clone();
        assert!(Arc::ptr_eq(&c.full[0], &h.full[0]));
    }
}

//! The JSON API: typed pages over the latest published snapshot. Field names are stable:
//! they are the serde names of `tessera_node::view`'s types and of the pages here.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tessera_node::view::{CheckView, DisputeView, EvalView, LedgerView, PeerView, RoundView, Snapshot};

use crate::{Published, MAX_PAGE};

/// `?from=N&limit=L`: items numbered `from` on (rounds: round numbers), at most `limit`
/// (and never more than [`MAX_PAGE`]).
#[derive(Debug, Deserialize)]
pub struct Page {
    from: Option<u64>,
    limit: Option<usize>,
}

impl Page {
    fn bounds(&self) -> (u64, usize) {
        (self.from.unwrap_or(0), self.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE))
    }
}

#[derive(Debug, Serialize)]
pub struct PeersPage {
    pub peers: Vec<PeerView>,
}

/// A round with the validation loss of the state it reached (when one was evaluated).
#[derive(Debug, Serialize)]
pub struct RoundWithEval {
    #[serde(flatten)]
    pub round: RoundView,
    pub val_loss: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct RoundsPage {
    /// The round to ask for next (`from` of the following page).
    pub next: u64,
    pub rounds: Vec<RoundWithEval>,
    /// Every validation loss recorded (round, ms, loss), the round-0 one included.
    pub evals: Vec<EvalView>,
}

#[derive(Debug, Serialize)]
pub struct VerificationPage {
    /// The check and dispute numbers to ask for next.
    pub next_check: u64,
    pub next_dispute: u64,
    pub checks: Vec<CheckView>,
    pub disputes: Vec<DisputeView>,
}

#[derive(Debug, Serialize)]
pub struct LedgerPage {
    pub next: u64,
    pub entries: Vec<LedgerView>,
}

#[derive(Debug, Serialize)]
struct ApiError {
    error: String,
}

/// Why a request got no page.
#[derive(Debug, thiserror::Error)]
pub enum ApiFault {
    #[error("the coordinator has published nothing yet")]
    NothingYet,
    #[error("{0}")]
    BadQuery(String),
}

impl IntoResponse for ApiFault {
    fn into_response(self) -> Response {
        let code = match self {
            ApiFault::NothingYet => StatusCode::SERVICE_UNAVAILABLE,
            ApiFault::BadQuery(_) => StatusCode::BAD_REQUEST,
        };
        (code, Json(ApiError { error: self.to_string() })).into_response()
    }
}

/// The latest snapshot, or none yet.
fn latest(p: &Published) -> Result<Arc<Snapshot>, ApiFault> {
    let s = p.borrow().clone(); // an Arc's clone: the sender never waits on this
    s.ok_or(ApiFault::NothingYet)
}

fn page(q: Result<Query<Page>, QueryRejection>) -> Result<(u64, usize), ApiFault> {
    q.map(|Query(p)| p.bounds()).map_err(|e| ApiFault::BadQuery(e.body_text()))
}

fn answer<T: Serialize>(got: Result<T, ApiFault>) -> Response {
    match got {
        Ok(t) => ([(header::CACHE_CONTROL, "no-store")], Json(t)).into_response(),
        Err(f) => f.into_response(),
    }
}

pub async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(include_str!("../assets/index.html")))
}

pub async fn run(State(p): State<Published>) -> Response {
    answer(latest(&p).map(|s| s.run.clone()))
}

pub async fn peers(State(p): State<Published>) -> Response {
    answer(latest(&p).map(|s| PeersPage { peers: s.peers.clone() }))
}

pub async fn rounds(State(p): State<Published>, q: Result<Query<Page>, QueryRejection>) -> Response {
    answer(page(q).and_then(|(from, limit)| {
        let s = latest(&p)?;
        let evals: Vec<EvalView> = s.evals.iter().cloned().collect();
        let by_round: BTreeMap<u64, f64> = evals.iter().map(|e| (e.round, e.loss)).collect();
        // Rounds close in order, so the first at or after `from` starts the page.
        let rounds: Vec<RoundWithEval> = s
            .rounds
            .iter()
            .skip_while(|r| r.round < from)
            .take(limit)
            .map(|r| RoundWithEval { round: r.clone(), val_loss: by_round.get(&(r.round + 1)).copied() })
            .collect();
        let next = rounds.last().map_or(from, |r| r.round.round + 1);
        Ok(RoundsPage { next, rounds, evals })
    }))
}

pub async fn verification(State(p): State<Published>, q: Result<Query<Page>, QueryRejection>) -> Response {
    answer(page(q).and_then(|(from, limit)| {
        let s = latest(&p)?;
        let checks = s.checks.range(from, limit);
        let disputes = s.disputes.range(from, limit);
        Ok(VerificationPage {
            next_check: checks.last().map_or(from.max(s.checks.start()), |c| c.0 + 1),
            next_dispute: disputes.last().map_or(from.max(s.disputes.start()), |d| d.0 + 1),
            checks: checks.into_iter().map(|c| c.1).collect(),
            disputes: disputes.into_iter().map(|d| d.1).collect(),
        })
    }))
}

pub async fn ledger(State(p): State<Published>, q: Result<Query<Page>, QueryRejection>) -> Response {
    answer(page(q).and_then(|(from, limit)| {
        let s = latest(&p)?;
        let entries = s.ledger.range(from, limit);
        let next = entries.last().map_or(from.max(s.ledger.start()), |e| e.0 + 1);
        Ok(LedgerPage { next, entries: entries.into_iter().map(|e| e.1).collect() })
    }))
}

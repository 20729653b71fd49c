//! A node's own HTTP service (`tessera node --http ADDR`): its status as JSON at
//! `/api/status`, the same in the Prometheus text format at `/metrics`, and a small page at
//! `/` that shows it. It reads only what the node daemon publishes
//! (`tessera_node::status`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_node::status::{NodePhase, NodeStatus};
use tokio::sync::watch;

use crate::metrics::{answer, counter, gauge, text};

/// The statuses being served.
pub type NodePublished = watch::Receiver<Option<Arc<NodeStatus>>>;

const PAGE: &str = include_str!("../assets/node.html");
const NOTHING: &str = "the node has published nothing yet";

pub async fn index() -> Html<&'static str> {
    Html(PAGE)
}

pub async fn status(State(p): State<NodePublished>) -> Response {
    let s = p.borrow().clone();
    match s {
        Some(s) => Json(s.as_ref().clone()).into_response(),
        None => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": NOTHING }))).into_response()
        }
    }
}

/// The metrics of `s`, in the Prometheus text format.
pub fn encode(s: &NodeStatus) -> String {
    let mut r = Registry::with_prefix("tessera_node");
    let phases = Family::<Vec<(String, String)>, Gauge>::default();
    for name in NodePhase::names() {
        phases.get_or_create(&vec![("phase".into(), name.into())]).set(i64::from(name == s.phase));
    }
    r.register("phase", "1 for the phase the node is in", phases);
    // What is not known yet is left out rather than given as NaN.
    if let Some(v) = s.round {
        gauge(&mut r, "round", "The latest round it worked on", v as f64);
    }
    if let Some(v) = s.state_round {
        gauge(&mut r, "state_round", "Rounds the state it holds reflects", v as f64);
    }
    if let Some(a) = s.agrees {
        gauge(
            &mut r,
            "agrees",
            "1 if its last state report matched the coordinator's",
            f64::from(u8::from(a)),
        );
    }
    counter(&mut r, "connections", "Connections made to the coordinator", s.connections);
    counter(&mut r, "reports", "State reports sent", s.reports);
    counter(&mut r, "disagreements", "State reports that differed from the coordinator's", s.disagreements);
    counter(&mut r, "commits", "Updates committed", s.commits);
    counter(&mut r, "checks", "Checks and scores run (a validator)", s.checks);
    gauge(&mut r, "compute_seconds", "Seconds spent training or checking", s.compute_s);
    counter(&mut r, "bytes_sent", "Bytes the node sent", s.bytes_sent);
    counter(&mut r, "bytes_received", "Bytes the node received", s.bytes_received);
    counter(&mut r, "ledger_entries", "Entries in its verified ledger copy", s.ledger_len);
    counter(&mut r, "warnings", "Warnings logged", s.warnings);
    if let Some(b) = &s.balance {
        gauge(&mut r, "stake", "Its stake by its ledger copy", b.stake as f64);
        gauge(&mut r, "earned", "What it earned by its ledger copy", b.earned as f64);
        gauge(&mut r, "slashed", "What it was slashed by its ledger copy", b.slashed as f64);
    }
    text(&r)
}

pub async fn metrics(State(p): State<NodePublished>) -> Response {
    let latest = p.borrow().clone();
    answer(latest, encode, NOTHING)
}

//! `/metrics` in the Prometheus text format, through `prometheus-client`: a registry built
//! from the latest snapshot on each scrape (the snapshot's totals only grow while the
//! coordinator runs, so the counters are counters).

use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode as encode_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tessera_node::view::Snapshot;

use crate::Published;

/// The content type of the text format.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

pub(crate) fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

pub(crate) fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(v);
    r.register(name, help, g);
}

fn by_reason(
    r: &mut Registry,
    name: &str,
    help: &str,
    counts: &std::collections::BTreeMap<&'static str, u64>,
) {
    let f = Family::<Labels, Counter>::default();
    for (kind, n) in counts {
        f.get_or_create(&vec![("reason".to_string(), kind.to_string())]).inc_by(*n);
    }
    r.register(name, help, f);
}

/// The metrics of `s`, in the Prometheus text format.
pub fn encode(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("tessera");
    let (run, c) = (&s.run, &s.counters);
    counter(&mut r, "rounds", "Rounds closed", run.round);
    gauge(&mut r, "members", "Trainers in the run", run.members as f64);
    gauge(&mut r, "validators", "Validators in the run", run.validators as f64);
    counter(&mut r, "updates_accepted", "Updates accepted into a round's close", c.accepted);
    by_reason(&mut r, "updates_rejected", "Updates left out of a round's close, by reason", &c.rejected);
    by_reason(&mut r, "frames_refused", "Messages refused before a close, by reason", &c.refused);
    counter(&mut r, "bytes_sent", "Bytes the coordinator sent", run.bytes_sent);
    counter(&mut r, "bytes_received", "Bytes the coordinator received", run.bytes_received);
    counter(&mut r, "update_bytes", "Bytes of the accepted updates", c.update_bytes);
    counter(&mut r, "ddp_equivalent_bytes", "What DDP would have moved for the same work", c.ddp_bytes);
    let took = Histogram::new(exponential_buckets(0.05, 2.0, 14));
    let allotted = Histogram::new(exponential_buckets(0.05, 2.0, 14));
    for round in s.rounds.iter() {
        if let (Some(start), Some(deadline), Some(closed)) =
            (round.started_ms, round.deadline_ms, round.closed_ms)
        {
            took.observe(closed.saturating_sub(start) as f64 / 1000.0);
            allotted.observe(deadline.saturating_sub(start) as f64 / 1000.0);
        }
    }
    r.register("round_duration_seconds", "Time from a round's start to its close", took);
    r.register("round_deadline_seconds", "Time a round's deadline allotted", allotted);
    if let Some(e) = s.evals.iter().last() {
        gauge(&mut r, "validation_loss", "Validation loss of the shared model (nats/byte)", e.loss);
    }
    if let Some(l) = s.rounds.iter().last().and_then(|r| r.train_loss) {
        gauge(&mut r, "train_loss", "Mean training loss the last round's trainers reported", l);
    }
    counter(&mut r, "checks", "Spot checks settled", c.checks);
    counter(&mut r, "checks_failed", "Spot checks that failed", c.checks_failed);
    counter(&mut r, "disputes", "Disputes decided", c.disputes);
    counter(&mut r, "slashes", "Stakes slashed", c.slashes);
    counter(&mut r, "slashed_amount", "Stake slashed in all", c.slashed_amount);
    counter(&mut r, "rewarded_amount", "Rewards paid in all", c.rewarded_amount);
    text(&r)
}

/// A registry in the text format.
pub(crate) fn text(r: &Registry) -> String {
    let mut out = String::new();
    encode_text(&mut out, r).expect("writing to a String does not fail");
    assert!(out.ends_with("# EOF\n"), "the text format ends with its EOF marker");
    out
}

/// The metrics of the latest published `T`, or 503 saying `nothing` before the first.
pub(crate) fn answer<T>(
    latest: Option<std::sync::Arc<T>>,
    encode: fn(&T) -> String,
    nothing: &str,
) -> Response {
    match latest {
        Some(s) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(&s)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, format!("{nothing}\n")).into_response(),
    }
}

pub async fn metrics(State(p): State<Published>) -> Response {
    let latest = p.borrow().clone();
    answer(latest, encode, "the coordinator has published nothing yet")
}

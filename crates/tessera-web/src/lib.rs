//! The coordinator's HTTP service (`tessera coordinator --http ADDR`): a read-only JSON API,
//! a live single-page dashboard and Prometheus metrics, over the snapshots the coordinator
//! daemon publishes (`tessera_node::view`); and a node's own (`tessera node --http ADDR`):
//! its status, its metrics and a small page, over what the node publishes
//! (`tessera_node::status`).
//!
//! Invariants: it only reads published snapshots (a `watch` channel), so no request takes a
//! lock of the protocol or waits on its event loop; it answers GET only (anything else is
//! 405); connections are capped at [`MAX_CONNECTIONS`] ([`MAX_PER_ADDRESS`] from one
//! address, each closed after [`IDLE_TIMEOUT`] idle) and requests in flight at
//! [`MAX_IN_FLIGHT`]; bodies are refused past [`MAX_BODY`] bytes; pages of history are at most
//! [`MAX_PAGE`] items. It must not: change the run, open other sockets, or fetch anything at
//! run time (the dashboard's script and styles are embedded in the binary).

mod api;
mod limit;
mod metrics;
mod node;

use std::net::SocketAddr;
use std::sync::Arc;

use tessera_node::coordinator::Publisher;
use tessera_node::view::Snapshot;
use tokio::sync::watch;

pub use api::{LedgerPage, PeersPage, RoundsPage, VerificationPage};
pub use metrics::encode as encode_metrics;
pub use node::{encode as encode_node_metrics, NodePublished};
use tessera_node::status::StatusPublisher;

/// Connections served at once (more wait in the listen backlog).
pub const MAX_CONNECTIONS: usize = 64;
/// Connections one address may hold (more are closed at once): one client cannot take every
/// slot.
pub const MAX_PER_ADDRESS: usize = 16;
/// A connection with nothing read or written for this long is closed (a browser's keep-alive
/// connection polling once a second is never idle that long).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Requests being answered at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// The largest request body taken (a GET needs none).
pub const MAX_BODY: usize = 1024;
/// The most items one page of `/api/rounds`, `/api/verification` or `/api/ledger` holds.
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("binding the HTTP service to {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("starting the HTTP service: {0}")]
    Start(std::io::Error),
}

/// A running HTTP service.
pub struct Web {
    /// Where it listens (the port chosen when asked for port 0).
    pub addr: SocketAddr,
    /// What the coordinator publishes to (give it to `CoordinatorOptions::publish`).
    pub publisher: Publisher,
}

impl Web {
    /// The dashboard's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// The snapshots being served.
pub type Published = watch::Receiver<Option<Arc<Snapshot>>>;

/// A node's running HTTP service.
pub struct NodeWeb {
    pub addr: SocketAddr,
    /// What the node publishes to (give it to `NodeOptions::publish`).
    pub publisher: StatusPublisher,
}

impl NodeWeb {
    /// The status page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// The coordinator's service: binds `addr` now (so a taken port is an error here) and
/// serves on a thread of its own, with its own runtime, until the process ends.
pub fn spawn(addr: SocketAddr) -> Result<Web, WebError> {
    let (tx, rx) = watch::channel(None);
    let addr = serve(addr, router(rx))?;
    Ok(Web { addr, publisher: Arc::new(tx) })
}

/// A node's service, bound and served like [`spawn`]'s.
pub fn spawn_node(addr: SocketAddr) -> Result<NodeWeb, WebError> {
    let (tx, rx) = watch::channel(None);
    let addr = serve(addr, node_router(rx))?;
    Ok(NodeWeb { addr, publisher: Arc::new(tx) })
}

/// Binds `addr` and serves `app` on a thread of its own; the address bound.
fn serve(addr: SocketAddr, app: axum::Router) -> Result<SocketAddr, WebError> {
    let std_listener = std::net::TcpListener::bind(addr).map_err(|source| WebError::Bind { addr, source })?;
    std_listener.set_nonblocking(true).map_err(WebError::Start)?;
    let bound = std_listener.local_addr().map_err(WebError::Start)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(WebError::Start)?;
    std::thread::Builder::new()
        .name("tessera-web".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else { return };
                let limits =
                    limit::ConnLimits { total: MAX_CONNECTIONS, per_ip: MAX_PER_ADDRESS, idle: IDLE_TIMEOUT };
                let _ = axum::serve(limit::Capped::new(listener, limits), app).await;
            })
        })
        .map_err(WebError::Start)?;
    Ok(bound)
}

/// The limits every route of either service is under.
fn limited<S: Clone + Send + Sync + 'static>(r: axum::Router<S>) -> axum::Router<S> {
    r.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
}

/// A node's routes over `published`.
pub fn node_router(published: NodePublished) -> axum::Router {
    use axum::routing::get;
    let r = axum::Router::new()
        .route("/", get(node::index))
        .route("/api/status", get(node::status))
        .route("/metrics", get(node::metrics));
    limited(r).with_state(published)
}

/// The service's routes over `published` (also what the tests drive directly).
pub fn router(published: Published) -> axum::Router {
    use axum::routing::get;
    let r = axum::Router::new()
        .route("/", get(api::index))
        .route("/api/run", get(api::run))
        .route("/api/peers", get(api::peers))
        .route("/api/rounds", get(api::rounds))
        .route("/api/verification", get(api::verification))
        .route("/api/ledger", get(api::ledger))
        .route("/metrics", get(metrics::metrics));
    limited(r).with_state(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn status(published: Published, method: &str, uri: &str) -> (StatusCode, String) {
        call(router(published), method, uri).await
    }

    async fn call(app: axum::Router, method: &str, uri: &str) -> (StatusCode, String) {
        let req = Request::builder().method(method).uri(uri).body(Body::empty()).expect("a request");
        let res = app.oneshot(req).await.expect("the router answers");
        let code = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("a body");
        (code, String::from_utf8_lossy(&body).to_string())
    }

    /// Before the coordinator publishes anything, every API path says so with a typed error
    /// (503), and anything but GET is refused (405) on every path.
    #[tokio::test]
    async fn nothing_published_is_a_typed_503_and_only_get_is_served() {
        let (_tx, rx) = watch::channel(None);
        for path in ["/api/run", "/api/peers", "/api/rounds", "/api/verification", "/api/ledger"] {
            let (code, body) = status(rx.clone(), "GET", path).await;
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(body.contains("\"error\":\"the coordinator has published nothing yet\""), "{body}");
            for method in ["POST", "PUT", "DELETE", "PATCH"] {
                assert_eq!(status(rx.clone(), method, path).await.0, StatusCode::METHOD_NOT_ALLOWED);
            }
        }
        assert_eq!(status(rx.clone(), "GET", "/metrics").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let (code, page) = status(rx.clone(), "GET", "/").await;
        assert!(code == StatusCode::OK && page.contains("/api/peers"), "the page needs no snapshot");
        let (code, body) = status(rx, "GET", "/api/ledger?limit=lots").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(body.contains("\"error\""), "{body}");
    }

    /// A node's service: a typed 503 before the node publishes, GET only, and once a status
    /// is published the same numbers in its JSON and its metrics.
    #[tokio::test]
    async fn a_nodes_status_is_served_as_json_and_metrics_once_published() {
        let (tx, rx) = watch::channel(None);
        for path in ["/api/status", "/metrics"] {
            let (code, body) = call(node_router(rx.clone()), "GET", path).await;
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(body.contains("the node has published nothing yet"), "{body}");
            assert_eq!(call(node_router(rx.clone()), "POST", path).await.0, StatusCode::METHOD_NOT_ALLOWED);
        }
        let log = tessera_node::Log::new("test");
        let mut b = tessera_node::status::Board::new(Some(Arc::new(tx)), &[7; 32], &[9; 32], "trainer");
        b.set_phase(tessera_node::status::NodePhase::Dialling { attempt: 3 }, &log);
        b.update(|s| s.bytes_sent = 1234);
        b.publish_now();
        let (code, body) = call(node_router(rx.clone()), "GET", "/api/status").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["phase"], "dialling");
        assert_eq!(v["detail"], "dialling the coordinator (attempt 3)");
        assert_eq!(v["bytes_sent"], 1234);
        assert!(v["balance"].is_null() && v["state_hash"].is_null(), "{v}");
        let (code, m) = call(node_router(rx.clone()), "GET", "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(m.contains("tessera_node_phase{phase=\"dialling\"} 1"), "{m}");
        assert!(m.contains("tessera_node_phase{phase=\"training\"} 0"), "{m}");
        assert!(m.contains("tessera_node_bytes_sent_total 1234"), "{m}");
        assert!(!m.contains("tessera_node_round "), "an unknown round is left out: {m}");
        let (code, page) = call(node_router(rx), "GET", "/").await;
        assert!(code == StatusCode::OK && page.contains("/api/status"));
    }
}

//! Incoming connections, handshaken concurrently: one stalled handshake must not hold up the
//! next join. Each handshake runs on its own task, bounded by [`HANDSHAKE_TIMEOUT`]; at most
//! [`MAX_HANDSHAKES`] run at once, and at most [`MAX_HANDSHAKES_PER_SOURCE`] from one source
//! address, so one host that opens handshakes and never finishes them fills only its own share.
//! A source may also start only [`CONNECTS_PER_SOURCE_PER_S`] connections a second (after a
//! burst of [`CONNECT_BURST_PER_SOURCE`]): iroh keeps each remote endpoint's state for a minute
//! after its last connection, so one host dialling from ever new keys would otherwise grow the
//! endpoint by about 14 KiB a key. Past any cap a new attempt is refused at once (the dialler
//! sees a refusal, not a stall).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::{Connection, IncomingAddr};
use iroh::Endpoint;
use tessera_wire::PeerId;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::{NetError, RateLimit};

/// Most handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 256;
/// Most handshakes in progress at once from one source IP (relayed attempts share one share).
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// Longest one incoming handshake may take before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// New connections one source may start per second, sustained, and at once.
pub const CONNECTS_PER_SOURCE_PER_S: u64 = 10;
pub const CONNECT_BURST_PER_SOURCE: u64 = 64;
/// Most sources whose connection rate is tracked; past it, quiet sources are forgotten, and
/// while none is quiet, attempts from untracked sources are refused.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// What the acceptor has seen, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AcceptCounts {
    /// Handshakes that completed.
    pub accepted: u64,
    /// Attempts refused because a cap was reached.
    pub refused: u64,
    /// Handshakes that failed or ran past [`HANDSHAKE_TIMEOUT`].
    pub failed: u64,
}

#[derive(Default)]
struct Shared {
    /// Handshakes in progress, by source (`None`: not a direct IP address).
    by_source: Mutex<HashMap<Option<IpAddr>, usize>>,
    /// Each source's rate of new connections.
    rates: Mutex<HashMap<Option<IpAddr>, RateLimit>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    /// Whether `src` may start another connection at `now_ms` (taking it from its bucket).
    fn within_rate(&self, src: Option<IpAddr>, now_ms: u64) -> bool {
        let mut rates = self.rates.lock().expect("acceptor lock");
        if rates.len() >= MAX_TRACKED_SOURCES && !rates.contains_key(&src) {
            rates.retain(|_, r| !r.is_full(now_ms));
            if rates.len() >= MAX_TRACKED_SOURCES {
                return false;
            }
        }
        let bucket = rates
            .entry(src)
            .or_insert_with(|| RateLimit::new(CONNECTS_PER_SOURCE_PER_S, CONNECT_BURST_PER_SOURCE));
        let ok = bucket.allow(now_ms);
        assert!(rates.len() <= MAX_TRACKED_SOURCES, "the sources tracked are bounded");
        ok
    }

    /// Takes a handshake slot for `src`, unless a cap is reached.
    fn enter(&self, src: Option<IpAddr>) -> bool {
        let mut m = self.by_source.lock().expect("acceptor lock");
        let total: usize = m.values().sum();
        let mine = m.get(&src).copied().unwrap_or(0);
        if total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_SOURCE {
            return false;
        }
        *m.entry(src).or_insert(0) += 1;
        assert!(m.values().sum::<usize>() <= MAX_HANDSHAKES, "the cap holds");
        true
    }

    fn leave(&self, src: Option<IpAddr>) {
        let mut m = self.by_source.lock().expect("acceptor lock");
        let n = m.get_mut(&src).expect("a slot was taken for this source");
        assert!(*n > 0, "a slot is given back once");
        *n -= 1;
        if *n == 0 {
            m.remove(&src); // sources with nothing in progress are forgotten: the map stays small
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The stream of handshaken incoming connections of one endpoint ([`crate::Net::incoming`]).
/// Dropping it stops accepting.
pub struct Incoming {
    rx: mpsc::Receiver<Connection>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Incoming {
    pub(crate) fn start(endpoint: Endpoint) -> Self {
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(endpoint, tx, shared.clone()));
        Self { rx, shared, task }
    }

    /// The next connection whose handshake completed (None once the endpoint is closed).
    pub async fn next(&mut self) -> Option<Connection> {
        self.rx.recv().await
    }

    /// Handshakes accepted, refused and failed so far.
    pub fn counts(&self) -> AcceptCounts {
        let (s, o) = (&self.shared, Ordering::Relaxed);
        AcceptCounts { accepted: s.accepted.load(o), refused: s.refused.load(o), failed: s.failed.load(o) }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(endpoint: Endpoint, tx: mpsc::Sender<Connection>, shared: Arc<Shared>) {
    let origin = tokio::time::Instant::now();
    while let Some(incoming) = endpoint.accept().await {
        let src = match incoming.remote_addr() {
            IncomingAddr::Ip(a) => Some(a.ip()),
            _ => None,
        };
        let now_ms = origin.elapsed().as_millis() as u64;
        if !shared.within_rate(src, now_ms) || !shared.enter(src) {
            incoming.refuse();
            Shared::count(&shared.refused);
            continue;
        }
        let accepting = match incoming.accept() {
            Ok(a) => a,
            Err(_) => {
                shared.leave(src);
                Shared::count(&shared.failed);
                continue;
            }
        };
        let (tx, shared) = (tx.clone(), shared.clone());
        tokio::spawn(async move {
            let done = timeout(HANDSHAKE_TIMEOUT, accepting).await;
            shared.leave(src);
            match done {
                Ok(Ok(conn)) => {
                    Shared::count(&shared.accepted);
                    let _ = tx.send(conn).await;
                }
                _ => Shared::count(&shared.failed),
            }
        });
    }
}

/// A host that opens `n` handshakes with `target` and never finishes them, for tests of the
/// acceptor's caps. Its packets reach the target from `127.0.0.2` through a relay socket that
/// forwards what the dialler sends and drops every answer, so each handshake stalls on the
/// target's side until it times out. Dropping the returned guard stops it.
pub async fn stall_handshakes(target: (PeerId, SocketAddr), n: usize) -> Result<Staller, NetError> {
    let bind = |a: &str| a.parse::<SocketAddr>().map_err(|e| NetError::Bind(e.to_string()));
    let relay =
        tokio::net::UdpSocket::bind(bind("127.0.0.2:0")?).await.map_err(|e| NetError::Bind(e.to_string()))?;
    let via = relay.local_addr().map_err(|e| NetError::Bind(e.to_string()))?;
    let mut tasks = vec![tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = relay.recv_from(&mut buf).await {
            if from != target.1 {
                let _ = relay.send_to(&buf[..len], target.1).await;
            }
        }
    })];
    let dialler = crate::Net::bind([0xEE; 32], &crate::NetConfig::default()).await?;
    for _ in 0..n {
        let d = dialler.clone();
        tasks.push(tokio::spawn(async move { drop(d.connect(target.0, Some(via)).await) }));
    }
    Ok(Staller { tasks, _dialler: dialler })
}

/// The stalling host of [`stall_handshakes`]; dropping it stops it.
pub struct Staller {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dialler: crate::Net,
}

impl Drop for Staller {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_the_total_is_capped() {
        let s = Shared::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        assert!((0..MAX_HANDSHAKES_PER_SOURCE).all(|_| s.enter(a)));
        assert!(!s.enter(a), "one source, one share");
        assert!(s.enter(Some(IpAddr::from([10, 0, 0, 2]))), "another source still gets in");
        s.leave(a);
        assert!(s.enter(a), "a slot given back is free again");
        let mut i = 0u32;
        while s.enter(Some(IpAddr::from(i.to_be_bytes()))) {
            i += 1;
        }
        let held: usize = s.by_source.lock().unwrap().values().sum();
        assert_eq!(held, MAX_HANDSHAKES, "then the total cap");
    }

    #[test]
    fn a_source_starts_its_burst_then_its_rate_and_the_sources_tracked_are_bounded() {
        let s = Shared::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let burst = (0..1_000).filter(|_| s.within_rate(a, 0)).count();
        assert_eq!(burst as u64, CONNECT_BURST_PER_SOURCE);
        let later = (0..1_000).filter(|_| s.within_rate(a, 1_000)).count();
        assert_eq!(later as u64, CONNECTS_PER_SOURCE_PER_S, "then the rate");
        // Many sources at once: the map stops at its cap, refusing new ones while none is quiet.
        let n = (0..2 * MAX_TRACKED_SOURCES as u32)
            .filter(|i| s.within_rate(Some(IpAddr::from(i.to_be_bytes())), 1_000))
            .count();
        assert_eq!(n, MAX_TRACKED_SOURCES - 1, "one place was taken by the first source");
        // Once they are quiet (their buckets full again), new sources are let in.
        assert!(s.within_rate(Some(IpAddr::from([192, 168, 0, 1])), 60_000));
        assert!(s.rates.lock().unwrap().len() <= MAX_TRACKED_SOURCES);
    }
}

//! Fetching a blob from the members that hold it: the first source that answers, or parts
//! from several sources at once, assembled and checked against the hash. The coordinator is
//! the last source of every list (see `tessera_coord::Source`) and the fallback for a part
//! that failed. Connections to peers are made on first use and kept, up to a bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::Connection;
use tessera_coord::{Hash32, PeerId, Source};
use tessera_net::Net;
use tokio::sync::Mutex;

use crate::FETCH_ATTEMPTS;

/// Most peer connections a trainer keeps open for fetching.
pub const MAX_PEER_CONNS: usize = 64;
/// Pause between tries of the coordinator.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a peer may take to answer a connection: a peer is an optional source, so an
/// unreachable one must not hold a fetch up for long before the next source is tried.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The connections a trainer fetches over.
#[derive(Clone)]
pub struct Fetcher {
    pub net: Net,
    pub coordinator: PeerId,
    peers: Arc<Mutex<HashMap<PeerId, Connection>>>,
    /// Blob bytes fetched from peers and from the coordinator.
    counts: Arc<[AtomicU64; 2]>,
}

impl Fetcher {
    pub fn new(net: Net, coordinator: PeerId) -> Self {
        Self { net, coordinator, peers: Arc::default(), counts: Arc::default() }
    }

    /// Blob bytes fetched so far: (from peers, from the coordinator).
    pub fn fetched(&self) -> (u64, u64) {
        (self.counts[0].load(Ordering::Relaxed), self.counts[1].load(Ordering::Relaxed))
    }

    fn count(&self, s: &Source, bytes: usize) {
        self.counts[usize::from(s.addr.is_none())].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The connection to `s`: the coordinator's given one, or a (kept) one to the peer.
    async fn conn(&self, s: &Source, coord: &Connection) -> Result<Connection, String> {
        let Some(addr) = &s.addr else { return Ok(coord.clone()) };
        if let Some(c) = self.peers.lock().await.get(&s.peer).filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let sock = addr.parse().map_err(|_| format!("bad peer address {addr:?}"))?;
        let c = tokio::time::timeout(PEER_CONNECT_TIMEOUT, self.net.connect(s.peer, Some(sock)))
            .await
            .map_err(|_| format!("peer {addr} did not answer within {PEER_CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let mut peers = self.peers.lock().await;
        if peers.len() >= MAX_PEER_CONNS {
            peers.clear(); // bounded: start afresh rather than grow
        }
        peers.insert(s.peer, c.clone());
        Ok(c)
    }

    /// Tries the sources in order (a peer once, the coordinator up to [`FETCH_ATTEMPTS`] times).
    pub async fn whole(
        &self,
        coord: &Connection,
        sources: &[Source],
        hash: &Hash32,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        assert!(sources.last().is_some_and(|s| s.addr.is_none()), "the coordinator is the last source");
        let mut last = String::from("no source");
        for s in sources {
            let tries = if s.addr.is_none() { FETCH_ATTEMPTS } else { 1 };
            for t in 0..tries {
                match self.conn(s, coord).await {
                    Ok(c) => match self.net.fetch_blob(&c, hash, len).await {
                        Ok(b) if b.len() as u64 == len => {
                            self.count(s, b.len());
                            return Ok(b);
                        }
                        Ok(b) => last = format!("blob of {} bytes, expected {len}", b.len()),
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e,
                }
                if t + 1 < tries {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        Err(last)
    }

    /// One part per source, fetched at once; a failed part comes from the coordinator. The
    /// assembled blob is checked against `hash`; if it does not match, the whole blob is
    /// fetched from the coordinator.
    pub async fn split(
        &self,
        coord: &Connection,
        sources: &[Source],
        hash: &Hash32,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let k = sources.len().max(1) as u64;
        let part = len.div_ceil(k).max(1);
        let mut tasks = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            let (me, s, coord, hash) = (self.clone(), s.clone(), coord.clone(), *hash);
            let off = i as u64 * part;
            tasks.push(tokio::spawn(async move { me.part(&coord, &s, &hash, off, part, len).await }));
        }
        let mut whole = Vec::with_capacity(len as usize);
        for t in tasks {
            whole.extend(t.await.map_err(|e| e.to_string())??);
        }
        if whole.len() as u64 == len && blake3::hash(&whole).as_bytes() == hash {
            return Ok(whole);
        }
        let coordinator = Source { peer: self.coordinator, addr: None };
        self.whole(coord, &[coordinator], hash, len).await
    }

    /// One range of the blob from `s`, else from the coordinator.
    async fn part(
        &self,
        coord: &Connection,
        s: &Source,
        hash: &Hash32,
        off: u64,
        n: u64,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        if off >= len {
            return Ok(Vec::new());
        }
        let want = n.min(len - off);
        let coordinator = Source { peer: self.coordinator, addr: None };
        let mut last = String::new();
        for src in [s, &coordinator] {
            match self.range(coord, src, hash, (off, want), len).await {
                Ok(b) => return Ok(b),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Exactly `want` bytes at `off` of the blob of whole length `len`, from `s`.
    async fn range(
        &self,
        coord: &Connection,
        s: &Source,
        hash: &Hash32,
        (off, want): (u64, u64),
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let c = self.conn(s, coord).await?;
        let (total, b) = self.net.fetch_part(&c, hash, off, want, len).await.map_err(|e| e.to_string())?;
        if total != len || b.len() as u64 != want {
            return Err(format!("part of {} bytes at {off} of {total}, expected {want} of {len}", b.len()));
        }
        self.count(s, b.len());
        Ok(b)
    }
}

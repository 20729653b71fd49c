//! # tessera-net
//!
//! **Role.** The transport of a networked run, over iroh (QUIC, TLS with the peer's ed25519
//! key as its identity). It carries two things on one connection per peer pair:
//! - **control frames** (signed [`tessera_wire`] frames) on one long-lived unidirectional
//!   stream per direction, each prefixed by its u32 length, so frames arrive in the order they
//!   were sent; a length over [`tessera_wire::MAX_FRAME`] is refused before allocating and
//!   ends that stream;
//! - **blobs** (updates, aggregates, checkpoints), content-addressed: a bidirectional stream
//!   asks for a BLAKE3 hash and a byte range; the answer's whole length is checked against the
//!   caller's limit before allocating, and a whole blob against its hash before it is
//!   returned. Parts of one blob can come from several holders ([`Net::fetch_part`]); the
//!   caller verifies the assembled blob.
//!
//! Relays, discovery and the port mapper are off: endpoints bind to a direct address (loopback
//! or a LAN address) and are dialed by `id@ip:port` tickets. For internet runs, iroh's relay
//! and address lookup can be switched on in [`NetConfig`].
//!
//! **Test-only shaping.** This kernel has no `netem`, so [`Shaping`] emulates an endpoint's
//! uplink in tests and benchmarks: each message it sends is serialized after the ones before
//! it at the given rate, then handed over once the one-way delay has passed, once per message
//! ([`LinkSchedule`]). Messages queued back to back pipeline, as on a real link. It is off
//! unless configured.
//!
//! **Invariants.** Every wait is bounded by a named timeout; blob sizes are checked before
//! allocation; a blob is handed out only after its hash was verified.
//!
//! **Must not.** Interpret frames (that is the coordinator's and node's job) or decide
//! membership.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use iroh::endpoint::Connection;
use iroh::endpoint::{presets, PortmapperConfig, QuicTransportConfig, RecvStream, SendStream};
use iroh::{Endpoint, EndpointAddr, PublicKey, RelayMode, SecretKey};
use tessera_wire::{Hash32, PeerId, MAX_FRAME};
use tokio::time::{sleep_until, timeout, Instant};

pub mod accept;
mod rate;
pub use accept::{
    stall_handshakes, AcceptCounts, Incoming, Staller, CONNECTS_PER_SOURCE_PER_S, CONNECT_BURST_PER_SOURCE,
    HANDSHAKE_TIMEOUT, MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE,
};
pub use rate::RateLimit;

/// The protocol name both ends must speak.
pub const ALPN: &[u8] = b"tessera/1";
/// Largest blob served or fetched.
pub const MAX_BLOB: u64 = 1 << 30;
/// Most blobs kept in memory for serving by one endpoint.
pub const MAX_SERVED_BLOBS: usize = 64;
/// Most bytes of blobs one endpoint serves from memory (the oldest go first; the newest blob
/// is always kept). Trainers serve a state every round, and a state of a large model is big.
pub const MAX_SERVED_BYTES: usize = 1 << 30;
/// Time to establish a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send or receive one control frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);
/// Time to move one blob (generous: a checkpoint over a shaped link).
pub const BLOB_TIMEOUT: Duration = Duration::from_secs(300);
/// A blob request: the hash, then the offset and the most bytes wanted (little-endian u64s).
const BLOB_REQUEST: usize = 32 + 8 + 8;
/// A connection with no packets for this long is dead (keep-alives every [`KEEP_ALIVE`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);

/// Transport errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bind: {0}")]
    Bind(String),
    #[error("bad ticket {0:?} (expected <64 hex id>@<ip:port>)")]
    Ticket(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("stream: {0}")]
    Stream(String),
    #[error("frame over this endpoint's limit (see NetConfig::max_frame)")]
    FrameTooLarge,
    #[error("peer does not have blob {0}")]
    Missing(String),
    #[error("blob of {got} bytes exceeds the limit {limit}")]
    BlobTooLarge { got: u64, limit: u64 },
    #[error("blob does not hash to {0}")]
    HashMismatch(String),
}

/// Test-only link emulation: a token bucket at `rate_bps` plus a one-way `delay_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shaping {
    pub rate_bps: f64,
    pub delay_ms: u64,
}

impl FromStr for Shaping {
    type Err = String;

    /// `"10mbit,50ms"` (rate in kbit/mbit/gbit, delay in ms).
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("bad shaping {s:?}: expected e.g. 10mbit,50ms");
        let (rate, delay) = s.split_once(',').ok_or_else(err)?;
        let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)]
            .iter()
            .find_map(|(u, m)| rate.strip_suffix(u).map(|n| (n, *m)))
            .ok_or_else(err)?;
        let rate_bps = num.trim().parse::<f64>().map_err(|_| err())? * mult;
        let delay_ms = delay.trim().strip_suffix("ms").ok_or_else(err)?.parse().map_err(|_| err())?;
        if !(rate_bps.is_finite() && rate_bps > 0.0) {
            return Err(err());
        }
        Ok(Self { rate_bps, delay_ms })
    }
}

/// The emulated link's timetable, on a clock given as time since the link was made: each
/// message is serialized after the ones before it at `rate_bps`, then travels the one-way
/// delay once. Back-to-back messages pipeline: the link is busy only while serializing.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSchedule {
    pub cfg: Shaping,
    /// When the link has serialized everything reserved so far.
    busy_until: Duration,
}

impl LinkSchedule {
    pub fn new(cfg: Shaping) -> Self {
        Self { cfg, busy_until: Duration::ZERO }
    }

    /// Reserves the link at `now` for a message of `bytes`; returns when its last byte arrives
    /// at the other end (the time to hand it over).
    pub fn reserve(&mut self, now: Duration, bytes: usize) -> Duration {
        let serialize = Duration::from_secs_f64(bytes as f64 * 8.0 / self.cfg.rate_bps);
        let start = self.busy_until.max(now);
        self.busy_until = start + serialize;
        assert!(self.busy_until >= now, "the link is never free in the past");
        self.busy_until + Duration::from_millis(self.cfg.delay_ms)
    }
}

/// The uplink emulation of one endpoint: its schedule on the wall clock.
struct Shaper {
    origin: Instant,
    schedule: Mutex<LinkSchedule>,
}

impl Shaper {
    /// Reserves the link for one message; returns when to hand it over.
    fn reserve(&self, bytes: usize) -> Instant {
        let now = self.origin.elapsed();
        self.origin + self.schedule.lock().expect("shaper lock").reserve(now, bytes)
    }
}

/// How an endpoint is set up.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Socket to bind (default `127.0.0.1:0`).
    pub bind: SocketAddr,
    /// Test-only link shaping of everything this endpoint sends.
    pub shaping: Option<Shaping>,
    /// Internet mode: iroh's public relays and its DNS/pkarr address lookup, so peers behind
    /// NATs can be dialed by id alone. Off by default (and in every test): it contacts n0's
    /// servers.
    pub internet: bool,
    /// Time to receive one control frame once its first byte has arrived (default
    /// [`FRAME_TIMEOUT`]; shorter in tests).
    pub frame_timeout: Duration,
    /// Longest control frame read (default [`MAX_FRAME`], the coordinator's largest message);
    /// a coordinator reads only its members' and validators', and sets
    /// [`tessera_wire::MAX_PEER_FRAME`]. A longer length is refused before allocating.
    pub max_frame: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:0".parse().expect("literal"),
            shaping: None,
            internet: false,
            frame_timeout: FRAME_TIMEOUT,
            max_frame: MAX_FRAME,
        }
    }
}

/// Most blob requests of one connection answered at once; more are answered "missing".
pub const MAX_BLOB_STREAMS_PER_CONN: usize = 8;

/// Whether a connection's peer may fetch blobs (a coordinator serves only its members), and
/// how many of its requests are being answered.
#[derive(Debug, Default)]
pub struct BlobGate {
    open: AtomicBool,
    busy: AtomicUsize,
}

impl BlobGate {
    /// A gate that lets the peer fetch.
    pub fn open() -> Arc<Self> {
        let g = Self::default();
        g.set_open(true);
        Arc::new(g)
    }

    /// A gate that answers every request "missing" until it is opened.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Relaxed);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes one of the connection's [`MAX_BLOB_STREAMS_PER_CONN`] places, if one is free.
    fn enter(&self) -> bool {
        let taken = self.busy.fetch_add(1, Ordering::AcqRel);
        if taken >= MAX_BLOB_STREAMS_PER_CONN {
            self.busy.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn leave(&self) {
        let before = self.busy.fetch_sub(1, Ordering::AcqRel);
        assert!(before >= 1, "a place left was taken");
    }
}

/// Served blobs by hash, and their hashes oldest first.
type Served = (HashMap<Hash32, Arc<Vec<u8>>>, Vec<Hash32>);

/// Blobs this endpoint serves, by hash (the most recent [`MAX_SERVED_BLOBS`], and at most
/// [`MAX_SERVED_BYTES`] of them).
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Mutex<Served>>,
    max_bytes: usize,
}

impl Default for BlobStore {
    fn default() -> Self {
        Self::with_byte_cap(MAX_SERVED_BYTES)
    }
}

impl BlobStore {
    /// A store that holds at most `max_bytes` of blobs (the newest is always kept).
    pub fn with_byte_cap(max_bytes: usize) -> Self {
        Self { inner: Arc::default(), max_bytes }
    }

    /// Serves `bytes` under their BLAKE3 hash, which is returned.
    pub fn insert(&self, bytes: Arc<Vec<u8>>) -> Hash32 {
        let h = *blake3::hash(&bytes).as_bytes();
        let mut g = self.inner.lock().expect("blob lock");
        let (map, order) = &mut *g;
        if map.insert(h, bytes).is_none() {
            order.push(h);
        }
        let mut bytes_held: usize = map.values().map(|b| b.len()).sum();
        while order.len() > MAX_SERVED_BLOBS || (bytes_held > self.max_bytes && order.len() > 1) {
            let old = order.remove(0);
            bytes_held -= map.remove(&old).map_or(0, |b| b.len());
        }
        assert!(map.contains_key(&h), "the newest blob is always served");
        h
    }

    pub fn get(&self, h: &Hash32) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().expect("blob lock").0.get(h).cloned()
    }
}

/// One endpoint: identity, socket, served blobs and the shaper.
#[derive(Clone)]
pub struct Net {
    endpoint: Endpoint,
    blobs: BlobStore,
    shaper: Option<Arc<Shaper>>,
    /// Payload bytes sent and received (frames and blobs, both directions of every stream).
    traffic: Arc<[AtomicU64; 2]>,
    /// The outgoing control stream of each connection (by connection id).
    control: Arc<Mutex<HashMap<usize, Arc<tokio::sync::Mutex<SendStream>>>>>,
    frame_timeout: Duration,
    max_frame: usize,
}

/// A peer's transport identity as a wire peer id.
pub fn peer_id(conn: &Connection) -> PeerId {
    *conn.remote_id().as_bytes()
}

pub use tessera_tensor::hex;
use tessera_tensor::unhex32;

/// Parses a `<hex id>@<ip:port>` ticket, or a bare `<hex id>` (internet mode: the address is
/// looked up).
pub fn parse_ticket(t: &str) -> Result<(PeerId, Option<SocketAddr>), NetError> {
    let bad = || NetError::Ticket(t.to_string());
    let (id, addr) = match t.trim().split_once('@') {
        Some((id, addr)) => (id, Some(addr.parse().map_err(|_| bad())?)),
        None => (t.trim(), None),
    };
    let id = unhex32(id).ok_or_else(bad)?;
    PublicKey::from_bytes(&id).map_err(|_| bad())?;
    Ok((id, addr))
}

impl Net {
    /// Binds an endpoint whose identity is the ed25519 `secret`.
    pub async fn bind(secret: [u8; 32], cfg: &NetConfig) -> Result<Self, NetError> {
        let idle = IDLE_TIMEOUT.try_into().map_err(|_| NetError::Bind("idle timeout out of range".into()))?;
        let transport = QuicTransportConfig::builder()
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(KEEP_ALIVE)
            .default_path_max_idle_timeout(IDLE_TIMEOUT)
            .default_path_keep_alive_interval(KEEP_ALIVE)
            .build();
        let builder = if cfg.internet {
            Endpoint::builder(presets::N0)
        } else {
            Endpoint::builder(presets::Minimal)
                .relay_mode(RelayMode::Disabled)
                .clear_address_lookup()
                .portmapper_config(PortmapperConfig::Disabled)
        };
        let endpoint = builder
            .transport_config(transport)
            .secret_key(SecretKey::from_bytes(&secret))
            .clear_ip_transports()
            .bind_addr(cfg.bind)
            .map_err(|e| NetError::Bind(e.to_string()))?
            .alpns(vec![ALPN.to_vec()])
            .bind()
            .await
            .map_err(|e| NetError::Bind(e.to_string()))?;
        let shaper = cfg
            .shaping
            .map(|c| Arc::new(Shaper { origin: Instant::now(), schedule: Mutex::new(LinkSchedule::new(c)) }));
        Ok(Self {
            endpoint,
            blobs: BlobStore::default(),
            shaper,
            traffic: Arc::default(),
            control: Arc::default(),
            frame_timeout: cfg.frame_timeout,
            max_frame: cfg.max_frame.min(MAX_FRAME),
        })
    }

    pub fn id(&self) -> PeerId {
        *self.endpoint.id().as_bytes()
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.endpoint
            .bound_sockets()
            .into_iter()
            .next()
            .ok_or_else(|| NetError::Bind("no socket bound".into()))
    }

    /// `id@ip:port`, what a node passes to `--join`.
    pub fn ticket(&self) -> Result<String, NetError> {
        Ok(format!("{}@{}", hex(&self.id()), self.local_addr()?))
    }

    /// Payload bytes (sent, received) so far: frames, blob requests and blobs.
    pub fn traffic(&self) -> (u64, u64) {
        (self.traffic[0].load(Ordering::Relaxed), self.traffic[1].load(Ordering::Relaxed))
    }

    fn count_recv(&self, n: usize) {
        self.traffic[1].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Dials a peer at a direct address (or, in internet mode, by id alone).
    pub async fn connect(&self, id: PeerId, addr: Option<SocketAddr>) -> Result<Connection, NetError> {
        let pk = PublicKey::from_bytes(&id).map_err(|e| NetError::Connect(e.to_string()))?;
        let target = match addr {
            Some(a) => EndpointAddr::new(pk).with_ip_addr(a),
            None => EndpointAddr::new(pk),
        };
        timeout(CONNECT_TIMEOUT, self.endpoint.connect(target, ALPN))
            .await
            .map_err(|_| NetError::Timeout("connect"))?
            .map_err(|e| NetError::Connect(e.to_string()))
    }

    /// Starts accepting connections: each handshake on its own task, within the caps of
    /// [`accept`] (a stalled handshake holds up no other). Call it once per endpoint.
    pub fn incoming(&self) -> Incoming {
        Incoming::start(self.endpoint.clone())
    }

    /// Closes the endpoint.
    pub async fn close(&self) {
        self.endpoint.close().await;
    }

    /// When a message of `bytes` may be handed to the stream (now, without shaping).
    fn reserve(&self, bytes: usize) -> Option<Instant> {
        self.shaper.as_ref().map(|sh| sh.reserve(bytes))
    }

    /// Writes one whole message, handed over at its scheduled time (see [`LinkSchedule`]).
    async fn write_message(
        &self,
        s: &mut SendStream,
        at: Option<Instant>,
        parts: &[&[u8]],
    ) -> Result<(), NetError> {
        if let Some(t) = at {
            sleep_until(t).await;
        }
        for p in parts {
            s.write_all(p).await.map_err(|e| NetError::Stream(e.to_string()))?;
            self.traffic[0].fetch_add(p.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn control_stream(
        &self,
        conn: &Connection,
    ) -> Result<Arc<tokio::sync::Mutex<SendStream>>, NetError> {
        let id = conn.stable_id();
        if let Some(s) = self.control.lock().expect("control lock").get(&id) {
            return Ok(s.clone());
        }
        let s = conn.open_uni().await.map_err(|e| NetError::Stream(e.to_string()))?;
        let s = Arc::new(tokio::sync::Mutex::new(s));
        Ok(self.control.lock().expect("control lock").entry(id).or_insert(s).clone())
    }

    /// Sends one control frame, in order after those sent before it on this connection.
    pub async fn send_frame(&self, conn: &Connection, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() > MAX_FRAME {
            return Err(NetError::FrameTooLarge);
        }
        let go = async {
            let s = self.control_stream(conn).await?;
            // Reserved before queueing for the stream, so queued frames pipeline on the link.
            let at = self.reserve(4 + frame.len());
            let mut s = s.lock().await;
            self.write_message(&mut s, at, &[&(frame.len() as u32).to_le_bytes(), frame]).await
        };
        let r = timeout(FRAME_TIMEOUT, go).await.map_err(|_| NetError::Timeout("send frame")).and_then(|r| r);
        if r.is_err() {
            self.control.lock().expect("control lock").remove(&conn.stable_id());
        }
        r
    }

    /// Sends `bytes` behind the length `declared` on a fresh stream, unchecked (tests of the
    /// receiver's defences).
    pub async fn send_raw(&self, conn: &Connection, declared: u32, bytes: &[u8]) -> Result<(), NetError> {
        let mut s = conn.open_uni().await.map_err(|e| NetError::Stream(e.to_string()))?;
        s.write_all(&declared.to_le_bytes()).await.map_err(|e| NetError::Stream(e.to_string()))?;
        s.write_all(bytes).await.map_err(|e| NetError::Stream(e.to_string()))?;
        s.finish().map_err(|e| NetError::Stream(e.to_string()))
    }

    /// Reads length-prefixed frames from one control stream, in order, until it ends.
    async fn read_frames(&self, mut r: RecvStream, cb: Arc<dyn Fn(Result<Vec<u8>, NetError>) + Send + Sync>) {
        loop {
            // A control stream may idle between frames for as long as the connection lives,
            // but once a frame has begun, its length and its body come within the frame
            // timeout: a peer cannot hold a stream with half a length.
            let mut len = [0u8; 4];
            match r.read_exact(&mut len[..1]).await {
                Ok(()) => {}
                Err(iroh::endpoint::ReadExactError::FinishedEarly(0)) => return,
                Err(e) => return cb(Err(NetError::Stream(e.to_string()))),
            }
            match timeout(self.frame_timeout, r.read_exact(&mut len[1..])).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return cb(Err(NetError::Stream(e.to_string()))),
                Err(_) => return cb(Err(NetError::Timeout("read frame length"))),
            }
            let n = u32::from_le_bytes(len) as usize;
            if n > self.max_frame {
                let _ = r.stop(0u32.into());
                return cb(Err(NetError::FrameTooLarge));
            }
            let mut buf = vec![0u8; n];
            match timeout(self.frame_timeout, r.read_exact(&mut buf)).await {
                Ok(Ok(())) => {
                    self.count_recv(4 + n);
                    cb(Ok(buf));
                }
                Ok(Err(e)) => return cb(Err(NetError::Stream(e.to_string()))),
                Err(_) => return cb(Err(NetError::Timeout("read frame"))),
            }
        }
    }

    /// Serves one connection until it closes: control frames go to `on_frame` in the order
    /// they were sent (an oversized frame is reported as `Err(FrameTooLarge)`), blob requests
    /// are answered from the store.
    pub async fn serve(
        &self,
        conn: Connection,
        on_frame: impl Fn(Result<Vec<u8>, NetError>) + Send + Sync + 'static,
    ) {
        self.serve_gated(conn, on_frame, BlobGate::open()).await
    }

    /// [`Net::serve`], blob requests answered only while `gate` is open, and at most
    /// [`MAX_BLOB_STREAMS_PER_CONN`] at once (others are answered "missing", at once).
    pub async fn serve_gated(
        &self,
        conn: Connection,
        on_frame: impl Fn(Result<Vec<u8>, NetError>) + Send + Sync + 'static,
        gate: Arc<BlobGate>,
    ) {
        let on_frame: Arc<dyn Fn(Result<Vec<u8>, NetError>) + Send + Sync> = Arc::new(on_frame);
        loop {
            tokio::select! {
                uni = conn.accept_uni() => {
                    let Ok(r) = uni else { break };
                    let (me, cb) = (self.clone(), on_frame.clone());
                    tokio::spawn(async move { me.read_frames(r, cb).await });
                }
                bi = conn.accept_bi() => {
                    let Ok((s, r)) = bi else { break };
                    let (me, gate) = (self.clone(), gate.clone());
                    tokio::spawn(async move {
                        if gate.is_open() && gate.enter() {
                            let _ = timeout(BLOB_TIMEOUT, me.answer_blob(s, r, true)).await;
                            gate.leave();
                        } else {
                            let _ = timeout(BLOB_TIMEOUT, me.answer_blob(s, r, false)).await;
                        }
                    });
                }
            }
        }
        self.control.lock().expect("control lock").remove(&conn.stable_id());
    }

    /// Answers one blob request: the part asked for, or (`serve` false, or not held) "missing".
    async fn answer_blob(&self, mut s: SendStream, mut r: RecvStream, serve: bool) -> Result<(), NetError> {
        let mut req = [0u8; BLOB_REQUEST];
        r.read_exact(&mut req).await.map_err(|e| NetError::Stream(e.to_string()))?;
        self.count_recv(req.len());
        let h: Hash32 = req[..32].try_into().expect("32 bytes");
        let offset = u64::from_le_bytes(req[32..40].try_into().expect("8 bytes"));
        let want = u64::from_le_bytes(req[40..48].try_into().expect("8 bytes"));
        match self.blobs.get(&h).filter(|_| serve) {
            Some(b) if offset <= b.len() as u64 => {
                let start = offset as usize;
                let end = start + (b.len() - start).min(want.min(MAX_BLOB) as usize);
                let part = &b[start..end];
                let at = self.reserve(9 + part.len());
                self.write_message(&mut s, at, &[&[1], &(b.len() as u64).to_le_bytes(), part]).await?;
            }
            _ => self.write_message(&mut s, self.reserve(1), &[&[0]]).await?,
        }
        s.finish().map_err(|e| NetError::Stream(e.to_string()))
    }

    /// Fetches blob `hash` (at most `limit` bytes) from the peer and verifies it.
    pub async fn fetch_blob(
        &self,
        conn: &Connection,
        hash: &Hash32,
        limit: u64,
    ) -> Result<Vec<u8>, NetError> {
        let (total, buf) = self.fetch_part(conn, hash, 0, u64::MAX, limit).await?;
        if buf.len() as u64 != total {
            return Err(NetError::Stream(format!("blob {} cut short", hex(hash))));
        }
        if blake3::hash(&buf).as_bytes() != hash {
            return Err(NetError::HashMismatch(hex(hash)));
        }
        Ok(buf)
    }

    /// Fetches `len` bytes at `offset` of blob `hash`, whose whole length must be at most
    /// `limit`; returns the whole length and the part. Unverified: the caller checks the hash
    /// of the assembled blob.
    pub async fn fetch_part(
        &self,
        conn: &Connection,
        hash: &Hash32,
        offset: u64,
        len: u64,
        limit: u64,
    ) -> Result<(u64, Vec<u8>), NetError> {
        let limit = limit.min(MAX_BLOB);
        let go = async {
            let (mut s, mut r) = conn.open_bi().await.map_err(|e| NetError::Stream(e.to_string()))?;
            let (o, l) = (offset.to_le_bytes(), len.to_le_bytes());
            self.write_message(&mut s, self.reserve(BLOB_REQUEST), &[hash, &o, &l]).await?;
            s.finish().map_err(|e| NetError::Stream(e.to_string()))?;
            let mut head = [0u8; 1];
            r.read_exact(&mut head).await.map_err(|e| NetError::Stream(e.to_string()))?;
            if head[0] != 1 {
                return Err(NetError::Missing(hex(hash)));
            }
            let mut total = [0u8; 8];
            r.read_exact(&mut total).await.map_err(|e| NetError::Stream(e.to_string()))?;
            let total = u64::from_le_bytes(total);
            if total > limit {
                return Err(NetError::BlobTooLarge { got: total, limit });
            }
            let expect = total.saturating_sub(offset).min(len);
            let mut buf = vec![0u8; expect as usize];
            r.read_exact(&mut buf).await.map_err(|e| NetError::Stream(e.to_string()))?;
            self.count_recv(9 + buf.len());
            Ok((total, buf))
        };
        timeout(BLOB_TIMEOUT, go).await.map_err(|_| NetError::Timeout("fetch blob"))?
    }
}

/// What [`measure_link`] saw through a shaped uplink on loopback.
#[derive(Clone, Debug)]
pub struct LinkReport {
    pub shaping: Shaping,
    /// One-way times of small frames (seconds), each sent alone.
    pub frame_s: Vec<f64>,
    /// Time to fetch each blob of `blob_bytes` from the shaped endpoint (seconds).
    pub blob_s: Vec<f64>,
    pub blob_bytes: usize,
}

/// Measures a shaped link on loopback: `rounds` lone 64-byte frames (their one-way time), and
/// `rounds` fetches of a `blob_bytes` blob served by the shaped endpoint. A benchmark, not a
/// test: the figures depend on the machine's load.
pub fn measure_link(shaping: Shaping, blob_bytes: usize, rounds: usize) -> Result<LinkReport, NetError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| NetError::Bind(e.to_string()))?;
    rt.block_on(async move {
        let shaped = NetConfig { shaping: Some(shaping), ..NetConfig::default() };
        let (plain, slow) =
            (Net::bind([1; 32], &NetConfig::default()).await?, Net::bind([2; 32], &shaped).await?);
        let blob = slow.blobs().insert(Arc::new(vec![7u8; blob_bytes]));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = plain.clone();
        tokio::spawn(async move {
            if let Some(conn) = server.incoming().next().await {
                server
                    .serve(conn, move |_| {
                        let _ = tx.send(std::time::Instant::now());
                    })
                    .await;
            }
        });
        let (id, addr) = parse_ticket(&plain.ticket()?)?;
        let to_plain = slow.connect(id, addr).await?;
        let mut frame_s = Vec::new();
        for _ in 0..rounds {
            let t0 = std::time::Instant::now();
            slow.send_frame(&to_plain, &[0u8; 64]).await?;
            let at = rx.recv().await.ok_or_else(|| NetError::Stream("receiver gone".into()))?;
            frame_s.push((at - t0).as_secs_f64());
            tokio::time::sleep(Duration::from_millis(shaping.delay_ms + 20)).await;
            // the link idles
        }
        let serve = slow.clone();
        tokio::spawn(async move {
            let mut incoming = serve.incoming();
            while let Some(conn) = incoming.next().await {
                let s = serve.clone();
                tokio::spawn(async move { s.serve(conn, |_| {}).await });
            }
        });
        let (sid, saddr) = parse_ticket(&slow.ticket()?)?;
        let to_slow = plain.connect(sid, saddr).await?;
        let mut blob_s = Vec::new();
        for _ in 0..rounds {
            let t0 = std::time::Instant::now();
            let b = plain.fetch_blob(&to_slow, &blob, blob_bytes as u64).await?;
            assert_eq!(b.len(), blob_bytes, "the blob asked for");
            blob_s.push(t0.elapsed().as_secs_f64());
        }
        plain.close().await;
        slow.close().await;
        Ok(LinkReport { shaping, frame_s, blob_s, blob_bytes })
    })
}

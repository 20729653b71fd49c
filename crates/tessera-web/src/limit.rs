//! A listener that holds at most a fixed number of connections open, at most a few from any
//! one address, and closes a connection that has been idle too long. Past the total cap it
//! stops accepting (new ones wait in the kernel's backlog) until one closes; past an
//! address's cap it closes the newcomer at once. So one client that opens connections and
//! sends nothing (a slow-loris) holds at most [`ConnLimits::per_ip`] slots, each for at most
//! [`ConnLimits::idle`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How many connections, and for how long idle.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub total: usize,
    pub per_ip: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle: Duration,
}

type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub struct Capped {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    per_ip: PerIp,
    limits: ConnLimits,
}

impl Capped {
    pub fn new(inner: TcpListener, limits: ConnLimits) -> Self {
        assert!(limits.total > 0 && limits.per_ip > 0, "a service takes at least one connection");
        assert!(limits.per_ip <= limits.total, "an address's share is within the total");
        Self { inner, slots: Arc::new(Semaphore::new(limits.total)), per_ip: Arc::default(), limits }
    }

    /// Counts a connection from `ip`; false when it already holds its share.
    fn admit(&self, ip: IpAddr) -> bool {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= self.limits.per_ip {
            return false;
        }
        *n += 1;
        assert!(m.len() <= self.limits.total, "only addresses holding a slot are counted");
        true
    }
}

/// A connection holding its slot (and its address's count) until it is dropped.
pub struct Held {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: PerIp,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                unreachable!("the semaphore is never closed")
            };
            match self.inner.accept().await {
                Ok((io, addr)) if self.admit(addr.ip()) => {
                    let idle = self.limits.idle;
                    let deadline = Box::pin(tokio::time::sleep(idle));
                    let per_ip = self.per_ip.clone();
                    return (Held { io, _slot: slot, ip: addr.ip(), per_ip, idle, deadline }, addr);
                }
                Ok(_) => {} // that address holds its share: the newcomer is closed (dropped)
                // A failed accept (the peer gave up, or no descriptors left): wait a little
                // rather than spin, as axum's own listener does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Held {
    /// After `p` made progress the idle clock restarts; while it waits, the clock runs out
    /// into an error that ends the connection.
    fn watch<T>(&mut self, cx: &mut Context<'_>, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.deadline.as_mut().reset(Instant::now() + self.idle);
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.io).poll_read(cx, buf);
        self.watch(cx, p)
    }
}

impl AsyncWrite for Held {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, p)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(limits: ConnLimits) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(Capped::new(l, limits), app).await });
        addr
    }

    /// Whether the server closes `s` (EOF or reset) within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(tokio::time::timeout(within, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    async fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    /// One address that opens connections and sends nothing holds at most its share, each
    /// only until it has idled too long; the service answers meanwhile.
    #[tokio::test]
    async fn a_slow_loris_holds_its_share_of_slots_only_while_they_are_not_idle_too_long() {
        let limits = ConnLimits { total: 8, per_ip: 3, idle: Duration::from_millis(300) };
        let addr = serve(limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // A third is within the share; it answers.
        assert!(get(addr).await.ends_with("ok"), "served beside two silent connections");
        held.push(TcpStream::connect(addr).await.expect("connect"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A fourth from the same address is over its share: closed at once.
        let mut over = TcpStream::connect(addr).await.expect("the kernel accepts it");
        assert!(closed(&mut over, Duration::from_millis(200)).await, "over the share is closed");
        // The silent ones are closed once idle for the limit, which frees the share.
        for s in &mut held {
            assert!(closed(s, Duration::from_secs(2)).await, "an idle connection is closed");
        }
        assert!(get(addr).await.ends_with("ok"), "served again once the idle ones are gone");
    }
}

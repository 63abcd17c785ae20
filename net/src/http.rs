//! A bounded accept loop for the unauthenticated HTTP endpoints a process
//! serves (the node's metrics endpoint, the public witness log, a cosigner):
//! no client, however many connections it opens or however slowly it reads,
//! takes more than its share.
//!
//! [`BoundedListener`] (an `axum::serve::Listener`) accepts every connection
//! at once and serves at most [`HttpLimits::connections`] of them, at most
//! [`HttpLimits::per_source`] from one source ([`source_key`]: all of
//! loopback is one source, an IPv6 /64 is one source). Each served connection
//! is closed if its request head has not arrived within
//! [`HttpLimits::head_timeout`], and after [`HttpLimits::lifetime`] whatever it
//! does. A connection beyond those (at most [`HttpLimits::overflow`] at once,
//! [`HttpLimits::overflow_per_source`] per source) gets a fixed answer without
//! a slot: `200 ok` to `GET <ok_path>` if the endpoint has one (a liveness
//! check keeps answering under a flood), `503 busy` to anything else; beyond
//! that it is closed at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The caps of a [`BoundedListener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections the HTTP server serves at once.
    pub connections: usize,
    /// Of those, at most this many from one source.
    pub per_source: usize,
    /// Connections answered without a slot at once; more are closed at once.
    pub overflow: usize,
    /// Of those, at most this many from one source.
    pub overflow_per_source: usize,
    /// A connection whose request head has not arrived this long after it
    /// was accepted is closed.
    pub head_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it
    /// does (a slow reader cannot hold one longer).
    pub lifetime: Duration,
    /// The path answered `200 ok` without a slot (`GET` only), if any.
    pub ok_path: Option<&'static str>,
}

/// The most bytes read of a request head answered without a slot.
const OVERFLOW_HEAD_BYTES_MAX: usize = 1024;

/// The source a connection is counted against: its address, except that all
/// of 127.0.0.0/8 and ::1 are one source (any local user can connect from 127.0.0.2,
/// .3, ...) and an IPv6 address counts as its /64 (what one host is given).
/// A local user still shares the loopback source with a local scraper: on a
/// host with untrusted local users, bind the endpoint where only the scraper
/// reaches it (docs/operations.md).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V4(v4) => IpAddr::V4(v4),
        // ::1 is the same host as 127.0.0.1 on a dual-stack listener.
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(segments))
        }
    }
}

/// Connections held, by source address: what the per-source caps count.
type SourceTable = Arc<Mutex<BTreeMap<IpAddr, Held>>>;

/// The connections one source holds.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    /// Served by the HTTP server (out of [`HttpLimits::per_source`]).
    served: usize,
    /// Answered without a slot (out of [`HttpLimits::overflow_per_source`]).
    overflow: usize,
}

/// One connection counted against its source until dropped.
struct SourceGuard {
    table: SourceTable,
    ip: IpAddr,
    overflow: bool,
}

impl SourceGuard {
    /// Counts one more connection from `ip`, unless the source holds its
    /// share already.
    fn admit(
        table: &SourceTable,
        ip: IpAddr,
        overflow: bool,
        limits: &HttpLimits,
    ) -> Option<SourceGuard> {
        let mut held = table.lock();
        let entry = held.entry(ip).or_default();
        let (count, max) = if overflow {
            (&mut entry.overflow, limits.overflow_per_source)
        } else {
            (&mut entry.served, limits.per_source)
        };
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceGuard {
            table: Arc::clone(table),
            ip,
            overflow,
        })
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        if let Some(entry) = held.get_mut(&self.ip) {
            let count = if self.overflow {
                &mut entry.overflow
            } else {
                &mut entry.served
            };
            *count = count.saturating_sub(1);
            if entry.served == 0 && entry.overflow == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A listener that accepts every connection at once and serves at most
/// [`HttpLimits::connections`] of them ([`HttpLimits::per_source`] per
/// source), each under the deadlines of [`BoundedIo`]; the others get a fixed
/// answer (`answer_without_slot`), or are closed.
pub struct BoundedListener {
    listener: tokio::net::TcpListener,
    limits: HttpLimits,
    slots: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    sources: SourceTable,
}

impl BoundedListener {
    /// Serves `listener` under `limits`.
    pub fn new(listener: tokio::net::TcpListener, limits: HttpLimits) -> Self {
        Self {
            listener,
            limits,
            slots: Arc::new(Semaphore::new(limits.connections)),
            overflow: Arc::new(Semaphore::new(limits.overflow)),
            sources: SourceTable::default(),
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::debug!("http endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ip = source_key(addr.ip());
            if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
                if let Some(source) = SourceGuard::admit(&self.sources, ip, false, &self.limits) {
                    return (BoundedIo::new(stream, slot, source, &self.limits), addr);
                }
            }
            let Ok(permit) = Arc::clone(&self.overflow).try_acquire_owned() else {
                continue; // dropped: closed at once
            };
            let Some(source) = SourceGuard::admit(&self.sources, ip, true, &self.limits) else {
                continue;
            };
            tokio::spawn(answer_without_slot(stream, permit, source, self.limits));
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// The answer to `GET /healthz` on a connection without a slot.
const OVERFLOW_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n";
/// The answer to anything else on a connection without a slot.
const OVERFLOW_BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbusy\n";

/// Answers a connection the server has no slot for: reads its request head
/// (at most [`OVERFLOW_HEAD_BYTES_MAX`] bytes within the head timeout), says
/// `ok` to `GET <ok_path>` and `busy` to anything else, and closes it. A head
/// that does not arrive in time, or is too long, gets no answer.
async fn answer_without_slot(
    mut stream: tokio::net::TcpStream,
    _permit: OwnedSemaphorePermit,
    _source: SourceGuard,
    limits: HttpLimits,
) {
    let head = match tokio::time::timeout(limits.head_timeout, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return,
    };
    let answer = match limits.ok_path {
        Some(path) if asks_for(&head, path) => OVERFLOW_OK,
        _ => OVERFLOW_BUSY,
    };
    let _ = tokio::time::timeout(limits.head_timeout, async {
        stream.write_all(answer).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads a request head up to its blank line: `None` if the peer closed
/// before it, or it is longer than [`OVERFLOW_HEAD_BYTES_MAX`].
async fn read_head(stream: &mut tokio::net::TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = vec![0u8; OVERFLOW_HEAD_BYTES_MAX];
    let mut filled = 0;
    while filled < head.len() {
        let read = stream.read(&mut head[filled..]).await?;
        if read == 0 {
            return Ok(None);
        }
        filled += read;
        if head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
            head.truncate(filled);
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// Whether a request head asks `GET <path>` (with or without a query).
fn asks_for(head: &[u8], path: &str) -> bool {
    head.strip_prefix(b"GET ")
        .and_then(|rest| rest.strip_prefix(path.as_bytes()))
        .is_some_and(|rest| rest.starts_with(b" ") || rest.starts_with(b"?"))
}

/// A connection served by the HTTP server: its reads fail if no answer has
/// started within [`HttpLimits::head_timeout`] of its accept (its request head
/// did not arrive), its reads and writes fail once [`HttpLimits::lifetime`] is over,
/// and it holds a connection slot and its source's share until dropped.
pub struct BoundedIo {
    stream: tokio::net::TcpStream,
    lifetime: Pin<Box<tokio::time::Sleep>>,
    /// `None` once the first byte of an answer was written.
    head: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _source: SourceGuard,
}

impl BoundedIo {
    fn new(
        stream: tokio::net::TcpStream,
        slot: OwnedSemaphorePermit,
        source: SourceGuard,
        limits: &HttpLimits,
    ) -> Self {
        BoundedIo {
            stream,
            lifetime: Box::pin(tokio::time::sleep(limits.lifetime)),
            head: Some(Box::pin(tokio::time::sleep(limits.head_timeout))),
            _slot: slot,
            _source: source,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.lifetime.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "http connection lifetime is over")
}

impl AsyncRead for BoundedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        if let Some(head) = this.head.as_mut() {
            if head.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "http request head did not arrive in time",
                )));
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        this.head = None;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{asks_for, source_key};

    /// R3-M1 (re-review of the metrics hardening): every loopback address is
    /// one source, and an IPv6 /64 is one source, so a local user connecting
    /// from 127.0.0.2, .3, ... (or a host cycling through its /64) cannot
    /// take every slot by looking like many sources.
    #[test]
    fn r3_m1_loopback_addresses_and_an_ipv6_64_count_as_one_source() {
        let one = source_key("127.0.0.1".parse().unwrap());
        for a in ["127.0.0.2", "127.9.8.7", "::ffff:127.0.0.5", "::1"] {
            assert_eq!(source_key(a.parse().unwrap()), one, "{a}");
        }
        assert_eq!(
            source_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            source_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            source_key("2001:db8:1:2::1".parse().unwrap()),
            source_key("2001:db8:1:3::1".parse().unwrap())
        );
        assert_ne!(
            source_key("10.0.0.1".parse().unwrap()),
            source_key("10.0.0.2".parse().unwrap())
        );
    }

    #[test]
    fn only_a_get_of_the_ok_path_is_answered_ok() {
        assert!(asks_for(b"GET /healthz HTTP/1.1\r\n\r\n", "/healthz"));
        assert!(asks_for(b"GET /healthz?x=1 HTTP/1.1\r\n\r\n", "/healthz"));
        assert!(!asks_for(b"GET /healthzz HTTP/1.1\r\n\r\n", "/healthz"));
        assert!(!asks_for(b"POST /healthz HTTP/1.1\r\n\r\n", "/healthz"));
    }
}

/// The peer address of a connection a [`BoundedListener`] accepted, for
/// axum's `ConnectInfo` (`into_make_service_with_connect_info::<PeerAddr>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, BoundedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, BoundedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Requests per source ([`source_key`]) over time: a token bucket per source,
/// `per_second` tokens a second up to `burst`. At most [`RATE_SOURCES_MAX`]
/// sources are tracked; a new one beyond that evicts the one seen longest ago.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<BTreeMap<IpAddr, (f64, std::time::Instant)>>,
}

/// Sources a [`RateLimiter`] tracks at once.
pub const RATE_SOURCES_MAX: usize = 4096;

impl RateLimiter {
    /// `per_second` requests a second per source, bursts of up to `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether `ip` may make one more request now (and takes its token).
    // A rate is over wall-clock time; this is the runtime, not the core.
    #[allow(clippy::disallowed_methods)]
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.admit_at(ip, std::time::Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, now: std::time::Instant) -> bool {
        let key = source_key(ip);
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(&key) && buckets.len() >= RATE_SOURCES_MAX {
            let oldest = buckets
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                buckets.remove(&k);
            }
        }
        let (tokens, seen) = buckets.entry(key).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*seen).as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_second).min(self.burst);
        *seen = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a start instant; the test moves time itself
    fn a_source_gets_its_burst_then_its_rate_and_others_are_not_charged() {
        let limiter = RateLimiter::new(2, 3);
        let t0 = std::time::Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.admit_at(a, t0)));
        assert!(!limiter.admit_at(a, t0));
        assert!(limiter.admit_at(b, t0));
        // Half a second later: one more token (2 a second).
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.admit_at(a, t1));
        assert!(!limiter.admit_at(a, t1));
    }
}

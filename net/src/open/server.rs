//! The async server of the open channel: a listener on a tokio runtime of its
//! own, one task per connection, each request's handler run on the runtime's
//! blocking pool (a handler may block: a vault service waits for a commit).
//!
//! Bounds: at most `connections_max` connections (one beyond it is closed as
//! soon as it is accepted), at most `handlers_max` handlers at once (a request
//! beyond it is answered `busy` at once, never queued), the handshake within
//! `handshake_timeout`, each record of a request within `idle_timeout`, each
//! reply written within `write_timeout`, frames within their size limits. A
//! connection that breaks any rule is closed and counted; no other connection
//! notices.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::error::{ChannelError, OpenServerError};
use super::frame::{seal_frame, Assembler};
use super::{check_durations_and_sizes, ChannelId, Pattern, Status, PAYLOAD_BYTES_MAX};
use crate::keys::{PublicKey, StaticSecret};
use crate::wire::record::{put_record, record_codec, NOISE_MESSAGE_BYTES_MAX};

/// What answers the requests of an [`OpenServer`]. It runs on a blocking
/// thread and may block. `None` means the service cannot answer now (the
/// client is told `unavailable` and may try elsewhere).
pub trait OpenHandler: Send + Sync + 'static {
    /// Answers one request body.
    fn handle(&self, request: &[u8]) -> Option<Vec<u8>>;
}

impl<F> OpenHandler for F
where
    F: Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    fn handle(&self, request: &[u8]) -> Option<Vec<u8>> {
        self(request)
    }
}

/// Limits and timeouts of an [`OpenServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenServerConfig {
    /// The address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Worker threads of the server's runtime (default 1: the work is in the handlers).
    pub worker_threads: usize,
    /// Connections open at once (default 256).
    pub connections_max: usize,
    /// Handlers running at once, and threads of the blocking pool (default 16).
    pub handlers_max: usize,
    /// Longest wait for a client's whole handshake (default 2 s).
    pub handshake_timeout: Duration,
    /// Longest wait for the next record of a request, and between requests
    /// (default 30 s).
    pub idle_timeout: Duration,
    /// Longest wait to write one reply (default 5 s).
    pub write_timeout: Duration,
    /// Largest request body accepted (default 1 MiB).
    pub request_bytes_max: usize,
    /// Largest reply body sent; a handler's longer reply is answered
    /// `unavailable` and counted (default 1 MiB).
    pub reply_bytes_max: usize,
}

impl OpenServerConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            worker_threads: 1,
            connections_max: 256,
            handlers_max: 16,
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            request_bytes_max: 1 << 20,
            reply_bytes_max: 1 << 20,
        }
    }

    /// Checks that every limit and duration is above zero and every size at
    /// most [`BODY_BYTES_HARD_MAX`](super::BODY_BYTES_HARD_MAX).
    pub fn validate(&self) -> Result<(), ChannelError> {
        let counts = [
            ("worker_threads", self.worker_threads),
            ("connections_max", self.connections_max),
            ("handlers_max", self.handlers_max),
        ];
        if let Some((what, _)) = counts.iter().find(|(_, c)| *c == 0) {
            return Err(ChannelError::Config { what });
        }
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
        ];
        let sizes = [
            ("request_bytes_max", self.request_bytes_max),
            ("reply_bytes_max", self.reply_bytes_max),
        ];
        check_durations_and_sizes(&durations, &sizes)
    }
}

/// What an [`OpenServer`] has seen, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenStats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Connections closed at once because `connections_max` were open.
    pub connections_refused_full: u64,
    /// Handshakes that finished.
    pub handshakes_completed: u64,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: u64,
    /// Connections whose handshake finished and that then closed without
    /// sending a single request (for instance a client whose check refused
    /// this server).
    pub sessions_without_requests: u64,
    /// Complete request frames received (application frames).
    pub requests_received: u64,
    /// Replies carrying a handler's answer.
    pub replies_answered: u64,
    /// Requests answered `busy` (`handlers_max` handlers were running).
    pub replies_busy: u64,
    /// Requests answered `unavailable` (the handler had no answer, failed, or
    /// answered above `reply_bytes_max`).
    pub replies_unavailable: u64,
    /// Connections closed for a record that did not decrypt or a frame that
    /// broke the framing rules or size limits.
    pub frames_refused: u64,
    /// Connections closed for silence (`idle_timeout`).
    pub connections_idle_closed: u64,
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_refused_full: AtomicU64,
    handshakes_completed: AtomicU64,
    handshakes_failed: AtomicU64,
    sessions_without_requests: AtomicU64,
    requests_received: AtomicU64,
    replies_answered: AtomicU64,
    replies_busy: AtomicU64,
    replies_unavailable: AtomicU64,
    frames_refused: AtomicU64,
    connections_idle_closed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> OpenStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OpenStats {
            connections_accepted: get(&self.connections_accepted),
            connections_refused_full: get(&self.connections_refused_full),
            handshakes_completed: get(&self.handshakes_completed),
            handshakes_failed: get(&self.handshakes_failed),
            sessions_without_requests: get(&self.sessions_without_requests),
            requests_received: get(&self.requests_received),
            replies_answered: get(&self.replies_answered),
            replies_busy: get(&self.replies_busy),
            replies_unavailable: get(&self.replies_unavailable),
            frames_refused: get(&self.frames_refused),
            connections_idle_closed: get(&self.connections_idle_closed),
        }
    }
}

struct Shared {
    config: OpenServerConfig,
    channel: ChannelId,
    secret: StaticSecret,
    payload: RwLock<Arc<Vec<u8>>>,
    handler: Arc<dyn OpenHandler>,
    counters: Counters,
    cancel: CancellationToken,
    connections: Arc<Semaphore>,
    handlers: Arc<Semaphore>,
}

/// A server of the open channel: proves `secret`'s public key to anonymous
/// clients, hands each the current payload in the handshake, and answers their
/// requests with its [`OpenHandler`]. Shut down on drop.
pub struct OpenServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    runtime: Mutex<Option<Runtime>>,
}

impl std::fmt::Debug for OpenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenServer")
            .field("local_addr", &self.local_addr)
            .field("public_key", &self.shared.secret.public_key())
            .finish_non_exhaustive()
    }
}

fn check_payload(payload: &[u8]) -> Result<(), ChannelError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(ChannelError::PayloadTooLarge {
            len: payload.len(),
            max: PAYLOAD_BYTES_MAX,
        });
    }
    Ok(())
}

impl OpenServer {
    /// Starts a server of `channel` proving `secret`, with `payload` (at most
    /// [`PAYLOAD_BYTES_MAX`] bytes) in every handshake and `handler` answering.
    pub fn start(
        channel: ChannelId,
        secret: StaticSecret,
        payload: Vec<u8>,
        handler: Arc<dyn OpenHandler>,
        config: OpenServerConfig,
    ) -> Result<Self, OpenServerError> {
        config.validate()?;
        check_payload(&payload)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .max_blocking_threads(config.handlers_max)
            .thread_name("vaultfleet-open")
            .enable_all()
            .build()
            .map_err(OpenServerError::Runtime)?;
        let listener = runtime
            .block_on(TcpListener::bind(config.listen))
            .map_err(|source| OpenServerError::Listen {
                address: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| OpenServerError::Listen {
                address: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            channel,
            secret,
            payload: RwLock::new(Arc::new(payload)),
            handler,
            counters: Counters::default(),
            cancel: CancellationToken::new(),
            connections: Arc::new(Semaphore::new(config.connections_max)),
            handlers: Arc::new(Semaphore::new(config.handlers_max)),
            config,
        });
        runtime.spawn(accept_loop(Arc::clone(&shared), listener));
        Ok(Self {
            shared,
            local_addr,
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The static key the server proves.
    pub fn public_key(&self) -> PublicKey {
        self.shared.secret.public_key()
    }

    /// Replaces the payload handed to every later handshake.
    pub fn set_payload(&self, payload: Vec<u8>) -> Result<(), ChannelError> {
        check_payload(&payload)?;
        *self.shared.payload.write() = Arc::new(payload);
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> OpenStats {
        self.shared.counters.snapshot()
    }

    /// Stops listening and closes every connection. Handlers already running
    /// finish on their threads; their replies are not sent.
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for OpenServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                bump(&shared.counters.connections_accepted);
                match Arc::clone(&shared.connections).try_acquire_owned() {
                    Ok(permit) => {
                        let shared = Arc::clone(&shared);
                        tokio::spawn(async move {
                            let _permit = permit;
                            serve(shared, stream).await;
                        });
                    }
                    Err(_) => {
                        bump(&shared.counters.connections_refused_full);
                        drop(stream);
                    }
                }
            }
            Err(e) => {
                // Out of descriptors, say: pause rather than spin.
                tracing::debug!("open channel: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

type RecordReader =
    FramedRead<tokio::net::tcp::OwnedReadHalf, tokio_util::codec::LengthDelimitedCodec>;

async fn next_record(reader: &mut RecordReader) -> Result<BytesMut, ChannelError> {
    match reader.next().await {
        None => Err(ChannelError::Closed),
        Some(Err(e)) => Err(ChannelError::Io(e)),
        Some(Ok(record)) => Ok(record),
    }
}

/// The responder's side: the client's pattern byte picks NX or NK; the
/// client's first message must carry an empty payload.
async fn handshake(
    shared: &Shared,
    reader: &mut RecordReader,
    writer: &mut OwnedWriteHalf,
) -> Result<snow::TransportState, ChannelError> {
    let first = next_record(reader).await?;
    let (&byte, message) = first
        .split_first()
        .ok_or(ChannelError::HandshakeMalformed)?;
    let pattern = Pattern::from_byte(byte).ok_or(ChannelError::HandshakeMalformed)?;
    let prologue = shared.channel.prologue();
    let mut hs = snow::Builder::new(pattern.params().map_err(ChannelError::Noise)?)
        .local_private_key(shared.secret.expose())
        .prologue(&prologue)
        .build_responder()
        .map_err(ChannelError::Noise)?;
    let mut scratch = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let n = hs
        .read_message(message, &mut scratch)
        .map_err(ChannelError::Noise)?;
    if n != 0 {
        return Err(ChannelError::HandshakeMalformed);
    }
    let payload = Arc::clone(&shared.payload.read());
    let n = hs
        .write_message(&payload, &mut scratch)
        .map_err(ChannelError::Noise)?;
    let mut out = BytesMut::new();
    put_record(&mut out, &scratch[..n]);
    writer.write_all(&out).await.map_err(ChannelError::Io)?;
    if !hs.is_handshake_finished() {
        return Err(ChannelError::HandshakeMalformed);
    }
    hs.into_transport_mode().map_err(ChannelError::Noise)
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    // Without NODELAY a reply may wait on Nagle's algorithm; failing to set it
    // only costs latency.
    let _ = stream.set_nodelay(true);
    let (read, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(read, record_codec());
    let config = shared.config;
    let handshake = tokio::select! {
        _ = shared.cancel.cancelled() => return,
        hs = timeout(config.handshake_timeout, handshake(&shared, &mut reader, &mut writer)) => hs,
    };
    let mut noise = match handshake {
        Ok(Ok(noise)) => noise,
        Ok(Err(e)) => {
            bump(&shared.counters.handshakes_failed);
            tracing::debug!("open channel: handshake failed: {e}");
            return;
        }
        Err(_) => {
            bump(&shared.counters.handshakes_failed);
            tracing::debug!("open channel: handshake timed out");
            return;
        }
    };
    bump(&shared.counters.handshakes_completed);
    let mut assembler = Assembler::new(config.request_bytes_max);
    let mut requests = 0u64;
    let reason = loop {
        let record = tokio::select! {
            _ = shared.cancel.cancelled() => break "shutdown",
            record = timeout(config.idle_timeout, next_record(&mut reader)) => record,
        };
        let record = match record {
            Err(_) => {
                bump(&shared.counters.connections_idle_closed);
                break "idle";
            }
            Ok(Err(_)) => break "closed",
            Ok(Ok(record)) => record,
        };
        let frame = match assembler.push(&mut noise, &record) {
            Ok(None) => continue,
            Ok(Some(frame)) => frame,
            Err(e) => {
                bump(&shared.counters.frames_refused);
                tracing::debug!("open channel: a request refused: {e}");
                break "refused";
            }
        };
        requests += 1;
        bump(&shared.counters.requests_received);
        let (status, body) = match Arc::clone(&shared.handlers).try_acquire_owned() {
            Err(_) => (Status::Busy, Vec::new()),
            Ok(permit) => {
                let handler = Arc::clone(&shared.handler);
                let job = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    handler.handle(&frame)
                });
                let answer = tokio::select! {
                    _ = shared.cancel.cancelled() => break "shutdown",
                    answer = job => answer,
                };
                match answer {
                    Ok(Some(reply))
                        if !reply.is_empty() && reply.len() <= config.reply_bytes_max =>
                    {
                        (Status::Answered, reply)
                    }
                    Ok(Some(reply)) => {
                        tracing::warn!(
                            "open channel: a handler's reply of {} bytes is outside 1..={}",
                            reply.len(),
                            config.reply_bytes_max
                        );
                        (Status::Unavailable, Vec::new())
                    }
                    Ok(None) => (Status::Unavailable, Vec::new()),
                    Err(e) => {
                        // Only the kind: a panic's message may quote request data.
                        let kind = if e.is_panic() {
                            "panicked"
                        } else {
                            "was cancelled"
                        };
                        tracing::error!("open channel: a handler {kind}");
                        (Status::Unavailable, Vec::new())
                    }
                }
            }
        };
        let counter = match status {
            Status::Answered => &shared.counters.replies_answered,
            Status::Busy => &shared.counters.replies_busy,
            Status::Unavailable => &shared.counters.replies_unavailable,
        };
        let sealed = match seal_frame(&mut noise, Some(status), &body) {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::error!("open channel: a reply could not be sealed: {e}");
                break "seal";
            }
        };
        // Counted before the write, so a client that read its reply sees it counted.
        bump(counter);
        match timeout(config.write_timeout, writer.write_all(&sealed)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break "write",
        }
    };
    if requests == 0 && !assembler.in_frame() {
        bump(&shared.counters.sessions_without_requests);
    }
    tracing::trace!("open channel: connection ended ({reason}) after {requests} requests");
}

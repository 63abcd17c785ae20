//! The node's observability endpoint: Prometheus metrics on `GET /metrics`,
//! liveness on `GET /healthz`, readiness on `GET /readyz`.
//!
//! [`MetricsServer::start`] installs the process's metrics recorder (a
//! `metrics-exporter-prometheus` recorder; installed once per process and
//! reused by later servers), serves HTTP/1 with axum on a small tokio runtime
//! of its own (one thread, and at most two more for blocking health checks),
//! and runs a sampler thread that turns the
//! [`Probe`]'s replica status into gauges every second. Everything else comes
//! from the facade calls in the engine (`vaultfleet::runtime::telemetry`) and
//! the vault service (`vaultfleet_vault::telemetry`).
//!
//! The server is bounded: at most [`CONNECTIONS_MAX`] connections, each closed
//! after [`CONNECTION_LIFETIME`] whatever it does, only `GET`, no request body
//! read, and a readiness check answered within [`HEALTH_TIMEOUT`]. Its answers
//! never carry a secret: numbers, and short fixed reasons.
//!
//! The recorder is process-wide: a process that runs several nodes (tests)
//! mixes their engine metrics, and the status gauges follow whichever
//! sampler wrote last. A daemon runs one node.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use ::metrics::{describe_gauge, gauge, Unit};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use vaultfleet::replica::Status;
use vaultfleet_net::NetStats;

/// Connections the endpoint serves at once; more wait to be accepted.
pub const CONNECTIONS_MAX: usize = 16;
/// A connection is closed this long after it was accepted, whatever it does
/// (a slow or idle client cannot hold one longer).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// `/readyz` answers "not ready" if the probe's health check takes longer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sampler turns the probe's status into gauges.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The largest request body accepted (no route reads one).
const BODY_BYTES_MAX: usize = 1024;
/// A gauge not set for this long leaves the page (a follower removed, or no
/// longer led by this replica; the status gauges of a stopped node).
const GAUGE_IDLE: Duration = Duration::from_secs(15);
/// A reason on `/readyz` is cut to this many characters.
const REASON_CHARS_MAX: usize = 160;
/// After a shutdown, connections still open get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Histogram buckets (seconds) of every `*_seconds` metric: from half a
/// millisecond (a local fsync) to ten seconds (a stuck HSM).
const BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Gauge: the replica's current term.
pub const TERM: &str = "vaultfleet_term";
/// Gauge: the highest log index known committed.
pub const COMMIT_INDEX: &str = "vaultfleet_commit_index";
/// Gauge: the highest log index applied to the state machine.
pub const APPLIED_INDEX: &str = "vaultfleet_applied_index";
/// Gauge: the first index the log store holds (rises with compaction).
pub const FIRST_INDEX: &str = "vaultfleet_first_index";
/// Gauge: the last index in the log.
pub const LAST_INDEX: &str = "vaultfleet_last_index";
/// Gauge: 1 while this replica is the leader, else 0.
pub const IS_LEADER: &str = "vaultfleet_is_leader";
/// Gauge: the leader this replica knows of (0: none).
pub const LEADER_ID: &str = "vaultfleet_leader_id";
/// Gauge: voters in the replica's configuration.
pub const VOTERS: &str = "vaultfleet_voters";
/// Gauge: learners in the replica's configuration.
pub const LEARNERS: &str = "vaultfleet_learners";
/// Gauge, label `follower` (a replica id), on the leader only: entries the
/// follower still lacks (the leader's last index minus its matched index).
pub const FOLLOWER_LAG: &str = "vaultfleet_follower_lag";
/// Gauge, label `follower`, on the leader only: the highest index known
/// replicated on the follower.
pub const FOLLOWER_MATCHED: &str = "vaultfleet_follower_matched_index";
/// Gauge, label `follower`, on the leader only: 1 if the leader heard from the
/// follower in the current election-timeout window, else 0.
pub const FOLLOWER_ACTIVE: &str = "vaultfleet_follower_active";
/// Gauge: 1 while the replica runs (the probe has a status), else 0.
pub const NODE_UP: &str = "vaultfleet_node_up";
/// Gauge: 1 while the node is ready (what `/readyz` answers 200 for), else 0.
pub const READY: &str = "vaultfleet_ready";
/// Gauge: 1 while the node's HSM answers, else 0.
pub const HSM_UP: &str = "vaultfleet_hsm_up";
/// Gauge: 1 while the node's data directory answers, else 0.
pub const DISK_UP: &str = "vaultfleet_disk_up";
/// Gauge: 1 while the vault service serves clients, else 0.
pub const SERVING: &str = "vaultfleet_vault_serving";

/// What the endpoint asks of the running node.
pub trait Probe: Send + Sync + 'static {
    /// The replica's status, or `None` once the node stopped.
    fn status(&self) -> Option<Status>;
    /// Whether the HSM and the disk answer and the vault serves. May block
    /// briefly (an HSM call); `/readyz` waits for it at most [`HEALTH_TIMEOUT`].
    fn health(&self) -> Health;
    /// The network transport's counters (`NetTransport::stats`), exported
    /// as the [`NET_COUNTERS`]; `None` (the default) for a node without one.
    fn net_stats(&self) -> Option<NetStats> {
        None
    }
}

/// The node's health, as a [`Probe`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `Ok` if the HSM answers; else a short reason, shown on `/readyz`
    /// (so it must hold no secret: no PIN, no key material).
    pub hsm: Result<(), String>,
    /// `Ok` if the data directory answers (readable and writable); else a
    /// short reason, shown on `/readyz`.
    pub disk: Result<(), String>,
    /// True while the vault service takes client requests.
    pub serving: bool,
}

/// Why a node is not ready: what `/readyz` answers with a 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The node stopped.
    #[error("the node stopped")]
    Stopped,
    /// The replica knows no leader (an election, or it is cut off).
    #[error("no leader known")]
    NoLeader,
    /// The HSM does not answer.
    #[error("the HSM does not answer: {0}")]
    Hsm(String),
    /// The data directory does not answer.
    #[error("the disk does not answer: {0}")]
    Disk(String),
    /// The vault service does not take requests.
    #[error("the vault service does not serve")]
    NotServing,
    /// The health check did not answer in time.
    #[error("the health check did not answer within {0:?}")]
    TimedOut(Duration),
    /// The health check itself failed (it panicked).
    #[error("the health check failed")]
    CheckFailed,
}

/// Whether the node `probe` watches is ready: it runs, knows a leader, its
/// HSM and disk answer, and its vault serves.
pub fn check_ready(probe: &dyn Probe) -> Result<(), NotReady> {
    let status = probe.status().ok_or(NotReady::Stopped)?;
    if status.leader.is_none() {
        return Err(NotReady::NoLeader);
    }
    let health = probe.health();
    health.hsm.map_err(|e| NotReady::Hsm(short(&e)))?;
    health.disk.map_err(|e| NotReady::Disk(short(&e)))?;
    if !health.serving {
        return Err(NotReady::NotServing);
    }
    Ok(())
}

/// A reason cut short and kept to one line of printable text.
fn short(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(REASON_CHARS_MAX)
        .collect()
}

/// Why the endpoint did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another metrics recorder (not one of this module's) is installed in
    /// this process.
    #[error("another metrics recorder is already installed in this process")]
    RecorderTaken,
    /// The histogram buckets were refused.
    #[error("the metrics recorder refused its histogram buckets")]
    Buckets(#[source] BuildError),
    /// The listen address could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The endpoint's runtime or threads could not be started.
    #[error("cannot start the metrics endpoint's {what}")]
    Start {
        /// What did not start.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The transport counters exported (of [`NetStats`]'s fields, the ones an
/// operator acts on): `vaultfleet_net_<field>_total`, set from the probe's
/// snapshot at each sample.
macro_rules! net_counters {
    ($($field:ident => $help:literal,)*) => {
        /// The names of the transport counters exported from
        /// [`Probe::net_stats`], each `vaultfleet_net_<field>_total` for a
        /// field of [`NetStats`] (see its documentation).
        pub const NET_COUNTERS: &[&str] = &[
            $(concat!("vaultfleet_net_", stringify!($field), "_total"),)*
        ];

        fn export_net(stats: &NetStats) {
            $(
                ::metrics::counter!(concat!("vaultfleet_net_", stringify!($field), "_total"))
                    .absolute(stats.$field);
            )*
        }

        fn describe_net() {
            $(
                ::metrics::describe_counter!(
                    concat!("vaultfleet_net_", stringify!($field), "_total"),
                    $help
                );
            )*
        }
    };
}

net_counters! {
    connections_dialed => "Outbound peer connections that finished their handshake",
    connections_accepted => "Inbound connections that finished their handshake",
    connections_closed => "Established connections closed, for any reason",
    connections_closed_idle => "Connections closed because nothing arrived within the idle timeout",
    connections_closed_protocol => "Connections closed for a protocol violation",
    dials_failed => "Outbound attempts that failed to connect or handshake",
    handshakes_failed => "Inbound handshakes that failed (bad bytes, another fleet or version)",
    handshakes_refused_unpinned => "Inbound handshakes refused: the initiator's key is not pinned",
    handshakes_timed_out => "Inbound handshakes that did not finish in time",
    frames_sent => "Raft frames written to a socket",
    frames_received => "Raft frames received on authenticated connections",
    bytes_written => "Bytes written to sockets after the handshake",
    frames_dropped_on_disconnect => "Queued frames dropped when their connection failed",
    sends_refused_queue_full => "Sends refused because the peer's queue was full",
    sends_refused_peer_down => "Sends refused because the peer was down and in backoff",
    client_connections_accepted => "Client connections whose handshake succeeded",
    client_requests => "Client requests received and decoded",
    client_requests_overloaded => "Client requests answered Overloaded",
    client_requests_timed_out => "Client requests answered TimedOut",
    client_requests_forbidden => "Client requests refused Forbidden (no admin role)",
    snapshots_sent => "Snapshots whose last chunk was written to the socket",
    snapshots_send_failed => "Snapshots whose send failed",
    snapshots_received => "Reassembled snapshots that passed every check and were delivered",
    snapshot_chunks_refused => "Snapshot chunks refused (order, offset, total or budget)",
}

/// The process's recorder handle, once installed.
static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the Prometheus recorder as the process's metrics recorder, or
/// returns the one installed by an earlier call. Fails if another recorder
/// was installed by someone else.
pub fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let mut installed = RECORDER.lock();
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), BUCKETS_SECONDS)
        .map_err(MetricsError::Buckets)?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|_| MetricsError::RecorderTaken)?;
    vaultfleet::runtime::telemetry::describe();
    vaultfleet_vault::telemetry::describe();
    describe();
    describe_net();
    *installed = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    describe_gauge!(TERM, "The replica's current term");
    describe_gauge!(COMMIT_INDEX, "The highest log index known committed");
    describe_gauge!(APPLIED_INDEX, "The highest log index applied");
    describe_gauge!(FIRST_INDEX, "The first index the log store holds");
    describe_gauge!(LAST_INDEX, "The last index in the log");
    describe_gauge!(IS_LEADER, "1 while this replica is the leader");
    describe_gauge!(LEADER_ID, "The leader this replica knows of (0: none)");
    describe_gauge!(VOTERS, Unit::Count, "Voters in the configuration");
    describe_gauge!(LEARNERS, Unit::Count, "Learners in the configuration");
    describe_gauge!(
        FOLLOWER_LAG,
        "On the leader: entries a follower still lacks, by follower"
    );
    describe_gauge!(
        FOLLOWER_MATCHED,
        "On the leader: the highest index replicated on a follower"
    );
    describe_gauge!(
        FOLLOWER_ACTIVE,
        "On the leader: 1 if a follower answered in the current election window"
    );
    describe_gauge!(NODE_UP, "1 while the replica runs");
    describe_gauge!(READY, "1 while the node is ready (/readyz answers 200)");
    describe_gauge!(HSM_UP, "1 while the node's HSM answers");
    describe_gauge!(DISK_UP, "1 while the node's data directory answers");
    describe_gauge!(SERVING, "1 while the vault service serves clients");
}

/// The probe's health is asked every this many samples (a check may write
/// and sync a file, or call the HSM); `/readyz` asks it on every request.
const HEALTH_EVERY: u32 = 5;

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// Sets the status gauges from one sample of the probe, and the health
/// gauges from `health` (the last health check).
fn sample(probe: &dyn Probe, health: &Health) {
    let status = probe.status();
    gauge!(NODE_UP).set(flag(status.is_some()));
    if let Some(s) = &status {
        // Indexes and terms above 2^53 lose precision as gauges: far off.
        gauge!(TERM).set(s.term as f64);
        gauge!(COMMIT_INDEX).set(s.commit as f64);
        gauge!(APPLIED_INDEX).set(s.applied as f64);
        gauge!(FIRST_INDEX).set(s.first_index as f64);
        gauge!(LAST_INDEX).set(s.last_index as f64);
        gauge!(IS_LEADER).set(flag(s.leader == Some(s.id)));
        gauge!(LEADER_ID).set(s.leader.unwrap_or(0) as f64);
        gauge!(VOTERS).set(s.voters.len() as f64);
        gauge!(LEARNERS).set(s.learners.len() as f64);
        // Empty unless this replica leads; a follower no longer listed leaves
        // the page after `GAUGE_IDLE`.
        for f in &s.followers {
            let follower = f.id.to_string();
            gauge!(FOLLOWER_LAG, "follower" => follower.clone()).set(f.lag as f64);
            gauge!(FOLLOWER_MATCHED, "follower" => follower.clone()).set(f.matched as f64);
            gauge!(FOLLOWER_ACTIVE, "follower" => follower).set(flag(f.recent_active));
        }
    } else {
        gauge!(IS_LEADER).set(0.0);
        gauge!(LEADER_ID).set(0.0);
    }
    if let Some(stats) = probe.net_stats() {
        export_net(&stats);
    }
    gauge!(HSM_UP).set(flag(health.hsm.is_ok()));
    gauge!(DISK_UP).set(flag(health.disk.is_ok()));
    gauge!(SERVING).set(flag(health.serving));
    let ready = status.as_ref().is_some_and(|s| s.leader.is_some())
        && health.hsm.is_ok()
        && health.disk.is_ok()
        && health.serving;
    gauge!(READY).set(flag(ready));
}

/// The running endpoint. [`shutdown`](Self::shutdown) (or dropping it) stops
/// the server and the sampler.
pub struct MetricsServer {
    addr: SocketAddr,
    stop_server: watch::Sender<bool>,
    stop_sampler: Mutex<Option<mpsc::Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct App {
    handle: PrometheusHandle,
    probe: Arc<dyn Probe>,
}

impl MetricsServer {
    /// Installs (or reuses) the process's Prometheus recorder, binds `addr`
    /// (port 0: any free port, see [`local_addr`](Self::local_addr)), and
    /// serves `/metrics`, `/healthz` and `/readyz` for the node `probe`
    /// watches, sampling its status every [`SAMPLE_INTERVAL`].
    pub fn start(addr: SocketAddr, probe: Arc<dyn Probe>) -> Result<MetricsServer, MetricsError> {
        let handle = install_recorder()?;
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .and_then(|a| listener.set_nonblocking(true).map(|()| a))
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(2)
            .thread_name("vaultfleet-metrics-blocking")
            .build()
            .map_err(|source| MetricsError::Start {
                what: "runtime",
                source,
            })?;
        let (stop_server, stopped) = watch::channel(false);
        let app = App {
            handle: handle.clone(),
            probe: Arc::clone(&probe),
        };
        let server = std::thread::Builder::new()
            .name("vaultfleet-metrics".to_string())
            .spawn(move || serve(runtime, listener, app, stopped))
            .map_err(|source| MetricsError::Start {
                what: "server thread",
                source,
            })?;
        let (stop_sampler, sampler_stopped) = mpsc::channel::<()>();
        let sampler = std::thread::Builder::new()
            .name("vaultfleet-metrics-sampler".to_string())
            .spawn(move || {
                let mut health = probe.health();
                let mut turn: u32 = 0;
                loop {
                    sample(probe.as_ref(), &health);
                    handle.run_upkeep();
                    match sampler_stopped.recv_timeout(SAMPLE_INTERVAL) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    turn = turn.wrapping_add(1);
                    if turn % HEALTH_EVERY == 0 {
                        health = probe.health();
                    }
                }
            });
        let this = MetricsServer {
            addr: local,
            stop_server,
            stop_sampler: Mutex::new(Some(stop_sampler)),
            threads: Mutex::new(vec![server]),
        };
        match sampler {
            Ok(t) => this.threads.lock().push(t),
            Err(source) => {
                this.shutdown();
                return Err(MetricsError::Start {
                    what: "sampler thread",
                    source,
                });
            }
        }
        tracing::info!(addr = %local, "metrics endpoint listening");
        Ok(this)
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and the sampler and waits for their threads (open
    /// connections get a short grace). Idempotent.
    pub fn shutdown(&self) {
        self.stop_server.send_replace(true);
        drop(self.stop_sampler.lock().take());
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a metrics endpoint thread panicked");
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The server thread: serves until told to stop, then gives open connections
/// [`SHUTDOWN_GRACE`].
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    app: App,
    stopped: watch::Receiver<bool>,
) {
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(app);
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("metrics endpoint: cannot listen: {e}");
                return;
            }
        };
        let bounded = Bounded {
            listener,
            slots: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
        };
        let mut on_stop = stopped.clone();
        let mut grace = stopped;
        let server = axum::serve(bounded, router).with_graceful_shutdown(async move {
            // A dropped sender stops too.
            let _ = on_stop.wait_for(|s| *s).await;
        });
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!("metrics endpoint failed: {e}");
                }
            }
            () = async move {
                let _ = grace.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {}
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
}

async fn metrics_page(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.handle.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<App>) -> (StatusCode, String) {
    let probe = Arc::clone(&app.probe);
    let check = tokio::task::spawn_blocking(move || check_ready(probe.as_ref()));
    let verdict = match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(_panicked)) => Err(NotReady::CheckFailed),
        Err(_elapsed) => Err(NotReady::TimedOut(HEALTH_TIMEOUT)),
    };
    match verdict {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// A listener that serves at most [`CONNECTIONS_MAX`] connections at once,
/// each for at most [`CONNECTION_LIFETIME`].
struct Bounded {
    listener: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = BoundedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let permit = match Arc::clone(&self.slots).acquire_owned().await {
                Ok(p) => p,
                // Never closed; were it, wait instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let io = BoundedIo {
                        stream,
                        deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        _slot: permit,
                    };
                    return (io, addr);
                }
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::debug!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection that fails its reads and writes once its lifetime is over,
/// and holds a connection slot until dropped.
struct BoundedIo {
    stream: tokio::net::TcpStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl BoundedIo {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "metrics connection lifetime is over",
    )
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

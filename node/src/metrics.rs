//! The node's observability endpoint: Prometheus metrics on `GET /metrics`,
//! liveness on `GET /healthz`, readiness on `GET /readyz`.
//!
//! [`MetricsServer::start`] installs the process's metrics recorder (a
//! `metrics-exporter-prometheus` recorder; installed once per process and
//! reused by later servers), serves HTTP/1 with axum on a small tokio runtime
//! of its own (one thread), and runs two threads beside it: a sampler that
//! turns the [`Probe`]'s replica status into gauges every [`SAMPLE_INTERVAL`],
//! and a health checker that asks [`Probe::health`] every
//! [`HEALTH_INTERVAL`], one check at a time. Everything else comes from the
//! facade calls in the engine (`vaultfleet::runtime::telemetry`) and the
//! vault service (`vaultfleet_vault::telemetry`).
//!
//! The endpoint is unauthenticated, so no request costs the node more than
//! reading memory:
//! * `/readyz` answers from the replica's published status and the health
//!   checker's last result; it never calls the HSM or the disk itself, so a
//!   flood of requests makes no HSM call and no fsync;
//! * connections are accepted at once; at most [`CONNECTIONS_MAX`] are served
//!   by the HTTP server, at most [`CONNECTIONS_PER_SOURCE_MAX`] of them from
//!   one source address, each closed if its request head has not arrived
//!   within [`HEAD_TIMEOUT`], after one answer, and after
//!   [`CONNECTION_LIFETIME`] whatever it does;
//! * a connection beyond those (at most [`OVERFLOW_MAX`] at once) gets a
//!   fixed answer without a slot: `200 ok` to `GET /healthz`, `503 busy` to
//!   anything else; beyond that it is closed at once.
//!
//! Its answers never carry a secret nor a path: numbers, and fixed reason
//! words (`hsm`, `disk`, `no leader`, ...). The details of a failed health
//! check go to the log.
//!
//! The recorder is process-wide: a process that runs several nodes (tests)
//! mixes their engine metrics, and the status gauges follow whichever
//! sampler wrote last. A daemon runs one node.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::metrics::{describe_gauge, gauge, Unit};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use parking_lot::Mutex;
use tokio::sync::watch;
use vaultfleet::replica::Status;
use vaultfleet_net::http::{BoundedListener, HttpLimits};
use vaultfleet_net::NetStats;

/// Connections the HTTP server serves at once; more get a fixed answer
/// (see [`OVERFLOW_MAX`]).
pub const CONNECTIONS_MAX: usize = 16;
/// Of the [`CONNECTIONS_MAX`], at most this many from one source address.
pub const CONNECTIONS_PER_SOURCE_MAX: usize = 4;
/// Connections answered without a slot at once (`/healthz` answered, the
/// rest `503 busy`); more are closed at once.
pub const OVERFLOW_MAX: usize = 64;
/// Of the [`OVERFLOW_MAX`], at most this many from one source address.
pub const OVERFLOW_PER_SOURCE_MAX: usize = 32;
/// A connection whose request head has not arrived this long after it was
/// accepted is closed.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection is closed this long after it was accepted, whatever it does
/// (a slow reader cannot hold one longer).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// How often the health checker asks [`Probe::health`] (one check at a
/// time; the next starts this long after the last one ended).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// A health check still running after this long makes the node not ready
/// (and its HSM and disk gauges 0) until it returns.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the sampler turns the probe's status into gauges.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The largest request body accepted (no route reads one).
const BODY_BYTES_MAX: usize = 1024;
/// The listener's caps, from the constants above.
const LIMITS: HttpLimits = HttpLimits {
    connections: CONNECTIONS_MAX,
    per_source: CONNECTIONS_PER_SOURCE_MAX,
    overflow: OVERFLOW_MAX,
    overflow_per_source: OVERFLOW_PER_SOURCE_MAX,
    head_timeout: HEAD_TIMEOUT,
    lifetime: CONNECTION_LIFETIME,
    ok_path: Some("/healthz"),
};
/// A gauge not set for this long leaves the page (a follower removed, or no
/// longer led by this replica; the status gauges of a stopped node).
const GAUGE_IDLE: Duration = Duration::from_secs(15);
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
    /// The replica's status, or `None` once the node stopped. Called by the
    /// sampler and on each `/readyz`: it must be cheap (a published value).
    fn status(&self) -> Option<Status>;
    /// Whether the HSM and the disk answer and the vault serves. May block
    /// (an HSM call, an fsync): only the health checker calls it, one call at
    /// a time, every [`HEALTH_INTERVAL`].
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
    /// `Ok` if the HSM answers; else the reason, logged (never shown on
    /// `/readyz`, which says `hsm`), so it must hold no secret.
    pub hsm: Result<(), String>,
    /// `Ok` if the data directory answers (readable and writable); else the
    /// reason, logged (`/readyz` says `disk`).
    pub disk: Result<(), String>,
    /// True while the vault service takes client requests.
    pub serving: bool,
}

/// Why a node is not ready: what `/readyz` answers with a 503. Its text is
/// a fixed word or two, never a path nor an OS error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The node stopped.
    #[error("stopped")]
    Stopped,
    /// The replica knows no leader (an election, or it is cut off).
    #[error("no leader")]
    NoLeader,
    /// The HSM does not answer (the reason is in the log).
    #[error("hsm")]
    Hsm,
    /// The data directory does not answer (the reason is in the log).
    #[error("disk")]
    Disk,
    /// The vault service does not take requests.
    #[error("vault not serving")]
    NotServing,
    /// No health check finished yet.
    #[error("health unknown")]
    HealthUnknown,
    /// The health check running has not returned within [`HEALTH_TIMEOUT`].
    #[error("health check stuck")]
    HealthStuck,
}

/// Whether a node is ready, given its `status` (`None`: stopped) and its
/// last health check (`Err`: none to judge by): it runs, knows a leader, its
/// HSM and disk answer, and its vault serves. Calls nothing.
pub fn check_ready(
    status: Option<&Status>,
    health: Result<&Health, NotReady>,
) -> Result<(), NotReady> {
    let status = status.ok_or(NotReady::Stopped)?;
    if status.leader.is_none() {
        return Err(NotReady::NoLeader);
    }
    let health = health?;
    health.hsm.as_ref().map_err(|_| NotReady::Hsm)?;
    health.disk.as_ref().map_err(|_| NotReady::Disk)?;
    if !health.serving {
        return Err(NotReady::NotServing);
    }
    Ok(())
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
    streams_sent => "Streamed snapshots the receiver said it delivered to its replica (reported Written)",
    streams_send_failed => "Streamed snapshots whose send failed (including refused by the receiver)",
    streams_refused_by_peer => "Streamed snapshots the receiver refused while this sender was sending them or awaiting their delivery (each stream once)",
    streams_refused_by_peer_other => "Streamed snapshots the receiver refused for another reason: a duplicate or unknown stream id, a file error, a key no longer pinned, an internal failure, or a reason byte this build does not know",
    streams_refused_by_peer_busy => "Streamed snapshots the receiver refused: its stream slots or this peer's share were full",
    streams_refused_by_peer_not_admitted => "Streamed snapshots the receiver's replica did not admit (sender, term, index or group)",
    streams_refused_by_peer_bad_descriptor => "Streamed snapshots refused for their descriptor or message",
    streams_refused_by_peer_too_large => "Streamed snapshots refused above the receiver's size limit",
    streams_refused_by_peer_no_space => "Streamed snapshots refused because the receiver's disk lacked the space",
    streams_refused_by_peer_bad_chunk => "Streamed snapshots refused for a chunk out of order or of the wrong size",
    streams_refused_by_peer_digest => "Streamed snapshots refused at the end: their chunks did not match the digest, were tampered with or incomplete",
    streams_refused_by_peer_timeout => "Streamed snapshots the receiver dropped: no whole chunk within the chunk timeout",
    streams_refused_by_peer_credit => "Streamed snapshots refused for sending beyond the receiver's credit",
    streams_credit_timed_out => "Streamed snapshots given up: the receiver granted no credit within the chunk timeout",
    streams_delivery_timed_out => "Streamed snapshots given up: the receiver did not say it delivered them within a chunk timeout of its last credit after their end",
    streams_delivered_unknown => "Delivered frames ignored: for a stream not awaiting delivery",
    streams_refusals_ignored => "Refused frames ignored: for a stream this sender neither sends nor awaits (given up or ended already)",
    streams_cancelled => "Streamed snapshots this sender gave up after opening them and cancelled at the receiver",
    streams_cancelled_by_peer => "Streamed snapshots the sender cancelled: dropped here at once (slot, file work, partial file)",
    streams_refused_unpinned => "Streamed snapshots refused at their end: the sender's key was no longer pinned for its replica",
    streams_refused_dropped => "Streamed snapshots refused at their end: the replica's inbox could not take the message (mailbox full or stopped)",
    stream_bytes_sent => "Snapshot file bytes sent in streamed snapshots",
    streams_received => "Streamed snapshots received, checked against their digest and delivered",
    streams_refused => "Streamed snapshots refused by this receiver",
    streams_abandoned => "Streamed snapshots dropped unfinished by this receiver (no progress within the chunk timeout, replaced by a newer stream, connection lost)",
    stream_bytes_received => "Snapshot file bytes received in streamed snapshots",
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

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

/// The wall clock: a stuck health check is one that took too long in real
/// time (the endpoint is runtime code, not the deterministic core).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// The health checker's results, read by the sampler and by `/readyz`.
#[derive(Default)]
struct Checks {
    /// The last check that finished.
    last: Option<Health>,
    /// When the check running now started, if one runs.
    running_since: Option<Instant>,
}

/// The health checks' shared results (see [`check_health`]).
#[derive(Clone, Default)]
struct Monitor(Arc<Mutex<Checks>>);

impl Monitor {
    /// The health to judge the node by: the last check's, unless none
    /// finished yet or the one running is overdue.
    fn current(&self) -> Result<Health, NotReady> {
        let checks = self.0.lock();
        if checks
            .running_since
            .is_some_and(|since| now().saturating_duration_since(since) > HEALTH_TIMEOUT)
        {
            return Err(NotReady::HealthStuck);
        }
        checks.last.clone().ok_or(NotReady::HealthUnknown)
    }
}

/// The health checker's loop: asks the probe, one check at a time, every
/// [`HEALTH_INTERVAL`], until `stop` is dropped. A check that panics counts
/// as a failed one.
fn check_health(probe: &dyn Probe, monitor: &Monitor, stop: &mpsc::Receiver<()>) {
    loop {
        monitor.0.lock().running_since = Some(now());
        let health = catch_unwind(AssertUnwindSafe(|| probe.health())).unwrap_or_else(|_| {
            tracing::error!("metrics endpoint: the health check panicked");
            let failed = || Err("the health check panicked".to_string());
            Health {
                hsm: failed(),
                disk: failed(),
                serving: false,
            }
        });
        let previous = {
            let mut checks = monitor.0.lock();
            checks.running_since = None;
            checks.last.replace(health.clone())
        };
        log_changes(previous.as_ref(), &health);
        match stop.recv_timeout(HEALTH_INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// Logs what changed between two health checks: the reasons `/readyz`
/// does not show.
fn log_changes(previous: Option<&Health>, health: &Health) {
    for (what, before, after) in [
        ("hsm", previous.map(|h| &h.hsm), &health.hsm),
        ("disk", previous.map(|h| &h.disk), &health.disk),
    ] {
        match (before, after) {
            (_, Err(reason)) if before != Some(after) => {
                tracing::warn!(check = what, %reason, "health check failed");
            }
            (Some(Err(_)), Ok(())) => tracing::info!(check = what, "health check passes again"),
            _ => {}
        }
    }
    let was_serving = previous.is_none_or(|h| h.serving);
    if was_serving != health.serving {
        tracing::info!(serving = health.serving, "vault service serving changed");
    }
}

/// Sets the status gauges from one sample of the probe, and the health
/// gauges from `health` (the last health check, if one counts).
fn sample(probe: &dyn Probe, health: Result<&Health, NotReady>) {
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
    let (hsm, disk, serving) = match health {
        Ok(h) => (h.hsm.is_ok(), h.disk.is_ok(), h.serving),
        Err(_) => (false, false, false),
    };
    gauge!(HSM_UP).set(flag(hsm));
    gauge!(DISK_UP).set(flag(disk));
    gauge!(SERVING).set(flag(serving));
    gauge!(READY).set(flag(check_ready(status.as_ref(), health).is_ok()));
}

/// One turn of the sampler. A panic (in the probe, say) sets the ready, HSM
/// and disk gauges to 0 rather than leaving them at their last value until
/// they vanish: an alert on `vaultfleet_ready == 0` fires.
fn sample_once(probe: &dyn Probe, monitor: &Monitor) {
    let health = monitor.current();
    let sampled = catch_unwind(AssertUnwindSafe(|| {
        sample(probe, health.as_ref().map_err(|why| *why));
    }));
    if sampled.is_err() {
        tracing::error!(
            "metrics endpoint: sampling the node panicked; ready, hsm_up and disk_up set to 0"
        );
        gauge!(READY).set(0.0);
        gauge!(HSM_UP).set(0.0);
        gauge!(DISK_UP).set(0.0);
    }
}

/// The running endpoint. [`shutdown`](Self::shutdown) (or dropping it) stops
/// the server, the sampler and the health checker.
pub struct MetricsServer {
    addr: SocketAddr,
    stop_server: watch::Sender<bool>,
    /// Dropped to stop the sampler and the health checker.
    stop_threads: Mutex<Vec<mpsc::Sender<()>>>,
    /// The server and the sampler (the health checker is not waited for: it
    /// may be inside a stuck check; it ends once that returns).
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
    monitor: Monitor,
}

impl MetricsServer {
    /// Installs (or reuses) the process's Prometheus recorder, binds `addr`
    /// (port 0: any free port, see [`local_addr`](Self::local_addr)), and
    /// serves `/metrics`, `/healthz` and `/readyz` for the node `probe`
    /// watches, sampling its status every [`SAMPLE_INTERVAL`] and its health
    /// every [`HEALTH_INTERVAL`].
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
            .build()
            .map_err(|source| MetricsError::Start {
                what: "runtime",
                source,
            })?;
        let monitor = Monitor::default();
        let (stop_server, stopped) = watch::channel(false);
        let app = App {
            handle: handle.clone(),
            probe: Arc::clone(&probe),
            monitor: monitor.clone(),
        };
        let server = std::thread::Builder::new()
            .name("vaultfleet-metrics".to_string())
            .spawn(move || serve(runtime, listener, app, stopped))
            .map_err(|source| MetricsError::Start {
                what: "server thread",
                source,
            })?;
        let this = MetricsServer {
            addr: local,
            stop_server,
            stop_threads: Mutex::new(Vec::new()),
            threads: Mutex::new(vec![server]),
        };

        let (stop_checker, checker_stopped) = mpsc::channel::<()>();
        this.stop_threads.lock().push(stop_checker);
        let (checker_probe, checker_monitor) = (Arc::clone(&probe), monitor.clone());
        let checker = std::thread::Builder::new()
            .name("vaultfleet-metrics-health".to_string())
            .spawn(move || {
                check_health(checker_probe.as_ref(), &checker_monitor, &checker_stopped);
            });
        if let Err(source) = checker {
            this.shutdown();
            return Err(MetricsError::Start {
                what: "health checker thread",
                source,
            });
        }

        let (stop_sampler, sampler_stopped) = mpsc::channel::<()>();
        this.stop_threads.lock().push(stop_sampler);
        let sampler = std::thread::Builder::new()
            .name("vaultfleet-metrics-sampler".to_string())
            .spawn(move || loop {
                sample_once(probe.as_ref(), &monitor);
                handle.run_upkeep();
                match sampler_stopped.recv_timeout(SAMPLE_INTERVAL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            });
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

    /// Stops the server, the sampler and the health checker, and waits for
    /// the server and the sampler (open connections get a short grace).
    /// Idempotent.
    pub fn shutdown(&self) {
        self.stop_server.send_replace(true);
        self.stop_threads.lock().clear();
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
        .layer(axum::middleware::map_response(close_after))
        .with_state(app);
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("metrics endpoint: cannot listen: {e}");
                return;
            }
        };
        let bounded = BoundedListener::new(listener, LIMITS);
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

/// One answer per connection: no client holds a slot between requests.
async fn close_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
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

/// Readiness from the replica's published status and the health checker's
/// last result: no HSM call, no disk access.
async fn readyz(State(app): State<App>) -> (StatusCode, String) {
    // A probe that panics counts as a stopped node.
    let status = catch_unwind(AssertUnwindSafe(|| app.probe.status())).unwrap_or(None);
    let health = app.monitor.current();
    match check_ready(status.as_ref(), health.as_ref().map_err(|why| *why)) {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

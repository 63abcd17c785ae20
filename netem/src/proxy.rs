//! The control side: [`Proxy`] owns a small tokio runtime of its own (so sync
//! tests and async tests drive it alike), the topology behind a mutex, and two
//! watch channels: one bumped at every fault change so the connection tasks
//! re-evaluate at once, one raised at shutdown. [`Link`] is a cheap handle on
//! one directed link.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::connection::serve_link;
use crate::error::NetemError;
use crate::faults::{CutMode, Latency, LinkMode};
use crate::stats::LinkStats;
use crate::topology::{EndpointIx, LinkIx, Topology, PPM_MAX};

/// The environment variable [`ProxyConfig::seed_from_env`] reads.
pub const SEED_ENV: &str = "VAULTFLEET_NETEM_SEED";

/// Limits and seed of a [`Proxy`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Seeds every random draw (latency jitter, reset chance). Tests print it.
    pub seed: u64,
    /// Largest chunk read from a socket at once.
    pub chunk_bytes_max: usize,
    /// Bytes one direction of one connection may hold queued (in flight
    /// through the latency, or stalled); beyond it the proxy stops reading and
    /// TCP flow control pushes back on the sender. A direction may go over by
    /// less than one chunk.
    pub buffer_bytes_max: usize,
    /// Connections open at once on one link; more are accepted and reset.
    pub connections_per_link_max: usize,
    /// Bound on connecting to a link's target.
    pub upstream_connect_timeout: Duration,
    /// Worker threads of the proxy's runtime.
    pub worker_threads: usize,
}

impl ProxyConfig {
    /// Defaults with this seed: 16 KiB chunks, 1 MiB per direction, 256
    /// connections per link, 5 s upstream connect, one worker thread.
    pub fn new(seed: u64) -> ProxyConfig {
        ProxyConfig {
            seed,
            chunk_bytes_max: 16 * 1024,
            buffer_bytes_max: 1024 * 1024,
            connections_per_link_max: 256,
            upstream_connect_timeout: Duration::from_secs(5),
            worker_threads: 1,
        }
    }

    /// The seed in [`SEED_ENV`] if it is set (to rerun a failure), else
    /// `default`.
    pub fn seed_from_env(default: u64) -> Result<u64, NetemError> {
        match std::env::var(SEED_ENV) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| NetemError::BadSeed { variable: SEED_ENV }),
            Err(_) => Ok(default),
        }
    }
}

/// State shared by the control handles and every task.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) topology: Mutex<Topology>,
    /// Bumped at every fault change.
    changes: watch::Sender<u64>,
    /// Raised once, at shutdown.
    shutdown: watch::Sender<bool>,
    tasks_live: Mutex<usize>,
    tasks_idle: Condvar,
}

impl Shared {
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Applies a change to the topology and wakes every task to re-evaluate.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Topology) -> Result<T, NetemError>,
    ) -> Result<T, NetemError> {
        let out = f(&mut self.topology.lock())?;
        self.changes.send_modify(|generation| *generation += 1);
        Ok(out)
    }
}

/// Counts a running task; the count drops when the guard does (the task
/// ended, or the runtime dropped it).
pub(crate) struct TaskGuard(Arc<Shared>);

impl TaskGuard {
    /// `None` once shutdown began: no new task may start.
    pub(crate) fn new(shared: &Arc<Shared>) -> Option<TaskGuard> {
        let mut live = shared.tasks_live.lock();
        if shared.is_shut_down() {
            return None;
        }
        *live += 1;
        Some(TaskGuard(shared.clone()))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut live = self.0.tasks_live.lock();
        debug_assert!(*live > 0);
        *live -= 1;
        if *live == 0 {
            self.0.tasks_idle.notify_all();
        }
    }
}

/// A fault-injecting TCP proxy for loopback tests.
///
/// Endpoints (replicas, named by the test) live in datacenters. For each
/// directed pair (from, to) the proxy opens a [`Link`]: a listener on
/// 127.0.0.1 dedicated to `from`'s connections to `to`, forwarding to `to`'s
/// target address. Tell `from` that `to` is at `link.addr()`. Faults change at
/// any time from any thread; see the crate documentation for the model.
///
/// Dropping the proxy, or [`shutdown`](Proxy::shutdown), ends every task and
/// closes every socket it holds.
pub struct Proxy {
    shared: Arc<Shared>,
    runtime: Mutex<Option<Runtime>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("seed", &self.shared.config.seed)
            .field("links", &self.shared.topology.lock().links.len())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Starts a proxy (its runtime; no link yet). Callable from sync or async code.
    pub fn start(config: ProxyConfig) -> Result<Proxy, NetemError> {
        if config.chunk_bytes_max == 0 {
            return Err(NetemError::InvalidConfig(
                "chunk_bytes_max must be positive",
            ));
        }
        if config.buffer_bytes_max == 0 {
            return Err(NetemError::InvalidConfig(
                "buffer_bytes_max must be positive",
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .thread_name("vaultfleet-netem")
            .enable_io()
            .enable_time()
            .build()
            .map_err(NetemError::Runtime)?;
        let shared = Arc::new(Shared {
            config,
            topology: Mutex::new(Topology::default()),
            changes: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            tasks_live: Mutex::new(0),
            tasks_idle: Condvar::new(),
        });
        Ok(Proxy {
            shared,
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// The seed every random draw derives from.
    pub fn seed(&self) -> u64 {
        self.shared.config.seed
    }

    /// Adds an endpoint named `name` in datacenter `datacenter`, with no
    /// target address yet (see [`set_target`](Proxy::set_target)).
    pub fn add_endpoint(&self, name: &str, datacenter: &str) -> Result<(), NetemError> {
        self.shared
            .change(|t| t.add_endpoint(name, datacenter, None).map(|_| ()))
    }

    /// Where connections to `name` are forwarded: its real listener. May be
    /// set after links to it exist (until then their connections are reset on
    /// accept) and changed later (a restarted replica on a new port): a
    /// connection already forwarded keeps its upstream socket, and every
    /// connection connected upstream afterwards uses the new address.
    pub fn set_target(&self, name: &str, target: SocketAddr) -> Result<(), NetemError> {
        self.shared.change(|t| {
            let ix = t.endpoint(name)?;
            t.endpoints[ix].target = Some(target);
            Ok(())
        })
    }

    /// The link carrying `from`'s connections to `to`, its listener bound on
    /// 127.0.0.1 at the first call; later calls return the same link.
    pub fn link(&self, from: &str, to: &str) -> Result<Link, NetemError> {
        let runtime = self.runtime.lock();
        let Some(runtime) = runtime.as_ref() else {
            return Err(NetemError::ShutDown);
        };
        let mut topology = self.shared.topology.lock();
        let (from_ix, to_ix) = topology.pair(from, to)?;
        if let Some(link) = topology.link_of(from_ix, to_ix) {
            return Ok(self.handle(link));
        }
        let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .map_err(NetemError::Bind)?;
        listener.set_nonblocking(true).map_err(NetemError::Bind)?;
        let addr = listener.local_addr().map_err(NetemError::Bind)?;
        let guard = TaskGuard::new(&self.shared).ok_or(NetemError::ShutDown)?;
        let link = topology.add_link(from_ix, to_ix, addr);
        drop(topology);
        runtime.spawn(serve_link(listener, self.shared.clone(), link, guard));
        Ok(self.handle(link))
    }

    /// Opens (or returns) the link of every ordered pair of the endpoints
    /// added so far: a full mesh, `n * (n - 1)` links, in the order of the
    /// endpoints' addition.
    pub fn mesh(&self) -> Result<Vec<Link>, NetemError> {
        let names: Vec<String> = self
            .shared
            .topology
            .lock()
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .collect();
        let mut links = Vec::with_capacity(names.len() * names.len().saturating_sub(1));
        for from in &names {
            for to in names.iter().filter(|to| *to != from) {
                links.push(self.link(from, to)?);
            }
        }
        Ok(links)
    }

    /// Every link opened so far, in the order they were opened.
    pub fn links(&self) -> Vec<Link> {
        let count = self.shared.topology.lock().links.len();
        (0..count).map(|link| self.handle(link)).collect()
    }

    fn handle(&self, link: LinkIx) -> Link {
        Link {
            shared: self.shared.clone(),
            link,
        }
    }

    fn on_path(
        &self,
        from: &str,
        to: &str,
        f: impl FnOnce(&mut Topology, EndpointIx, EndpointIx),
    ) -> Result<(), NetemError> {
        self.shared.change(|t| {
            let (a, b) = t.pair(from, to)?;
            f(t, a, b);
            Ok(())
        })
    }

    /// Delay of bytes travelling from `from` to `to` (on every link between
    /// them, whichever side dialled). Overrides datacenter latencies.
    pub fn set_latency(&self, from: &str, to: &str, latency: Latency) -> Result<(), NetemError> {
        self.on_path(from, to, |t, a, b| t.set_latency(a, b, latency))
    }

    /// Caps bytes per second from `from` to `to`, per connection; `None`
    /// removes the cap.
    pub fn set_bandwidth(
        &self,
        from: &str,
        to: &str,
        bytes_per_sec: Option<NonZeroU64>,
    ) -> Result<(), NetemError> {
        self.on_path(from, to, |t, a, b| t.set_bandwidth(a, b, bytes_per_sec))
    }

    /// One-way loss from `from` to `to` while the other way flows. A TCP
    /// stream cannot lose single packets, so this is a one-way black hole:
    /// the proxy stops reading that direction, the sender's buffers fill, and
    /// the held bytes arrive in order if the loss ends before an end gives up.
    pub fn set_loss(&self, from: &str, to: &str, lost: bool) -> Result<(), NetemError> {
        self.on_path(from, to, |t, a, b| t.set_loss(a, b, lost))
    }

    /// Chance, in parts per million, that a chunk read from `from` towards
    /// `to` resets its connection instead of being forwarded; drawn from the
    /// connection's seeded generator. 1000000 resets at the first chunk.
    pub fn set_reset_chance(&self, from: &str, to: &str, ppm: u32) -> Result<(), NetemError> {
        if ppm > PPM_MAX {
            return Err(NetemError::ResetChanceOutOfRange { ppm });
        }
        self.on_path(from, to, |t, a, b| t.set_reset_chance(a, b, ppm))
    }

    /// Cuts `a` and `b` apart, both ways.
    pub fn partition(&self, a: &str, b: &str, mode: CutMode) -> Result<(), NetemError> {
        self.on_path(a, b, |t, a, b| t.partition(a, b, Some(mode)))
    }

    /// Ends a [`partition`](Proxy::partition) of `a` and `b`.
    pub fn heal_partition(&self, a: &str, b: &str) -> Result<(), NetemError> {
        self.on_path(a, b, |t, a, b| t.partition(a, b, None))
    }

    /// Cuts `name` off from every other endpoint.
    pub fn isolate(&self, name: &str, mode: CutMode) -> Result<(), NetemError> {
        self.shared.change(|t| {
            let ix = t.endpoint(name)?;
            t.isolate(ix, Some(mode));
            Ok(())
        })
    }

    /// Ends an [`isolate`](Proxy::isolate).
    pub fn rejoin(&self, name: &str) -> Result<(), NetemError> {
        self.shared.change(|t| {
            let ix = t.endpoint(name)?;
            t.isolate(ix, None);
            Ok(())
        })
    }

    /// Latency between endpoints of the same datacenter and of different
    /// ones, for every pair without a more specific setting (a path's own
    /// latency, then a datacenter pair's). Holds for endpoints added later too.
    pub fn set_dc_latency(&self, intra: Latency, inter: Latency) {
        let _ = self.shared.change(|t| {
            t.set_dc_latency(Some(intra), Some(inter));
            Ok(())
        });
    }

    /// Latency of bytes from any endpoint of `src_dc` to any of `dst_dc`.
    pub fn set_dc_pair_latency(
        &self,
        src_dc: &str,
        dst_dc: &str,
        latency: Latency,
    ) -> Result<(), NetemError> {
        self.shared.change(|t| {
            t.check_datacenter(src_dc)?;
            t.check_datacenter(dst_dc)?;
            t.set_dc_pair_latency(src_dc, dst_dc, latency);
            Ok(())
        })
    }

    /// Cuts datacenter `dc` off from every other; links inside it keep working.
    pub fn cut_dc(&self, dc: &str, mode: CutMode) -> Result<(), NetemError> {
        self.shared.change(|t| {
            t.check_datacenter(dc)?;
            t.cut_dc(dc, Some(mode));
            Ok(())
        })
    }

    /// Ends a [`cut_dc`](Proxy::cut_dc).
    pub fn heal_dc(&self, dc: &str) -> Result<(), NetemError> {
        self.shared.change(|t| {
            t.check_datacenter(dc)?;
            t.cut_dc(dc, None);
            Ok(())
        })
    }

    /// All faults off: no latency, cap, loss, reset chance or cut, and every
    /// link back to [`LinkMode::Forward`]. Stalled bytes flow again.
    pub fn heal(&self) {
        let _ = self.shared.change(|t| {
            t.heal();
            Ok(())
        });
    }

    /// Counters of the link from `from` to `to`.
    pub fn stats(&self, from: &str, to: &str) -> Result<LinkStats, NetemError> {
        let topology = self.shared.topology.lock();
        let (a, b) = topology.pair(from, to)?;
        let link = topology.link_of(a, b).ok_or_else(|| NetemError::NoLink {
            from: from.to_owned(),
            to: to.to_owned(),
        })?;
        Ok(topology.links[link].counters.snapshot())
    }

    /// Tasks still running: one accept loop per link, one per connection.
    pub fn live_tasks(&self) -> usize {
        *self.shared.tasks_live.lock()
    }

    /// Stops everything: every listener closes (new connects are refused) and
    /// every proxied connection is closed. Blocks the calling thread until
    /// all tasks ended or `wait` ran out (from async code, a short block of
    /// the caller's thread; the proxy's tasks run on its own runtime).
    pub fn shutdown(&self, wait: Duration) -> Result<(), NetemError> {
        {
            // Raised under the task count's lock so no TaskGuard slips in after.
            let _live = self.shared.tasks_live.lock();
            self.shared.shutdown.send_replace(true);
        }
        let mut live = self.shared.tasks_live.lock();
        self.shared
            .tasks_idle
            .wait_while_for(&mut live, |live| *live > 0, wait);
        let remaining = *live;
        drop(live);
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
        if remaining > 0 {
            return Err(NetemError::ShutdownTimedOut { live: remaining });
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        // Never blocks, so dropping a proxy inside async code is fine; the
        // runtime drops every task (and so every socket) as it winds down.
        if let Some(runtime) = self.runtime.get_mut().take() {
            runtime.shutdown_background();
        }
    }
}

/// A handle on one directed link: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
    link: LinkIx,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = self.shared.topology.lock();
        let state = &topology.links[self.link];
        f.debug_struct("Link")
            .field("from", &topology.endpoints[state.from].name)
            .field("to", &topology.endpoints[state.to].name)
            .field("addr", &state.addr)
            .field("mode", &state.mode)
            .finish()
    }
}

impl Link {
    /// The address `from` dials to reach `to` through this link.
    pub fn addr(&self) -> SocketAddr {
        self.shared.topology.lock().links[self.link].addr
    }

    /// The dialling endpoint's name.
    pub fn from_endpoint(&self) -> String {
        let topology = self.shared.topology.lock();
        topology.endpoints[topology.links[self.link].from]
            .name
            .clone()
    }

    /// The target endpoint's name.
    pub fn to_endpoint(&self) -> String {
        let topology = self.shared.topology.lock();
        topology.endpoints[topology.links[self.link].to]
            .name
            .clone()
    }

    /// What the link's far end pretends to be (see [`LinkMode`]).
    pub fn set_mode(&self, mode: LinkMode) {
        let _ = self.shared.change(|t| {
            t.links[self.link].mode = mode;
            Ok(())
        });
    }

    /// Resets (RST at both ends) every connection open on the link now.
    pub fn reset_connections(&self) {
        let _ = self.shared.change(|t| {
            t.links[self.link].reset_epoch += 1;
            Ok(())
        });
    }

    /// A snapshot of the link's counters.
    pub fn stats(&self) -> LinkStats {
        self.shared.topology.lock().links[self.link]
            .counters
            .snapshot()
    }
}

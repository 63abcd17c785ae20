//! The metrics endpoint over real HTTP, in front of a real in-process node: a
//! sealed sled store on a soft HSM, one voter on the in-process network.
//! `/metrics` follows the node's progress, `/healthz` answers while the
//! process lives, `/readyz` answers 200 only with a leader and an answering
//! HSM, 503 once the node stops or its HSM does not answer.
// A real endpoint in front of a real node: waits are bounded in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vaultfleet::hsm::Hsm;
use vaultfleet::replica::Status;
use vaultfleet::runtime::{Pool, PoolConfig, PooledNode};
use vaultfleet::{
    ChannelNetwork, Client, ClientConfig, FleetConfig, KvStore, MemberSpec, Node, NodeConfig,
    NodeHandle, Replica, ReplicaConfig, Sealed, SealedConfig, SoftHsm,
};
use vaultfleet_net::{NetConfig, NetStats, NetTransport, PeerDirectory, StaticSecret};
use vaultfleet_node::metrics::{check_ready, Health, MetricsServer, NotReady, Probe, NET_COUNTERS};

/// The recorder is process-wide and the status gauges follow the last sampler
/// that wrote: the tests of this file run one at a time.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Every wait in this file ends after this long.
const WAIT: Duration = Duration::from_secs(20);

/// A replica on either runtime.
enum Running {
    Threads(Node),
    /// The replica first: it stops before its pool.
    Pool(PooledNode, Pool),
}

impl Running {
    fn shutdown(self) -> Result<(), vaultfleet::ReplicaError> {
        match self {
            Running::Threads(node) => node.shutdown(),
            Running::Pool(node, pool) => {
                let stopped = node.shutdown();
                drop(pool);
                stopped
            }
        }
    }
}

/// One voter on a sealed sled store, and what its probe needs.
struct OneNode {
    node: Option<Running>,
    handle: NodeHandle,
    hsm: SoftHsm,
    _dir: tempfile::TempDir,
}

fn one_node() -> OneNode {
    one_node_on(false)
}

/// The mailbox capacity of [`one_node_on`]'s replica on a pool.
const POOLED_MAILBOX: usize = 32_768;

/// [`one_node`], on a pool of its own if `on_pool`.
fn one_node_on(on_pool: bool) -> OneNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let hsm = SoftHsm::new();
    let fleet = FleetConfig::new(vec![MemberSpec::voter(1, "dc-a")]);
    let replica = ReplicaConfig::new(1);
    let mut log = Sealed::open_sled(
        dir.path().join("replica-1"),
        hsm.clone(),
        SealedConfig::new(replica.group, 1),
    )
    .expect("sealed store");
    Replica::bootstrap(&mut log, &KvStore::new(), &fleet).expect("bootstrap");
    let net = ChannelNetwork::new();
    let (node, handle) = if on_pool {
        let pool = Pool::new(PoolConfig::new()).expect("pool");
        // Not the default, so the gauge shows it is this pool's.
        let mut cfg = NodeConfig::new(replica);
        cfg.mailbox_inputs_max = POOLED_MAILBOX;
        let node = pool
            .spawn(cfg, log, KvStore::new(), net.transport(1))
            .expect("node");
        let handle = node.handle();
        (Running::Pool(node, pool), handle)
    } else {
        let node = Node::spawn(
            NodeConfig::new(replica),
            log,
            KvStore::new(),
            net.transport(1),
        )
        .expect("node");
        let handle = node.handle();
        (Running::Threads(node), handle)
    };
    net.register(1, Arc::new(handle.clone()));
    OneNode {
        node: Some(node),
        handle,
        hsm,
        _dir: dir,
    }
}

/// The node as the endpoint sees it: its published status, a real HSM call,
/// its data directory.
struct NodeProbe {
    handle: NodeHandle,
    hsm: SoftHsm,
    data_dir: PathBuf,
}

impl Probe for NodeProbe {
    fn status(&self) -> Option<Status> {
        (!self.handle.is_stopped()).then(|| self.handle.status())
    }

    fn health(&self) -> Health {
        let mut nonce = [0u8; 8];
        Health {
            hsm: self.hsm.random(&mut nonce).map_err(|e| e.to_string()),
            disk: std::fs::metadata(&self.data_dir)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            serving: !self.handle.is_stopped(),
        }
    }
}

fn probe(n: &OneNode) -> Arc<NodeProbe> {
    Arc::new(NodeProbe {
        handle: n.handle.clone(),
        hsm: n.hsm.clone(),
        data_dir: n._dir.path().to_path_buf(),
    })
}

fn start(probe: Arc<NodeProbe>) -> MetricsServer {
    start_with(probe)
}

fn start_with(probe: Arc<dyn Probe>) -> MetricsServer {
    MetricsServer::start("127.0.0.1:0".parse().expect("addr"), probe).expect("metrics server")
}

/// One HTTP/1.1 request over a plain TCP stream: (status code, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    request_within(addr, method, path, Duration::from_secs(10))
}

/// One HTTP/1.1 request whose answer must come within `patience`.
fn request_within(addr: SocketAddr, method: &str, path: &str, patience: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(patience))
        .expect("read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (code, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path)
}

/// The value of the sample `series` (a name, with its labels if any) on a
/// Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `check` until it gives a value, at most [`WAIT`].
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrape(addr: SocketAddr) -> String {
    let (code, page) = get(addr, "/metrics");
    assert_eq!(code, 200, "GET /metrics");
    page
}

#[test]
fn metrics_follow_the_node_and_readiness_ends_when_it_stops() {
    metrics_follow_the_node_and_readiness_ends_when_it_stops_on(false);
}

/// The same on a pool (the node daemon's default runtime): the same series,
/// the mailbox gauges the pool's aggregates of its one replica.
#[test]
fn metrics_follow_the_node_and_readiness_ends_when_it_stops_on_the_pool() {
    metrics_follow_the_node_and_readiness_ends_when_it_stops_on(true);
}

fn metrics_follow_the_node_and_readiness_ends_when_it_stops_on(on_pool: bool) {
    let _serial = SERIAL.lock();
    let mut n = one_node_on(on_pool);
    let server = start(probe(&n));
    let addr = server.local_addr();

    assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_string()));
    wait_for("readiness", || {
        (get(addr, "/readyz").0 == 200).then_some(())
    });
    // The sampler saw the leader.
    let page = wait_for("the leader's gauges", || {
        let page = scrape(addr);
        (sample(&page, "vaultfleet_is_leader") == Some(1.0)).then_some(page)
    });
    assert_eq!(sample(&page, "vaultfleet_leader_id"), Some(1.0));
    assert_eq!(sample(&page, "vaultfleet_voters"), Some(1.0));
    assert_eq!(sample(&page, "vaultfleet_learners"), Some(0.0));
    assert_eq!(sample(&page, "vaultfleet_ready"), Some(1.0));
    let term = sample(&page, "vaultfleet_term").expect("term gauge");
    assert!(term >= 1.0, "term {term}");
    assert!(sample(&page, "vaultfleet_leader_changes_total").is_some_and(|v| v >= 1.0));
    assert!(
        sample(&page, "vaultfleet_elections_started_total{stage=\"vote\"}")
            .is_some_and(|v| v >= 1.0)
    );
    let capacity = if on_pool { POOLED_MAILBOX } else { 65_536 };
    assert_eq!(
        sample(&page, "vaultfleet_mailbox_capacity"),
        Some(capacity as f64)
    );
    let depth = sample(&page, "vaultfleet_mailbox_depth").expect("the depth gauge");
    assert!((0.0..=capacity as f64).contains(&depth), "depth {depth}");
    let commit = sample(&page, "vaultfleet_commit_index").expect("commit gauge");
    let applied = sample(&page, "vaultfleet_applied_index").expect("applied gauge");

    let proposals = 5;
    let client = Client::connect(vec![n.handle.clone()], ClientConfig::default()).expect("client");
    for i in 0..proposals {
        client
            .propose(KvStore::put(format!("key-{i}"), "value"))
            .expect("proposal");
    }
    // A session registration and the proposals: at least `proposals + 1`
    // entries past what the gauges showed.
    let want = commit + f64::from(proposals) + 1.0;
    let page = wait_for("the commit and applied gauges to move", || {
        let page = scrape(addr);
        let moved = sample(&page, "vaultfleet_commit_index").is_some_and(|c| c >= want)
            && sample(&page, "vaultfleet_applied_index")
                .is_some_and(|a| a >= applied + f64::from(proposals) + 1.0)
            && sample(&page, "vaultfleet_last_index").is_some_and(|l| l >= want);
        moved.then_some(page)
    });
    // The engine's own measurements, from the same recorder.
    let commits = sample(&page, "vaultfleet_commit_seconds_count{kind=\"command\"}")
        .expect("commit latency histogram");
    assert!(commits >= f64::from(proposals), "{commits} commits timed");
    for series in [
        "vaultfleet_log_persist_seconds_count",
        "vaultfleet_log_fsync_seconds_count",
        "vaultfleet_counter_advance_seconds_count",
        "vaultfleet_seal_seconds_count{record=\"batch\"}",
    ] {
        assert!(
            sample(&page, series).is_some_and(|v| v >= 1.0),
            "{series} missing or zero"
        );
    }
    assert!(page.contains("vaultfleet_log_persist_seconds_bucket{le=\"0.001\"}"));

    // Only GET, only the three paths.
    assert_eq!(request(addr, "POST", "/metrics").0, 405);
    assert_eq!(get(addr, "/nothing-here").0, 404);

    drop(client);
    n.node.take().expect("node").shutdown().expect("clean stop");
    let (code, reason) = get(addr, "/readyz");
    assert_eq!(code, 503);
    assert_eq!(reason, format!("not ready: {}\n", NotReady::Stopped));
    assert_eq!(get(addr, "/healthz").0, 200, "the process still lives");
    wait_for("the node-up gauge to drop", || {
        (sample(&scrape(addr), "vaultfleet_node_up") == Some(0.0)).then_some(())
    });
    server.shutdown();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "the endpoint still listens after its shutdown"
    );
}

#[test]
fn readiness_follows_the_hsm() {
    let _serial = SERIAL.lock();
    let n = one_node();
    let p = probe(&n);
    let server = start(Arc::clone(&p));
    let addr = server.local_addr();
    wait_for("readiness", || {
        (get(addr, "/readyz").0 == 200).then_some(())
    });

    n.hsm.set_available(false);
    // The health checker sees it at its next check.
    wait_for("the HSM to be reported", || {
        (get(addr, "/readyz") == (503, "not ready: hsm\n".to_string())).then_some(())
    });
    let status = p.status();
    assert_eq!(
        check_ready(status.as_ref(), Ok(&p.health())),
        Err(NotReady::Hsm)
    );
    wait_for("the HSM gauges to drop", || {
        let page = scrape(addr);
        (sample(&page, "vaultfleet_hsm_up") == Some(0.0)
            && sample(&page, "vaultfleet_ready") == Some(0.0))
        .then_some(())
    });

    n.hsm.set_available(true);
    wait_for("readiness again", || {
        (get(addr, "/readyz").0 == 200).then_some(())
    });
    server.shutdown();
}

#[test]
fn servers_in_one_process_share_the_recorder() {
    let _serial = SERIAL.lock();
    let n = one_node();
    let first = start(probe(&n));
    let second = start(probe(&n));
    assert_ne!(first.local_addr(), second.local_addr());
    for addr in [first.local_addr(), second.local_addr()] {
        wait_for("the term gauge", || {
            scrape(addr)
                .contains("# TYPE vaultfleet_term gauge")
                .then_some(())
        });
    }
    first.shutdown();
    // The other one keeps serving.
    assert_eq!(get(second.local_addr(), "/healthz").0, 200);
    second.shutdown();
    second.shutdown(); // idempotent
}

#[test]
fn a_busy_port_is_a_typed_error() {
    let _serial = SERIAL.lock();
    let n = one_node();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = MetricsServer::start(addr, probe(&n)).expect_err("the port is taken");
    assert!(
        matches!(err, vaultfleet_node::metrics::MetricsError::Bind { addr: a, .. } if a == addr),
        "{err:?}"
    );
}

/// A node's probe whose health the test scripts: it counts the health
/// checks, how many run at once, and can make `status` panic.
struct Scripted {
    node: Arc<NodeProbe>,
    health: parking_lot::Mutex<Health>,
    /// How long each health check takes.
    health_takes: Duration,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    status_panics: AtomicBool,
}

fn healthy() -> Health {
    Health {
        hsm: Ok(()),
        disk: Ok(()),
        serving: true,
    }
}

fn scripted(n: &OneNode, health_takes: Duration) -> Arc<Scripted> {
    Arc::new(Scripted {
        node: probe(n),
        health: parking_lot::Mutex::new(healthy()),
        health_takes,
        calls: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        status_panics: AtomicBool::new(false),
    })
}

impl Probe for Scripted {
    fn status(&self) -> Option<Status> {
        assert!(
            !self.status_panics.load(Ordering::SeqCst),
            "a bug in the probe (this panic is the test's)"
        );
        self.node.status()
    }

    fn health(&self) -> Health {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.health_takes);
        let health = self.health.lock().clone();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        health
    }
}

/// R2-1: clients that connect and send nothing, more of them than there are
/// slots, reconnecting as soon as they are closed, do not keep `/healthz`
/// from answering; and the server closes them soon.
#[test]
fn r2_1_idle_clients_do_not_starve_healthz() {
    use vaultfleet_node::metrics::{CONNECTIONS_MAX, HEAD_TIMEOUT};
    let _serial = SERIAL.lock();
    let n = one_node();
    let server = start(probe(&n));
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    // Every slot and more: idle clients that reconnect when closed.
    let attackers: Vec<_> = (0..CONNECTIONS_MAX + 8)
        .map(|_| {
            let (stop, closed) = (Arc::clone(&stop), Arc::clone(&closed_by_server));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut idle) = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    idle.set_read_timeout(Some(Duration::from_millis(200)))
                        .expect("read timeout");
                    let mut buf = [0u8; 64];
                    // Sends nothing; waits for the server to close it.
                    loop {
                        match idle.read(&mut buf) {
                            Ok(0) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                if stop.load(Ordering::SeqCst) {
                                    return;
                                }
                            }
                            Err(_) => {
                                closed.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        // A generous functional bound: before the fix it waited for a slot
        // (ten seconds).
        let answer = request_within(addr, "GET", "/healthz", Duration::from_secs(2));
        assert_eq!(answer, (200, "ok\n".to_string()));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Idle connections are closed by the server (after HEAD_TIMEOUT), not
    // held for a connection's lifetime.
    wait_for("the server to close idle clients", || {
        (closed_by_server.load(Ordering::SeqCst) >= CONNECTIONS_MAX).then_some(())
    });
    assert!(HEAD_TIMEOUT <= Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        a.join().expect("an idle client");
    }
    // Still serving normally afterwards.
    wait_for("readiness", || {
        (get(addr, "/readyz").0 == 200).then_some(())
    });
    server.shutdown();
}

/// R2-2: `/readyz` answers from the health checker's last result; a
/// thousand requests make a handful of health checks, not a thousand.
#[test]
fn r2_2_readyz_does_not_call_the_probe_health() {
    use vaultfleet_node::metrics::HEALTH_INTERVAL;
    let _serial = SERIAL.lock();
    let n = one_node();
    let p = scripted(&n, Duration::ZERO);
    let server = start_with(Arc::clone(&p) as Arc<dyn Probe>);
    let addr = server.local_addr();
    wait_for("readiness", || {
        (get(addr, "/readyz").0 == 200).then_some(())
    });
    let before = p.calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut ready = 0;
    for _ in 0..1_000 {
        let (code, _) = get(addr, "/readyz");
        assert!(code == 200 || code == 503, "{code}");
        ready += usize::from(code == 200);
    }
    let calls = p.calls.load(Ordering::SeqCst) - before;
    // The checker's own pace: one check per interval, plus the one running.
    let paced = 2 + (started.elapsed().as_millis() / HEALTH_INTERVAL.as_millis()) as usize;
    assert!(
        calls <= paced,
        "{calls} health checks for 1000 /readyz in {:?}",
        started.elapsed()
    );
    assert!(ready >= 990, "{ready} of 1000 answered ready");
    server.shutdown();
}

/// R2-2: a health check that blocks (a slow HSM) has at most one call
/// outstanding however many `/readyz` arrive meanwhile, and `/readyz`
/// answers without waiting for it.
#[test]
fn r2_2_a_slow_health_check_has_one_call_outstanding() {
    let _serial = SERIAL.lock();
    let n = one_node();
    let p = scripted(&n, Duration::from_millis(700));
    let server = start_with(Arc::clone(&p) as Arc<dyn Probe>);
    let addr = server.local_addr();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                // `/readyz` answers within 2 s (503 until the first check
                // returns): a run that does not is counted.
                let mut slow = 0;
                for _ in 0..10 {
                    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    else {
                        slow += 1;
                        continue;
                    };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("read timeout");
                    let mut raw = Vec::new();
                    let answered = write!(
                        stream,
                        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                    )
                    .and_then(|()| stream.read_to_end(&mut raw))
                    .is_ok();
                    if !answered
                        || !(raw.starts_with(b"HTTP/1.1 200") || raw.starts_with(b"HTTP/1.1 503"))
                    {
                        slow += 1;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                slow
            })
        })
        .collect();
    let slow: usize = clients
        .into_iter()
        .map(|c| c.join().expect("a /readyz client"))
        .sum();
    assert!(p.calls.load(Ordering::SeqCst) >= 1, "no health check ran");
    assert_eq!(
        p.most_in_flight.load(Ordering::SeqCst),
        1,
        "health checks outstanding at once"
    );
    assert_eq!(slow, 0, "/readyz answers that did not come within 2 s");
    server.shutdown();
}

/// R2-7: `/readyz` says which check failed in a fixed word; the reason
/// (a path, an OS error) stays in the log.
#[test]
fn r2_7_readyz_reasons_are_fixed_words() {
    let _serial = SERIAL.lock();
    let n = one_node();
    let p = scripted(&n, Duration::ZERO);
    let server = start_with(Arc::clone(&p) as Arc<dyn Probe>);
    let addr = server.local_addr();
    let leak = "/var/lib/vaultfleet/secret-dir: Permission denied (os error 13)";
    let cases = [
        (
            Health {
                hsm: Err(leak.to_string()),
                disk: Err(leak.to_string()),
                serving: false,
            },
            "not ready: hsm\n",
        ),
        (
            Health {
                hsm: Ok(()),
                disk: Err(leak.to_string()),
                serving: true,
            },
            "not ready: disk\n",
        ),
        (
            Health {
                hsm: Ok(()),
                disk: Ok(()),
                serving: false,
            },
            "not ready: vault not serving\n",
        ),
        (healthy(), "ready\n"),
    ];
    for (health, answer) in cases {
        *p.health.lock() = health;
        let body = wait_for(answer, || {
            let (_, body) = get(addr, "/readyz");
            (body == answer).then_some(body)
        });
        assert!(!body.contains("secret-dir") && !body.contains("os error"));
    }
    assert_eq!(format!("{}", NotReady::NoLeader), "no leader");
    server.shutdown();
}

/// R2-10: a sampler whose probe panics sets the ready, HSM and disk gauges
/// to 0 (an alert on `vaultfleet_ready == 0` fires) instead of leaving them
/// at their last value until they vanish from the page.
#[test]
fn r2_10_a_panicking_sampler_zeroes_the_ready_gauges() {
    let _serial = SERIAL.lock();
    let n = one_node();
    let p = scripted(&n, Duration::ZERO);
    let server = start_with(Arc::clone(&p) as Arc<dyn Probe>);
    let addr = server.local_addr();
    wait_for("the ready gauge", || {
        (sample(&scrape(addr), "vaultfleet_ready") == Some(1.0)).then_some(())
    });
    p.status_panics.store(true, Ordering::SeqCst);
    wait_for("the gauges to drop to 0", || {
        let page = scrape(addr);
        (sample(&page, "vaultfleet_ready") == Some(0.0)
            && sample(&page, "vaultfleet_hsm_up") == Some(0.0)
            && sample(&page, "vaultfleet_disk_up") == Some(0.0))
        .then_some(())
    });
    // `/readyz` stays up too, and says not ready.
    assert_eq!(get(addr, "/readyz").0, 503);
    assert_eq!(get(addr, "/healthz").0, 200);
    server.shutdown();
}

/// A node's probe that also reports a real network transport's counters.
struct WithTransport {
    node: Arc<NodeProbe>,
    transport: NetTransport,
}

impl Probe for WithTransport {
    fn status(&self) -> Option<Status> {
        self.node.status()
    }

    fn health(&self) -> Health {
        self.node.health()
    }

    fn net_stats(&self) -> Option<NetStats> {
        Some(self.transport.stats())
    }
}

#[test]
fn transport_counters_are_exported() {
    let _serial = SERIAL.lock();
    let n = one_node();
    let secret = StaticSecret::generate().expect("key");
    let directory = PeerDirectory::new("metrics-test-fleet", [1], secret).expect("directory");
    let transport = NetTransport::start(
        directory,
        NetConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .expect("transport");
    let server = start_with(Arc::new(WithTransport {
        node: probe(&n),
        transport: transport.clone(),
    }));
    let addr = server.local_addr();
    // Bytes that are no Noise handshake: the transport counts a failure.
    let mut stranger = TcpStream::connect_timeout(&transport.local_addr(), Duration::from_secs(5))
        .expect("connect to the transport");
    stranger.write_all(&[0xA5; 512]).expect("send");
    drop(stranger);
    // A sample writes the counters one after another, so a scrape can land
    // between two of them the first time: wait for a page with all of them
    // (a counter never exported still fails, by the wait's deadline).
    let page = wait_for("the failed handshake and every counter on the page", || {
        let page = scrape(addr);
        let all = NET_COUNTERS
            .iter()
            .all(|name| page.contains(&format!("# TYPE {name} counter")));
        (all && sample(&page, "vaultfleet_net_handshakes_failed_total").is_some_and(|v| v >= 1.0))
            .then_some(page)
    });
    for name in NET_COUNTERS {
        assert!(
            page.contains(&format!("# TYPE {name} counter")),
            "{name} missing"
        );
    }
    server.shutdown();
    transport.shutdown();
}

/// P8: on a pool the mailbox gauges are the pool's aggregates, not whichever
/// replica ran last. Three replicas on one worker: A and B lead nothing (a
/// voter of three alone, ticks 10 s apart, so each refuses at once and turns
/// only when fed), C is a lone voter ticking every 10 ms. The worker is held
/// inside B's turn (a client's callback blocks) while 300 requests queue at
/// A, so A's next turn takes all 300 at once; C's turns take none. With one
/// unlabelled gauge per turn (the old behaviour) C's next tick set the depth
/// to 0 and the capacity to C's.
#[test]
fn p8_pool_mailbox_gauges_are_the_pools_deepest_and_sum() {
    use std::sync::mpsc;
    use vaultfleet::runtime::{ResponseSlot, Slot};
    use vaultfleet::MemLog;

    let _serial = SERIAL.lock();
    let pool = Pool::new(PoolConfig {
        workers: 1,
        stall_after: Duration::from_secs(60),
        spare_workers_max: 0,
        ..PoolConfig::new()
    })
    .expect("pool");
    let net = ChannelNetwork::new();
    let spawn = |group: u64, members: &[u64], tick: Duration, mailbox: usize| {
        let fleet = FleetConfig::new(
            members
                .iter()
                .map(|&id| MemberSpec::voter(id, "dc-a"))
                .collect(),
        );
        let mut replica = ReplicaConfig::new(1);
        replica.group = group;
        let mut log = MemLog::new();
        Replica::bootstrap(&mut log, &KvStore::new(), &fleet).expect("bootstrap");
        let mut cfg = NodeConfig::new(replica);
        cfg.tick_interval = tick;
        cfg.mailbox_inputs_max = mailbox;
        pool.spawn(cfg, log, KvStore::new(), net.transport(1))
            .expect("spawn")
    };
    // An hour: A's and B's ticks never come during the test (a tick turn of
    // A would set its depth back to 0; review finding: 10 s was a margin a
    // loaded machine could use up).
    let slow = Duration::from_secs(3_600);
    let a = spawn(1, &[1, 2, 3], slow, 1_000);
    let b = spawn(2, &[1, 2, 3], slow, 2_000);
    let c = spawn(3, &[1], Duration::from_millis(10), 4_000);
    // No `Node` in this test: a node's thread sets the same gauges.
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(Arc::new(NodeProbe {
        handle: c.handle(),
        hsm: SoftHsm::new(),
        data_dir: dir.path().to_path_buf(),
    }));
    let addr = server.local_addr();
    wait_for("C to lead", || {
        (c.handle().status().leader == Some(1)).then_some(())
    });

    // Hold the only worker inside B's turn.
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let released = parking_lot::Mutex::new(released);
    let held: ResponseSlot = Arc::new(Slot::with_notify(Arc::new(move || {
        let _ = entered_tx.send(());
        let _ = released.lock().recv_timeout(WAIT);
    })));
    b.handle()
        .register_session_into(Arc::clone(&held))
        .expect("queued at B");
    entered.recv_timeout(WAIT).expect("the worker in B's turn");
    let queued = 300;
    let slots: Vec<ResponseSlot> = (0..queued)
        .map(|_| a.handle().register_session().expect("queued at A"))
        .collect();
    release.send(()).expect("release the worker");
    for slot in &slots {
        assert!(
            matches!(
                slot.wait(WAIT),
                Some(Err(vaultfleet::RequestError::NotLeader { .. }))
            ),
            "A refuses: it leads nothing"
        );
    }
    // C keeps turning (with nothing in its mailbox) after A's deep turn.
    std::thread::sleep(Duration::from_millis(200));
    let page = scrape(addr);
    assert_eq!(
        sample(&page, "vaultfleet_mailbox_depth"),
        Some(f64::from(queued)),
        "the deepest replica's last turn, not the last replica to run"
    );
    assert_eq!(
        sample(&page, "vaultfleet_mailbox_capacity"),
        Some(1_000.0),
        "the smallest mailbox of the pool"
    );
    assert_eq!(
        sample(&page, "vaultfleet_mailbox_depth_sum"),
        Some(f64::from(queued) + 1.0),
        "A's 300, B's 1, C's 0"
    );
    assert_eq!(
        sample(&page, "vaultfleet_pool_workers"),
        Some(1.0),
        "the one worker of the only pool"
    );
    drop((a, b, c));
    drop(pool);
    server.shutdown();
}

/// Review finding (of P8's fix): the daemon's recorder drops a gauge not set
/// for 15 s, and the pool set its gauges only when they changed (and the
/// workers gauge only when a worker started or stopped, before the daemon
/// installed its recorder). An idle pool's gauges left the page. Its timer
/// now sets them at every wake.
#[test]
fn p8b_an_idle_pool_keeps_its_gauges_on_the_page() {
    use vaultfleet::MemLog;

    let _serial = SERIAL.lock();
    let pool = Pool::new(PoolConfig {
        workers: 1,
        ..PoolConfig::new()
    })
    .expect("pool");
    let net = ChannelNetwork::new();
    let fleet = FleetConfig::new(vec![MemberSpec::voter(1, "dc-a")]);
    let mut log = MemLog::new();
    Replica::bootstrap(&mut log, &KvStore::new(), &fleet).expect("bootstrap");
    let mut cfg = NodeConfig::new(ReplicaConfig::new(1));
    cfg.mailbox_inputs_max = 12_345;
    let node = pool
        .spawn(cfg, log, KvStore::new(), net.transport(1))
        .expect("spawn");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(Arc::new(NodeProbe {
        handle: node.handle(),
        hsm: SoftHsm::new(),
        data_dir: dir.path().to_path_buf(),
    }));
    let addr = server.local_addr();
    wait_for("the node to lead", || {
        (node.handle().status().leader == Some(1)).then_some(())
    });
    // The recorder expires a gauge at a scrape that finds it unchanged since
    // a scrape at least 15 s before: scrape, stay idle past that, scrape.
    let first = scrape(addr);
    assert!(sample(&first, "vaultfleet_pool_workers").is_some());
    std::thread::sleep(Duration::from_secs(16));
    let page = scrape(addr);
    assert_eq!(
        sample(&page, "vaultfleet_mailbox_capacity"),
        Some(12_345.0),
        "an idle pool's capacity gauge is still on the page"
    );
    assert_eq!(
        sample(&page, "vaultfleet_pool_workers"),
        Some(1.0),
        "the workers gauge is on the page and counts the one worker"
    );
    drop(node);
    drop(pool);
    server.shutdown();
}
